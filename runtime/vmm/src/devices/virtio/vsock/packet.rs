//! The virtio-vsock packet header (44 bytes, little endian) and its
//! operations.

/// Header size.
pub const HEADER_LEN: usize = 44;
/// The only socket type supported: stream.
pub const TYPE_STREAM: u16 = 1;

/// Packet operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Op {
    /// Connection request.
    Request = 1,
    /// Connection accepted.
    Response = 2,
    /// Connection reset (refused or closed).
    Rst = 3,
    /// Half or full shutdown, see [`SHUTDOWN_RCV`] and [`SHUTDOWN_SEND`].
    Shutdown = 4,
    /// Data.
    Rw = 5,
    /// The sender's credit changed.
    CreditUpdate = 6,
    /// The sender asks for a credit update.
    CreditRequest = 7,
}

impl Op {
    /// The operation with code `code`, if any.
    pub fn from_code(code: u16) -> Option<Op> {
        Some(match code {
            1 => Op::Request,
            2 => Op::Response,
            3 => Op::Rst,
            4 => Op::Shutdown,
            5 => Op::Rw,
            6 => Op::CreditUpdate,
            7 => Op::CreditRequest,
            _ => return None,
        })
    }
}

/// Shutdown flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// Shutdown flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// A packet header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// Source context id.
    pub src_cid: u64,
    /// Destination context id.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type.
    pub kind: u16,
    /// Operation code (see [`Op`]).
    pub op: u16,
    /// Operation flags.
    pub flags: u32,
    /// The sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed.
    pub fwd_cnt: u32,
}

impl Header {
    /// Parses a header.
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Header {
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        let u16_at = |i: usize| u16::from_le_bytes(bytes[i..i + 2].try_into().expect("2 bytes"));
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            kind: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// The wire form.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        out[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        out[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        out[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        out[24..28].copy_from_slice(&self.len.to_le_bytes());
        out[28..30].copy_from_slice(&self.kind.to_le_bytes());
        out[30..32].copy_from_slice(&self.op.to_le_bytes());
        out[32..36].copy_from_slice(&self.flags.to_le_bytes());
        out[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        out[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        out
    }

    /// The operation, if the code is known.
    pub fn operation(&self) -> Option<Op> {
        Op::from_code(self.op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let header = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1234,
            dst_port: 1024,
            len: 5,
            kind: TYPE_STREAM,
            op: Op::Rw as u16,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 77,
        };
        assert_eq!(Header::parse(&header.to_bytes()), header);
        assert_eq!(header.operation(), Some(Op::Rw));
    }

    #[test]
    fn unknown_ops_are_none() {
        assert_eq!(Op::from_code(0), None);
        assert_eq!(Op::from_code(8), None);
    }
}

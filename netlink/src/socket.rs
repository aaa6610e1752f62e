//! The transport: one `NETLINK_ROUTE` socket, a sequence counter, and the
//! two exchanges everything else is made of. A request is sent with
//! `NLM_F_ACK` and waits for the `NLMSG_ERROR` that acknowledges (errno 0)
//! or refuses it; a dump (`NLM_F_DUMP`) reads multipart replies up to
//! `NLMSG_DONE`.
//!
//! Framing is done here, not by `netlink-packet-core`, so that a reply
//! whose payload does not decode still has a known length: the rest of
//! the dump is read (a dump left half-read would make the kernel refuse
//! the next one with `EBUSY`) before the error is returned. Messages of
//! another sequence number (the tail of an earlier, abandoned exchange)
//! are skipped. Each datagram is sized with `MSG_PEEK | MSG_TRUNC` before
//! it is read, so none is ever truncated.
//!
//! Trust: the peer is the kernel, but nothing it sends can make this code
//! panic: lengths are checked before every slice, and the decoder of
//! `netlink-packet-route` runs under `catch_unwind`.
//!
//! Constants: `NLMSG_*` and `NLMSGERR_ATTR_MSG` from
//! `include/uapi/linux/netlink.h`.

use std::io;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, ParseableParametrized, NLM_F_ACK,
    NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::NetlinkError;

/// What a receive buffer starts with; a bigger datagram grows it.
const RECEIVE_BUFFER_LEN: usize = 64 * 1024;
/// How often a dump interrupted by concurrent changes is retried.
const DUMP_ATTEMPTS: u32 = 5;

/// `struct nlmsghdr`.
pub(crate) const HEADER_LEN: usize = 16;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
/// The extended ACK's human-readable message.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// `NLA_TYPE_MASK`: an attribute's type without the nested and
/// byte-order flags.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// A `NETLINK_ROUTE` socket bound in the network namespace of the thread
/// that opened it, and the sequence number of its last request.
pub struct Netlink {
    socket: Socket,
    sequence: u32,
    buffer: Vec<u8>,
}

impl Netlink {
    /// Opens a socket in the network namespace of the calling thread.
    pub fn open() -> Result<Netlink, NetlinkError> {
        let what = || "opening a NETLINK_ROUTE socket".to_string();
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(io_error(what))?;
        socket.bind_auto().map_err(io_error(what))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(io_error(what))?;
        // Both only improve error reports (the kernel's explanation, and
        // no echo of the whole request); a kernel without them still works.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        Ok(Netlink::with_socket(socket))
    }

    /// A client on `socket`, which may be a test double of the kernel.
    fn with_socket(socket: Socket) -> Netlink {
        Netlink {
            socket,
            sequence: 0,
            buffer: Vec::with_capacity(RECEIVE_BUFFER_LEN),
        }
    }

    /// Sends `message` with `NLM_F_ACK | flags` and waits for the kernel
    /// to acknowledge it.
    pub(crate) fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        what: impl Fn() -> String,
    ) -> Result<(), NetlinkError> {
        let sequence = self.send(message, NLM_F_ACK | flags, &what)?;
        loop {
            self.receive(&what)?;
            for frame in frames(&self.buffer) {
                let frame = frame.map_err(|reason| malformed(&what, reason))?;
                if frame.sequence != sequence || frame.message_type != NLMSG_ERROR {
                    continue;
                }
                let status = parse_error(frame.flags, frame.payload)
                    .map_err(|reason| malformed(&what, reason))?;
                return status.into_result(&what);
            }
        }
    }

    /// Dumps `request` and keeps what `keep` makes of each reply (it gets
    /// the raw payload too, for header fields the decoder loses).
    pub(crate) fn dump<T>(
        &mut self,
        request: RouteNetlinkMessage,
        what: impl Fn() -> String,
        mut keep: impl FnMut(&[u8], RouteNetlinkMessage) -> Option<T>,
    ) -> Result<Vec<T>, NetlinkError> {
        for _ in 0..DUMP_ATTEMPTS {
            let sequence = self.send(request.clone(), NLM_F_DUMP, &what)?;
            let mut items = Vec::new();
            let mut interrupted = false;
            // The first reply that did not decode; the dump is still read
            // to its end.
            let mut failure = None;
            'dump: loop {
                self.receive(&what)?;
                for frame in frames(&self.buffer) {
                    let frame = frame.map_err(|reason| malformed(&what, reason))?;
                    if frame.sequence != sequence {
                        continue;
                    }
                    interrupted |= frame.flags & NLM_F_DUMP_INTR != 0;
                    match frame.message_type {
                        NLMSG_DONE => {
                            parse_done(frame.flags, frame.payload).into_result(&what)?;
                            break 'dump;
                        }
                        NLMSG_ERROR => parse_error(frame.flags, frame.payload)
                            .map_err(|reason| malformed(&what, reason))?
                            .into_result(&what)?,
                        NLMSG_NOOP => {}
                        NLMSG_OVERRUN => {
                            return Err(malformed(&what, "the kernel reported an overrun".into()))
                        }
                        message_type => match decode(message_type, frame.payload) {
                            Ok(message) if failure.is_none() => {
                                items.extend(keep(frame.payload, message));
                            }
                            Ok(_) => {}
                            Err(reason) => {
                                failure.get_or_insert(reason);
                            }
                        },
                    }
                }
            }
            if let Some(reason) = failure {
                return Err(malformed(&what, reason));
            }
            if !interrupted {
                return Ok(items);
            }
        }
        Err(NetlinkError::Interrupted {
            what: what(),
            attempts: DUMP_ATTEMPTS,
        })
    }

    /// Sends one request with the next sequence number, which it returns.
    fn send(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        what: &impl Fn() -> String,
    ) -> Result<u32, NetlinkError> {
        self.sequence = self.sequence.wrapping_add(1).max(1);
        let bytes = encode(message, NLM_F_REQUEST | flags, self.sequence);
        loop {
            match self.socket.send(&bytes, 0) {
                Ok(sent) if sent == bytes.len() => return Ok(self.sequence),
                Ok(sent) => {
                    return Err(NetlinkError::Io {
                        what: what(),
                        source: io::Error::other(format!(
                            "sent {sent} of the request's {} bytes",
                            bytes.len()
                        )),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_error(what)(e)),
            }
        }
    }

    /// Reads the next datagram, whole, into the buffer.
    fn receive(&mut self, what: &impl Fn() -> String) -> Result<(), NetlinkError> {
        loop {
            self.buffer.clear();
            let peeked = match self
                .socket
                .recv(&mut self.buffer, libc::MSG_PEEK | libc::MSG_TRUNC)
            {
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_error(what)(e)),
            };
            self.buffer.clear();
            self.buffer.reserve(peeked);
            match self.socket.recv(&mut self.buffer, 0) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_error(what)(e)),
            }
        }
    }
}

/// The bytes of one request. The buffer is sized with `buffer_len()`, so
/// `serialize` (which panics on a short buffer) cannot.
pub(crate) fn encode(message: RouteNetlinkMessage, flags: u16, sequence: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = sequence;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
    packet.finalize();
    let mut bytes = vec![0; packet.buffer_len()];
    packet.serialize(&mut bytes);
    bytes
}

/// Decodes one message's payload, turning a decoder panic into an error.
pub(crate) fn decode(message_type: u16, payload: &[u8]) -> Result<RouteNetlinkMessage, String> {
    let decoded =
        std::panic::catch_unwind(|| RouteNetlinkMessage::parse_with_param(payload, message_type));
    match decoded {
        Ok(Ok(message)) => Ok(message),
        Ok(Err(e)) => Err(format!("message type {message_type}: {e}")),
        Err(_) => Err(format!("message type {message_type}: the decoder panicked")),
    }
}

/// One netlink message of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame<'a> {
    pub message_type: u16,
    pub flags: u16,
    pub sequence: u32,
    /// What follows the header, up to the message's length.
    pub payload: &'a [u8],
}

/// The messages of a datagram; after a malformed one, nothing.
pub(crate) fn frames(datagram: &[u8]) -> Frames<'_> {
    Frames { rest: datagram }
}

pub(crate) struct Frames<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = std::mem::take(&mut self.rest);
        if rest.is_empty() {
            return None;
        }
        let (Some(length), Some(message_type), Some(flags), Some(sequence)) = (
            u32_at(rest, 0),
            u16_at(rest, 4),
            u16_at(rest, 6),
            u32_at(rest, 8),
        ) else {
            return Some(Err(format!(
                "{} trailing bytes, less than a message header",
                rest.len()
            )));
        };
        let length = length as usize;
        if length < HEADER_LEN || length > rest.len() {
            return Some(Err(format!(
                "a message of length {length} in the {} bytes left of the datagram",
                rest.len()
            )));
        }
        self.rest = rest.get(align(length)..).unwrap_or_default();
        Some(Ok(Frame {
            message_type,
            flags,
            sequence,
            payload: &rest[HEADER_LEN..length],
        }))
    }
}

/// An `NLMSG_ERROR` or `NLMSG_DONE`: the (negative) errno, 0 for success,
/// and the extended ACK's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Status {
    pub code: i32,
    pub message: Option<String>,
}

impl Status {
    fn into_result(self, what: &impl Fn() -> String) -> Result<(), NetlinkError> {
        if self.code == 0 {
            return Ok(());
        }
        Err(NetlinkError::Kernel {
            what: what(),
            source: io::Error::from_raw_os_error(self.code.saturating_abs()),
            message: self.message,
        })
    }
}

/// The payload of an `NLMSG_ERROR`: the errno, the request's header (its
/// whole message unless `NLM_F_CAPPED`), then the extended ACK's
/// attributes when `NLM_F_ACK_TLVS`.
pub(crate) fn parse_error(flags: u16, payload: &[u8]) -> Result<Status, String> {
    let code =
        i32_at(payload, 0).ok_or_else(|| format!("an error message of {} bytes", payload.len()))?;
    let mut message = None;
    if flags & NLM_F_ACK_TLVS != 0 {
        let echoed = payload.get(4..).unwrap_or_default();
        let echoed_len = if flags & NLM_F_CAPPED != 0 {
            Some(HEADER_LEN)
        } else {
            u32_at(echoed, 0).map(|len| len as usize)
        };
        if let Some(attributes) = echoed_len.and_then(|len| echoed.get(align(len)..)) {
            message = string_attribute(attributes, NLMSGERR_ATTR_MSG);
        }
    }
    Ok(Status { code, message })
}

/// The payload of an `NLMSG_DONE`: the dump's result (the kernel may send
/// none), then the extended ACK's attributes when `NLM_F_ACK_TLVS`.
pub(crate) fn parse_done(flags: u16, payload: &[u8]) -> Status {
    let code = i32_at(payload, 0).unwrap_or(0);
    let message = if flags & NLM_F_ACK_TLVS != 0 {
        string_attribute(payload.get(4..).unwrap_or_default(), NLMSGERR_ATTR_MSG)
    } else {
        None
    };
    Status { code, message }
}

/// The string value of the first attribute of type `kind`.
fn string_attribute(mut attributes: &[u8], kind: u16) -> Option<String> {
    while let (Some(len), Some(this)) = (u16_at(attributes, 0), u16_at(attributes, 2)) {
        let len = usize::from(len);
        let value = attributes.get(4..len)?;
        if this & NLA_TYPE_MASK == kind {
            let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
            return Some(String::from_utf8_lossy(&value[..end]).into_owned());
        }
        attributes = attributes.get(align(len.max(4))..)?;
    }
    None
}

/// `NLMSG_ALIGN` and `NLA_ALIGN`: 4 bytes.
pub(crate) fn align(len: usize) -> usize {
    len.saturating_add(3) & !3
}

fn u16_at(bytes: &[u8], offset: usize) -> Option<u16> {
    let b = bytes.get(offset..offset.checked_add(2)?)?;
    Some(u16::from_ne_bytes([b[0], b[1]]))
}

fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    let b = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

fn i32_at(bytes: &[u8], offset: usize) -> Option<i32> {
    u32_at(bytes, offset).map(|v| v as i32)
}

fn io_error(what: impl Fn() -> String) -> impl Fn(io::Error) -> NetlinkError {
    move |source| NetlinkError::Io {
        what: what(),
        source,
    }
}

fn malformed(what: &impl Fn() -> String, reason: String) -> NetlinkError {
    NetlinkError::Malformed {
        what: what(),
        reason,
    }
}

#[cfg(test)]
mod tests;

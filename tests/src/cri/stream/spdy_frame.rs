//! SPDY/3.1 frames, the few a client of kubelet's streaming protocol
//! needs (draft-mbelshe-httpbis-spdy-00 section 2, and the Go framer
//! containerd 1.6 vendors: `github.com/moby/spdystream/spdy`).
//!
//! ```text
//! control: |1| version=3 (15) | type (16) | flags (8) | length (24) | payload
//! data:    |0| stream id (31)             | flags (8) | length (24) | data
//! ```
//!
//! Header blocks are zlib streams, one per connection and direction,
//! with the SPDY/3 dictionary and a sync flush after each block. The Go
//! reader checks the dictionary's Adler-32 and that each block is used
//! up exactly; it does not need us to compress. So our stream is the
//! zlib header (FDICT set, the dictionary's checksum) once, then per
//! block a stored (uncompressed) deflate block and the empty stored
//! block of a sync flush, which makes the reader hand the block over.
//! The server's header blocks (SYN_REPLY) are skipped, not decoded.

use std::io::{self, Read};

/// SPDY's version.
pub const VERSION: u16 = 3;
/// Control frame types.
pub const SYN_STREAM: u16 = 1;
/// A stream accepted.
pub const SYN_REPLY: u16 = 2;
/// A stream refused or aborted.
pub const RST_STREAM: u16 = 3;
/// Connection settings.
pub const SETTINGS: u16 = 4;
/// Liveness.
pub const PING: u16 = 6;
/// The connection ends.
pub const GOAWAY: u16 = 7;
/// Flow control (spdystream ignores it).
pub const WINDOW_UPDATE: u16 = 9;
/// The sender's last frame on the stream (half-close).
pub const FLAG_FIN: u8 = 0x01;

/// Adler-32 of the SPDY/3 header dictionary (the 1423 bytes of the
/// draft's section 2.6.10.1, `headerDictionary` in spdystream's
/// `dictionary.go`), which the zlib header names.
pub const DICTIONARY_ADLER32: u32 = 0xe3c6_a7c2;

/// The biggest header block one stored deflate block holds.
const MAX_STORED: usize = 0xffff;
/// The biggest frame payload accepted (24-bit length).
const MAX_PAYLOAD: usize = 0x00ff_ffff;

/// A frame read from the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A control frame, its payload undecoded.
    Control {
        /// SYN_REPLY, PING...
        kind: u16,
        /// Its flags.
        flags: u8,
        /// Its payload.
        payload: Vec<u8>,
    },
    /// Data on a stream.
    Data {
        /// The stream.
        stream: u32,
        /// FIN or not.
        flags: u8,
        /// The bytes.
        data: Vec<u8>,
    },
}

impl Frame {
    /// The stream a control frame's payload starts with (SYN_REPLY,
    /// RST_STREAM, WINDOW_UPDATE).
    pub fn control_stream(payload: &[u8]) -> Option<u32> {
        let word: [u8; 4] = payload.get(..4)?.try_into().ok()?;
        Some(u32::from_be_bytes(word) & 0x7fff_ffff)
    }
}

/// Reads one frame.
pub fn read_frame(reader: &mut impl Read) -> io::Result<Frame> {
    let mut head = [0u8; 8];
    reader.read_exact(&mut head)?;
    let first = u32::from_be_bytes(head[..4].try_into().expect("4 bytes"));
    let flags = head[4];
    let length = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    let mut payload = vec![0u8; length];
    reader.read_exact(&mut payload)?;
    if first & 0x8000_0000 != 0 {
        Ok(Frame::Control {
            kind: (first & 0xffff) as u16,
            flags,
            payload,
        })
    } else {
        Ok(Frame::Data {
            stream: first & 0x7fff_ffff,
            flags,
            data: payload,
        })
    }
}

fn frame_head(first: u32, flags: u8, length: usize) -> Vec<u8> {
    assert!(length <= MAX_PAYLOAD, "a SPDY frame of {length} bytes");
    let mut frame = Vec::with_capacity(8 + length);
    frame.extend_from_slice(&first.to_be_bytes());
    frame.push(flags);
    frame.extend_from_slice(&(length as u32).to_be_bytes()[1..]);
    frame
}

fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let first = 0x8000_0000 | (u32::from(VERSION) << 16) | u32::from(kind);
    let mut frame = frame_head(first, flags, payload.len());
    frame.extend_from_slice(payload);
    frame
}

/// SYN_STREAM opening `stream` (odd: ours) with a compressed header block.
pub fn syn_stream(stream: u32, compressed_headers: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(10 + compressed_headers.len());
    payload.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    payload.extend_from_slice(&0u32.to_be_bytes()); // associated-to
    payload.extend_from_slice(&[0, 0]); // priority 0, slot 0
    payload.extend_from_slice(compressed_headers);
    control(SYN_STREAM, 0, &payload)
}

/// A PING answering the server's `payload` (its id) unchanged.
pub fn ping(payload: &[u8]) -> Vec<u8> {
    control(PING, 0, payload)
}

/// GOAWAY: we open no more streams.
pub fn goaway(last_good_stream: u32) -> Vec<u8> {
    let mut payload = last_good_stream.to_be_bytes().to_vec();
    payload.extend_from_slice(&0u32.to_be_bytes()); // OK
    control(GOAWAY, 0, &payload)
}

/// A data frame on `stream`; `fin` half-closes it.
pub fn data(stream: u32, bytes: &[u8], fin: bool) -> Vec<u8> {
    let flags = if fin { FLAG_FIN } else { 0 };
    let mut frame = frame_head(stream & 0x7fff_ffff, flags, bytes.len());
    frame.extend_from_slice(bytes);
    frame
}

/// The uncompressed name/value block: a count, then each name and value
/// with its 32-bit big-endian length. Names must be lower case.
pub fn header_block(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut block = (headers.len() as u32).to_be_bytes().to_vec();
    for (name, value) in headers {
        debug_assert_eq!(
            *name,
            name.to_lowercase(),
            "SPDY header names are lower case"
        );
        for part in [name, value] {
            block.extend_from_slice(&(part.len() as u32).to_be_bytes());
            block.extend_from_slice(part.as_bytes());
        }
    }
    block
}

/// Our side's header zlib stream; see the module documentation.
#[derive(Debug, Default)]
pub struct HeaderCompressor {
    started: bool,
}

impl HeaderCompressor {
    /// The next compressed block carrying `headers`.
    pub fn compress(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let block = header_block(headers);
        assert!(
            block.len() <= MAX_STORED,
            "a {}-byte header block",
            block.len()
        );
        let mut out = Vec::with_capacity(block.len() + 16);
        if !self.started {
            // CMF: deflate, 32K window; FLG: FDICT, level 2, check bits.
            out.extend_from_slice(&[0x78, 0xbb]);
            out.extend_from_slice(&DICTIONARY_ADLER32.to_be_bytes());
            self.started = true;
        }
        out.extend_from_slice(&stored_block(&block));
        out.extend_from_slice(&stored_block(&[]));
        out
    }
}

/// A non-final stored deflate block: BFINAL=0 BTYPE=00 (padded to a
/// byte), LEN and its complement, little-endian, then the bytes.
fn stored_block(bytes: &[u8]) -> Vec<u8> {
    let len = bytes.len() as u16;
    let mut out = vec![0u8];
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_zlib_header_has_fdict_and_a_valid_check() {
        let cmf_flg = u16::from_be_bytes([0x78, 0xbb]);

        assert_eq!(cmf_flg % 31, 0);
        assert_ne!(0xbb & 0x20, 0, "FDICT");
    }

    #[test]
    fn compress_starts_the_stream_once_and_ends_each_block_with_a_sync_flush() {
        let mut compressor = HeaderCompressor::default();
        let headers = [("streamtype", "error")];
        let block = header_block(&headers);

        let first = compressor.compress(&headers);
        let second = compressor.compress(&headers);

        assert_eq!(&first[..2], &[0x78, 0xbb]);
        assert_eq!(&first[2..6], &DICTIONARY_ADLER32.to_be_bytes());
        assert_eq!(&first[6..], second.as_slice());
        let len = block.len() as u16;
        assert_eq!(second[0], 0);
        assert_eq!(&second[1..3], &len.to_le_bytes());
        assert_eq!(&second[3..5], &(!len).to_le_bytes());
        assert_eq!(&second[5..5 + block.len()], block.as_slice());
        assert_eq!(&second[5 + block.len()..], &[0, 0, 0, 0xff, 0xff]);
    }

    #[test]
    fn header_block_counts_and_prefixes_each_name_and_value() {
        let block = header_block(&[("a", "bc")]);

        assert_eq!(
            block,
            [0, 0, 0, 1, 0, 0, 0, 1, b'a', 0, 0, 0, 2, b'b', b'c']
        );
    }

    #[test]
    fn frames_round_trip_through_read_frame() {
        let syn = syn_stream(3, b"hdr");
        let fin = data(5, b"xy", true);
        let mut bytes = syn.as_slice().chain(fin.as_slice());

        let Frame::Control {
            kind,
            flags,
            payload,
        } = read_frame(&mut bytes).unwrap()
        else {
            panic!("a control frame")
        };
        assert_eq!((kind, flags), (SYN_STREAM, 0));
        assert_eq!(Frame::control_stream(&payload), Some(3));
        assert_eq!(&payload[10..], b"hdr");
        assert_eq!(&syn[..4], &[0x80, 0x03, 0x00, 0x01]);
        assert_eq!(
            read_frame(&mut bytes).unwrap(),
            Frame::Data {
                stream: 5,
                flags: FLAG_FIN,
                data: b"xy".to_vec()
            }
        );
    }
}

//! Framing: a big-endian `u32` body length, then a JSON body.
//!
//! The reader is the part that faces untrusted input. It allocates at most
//! the configured limit, tells a clean end of stream (between frames) from a
//! peer that went away mid-frame, and skips over an oversized body so that
//! the stream stays in step and the caller can answer with an error instead
//! of hanging up.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The largest body either side sends or accepts: 1 MiB. Stdio and file data
/// travel in chunks well below it.
pub const MAX_FRAME_LEN: u32 = 1 << 20;

/// Size of the length prefix.
pub const HEADER_LEN: usize = 4;

/// What can go wrong reading or writing a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announced more than the limit. If the reader
    /// skips oversized bodies, the body was skipped and the next frame can
    /// still be read.
    #[error("frame of {len} bytes is over the limit of {limit} bytes")]
    TooLarge {
        /// The announced body length.
        len: u64,
        /// The limit in force.
        limit: u32,
        /// Whether the body was skipped (the stream is still in step).
        skipped: bool,
    },
    /// The peer closed the stream inside a frame.
    #[error("peer closed the connection in the middle of a frame ({got} of {expected} bytes)")]
    Truncated {
        /// Bytes of the frame (header included) that arrived.
        got: usize,
        /// Bytes the frame should have had.
        expected: usize,
    },
    /// The body is not the JSON of the expected message.
    #[error("malformed frame body: {0}")]
    Malformed(#[source] serde_json::Error),
    /// The transport failed.
    #[error("connection error: {0}")]
    Io(#[source] io::Error),
}

impl FrameError {
    /// True when the stream is still in step after this error: the next frame
    /// can be read, so the caller may answer and go on.
    pub fn is_recoverable(&self) -> bool {
        matches!(
            self,
            FrameError::TooLarge { skipped: true, .. } | FrameError::Malformed(_)
        )
    }
}

/// Serializes `msg` into one frame, header included.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut buf = vec![0u8; HEADER_LEN];
    serde_json::to_writer(&mut buf, msg).map_err(FrameError::Malformed)?;
    let len = buf.len() - HEADER_LEN;
    if len > MAX_FRAME_LEN as usize {
        return Err(FrameError::TooLarge {
            len: len as u64,
            limit: MAX_FRAME_LEN,
            skipped: false,
        });
    }
    buf[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf)
}

/// Writes `msg` as one frame with a single `write_all`, so frames written by
/// several threads under one lock never interleave.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), FrameError> {
    let buf = encode(msg)?;
    w.write_all(&buf).map_err(FrameError::Io)?;
    w.flush().map_err(FrameError::Io)
}

/// Reads frames from a byte stream.
pub struct FrameReader<R> {
    inner: R,
    limit: u32,
    skip_oversized: bool,
}

impl<R: Read> FrameReader<R> {
    /// A reader with the default limit, [`MAX_FRAME_LEN`].
    pub fn new(inner: R) -> Self {
        Self::with_limit(inner, MAX_FRAME_LEN)
    }

    /// A reader that refuses bodies over `limit` bytes and skips them, so
    /// that the caller can answer with an error and go on (the agent does).
    pub fn with_limit(inner: R, limit: u32) -> Self {
        FrameReader {
            inner,
            limit,
            skip_oversized: true,
        }
    }

    /// A reader that fails at once on an oversized length, without waiting
    /// for a body that an untrusted peer may never send (the host does).
    pub fn strict(inner: R) -> Self {
        FrameReader {
            inner,
            limit: MAX_FRAME_LEN,
            skip_oversized: false,
        }
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Reads the next frame's body. `Ok(None)` is a clean end of stream.
    pub fn read_body(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let mut header = [0u8; HEADER_LEN];
        let got = read_full(&mut self.inner, &mut header)?;
        if got == 0 {
            return Ok(None);
        }
        if got < HEADER_LEN {
            return Err(FrameError::Truncated {
                got,
                expected: HEADER_LEN,
            });
        }
        let len = u32::from_be_bytes(header);
        if len > self.limit {
            if self.skip_oversized {
                self.skip(len)?;
            }
            return Err(FrameError::TooLarge {
                len: len.into(),
                limit: self.limit,
                skipped: self.skip_oversized,
            });
        }
        let mut body = vec![0u8; len as usize];
        let got = read_full(&mut self.inner, &mut body)?;
        if got < body.len() {
            return Err(FrameError::Truncated {
                got: HEADER_LEN + got,
                expected: HEADER_LEN + body.len(),
            });
        }
        Ok(Some(body))
    }

    /// Reads and decodes the next frame. `Ok(None)` is a clean end of stream.
    pub fn read_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        match self.read_body()? {
            None => Ok(None),
            Some(body) => serde_json::from_slice(&body)
                .map(Some)
                .map_err(FrameError::Malformed),
        }
    }

    /// Discards an oversized body without buffering it.
    fn skip(&mut self, len: u32) -> Result<(), FrameError> {
        let want = u64::from(len);
        let skipped =
            io::copy(&mut (&mut self.inner).take(want), &mut io::sink()).map_err(FrameError::Io)?;
        if skipped < want {
            return Err(FrameError::Truncated {
                got: HEADER_LEN + skipped as usize,
                expected: HEADER_LEN + len as usize,
            });
        }
        Ok(())
    }
}

/// Fills `buf` unless the stream ends first; returns how much was read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize, FrameError> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{HostMessage, Request};
    use std::io::Cursor;

    fn ping(id: u64) -> HostMessage {
        HostMessage::Request {
            id,
            request: Request::Ping,
        }
    }

    #[test]
    fn frames_round_trip_in_order() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &ping(1)).unwrap();
        write_frame(&mut wire, &ping(2)).unwrap();

        let mut reader = FrameReader::new(Cursor::new(wire));

        assert_eq!(reader.read_frame::<HostMessage>().unwrap(), Some(ping(1)));
        assert_eq!(reader.read_frame::<HostMessage>().unwrap(), Some(ping(2)));
        assert_eq!(reader.read_frame::<HostMessage>().unwrap(), None);
    }

    #[test]
    fn header_is_big_endian_body_length() {
        let frame = encode(&ping(7)).unwrap();
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - HEADER_LEN);
    }

    #[test]
    fn oversized_frame_is_refused_and_the_next_one_still_reads() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&100u32.to_be_bytes());
        wire.extend_from_slice(&[b'x'; 100]);
        write_frame(&mut wire, &ping(3)).unwrap();
        let mut reader = FrameReader::with_limit(Cursor::new(wire), 64);

        let err = reader.read_frame::<HostMessage>().unwrap_err();

        assert!(
            matches!(
                err,
                FrameError::TooLarge {
                    len: 100,
                    limit: 64,
                    skipped: true
                }
            ),
            "{err}"
        );
        assert!(err.is_recoverable());
        assert_eq!(reader.read_frame::<HostMessage>().unwrap(), Some(ping(3)));
    }

    #[test]
    fn strict_reader_fails_at_once_on_an_oversized_length() {
        let wire = (MAX_FRAME_LEN + 1).to_be_bytes().to_vec();
        let mut reader = FrameReader::strict(Cursor::new(wire));

        let err = reader.read_body().unwrap_err();

        assert!(
            matches!(err, FrameError::TooLarge { skipped: false, .. }),
            "{err}"
        );
        assert!(!err.is_recoverable());
    }

    #[test]
    fn huge_length_does_not_allocate_it() {
        let wire = u32::MAX.to_be_bytes().to_vec();
        let mut reader = FrameReader::new(Cursor::new(wire));

        let err = reader.read_body().unwrap_err();

        assert!(matches!(err, FrameError::Truncated { got: 4, .. }), "{err}");
    }

    #[test]
    fn peer_leaving_inside_the_header_is_truncation() {
        let mut reader = FrameReader::new(Cursor::new(vec![0u8, 0]));
        let err = reader.read_body().unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::Truncated {
                    got: 2,
                    expected: 4
                }
            ),
            "{err}"
        );
        assert!(!err.is_recoverable());
    }

    #[test]
    fn peer_leaving_inside_the_body_is_truncation() {
        let mut wire = encode(&ping(1)).unwrap();
        let full = wire.len();
        wire.truncate(full - 3);
        let mut reader = FrameReader::new(Cursor::new(wire));

        let err = reader.read_body().unwrap_err();

        assert!(
            matches!(err, FrameError::Truncated { got, expected } if got == full - 3 && expected == full),
            "{err}"
        );
    }

    #[test]
    fn malformed_json_is_recoverable() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&5u32.to_be_bytes());
        wire.extend_from_slice(b"{oops");
        write_frame(&mut wire, &ping(9)).unwrap();
        let mut reader = FrameReader::new(Cursor::new(wire));

        let err = reader.read_frame::<HostMessage>().unwrap_err();

        assert!(matches!(err, FrameError::Malformed(_)), "{err}");
        assert_eq!(reader.read_frame::<HostMessage>().unwrap(), Some(ping(9)));
    }

    #[test]
    fn encode_refuses_a_body_over_the_limit() {
        let big = HostMessage::Request {
            id: 1,
            request: Request::ReadFile {
                path: "x".repeat(MAX_FRAME_LEN as usize),
            },
        };
        assert!(matches!(encode(&big), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap, deterministic stand-in for the fuzz target that runs in CI.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 64) as usize;
            let bytes: Vec<u8> = (0..len).map(|i| (seed >> (i % 8 * 8)) as u8).collect();
            crate::fuzz_decode(&bytes);
        }
    }
}

//! Serves the host on one connection: reads requests, answers each.
//!
//! The host is the agent's only peer, but a broken frame still gets an answer
//! ([`GuestMessage::ProtocolError`]) and never a panic: the decoder stays in
//! step after a malformed or oversized frame.

use std::io::{self, Read};
use std::path::{Component, Path};

use husk_protocol::{
    AgentError, FrameError, FrameReader, GuestMessage, HostMessage, Request, Response,
};

use crate::container::Sandbox;
use crate::network::GuestNetwork;
use crate::outbox::Outbox;

/// Largest file [`Request::ReadFile`] returns; keeps the answer under the
/// frame limit after base64.
pub const MAX_READ_FILE: u64 = 512 * 1024;

/// Why serving stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The host asked for a shutdown (already answered).
    Shutdown,
    /// The host closed the connection.
    HostGone,
}

/// Answers requests from `reader` through `outbox` until a shutdown or the
/// end of the connection. Container requests go to one [`Sandbox`]; stdio
/// and exits flow through `outbox` from its threads meanwhile.
pub fn serve<R: Read>(
    reader: &mut FrameReader<R>,
    outbox: &Outbox,
    share_root: &Path,
) -> Result<Outcome, FrameError> {
    let sandbox = Sandbox::new(outbox.clone(), share_root);
    let network = GuestNetwork::default();
    loop {
        let message = match reader.read_frame::<HostMessage>() {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(Outcome::HostGone),
            Err(e) if e.is_recoverable() => {
                let answer = GuestMessage::ProtocolError {
                    message: e.to_string(),
                };
                outbox.send(&answer)?;
                continue;
            }
            Err(e) => return Err(e),
        };
        match message {
            HostMessage::Request { id, request } => {
                let shutdown = request == Request::Shutdown;
                let result = handle(request, share_root, &sandbox, &network);
                if let Err(e) = outbox.send(&GuestMessage::Response { id, result }) {
                    if !e.is_recoverable() {
                        return Err(e);
                    }
                    let result = Err(AgentError::new(format!("encoding the answer: {e}")));
                    outbox.send(&GuestMessage::Response { id, result })?;
                }
                if shutdown {
                    return Ok(Outcome::Shutdown);
                }
            }
            HostMessage::StreamData { stream, data } => sandbox.stream_data(stream, data.0),
            HostMessage::StreamEof { stream } => sandbox.stream_eof(stream),
            HostMessage::StreamCredit { stream, bytes } => sandbox.stream_credit(stream, bytes),
        }
    }
}

/// Carries out one request.
pub fn handle(
    request: Request,
    share_root: &Path,
    sandbox: &Sandbox,
    network: &GuestNetwork,
) -> Result<Response, AgentError> {
    match request {
        Request::ConfigureNetwork(description) => network
            .configure(&description)
            .map(|()| Response::Done)
            .map_err(|e| AgentError::new(format!("configuring the network: {e:#}"))),
        Request::Ping => Ok(Response::Pong {
            boot_time_ns: boot_time_ns(),
        }),
        Request::ReadFile { path } => read_share_file(share_root, &path),
        Request::Shutdown => Ok(Response::ShuttingDown),
        other => sandbox.handle(other),
    }
}

fn read_share_file(share_root: &Path, path: &str) -> Result<Response, AgentError> {
    let relative = Path::new(path);
    if path.is_empty()
        || !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(AgentError::new(format!(
            "read_file: path {path:?} must be relative to the share, without '..'"
        )));
    }
    let full = share_root.join(relative);
    let io_err = |e: io::Error| AgentError {
        errno: e.raw_os_error(),
        message: format!("read_file {}: {e}", full.display()),
    };
    let file = std::fs::File::open(&full).map_err(io_err)?;
    let mut data = Vec::new();
    file.take(MAX_READ_FILE + 1)
        .read_to_end(&mut data)
        .map_err(io_err)?;
    if data.len() as u64 > MAX_READ_FILE {
        return Err(AgentError::new(format!(
            "read_file {}: larger than the limit of {MAX_READ_FILE} bytes",
            full.display()
        )));
    }
    Ok(Response::File { data: data.into() })
}

/// Guest time since boot, CLOCK_BOOTTIME, in nanoseconds.
pub fn boot_time_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the valid timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_protocol::frame::encode;
    use std::io::{Cursor, Write};

    /// Runs `serve` over the given host bytes and returns what the agent wrote.
    fn serve_bytes(
        input: Vec<u8>,
        share: &Path,
    ) -> (Result<Outcome, FrameError>, Vec<GuestMessage>) {
        struct Duplex(Cursor<Vec<u8>>);
        impl Read for Duplex {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.0.read(buf)
            }
        }
        impl Write for Duplex {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        #[derive(Clone, Default)]
        struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut reader = FrameReader::new(Duplex(Cursor::new(input)));
        let out = Shared::default();
        let outcome = serve(&mut reader, &Outbox::new(out.clone()), share);
        let bytes = out.0.lock().unwrap().clone();
        let mut answers = Vec::new();
        let mut r = FrameReader::new(Cursor::new(bytes));
        while let Some(m) = r.read_frame().unwrap() {
            answers.push(m);
        }
        (outcome, answers)
    }

    fn request(id: u64, request: Request) -> Vec<u8> {
        encode(&HostMessage::Request { id, request }).unwrap()
    }

    #[test]
    fn ping_then_shutdown_are_answered_in_order() {
        let mut input = request(1, Request::Ping);
        input.extend(request(2, Request::Shutdown));
        input.extend(request(3, Request::Ping));

        let (outcome, answers) = serve_bytes(input, Path::new("/nonexistent"));

        assert_eq!(outcome.unwrap(), Outcome::Shutdown);
        assert_eq!(
            answers.len(),
            2,
            "nothing is served after shutdown: {answers:?}"
        );
        assert!(matches!(
            answers[0],
            GuestMessage::Response {
                id: 1,
                result: Ok(Response::Pong { .. })
            }
        ));
        assert_eq!(
            answers[1],
            GuestMessage::Response {
                id: 2,
                result: Ok(Response::ShuttingDown)
            }
        );
    }

    #[test]
    fn oversized_frame_gets_an_error_and_serving_goes_on() {
        let mut input = (husk_protocol::MAX_FRAME_LEN + 1).to_be_bytes().to_vec();
        input.resize(
            input.len() + husk_protocol::MAX_FRAME_LEN as usize + 1,
            b'x',
        );
        input.extend(request(5, Request::Ping));

        let (outcome, answers) = serve_bytes(input, Path::new("/"));

        assert_eq!(outcome.unwrap(), Outcome::HostGone);
        assert!(
            matches!(&answers[0], GuestMessage::ProtocolError { message } if message.contains("over the limit")),
            "{answers:?}"
        );
        assert!(matches!(
            answers[1],
            GuestMessage::Response {
                id: 5,
                result: Ok(_)
            }
        ));
    }

    #[test]
    fn garbage_body_gets_an_error() {
        let mut input = 3u32.to_be_bytes().to_vec();
        input.extend_from_slice(b"}{]");

        let (_, answers) = serve_bytes(input, Path::new("/"));

        assert!(
            matches!(&answers[0], GuestMessage::ProtocolError { message } if message.contains("malformed"))
        );
    }

    #[test]
    fn host_leaving_mid_frame_is_an_error_not_a_panic() {
        let mut input = request(1, Request::Ping);
        input.truncate(input.len() - 1);

        let (outcome, answers) = serve_bytes(input, Path::new("/"));

        assert!(matches!(outcome, Err(FrameError::Truncated { .. })));
        assert!(answers.is_empty());
    }

    #[test]
    fn read_file_reads_inside_the_share() {
        let dir = std::env::temp_dir().join(format!("husk-agent-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/f"), b"hello").unwrap();

        let got = read_share_file(&dir, "sub/f");

        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            got,
            Ok(Response::File {
                data: b"hello".to_vec().into()
            })
        );
    }

    #[test]
    fn read_file_refuses_escaping_paths() {
        for path in ["../etc/passwd", "/etc/passwd", "a/../../b", ""] {
            let err = read_share_file(Path::new("/tmp"), path).unwrap_err();
            assert!(err.message.contains("must be relative"), "{path}: {err}");
        }
    }

    #[test]
    fn read_file_of_a_missing_file_names_it_with_errno() {
        let err = read_share_file(Path::new("/nonexistent"), "missing").unwrap_err();
        assert_eq!(err.errno, Some(libc::ENOENT));
        assert!(err.message.contains("/nonexistent/missing"), "{err}");
    }
}

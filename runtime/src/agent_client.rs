//! The host end of the agent channel.
//!
//! Before a VM starts, the runtime listens on the hybrid vsock socket for the
//! agent's port (`<vsock_uds>_<port>`); the agent connects out at boot and
//! says hello, so readiness needs no polling of the guest. After that the
//! connection carries requests and their responses.
//!
//! Trust: every byte from the guest is untrusted. Frames are size-limited by
//! the decoder, every read has a deadline, and anything that is not the
//! expected message is an error, never a panic.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use husk_protocol::frame::write_frame;
use husk_protocol::{
    check_version, AgentError, FrameError, FrameReader, GuestMessage, Hello, HostMessage, Request,
    Response, VersionMismatch,
};

/// Errors talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentClientError {
    /// Setting up the listening socket failed.
    #[error("listening on {path}: {source}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Nothing arrived in time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
    /// The VM ended while we waited.
    #[error("the VM stopped ({0}) before {1}")]
    VmStopped(String, &'static str),
    /// The connection broke or carried a bad frame.
    #[error("agent connection: {0}")]
    Frame(#[from] FrameError),
    /// The agent closed the connection.
    #[error("the agent closed the connection while the host waited for {0}")]
    Closed(&'static str),
    /// The agent speaks another protocol version.
    #[error(transparent)]
    Version(#[from] VersionMismatch),
    /// The agent sent something that does not fit.
    #[error("unexpected message from the agent while waiting for {expected}: {got}")]
    Unexpected {
        /// What we waited for.
        expected: &'static str,
        /// A short description of what came.
        got: String,
    },
    /// The agent carried out the request and it failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// Socket options or polling failed.
    #[error("agent connection: {0}")]
    Io(#[from] io::Error),
}

/// Listens for the agent's connection on one hybrid vsock port.
pub struct AgentListener {
    listener: UnixListener,
    path: PathBuf,
}

impl AgentListener {
    /// Binds `<vsock_uds>_<port>`.
    pub fn bind(vsock_uds: &Path, port: u32) -> Result<Self, AgentClientError> {
        let mut name = vsock_uds.as_os_str().to_owned();
        name.push(format!("_{port}"));
        let path = PathBuf::from(name);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(|source| AgentClientError::Listen {
            path: path.clone(),
            source,
        })?;
        Ok(AgentListener { listener, path })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits until `deadline` for the agent to connect and say hello.
    /// `vm_stopped` is polled meanwhile and ends the wait early with the
    /// reason it returns.
    pub fn accept(
        &self,
        deadline: Instant,
        mut vm_stopped: impl FnMut() -> Option<String>,
    ) -> Result<AgentConn, AgentClientError> {
        const WHAT: &str = "the agent's hello";
        let started = Instant::now();
        loop {
            if let Some(reason) = vm_stopped() {
                return Err(AgentClientError::VmStopped(reason, WHAT));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(AgentClientError::Timeout(now - started, WHAT));
            }
            let wait = (deadline - now).min(Duration::from_millis(20));
            if poll_readable(self.listener.as_raw_fd(), wait)? {
                let (stream, _) = self.listener.accept()?;
                return AgentConn::handshake(
                    stream,
                    deadline.saturating_duration_since(Instant::now()),
                );
            }
        }
    }
}

impl Drop for AgentListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Waits up to `timeout` for `fd` to become readable.
fn poll_readable(fd: i32, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd, count 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    match rc {
        -1 if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => Ok(false),
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(false),
        _ => Ok(true),
    }
}

/// A connected agent.
pub struct AgentConn {
    reader: FrameReader<UnixStream>,
    writer: UnixStream,
    hello: Hello,
    next_id: u64,
}

impl AgentConn {
    /// Reads the hello and checks the version.
    pub fn handshake(stream: UnixStream, timeout: Duration) -> Result<Self, AgentClientError> {
        stream.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let writer = stream.try_clone()?;
        let mut reader = FrameReader::strict(stream);
        let hello = match read_message(&mut reader, "the agent's hello")? {
            GuestMessage::Hello(hello) => hello,
            other => {
                return Err(AgentClientError::Unexpected {
                    expected: "the agent's hello",
                    got: summarize(&other),
                })
            }
        };
        check_version(hello.protocol_version)?;
        Ok(AgentConn {
            reader,
            writer,
            hello,
            next_id: 1,
        })
    }

    /// What the agent said at boot.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// Sends `request` and waits up to `timeout` for its response.
    pub fn request(
        &mut self,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, AgentClientError> {
        const WHAT: &str = "a response";
        let id = self.next_id;
        self.next_id += 1;
        write_frame(&mut self.writer, &HostMessage::Request { id, request })?;
        match self.receive_for(timeout, WHAT)? {
            GuestMessage::Response { id: got, result } if got == id => Ok(result?),
            other => Err(AgentClientError::Unexpected {
                expected: WHAT,
                got: summarize(&other),
            }),
        }
    }

    /// Writes raw bytes on the connection (tests of the agent's decoder).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), AgentClientError> {
        use std::io::Write;
        self.writer.write_all(bytes)?;
        Ok(())
    }

    /// The read and write halves, for a caller that multiplexes the
    /// connection itself (the sandbox monitor). Reads get no timeout.
    pub fn into_parts(self) -> io::Result<(FrameReader<UnixStream>, UnixStream)> {
        self.reader.get_ref().set_read_timeout(None)?;
        Ok((self.reader, self.writer))
    }

    /// Closes the connection in both directions.
    pub fn disconnect(&mut self) {
        let _ = self.writer.shutdown(std::net::Shutdown::Both);
    }

    /// Reads the next message, whatever it is.
    pub fn receive(&mut self, timeout: Duration) -> Result<GuestMessage, AgentClientError> {
        self.receive_for(timeout, "a message")
    }

    /// Reads the next message within `timeout`; `what` names it in errors.
    fn receive_for(
        &mut self,
        timeout: Duration,
        what: &'static str,
    ) -> Result<GuestMessage, AgentClientError> {
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        read_message(&mut self.reader, what)
    }
}

fn read_message(
    reader: &mut FrameReader<UnixStream>,
    what: &'static str,
) -> Result<GuestMessage, AgentClientError> {
    match reader.read_frame::<GuestMessage>() {
        Ok(Some(message)) => Ok(message),
        Ok(None) => Err(AgentClientError::Closed(what)),
        Err(FrameError::Io(e))
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            let timeout = reader
                .get_ref()
                .read_timeout()
                .ok()
                .flatten()
                .unwrap_or_default();
            Err(AgentClientError::Timeout(timeout, what))
        }
        Err(e) => Err(e.into()),
    }
}

/// A short, bounded description of a message for error text (the guest
/// controls its content).
fn summarize(message: &GuestMessage) -> String {
    let mut text = format!("{message:?}");
    if text.len() > 200 {
        let mut cut = 200;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_protocol::frame::encode;
    use husk_protocol::PROTOCOL_VERSION;
    use std::io::Write;

    fn hello(version: u32) -> GuestMessage {
        GuestMessage::Hello(Hello {
            protocol_version: version,
            agent_version: "0.1.0".into(),
            kernel_release: "6.1".into(),
            boot_time_ns: 1,
            share: Ok("/run/husk/shared".into()),
        })
    }

    /// A listener in a temp dir and a fake agent connecting to it.
    fn connect_fake_agent(
        first: Vec<u8>,
    ) -> (
        tempfile::TempDir,
        Result<AgentConn, AgentClientError>,
        UnixStream,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let listener = AgentListener::bind(&dir.path().join("vsock.sock"), 1024).unwrap();
        let mut agent = UnixStream::connect(listener.path()).unwrap();
        agent.write_all(&first).unwrap();
        let conn = listener.accept(Instant::now() + Duration::from_secs(5), || None);
        (dir, conn, agent)
    }

    #[test]
    fn listener_uses_the_hybrid_vsock_name_and_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = {
            let listener = AgentListener::bind(&dir.path().join("v.sock"), 1024).unwrap();
            assert_eq!(listener.path(), dir.path().join("v.sock_1024"));
            listener.path().to_path_buf()
        };
        assert!(!path.exists());
    }

    #[test]
    fn hello_with_our_version_is_accepted() {
        let (_dir, conn, _agent) = connect_fake_agent(encode(&hello(PROTOCOL_VERSION)).unwrap());
        assert_eq!(conn.unwrap().hello().agent_version, "0.1.0");
    }

    #[test]
    fn hello_with_another_version_is_refused() {
        let (_dir, conn, _agent) = connect_fake_agent(encode(&hello(99)).unwrap());
        assert!(matches!(conn.err().unwrap(), AgentClientError::Version(_)));
    }

    #[test]
    fn oversized_hello_is_refused_without_reading_it_all() {
        let (_dir, conn, _agent) = connect_fake_agent(u32::MAX.to_be_bytes().to_vec());
        let err = conn.err().unwrap();
        assert!(err.to_string().contains("over the limit"), "{err}");
    }

    #[test]
    fn agent_disconnecting_mid_frame_is_an_error() {
        let mut frame = encode(&hello(PROTOCOL_VERSION)).unwrap();
        frame.truncate(10);
        let dir = tempfile::tempdir().unwrap();
        let listener = AgentListener::bind(&dir.path().join("vsock.sock"), 1024).unwrap();
        let mut agent = UnixStream::connect(listener.path()).unwrap();
        agent.write_all(&frame).unwrap();
        drop(agent);

        let err = listener
            .accept(Instant::now() + Duration::from_secs(5), || None)
            .err()
            .unwrap();

        assert!(err.to_string().contains("middle of a frame"), "{err}");
    }

    #[test]
    fn silence_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let listener = AgentListener::bind(&dir.path().join("vsock.sock"), 1024).unwrap();
        let err = listener
            .accept(Instant::now() + Duration::from_millis(50), || None)
            .err()
            .unwrap();
        assert!(
            matches!(err, AgentClientError::Timeout(_, "the agent's hello")),
            "{err}"
        );
    }

    #[test]
    fn vm_stopping_ends_the_wait_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let listener = AgentListener::bind(&dir.path().join("vsock.sock"), 1024).unwrap();
        let err = listener
            .accept(Instant::now() + Duration::from_secs(10), || {
                Some("qemu exit status: 1".into())
            })
            .err()
            .unwrap();
        assert!(err.to_string().contains("qemu exit status: 1"), "{err}");
    }

    #[test]
    fn response_with_a_wrong_id_is_unexpected() {
        let (_dir, conn, mut agent) = connect_fake_agent(encode(&hello(PROTOCOL_VERSION)).unwrap());
        let mut conn = conn.unwrap();
        let wrong = GuestMessage::Response {
            id: 42,
            result: Ok(Response::ShuttingDown),
        };
        agent.write_all(&encode(&wrong).unwrap()).unwrap();

        let err = conn
            .request(Request::Ping, Duration::from_secs(5))
            .unwrap_err();

        assert!(matches!(err, AgentClientError::Unexpected { .. }), "{err}");
    }

    #[test]
    fn summary_of_a_huge_message_is_bounded() {
        let message = GuestMessage::ProtocolError {
            message: "é".repeat(10_000),
        };
        assert!(summarize(&message).len() <= 210);
    }
}

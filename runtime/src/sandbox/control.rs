//! The monitor's control socket (`ROOT/ID/control.sock`): how the short-lived
//! commands (`start`, `state`, `kill`, `exec`, ...) talk to a container's
//! monitor. One JSON line per request and per reply; `exec` passes its stdio
//! fds along with the request (SCM_RIGHTS) and then reads a second reply
//! when the process exits.
//!
//! Trust: the socket is in the root-only state directory (0700); peers are
//! our own commands.

use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use husk_protocol::oci::{Process, Resources};
use husk_protocol::{ProcessId, ProcessInfo, Stats};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

use crate::oci::state::Status;

/// The socket's name in the container's state directory.
pub const SOCKET: &str = "control.sock";

/// How long a command waits for the monitor's answer (pause and exec can
/// take a moment under emulation).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// What a command asks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlRequest {
    /// The container's status.
    Status,
    /// Start the created container.
    Start,
    /// Signal the container's init, or every process.
    Kill {
        /// The signal number.
        signal: i32,
        /// Every process of the container.
        all: bool,
    },
    /// Signal one exec'd process.
    KillProcess {
        /// The process id the monitor gave it.
        process: ProcessId,
        /// The signal number.
        signal: i32,
    },
    /// Freeze.
    Pause,
    /// Thaw.
    Resume,
    /// List processes.
    Processes,
    /// Read counters.
    Stats,
    /// Change limits.
    Update(Box<Resources>),
    /// Run a process; the request carries stdin, stdout and stderr as fds.
    Exec(Box<Process>),
    /// An exec'd process's terminal changed size.
    Resize {
        /// The process id the monitor gave it.
        process: ProcessId,
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
}

/// What the monitor answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlReply {
    /// The status.
    Status(Status),
    /// Done.
    Done,
    /// The processes.
    Processes(Vec<ProcessInfo>),
    /// The counters.
    Stats(Stats),
    /// An exec'd process runs; `Exited` follows on the same connection.
    ExecStarted {
        /// The monitor's id for it.
        process: ProcessId,
    },
    /// An exec'd process ended.
    Exited {
        /// Its exit code (128 + signal when killed).
        code: i32,
    },
    /// The request failed.
    Error(String),
}

/// Sends one JSON line, with `fds` attached if any.
pub fn send<T: Serialize>(stream: &UnixStream, message: &T, fds: &[RawFd]) -> Result<()> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    if fds.is_empty() {
        (&*stream).write_all(&line)?;
        return Ok(());
    }
    let sent = send_fds(stream, &line, fds).context("sending fds to the monitor")?;
    (&*stream).write_all(&line[sent..])?;
    Ok(())
}

/// Sends `bytes` with `fds` attached (SCM_RIGHTS) in one sendmsg; returns
/// how many bytes went (the rest is the caller's to write).
pub fn send_fds(stream: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> nix::Result<usize> {
    let iov = [IoSlice::new(bytes)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    sendmsg::<()>(stream.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
}

/// Reads one JSON line and the fds that came with its first bytes.
pub fn receive_with_fds<T: for<'de> Deserialize<'de>>(
    stream: &UnixStream,
) -> Result<(T, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut cmsg_space = nix::cmsg_space!([RawFd; 3]);
    let (n, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg_space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .context("reading from the control socket")?;
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs().context("reading control messages")? {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                // SAFETY: the kernel just installed these fds for us; nothing else owns them.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        (msg.bytes, fds)
    };
    let mut line = buf[..n].to_vec();
    if !line.ends_with(b"\n") {
        if n == 0 {
            bail!("the peer closed the control connection");
        }
        let mut rest = Vec::new();
        BufReader::new(stream).read_until(b'\n', &mut rest)?;
        line.extend(rest);
    }
    let message = serde_json::from_slice(&line).context("decoding a control message")?;
    Ok((message, fds))
}

/// Reads one JSON line (no fds expected).
pub fn receive<T: for<'de> Deserialize<'de>>(reader: &mut BufReader<UnixStream>) -> Result<T> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        bail!("the monitor closed the connection");
    }
    serde_json::from_str(&line).context("decoding a control message")
}

/// The control socket of the sandbox whose state is in `dir`.
pub fn socket_path(dir: &Path) -> std::path::PathBuf {
    super::socket_dir::socket_dir(dir).join(SOCKET)
}

/// A command's connection to a monitor.
pub struct ControlClient {
    reader: BufReader<UnixStream>,
}

impl ControlClient {
    /// Connects to the monitor of the container whose state dir is `dir`.
    pub fn connect(dir: &Path) -> Result<ControlClient> {
        let path = socket_path(dir);
        let stream = UnixStream::connect(&path).with_context(|| {
            format!(
                "connecting to the container's monitor at {}",
                path.display()
            )
        })?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        Ok(ControlClient {
            reader: BufReader::new(stream),
        })
    }

    /// Sends a request (with fds) and reads the reply; `Error` replies become errors.
    pub fn call(&mut self, request: &ControlRequest, fds: &[RawFd]) -> Result<ControlReply> {
        send(self.reader.get_ref(), request, fds)?;
        self.next_reply()
    }

    /// Reads the next reply; `Error` replies become errors.
    pub fn next_reply(&mut self) -> Result<ControlReply> {
        match receive(&mut self.reader)? {
            ControlReply::Error(e) => bail!("{e}"),
            reply => Ok(reply),
        }
    }

    /// Waits without a timeout (an exec'd process may run for days).
    pub fn wait_forever(&mut self) -> Result<ControlReply> {
        self.reader.get_ref().set_read_timeout(None)?;
        self.next_reply()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_fds_cross_a_socketpair() {
        let (a, b) = UnixStream::pair().unwrap();
        let file = tempfile::tempfile().unwrap();

        send(
            &a,
            &ControlRequest::Kill {
                signal: 15,
                all: true,
            },
            &[file.as_raw_fd()],
        )
        .unwrap();
        let (got, fds): (ControlRequest, _) = receive_with_fds(&b).unwrap();

        assert!(matches!(
            got,
            ControlRequest::Kill {
                signal: 15,
                all: true
            }
        ));
        assert_eq!(fds.len(), 1);
    }

    #[test]
    fn a_long_request_arrives_whole() {
        let (a, b) = UnixStream::pair().unwrap();
        let process = Process {
            args: vec!["x".repeat(200_000)],
            cwd: "/".into(),
            ..Default::default()
        };
        let writer = std::thread::spawn(move || {
            send(&a, &ControlRequest::Exec(Box::new(process)), &[0]).unwrap();
        });

        let (got, _): (ControlRequest, _) = receive_with_fds(&b).unwrap();

        writer.join().unwrap();
        assert!(matches!(got, ControlRequest::Exec(p) if p.args[0].len() == 200_000));
    }
}

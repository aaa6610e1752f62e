//! Host ends of a process's stdio: input fds read into stream frames
//! within the stream's window (stopping when asked, so an exec'd process
//! that ended leaves no thread behind), output fds written from the
//! agent's stream frames (by [`crate::sandbox::router`], one writer
//! thread per stream, in the order the guest read them).
//!
//! Trust: output bytes come from the guest and are written as they are,
//! never interpreted; each frame is bounded by the decoder.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use husk_protocol::flow::Window;
use husk_protocol::StreamId;

use crate::sandbox::agent_mux::AgentMux;

/// Bytes per input frame.
const CHUNK: usize = 64 * 1024;

/// How often an idle input relay checks whether it should stop.
const STOP_CHECK_MS: i32 = 200;

/// Starts a thread that sends what `fd` yields as `stream`, then an EOF,
/// never more than `window` allows (the guest grants it back as the
/// process reads). Setting `stop` ends it without an EOF frame.
pub fn relay_input(
    fd: OwnedFd,
    stream: StreamId,
    mux: Arc<AgentMux>,
    window: Arc<Window>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(format!("in-{stream}"))
        .spawn(move || {
            let mut file = File::from(fd);
            let mut buf = vec![0u8; CHUNK];
            loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                if !readable(file.as_raw_fd(), STOP_CHECK_MS) {
                    continue;
                }
                let Some(room) = window.take(CHUNK) else {
                    return;
                };
                match file.read(&mut buf[..room]) {
                    Ok(0) => break,
                    Ok(n) => {
                        window.grant((room - n) as u32);
                        if mux.stream_data(stream, &buf[..n]).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                        window.grant(room as u32);
                        continue;
                    }
                    // EIO: a pty whose other side closed.
                    Err(_) => break,
                }
            }
            let _ = mux.stream_eof(stream);
        })?;
    Ok(())
}

fn readable(fd: RawFd, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, count 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    rc > 0
}

/// Where an output stream goes.
#[derive(Debug)]
pub struct OutputSink {
    file: File,
    /// A standard fd of this process to point at /dev/null at EOF (the
    /// monitor's own stdout/stderr are the container's).
    detach_fd: Option<RawFd>,
}

impl OutputSink {
    /// Writes into `fd`.
    pub fn new(fd: OwnedFd) -> Self {
        OutputSink {
            file: File::from(fd),
            detach_fd: None,
        }
    }

    /// Writes into this process's own `fd` (1 or 2), closed at EOF.
    pub fn own(fd: RawFd) -> std::io::Result<Self> {
        // SAFETY: fd is one of this process's standard fds, open for its
        // whole life; the borrow ends with the duplicate (close-on-exec).
        let owned = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
        Ok(OutputSink {
            file: File::from(owned),
            detach_fd: Some(fd),
        })
    }

    /// Writes all of `data`; a reader that went away is not an error (the
    /// data has nowhere to go).
    pub fn write(&mut self, data: &[u8]) {
        let _ = self.file.write_all(data);
    }
}

impl Drop for OutputSink {
    fn drop(&mut self) {
        if let Some(fd) = self.detach_fd {
            if let Ok(null) = File::options().write(true).open("/dev/null") {
                let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
            }
        }
    }
}

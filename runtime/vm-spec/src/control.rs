//! husk-vmm's control socket: one request line, one answer line.
//!
//! | request  | answer                                   |
//! |----------|------------------------------------------|
//! | `state`  | `running`, `paused` or `stopped`          |
//! | `pause`  | `ok` once every vCPU is parked            |
//! | `resume` | `ok`                                     |
//! | `stop`   | `ok`; the monitor then stops the VM      |
//! | `timing` | `first-entry-us <µs from start to the first vCPU entry>` |
//!
//! Errors come back as `error: <message>`. The monitor serves it
//! (`husk_vmm::control`); the runtime asks with [`request`].

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Longest request line the monitor reads.
pub const MAX_REQUEST: u64 = 64;

/// What can be asked of the monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlRequest {
    /// The vCPUs' run state.
    State,
    /// Park every vCPU.
    Pause,
    /// Run them again.
    Resume,
    /// Stop the VM and exit.
    Stop,
    /// Time from the monitor's start to the first vCPU entry.
    Timing,
}

impl ControlRequest {
    /// Every request, for parsing.
    pub const ALL: [ControlRequest; 5] = [
        ControlRequest::State,
        ControlRequest::Pause,
        ControlRequest::Resume,
        ControlRequest::Stop,
        ControlRequest::Timing,
    ];

    /// The request's line (without the newline).
    pub fn as_str(self) -> &'static str {
        match self {
            ControlRequest::State => "state",
            ControlRequest::Pause => "pause",
            ControlRequest::Resume => "resume",
            ControlRequest::Stop => "stop",
            ControlRequest::Timing => "timing",
        }
    }

    /// The request a line names, if any.
    pub fn parse(line: &str) -> Option<ControlRequest> {
        let line = line.trim();
        Self::ALL.into_iter().find(|r| r.as_str() == line)
    }
}

/// Sends `request` to the monitor listening on `socket`; returns its
/// answer, or an error carrying the monitor's `error:` message.
pub fn request(socket: &Path, request: ControlRequest, timeout: Duration) -> io::Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(format!("{}\n", request.as_str()).as_bytes())?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let line = line.trim_end().to_string();
    match line.strip_prefix("error: ") {
        Some(message) => Err(io::Error::other(message.to_string())),
        None if line.is_empty() => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the monitor closed the control connection",
        )),
        None => Ok(line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_parses_from_its_line() {
        for request in ControlRequest::ALL {
            assert_eq!(
                ControlRequest::parse(&format!("{}\n", request.as_str())),
                Some(request)
            );
        }
        assert_eq!(ControlRequest::parse("reboot"), None);
    }
}

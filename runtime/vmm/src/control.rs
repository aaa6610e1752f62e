//! The monitor's control socket: one line per request, one line back.
//!
//! | request  | answer                                   |
//! |----------|------------------------------------------|
//! | `state`  | `running`, `paused` or `stopped`          |
//! | `pause`  | `ok` once every vCPU is parked            |
//! | `resume` | `ok`                                     |
//! | `stop`   | `ok`; the monitor then stops the VM      |
//! | `timing` | `first-entry-us <µs from start to the first vCPU entry>` |
//!
//! Errors come back as `error: <message>`.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::vstate::vcpu::RunState;
use crate::vstate::Vmm;

/// Longest request line read.
const MAX_REQUEST: u64 = 64;

/// What the caller must do after answering a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Followup {
    /// Nothing.
    None,
    /// Stop the VM and exit.
    Stop,
}

/// Answers one request against `vmm`.
pub fn answer(vmm: &Vmm, request: &str) -> (String, Followup) {
    let reply = match request.trim() {
        "state" => Ok(match vmm.state() {
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Stopped => "stopped",
        }
        .to_string()),
        "pause" => vmm.pause().map(|()| "ok".into()).map_err(|e| e.to_string()),
        "resume" => vmm
            .resume()
            .map(|()| "ok".into())
            .map_err(|e| e.to_string()),
        "stop" => return ("ok".into(), Followup::Stop),
        "timing" => Ok(match vmm.time_to_first_entry() {
            Some(t) => format!("first-entry-us {}", t.as_micros()),
            None => "first-entry-us none".into(),
        }),
        other => Err(format!("unknown request {other:?}")),
    };
    match reply {
        Ok(line) => (line, Followup::None),
        Err(message) => (format!("error: {message}"), Followup::None),
    }
}

/// Reads one request from a freshly accepted stream, answers it, and says
/// what to do next. A client that sends nothing in time gets nothing.
pub fn serve(vmm: &Vmm, stream: UnixStream) -> Followup {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut line = String::new();
    let read = BufReader::new(io::Read::take(&stream, MAX_REQUEST)).read_line(&mut line);
    if read.is_err() {
        return Followup::None;
    }
    let (reply, followup) = answer(vmm, &line);
    let _ = (&stream).write_all(format!("{reply}\n").as_bytes());
    followup
}

/// Sends `request` to the monitor listening on `socket`; returns its
/// answer, or an error carrying the monitor's `error:` message.
pub fn request(socket: &Path, request: &str, timeout: Duration) -> io::Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(format!("{request}\n").as_bytes())?;
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

//! The monitor's side of its control socket (the protocol is
//! [`husk_vm_spec::control`]): answers one request per connection.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use husk_vm_spec::control::{ControlRequest, MAX_REQUEST};

use crate::vstate::vcpu::RunState;
use crate::vstate::Vmm;

/// What the caller must do after answering a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Followup {
    /// Nothing.
    None,
    /// Stop the VM and exit.
    Stop,
}

/// Answers one request against `vmm`.
pub fn answer(vmm: &Vmm, line: &str) -> (String, Followup) {
    let reply = match ControlRequest::parse(line) {
        Some(ControlRequest::State) => Ok(match vmm.state() {
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Stopped => "stopped",
        }
        .to_string()),
        Some(ControlRequest::Pause) => vmm.pause().map(|()| "ok".into()).map_err(|e| e.to_string()),
        Some(ControlRequest::Resume) => vmm
            .resume()
            .map(|()| "ok".into())
            .map_err(|e| e.to_string()),
        Some(ControlRequest::Stop) => return ("ok".into(), Followup::Stop),
        Some(ControlRequest::Timing) => Ok(match vmm.time_to_first_entry() {
            Some(t) => format!("first-entry-us {}", t.as_micros()),
            None => "first-entry-us none".into(),
        }),
        None => Err(format!("unknown request {:?}", line.trim())),
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

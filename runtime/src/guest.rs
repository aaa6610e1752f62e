//! One booted guest: a VM from a [`Hypervisor`] plus the agent connection,
//! with the timing of each phase. This is the boot recipe every caller
//! shares (`husk check`, the benchmark, the tests, and the sandbox later).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use husk_protocol::{Request, Response, AGENT_PORT};

use crate::agent_client::{AgentClientError, AgentConn, AgentListener};
use crate::hypervisor::{Hypervisor, HypervisorError, Vm, VmConfig, VmExit};

/// Lines of the guest console shown when a boot fails.
pub const CONSOLE_TAIL_LINES: usize = 25;

/// Errors booting or stopping a guest.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The VM could not be started.
    #[error(transparent)]
    Start(#[from] HypervisorError),
    /// The VM started but the agent did not come up; carries the console tail.
    #[error("{cause}\n--- last lines of the guest console ({console}) ---\n{tail}")]
    NoAgent {
        /// What went wrong (in the message; not chained, to print it once).
        cause: AgentClientError,
        /// The console log path.
        console: PathBuf,
        /// Its last lines.
        tail: String,
    },
    /// Talking to a running agent failed.
    #[error(transparent)]
    Agent(#[from] AgentClientError),
}

/// How long each phase of a boot took.
#[derive(Debug, Clone, Copy)]
pub struct BootTimings {
    /// From the start of [`Guest::boot`] until the VMM and its helpers ran.
    pub launch: Duration,
    /// From the start until the agent's hello arrived.
    pub hello: Duration,
}

/// A running guest whose agent said hello.
pub struct Guest {
    vm: Box<dyn Vm>,
    agent: AgentConn,
    /// Phase timings of the boot.
    pub timings: BootTimings,
    _listener: AgentListener,
}

impl Guest {
    /// Starts a VM and waits up to `timeout` for its agent. On failure the VM
    /// is stopped and its sockets are gone.
    pub fn boot(
        hypervisor: &dyn Hypervisor,
        config: &VmConfig,
        timeout: Duration,
    ) -> Result<Guest, GuestError> {
        let started = Instant::now();
        let listener = AgentListener::bind(&config.vsock_uds(), AGENT_PORT)?;
        let mut vm = hypervisor.start(config)?;
        let launch = started.elapsed();
        let accepted = listener.accept(started + timeout, || {
            vm.try_wait().ok().flatten().map(|exit| exit.description)
        });
        match accepted {
            Ok(agent) => Ok(Guest {
                vm,
                agent,
                timings: BootTimings {
                    launch,
                    hello: started.elapsed(),
                },
                _listener: listener,
            }),
            Err(cause) => {
                let _ = vm.stop();
                let console = vm.console_log().to_path_buf();
                Err(GuestError::NoAgent {
                    cause,
                    tail: console_tail(&console, CONSOLE_TAIL_LINES),
                    console,
                })
            }
        }
    }

    /// The agent connection.
    pub fn agent(&mut self) -> &mut AgentConn {
        &mut self.agent
    }

    /// The VM.
    pub fn vm(&mut self) -> &mut dyn Vm {
        self.vm.as_mut()
    }

    /// The VM and the agent connection, for a caller that drives both
    /// itself (the sandbox monitor).
    pub fn into_parts(self) -> (Box<dyn Vm>, AgentConn) {
        (self.vm, self.agent)
    }

    /// Ends the VM at once (no shutdown request), stopping its helpers and
    /// removing its sockets.
    pub fn kill(mut self) -> Result<VmExit, GuestError> {
        Ok(self.vm.stop()?)
    }

    /// Asks the agent to power off and waits up to `timeout` for the VM to
    /// end; kills it after that. Helpers and sockets are gone afterwards.
    pub fn shutdown(mut self, timeout: Duration) -> Result<VmExit, GuestError> {
        let answer = self.agent.request(Request::Shutdown, timeout);
        let ended = match &answer {
            Ok(Response::ShuttingDown) => self.vm.wait_timeout(timeout)?,
            _ => None,
        };
        let exit = self.vm.stop()?;
        match answer? {
            Response::ShuttingDown if ended.is_some() => Ok(exit),
            Response::ShuttingDown => {
                Err(AgentClientError::Timeout(timeout, "the VM to power off").into())
            }
            other => Err(AgentClientError::Unexpected {
                expected: "shutting_down",
                got: format!("{other:?}"),
            }
            .into()),
        }
    }
}

/// The last `lines` lines of a console log, or a note that it is empty.
pub fn console_tail(path: &Path, lines: usize) -> String {
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => return format!("(cannot read {}: {e})", path.display()),
    };
    let all: Vec<&str> = text.lines().collect();
    if all.is_empty() {
        return "(empty: the kernel printed nothing; the command line has `quiet`)".into();
    }
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        std::fs::write(&log, "a\nb\nc\nd\n").unwrap();
        assert_eq!(console_tail(&log, 2), "c\nd");
    }

    #[test]
    fn tail_of_an_empty_log_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        std::fs::write(&log, "").unwrap();
        assert!(console_tail(&log, 5).starts_with("(empty"));
    }

    #[test]
    fn tail_of_binary_garbage_does_not_fail() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        std::fs::write(&log, [0xff, 0xfe, b'\n', b'x']).unwrap();
        assert!(console_tail(&log, 5).ends_with('x'));
    }
}

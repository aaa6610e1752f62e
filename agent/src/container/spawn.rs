//! Starting a [`super::stage`]: a fresh exec of this binary with the
//! control socket on [`CONTROL_FD`], its task sent as a JSON line, and its
//! reports read back.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use anyhow::{anyhow, Context, Result};

use super::stage::{StageReport, StageTask, CONSOLE_FD, CONTROL_FD, STAGE_ARG};
use super::stdio::ChildEnds;

/// A started stage.
pub struct Spawned {
    /// The container process's pid.
    pub pid: i32,
    /// The stage's exit status, which is the process's.
    pub exited: std::sync::mpsc::Receiver<crate::reaper::ExitStatus>,
    /// The control socket.
    pub control: BufReader<UnixStream>,
}

/// Starts a stage with `task`, its stdio `child` and, for a terminal, the
/// stage's end of the console socket (placed at [`CONSOLE_FD`]).
pub fn spawn_stage(
    task: &StageTask,
    child: ChildEnds,
    console: Option<OwnedFd>,
) -> Result<Spawned> {
    let (mut ours, theirs) = UnixStream::pair().context("creating the stage socketpair")?;
    // Both above the fds they land on, so that placing one never closes
    // the other.
    let theirs = dup_above(&theirs, CONSOLE_FD + 1)?;
    let theirs_fd = theirs.as_raw_fd();
    let console = console.map(|c| dup_above(&c, CONSOLE_FD + 1)).transpose()?;
    let console_fd = console.as_ref().map(AsRawFd::as_raw_fd);
    let [stdin, stdout, stderr] = child.0;
    let mut command = Command::new("/proc/self/exe");
    command
        .arg0(STAGE_ARG)
        .arg(STAGE_ARG)
        .env_clear()
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr));
    // SAFETY: dup2 is async-signal-safe; it only touches fds of the child.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(theirs_fd, CONTROL_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(fd) = console_fd {
                if libc::dup2(fd, CONSOLE_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let (stage, exited) =
        crate::reaper::spawn_watched(|| command.spawn()).context("starting the container stage")?;
    drop(theirs);
    drop(console);
    drop(stage);
    let mut line = serde_json::to_string(task).context("encoding the stage task")?;
    line.push('\n');
    ours.write_all(line.as_bytes())
        .context("sending the stage task")?;
    let mut control = BufReader::new(ours);
    match read_report(&mut control)? {
        Some(StageReport::Pid(pid)) => Ok(Spawned {
            pid,
            exited,
            control,
        }),
        Some(StageReport::Error(e)) => {
            let _ = exited.recv();
            Err(anyhow!("{e}"))
        }
        other => Err(anyhow!("the stage reported {other:?} instead of a pid")),
    }
}

/// A close-on-exec duplicate of `fd` numbered `min` or above.
fn dup_above(fd: &impl AsRawFd, min: i32) -> Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC duplicates an fd we borrow; the new fd is ours.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
    if new < 0 {
        return Err(std::io::Error::last_os_error()).context("duplicating a stage socket");
    }
    // SAFETY: `new` is a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Reads one report; `None` when the other end closed (the process exec'd).
pub fn read_report(control: &mut BufReader<UnixStream>) -> Result<Option<StageReport>> {
    let mut line = String::new();
    let n = control
        .read_line(&mut line)
        .context("reading from the container process")?;
    if n == 0 {
        return Ok(None);
    }
    serde_json::from_str(&line)
        .map(Some)
        .with_context(|| format!("bad report from the stage: {line:?}"))
}

//! The host process of an exec'd process: it hands its stdio fds (or a
//! pty's slave) to the monitor with the exec request, forwards the signals
//! it receives to the exec'd process, and exits with its exit code. With
//! `exec --detach` it runs as a child that the engine's subreaper inherits,
//! exactly like the monitor for the container's init.
//!
//! Trust: it talks only to the monitor over the root-only control socket.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use husk_protocol::oci::Process;
use nix::unistd::{fork, ForkResult};

use crate::oci::lifecycle::write_pid_file;
use crate::sandbox::control::{ControlClient, ControlReply, ControlRequest};
use crate::sandbox::{signals, tty};

/// How to run the exec'd process.
pub struct ExecOptions {
    /// The container's state directory.
    pub dir: PathBuf,
    /// What to run.
    pub process: Process,
    /// Where the pty master goes (with a terminal).
    pub console_socket: Option<PathBuf>,
    /// Where the relay's pid goes.
    pub pid_file: Option<PathBuf>,
    /// Return once it runs, leaving the relay as a child for the engine.
    pub detach: bool,
}

/// Runs the exec; returns the exit code (0 when detached).
pub fn exec(opts: ExecOptions) -> Result<i32> {
    if !opts.detach {
        if let Some(path) = &opts.pid_file {
            write_pid_file(path, std::process::id() as i32)?;
        }
        let started = relay(&opts, |_| {})?;
        return Ok(started);
    }
    let (mut ready_r, ready_w) = std::io::pipe()?;
    // SAFETY: the CLI is single-threaded here, so the child may run any code.
    match unsafe { fork() }.context("forking the exec relay")? {
        ForkResult::Child => {
            drop(ready_r);
            let _ = nix::unistd::setsid();
            let mut ready = Some(ready_w);
            let code = relay(&opts, |outcome| {
                if let Some(mut w) = ready.take() {
                    let _ = writeln!(w, "{outcome}");
                }
            });
            std::process::exit(code.unwrap_or(255))
        }
        ForkResult::Parent { child } => {
            drop(ready_w);
            let mut answer = String::new();
            let _ = ready_r.read_to_string(&mut answer);
            if answer.trim() != "ok" {
                let _ = nix::sys::wait::waitpid(child, None);
                bail!("{}", answer.trim());
            }
            if let Some(path) = &opts.pid_file {
                write_pid_file(path, child.as_raw())?;
            }
            Ok(0)
        }
    }
}

/// Starts the process and waits for its end; `started` hears "ok" or the error.
fn relay(opts: &ExecOptions, mut started: impl FnMut(&str)) -> Result<i32> {
    let blocked = signals::block_forwarded();
    let result = (|| {
        let fds: Vec<OwnedFd> = if opts.process.terminal && opts.console_socket.is_some() {
            let socket = opts.console_socket.as_deref().expect("checked");
            let pty = tty::open_and_send(socket)?;
            vec![pty.slave.try_clone()?, pty.slave.try_clone()?, pty.slave]
        } else {
            [
                std::io::stdin().as_fd().try_clone_to_owned()?,
                std::io::stdout().as_fd().try_clone_to_owned()?,
                std::io::stderr().as_fd().try_clone_to_owned()?,
            ]
            .into()
        };
        let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let mut client = ControlClient::connect(&opts.dir)?;
        let request = ControlRequest::Exec(Box::new(opts.process.clone()));
        let process = match client.call(&request, &raw)? {
            ControlReply::ExecStarted { process } => process,
            other => bail!("unexpected answer from the monitor: {other:?}"),
        };
        Ok((client, process, fds))
    })();
    let (mut client, process, fds) = match result {
        Ok(parts) => parts,
        Err(e) => {
            started(&format!("{e:#}"));
            return Err(e);
        }
    };
    started("ok");
    let tty_fd = opts
        .process
        .terminal
        .then(|| fds[0].try_clone().ok())
        .flatten();
    drop(fds);
    let dir = opts.dir.clone();
    if let Ok(set) = blocked {
        let _ = signals::forward(set, move |signal| {
            forward(&dir, process, signal, tty_fd.as_ref());
        });
    }
    if opts.detach {
        detach_stdio();
    }
    match client.wait_forever() {
        Ok(ControlReply::Exited { code }) => Ok(code),
        Ok(other) => bail!("unexpected answer from the monitor: {other:?}"),
        // The monitor is gone, and the VM with it: the process is lost with
        // its container, which reads 255 as when the VM ends under it.
        Err(e) => {
            eprintln!("husk: exec: the container's monitor went away: {e:#}");
            Ok(255)
        }
    }
}

fn forward(dir: &Path, process: u32, signal: i32, tty: Option<&OwnedFd>) {
    let request = if signal == libc::SIGWINCH {
        let Some(size) = tty.and_then(tty::size) else {
            return;
        };
        ControlRequest::Resize {
            process,
            rows: size.height,
            cols: size.width,
        }
    } else {
        ControlRequest::KillProcess { process, signal }
    };
    if let Ok(mut client) = ControlClient::connect(dir) {
        let _ = client.call(&request, &[]);
    }
}

/// Points 0/1/2 at /dev/null: the monitor holds the real ones now, and the
/// engine must see EOF when the process's output ends, not when we exit.
fn detach_stdio() {
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        for fd in 0..3 {
            let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
        }
    }
}

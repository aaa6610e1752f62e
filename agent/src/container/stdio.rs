//! A container process's stdio in the guest: three pipes, or a pty, and the
//! threads that move bytes between them and the host connection.
//!
//! Output is read in chunks of [`CHUNK`] and sent in order as stream frames,
//! then an explicit EOF; input frames go to a writer thread so a process
//! that does not read its stdin never blocks the agent.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc::{channel, Receiver, Sender};

use anyhow::{Context, Result};
use husk_protocol::oci::ConsoleSize;
use husk_protocol::{stdio_stream, GuestMessage, ProcessId};

use crate::outbox::Outbox;

/// Bytes per stream frame: well under the frame limit after base64.
pub const CHUNK: usize = 64 * 1024;

/// The ends the container process gets as fds 0, 1, 2.
pub struct ChildEnds(pub [OwnedFd; 3]);

/// The agent's ends.
pub enum AgentEnds {
    /// Separate pipes.
    Pipes {
        /// Write end of the process's stdin.
        stdin: File,
        /// Read end of its stdout.
        stdout: File,
        /// Read end of its stderr.
        stderr: File,
    },
    /// One pty master for everything.
    Pty {
        /// The master side.
        master: File,
    },
}

/// The stdio a process spec asks for: a pty with `terminal`, else pipes.
pub fn for_process(process: &husk_protocol::oci::Process) -> Result<(AgentEnds, ChildEnds)> {
    if process.terminal {
        pty(process.console_size)
    } else {
        pipes()
    }
}

/// Makes three pipes.
pub fn pipes() -> Result<(AgentEnds, ChildEnds)> {
    // Close-on-exec: the stage gets its ends as 0/1/2 (dup2 clears the
    // flag there); no process may keep a copy of the agent's ends, or EOF
    // never comes.
    let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
    let (in_r, in_w) = nix::unistd::pipe2(cloexec).context("creating the stdin pipe")?;
    let (out_r, out_w) = nix::unistd::pipe2(cloexec).context("creating the stdout pipe")?;
    let (err_r, err_w) = nix::unistd::pipe2(cloexec).context("creating the stderr pipe")?;
    Ok((
        AgentEnds::Pipes {
            stdin: in_w.into(),
            stdout: out_r.into(),
            stderr: err_r.into(),
        },
        ChildEnds([in_r, out_w, err_w]),
    ))
}

/// Makes a pty of `size`; the child gets the slave three times.
pub fn pty(size: Option<ConsoleSize>) -> Result<(AgentEnds, ChildEnds)> {
    let winsize = size.map(|s| nix::pty::Winsize {
        ws_row: s.height,
        ws_col: s.width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    });
    let pty = nix::pty::openpty(winsize.as_ref(), None).context("creating a pty")?;
    set_cloexec(&pty.master)?;
    set_cloexec(&pty.slave)?;
    let slave = pty.slave;
    let ends = [slave.try_clone()?, slave.try_clone()?, slave];
    Ok((
        AgentEnds::Pty {
            master: pty.master.into(),
        },
        ChildEnds(ends),
    ))
}

/// Marks `fd` close-on-exec.
pub fn set_cloexec(fd: &impl AsRawFd) -> Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .context("setting close-on-exec")?;
    Ok(())
}

/// Sets the window size of a pty master.
pub fn resize(master: &File, rows: u16, cols: u16) -> Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the valid pointer we pass.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setting the window size");
    }
    Ok(())
}

/// Where the host's stdin frames for one process go.
pub struct StdinSink {
    tx: Sender<Option<Vec<u8>>>,
}

impl StdinSink {
    /// Queues bytes.
    pub fn write(&self, data: Vec<u8>) {
        let _ = self.tx.send(Some(data));
    }

    /// Ends the input: the pipe closes (a pty gets ^D).
    pub fn close(&self) {
        let _ = self.tx.send(None);
    }
}

/// The running relays of one process: the stdin sink, the pty master (for
/// resizes), and a receiver that yields once per finished output stream.
pub struct Relays {
    /// Stdin.
    pub stdin: StdinSink,
    /// The pty master, if there is one.
    pub pty: Option<File>,
    /// One message per output stream that reached EOF.
    pub outputs_done: Receiver<()>,
    /// How many output streams there are.
    pub outputs: usize,
}

/// Starts the relay threads of process `process`.
pub fn start(process: ProcessId, ends: AgentEnds, outbox: &Outbox) -> Result<Relays> {
    let (done_tx, outputs_done) = channel();
    match ends {
        AgentEnds::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            spawn_output(process, 1, stdout, outbox.clone(), done_tx.clone())?;
            spawn_output(process, 2, stderr, outbox.clone(), done_tx)?;
            Ok(Relays {
                stdin: spawn_input(stdin, false)?,
                pty: None,
                outputs_done,
                outputs: 2,
            })
        }
        AgentEnds::Pty { master } => {
            spawn_output(process, 1, master.try_clone()?, outbox.clone(), done_tx)?;
            Ok(Relays {
                stdin: spawn_input(master.try_clone()?, true)?,
                pty: Some(master),
                outputs_done,
                outputs: 1,
            })
        }
    }
}

fn spawn_output(
    process: ProcessId,
    fd: u32,
    mut source: File,
    outbox: Outbox,
    done: Sender<()>,
) -> Result<()> {
    let stream = stdio_stream(process, fd);
    std::thread::Builder::new()
        .name(format!("out-{process}-{fd}"))
        .spawn(move || {
            let mut buf = vec![0; CHUNK];
            loop {
                match source.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let data = buf[..n].to_vec().into();
                        if outbox
                            .send(&GuestMessage::StreamData { stream, data })
                            .is_err()
                        {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    // A pty master reads EIO once the last slave fd closed.
                    Err(_) => break,
                }
            }
            let _ = outbox.send(&GuestMessage::StreamEof { stream });
            let _ = done.send(());
        })
        .context("starting an output relay")?;
    Ok(())
}

fn spawn_input(mut sink: File, is_pty: bool) -> Result<StdinSink> {
    let (tx, rx) = channel::<Option<Vec<u8>>>();
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            while let Ok(Some(data)) = rx.recv() {
                if sink.write_all(&data).is_err() {
                    // The process closed its stdin: drop what follows.
                    while let Ok(Some(_)) = rx.recv() {}
                    return;
                }
            }
            if is_pty {
                // The terminal's EOF character (VEOF, ^D by default).
                let _ = sink.write_all(&[4]);
            }
        })
        .context("starting the stdin relay")?;
    Ok(StdinSink { tx })
}

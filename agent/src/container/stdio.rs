//! A container process's stdio in the guest: three pipes, or a pty, and the
//! threads that move bytes between them and the host connection.
//!
//! Output is read in chunks of at most [`CHUNK`] and sent in order as
//! stream frames, then an explicit EOF, each only once the host granted
//! the room ([`husk_protocol::flow`]): a host that does not read a stream
//! stalls that stream alone. Input frames go to a writer thread so a
//! process that does not read its stdin never blocks the agent; the host
//! sends at most a window ahead, and each write to the process grants it
//! back.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc::{channel, Receiver, Sender};

use anyhow::{Context, Result};
use husk_protocol::flow::{Window, Windows};
use husk_protocol::oci::ConsoleSize;
use husk_protocol::{stdio_stream, GuestMessage, ProcessId, StreamId, STREAM_WINDOW};

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

/// The stdio a process spec asks for: pipes, or for a terminal, a socket
/// on which the process's stage sends the master of the pty it opens in
/// the container (in the container's devpts, as runc's console: `tty`
/// then names it there); the stage starts on /dev/null.
pub fn for_process(process: &husk_protocol::oci::Process) -> Result<Stdio> {
    if !process.terminal {
        let (agent, child) = pipes()?;
        return Ok(Stdio {
            agent: Some(agent),
            child,
            console: None,
        });
    }
    let null = || -> Result<OwnedFd> {
        let file = File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .context("opening /dev/null")?;
        Ok(file.into())
    };
    let (ours, theirs) =
        std::os::unix::net::UnixStream::pair().context("creating the console socket")?;
    Ok(Stdio {
        agent: None,
        child: ChildEnds([null()?, null()?, null()?]),
        console: Some((ours, theirs.into())),
    })
}

/// A process's stdio before its stage runs.
pub struct Stdio {
    /// The agent's ends (none yet for a terminal: see [`Stdio::console`]).
    pub agent: Option<AgentEnds>,
    /// The stage's fds 0, 1, 2.
    pub child: ChildEnds,
    /// For a terminal: the agent's end of the console socket, and the
    /// stage's (placed at its [`super::stage::CONSOLE_FD`]).
    pub console: Option<(std::os::unix::net::UnixStream, OwnedFd)>,
}

/// Receives the pty master a stage sends on its console socket; `None`
/// when the stage closed it without one (it failed: its report says why).
pub fn receive_console(console: &std::os::unix::net::UnixStream) -> Result<Option<File>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        console.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .context("receiving the console")?;
    for cmsg in msg
        .cmsgs()
        .context("reading the console's control message")?
    {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just installed this fd for us.
                return Ok(Some(unsafe { File::from_raw_fd(fd) }));
            }
        }
    }
    Ok(None)
}

/// In a stage: opens a pty of `size` in the current mount namespace (the
/// container's /dev/ptmx), makes its slave fds 0, 1, 2 and the controlling
/// terminal, and sends its master on `console`.
pub fn open_console(
    console: &std::os::unix::net::UnixStream,
    size: Option<ConsoleSize>,
) -> Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let winsize = size.map(|s| nix::pty::Winsize {
        ws_row: s.height,
        ws_col: s.width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    });
    let pty =
        nix::pty::openpty(winsize.as_ref(), None).context("opening the container's console")?;
    for fd in 0..3 {
        nix::unistd::dup2(pty.slave.as_raw_fd(), fd).context("putting the console on stdio")?;
    }
    drop(pty.slave);
    // SAFETY: TIOCSCTTY on fd 0 (the slave) takes an int argument.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
        return Err(std::io::Error::last_os_error())
            .context("making the console the controlling terminal");
    }
    let iov = [std::io::IoSlice::new(b"c")];
    let fds = [pty.master.as_raw_fd()];
    sendmsg::<()>(
        console.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .context("sending the console")?;
    Ok(())
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
    /// Bytes queued and not yet written to the process.
    queued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl StdinSink {
    /// Queues bytes; beyond a window of them (a host that ignores the
    /// credits) the rest is dropped, so the queue stays bounded.
    pub fn write(&self, data: Vec<u8>) {
        use std::sync::atomic::Ordering;
        let len = data.len();
        if self.queued.fetch_add(len, Ordering::AcqRel) + len > STREAM_WINDOW as usize {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            eprintln!("husk-agent: stdin frames beyond the stream window dropped");
            return;
        }
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

/// Starts the relay threads of process `process`; its output streams get
/// their send windows in `windows`.
pub fn start(
    process: ProcessId,
    ends: AgentEnds,
    outbox: &Outbox,
    windows: &std::sync::Arc<Windows>,
) -> Result<Relays> {
    let (done_tx, outputs_done) = channel();
    let stdin = stdio_stream(process, 0);
    let output = |fd: u32, source: File, done: Sender<()>| {
        let stream = stdio_stream(process, fd);
        let relay = OutputRelay {
            stream,
            window: windows.open(stream),
            windows: std::sync::Arc::clone(windows),
            outbox: outbox.clone(),
        };
        relay.spawn(source, done)
    };
    match ends {
        AgentEnds::Pipes {
            stdin: input,
            stdout,
            stderr,
        } => {
            output(1, stdout, done_tx.clone())?;
            output(2, stderr, done_tx)?;
            Ok(Relays {
                stdin: spawn_input(input, false, stdin, outbox.clone())?,
                pty: None,
                outputs_done,
                outputs: 2,
            })
        }
        AgentEnds::Pty { master } => {
            output(1, master.try_clone()?, done_tx)?;
            Ok(Relays {
                stdin: spawn_input(master.try_clone()?, true, stdin, outbox.clone())?,
                pty: Some(master),
                outputs_done,
                outputs: 1,
            })
        }
    }
}

/// One output stream on its way to the host.
struct OutputRelay {
    stream: StreamId,
    window: std::sync::Arc<Window>,
    windows: std::sync::Arc<Windows>,
    outbox: Outbox,
}

impl OutputRelay {
    fn spawn(self, mut source: File, done: Sender<()>) -> Result<()> {
        let (process, fd) = husk_protocol::stream_owner(self.stream);
        std::thread::Builder::new()
            .name(format!("out-{process}-{fd}"))
            .spawn(move || {
                self.relay(&mut source);
                let _ = self.outbox.send(&GuestMessage::StreamEof {
                    stream: self.stream,
                });
                self.windows.close(self.stream);
                let _ = done.send(());
            })
            .context("starting an output relay")?;
        Ok(())
    }

    /// Reads until EOF, sending what the window allows.
    fn relay(&self, source: &mut File) {
        let mut buf = vec![0; CHUNK];
        loop {
            let Some(room) = self.window.take(CHUNK) else {
                return;
            };
            let n = match source.read(&mut buf[..room]) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                    self.window.grant(room as u32);
                    continue;
                }
                // A pty master reads EIO once the last slave fd closed.
                Err(_) => return,
            };
            self.window.grant((room - n) as u32);
            let data = buf[..n].to_vec().into();
            let message = GuestMessage::StreamData {
                stream: self.stream,
                data,
            };
            if self.outbox.send(&message).is_err() {
                return;
            }
        }
    }
}

fn spawn_input(
    mut sink: File,
    is_pty: bool,
    stream: StreamId,
    outbox: Outbox,
) -> Result<StdinSink> {
    let (tx, rx) = channel::<Option<Vec<u8>>>();
    let queued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let written = std::sync::Arc::clone(&queued);
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            while let Ok(Some(data)) = rx.recv() {
                let ok = sink.write_all(&data).is_ok();
                written.fetch_sub(data.len(), std::sync::atomic::Ordering::AcqRel);
                // Granted also when the process is gone, so the host's
                // relay never waits for room that cannot come.
                let _ = outbox.send(&GuestMessage::StreamCredit {
                    stream,
                    bytes: data.len() as u32,
                });
                if !ok {
                    // The process closed its stdin: drop what follows.
                    while let Ok(Some(data)) = rx.recv() {
                        written.fetch_sub(data.len(), std::sync::atomic::Ordering::AcqRel);
                        let _ = outbox.send(&GuestMessage::StreamCredit {
                            stream,
                            bytes: data.len() as u32,
                        });
                    }
                    return;
                }
            }
            if is_pty {
                // The terminal's EOF character (VEOF, ^D by default).
                let _ = sink.write_all(&[4]);
            }
        })
        .context("starting the stdin relay")?;
    Ok(StdinSink { tx, queued })
}

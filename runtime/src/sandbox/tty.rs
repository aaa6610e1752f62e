//! The host side of a container terminal: a pty whose master goes to the
//! engine over `--console-socket` (SCM_RIGHTS, as runc does, with the pty's
//! name as the message), and whose slave the relaying process keeps as its
//! controlling terminal, so the engine's resizes of the master arrive as
//! SIGWINCH.
//!
//! Trust: the console socket path comes from the engine; the slave is put
//! in raw mode, so bytes from the guest's pty pass through uninterpreted.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::{Context, Result};
use husk_protocol::oci::ConsoleSize;

/// A pty whose master was handed to the engine.
pub struct HostPty {
    /// The slave side, kept by the relaying process.
    pub slave: OwnedFd,
}

/// Opens a pty, makes its slave our controlling terminal, and sends the
/// master over the console socket at `socket`.
pub fn open_and_send(socket: &Path) -> Result<HostPty> {
    let pty = nix::pty::openpty(None, None).context("creating a pty")?;
    for fd in [&pty.master, &pty.slave] {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag};
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
            .context("setting close-on-exec")?;
    }
    // Raw mode on the slave side: the guest's pty does the line discipline.
    if let Ok(mut attrs) = nix::sys::termios::tcgetattr(&pty.slave) {
        nix::sys::termios::cfmakeraw(&mut attrs);
        let _ =
            nix::sys::termios::tcsetattr(&pty.slave, nix::sys::termios::SetArg::TCSANOW, &attrs);
    }
    // SAFETY: TIOCSCTTY on a valid fd with an int argument; it fails
    // harmlessly if we are not a session leader.
    unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCSCTTY, 0) };
    let stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to the console socket {}", socket.display()))?;
    crate::sandbox::control::send_fds(&stream, b"/dev/ptmx", &[pty.master.as_raw_fd()])
        .with_context(|| format!("sending the pty master to {}", socket.display()))?;
    Ok(HostPty { slave: pty.slave })
}

/// The window size of a terminal fd.
pub fn size(fd: &OwnedFd) -> Option<ConsoleSize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize into the valid pointer we pass.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0).then_some(ConsoleSize {
        height: ws.ws_row,
        width: ws.ws_col,
    })
}

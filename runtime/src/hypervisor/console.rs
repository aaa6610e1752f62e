//! QEMU's way to the capped console log: QEMU writes the guest console
//! into a pipe it inherits as an fd set (`-add-fd`, then the file chardev
//! on `/dev/fdset/N`), and a thread of the process that started it copies
//! the pipe into a [`CappedLog`] until QEMU's end closes. The builtin
//! monitor writes its [`CappedLog`] itself.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::thread::JoinHandle;

use husk_console_log::CappedLog;

/// The fd set QEMU finds the console's pipe in.
pub const FDSET: u32 = 1;

/// A console relay: the pipe's write end (for QEMU to inherit) and the
/// thread copying from its read end.
pub struct ConsoleRelay {
    /// QEMU's end; dropped once QEMU holds it.
    pub write_end: OwnedFd,
    /// Ends when every write end is closed.
    pub thread: JoinHandle<()>,
}

/// Creates the log at `path` (at most `cap` bytes) and starts the relay
/// into it.
pub fn start(path: &Path, cap: u64) -> io::Result<ConsoleRelay> {
    let log = CappedLog::create(path, cap)?;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two ints of `fds`, which outlives the call.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nothing
    // else.
    let (read_end, write_end) =
        unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let thread = std::thread::Builder::new()
        .name("console-relay".into())
        .spawn(move || relay(read_end, log))?;
    Ok(ConsoleRelay { write_end, thread })
}

/// Copies until end of file. A failed write (a full disk) drops that
/// output and goes on: the guest must never wait on its console.
fn relay(mut from: File, mut log: CappedLog) {
    let mut buf = vec![0; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let _ = log.write_all(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn the_relay_copies_until_the_writer_closes_and_keeps_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let relay = start(&path, 8192).unwrap();
        let mut writer = File::from(relay.write_end);

        for i in 0..2000 {
            writeln!(writer, "guest line {i}").unwrap();
        }
        writer.write_all(b"the last line\n").unwrap();
        drop(writer);
        relay.thread.join().unwrap();

        let content = std::fs::read(&path).unwrap();
        assert!(content.len() <= 8192, "{} bytes", content.len());
        assert!(content.starts_with(husk_console_log::DROPPED));
        assert!(content.ends_with(b"guest line 1999\nthe last line\n"));
    }

    #[test]
    fn the_write_end_is_closed_on_exec() {
        let dir = tempfile::tempdir().unwrap();
        let relay = start(&dir.path().join("console.log"), 8192).unwrap();

        // SAFETY: F_GETFD on a descriptor we own.
        let flags = unsafe { libc::fcntl(relay.write_end.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        drop(relay.write_end);
        relay.thread.join().unwrap();
    }
}

//! Zombie reaping: as PID 1 the agent inherits every orphan in the guest.
//!
//! SIGCHLD is blocked in every thread (the mask is set before any thread is
//! spawned and inherited); one thread waits for it with sigwait and reaps.
//! Processes the agent started itself are watched ([`watch`]): their exit
//! status goes to whoever waits for it, even when the process ended before
//! the watch began.

use std::collections::HashMap;
use std::io;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Mutex, OnceLock};

/// How a process ended, as `waitpid` reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus(pub libc::c_int);

impl ExitStatus {
    /// The exit code, or 128 + the signal that killed the process (runc's convention).
    pub fn code(self) -> i32 {
        if libc::WIFSIGNALED(self.0) {
            128 + libc::WTERMSIG(self.0)
        } else {
            libc::WEXITSTATUS(self.0)
        }
    }
}

#[derive(Default)]
struct Registry {
    waiting: HashMap<libc::pid_t, Sender<ExitStatus>>,
    /// Exits nobody waited for yet, kept for a later [`watch`].
    unclaimed: HashMap<libc::pid_t, ExitStatus>,
}

/// Most unclaimed exits kept: orphans nobody asks about must not pile up.
const MAX_UNCLAIMED: usize = 1024;

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// Spawns a child with `spawn` and watches it, atomically: the reaper
/// cannot collect it in between, and a stale exit of an earlier process
/// with the same pid is dropped.
pub fn spawn_watched(
    spawn: impl FnOnce() -> io::Result<std::process::Child>,
) -> io::Result<(std::process::Child, Receiver<ExitStatus>)> {
    let (tx, rx) = channel();
    let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
    let child = spawn()?;
    let pid = child.id() as libc::pid_t;
    reg.unclaimed.remove(&pid);
    reg.waiting.insert(pid, tx);
    Ok((child, rx))
}

/// Blocks SIGCHLD in the calling thread; call before spawning any thread.
pub fn block_sigchld() -> io::Result<()> {
    let set = sigchld_set();
    // SAFETY: `set` is an initialized sigset; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Starts the reaping thread.
pub fn spawn() -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("reaper".into())
        .spawn(|| loop {
            let set = sigchld_set();
            let mut sig = 0;
            // SAFETY: `set` is initialized and `sig` is a valid out pointer.
            unsafe { libc::sigwait(&set, &mut sig) };
            reap_all();
        })
}

/// Collects every exited child without blocking.
fn reap_all() {
    loop {
        let mut status = 0;
        // SAFETY: WNOHANG waitpid with a valid status pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
        deliver(pid, ExitStatus(status));
    }
}

fn deliver(pid: libc::pid_t, status: ExitStatus) {
    let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
    match reg.waiting.remove(&pid) {
        Some(tx) => {
            let _ = tx.send(status);
        }
        None if reg.unclaimed.len() < MAX_UNCLAIMED => {
            reg.unclaimed.insert(pid, status);
        }
        None => {}
    }
}

fn sigchld_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initializes the set before sigaddset reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_code_follows_runc() {
        assert_eq!(ExitStatus(3 << 8).code(), 3);
        assert_eq!(ExitStatus(libc::SIGKILL).code(), 137);
    }

    #[test]
    fn a_watched_exit_is_delivered() {
        let (child, rx) =
            spawn_watched(|| std::process::Command::new("/bin/true").spawn()).unwrap();
        let pid = child.id() as libc::pid_t;

        deliver(pid, ExitStatus(5 << 8));

        assert_eq!(rx.recv().unwrap().code(), 5);
        let mut status = 0;
        // SAFETY: reaping our own child with a valid status pointer.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }
}

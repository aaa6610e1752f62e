//! Zombie reaping: as PID 1 the agent inherits every orphan in the guest.
//!
//! SIGCHLD is blocked in every thread (the mask is set before any thread is
//! spawned and inherited); one thread waits for it with sigwait and reaps.

use std::io;

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

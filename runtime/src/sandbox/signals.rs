//! Signals the monitor receives are the container's: engines signal the
//! pid they were given (conmon forwards SIGTERM, containerd-shim kills exec
//! pids directly). They are blocked in every thread and one thread takes
//! them with sigwait and forwards each.

use nix::sys::signal::{SigSet, Signal};

/// The signals forwarded to the container (everything catchable except
/// those that are about this process: SIGCHLD, SIGPIPE, faults).
const FORWARDED: &[Signal] = &[
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGTERM,
    Signal::SIGALRM,
    Signal::SIGCONT,
    Signal::SIGTSTP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGURG,
    Signal::SIGXCPU,
    Signal::SIGXFSZ,
    Signal::SIGVTALRM,
    Signal::SIGPROF,
    Signal::SIGWINCH,
    Signal::SIGIO,
    Signal::SIGPWR,
];

/// Blocks the forwarded signals in this thread (and the threads it spawns
/// later); call first thing.
pub fn block_forwarded() -> nix::Result<SigSet> {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(*s);
    }
    set.thread_block()?;
    Ok(set)
}

/// Starts the thread that waits for signals in `set` and calls `on_signal`.
pub fn forward(set: SigSet, on_signal: impl Fn(i32) + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            match set.wait() {
                Ok(signal) => on_signal(signal as i32),
                Err(_) => continue,
            }
        })?;
    Ok(())
}

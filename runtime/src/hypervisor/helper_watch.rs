//! A VM outlives none of its helpers. Without virtiofsd the guest has lost
//! its files, and without the vsock backend the runtime has lost its
//! channel: the VM cannot go on. A watcher thread holds a pidfd of every
//! helper and of the VMM. When a helper ends while the VM runs and the VMM
//! does not end by itself soon after (as it does when it shuts down and
//! closes their sockets), it kills the VMM (through its pidfd, so a reused
//! pid is never hit). The runtime
//! then sees the VM end as it sees a VMM crash: the agent connection
//! closes, and the container stops with 255.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::VmExit;

/// How long a VMM whose helper ended may take to end by itself (it is
/// shutting down) before the watcher ends it.
const VMM_EXIT_GRACE: Duration = Duration::from_secs(2);

/// The watcher of one VM's helpers; stopping it (or dropping it) comes
/// before stopping the VM.
pub struct HelperWatch {
    /// Written to stop the thread.
    wake: OwnedFd,
    thread: Option<JoinHandle<()>>,
    ended: Arc<Mutex<Option<String>>>,
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn kill_through(pidfd: &OwnedFd) {
    // SAFETY: pidfd_send_signal with our pidfd, a signal, no siginfo.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
}

impl HelperWatch {
    /// Watches `helpers` (name, pid) of the VMM `vmm`.
    pub fn start(helpers: &[(&'static str, u32)], vmm: u32) -> io::Result<HelperWatch> {
        let vmm = pidfd_open(vmm)?;
        let watched = helpers
            .iter()
            .map(|&(name, pid)| Ok((name, pid, pidfd_open(pid)?)))
            .collect::<io::Result<Vec<_>>>()?;
        let mut pipe = [0; 2];
        // SAFETY: pipe2 fills the two ints of `pipe`.
        if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both ends were just created and are owned by nothing else.
        let (woken, wake) =
            unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
        let ended = Arc::new(Mutex::new(None));
        let record = Arc::clone(&ended);
        let thread = std::thread::Builder::new()
            .name("helper-watch".into())
            .spawn(move || {
                if let Some(why) = wait_for_a_helper(&watched, &vmm, &woken) {
                    *record.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                    kill_through(&vmm);
                }
            })?;
        Ok(HelperWatch {
            wake,
            thread: Some(thread),
            ended,
        })
    }

    /// Which helper ended and so ended the VM, if one did.
    pub fn ended(&self) -> Option<String> {
        self.ended.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops watching (the VM is being stopped: its helpers go next).
    /// Idempotent.
    pub fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            // SAFETY: a one-byte write from a live buffer to our pipe.
            unsafe { libc::write(self.wake.as_raw_fd(), [0u8].as_ptr().cast(), 1) };
            let _ = thread.join();
        }
    }
}

impl Drop for HelperWatch {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `exit`, led by which helper ended the VM, if one did.
pub fn with_cause(exit: VmExit, watch: &HelperWatch) -> VmExit {
    match watch.ended() {
        Some(why) => VmExit {
            description: format!("{why}, so the VM was stopped: {}", exit.description),
        },
        None => exit,
    }
}

/// Blocks until a helper ends while the VMM runs (its name and pid), or
/// the VMM ends first (helpers end after it by themselves), or `woken` is
/// written (`None` for both).
fn wait_for_a_helper(
    watched: &[(&'static str, u32, OwnedFd)],
    vmm: &OwnedFd,
    woken: &OwnedFd,
) -> Option<String> {
    let mut fds: Vec<libc::pollfd> = watched
        .iter()
        .map(|(_, _, fd)| fd.as_raw_fd())
        .chain([woken.as_raw_fd(), vmm.as_raw_fd()])
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: poll on our own array of pollfds, which outlives the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return None;
        }
        if fds[watched.len()..].iter().any(|p| p.revents != 0) {
            return None;
        }
        if let Some(i) = fds[..watched.len()].iter().position(|p| p.revents != 0) {
            // A VMM on its way out closes its vhost-user sockets before it
            // exits, and the helpers end at that: that is no cause.
            if ends_within(vmm, woken, VMM_EXIT_GRACE) {
                return None;
            }
            let (name, pid, _) = &watched[i];
            return Some(format!("{name} (pid {pid}) ended while the VM ran"));
        }
    }
}

/// True if the VMM ends (or `woken` is written) within `grace`.
fn ends_within(vmm: &OwnedFd, woken: &OwnedFd, grace: Duration) -> bool {
    let mut fds = [vmm.as_raw_fd(), woken.as_raw_fd()].map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    let deadline = Instant::now() + grace;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // SAFETY: poll on our own array of pollfds, which outlives the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, left.as_millis() as libc::c_int) };
        if n > 0 {
            return true;
        }
        if n == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command};

    fn sleeper() -> Child {
        Command::new("sleep").arg("1000").spawn().unwrap()
    }

    fn ended_within(child: &mut Child, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn a_helper_that_dies_takes_the_vmm_with_it() {
        let (mut vmm, mut helper, mut other) = (sleeper(), sleeper(), sleeper());
        let watch = HelperWatch::start(
            &[("virtiofsd", helper.id()), ("vsock", other.id())],
            vmm.id(),
        )
        .unwrap();

        helper.kill().unwrap();
        helper.wait().unwrap();

        assert!(ended_within(&mut vmm, Duration::from_secs(10)));
        assert_eq!(
            watch.ended(),
            Some(format!(
                "virtiofsd (pid {}) ended while the VM ran",
                helper.id()
            ))
        );
        other.kill().unwrap();
        other.wait().unwrap();
    }

    #[test]
    fn a_helper_ending_as_its_vmm_shuts_down_is_no_cause() {
        let (mut vmm, mut helper) = (sleeper(), sleeper());
        let watch = HelperWatch::start(&[("virtiofsd", helper.id())], vmm.id()).unwrap();

        // The VMM closes the helper's socket, the helper ends, the VMM
        // exits a moment later.
        helper.kill().unwrap();
        helper.wait().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        vmm.kill().unwrap();
        vmm.wait().unwrap();
        std::thread::sleep(Duration::from_millis(100));

        assert_eq!(watch.ended(), None);
    }

    #[test]
    fn helpers_ending_after_the_vmm_are_no_cause() {
        let (mut vmm, mut helper) = (sleeper(), sleeper());
        let watch = HelperWatch::start(&[("virtiofsd", helper.id())], vmm.id()).unwrap();

        vmm.kill().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        helper.kill().unwrap();
        helper.wait().unwrap();
        std::thread::sleep(Duration::from_millis(200));

        assert_eq!(watch.ended(), None);
        vmm.wait().unwrap();
    }

    #[test]
    fn a_stopped_watch_kills_nothing() {
        let (mut vmm, mut helper) = (sleeper(), sleeper());
        let mut watch = HelperWatch::start(&[("virtiofsd", helper.id())], vmm.id()).unwrap();

        watch.stop();
        helper.kill().unwrap();
        helper.wait().unwrap();

        assert!(!ended_within(&mut vmm, Duration::from_millis(300)));
        assert_eq!(watch.ended(), None);
        vmm.kill().unwrap();
        vmm.wait().unwrap();
    }
}

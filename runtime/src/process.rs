//! Child processes the runtime starts (QEMU, virtiofsd, the vsock backend):
//! they die with their parent (PR_SET_PDEATHSIG), log into the state
//! directory, and are killed and reaped when their guard is dropped, so a
//! failed boot never leaves one behind.
//!
//! Each child leads its own process group, and a kill goes to the whole
//! group: virtiofsd's namespace sandbox forks, and its inner process must
//! not outlive the guard. PR_SET_PDEATHSIG fires when the *thread* that
//! spawned the child exits, so spawn from a thread that lives as long as
//! the VM.

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Makes `fds` (open in this process, close-on-exec) inherited by the
/// child `cmd` starts, under the same numbers.
pub fn inherit_fds(cmd: &mut Command, fds: Vec<std::os::fd::RawFd>) {
    if fds.is_empty() {
        return;
    }
    // SAFETY: the closure only calls fcntl(2), which is async-signal-safe,
    // on fds the caller keeps open until the spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// A running child that is killed and reaped on drop.
#[derive(Debug)]
pub struct ChildGuard {
    name: &'static str,
    child: Option<Child>,
    status: Option<ExitStatus>,
}

impl ChildGuard {
    /// Starts `cmd` with stdin from /dev/null and stdout+stderr into `log`.
    pub fn spawn(name: &'static str, mut cmd: Command, log: &Path) -> io::Result<Self> {
        let out = File::create(log)?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        // SAFETY: the closure only calls prctl(2), which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                    || libc::setpgid(0, 0) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        Ok(ChildGuard {
            name,
            child: Some(child),
            status: None,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The name given at spawn.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The exit status if the child has exited. The leader is checked
    /// without reaping it first, and whatever it forked is killed while its
    /// pid still reserves the process group id; then it is reaped.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_some() {
            return Ok(self.status);
        }
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        if exited_unreaped(child.id())? {
            // SAFETY: the leader is a zombie we have not reaped, so its pid is
            // still the id of the group we created for it.
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            self.status = child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Waits up to `timeout` for the child to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `signal` unless the child was already reaped.
    pub fn signal(&mut self, signal: libc::c_int) {
        if self.try_wait().ok().flatten().is_none() {
            // SAFETY: kill(2) on a child we have not reaped, so the pid is still ours.
            unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; always reaps.
    pub fn stop(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        self.signal(libc::SIGTERM);
        if let Some(status) = self.wait_timeout(grace)? {
            return Ok(status);
        }
        self.kill()
    }

    /// SIGKILL to the child's process group, and reap the child.
    pub fn kill(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        let child = self.child.as_mut().expect("child present until drop");
        // SAFETY: the leader is not reaped yet, so its pid (= the group id)
        // still names the group we created.
        unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
        let status = child.wait()?;
        self.status = Some(status);
        Ok(status)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// True if process `pid` (our child) has exited; does not reap it.
fn exited_unreaped(pid: u32) -> io::Result<bool> {
    // SAFETY: siginfo_t is plain data; all-zero is valid and waitid fills it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
    // SAFETY: `info` is a valid out pointer; P_PID with our own child's pid.
    let rc = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: waitid filled `info`; si_pid is 0 when no child changed state.
    Ok(unsafe { info.si_pid() } != 0)
}

/// Waits until `path` exists (a helper's listening socket), failing early if
/// the helper exits.
pub fn wait_for_socket(helper: &mut ChildGuard, path: &Path, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if path.exists() {
            return Ok(());
        }
        if let Some(status) = helper.try_wait()? {
            return Err(io::Error::other(format!(
                "{} exited ({status}) before creating {}",
                helper.name(),
                path.display()
            )));
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{} did not create {} within {timeout:?}",
                    helper.name(),
                    path.display()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_kills_and_reaps() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("100");
        let guard = ChildGuard::spawn("sleep", cmd, &dir.path().join("log")).unwrap();
        let pid = guard.pid() as libc::pid_t;

        drop(guard);

        // SAFETY: signal 0 only checks whether the pid exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "child {pid} still exists after drop");
    }

    /// Spawns `sh -c SCRIPT` where the script forks `sleep 100` and writes
    /// its pid, then runs `then`; returns the guard and the grandchild's pid.
    fn spawn_with_grandchild(dir: &Path, then: &str) -> (ChildGuard, libc::pid_t) {
        let pidfile = dir.join("grandchild.pid");
        let script = format!(
            "sleep 100 & echo $! > {0}.tmp; mv {0}.tmp {0}; {then}",
            pidfile.display()
        );
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script);
        let guard = ChildGuard::spawn("sh", cmd, &dir.join("log")).unwrap();
        loop {
            if let Ok(pid) = std::fs::read_to_string(&pidfile)
                .unwrap_or_default()
                .trim()
                .parse()
            {
                return (guard, pid);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn assert_gone_soon(pid: libc::pid_t) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.contains(") Z"))
        {
            assert!(Instant::now() < deadline, "grandchild {pid} survived");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn kill_reaches_grandchildren() {
        let dir = tempfile::tempdir().unwrap();
        let (mut guard, grandchild) = spawn_with_grandchild(dir.path(), "wait");

        guard.kill().unwrap();

        assert_gone_soon(grandchild);
    }

    #[test]
    fn grandchildren_die_when_the_leader_exits_by_itself() {
        let dir = tempfile::tempdir().unwrap();
        let (mut guard, grandchild) = spawn_with_grandchild(dir.path(), "exit 0");

        let status = guard.wait_timeout(Duration::from_secs(5)).unwrap();

        assert!(status.unwrap().success());
        assert_gone_soon(grandchild);
    }

    #[test]
    fn wait_for_socket_reports_an_early_exit() {
        let dir = tempfile::tempdir().unwrap();
        let mut guard =
            ChildGuard::spawn("false", Command::new("false"), &dir.path().join("log")).unwrap();

        let err = wait_for_socket(&mut guard, &dir.path().join("sock"), Duration::from_secs(5))
            .unwrap_err();

        assert!(err.to_string().contains("false exited"), "{err}");
    }

    #[test]
    fn output_goes_to_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2"]);
        let mut guard = ChildGuard::spawn("sh", cmd, &log).unwrap();

        guard.wait_timeout(Duration::from_secs(5)).unwrap().unwrap();

        assert_eq!(std::fs::read_to_string(&log).unwrap(), "out\nerr\n");
    }
}

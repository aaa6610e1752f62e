//! Engine daemons started by tests: dockerd and containerd, each in a
//! network namespace of its own (so docker's bridge and iptables chains
//! vanish with it) and with all state in the fixture's directory. Stopped
//! by their recorded pid: SIGTERM, then SIGKILL after a grace period.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::eventually;

/// A named network namespace (`/run/netns/NAME`), deleted on drop.
pub struct TestNetns {
    name: String,
}

impl TestNetns {
    /// Creates the namespace `name` (`ip netns add`).
    pub fn create(name: &str) -> Result<TestNetns, String> {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        super::run_ok(
            Command::new("ip").args(["netns", "add", name]),
            "ip netns add",
        )?;
        super::run_ok(
            Command::new("ip").args(["netns", "exec", name, "ip", "link", "set", "lo", "up"]),
            "ip link set lo up",
        )?;
        Ok(TestNetns {
            name: name.to_string(),
        })
    }

    /// The namespace of the fixture in `dir`, named like the directory
    /// (`husk-docker-<pid>-<n>`).
    pub fn for_fixture(dir: &Path) -> Result<TestNetns, String> {
        let name = dir
            .file_name()
            .ok_or_else(|| format!("fixture directory {} has no name", dir.display()))?;
        TestNetns::create(&name.to_string_lossy())
    }

    /// The namespace's file.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Makes `command` start inside the namespace.
    pub fn enter(&self, command: &mut Command) -> Result<(), String> {
        enter_netns(command, &self.path())
    }
}

/// Makes `command` start inside the network namespace at `path`.
pub fn enter_netns(command: &mut Command, path: &Path) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    // SAFETY: setns is async-signal-safe; the file stays open in the
    // closure, which the child owns.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A daemon process we started.
pub struct Daemon {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// Starts `command` (its own session, output to `log`) and waits up to
    /// a minute for `socket` to appear.
    pub fn start(
        name: &'static str,
        mut command: Command,
        log: &Path,
        socket: &Path,
    ) -> Result<Daemon, String> {
        let out = File::create(log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = command
            .spawn()
            .map_err(|e| format!("starting {name}: {e}"))?;
        let mut daemon = Daemon {
            name,
            child: Some(child),
            log: log.to_path_buf(),
        };
        let up = eventually(Duration::from_secs(60), || {
            socket.exists() || !daemon.alive()
        });
        if !up || !daemon.alive() {
            let tail = daemon.log_tail();
            daemon.stop();
            return Err(format!("{name} did not come up; its log ends:\n{tail}"));
        }
        Ok(daemon)
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// The last lines of the daemon's log.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM, up to 20 s, then SIGKILL; reaps it. True if it ended on
    /// SIGTERM.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let pid = child.id() as i32;
        // SAFETY: kill takes no pointers; the pid is our unreaped child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let ended = eventually(Duration::from_secs(20), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if !ended {
            eprintln!("{} ignored SIGTERM for 20 s; killing it", self.name);
            let _ = child.kill();
        }
        let _ = child.wait();
        ended
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Kills (SIGKILL) every process whose command line mentions `dir`, such
/// as shims of a stopped daemon; returns what was killed.
pub fn kill_processes_naming(dir: &Path) -> Vec<u32> {
    let left = crate::helpers_left(dir);
    for &pid in &left {
        // SAFETY: kill takes no pointers.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    left
}

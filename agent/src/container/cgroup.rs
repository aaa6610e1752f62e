//! The container's cgroup in the guest (cgroup v2, mounted by init at
//! `/sys/fs/cgroup`): limits from `linux.resources`, the freezer behind
//! pause/resume, the process list, and the counters behind `events --stats`.
//!
//! File names and formats come from the kernel's
//! `Documentation/admin-guide/cgroup-v2.rst`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use husk_protocol::oci::{shares_to_weight, v2_cpu_max, v2_limit, Resources};
use husk_protocol::{ProcessInfo, Stats};

/// The controllers the container's cgroup gets.
const CONTROLLERS: &str = "+cpu +cpuset +memory +pids";

/// How long a freeze may take before pause reports failure.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// One cgroup directory.
#[derive(Debug, Clone)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates the cgroup `name` under `root` with the controllers enabled.
    pub fn create(root: &Path, name: &str) -> Result<Cgroup> {
        // Controllers the guest kernel lacks are skipped, one at a time.
        for controller in CONTROLLERS.split(' ') {
            let _ = fs::write(root.join("cgroup.subtree_control"), controller);
        }
        let path = root.join(name);
        fs::create_dir_all(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Cgroup { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the limits `resources` asks for.
    pub fn apply(&self, resources: &Resources) -> Result<()> {
        let guest_cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        for (file, value) in limit_files(resources, guest_cpus) {
            let path = self.path.join(file);
            fs::write(&path, &value)
                .with_context(|| format!("writing {value:?} to {}", path.display()))?;
        }
        Ok(())
    }

    /// Freezes (`true`) or thaws every process, waiting until it took effect.
    pub fn freeze(&self, frozen: bool) -> Result<()> {
        let want = if frozen { "1" } else { "0" };
        fs::write(self.path.join("cgroup.freeze"), want).context("writing cgroup.freeze")?;
        let deadline = Instant::now() + FREEZE_TIMEOUT;
        loop {
            let events = fs::read_to_string(self.path.join("cgroup.events")).unwrap_or_default();
            if events.lines().any(|l| l == format!("frozen {want}")) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the container's cgroup did not reach frozen {want} in {FREEZE_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Kills whatever still runs in the cgroup, waits until it is empty
    /// and removes it.
    pub fn remove(&self) -> Result<()> {
        let deadline = Instant::now() + FREEZE_TIMEOUT;
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "processes of {} survived SIGKILL for {FREEZE_TIMEOUT:?}",
                    self.path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // A killed process leaves the cgroup a moment after it is gone.
        loop {
            match fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("removing {}", self.path.display()))
                }
            }
        }
    }

    /// The pids in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// The processes in the cgroup, as `ps` shows them.
    pub fn processes(&self) -> Vec<ProcessInfo> {
        self.pids().into_iter().filter_map(process_info).collect()
    }

    /// The cgroup's counters.
    pub fn stats(&self) -> Stats {
        let read = |file: &str| fs::read_to_string(self.path.join(file)).unwrap_or_default();
        let cpu = read("cpu.stat");
        let cpu_field = |key: &str| keyed_value(&cpu, key).unwrap_or(0) * 1000;
        let memory_limit = match read("memory.max").trim() {
            "max" | "" => mem_total(),
            v => v.parse().unwrap_or(0),
        };
        Stats {
            cpu_usage_ns: cpu_field("usage_usec"),
            cpu_user_ns: cpu_field("user_usec"),
            cpu_system_ns: cpu_field("system_usec"),
            memory_usage: read("memory.current").trim().parse().unwrap_or(0),
            memory_limit,
            pids: read("pids.current").trim().parse().unwrap_or(0),
            pids_limit: read("pids.max").trim().parse().unwrap_or(0),
        }
    }
}

/// The cgroup v2 files and values for `resources` (v1 names in the spec
/// translated as runc's `cgroups/fs2` does). As in runc, a zero means
/// "leave it": engines send whole resource sets to `update` with zeros
/// for what they do not change.
pub fn limit_files(resources: &Resources, guest_cpus: u32) -> Vec<(&'static str, String)> {
    let mut files = Vec::new();
    let set = |v: &Option<i64>| v.filter(|v| *v != 0);
    if let Some(memory) = &resources.memory {
        if let Some(limit) = set(&memory.limit) {
            files.push(("memory.max", v2_limit(limit)));
        }
        if let Some(reservation) = set(&memory.reservation) {
            files.push(("memory.low", v2_limit(reservation)));
        }
        if let (Some(swap), Some(limit)) = (set(&memory.swap), set(&memory.limit)) {
            // v1 swap is memory+swap; v2 counts swap alone.
            let v2 = if swap < 0 || limit < 0 {
                "max".to_string()
            } else {
                swap.saturating_sub(limit).to_string()
            };
            files.push(("memory.swap.max", v2));
        }
    }
    if let Some(cpu) = &resources.cpu {
        if let Some(value) = v2_cpu_max(cpu.quota, cpu.period) {
            files.push(("cpu.max", value));
        }
        if let Some(shares) = cpu.shares.filter(|s| *s > 0) {
            files.push(("cpu.weight", shares_to_weight(shares).to_string()));
        }
        if let Some(cpus) = cpu.cpus.as_ref().filter(|c| !c.is_empty()) {
            files.push(("cpuset.cpus", guest_cpuset(cpus, guest_cpus)));
        }
    }
    if let Some(pids) = resources.pids.as_ref().filter(|p| p.limit != 0) {
        files.push(("pids.max", v2_limit(pids.limit)));
    }
    files
}

/// The guest's CPUs for a host cpuset: the host sized the VM by the set
/// (or by the pod), so the set's CPUs are the guest's first ones, as many
/// as the set has and the guest holds. A list that does not parse goes to
/// the kernel as it is, which names what is wrong.
fn guest_cpuset(host_list: &str, guest_cpus: u32) -> String {
    match husk_protocol::oci::cpuset_size(host_list) {
        Some(size) => match size.min(guest_cpus).max(1) {
            1 => "0".to_string(),
            n => format!("0-{}", n - 1),
        },
        None => host_list.to_string(),
    }
}

fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn mem_total() -> u64 {
    let info = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn process_info(pid: i32) -> Option<ProcessInfo> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: split after the last ')'.
    let after = &stat[stat.rfind(')')? + 2..];
    let ppid = after.split(' ').nth(1)?.parse().ok()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmd = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(String::from_utf8_lossy)
        .collect::<Vec<_>>()
        .join(" ");
    Some(ProcessInfo {
        pid,
        ppid,
        uid,
        cmd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_protocol::oci::{CpuResources, MemoryResources, PidsResources};

    #[test]
    fn zeros_leave_the_limits_alone_as_in_runc_update() {
        let resources = Resources {
            memory: Some(MemoryResources {
                limit: Some(0),
                reservation: Some(0),
                swap: Some(0),
                ..Default::default()
            }),
            cpu: Some(CpuResources {
                quota: Some(0),
                period: Some(0),
                shares: Some(0),
                ..Default::default()
            }),
            pids: Some(PidsResources { limit: 100 }),
            ..Default::default()
        };

        let files = limit_files(&resources, 4);

        assert_eq!(files, [("pids.max", "100".to_string())]);
    }

    #[test]
    fn a_quota_without_a_period_keeps_the_kernel_s_period() {
        let resources = Resources {
            cpu: Some(CpuResources {
                quota: Some(20_000),
                ..Default::default()
            }),
            ..Default::default()
        };

        assert_eq!(
            limit_files(&resources, 4),
            [("cpu.max", "20000".to_string())]
        );
    }

    #[test]
    fn spec_limits_become_cgroup_v2_files() {
        let resources = Resources {
            memory: Some(MemoryResources {
                limit: Some(64 << 20),
                swap: Some(128 << 20),
                reservation: None,
                ..Default::default()
            }),
            cpu: Some(CpuResources {
                quota: Some(50_000),
                period: Some(100_000),
                shares: Some(1024),
                ..Default::default()
            }),
            pids: Some(PidsResources { limit: -1 }),
            ..Default::default()
        };

        let files = limit_files(&resources, 4);

        assert!(files.contains(&("memory.max", "67108864".into())));
        assert!(files.contains(&("memory.swap.max", "67108864".into())));
        assert!(files.contains(&("cpu.max", "50000 100000".into())));
        assert!(files.contains(&("cpu.weight", "39".into())));
        assert!(files.contains(&("pids.max", "max".into())));
    }

    #[test]
    fn a_host_cpuset_becomes_the_guest_s_first_cpus() {
        let with_cpus = |cpus: &str| Resources {
            cpu: Some(CpuResources {
                cpus: Some(cpus.into()),
                ..Default::default()
            }),
            ..Default::default()
        };

        assert_eq!(
            limit_files(&with_cpus("0-1"), 1),
            [("cpuset.cpus", "0".into())]
        );
        assert_eq!(
            limit_files(&with_cpus("2-3"), 2),
            [("cpuset.cpus", "0-1".into())]
        );
        assert_eq!(
            limit_files(&with_cpus("5,7"), 4),
            [("cpuset.cpus", "0-1".into())]
        );
        assert_eq!(
            limit_files(&with_cpus("0-9"), 4),
            [("cpuset.cpus", "0-3".into())]
        );
        assert_eq!(
            limit_files(&with_cpus("a-b"), 4),
            [("cpuset.cpus", "a-b".into())]
        );
    }

    #[test]
    fn no_resources_write_nothing() {
        assert!(limit_files(&Resources::default(), 4).is_empty());
    }

    #[test]
    fn keyed_values_are_read_from_cpu_stat() {
        let text = "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n";
        assert_eq!(keyed_value(text, "user_usec"), Some(1000));
        assert_eq!(keyed_value(text, "nr_periods"), None);
    }

    #[test]
    fn own_process_info_parses() {
        let info = process_info(std::process::id() as i32).unwrap();
        assert!(info.ppid > 0 && !info.cmd.is_empty());
    }
}

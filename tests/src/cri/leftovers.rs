//! What a pod leaves on the node, and how many VMs it runs: the checks
//! after `StopPodSandbox`/`RemovePodSandbox`, and the helpers the fixture's
//! cleanup forces with.
//!
//! A pod's traces, as containerd 1.6 lays them out: its processes (the
//! shim's command line names the sandbox id: `-id <id>`; runc's container
//! processes live in cgroups named by container id), its mounts (rootfs
//! overlays under `state/io.containerd.runtime.v2.task/k8s.io/<id>`, the
//! sandbox's `/dev/shm` under the CRI plugin's state), its network
//! namespace (`/var/run/netns/cni-<uuid>`), its shim's socket
//! (`/run/containerd/s/<hex sha256 of "<containerd socket>/k8s.io/<id>">`,
//! `shim.SocketAddress` in `runtime/v2/shim/util_unix.go`; the id is the
//! grouping id, the sandbox's for every container of a pod), the
//! directories named by its ids under containerd's root and state, and
//! what its handler keeps elsewhere ([`Handler::state_roots`]: husk's
//! shim keeps each VM's state in `/run/husk-shim/<namespace>/<id>`).
//! Processes that do not name the pod (husk's VMM, whose sockets are in
//! `/run/husk-sockets/<hash>`) are found as descendants of its shim.

use std::path::{Path, PathBuf};

use super::Handler;

/// The VMM binaries a husk pod's VM runs as.
pub const VMM_BINARIES: &[&str] = &["qemu-system-x86_64", "husk-vmm"];

/// Where containerd 1.6 puts shim sockets (`defaults.DefaultStateDir`).
pub const SHIM_SOCKET_DIR: &str = "/run/containerd/s";

/// A running process: its pid and its command line (NULs as spaces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// Its pid.
    pub pid: u32,
    /// Its arguments.
    pub args: Vec<String>,
}

impl Process {
    /// The file name of its program.
    pub fn program(&self) -> &str {
        self.args
            .first()
            .map(|p| p.rsplit('/').next().unwrap_or(p))
            .unwrap_or("")
    }

    /// True if an argument contains `needle`.
    pub fn mentions(&self, needle: &str) -> bool {
        self.args.iter().any(|a| a.contains(needle))
    }
}

/// Every live process with a command line (kernel threads have none).
pub fn processes() -> Vec<Process> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.is_empty() || !crate::process_exists(pid) {
            continue;
        }
        let args = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        found.push(Process { pid, args });
    }
    found
}

/// The processes whose command line names any of `needles`.
pub fn processes_naming(needles: &[&str]) -> Vec<Process> {
    processes()
        .into_iter()
        .filter(|p| needles.iter().any(|n| p.mentions(n)))
        .collect()
}

/// The shims `handler` runs for the pod `pod_id` (one per pod: both shims
/// group a pod's containers by `io.kubernetes.cri.sandbox-id`).
pub fn shims_of(handler: Handler, pod_id: &str) -> Vec<Process> {
    processes()
        .into_iter()
        .filter(|p| p.program() == handler.shim_binary_name() && is_shim_for(p, pod_id))
        .collect()
}

fn is_shim_for(process: &Process, pod_id: &str) -> bool {
    process
        .args
        .windows(2)
        .any(|w| w[0] == "-id" && w[1] == pod_id)
}

/// The VMM processes (see [`VMM_BINARIES`]) of the pod `pod_id`: those
/// the pod's shim runs (its descendants) and any whose command line names
/// the pod (a state directory named after it). Exactly one while a husk
/// pod runs; none for runc.
pub fn vmms_of(handler: Handler, pod_id: &str) -> Vec<Process> {
    let all = processes();
    let shims: Vec<u32> = shims_of(handler, pod_id).iter().map(|p| p.pid).collect();
    all.iter()
        .filter(|p| VMM_BINARIES.contains(&p.program()))
        .filter(|p| p.mentions(pod_id) || shims.iter().any(|&shim| descends_from(p.pid, shim)))
        .cloned()
        .collect()
}

/// The parent of `pid`, from `/proc/<pid>/stat` (the field after the
/// state, which follows the parenthesised command name).
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parent_in_stat(&stat)
}

fn parent_in_stat(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The processes below `ancestor` (its children, theirs...).
pub fn descendants_of(ancestor: u32) -> Vec<Process> {
    processes()
        .into_iter()
        .filter(|p| descends_from(p.pid, ancestor))
        .collect()
}

/// True if `ancestor` is a parent, grandparent... of `pid`.
pub fn descends_from(pid: u32, ancestor: u32) -> bool {
    let mut current = pid;
    for _ in 0..64 {
        match parent_of(current) {
            Some(parent) if parent == ancestor => return true,
            Some(parent) if parent > 1 => current = parent,
            _ => return false,
        }
    }
    false
}

/// The lines of /proc/mounts that name any of `needles`.
pub fn mounts_naming(needles: &[&str]) -> Vec<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter(|line| needles.iter().any(|n| line.contains(n)))
        .map(str::to_owned)
        .collect()
}

/// The entries under `dir` (symlinks not followed) whose name contains
/// any of `needles`, skipping directories named in `skip`.
pub fn paths_naming(dir: &Path, needles: &[&str], skip: &[&Path]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).into_iter().flatten().flatten() {
            let path = entry.path();
            if skip.contains(&path.as_path()) {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if needles.iter().any(|n| name.contains(n)) {
                found.push(path.clone());
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(path);
            }
        }
    }
    found
}

/// The socket of the shim containerd (at `containerd_socket`) starts for
/// the grouping id `id` in CRI's namespace.
pub fn shim_socket(containerd_socket: &Path, id: &str) -> Result<PathBuf, String> {
    let key = containerd_socket
        .join(super::fixture::K8S_NAMESPACE)
        .join(id);
    let digest = super::pause::sha256_of_bytes(key.as_os_str().as_encoded_bytes())?;
    Ok(Path::new(SHIM_SOCKET_DIR).join(digest))
}

/// The directories of the cgroup `relative` (and below it) in every
/// hierarchy, parents before children.
pub fn cgroup_dirs_under(relative: &str) -> Vec<PathBuf> {
    let relative = relative.trim_start_matches('/');
    let mut dirs = Vec::new();
    for root in husk::sandbox::host_cgroup::hierarchies() {
        let top = root.join(relative);
        if !top.is_dir() {
            continue;
        }
        let mut pending = vec![top];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    pending.push(entry.path());
                }
            }
            dirs.push(dir);
        }
    }
    dirs.sort_by_key(|d| d.components().count());
    dirs
}

/// SIGKILLs every process in the cgroups `dirs`; the pids killed.
pub fn kill_cgroup_processes(dirs: &[PathBuf]) -> Vec<u32> {
    let mut killed = Vec::new();
    for dir in dirs {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
            if !killed.contains(&pid) {
                // SAFETY: kill takes no pointers.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                killed.push(pid);
            }
        }
    }
    killed
}

/// The network namespace path in the OCI spec containerd generated (the
/// `info` of a verbose status: `runtimeSpec.linux.namespaces`).
pub fn netns_of_spec(spec: &serde_json::Value) -> Option<PathBuf> {
    spec["linux"]["namespaces"]
        .as_array()?
        .iter()
        .find(|ns| ns["type"] == "network")?["path"]
        .as_str()
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_program_is_the_file_name_of_argv0() {
        let process = Process {
            pid: 1,
            args: vec!["/usr/bin/qemu-system-x86_64".into(), "-name".into()],
        };

        assert_eq!(process.program(), "qemu-system-x86_64");
        assert!(process.mentions("-na"));
    }

    #[test]
    fn parent_in_stat_skips_a_command_name_with_spaces_and_parens() {
        let stat = "4242 (qemu (x) y) S 17 4242 4242 0 -1";

        assert_eq!(parent_in_stat(stat), Some(17));
        assert_eq!(parent_in_stat("garbage"), None);
    }

    #[test]
    fn descends_from_finds_this_process_under_its_parent() {
        let me = std::process::id();
        let parent = parent_of(me).unwrap();

        assert!(descends_from(me, parent));
        assert!(!descends_from(parent, me));
    }

    #[test]
    fn is_shim_for_needs_the_id_after_dash_id() {
        let shim = Process {
            pid: 1,
            args: [
                "containerd-shim-runc-v2",
                "-namespace",
                "k8s.io",
                "-id",
                "abc",
            ]
            .map(String::from)
            .to_vec(),
        };

        assert!(is_shim_for(&shim, "abc"));
        assert!(!is_shim_for(&shim, "k8s.io"));
    }

    #[test]
    fn shim_socket_hashes_the_address_namespace_and_id() {
        let socket = shim_socket(Path::new("/d/containerd.sock"), "abc").unwrap();

        let expected = super::super::pause::sha256_of_bytes(b"/d/containerd.sock/k8s.io/abc");
        assert_eq!(socket, Path::new(SHIM_SOCKET_DIR).join(expected.unwrap()));
    }

    #[test]
    fn netns_of_spec_finds_the_network_namespace_path() {
        let spec = serde_json::json!({"linux": {"namespaces": [
            {"type": "pid"},
            {"type": "network", "path": "/var/run/netns/cni-1"},
        ]}});

        assert_eq!(
            netns_of_spec(&spec),
            Some(PathBuf::from("/var/run/netns/cni-1"))
        );
        assert_eq!(netns_of_spec(&serde_json::json!({})), None);
    }

    #[test]
    fn paths_naming_finds_nested_entries_and_skips_what_it_is_told() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("a/abc123/x")).unwrap();
        std::fs::create_dir_all(tmp.path().join("logs/abc123")).unwrap();

        let found = paths_naming(tmp.path(), &["abc"], &[&tmp.path().join("logs")]);

        assert_eq!(found, [tmp.path().join("a/abc123")]);
    }
}

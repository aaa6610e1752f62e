//! The monitor's place in the host's cgroups: `linux.cgroupsPath`, so the
//! engine's accounting (podman stats, docker stats, kubelet) sees the VM's
//! processes (the monitor, the VMM and its helpers inherit it).
//!
//! Both layouts are handled: cgroup v2 and v1 hierarchies (this host is a
//! v1 + v2 hybrid), and the systemd form `slice:prefix:name` of the path,
//! which maps to `/slice/prefix-name.scope` as runc's systemd driver does.
//! Joining is best effort: a hierarchy that refuses is skipped and logged.

use std::fs;
use std::path::{Path, PathBuf};

/// The cgroup path a spec's `cgroupsPath` names, relative to a hierarchy root.
pub fn relative_path(cgroups_path: &str) -> Option<PathBuf> {
    let path = cgroups_path.trim();
    if path.is_empty() {
        return None;
    }
    let parts: Vec<&str> = path.split(':').collect();
    let relative = match parts.as_slice() {
        [slice, prefix, name] => {
            let slice = if slice.is_empty() {
                "system.slice"
            } else {
                slice
            };
            format!("{slice}/{prefix}-{name}.scope")
        }
        _ => path.trim_start_matches('/').to_string(),
    };
    if relative.split('/').any(|c| c == "..") {
        return None;
    }
    Some(PathBuf::from(relative))
}

/// The mount points of cgroup hierarchies (v1 and v2).
pub fn hierarchies() -> Vec<PathBuf> {
    // A v1 hierarchy without controllers (name=systemd) is kept too.
    crate::sandbox::share::mount_table()
        .into_iter()
        .filter(|(_, fstype)| fstype == "cgroup" || fstype == "cgroup2")
        .map(|(point, _)| point)
        .collect()
}

/// Creates the cgroup in every hierarchy and moves this process into it.
/// Returns the directories created (for `delete` to remove) and the
/// hierarchies that refused, with why.
pub fn join(relative: &Path) -> (Vec<PathBuf>, Vec<String>) {
    let mut joined = Vec::new();
    let mut refused = Vec::new();
    let pid = std::process::id().to_string();
    for root in hierarchies() {
        let dir = root.join(relative);
        let result = fs::create_dir_all(&dir)
            .and_then(|_| prepare_cpuset(&root, &dir))
            .and_then(|_| fs::write(dir.join("cgroup.procs"), &pid));
        match result {
            Ok(()) => joined.push(dir),
            Err(e) => refused.push(format!("{}: {e}", dir.display())),
        }
    }
    (joined, refused)
}

/// A new v1 cpuset cgroup takes no tasks until it has cpus and mems: copy
/// them down from the nearest ancestor that has them.
fn prepare_cpuset(root: &Path, dir: &Path) -> std::io::Result<()> {
    let cpus = dir.join("cpuset.cpus");
    if !cpus.exists() || !fs::read_to_string(&cpus)?.trim().is_empty() {
        return Ok(());
    }
    let mut chain: Vec<&Path> = dir
        .ancestors()
        .take_while(|p| p.starts_with(root))
        .collect();
    chain.reverse();
    for pair in chain.windows(2) {
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let value = fs::read_to_string(pair[0].join(file))?;
            let target = pair[1].join(file);
            if fs::read_to_string(&target)?.trim().is_empty() {
                fs::write(&target, value.trim())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroupfs_and_systemd_paths_map_like_runc() {
        assert_eq!(
            relative_path("/libpod_parent/libpod-abc"),
            Some("libpod_parent/libpod-abc".into())
        );
        assert_eq!(
            relative_path("system.slice:docker:abc"),
            Some("system.slice/docker-abc.scope".into())
        );
        assert_eq!(relative_path(""), None);
        assert_eq!(relative_path("/a/../../etc"), None);
    }

    #[test]
    fn this_host_has_cgroup_hierarchies() {
        assert!(!hierarchies().is_empty());
    }
}

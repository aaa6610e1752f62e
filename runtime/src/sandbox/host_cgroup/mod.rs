//! The monitor's place in the host's cgroups: `linux.cgroupsPath`, so the
//! engine's accounting (podman stats, docker stats, kubelet) sees the VM's
//! processes (the monitor, the VMM and its helpers inherit it).
//!
//! Both layouts are handled: cgroup v2 and v1 hierarchies (this host is a
//! v1 + v2 hybrid), and the systemd form `slice:prefix:name` of the path,
//! which maps to `/slice/prefix-name.scope` as runc's systemd driver does.
//! The container's limits are written there as the VM's envelope
//! ([`envelope`]). Joining is best effort: a hierarchy (or a limit) the
//! host refuses is skipped and logged.

use std::fs;
use std::path::{Path, PathBuf};

use husk_protocol::oci::Resources;

pub mod envelope;

use envelope::Version;

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
    mounted().into_iter().map(|(point, _)| point).collect()
}

/// The cgroup hierarchies with their versions.
fn mounted() -> Vec<(PathBuf, Version)> {
    // A v1 hierarchy without controllers (name=systemd) is kept too.
    crate::sandbox::share::mount_table()
        .into_iter()
        .filter_map(|(point, fstype)| match fstype.as_str() {
            "cgroup" => Some((point, Version::V1)),
            "cgroup2" => Some((point, Version::V2)),
            _ => None,
        })
        .collect()
}

/// Creates the cgroup in every hierarchy, writes the envelope of
/// `resources` there ([`envelope`]) and moves this process into it.
/// Returns the directories created (for `delete` to remove) and what the
/// host refused (a hierarchy, or one limit), with why: joining and each
/// limit are best effort, so a host without a controller still runs the
/// container, its guest enforcing the limits alone.
pub fn join(relative: &Path, resources: Option<&Resources>) -> (Vec<Joined>, Vec<String>) {
    let mut joined = Vec::new();
    let mut refused = Vec::new();
    let pid = std::process::id().to_string();
    for (root, version) in mounted() {
        let dir = root.join(relative);
        let limits = resources.map_or_else(Vec::new, |r| envelope::files(r, version));
        let result = fs::create_dir_all(&dir)
            .and_then(|_| match version {
                Version::V1 => prepare_cpuset(&root, &dir),
                Version::V2 if limits.is_empty() => Ok(()),
                Version::V2 => enable_controllers(&root, &dir, &mut refused),
            })
            .and_then(|_| {
                write_limits(&dir, &limits, &mut refused);
                fs::write(dir.join("cgroup.procs"), &pid)
            });
        match result {
            Ok(()) => joined.push(Joined { dir, version }),
            Err(e) => refused.push(format!("{}: {e}", dir.display())),
        }
    }
    (joined, refused)
}

/// A host cgroup the monitor joined.
#[derive(Debug, Clone)]
pub struct Joined {
    /// Its directory.
    pub dir: PathBuf,
    /// Its hierarchy's version.
    pub version: Version,
}

/// Writes `update`'s limits into the cgroups joined, as runc's `update`
/// does, except the memory envelope: the VM's memory stays as created
/// (guest pages it has touched stay with the host), so neither grows nor
/// shrinks. Returns what the host refused, with why.
pub fn update(joined: &[Joined], resources: &Resources) -> Vec<String> {
    let mut refused = Vec::new();
    for cgroup in joined {
        let limits: Vec<_> = envelope::files(resources, cgroup.version)
            .into_iter()
            .filter(|(file, _)| !file.starts_with("memory."))
            .collect();
        write_limits(&cgroup.dir, &limits, &mut refused);
    }
    refused
}

/// Writes each of `limits` that `dir` has a file for (one it lacks
/// belongs to a controller its hierarchy does not have).
fn write_limits(dir: &Path, limits: &[(String, String)], refused: &mut Vec<String>) {
    for (file, value) in limits {
        let path = dir.join(file);
        if path.exists() {
            if let Err(e) = fs::write(&path, value) {
                refused.push(format!("{} = {value:?}: {e}", path.display()));
            }
        }
    }
}

/// The v2 controllers the envelope uses.
const V2_CONTROLLERS: [&str; 6] = ["cpu", "cpuset", "io", "memory", "pids", "hugetlb"];

/// Enables the envelope's controllers (those the root offers) in every
/// ancestor of `dir` below and including `root`, as runc's v2 driver does:
/// a v2 cgroup has a controller's files only when its parent delegates it.
/// A controller the host will not delegate is noted in `refused`.
fn enable_controllers(root: &Path, dir: &Path, refused: &mut Vec<String>) -> std::io::Result<()> {
    let offered = fs::read_to_string(root.join("cgroup.controllers"))?;
    let mut chain: Vec<&Path> = dir
        .ancestors()
        .skip(1)
        .take_while(|p| p.starts_with(root))
        .collect();
    chain.reverse();
    for controller in offered
        .split_whitespace()
        .filter(|c| V2_CONTROLLERS.contains(c))
    {
        for parent in &chain {
            let control = parent.join("cgroup.subtree_control");
            if let Err(e) = fs::write(&control, format!("+{controller}")) {
                refused.push(format!("{} += {controller}: {e}", control.display()));
                break;
            }
        }
    }
    Ok(())
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

//! The monitor's network namespace.
//!
//! runc puts the container's init in the network namespace the spec names
//! (or a new one), and engines configure it through that pid: podman
//! prepares a namespace and passes its path, docker's `libnetwork-setkey`
//! prestart hook moves interfaces into `/proc/PID/ns/net`. The monitor is
//! the pid engines see, so it enters the same namespace before it execs;
//! then hooks and engines find what they expect, and the monitor carries
//! what they put there into the VM ([`crate::sandbox::network`]).

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::{Context, Result};

use crate::oci::spec::Linux;

/// Where the monitor's network namespace comes from.
#[derive(Debug)]
pub enum NetnsPlan {
    /// The host's namespace: no `network` entry in `linux.namespaces`
    /// (podman, CRI), or one whose path is the runtime's own namespace
    /// (docker's `--network host` names its daemon's, `.../netns/default`).
    Host,
    /// A `network` entry without a path: a new, empty namespace.
    New,
    /// A `network` entry with a path: that namespace (opened before fork).
    Join(OwnedFd),
}

impl NetnsPlan {
    /// The plan for `linux`; opens a namespace path now, so a bad path is
    /// named before anything starts.
    pub fn from_spec(linux: &Linux) -> Result<NetnsPlan> {
        let Some(entry) = linux.namespaces.iter().find(|ns| ns.kind == "network") else {
            return Ok(NetnsPlan::Host);
        };
        match entry.path.as_deref() {
            None | Some("") => Ok(NetnsPlan::New),
            Some(path) => {
                let file = File::open(path).with_context(|| {
                    format!("opening the network namespace {path} (linux.namespaces)")
                })?;
                if is_own_namespace(&file)
                    .with_context(|| format!("reading the network namespace {path}"))?
                {
                    return Ok(NetnsPlan::Host);
                }
                Ok(NetnsPlan::Join(file.into()))
            }
        }
    }

    /// Enters the planned namespace. Meant for a `pre_exec` hook: it only
    /// makes async-signal-safe system calls.
    pub fn enter(&self) -> std::io::Result<()> {
        // SAFETY: unshare and setns take no pointers; the fd is owned by
        // the plan and open.
        let rc = unsafe {
            match self {
                NetnsPlan::Host => 0,
                NetnsPlan::New => libc::unshare(libc::CLONE_NEWNET),
                NetnsPlan::Join(fd) => libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET),
            }
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// True if `namespace` is this process's own network namespace (the
/// same nsfs inode).
fn is_own_namespace(namespace: &File) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let theirs = namespace.metadata()?;
    let ours = std::fs::metadata("/proc/self/ns/net")?;
    Ok((theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::spec::Namespace;

    fn linux(namespaces: &[(&str, Option<&str>)]) -> Linux {
        Linux {
            namespaces: namespaces
                .iter()
                .map(|(kind, path)| Namespace {
                    kind: kind.to_string(),
                    path: path.map(str::to_string),
                })
                .collect(),
            ..Linux::default()
        }
    }

    #[test]
    fn the_plan_follows_the_network_entry() {
        assert!(matches!(
            NetnsPlan::from_spec(&linux(&[("pid", None)])).unwrap(),
            NetnsPlan::Host
        ));
        assert!(matches!(
            NetnsPlan::from_spec(&linux(&[("network", None)])).unwrap(),
            NetnsPlan::New
        ));
    }

    #[test]
    fn a_path_to_the_runtime_s_own_namespace_is_the_host_s() {
        // Docker's --network host names its daemon's namespace, where the
        // runtime runs too.
        assert!(matches!(
            NetnsPlan::from_spec(&linux(&[("network", Some("/proc/self/ns/net"))])).unwrap(),
            NetnsPlan::Host
        ));
    }

    #[test]
    fn a_path_to_another_namespace_is_joined() {
        // A thread in a namespace of its own (needs CAP_SYS_ADMIN).
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            // SAFETY: unshare takes no pointers and changes only this thread.
            let unshared = unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0;
            // SAFETY: gettid takes no arguments.
            let tid = unsafe { libc::gettid() };
            tx.send(unshared.then(|| format!("/proc/self/task/{tid}/ns/net")))
                .unwrap();
            let _ = done_rx.recv();
        });
        let Some(path) = rx.recv().unwrap() else {
            eprintln!("skipped: unshare(CLONE_NEWNET) needs CAP_SYS_ADMIN");
            drop(done_tx);
            thread.join().unwrap();
            return;
        };

        let plan = NetnsPlan::from_spec(&linux(&[("network", Some(&path))])).unwrap();

        drop(done_tx);
        thread.join().unwrap();
        assert!(matches!(plan, NetnsPlan::Join(_)), "{plan:?}");
    }

    #[test]
    fn a_missing_namespace_path_is_named() {
        let err =
            NetnsPlan::from_spec(&linux(&[("network", Some("/run/netns/nope"))])).unwrap_err();

        assert!(format!("{err:#}").contains("/run/netns/nope"), "{err:#}");
    }
}

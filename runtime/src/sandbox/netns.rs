//! The monitor's network namespace, and the refusal of networks husk does
//! not connect guests to yet.
//!
//! runc puts the container's init in the network namespace the spec names
//! (or a new one), and engines configure it through that pid: podman
//! prepares a namespace and passes its path, docker's `libnetwork-setkey`
//! prestart hook moves interfaces into `/proc/PID/ns/net`. The monitor is
//! the pid engines see, so it enters the same namespace before it execs;
//! then hooks and engines find what they expect.
//!
//! The guest has only `lo` until networking lands: a namespace that has
//! any other interface (an engine's default network) is refused at create
//! with a message naming the interfaces, instead of a container that runs
//! without the network it was given.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::{bail, Context, Result};

use crate::oci::spec::Linux;

/// Where the monitor's network namespace comes from.
#[derive(Debug)]
pub enum NetnsPlan {
    /// No `network` entry in `linux.namespaces`: the host's namespace.
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

/// Fails if the network namespace of `pid` has interfaces the guest
/// would not get (anything but `lo`).
pub fn refuse_connected(pid: i32) -> Result<()> {
    let path = format!("/proc/{pid}/net/dev");
    let table = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let connected: Vec<&str> = interfaces(&table)
        .into_iter()
        .filter(|name| *name != "lo")
        .collect();
    if !connected.is_empty() {
        bail!(
            "the container's network namespace has interfaces ({}) but husk does not connect \
             guests to networks yet: run it without a network (--network none)",
            connected.join(", ")
        );
    }
    Ok(())
}

/// The interface names in a `/proc/net/dev` table.
fn interfaces(table: &str) -> Vec<&str> {
    table
        .lines()
        .skip(2)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, _)| name.trim())
        .collect()
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
    fn interfaces_reads_the_names_of_proc_net_dev() {
        let table = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0
  eth0: 2000 20 0 0 0 0 0 0 3000 30 0 0 0 0 0 0
";

        assert_eq!(interfaces(table), ["lo", "eth0"]);
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
        assert!(matches!(
            NetnsPlan::from_spec(&linux(&[("network", Some("/proc/self/ns/net"))])).unwrap(),
            NetnsPlan::Join(_)
        ));
    }

    #[test]
    fn a_missing_namespace_path_is_named() {
        let err =
            NetnsPlan::from_spec(&linux(&[("network", Some("/run/netns/nope"))])).unwrap_err();

        assert!(format!("{err:#}").contains("/run/netns/nope"), "{err:#}");
    }

    #[test]
    fn this_process_namespace_is_checked() {
        // The test host has at least lo; whatever else it has decides the
        // answer, which must name every other interface.
        let table = std::fs::read_to_string("/proc/self/net/dev").unwrap();
        let others: Vec<&str> = interfaces(&table)
            .into_iter()
            .filter(|n| *n != "lo")
            .collect();

        let result = refuse_connected(std::process::id() as i32);

        match result {
            Ok(()) => assert!(others.is_empty()),
            Err(e) => {
                for name in others {
                    assert!(e.to_string().contains(name), "{e}");
                }
            }
        }
    }
}

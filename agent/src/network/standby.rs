//! Standby NICs: a NIC the host attached for an interface the engine will
//! add only after create (docker 26 and later configure the namespace
//! between create and start). Until then it waits in a network namespace
//! of its own, so the container sees exactly what runc would show (only
//! `lo`), and comes back to the guest's namespace when configured.
//!
//! The hidden namespace is made once, by a short-lived thread that
//! unshares its network namespace (allowed for one thread of a
//! multi-threaded process) and keeps it open as a file; netlink requests
//! inside it run on another short-lived thread that joins it.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

use anyhow::{anyhow, Context, Result};
use husk_netlink::{LinkChange, Netlink};
use husk_protocol::net::MacAddr;

/// The hidden namespace and the NICs in it.
#[derive(Default)]
pub struct Standby {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    namespace: Option<File>,
    hidden: Vec<MacAddr>,
}

impl Standby {
    /// Whether the NIC with `mac` waits in the hidden namespace.
    pub fn is_hidden(&self, mac: MacAddr) -> bool {
        self.state.lock().unwrap().hidden.contains(&mac)
    }

    /// Moves the NIC with `mac` from the guest's namespace into the hidden
    /// one (made on first use).
    pub fn hide(&self, mac: MacAddr) -> Result<()> {
        let mut state = self.state.lock().unwrap();
        if state.hidden.contains(&mac) {
            return Ok(());
        }
        if state.namespace.is_none() {
            state.namespace = Some(new_namespace()?);
        }
        let namespace = state.namespace.as_ref().expect("made above");
        let mut netlink = Netlink::open().context("opening netlink")?;
        move_link(&mut netlink, mac, namespace)
            .with_context(|| format!("hiding the standby NIC {mac}"))?;
        state.hidden.push(mac);
        Ok(())
    }

    /// Moves the NIC with `mac` back into the guest's namespace.
    pub fn bring_back(&self, mac: MacAddr) -> Result<()> {
        let mut state = self.state.lock().unwrap();
        let namespace = state
            .namespace
            .as_ref()
            .ok_or_else(|| anyhow!("no standby NIC {mac}"))?
            .try_clone()
            .context("cloning the hidden namespace's fd")?;
        let home = File::open("/proc/self/ns/net").context("opening the guest's namespace")?;
        std::thread::scope(|scope| {
            scope
                .spawn(|| -> Result<()> {
                    nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
                        .context("entering the hidden namespace")?;
                    let mut netlink = Netlink::open().context("opening netlink")?;
                    move_link(&mut netlink, mac, &home)
                })
                .join()
                .map_err(|_| anyhow!("the namespace thread panicked"))?
        })
        .with_context(|| format!("bringing the standby NIC {mac} back"))?;
        state.hidden.retain(|m| *m != mac);
        Ok(())
    }
}

/// A new, empty network namespace, kept open as a file.
fn new_namespace() -> Result<File> {
    std::thread::spawn(|| -> Result<File> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .context("creating the standby network namespace")?;
        File::open("/proc/thread-self/ns/net").context("opening the standby network namespace")
    })
    .join()
    .map_err(|_| anyhow!("the namespace thread panicked"))?
}

/// Moves the link with `mac` (seen through `netlink`) into `namespace`.
fn move_link(netlink: &mut Netlink, mac: MacAddr, namespace: &File) -> Result<()> {
    let link = netlink
        .links()
        .context("listing links")?
        .into_iter()
        .find(|l| l.mac == Some(mac.0))
        .ok_or_else(|| anyhow!("no NIC with MAC {mac}"))?;
    let change = LinkChange {
        up: Some(false),
        netns_fd: Some(namespace.as_raw_fd()),
        ..LinkChange::default()
    };
    netlink
        .set_link(link.index, &change)
        .with_context(|| format!("moving {} to another namespace", link.name))?;
    Ok(())
}

//! The container's network, carried into its VM (shared/DESIGN.md section
//! 7; shared/NETWORKING.md): the monitor runs in the network namespace the
//! engine prepared; for every interface there ([`scan`]) it creates a tap
//! ([`tap`]), redirects traffic both ways between the two with an ingress
//! qdisc and a u32 match-all filter with a mirred redirect on each, and
//! gives the guest NIC the interface's MAC and MTU; the agent configures
//! the addresses, routes and neighbours it is sent.
//!
//! A namespace with no interface yet gets a standby NIC: docker 26 and
//! later configure their namespace after create, and `ctr run --cni` runs
//! its CNI plugins on the one the monitor made (`/proc/PID/ns/net`)
//! between create and start; so at `start` the namespace is read again
//! ([`HostNetwork::connect_late`]) and a new interface is connected to the
//! standby tap.
//!
//! What husk creates in the namespace goes away with the sandbox: the taps
//! are not persistent (they vanish with the last fd, the monitor's and the
//! VMM's), and the ingress qdiscs on the engine's interfaces are deleted
//! at the end ([`HostNetwork::teardown`]), or by `delete` from the
//! [`record`] when the monitor was killed.

pub mod dns;
pub mod record;
pub mod scan;
pub mod tap;

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use husk_netlink::{LinkChange, Netlink, NetlinkError};
use husk_protocol::net::{Interface, MacAddr, Network};

use crate::hypervisor::Nic;
use scan::{Carried, Scan};

/// Taps are named `husk-tap<N>`.
pub const TAP_PREFIX: &str = "husk-tap";
/// How often adding a qdisc is tried while the kernel says EBUSY.
const QDISC_ATTEMPTS: u32 = 5;
const QDISC_RETRY: Duration = Duration::from_millis(20);

/// Why the network could not be carried.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A netlink request failed.
    #[error("{what}: {source}")]
    Netlink {
        /// What was being done.
        what: String,
        /// The kernel's answer.
        #[source]
        source: NetlinkError,
    },
    /// An interface cannot be carried into a VM.
    #[error("the container's network namespace has the interface {interface}, which husk cannot connect to the VM: {why}")]
    Refused {
        /// The interface.
        interface: String,
        /// Why.
        why: String,
    },
    /// Creating a tap failed.
    #[error("{0}")]
    Tap(#[source] std::io::Error),
    /// More interfaces appeared after create than standby NICs wait.
    #[error("the interfaces {0} appeared in the container's network namespace after create; husk connects at most one interface added after create")]
    TooManyLate(String),
}

impl NetworkError {
    /// A mapper from a netlink error to [`NetworkError::Netlink`] for `what`.
    pub fn netlink(what: impl Into<String>) -> impl FnOnce(NetlinkError) -> NetworkError {
        let what = what.into();
        move |source| NetworkError::Netlink { what, source }
    }
}

/// A carried interface and its tap.
struct Connected {
    carried: Carried,
    tap: Arc<OwnedFd>,
    tap_index: u32,
}

/// A tap whose guest NIC waits for an interface added after create.
struct StandbyTap {
    tap: Arc<OwnedFd>,
    tap_index: u32,
    mac: MacAddr,
}

/// The namespace's interfaces connected to taps for one VM.
pub struct HostNetwork {
    netlink: Netlink,
    connected: Vec<Connected>,
    standby: Option<StandbyTap>,
    routes: Vec<husk_protocol::net::Route>,
    neighbours: Vec<husk_protocol::net::Neighbour>,
    taps: u32,
    /// A path of the namespace that outlives the monitor, for the record.
    lasting: Option<std::path::PathBuf>,
}

impl HostNetwork {
    /// Connects every interface of the calling thread's namespace to a new
    /// tap, or, when there is none, prepares a standby tap (`seed` makes
    /// its MAC). `lasting` is a path of the namespace that outlives the
    /// monitor, for [`HostNetwork::record`]. On error, nothing it made is
    /// left.
    pub fn connect(
        seed: u64,
        lasting: Option<std::path::PathBuf>,
    ) -> Result<HostNetwork, NetworkError> {
        let netlink = Netlink::open().map_err(NetworkError::netlink("opening netlink"))?;
        let mut network = HostNetwork {
            netlink,
            connected: Vec::new(),
            standby: None,
            routes: Vec::new(),
            neighbours: Vec::new(),
            taps: 0,
            lasting,
        };
        let scan = scan::scan(&mut network.netlink, &[], &[])?;
        if let Err(e) = network.connect_scan(scan) {
            network.teardown();
            return Err(e);
        }
        if network.connected.is_empty() {
            let (tap, tap_index) = network.new_tap(None)?;
            network.standby = Some(StandbyTap {
                tap,
                tap_index,
                mac: MacAddr::random_local(seed),
            });
        }
        Ok(network)
    }

    /// Connects what a scan found; records its routes and neighbours.
    fn connect_scan(&mut self, scan: Scan) -> Result<(), NetworkError> {
        for carried in &scan.carried {
            let redirects =
                self.netlink
                    .redirects(carried.index)
                    .map_err(NetworkError::netlink(format!(
                        "reading the filters of {}",
                        carried.name
                    )))?;
            if !redirects.is_empty() {
                return Err(NetworkError::Refused {
                    interface: carried.name.clone(),
                    why: "its traffic is already redirected, to another VM's tap: a VM cannot \
                          share the network of another container (--network container:NAME)"
                        .into(),
                });
            }
        }
        for carried in scan.carried {
            let (tap, tap_index) = self.new_tap(Some(carried.mtu))?;
            self.redirect(&carried, tap_index)?;
            self.connected.push(Connected {
                carried,
                tap,
                tap_index,
            });
        }
        self.routes.extend(scan.routes);
        self.neighbours.extend(scan.neighbours);
        Ok(())
    }

    /// A new tap `husk-tap<N>`, up with `mtu` when given.
    fn new_tap(&mut self, mtu: Option<u32>) -> Result<(Arc<OwnedFd>, u32), NetworkError> {
        let name = format!("{TAP_PREFIX}{}", self.taps);
        self.taps += 1;
        let fd = tap::create(&name).map_err(NetworkError::Tap)?;
        let index = self
            .netlink
            .links()
            .map_err(NetworkError::netlink("listing the links"))?
            .into_iter()
            .find(|l| l.name == name)
            .map(|l| l.index)
            .ok_or_else(|| {
                NetworkError::Tap(std::io::Error::other(format!("the tap {name} vanished")))
            })?;
        if let Some(mtu) = mtu {
            self.bring_up(index, &name, mtu)?;
        }
        Ok((Arc::new(fd), index))
    }

    fn bring_up(&mut self, index: u32, name: &str, mtu: u32) -> Result<(), NetworkError> {
        let change = LinkChange {
            up: Some(true),
            mtu: Some(mtu),
            ..LinkChange::default()
        };
        self.netlink
            .set_link(index, &change)
            .map_err(NetworkError::netlink(format!(
                "setting MTU {mtu} on {name} and bringing it up"
            )))
    }

    /// Ingress qdiscs on both, and a redirect each way.
    fn redirect(&mut self, carried: &Carried, tap_index: u32) -> Result<(), NetworkError> {
        let name = &carried.name;
        for (index, what) in [(carried.index, name.as_str()), (tap_index, "its tap")] {
            self.add_ingress(index)
                .map_err(NetworkError::netlink(format!(
                    "adding an ingress qdisc to {what} ({name})"
                )))?;
        }
        self.netlink
            .add_redirect(carried.index, tap_index)
            .map_err(NetworkError::netlink(format!(
                "redirecting {name}'s traffic to its tap"
            )))?;
        self.netlink
            .add_redirect(tap_index, carried.index)
            .map_err(NetworkError::netlink(format!(
                "redirecting the tap's traffic to {name}"
            )))
    }

    fn add_ingress(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut attempt = 1;
        loop {
            match self.netlink.add_ingress_qdisc(index) {
                Err(e) if e.errno() == Some(libc::EBUSY) && attempt < QDISC_ATTEMPTS => {
                    attempt += 1;
                    std::thread::sleep(QDISC_RETRY);
                }
                other => return other,
            }
        }
    }

    /// The NICs the VM gets: one per connected interface, then the standby.
    pub fn nics(&self) -> Vec<Nic> {
        let mut nics: Vec<Nic> = self
            .connected
            .iter()
            .map(|c| Nic {
                tap: Arc::clone(&c.tap),
                mac: c.carried.mac,
                mtu: Some(c.carried.mtu),
            })
            .collect();
        if let Some(standby) = &self.standby {
            nics.push(Nic {
                tap: Arc::clone(&standby.tap),
                mac: standby.mac,
                mtu: None,
            });
        }
        nics
    }

    /// What the agent configures for the interfaces connected so far.
    pub fn description(&self, dns_relays: Vec<std::net::IpAddr>) -> Network {
        Network {
            interfaces: self
                .connected
                .iter()
                .map(|c| interface(&c.carried, c.carried.mac))
                .collect(),
            neighbours: self.neighbours.clone(),
            routes: self.routes.clone(),
            dns_relays,
            standby: self.standby.iter().map(|s| s.mac).collect(),
        }
    }

    /// What `delete` needs to undo the redirects if the monitor dies.
    pub fn record(&self) -> record::Record {
        record::Record {
            netns: self.lasting.clone(),
            redirected: self
                .connected
                .iter()
                .map(|c| (c.carried.index, c.carried.name.clone()))
                .collect(),
        }
    }

    /// Reads the namespace again and connects an interface that appeared
    /// since to the standby tap; returns what the agent must configure for
    /// it, or `None` when nothing appeared.
    pub fn connect_late(&mut self) -> Result<Option<Network>, NetworkError> {
        let ours: Vec<u32> = self
            .connected
            .iter()
            .map(|c| c.tap_index)
            .chain(self.standby.iter().map(|s| s.tap_index))
            .collect();
        let known: Vec<u32> = self.connected.iter().map(|c| c.carried.index).collect();
        let scan = scan::scan(&mut self.netlink, &ours, &known)?;
        if scan.carried.is_empty() {
            return Ok(None);
        }
        let Some(standby) = self.standby.take() else {
            return Err(late_error(&scan));
        };
        if scan.carried.len() > 1 {
            self.standby = Some(standby);
            return Err(late_error(&scan));
        }
        let carried = scan.carried.into_iter().next().expect("one");
        let name = format!("{TAP_PREFIX}(standby) for {}", carried.name);
        let connected = self
            .bring_up(standby.tap_index, &name, carried.mtu)
            .and_then(|()| self.redirect(&carried, standby.tap_index));
        if let Err(e) = connected {
            let _ = self.netlink.delete_ingress_qdisc(carried.index);
            self.standby = Some(standby);
            return Err(e);
        }
        let late = Network {
            interfaces: vec![interface(&carried, standby.mac)],
            neighbours: scan.neighbours.clone(),
            routes: scan.routes.clone(),
            dns_relays: Vec::new(),
            standby: Vec::new(),
        };
        self.routes.extend(scan.routes);
        self.neighbours.extend(scan.neighbours);
        self.connected.push(Connected {
            carried,
            tap: standby.tap,
            tap_index: standby.tap_index,
        });
        Ok(Some(late))
    }

    /// Removes the ingress qdiscs from the engine's interfaces (their
    /// filters go with them); the taps vanish once the VMM has closed
    /// them too.
    pub fn teardown(&mut self) {
        for connected in self.connected.drain(..) {
            let _ = self.netlink.delete_ingress_qdisc(connected.carried.index);
            let _ = self.netlink.delete_link(connected.tap_index);
        }
        if let Some(standby) = self.standby.take() {
            let _ = self.netlink.delete_link(standby.tap_index);
        }
    }
}

impl Drop for HostNetwork {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn interface(carried: &Carried, device_mac: MacAddr) -> Interface {
    Interface {
        name: carried.name.clone(),
        device_mac,
        mac: carried.mac,
        mtu: carried.mtu,
        addresses: carried.addresses.clone(),
    }
}

fn late_error(scan: &Scan) -> NetworkError {
    let names: Vec<&str> = scan.carried.iter().map(|c| c.name.as_str()).collect();
    NetworkError::TooManyLate(names.join(", "))
}

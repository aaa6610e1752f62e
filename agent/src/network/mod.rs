//! The guest's network: its NICs configured from the host's description
//! ([`husk_protocol::net::Network`]) through netlink, before the first
//! container starts and again when the engine added an interface later.
//!
//! Order (as Kata's agent does): links (found by MAC, renamed to the host
//! interface's name, MAC and MTU set, up), addresses, neighbours, routes.
//! A freshly probed NIC may not exist yet, so finding one retries for a
//! second. IPv6 may be off in the guest or in the namespace: an IPv6
//! address or route the kernel refuses with EACCES, EAFNOSUPPORT or
//! EPERM is skipped with a log line, never an error.
//!
//! Every container of the sandbox shares this (the guest's) network
//! namespace; `lo` is brought up at boot ([`bring_up_loopback`]).
//! Standby NICs wait in a hidden namespace ([`standby`]); loopback
//! nameservers are answered by [`dns_relay`]; connections the host forwards
//! to the guest's localhost come through [`port_forward`].
//!
//! Trust: the description comes from the host; a NIC it names that the
//! guest does not have is an error naming the MAC.

pub mod dns_relay;
pub mod port_forward;
pub mod standby;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use husk_netlink::{Link, LinkChange, Netlink, NetlinkError};
use husk_protocol::net::{Interface, MacAddr, Network, Route};

/// How long a NIC the host announced may take to appear.
const NIC_WAIT: Duration = Duration::from_secs(1);
const NIC_POLL: Duration = Duration::from_millis(10);

/// The guest's network state: its standby NICs and DNS relays.
#[derive(Default)]
pub struct GuestNetwork {
    standby: standby::Standby,
    relays: dns_relay::DnsRelays,
}

impl GuestNetwork {
    /// Applies `network` ([`configure`]) and starts its DNS relays.
    pub fn configure(&self, network: &Network) -> Result<()> {
        configure(network, &self.standby)?;
        self.relays.start(&network.dns_relays)
    }
}

/// Brings `lo` up (a fresh namespace has it down).
pub fn bring_up_loopback() -> Result<()> {
    let mut netlink = Netlink::open().context("opening netlink")?;
    let lo = netlink
        .links()
        .context("listing links")?
        .into_iter()
        .find(|l| l.link_type == husk_netlink::ARPHRD_LOOPBACK)
        .context("the guest has no loopback link")?;
    netlink
        .set_link(
            lo.index,
            &LinkChange {
                up: Some(true),
                ..LinkChange::default()
            },
        )
        .context("bringing lo up")
}

/// Applies `network`: standby NICs are hidden, the others configured.
pub fn configure(network: &Network, standby: &standby::Standby) -> Result<()> {
    for mac in &network.standby {
        standby.hide(*mac)?;
    }
    let mut netlink = Netlink::open().context("opening netlink")?;
    let mut indexes = Vec::new();
    for interface in &network.interfaces {
        if standby.is_hidden(interface.device_mac) {
            standby.bring_back(interface.device_mac)?;
        }
        let link = wait_for_nic(&mut netlink, interface.device_mac)?;
        indexes.push((interface, link));
    }
    // Names are freed first: the host's eth0 may be the guest's eth1 while
    // another NIC holds the name eth0.
    for (n, (interface, link)) in indexes.iter().enumerate() {
        if link.name != interface.name {
            let change = LinkChange {
                up: Some(false),
                name: Some(format!("husk-tmp{n}")),
                ..LinkChange::default()
            };
            netlink
                .set_link(link.index, &change)
                .with_context(|| format!("renaming {} for {}", link.name, interface.name))?;
        }
    }
    for (interface, link) in &indexes {
        configure_link(&mut netlink, link, interface)?;
    }
    let by_name = |name: &str| {
        indexes
            .iter()
            .find(|(i, _)| i.name == name)
            .map(|(_, l)| l.index)
    };
    for neighbour in &network.neighbours {
        let index = by_name(&neighbour.interface).with_context(|| {
            format!(
                "neighbour {}: no interface {}",
                neighbour.address, neighbour.interface
            )
        })?;
        let added = netlink.add_neighbour(index, neighbour.address, neighbour.mac.0);
        tolerate(added, neighbour.address.is_ipv6(), || {
            format!(
                "adding neighbour {} ({}) on {}",
                neighbour.address, neighbour.mac, neighbour.interface
            )
        })?;
    }
    for route in &network.routes {
        let output = match &route.interface {
            Some(name) => Some(by_name(name).with_context(|| {
                format!("route {}: no interface {name}", describe_route(route))
            })?),
            None => None,
        };
        let added = netlink.add_route(&husk_netlink::Route {
            destination: route.destination.map(|d| (d.address, d.prefix_len)),
            gateway: route.gateway,
            output,
            source: route.source,
            metric: route.metric,
            mtu: route.mtu,
            protocol: husk_netlink::RTPROT_BOOT,
            scope: route.scope,
            kind: husk_netlink::RTN_UNICAST,
            ipv6: route.ipv6 || route_is_ipv6(route),
        });
        tolerate(added, route.ipv6 || route_is_ipv6(route), || {
            format!("adding route {}", describe_route(route))
        })?;
    }
    Ok(())
}

/// Name, MAC, MTU, up, then the addresses of one NIC.
fn configure_link(netlink: &mut Netlink, link: &Link, interface: &Interface) -> Result<()> {
    let name = &interface.name;
    let change = LinkChange {
        up: Some(false),
        name: Some(name.clone()),
        mac: (link.mac != Some(interface.mac.0)).then_some(interface.mac.0),
        mtu: Some(interface.mtu),
        ..LinkChange::default()
    };
    netlink.set_link(link.index, &change).with_context(|| {
        format!(
            "setting name, MAC {} and MTU {} of {name}",
            interface.mac, interface.mtu
        )
    })?;
    let up = LinkChange {
        up: Some(true),
        ..LinkChange::default()
    };
    netlink
        .set_link(link.index, &up)
        .with_context(|| format!("bringing {name} up"))?;
    for address in &interface.addresses {
        let v6 = address.address.is_ipv6();
        let added = netlink.add_address(link.index, address.address, address.prefix_len, v6);
        tolerate(added, v6, || format!("adding {address} to {name}"))?;
    }
    Ok(())
}

/// The NIC with `mac`, waiting up to [`NIC_WAIT`] for it to appear.
fn wait_for_nic(netlink: &mut Netlink, mac: MacAddr) -> Result<Link> {
    let deadline = Instant::now() + NIC_WAIT;
    loop {
        let links = netlink.links().context("listing links")?;
        if let Some(link) = links.into_iter().find(|l| l.mac == Some(mac.0)) {
            return Ok(link);
        }
        if Instant::now() >= deadline {
            bail!("the guest has no NIC with MAC {mac} (waited {NIC_WAIT:?})");
        }
        std::thread::sleep(NIC_POLL);
    }
}

/// Passes `result`, except that an address or route that already exists
/// is fine, and an IPv6 one the kernel refuses (IPv6 off) is skipped with
/// a log line.
fn tolerate(result: Result<(), NetlinkError>, ipv6: bool, what: impl Fn() -> String) -> Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
        Err(e)
            if ipv6
                && matches!(
                    e.errno(),
                    Some(libc::EACCES | libc::EAFNOSUPPORT | libc::EPERM | libc::EOPNOTSUPP)
                ) =>
        {
            eprintln!("husk-agent: {}: {e}; IPv6 is off, skipped", what());
            Ok(())
        }
        Err(e) => Err(anyhow::Error::new(e).context(what())),
    }
}

fn route_is_ipv6(route: &Route) -> bool {
    let family = |a: &IpAddr| a.is_ipv6();
    route.destination.is_some_and(|d| d.address.is_ipv6())
        || route.gateway.as_ref().is_some_and(family)
}

fn describe_route(route: &Route) -> String {
    let mut text = match route.destination {
        Some(d) => d.to_string(),
        None => "default".into(),
    };
    if let Some(gateway) = route.gateway {
        text.push_str(&format!(" via {gateway}"));
    }
    if let Some(name) = &route.interface {
        text.push_str(&format!(" dev {name}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_described_like_ip_route() {
        let route = Route {
            destination: Some("10.1.0.0/16".parse().unwrap()),
            gateway: Some("10.88.0.1".parse().unwrap()),
            interface: Some("eth0".into()),
            ..Route::default()
        };
        assert_eq!(describe_route(&route), "10.1.0.0/16 via 10.88.0.1 dev eth0");
        assert_eq!(describe_route(&Route::default()), "default");
    }

    #[test]
    fn a_default_route_via_an_ipv6_gateway_is_ipv6() {
        let route = Route {
            gateway: Some("fd00::1".parse().unwrap()),
            ..Route::default()
        };
        assert!(route_is_ipv6(&route));
        assert!(!route_is_ipv6(&Route::default()));
    }
}

//! Reading the container's network namespace: which interfaces the guest
//! gets, with their addresses, and the routes and permanent neighbours
//! that go with them (shared/NETWORKING.md, "What the guest needs").
//!
//! The rules ([`classify`]): `lo` and husk's taps are skipped; every
//! Ethernet link (veth, macvlan, ipvlan, ...) is carried, except a tap
//! that a program in the namespace serves; a link of another kind (a tun
//! device, wireguard, a tunnel) is refused by name, unless it is a
//! fallback tunnel device the kernel put there (down, no address). IPv6
//! link-local addresses stay behind (the guest derives the same ones from
//! the same MAC), as do the kernel's own routes (the guest's kernel makes
//! them from the addresses).

use std::net::IpAddr;

use husk_netlink::{Address, Link, Netlink};
use husk_protocol::net::{IpNet, MacAddr, Neighbour, Route};

use super::NetworkError;

/// `RT_SCOPE_LINK`.
const SCOPE_LINK: u8 = 253;
/// `IFA_F_DADFAILED`: an IPv6 address another host holds. (A tentative
/// one, still in duplicate detection, is carried: engines start the
/// container right after adding it.)
const IFA_F_DADFAILED: u32 = 0x08;

/// An interface of the namespace that the guest gets a NIC for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Carried {
    /// Its index in the namespace.
    pub index: u32,
    /// Its name (the guest NIC gets it).
    pub name: String,
    /// Its MAC (the guest NIC gets it).
    pub mac: MacAddr,
    /// Its MTU.
    pub mtu: u32,
    /// Its addresses, without IPv6 link-local ones.
    pub addresses: Vec<IpNet>,
}

/// What the namespace holds for the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// The interfaces to carry, in index order.
    pub carried: Vec<Carried>,
    /// Their routes, device routes first.
    pub routes: Vec<Route>,
    /// Their permanent neighbours.
    pub neighbours: Vec<Neighbour>,
}

/// What to do with a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The guest gets a NIC for it.
    Carry,
    /// Not the guest's business.
    Skip,
    /// It cannot be carried: why.
    Refuse(String),
}

/// The verdict for `link`; `addressed` says whether it has addresses,
/// `ours` whether it is one of husk's taps.
pub fn classify(link: &Link, addressed: bool, ours: bool) -> Verdict {
    let kind = link.kind.as_deref().unwrap_or("");
    if link.link_type == husk_netlink::ARPHRD_LOOPBACK || ours {
        return Verdict::Skip;
    }
    if link.link_type == husk_netlink::ARPHRD_ETHER && link.mac.is_some() {
        if kind == "tun" {
            return Verdict::Refuse(format!(
                "{} is a tap device, served by a program in the namespace, which a VM NIC \
                 cannot stand in for",
                link.name
            ));
        }
        return Verdict::Carry;
    }
    if !addressed && !link.up {
        // sit0, tunl0, ip6tnl0...: made by the kernel in every namespace
        // when the tunnel modules are loaded.
        return Verdict::Skip;
    }
    let what = if kind.is_empty() {
        format!("link type {}", link.link_type)
    } else {
        format!("a {kind} device")
    };
    Verdict::Refuse(format!(
        "{} is {what}, not an Ethernet link: husk can only connect Ethernet interfaces (veth, \
         macvlan, ipvlan) to a VM",
        link.name
    ))
}

/// Reads the namespace of `netlink`; `ours` are the indexes of husk's taps
/// (skipped), `known` those already carried (left out of the answer).
pub fn scan(netlink: &mut Netlink, ours: &[u32], known: &[u32]) -> Result<Scan, NetworkError> {
    let links = netlink
        .links()
        .map_err(NetworkError::netlink("listing the links"))?;
    let addresses = netlink
        .addresses()
        .map_err(NetworkError::netlink("listing the addresses"))?;
    let mut carried = Vec::new();
    for link in &links {
        let mine: Vec<&Address> = addresses.iter().filter(|a| a.index == link.index).collect();
        // Another sandbox's tap in a shared namespace counts as husk's too:
        // the interface it serves is then refused by name.
        let husks = ours.contains(&link.index)
            || (link.kind.as_deref() == Some("tun") && link.name.starts_with(super::TAP_PREFIX));
        match classify(link, !mine.is_empty(), husks) {
            Verdict::Skip => {}
            Verdict::Refuse(why) => {
                return Err(NetworkError::Refused {
                    interface: link.name.clone(),
                    why,
                })
            }
            Verdict::Carry if known.contains(&link.index) => {}
            Verdict::Carry => carried.push(Carried {
                index: link.index,
                name: link.name.clone(),
                mac: MacAddr(link.mac.expect("an Ethernet link has a MAC")),
                mtu: link.mtu,
                addresses: mine.into_iter().filter_map(carried_address).collect(),
            }),
        }
    }
    if carried.is_empty() {
        return Ok(Scan::default());
    }
    let routes = netlink
        .routes()
        .map_err(NetworkError::netlink("listing the routes"))?;
    let neighbours = netlink
        .neighbours()
        .map_err(NetworkError::netlink("listing the neighbours"))?;
    Ok(Scan {
        routes: carried_routes(&routes, &carried),
        neighbours: carried_neighbours(&neighbours, &carried),
        carried,
    })
}

fn carried_address(address: &Address) -> Option<IpNet> {
    let link_local_v6 = address.address.is_ipv6() && address.scope == SCOPE_LINK;
    if link_local_v6 || address.flags & IFA_F_DADFAILED != 0 {
        return None;
    }
    IpNet::new(address.address, address.prefix_len).ok()
}

/// The routes of the carried interfaces that the guest's kernel does not
/// make itself, device routes first (a gateway must be reachable when its
/// route is added).
pub fn carried_routes(routes: &[husk_netlink::Route], carried: &[Carried]) -> Vec<Route> {
    let name_of = |index: u32| {
        carried
            .iter()
            .find(|c| c.index == index)
            .map(|c| c.name.clone())
    };
    let mut out: Vec<Route> = routes
        .iter()
        .filter(|r| {
            r.protocol != husk_netlink::RTPROT_KERNEL && r.kind == husk_netlink::RTN_UNICAST
        })
        .filter(|r| !r.destination.is_some_and(|(d, _)| is_link_local_v6(d)))
        .filter_map(|r| {
            let interface = name_of(r.output?)?;
            Some(Route {
                destination: r
                    .destination
                    .filter(|(_, len)| *len > 0)
                    .and_then(|(d, len)| IpNet::new(d, len).ok()),
                ipv6: r.ipv6,
                gateway: r.gateway,
                interface: Some(interface),
                source: r.source,
                metric: r.metric,
                mtu: r.mtu,
                scope: r.scope,
            })
        })
        .collect();
    out.sort_by_key(|r| r.gateway.is_some());
    out
}

fn is_link_local_v6(address: IpAddr) -> bool {
    matches!(address, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80)
}

/// The permanent neighbours of the carried interfaces.
pub fn carried_neighbours(
    neighbours: &[husk_netlink::Neighbour],
    carried: &[Carried],
) -> Vec<Neighbour> {
    neighbours
        .iter()
        .filter(|n| n.state & husk_netlink::NUD_PERMANENT != 0)
        .filter_map(|n| {
            let interface = carried.iter().find(|c| c.index == n.index)?.name.clone();
            Some(Neighbour {
                interface,
                address: n.address,
                mac: MacAddr(n.mac?),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, kind: Option<&str>, link_type: u16, up: bool) -> Link {
        Link {
            index: 7,
            name: name.into(),
            mac: (link_type == husk_netlink::ARPHRD_ETHER).then_some([2, 0, 0, 0, 0, 7]),
            mtu: 1500,
            kind: kind.map(String::from),
            link_type,
            up,
        }
    }

    #[test]
    fn ethernet_links_are_carried_and_loopback_and_our_taps_skipped() {
        let ether = husk_netlink::ARPHRD_ETHER;
        assert_eq!(
            classify(&link("eth0", Some("veth"), ether, true), true, false),
            Verdict::Carry
        );
        assert_eq!(
            classify(&link("mv0", Some("macvlan"), ether, true), true, false),
            Verdict::Carry
        );
        assert_eq!(
            classify(&link("eth1", None, ether, false), false, false),
            Verdict::Carry
        );
        assert_eq!(
            classify(
                &link("lo", None, husk_netlink::ARPHRD_LOOPBACK, true),
                true,
                false
            ),
            Verdict::Skip
        );
        assert_eq!(
            classify(&link("husk-tap0", Some("tun"), ether, true), false, true),
            Verdict::Skip
        );
    }

    #[test]
    fn tun_wireguard_and_taps_of_others_are_refused_by_name() {
        let none = 65534;
        for (link, addressed) in [
            (link("tun0", Some("tun"), none, true), true),
            (link("wg0", Some("wireguard"), none, false), true),
            (
                link("tap9", Some("tun"), husk_netlink::ARPHRD_ETHER, true),
                false,
            ),
        ] {
            let Verdict::Refuse(why) = classify(&link, addressed, false) else {
                panic!("{link:?} was not refused");
            };
            assert!(why.starts_with(&link.name), "{why}");
        }
    }

    #[test]
    fn fallback_tunnels_without_addresses_are_skipped() {
        assert_eq!(
            classify(&link("sit0", Some("sit"), 776, false), false, false),
            Verdict::Skip
        );
    }

    fn carried() -> Vec<Carried> {
        vec![Carried {
            index: 2,
            name: "eth0".into(),
            mac: MacAddr([2, 0, 0, 0, 0, 2]),
            mtu: 1500,
            addresses: vec![],
        }]
    }

    fn route(
        destination: Option<(&str, u8)>,
        gateway: Option<&str>,
        protocol: u8,
    ) -> husk_netlink::Route {
        husk_netlink::Route {
            destination: destination.map(|(d, l)| (d.parse().unwrap(), l)),
            gateway: gateway.map(|g| g.parse().unwrap()),
            output: Some(2),
            protocol,
            kind: husk_netlink::RTN_UNICAST,
            ..husk_netlink::Route::default()
        }
    }

    #[test]
    fn kernel_routes_stay_behind_and_device_routes_come_first() {
        let routes = [
            route(None, Some("10.88.0.1"), 4),
            route(Some(("10.88.0.0", 16)), None, husk_netlink::RTPROT_KERNEL),
            route(Some(("10.99.0.0", 16)), None, 4),
            route(Some(("fe80::", 64)), None, 4),
            husk_netlink::Route {
                output: Some(9),
                ..route(Some(("10.1.0.0", 16)), None, 4)
            },
        ];

        let out = carried_routes(&routes, &carried());

        let shown: Vec<String> = out
            .iter()
            .map(|r| {
                format!(
                    "{:?} via {:?}",
                    r.destination.map(|d| d.to_string()),
                    r.gateway
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                "Some(\"10.99.0.0/16\") via None",
                "None via Some(10.88.0.1)"
            ]
        );
        assert!(out.iter().all(|r| r.interface.as_deref() == Some("eth0")));
    }

    #[test]
    fn route_mtu_and_metric_are_kept() {
        let mut with_mtu = route(Some(("10.0.0.0", 8)), Some("10.88.0.1"), 4);
        with_mtu.mtu = Some(1400);
        with_mtu.metric = Some(100);

        let out = carried_routes(&[with_mtu], &carried());

        assert_eq!(out[0].mtu, Some(1400));
        assert_eq!(out[0].metric, Some(100));
    }

    #[test]
    fn only_permanent_neighbours_of_carried_links_go() {
        let neighbour = |index, state| husk_netlink::Neighbour {
            index,
            address: "10.88.0.9".parse().unwrap(),
            mac: Some([2, 0, 0, 0, 0, 9]),
            state,
        };
        let out = carried_neighbours(
            &[
                neighbour(2, husk_netlink::NUD_PERMANENT),
                neighbour(2, 0x02),
                neighbour(5, husk_netlink::NUD_PERMANENT),
            ],
            &carried(),
        );
        assert_eq!(
            out,
            [Neighbour {
                interface: "eth0".into(),
                address: "10.88.0.9".parse().unwrap(),
                mac: MacAddr([2, 0, 0, 0, 0, 9]),
            }]
        );
    }

    #[test]
    fn link_local_and_duplicate_ipv6_addresses_stay_behind() {
        let address = |a: &str, scope, flags| Address {
            index: 2,
            address: a.parse().unwrap(),
            prefix_len: 64,
            scope,
            flags,
        };
        assert_eq!(carried_address(&address("fe80::1", SCOPE_LINK, 0)), None);
        assert_eq!(
            carried_address(&address("fd00::2", 0, IFA_F_DADFAILED)),
            None
        );
        assert!(
            carried_address(&address("fd00::3", 0, 0x40)).is_some(),
            "tentative"
        );
        assert_eq!(
            carried_address(&address("fd00::2", 0, 0)).map(|n| n.to_string()),
            Some("fd00::2/64".into())
        );
    }
}

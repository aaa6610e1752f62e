//! Neighbours: permanent IPv4 and IPv6 entries, and the errnos.

use std::net::IpAddr;

use husk_netlink::{Neighbour, NUD_PERMANENT};

use crate::common::{in_private_netns, ipv6_is_off, skip, test_name, veth_up};

const MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0x00, 0x00, 0x01];

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn a_permanent_ipv4_neighbour_is_listed_with_its_mac() {
    in_private_netns(|netlink| {
        let (link, _) = veth_up(netlink, "husk-n0", "husk-n1");

        netlink
            .add_neighbour(link.index, ip("10.0.0.1"), MAC)
            .unwrap();

        let neighbours = netlink.neighbours().unwrap();
        let expected = Neighbour {
            index: link.index,
            address: ip("10.0.0.1"),
            mac: Some(MAC),
            state: NUD_PERMANENT,
        };
        assert!(neighbours.contains(&expected), "{neighbours:#?}");
    });
}

#[test]
fn a_permanent_ipv6_neighbour_is_listed_with_its_mac() {
    in_private_netns(|netlink| {
        let (link, _) = veth_up(netlink, "husk-n0", "husk-n1");

        match netlink.add_neighbour(link.index, ip("fd00::1"), MAC) {
            Ok(()) => {}
            Err(e) if ipv6_is_off(&e) => return skip(&test_name(), &format!("IPv6 is off: {e}")),
            Err(e) => panic!("{e}"),
        }

        let neighbours = netlink.neighbours().unwrap();
        let expected = Neighbour {
            index: link.index,
            address: ip("fd00::1"),
            mac: Some(MAC),
            state: NUD_PERMANENT,
        };
        assert!(neighbours.contains(&expected), "{neighbours:#?}");
    });
}

#[test]
fn adding_a_neighbour_twice_keeps_eexist_and_names_it() {
    in_private_netns(|netlink| {
        let (link, _) = veth_up(netlink, "husk-n0", "husk-n1");
        netlink
            .add_neighbour(link.index, ip("10.0.0.1"), MAC)
            .unwrap();

        let error = netlink
            .add_neighbour(link.index, ip("10.0.0.1"), MAC)
            .unwrap_err();

        assert_eq!(error.errno(), Some(libc::EEXIST), "{error}");
        assert!(
            error.to_string().starts_with(&format!(
                "adding neighbour 10.0.0.1 (02:42:0a:00:00:01) on link {}: ",
                link.index
            )),
            "{error}"
        );
    });
}

//! Links: listing, veth and dummy devices, every field of a change,
//! moving a link to another namespace, deleting, and the errnos. Most
//! tests use veths: the kernel they run on may have no dummy driver.

use std::os::fd::AsRawFd;

use husk_netlink::{Link, LinkChange, ARPHRD_ETHER, ARPHRD_LOOPBACK};

use crate::common::{in_netns, in_private_netns, link_at, link_named, new_netns};

#[test]
fn a_fresh_namespace_has_a_loopback_that_is_down() {
    in_private_netns(|netlink| {
        let links = netlink.links().unwrap();

        let lo = links.iter().find(|l| l.name == "lo").expect("no lo");
        assert_eq!(
            lo,
            &Link {
                index: 1,
                name: "lo".into(),
                mac: Some([0; 6]),
                mtu: 65536,
                kind: None,
                link_type: ARPHRD_LOOPBACK,
                up: false,
            }
        );
    });
}

#[test]
fn add_veth_makes_two_ethernet_links_of_kind_veth() {
    in_private_netns(|netlink| {
        netlink.add_veth("husk-a", "husk-b").unwrap();

        let a = link_named(netlink, "husk-a");
        let b = link_named(netlink, "husk-b");
        for link in [&a, &b] {
            assert_eq!(link.kind.as_deref(), Some("veth"), "{link:?}");
            assert_eq!(link.link_type, ARPHRD_ETHER, "{link:?}");
            assert_eq!(link.mtu, 1500, "{link:?}");
            assert!(!link.up, "{link:?}");
            assert!(link.mac.is_some_and(|m| m != [0; 6]), "{link:?}");
        }
        assert_ne!(a.index, b.index);
        assert_ne!(a.mac, b.mac);
    });
}

#[test]
fn add_dummy_makes_a_dummy_or_keeps_the_kernels_refusal() {
    in_private_netns(|netlink| {
        let added = netlink.add_dummy("husk-dummy");

        match added {
            Ok(()) => {
                let link = link_named(netlink, "husk-dummy");
                assert_eq!(link.kind.as_deref(), Some("dummy"), "{link:?}");
                assert_eq!(link.link_type, ARPHRD_ETHER, "{link:?}");
            }
            // A kernel without CONFIG_DUMMY says so.
            Err(error) => {
                assert_eq!(error.errno(), Some(libc::EOPNOTSUPP), "{error}");
                assert!(error.to_string().contains("husk-dummy"), "{error}");
            }
        }
    });
}

#[test]
fn set_link_changes_name_mtu_mac_and_state_in_one_request() {
    in_private_netns(|netlink| {
        netlink.add_veth("husk-d0", "husk-d0p").unwrap();
        let index = link_named(netlink, "husk-d0").index;
        let mac = [0x02, 0x42, 0xac, 0x11, 0x00, 0x02];
        let change = LinkChange {
            up: Some(true),
            mtu: Some(1400),
            name: Some("husk-renamed".into()),
            mac: Some(mac),
            netns_fd: None,
        };

        netlink.set_link(index, &change).unwrap();

        assert_eq!(
            link_at(netlink, index),
            Link {
                index,
                name: "husk-renamed".into(),
                mac: Some(mac),
                mtu: 1400,
                kind: Some("veth".into()),
                link_type: ARPHRD_ETHER,
                up: true,
            }
        );
    });
}

#[test]
fn set_link_down_clears_up_and_keeps_the_rest() {
    in_private_netns(|netlink| {
        netlink.add_veth("husk-d1", "husk-d1p").unwrap();
        let index = link_named(netlink, "husk-d1").index;
        let up = LinkChange {
            up: Some(true),
            ..LinkChange::default()
        };
        netlink.set_link(index, &up).unwrap();
        let before = link_at(netlink, index);
        let down = LinkChange {
            up: Some(false),
            ..LinkChange::default()
        };

        netlink.set_link(index, &down).unwrap();

        let after = link_at(netlink, index);
        assert!(before.up);
        assert_eq!(
            after,
            Link {
                up: false,
                ..before
            }
        );
    });
}

#[test]
fn set_link_with_a_netns_fd_moves_the_link_there() {
    in_private_netns(|netlink| {
        let other = new_netns();
        netlink.add_veth("husk-mv", "husk-mvp").unwrap();
        let index = link_named(netlink, "husk-mv").index;
        let change = LinkChange {
            netns_fd: Some(other.as_raw_fd()),
            ..LinkChange::default()
        };

        netlink.set_link(index, &change).unwrap();

        let here: Vec<String> = netlink
            .links()
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect();
        let there: Vec<String> = in_netns(&other, |netlink| {
            netlink
                .links()
                .unwrap()
                .into_iter()
                .map(|l| l.name)
                .collect()
        });
        assert!(!here.contains(&"husk-mv".to_string()), "{here:?}");
        assert!(there.contains(&"husk-mv".to_string()), "{there:?}");
    });
}

#[test]
fn delete_link_removes_both_ends_of_a_veth() {
    in_private_netns(|netlink| {
        netlink.add_veth("husk-x", "husk-y").unwrap();
        let index = link_named(netlink, "husk-x").index;

        netlink.delete_link(index).unwrap();

        let names: Vec<String> = netlink
            .links()
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert!(!names.iter().any(|n| n.starts_with("husk-")), "{names:?}");
    });
}

#[test]
fn set_link_of_a_missing_link_keeps_enodev() {
    in_private_netns(|netlink| {
        let change = LinkChange {
            mtu: Some(1400),
            ..LinkChange::default()
        };

        let error = netlink.set_link(4242, &change).unwrap_err();

        assert_eq!(error.errno(), Some(libc::ENODEV), "{error}");
        assert!(error.to_string().contains("link 4242"), "{error}");
    });
}

#[test]
fn adding_a_link_twice_keeps_eexist() {
    in_private_netns(|netlink| {
        netlink.add_veth("husk-twice", "husk-twicep").unwrap();

        let error = netlink.add_veth("husk-twice", "husk-other").unwrap_err();

        assert_eq!(error.errno(), Some(libc::EEXIST), "{error}");
        assert!(error.to_string().contains("husk-twice"), "{error}");
    });
}

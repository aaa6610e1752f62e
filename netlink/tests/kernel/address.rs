//! Addresses: both families as configured, the loopback's, and the errnos.

use std::net::IpAddr;

use husk_netlink::{
    Address, LinkChange, IFA_F_NODAD, IFA_F_PERMANENT, IFA_F_TENTATIVE, RT_SCOPE_HOST,
    RT_SCOPE_LINK, RT_SCOPE_UNIVERSE,
};

use crate::common::{in_private_netns, ipv6_is_off, link_up, skip, test_name};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn ipv4_address_is_listed_with_its_prefix_scope_and_flags() {
    in_private_netns(|netlink| {
        let link = link_up(netlink, "husk-a4");

        netlink
            .add_address(link.index, ip("10.0.0.2"), 24, false)
            .unwrap();

        let ours: Vec<Address> = netlink
            .addresses()
            .unwrap()
            .into_iter()
            .filter(|a| a.index == link.index && a.address.is_ipv4())
            .collect();
        assert_eq!(
            ours,
            vec![Address {
                index: link.index,
                address: ip("10.0.0.2"),
                prefix_len: 24,
                scope: RT_SCOPE_UNIVERSE,
                flags: IFA_F_PERMANENT,
            }]
        );
    });
}

#[test]
fn ipv6_address_with_nodad_is_permanent_and_never_tentative() {
    in_private_netns(|netlink| {
        let link = link_up(netlink, "husk-a6");

        match netlink.add_address(link.index, ip("fd00::2"), 64, true) {
            Ok(()) => {}
            Err(e) if ipv6_is_off(&e) => return skip(&test_name(), &format!("IPv6 is off: {e}")),
            Err(e) => panic!("{e}"),
        }

        let addresses = netlink.addresses().unwrap();
        let ours: Vec<&Address> = addresses
            .iter()
            .filter(|a| a.index == link.index && a.address == ip("fd00::2"))
            .collect();
        assert_eq!(ours.len(), 1, "{addresses:?}");
        let ours = ours[0];
        assert_eq!(ours.prefix_len, 64);
        assert_eq!(ours.scope, RT_SCOPE_UNIVERSE);
        assert_eq!(
            ours.flags & (IFA_F_NODAD | IFA_F_PERMANENT),
            IFA_F_NODAD | IFA_F_PERMANENT
        );
        assert_eq!(ours.flags & IFA_F_TENTATIVE, 0);
        // The kernel's own link-local address, if it made one, is of link scope.
        for link_local in addresses
            .iter()
            .filter(|a| a.index == link.index && a.address != ip("fd00::2"))
        {
            assert_eq!(link_local.scope, RT_SCOPE_LINK, "{link_local:?}");
        }
    });
}

#[test]
fn loopback_that_is_up_has_127_0_0_1_of_host_scope() {
    in_private_netns(|netlink| {
        let up = LinkChange {
            up: Some(true),
            ..LinkChange::default()
        };
        netlink.set_link(1, &up).unwrap();

        let v4: Vec<Address> = netlink
            .addresses()
            .unwrap()
            .into_iter()
            .filter(|a| a.index == 1 && a.address.is_ipv4())
            .collect();

        assert_eq!(v4.len(), 1, "{v4:?}");
        assert_eq!(v4[0].address, ip("127.0.0.1"));
        assert_eq!(v4[0].prefix_len, 8);
        assert_eq!(v4[0].scope, RT_SCOPE_HOST);
    });
}

#[test]
fn adding_an_address_twice_keeps_eexist_and_names_it() {
    in_private_netns(|netlink| {
        let link = link_up(netlink, "husk-a2");
        netlink
            .add_address(link.index, ip("10.0.0.2"), 24, false)
            .unwrap();

        let error = netlink
            .add_address(link.index, ip("10.0.0.2"), 24, false)
            .unwrap_err();

        assert_eq!(error.errno(), Some(libc::EEXIST), "{error}");
        let text = error.to_string();
        assert!(
            text.starts_with(&format!(
                "adding address 10.0.0.2/24 to link {}: ",
                link.index
            )),
            "{text}"
        );
    });
}

#[test]
fn adding_an_address_to_a_missing_link_keeps_enodev() {
    in_private_netns(|netlink| {
        let error = netlink
            .add_address(4242, ip("10.0.0.2"), 24, false)
            .unwrap_err();

        assert_eq!(error.errno(), Some(libc::ENODEV), "{error}");
    });
}

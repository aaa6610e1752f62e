//! Routes of the main table: the kernel's prefix route, routes via a
//! gateway, default routes, a route with an MTU, IPv6, and the errnos.

use std::net::IpAddr;

use husk_netlink::{
    Link, Netlink, Route, RTN_LOCAL, RTN_UNICAST, RTPROT_BOOT, RTPROT_KERNEL, RTPROT_STATIC,
    RT_SCOPE_LINK, RT_SCOPE_UNIVERSE,
};

use crate::common::{in_private_netns, ipv6_is_off, link_up, skip, test_name};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// A link, up, with 10.0.0.2/24.
fn link_with_address(netlink: &mut Netlink) -> Link {
    let link = link_up(netlink, "husk-r0");
    netlink
        .add_address(link.index, ip("10.0.0.2"), 24, false)
        .unwrap();
    link
}

#[test]
fn the_prefix_route_of_an_address_is_the_kernels() {
    in_private_netns(|netlink| {
        let link = link_with_address(netlink);

        let routes = netlink.routes().unwrap();

        let expected = Route {
            destination: Some((ip("10.0.0.0"), 24)),
            output: Some(link.index),
            source: Some(ip("10.0.0.2")),
            protocol: RTPROT_KERNEL,
            scope: RT_SCOPE_LINK,
            kind: RTN_UNICAST,
            ..Route::default()
        };
        assert!(routes.contains(&expected), "{routes:#?}");
        assert!(routes.iter().all(|r| r.kind != RTN_LOCAL), "{routes:#?}");
    });
}

#[test]
fn a_route_via_a_gateway_is_listed_as_configured() {
    in_private_netns(|netlink| {
        let link = link_with_address(netlink);
        let route = Route {
            destination: Some((ip("192.168.50.0"), 24)),
            gateway: Some(ip("10.0.0.1")),
            output: Some(link.index),
            metric: Some(100),
            protocol: RTPROT_STATIC,
            scope: RT_SCOPE_UNIVERSE,
            kind: RTN_UNICAST,
            ..Route::default()
        };

        netlink.add_route(&route).unwrap();

        let routes = netlink.routes().unwrap();
        assert!(routes.contains(&route), "{routes:#?}");
    });
}

#[test]
fn a_default_route_is_listed_without_a_destination() {
    in_private_netns(|netlink| {
        let link = link_with_address(netlink);
        let route = Route {
            gateway: Some(ip("10.0.0.1")),
            output: Some(link.index),
            protocol: RTPROT_BOOT,
            kind: RTN_UNICAST,
            ..Route::default()
        };

        netlink.add_route(&route).unwrap();

        let routes = netlink.routes().unwrap();
        let defaults: Vec<&Route> = routes.iter().filter(|r| r.destination.is_none()).collect();
        assert_eq!(defaults, vec![&route], "{routes:#?}");
    });
}

#[test]
fn a_route_with_an_mtu_and_a_source_is_listed_with_them() {
    in_private_netns(|netlink| {
        let link = link_with_address(netlink);
        let route = Route {
            destination: Some((ip("172.16.0.0"), 16)),
            output: Some(link.index),
            source: Some(ip("10.0.0.2")),
            mtu: Some(1400),
            protocol: RTPROT_BOOT,
            scope: RT_SCOPE_LINK,
            kind: RTN_UNICAST,
            ..Route::default()
        };

        netlink.add_route(&route).unwrap();

        let routes = netlink.routes().unwrap();
        assert!(routes.contains(&route), "{routes:#?}");
    });
}

#[test]
fn ipv6_routes_via_a_gateway_and_by_default_are_listed_as_ipv6() {
    in_private_netns(|netlink| {
        let link = link_up(netlink, "husk-r6");
        match netlink.add_address(link.index, ip("fd00::2"), 64, true) {
            Ok(()) => {}
            Err(e) if ipv6_is_off(&e) => return skip(&test_name(), &format!("IPv6 is off: {e}")),
            Err(e) => panic!("{e}"),
        }
        let via = Route {
            destination: Some((ip("fd01::"), 64)),
            gateway: Some(ip("fd00::1")),
            output: Some(link.index),
            metric: Some(100),
            protocol: RTPROT_STATIC,
            kind: RTN_UNICAST,
            ..Route::default()
        };
        let default = Route {
            output: Some(link.index),
            protocol: RTPROT_BOOT,
            kind: RTN_UNICAST,
            ipv6: true,
            ..Route::default()
        };

        netlink.add_route(&via).unwrap();
        netlink.add_route(&default).unwrap();

        let routes = netlink.routes().unwrap();
        let listed_via = Route { ipv6: true, ..via };
        assert!(routes.contains(&listed_via), "{routes:#?}");
        let defaults: Vec<&Route> = routes
            .iter()
            .filter(|r| r.ipv6 && r.destination.is_none())
            .collect();
        assert_eq!(defaults.len(), 1, "{routes:#?}");
        assert_eq!(defaults[0].output, Some(link.index));
        assert_eq!(defaults[0].gateway, None);
        assert_eq!(defaults[0].protocol, RTPROT_BOOT);
        // The kernel gives IPv6 routes without a metric 1024.
        assert_eq!(defaults[0].metric, Some(1024));
    });
}

#[test]
fn adding_a_route_twice_keeps_eexist() {
    in_private_netns(|netlink| {
        let link = link_with_address(netlink);
        let route = Route {
            destination: Some((ip("192.168.60.0"), 24)),
            gateway: Some(ip("10.0.0.1")),
            output: Some(link.index),
            kind: RTN_UNICAST,
            ..Route::default()
        };
        netlink.add_route(&route).unwrap();

        let error = netlink.add_route(&route).unwrap_err();

        assert_eq!(error.errno(), Some(libc::EEXIST), "{error}");
        assert!(
            error.to_string().starts_with(&format!(
                "adding route 192.168.60.0/24 via 10.0.0.1 on link {}: ",
                link.index
            )),
            "{error}"
        );
    });
}

#[test]
fn a_route_via_an_unreachable_gateway_keeps_the_kernels_errno() {
    in_private_netns(|netlink| {
        let link = link_with_address(netlink);
        let route = Route {
            destination: Some((ip("192.168.70.0"), 24)),
            gateway: Some(ip("203.0.113.1")),
            output: Some(link.index),
            kind: RTN_UNICAST,
            ..Route::default()
        };

        let error = netlink.add_route(&route).unwrap_err();

        assert_eq!(error.errno(), Some(libc::ENETUNREACH), "{error}");
    });
}

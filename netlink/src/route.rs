//! Routes (`RTM_*ROUTE`) of the main table, IPv4 and IPv6: listing them
//! and adding one.
//!
//! Trust: the kernel's replies, decoded by `netlink-packet-route`. Routes
//! of other tables (local, custom ones), of other families, and cached
//! clones (`RTM_F_CLONED`) are left out; a multipath route is reported
//! without its next hops.
//!
//! Constants: `RTPROT_*`, `RTN_*`, `RT_SCOPE_*`, `RT_TABLE_MAIN` and
//! `RTM_F_CLONED` from `include/uapi/linux/rtnetlink.h`, `RTAX_MTU` from
//! the same header (emitted by the decoder).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteMetric, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::{Netlink, NetlinkError, RT_TABLE_MAIN};

/// A route of the main table, as `ip route` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Route {
    /// Destination and prefix length; None for a default route (prefix 0).
    pub destination: Option<(IpAddr, u8)>,
    /// RTA_GATEWAY.
    pub gateway: Option<IpAddr>,
    /// The output link (RTA_OIF).
    pub output: Option<u32>,
    /// RTA_PREFSRC.
    pub source: Option<IpAddr>,
    /// RTA_PRIORITY.
    pub metric: Option<u32>,
    /// RTAX_MTU from RTA_METRICS.
    pub mtu: Option<u32>,
    /// RTPROT_* (2 kernel, 3 boot, 4 static, ...).
    pub protocol: u8,
    /// RT_SCOPE_*.
    pub scope: u8,
    /// RTN_* (1 unicast, 2 local, 3 broadcast, 6 blackhole, ...).
    pub kind: u8,
    /// Whether it is an IPv6 route (needed for a default route with no
    /// gateway).
    pub ipv6: bool,
}

impl Netlink {
    /// Routes of the main table, IPv4 and IPv6 (RTM_GETROUTE dump,
    /// filtered to table main = 254).
    pub fn routes(&mut self) -> Result<Vec<Route>, NetlinkError> {
        self.dump(
            RouteNetlinkMessage::GetRoute(RouteMessage::default()),
            || "listing routes".to_string(),
            |_, message| match message {
                RouteNetlinkMessage::NewRoute(message) => route_from_message(message),
                _ => None,
            },
        )
    }

    /// Adds a route (RTM_NEWROUTE, NLM_F_CREATE|NLM_F_EXCL) to the main
    /// table. The family is the destination's, else the gateway's, else
    /// [`Route::ipv6`]. `protocol` and `scope` are sent as they are; a
    /// `kind` of 0 (RTN_UNSPEC, which the kernel refuses) is sent as
    /// RTN_UNICAST.
    pub fn add_route(&mut self, route: &Route) -> Result<(), NetlinkError> {
        self.request(
            RouteNetlinkMessage::NewRoute(add_route_message(route)),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("adding route {}", describe_route(route)),
        )
    }
}

/// Whether `route` is an IPv6 one, by [`Netlink::add_route`]'s rule.
fn is_ipv6(route: &Route) -> bool {
    route
        .destination
        .map(|(address, _)| address.is_ipv6())
        .or(route.gateway.map(|gateway| gateway.is_ipv6()))
        .unwrap_or(route.ipv6)
}

/// The RTM_NEWROUTE of [`Netlink::add_route`].
pub(crate) fn add_route_message(route: &Route) -> RouteMessage {
    let mut message = RouteMessage::default();
    let header = &mut message.header;
    header.address_family = if is_ipv6(route) {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    header.destination_prefix_length = route.destination.map_or(0, |(_, len)| len);
    header.table = RouteHeader::RT_TABLE_MAIN;
    header.protocol = route.protocol.into();
    header.scope = route.scope.into();
    header.kind = match route.kind {
        0 => RouteType::Unicast,
        kind => kind.into(),
    };
    let attributes = &mut message.attributes;
    if let Some((destination, _)) = route.destination {
        attributes.push(RouteAttribute::Destination(destination.into()));
    }
    if let Some(gateway) = route.gateway {
        attributes.push(RouteAttribute::Gateway(gateway.into()));
    }
    if let Some(output) = route.output {
        attributes.push(RouteAttribute::Oif(output));
    }
    if let Some(source) = route.source {
        attributes.push(RouteAttribute::PrefSource(source.into()));
    }
    if let Some(metric) = route.metric {
        attributes.push(RouteAttribute::Priority(metric));
    }
    if let Some(mtu) = route.mtu {
        attributes.push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
    }
    message
}

/// A [`Route`] from an RTM_NEWROUTE; None for a route [`Netlink::routes`]
/// leaves out.
pub(crate) fn route_from_message(message: RouteMessage) -> Option<Route> {
    let header = message.header;
    let ipv6 = match header.address_family {
        AddressFamily::Inet => false,
        AddressFamily::Inet6 => true,
        _ => return None,
    };
    if header.flags.contains(RouteFlags::Cloned) {
        return None;
    }
    let mut table = u32::from(header.table);
    let mut destination = None;
    let mut route = Route {
        protocol: header.protocol.into(),
        scope: header.scope.into(),
        kind: header.kind.into(),
        ipv6,
        ..Route::default()
    };
    for attribute in message.attributes {
        match attribute {
            RouteAttribute::Table(t) => table = t,
            RouteAttribute::Destination(a) => destination = ip(a),
            RouteAttribute::Gateway(a) => route.gateway = ip(a),
            RouteAttribute::PrefSource(a) => route.source = ip(a),
            RouteAttribute::Oif(index) => route.output = Some(index),
            RouteAttribute::Priority(metric) => route.metric = Some(metric),
            RouteAttribute::Metrics(metrics) => {
                route.mtu = metrics.into_iter().find_map(|metric| match metric {
                    RouteMetric::Mtu(mtu) => Some(mtu),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    if table != RT_TABLE_MAIN {
        return None;
    }
    let prefix_len = header.destination_prefix_length;
    if prefix_len > 0 {
        let unspecified = if ipv6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        route.destination = Some((destination.unwrap_or(unspecified), prefix_len));
    }
    Some(route)
}

fn ip(address: RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(v6)),
        _ => None,
    }
}

/// `192.168.0.0/16 via 10.0.0.1 dev 5`, like `ip route` with indexes.
fn describe_route(route: &Route) -> String {
    let mut text = match route.destination {
        Some((address, len)) => format!("{address}/{len}"),
        None if is_ipv6(route) => "default (IPv6)".to_string(),
        None => "default".to_string(),
    };
    if let Some(gateway) = route.gateway {
        let _ = write!(text, " via {gateway}");
    }
    if let Some(output) = route.output {
        let _ = write!(text, " on link {output}");
    }
    if let Some(source) = route.source {
        let _ = write!(text, " src {source}");
    }
    if let Some(metric) = route.metric {
        let _ = write!(text, " metric {metric}");
    }
    if let Some(mtu) = route.mtu {
        let _ = write!(text, " mtu {mtu}");
    }
    text
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::route::{RouteProtocol, RouteScope};

    use super::*;

    fn full_route() -> Route {
        Route {
            destination: Some(("192.168.50.0".parse().unwrap(), 24)),
            gateway: Some("10.0.0.1".parse().unwrap()),
            output: Some(5),
            source: Some("10.0.0.2".parse().unwrap()),
            metric: Some(100),
            mtu: Some(1400),
            protocol: crate::RTPROT_STATIC,
            scope: crate::RT_SCOPE_UNIVERSE,
            kind: crate::RTN_UNICAST,
            ipv6: false,
        }
    }

    #[test]
    fn add_route_message_reads_back_as_the_same_route() {
        let route = full_route();

        let message = add_route_message(&route);

        assert_eq!(message.header.table, RouteHeader::RT_TABLE_MAIN);
        assert_eq!(message.header.protocol, RouteProtocol::Static);
        assert_eq!(route_from_message(message), Some(route));
    }

    #[test]
    fn default_route_without_gateway_takes_the_family_from_ipv6() {
        let route = Route {
            output: Some(2),
            ipv6: true,
            ..Route::default()
        };

        let message = add_route_message(&route);

        assert_eq!(message.header.address_family, AddressFamily::Inet6);
        assert_eq!(message.header.destination_prefix_length, 0);
        assert_eq!(message.header.kind, RouteType::Unicast);
        assert_eq!(message.attributes, vec![RouteAttribute::Oif(2)]);
    }

    #[test]
    fn default_route_via_an_ipv6_gateway_is_ipv6_whatever_the_flag_says() {
        let route = Route {
            gateway: Some("fd00::1".parse().unwrap()),
            ..Route::default()
        };

        assert_eq!(
            add_route_message(&route).header.address_family,
            AddressFamily::Inet6
        );
    }

    #[test]
    fn route_of_another_table_is_left_out() {
        let mut message = add_route_message(&full_route());
        message.attributes.push(RouteAttribute::Table(255));

        assert_eq!(route_from_message(message), None);
    }

    #[test]
    fn table_attribute_overrides_the_header_table() {
        let mut message = add_route_message(&full_route());
        message.header.table = 252;
        message
            .attributes
            .push(RouteAttribute::Table(RT_TABLE_MAIN));

        assert!(route_from_message(message).is_some());
    }

    #[test]
    fn cloned_route_is_left_out() {
        let mut message = add_route_message(&full_route());
        message.header.flags = RouteFlags::Cloned;

        assert_eq!(route_from_message(message), None);
    }

    #[test]
    fn kernel_prefix_route_reads_its_scope_protocol_and_source() {
        let mut message = RouteMessage::default();
        message.header.address_family = AddressFamily::Inet;
        message.header.destination_prefix_length = 24;
        message.header.table = RouteHeader::RT_TABLE_MAIN;
        message.header.protocol = RouteProtocol::Kernel;
        message.header.scope = RouteScope::Link;
        message.header.kind = RouteType::Unicast;
        message.attributes = vec![
            RouteAttribute::Table(RT_TABLE_MAIN),
            RouteAttribute::Destination(RouteAddress::Inet("10.0.0.0".parse().unwrap())),
            RouteAttribute::PrefSource(RouteAddress::Inet("10.0.0.2".parse().unwrap())),
            RouteAttribute::Oif(5),
        ];

        let route = route_from_message(message).unwrap();

        assert_eq!(
            route,
            Route {
                destination: Some(("10.0.0.0".parse().unwrap(), 24)),
                output: Some(5),
                source: Some("10.0.0.2".parse().unwrap()),
                protocol: crate::RTPROT_KERNEL,
                scope: crate::RT_SCOPE_LINK,
                kind: crate::RTN_UNICAST,
                ..Route::default()
            }
        );
    }

    #[test]
    fn route_with_prefix_zero_is_a_default_route() {
        let mut message = add_route_message(&Route {
            gateway: Some("10.0.0.1".parse().unwrap()),
            ..Route::default()
        });
        message
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(
                Ipv4Addr::UNSPECIFIED,
            )));

        assert_eq!(route_from_message(message).unwrap().destination, None);
    }

    #[test]
    fn describe_route_reads_like_ip_route() {
        assert_eq!(
            describe_route(&full_route()),
            "192.168.50.0/24 via 10.0.0.1 on link 5 src 10.0.0.2 metric 100 mtu 1400"
        );
        assert_eq!(
            describe_route(&Route {
                ipv6: true,
                ..Route::default()
            }),
            "default (IPv6)"
        );
    }
}

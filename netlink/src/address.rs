//! Addresses (`RTM_*ADDR`) of both families: listing them and adding one.
//!
//! Trust: the kernel's replies, decoded by `netlink-packet-route`. An
//! address message without an address attribute is skipped.
//!
//! Constants: `IFA_F_*` from `include/uapi/linux/if_addr.h`, `RT_SCOPE_*`
//! from `include/uapi/linux/rtnetlink.h`.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::{Netlink, NetlinkError};

/// An address of a link, as `ip address` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// The link's index.
    pub index: u32,
    /// IFA_ADDRESS for IPv6, IFA_LOCAL (falling back to IFA_ADDRESS) for
    /// IPv4.
    pub address: IpAddr,
    /// The prefix length (`/24`).
    pub prefix_len: u8,
    /// RT_SCOPE_* (0 universe, 253 link, 254 host).
    pub scope: u8,
    /// IFA_F_* flags (IFA_FLAGS attribute when present, else the header's
    /// flags).
    pub flags: u32,
}

impl Netlink {
    /// Every address of both families (RTM_GETADDR dump).
    pub fn addresses(&mut self) -> Result<Vec<Address>, NetlinkError> {
        self.dump(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            || "listing addresses".to_string(),
            |_, message| match message {
                RouteNetlinkMessage::NewAddress(message) => address_from_message(message),
                _ => None,
            },
        )
    }

    /// Adds an address (RTM_NEWADDR, NLM_F_CREATE|NLM_F_EXCL); `nodad`
    /// sets IFA_F_NODAD, which only IPv6 has (it is ignored for IPv4). An
    /// IPv4 loopback address gets host scope, as `ip address add` gives
    /// it; any other, universe (the kernel picks the scope of IPv6 ones).
    /// A namespace with IPv6 off refuses an IPv6 address: see
    /// [`NetlinkError::errno`].
    pub fn add_address(
        &mut self,
        index: u32,
        address: IpAddr,
        prefix_len: u8,
        nodad: bool,
    ) -> Result<(), NetlinkError> {
        self.request(
            RouteNetlinkMessage::NewAddress(add_address_message(index, address, prefix_len, nodad)),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("adding address {address}/{prefix_len} to link {index}"),
        )
    }
}

/// The RTM_NEWADDR of [`Netlink::add_address`]: IFA_LOCAL and IFA_ADDRESS
/// for IPv4 (the same address: no peer), IFA_LOCAL for IPv6.
pub(crate) fn add_address_message(
    index: u32,
    address: IpAddr,
    prefix_len: u8,
    nodad: bool,
) -> AddressMessage {
    let mut message = AddressMessage::default();
    message.header.index = index;
    message.header.prefix_len = prefix_len;
    match address {
        IpAddr::V4(v4) => {
            message.header.family = AddressFamily::Inet;
            message.header.scope = if v4.is_loopback() {
                AddressScope::Host
            } else {
                AddressScope::Universe
            };
            message.attributes.push(AddressAttribute::Local(address));
            message.attributes.push(AddressAttribute::Address(address));
        }
        IpAddr::V6(_) => {
            message.header.family = AddressFamily::Inet6;
            message.attributes.push(AddressAttribute::Local(address));
            if nodad {
                message.header.flags = AddressHeaderFlags::Nodad;
                message
                    .attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
        }
    }
    message
}

/// An [`Address`] from an RTM_NEWADDR, None without an address.
pub(crate) fn address_from_message(message: AddressMessage) -> Option<Address> {
    let mut address = None;
    let mut local = None;
    let mut flags = None;
    for attribute in message.attributes {
        match attribute {
            AddressAttribute::Address(a) => address = Some(a),
            AddressAttribute::Local(l) => local = Some(l),
            AddressAttribute::Flags(f) => flags = Some(f.bits()),
            _ => {}
        }
    }
    let header = message.header;
    let address = match header.family {
        AddressFamily::Inet => local.or(address),
        AddressFamily::Inet6 => address.or(local),
        _ => None,
    }?;
    Some(Address {
        index: header.index,
        address,
        prefix_len: header.prefix_len,
        scope: u8::from(header.scope),
        flags: flags.unwrap_or(u32::from(header.flags.bits())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(family: AddressFamily, attributes: Vec<AddressAttribute>) -> AddressMessage {
        let mut message = AddressMessage::default();
        message.header.family = family;
        message.header.index = 2;
        message.header.prefix_len = 24;
        message.attributes = attributes;
        message
    }

    #[test]
    fn ipv4_address_is_the_local_one_not_the_peer() {
        let message = message(
            AddressFamily::Inet,
            vec![
                AddressAttribute::Address("10.0.0.1".parse().unwrap()),
                AddressAttribute::Local("10.0.0.2".parse().unwrap()),
            ],
        );

        let address = address_from_message(message).unwrap();

        assert_eq!(address.address, "10.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(address.index, 2);
        assert_eq!(address.prefix_len, 24);
    }

    #[test]
    fn ipv6_address_is_ifa_address() {
        let message = message(
            AddressFamily::Inet6,
            vec![AddressAttribute::Address("fd00::2".parse().unwrap())],
        );

        let address = address_from_message(message).unwrap();

        assert_eq!(address.address, "fd00::2".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn flags_attribute_wins_over_the_header_flags() {
        let mut message = message(
            AddressFamily::Inet6,
            vec![
                AddressAttribute::Address("fd00::2".parse().unwrap()),
                AddressAttribute::Flags(AddressFlags::Nodad | AddressFlags::Permanent),
            ],
        );
        message.header.flags = AddressHeaderFlags::Tentative;

        let address = address_from_message(message).unwrap();

        assert_eq!(address.flags, crate::IFA_F_NODAD | crate::IFA_F_PERMANENT);
    }

    #[test]
    fn header_flags_are_used_without_a_flags_attribute() {
        let mut message = message(
            AddressFamily::Inet,
            vec![AddressAttribute::Local("10.0.0.2".parse().unwrap())],
        );
        message.header.flags = AddressHeaderFlags::Permanent;
        message.header.scope = AddressScope::Link;

        let address = address_from_message(message).unwrap();

        assert_eq!(address.flags, crate::IFA_F_PERMANENT);
        assert_eq!(address.scope, crate::RT_SCOPE_LINK);
    }

    #[test]
    fn message_without_an_address_is_skipped() {
        assert_eq!(
            address_from_message(message(AddressFamily::Inet, vec![])),
            None
        );
    }

    #[test]
    fn add_ipv4_address_message_carries_local_and_address() {
        let ip: IpAddr = "10.0.0.2".parse().unwrap();

        let message = add_address_message(5, ip, 24, true);

        assert_eq!(message.header.family, AddressFamily::Inet);
        assert_eq!(message.header.scope, AddressScope::Universe);
        assert_eq!(message.header.index, 5);
        assert_eq!(message.header.prefix_len, 24);
        assert_eq!(
            message.attributes,
            vec![AddressAttribute::Local(ip), AddressAttribute::Address(ip)]
        );
    }

    #[test]
    fn add_ipv4_loopback_address_gets_host_scope() {
        let message = add_address_message(1, "127.0.0.2".parse().unwrap(), 8, false);

        assert_eq!(message.header.scope, AddressScope::Host);
    }

    #[test]
    fn add_ipv6_address_message_with_nodad_sets_ifa_f_nodad() {
        let ip: IpAddr = "fd00::2".parse().unwrap();

        let message = add_address_message(5, ip, 64, true);

        assert_eq!(message.header.family, AddressFamily::Inet6);
        assert_eq!(
            message.attributes,
            vec![
                AddressAttribute::Local(ip),
                AddressAttribute::Flags(AddressFlags::Nodad)
            ]
        );
    }
}

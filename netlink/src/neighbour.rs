//! Neighbours (`RTM_*NEIGH`), ARP and NDP entries: listing them and adding
//! a permanent one.
//!
//! Trust: the kernel's replies, decoded by `netlink-packet-route`. Entries
//! of other families (bridge FDB) or without an IP address are left out.
//!
//! Constants: `NUD_*` from `include/uapi/linux/neighbour.h`.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::link::format_mac;
use crate::{Netlink, NetlinkError};

/// A neighbour entry, as `ip neighbour` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    /// The link's index.
    pub index: u32,
    /// NDA_DST.
    pub address: IpAddr,
    /// NDA_LLADDR when it is 6 bytes (an Ethernet address).
    pub mac: Option<[u8; 6]>,
    /// NUD_* state bits (NUD_PERMANENT = 0x80).
    pub state: u16,
}

impl Netlink {
    /// Neighbours of both families (RTM_GETNEIGH dump).
    pub fn neighbours(&mut self) -> Result<Vec<Neighbour>, NetlinkError> {
        self.dump(
            RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()),
            || "listing neighbours".to_string(),
            |_, message| match message {
                RouteNetlinkMessage::NewNeighbour(message) => neighbour_from_message(message),
                _ => None,
            },
        )
    }

    /// Adds a permanent neighbour (NUD_PERMANENT; RTM_NEWNEIGH,
    /// NLM_F_CREATE|NLM_F_EXCL).
    pub fn add_neighbour(
        &mut self,
        index: u32,
        address: IpAddr,
        mac: [u8; 6],
    ) -> Result<(), NetlinkError> {
        self.request(
            RouteNetlinkMessage::NewNeighbour(add_neighbour_message(index, address, mac)),
            NLM_F_CREATE | NLM_F_EXCL,
            || {
                format!(
                    "adding neighbour {address} ({}) on link {index}",
                    format_mac(&mac)
                )
            },
        )
    }
}

pub(crate) fn add_neighbour_message(index: u32, address: IpAddr, mac: [u8; 6]) -> NeighbourMessage {
    let mut message = NeighbourMessage::default();
    message.header.family = if address.is_ipv6() {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    message.header.ifindex = index;
    message.header.state = NeighbourState::Permanent;
    message.attributes = vec![
        NeighbourAttribute::Destination(address.into()),
        NeighbourAttribute::LinkLayerAddress(mac.to_vec()),
    ];
    message
}

/// A [`Neighbour`] from an RTM_NEWNEIGH; None for one that is not IPv4
/// or IPv6.
pub(crate) fn neighbour_from_message(message: NeighbourMessage) -> Option<Neighbour> {
    let mut address = None;
    let mut mac = None;
    for attribute in message.attributes {
        match attribute {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                address = Some(IpAddr::V4(v4));
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                address = Some(IpAddr::V6(v6));
            }
            NeighbourAttribute::LinkLayerAddress(lladdr) => {
                mac = <[u8; 6]>::try_from(lladdr).ok();
            }
            _ => {}
        }
    }
    let header = message.header;
    if !matches!(header.family, AddressFamily::Inet | AddressFamily::Inet6) {
        return None;
    }
    Some(Neighbour {
        index: header.ifindex,
        address: address?,
        mac,
        state: header.state.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_neighbour_message_reads_back_as_a_permanent_neighbour() {
        let address: IpAddr = "10.0.0.1".parse().unwrap();
        let mac = [2, 0, 0, 0, 0, 9];

        let message = add_neighbour_message(4, address, mac);

        assert_eq!(message.header.family, AddressFamily::Inet);
        assert_eq!(
            neighbour_from_message(message),
            Some(Neighbour {
                index: 4,
                address,
                mac: Some(mac),
                state: crate::NUD_PERMANENT,
            })
        );
    }

    #[test]
    fn ipv6_neighbour_message_is_of_family_inet6() {
        let message = add_neighbour_message(4, "fd00::1".parse().unwrap(), [0; 6]);

        assert_eq!(message.header.family, AddressFamily::Inet6);
    }

    #[test]
    fn neighbour_without_lladdr_has_no_mac_and_keeps_combined_states() {
        let mut message = add_neighbour_message(4, "10.0.0.1".parse().unwrap(), [0; 6]);
        message.attributes.truncate(1);
        message.header.state = NeighbourState::Other(0x44);

        let neighbour = neighbour_from_message(message).unwrap();

        assert_eq!(neighbour.mac, None);
        assert_eq!(neighbour.state, 0x44);
    }

    #[test]
    fn bridge_fdb_entry_is_left_out() {
        let mut message = add_neighbour_message(4, "10.0.0.1".parse().unwrap(), [0; 6]);
        message.header.family = AddressFamily::Bridge;

        assert_eq!(neighbour_from_message(message), None);
    }
}

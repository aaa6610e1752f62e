//! Links (`RTM_*LINK`): listing them, changing one (state, MTU, name, MAC,
//! network namespace), and making or deleting the veth and dummy devices
//! that tests and tooling need.
//!
//! Trust: the kernel's replies, decoded by `netlink-packet-route`; the
//! link-layer type is read from the raw `struct ifinfomsg` so that a type
//! the decoder does not know survives.
//!
//! Constants: `IFF_UP` from `include/uapi/linux/if.h`; the attributes
//! (`IFLA_*`) from `include/uapi/linux/if_link.h`, emitted by the decoder.

use std::fmt::Write as _;
use std::os::fd::RawFd;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::{Netlink, NetlinkError};

/// A network interface as `ip link` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The interface index (ifindex).
    pub index: u32,
    /// IFLA_IFNAME.
    pub name: String,
    /// IFLA_ADDRESS when it is 6 bytes (an Ethernet address), else None.
    pub mac: Option<[u8; 6]>,
    /// IFLA_MTU.
    pub mtu: u32,
    /// IFLA_INFO_KIND from IFLA_LINKINFO ("veth", "macvlan", "ipvlan",
    /// "tun", "wireguard", "bridge", "dummy", ...), None for devices
    /// without one (loopback, physical NICs, virtio-net).
    pub kind: Option<String>,
    /// The link-layer type (ARPHRD_ETHER = 1, ARPHRD_LOOPBACK = 772,
    /// ARPHRD_NONE = 65534, ...) from the header.
    pub link_type: u16,
    /// IFF_UP is set.
    pub up: bool,
}

/// What [`Netlink::set_link`] changes: only the fields that are Some.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkChange {
    /// Sets (true) or clears (false) IFF_UP.
    pub up: Option<bool>,
    /// IFLA_MTU.
    pub mtu: Option<u32>,
    /// Renames the link (IFLA_IFNAME).
    pub name: Option<String>,
    /// Sets its Ethernet address (IFLA_ADDRESS).
    pub mac: Option<[u8; 6]>,
    /// Moves the link to the network namespace of this fd (IFLA_NET_NS_FD).
    pub netns_fd: Option<RawFd>,
}

impl Netlink {
    /// Every link (RTM_GETLINK dump).
    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let mut request = LinkMessage::default();
        // Counters are not needed, and are most of a dump's size.
        request
            .attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        self.dump(
            RouteNetlinkMessage::GetLink(request),
            || "listing links".to_string(),
            |raw, message| match message {
                RouteNetlinkMessage::NewLink(message) => Some(link_from_message(raw, message)),
                _ => None,
            },
        )
    }

    /// Changes a link (RTM_SETLINK on its index); only the Some fields.
    /// The kernel applies them in one go, moving the link to another
    /// namespace first and setting it up or down last, so a rename (which
    /// needs the link down) and `up: Some(true)` may come together.
    pub fn set_link(&mut self, index: u32, change: &LinkChange) -> Result<(), NetlinkError> {
        self.request(
            RouteNetlinkMessage::SetLink(set_link_message(index, change)),
            0,
            || format!("changing link {index} ({})", describe_change(change)),
        )
    }

    /// Adds a veth pair, `name` and its peer `peer`, both in this
    /// namespace and down.
    pub fn add_veth(&mut self, name: &str, peer: &str) -> Result<(), NetlinkError> {
        let mut peer_message = LinkMessage::default();
        peer_message
            .attributes
            .push(LinkAttribute::IfName(peer.to_string()));
        let info = vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_message))),
        ];
        self.request(
            RouteNetlinkMessage::NewLink(new_link_message(name, info)),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("adding the veth pair {name} and {peer}"),
        )
    }

    /// Adds a dummy device `name`, down.
    pub fn add_dummy(&mut self, name: &str) -> Result<(), NetlinkError> {
        self.request(
            RouteNetlinkMessage::NewLink(new_link_message(
                name,
                vec![LinkInfo::Kind(InfoKind::Dummy)],
            )),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("adding the dummy link {name}"),
        )
    }

    /// Deletes a link (RTM_DELLINK); a veth takes its peer with it.
    pub fn delete_link(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        self.request(RouteNetlinkMessage::DelLink(message), 0, || {
            format!("deleting link {index}")
        })
    }
}

/// The RTM_SETLINK for `change`: IFF_UP in the flags and the change mask
/// only when `up` is Some, an attribute per other Some field.
pub(crate) fn set_link_message(index: u32, change: &LinkChange) -> LinkMessage {
    let mut message = LinkMessage::default();
    message.header.index = index;
    if let Some(up) = change.up {
        message.header.change_mask = LinkFlags::Up;
        if up {
            message.header.flags = LinkFlags::Up;
        }
    }
    let attributes = &mut message.attributes;
    if let Some(fd) = change.netns_fd {
        attributes.push(LinkAttribute::NetNsFd(fd));
    }
    if let Some(name) = &change.name {
        attributes.push(LinkAttribute::IfName(name.clone()));
    }
    if let Some(mac) = change.mac {
        attributes.push(LinkAttribute::Address(mac.to_vec()));
    }
    if let Some(mtu) = change.mtu {
        attributes.push(LinkAttribute::Mtu(mtu));
    }
    message
}

fn new_link_message(name: &str, info: Vec<LinkInfo>) -> LinkMessage {
    let mut message = LinkMessage::default();
    message
        .attributes
        .push(LinkAttribute::IfName(name.to_string()));
    message.attributes.push(LinkAttribute::LinkInfo(info));
    message
}

/// A [`Link`] from an RTM_NEWLINK; `raw` is its payload, whose
/// `ifi_type` (bytes 2..4) is kept even when the decoder does not know it.
pub(crate) fn link_from_message(raw: &[u8], message: LinkMessage) -> Link {
    let link_type = match raw.get(2..4) {
        Some(&[low, high]) => u16::from_ne_bytes([low, high]),
        _ => u16::from(message.header.link_layer_type),
    };
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        kind: None,
        link_type,
        up: message.header.flags.contains(LinkFlags::Up),
    };
    for attribute in message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name,
            LinkAttribute::Address(address) => link.mac = <[u8; 6]>::try_from(address).ok(),
            LinkAttribute::Mtu(mtu) => link.mtu = mtu,
            LinkAttribute::LinkInfo(infos) => {
                link.kind = infos.into_iter().find_map(|info| match info {
                    LinkInfo::Kind(kind) => Some(kind.to_string()),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    link
}

/// `aa:bb:cc:dd:ee:ff`.
pub(crate) fn format_mac(mac: &[u8; 6]) -> String {
    let mut text = String::with_capacity(17);
    for (n, byte) in mac.iter().enumerate() {
        if n > 0 {
            text.push(':');
        }
        let _ = write!(text, "{byte:02x}");
    }
    text
}

fn describe_change(change: &LinkChange) -> String {
    let mut parts = Vec::new();
    if let Some(up) = change.up {
        parts.push(if up {
            "up".to_string()
        } else {
            "down".to_string()
        });
    }
    if let Some(mtu) = change.mtu {
        parts.push(format!("mtu {mtu}"));
    }
    if let Some(name) = &change.name {
        parts.push(format!("name {name}"));
    }
    if let Some(mac) = &change.mac {
        parts.push(format!("address {}", format_mac(mac)));
    }
    if let Some(fd) = change.netns_fd {
        parts.push(format!("netns fd {fd}"));
    }
    if parts.is_empty() {
        "nothing".to_string()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::Emitable;
    use netlink_packet_route::link::LinkLayerType;

    use super::*;

    fn emitted(message: &LinkMessage) -> Vec<u8> {
        let mut bytes = vec![0; message.buffer_len()];
        message.emit(&mut bytes);
        bytes
    }

    #[test]
    fn link_from_message_reads_name_mac_mtu_kind_type_and_state() {
        let mut message = LinkMessage::default();
        message.header.index = 4;
        message.header.link_layer_type = LinkLayerType::Ether;
        message.header.flags = LinkFlags::Up | LinkFlags::Broadcast;
        message.attributes = vec![
            LinkAttribute::IfName("veth0".into()),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, 1]),
            LinkAttribute::Mtu(1500),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
        ];
        let raw = emitted(&message);

        let link = link_from_message(&raw, message);

        assert_eq!(
            link,
            Link {
                index: 4,
                name: "veth0".into(),
                mac: Some([2, 0, 0, 0, 0, 1]),
                mtu: 1500,
                kind: Some("veth".into()),
                link_type: crate::ARPHRD_ETHER,
                up: true,
            }
        );
    }

    #[test]
    fn link_from_message_has_no_mac_for_a_non_ethernet_address() {
        let mut message = LinkMessage::default();
        message.header.link_layer_type = LinkLayerType::None;
        message.attributes = vec![LinkAttribute::Address(vec![10, 0, 0, 1])];
        let raw = emitted(&message);

        let link = link_from_message(&raw, message);

        assert_eq!(link.mac, None);
        assert_eq!(link.kind, None);
        assert_eq!(link.link_type, crate::ARPHRD_NONE);
        assert!(!link.up);
    }

    #[test]
    fn link_from_message_keeps_a_link_type_the_decoder_does_not_know() {
        let message = LinkMessage::default();
        let mut raw = emitted(&message);
        raw[2..4].copy_from_slice(&4242u16.to_ne_bytes());

        assert_eq!(link_from_message(&raw, message).link_type, 4242);
    }

    #[test]
    fn set_link_message_with_only_up_false_clears_iff_up_and_nothing_else() {
        let change = LinkChange {
            up: Some(false),
            ..LinkChange::default()
        };

        let message = set_link_message(7, &change);

        assert_eq!(message.header.index, 7);
        assert_eq!(message.header.change_mask, LinkFlags::Up);
        assert_eq!(message.header.flags, LinkFlags::empty());
        assert!(message.attributes.is_empty());
    }

    #[test]
    fn set_link_message_carries_every_some_field() {
        let change = LinkChange {
            up: Some(true),
            mtu: Some(1400),
            name: Some("eth1".into()),
            mac: Some([2, 1, 2, 3, 4, 5]),
            netns_fd: Some(9),
        };

        let message = set_link_message(3, &change);

        assert_eq!(message.header.flags, LinkFlags::Up);
        assert_eq!(
            message.attributes,
            vec![
                LinkAttribute::NetNsFd(9),
                LinkAttribute::IfName("eth1".into()),
                LinkAttribute::Address(vec![2, 1, 2, 3, 4, 5]),
                LinkAttribute::Mtu(1400),
            ]
        );
    }

    #[test]
    fn set_link_message_without_up_leaves_the_flags_alone() {
        let change = LinkChange {
            mtu: Some(9000),
            ..LinkChange::default()
        };

        let message = set_link_message(3, &change);

        assert_eq!(message.header.change_mask, LinkFlags::empty());
        assert_eq!(message.attributes, vec![LinkAttribute::Mtu(9000)]);
    }

    #[test]
    fn describe_change_lists_the_some_fields() {
        let change = LinkChange {
            up: Some(true),
            mac: Some([0x02, 0xab, 0, 0, 0, 0x0f]),
            ..LinkChange::default()
        };

        assert_eq!(describe_change(&change), "up, address 02:ab:00:00:00:0f");
        assert_eq!(describe_change(&LinkChange::default()), "nothing");
    }
}

//! A small synchronous rtnetlink (`NETLINK_ROUTE`) client: links,
//! addresses, routes, neighbours, and the tc ingress redirects that splice
//! a container's interface to a tap device.
//!
//! Two sides use it: the host runtime, in a container's network namespace
//! (it reads what an engine configured there and sets up the redirects),
//! and the guest agent, PID 1 of the VM, a static binary that configures
//! the guest's NICs. Neither runs an async runtime, so every call here
//! blocks until the kernel has answered: a request is sent with
//! `NLM_F_ACK` and returns the kernel's errno ([`NetlinkError::errno`]) if
//! it refused; a dump reads the multipart reply up to `NLMSG_DONE`.
//!
//! A [`Netlink`] lives in the network namespace of the thread that opened
//! it: open it in a thread that has entered (`setns`) or made (`unshare`)
//! the namespace to work on. The messages are built and parsed by
//! `netlink-packet-route`; this crate only frames them (`socket.rs`) and
//! converts them to the plain types below ([`link`], [`address`],
//! [`route`], [`neighbour`], [`tc`]).
//!
//! ```no_run
//! use husk_netlink::{LinkChange, Netlink, ARPHRD_LOOPBACK};
//!
//! let mut netlink = Netlink::open()?;
//! for link in netlink.links()? {
//!     if link.link_type == ARPHRD_LOOPBACK && !link.up {
//!         let up = LinkChange { up: Some(true), ..LinkChange::default() };
//!         netlink.set_link(link.index, &up)?;
//!     }
//! }
//! # Ok::<(), husk_netlink::NetlinkError>(())
//! ```
//!
//! Trust: the peer is the kernel. Its replies are still decoded without
//! ever panicking: a reply that does not parse is a
//! [`NetlinkError::Malformed`].
//!
//! Constants: `ARPHRD_*` from `include/uapi/linux/if_arp.h`, `NUD_*` from
//! `include/uapi/linux/neighbour.h`, `IFA_F_*` from
//! `include/uapi/linux/if_addr.h`, `RTPROT_*`, `RTN_*`, `RT_SCOPE_*` and
//! `RT_TABLE_*` from `include/uapi/linux/rtnetlink.h`.

pub mod address;
pub mod link;
pub mod neighbour;
pub mod route;
mod socket;
pub mod tc;

use std::io;

pub use address::Address;
pub use link::{Link, LinkChange};
pub use neighbour::Neighbour;
pub use route::Route;
pub use socket::Netlink;

/// Ethernet (`include/uapi/linux/if_arp.h`).
pub const ARPHRD_ETHER: u16 = 1;
/// The loopback device (`include/uapi/linux/if_arp.h`).
pub const ARPHRD_LOOPBACK: u16 = 772;
/// No link-layer header, e.g. a tun device or wireguard
/// (`include/uapi/linux/if_arp.h`).
pub const ARPHRD_NONE: u16 = 0xfffe;

/// A neighbour that never expires (`include/uapi/linux/neighbour.h`).
pub const NUD_PERMANENT: u16 = 0x80;
/// A neighbour on a device without ARP (`include/uapi/linux/neighbour.h`).
pub const NUD_NOARP: u16 = 0x40;

/// No duplicate address detection for this IPv6 address
/// (`include/uapi/linux/if_addr.h`).
pub const IFA_F_NODAD: u32 = 0x02;
/// Duplicate address detection still runs (`include/uapi/linux/if_addr.h`).
pub const IFA_F_TENTATIVE: u32 = 0x40;
/// An address without a lifetime, i.e. configured, not autoconfigured
/// (`include/uapi/linux/if_addr.h`).
pub const IFA_F_PERMANENT: u32 = 0x80;

/// A route the kernel made, e.g. the prefix route of an address
/// (`include/uapi/linux/rtnetlink.h`).
pub const RTPROT_KERNEL: u8 = 2;
/// A route added at boot, the default of `ip route add`
/// (`include/uapi/linux/rtnetlink.h`).
pub const RTPROT_BOOT: u8 = 3;
/// A route an administrator added (`include/uapi/linux/rtnetlink.h`).
pub const RTPROT_STATIC: u8 = 4;

/// A gateway or direct route (`include/uapi/linux/rtnetlink.h`).
pub const RTN_UNICAST: u8 = 1;
/// A local address (`include/uapi/linux/rtnetlink.h`).
pub const RTN_LOCAL: u8 = 2;
/// A broadcast address (`include/uapi/linux/rtnetlink.h`).
pub const RTN_BROADCAST: u8 = 3;
/// Packets to it are dropped silently (`include/uapi/linux/rtnetlink.h`).
pub const RTN_BLACKHOLE: u8 = 6;
/// Packets to it get an ICMP unreachable (`include/uapi/linux/rtnetlink.h`).
pub const RTN_UNREACHABLE: u8 = 7;

/// Everywhere (`include/uapi/linux/rtnetlink.h`).
pub const RT_SCOPE_UNIVERSE: u8 = 0;
/// On the link only (`include/uapi/linux/rtnetlink.h`).
pub const RT_SCOPE_LINK: u8 = 253;
/// On this host only (`include/uapi/linux/rtnetlink.h`).
pub const RT_SCOPE_HOST: u8 = 254;

/// The main routing table, the one `ip route` shows
/// (`include/uapi/linux/rtnetlink.h`).
pub const RT_TABLE_MAIN: u32 = 254;

/// A failed netlink operation. The message names what was asked (e.g.
/// "adding address 10.0.0.2/24 to link 5"); [`NetlinkError::errno`] gives
/// the kernel's errno so a caller can tell `EEXIST`, `EBUSY`, `ENODEV`,
/// `EOPNOTSUPP` or `EAFNOSUPPORT` apart.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The kernel refused the request (an `NLMSG_ERROR` with an errno, or a
    /// dump that ended with one).
    #[error("{what}: {source}{}", detail(.message))]
    Kernel {
        /// What was asked.
        what: String,
        /// The errno the kernel answered, as an `io::Error`.
        #[source]
        source: io::Error,
        /// The kernel's explanation (extended ACK, `NLMSGERR_ATTR_MSG`),
        /// when it gave one.
        message: Option<String>,
    },
    /// Opening, sending on or receiving from the socket failed.
    #[error("{what}: {source}")]
    Io {
        /// What was asked.
        what: String,
        /// The system call's error.
        #[source]
        source: io::Error,
    },
    /// The kernel's reply could not be decoded.
    #[error("{what}: malformed reply from the kernel: {reason}")]
    Malformed {
        /// What was asked.
        what: String,
        /// What is wrong with the reply.
        reason: String,
    },
    /// A dump kept being interrupted by concurrent changes
    /// (`NLM_F_DUMP_INTR`), so its result would be inconsistent.
    #[error("{what}: the dump was interrupted by concurrent changes {attempts} times")]
    Interrupted {
        /// What was asked.
        what: String,
        /// How many dumps were tried.
        attempts: u32,
    },
}

impl NetlinkError {
    /// The errno of the failure: the kernel's for a refused request, the
    /// system call's for a socket error, None for a malformed reply.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { source, .. } | Self::Io { source, .. } => source.raw_os_error(),
            Self::Malformed { .. } | Self::Interrupted { .. } => None,
        }
    }

    /// What was asked when it failed.
    pub fn what(&self) -> &str {
        match self {
            Self::Kernel { what, .. }
            | Self::Io { what, .. }
            | Self::Malformed { what, .. }
            | Self::Interrupted { what, .. } => what,
        }
    }
}

fn detail(message: &Option<String>) -> String {
    match message {
        Some(message) => format!(" ({message})"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_error_names_the_request_and_keeps_the_errno() {
        let error = NetlinkError::Kernel {
            what: "adding address 10.0.0.2/24 to link 5".into(),
            source: io::Error::from_raw_os_error(libc::EEXIST),
            message: None,
        };

        let text = error.to_string();

        assert!(
            text.starts_with("adding address 10.0.0.2/24 to link 5: "),
            "{text}"
        );
        assert!(text.contains("os error 17"), "{text}");
        assert_eq!(error.errno(), Some(libc::EEXIST));
        assert_eq!(error.what(), "adding address 10.0.0.2/24 to link 5");
    }

    #[test]
    fn kernel_error_shows_the_extended_ack_message() {
        let error = NetlinkError::Kernel {
            what: "adding veth a".into(),
            source: io::Error::from_raw_os_error(libc::EOPNOTSUPP),
            message: Some("Unknown device type".into()),
        };

        assert!(
            error.to_string().ends_with(" (Unknown device type)"),
            "{error}"
        );
    }

    #[test]
    fn malformed_reply_has_no_errno() {
        let error = NetlinkError::Malformed {
            what: "listing links".into(),
            reason: "truncated header".into(),
        };

        assert_eq!(error.errno(), None);
        assert_eq!(
            error.to_string(),
            "listing links: malformed reply from the kernel: truncated header"
        );
    }
}

//! The sandbox's network as the guest configures it: the interfaces the
//! engine (or CNI) put in the container's network namespace on the host,
//! with their addresses, routes and permanent neighbours, read there by the
//! host and applied by the agent to the guest's NICs (matched by MAC).
//!
//! Source of the model: shared/NETWORKING.md (tap + tc redirect, as Kata
//! does). The host builds these from netlink; the agent trusts them as it
//! trusts every host request, but still refuses what it cannot apply
//! (an unknown NIC, a prefix longer than the address).

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// The vsock port on the host where the agent relays DNS queries sent to
/// a [`Network::dns_relays`] address.
pub const DNS_RELAY_PORT: u32 = 1053;

/// Longest line a DNS relay stream starts with.
pub const MAX_RELAY_LINE: usize = 64;

/// What a DNS relay stream carries, named by its first line: `udp ADDRESS`
/// (then one query and its answer, each framed by [`write_dns_message`]) or
/// `tcp ADDRESS` (then a DNS-over-TCP connection's bytes both ways).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsRelay {
    /// One UDP query to port 53 of the address.
    Udp(IpAddr),
    /// A TCP connection to port 53 of the address.
    Tcp(IpAddr),
}

impl DnsRelay {
    /// The first line of the stream, newline included.
    pub fn line(&self) -> String {
        match self {
            DnsRelay::Udp(a) => format!("udp {a}\n"),
            DnsRelay::Tcp(a) => format!("tcp {a}\n"),
        }
    }

    /// Parses a first line (without its newline).
    pub fn parse(line: &str) -> Result<DnsRelay, String> {
        let (protocol, address) = line
            .split_once(' ')
            .ok_or_else(|| format!("{line:?} is not \"udp|tcp ADDRESS\""))?;
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("{line:?}: {address:?} is not an IP address"))?;
        match protocol {
            "udp" => Ok(DnsRelay::Udp(address)),
            "tcp" => Ok(DnsRelay::Tcp(address)),
            other => Err(format!("{line:?}: unknown protocol {other:?}")),
        }
    }

    /// The nameserver address.
    pub fn address(&self) -> IpAddr {
        match self {
            DnsRelay::Udp(a) | DnsRelay::Tcp(a) => *a,
        }
    }
}

/// A connection the host forwards into the guest (a CRI port-forward:
/// containerd dials `localhost:PORT` in the pod's namespace on the host):
/// the host connects to the agent's vsock port
/// [`crate::PORT_FORWARD_PORT`], writes [`PortForward::line`]; the agent
/// answers [`PortForward::CONNECTED`] once `localhost:PORT` in the guest
/// accepted (or `error MESSAGE` and closes), and the stream then carries
/// the TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortForward {
    /// The TCP port.
    pub port: u16,
}

impl PortForward {
    /// The agent's answer once it connected.
    pub const CONNECTED: &'static str = "ok\n";

    /// The first line of the stream, newline included.
    pub fn line(&self) -> String {
        format!("tcp {}\n", self.port)
    }

    /// Parses a first line (without its newline).
    pub fn parse(line: &str) -> Result<PortForward, String> {
        let port = line
            .strip_prefix("tcp ")
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{line:?} is not \"tcp PORT\""))?;
        Ok(PortForward { port })
    }
}

/// Writes a DNS message with its big-endian u16 length in front, as DNS
/// over TCP frames them (RFC 1035 4.2.2).
pub fn write_dns_message(w: &mut impl std::io::Write, message: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(message.len()).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "DNS message over 64 KiB")
    })?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(message)
}

/// Reads one message written by [`write_dns_message`] (at most 64 KiB).
pub fn read_dns_message(r: &mut impl std::io::Read) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len)?;
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
    r.read_exact(&mut message)?;
    Ok(message)
}

/// What the agent configures, in this order: interfaces (name, MAC, MTU,
/// up, addresses), then neighbours, then routes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// The NICs to configure.
    pub interfaces: Vec<Interface>,
    /// Permanent neighbours (`NUD_PERMANENT` entries of the namespace).
    pub neighbours: Vec<Neighbour>,
    /// Routes of the main table, without the kernel's own.
    pub routes: Vec<Route>,
    /// Loopback nameservers of the container's resolv.conf (docker's
    /// embedded DNS, 127.0.0.11): the agent answers there and relays each
    /// query to the same address in the host namespace over vsock port
    /// [`DNS_RELAY_PORT`].
    pub dns_relays: Vec<IpAddr>,
    /// NICs (by their MAC) held back for an interface the engine adds
    /// after create: the agent keeps them out of the container's sight
    /// until a later request configures them.
    pub standby: Vec<MacAddr>,
}

/// One NIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    /// The name the container sees (the host interface's, e.g. `eth0`).
    pub name: String,
    /// The MAC the guest NIC has now, which finds it.
    pub device_mac: MacAddr,
    /// The MAC it gets (the host interface's; differs from `device_mac`
    /// only for a standby NIC).
    pub mac: MacAddr,
    /// The MTU.
    pub mtu: u32,
    /// Addresses with their prefix length.
    pub addresses: Vec<IpNet>,
}

/// A permanent neighbour entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Neighbour {
    /// The interface's name.
    pub interface: String,
    /// The neighbour's address.
    pub address: IpAddr,
    /// Its MAC.
    pub mac: MacAddr,
}

/// A route of the main table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// The destination; `None` is the default route.
    pub destination: Option<IpNet>,
    /// Whether it is an IPv6 route (for a default route without gateway).
    #[serde(default)]
    pub ipv6: bool,
    /// The gateway.
    pub gateway: Option<IpAddr>,
    /// The output interface's name.
    pub interface: Option<String>,
    /// The preferred source address.
    pub source: Option<IpAddr>,
    /// The route's priority.
    pub metric: Option<u32>,
    /// The route's own MTU (`mtu` metric), which may be below the link's.
    pub mtu: Option<u32>,
    /// `RT_SCOPE_*` (0 universe, 253 link).
    #[serde(default)]
    pub scope: u8,
}

/// An address and prefix length, written `10.88.0.2/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    /// The address.
    pub address: IpAddr,
    /// The prefix length.
    pub prefix_len: u8,
}

impl IpNet {
    /// `address/prefix_len`, or an error when the prefix is too long for
    /// the family.
    pub fn new(address: IpAddr, prefix_len: u8) -> Result<IpNet, String> {
        let max = if address.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(format!(
                "{address}/{prefix_len}: the prefix is longer than {max}"
            ));
        }
        Ok(IpNet {
            address,
            prefix_len,
        })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (address, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not ADDRESS/PREFIX"))?;
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("{s:?}: {address:?} is not an IP address"))?;
        let prefix_len: u8 = prefix
            .parse()
            .map_err(|_| format!("{s:?}: {prefix:?} is not a prefix length"))?;
        IpNet::new(address, prefix_len)
    }
}

/// An Ethernet MAC address, written `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A random locally administered unicast address (`x2:...`).
    pub fn random_local(seed: u64) -> MacAddr {
        let mut bytes = [0u8; 6];
        bytes[1..].copy_from_slice(&seed.to_le_bytes()[..5]);
        bytes[0] = 0x02 | ((seed >> 40) as u8 & 0xfc);
        MacAddr(bytes)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)");
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut bytes {
            let part = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(bytes))
    }
}

/// Serde as the string forms above.
macro_rules! serde_as_string {
    ($type:ty) => {
        impl Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

serde_as_string!(MacAddr);
serde_as_string!(IpNet);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_and_print_in_colon_form() {
        let mac: MacAddr = "02:42:AC:11:00:0f".parse().unwrap();

        assert_eq!(mac, MacAddr([2, 0x42, 0xac, 0x11, 0, 0xf]));
        assert_eq!(mac.to_string(), "02:42:ac:11:00:0f");
        for bad in [
            "",
            "02:42:ac:11:00",
            "02:42:ac:11:00:0f:01",
            "2:42:ac:11:00:0f",
            "zz:42:ac:11:00:0f",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn random_local_macs_are_unicast_and_locally_administered() {
        for seed in [0, 1, u64::MAX, 0x0123_4567_89ab_cdef] {
            let mac = MacAddr::random_local(seed);
            assert_eq!(mac.0[0] & 0x03, 0x02, "{mac}");
        }
    }

    #[test]
    fn networks_parse_and_refuse_long_prefixes() {
        let net: IpNet = "fd00::2/64".parse().unwrap();
        assert_eq!(net.to_string(), "fd00::2/64");
        assert_eq!(net.prefix_len, 64);
        assert!("10.0.0.1/33".parse::<IpNet>().is_err());
        assert!("10.0.0.1".parse::<IpNet>().is_err());
        assert!("10.0.0/8".parse::<IpNet>().is_err());
    }

    #[test]
    fn dns_messages_round_trip_with_a_big_endian_length() {
        let mut wire = Vec::new();

        write_dns_message(&mut wire, b"query").unwrap();

        assert_eq!(&wire[..2], &[0, 5]);
        assert_eq!(read_dns_message(&mut wire.as_slice()).unwrap(), b"query");
        let too_long = write_dns_message(&mut Vec::new(), &vec![0; 70_000]).unwrap_err();
        assert_eq!(too_long.kind(), std::io::ErrorKind::InvalidInput);
    }

    #[test]
    fn dns_relay_lines_round_trip_and_bad_ones_are_named() {
        for relay in [
            DnsRelay::Udp("127.0.0.11".parse().unwrap()),
            DnsRelay::Tcp("::1".parse().unwrap()),
        ] {
            let line = relay.line();
            assert_eq!(DnsRelay::parse(line.trim_end()), Ok(relay));
        }
        for bad in ["udp", "sctp 127.0.0.11", "udp localhost", ""] {
            let err = DnsRelay::parse(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn port_forward_lines_round_trip_and_bad_ones_are_named() {
        let forward = PortForward { port: 8080 };
        assert_eq!(PortForward::parse(forward.line().trim_end()), Ok(forward));
        for bad in ["tcp 0", "tcp 70000", "udp 53", "tcp"] {
            assert!(PortForward::parse(bad).unwrap_err().contains(bad));
        }
    }

    #[test]
    fn a_network_round_trips_as_readable_json() {
        let network = Network {
            interfaces: vec![Interface {
                name: "eth0".into(),
                device_mac: MacAddr([2, 0, 0, 0, 0, 1]),
                mac: MacAddr([2, 0, 0, 0, 0, 1]),
                mtu: 1500,
                addresses: vec![
                    "10.88.0.2/16".parse().unwrap(),
                    "fd00::2/64".parse().unwrap(),
                ],
            }],
            neighbours: vec![],
            routes: vec![Route {
                gateway: Some("10.88.0.1".parse().unwrap()),
                interface: Some("eth0".into()),
                ..Route::default()
            }],
            dns_relays: vec!["127.0.0.11".parse().unwrap()],
            standby: vec![],
        };

        let json = serde_json::to_string(&network).unwrap();

        assert!(
            json.contains(r#""addresses":["10.88.0.2/16","fd00::2/64"]"#),
            "{json}"
        );
        assert!(json.contains(r#""mac":"02:00:00:00:00:01""#), "{json}");
        assert_eq!(serde_json::from_str::<Network>(&json).unwrap(), network);
    }
}

//! The host side of the guest's DNS relays
//! ([`husk_protocol::net::DnsRelay`]): the loopback nameservers of the
//! container's resolv.conf, and a server on the hybrid vsock socket of
//! [`DNS_RELAY_PORT`] that asks them from inside the container's network
//! namespace (the monitor's), where docker's embedded DNS answers on
//! 127.0.0.11 through the iptables rules of that namespace.
//!
//! Trust: the guest chooses only among the addresses the host gave it;
//! anything else, a line that is too long, or a query that is not a DNS
//! message, closes the stream. At most [`MAX_STREAMS`] at once.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use husk_protocol::net::{
    read_dns_message, write_dns_message, DnsRelay, DNS_RELAY_PORT, MAX_RELAY_LINE,
};
use husk_protocol::oci::Mount;

/// Relay streams served at once; more wait in the listener's backlog.
pub const MAX_STREAMS: usize = 64;
/// How long the nameserver may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The loopback nameservers of the container's resolv.conf: the bind
/// mount on `/etc/resolv.conf` if the spec has one (the engine's file),
/// else the rootfs's own.
pub fn loopback_nameservers(mounts: &[Mount], bundle: &Path, rootfs: &Path) -> Vec<IpAddr> {
    let file = mounts
        .iter()
        .rev()
        .find(|m| m.destination.trim_end_matches('/') == "/etc/resolv.conf")
        .and_then(|m| m.source.as_deref())
        .map(|source| bundle.join(source))
        .unwrap_or_else(|| rootfs.join("etc/resolv.conf"));
    let text = std::fs::read_to_string(file).unwrap_or_default();
    nameservers(&text)
        .into_iter()
        .filter(IpAddr::is_loopback)
        .collect()
}

/// The `nameserver` addresses of a resolv.conf.
fn nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter_map(|address| address.parse().ok())
        .collect()
}

/// The hybrid vsock socket of the relay for the VM whose base socket is
/// `vsock_uds`.
pub fn socket_path(vsock_uds: &Path) -> std::path::PathBuf {
    let mut path = vsock_uds.as_os_str().to_owned();
    path.push(format!("_{DNS_RELAY_PORT}"));
    path.into()
}

/// Serves relay streams for `allowed` on `socket` from a thread of its own
/// until the process ends; the socket file is the caller's to remove.
pub fn serve(socket: &Path, allowed: Vec<IpAddr>) -> io::Result<()> {
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)?;
    let allowed = Arc::new(allowed);
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("dns-relay".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if active.fetch_add(1, Ordering::AcqRel) >= MAX_STREAMS {
                    active.fetch_sub(1, Ordering::AcqRel);
                    continue;
                }
                let (allowed, done) = (Arc::clone(&allowed), Arc::clone(&active));
                let spawned = std::thread::Builder::new()
                    .name("dns-relay-stream".into())
                    .spawn(move || {
                        let _ = relay(stream, &allowed);
                        done.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    active.fetch_sub(1, Ordering::AcqRel);
                }
            }
        })?;
    Ok(())
}

/// Serves one stream: its first line, then the query or connection.
fn relay(stream: UnixStream, allowed: &[IpAddr]) -> io::Result<()> {
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    (&mut reader)
        .take(MAX_RELAY_LINE as u64)
        .read_line(&mut line)?;
    let relay = DnsRelay::parse(line.trim_end()).map_err(io::Error::other)?;
    if !allowed.contains(&relay.address()) {
        return Err(io::Error::other(format!(
            "{} is not a relayed nameserver",
            relay.address()
        )));
    }
    let server = SocketAddr::new(relay.address(), 53);
    let mut stream = stream;
    match relay {
        DnsRelay::Udp(_) => {
            let query = read_dns_message(&mut reader)?;
            let answer = ask_udp(server, &query)?;
            write_dns_message(&mut stream, &answer)
        }
        DnsRelay::Tcp(_) => {
            stream.set_read_timeout(None)?;
            let tcp = TcpStream::connect_timeout(&server, TIMEOUT)?;
            splice(reader, stream, tcp)
        }
    }
}

/// One UDP query and its answer.
fn ask_udp(server: SocketAddr, query: &[u8]) -> io::Result<Vec<u8>> {
    let local: IpAddr = match server {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind(SocketAddr::new(local, 0))?;
    socket.connect(server)?;
    socket.set_read_timeout(Some(TIMEOUT))?;
    socket.send(query)?;
    let mut answer = vec![0u8; 65_535];
    let len = socket.recv(&mut answer)?;
    answer.truncate(len);
    Ok(answer)
}

/// Copies the guest's stream to the nameserver's TCP connection and back,
/// each direction until its end.
fn splice(
    mut from_guest: BufReader<UnixStream>,
    mut to_guest: UnixStream,
    tcp: TcpStream,
) -> io::Result<()> {
    let mut tcp_in = tcp.try_clone()?;
    let upstream = std::thread::spawn(move || {
        let _ = io::copy(&mut from_guest, &mut tcp_in);
        let _ = tcp_in.shutdown(std::net::Shutdown::Write);
    });
    let mut tcp_out = tcp;
    let _ = io::copy(&mut tcp_out, &mut to_guest);
    let _ = to_guest.flush();
    let _ = to_guest.shutdown(std::net::Shutdown::Write);
    let _ = upstream.join();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_are_read_and_loopback_ones_picked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("resolv.conf"),
            "search x\nnameserver 127.0.0.11\nnameserver 10.89.0.1\n  nameserver ::1 # c\noptions ndots:0\n",
        )
        .unwrap();
        let mount = Mount {
            destination: "/etc/resolv.conf".into(),
            kind: Some("bind".into()),
            source: Some("resolv.conf".into()),
            options: vec!["rbind".into()],
        };

        let found = loopback_nameservers(&[mount], dir.path(), Path::new("/nonexistent"));

        let expected: Vec<IpAddr> = vec!["127.0.0.11".parse().unwrap(), "::1".parse().unwrap()];
        assert_eq!(found, expected);
    }

    #[test]
    fn without_a_mount_the_rootfs_file_counts() {
        let rootfs = tempfile::tempdir().unwrap();
        std::fs::create_dir(rootfs.path().join("etc")).unwrap();
        std::fs::write(
            rootfs.path().join("etc/resolv.conf"),
            "nameserver 127.0.0.53\n",
        )
        .unwrap();

        let found = loopback_nameservers(&[], Path::new("/"), rootfs.path());

        assert_eq!(found, vec!["127.0.0.53".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn the_relay_socket_follows_the_hybrid_vsock_naming() {
        assert_eq!(
            socket_path(Path::new("/run/husk/x/vsock.sock")),
            Path::new("/run/husk/x/vsock.sock_1053")
        );
    }

    #[test]
    fn a_stream_for_an_address_not_relayed_is_closed() {
        let (mut guest, host) = UnixStream::pair().unwrap();
        guest.write_all(b"udp 127.0.0.99\n").unwrap();

        let err = relay(host, &["127.0.0.11".parse().unwrap()]).unwrap_err();

        assert!(err.to_string().contains("127.0.0.99"), "{err}");
    }

    #[test]
    fn a_udp_query_is_asked_and_answered_through_the_stream() {
        // A one-shot "nameserver" on a loopback port stands in for port 53.
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let address = server.local_addr().unwrap();
        let echo = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let (len, peer) = server.recv_from(&mut buf).unwrap();
            server
                .send_to(&[&b"answer:"[..], &buf[..len]].concat(), peer)
                .unwrap();
        });

        let answer = ask_udp(address, b"query").unwrap();

        echo.join().unwrap();
        assert_eq!(answer, b"answer:query");
    }
}

//! DNS relays: answers for a loopback nameserver of the container's
//! resolv.conf (docker's embedded DNS at 127.0.0.11) by relaying each query
//! to the host, which asks the same address inside the container's network
//! namespace there, where the engine's resolver listens.
//!
//! A VM NIC cannot reach it otherwise: 127.0.0.11 is the guest's own
//! loopback, and docker serves it through iptables rules in the
//! namespace's OUTPUT chain, which redirected packets never cross
//! (shared/NETWORKING.md).
//!
//! Wire ([`DnsRelay`]): per query or TCP connection, one vsock stream to
//! host port [`DNS_RELAY_PORT`].

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use husk_protocol::net::{read_dns_message, write_dns_message, DnsRelay, DNS_RELAY_PORT};

use crate::vsock;

/// The DNS port.
const DNS_PORT: u16 = 53;
/// Queries or connections relayed at once per address; more are dropped
/// (a resolver retries).
const MAX_IN_FLIGHT: usize = 64;
/// How long the host may take to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest DNS message.
const MAX_MESSAGE: usize = 65_535;

/// The relays running, by address.
#[derive(Default)]
pub struct DnsRelays {
    running: Mutex<Vec<IpAddr>>,
}

impl DnsRelays {
    /// Starts a relay for every address of `addresses` not relayed yet.
    pub fn start(&self, addresses: &[IpAddr]) -> Result<()> {
        let mut running = self.running.lock().unwrap();
        for &address in addresses {
            if running.contains(&address) {
                continue;
            }
            start_relay(address).with_context(|| format!("relaying DNS on {address}:53"))?;
            running.push(address);
        }
        Ok(())
    }
}

fn start_relay(address: IpAddr) -> Result<()> {
    let local = SocketAddr::new(address, DNS_PORT);
    let udp = Arc::new(UdpSocket::bind(local).context("binding UDP")?);
    let tcp = TcpListener::bind(local).context("binding TCP")?;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let udp_in_flight = Arc::clone(&in_flight);
    std::thread::Builder::new()
        .name("dns-relay-udp".into())
        .spawn(move || serve_udp(address, &udp, &udp_in_flight))?;
    std::thread::Builder::new()
        .name("dns-relay-tcp".into())
        .spawn(move || serve_tcp(address, &tcp, &in_flight))?;
    Ok(())
}

/// Takes a slot of `in_flight`, or `None` when all are taken.
fn take_slot(in_flight: &Arc<AtomicUsize>) -> Option<Slot> {
    let previous = in_flight.fetch_add(1, Ordering::AcqRel);
    if previous >= MAX_IN_FLIGHT {
        in_flight.fetch_sub(1, Ordering::AcqRel);
        return None;
    }
    Some(Slot(Arc::clone(in_flight)))
}

/// One query or connection being relayed; frees its place when dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn serve_udp(address: IpAddr, socket: &Arc<UdpSocket>, in_flight: &Arc<AtomicUsize>) {
    let mut buffer = vec![0u8; MAX_MESSAGE];
    loop {
        let Ok((len, client)) = socket.recv_from(&mut buffer) else {
            continue;
        };
        let Some(slot) = take_slot(in_flight) else {
            continue;
        };
        let query = buffer[..len].to_vec();
        let socket = Arc::clone(socket);
        let spawned = std::thread::Builder::new()
            .name("dns-query".into())
            .spawn(move || {
                let _slot = slot;
                match relay_query(address, &query) {
                    Ok(answer) => {
                        let _ = socket.send_to(&answer, client);
                    }
                    Err(e) => eprintln!("husk-agent: DNS query to {address}: {e}"),
                }
            });
        if let Err(e) = spawned {
            eprintln!("husk-agent: DNS relay: {e}");
        }
    }
}

/// Opens a relay stream to the host.
fn open_stream(relay: DnsRelay) -> io::Result<UnixStream> {
    let mut stream = vsock::connect_host(DNS_RELAY_PORT)?;
    stream.write_all(relay.line().as_bytes())?;
    Ok(stream)
}

/// One UDP query through the host; its answer.
fn relay_query(address: IpAddr, query: &[u8]) -> io::Result<Vec<u8>> {
    let mut stream = open_stream(DnsRelay::Udp(address))?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    write_dns_message(&mut stream, query)?;
    read_dns_message(&mut stream)
}

fn serve_tcp(address: IpAddr, listener: &TcpListener, in_flight: &Arc<AtomicUsize>) {
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        let Some(slot) = take_slot(in_flight) else {
            continue;
        };
        let spawned = std::thread::Builder::new()
            .name("dns-tcp".into())
            .spawn(move || {
                let _slot = slot;
                if let Err(e) = relay_connection(address, client) {
                    eprintln!("husk-agent: DNS over TCP to {address}: {e}");
                }
            });
        if let Err(e) = spawned {
            eprintln!("husk-agent: DNS relay: {e}");
        }
    }
}

/// Copies a TCP client's connection to the host and back until both ends
/// closed.
fn relay_connection(address: IpAddr, client: TcpStream) -> io::Result<()> {
    let host = open_stream(DnsRelay::Tcp(address))?;
    let (mut client_r, mut host_w) = (client.try_clone()?, host.try_clone()?);
    let upstream = std::thread::spawn(move || {
        let _ = io::copy(&mut client_r, &mut host_w);
        let _ = host_w.shutdown(std::net::Shutdown::Write);
    });
    let (mut host_r, mut client_w) = (host, client);
    let _ = io::copy(&mut host_r, &mut client_w);
    let _ = client_w.shutdown(std::net::Shutdown::Write);
    let _ = upstream.join();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_given_back() {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let slots: Vec<Slot> = (0..MAX_IN_FLIGHT)
            .map_while(|_| take_slot(&in_flight))
            .collect();
        assert_eq!(slots.len(), MAX_IN_FLIGHT);
        assert!(take_slot(&in_flight).is_none());
        drop(slots);
        assert!(take_slot(&in_flight).is_some());
    }
}

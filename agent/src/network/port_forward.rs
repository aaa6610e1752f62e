//! Forwarded connections: the host opens a vsock stream to
//! [`PORT_FORWARD_PORT`], names a TCP port ([`PortForward`]), and the agent
//! splices the stream with a connection to `localhost:PORT` in the guest,
//! where the pod's containers (sharing the guest's network) listen. This is
//! how a CRI port-forward, which containerd dials in the pod's namespace on
//! the host, reaches a server in the VM.
//!
//! Trust: the host's. At most [`MAX_FORWARDS`] at once; a bad first line
//! closes the stream.

use std::io::{self, BufRead, BufReader, Read};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use husk_protocol::net::PortForward;
use husk_protocol::PORT_FORWARD_PORT;

use crate::vsock;

/// Forwarded connections served at once.
pub const MAX_FORWARDS: usize = 128;
/// Longest first line.
const MAX_LINE: u64 = 32;

/// Starts the listener thread.
pub fn start() -> Result<()> {
    let listener = vsock::listen(PORT_FORWARD_PORT)
        .with_context(|| format!("listening on vsock port {PORT_FORWARD_PORT}"))?;
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("port-forward".into())
        .spawn(move || loop {
            let stream = match listener.accept() {
                Ok(stream) => stream,
                Err(e) => {
                    eprintln!("husk-agent: accepting a forwarded connection: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            if active.fetch_add(1, Ordering::AcqRel) >= MAX_FORWARDS {
                active.fetch_sub(1, Ordering::AcqRel);
                continue;
            }
            let done = Arc::clone(&active);
            let spawned = std::thread::Builder::new()
                .name("forward".into())
                .spawn(move || {
                    if let Err(e) = forward(stream) {
                        eprintln!("husk-agent: port forward: {e}");
                    }
                    done.fetch_sub(1, Ordering::AcqRel);
                });
            if spawned.is_err() {
                active.fetch_sub(1, Ordering::AcqRel);
            }
        })?;
    Ok(())
}

/// Serves one forwarded stream.
fn forward(stream: UnixStream) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    (&mut reader).take(MAX_LINE).read_line(&mut line)?;
    let target = PortForward::parse(line.trim_end()).map_err(io::Error::other)?;
    stream.set_read_timeout(None)?;
    let tcp = match connect_localhost(target.port) {
        Ok(tcp) => tcp,
        Err(e) => {
            let _ = io::Write::write_all(&mut &stream, format!("error {e}\n").as_bytes());
            return Err(e);
        }
    };
    io::Write::write_all(&mut &stream, PortForward::CONNECTED.as_bytes())?;
    let (mut tcp_r, mut tcp_w) = (tcp.try_clone()?, tcp);
    let mut host_w = stream;
    let upstream = std::thread::spawn(move || {
        let _ = io::copy(&mut reader, &mut tcp_w);
        let _ = tcp_w.shutdown(std::net::Shutdown::Write);
    });
    let _ = io::copy(&mut tcp_r, &mut host_w);
    // All of the stream, not just our half: a vhost-user vsock backend
    // drops a guest's half-close, and the host would wait for it forever.
    // The server has said all it will say.
    let _ = host_w.shutdown(std::net::Shutdown::Both);
    let _ = upstream.join();
    Ok(())
}

/// `localhost:PORT`: IPv4 first, then IPv6, as a resolver would try them.
fn connect_localhost(port: u16) -> io::Result<TcpStream> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect(v4).or_else(|e4| {
        TcpStream::connect(SocketAddr::from((Ipv6Addr::LOCALHOST, port))).map_err(|_| e4)
    })
}

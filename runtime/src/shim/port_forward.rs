//! CRI port-forward into a pod's VM. containerd serves `kubectl
//! port-forward` by dialing `localhost:PORT` inside the pod's network
//! namespace on the host (shared/PODS.md); with the pod's interface
//! redirected into the VM nothing listens there, which is why it fails in
//! Kata. husk answers: a rule in the namespace's `nat OUTPUT` chain
//! redirects every TCP connection to 127.0.0.1 to one listener of the
//! shim's, which reads the port the client asked for (`SO_ORIGINAL_DST`)
//! and carries the connection over vsock to the agent, which connects to
//! `localhost:PORT` in the guest ([`husk_protocol::net::PortForward`]).
//!
//! Everything here runs in the pod's namespace: [`start`] is called from
//! the VM's keeper thread, which joined it (the `iptables` it runs and the
//! listener it binds are in that namespace too). The rule goes with the
//! namespace; [`Relay::stop`] removes it first.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use husk_protocol::net::PortForward;
use husk_protocol::PORT_FORWARD_PORT;

use crate::sandbox::instance::Sandbox;

/// Forwarded connections at once; more are refused.
pub const MAX_FORWARDS: usize = 128;

/// `SO_ORIGINAL_DST` (linux/netfilter_ipv4.h).
const SO_ORIGINAL_DST: libc::c_int = 80;

/// The listener and its rule.
pub struct Relay {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Relay {
    /// Removes the rule (from the namespace's thread) and ends the
    /// listener.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = iptables("-D", self.port);
        // Wakes the accept loop.
        let _ = TcpStream::connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port));
    }
}

/// Listens in the calling thread's namespace and redirects its localhost
/// TCP connections there.
pub fn start(sandbox: Arc<Sandbox>) -> io::Result<Relay> {
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
    let port = listener.local_addr()?.port();
    iptables("-A", port)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("port-forward".into())
        .spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                if active.fetch_add(1, Ordering::AcqRel) >= MAX_FORWARDS {
                    active.fetch_sub(1, Ordering::AcqRel);
                    continue;
                }
                let (sandbox, done) = (Arc::clone(&sandbox), Arc::clone(&active));
                let spawned = std::thread::Builder::new()
                    .name("forward".into())
                    .spawn(move || {
                        if let Err(e) = forward(&sandbox, client) {
                            containerd_shim::warn!("port forward: {e}");
                        }
                        done.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    active.fetch_sub(1, Ordering::AcqRel);
                }
            }
        })?;
    Ok(Relay { port, stop })
}

/// Adds (`-A`) or deletes (`-D`) the redirect of localhost TCP to `port`.
fn iptables(op: &str, port: u16) -> io::Result<()> {
    let port = port.to_string();
    let out = Command::new("iptables")
        .args([
            "-w",
            "-t",
            "nat",
            op,
            "OUTPUT",
            "-o",
            "lo",
            "-p",
            "tcp",
            "-d",
            "127.0.0.1",
        ])
        .args(["!", "--dport", &port, "-j", "REDIRECT", "--to-ports", &port])
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("running iptables: {e}")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "iptables {op} the port-forward redirect: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Carries one redirected connection to the guest; one the guest cannot
/// connect is reset, as a refused connection would be.
fn forward(sandbox: &Sandbox, client: TcpStream) -> io::Result<()> {
    let port = original_port(&client)?;
    let guest = sandbox
        .connect_guest(PORT_FORWARD_PORT)
        .and_then(|mut guest| {
            io::Write::write_all(&mut guest, PortForward { port }.line().as_bytes())?;
            let answer = read_line(&mut guest)?;
            if answer != PortForward::CONNECTED {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("localhost:{port} in the guest: {}", answer.trim_end()),
                ));
            }
            Ok(guest)
        });
    let guest = match guest {
        Ok(guest) => guest,
        Err(e) => {
            reset(&client);
            return Err(e);
        }
    };
    let (mut client_r, mut guest_w) = (client.try_clone()?, guest.try_clone()?);
    let upstream = std::thread::spawn(move || {
        let _ = io::copy(&mut client_r, &mut guest_w);
        let _ = guest_w.shutdown(std::net::Shutdown::Write);
    });
    let (mut guest_r, mut client_w) = (guest, client);
    let _ = io::copy(&mut guest_r, &mut client_w);
    let _ = client_w.shutdown(std::net::Shutdown::Write);
    let _ = upstream.join();
    Ok(())
}

/// One line of the agent's answer (byte by byte: the connection follows).
fn read_line(stream: &mut std::os::unix::net::UnixStream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 256 {
        if io::Read::read(stream, &mut byte)? == 0 {
            break;
        }
        line.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Closes `client` with a reset (SO_LINGER 0), as a refused connection.
fn reset(client: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads a linger struct of the size passed.
    unsafe {
        libc::setsockopt(
            client.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// The port a redirected connection was for.
fn original_port(client: &TcpStream) -> io::Result<u16> {
    // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `addr`.
    let rc = unsafe {
        libc::getsockopt(
            client.as_raw_fd(),
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u16::from_be(addr.sin_port))
}

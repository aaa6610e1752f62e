//! The host side of the network scenarios: servers and clients the tests
//! run in an engine's network namespace (the "host" of its containers), so
//! that no traffic leaves the namespaces the tests made. A socket belongs
//! to the namespace it was made in for good: each is made on a short-lived
//! thread that joined the namespace, then used from any thread.
//!
//! HTTP here is the least a busybox `wget`, busybox `httpd` and Python's
//! `http.server` need: HTTP/1.0, one request per connection, the body up
//! to the close.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::net::try_in_netns as in_netns;

/// How long one read or write on a connection may stall.
const STALL: Duration = Duration::from_secs(60);

/// A TCP listener on `addr` in `netns`.
pub fn listen(netns: &Path, addr: SocketAddr) -> Result<TcpListener, String> {
    in_netns(netns, move || TcpListener::bind(addr))
        .map_err(|e| format!("listening on {addr}: {e}"))
}

/// `GET path` from `addr`, dialled in `netns`: the body of a 200 answer.
pub fn http_get(netns: &Path, addr: SocketAddr, path: &str) -> Result<Vec<u8>, String> {
    let mut conn = in_netns(netns, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
    })
    .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let mut fetch = || -> io::Result<Vec<u8>> {
        conn.set_read_timeout(Some(STALL))?;
        conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer)?;
        Ok(answer)
    };
    let answer = fetch().map_err(|e| format!("GET http://{addr}{path}: {e}"))?;
    http_body(&answer).map_err(|e| format!("GET http://{addr}{path}: {e}"))
}

/// [`http_get`] until it succeeds or `timeout` passes (the server may be
/// starting); the last error then.
pub fn http_get_eventually(
    netns: &Path,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match http_get(netns, addr, path) {
            Ok(body) => return Ok(body),
            Err(e) if Instant::now() >= deadline => return Err(format!("after {timeout:?}: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// The body of an HTTP answer whose status is 200.
pub fn http_body(answer: &[u8]) -> Result<Vec<u8>, String> {
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {} bytes", answer.len()))?;
    let status = String::from_utf8_lossy(&answer[..end]);
    let status = status.lines().next().unwrap_or_default();
    match status.split_whitespace().nth(1) {
        Some("200") if status.starts_with("HTTP/1.") => Ok(answer[end + 4..].to_vec()),
        _ => Err(format!("the answer is {status:?}")),
    }
}

/// A connection a server accepted.
#[derive(Debug, Clone, Copy)]
pub struct Visit {
    /// The address the client dialled.
    pub local: SocketAddr,
    /// The client's address.
    pub peer: SocketAddr,
}

/// Accepts on `listener`, handing each connection to `serve`, until
/// `stop` is set and no connection waits; the visits.
fn accept_until(
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    mut serve: impl FnMut(TcpStream) -> io::Result<()>,
) -> io::Result<Vec<Visit>> {
    listener.set_nonblocking(true)?;
    let mut visits = Vec::new();
    loop {
        match listener.accept() {
            Ok((conn, peer)) => {
                visits.push(Visit {
                    local: conn.local_addr()?,
                    peer,
                });
                conn.set_nonblocking(false)?;
                conn.set_read_timeout(Some(STALL))?;
                conn.set_write_timeout(Some(STALL))?;
                // A client that gives up is its own failure, not ours.
                let _ = serve(conn);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if stop.load(Ordering::Relaxed) {
                    return Ok(visits);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

/// An HTTP server in a namespace that answers every request with the same
/// body, one connection at a time, until stopped.
pub struct HttpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<io::Result<Vec<Visit>>>,
}

impl HttpServer {
    /// Serves `body` on `addr` in `netns`.
    pub fn start(netns: &Path, addr: SocketAddr, body: Arc<Vec<u8>>) -> Result<HttpServer, String> {
        let listener = listen(netns, addr)?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            accept_until(listener, flag, |mut conn| {
                read_request(&mut conn)?;
                let head = format!(
                    "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\
                     Content-Length: {}\r\n\r\n",
                    body.len()
                );
                conn.write_all(head.as_bytes())?;
                conn.write_all(&body)
            })
        });
        Ok(HttpServer { addr, stop, thread })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the server; who came.
    pub fn stop(self) -> Result<Vec<Visit>, String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| "the server thread panicked".to_string())?
            .map_err(|e| format!("the server: {e}"))
    }
}

/// Reads a request up to the end of its headers.
fn read_request(conn: &mut TcpStream) -> io::Result<()> {
    let mut request = Vec::new();
    let mut byte = [0u8; 1];
    while !request.ends_with(b"\r\n\r\n") && !request.ends_with(b"\n\n") {
        if conn.read(&mut byte)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        request.push(byte[0]);
    }
    Ok(())
}

/// A listener in a namespace that writes what its clients send, each up
/// to its end of stream, to a file, until stopped.
pub struct Sink {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<io::Result<(usize, u64)>>,
}

impl Sink {
    /// Listens on `addr` in `netns`; the bytes go to `out`.
    pub fn start(netns: &Path, addr: SocketAddr, out: PathBuf) -> Result<Sink, String> {
        let listener = listen(netns, addr)?;
        let file = File::create(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut file = BufWriter::new(file);
            let mut copied = 0;
            let visits = accept_until(listener, flag, |mut conn| {
                copied += io::copy(&mut conn, &mut file)?;
                Ok(())
            })?;
            file.flush()?;
            Ok((visits.len(), copied))
        });
        Ok(Sink { stop, thread })
    }

    /// Stops listening once the clients that came are done; how many
    /// bytes came, or an error if no client came.
    pub fn finish(self) -> Result<u64, String> {
        self.stop.store(true, Ordering::Relaxed);
        let (clients, copied) = self
            .thread
            .join()
            .map_err(|_| "the sink thread panicked".to_string())?
            .map_err(|e| format!("the sink: {e}"))?;
        if clients == 0 {
            return Err("no client came to the sink".into());
        }
        Ok(copied)
    }
}

/// The global addresses of the interface `name` in `netns`, IPv4 first
/// (`ip -o addr show`).
pub fn interface_addresses(netns: &Path, name: &str) -> Result<Vec<IpAddr>, String> {
    let mut ip = Command::new("ip");
    ip.args(["-o", "addr", "show", "scope", "global", "dev", name]);
    super::daemon::enter_netns(&mut ip, netns)?;
    let out = super::run_ok(&mut ip, &format!("ip addr show dev {name}"))?;
    Ok(inet_addresses(&out.stdout))
}

/// The addresses after `inet` and `inet6` in `ip -o addr` output, IPv4
/// first.
pub fn inet_addresses(text: &str) -> Vec<IpAddr> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut found: Vec<IpAddr> = words
        .windows(2)
        .filter(|pair| pair[0] == "inet" || pair[0] == "inet6")
        .filter_map(|pair| pair[1].split('/').next()?.parse().ok())
        .collect();
    found.sort_by_key(IpAddr::is_ipv6);
    found
}

/// `len` pseudo-random bytes (xorshift64* from `seed`): the same for the
/// same seed, and nothing a compressor or a stuck byte could fake.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        bytes.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// The sha256 of `bytes` in hex (`sha256sum`).
pub fn sha256_hex(bytes: &[u8]) -> Result<String, String> {
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting sha256sum: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped");
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    writer
        .join()
        .map_err(|_| "the sha256sum writer panicked".to_string())?
        .map_err(|e| format!("feeding sha256sum: {e}"))?;
    first_word(&out.stdout)
}

/// The sha256 of the file at `path` in hex (`sha256sum`).
pub fn sha256_file(path: &Path) -> Result<String, String> {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .map_err(|e| format!("sha256sum {}: {e}", path.display()))?;
    first_word(&out.stdout)
}

fn first_word(out: &[u8]) -> Result<String, String> {
    String::from_utf8_lossy(out)
        .split_whitespace()
        .next()
        .map(str::to_owned)
        .ok_or_else(|| "sha256sum printed nothing".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_body_takes_what_follows_the_headers_of_a_200() {
        let answer = b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nbody\r\n\r\nmore";

        assert_eq!(http_body(answer).unwrap(), b"body\r\n\r\nmore");
    }

    #[test]
    fn http_body_refuses_other_statuses_and_cut_headers() {
        assert!(http_body(b"HTTP/1.0 404 Not Found\r\n\r\n").is_err());
        assert!(http_body(b"HTTP/1.0 200 OK\r\nServer").is_err());
        assert!(http_body(b"SSH-2.0\r\n\r\n").is_err());
    }

    #[test]
    fn inet_addresses_read_ip_addr_output_ipv4_first() {
        let out = "4: docker0    inet6 fd00::1/64 scope global \\       valid_lft forever\n\
                   4: docker0    inet 172.17.0.1/16 brd 172.17.255.255 scope global docker0\n";

        assert_eq!(
            inet_addresses(out),
            [
                "172.17.0.1".parse::<IpAddr>().unwrap(),
                "fd00::1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn random_bytes_repeat_per_seed_and_differ_between_seeds() {
        let a = random_bytes(1, 1001);

        assert_eq!(a.len(), 1001);
        assert_eq!(a, random_bytes(1, 1001));
        assert_ne!(a, random_bytes(2, 1001));
        assert!(a.iter().filter(|&&b| b == 0).count() < 50);
    }

    #[test]
    fn sha256_of_bytes_and_of_a_file_agree() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        std::fs::write(&path, b"abc").unwrap();

        let hex = sha256_hex(b"abc").unwrap();

        assert_eq!(
            hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(sha256_file(&path).unwrap(), hex);
    }

    #[test]
    fn the_server_answers_the_client_and_records_the_visit() {
        if crate::engines::effective_uid().unwrap() != 0 {
            crate::skip!("joining a network namespace needs root");
        }
        // This process's own namespace: nothing leaves loopback.
        let netns = Path::new("/proc/self/ns/net");
        let body = Arc::new(b"hi".to_vec());
        let server = HttpServer::start(netns, "127.0.0.1:0".parse().unwrap(), body).unwrap();

        let got = http_get(netns, server.addr(), "/x").unwrap();

        assert_eq!(got, b"hi");
        let addr = server.addr();
        let visits = server.stop().unwrap();
        assert_eq!(visits.len(), 1);
        assert_eq!(visits[0].local, addr);
        assert!(visits[0].peer.ip().is_loopback());
    }

    #[test]
    fn the_sink_keeps_what_a_client_sent_up_to_its_end_of_stream() {
        if crate::engines::effective_uid().unwrap() != 0 {
            crate::skip!("joining a network namespace needs root");
        }
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("got");
        let netns = Path::new("/proc/self/ns/net");
        let listener = listen(netns, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let sink = Sink::start(netns, addr, out.clone()).unwrap();
        let sent = random_bytes(9, 300_000);

        let mut client = TcpStream::connect(addr).unwrap();
        client.write_all(&sent).unwrap();
        drop(client);

        assert_eq!(sink.finish().unwrap(), sent.len() as u64);
        assert_eq!(std::fs::read(&out).unwrap(), sent);
    }

    #[test]
    fn a_sink_no_client_came_to_says_so() {
        if crate::engines::effective_uid().unwrap() != 0 {
            crate::skip!("joining a network namespace needs root");
        }
        let tmp = tempfile::tempdir().unwrap();
        let netns = Path::new("/proc/self/ns/net");
        let sink = Sink::start(netns, "127.0.0.1:0".parse().unwrap(), tmp.path().join("o"));

        let error = sink.unwrap().finish().unwrap_err();

        assert!(error.contains("no client"), "{error}");
    }
}

//! The host side of vsock: the base Unix socket for host-initiated
//! connections, `<uds>_<port>` for guest-initiated ones, and the table of
//! live connections. Packets from the guest come in through
//! [`Muxer::on_guest_packet`]; packets for the guest go out through
//! [`Muxer::next_packet`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vmm_sys_util::epoll::EventSet;

use super::connection::{Connection, ResetReason};
use super::packet::{Header, Op, TYPE_STREAM};
use super::{VsockError, FIRST_LOCAL_PORT, HOST_CID, MAX_CONNECTIONS};
use crate::devices::virtio::worker::Poller;

/// Epoll tokens from here up are host streams (`token - STREAM_TOKEN_BASE`
/// is the descriptor).
pub const STREAM_TOKEN_BASE: u64 = 16;
/// Longest `CONNECT <port>\n` line accepted.
const MAX_CONNECT_LINE: usize = 32;

type Key = (u32, u32);

/// All connections of one vsock device.
pub struct Muxer {
    guest_cid: u64,
    uds: PathBuf,
    listener: UnixListener,
    conns: BTreeMap<Key, Connection>,
    by_fd: HashMap<RawFd, Key>,
    handshakes: HashMap<RawFd, UnixStream>,
    resets: VecDeque<Header>,
    next_local_port: u32,
    rx_cursor: Option<Key>,
}

impl Muxer {
    /// Binds the base socket `uds` (removing a stale one) for guest `guest_cid`.
    pub fn bind(uds: &Path, guest_cid: u64) -> Result<Muxer, VsockError> {
        let bind = || -> io::Result<UnixListener> {
            match std::fs::remove_file(uds) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let listener = UnixListener::bind(uds)?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        };
        let listener = bind().map_err(|source| VsockError::Bind {
            path: uds.to_path_buf(),
            source,
        })?;
        Ok(Muxer {
            guest_cid,
            uds: uds.to_path_buf(),
            listener,
            conns: BTreeMap::new(),
            by_fd: HashMap::new(),
            handshakes: HashMap::new(),
            resets: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            rx_cursor: None,
        })
    }

    /// The base socket's descriptor.
    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Drops every connection (device reset): their host streams close.
    pub fn clear(&mut self, poller: Option<&Poller>) {
        for fd in self.by_fd.keys().chain(self.handshakes.keys()) {
            if let Some(poller) = poller {
                let _ = poller.remove(*fd);
            }
        }
        self.conns.clear();
        self.by_fd.clear();
        self.handshakes.clear();
        self.resets.clear();
        self.rx_cursor = None;
    }

    /// Accepts host programs connecting to the base socket.
    pub fn accept(&mut self, poller: &Poller) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    // Edge-triggered: a partial line is peeked, not read,
                    // so level-triggered it would be reported ready forever.
                    let events = EventSet::IN | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
                    if poller
                        .add(fd, STREAM_TOKEN_BASE + fd as u64, events)
                        .is_ok()
                    {
                        self.handshakes.insert(fd, stream);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }

    /// Readiness of a host stream (a handshake or a connection).
    pub fn on_stream_event(&mut self, poller: &Poller, fd: RawFd, events: EventSet) {
        if self.handshakes.contains_key(&fd) {
            self.on_handshake(poller, fd, events);
            return;
        }
        let Some(conn) = self.by_fd.get(&fd).and_then(|key| self.conns.get_mut(key)) else {
            return;
        };
        if events.intersects(EventSet::OUT | EventSet::ERROR | EventSet::HANG_UP) {
            conn.on_writable();
        }
        if events.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP) {
            conn.on_readable();
        }
    }

    fn on_handshake(&mut self, poller: &Poller, fd: RawFd, events: EventSet) {
        if !self.handshakes.contains_key(&fd) {
            return;
        }
        let hung_up = events.intersects(EventSet::READ_HANG_UP | EventSet::HANG_UP);
        let mut line = [0u8; MAX_CONNECT_LINE];
        // SAFETY: `line` is valid for writes of its length; `fd` is the
        // stream's open descriptor.
        let peeked =
            unsafe { libc::recv(fd, line.as_mut_ptr().cast(), line.len(), libc::MSG_PEEK) };
        let outcome = match peeked {
            n if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock => return,
            n if n <= 0 => Err(()),
            n => match line[..n as usize].iter().position(|b| *b == b'\n') {
                Some(end) => parse_connect(&line[..end])
                    .ok_or(())
                    .map(|port| (port, end + 1)),
                // The rest of the line may come, unless the client hung up.
                None if (n as usize) < MAX_CONNECT_LINE && !hung_up => return,
                None => Err(()),
            },
        };
        let stream = self.handshakes.remove(&fd).expect("checked above");
        let _ = poller.remove(fd);
        let Ok((peer_port, line_len)) = outcome else {
            return; // dropping the stream closes it
        };
        let mut consumed = vec![0u8; line_len];
        if io::Read::read_exact(&mut &stream, &mut consumed).is_err()
            || self.conns.len() >= MAX_CONNECTIONS
        {
            return;
        }
        let local_port = self.allocate_local_port(peer_port);
        let conn = Connection::requested(stream, self.guest_cid, local_port, peer_port);
        self.insert(poller, conn);
    }

    fn allocate_local_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(port, peer_port)) {
                return port;
            }
        }
    }

    fn insert(&mut self, poller: &Poller, conn: Connection) {
        let fd = conn.stream().as_raw_fd();
        let events =
            EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        if poller
            .add(fd, STREAM_TOKEN_BASE + fd as u64, events)
            .is_err()
        {
            return;
        }
        let key = (conn.local_port, conn.peer_port);
        self.by_fd.insert(fd, key);
        self.conns.insert(key, conn);
    }

    fn reset_unknown(&mut self, header: &Header) {
        if header.operation() == Some(Op::Rst) || self.resets.len() >= MAX_CONNECTIONS {
            return;
        }
        self.resets.push_back(Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: header.dst_port,
            dst_port: header.src_port,
            kind: TYPE_STREAM,
            op: Op::Rst as u16,
            ..Header::default()
        });
    }

    /// Handles one packet from the guest.
    pub fn on_guest_packet(&mut self, poller: &Poller, header: &Header, payload: &[u8]) {
        if header.src_cid != self.guest_cid || header.dst_cid != HOST_CID {
            return; // not ours to answer: drop it
        }
        let key = (header.dst_port, header.src_port);
        if header.kind != TYPE_STREAM {
            return self.reset_unknown(header);
        }
        if header.operation() == Some(Op::Request) {
            if self.conns.get(&key).is_some_and(Connection::is_done) {
                // Reset earlier in this batch, not swept yet.
                self.remove(poller, key);
            }
            if self.conns.contains_key(&key) || self.conns.len() >= MAX_CONNECTIONS {
                return self.reset_unknown(header);
            }
            match connect_nonblocking(&self.port_path(header.dst_port)) {
                Ok(stream) => {
                    let conn = Connection::accepted(stream, self.guest_cid, header);
                    self.insert(poller, conn);
                }
                Err(_) => self.reset_unknown(header),
            }
            return;
        }
        match self.conns.get_mut(&key) {
            Some(conn) => conn.on_packet(header, payload),
            None => self.reset_unknown(header),
        }
    }

    /// A packet whose length does not match its buffers: the connection
    /// (if any) is reset.
    pub fn on_malformed(&mut self, header: &Header) {
        if header.src_cid != self.guest_cid || header.dst_cid != HOST_CID {
            return; // not ours to answer, as in `on_guest_packet`
        }
        let key = (header.dst_port, header.src_port);
        match self.conns.get_mut(&key) {
            Some(conn) => conn.reset(ResetReason::Protocol),
            None => self.reset_unknown(header),
        }
    }

    fn port_path(&self, port: u32) -> PathBuf {
        let mut path = OsString::from(self.uds.as_os_str());
        path.push(format!("_{port}"));
        PathBuf::from(path)
    }

    /// Whether a packet for the guest is waiting.
    pub fn has_packet(&self) -> bool {
        !self.resets.is_empty() || self.conns.values().any(Connection::wants_rx)
    }

    /// The next packet for the guest (payload of at most `room` bytes into
    /// `payload`), round-robin over connections. Connections that are over
    /// are dropped here.
    pub fn next_packet(
        &mut self,
        poller: &Poller,
        room: usize,
        payload: &mut Vec<u8>,
    ) -> Option<Header> {
        payload.clear();
        if let Some(reset) = self.resets.pop_front() {
            return Some(reset);
        }
        let keys: Vec<Key> = match self.rx_cursor {
            Some(cursor) => {
                let after = self.conns.range((
                    std::ops::Bound::Excluded(cursor),
                    std::ops::Bound::Unbounded,
                ));
                let before = self.conns.range(..=cursor);
                after.chain(before).map(|(k, _)| *k).collect()
            }
            None => self.conns.keys().copied().collect(),
        };
        let mut found = None;
        for key in keys {
            let conn = self.conns.get_mut(&key).expect("key from the map");
            let packet = if conn.wants_rx() {
                conn.next_packet(room, payload)
            } else {
                None
            };
            if conn.is_done() {
                self.remove(poller, key);
            }
            if packet.is_some() {
                self.rx_cursor = Some(key);
                found = packet;
                break;
            }
        }
        found
    }

    fn remove(&mut self, poller: &Poller, key: Key) {
        if let Some(conn) = self.conns.remove(&key) {
            let fd = conn.stream().as_raw_fd();
            let _ = poller.remove(fd);
            self.by_fd.remove(&fd);
        }
    }

    /// Drops connections that ended without owing anything.
    pub fn sweep(&mut self, poller: &Poller) {
        let done: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.is_done())
            .map(|(k, _)| *k)
            .collect();
        for key in done {
            self.remove(poller, key);
        }
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds);
    }
}

/// Parses `CONNECT <port>` (without the newline).
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let port = line.strip_prefix("CONNECT ")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

/// Connects to a Unix socket without blocking: a listener whose backlog is
/// full refuses instead of stalling the device.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all zeros is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain socket(2) call.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket(2) returned a new descriptor we own.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `addr` is a valid sockaddr_un and its size is passed.
    let rc = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

#[cfg(test)]
mod tests;

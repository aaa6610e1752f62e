//! One vsock stream between a guest socket and a host Unix stream: its
//! state, both directions' credit, half-close, and the packets it owes the
//! guest.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use super::packet::{Header, Op, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::{CONN_BUFFER, HOST_CID, MAX_PAYLOAD};

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: the request is (about to be) sent, no answer yet.
    Connecting,
    /// Both sides may send.
    Established,
    /// Reset: sent or received; the connection is dropped once the reset
    /// went out.
    Closed,
}

/// Why a connection must be reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// The guest sent more than the credit we gave.
    CreditExceeded,
    /// The guest sent something that makes no sense in this state.
    Protocol,
    /// The host stream failed.
    Stream,
}

/// One connection.
pub struct Connection {
    stream: UnixStream,
    guest_cid: u64,
    /// The host-side port.
    pub local_port: u32,
    /// The guest-side port.
    pub peer_port: u32,
    state: State,
    // Control packets owed to the guest.
    owe_request: bool,
    owe_response: bool,
    owe_rst: bool,
    owe_shutdown: u32,
    owe_credit_update: bool,
    owe_credit_request: bool,
    // Guest -> host.
    to_stream: VecDeque<u8>,
    /// Leading bytes of `to_stream` that are ours (the `OK` line), not the
    /// guest's, so not counted in `fwd_cnt`.
    preamble: usize,
    fwd_cnt: Wrapping<u32>,
    fwd_cnt_sent: Wrapping<u32>,
    peer_shut_send: bool,
    stream_write_shut: bool,
    // Host -> guest.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    rx_cnt: Wrapping<u32>,
    peer_shut_rcv: bool,
    readable: bool,
    local_eof: bool,
    credit_requested: bool,
}

impl Connection {
    fn new(stream: UnixStream, guest_cid: u64, local_port: u32, peer_port: u32) -> Self {
        Connection {
            stream,
            guest_cid,
            local_port,
            peer_port,
            state: State::Established,
            owe_request: false,
            owe_response: false,
            owe_rst: false,
            owe_shutdown: 0,
            owe_credit_update: false,
            owe_credit_request: false,
            to_stream: VecDeque::new(),
            preamble: 0,
            fwd_cnt: Wrapping(0),
            fwd_cnt_sent: Wrapping(0),
            peer_shut_send: false,
            stream_write_shut: false,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            peer_shut_rcv: false,
            readable: true,
            local_eof: false,
            credit_requested: false,
        }
    }

    /// A connection the guest asked for with `request`, now connected to a
    /// host listener: owes the guest a response.
    pub fn accepted(stream: UnixStream, guest_cid: u64, request: &Header) -> Self {
        let mut conn = Connection::new(stream, guest_cid, request.dst_port, request.src_port);
        conn.update_peer_credit(request);
        conn.owe_response = true;
        conn
    }

    /// A connection a host program asked for (`CONNECT <peer_port>`): owes
    /// the guest a request.
    pub fn requested(stream: UnixStream, guest_cid: u64, local_port: u32, peer_port: u32) -> Self {
        let mut conn = Connection::new(stream, guest_cid, local_port, peer_port);
        conn.state = State::Connecting;
        conn.owe_request = true;
        conn
    }

    /// The host stream.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// The state.
    pub fn state(&self) -> State {
        self.state
    }

    fn update_peer_credit(&mut self, header: &Header) {
        self.peer_buf_alloc = header.buf_alloc;
        self.peer_fwd_cnt = Wrapping(header.fwd_cnt);
        // Ask again only once the guest made room: Linux answers every
        // request with an update, even one still without room.
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
    }

    /// Bytes the guest has room for.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Marks the connection for reset.
    pub fn reset(&mut self, reason: ResetReason) {
        if self.state != State::Closed {
            if reason != ResetReason::Stream {
                eprintln!(
                    "husk-vmm: vsock: resetting {}:{} ({reason:?})",
                    self.peer_port, self.local_port
                );
            }
            self.state = State::Closed;
            self.owe_rst = true;
        }
    }

    /// Handles a packet from the guest (the muxer routed it here).
    pub fn on_packet(&mut self, header: &Header, payload: &[u8]) {
        if self.state == State::Closed {
            return;
        }
        self.update_peer_credit(header);
        match header.operation() {
            Some(Op::Response) if self.state == State::Connecting => {
                self.state = State::Established;
                let ok = format!("OK {}\n", self.local_port);
                self.preamble += ok.len();
                self.to_stream.extend(ok.as_bytes());
                self.flush();
            }
            Some(Op::Rw) if self.state == State::Established && !self.peer_shut_send => {
                let buffered = self.to_stream.len() - self.preamble;
                if buffered + payload.len() > CONN_BUFFER as usize {
                    return self.reset(ResetReason::CreditExceeded);
                }
                self.to_stream.extend(payload);
                self.flush();
            }
            Some(Op::Shutdown) if self.state == State::Established => {
                self.peer_shut_rcv |= header.flags & SHUTDOWN_RCV != 0;
                self.peer_shut_send |= header.flags & SHUTDOWN_SEND != 0;
                self.flush();
            }
            Some(Op::CreditUpdate) => {}
            Some(Op::CreditRequest) => self.owe_credit_update = true,
            Some(Op::Rst) => {
                self.state = State::Closed;
                self.owe_rst = false;
            }
            _ => self.reset(ResetReason::Protocol),
        }
    }

    /// The host stream became writable: writes what the guest sent.
    pub fn on_writable(&mut self) {
        self.flush();
    }

    /// The host stream became readable.
    pub fn on_readable(&mut self) {
        self.readable = true;
    }

    fn flush(&mut self) {
        while !self.to_stream.is_empty() {
            let (front, _) = self.to_stream.as_slices();
            match self.stream.write(front) {
                Ok(0) => return self.reset(ResetReason::Stream),
                Ok(n) => {
                    self.to_stream.drain(..n);
                    let ours = n.min(self.preamble);
                    self.preamble -= ours;
                    self.fwd_cnt += (n - ours) as u32;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.reset(ResetReason::Stream),
            }
        }
        if (self.fwd_cnt - self.fwd_cnt_sent).0 >= CONN_BUFFER / 4 {
            self.owe_credit_update = true;
        }
        if self.to_stream.is_empty() && self.peer_shut_send && !self.stream_write_shut {
            self.stream_write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        if self.to_stream.is_empty() && self.peer_shut_send && self.peer_shut_rcv {
            // The guest closed its socket: it waits for our reset.
            self.state = State::Closed;
            self.owe_rst = true;
        }
    }

    fn may_send_data(&self) -> bool {
        self.state == State::Established
            && self.readable
            && !self.local_eof
            && !self.peer_shut_rcv
            && self.owe_shutdown & SHUTDOWN_SEND == 0
    }

    /// Whether the connection has a packet for the guest.
    pub fn wants_rx(&self) -> bool {
        self.owe_rst
            || (self.state != State::Closed
                && (self.owe_request
                    || self.owe_response
                    || self.owe_shutdown != 0
                    || self.owe_credit_update
                    || self.owe_credit_request
                    || (self.may_send_data()
                        && (self.peer_credit() > 0 || !self.credit_requested))))
    }

    /// Whether the connection is over and its reset went out.
    pub fn is_done(&self) -> bool {
        self.state == State::Closed && !self.owe_rst
    }

    fn header(&mut self, op: Op) -> Header {
        self.fwd_cnt_sent = self.fwd_cnt;
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: 0,
            kind: TYPE_STREAM,
            op: op as u16,
            flags: 0,
            buf_alloc: CONN_BUFFER,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// The next packet for the guest, with its payload (at most `room`
    /// bytes) in `payload`. Control packets come before data.
    pub fn next_packet(&mut self, room: usize, payload: &mut Vec<u8>) -> Option<Header> {
        payload.clear();
        if self.owe_rst {
            self.owe_rst = false;
            return Some(self.header(Op::Rst));
        }
        if self.state == State::Closed {
            return None;
        }
        if self.owe_request {
            self.owe_request = false;
            return Some(self.header(Op::Request));
        }
        if self.owe_response {
            self.owe_response = false;
            return Some(self.header(Op::Response));
        }
        if self.may_send_data() {
            if let Some(header) = self.read_data(room, payload) {
                return Some(header);
            }
        }
        if self.owe_shutdown != 0 {
            let mut header = self.header(Op::Shutdown);
            header.flags = std::mem::take(&mut self.owe_shutdown);
            return Some(header);
        }
        if self.owe_credit_update {
            self.owe_credit_update = false;
            return Some(self.header(Op::CreditUpdate));
        }
        if self.owe_credit_request {
            self.owe_credit_request = false;
            return Some(self.header(Op::CreditRequest));
        }
        None
    }

    fn read_data(&mut self, room: usize, payload: &mut Vec<u8>) -> Option<Header> {
        let credit = self.peer_credit() as usize;
        if credit == 0 {
            if !self.credit_requested {
                self.credit_requested = true;
                self.owe_credit_request = true;
            }
            return None;
        }
        let want = room.min(credit).min(MAX_PAYLOAD as usize);
        if want == 0 {
            return None;
        }
        payload.resize(want, 0);
        loop {
            match self.stream.read(payload) {
                Ok(0) => {
                    payload.clear();
                    self.local_eof = true;
                    self.owe_shutdown |= SHUTDOWN_SEND;
                    return None;
                }
                Ok(n) => {
                    payload.truncate(n);
                    self.rx_cnt += n as u32;
                    let mut header = self.header(Op::Rw);
                    header.len = n as u32;
                    return Some(header);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    payload.clear();
                    if e.kind() == io::ErrorKind::WouldBlock {
                        self.readable = false;
                    } else {
                        self.reset(ResetReason::Stream);
                    }
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

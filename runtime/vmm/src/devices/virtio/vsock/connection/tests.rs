use std::time::Duration;

use super::*;
use crate::devices::virtio::test_utils::{guest_header, GUEST_CID};
use crate::devices::virtio::vsock::FIRST_LOCAL_PORT;

const GUEST_PORT: u32 = 49152;
const HOST_PORT: u32 = 1024;

/// The device's end (non-blocking, as the muxer makes it) and the host
/// program's end (blocking, with a timeout so a missing byte fails the test
/// instead of hanging it).
fn stream_pair() -> (UnixStream, UnixStream) {
    let (device, host) = UnixStream::pair().unwrap();
    device.set_nonblocking(true).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (device, host)
}

fn from_guest(op: Op) -> Header {
    guest_header(op, GUEST_PORT, HOST_PORT)
}

fn rw(payload: &[u8]) -> Header {
    Header {
        len: payload.len() as u32,
        ..from_guest(Op::Rw)
    }
}

fn shutdown(flags: u32) -> Header {
    Header {
        flags,
        ..from_guest(Op::Shutdown)
    }
}

/// A guest-initiated connection whose response went out, the guest
/// advertising `buf_alloc`.
fn established(buf_alloc: u32) -> (Connection, UnixStream) {
    let (device, host) = stream_pair();
    let request = Header {
        buf_alloc,
        ..from_guest(Op::Request)
    };
    let mut conn = Connection::accepted(device, GUEST_CID, &request);
    let response = conn.next_packet(MAX_PAYLOAD as usize, &mut Vec::new());
    assert_eq!(response.and_then(|h| h.operation()), Some(Op::Response));
    (conn, host)
}

/// Every packet the connection has for the guest, given `room` per buffer.
fn drain(conn: &mut Connection, room: usize) -> Vec<(Header, Vec<u8>)> {
    let mut packets = Vec::new();
    let mut payload = Vec::new();
    while conn.wants_rx() {
        match conn.next_packet(room, &mut payload) {
            Some(header) => packets.push((header, payload.clone())),
            None => break,
        }
    }
    packets
}

fn ops(packets: &[(Header, Vec<u8>)]) -> Vec<Op> {
    packets.iter().filter_map(|(h, _)| h.operation()).collect()
}

fn read_exactly(host: &mut UnixStream, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    host.read_exact(&mut bytes).unwrap();
    bytes
}

fn assert_eof(host: &mut UnixStream) {
    let mut byte = [0u8; 1];
    assert_eq!(host.read(&mut byte).unwrap(), 0, "expected end of stream");
}

#[test]
fn an_accepted_connection_answers_the_request_with_our_credit() {
    let (device, _host) = stream_pair();
    let mut conn = Connection::accepted(device, GUEST_CID, &from_guest(Op::Request));

    let response = conn.next_packet(4096, &mut Vec::new()).unwrap();

    assert_eq!(conn.state(), State::Established);
    assert_eq!(
        response,
        Header {
            src_cid: HOST_CID,
            dst_cid: GUEST_CID,
            src_port: HOST_PORT,
            dst_port: GUEST_PORT,
            len: 0,
            kind: TYPE_STREAM,
            op: Op::Response as u16,
            flags: 0,
            buf_alloc: CONN_BUFFER,
            fwd_cnt: 0,
        }
    );
    assert!(drain(&mut conn, 4096).is_empty(), "nothing to send yet");
    assert!(!conn.wants_rx());
}

#[test]
fn a_requested_connection_asks_the_guest_and_writes_ok_once_answered() {
    let (device, mut host) = stream_pair();
    let mut conn = Connection::requested(device, GUEST_CID, FIRST_LOCAL_PORT, 5000);

    let request = conn.next_packet(4096, &mut Vec::new()).unwrap();
    let state_before = conn.state();
    conn.on_packet(&guest_header(Op::Response, 5000, FIRST_LOCAL_PORT), &[]);

    assert_eq!(request.operation(), Some(Op::Request));
    assert_eq!(
        (request.src_port, request.dst_port),
        (FIRST_LOCAL_PORT, 5000)
    );
    assert_eq!(state_before, State::Connecting);
    assert_eq!(conn.state(), State::Established);
    let ok = format!("OK {FIRST_LOCAL_PORT}\n");
    assert_eq!(read_exactly(&mut host, ok.len()), ok.as_bytes());
}

#[test]
fn host_data_waits_until_the_guest_accepts() {
    let (device, mut host) = stream_pair();
    let mut conn = Connection::requested(device, GUEST_CID, FIRST_LOCAL_PORT, 5000);
    host.write_all(b"early").unwrap();

    let before = drain(&mut conn, 4096);
    conn.on_packet(&guest_header(Op::Response, 5000, FIRST_LOCAL_PORT), &[]);
    let after = drain(&mut conn, 4096);

    assert_eq!(ops(&before), vec![Op::Request]);
    assert_eq!(ops(&after), vec![Op::Rw]);
    assert_eq!(after[0].1, b"early");
}

#[test]
fn the_ok_line_is_not_counted_as_consumed_guest_data() {
    let (device, mut host) = stream_pair();
    let mut conn = Connection::requested(device, GUEST_CID, FIRST_LOCAL_PORT, 5000);
    drain(&mut conn, 4096);
    conn.on_packet(&guest_header(Op::Response, 5000, FIRST_LOCAL_PORT), &[]);
    let data = b"0123456789";

    conn.on_packet(
        &Header {
            len: 10,
            ..guest_header(Op::Rw, 5000, FIRST_LOCAL_PORT)
        },
        data,
    );
    conn.on_packet(
        &guest_header(Op::CreditRequest, 5000, FIRST_LOCAL_PORT),
        &[],
    );
    let packets = drain(&mut conn, 4096);

    assert_eq!(ops(&packets), vec![Op::CreditUpdate]);
    assert_eq!(packets[0].0.fwd_cnt, 10);
    let ok = format!("OK {FIRST_LOCAL_PORT}\n");
    let written = read_exactly(&mut host, ok.len() + data.len());
    assert_eq!(&written[ok.len()..], data);
}

#[test]
fn guest_data_reaches_the_host_stream() {
    let (mut conn, mut host) = established(CONN_BUFFER);

    conn.on_packet(&rw(b"hello"), b"hello");
    conn.on_packet(&rw(b" world"), b" world");

    assert_eq!(read_exactly(&mut host, 11), b"hello world");
    assert_eq!(conn.state(), State::Established);
}

#[test]
fn host_data_is_cut_to_the_room_of_the_guest_buffer() {
    let (mut conn, mut host) = established(CONN_BUFFER);
    host.write_all(&[7u8; 10_000]).unwrap();
    conn.on_readable();

    let packets = drain(&mut conn, 4096);

    let lens: Vec<u32> = packets.iter().map(|(h, _)| h.len).collect();
    assert_eq!(lens, vec![4096, 4096, 1808]);
    assert!(packets
        .iter()
        .all(|(h, p)| p.len() == h.len as usize && h.op == Op::Rw as u16));
}

#[test]
fn host_data_is_cut_to_the_largest_payload() {
    let (mut conn, host) = established(CONN_BUFFER);
    let writer = std::thread::spawn(move || {
        let mut host = host;
        host.write_all(&vec![1u8; 3 * MAX_PAYLOAD as usize])
            .unwrap();
        host
    });
    let _host = writer.join().unwrap();
    conn.on_readable();

    let packets = drain(&mut conn, usize::MAX);

    assert!(packets.iter().all(|(h, _)| h.len <= MAX_PAYLOAD));
    let total: usize = packets.iter().map(|(_, p)| p.len()).sum();
    assert_eq!(total, 3 * MAX_PAYLOAD as usize);
}

#[test]
fn data_to_the_guest_stops_at_its_credit_and_asks_for_more_once() {
    let (mut conn, mut host) = established(1000);
    host.write_all(&[9u8; 5000]).unwrap();
    conn.on_readable();

    let packets = drain(&mut conn, 4096);

    let sent: usize = packets.iter().map(|(_, p)| p.len()).sum();
    assert_eq!(sent, 1000);
    assert_eq!(ops(&packets), vec![Op::Rw, Op::CreditRequest]);
    assert_eq!(conn.peer_credit(), 0);
    assert!(!conn.wants_rx());
}

#[test]
fn a_credit_update_from_the_guest_lets_more_data_through() {
    let (mut conn, mut host) = established(1000);
    host.write_all(&[9u8; 5000]).unwrap();
    conn.on_readable();
    drain(&mut conn, 4096);

    conn.on_packet(
        &Header {
            buf_alloc: 1000,
            fwd_cnt: 600,
            ..from_guest(Op::CreditUpdate)
        },
        &[],
    );
    let packets = drain(&mut conn, 4096);

    assert_eq!(packets[0].0.op, Op::Rw as u16);
    assert_eq!(packets[0].1.len(), 600);
}

#[test]
fn a_guest_that_answers_a_credit_request_without_room_is_not_asked_again() {
    let (mut conn, mut host) = established(1000);
    host.write_all(&[9u8; 5000]).unwrap();
    conn.on_readable();
    drain(&mut conn, 4096);

    // Linux answers every CREDIT_REQUEST with a CREDIT_UPDATE, even when its
    // reader has not made room: asking again would ping-pong forever.
    let mut requests = 0;
    for _ in 0..3 {
        conn.on_packet(
            &Header {
                buf_alloc: 1000,
                fwd_cnt: 0,
                ..from_guest(Op::CreditUpdate)
            },
            &[],
        );
        requests += drain(&mut conn, 4096).len();
    }

    assert_eq!(requests, 0);
    assert!(!conn.wants_rx());
}

#[test]
fn a_credit_request_from_the_guest_is_answered_with_an_update() {
    let (mut conn, _host) = established(CONN_BUFFER);

    conn.on_packet(&from_guest(Op::CreditRequest), &[]);
    let packets = drain(&mut conn, 4096);

    assert_eq!(ops(&packets), vec![Op::CreditUpdate]);
    assert_eq!(packets[0].0.buf_alloc, CONN_BUFFER);
}

#[test]
fn forwarding_a_quarter_of_our_buffer_sends_a_credit_update() {
    let (mut conn, mut host) = established(CONN_BUFFER);
    let chunk = vec![5u8; 16 << 10];
    let quarter = (CONN_BUFFER / 4) as usize;

    let mut updates_early = 0;
    for _ in 0..quarter / chunk.len() - 1 {
        conn.on_packet(&rw(&chunk), &chunk);
        updates_early += drain(&mut conn, 4096).len();
    }
    conn.on_packet(&rw(&chunk), &chunk);
    let packets = drain(&mut conn, 4096);

    assert_eq!(updates_early, 0);
    assert_eq!(ops(&packets), vec![Op::CreditUpdate]);
    assert_eq!(packets[0].0.fwd_cnt as usize, quarter);
    assert_eq!(read_exactly(&mut host, quarter).len(), quarter);
}

#[test]
fn a_guest_sending_beyond_our_buffer_is_reset() {
    let (mut conn, _host) = established(CONN_BUFFER);
    let chunk = vec![1u8; MAX_PAYLOAD as usize];

    // The host never reads: the socket fills, then our buffer.
    let mut buffered_at_reset = None;
    for _ in 0..64 {
        let buffered = conn.to_stream.len() - conn.preamble;
        conn.on_packet(&rw(&chunk), &chunk);
        if conn.state() == State::Closed {
            buffered_at_reset = Some(buffered);
            break;
        }
    }
    let packets = drain(&mut conn, 4096);

    let buffered = buffered_at_reset.expect("the connection was reset");
    assert!(buffered <= CONN_BUFFER as usize);
    assert!(
        buffered + chunk.len() > CONN_BUFFER as usize,
        "reset within credit"
    );
    assert_eq!(ops(&packets), vec![Op::Rst]);
    assert!(conn.is_done());
}

#[test]
fn guest_shutdown_send_gives_the_host_eof_after_the_data() {
    let (mut conn, mut host) = established(CONN_BUFFER);

    conn.on_packet(&rw(b"last"), b"last");
    conn.on_packet(&shutdown(SHUTDOWN_SEND), &[]);

    assert_eq!(read_exactly(&mut host, 4), b"last");
    assert_eof(&mut host);
    assert_eq!(conn.state(), State::Established);
}

#[test]
fn after_guest_shutdown_send_the_host_can_still_write() {
    let (mut conn, mut host) = established(CONN_BUFFER);
    conn.on_packet(&shutdown(SHUTDOWN_SEND), &[]);

    host.write_all(b"reply").unwrap();
    conn.on_readable();
    let packets = drain(&mut conn, 4096);

    assert_eq!(ops(&packets), vec![Op::Rw]);
    assert_eq!(packets[0].1, b"reply");
}

#[test]
fn guest_data_after_its_shutdown_send_resets() {
    let (mut conn, _host) = established(CONN_BUFFER);
    conn.on_packet(&shutdown(SHUTDOWN_SEND), &[]);

    conn.on_packet(&rw(b"late"), b"late");

    assert_eq!(ops(&drain(&mut conn, 4096)), vec![Op::Rst]);
}

#[test]
fn guest_shutdown_rcv_stops_data_to_the_guest() {
    let (mut conn, mut host) = established(CONN_BUFFER);

    conn.on_packet(&shutdown(SHUTDOWN_RCV), &[]);
    host.write_all(b"unwanted").unwrap();
    conn.on_readable();

    assert!(drain(&mut conn, 4096).is_empty());
    assert_eq!(conn.state(), State::Established);
}

#[test]
fn guest_shutdown_of_both_directions_is_answered_with_rst() {
    let (mut conn, mut host) = established(CONN_BUFFER);

    conn.on_packet(&shutdown(SHUTDOWN_RCV | SHUTDOWN_SEND), &[]);
    let packets = drain(&mut conn, 4096);

    assert_eq!(ops(&packets), vec![Op::Rst]);
    assert!(conn.is_done());
    assert_eof(&mut host);
}

#[test]
fn host_eof_sends_one_shutdown_send_after_the_data() {
    let (mut conn, mut host) = established(CONN_BUFFER);
    host.write_all(b"bye").unwrap();
    host.shutdown(Shutdown::Write).unwrap();
    conn.on_readable();

    let packets = drain(&mut conn, 4096);

    assert_eq!(ops(&packets), vec![Op::Rw, Op::Shutdown]);
    assert_eq!(packets[1].0.flags, SHUTDOWN_SEND);
    assert_eq!(conn.state(), State::Established, "the guest may still send");
    conn.on_packet(&rw(b"more"), b"more");
    assert_eq!(read_exactly(&mut host, 4), b"more");
}

#[test]
fn a_guest_reset_closes_the_connection_without_an_answer() {
    let (mut conn, _host) = established(CONN_BUFFER);

    conn.on_packet(&from_guest(Op::Rst), &[]);

    assert!(conn.is_done());
    assert!(!conn.wants_rx());
    assert!(drain(&mut conn, 4096).is_empty());
}

#[test]
fn packets_that_make_no_sense_in_the_state_reset_the_connection() {
    let unknown = Header {
        op: 99,
        ..from_guest(Op::Rw)
    };
    let cases = [
        ("response when established", from_guest(Op::Response)),
        ("request when established", from_guest(Op::Request)),
        ("unknown op", unknown),
    ];

    for (what, header) in cases {
        let (mut conn, _host) = established(CONN_BUFFER);
        conn.on_packet(&header, &[]);
        assert_eq!(ops(&drain(&mut conn, 4096)), vec![Op::Rst], "{what}");
    }
}

#[test]
fn data_or_shutdown_before_the_guest_accepted_resets() {
    for header in [
        guest_header(Op::Rw, 5000, FIRST_LOCAL_PORT),
        guest_header(Op::Shutdown, 5000, FIRST_LOCAL_PORT),
    ] {
        let (device, _host) = stream_pair();
        let mut conn = Connection::requested(device, GUEST_CID, FIRST_LOCAL_PORT, 5000);
        drain(&mut conn, 4096);

        conn.on_packet(&header, &[]);

        assert_eq!(ops(&drain(&mut conn, 4096)), vec![Op::Rst]);
    }
}

#[test]
fn a_closed_connection_ignores_further_packets() {
    let (mut conn, mut host) = established(CONN_BUFFER);
    conn.reset(ResetReason::Protocol);

    conn.on_packet(&rw(b"ignored"), b"ignored");
    conn.on_packet(&from_guest(Op::CreditRequest), &[]);
    let packets = drain(&mut conn, 4096);
    drop(conn);

    assert_eq!(ops(&packets), vec![Op::Rst]);
    assert_eof(&mut host);
}

#[test]
fn a_broken_host_stream_resets_the_connection() {
    let (mut conn, host) = established(CONN_BUFFER);
    drop(host);

    conn.on_packet(&rw(b"nobody reads"), b"nobody reads");

    assert_eq!(ops(&drain(&mut conn, 4096)), vec![Op::Rst]);
}

#[test]
fn every_packet_carries_our_consumed_count() {
    let (mut conn, mut host) = established(CONN_BUFFER);
    conn.on_packet(&rw(b"abc"), b"abc");
    read_exactly(&mut host, 3);

    host.write_all(b"x").unwrap();
    conn.on_readable();
    let packets = drain(&mut conn, 4096);

    assert_eq!(packets[0].0.fwd_cnt, 3);
    assert_eq!(packets[0].0.buf_alloc, CONN_BUFFER);
}

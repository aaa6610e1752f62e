use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use vmm_sys_util::epoll::EpollEvent;

use super::*;
use crate::devices::virtio::test_utils::{guest_header, GUEST_CID};

const GUEST_PORT: u32 = 49152;
const HOST_PORT: u32 = 1024;

struct Fixture {
    _dir: tempfile::TempDir,
    uds: PathBuf,
    muxer: Muxer,
    poller: Poller,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let muxer = Muxer::bind(&uds, GUEST_CID).unwrap();
    Fixture {
        _dir: dir,
        uds,
        muxer,
        poller: Poller::new().unwrap(),
    }
}

impl Fixture {
    /// A host program listening for guest connections to `port`.
    fn listen(&self, port: u32) -> UnixListener {
        let listener = UnixListener::bind(format!("{}_{port}", self.uds.display())).unwrap();
        listener.set_nonblocking(true).unwrap();
        listener
    }

    /// A host program connected to the base socket (not yet accepted).
    fn client(&self) -> UnixStream {
        let client = UnixStream::connect(&self.uds).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        client
    }

    /// What the worker does on readiness: accepts, then hands every ready
    /// host stream to the muxer.
    fn pump(&mut self) {
        self.muxer.accept(&self.poller);
        let mut events = vec![EpollEvent::default(); 16];
        for _ in 0..4 {
            let ready = self.poller.wait(0, &mut events).unwrap();
            for event in &events[..ready] {
                let fd = (event.data() - STREAM_TOKEN_BASE) as RawFd;
                self.muxer
                    .on_stream_event(&self.poller, fd, event.event_set());
            }
        }
    }

    fn guest_sends(&mut self, header: &Header, payload: &[u8]) {
        self.muxer.on_guest_packet(&self.poller, header, payload);
    }

    /// Every packet the muxer has for the guest, with 4 KiB buffers.
    fn sent_to_guest(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut packets = Vec::new();
        let mut payload = Vec::new();
        while self.muxer.has_packet() {
            match self.muxer.next_packet(&self.poller, 4096, &mut payload) {
                Some(header) => packets.push((header, payload.clone())),
                None => break,
            }
        }
        packets
    }

    fn ops_sent_to_guest(&mut self) -> Vec<Op> {
        self.sent_to_guest()
            .iter()
            .filter_map(|(h, _)| h.operation())
            .collect()
    }
}

fn assert_closed(client: &mut UnixStream) {
    let mut byte = [0u8; 1];
    match client.read(&mut byte) {
        // Closed with our bytes unread: the client sees a reset.
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the muxer to close the stream, got {other:?}"),
    }
}

#[test]
fn parse_connect_reads_the_port() {
    let cases: [(&[u8], u32); 5] = [
        (b"CONNECT 5000", 5000),
        (b"CONNECT 5000\r", 5000),
        (b"CONNECT 0", 0),
        (b"CONNECT 007", 7),
        (b"CONNECT 4294967295", u32::MAX),
    ];

    for (line, port) in cases {
        assert_eq!(parse_connect(line), Some(port), "{}", line.escape_ascii());
    }
}

#[test]
fn parse_connect_refuses_anything_else() {
    let cases: [&[u8]; 14] = [
        b"",
        b"CONNECT",
        b"CONNECT ",
        b"CONNECT 4294967296",
        b"CONNECT -1",
        b"CONNECT +1",
        b"CONNECT 1 2",
        b"CONNECT  1",
        b"CONNECT 1x",
        b"connect 1",
        b" CONNECT 1",
        b"CONNECT\t1",
        b"CONNECT \xd9\xa1",
        b"CONNECT \xff",
    ];

    for line in cases {
        assert_eq!(parse_connect(line), None, "{}", line.escape_ascii());
    }
}

#[test]
fn binding_replaces_a_stale_socket_file() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    std::fs::write(&uds, b"stale").unwrap();

    let muxer = Muxer::bind(&uds, GUEST_CID);

    assert!(muxer.is_ok());
    assert!(UnixStream::connect(&uds).is_ok());
}

#[test]
fn binding_in_a_missing_directory_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("missing/v.sock");

    let error = Muxer::bind(&uds, GUEST_CID).err().unwrap();

    assert!(
        error.to_string().contains(&*uds.to_string_lossy()),
        "{error}"
    );
}

#[test]
fn dropping_the_muxer_removes_its_socket() {
    let f = fixture();
    let uds = f.uds.clone();

    drop(f.muxer);

    assert!(!uds.exists());
}

#[test]
fn a_guest_request_to_a_listening_port_is_connected_and_answered() {
    let mut f = fixture();
    let listener = f.listen(HOST_PORT);

    f.guest_sends(&guest_header(Op::Request, GUEST_PORT, HOST_PORT), &[]);
    let packets = f.sent_to_guest();

    assert!(listener.accept().is_ok());
    assert_eq!(packets.len(), 1);
    let (response, _) = &packets[0];
    assert_eq!(response.operation(), Some(Op::Response));
    assert_eq!(
        (response.src_port, response.dst_port),
        (HOST_PORT, GUEST_PORT)
    );
    assert_eq!((response.src_cid, response.dst_cid), (HOST_CID, GUEST_CID));
    assert_eq!(f.muxer.connection_count(), 1);
}

#[test]
fn a_guest_request_to_a_port_nobody_listens_on_is_reset() {
    let mut f = fixture();

    f.guest_sends(&guest_header(Op::Request, GUEST_PORT, HOST_PORT), &[]);
    let packets = f.sent_to_guest();

    assert_eq!(packets.len(), 1);
    let (rst, _) = &packets[0];
    assert_eq!(rst.operation(), Some(Op::Rst));
    assert_eq!((rst.src_port, rst.dst_port), (HOST_PORT, GUEST_PORT));
    assert_eq!(rst.dst_cid, GUEST_CID);
    assert_eq!(f.muxer.connection_count(), 0);
}

#[test]
fn a_second_request_for_a_live_connection_is_reset_and_keeps_it() {
    let mut f = fixture();
    let listener = f.listen(HOST_PORT);
    f.guest_sends(&guest_header(Op::Request, GUEST_PORT, HOST_PORT), &[]);
    f.sent_to_guest();

    f.guest_sends(&guest_header(Op::Request, GUEST_PORT, HOST_PORT), &[]);

    assert_eq!(f.ops_sent_to_guest(), vec![Op::Rst]);
    assert_eq!(f.muxer.connection_count(), 1);
    assert!(listener.accept().is_ok());
    assert!(listener.accept().is_err(), "connected once");
}

#[test]
fn a_request_reusing_the_ports_of_a_connection_the_guest_reset_is_accepted() {
    let mut f = fixture();
    let _listener = f.listen(HOST_PORT);
    f.guest_sends(&guest_header(Op::Request, GUEST_PORT, HOST_PORT), &[]);
    f.sent_to_guest();

    // Both in one batch of the TX queue: the finished connection is not
    // swept yet when the new request comes.
    f.guest_sends(&guest_header(Op::Rst, GUEST_PORT, HOST_PORT), &[]);
    f.guest_sends(&guest_header(Op::Request, GUEST_PORT, HOST_PORT), &[]);

    assert_eq!(f.ops_sent_to_guest(), vec![Op::Response]);
    assert_eq!(f.muxer.connection_count(), 1);
}

#[test]
fn packets_from_another_cid_or_to_another_cid_are_dropped() {
    let mut f = fixture();
    let listener = f.listen(HOST_PORT);
    let wrong_src = Header {
        src_cid: GUEST_CID + 1,
        ..guest_header(Op::Request, GUEST_PORT, HOST_PORT)
    };
    let wrong_dst = Header {
        dst_cid: 7,
        ..guest_header(Op::Request, GUEST_PORT, HOST_PORT)
    };

    f.guest_sends(&wrong_src, &[]);
    f.guest_sends(&wrong_dst, &[]);

    assert!(f.sent_to_guest().is_empty());
    assert_eq!(f.muxer.connection_count(), 0);
    assert!(listener.accept().is_err(), "nobody connected");
}

#[test]
fn malformed_packets_from_another_cid_leave_connections_alone() {
    let mut f = fixture();
    let _listener = f.listen(HOST_PORT);
    f.guest_sends(&guest_header(Op::Request, GUEST_PORT, HOST_PORT), &[]);
    f.sent_to_guest();
    let foreign = Header {
        src_cid: GUEST_CID + 1,
        ..guest_header(Op::Rw, GUEST_PORT, HOST_PORT)
    };

    f.muxer.on_malformed(&foreign);

    assert!(f.sent_to_guest().is_empty());
    assert_eq!(f.muxer.connection_count(), 1);
}

#[test]
fn a_malformed_packet_resets_its_connection() {
    let mut f = fixture();
    let listener = f.listen(HOST_PORT);
    f.guest_sends(&guest_header(Op::Request, GUEST_PORT, HOST_PORT), &[]);
    f.sent_to_guest();
    let (mut host, _) = listener.accept().unwrap();

    f.muxer
        .on_malformed(&guest_header(Op::Rw, GUEST_PORT, HOST_PORT));

    assert_eq!(f.ops_sent_to_guest(), vec![Op::Rst]);
    assert_eq!(f.muxer.connection_count(), 0);
    assert_closed(&mut host);
}

#[test]
fn a_packet_for_no_connection_is_answered_with_rst() {
    let mut f = fixture();

    f.guest_sends(
        &Header {
            len: 3,
            ..guest_header(Op::Rw, GUEST_PORT, HOST_PORT)
        },
        b"abc",
    );
    let packets = f.sent_to_guest();

    assert_eq!(packets.len(), 1);
    assert_eq!(packets[0].0.operation(), Some(Op::Rst));
    assert_eq!(
        (packets[0].0.src_port, packets[0].0.dst_port),
        (HOST_PORT, GUEST_PORT)
    );
}

#[test]
fn an_rst_for_no_connection_is_not_answered() {
    let mut f = fixture();

    f.guest_sends(&guest_header(Op::Rst, GUEST_PORT, HOST_PORT), &[]);
    f.muxer
        .on_malformed(&guest_header(Op::Rst, GUEST_PORT, HOST_PORT));

    assert!(f.sent_to_guest().is_empty());
}

#[test]
fn a_packet_that_is_not_a_stream_is_answered_with_rst() {
    let mut f = fixture();
    let listener = f.listen(HOST_PORT);
    let seqpacket = Header {
        kind: 2,
        ..guest_header(Op::Request, GUEST_PORT, HOST_PORT)
    };

    f.guest_sends(&seqpacket, &[]);

    assert_eq!(f.ops_sent_to_guest(), vec![Op::Rst]);
    assert!(listener.accept().is_err());
}

#[test]
fn resets_owed_to_unknown_connections_are_bounded() {
    let mut f = fixture();

    for port in 0..(2 * MAX_CONNECTIONS as u32) {
        f.guest_sends(&guest_header(Op::Rw, port, HOST_PORT), &[]);
    }

    assert_eq!(f.sent_to_guest().len(), MAX_CONNECTIONS);
}

#[test]
fn a_host_connect_line_becomes_a_guest_request() {
    let mut f = fixture();
    let mut client = f.client();
    client.write_all(b"CONNECT 5000\n").unwrap();

    f.pump();
    let packets = f.sent_to_guest();

    assert_eq!(packets.len(), 1);
    let request = packets[0].0;
    assert_eq!(request.operation(), Some(Op::Request));
    assert_eq!(
        (request.src_port, request.dst_port),
        (FIRST_LOCAL_PORT, 5000)
    );
    assert_eq!(request.dst_cid, GUEST_CID);
}

#[test]
fn the_host_reads_ok_and_its_port_once_the_guest_accepts() {
    let mut f = fixture();
    let mut client = f.client();
    client.write_all(b"CONNECT 5000\n").unwrap();
    f.pump();
    f.sent_to_guest();

    f.guest_sends(&guest_header(Op::Response, 5000, FIRST_LOCAL_PORT), &[]);

    let mut line = [0u8; 14];
    client.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"OK 1073741824\n");
}

#[test]
fn a_guest_refusing_a_host_connection_closes_it() {
    let mut f = fixture();
    let mut client = f.client();
    client.write_all(b"CONNECT 5000\n").unwrap();
    f.pump();
    f.sent_to_guest();

    f.guest_sends(&guest_header(Op::Rst, 5000, FIRST_LOCAL_PORT), &[]);
    f.muxer.sweep(&f.poller);

    assert_eq!(f.muxer.connection_count(), 0);
    assert_closed(&mut client);
}

#[test]
fn host_connections_get_successive_local_ports() {
    let mut f = fixture();
    let mut clients: Vec<UnixStream> = (0..3).map(|_| f.client()).collect();
    for client in &mut clients {
        client.write_all(b"CONNECT 5000\n").unwrap();
    }

    f.pump();
    let mut ports: Vec<u32> = f.sent_to_guest().iter().map(|(h, _)| h.src_port).collect();
    ports.sort_unstable();

    assert_eq!(
        ports,
        vec![FIRST_LOCAL_PORT, FIRST_LOCAL_PORT + 1, FIRST_LOCAL_PORT + 2]
    );
}

#[test]
fn data_sent_with_the_connect_line_reaches_the_guest_after_it_accepts() {
    let mut f = fixture();
    let mut client = f.client();
    client.write_all(b"CONNECT 5000\nearly data").unwrap();
    f.pump();
    f.sent_to_guest();

    f.guest_sends(&guest_header(Op::Response, 5000, FIRST_LOCAL_PORT), &[]);
    let packets = f.sent_to_guest();

    assert_eq!(packets.len(), 1);
    assert_eq!(packets[0].0.operation(), Some(Op::Rw));
    assert_eq!(packets[0].1, b"early data");
}

#[test]
fn a_connect_line_split_across_writes_is_accepted() {
    let mut f = fixture();
    let mut client = f.client();
    client.write_all(b"CONN").unwrap();
    f.pump();

    client.write_all(b"ECT 77\r\n").unwrap();
    f.pump();

    let packets = f.sent_to_guest();
    assert_eq!(packets.len(), 1);
    assert_eq!(packets[0].0.dst_port, 77);
}

#[test]
fn a_partial_connect_line_does_not_keep_the_worker_busy() {
    let mut f = fixture();
    let mut client = f.client();
    client.write_all(b"CONN").unwrap();
    f.pump();

    let mut events = vec![EpollEvent::default(); 4];
    let ready = f.poller.wait(0, &mut events).unwrap();

    assert_eq!(ready, 0, "the handshake is reported ready with nothing new");
}

#[test]
fn a_client_hanging_up_in_the_middle_of_its_line_is_closed() {
    let mut f = fixture();
    let mut client = f.client();
    client.write_all(b"CONNECT 50").unwrap();
    f.pump();

    client.shutdown(Shutdown::Write).unwrap();
    f.pump();

    assert_closed(&mut client);
    assert!(f.muxer.handshakes.is_empty());
}

#[test]
fn a_client_sending_garbage_is_closed() {
    let mut f = fixture();
    let mut client = f.client();
    client.write_all(b"HELLO 5000\n").unwrap();

    f.pump();

    assert_closed(&mut client);
    assert!(f.sent_to_guest().is_empty());
}

#[test]
fn a_client_sending_a_line_too_long_is_closed() {
    let mut f = fixture();
    let mut client = f.client();
    client.write_all(&[b'9'; MAX_CONNECT_LINE + 8]).unwrap();

    f.pump();

    assert_closed(&mut client);
    assert!(f.sent_to_guest().is_empty());
}

#[test]
fn a_connect_line_of_exactly_the_limit_is_accepted() {
    let mut f = fixture();
    let mut client = f.client();
    let line = format!("CONNECT {:0>23}\n", 5);
    assert_eq!(line.len(), MAX_CONNECT_LINE);
    client.write_all(line.as_bytes()).unwrap();

    f.pump();

    let packets = f.sent_to_guest();
    assert_eq!(packets.len(), 1);
    assert_eq!(packets[0].0.dst_port, 5);
}

#[test]
fn a_client_closing_before_its_line_is_dropped() {
    let mut f = fixture();
    let client = f.client();
    f.pump();

    drop(client);
    f.pump();

    assert!(f.muxer.handshakes.is_empty());
    assert!(f.sent_to_guest().is_empty());
}

#[test]
fn connections_take_turns_for_guest_buffers() {
    let mut f = fixture();
    let listener = f.listen(HOST_PORT);
    for port in [GUEST_PORT, GUEST_PORT + 1] {
        f.guest_sends(&guest_header(Op::Request, port, HOST_PORT), &[]);
    }
    f.sent_to_guest();
    for _ in 0..2 {
        let (mut host, _) = listener.accept().unwrap();
        host.write_all(&[1u8; 3 * 4096]).unwrap();
        std::mem::forget(host);
    }
    f.pump();

    let order: Vec<u32> = f.sent_to_guest().iter().map(|(h, _)| h.dst_port).collect();

    assert_eq!(order.len(), 6);
    assert!(order.windows(2).all(|w| w[0] != w[1]), "{order:?}");
}

#[test]
fn clearing_closes_every_host_stream() {
    let mut f = fixture();
    let listener = f.listen(HOST_PORT);
    f.guest_sends(&guest_header(Op::Request, GUEST_PORT, HOST_PORT), &[]);
    f.sent_to_guest();
    let (mut accepted, _) = listener.accept().unwrap();
    let mut handshaking = f.client();
    f.pump();

    f.muxer.clear(Some(&f.poller));

    assert_eq!(f.muxer.connection_count(), 0);
    assert!(!f.muxer.has_packet());
    assert_closed(&mut accepted);
    assert_closed(&mut handshaking);
}

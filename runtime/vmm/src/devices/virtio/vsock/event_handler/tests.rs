//! The handler driven through real virtqueues (virtio-queue's mock as the
//! guest driver) and real Unix sockets; the device-level test at the end
//! runs it on its worker thread behind the MMIO transport.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::*;
use crate::devices::virtio::test_utils::{
    guest_header, Desc, Packet, VsockDriver, VsockLayout, GUEST_BUF_ALLOC, GUEST_CID,
};
use crate::devices::virtio::vsock::packet::{Op, SHUTDOWN_RCV, SHUTDOWN_SEND};
use crate::devices::virtio::vsock::{CONN_BUFFER, FIRST_LOCAL_PORT, HOST_CID};

const GUEST_PORT: u32 = 49152;
const HOST_PORT: u32 = 1024;
/// An RX buffer as Linux posts them: a header and 4 KiB.
const RX_BUF: u32 = HEADER_LEN as u32 + 4096;

/// A socket directory and guest memory for one test.
struct Env {
    _dir: tempfile::TempDir,
    uds: PathBuf,
    memory: GuestMemory,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        Env {
            _dir: dir,
            uds,
            memory: VsockLayout::FULL.memory(),
        }
    }

    /// The handler with its queues, RX buffers posted.
    fn driver(&self) -> VsockDriver<'_> {
        let muxer = Muxer::bind(&self.uds, GUEST_CID).unwrap();
        let mut driver = VsockDriver::new(&self.memory, VsockLayout::FULL, muxer);
        driver.post_rx(32, RX_BUF);
        driver
    }

    fn listen(&self, port: u32) -> UnixListener {
        UnixListener::bind(format!("{}_{port}", self.uds.display())).unwrap()
    }

    fn client(&self) -> UnixStream {
        let client = UnixStream::connect(&self.uds).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        client
    }
}

fn ops(packets: &[Packet]) -> Vec<Op> {
    packets.iter().map(Packet::op).collect()
}

fn rw(payload: &[u8]) -> Header {
    Header {
        len: payload.len() as u32,
        ..guest_header(Op::Rw, GUEST_PORT, HOST_PORT)
    }
}

fn shutdown(flags: u32) -> Header {
    Header {
        flags,
        ..guest_header(Op::Shutdown, GUEST_PORT, HOST_PORT)
    }
}

/// A guest-initiated connection to a listener at `<uds>_1024`, answered;
/// returns the host program's end.
fn connect_from_guest(env: &Env, vsock: &mut VsockDriver<'_>, buf_alloc: u32) -> UnixStream {
    let listener = env.listen(HOST_PORT);
    let request = Header {
        buf_alloc,
        ..guest_header(Op::Request, GUEST_PORT, HOST_PORT)
    };
    vsock.send(&request, &[]).unwrap();
    vsock.run();
    assert_eq!(ops(&vsock.received()), vec![Op::Response]);
    let (host, _) = listener.accept().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host
}

/// Runs the handler until a packet arrives (or a few seconds pass).
fn receive(vsock: &mut VsockDriver<'_>) -> Vec<Packet> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        vsock.run_with_timeout(10);
        let packets = vsock.received();
        if !packets.is_empty() || Instant::now() > deadline {
            return packets;
        }
    }
}

fn read_exactly(host: &mut UnixStream, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    host.read_exact(&mut bytes).unwrap();
    bytes
}

fn assert_eof(host: &mut UnixStream) {
    let mut byte = [0u8; 1];
    match host.read(&mut byte) {
        Ok(0) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("expected end of stream, got {other:?}"),
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn a_guest_request_to_a_listening_port_is_answered_and_the_host_accepts() {
    let env = Env::new();
    let mut vsock = env.driver();
    let listener = env.listen(HOST_PORT);

    vsock
        .send(&guest_header(Op::Request, GUEST_PORT, HOST_PORT), &[])
        .unwrap();
    vsock.run();

    let packets = vsock.received();
    assert_eq!(ops(&packets), vec![Op::Response]);
    let response = packets[0].header;
    assert_eq!((response.src_cid, response.dst_cid), (HOST_CID, GUEST_CID));
    assert_eq!(
        (response.src_port, response.dst_port),
        (HOST_PORT, GUEST_PORT)
    );
    assert_eq!(response.buf_alloc, CONN_BUFFER);
    assert!(listener.accept().is_ok());
    assert_eq!(vsock.irq.read().unwrap(), 1, "the guest was interrupted");
    assert_eq!(vsock.tx.outstanding(), 0, "the request's buffer went back");
}

#[test]
fn a_guest_request_to_a_port_without_listener_is_reset() {
    let env = Env::new();
    let mut vsock = env.driver();

    vsock
        .send(&guest_header(Op::Request, GUEST_PORT, HOST_PORT), &[])
        .unwrap();
    vsock.run();

    let packets = vsock.received();
    assert_eq!(ops(&packets), vec![Op::Rst]);
    assert_eq!(
        (packets[0].header.src_port, packets[0].header.dst_port),
        (HOST_PORT, GUEST_PORT)
    );
    assert_eq!(vsock.handler.muxer().connection_count(), 0);
}

#[test]
fn a_host_connect_becomes_a_guest_request_and_the_host_reads_ok_once_accepted() {
    let env = Env::new();
    let mut vsock = env.driver();
    let mut client = env.client();
    client.write_all(b"CONNECT 5000\n").unwrap();

    let packets = receive(&mut vsock);
    vsock
        .send(&guest_header(Op::Response, 5000, FIRST_LOCAL_PORT), &[])
        .unwrap();
    vsock.run();

    assert_eq!(ops(&packets), vec![Op::Request]);
    let request = packets[0].header;
    assert_eq!(
        (request.src_port, request.dst_port),
        (FIRST_LOCAL_PORT, 5000)
    );
    assert_eq!(request.dst_cid, GUEST_CID);
    assert_eq!(read_exactly(&mut client, 14), b"OK 1073741824\n");
}

#[test]
fn data_flows_both_ways() {
    let env = Env::new();
    let mut vsock = env.driver();
    let mut host = connect_from_guest(&env, &mut vsock, GUEST_BUF_ALLOC);

    vsock.send(&rw(b"ping"), b"ping").unwrap();
    vsock.run();
    let at_host = read_exactly(&mut host, 4);
    host.write_all(b"pong").unwrap();
    let at_guest = receive(&mut vsock);

    assert_eq!(at_host, b"ping");
    assert_eq!(ops(&at_guest), vec![Op::Rw]);
    assert_eq!(at_guest[0].payload, b"pong");
    assert_eq!(at_guest[0].header.fwd_cnt, 4, "it says what it forwarded");
}

#[test]
fn a_large_transfer_to_the_guest_never_exceeds_its_credit() {
    const TOTAL: usize = 4 << 20;
    const GUEST_BUF: u32 = 64 << 10;
    let env = Env::new();
    let mut vsock = env.driver();
    let host = connect_from_guest(&env, &mut vsock, GUEST_BUF);
    let writer = std::thread::spawn(move || {
        let mut host = host;
        host.write_all(&pattern(TOTAL)).unwrap();
        host.shutdown(Shutdown::Write).unwrap();
        host
    });

    // The guest reads everything at once but tells the device only when
    // asked (as Linux answers a credit request).
    let mut received = Vec::with_capacity(TOTAL);
    let mut fwd_cnt: u32 = 0;
    let mut credit_requests = 0;
    let mut over_credit = Vec::new();
    let mut done = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done && Instant::now() < deadline {
        vsock.post_rx(32, RX_BUF);
        vsock.run_with_timeout(10);
        for packet in vsock.received() {
            match packet.op() {
                Op::Rw => {
                    received.extend_from_slice(&packet.payload);
                    let in_flight = received.len() as u32 - fwd_cnt;
                    if in_flight > GUEST_BUF {
                        over_credit.push(in_flight);
                    }
                }
                Op::CreditRequest => {
                    credit_requests += 1;
                    fwd_cnt = received.len() as u32;
                    let update = Header {
                        buf_alloc: GUEST_BUF,
                        fwd_cnt,
                        ..guest_header(Op::CreditUpdate, GUEST_PORT, HOST_PORT)
                    };
                    vsock.send(&update, &[]).unwrap();
                }
                Op::Shutdown => done = true,
                op => panic!("unexpected {op:?}"),
            }
        }
    }
    let _host = writer.join().unwrap();

    assert!(done, "no SHUTDOWN after {} bytes", received.len());
    assert_eq!(over_credit, Vec::<u32>::new());
    assert!(credit_requests >= TOTAL / GUEST_BUF as usize - 1);
    assert_eq!(received.len(), TOTAL);
    assert!(received == pattern(TOTAL), "the data arrived altered");
}

#[test]
fn a_large_transfer_from_a_guest_within_our_credit_arrives_intact() {
    const TOTAL: usize = 4 << 20;
    let env = Env::new();
    let mut vsock = env.driver();
    let host = connect_from_guest(&env, &mut vsock, GUEST_BUF_ALLOC);
    // The whole transfer may take long on a loaded machine (debug build):
    // the reader waits as long as the sender's deadline.
    host.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut host = host;
        let mut data = Vec::new();
        host.read_to_end(&mut data).unwrap();
        data
    });
    let data = pattern(TOTAL);

    // The guest sends whenever the device's last word leaves it credit.
    let (mut sent, mut peer_fwd_cnt, mut peer_buf_alloc) = (0usize, 0u32, CONN_BUFFER);
    let mut resets = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while sent < TOTAL && Instant::now() < deadline {
        let credit = peer_buf_alloc - (sent as u32 - peer_fwd_cnt);
        let len = (credit as usize)
            .min(MAX_PAYLOAD as usize)
            .min(TOTAL - sent);
        if len > 0 {
            let chunk = &data[sent..sent + len];
            if vsock.send(&rw(chunk), chunk).is_some() {
                sent += len;
            }
        }
        vsock.post_rx(32, RX_BUF);
        vsock.run_with_timeout(if len == 0 { 10 } else { 0 });
        for packet in vsock.received() {
            peer_fwd_cnt = packet.header.fwd_cnt;
            peer_buf_alloc = packet.header.buf_alloc;
            resets += usize::from(packet.op() == Op::Rst);
        }
    }
    vsock.send(&shutdown(SHUTDOWN_SEND), &[]).unwrap();
    vsock.run();
    let at_host = reader.join().unwrap();

    assert_eq!(resets, 0);
    assert_eq!(at_host.len(), TOTAL);
    assert!(at_host == data, "the data arrived altered");
}

#[test]
fn a_guest_sending_beyond_our_credit_is_reset() {
    let env = Env::new();
    let mut vsock = env.driver();
    // The host program never reads.
    let _host = connect_from_guest(&env, &mut vsock, GUEST_BUF_ALLOC);
    let chunk = vec![3u8; MAX_PAYLOAD as usize];

    let mut sent = 0;
    let mut reset = false;
    while !reset && sent < 64 * chunk.len() {
        vsock.send(&rw(&chunk), &chunk).unwrap();
        sent += chunk.len();
        vsock.run();
        reset = vsock.received().iter().any(|p| p.op() == Op::Rst);
    }

    assert!(reset);
    assert!(
        sent > CONN_BUFFER as usize,
        "reset after {sent} bytes, within credit"
    );
    assert_eq!(vsock.handler.muxer().connection_count(), 0);
}

#[test]
fn guest_shutdown_send_gives_the_host_eof_and_the_host_can_still_write() {
    let env = Env::new();
    let mut vsock = env.driver();
    let mut host = connect_from_guest(&env, &mut vsock, GUEST_BUF_ALLOC);

    vsock.send(&shutdown(SHUTDOWN_SEND), &[]).unwrap();
    vsock.run();
    assert_eof(&mut host);
    host.write_all(b"still here").unwrap();
    let packets = receive(&mut vsock);

    assert_eq!(ops(&packets), vec![Op::Rw]);
    assert_eq!(packets[0].payload, b"still here");
}

#[test]
fn host_shutdown_of_its_write_side_sends_the_guest_shutdown_send() {
    let env = Env::new();
    let mut vsock = env.driver();
    let mut host = connect_from_guest(&env, &mut vsock, GUEST_BUF_ALLOC);

    host.shutdown(Shutdown::Write).unwrap();
    let packets = receive(&mut vsock);
    vsock.send(&rw(b"reply"), b"reply").unwrap();
    vsock.run();

    assert_eq!(ops(&packets), vec![Op::Shutdown]);
    assert_eq!(packets[0].header.flags, SHUTDOWN_SEND);
    assert_eq!(read_exactly(&mut host, 5), b"reply");
}

#[test]
fn guest_shutdown_of_both_directions_is_answered_with_rst() {
    let env = Env::new();
    let mut vsock = env.driver();
    let mut host = connect_from_guest(&env, &mut vsock, GUEST_BUF_ALLOC);

    vsock
        .send(&shutdown(SHUTDOWN_RCV | SHUTDOWN_SEND), &[])
        .unwrap();
    vsock.run();

    assert_eq!(ops(&vsock.received()), vec![Op::Rst]);
    assert_eq!(vsock.handler.muxer().connection_count(), 0);
    assert_eof(&mut host);
}

#[test]
fn a_guest_reset_drops_the_connection() {
    let env = Env::new();
    let mut vsock = env.driver();
    let mut host = connect_from_guest(&env, &mut vsock, GUEST_BUF_ALLOC);

    vsock
        .send(&guest_header(Op::Rst, GUEST_PORT, HOST_PORT), &[])
        .unwrap();
    vsock.run();

    assert!(vsock.received().is_empty(), "a reset is not answered");
    assert_eq!(vsock.handler.muxer().connection_count(), 0);
    assert_eof(&mut host);
}

#[test]
fn a_length_above_the_largest_payload_resets_the_connection() {
    let env = Env::new();
    let mut vsock = env.driver();
    let mut host = connect_from_guest(&env, &mut vsock, GUEST_BUF_ALLOC);
    let payload = vec![0u8; MAX_PAYLOAD as usize + 1];

    vsock.send(&rw(&payload), &payload).unwrap();
    vsock.run();

    assert_eq!(ops(&vsock.received()), vec![Op::Rst]);
    assert_eq!(vsock.handler.muxer().connection_count(), 0);
    assert_eof(&mut host);
}

#[test]
fn a_length_beyond_the_descriptors_resets_the_connection() {
    let env = Env::new();
    let mut vsock = env.driver();
    let mut host = connect_from_guest(&env, &mut vsock, GUEST_BUF_ALLOC);
    let header = Header {
        len: 100,
        ..rw(b"")
    };

    vsock.send(&header, &[1u8; 10]).unwrap();
    vsock.run();

    assert_eq!(ops(&vsock.received()), vec![Op::Rst]);
    assert_eof(&mut host);
}

#[test]
fn a_packet_from_another_cid_is_dropped() {
    let env = Env::new();
    let mut vsock = env.driver();
    let listener = env.listen(HOST_PORT);
    listener.set_nonblocking(true).unwrap();
    let foreign = Header {
        src_cid: 99,
        ..guest_header(Op::Request, GUEST_PORT, HOST_PORT)
    };

    vsock.send(&foreign, &[]).unwrap();
    vsock.run();

    assert!(vsock.received().is_empty());
    assert_eq!(vsock.tx.outstanding(), 0);
    assert!(listener.accept().is_err());
}

#[test]
fn an_unknown_op_resets_the_connection() {
    let env = Env::new();
    let mut vsock = env.driver();
    let mut host = connect_from_guest(&env, &mut vsock, GUEST_BUF_ALLOC);
    let unknown = Header {
        op: 42,
        ..guest_header(Op::Rw, GUEST_PORT, HOST_PORT)
    };

    vsock.send(&unknown, &[]).unwrap();
    vsock.run();

    assert_eq!(ops(&vsock.received()), vec![Op::Rst]);
    assert_eof(&mut host);
}

#[test]
fn a_packet_that_is_not_a_stream_is_reset() {
    let env = Env::new();
    let mut vsock = env.driver();
    let _listener = env.listen(HOST_PORT);
    let seqpacket = Header {
        kind: 2,
        ..guest_header(Op::Request, GUEST_PORT, HOST_PORT)
    };

    vsock.send(&seqpacket, &[]).unwrap();
    vsock.run();

    assert_eq!(ops(&vsock.received()), vec![Op::Rst]);
    assert_eq!(vsock.handler.muxer().connection_count(), 0);
}

#[test]
fn tx_chains_without_a_whole_readable_header_are_used_without_an_answer() {
    let env = Env::new();
    let mut vsock = env.driver();
    let outside = VsockLayout::FULL.queue(2).end() + 0x1000;

    vsock.tx.add_readable(&[&[0u8; 20]]).unwrap();
    vsock.tx.add_writable(&[HEADER_LEN as u32 + 8]).unwrap();
    vsock
        .tx
        .add(&[Desc {
            addr: outside,
            len: HEADER_LEN as u32,
            writable: false,
        }])
        .unwrap();
    vsock.run();

    assert_eq!(vsock.tx.outstanding(), 0, "every chain went back");
    assert!(vsock.received().is_empty());
}

#[test]
fn a_header_split_across_descriptors_is_read_whole() {
    let env = Env::new();
    let mut vsock = env.driver();
    let _listener = env.listen(HOST_PORT);
    let bytes = guest_header(Op::Request, GUEST_PORT, HOST_PORT).to_bytes();

    vsock
        .tx
        .add_readable(&[&bytes[..10], &bytes[10..30], &bytes[30..]])
        .unwrap();
    vsock.run();

    assert_eq!(ops(&vsock.received()), vec![Op::Response]);
}

#[test]
fn rx_buffers_too_short_for_a_header_are_returned_empty() {
    let env = Env::new();
    let muxer = Muxer::bind(&env.uds, GUEST_CID).unwrap();
    let mut vsock = VsockDriver::new(&env.memory, VsockLayout::FULL, muxer);
    let outside = VsockLayout::FULL.queue(2).end() + 0x1000;
    vsock.rx.add_writable(&[HEADER_LEN as u32 - 1]).unwrap();
    vsock.rx.add_readable(&[&[0u8; RX_BUF as usize]]).unwrap();
    vsock
        .rx
        .add(&[Desc {
            addr: outside,
            len: RX_BUF,
            writable: true,
        }])
        .unwrap();
    vsock.rx.add_writable(&[RX_BUF]).unwrap();

    vsock
        .send(&guest_header(Op::Request, GUEST_PORT, HOST_PORT), &[])
        .unwrap();
    vsock.run();

    let lens: Vec<u32> = std::iter::from_fn(|| vsock.rx.next_used())
        .map(|used| used.len)
        .collect();
    assert_eq!(
        lens,
        vec![0, 0, 0, HEADER_LEN as u32],
        "the RST lands in the fourth"
    );
}

#[test]
fn an_rx_chain_of_several_descriptors_takes_a_header_and_payload() {
    let env = Env::new();
    let muxer = Muxer::bind(&env.uds, GUEST_CID).unwrap();
    let mut vsock = VsockDriver::new(&env.memory, VsockLayout::FULL, muxer);
    vsock.post_rx(1, RX_BUF);
    let mut host = connect_from_guest(&env, &mut vsock, GUEST_BUF_ALLOC);
    vsock.rx.add_writable(&[20, 30, 100]).unwrap();

    host.write_all(&[5u8; 500]).unwrap();
    let packets = receive(&mut vsock);

    assert_eq!(ops(&packets), vec![Op::Rw]);
    assert_eq!(packets[0].payload, vec![5u8; 150 - HEADER_LEN]);
}

#[test]
fn packets_wait_for_the_guest_to_post_buffers() {
    let env = Env::new();
    let muxer = Muxer::bind(&env.uds, GUEST_CID).unwrap();
    let mut vsock = VsockDriver::new(&env.memory, VsockLayout::FULL, muxer);

    vsock
        .send(&guest_header(Op::Request, GUEST_PORT, HOST_PORT), &[])
        .unwrap();
    vsock.run();
    let before = vsock.received();
    vsock.post_rx(1, RX_BUF);
    vsock.run();

    assert!(before.is_empty());
    assert_eq!(ops(&vsock.received()), vec![Op::Rst]);
}

#[test]
fn the_device_serves_its_queues_on_a_worker_thread_behind_mmio() {
    use crate::devices::virtio::mmio::MmioTransport;
    use crate::devices::virtio::test_utils::{eventfd, DriverQueue};
    use crate::devices::virtio::vsock::Vsock;
    use crate::devices::BusDevice;
    const STATUS: u64 = 0x70;
    const DRIVER_FEATURES_SEL: u64 = 0x24;
    const DRIVER_FEATURES: u64 = 0x20;
    const QUEUE_NOTIFY: u64 = 0x50;
    const QUEUE_REGISTERS: [u64; 7] = [0x38, 0x80, 0x84, 0x90, 0x94, 0xa0, 0xa4];

    let env = Env::new();
    let device = Vsock::new(GUEST_CID, &env.uds).unwrap();
    let mut transport =
        MmioTransport::new(Box::new(device), env.memory.clone(), eventfd()).unwrap();
    let write =
        |t: &mut MmioTransport, offset: u64, value: u32| t.write(offset, &value.to_le_bytes());
    let mut queues: Vec<DriverQueue<'_>> = (0..3)
        .map(|i| DriverQueue::new(&env.memory, VsockLayout::FULL.queue(i)))
        .collect();
    write(&mut transport, STATUS, 3);
    write(&mut transport, DRIVER_FEATURES_SEL, 1);
    write(&mut transport, DRIVER_FEATURES, 1);
    write(&mut transport, STATUS, 0xb);
    for (index, queue) in queues.iter().enumerate() {
        let (desc, avail, used) = queue.addresses();
        write(&mut transport, 0x30, index as u32);
        let values = [
            u32::from(VsockLayout::FULL.queue_size),
            desc as u32,
            (desc >> 32) as u32,
            avail as u32,
            (avail >> 32) as u32,
            used as u32,
            (used >> 32) as u32,
        ];
        for (register, value) in QUEUE_REGISTERS.into_iter().zip(values) {
            write(&mut transport, register, value);
        }
        write(&mut transport, 0x44, 1);
    }
    write(&mut transport, STATUS, 0xf);
    assert!(transport.is_activated());

    let mut client = env.client();
    client.write_all(b"CONNECT 5000\n").unwrap();
    queues[0].add_writable(&[RX_BUF]).unwrap();
    write(&mut transport, QUEUE_NOTIFY, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    let used = loop {
        if let Some(used) = queues[0].next_used() {
            break used;
        }
        assert!(Instant::now() < deadline, "no packet from the worker");
        std::thread::sleep(Duration::from_millis(5));
    };
    let bytes = queues[0].written(&used);
    let request = Header::parse(bytes[..HEADER_LEN].try_into().unwrap());
    write(&mut transport, STATUS, 0);

    assert_eq!(request.operation(), Some(Op::Request));
    assert_eq!(request.dst_port, 5000);
    assert!(!transport.is_activated());
    assert_eof(&mut client);
}

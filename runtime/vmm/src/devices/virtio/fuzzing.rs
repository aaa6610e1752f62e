//! The bodies of the fuzz targets in `runtime/vmm/fuzz`, here so that a unit
//! test runs them too (over pseudo-random inputs) and so that they reach the
//! crate's internals. Each takes arbitrary bytes, plays a hostile guest (and
//! host programs) with them, checks what the device must always get right,
//! and must never panic otherwise.
//!
//! Behind the `test-utils` feature: they stand on the mock driver in
//! [`super::test_utils`].

use std::collections::VecDeque;
use std::io::Write;
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

use vm_memory::{Bytes, GuestAddress};

use super::mmio::MmioTransport;
use super::net::{
    Net, Tap, TapWatch, FEATURES as NET_FEATURES, F_MRG_RXBUF, HEADER_LEN as NET_HEADER_LEN,
    MAX_BUFFER, NUM_BUFFERS_OFFSET,
};
use super::rng::Rng;
use super::test_utils::{
    eventfd, guest_memory, seqpacket_pair, Desc, NetDriver, NetLayout, VsockDriver, VsockLayout,
    GUEST_CID,
};
use super::vsock::muxer::Muxer;
use super::vsock::packet::{Header, HEADER_LEN, TYPE_STREAM};
use super::vsock::{Vsock, FIRST_LOCAL_PORT, HOST_CID, MAX_CONNECTIONS, MAX_PAYLOAD};
use super::VirtioDevice;
use crate::devices::BusDevice;

/// Guest memory of the MMIO target: 16 areas of 64 KiB for queues.
const MMIO_MEMORY: usize = 1 << 20;
/// The MMIO window of one device.
const MMIO_WINDOW: u64 = 0x1000;
/// Registers the MMIO target checks or writes in a driver's order.
const REG_MAGIC: u64 = 0x000;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_ADDRESSES: u64 = 0x080;
const STATUS_ACKNOWLEDGE: u32 = 0x01;
const STATUS_DRIVER: u32 = 0x02;
const STATUS_DRIVER_OK: u32 = 0x04;
const STATUS_FEATURES_OK: u32 = 0x08;
/// Small queues whose descriptors still hold a maximal packet each.
const VSOCK_LAYOUT: VsockLayout = VsockLayout {
    queue_size: 16,
    slot: 0x1_1000,
};
/// The host port with a listener in the vsock target.
const LISTENED_PORT: u32 = 1024;
/// Small queues whose descriptors still hold a maximal frame each.
const NET_LAYOUT: NetLayout = NetLayout {
    queue_size: 16,
    slot: 0x1_1000,
};

/// A sequence of MMIO accesses (any offset, size and value), guest memory
/// writes, and whole driver steps (feature negotiation, a well-formed queue
/// set-up, DRIVER_OK, a notify, a reset) against the transport of an rng, a
/// vsock or a net device; DRIVER_OK over garbage queues included.
pub fn mmio_registers(data: &[u8]) {
    drive_mmio(data);
}

/// [`mmio_registers`]; returns whether the device runs at the end.
fn drive_mmio(data: &[u8]) -> bool {
    ignore_sigpipe();
    let mut input = Input(data);
    let Some(choice) = input.byte() else {
        return false;
    };
    let scratch = ScratchDir::new();
    // The host's end of the net device's tap, open until the end.
    let (tap, _host) = seqpacket_pair();
    let device: Box<dyn VirtioDevice> = match choice % 3 {
        0 => Box::new(Rng::new().expect("a worker thread")),
        1 => match Vsock::new(GUEST_CID, &scratch.path().join("v.sock")) {
            Ok(vsock) => Box::new(vsock),
            Err(_) => return false,
        },
        _ => Box::new(
            Net::new(
                Tap::from_socket_for_tests(tap),
                [2, 0, 0, 0, 0, 1],
                Some(1500),
            )
            .expect("a worker thread"),
        ),
    };
    let memory = guest_memory(MMIO_MEMORY);
    let mut transport = MmioTransport::new(device, memory.clone(), eventfd()).expect("eventfds");
    while let Some(kind) = input.byte() {
        let offset = u64::from(input.u16());
        let value = input.u32();
        // Mostly aligned registers, sometimes anywhere in the window.
        let offset = if kind & 0x80 == 0 {
            (offset % 0x100) & !3
        } else {
            offset % MMIO_WINDOW
        };
        let size = [4, 4, 4, 1, 2, 8, 3, 0][usize::from(kind >> 3) % 8];
        match kind % 8 {
            0 => {
                let mut bytes = [0u8; 8];
                transport.read(offset, &mut bytes[..size]);
            }
            1 => transport.write(offset, &u64::from(value).to_le_bytes()[..size]),
            // The driver scribbles over guest memory (descriptors, rings).
            2 => {
                let addr = (offset * 0x100 + u64::from(kind >> 3) * 4) % MMIO_MEMORY as u64;
                let _ = memory.write_obj(value, GuestAddress(addr));
            }
            3 => set_up_queue(&mut transport, value, offset),
            // The steps of a driver's bring-up, whole, so that the fuzzer
            // need not find each register.
            4 => negotiate(&mut transport, value),
            5 => {
                let status = read_register(&mut transport, REG_STATUS);
                write_register(&mut transport, REG_STATUS, status | STATUS_DRIVER_OK);
            }
            6 => write_register(&mut transport, REG_QUEUE_NOTIFY, value % 4),
            _ => write_register(&mut transport, REG_STATUS, 0),
        }
        let magic = read_register(&mut transport, REG_MAGIC);
        assert_eq!(magic, 0x7472_6976, "the magic changed");
        if transport.is_activated() {
            let status = read_register(&mut transport, REG_STATUS);
            assert_ne!(status & STATUS_DRIVER_OK, 0, "running without DRIVER_OK");
        }
    }
    // Dropping the transport stops a worker the guest started.
    transport.is_activated()
}

/// ACKNOWLEDGE, DRIVER, VERSION_1 and the low feature bits of `value`,
/// FEATURES_OK.
fn negotiate(transport: &mut MmioTransport, value: u32) {
    write_register(transport, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    write_register(transport, REG_DRIVER_FEATURES_SEL, 0);
    write_register(transport, REG_DRIVER_FEATURES, value);
    write_register(transport, REG_DRIVER_FEATURES_SEL, 1);
    write_register(transport, REG_DRIVER_FEATURES, 1);
    let status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
    write_register(transport, REG_STATUS, status);
}

fn read_register(transport: &mut MmioTransport, offset: u64) -> u32 {
    let mut bytes = [0u8; 4];
    transport.read(offset, &mut bytes);
    u32::from_le_bytes(bytes)
}

fn write_register(transport: &mut MmioTransport, offset: u64, value: u32) {
    transport.write(offset, &value.to_le_bytes());
}

/// Sets queue `value % 4` up as a driver would, with a valid layout in area
/// `area % 16` and a size derived from `value`, so that activations with
/// real queues are reachable.
fn set_up_queue(transport: &mut MmioTransport, value: u32, area: u64) {
    write_register(transport, REG_QUEUE_SEL, value % 4);
    let max = read_register(transport, REG_QUEUE_NUM_MAX);
    let size = (max >> ((value >> 2) % 8)).max(1);
    let desc = 0x1_0000 * (area % 16);
    let avail = desc + 16 * u64::from(size);
    let used = (avail + 6 + 2 * u64::from(size)).next_multiple_of(4);
    write_register(transport, REG_QUEUE_NUM, size);
    for (i, addr) in [desc, avail, used].into_iter().enumerate() {
        let low = REG_QUEUE_ADDRESSES + 0x10 * i as u64;
        write_register(transport, low, addr as u32);
        write_register(transport, low + 4, (addr >> 32) as u32);
    }
    write_register(transport, REG_QUEUE_READY, 1);
}

/// Arbitrary TX descriptor chains (well-formed headers with fuzzed fields,
/// or raw bytes), RX buffers of any shape, and host programs connecting,
/// writing and hanging up, through a vsock handler's queues.
pub fn vsock_packets(data: &[u8]) {
    drive_vsock(data);
}

/// [`vsock_packets`]; returns how many packets the guest received.
fn drive_vsock(data: &[u8]) -> usize {
    ignore_sigpipe();
    let scratch = ScratchDir::new();
    let uds = scratch.path().join("v.sock");
    let Ok(muxer) = Muxer::bind(&uds, GUEST_CID) else {
        return 0;
    };
    let Ok(listener) = UnixListener::bind(format!("{}_{LISTENED_PORT}", uds.display())) else {
        return 0;
    };
    let _ = listener.set_nonblocking(true);
    let memory = VSOCK_LAYOUT.memory();
    let mut vsock = VsockDriver::new(&memory, VSOCK_LAYOUT, muxer);
    let mut hosts: Vec<UnixStream> = Vec::new();
    let mut input = Input(data);
    let mut received = 0;
    while let Some(command) = input.byte() {
        match command % 8 {
            0 | 1 => send_packet(&mut vsock, &mut input, command),
            2 => send_raw_chain(&mut vsock, &mut input, command),
            3 => post_rx_buffers(&mut vsock, &mut input, command),
            4 => connect_host(&uds, &mut hosts, &mut input),
            5 => write_host(&mut hosts, &mut input),
            6 => host_ends(&listener, &mut hosts, &mut input),
            _ => received += run_and_check(&mut vsock),
        }
    }
    received + run_and_check(&mut vsock)
}

/// A packet with a header the guest's driver would build, every field
/// fuzzed, the payload in a second descriptor.
fn send_packet(vsock: &mut VsockDriver<'_>, input: &mut Input<'_>, command: u8) {
    let shape = input.byte().unwrap_or(0);
    let ports = input.byte().unwrap_or(0);
    let header = Header {
        src_cid: if shape & 1 == 0 {
            GUEST_CID
        } else {
            u64::from(input.u32())
        },
        dst_cid: if shape & 2 == 0 {
            HOST_CID
        } else {
            u64::from(input.u32())
        },
        src_port: match ports & 3 {
            0 => 49152,
            1 => 49153,
            2 => 5000,
            _ => input.u32(),
        },
        dst_port: [LISTENED_PORT, 7, FIRST_LOCAL_PORT, FIRST_LOCAL_PORT + 1]
            [usize::from((ports >> 2) & 3)],
        len: 0,
        kind: if shape & 4 == 0 {
            TYPE_STREAM
        } else {
            input.u16()
        },
        op: u16::from(command >> 3) % 9,
        flags: u32::from((shape >> 3) & 3),
        buf_alloc: input.u32(),
        fwd_cnt: input.u32(),
    };
    let payload_len = usize::from(input.u16());
    let payload = input.bytes(payload_len);
    let len = match shape >> 5 {
        0 => payload.len() as u32,
        1 => payload.len() as u32 + u32::from(input.byte().unwrap_or(1)),
        2 => input.u32(),
        _ => payload.len() as u32 / 2,
    };
    let _ = vsock.send(&Header { len, ..header }, payload);
}

/// A chain of up to four descriptors of any direction, length and place,
/// with raw bytes.
fn send_raw_chain(vsock: &mut VsockDriver<'_>, input: &mut Input<'_>, command: u8) {
    let count = 1 + usize::from(command >> 3) % 4;
    let mut parts = Vec::new();
    for _ in 0..count {
        let shape = input.byte().unwrap_or(0);
        let len = usize::from(input.u16()) % (VSOCK_LAYOUT.slot as usize + 1);
        parts.push((shape, input.bytes(len).to_vec()));
    }
    if parts.iter().all(|(shape, _)| shape & 3 == 0) {
        let slices: Vec<&[u8]> = parts.iter().map(|(_, bytes)| bytes.as_slice()).collect();
        let _ = vsock.tx.add_readable(&slices);
        return;
    }
    let descs: Vec<Desc> = parts
        .iter()
        .map(|(shape, bytes)| Desc {
            addr: match shape & 3 {
                1 => u64::from(*shape) << 16,
                2 => VSOCK_LAYOUT.queue(2).end() - 8,
                _ => VSOCK_LAYOUT.queue(1).data.0,
            },
            len: if shape & 4 == 0 {
                bytes.len() as u32
            } else {
                u32::MAX - u32::from(*shape)
            },
            writable: shape & 8 != 0,
        })
        .collect();
    let _ = vsock.tx.add(&descs);
}

/// RX buffers: any count and length (shorter than a header too), chains
/// of several descriptors, or device-readable ones.
fn post_rx_buffers(vsock: &mut VsockDriver<'_>, input: &mut Input<'_>, command: u8) {
    let count = 1 + usize::from(command >> 3) % 8;
    let len = u32::from(input.u16()) % (VSOCK_LAYOUT.slot as u32 + 1);
    for _ in 0..count {
        let _ = match command >> 6 {
            0 | 1 => vsock.rx.add_writable(&[len]),
            2 => vsock.rx.add_writable(&[len % 64, len]),
            _ => vsock.rx.add_readable(&[&[0u8; HEADER_LEN + 8]]),
        };
    }
}

/// A host program connects to the base socket and writes a line, or bytes.
fn connect_host(uds: &Path, hosts: &mut Vec<UnixStream>, input: &mut Input<'_>) {
    if hosts.len() >= 16 {
        return;
    }
    let Ok(mut stream) = UnixStream::connect(uds) else {
        return;
    };
    let _ = stream.set_nonblocking(true);
    let shape = input.byte().unwrap_or(0);
    let _ = match shape % 4 {
        0 => stream.write_all(format!("CONNECT {}\n", input.u16()).as_bytes()),
        1 => stream.write_all(format!("CONNECT {}\nearly", input.u16()).as_bytes()),
        _ => {
            let len = usize::from(shape >> 2);
            stream.write_all(input.bytes(len))
        }
    };
    hosts.push(stream);
}

/// A host program writes bytes on one of the streams.
fn write_host(hosts: &mut [UnixStream], input: &mut Input<'_>) {
    let index = usize::from(input.byte().unwrap_or(0));
    let len = usize::from(input.u16());
    let bytes = input.bytes(len);
    if let Some(stream) = hosts.get_mut(index % hosts.len().max(1)) {
        let _ = stream.write(bytes);
    }
}

/// A host program accepts a guest connection, shuts a stream down or
/// closes it.
fn host_ends(listener: &UnixListener, hosts: &mut Vec<UnixStream>, input: &mut Input<'_>) {
    let choice = input.byte().unwrap_or(0);
    let index = usize::from(choice >> 2) % hosts.len().max(1);
    match choice % 4 {
        0 => {
            if let Ok((stream, _)) = listener.accept() {
                let _ = stream.set_nonblocking(true);
                hosts.push(stream);
            }
        }
        1 if index < hosts.len() => {
            let _ = hosts[index].shutdown(Shutdown::Write);
        }
        2 if index < hosts.len() => {
            hosts.swap_remove(index);
        }
        _ => {
            if let Some(stream) = hosts.get_mut(index) {
                let mut buf = [0u8; 4096];
                let _ = std::io::Read::read(stream, &mut buf);
            }
        }
    }
}

/// Runs the handler and checks what it wrote for the guest: every used RX
/// buffer is empty or holds one sane packet that fits it, and every TX
/// chain came back. Returns how many packets there were.
fn run_and_check(vsock: &mut VsockDriver<'_>) -> usize {
    vsock.run();
    let mut packets = 0;
    assert_eq!(vsock.tx.outstanding(), 0, "a TX chain was not used");
    assert!(vsock.handler.muxer().connection_count() <= MAX_CONNECTIONS);
    while let Some(used) = vsock.rx.next_used() {
        if used.len == 0 {
            continue;
        }
        let room: u64 = used
            .descs
            .iter()
            .filter(|d| d.writable)
            .map(|d| u64::from(d.len))
            .sum();
        assert!(
            used.len as usize >= HEADER_LEN,
            "a partial header: {used:?}"
        );
        assert!(
            u64::from(used.len) <= room,
            "more than the buffer: {used:?}"
        );
        let bytes = vsock.rx.written(&used);
        let header = Header::parse(bytes[..HEADER_LEN].try_into().expect("a header"));
        assert_eq!(header.len as usize, bytes.len() - HEADER_LEN, "{header:?}");
        assert!(header.len <= MAX_PAYLOAD, "{header:?}");
        assert_eq!(
            (header.src_cid, header.dst_cid),
            (HOST_CID, GUEST_CID),
            "{header:?}"
        );
        assert_eq!(header.kind, TYPE_STREAM, "{header:?}");
        assert!(header.operation().is_some(), "{header:?}");
        packets += 1;
    }
    packets
}

/// Arbitrary TX chains (frames split over descriptors any way, and bad
/// chains of every kind), RX buffers of any shape, frames the host writes
/// into the tap, and either feature set (merged RX buffers or not), through
/// a net handler's queues. Checks that every frame that arrives, either
/// way, is byte for byte one that was sent, in order, and fits its buffers.
pub fn net_frames(data: &[u8]) {
    drive_net(data);
}

/// What a net input sent, to check what arrives against.
#[derive(Default)]
struct NetSent {
    /// Well-formed guest frames not yet seen on the tap.
    tx: VecDeque<Vec<u8>>,
    /// TX chains offered.
    tx_chains: u64,
    /// Host frames (at least a header long) not yet seen by the guest.
    rx: VecDeque<Vec<u8>>,
    /// Host frames written into the tap.
    rx_frames: u64,
    /// Frames seen on each side so far.
    seen: (u64, u64),
}

/// [`net_frames`]; returns how many frames arrived on the tap and in the
/// guest.
fn drive_net(data: &[u8]) -> (u64, u64) {
    let mut input = Input(data);
    let Some(choice) = input.byte() else {
        return (0, 0);
    };
    let features = if choice & 1 == 0 {
        NET_FEATURES
    } else {
        NET_FEATURES & !F_MRG_RXBUF
    };
    let memory = NET_LAYOUT.memory();
    let mut net = NetDriver::new(&memory, NET_LAYOUT, features);
    let mut sent = NetSent::default();
    while let Some(command) = input.byte() {
        match command % 8 {
            0..=2 => send_net_frame(&mut net, &mut input, command, &mut sent),
            3 => send_bad_net_chain(&mut net, &mut input, command, &mut sent),
            4 => post_net_buffers(&mut net, &mut input, command),
            5 | 6 => host_net_frame(&mut net, &mut input, command, &mut sent),
            _ => check_net(&mut net, features, &mut sent),
        }
    }
    check_net(&mut net, features, &mut sent);
    sent.seen
}

/// A frame as the guest's driver builds it (any header, any bytes), split
/// over up to three device-readable descriptors.
fn send_net_frame(net: &mut NetDriver<'_>, input: &mut Input<'_>, command: u8, sent: &mut NetSent) {
    let len = usize::from(input.u16()) + usize::from(command >> 7) * 0x1_0000;
    let frame = net_frame_bytes(input, len.min(MAX_BUFFER));
    let cuts = [input.u16(), input.u16()].map(|c| usize::from(c) % (frame.len() + 1));
    let (first, second) = (cuts[0].min(cuts[1]), cuts[0].max(cuts[1]));
    let parts: Vec<&[u8]> = match (command >> 3) % 3 {
        0 => vec![&frame],
        1 => vec![&frame[..first], &frame[first..]],
        _ => vec![&frame[..first], &frame[first..second], &frame[second..]],
    };
    if net.send(&parts).is_some() {
        sent.tx_chains += 1;
        if frame.len() >= NET_HEADER_LEN {
            sent.tx.push_back(frame);
        }
    }
}

/// `len` bytes of frame: the first (up to 32) from the input, the rest a
/// pattern, so that big frames cost little input.
fn net_frame_bytes(input: &mut Input<'_>, len: usize) -> Vec<u8> {
    let mut frame = input.bytes(len.min(32)).to_vec();
    let seed = frame.first().copied().unwrap_or(0);
    // A prime period: a piece written at the wrong offset shows.
    let pattern: Vec<u8> = (0..251u8)
        .map(|i| i.wrapping_mul(31).wrapping_add(seed))
        .collect();
    while frame.len() < len {
        let take = (len - frame.len()).min(pattern.len());
        frame.extend_from_slice(&pattern[..take]);
    }
    frame
}

/// A TX chain the device must drop: a buffer outside guest memory, a
/// device-writable descriptor, more than the largest frame, nothing at all.
fn send_bad_net_chain(
    net: &mut NetDriver<'_>,
    input: &mut Input<'_>,
    command: u8,
    sent: &mut NetSent,
) {
    let end = NET_LAYOUT.queue(1).end();
    let inside = NET_LAYOUT.queue(1).data.0;
    let extra = u32::from(input.u16());
    let readable = |addr, len| Desc {
        addr,
        len,
        writable: false,
    };
    let descs = match (command >> 3) % 5 {
        0 => vec![readable(end - 8, 9 + extra)],
        1 => vec![
            readable(inside, NET_HEADER_LEN as u32),
            Desc {
                addr: inside,
                len: extra,
                writable: true,
            },
        ],
        2 => vec![readable(inside, MAX_BUFFER as u32 + 1 + extra % 4096)],
        3 => vec![readable(inside, u32::MAX - extra)],
        _ => vec![readable(inside, 0); 1 + usize::from(command >> 6)],
    };
    if net.tx.add(&descs).is_some() {
        sent.tx_chains += 1;
    }
}

/// RX chains: any count and length, two descriptors, or bad ones
/// (device-readable, outside guest memory, empty).
fn post_net_buffers(net: &mut NetDriver<'_>, input: &mut Input<'_>, command: u8) {
    let count = 1 + usize::from(command >> 3) % 8;
    let len = u32::from(input.u16()) % (NET_LAYOUT.slot as u32 + 1);
    let shape = input.byte().unwrap_or(0);
    for _ in 0..count {
        let _ = match shape % 8 {
            0..=3 => net.rx.add_writable(&[len]),
            4 => net.rx.add_writable(&[len % 64, len]),
            5 => net.rx.add_readable(&[&[0u8; 64]]),
            6 => net.rx.add(&[Desc {
                addr: NET_LAYOUT.queue(1).end() - 8,
                len: 64,
                writable: true,
            }]),
            _ => net.rx.add_writable(&[0]),
        };
    }
}

/// The host writes a frame (never empty: a tap never reads empty) into the
/// tap, sometimes longer than the device's buffer (it is cut).
fn host_net_frame(net: &mut NetDriver<'_>, input: &mut Input<'_>, command: u8, sent: &mut NetSent) {
    let len = usize::from(input.u16()) + usize::from(command >> 7) * 0x1_0000;
    let mut frame = net_frame_bytes(input, len.min(MAX_BUFFER + 4096));
    if frame.is_empty() {
        frame.push(command);
    }
    if net.host_send(&frame).is_ok() {
        sent.rx_frames += 1;
        if frame.len() >= NET_HEADER_LEN {
            frame.truncate(MAX_BUFFER);
            sent.rx.push_back(frame);
        }
    }
}

/// Runs the handler and checks both directions: every TX chain came back
/// empty, every frame on the tap and in the guest is the next (or a later)
/// one sent, byte for byte, in buffers that hold it, and the counters add
/// up.
fn check_net(net: &mut NetDriver<'_>, features: u64, sent: &mut NetSent) {
    net.run();
    assert!(net.tx_used().iter().all(|u| u.len == 0), "TX used length");
    assert_eq!(net.tx.outstanding(), 0, "a TX chain was not used");
    for frame in net.host_received() {
        take_in_order(&mut sent.tx, &frame, "on the tap");
        sent.seen.0 += 1;
    }
    for frame in net.received() {
        if features & F_MRG_RXBUF == 0 {
            assert_eq!(frame.chains, 1, "a frame over several chains");
        }
        let mut bytes = frame.bytes;
        bytes[NUM_BUFFERS_OFFSET..NET_HEADER_LEN].fill(0);
        let matches = |sent: &Vec<u8>| {
            sent.len() == bytes.len()
                && sent[..NUM_BUFFERS_OFFSET] == bytes[..NUM_BUFFERS_OFFSET]
                && sent[NET_HEADER_LEN..] == bytes[NET_HEADER_LEN..]
        };
        let found = sent.rx.iter().position(matches);
        let index = found.unwrap_or_else(|| panic!("the guest got a frame never sent"));
        sent.rx.drain(..=index);
        sent.seen.1 += 1;
    }
    let stats = net.handler.stats();
    assert_eq!(stats.tx_frames + stats.tx_dropped, sent.tx_chains);
    assert_eq!(stats.tx_frames, sent.seen.0);
    assert_eq!(stats.rx_frames, sent.seen.1);
    let waiting = u64::from(net.handler.rx_pending());
    assert!(stats.rx_frames + stats.rx_dropped + waiting <= sent.rx_frames);
    assert_ne!(net.handler.watch(), TapWatch::Gone, "the tap was given up");
}

/// Removes from `sent` the frames dropped before `frame`, and `frame`.
fn take_in_order(sent: &mut VecDeque<Vec<u8>>, frame: &[u8], what: &str) {
    let index = sent.iter().position(|s| s == frame);
    let index = index.unwrap_or_else(|| panic!("a frame never sent (or out of order) {what}"));
    sent.drain(..=index);
}

/// Writing to a host stream whose reader left must fail with EPIPE, not
/// kill the process: Rust programs ignore SIGPIPE, libFuzzer's main does
/// not.
fn ignore_sigpipe() {
    static IGNORED: Once = Once::new();
    IGNORED.call_once(|| {
        // SAFETY: setting a signal's disposition to SIG_IGN has no
        // memory-safety preconditions.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    });
}

/// The fuzz input, read front to back; past its end, numbers are zero and
/// byte strings empty.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*first)
    }

    fn bytes(&mut self, len: usize) -> &'a [u8] {
        let (taken, rest) = self.0.split_at(len.min(self.0.len()));
        self.0 = rest;
        taken
    }

    fn u16(&mut self) -> u16 {
        let mut bytes = [0u8; 2];
        let taken = self.bytes(2);
        bytes[..taken.len()].copy_from_slice(taken);
        u16::from_le_bytes(bytes)
    }

    fn u32(&mut self) -> u32 {
        let mut bytes = [0u8; 4];
        let taken = self.bytes(4);
        bytes[..taken.len()].copy_from_slice(taken);
        u32::from_le_bytes(bytes)
    }
}

/// A directory of its own for each input's sockets, removed afterwards.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> ScratchDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "husk-vmm-fuzz-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).expect("creating a scratch directory");
        ScratchDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::vsock::CONN_BUFFER;

    /// Cheap deterministic inputs: a stand-in for the fuzz targets in CI.
    fn pseudo_random_inputs(seed: u64, count: usize, max_len: u64) -> Vec<Vec<u8>> {
        let mut state = seed;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        (0..count)
            .map(|_| {
                let len = next() % max_len;
                (0..len).map(|_| next() as u8).collect()
            })
            .collect()
    }

    /// Features negotiated, three queues set up, DRIVER_OK, QueueNotify on
    /// each queue: a device that really runs.
    fn bring_up(device_choice: u8) -> Vec<u8> {
        let mut input = vec![device_choice];
        let mut op = |kind: u8, offset: u16, value: u32| {
            input.push(kind);
            input.extend(offset.to_le_bytes());
            input.extend(value.to_le_bytes());
        };
        op(4, 0, 0);
        for queue in 0..3 {
            op(3, queue as u16 + 1, queue);
        }
        op(5, 0, 0);
        for queue in 0..3 {
            op(6, 0, queue);
        }
        input
    }

    #[test]
    fn the_mmio_body_brings_a_device_up() {
        for choice in [0, 1, 2] {
            assert!(drive_mmio(&bring_up(choice)), "device {choice} not running");
        }
    }

    #[test]
    fn the_vsock_body_delivers_packets() {
        let mut input = vec![3 | 7 << 3, 0x00, 0x10]; // 8 RX buffers of 4 KiB
        input.extend([1 << 3, 0, 0]); // a REQUEST from 49152 to the listened port
        input.extend(CONN_BUFFER.to_le_bytes()); // buf_alloc
        input.extend([0; 6]); // fwd_cnt, no payload
        input.push(7); // run

        assert_eq!(drive_vsock(&input), 1);
    }

    #[test]
    fn the_mmio_body_survives_pseudo_random_inputs() {
        for (i, input) in pseudo_random_inputs(0x2545_f491_4f6c_dd1d, 2000, 128)
            .iter()
            .enumerate()
        {
            // Half of them on top of a running device.
            let mut data = bring_up(i as u8);
            data.extend_from_slice(input);
            mmio_registers(if i % 2 == 0 { input } else { &data });
        }
    }

    #[test]
    fn the_vsock_body_survives_pseudo_random_inputs() {
        for input in pseudo_random_inputs(0x9e37_79b9_7f4a_7c15, 2000, 512) {
            vsock_packets(&input);
        }
    }

    #[test]
    fn the_net_body_moves_frames_both_ways() {
        let mut input = vec![0]; // merged RX buffers
        input.extend([4 | 7 << 3, 0x00, 0x20, 0]); // eight of 8 KiB
        input.extend([0, 100, 0]); // a frame of 100 bytes, whole
        input.extend([1; 32]);
        input.extend([0; 4]);
        input.extend([5, 0x60, 0xea]); // the host writes 60000 bytes
        input.extend([2; 32]);
        input.push(7); // run

        assert_eq!(drive_net(&input), (1, 1));
    }

    #[test]
    fn the_net_body_survives_pseudo_random_inputs() {
        for input in pseudo_random_inputs(0xd1b5_4a32_d192_ed03, 2000, 512) {
            net_frames(&input);
        }
    }

    #[test]
    fn scratch_directories_are_removed() {
        let scratch = ScratchDir::new();
        let path = scratch.path().to_path_buf();

        drop(scratch);

        assert!(!path.exists());
    }
}

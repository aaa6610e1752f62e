//! The driver's side of a virtqueue, for unit tests and fuzz targets: guest
//! memory, queues built from virtio-queue's mock (`virtio_queue::mock`), descriptor
//! chains offered and used buffers collected the way a guest driver would,
//! and vsock and net devices served without a guest ([`VsockDriver`],
//! [`NetDriver`], whose tap is one end of a `SOCK_SEQPACKET` pair).
//!
//! What the tests play here is the guest, so nothing is trusted: the helpers
//! can offer any descriptor, including ones outside guest memory.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::{AvailRing, DescriptorTable, UsedRing};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::EpollEvent;
use vmm_sys_util::eventfd::EventFd;

use super::net::{self, NetHandler, Tap, NUM_BUFFERS_OFFSET};
use super::vsock::muxer::Muxer;
use super::vsock::packet::{Header, Op, HEADER_LEN, TYPE_STREAM};
use super::vsock::{VsockHandler, HOST_CID};
use super::worker::{EventHandler, Poller};
use super::{ActiveQueue, Interrupt};
use crate::vstate::memory::GuestMemory;

/// Anonymous guest memory of `size` bytes from address 0.
pub fn guest_memory(size: usize) -> GuestMemory {
    Arc::new(
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).expect("anonymous guest memory"),
    )
}

/// An unsignalled, non-blocking eventfd.
pub fn eventfd() -> EventFd {
    EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")
}

/// One descriptor as the driver writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    /// Guest address of the buffer.
    pub addr: u64,
    /// Its length.
    pub len: u32,
    /// Whether the device may write it (else it reads it).
    pub writable: bool,
}

/// A chain the device returned.
#[derive(Debug, Clone)]
pub struct Used {
    /// The chain's head index.
    pub head: u16,
    /// Bytes the device says it wrote.
    pub len: u32,
    /// The chain's descriptors, as offered.
    pub descs: Vec<Desc>,
}

/// Where a queue and the buffers its descriptors point to live.
#[derive(Debug, Clone, Copy)]
pub struct QueueLayout {
    /// Address of the descriptor table; the rings follow it.
    pub rings: GuestAddress,
    /// Queue size (a power of two).
    pub size: u16,
    /// Address of the buffer of descriptor 0; descriptor `i` gets the
    /// buffer at `data + i * slot`.
    pub data: GuestAddress,
    /// Bytes of buffer per descriptor.
    pub slot: u64,
}

impl QueueLayout {
    /// The first address after the buffers.
    pub fn end(&self) -> u64 {
        self.data.0 + u64::from(self.size) * self.slot
    }
}

/// The driver's view of one split virtqueue, built from the mock's
/// descriptor table and rings.
///
/// The rings are placed here rather than by `MockSplitQueue::create`: in
/// virtio-queue 0.18 that puts the used ring `size` bytes after the start of
/// the available ring's entries, which take `2 * size`, so a driver with more
/// than half the queue offered has its avail entries overwritten by used
/// elements.
pub struct DriverQueue<'m> {
    desc_table: DescriptorTable<'m, GuestMemoryMmap>,
    avail: AvailRing<'m, GuestMemoryMmap>,
    used: UsedRing<'m, GuestMemoryMmap>,
    addresses: (u64, u64, u64),
    memory: &'m GuestMemoryMmap,
    layout: QueueLayout,
    free: Vec<u16>,
    chains: HashMap<u16, (Vec<u16>, Vec<Desc>)>,
    next_used: u16,
}

impl<'m> DriverQueue<'m> {
    /// Lays the queue out in `memory` (rings zeroed, nothing offered).
    pub fn new(memory: &'m GuestMemoryMmap, layout: QueueLayout) -> Self {
        let size = u64::from(layout.size);
        let desc = layout.rings.0;
        let avail = desc + 16 * size;
        // flags, idx, ring, used_event; the used ring is 4-byte aligned.
        let used = (avail + 4 + 2 * size + 2).next_multiple_of(4);
        DriverQueue {
            desc_table: DescriptorTable::new(memory, GuestAddress(desc), layout.size),
            avail: AvailRing::new(memory, GuestAddress(avail), layout.size),
            used: UsedRing::new(memory, GuestAddress(used), layout.size),
            addresses: (desc, avail, used),
            memory,
            layout,
            free: (0..layout.size).rev().collect(),
            chains: HashMap::new(),
            next_used: 0,
        }
    }

    /// The device's side of the queue, ready, as after the driver set it up.
    pub fn queue(&self) -> Queue {
        let (desc, avail, used) = self.addresses;
        let mut queue = Queue::new(self.layout.size).expect("a power-of-two queue size");
        queue.set_size(self.layout.size);
        queue.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
        queue.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
        queue.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
        queue.set_ready(true);
        assert!(queue.is_valid(self.memory), "the layout fits guest memory");
        queue
    }

    /// [`Self::queue`] with a fresh kick eventfd.
    pub fn active(&self) -> ActiveQueue {
        ActiveQueue {
            queue: self.queue(),
            kick: eventfd(),
        }
    }

    /// Addresses of the descriptor table, the available and the used ring.
    pub fn addresses(&self) -> (u64, u64, u64) {
        self.addresses
    }

    /// Chains offered and not yet used.
    pub fn outstanding(&self) -> usize {
        self.chains.len()
    }

    /// Offers a chain of arbitrary descriptors; `None` (nothing offered)
    /// when `descs` is empty or longer than the free table entries.
    pub fn add(&mut self, descs: &[Desc]) -> Option<u16> {
        let indexes = self.reserve(descs.len())?;
        Some(self.offer(indexes, descs.to_vec()))
    }

    /// Offers a chain of device-readable descriptors holding `parts`, one
    /// descriptor each, in the descriptors' own buffer slots.
    pub fn add_readable(&mut self, parts: &[&[u8]]) -> Option<u16> {
        let indexes = self.reserve(parts.len())?;
        let descs = indexes
            .iter()
            .zip(parts)
            .map(|(index, part)| {
                assert!(
                    part.len() as u64 <= self.layout.slot,
                    "part larger than a slot"
                );
                let addr = self.slot(*index);
                self.memory
                    .write_slice(part, GuestAddress(addr))
                    .expect("slot inside guest memory");
                Desc {
                    addr,
                    len: part.len() as u32,
                    writable: false,
                }
            })
            .collect();
        Some(self.offer(indexes, descs))
    }

    /// Offers a chain of device-writable descriptors of `lens` bytes, in
    /// the descriptors' own buffer slots.
    pub fn add_writable(&mut self, lens: &[u32]) -> Option<u16> {
        let indexes = self.reserve(lens.len())?;
        let descs = indexes
            .iter()
            .zip(lens)
            .map(|(index, len)| {
                assert!(
                    u64::from(*len) <= self.layout.slot,
                    "buffer larger than a slot"
                );
                Desc {
                    addr: self.slot(*index),
                    len: *len,
                    writable: true,
                }
            })
            .collect();
        Some(self.offer(indexes, descs))
    }

    /// The next chain the device used, if any; its descriptors are free
    /// again.
    pub fn next_used(&mut self) -> Option<Used> {
        let used = &self.used;
        if used.idx().load() == self.next_used {
            return None;
        }
        let element = used
            .ring()
            .ref_at(usize::from(self.next_used % self.layout.size))
            .expect("index below the queue size")
            .load();
        self.next_used = self.next_used.wrapping_add(1);
        let head = u16::try_from(element.id()).expect("the device used a head index above u16");
        let (indexes, descs) = self
            .chains
            .remove(&head)
            .unwrap_or_else(|| panic!("the device used chain {head}, which is not offered"));
        self.free.extend(indexes.into_iter().rev());
        Some(Used {
            head,
            len: element.len(),
            descs,
        })
    }

    /// The first `len` bytes of a used chain's writable descriptors.
    pub fn written(&self, used: &Used) -> Vec<u8> {
        let mut out = Vec::with_capacity(used.len as usize);
        for desc in used.descs.iter().filter(|d| d.writable) {
            let take = (used.len as usize - out.len()).min(desc.len as usize);
            let start = out.len();
            out.resize(start + take, 0);
            self.memory
                .read_slice(&mut out[start..], GuestAddress(desc.addr))
                .expect("descriptor inside guest memory");
        }
        out
    }

    /// The buffer slot of descriptor `index`.
    pub fn slot(&self, index: u16) -> u64 {
        self.layout.data.0 + u64::from(index) * self.layout.slot
    }

    fn reserve(&mut self, count: usize) -> Option<Vec<u16>> {
        if count == 0 || count > self.free.len() {
            return None;
        }
        Some(
            (0..count)
                .map(|_| self.free.pop().expect("checked"))
                .collect(),
        )
    }

    fn offer(&mut self, indexes: Vec<u16>, descs: Vec<Desc>) -> u16 {
        for (i, desc) in descs.iter().enumerate() {
            let mut flags = if desc.writable {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            let next = match indexes.get(i + 1) {
                Some(next) => {
                    flags |= VRING_DESC_F_NEXT as u16;
                    *next
                }
                None => 0,
            };
            let raw = RawDescriptor::from(SplitDescriptor::new(desc.addr, desc.len, flags, next));
            self.desc_table
                .store(indexes[i], raw)
                .expect("index below the queue size");
        }
        let head = indexes[0];
        let avail = &self.avail;
        let idx = avail.idx().load();
        avail
            .ring()
            .ref_at(usize::from(idx % self.layout.size))
            .expect("index below the queue size")
            .store(head);
        avail.idx().store(idx.wrapping_add(1));
        self.chains.insert(head, (indexes, descs));
        head
    }
}

/// The guest's context id in the vsock helpers.
pub const GUEST_CID: u64 = 3;
/// The receive buffer the helpers' guest advertises unless told otherwise.
pub const GUEST_BUF_ALLOC: u32 = 256 << 10;

/// Where a [`VsockDriver`] puts its three queues and their buffers.
#[derive(Debug, Clone, Copy)]
pub struct VsockLayout {
    /// Size of each queue.
    pub queue_size: u16,
    /// Buffer bytes per descriptor.
    pub slot: u64,
}

impl VsockLayout {
    /// Full-size queues whose descriptors can each hold a maximal packet.
    pub const FULL: VsockLayout = VsockLayout {
        queue_size: super::vsock::QUEUE_SIZE,
        slot: 0x2_0000,
    };

    /// The layout of queue `index` (0: rx, 1: tx, 2: event).
    pub fn queue(&self, index: usize) -> QueueLayout {
        queue_layout(index, self.queue_size, self.slot)
    }

    /// Guest memory that holds the three queues and their buffers.
    pub fn memory(&self) -> GuestMemory {
        guest_memory(self.queue(2).end() as usize)
    }
}

/// Queue `index` of a device: its rings in the first MiB (16 KiB each), its
/// buffers after the buffers of the queues before it.
fn queue_layout(index: usize, queue_size: u16, slot: u64) -> QueueLayout {
    let index = index as u64;
    QueueLayout {
        rings: GuestAddress(index * 0x4000),
        size: queue_size,
        data: GuestAddress(0x10_0000 + index * u64::from(queue_size) * slot),
        slot,
    }
}

/// A guest header from `src_port` to host port `dst_port`, no payload,
/// advertising [`GUEST_BUF_ALLOC`].
pub fn guest_header(op: Op, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        kind: TYPE_STREAM,
        op: op as u16,
        flags: 0,
        buf_alloc: GUEST_BUF_ALLOC,
        fwd_cnt: 0,
    }
}

/// A packet the device put in an RX buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Its header.
    pub header: Header,
    /// Its payload (`header.len` bytes).
    pub payload: Vec<u8>,
}

impl Packet {
    /// The operation (panics on an unknown code: the device never sends one).
    pub fn op(&self) -> Op {
        self.header.operation().expect("the device sent a known op")
    }
}

/// A vsock device's queue handler served in the calling thread, with the
/// guest's side of its queues: no worker thread, no guest.
pub struct VsockDriver<'m> {
    /// The receive queue (device to guest).
    pub rx: DriverQueue<'m>,
    /// The transmit queue (guest to device).
    pub tx: DriverQueue<'m>,
    /// The handler under test.
    pub handler: VsockHandler,
    /// The epoll instance the handler registered its descriptors with.
    pub poller: Poller,
    /// The device's interrupt eventfd.
    pub irq: EventFd,
    /// The queues' kick eventfds (the driver's notify).
    kicks: Vec<EventFd>,
    _event: DriverQueue<'m>,
}

impl<'m> VsockDriver<'m> {
    /// Serves `muxer` on the queues of `layout` in `memory` (from
    /// [`VsockLayout::memory`]).
    pub fn new(memory: &'m GuestMemory, layout: VsockLayout, muxer: Muxer) -> Self {
        let rx = DriverQueue::new(memory, layout.queue(0));
        let tx = DriverQueue::new(memory, layout.queue(1));
        let event = DriverQueue::new(memory, layout.queue(2));
        let irq = eventfd();
        let interrupt = Interrupt::new(irq.try_clone().expect("cloning an eventfd"));
        let queues = [rx.active(), tx.active(), event.active()];
        let kicks = queues
            .iter()
            .map(|q| q.kick.try_clone().expect("cloning an eventfd"))
            .collect();
        let mut handler = VsockHandler::new(memory.clone(), queues, interrupt, muxer);
        let poller = Poller::new().expect("epoll");
        handler.init(&poller).expect("registering the handler");
        VsockDriver {
            rx,
            tx,
            handler,
            poller,
            irq,
            kicks,
            _event: event,
        }
    }

    /// Offers a packet on the TX queue: the header in one descriptor, the
    /// payload (if any) in a second one, as Linux does. The header is sent
    /// as given (set its `len`).
    pub fn send(&mut self, header: &Header, payload: &[u8]) -> Option<u16> {
        let bytes = header.to_bytes();
        if payload.is_empty() {
            self.tx.add_readable(&[&bytes])
        } else {
            self.tx.add_readable(&[&bytes, payload])
        }
    }

    /// Offers up to `count` RX buffers of `len` bytes each (fewer when the
    /// queue is full); returns how many.
    pub fn post_rx(&mut self, count: usize, len: u32) -> usize {
        (0..count)
            .take_while(|_| self.rx.add_writable(&[len]).is_some())
            .count()
    }

    /// Does what the worker does, in this thread: waits up to `timeout_ms`
    /// for a host socket, notifies the RX and TX queues, and handles every
    /// ready descriptor (each time processing both queues). TX buffers the
    /// device used are taken back.
    pub fn run_with_timeout(&mut self, timeout_ms: i32) {
        let mut events = vec![EpollEvent::default(); 32];
        let ready = self
            .poller
            .wait(timeout_ms, &mut events)
            .expect("epoll_wait");
        self.dispatch(&events[..ready]);
        for kick in &self.kicks[..2] {
            kick.write(1).expect("notifying a queue");
        }
        // Bounded: a descriptor that stays ready must not hang a test.
        for _ in 0..16 {
            let ready = self.poller.wait(0, &mut events).expect("epoll_wait");
            if ready == 0 {
                break;
            }
            self.dispatch(&events[..ready]);
        }
        while self.tx.next_used().is_some() {}
    }

    fn dispatch(&mut self, events: &[EpollEvent]) {
        for event in events {
            self.handler
                .handle(&self.poller, event.data(), event.event_set());
        }
    }

    /// [`Self::run_with_timeout`] without waiting.
    pub fn run(&mut self) {
        self.run_with_timeout(0);
    }

    /// Takes the packets the device wrote into RX buffers, in order.
    /// Buffers it returned empty (too short for a header) are skipped.
    pub fn received(&mut self) -> Vec<Packet> {
        let mut packets = Vec::new();
        while let Some(used) = self.rx.next_used() {
            if (used.len as usize) < HEADER_LEN {
                continue;
            }
            let bytes = self.rx.written(&used);
            let header = Header::parse(bytes[..HEADER_LEN].try_into().expect("a header's worth"));
            let payload = bytes[HEADER_LEN..].to_vec();
            assert_eq!(
                payload.len(),
                header.len as usize,
                "used length disagrees with the header: {header:?}"
            );
            packets.push(Packet { header, payload });
        }
        packets
    }
}

/// Where a [`NetDriver`] puts its two queues and their buffers.
#[derive(Debug, Clone, Copy)]
pub struct NetLayout {
    /// Size of each queue.
    pub queue_size: u16,
    /// Buffer bytes per descriptor.
    pub slot: u64,
}

impl NetLayout {
    /// Full-size queues whose descriptors can each hold a maximal frame.
    pub const FULL: NetLayout = NetLayout {
        queue_size: net::QUEUE_SIZE,
        slot: 0x1_1000,
    };

    /// The layout of queue `index` (0: rx, 1: tx).
    pub fn queue(&self, index: usize) -> QueueLayout {
        queue_layout(index, self.queue_size, self.slot)
    }

    /// Guest memory that holds both queues and their buffers.
    pub fn memory(&self) -> GuestMemory {
        guest_memory(self.queue(1).end() as usize)
    }
}

/// A connected, non-blocking `SOCK_SEQPACKET` pair: one end stands in for a
/// tap, the other is the host side of it.
pub fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    let kind = libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: socketpair writes two descriptors into `fds`, which lives
    // through the call.
    let rc = unsafe { libc::socketpair(libc::AF_UNIX, kind, 0, fds.as_mut_ptr()) };
    assert_eq!(rc, 0, "socketpair: {}", io::Error::last_os_error());
    // SAFETY: socketpair succeeded: both descriptors are new and ours.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// A frame the device put in RX buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RxFrame {
    /// The header (with `num_buffers`) and the frame.
    pub bytes: Vec<u8>,
    /// How many chains it took.
    pub chains: usize,
}

impl RxFrame {
    /// The header's `num_buffers`.
    pub fn num_buffers(&self) -> u16 {
        num_buffers(&self.bytes)
    }
}

/// Checks that the device wrote no more than the chain's writable buffers.
fn assert_fits(used: &Used) {
    let room: u64 = used
        .descs
        .iter()
        .filter(|d| d.writable)
        .map(|d| u64::from(d.len))
        .sum();
    assert!(
        u64::from(used.len) <= room,
        "more than the buffers: {used:?}"
    );
}

/// `num_buffers` of the header at the start of `bytes`.
pub fn num_buffers(bytes: &[u8]) -> u16 {
    u16::from_le_bytes([bytes[NUM_BUFFERS_OFFSET], bytes[NUM_BUFFERS_OFFSET + 1]])
}

/// A net device's queue handler served in the calling thread, with the
/// guest's side of its queues and the host's side of its tap.
pub struct NetDriver<'m> {
    /// The receive queue (device to guest).
    pub rx: DriverQueue<'m>,
    /// The transmit queue (guest to device).
    pub tx: DriverQueue<'m>,
    /// The handler under test.
    pub handler: NetHandler,
    /// The epoll instance the handler registered its descriptors with.
    pub poller: Poller,
    /// The device's interrupt eventfd.
    pub irq: EventFd,
    /// The host's end of the socket standing in for the tap.
    pub host: File,
    kicks: Vec<EventFd>,
}

impl<'m> NetDriver<'m> {
    /// Serves the queues of `layout` in `memory` (from
    /// [`NetLayout::memory`]) for a driver that accepted `features`.
    pub fn new(memory: &'m GuestMemory, layout: NetLayout, features: u64) -> Self {
        let rx = DriverQueue::new(memory, layout.queue(0));
        let tx = DriverQueue::new(memory, layout.queue(1));
        let (tap, host) = seqpacket_pair();
        let irq = eventfd();
        let interrupt = Interrupt::new(irq.try_clone().expect("cloning an eventfd"));
        let queues = [rx.active(), tx.active()];
        let kicks = queues
            .iter()
            .map(|q| q.kick.try_clone().expect("cloning an eventfd"))
            .collect();
        let tap = Tap::from_socket_for_tests(tap);
        let mut handler = NetHandler::new(memory.clone(), queues, interrupt, tap, features);
        let poller = Poller::new().expect("epoll");
        handler.init(&poller).expect("registering the handler");
        NetDriver {
            rx,
            tx,
            handler,
            poller,
            irq,
            host: File::from(host),
            kicks,
        }
    }

    /// Offers a frame on the TX queue, one device-readable descriptor per
    /// part (the first starting with the header).
    pub fn send(&mut self, parts: &[&[u8]]) -> Option<u16> {
        self.tx.add_readable(parts)
    }

    /// Offers `count` RX chains of descriptors of `lens` bytes (fewer when
    /// the queue is full); returns how many.
    pub fn post_rx(&mut self, count: usize, lens: &[u32]) -> usize {
        (0..count)
            .take_while(|_| self.rx.add_writable(lens).is_some())
            .count()
    }

    /// The host writes a frame (with its header) into the tap.
    pub fn host_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.host.write(bytes).map(drop)
    }

    /// The frames (with their headers) the device wrote to the tap, in
    /// order.
    pub fn host_received(&mut self) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let mut buf = vec![0u8; net::MAX_BUFFER + 1];
        while let Ok(len) = self.host.read(&mut buf) {
            if len == 0 {
                break;
            }
            frames.push(buf[..len].to_vec());
        }
        frames
    }

    /// Does what the worker does, in this thread: waits up to `timeout_ms`
    /// for the tap, notifies both queues and handles every ready
    /// descriptor. Used TX chains stay in `tx` (see [`Self::tx_used`]).
    pub fn run_with_timeout(&mut self, timeout_ms: i32) {
        let mut events = vec![EpollEvent::default(); 8];
        let ready = self
            .poller
            .wait(timeout_ms, &mut events)
            .expect("epoll_wait");
        self.dispatch(&events[..ready]);
        for kick in &self.kicks {
            kick.write(1).expect("notifying a queue");
        }
        // Bounded: a descriptor that stays ready must not hang a test.
        for _ in 0..16 {
            let ready = self.poller.wait(0, &mut events).expect("epoll_wait");
            if ready == 0 {
                break;
            }
            self.dispatch(&events[..ready]);
        }
    }

    fn dispatch(&mut self, events: &[EpollEvent]) {
        for event in events {
            self.handler
                .handle(&self.poller, event.data(), event.event_set());
        }
    }

    /// [`Self::run_with_timeout`] without waiting.
    pub fn run(&mut self) {
        self.run_with_timeout(0);
    }

    /// The TX chains the device used, in order.
    pub fn tx_used(&mut self) -> Vec<Used> {
        std::iter::from_fn(|| self.tx.next_used()).collect()
    }

    /// Takes the frames the device wrote into RX buffers, in order, each
    /// gathered over the chains its `num_buffers` says. Chains used empty
    /// (dropped frames) are skipped.
    pub fn received(&mut self) -> Vec<RxFrame> {
        let mut frames = Vec::new();
        while let Some(first) = self.rx.next_used() {
            assert_fits(&first);
            if first.len == 0 {
                continue;
            }
            let mut bytes = self.rx.written(&first);
            let mut chains = 1;
            let mut take_next = |bytes: &mut Vec<u8>, chains: &mut usize, what: &str| {
                let next = self.rx.next_used().unwrap_or_else(|| {
                    panic!("{what} is missing after {chains} chains: {bytes:02x?}")
                });
                assert_fits(&next);
                assert_ne!(next.len, 0, "an empty chain inside a frame");
                bytes.extend(self.rx.written(&next));
                *chains += 1;
            };
            while bytes.len() < net::HEADER_LEN {
                take_next(&mut bytes, &mut chains, "the rest of the header");
            }
            let count = usize::from(num_buffers(&bytes));
            while chains < count {
                take_next(&mut bytes, &mut chains, "a buffer of the frame");
            }
            let frame = RxFrame { bytes, chains };
            assert_eq!(
                usize::from(frame.num_buffers()),
                frame.chains,
                "num_buffers disagrees with the chains used"
            );
            frames.push(frame);
        }
        frames
    }
}

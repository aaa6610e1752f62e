//! The net worker: guest frames from the TX queue to the tap, and tap frames
//! into RX buffers, on queue kicks and tap readiness.
//!
//! TX: each chain is gathered (device-readable descriptors only, at most
//! [`MAX_BUFFER`] bytes) into one buffer and written to the tap in one
//! `write`; the chain is used with length 0 whatever becomes of the frame.
//!
//! RX: a frame is read from the tap into one buffer and placed in RX chains:
//! with VIRTIO_NET_F_MRG_RXBUF over as many chains as it takes (their count
//! goes in `num_buffers`), without it in one chain that must hold it all.
//! The chains are popped first; if the queue runs dry they are put back and
//! the frame waits, the tap unwatched, for the driver's next RX kick. A
//! frame's chains enter the used ring together, with one index update: Linux
//! drops a merged frame when it sees its first buffer but not the others.
//!
//! Both directions stop after [`MAX_FRAMES_PER_WAKEUP`] frames and go back
//! to epoll (TX kicks itself to come back), so neither starves the other.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use super::tap::Tap;
use super::{
    F_MRG_RXBUF, HEADER_LEN, MAX_BUFFER, MAX_CHAIN_DESCRIPTORS, MAX_FRAMES_PER_WAKEUP,
    MAX_RX_SEGMENTS, NUM_BUFFERS_OFFSET, QUEUE_SIZE, RX_QUEUE, TX_QUEUE,
};
use crate::devices::virtio::worker::{EventHandler, Poller};
use crate::devices::virtio::{ActiveQueue, Interrupt};
use crate::vstate::memory::GuestMemory;

const RX_KICK: u64 = 0;
const TX_KICK: u64 = 1;
const TAP: u64 = 2;
/// The used ring's `flags` and `idx` before its elements (virtio 1.2
/// section 2.7.8); each element is `{ id: le32, len: le32 }`.
const USED_RING_HEADER: u64 = 4;
const USED_ELEMENT: u64 = 8;

/// What the device did since it was activated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames written to the tap.
    pub tx_frames: u64,
    /// Their bytes, headers not counted.
    pub tx_bytes: u64,
    /// TX chains that sent nothing: bad chains, frames the tap refused.
    pub tx_dropped: u64,
    /// Frames given to the guest.
    pub rx_frames: u64,
    /// Their bytes, headers not counted.
    pub rx_bytes: u64,
    /// Frames from the tap the guest did not get: too short, or no room.
    pub rx_dropped: u64,
}

/// Whether the worker watches the tap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapWatch {
    /// Frames are read as they come.
    Reading,
    /// A frame waits for RX buffers: the tap is not read meanwhile.
    Paused,
    /// The tap failed or hung up: not watched again until a reset.
    Gone,
}

/// Serves an active net device.
pub struct NetHandler {
    memory: GuestMemory,
    queues: [ActiveQueue; 2],
    interrupt: Interrupt,
    tap: Tap,
    mergeable: bool,
    tx_buffer: Box<[u8]>,
    rx_buffer: Box<[u8]>,
    /// Length of the frame in `rx_buffer` waiting for RX buffers (0: none).
    rx_pending: usize,
    /// The chains the frame goes to, with the bytes each gets.
    rx_chains: Vec<(u16, u32)>,
    /// The guest buffers the frame is written to, in order.
    rx_segments: Vec<(GuestAddress, usize)>,
    watch: TapWatch,
    stats: NetStats,
}

impl NetHandler {
    /// A handler for the RX and TX queues and `tap` (its header length and
    /// offloads already set), for a driver that accepted `features`.
    pub fn new(
        memory: GuestMemory,
        queues: [ActiveQueue; 2],
        interrupt: Interrupt,
        tap: Tap,
        features: u64,
    ) -> Self {
        NetHandler {
            memory,
            queues,
            interrupt,
            tap,
            mergeable: features & F_MRG_RXBUF != 0,
            tx_buffer: vec![0u8; MAX_BUFFER].into_boxed_slice(),
            rx_buffer: vec![0u8; MAX_BUFFER].into_boxed_slice(),
            rx_pending: 0,
            rx_chains: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            rx_segments: Vec::with_capacity(MAX_RX_SEGMENTS),
            watch: TapWatch::Reading,
            stats: NetStats::default(),
        }
    }

    /// Gives the tap back (device reset).
    pub fn into_tap(self) -> Tap {
        self.tap
    }

    /// The tap.
    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    /// The counters.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Whether the tap is watched.
    pub fn watch(&self) -> TapWatch {
        self.watch
    }

    /// Whether a frame from the tap waits for RX buffers.
    pub fn rx_pending(&self) -> bool {
        self.rx_pending > 0
    }

    /// Sends the frames the guest queued, up to the per-wakeup bound;
    /// returns how many chains were used.
    pub fn process_tx(&mut self) -> usize {
        let memory = self.memory.as_ref();
        let queue = &mut self.queues[TX_QUEUE].queue;
        let mut used = 0;
        while used < MAX_FRAMES_PER_WAKEUP {
            let Some(chain) = queue.pop_descriptor_chain(memory) else {
                break;
            };
            let head = chain.head_index();
            let sent = gather(chain, memory, &mut self.tx_buffer)
                .filter(|len| *len >= HEADER_LEN)
                .filter(|len| write_frame(&self.tap, &self.tx_buffer[..*len]).is_ok());
            match sent {
                Some(len) => {
                    self.stats.tx_frames += 1;
                    self.stats.tx_bytes += (len - HEADER_LEN) as u64;
                }
                None => self.stats.tx_dropped += 1,
            }
            if queue.add_used(memory, head, 0).is_err() {
                break;
            }
            used += 1;
        }
        if used == MAX_FRAMES_PER_WAKEUP {
            // More may wait: come back once the other events are served.
            let _ = self.queues[TX_QUEUE].kick.write(1);
        }
        used
    }

    /// Moves frames from the tap into RX buffers, up to the per-wakeup
    /// bound, starting with the one waiting; returns how many chains were
    /// used.
    pub fn process_rx(&mut self, poller: &Poller) -> usize {
        let mut used = 0;
        for _ in 0..MAX_FRAMES_PER_WAKEUP {
            if self.rx_pending == 0 {
                let Some(len) = self.read_frame(poller) else {
                    break;
                };
                if len < HEADER_LEN {
                    self.stats.rx_dropped += 1;
                    continue;
                }
                self.rx_pending = len;
            }
            let Some(chains) = self.deliver() else {
                break;
            };
            used += chains;
            self.rx_pending = 0;
        }
        self.update_watch(poller);
        used
    }

    /// Reads the next frame into `rx_buffer`; `None` when none waits or the
    /// tap is not read.
    fn read_frame(&mut self, poller: &Poller) -> Option<usize> {
        if self.watch != TapWatch::Reading {
            return None;
        }
        loop {
            match self.tap.read(&mut self.rx_buffer) {
                // A tap never reads empty; a socket standing in for one
                // does when its peer has left.
                Ok(0) => {
                    self.stop_watching(poller, "end of file");
                    return None;
                }
                Ok(len) => return Some(len),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.stop_watching(poller, &format!("read: {e}"));
                    return None;
                }
            }
        }
    }

    /// Places the waiting frame in RX chains. `None` when the queue ran dry
    /// first (the chains are put back, the frame still waits); else the
    /// number of chains used, holding the frame or, if it was dropped,
    /// nothing.
    fn deliver(&mut self) -> Option<usize> {
        let memory = self.memory.as_ref();
        let queue = &mut self.queues[RX_QUEUE].queue;
        let len = self.rx_pending;
        self.rx_chains.clear();
        self.rx_segments.clear();
        let mut room = 0;
        let mut fits = true;
        while room < len {
            if self.rx_chains.len() == usize::from(queue.size()) {
                // As many buffers as the ring holds, and still too small:
                // waiting would stall the queue for good.
                fits = false;
                break;
            }
            let Some(chain) = queue.pop_descriptor_chain(memory) else {
                for _ in 0..self.rx_chains.len() {
                    queue.go_to_previous_position();
                }
                return None;
            };
            let head = chain.head_index();
            let got = scatter_list(chain, memory, len - room, &mut self.rx_segments).unwrap_or(0);
            self.rx_chains.push((head, got as u32));
            room += got;
            if got == 0 || (!self.mergeable && room < len) {
                fits = false;
                break;
            }
        }
        if fits {
            let count = self.rx_chains.len() as u16;
            self.rx_buffer[NUM_BUFFERS_OFFSET..HEADER_LEN].copy_from_slice(&count.to_le_bytes());
            fits = write_segments(memory, &self.rx_buffer[..len], &self.rx_segments);
        }
        if fits {
            self.stats.rx_frames += 1;
            self.stats.rx_bytes += (len - HEADER_LEN) as u64;
        } else {
            self.stats.rx_dropped += 1;
            self.rx_chains
                .iter_mut()
                .for_each(|(_, written)| *written = 0);
        }
        // Fails only if the used ring left guest memory, which activation
        // ruled out; the chains are lost with the queue then.
        let _ = add_used_together(queue, memory, &self.rx_chains);
        Some(self.rx_chains.len())
    }

    /// Watches the tap again once no frame waits, and stops while one does.
    fn update_watch(&mut self, poller: &Poller) {
        let (next, events) = match (self.watch, self.rx_pending > 0) {
            (TapWatch::Reading, true) => (TapWatch::Paused, EventSet::empty()),
            (TapWatch::Paused, false) => (TapWatch::Reading, EventSet::IN),
            _ => return,
        };
        match poller.modify(self.tap.as_raw_fd(), TAP, events) {
            Ok(()) => self.watch = next,
            Err(e) => self.stop_watching(poller, &format!("epoll: {e}")),
        }
    }

    fn stop_watching(&mut self, poller: &Poller, why: &str) {
        let fd = self.tap.as_raw_fd();
        eprintln!("husk-vmm: virtio-net: tap fd {fd}: {why}; no longer read until a reset");
        let _ = poller.remove(fd);
        self.watch = TapWatch::Gone;
    }
}

/// Copies a TX chain into `buffer`; `None` if the chain is bad: a
/// device-writable descriptor, a buffer outside guest memory, more than
/// `buffer` holds or too many descriptors.
fn gather(
    chain: DescriptorChain<&GuestMemoryMmap>,
    memory: &GuestMemoryMmap,
    buffer: &mut [u8],
) -> Option<usize> {
    let mut len = 0usize;
    for (index, desc) in chain.enumerate() {
        if index == MAX_CHAIN_DESCRIPTORS || desc.is_write_only() {
            return None;
        }
        let end = len
            .checked_add(desc.len() as usize)
            .filter(|end| *end <= buffer.len())?;
        memory.read_slice(&mut buffer[len..end], desc.addr()).ok()?;
        len = end;
    }
    Some(len)
}

/// Writes one frame to the tap; a full, down or refusing tap drops it.
fn write_frame(tap: &Tap, frame: &[u8]) -> io::Result<()> {
    loop {
        match tap.write(frame) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other.map(drop),
        }
    }
}

/// Lists the guest buffers of an RX chain that the next `want` bytes go
/// to, appending them to `segments`; returns how many bytes the chain takes
/// (less than `want` if it is shorter), `None` if it is bad: a
/// device-readable descriptor, a buffer outside guest memory, too many
/// descriptors or segments.
fn scatter_list(
    chain: DescriptorChain<&GuestMemoryMmap>,
    memory: &GuestMemoryMmap,
    want: usize,
    segments: &mut Vec<(GuestAddress, usize)>,
) -> Option<usize> {
    let mut got = 0;
    for (index, desc) in chain.enumerate() {
        if got == want {
            break;
        }
        if index == MAX_CHAIN_DESCRIPTORS || !desc.is_write_only() {
            return None;
        }
        let len = (desc.len() as usize).min(want - got);
        if len == 0 {
            continue;
        }
        if segments.len() == MAX_RX_SEGMENTS
            || !GuestMemoryBackend::check_range(memory, desc.addr(), len)
        {
            return None;
        }
        segments.push((desc.addr(), len));
        got += len;
    }
    Some(got)
}

/// Writes `frame` across `segments` (which hold exactly its length).
fn write_segments(
    memory: &GuestMemoryMmap,
    frame: &[u8],
    segments: &[(GuestAddress, usize)],
) -> bool {
    let mut offset = 0;
    for (addr, len) in segments {
        let Some(part) = frame.get(offset..offset + len) else {
            return false;
        };
        if memory.write_slice(part, *addr).is_err() {
            return false;
        }
        offset += len;
    }
    offset == frame.len()
}

/// Adds `chains` to the used ring and publishes them with one index store
/// (release ordered after the elements), so the driver sees all of them or
/// none. Does what `Queue::add_used` does, minus the store per element;
/// EVENT_IDX is not offered, so its `num_added` count is not needed.
fn add_used_together(
    queue: &mut Queue,
    memory: &GuestMemoryMmap,
    chains: &[(u16, u32)],
) -> Result<(), GuestMemoryError> {
    let ring = queue.used_ring();
    let size = queue.size().max(1);
    let start = queue.next_used();
    for (i, (head, len)) in chains.iter().enumerate() {
        let slot = start.wrapping_add(i as u16) % size;
        let mut element = [0u8; USED_ELEMENT as usize];
        element[..4].copy_from_slice(&u32::from(*head).to_le_bytes());
        element[4..].copy_from_slice(&len.to_le_bytes());
        let offset = USED_RING_HEADER + u64::from(slot) * USED_ELEMENT;
        memory.write_slice(&element, GuestAddress(ring.wrapping_add(offset)))?;
    }
    let next = start.wrapping_add(chains.len() as u16);
    memory.store(
        next.to_le(),
        GuestAddress(ring.wrapping_add(2)),
        Ordering::Release,
    )?;
    queue.set_next_used(next);
    Ok(())
}

impl EventHandler for NetHandler {
    fn init(&mut self, poller: &Poller) -> io::Result<()> {
        poller.add(
            self.queues[RX_QUEUE].kick.as_raw_fd(),
            RX_KICK,
            EventSet::IN,
        )?;
        poller.add(
            self.queues[TX_QUEUE].kick.as_raw_fd(),
            TX_KICK,
            EventSet::IN,
        )?;
        poller.add(self.tap.as_raw_fd(), TAP, EventSet::IN)?;
        // Frames queued before activation, either way.
        if self.process_tx() + self.process_rx(poller) > 0 {
            self.interrupt.signal_used_queue();
        }
        Ok(())
    }

    fn handle(&mut self, poller: &Poller, token: u64, events: EventSet) {
        let used = match token {
            RX_KICK => {
                let _ = self.queues[RX_QUEUE].kick.read();
                self.process_rx(poller)
            }
            TX_KICK => {
                let _ = self.queues[TX_QUEUE].kick.read();
                self.process_tx()
            }
            // Unwatched, the tap still reports errors and hang-ups: it is
            // gone, and would otherwise wake the worker forever.
            TAP if self.watch == TapWatch::Paused
                && events.intersects(EventSet::ERROR | EventSet::HANG_UP) =>
            {
                self.stop_watching(poller, "error or hang-up");
                0
            }
            TAP => self.process_rx(poller),
            _ => 0,
        };
        if used > 0 {
            self.interrupt.signal_used_queue();
        }
    }
}

#[cfg(test)]
mod tests;

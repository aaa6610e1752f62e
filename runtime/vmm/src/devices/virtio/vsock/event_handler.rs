//! The vsock worker: moves guest packets from the TX queue into the muxer,
//! and the muxer's packets into RX buffers, on queue kicks and host socket
//! readiness.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;

use virtio_queue::{QueueOwnedT, QueueT};
use vmm_sys_util::epoll::EventSet;

use super::muxer::{Muxer, STREAM_TOKEN_BASE};
use super::packet::{Header, HEADER_LEN};
use super::{EVENT_QUEUE, MAX_PAYLOAD, RX_QUEUE, TX_QUEUE};
use crate::devices::virtio::worker::{EventHandler, Poller};
use crate::devices::virtio::{ActiveQueue, Interrupt};
use crate::vstate::memory::GuestMemory;

const RX_KICK: u64 = 0;
const TX_KICK: u64 = 1;
const EVENT_KICK: u64 = 2;
const LISTENER: u64 = 3;

/// Serves an active vsock device.
pub struct VsockHandler {
    memory: GuestMemory,
    queues: [ActiveQueue; 3],
    interrupt: Interrupt,
    muxer: Muxer,
    payload: Vec<u8>,
}

impl VsockHandler {
    /// A handler for the three queues.
    pub fn new(
        memory: GuestMemory,
        queues: [ActiveQueue; 3],
        interrupt: Interrupt,
        muxer: Muxer,
    ) -> Self {
        VsockHandler {
            memory,
            queues,
            interrupt,
            muxer,
            payload: Vec::with_capacity(MAX_PAYLOAD as usize),
        }
    }

    /// Gives the muxer back (device reset).
    pub fn into_muxer(self) -> Muxer {
        self.muxer
    }

    /// The muxer (tests).
    pub fn muxer(&self) -> &Muxer {
        &self.muxer
    }

    /// Takes every packet the guest queued; returns how many.
    pub fn process_tx(&mut self, poller: &Poller) -> usize {
        let memory = self.memory.as_ref();
        let mut used = 0;
        while let Some(chain) = self.queues[TX_QUEUE].queue.pop_descriptor_chain(memory) {
            let head = chain.head_index();
            let packet = chain.reader(memory).ok().and_then(|mut reader| {
                let mut bytes = [0u8; HEADER_LEN];
                reader.read_exact(&mut bytes).ok()?;
                let header = Header::parse(&bytes);
                let len = header.len as usize;
                if header.len > MAX_PAYLOAD || len > reader.available_bytes() {
                    return Some((header, false));
                }
                self.payload.resize(len, 0);
                Some((header, reader.read_exact(&mut self.payload).is_ok()))
            });
            if self.queues[TX_QUEUE]
                .queue
                .add_used(memory, head, 0)
                .is_err()
            {
                break;
            }
            used += 1;
            match packet {
                Some((header, true)) => self.muxer.on_guest_packet(poller, &header, &self.payload),
                Some((header, false)) => self.muxer.on_malformed(&header),
                None => {}
            }
        }
        used
    }

    /// Fills RX buffers with the muxer's packets; returns how many.
    pub fn process_rx(&mut self, poller: &Poller) -> usize {
        let memory = self.memory.as_ref();
        let mut used = 0;
        while self.muxer.has_packet() {
            let queue = &mut self.queues[RX_QUEUE].queue;
            let Some(chain) = queue.pop_descriptor_chain(memory) else {
                break;
            };
            let head = chain.head_index();
            let Ok(mut writer) = chain.writer(memory) else {
                let _ = queue.add_used(memory, head, 0);
                used += 1;
                continue;
            };
            let Some(room) = writer.available_bytes().checked_sub(HEADER_LEN) else {
                let _ = queue.add_used(memory, head, 0);
                used += 1;
                continue;
            };
            let Some(header) = self.muxer.next_packet(poller, room, &mut self.payload) else {
                queue.go_to_previous_position();
                break;
            };
            let written = writer
                .write_all(&header.to_bytes())
                .and_then(|()| writer.write_all(&self.payload));
            let len = if written.is_ok() {
                (HEADER_LEN + self.payload.len()) as u32
            } else {
                0
            };
            if queue.add_used(memory, head, len).is_err() {
                break;
            }
            used += 1;
        }
        self.muxer.sweep(poller);
        used
    }

    fn run_queues(&mut self, poller: &Poller) {
        let used = self.process_tx(poller) + self.process_rx(poller);
        if used > 0 {
            self.interrupt.signal_used_queue();
        }
    }
}

impl EventHandler for VsockHandler {
    fn init(&mut self, poller: &Poller) -> io::Result<()> {
        for (queue, token) in [
            (RX_QUEUE, RX_KICK),
            (TX_QUEUE, TX_KICK),
            (EVENT_QUEUE, EVENT_KICK),
        ] {
            poller.add(self.queues[queue].kick.as_raw_fd(), token, EventSet::IN)?;
        }
        poller.add(self.muxer.listener_fd(), LISTENER, EventSet::IN)?;
        self.run_queues(poller);
        Ok(())
    }

    fn handle(&mut self, poller: &Poller, token: u64, events: EventSet) {
        match token {
            RX_KICK | TX_KICK | EVENT_KICK => {
                let _ = self.queues[token as usize].kick.read();
            }
            LISTENER => self.muxer.accept(poller),
            _ => {
                let fd = (token - STREAM_TOKEN_BASE) as i32;
                self.muxer.on_stream_event(poller, fd, events);
            }
        }
        self.run_queues(poller);
    }
}

#[cfg(test)]
mod tests;

//! The rng worker: on each kick, fills every available buffer.

use std::io::{self, Write};
use std::os::fd::AsRawFd;

use virtio_queue::QueueT;
use vmm_sys_util::epoll::EventSet;

use super::MAX_BYTES_PER_BUFFER;
use crate::devices::virtio::worker::{EventHandler, Poller};
use crate::devices::virtio::{ActiveQueue, Interrupt};
use crate::vstate::memory::GuestMemory;

const KICK: u64 = 0;

/// Serves the rng queue.
pub struct RngHandler {
    memory: GuestMemory,
    queue: ActiveQueue,
    interrupt: Interrupt,
}

impl RngHandler {
    /// A handler for `queue`.
    pub fn new(memory: GuestMemory, queue: ActiveQueue, interrupt: Interrupt) -> Self {
        RngHandler {
            memory,
            queue,
            interrupt,
        }
    }

    /// Fills every available buffer; returns how many were used.
    pub fn fill_buffers(&mut self) -> usize {
        let memory = self.memory.as_ref();
        let mut used = 0;
        let mut bytes = vec![0u8; MAX_BYTES_PER_BUFFER];
        while let Some(chain) = self.queue.queue.pop_descriptor_chain(memory) {
            let head = chain.head_index();
            let written = match chain.writer(memory) {
                Ok(mut writer) => {
                    let len = writer.available_bytes().min(MAX_BYTES_PER_BUFFER);
                    getrandom(&mut bytes[..len])
                        .and_then(|()| writer.write_all(&bytes[..len]))
                        .map_or(0, |()| len)
                }
                Err(_) => 0,
            };
            if self
                .queue
                .queue
                .add_used(memory, head, written as u32)
                .is_err()
            {
                break;
            }
            used += 1;
        }
        if used > 0 {
            self.interrupt.signal_used_queue();
        }
        used
    }
}

fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is valid for writes of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        } else {
            filled += n as usize;
        }
    }
    Ok(())
}

impl EventHandler for RngHandler {
    fn init(&mut self, poller: &Poller) -> io::Result<()> {
        poller.add(self.queue.kick.as_raw_fd(), KICK, EventSet::IN)?;
        // Buffers the driver queued before activation.
        self.fill_buffers();
        Ok(())
    }

    fn handle(&mut self, _poller: &Poller, token: u64, _events: EventSet) {
        if token == KICK {
            let _ = self.queue.kick.read();
            self.fill_buffers();
        }
    }
}

#[cfg(test)]
mod tests;

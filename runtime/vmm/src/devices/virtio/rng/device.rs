//! The entropy device: nothing to configure, one queue.

use super::event_handler::RngHandler;
use super::QUEUE_SIZE;
use crate::devices::virtio::worker::Worker;
use crate::devices::virtio::{ActivateError, ActiveQueue, Interrupt, VirtioDevice, TYPE_RNG};
use crate::vstate::memory::GuestMemory;

/// virtio-rng.
pub struct Rng {
    worker: Worker<RngHandler>,
}

impl Rng {
    /// The device; its worker thread starts parked.
    pub fn new() -> std::io::Result<Rng> {
        Ok(Rng {
            worker: Worker::new("virtio-rng")?,
        })
    }
}

impl VirtioDevice for Rng {
    fn name(&self) -> &'static str {
        "rng"
    }

    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    fn ack_features(&mut self, _features: u64) {}

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(
        &mut self,
        memory: GuestMemory,
        mut queues: Vec<ActiveQueue>,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError> {
        let queue =
            queues
                .pop()
                .filter(|_| queues.is_empty())
                .ok_or(ActivateError::QueueCount {
                    device: "rng",
                    expected: 1,
                    got: queues.len(),
                })?;
        let handler = RngHandler::new(memory, queue, interrupt);
        self.worker
            .start(handler)
            .map_err(|e| ActivateError::Backend {
                device: "rng",
                message: format!("starting the worker: {e}"),
            })
    }

    fn reset(&mut self) {
        self.worker.stop();
    }
}

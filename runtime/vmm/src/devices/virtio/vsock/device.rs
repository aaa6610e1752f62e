//! The vsock virtio device: configuration space (the guest's CID) and
//! activation, which hands the queues and the [`Muxer`] to a worker.

use std::path::Path;

use super::event_handler::VsockHandler;
use super::muxer::Muxer;
use super::{VsockError, QUEUE_SIZE};
use crate::devices::virtio::worker::Worker;
use crate::devices::virtio::{
    read_config_bytes, ActivateError, ActiveQueue, Interrupt, VirtioDevice, TYPE_VSOCK,
};
use crate::vstate::memory::GuestMemory;

/// virtio-vsock with its host side on Unix sockets.
pub struct Vsock {
    guest_cid: u64,
    /// The muxer while the device is not active (the worker has it then).
    muxer: Option<Muxer>,
    worker: Worker<VsockHandler>,
}

impl Vsock {
    /// A device for guest `guest_cid`, listening on `uds` (host-initiated
    /// connections) and connecting to `<uds>_<port>` (guest-initiated);
    /// its worker thread starts parked.
    pub fn new(guest_cid: u64, uds: &Path) -> Result<Vsock, VsockError> {
        Ok(Vsock {
            guest_cid,
            muxer: Some(Muxer::bind(uds, guest_cid)?),
            worker: Worker::new("virtio-vsock").map_err(VsockError::Worker)?,
        })
    }
}

impl VirtioDevice for Vsock {
    fn name(&self) -> &'static str {
        "vsock"
    }

    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        0
    }

    fn ack_features(&mut self, _features: u64) {}

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn activate(
        &mut self,
        memory: GuestMemory,
        queues: Vec<ActiveQueue>,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError> {
        let queues: [ActiveQueue; 3] =
            queues
                .try_into()
                .map_err(|q: Vec<ActiveQueue>| ActivateError::QueueCount {
                    device: "vsock",
                    expected: 3,
                    got: q.len(),
                })?;
        let muxer = self.muxer.take().ok_or(ActivateError::Backend {
            device: "vsock",
            message: "activated twice".into(),
        })?;
        let handler = VsockHandler::new(memory, queues, interrupt, muxer);
        self.worker
            .start(handler)
            .map_err(|e| ActivateError::Backend {
                device: "vsock",
                message: format!("starting the worker: {e}"),
            })
    }

    fn reset(&mut self) {
        if let Some(handler) = self.worker.stop() {
            let mut muxer = handler.into_muxer();
            muxer.clear(None);
            self.muxer = Some(muxer);
        }
    }
}

//! Virtio devices: a small transport-agnostic device trait, the virtio-mmio
//! transport, and one folder per device.
//!
//! Device life cycle, driven by the guest through the transport:
//!
//! ```text
//!  created ──(status DRIVER_OK, queues valid)──▶ activated ──(status 0)──▶ reset
//!     ▲                                                                      │
//!     └──────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! `activate` hands the device its queues, their kick eventfds (clones of the
//! ioeventfds KVM signals on a guest notify, without a userspace exit) and the
//! [`Interrupt`]; it returns quickly and does the work on a thread of the
//! device's own (or in an external vhost-user backend).

pub mod fs;
#[cfg(any(test, feature = "test-utils"))]
pub mod fuzzing;
pub mod mmio;
pub mod net;
pub mod rng;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;
pub mod vsock;
pub mod worker;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::vstate::memory::GuestMemory;

/// Feature bit: the device conforms to virtio 1.0+.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Device type: network card.
pub const TYPE_NET: u32 = 1;
/// Device type: entropy source.
pub const TYPE_RNG: u32 = 4;
/// Device type: vsock.
pub const TYPE_VSOCK: u32 = 19;
/// Device type: virtio-fs.
pub const TYPE_FS: u32 = 26;
/// InterruptStatus bit: a used buffer was added to a queue.
pub const INTERRUPT_VRING: u32 = 1;
/// InterruptStatus bit: the configuration changed.
pub const INTERRUPT_CONFIG: u32 = 2;

/// Errors activating a device.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up fewer queues than the device needs.
    #[error("{device}: expected {expected} queues, got {got}")]
    QueueCount {
        /// The device.
        device: &'static str,
        /// Queues the device needs.
        expected: usize,
        /// Queues set up.
        got: usize,
    },
    /// Starting the device's worker or backend failed.
    #[error("{device}: {message}")]
    Backend {
        /// The device.
        device: &'static str,
        /// What failed.
        message: String,
    },
}

/// A queue handed to an activated device with its kick eventfd.
pub struct ActiveQueue {
    /// The queue as the driver configured it.
    pub queue: Queue,
    /// Signalled by KVM when the driver notifies this queue.
    pub kick: EventFd,
}

/// The device's interrupt line: sets InterruptStatus bits and raises the
/// device's IRQ through its irqfd.
#[derive(Clone)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    irq: Arc<EventFd>,
}

impl Interrupt {
    /// An interrupt raising `irq` (an irqfd registered with KVM).
    pub fn new(irq: EventFd) -> Self {
        Interrupt {
            status: Arc::new(AtomicU32::new(0)),
            irq: Arc::new(irq),
        }
    }

    /// Tells the driver a queue has new used buffers.
    pub fn signal_used_queue(&self) {
        self.status.fetch_or(INTERRUPT_VRING, Ordering::SeqCst);
        // An eventfd write only fails when the counter would overflow, in
        // which case an interrupt is pending anyway.
        let _ = self.irq.write(1);
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears the bits the driver handled.
    pub fn acknowledge(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The irqfd, for a vhost-user backend to signal directly.
    pub fn irqfd(&self) -> &EventFd {
        &self.irq
    }
}

/// A virtio device, whatever its transport.
pub trait VirtioDevice: Send {
    /// Short name for messages.
    fn name(&self) -> &'static str;
    /// The virtio device type.
    fn device_type(&self) -> u32;
    /// The maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features the device offers.
    fn features(&self) -> u64;
    /// The features the driver accepted (a subset of [`Self::features`]).
    fn ack_features(&mut self, features: u64);
    /// Reads the device configuration space at `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The driver writes the configuration space (ignored by default).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts the device with the driver's queues.
    fn activate(
        &mut self,
        memory: GuestMemory,
        queues: Vec<ActiveQueue>,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError>;
    /// Stops the device's work (joins its worker); the transport then
    /// resets the queues. The device may be activated again afterwards.
    fn reset(&mut self);
    /// Whether the device's interrupts come from an external backend writing
    /// the irqfd directly: the transport then always reports a used-buffer
    /// interrupt, since it cannot see them.
    fn interrupts_bypass_status(&self) -> bool {
        false
    }
}

/// Reads `data.len()` bytes of `config` at `offset`; out of range reads as
/// zeros.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(offset) = usize::try_from(offset) else {
        return;
    };
    if let Some(source) = config.get(offset..) {
        let len = source.len().min(data.len());
        data[..len].copy_from_slice(&source[..len]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupt_status_is_set_and_acknowledged() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = Interrupt::new(irq.try_clone().unwrap());
        interrupt.signal_used_queue();
        assert_eq!(interrupt.status(), INTERRUPT_VRING);
        assert_eq!(irq.read().unwrap(), 1);
        interrupt.acknowledge(INTERRUPT_VRING);
        assert_eq!(interrupt.status(), 0);
    }

    #[test]
    fn config_reads_past_the_end_are_zero() {
        let mut data = [0xff; 4];
        read_config_bytes(&[1, 2, 3], 1, &mut data);
        assert_eq!(data, [2, 3, 0, 0]);
        read_config_bytes(&[1, 2, 3], u64::MAX, &mut data);
        assert_eq!(data, [0; 4]);
    }
}

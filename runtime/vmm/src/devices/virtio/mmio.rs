//! The virtio-mmio transport (virtio 1.1 section 4.2, version 2 registers):
//! one 4 KiB window per device, announced to the guest on the kernel command
//! line as `virtio_mmio.device=4K@<base>:<irq>`.
//!
//! Queue notifications do not come here: each queue's kick eventfd is
//! registered with KVM as an ioeventfd on `QueueNotify` with the queue index
//! as datamatch, so a notify wakes the device's worker without a vCPU exit.
//! A notify that still arrives (no ioeventfd) is forwarded to the same
//! eventfd.

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{ActiveQueue, Interrupt, VirtioDevice, INTERRUPT_VRING, VIRTIO_F_VERSION_1};
use crate::devices::BusDevice;
use crate::vstate::memory::GuestMemory;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4b53_5548; // "HUSK"

/// Register offsets.
mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Offset of `QueueNotify`, where the kick ioeventfds are registered.
pub const QUEUE_NOTIFY_OFFSET: u64 = reg::QUEUE_NOTIFY;

/// Device status bits.
mod status {
    pub const FEATURES_OK: u32 = 0x08;
    pub const DRIVER_OK: u32 = 0x04;
    pub const NEEDS_RESET: u32 = 0x40;
}

/// A virtio device on the MMIO transport.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    memory: GuestMemory,
    queues: Vec<Queue>,
    kicks: Vec<EventFd>,
    interrupt: Interrupt,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    config_generation: u32,
    activated: bool,
}

impl MmioTransport {
    /// Wraps `device`; `irq` is its irqfd. Creates one kick eventfd per
    /// queue (see [`Self::kicks`]).
    pub fn new(
        device: Box<dyn VirtioDevice>,
        memory: GuestMemory,
        irq: EventFd,
    ) -> std::io::Result<Self> {
        let sizes = device.queue_max_sizes().to_vec();
        let queues = sizes
            .iter()
            .map(|size| Queue::new(*size).expect("device queue sizes are powers of two"))
            .collect();
        let kicks = sizes
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<std::io::Result<_>>()?;
        Ok(MmioTransport {
            device,
            memory,
            queues,
            kicks,
            interrupt: Interrupt::new(irq),
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            config_generation: 0,
            activated: false,
        })
    }

    /// The kick eventfd of each queue, in queue order, to register as
    /// ioeventfds.
    pub fn kicks(&self) -> &[EventFd] {
        &self.kicks
    }

    /// The device's name.
    pub fn name(&self) -> &'static str {
        self.device.name()
    }

    /// Whether the device runs.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// Stops the device (at VM shutdown).
    pub fn shut_down(&mut self) {
        if self.activated {
            self.device.reset();
            self.activated = false;
        }
    }

    fn device_features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        if self.activated || self.status & status::DRIVER_OK != 0 {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features() as u32,
                1 => (self.device_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => {
                let mut bits = self.interrupt.status();
                if self.activated && self.device.interrupts_bypass_status() {
                    bits |= INTERRUPT_VRING;
                }
                bits
            }
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::DRIVER_FEATURES if self.status & status::FEATURES_OK == 0 => {
                let shift = match self.driver_features_sel {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                let mask = 0xffff_ffffu64 << shift;
                self.driver_features =
                    (self.driver_features & !mask) | ((u64::from(value) << shift) & mask);
            }
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM => {
                // Too big for a queue size: refused (as 0 is), not truncated
                // into a valid one.
                let size = u16::try_from(value).unwrap_or(0);
                if let Some(q) = self.selected_queue() {
                    q.set_size(size);
                }
            }
            reg::QUEUE_READY => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            reg::QUEUE_DESC_LOW => self.with_queue(|q| q.set_desc_table_address(Some(value), None)),
            reg::QUEUE_DESC_HIGH => {
                self.with_queue(|q| q.set_desc_table_address(None, Some(value)))
            }
            reg::QUEUE_DRIVER_LOW => {
                self.with_queue(|q| q.set_avail_ring_address(Some(value), None))
            }
            reg::QUEUE_DRIVER_HIGH => {
                self.with_queue(|q| q.set_avail_ring_address(None, Some(value)))
            }
            reg::QUEUE_DEVICE_LOW => {
                self.with_queue(|q| q.set_used_ring_address(Some(value), None))
            }
            reg::QUEUE_DEVICE_HIGH => {
                self.with_queue(|q| q.set_used_ring_address(None, Some(value)))
            }
            reg::QUEUE_NOTIFY => {
                if let Some(kick) = self.kicks.get(value as usize) {
                    let _ = kick.write(1);
                }
            }
            reg::INTERRUPT_ACK => self.interrupt.acknowledge(value),
            reg::STATUS => self.set_status(value),
            _ => {}
        }
    }

    fn with_queue(&mut self, set: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.selected_queue() {
            set(q);
        }
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        if value & self.status != self.status {
            // The driver must not clear bits (virtio 1.1 section 2.1.2);
            // taking such a write would let a running device lose DRIVER_OK
            // or be acked new features.
            return;
        }
        let newly = value & !self.status;
        self.status = value;
        if newly & status::FEATURES_OK != 0 {
            let accepted = self.driver_features & self.device_features();
            if accepted & VIRTIO_F_VERSION_1 == 0 {
                // A legacy driver: version 2 registers need virtio 1.
                self.status &= !status::FEATURES_OK;
                return;
            }
            self.device.ack_features(accepted);
        }
        if newly & status::DRIVER_OK != 0 && !self.activated {
            if self.status & status::FEATURES_OK == 0 {
                // No features were accepted (a legacy driver, or none asked).
                return self.fail("DRIVER_OK without FEATURES_OK".into());
            }
            self.activate();
        }
    }

    fn activate(&mut self) {
        let ready = self.queues.iter().take_while(|q| q.ready()).count();
        if let Some(index) = self.queues[..ready]
            .iter()
            .position(|q| !q.is_valid(self.memory.as_ref()))
        {
            return self.fail(format!("queue {index}'s size or addresses are invalid"));
        }
        let mut active = Vec::new();
        for index in 0..ready {
            let kick = match self.kicks[index].try_clone() {
                Ok(kick) => kick,
                Err(e) => return self.fail(format!("cloning a kick eventfd: {e}")),
            };
            let fresh = Queue::new(self.queues[index].max_size()).expect("same size as before");
            let queue = std::mem::replace(&mut self.queues[index], fresh);
            active.push(ActiveQueue { queue, kick });
        }
        match self
            .device
            .activate(self.memory.clone(), active, self.interrupt.clone())
        {
            Ok(()) => self.activated = true,
            Err(e) => self.fail(e.to_string()),
        }
    }

    fn fail(&mut self, message: String) {
        eprintln!(
            "husk-vmm: virtio-{}: {message}; the device needs a reset",
            self.name()
        );
        self.status |= status::NEEDS_RESET;
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
            self.activated = false;
        }
        for queue in &mut self.queues {
            queue.reset();
        }
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt.acknowledge(u32::MAX);
        self.config_generation = self.config_generation.wrapping_add(1);
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() == 4 {
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            self.device.write_config(offset - reg::CONFIG, data);
            return;
        }
        if let Ok(word) = <[u8; 4]>::try_from(data) {
            self.write_register(offset, u32::from_le_bytes(word));
        }
    }
}

impl Drop for MmioTransport {
    fn drop(&mut self) {
        self.shut_down();
    }
}

#[cfg(test)]
mod tests;

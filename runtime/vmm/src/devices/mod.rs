//! Emulated devices and the buses vCPU exits are dispatched on.
//!
//! A vCPU thread that exits on a port or MMIO access looks the address up on
//! the [`Bus`] and calls the device with the offset into its window. Devices
//! sit behind a mutex: the vCPU threads and a device's own worker thread
//! both reach them.

pub mod legacy;
pub mod serial;
pub mod virtio;

use std::sync::{Arc, Mutex};

/// A device on a bus, addressed by offset into its window.
pub trait BusDevice: Send {
    /// A guest read of `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest write at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A shared bus device.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors adding a device to a bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The window overlaps one already on the bus.
    #[error("bus window {base:#x}+{len:#x} overlaps another device")]
    Overlap {
        /// Start of the new window.
        base: u64,
        /// Its length.
        len: u64,
    },
}

/// Address windows and their devices (port I/O or MMIO).
#[derive(Default, Clone)]
pub struct Bus {
    windows: Vec<(u64, u64, SharedDevice)>,
}

impl Bus {
    /// Adds `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overlap { base, len })?;
        if len == 0
            || self
                .windows
                .iter()
                .any(|(b, l, _)| base < b + l && *b < end)
        {
            return Err(BusError::Overlap { base, len });
        }
        self.windows.push((base, len, device));
        self.windows.sort_by_key(|(b, _, _)| *b);
        Ok(())
    }

    fn find(&self, addr: u64, len: usize) -> Option<(&SharedDevice, u64)> {
        let (base, wlen, device) = self
            .windows
            .iter()
            .find(|(base, wlen, _)| addr >= *base && addr - base < *wlen)?;
        let offset = addr - base;
        (offset + len as u64 <= *wlen).then_some((device, offset))
    }

    /// Dispatches a read; returns false (and leaves `data` alone) when no
    /// device claims the whole access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((device, offset)) => {
                lock(device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; returns false when no device claims it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((device, offset)) => {
                lock(device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, going on if a previous holder panicked (the device state
/// is still the best we have; a monitor that stops on a poisoned lock would
/// lose the guest).
pub fn lock<T: ?Sized>(device: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn accesses_reach_the_device_at_their_offset() {
        let device = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::default();
        bus.insert(device.clone(), 0x1000, 0x100).unwrap();
        let mut data = [0u8; 4];
        assert!(bus.read(0x1010, &mut data));
        assert_eq!(data, [0x10; 4]);
        assert!(bus.write(0x10ff, &[7]));
        assert_eq!(device.lock().unwrap().writes, vec![(0xff, vec![7])]);
    }

    #[test]
    fn accesses_outside_or_across_the_window_are_refused() {
        let mut bus = Bus::default();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x1000, 0x100)
            .unwrap();
        let mut data = [0u8; 4];
        assert!(!bus.read(0xfff, &mut data));
        assert!(!bus.read(0x10fe, &mut data), "crosses the end");
        assert!(!bus.write(u64::MAX, &[1]));
    }

    #[test]
    fn overlapping_windows_are_refused() {
        let mut bus = Bus::default();
        let device = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(device.clone(), 0x1000, 0x100).unwrap();
        assert!(bus.insert(device.clone(), 0x10ff, 1).is_err());
        assert!(bus.insert(device.clone(), 0xf00, 0x101).is_err());
        assert!(bus.insert(device, u64::MAX, 2).is_err());
    }
}

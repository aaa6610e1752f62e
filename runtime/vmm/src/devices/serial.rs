//! The 8250 UART at 0x3f8 (IRQ 4): the guest console, written into a
//! capped log file. Input is not connected.
//!
//! The UART model raises its THR-empty interrupt on every byte written,
//! and the guest's 16550A driver writes up to 16 bytes per interrupt: the
//! line is edge-triggered, so the edges after the first, before the guest
//! reads IIR (which every handler does first), add nothing it can see, yet
//! each costs an eventfd write and an injection in KVM. [`IrqTrigger`]
//! raises the line once per IIR read instead: one interrupt per batch.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use husk_console_log::CappedLog;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::BusDevice;

/// The UART's register offset of IIR (reads only; offset 2 is FCR on writes).
const IIR_OFFSET: u8 = 2;

/// Raises the UART's interrupt through its irqfd, at most once until the
/// guest reads IIR.
pub struct IrqTrigger {
    irq: EventFd,
    raised: AtomicBool,
}

impl IrqTrigger {
    /// A trigger writing `irq`.
    pub fn new(irq: EventFd) -> Self {
        IrqTrigger {
            irq,
            raised: AtomicBool::new(false),
        }
    }

    /// The guest read IIR: the next interrupt is a new one.
    fn acknowledge(&self) {
        self.raised.store(false, Ordering::Relaxed);
    }
}

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        if self.raised.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        self.irq.write(1)
    }
}

/// The console UART writing to `out`.
pub struct SerialConsole<W: Write + Send> {
    uart: Serial<IrqTrigger, NoEvents, W>,
}

impl<W: Write + Send> SerialConsole<W> {
    /// A UART raising `irq` and writing to `out`.
    pub fn new(irq: EventFd, out: W) -> Self {
        SerialConsole {
            uart: Serial::new(IrqTrigger::new(irq), out),
        }
    }
}

/// The console of a VM: the UART writing into a capped log.
pub type FileConsole = SerialConsole<CappedLog>;

impl<W: Write + Send> BusDevice for SerialConsole<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            *byte = self.uart.read(offset);
            if offset == IIR_OFFSET {
                self.uart.interrupt_evt().acknowledge();
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            // A console write that fails (full disk) must not stop the guest.
            let _ = self.uart.write(offset, *byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_written_to_the_data_register_reach_the_log() {
        let mut console = SerialConsole::new(EventFd::new(0).unwrap(), Vec::new());
        for b in b"hi\n" {
            console.write(0, &[*b]);
        }
        assert_eq!(console.uart.writer(), b"hi\n");
    }

    /// Interrupts the UART raised so far.
    fn raised(console: &SerialConsole<Vec<u8>>) -> u64 {
        console.uart.interrupt_evt().irq.read().unwrap_or(0)
    }

    #[test]
    fn a_batch_of_bytes_raises_one_interrupt_per_iir_read() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut console = SerialConsole::new(irq, Vec::new());
        let mut iir = [0u8];
        // The driver enables THR-empty interrupts (one), reads IIR, then
        // writes a batch of 16 bytes and returns; per IIR read, one more.
        console.write(1, &[0b10]);
        assert_eq!(raised(&console), 1);
        for batch in 0..3 {
            console.read(u64::from(IIR_OFFSET), &mut iir);
            for b in 0..16u8 {
                console.write(0, &[b'a' + b]);
            }
            assert_eq!(raised(&console), 1, "batch {batch}");
        }
        // Without an IIR read, nothing more.
        console.write(0, b"z");
        assert_eq!(raised(&console), 0);
        assert_eq!(console.uart.writer().len(), 3 * 16 + 1);
    }

    #[test]
    fn wide_accesses_are_ignored() {
        let mut console = SerialConsole::new(EventFd::new(0).unwrap(), Vec::new());
        console.write(0, b"ab");
        let mut data = [0xaa; 2];
        console.read(0, &mut data);
        assert_eq!(data, [0xaa; 2]);
        assert!(console.uart.writer().is_empty());
    }
}

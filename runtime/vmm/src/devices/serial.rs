//! The 8250 UART at 0x3f8 (IRQ 4): the guest console, written into a
//! capped log file. Input is not connected.

use std::io::Write;

use husk_console_log::CappedLog;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::BusDevice;

/// Raises the UART's interrupt through its irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
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
            uart: Serial::new(IrqTrigger(irq), out),
        }
    }
}

/// The console of a VM: the UART writing into a capped log.
pub type FileConsole = SerialConsole<CappedLog>;

impl<W: Write + Send> BusDevice for SerialConsole<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            *byte = self.uart.read(offset);
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

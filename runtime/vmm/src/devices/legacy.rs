//! Legacy ports a Linux guest touches: the i8042 controller, reduced to its
//! reset line (the reset command ends the VM).

use vmm_sys_util::eventfd::EventFd;

use super::BusDevice;

/// The i8042 command port.
pub const I8042_PORT: u16 = 0x64;
/// The command that pulses the CPU reset line.
const I8042_RESET: u8 = 0xfe;

/// The i8042 controller, reduced to its reset line: writing 0xfe signals
/// `reset`.
pub struct I8042 {
    reset: EventFd,
}

impl I8042 {
    /// A controller that signals `reset` on the reset command.
    pub fn new(reset: EventFd) -> Self {
        I8042 { reset }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // All ones, like a port nothing answers: Linux's i8042 driver then
        // says "no controller found" at once. A status of zero made it wait
        // a full second for a configuration byte that never came (measured).
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if data == [I8042_RESET] {
            let _ = self.reset.write(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_signals_the_event() {
        let event = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut i8042 = I8042::new(event.try_clone().unwrap());
        i8042.write(0, &[0x20]);
        assert!(event.read().is_err(), "not a reset");
        i8042.write(0, &[I8042_RESET]);
        assert_eq!(event.read().unwrap(), 1);
    }
}

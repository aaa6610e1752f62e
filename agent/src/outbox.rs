//! The one writer to the host: every thread that has something to say
//! (responses, stdio data, exits) sends whole frames through it, so frames
//! never interleave.

use std::io::Write;
use std::sync::{Arc, Mutex};

use husk_protocol::frame::write_frame;
use husk_protocol::{FrameError, GuestMessage};

/// A cloneable handle on the connection's write half.
#[derive(Clone)]
pub struct Outbox(Arc<Mutex<Box<dyn Write + Send>>>);

impl Outbox {
    /// Wraps the write half of the host connection.
    pub fn new(writer: impl Write + Send + 'static) -> Self {
        Outbox(Arc::new(Mutex::new(Box::new(writer))))
    }

    /// Writes one message as a whole frame.
    pub fn send(&self, message: &GuestMessage) -> Result<(), FrameError> {
        let mut writer = self.0.lock().unwrap_or_else(|e| e.into_inner());
        write_frame(&mut *writer, message)
    }
}

//! virtio-rng (device type 4): one queue the driver fills with buffers, which
//! the device fills with bytes from the host's `getrandom`.

mod device;
mod event_handler;

pub use device::Rng;

/// The queue size.
pub const QUEUE_SIZE: u16 = 256;
/// Most bytes given per buffer, so a huge descriptor costs little.
pub const MAX_BYTES_PER_BUFFER: usize = 64 << 10;

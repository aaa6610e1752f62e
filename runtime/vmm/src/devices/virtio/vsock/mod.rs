//! virtio-vsock (device type 19) in process, with the hybrid Unix-socket
//! convention Firecracker introduced:
//!
//! - a host program connects to the base socket `<uds>` and writes
//!   `CONNECT <port>\n`; once the guest accepts, it reads `OK <local port>\n`
//!   and the stream carries the connection;
//! - a guest connection to host port P is connected to the Unix socket
//!   `<uds>_P`, refused (reset) when nobody listens there.
//!
//! Flow control follows the spec's credit scheme: each side advertises its
//! buffer (`buf_alloc`) and how much it has consumed (`fwd_cnt`); nobody sends
//! more than the peer has room for. Half-close is a `SHUTDOWN` with the
//! `SEND` or `RCV` flag; a connection ends with `RST`.
//!
//! Files: [`packet`] (the header), [`connection`] (one stream and its
//! credit), [`muxer`] (all connections and the Unix side), `device.rs` (the
//! virtio device) and `event_handler.rs` (the worker moving packets between
//! the queues and the muxer).

pub mod connection;
mod device;
mod event_handler;
pub mod muxer;
pub mod packet;

pub use device::Vsock;
pub use event_handler::VsockHandler;

/// The host's context id.
pub const HOST_CID: u64 = 2;
/// Queue size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;
/// Queue indexes.
pub const RX_QUEUE: usize = 0;
/// The guest-to-host queue.
pub const TX_QUEUE: usize = 1;
/// The event queue (unused: no transport events without migration).
pub const EVENT_QUEUE: usize = 2;
/// Largest payload accepted in one packet (Linux sends at most 64 KiB).
pub const MAX_PAYLOAD: u32 = 64 << 10;
/// The receive buffer each connection advertises to the guest.
pub const CONN_BUFFER: u32 = 256 << 10;
/// Most connections at once; further guest requests are reset.
pub const MAX_CONNECTIONS: usize = 1024;
/// The first local port given to host-initiated connections.
pub const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// Errors creating the vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// Binding the host socket failed.
    #[error("binding the vsock socket {path}: {source}")]
    Bind {
        /// The path.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The device's worker thread did not start.
    #[error("starting the vsock worker thread: {0}")]
    Worker(#[source] std::io::Error),
}

//! virtio-fs (device type 26) as a vhost-user frontend: the configuration
//! space (tag, one request queue) is ours; the queues are served by an
//! external backend (virtiofsd) that maps guest memory from our memfd, is
//! kicked by the queues' ioeventfds and raises the irqfd itself.

mod device;

pub use device::Fs;

/// Queues: one high-priority, one request queue.
pub const NUM_QUEUES: usize = 2;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 1024;
/// How long the backend may take to start listening.
pub const BACKEND_START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Length of the tag field in the configuration space.
pub const TAG_LEN: usize = 36;
/// The vhost-user feature bit saying protocol features exist.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// Errors creating the virtio-fs device.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag does not fit the configuration space.
    #[error("virtio-fs tag {0:?} is empty or longer than 36 bytes")]
    Tag(String),
    /// Talking to the backend failed.
    #[error("vhost-user backend {socket}: {what}: {source}")]
    Backend {
        /// The backend's socket.
        socket: std::path::PathBuf,
        /// The step that failed.
        what: &'static str,
        /// Why.
        #[source]
        source: vhost::Error,
    },
}

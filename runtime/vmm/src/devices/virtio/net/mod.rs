//! virtio-net (device type 1, virtio 1.2 section 5.1) on a tap, in process:
//! one RX and one TX queue, no control queue, no multiqueue.
//!
//! Every frame crosses the device with its 12-byte `virtio_net_hdr_v1` in
//! front (section 5.1.6; VERSION_1 always has `num_buffers`). The tap was
//! opened with `IFF_VNET_HDR`, so the kernel reads and writes the same header:
//! a guest frame goes to the tap in one `write` as the guest built it, and a
//! frame read from the tap goes to the guest as the kernel built it, with only
//! `num_buffers` filled in. Checksum and segmentation offloads therefore pass
//! through untouched; the tap is told which ones the guest accepted
//! (`TUNSETOFFLOAD`) and never sends it others.
//!
//! Trust: everything in the queues is the guest's and untrusted. A bad chain
//! (outside guest memory, the wrong direction, too long) is used with length
//! 0 and counted, never followed. The tap is the host's.
//!
//! Constants come from the virtio 1.2 specification (section 5.1.3 feature
//! bits, 5.1.4 configuration layout, 5.1.6 header) through the bindgen'd
//! `include/uapi/linux/virtio_net.h` in `virtio-bindings`, and from
//! `include/uapi/linux/if_tun.h` (`TUNSETVNETHDRSZ`, `TUNSETOFFLOAD`,
//! `TUN_F_*`) through `libc`.
//!
//! Files: `tap.rs` (the tap descriptor and its ioctls), `device.rs` (features,
//! configuration space, activation) and `event_handler.rs` (the worker moving
//! frames between the queues and the tap).

mod device;
mod event_handler;
pub mod tap;

pub use device::Net;
pub use event_handler::{NetHandler, NetStats, TapWatch};
pub use tap::Tap;

use virtio_bindings::virtio_net as bindings;

use super::VIRTIO_F_VERSION_1;

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// The receive queue (device to guest).
pub const RX_QUEUE: usize = 0;
/// The transmit queue (guest to device).
pub const TX_QUEUE: usize = 1;

/// `struct virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size,
/// csum_start, csum_offset, num_buffers (section 5.1.6).
pub const HEADER_LEN: usize = 12;
/// Where `num_buffers` (u16, little endian) sits in the header.
pub const NUM_BUFFERS_OFFSET: usize = 10;
/// The largest frame behind the header: a 65536-byte TCP or UDP packet and
/// its 14-byte Ethernet header (section 5.1.6.3, "Setting Up Receive
/// Buffers").
pub const MAX_FRAME: usize = 65_550;
/// The largest header and frame the device moves (Firecracker's
/// `MAX_BUFFER_SIZE`): each direction has one buffer of this size.
pub const MAX_BUFFER: usize = HEADER_LEN + MAX_FRAME;
/// Most frames moved each way before the worker goes back to epoll, so a
/// busy direction does not starve the other.
pub const MAX_FRAMES_PER_WAKEUP: usize = 256;
/// Most descriptors followed in one chain (a chain may loop through an
/// indirect table of 65535); Linux uses at most `MAX_SKB_FRAGS + 2`.
pub const MAX_CHAIN_DESCRIPTORS: usize = QUEUE_SIZE as usize;
/// Most guest buffers one received frame may be written to; a frame that
/// would need more is dropped.
pub const MAX_RX_SEGMENTS: usize = 1024;

/// Feature: the device takes partially checksummed frames.
pub const F_CSUM: u64 = 1 << bindings::VIRTIO_NET_F_CSUM;
/// Feature: the driver takes partially checksummed frames.
pub const F_GUEST_CSUM: u64 = 1 << bindings::VIRTIO_NET_F_GUEST_CSUM;
/// Feature: the configuration space has the MTU.
pub const F_MTU: u64 = 1 << bindings::VIRTIO_NET_F_MTU;
/// Feature: the configuration space has the MAC address.
pub const F_MAC: u64 = 1 << bindings::VIRTIO_NET_F_MAC;
/// Feature: the driver takes TCPv4 segmentation offload frames.
pub const F_GUEST_TSO4: u64 = 1 << bindings::VIRTIO_NET_F_GUEST_TSO4;
/// Feature: the driver takes TCPv6 segmentation offload frames.
pub const F_GUEST_TSO6: u64 = 1 << bindings::VIRTIO_NET_F_GUEST_TSO6;
/// Feature: the driver takes UDP fragmentation offload frames.
pub const F_GUEST_UFO: u64 = 1 << bindings::VIRTIO_NET_F_GUEST_UFO;
/// Feature: the device takes TCPv4 segmentation offload frames.
pub const F_HOST_TSO4: u64 = 1 << bindings::VIRTIO_NET_F_HOST_TSO4;
/// Feature: the device takes TCPv6 segmentation offload frames.
pub const F_HOST_TSO6: u64 = 1 << bindings::VIRTIO_NET_F_HOST_TSO6;
/// Feature: the device takes UDP fragmentation offload frames.
pub const F_HOST_UFO: u64 = 1 << bindings::VIRTIO_NET_F_HOST_UFO;
/// Feature: a received frame may span several RX buffers (`num_buffers`).
pub const F_MRG_RXBUF: u64 = 1 << bindings::VIRTIO_NET_F_MRG_RXBUF;

/// What the device always offers (MTU only when it has one).
pub const FEATURES: u64 = VIRTIO_F_VERSION_1
    | F_CSUM
    | F_GUEST_CSUM
    | F_GUEST_TSO4
    | F_GUEST_TSO6
    | F_GUEST_UFO
    | F_HOST_TSO4
    | F_HOST_TSO6
    | F_HOST_UFO
    | F_MRG_RXBUF
    | F_MAC;

/// `struct virtio_net_config` up to `mtu`: mac[6], status, max_virtqueue_pairs,
/// mtu (section 5.1.4, little endian).
pub const CONFIG_LEN: usize = 12;
/// `status`: the link is up (VIRTIO_NET_F_STATUS is not offered, so the
/// driver assumes it anyway).
pub const STATUS_LINK_UP: u16 = bindings::VIRTIO_NET_S_LINK_UP as u16;

/// Errors taking or setting up the tap.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// An ioctl or fcntl on the tap failed.
    #[error("tap fd {fd}: {what}: {source}")]
    Tap {
        /// The tap's descriptor.
        fd: i32,
        /// The call, e.g. `TUNSETOFFLOAD 0x7`.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The descriptor is a tap, but not one the device can use.
    #[error("tap fd {fd}: {what}")]
    Unusable {
        /// The descriptor.
        fd: i32,
        /// What is wrong.
        what: String,
    },
}

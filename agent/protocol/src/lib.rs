//! The wire protocol between the husk runtime on the host and `husk-agent`,
//! PID 1 in the guest. Both sides depend on this crate and on nothing else
//! of each other.
//!
//! A connection carries frames ([`frame`]): a big-endian `u32` length and a
//! JSON body of at most [`frame::MAX_FRAME_LEN`] bytes. The guest speaks
//! [`GuestMessage`]s, the host [`HostMessage`]s ([`message`]). The agent opens
//! the connection itself (to host port [`AGENT_PORT`]) and starts with a
//! [`Hello`]; the host accepts it only if [`check_version`] does. Streams of
//! bytes (stdio) end with an explicit EOF message, so a half-close never
//! depends on the transport (a vhost-user vsock backend may drop it).
//!
//! Trust: the host treats everything decoded here as untrusted input. The
//! decoder never allocates more than the size limit and never panics on any
//! input (see the fuzz target in `fuzz/`).

pub mod bytes;
pub mod flow;
pub mod frame;
pub mod message;
pub mod net;
pub mod oci;

pub use bytes::Bytes;
pub use frame::{FrameError, FrameReader, MAX_FRAME_LEN};
pub use message::*;

/// The protocol version this crate speaks. Bump it on any incompatible change
/// to the messages.
pub const PROTOCOL_VERSION: u32 = 4;

/// The vsock port on the host (CID 2) that the agent connects to at boot.
pub const AGENT_PORT: u32 = 1024;

/// The vsock port the agent listens on for forwarded connections
/// ([`net::PortForward`]).
pub const PORT_FORWARD_PORT: u32 = 1025;

/// The virtio-fs tag of the sandbox share.
pub const SHARE_TAG: &str = "husk";

/// Where the agent mounts the sandbox share in the guest.
pub const SHARE_MOUNTPOINT: &str = "/run/husk/shared";

/// Checks the version a peer announced against ours.
pub fn check_version(peer: u32) -> Result<(), VersionMismatch> {
    if peer == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: peer,
        })
    }
}

/// The peer speaks another protocol version than we do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("agent speaks protocol version {theirs}, this runtime speaks {ours}: rebuild the initramfs with the agent of this release")]
pub struct VersionMismatch {
    /// Our [`PROTOCOL_VERSION`].
    pub ours: u32,
    /// The version the peer announced.
    pub theirs: u32,
}

/// Decodes `bytes` as a stream of frames of both directions until the first
/// unrecoverable error. The body of the fuzz target, public so that a unit
/// test can run it too; it must never panic.
#[doc(hidden)]
pub fn fuzz_decode(bytes: &[u8]) {
    for_each_direction(bytes, |reader| {
        reader.read_frame::<HostMessage>().map(|m| m.is_some())
    });
    for_each_direction(bytes, |reader| {
        reader.read_frame::<GuestMessage>().map(|m| m.is_some())
    });
}

fn for_each_direction(
    bytes: &[u8],
    mut next: impl FnMut(&mut FrameReader<&[u8]>) -> Result<bool, FrameError>,
) {
    let mut reader = FrameReader::with_limit(bytes, 4096);
    loop {
        match next(&mut reader) {
            Ok(true) => continue,
            Ok(false) => break,
            Err(e) if e.is_recoverable() => continue,
            Err(_) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_version_is_accepted() {
        assert_eq!(check_version(PROTOCOL_VERSION), Ok(()));
    }

    #[test]
    fn other_version_is_refused_with_both_numbers() {
        let err = check_version(PROTOCOL_VERSION + 1).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("version {}", PROTOCOL_VERSION + 1)),
            "{text}"
        );
        assert!(
            text.contains(&format!("speaks {PROTOCOL_VERSION}")),
            "{text}"
        );
    }
}

//! The tap behind a virtio-net device: a descriptor the runtime opened on
//! `/dev/net/tun` with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and left to the
//! monitor. Non-blocking; one `read` is one frame with its virtio-net header
//! in front, one `write` likewise.
//!
//! Trust: the tap is the host's. What the monitor checks before owning a
//! descriptor is [`check`]: a number that is not such a tap is refused, not
//! taken (and never closed).
//!
//! Constants come from `include/uapi/linux/if_tun.h` through `libc`:
//! `TUNGETIFF`, `TUNSETVNETHDRSZ` (takes a pointer to an int),
//! `TUNSETOFFLOAD` (takes the `TUN_F_*` flags by value).
//!
//! In tests a `SOCK_SEQPACKET` socket stands in for the tap (its messages
//! keep their boundaries as a tap's frames do): see
//! [`Tap::from_socket_for_tests`]. Its ioctls are skipped; what the device
//! asked for is recorded the same way for both.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use super::NetError;

/// The flags a usable tap has (`TUNGETIFF`).
const REQUIRED_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

/// A tap (or, in tests, a socket standing in for one).
#[derive(Debug)]
pub struct Tap {
    file: File,
    /// Whether the descriptor is a real tap (else the ioctls are skipped).
    tun: bool,
    header_len: Option<usize>,
    offloads: Option<u32>,
}

/// Checks that `fd` is a tap opened with `IFF_TAP | IFF_NO_PI |
/// IFF_VNET_HDR`, without taking it.
pub fn check(fd: BorrowedFd<'_>) -> Result<(), NetError> {
    let raw = fd.as_raw_fd();
    // SAFETY: ifreq is plain data; all zeros is a valid value.
    let mut ifreq: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: TUNGETIFF writes at most one ifreq into `ifreq`, which lives
    // through the call; on another kind of descriptor it fails (ENOTTY or
    // EBADFD) without side effects.
    if unsafe { libc::ioctl(raw, libc::TUNGETIFF, &mut ifreq) } < 0 {
        return Err(NetError::Tap {
            fd: raw,
            what: "TUNGETIFF (is it a tap?)".into(),
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: TUNGETIFF filled the flags member of the union.
    let flags = libc::c_int::from(unsafe { ifreq.ifr_ifru.ifru_flags });
    if flags & REQUIRED_FLAGS != REQUIRED_FLAGS {
        return Err(NetError::Unusable {
            fd: raw,
            what: format!(
                "flags {flags:#x} lack IFF_TAP | IFF_NO_PI | IFF_VNET_HDR ({REQUIRED_FLAGS:#x})"
            ),
        });
    }
    Ok(())
}

impl Tap {
    /// Owns an open tap (checked with [`check`]) and makes it non-blocking.
    pub fn new(fd: OwnedFd) -> Result<Tap, NetError> {
        set_nonblocking(fd.as_fd())?;
        Ok(Tap {
            file: File::from(fd),
            tun: true,
            header_len: None,
            offloads: None,
        })
    }

    /// A `SOCK_SEQPACKET` socket standing in for a tap: non-blocking, and
    /// [`Self::set_header_len`] and [`Self::set_offloads`] only record.
    #[cfg(any(test, feature = "test-utils"))]
    pub fn from_socket_for_tests(socket: OwnedFd) -> Tap {
        set_nonblocking(socket.as_fd()).expect("a socket takes O_NONBLOCK");
        Tap {
            file: File::from(socket),
            tun: false,
            header_len: None,
            offloads: None,
        }
    }

    /// Sets the length of the virtio-net header in front of every frame
    /// (`TUNSETVNETHDRSZ`).
    pub fn set_header_len(&mut self, len: usize) -> Result<(), NetError> {
        let value = libc::c_int::try_from(len).unwrap_or(libc::c_int::MAX);
        if self.tun {
            // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer,
            // which is valid for the call.
            let rc = unsafe { libc::ioctl(self.fd(), libc::TUNSETVNETHDRSZ, &value) };
            if rc < 0 {
                return Err(self.error(format!("TUNSETVNETHDRSZ {len}")));
            }
        }
        self.header_len = Some(len);
        Ok(())
    }

    /// Sets the offloads (`TUN_F_*`) the guest takes, so the tap hands it
    /// no others (`TUNSETOFFLOAD`).
    pub fn set_offloads(&mut self, flags: u32) -> Result<(), NetError> {
        if self.tun {
            // SAFETY: TUNSETOFFLOAD takes its argument by value and touches
            // no memory of ours.
            let rc =
                unsafe { libc::ioctl(self.fd(), libc::TUNSETOFFLOAD, libc::c_ulong::from(flags)) };
            if rc < 0 {
                return Err(self.error(format!("TUNSETOFFLOAD {flags:#x}")));
            }
        }
        self.offloads = Some(flags);
        Ok(())
    }

    /// The header length last set, if any.
    pub fn header_len(&self) -> Option<usize> {
        self.header_len
    }

    /// The offloads last set, if any.
    pub fn offloads(&self) -> Option<u32> {
        self.offloads
    }

    /// Reads one frame (with its header) into `buf`; `WouldBlock` when none
    /// waits. A frame longer than `buf` is cut.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one frame (with its header).
    pub fn write(&self, frame: &[u8]) -> io::Result<usize> {
        (&self.file).write(frame)
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn error(&self, what: String) -> NetError {
        NetError::Tap {
            fd: self.fd(),
            what,
            source: io::Error::last_os_error(),
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd()
    }
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<(), NetError> {
    let raw = fd.as_raw_fd();
    let error = || NetError::Tap {
        fd: raw,
        what: "fcntl O_NONBLOCK".into(),
        source: io::Error::last_os_error(),
    };
    // SAFETY: F_GETFL reads the status flags of a descriptor we borrow.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
    if flags < 0 {
        return Err(error());
    }
    // SAFETY: F_SETFL changes only the status flags of that descriptor.
    if unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(error());
    }
    Ok(())
}

#[cfg(test)]
mod tests;

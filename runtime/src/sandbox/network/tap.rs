//! The tap a guest NIC is backed by, created in the container's network
//! namespace (the monitor runs there): `/dev/net/tun` with `TUNSETIFF`,
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, not persistent, so the device
//! disappears with the last fd that holds it (the monitor's and the VMM's)
//! even when both are killed.
//!
//! Constants: `linux/if_tun.h`, `linux/if.h`.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// `TUNSETIFF`, `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `IFF_TAP`: an Ethernet device.
const IFF_TAP: libc::c_short = 0x0002;
/// `IFF_NO_PI`: no packet information in front of frames.
const IFF_NO_PI: libc::c_short = 0x1000;
/// `IFF_VNET_HDR`: a virtio-net header in front of frames.
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// Longest interface name (`IFNAMSIZ` minus the NUL).
pub const MAX_NAME: usize = 15;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates the tap `name` in the calling thread's network namespace and
/// returns its fd (close-on-exec; hand it to the VMM explicitly).
pub fn create(name: &str) -> io::Result<OwnedFd> {
    if name.is_empty() || name.len() > MAX_NAME || name.contains(['/', '\0', ' ']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a valid interface name"),
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| io::Error::new(e.kind(), format!("opening /dev/net/tun: {e}")))?;
    let mut request = IfReq {
        name: [0; 16],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    request.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads (and may write the chosen name back into) an
    // ifreq, which `request` is, and it outlives the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut request as *mut IfReq) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("creating the tap {name}: {e}"),
        ));
    }
    Ok(file.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_do_not_fit_ifnamsiz_are_refused_before_any_syscall() {
        for name in ["", "a-name-longer-than-15", "with/slash"] {
            let err = create(name).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{name}");
        }
    }

    #[test]
    fn ifreq_has_the_kernels_size() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }
}

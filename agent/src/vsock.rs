//! AF_VSOCK streams: the connection to the host (CID 2), and a listener
//! for the connections the host opens. The standard library has no vsock
//! support; these are the sockets the agent needs.
//! Constants: `linux/vm_sockets.h`.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

/// The host's context id (`VMADDR_CID_HOST`).
pub const HOST_CID: u32 = 2;

/// `VMADDR_CID_ANY`: listen on every context id of the guest.
const CID_ANY: u32 = u32::MAX;

/// A vsock socket listening in the guest.
pub struct Listener(OwnedFd);

impl Listener {
    /// The next connection from the host. (std's `UnixListener::accept`
    /// cannot be used: it refuses a peer address that is not `AF_UNIX`.)
    pub fn accept(&self) -> io::Result<UnixStream> {
        loop {
            // SAFETY: accept4 on the listening socket we own; no address is
            // asked for.
            let fd = unsafe {
                libc::accept4(
                    std::os::fd::AsRawFd::as_raw_fd(&self.0),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            if fd >= 0 {
                // SAFETY: `fd` is a fresh connection that nothing else owns.
                return Ok(UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) }));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// Listens on vsock `port` of the guest; accepted connections come from
/// the host.
pub fn listen(port: u32) -> io::Result<Listener> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket that nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = CID_ANY;
    addr.svm_port = port;
    // SAFETY: `addr` is a valid sockaddr_vm and the length passed is its size.
    let rc = unsafe {
        libc::bind(
            fd,
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen(2) on the socket we own.
    if unsafe { libc::listen(fd, 64) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Listener(owned))
}

/// Connects to `port` on the host. The returned stream is an ordinary
/// connected socket; `UnixStream` is only the std wrapper for read/write.
pub fn connect_host(port: u32) -> io::Result<UnixStream> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket that nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = HOST_CID;
    addr.svm_port = port;
    // SAFETY: `addr` is a valid sockaddr_vm and the length passed is its size.
    let rc = unsafe {
        libc::connect(
            fd,
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

//! Giving up privileges for good: the bounding and ambient sets emptied
//! (an exec cannot give capabilities back), the securebits that keep a
//! root-owned process from regaining them locked, the effective, permitted
//! and inheritable sets cleared, and no_new_privs set.
//!
//! Raw syscalls only, nothing allocated: [`drop_all`] is async-signal-safe
//! and may run in a child between fork and exec (`pre_exec`). It changes
//! the calling thread (capabilities are per thread): call it before the
//! process starts other threads.

use std::io;

/// Capability numbers tried in the bounding set; the kernel's last (40 in
/// Linux 6.1) is well below, and `PR_CAPBSET_DROP` says `EINVAL` past it.
const CAP_SLOTS: libc::c_ulong = 64;

/// `SECBIT_NOROOT`: uid 0 gets no capabilities at exec.
const SECBIT_NOROOT: libc::c_ulong = 1 << 0;
/// `SECBIT_NOROOT_LOCKED`.
const SECBIT_NOROOT_LOCKED: libc::c_ulong = 1 << 1;
/// `SECBIT_NO_SETUID_FIXUP`: changing uids leaves the (empty) sets alone.
const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
/// `SECBIT_NO_SETUID_FIXUP_LOCKED`.
const SECBIT_NO_SETUID_FIXUP_LOCKED: libc::c_ulong = 1 << 3;
/// `SECBIT_NO_CAP_AMBIENT_RAISE`: the ambient set stays empty.
const SECBIT_NO_CAP_AMBIENT_RAISE: libc::c_ulong = 1 << 6;
/// `SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED`.
const SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED: libc::c_ulong = 1 << 7;

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets in two 32-bit halves.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Which step of [`drop_all`] failed (a static name: nothing allocates).
#[derive(Debug, thiserror::Error)]
#[error("dropping capabilities: {step}: {source}")]
pub struct CapsError {
    /// The step.
    pub step: &'static str,
    /// The kernel's answer.
    #[source]
    pub source: io::Error,
}

fn check(rc: libc::c_long, step: &'static str) -> Result<(), CapsError> {
    if rc < 0 {
        return Err(CapsError {
            step,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Drops every capability of the calling thread for good and sets
/// no_new_privs. Async-signal-safe.
pub fn drop_all() -> Result<(), CapsError> {
    // The bounding set first: dropping from it needs CAP_SETPCAP, which
    // the last step gives up.
    for cap in 0..CAP_SLOTS {
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if rc < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
                break; // past the kernel's last capability
            }
            return check(rc.into(), "PR_CAPBSET_DROP");
        }
    }
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    check(rc.into(), "PR_CAP_AMBIENT_CLEAR_ALL")?;
    let bits = SECBIT_NOROOT
        | SECBIT_NOROOT_LOCKED
        | SECBIT_NO_SETUID_FIXUP
        | SECBIT_NO_SETUID_FIXUP_LOCKED
        | SECBIT_NO_CAP_AMBIENT_RAISE
        | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_SECUREBITS, bits, 0, 0, 0) };
    check(rc.into(), "PR_SET_SECUREBITS")?;
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset reads one header and the two data structs version 3
    // calls for; both live on this stack frame through the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    check(rc, "capset")?;
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    check(rc.into(), "PR_SET_NO_NEW_PRIVS")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A field of /proc/self/task/<tid>/status (this thread's).
    fn status(field: &str) -> String {
        // SAFETY: gettid takes no arguments.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) };
        let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .unwrap_or_else(|| panic!("no {field} in status"))
            .trim()
            .to_string()
    }

    #[test]
    fn a_thread_that_drops_everything_keeps_nothing() {
        // A thread of its own: the test harness's threads keep theirs.
        let fields = std::thread::spawn(|| {
            drop_all().unwrap();
            [
                "CapEff",
                "CapPrm",
                "CapInh",
                "CapBnd",
                "CapAmb",
                "NoNewPrivs",
            ]
            .map(status)
        })
        .join()
        .unwrap();

        for (field, value) in ["CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"]
            .iter()
            .zip(&fields)
        {
            assert_eq!(value, "0000000000000000", "{field}");
        }
        assert_eq!(fields[5], "1", "NoNewPrivs");
    }
}

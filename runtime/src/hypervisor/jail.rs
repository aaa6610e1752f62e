//! The jail of the host processes the runtime starts for a VM (with
//! [`husk_jail`]; the builtin monitor jails itself, see `husk_vmm::jail`):
//!
//! - QEMU gives up every capability at exec and filters itself with its
//!   own `-sandbox` ([`QEMU_SANDBOX`]: no obsolete calls, no new
//!   privileges, no fork or exec, no resource control);
//! - the vsock backend gives up every capability and runs under the
//!   helpers' deny-list filter;
//! - virtiofsd keeps the capabilities its share needs (it serves files as
//!   their owners) inside its own namespace sandbox, and its seccomp filter
//!   kills it on a syscall off its list (`--seccomp=kill`).

use std::io;
use std::process::Command;

use husk_jail::caps;
use husk_jail::filter::{Filter, DENIED_TO_HELPERS};

use super::HypervisorError;

/// QEMU's `-sandbox` option.
pub const QEMU_SANDBOX: &str =
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// virtiofsd's seccomp option.
pub const VIRTIOFSD_SECCOMP: &str = "--seccomp=kill";

/// `cmd` gives up every capability (and sets no_new_privs) before its exec.
pub fn drop_caps_at_exec(cmd: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes syscalls (drop_all allocates nothing); its error is the raw
    // errno.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, || {
            caps::drop_all().map_err(|e| e.source)
        });
    }
}

/// `cmd` gives up every capability and installs the helpers' deny-list
/// filter before its exec (the filter is compiled here, in the parent).
pub fn confine_helper_at_exec(cmd: &mut Command) -> Result<(), HypervisorError> {
    let filter = Filter::deny(DENIED_TO_HELPERS)
        .map_err(|e| HypervisorError::Unsupported(format!("the helpers' seccomp filter: {e}")))?;
    // SAFETY: as in `drop_caps_at_exec`; `apply` only makes the prctl and
    // seccomp syscalls on the program compiled before the fork.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, move || {
            caps::drop_all().map_err(|e| e.source)?;
            filter.apply().map_err(|_| io::Error::last_os_error())
        });
    }
    Ok(())
}

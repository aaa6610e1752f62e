//! The monitor's jail, after Firecracker's.
//!
//! [`confine`] runs in `main` once `/dev/kvm` is open and the kernel and
//! initramfs are in guest memory ([`crate::prepare`]), before any thread
//! starts: the monitor moves into a private mount namespace whose root
//! holds only the VM's directories ([`entries`]: where its sockets and
//! console log are), gives up every
//! capability and sets no_new_privs, and loads one seccomp allow-list per
//! kind of thread ([`syscalls`], compiled to BPF by build.rs, so starting
//! costs no compiling; only the monitor's pid is written in). Each thread then calls [`enter_thread`]
//! as it begins (the main thread once the VM is built), and a syscall off
//! its list kills the monitor with SIGSYS, which the runtime reports as the
//! VM's end.
//!
//! Without [`confine`] (unit tests, fuzzing, `jail = false`),
//! [`enter_thread`] does nothing.

pub mod syscalls;

use std::path::Path;
use std::sync::OnceLock;

use husk_jail::caps::{self, CapsError};
use husk_jail::filter::Filter;
use husk_jail::root::{self, Entry, RootError};
use husk_vm_spec::{Device, VmSpec};

/// The kinds of thread, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// `main` once the VM runs: the exit wait, the control socket, the
    /// stop.
    Main,
    /// A vCPU: `KVM_RUN`, port and MMIO exits, device activation.
    Vcpu,
    /// A device worker: queues, the tap, vsock's host sockets, entropy.
    Worker,
    /// The i8042 reset watcher.
    Reset,
}

/// Why the monitor could not jail itself.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The root could not be built.
    #[error(transparent)]
    Root(#[from] RootError),
    /// The capabilities could not be dropped.
    #[error(transparent)]
    Caps(#[from] CapsError),
    /// `confine` ran twice.
    #[error("the monitor is already jailed")]
    Twice,
}

/// The compiled filters, once [`confine`] ran.
static FILTERS: OnceLock<Filters> = OnceLock::new();

struct Filters {
    /// What fails instead of killing, for every thread (installed first:
    /// the allow-lists do not allow installing filters).
    failing: Filter,
    main: Filter,
    vcpu: Filter,
    worker: Filter,
    reset: Filter,
}

/// The filters build.rs compiled from [`syscalls`].
mod compiled {
    include!(concat!(env!("OUT_DIR"), "/filters.rs"));
}

impl Filters {
    /// The filters compiled at build time, with this process's pid.
    fn load() -> Filters {
        // SAFETY: getpid takes no arguments.
        let pid = unsafe { libc::getpid() } as u32;
        let with_pid = |program, at| Filter::from_instructions(program, at, pid);
        Filters {
            failing: Filter::from_instructions(compiled::FAILING, &[], 0),
            main: with_pid(compiled::MAIN, compiled::MAIN_PID_AT),
            vcpu: with_pid(compiled::VCPU, compiled::VCPU_PID_AT),
            worker: with_pid(compiled::WORKER, compiled::WORKER_PID_AT),
            reset: with_pid(compiled::RESET, compiled::RESET_PID_AT),
        }
    }

    /// The same filters compiled now, from [`syscalls`] (what build.rs
    /// does; the tests compare both).
    #[cfg(test)]
    fn compile() -> Result<Filters, husk_jail::filter::FilterError> {
        // SAFETY: getpid takes no arguments.
        let pid = unsafe { libc::getpid() } as u64;
        Ok(Filters {
            failing: Filter::fail(syscalls::FAILING, libc::EACCES)?,
            main: Filter::allow_only(&syscalls::main(pid))?,
            vcpu: Filter::allow_only(&syscalls::vcpu(pid))?,
            worker: Filter::allow_only(&syscalls::worker(pid))?,
            reset: Filter::allow_only(&syscalls::reset(pid))?,
        })
    }

    fn of(&self, kind: ThreadKind) -> &Filter {
        match kind {
            ThreadKind::Main => &self.main,
            ThreadKind::Vcpu => &self.vcpu,
            ThreadKind::Worker => &self.worker,
            ThreadKind::Reset => &self.reset,
        }
    }
}

/// The host paths the monitor of `spec` keeps once prepared: the
/// directories its console log, control socket, vsock sockets and
/// vhost-user sockets are in (writable: it creates the log and its
/// listening sockets there and connects to the runtime's).
pub fn entries(spec: &VmSpec) -> Vec<Entry> {
    let mut dirs: Vec<&Path> = vec![parent(&spec.console_log)];
    dirs.extend(spec.control_socket.as_deref().map(parent));
    for device in &spec.devices {
        match device {
            Device::Vsock { uds, .. } => dirs.push(parent(uds)),
            Device::Fs { socket, .. } => dirs.push(parent(socket)),
            Device::Rng | Device::Net(_) => {}
        }
    }
    dirs.sort();
    dirs.dedup();
    dirs.into_iter().map(Entry::writable).collect()
}

fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("/"))
}

/// Jails the monitor for `spec`. Must run before any thread starts, as
/// root; on error the monitor must exit.
pub fn confine(spec: &VmSpec) -> Result<(), JailError> {
    if FILTERS.get().is_some() {
        return Err(JailError::Twice);
    }
    let filters = Filters::load();
    // The console log is created inside; its directory is what is bound.
    root::enter(&entries(spec))?;
    caps::drop_all()?;
    FILTERS.set(filters).map_err(|_| JailError::Twice)
}

/// Installs the calling thread's filter, if the monitor is jailed. A
/// thread that cannot be filtered ends the monitor: it would run unjailed.
pub fn enter_thread(kind: ThreadKind) {
    let Some(filters) = FILTERS.get() else {
        return;
    };
    if let Err(e) = filters
        .failing
        .apply()
        .and_then(|()| filters.of(kind).apply())
    {
        eprintln!("husk-vmm: {kind:?} thread: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests;

//! The hypervisor interface: the one trait the rest of the runtime uses to
//! start and stop a VM, whatever runs it.
//!
//! A backend takes a [`VmConfig`] (kernel, initramfs, size, the directory to
//! share, where to put sockets and the console log) and returns a running
//! [`Vm`]. The guest reaches the host through hybrid vsock: a guest
//! connection to host port P arrives on the Unix socket `<vsock_uds>_P`.
//! Stopping a `Vm` stops every process it started and removes its sockets.
//!
//! Backends: [`builtin`] (our own KVM monitor, `husk-vmm`; the default with
//! hardware KVM) and [`qemu`] (QEMU microvm, KVM or TCG).

pub mod builtin;
pub mod console;
pub mod helper_watch;
pub mod jail;
pub mod monitor_process;
pub mod qemu;
pub mod vhost_user;

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use husk_protocol::net::MacAddr;

use crate::config::{Accel, BackendChoice, Config};
use crate::host::Virtualization;

/// The first guest context id; 0-2 are reserved by vsock.
pub const GUEST_CID: u32 = 3;

/// Errors starting or stopping a VM.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// A file the VM needs is missing.
    #[error("{what} not found at {path}")]
    MissingFile {
        /// Which input (kernel, initramfs...).
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A helper binary is missing.
    #[error("{0}")]
    MissingBinary(String),
    /// A process could not be started or did not come up.
    #[error("starting {what}: {source}")]
    Spawn {
        /// Which process.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Preparing the state directory failed.
    #[error("preparing {path}: {source}")]
    StateDir {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The requested backend cannot run here.
    #[error("{0}")]
    Unsupported(String),
    /// Waiting for or stopping the VM failed.
    #[error("waiting for the VM: {0}")]
    Wait(#[source] std::io::Error),
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Uncompressed vmlinux with the PVH entry.
    pub kernel: PathBuf,
    /// Initramfs with the agent as /init.
    pub initramfs: PathBuf,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Host directory shared with the guest over virtio-fs.
    pub shared_dir: PathBuf,
    /// Directory for the VM's sockets and logs; must exist and be private.
    pub state_dir: PathBuf,
    /// Extra kernel command-line arguments.
    pub cmdline_extra: Vec<String>,
    /// The NICs, each on a tap the VMM inherits.
    pub nics: Vec<Nic>,
    /// The console log's cap in bytes.
    pub console_log_max: u64,
}

/// A guest NIC backed by a tap.
#[derive(Debug, Clone)]
pub struct Nic {
    /// The tap, opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`; the VMM
    /// inherits it under the same fd number.
    pub tap: Arc<OwnedFd>,
    /// The guest NIC's MAC.
    pub mac: MacAddr,
    /// Its MTU, if the device should announce one.
    pub mtu: Option<u32>,
}

impl Nic {
    /// The fd number the VMM finds the tap under.
    pub fn fd(&self) -> RawFd {
        self.tap.as_raw_fd()
    }
}

impl VmConfig {
    /// A VM of the configured default size and guest files, sharing
    /// `shared_dir`, with its sockets and logs in `state_dir`.
    pub fn from_config(config: &Config, state_dir: &Path, shared_dir: &Path) -> VmConfig {
        VmConfig {
            kernel: config.kernel.clone(),
            initramfs: config.initramfs.clone(),
            vcpus: config.vcpus,
            memory_mib: config.memory_mib,
            shared_dir: shared_dir.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            cmdline_extra: config
                .kernel_cmdline
                .split_whitespace()
                .map(String::from)
                .collect(),
            nics: Vec::new(),
            console_log_max: config.console_log_max_kib.saturating_mul(1024),
        }
    }

    /// The kernel command line every backend passes (before the
    /// backend's own device entries): serial console, reset on reboot and on
    /// panic (the agent ends the VM with a reboot), quiet boot, and no
    /// IO-APIC timer check: it counts timer ticks during a short busy wait,
    /// which a loaded host (fifty TCG guests booting at once) misses, and
    /// the guest panicked with "IO-APIC + timer doesn't work".
    pub fn base_cmdline(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "console=ttyS0",
            "reboot=t",
            "panic=-1",
            "quiet",
            "8250.nr_uarts=1",
            "tsc=reliable",
            "no_timer_check",
        ]
        .map(String::from)
        .to_vec();
        args.extend(self.cmdline_extra.iter().cloned());
        args
    }

    /// Checks the input files before anything is started.
    pub fn check_files(&self) -> Result<(), HypervisorError> {
        for (what, path) in [("kernel", &self.kernel), ("initramfs", &self.initramfs)] {
            if !path.is_file() {
                return Err(HypervisorError::MissingFile {
                    what,
                    path: path.clone(),
                });
            }
        }
        if !self.shared_dir.is_dir() {
            return Err(HypervisorError::MissingFile {
                what: "shared directory",
                path: self.shared_dir.clone(),
            });
        }
        Ok(())
    }

    /// The guest console log.
    pub fn console_log(&self) -> PathBuf {
        self.state_dir.join("console.log")
    }

    /// The hybrid vsock socket base path.
    pub fn vsock_uds(&self) -> PathBuf {
        self.state_dir.join("vsock.sock")
    }
}

/// How a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmExit {
    /// Human-readable reason ("exited with status 0", "killed").
    pub description: String,
}

/// A running VM.
pub trait Vm: Send {
    /// Host pid of the VMM process (ours for an in-process VMM).
    fn pid(&self) -> u32;
    /// The hybrid vsock base path.
    fn vsock_uds(&self) -> &Path;
    /// The guest console log.
    fn console_log(&self) -> &Path;
    /// `Some` once the VM has ended.
    fn try_wait(&mut self) -> Result<Option<VmExit>, HypervisorError>;
    /// Ends the VM now if it still runs, stops its helpers and removes its
    /// sockets. Idempotent.
    fn stop(&mut self) -> Result<VmExit, HypervisorError>;

    /// Parks every vCPU (the guest stops running; its memory and devices
    /// stay). Only the builtin backend supports it.
    fn pause_vcpus(&mut self) -> Result<(), HypervisorError> {
        Err(HypervisorError::Unsupported(
            "pausing vCPUs needs the builtin backend".into(),
        ))
    }

    /// Runs paused vCPUs again.
    fn resume_vcpus(&mut self) -> Result<(), HypervisorError> {
        Err(HypervisorError::Unsupported(
            "resuming vCPUs needs the builtin backend".into(),
        ))
    }

    /// Waits up to `timeout` for the VM to end by itself.
    fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<VmExit>, HypervisorError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(exit) = self.try_wait()? {
                return Ok(Some(exit));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Something that starts VMs.
pub trait Hypervisor: Send + Sync {
    /// A short name for messages, e.g. `qemu (TCG)`.
    fn name(&self) -> String;
    /// Starts a VM; returns once the VMM runs (the guest is still booting).
    fn start(&self, config: &VmConfig) -> Result<Box<dyn Vm>, HypervisorError>;
}

/// The backend chosen for this host, and why.
pub struct Selection {
    /// The backend.
    pub hypervisor: Box<dyn Hypervisor>,
    /// Why it was chosen, for `husk check`.
    pub reason: String,
}

/// Whether QEMU should use KVM (else TCG) on this host, and why.
pub fn use_kvm(config: &Config, host: &Virtualization) -> Result<(bool, String), HypervisorError> {
    let hardware = matches!(host, Virtualization::Hardware { .. });
    let (use_kvm, accel_reason) = match config.accel {
        Accel::Kvm if !hardware => {
            return Err(HypervisorError::Unsupported(format!(
                "config asks for accel = \"kvm\" but {}",
                host.describe()
            )))
        }
        Accel::Kvm => (true, "accel = \"kvm\" in the config".to_string()),
        Accel::Tcg => (false, "accel = \"tcg\" in the config".to_string()),
        Accel::Auto if hardware => (true, host.describe()),
        Accel::Auto => (
            false,
            format!("{}; using software emulation", host.describe()),
        ),
    };
    Ok((use_kvm, accel_reason))
}

/// Picks the backend from the configuration and what the host offers:
/// builtin when the host has hardware KVM and the monitor binary is there,
/// else QEMU (with KVM or TCG).
pub fn select(config: &Config, host: &Virtualization) -> Result<Selection, HypervisorError> {
    let hardware = matches!(host, Virtualization::Hardware { .. });
    let builtin = builtin::BuiltinBackend::from_config(config);
    let backend_reason = match config.backend {
        BackendChoice::Builtin if !hardware => {
            return Err(HypervisorError::Unsupported(format!(
                "backend = \"builtin\" needs hardware KVM (vmx or svm) but {}; \
                 use backend = \"qemu\" or \"auto\"",
                host.describe()
            )))
        }
        BackendChoice::Builtin => {
            builtin.vmm_binary()?;
            return Ok(Selection {
                reason: format!("backend = \"builtin\" in the config; {}", host.describe()),
                hypervisor: Box::new(builtin),
            });
        }
        BackendChoice::Auto if hardware => match builtin.vmm_binary() {
            Ok(_) => {
                return Ok(Selection {
                    reason: format!("{}: the builtin monitor", host.describe()),
                    hypervisor: Box::new(builtin),
                })
            }
            Err(e) => format!("the builtin monitor is not installed ({e})"),
        },
        BackendChoice::Auto => "the builtin monitor needs hardware KVM".into(),
        BackendChoice::Qemu => "backend = \"qemu\" in the config".into(),
    };
    let (use_kvm, accel_reason) = use_kvm(config, host)?;
    let hypervisor = qemu::QemuBackend::from_config(config, use_kvm);
    Ok(Selection {
        reason: format!("{backend_reason}; {accel_reason}"),
        hypervisor: Box::new(hypervisor),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(accel: Accel, backend: BackendChoice) -> Config {
        Config {
            accel,
            backend,
            qemu: "sh".into(),
            ..Config::default()
        }
    }

    #[test]
    fn pvm_host_gets_qemu_with_tcg() {
        let s = select(
            &config(Accel::Auto, BackendChoice::Auto),
            &Virtualization::Pvm,
        )
        .unwrap();
        assert_eq!(s.hypervisor.name(), "qemu (TCG)");
        assert!(s.reason.contains("PVM"), "{}", s.reason);
    }

    #[test]
    fn hardware_host_gets_qemu_kvm_when_asked() {
        let host = Virtualization::Hardware { cpu_flag: "svm" };
        let s = select(&config(Accel::Auto, BackendChoice::Qemu), &host).unwrap();
        assert_eq!(s.hypervisor.name(), "qemu (KVM)");
    }

    #[test]
    fn hardware_host_gets_builtin_by_default() {
        let host = Virtualization::Hardware { cpu_flag: "svm" };
        let mut config = config(Accel::Auto, BackendChoice::Auto);
        config.vmm = "/bin/sh".into();
        let s = select(&config, &host).unwrap();
        assert_eq!(s.hypervisor.name(), "builtin (KVM)");
    }

    #[test]
    fn hardware_host_without_the_monitor_falls_back_to_qemu_and_says_why() {
        let host = Virtualization::Hardware { cpu_flag: "vmx" };
        let mut config = config(Accel::Auto, BackendChoice::Auto);
        config.vmm = "/nonexistent/husk-vmm".into();
        let s = select(&config, &host).unwrap();
        assert_eq!(s.hypervisor.name(), "qemu (KVM)");
        assert!(s.reason.contains("/nonexistent/husk-vmm"), "{}", s.reason);
    }

    #[test]
    fn forcing_kvm_without_hardware_names_the_reason() {
        let err = select(
            &config(Accel::Kvm, BackendChoice::Qemu),
            &Virtualization::Pvm,
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("accel = \"kvm\""), "{err}");
    }

    #[test]
    fn builtin_backend_without_hardware_kvm_is_refused_with_a_way_out() {
        let err = select(
            &config(Accel::Auto, BackendChoice::Builtin),
            &Virtualization::Pvm,
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("backend = \"qemu\""), "{err}");
    }

    #[test]
    fn cmdline_resets_on_reboot_and_panic() {
        let vm = VmConfig {
            kernel: "k".into(),
            initramfs: "i".into(),
            vcpus: 1,
            memory_mib: 128,
            shared_dir: "/".into(),
            state_dir: "/tmp".into(),
            cmdline_extra: vec!["husk.port=5".into()],
            nics: vec![],
            console_log_max: 1 << 20,
        };
        let line = vm.base_cmdline().join(" ");
        assert!(
            line.contains("reboot=t") && line.contains("panic=-1"),
            "{line}"
        );
        assert!(line.ends_with("husk.port=5"), "{line}");
    }
}

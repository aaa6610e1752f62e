//! The `builtin` backend: our own KVM monitor (`husk-vmm`, the
//! `runtime/vmm` crate) as one process per VM, with virtio-vsock in
//! process and virtio-fs from virtiofsd over vhost-user. Needs hardware
//! KVM (vmx/svm).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use husk_vm_spec::control::{self, ControlRequest};
use husk_vm_spec::{Device, NetDevice, VmSpec};

use crate::config::{resolve_binary, Config};

use super::helper_watch::{with_cause, HelperWatch};
use super::monitor_process::{LogTail, MonitorProcess};
use super::vhost_user::{self, Backend};
use super::{Hypervisor, HypervisorError, Nic, Vm, VmConfig, VmExit, GUEST_CID};

/// How long virtiofsd gets to exit by itself after the monitor is gone.
const HELPER_GRACE: Duration = Duration::from_millis(500);
/// How long a control request may take (a pause waits for every vCPU).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// The monitor binary's name.
pub const VMM_BINARY: &str = "husk-vmm";

/// Starts VMs with husk-vmm.
pub struct BuiltinBackend {
    vmm: PathBuf,
    virtiofsd: PathBuf,
    jail: bool,
}

impl BuiltinBackend {
    /// A backend using the binaries named in `config`.
    pub fn from_config(config: &Config) -> Self {
        BuiltinBackend {
            vmm: config.vmm.clone(),
            virtiofsd: config.virtiofsd.clone(),
            jail: config.jail,
        }
    }

    /// The monitor binary: `vmm` from the config if it is a path, else
    /// `husk-vmm` next to the running executable, else in `$PATH`.
    pub fn vmm_binary(&self) -> Result<PathBuf, HypervisorError> {
        if self.vmm.as_os_str() == VMM_BINARY {
            let sibling = std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|dir| dir.join(VMM_BINARY)))
                .filter(|path| path.is_file());
            if let Some(path) = sibling {
                return Ok(path);
            }
        }
        resolve_binary(VMM_BINARY, &self.vmm).map_err(HypervisorError::MissingBinary)
    }

    /// The VM description the monitor gets for `config` (no I/O;
    /// unit-tested).
    pub fn vm_spec(&self, config: &VmConfig, fs_socket: &Path) -> VmSpec {
        let mut cmdline = config.base_cmdline();
        cmdline.push("husk.backend=builtin".into());
        VmSpec {
            kernel: config.kernel.clone(),
            initramfs: config.initramfs.clone(),
            cmdline: cmdline.join(" "),
            vcpus: u8::try_from(config.vcpus).unwrap_or(u8::MAX),
            memory_mib: u64::from(config.memory_mib),
            console_log: config.console_log(),
            console_log_max: config.console_log_max,
            control_socket: Some(control_socket(config)),
            devices: vec![
                Device::Vsock {
                    cid: u64::from(GUEST_CID),
                    uds: config.vsock_uds(),
                },
                Device::Fs {
                    socket: fs_socket.to_path_buf(),
                    tag: husk_protocol::SHARE_TAG.into(),
                },
                Device::Rng,
            ]
            .into_iter()
            .chain(config.nics.iter().map(|nic| {
                Device::Net(NetDevice {
                    tap_fd: nic.fd(),
                    mac: nic.mac.0,
                    mtu: nic.mtu.and_then(|m| u16::try_from(m).ok()),
                })
            }))
            .collect(),
            jail: self.jail,
        }
    }
}

/// The monitor's control socket for `config`.
pub fn control_socket(config: &VmConfig) -> PathBuf {
    config.state_dir.join("vmm-control.sock")
}

impl Hypervisor for BuiltinBackend {
    fn name(&self) -> String {
        "builtin (KVM)".into()
    }

    fn start(&self, config: &VmConfig) -> Result<Box<dyn Vm>, HypervisorError> {
        config.check_files()?;
        if config.vcpus > 64 {
            return Err(HypervisorError::Unsupported(format!(
                "{} vCPUs: the builtin monitor supports at most 64",
                config.vcpus
            )));
        }
        let vmm = self.vmm_binary()?;
        let spec_path = config.state_dir.join("vmm.json");
        let virtiofsd =
            resolve_binary("virtiofsd", &self.virtiofsd).map_err(HypervisorError::MissingBinary)?;
        // The monitor waits for virtiofsd's socket itself (after loading
        // the kernel), so both start at once.
        let fs = vhost_user::start_virtiofsd(&virtiofsd, &config.shared_dir, &config.state_dir)?;
        self.vm_spec(config, &fs.socket)
            .write(&spec_path)
            .map_err(|e| HypervisorError::StateDir {
                path: spec_path.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
        let mut cmd = Command::new(vmm);
        cmd.arg("--config").arg(&spec_path);
        crate::process::inherit_fds(&mut cmd, config.nics.iter().map(Nic::fd).collect());
        let process = MonitorProcess::spawn(
            VMM_BINARY,
            cmd,
            &config.state_dir.join("vmm.log"),
            LogTail::Always,
        )?;
        let watch = HelperWatch::start(&[("virtiofsd", fs.process.pid())], process.pid()).map_err(
            |source| HypervisorError::Spawn {
                what: "the helpers' watcher",
                source,
            },
        )?;
        Ok(Box::new(BuiltinVm {
            process,
            watch,
            fs,
            vsock_uds: config.vsock_uds(),
            console_log: config.console_log(),
            control: control_socket(config),
        }))
    }
}

/// A VM run by a husk-vmm process and its virtiofsd.
struct BuiltinVm {
    process: MonitorProcess,
    /// Ends husk-vmm when virtiofsd ends.
    watch: HelperWatch,
    fs: Backend,
    vsock_uds: PathBuf,
    console_log: PathBuf,
    control: PathBuf,
}

impl BuiltinVm {
    fn control(&self, request: ControlRequest) -> Result<String, HypervisorError> {
        control::request(&self.control, request, CONTROL_TIMEOUT).map_err(HypervisorError::Wait)
    }
}

impl Vm for BuiltinVm {
    fn pid(&self) -> u32 {
        self.process.pid()
    }

    fn vsock_uds(&self) -> &Path {
        &self.vsock_uds
    }

    fn console_log(&self) -> &Path {
        &self.console_log
    }

    fn try_wait(&mut self) -> Result<Option<VmExit>, HypervisorError> {
        let exit = self.process.try_wait()?;
        Ok(exit.map(|exit| with_cause(exit, &self.watch)))
    }

    fn stop(&mut self) -> Result<VmExit, HypervisorError> {
        self.watch.stop();
        let exit = with_cause(self.process.kill()?, &self.watch);
        self.fs.stop(HELPER_GRACE).map_err(HypervisorError::Wait)?;
        let _ = std::fs::remove_file(&self.vsock_uds);
        let _ = std::fs::remove_file(&self.control);
        Ok(exit)
    }

    fn pause_vcpus(&mut self) -> Result<(), HypervisorError> {
        self.control(ControlRequest::Pause).map(drop)
    }

    fn resume_vcpus(&mut self) -> Result<(), HypervisorError> {
        self.control(ControlRequest::Resume).map(drop)
    }
}

impl Drop for BuiltinVm {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        let config = VmConfig {
            kernel: "/k/vmlinux".into(),
            initramfs: "/k/initramfs.cpio".into(),
            vcpus: 2,
            memory_mib: 256,
            shared_dir: "/share".into(),
            state_dir: "/run/husk/x".into(),
            cmdline_extra: vec![],
            nics: vec![],
            console_log_max: 1 << 20,
        };
        BuiltinBackend::from_config(&Config::default())
            .vm_spec(&config, Path::new("/run/husk/x/virtiofsd.sock"))
    }

    #[test]
    fn monitor_gets_the_sandbox_files_sockets_and_devices() {
        let spec = spec();
        assert_eq!(spec.kernel, Path::new("/k/vmlinux"));
        assert_eq!(spec.vcpus, 2);
        assert_eq!(spec.memory_mib, 256);
        assert_eq!(spec.console_log, Path::new("/run/husk/x/console.log"));
        assert_eq!(
            spec.control_socket.as_deref(),
            Some(Path::new("/run/husk/x/vmm-control.sock"))
        );
        assert_eq!(
            spec.devices,
            [
                Device::Vsock {
                    cid: 3,
                    uds: "/run/husk/x/vsock.sock".into()
                },
                Device::Fs {
                    socket: "/run/husk/x/virtiofsd.sock".into(),
                    tag: husk_protocol::SHARE_TAG.into()
                },
                Device::Rng,
            ]
        );
        spec.check().unwrap();
    }

    #[test]
    fn command_line_resets_on_reboot_and_names_the_backend() {
        let cmdline = spec().cmdline;
        assert!(cmdline.starts_with("console=ttyS0"), "{cmdline}");
        assert!(cmdline.contains("reboot=t"), "{cmdline}");
        assert!(cmdline.ends_with("husk.backend=builtin"), "{cmdline}");
    }
}

//! The `builtin` backend: our own KVM monitor (`husk-vmm`, the
//! `runtime/vmm` crate) as one process per VM, with virtio-vsock in
//! process and virtio-fs from virtiofsd over vhost-user. Needs hardware
//! KVM (vmx/svm).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::config::{resolve_binary, Config};

use super::monitor_process::{LogTail, MonitorProcess};
use super::vhost_user::{self, Backend};
use super::{Hypervisor, HypervisorError, Vm, VmConfig, VmExit, GUEST_CID};

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
}

impl BuiltinBackend {
    /// A backend using the binaries named in `config`.
    pub fn from_config(config: &Config) -> Self {
        BuiltinBackend {
            vmm: config.vmm.clone(),
            virtiofsd: config.virtiofsd.clone(),
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

    /// The monitor's arguments for `config` (no I/O; unit-tested).
    pub fn vmm_args(&self, config: &VmConfig, fs_socket: &Path) -> Vec<OsString> {
        let mut cmdline = config.base_cmdline();
        cmdline.push("husk.backend=builtin".into());
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |flag: &str, value: &dyn AsRef<std::ffi::OsStr>| {
            args.push(flag.into());
            args.push(value.as_ref().to_owned());
        };
        push("--kernel", &config.kernel);
        push("--initramfs", &config.initramfs);
        push("--cmdline", &cmdline.join(" "));
        push("--vcpus", &config.vcpus.to_string());
        push("--memory-mib", &config.memory_mib.to_string());
        push("--console-log", &config.console_log());
        push("--vsock-uds", &config.vsock_uds());
        push("--cid", &GUEST_CID.to_string());
        push("--fs-socket", &fs_socket);
        push("--fs-tag", &husk_protocol::SHARE_TAG);
        push("--control-socket", &control_socket(config));
        args
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
        let virtiofsd =
            resolve_binary("virtiofsd", &self.virtiofsd).map_err(HypervisorError::MissingBinary)?;
        // The monitor waits for virtiofsd's socket itself (after loading
        // the kernel), so both start at once.
        let fs = vhost_user::start_virtiofsd(&virtiofsd, &config.shared_dir, &config.state_dir)?;
        let mut cmd = Command::new(vmm);
        cmd.args(self.vmm_args(config, &fs.socket));
        let process = MonitorProcess::spawn(
            VMM_BINARY,
            cmd,
            &config.state_dir.join("vmm.log"),
            LogTail::Always,
        )?;
        Ok(Box::new(BuiltinVm {
            process,
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
    fs: Backend,
    vsock_uds: PathBuf,
    console_log: PathBuf,
    control: PathBuf,
}

impl BuiltinVm {
    fn control(&self, request: &str) -> Result<String, HypervisorError> {
        husk_vmm::control::request(&self.control, request, CONTROL_TIMEOUT)
            .map_err(HypervisorError::Wait)
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
        self.process.try_wait()
    }

    fn stop(&mut self) -> Result<VmExit, HypervisorError> {
        let exit = self.process.kill()?;
        self.fs.stop(HELPER_GRACE).map_err(HypervisorError::Wait)?;
        let _ = std::fs::remove_file(&self.vsock_uds);
        let _ = std::fs::remove_file(&self.control);
        Ok(exit)
    }

    fn pause_vcpus(&mut self) -> Result<(), HypervisorError> {
        self.control("pause").map(drop)
    }

    fn resume_vcpus(&mut self) -> Result<(), HypervisorError> {
        self.control("resume").map(drop)
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

    fn args() -> Vec<String> {
        let config = VmConfig {
            kernel: "/k/vmlinux".into(),
            initramfs: "/k/initramfs.cpio".into(),
            vcpus: 2,
            memory_mib: 256,
            shared_dir: "/share".into(),
            state_dir: "/run/husk/x".into(),
            cmdline_extra: vec![],
        };
        BuiltinBackend::from_config(&Config::default())
            .vmm_args(&config, Path::new("/run/husk/x/virtiofsd.sock"))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    fn value_of<'a>(args: &'a [String], flag: &str) -> &'a str {
        let at = args.iter().position(|a| a == flag).expect(flag);
        &args[at + 1]
    }

    #[test]
    fn monitor_gets_the_sandbox_files_and_sockets() {
        let args = args();
        assert_eq!(value_of(&args, "--kernel"), "/k/vmlinux");
        assert_eq!(value_of(&args, "--vcpus"), "2");
        assert_eq!(value_of(&args, "--memory-mib"), "256");
        assert_eq!(value_of(&args, "--console-log"), "/run/husk/x/console.log");
        assert_eq!(value_of(&args, "--vsock-uds"), "/run/husk/x/vsock.sock");
        assert_eq!(value_of(&args, "--fs-socket"), "/run/husk/x/virtiofsd.sock");
        assert_eq!(value_of(&args, "--fs-tag"), husk_protocol::SHARE_TAG);
        assert_eq!(
            value_of(&args, "--control-socket"),
            "/run/husk/x/vmm-control.sock"
        );
    }

    #[test]
    fn command_line_resets_on_reboot_and_names_the_backend() {
        let args = args();
        let cmdline = value_of(&args, "--cmdline");
        assert!(cmdline.starts_with("console=ttyS0"), "{cmdline}");
        assert!(cmdline.contains("reboot=t"), "{cmdline}");
        assert!(cmdline.ends_with("husk.backend=builtin"), "{cmdline}");
    }
}

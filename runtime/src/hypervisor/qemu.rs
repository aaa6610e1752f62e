//! The `qemu` backend: QEMU's `microvm` machine with the same kernel and
//! initramfs as every backend, guest memory in a shared memfd (vhost-user
//! needs it), virtio-fs from virtiofsd and vsock from vhost-device-vsock.
//!
//! Measured facts: without `acpi=off` QEMU does not put the
//! `virtio_mmio.device=` entries on the command line and the virtio-fs mount
//! fails; `-no-reboot` turns the agent's reboot into QEMU's exit; the CMOS
//! RTC stays on, since under TCG (no kvmclock) a guest without it waits a
//! full second in `mach_get_cmos_time` (boot 1.8 s -> 0.8 s, measured).

use std::ffi::OsString;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::config::{resolve_binary, Config};

use super::helper_watch::{with_cause, HelperWatch};
use super::monitor_process::{LogTail, MonitorProcess};
use super::vhost_user::{self, Backend};
use super::{console, jail};
use super::{Hypervisor, HypervisorError, Nic, Vm, VmConfig, VmExit, GUEST_CID};

/// How long virtiofsd gets to exit by itself after QEMU is gone.
const HELPER_GRACE: Duration = Duration::from_millis(500);

/// Starts VMs with qemu-system-x86_64.
pub struct QemuBackend {
    qemu: PathBuf,
    virtiofsd: PathBuf,
    vsock_backend: PathBuf,
    kvm: bool,
    jail: bool,
}

impl QemuBackend {
    /// A backend using the binaries named in `config`; `kvm` picks
    /// `-accel kvm` over TCG.
    pub fn from_config(config: &Config, kvm: bool) -> Self {
        QemuBackend {
            qemu: config.qemu.clone(),
            virtiofsd: config.virtiofsd.clone(),
            vsock_backend: config.vsock_backend.clone(),
            kvm,
            jail: config.jail,
        }
    }

    /// The QEMU binary, resolved.
    pub fn qemu_binary(&self) -> Result<PathBuf, HypervisorError> {
        resolve_binary("qemu-system-x86_64", &self.qemu).map_err(HypervisorError::MissingBinary)
    }

    /// The machine, accelerator, size and boot arguments every QEMU launch
    /// shares, the benchmark's bare baseline included.
    pub fn machine_args(
        &self,
        config: &VmConfig,
        memfd: bool,
        cmdline: &[String],
    ) -> Vec<OsString> {
        let mem = format!("{}M", config.memory_mib);
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |parts: &[&str]| args.extend(parts.iter().map(OsString::from));
        push(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
        let machine = "microvm,acpi=off,pcie=off";
        if memfd {
            push(&["-M", &format!("{machine},memory-backend=mem")]);
            push(&[
                "-object",
                &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
            ]);
        } else {
            push(&["-M", machine]);
        }
        if self.kvm {
            push(&["-accel", "kvm", "-cpu", "host"]);
        } else {
            push(&["-accel", "tcg", "-cpu", "max"]);
        }
        push(&["-smp", &config.vcpus.to_string(), "-m", &mem]);
        push(&["-kernel", &config.kernel.to_string_lossy()]);
        push(&["-initrd", &config.initramfs.to_string_lossy()]);
        push(&["-append", &cmdline.join(" ")]);
        args
    }

    /// The full QEMU argument list for `config` (no I/O; unit-tested).
    pub fn qemu_args(
        &self,
        config: &VmConfig,
        fs_socket: &Path,
        vsock_socket: &Path,
        console_fd: RawFd,
    ) -> Vec<OsString> {
        let mut cmdline = config.base_cmdline();
        cmdline.push("husk.backend=qemu".into());
        let mut args = self.machine_args(config, true, &cmdline);
        let mut push = |parts: &[&str]| args.extend(parts.iter().map(OsString::from));
        // The console goes through a pipe to the capped log (see
        // `console`); `append` keeps QEMU from truncating the pipe.
        push(&[
            "-add-fd",
            &format!("fd={console_fd},set={},opaque=console", console::FDSET),
        ]);
        push(&[
            "-chardev",
            &format!(
                "file,id=console,path=/dev/fdset/{},append=on",
                console::FDSET
            ),
        ]);
        push(&["-serial", "chardev:console"]);
        push(&[
            "-chardev",
            &format!("socket,id=fs,path={}", fs_socket.display()),
        ]);
        push(&[
            "-device",
            &format!(
                "vhost-user-fs-device,chardev=fs,tag={}",
                husk_protocol::SHARE_TAG
            ),
        ]);
        push(&[
            "-chardev",
            &format!("socket,id=vsock,path={}", vsock_socket.display()),
        ]);
        push(&["-device", "vhost-user-vsock-device,chardev=vsock"]);
        for (index, nic) in config.nics.iter().enumerate() {
            push(&[
                "-netdev",
                &format!("tap,id=net{index},fd={},vhost=off", nic.fd()),
            ]);
            let mut device = format!("virtio-net-device,netdev=net{index},mac={}", nic.mac);
            if let Some(mtu) = nic.mtu {
                device.push_str(&format!(",host_mtu={mtu}"));
            }
            push(&["-device", &device]);
        }
        if self.jail {
            push(&["-sandbox", jail::QEMU_SANDBOX]);
        }
        args
    }
}

impl Hypervisor for QemuBackend {
    fn name(&self) -> String {
        format!("qemu ({})", if self.kvm { "KVM" } else { "TCG" })
    }

    fn start(&self, config: &VmConfig) -> Result<Box<dyn Vm>, HypervisorError> {
        config.check_files()?;
        let qemu = self.qemu_binary()?;
        let virtiofsd =
            resolve_binary("virtiofsd", &self.virtiofsd).map_err(HypervisorError::MissingBinary)?;
        let vsock_backend = resolve_binary("vhost-device-vsock", &self.vsock_backend)
            .map_err(HypervisorError::MissingBinary)?;

        let vsock_uds = config.vsock_uds();
        let _ = std::fs::remove_file(&vsock_uds);
        let mut fs =
            vhost_user::start_virtiofsd(&virtiofsd, &config.shared_dir, &config.state_dir)?;
        let mut vsock = vhost_user::start_vsock(
            &vsock_backend,
            GUEST_CID,
            &vsock_uds,
            &config.state_dir,
            self.jail,
        )?;
        fs.wait_ready()?;
        vsock.wait_ready()?;

        let console_log = config.console_log();
        let console = console::start(&console_log, config.console_log_max).map_err(|source| {
            HypervisorError::StateDir {
                path: console_log.clone(),
                source,
            }
        })?;
        let mut cmd = Command::new(qemu);
        cmd.args(self.qemu_args(
            config,
            &fs.socket,
            &vsock.socket,
            console.write_end.as_raw_fd(),
        ));
        let mut inherited: Vec<RawFd> = config.nics.iter().map(Nic::fd).collect();
        inherited.push(console.write_end.as_raw_fd());
        crate::process::inherit_fds(&mut cmd, inherited);
        if self.jail {
            jail::drop_caps_at_exec(&mut cmd);
        }
        let qemu = MonitorProcess::spawn(
            "qemu",
            cmd,
            &config.state_dir.join("qemu.log"),
            LogTail::OnFailure,
        )?;
        // QEMU holds the write end now: the relay ends when QEMU does.
        drop(console.write_end);
        let watch = HelperWatch::start(
            &[
                ("virtiofsd", fs.process.pid()),
                ("vhost-device-vsock", vsock.process.pid()),
            ],
            qemu.pid(),
        )
        .map_err(|source| HypervisorError::Spawn {
            what: "the helpers' watcher",
            source,
        })?;
        Ok(Box::new(QemuVm {
            qemu,
            watch,
            console: Some(console.thread),
            fs,
            vsock,
            vsock_uds,
            console_log: config.console_log(),
        }))
    }
}

/// A VM run by a QEMU process and its two vhost-user helpers.
struct QemuVm {
    qemu: MonitorProcess,
    /// Ends QEMU when a helper ends.
    watch: HelperWatch,
    /// The console relay, joined once QEMU is gone.
    console: Option<std::thread::JoinHandle<()>>,
    fs: Backend,
    vsock: Backend,
    vsock_uds: PathBuf,
    console_log: PathBuf,
}

impl Vm for QemuVm {
    fn pid(&self) -> u32 {
        self.qemu.pid()
    }

    fn vsock_uds(&self) -> &Path {
        &self.vsock_uds
    }

    fn console_log(&self) -> &Path {
        &self.console_log
    }

    fn try_wait(&mut self) -> Result<Option<VmExit>, HypervisorError> {
        let exit = self.qemu.try_wait()?;
        Ok(exit.map(|exit| with_cause(exit, &self.watch)))
    }

    fn stop(&mut self) -> Result<VmExit, HypervisorError> {
        self.watch.stop();
        let exit = with_cause(self.qemu.kill()?, &self.watch);
        if let Some(relay) = self.console.take() {
            // QEMU's end of the pipe closed with it.
            let _ = relay.join();
        }
        // virtiofsd exits by itself once QEMU is gone; the vsock backend
        // would wait for the next VMM forever.
        self.fs.stop(HELPER_GRACE).map_err(HypervisorError::Wait)?;
        self.vsock
            .stop(Duration::ZERO)
            .map_err(HypervisorError::Wait)?;
        let _ = std::fs::remove_file(&self.vsock_uds);
        Ok(exit)
    }
}

impl Drop for QemuVm {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_protocol::net::MacAddr;
    use std::os::fd::OwnedFd;
    use std::sync::Arc;

    fn vm_config() -> VmConfig {
        VmConfig {
            kernel: "/k/vmlinux".into(),
            initramfs: "/k/initramfs.cpio".into(),
            vcpus: 2,
            memory_mib: 256,
            shared_dir: "/share".into(),
            state_dir: "/run/husk/x".into(),
            cmdline_extra: vec![],
            nics: vec![],
            console_log_max: 1 << 20,
        }
    }

    fn args(kvm: bool) -> Vec<String> {
        let backend = QemuBackend::from_config(&Config::default(), kvm);
        backend
            .qemu_args(
                &vm_config(),
                Path::new("/s/fs.sock"),
                Path::new("/s/vsock.sock"),
                7,
            )
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    fn value_of<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn microvm_has_acpi_off_and_shared_memfd_memory() {
        let args = args(false);
        let machine = value_of(&args, "-M")[0];
        assert!(machine.starts_with("microvm,acpi=off"), "{machine}");
        assert!(machine.contains("memory-backend=mem"), "{machine}");
        assert_eq!(
            value_of(&args, "-object"),
            ["memory-backend-memfd,id=mem,size=256M,share=on"]
        );
        assert_eq!(value_of(&args, "-m"), ["256M"]);
        assert!(args.contains(&"-no-reboot".to_string()));
        assert!(
            !machine.contains("rtc=off"),
            "the guest needs the RTC: {machine}"
        );
    }

    #[test]
    fn tcg_or_kvm_as_asked() {
        assert_eq!(value_of(&args(false), "-accel"), ["tcg"]);
        assert_eq!(value_of(&args(true), "-accel"), ["kvm"]);
        assert_eq!(value_of(&args(true), "-cpu"), ["host"]);
    }

    #[test]
    fn vhost_user_devices_use_the_given_sockets_and_no_tag_on_virtiofsd() {
        let args = args(false);
        let chardevs = value_of(&args, "-chardev");
        assert!(
            chardevs.contains(&"socket,id=fs,path=/s/fs.sock"),
            "{chardevs:?}"
        );
        assert!(
            chardevs.contains(&"socket,id=vsock,path=/s/vsock.sock"),
            "{chardevs:?}"
        );
        let devices = value_of(&args, "-device");
        assert_eq!(
            devices,
            [
                "vhost-user-fs-device,chardev=fs,tag=husk",
                "vhost-user-vsock-device,chardev=vsock"
            ]
        );
    }

    #[test]
    fn nics_are_taps_passed_as_fds_with_their_mac_and_mtu() {
        let tap = Arc::new(OwnedFd::from(std::fs::File::open("/dev/null").unwrap()));
        let fd = std::os::fd::AsRawFd::as_raw_fd(&*tap);
        let mut config = vm_config();
        config.nics = vec![
            Nic {
                tap: Arc::clone(&tap),
                mac: MacAddr([2, 0x42, 0xac, 0x11, 0, 2]),
                mtu: Some(1450),
            },
            Nic {
                tap,
                mac: MacAddr([2, 0, 0, 0, 0, 9]),
                mtu: None,
            },
        ];
        let backend = QemuBackend::from_config(&Config::default(), false);

        let args: Vec<String> = backend
            .qemu_args(
                &config,
                Path::new("/s/fs.sock"),
                Path::new("/s/vsock.sock"),
                7,
            )
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();

        assert_eq!(
            value_of(&args, "-netdev"),
            [
                format!("tap,id=net0,fd={fd},vhost=off"),
                format!("tap,id=net1,fd={fd},vhost=off")
            ]
        );
        let devices = value_of(&args, "-device");
        assert!(
            devices.contains(&"virtio-net-device,netdev=net0,mac=02:42:ac:11:00:02,host_mtu=1450"),
            "{devices:?}"
        );
        assert!(
            devices.contains(&"virtio-net-device,netdev=net1,mac=02:00:00:00:00:09"),
            "{devices:?}"
        );
    }

    #[test]
    fn console_goes_into_the_relay_s_pipe() {
        let args = args(false);
        assert_eq!(value_of(&args, "-add-fd"), ["fd=7,set=1,opaque=console"]);
        assert!(
            value_of(&args, "-chardev").contains(&"file,id=console,path=/dev/fdset/1,append=on")
        );
        assert_eq!(value_of(&args, "-serial"), ["chardev:console"]);
        assert!(value_of(&args, "-append")[0].starts_with("console=ttyS0"));
    }
}

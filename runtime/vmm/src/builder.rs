//! The one boot recipe, step by step:
//!
//! 1. open `/dev/kvm`, check what we need;
//! 2. guest memory in a shared memfd;
//! 3. the VM, its in-kernel irqchip and PIT, memory slots;
//! 4. `vmlinux` through its PVH entry, the initramfs at the top of low RAM;
//! 5. devices: serial and i8042 on ports, virtio devices on MMIO windows
//!    with their irqfds and ioeventfds; then the command line (with a
//!    `virtio_mmio.device=` entry per device), GDT, MP table and
//!    `hvm_start_info`;
//! 6. vCPUs: CPUID, MSRs, FPU, LAPIC, and the boot registers on vCPU 0;
//! 7. vCPU threads start; the guest runs.

use std::fs::File;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use husk_console_log::CappedLog;
use husk_vm_spec::{Device, NetDevice, VmSpec};
use kvm_ioctls::{IoEventAddress, Kvm, VcpuFd, VmFd};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::{
    CMDLINE_ADDR, CMDLINE_MAX, HIMEM_START, IOAPIC_PINS, MMIO_GAP_START, SERIAL_IRQ, SERIAL_PORT,
    VIRTIO_IRQ_BASE, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE,
};
use crate::arch::x86_64::{cpuid, mptable, pvh, regs};
use crate::devices::legacy::{I8042, I8042_PORT};
use crate::devices::serial::SerialConsole;
use crate::devices::virtio::fs::Fs;
use crate::devices::virtio::mmio::{MmioTransport, QUEUE_NOTIFY_OFFSET};
use crate::devices::virtio::net::{tap, Net, Tap};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::VirtioDevice;
use crate::devices::{Bus, BusError};
use crate::vstate::file_copy::GuestFileCopy;
use crate::vstate::memory::{self, GuestMemory, MemoryError};
use crate::vstate::vcpu::{ExitHandlers, ExitSignal, VcpuError, VcpuSet, VmExit};
use crate::vstate::vm::{self, VmError};
use crate::vstate::Vmm;

/// Errors building the VM; each names the step and input that failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The description is unusable.
    #[error("invalid VM description: {0}")]
    Spec(#[from] husk_vm_spec::SpecError),
    /// Creating guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Creating the VM.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A device could not be created or wired.
    #[error("device {device}: {message}")]
    Device {
        /// Which device.
        device: &'static str,
        /// What failed.
        message: String,
    },
    /// Loading the kernel.
    #[error("kernel {path}: {message}")]
    Kernel {
        /// The kernel path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Loading the initramfs.
    #[error("initramfs {path}: {message}")]
    Initramfs {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Writing boot information into guest memory.
    #[error("writing {what} into guest memory: {message}")]
    BootInfo {
        /// Which structure.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// Setting up a vCPU.
    #[error("vCPU {index}: {message}")]
    Vcpu {
        /// The vCPU.
        index: u8,
        /// Why.
        message: String,
    },
    /// Starting the vCPU threads.
    #[error(transparent)]
    Start(#[from] VcpuError),
}

fn device_err(device: &'static str) -> impl Fn(String) -> BuildError {
    move |message| BuildError::Device { device, message }
}

/// Builds the VM described by `config` and starts its vCPUs. `started` is
/// when the monitor started, for [`Vmm::time_to_first_entry`].
pub fn build_and_boot(config: &VmSpec, started: Instant) -> Result<Vmm, BuildError> {
    boot(prepare(config)?, config, started)
}

/// A VM whose memory holds its kernel and initramfs, before any device
/// or thread: what the monitor opens from host paths (`/dev/kvm`, the
/// boot files) is done, so the jail need not keep them.
pub struct Prepared {
    kvm: Kvm,
    memory: GuestMemory,
    vm: VmFd,
    entry: GuestAddress,
    initramfs: (GuestAddress, u64),
}

/// The first half of [`build_and_boot`]: `/dev/kvm`, guest memory, the VM,
/// the kernel and initramfs loaded. It starts no thread.
pub fn prepare(config: &VmSpec) -> Result<Prepared, BuildError> {
    config.check()?;
    let kvm = vm::open_kvm()?;
    let memory = memory::create(config.memory_mib)?;
    let vm = vm::create(&kvm, &memory)?;
    // Loading before the devices gives a vhost-user backend started next to
    // us the time to create its socket.
    let entry = load_kernel(&memory, &config.kernel)?;
    let initramfs = load_initramfs(&memory, &config.initramfs)?;
    Ok(Prepared {
        kvm,
        memory,
        vm,
        entry,
        initramfs,
    })
}

/// The second half of [`build_and_boot`]: the devices (their worker
/// threads), the boot information, the vCPUs started.
pub fn boot(prepared: Prepared, config: &VmSpec, started: Instant) -> Result<Vmm, BuildError> {
    let Prepared {
        kvm,
        memory,
        vm,
        entry,
        initramfs,
    } = prepared;
    let exit = Arc::new(ExitSignal::new().map_err(|e| device_err("exit")(e.to_string()))?);
    let devices = attach_devices(&vm, &memory, config, &exit)?;
    let cmdline = format!("{} {}", config.cmdline, devices.cmdline.join(" "));
    write_boot_info(&memory, config.vcpus, &cmdline, initramfs)?;
    let vcpus = create_vcpus(&kvm, &vm, config.vcpus, entry)?;
    let handlers = ExitHandlers {
        pio: devices.pio,
        mmio: devices.mmio,
        exit: exit.clone(),
    };
    let vcpus = VcpuSet::start(vcpus, handlers)?;
    Ok(Vmm {
        vcpus,
        exit,
        transports: devices.transports,
        started,
        _vm: vm,
        _memory: memory,
    })
}

/// The wired devices.
struct Devices {
    pio: Bus,
    mmio: Bus,
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    cmdline: Vec<String>,
}

fn irqfd(vm: &VmFd, gsi: u32, device: &'static str) -> Result<EventFd, BuildError> {
    let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| device_err(device)(e.to_string()))?;
    vm.register_irqfd(&fd, gsi)
        .map_err(|e| device_err(device)(format!("registering irqfd for GSI {gsi}: {e}")))?;
    Ok(fd)
}

fn attach_devices(
    vm: &VmFd,
    memory: &GuestMemory,
    config: &VmSpec,
    exit: &Arc<ExitSignal>,
) -> Result<Devices, BuildError> {
    let mut devices = Devices {
        pio: Bus::default(),
        mmio: Bus::default(),
        transports: Vec::new(),
        cmdline: Vec::new(),
    };
    let bus_err = |device| move |e: BusError| device_err(device)(e.to_string());

    let log = CappedLog::create(&config.console_log, config.console_log_max).map_err(|e| {
        device_err("serial")(format!("creating {}: {e}", config.console_log.display()))
    })?;
    let serial = SerialConsole::new(irqfd(vm, SERIAL_IRQ, "serial")?, log);
    devices
        .pio
        .insert(Arc::new(Mutex::new(serial)), u64::from(SERIAL_PORT), 8)
        .map_err(bus_err("serial"))?;
    let reset = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| device_err("i8042")(e.to_string()))?;
    watch_reset(
        reset
            .try_clone()
            .map_err(|e| device_err("i8042")(e.to_string()))?,
        exit.clone(),
    );
    devices
        .pio
        .insert(
            Arc::new(Mutex::new(I8042::new(reset))),
            u64::from(I8042_PORT),
            1,
        )
        .map_err(bus_err("i8042"))?;

    let mut taps = Vec::new();
    for (index, spec) in config.devices.iter().enumerate() {
        let device = virtio_device(spec, &mut taps)?;
        let name = device.name();
        let base = VIRTIO_MMIO_BASE + index as u64 * VIRTIO_MMIO_SIZE;
        let gsi = VIRTIO_IRQ_BASE + index as u32;
        if gsi >= IOAPIC_PINS {
            return Err(device_err(name)("no IRQ left".into()));
        }
        let transport = MmioTransport::new(device, memory.clone(), irqfd(vm, gsi, name)?)
            .map_err(|e| device_err(name)(e.to_string()))?;
        for (queue, kick) in transport.kicks().iter().enumerate() {
            vm.register_ioevent(
                kick,
                &IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET),
                queue as u32,
            )
            .map_err(|e| device_err(name)(format!("registering ioeventfd: {e}")))?;
        }
        let transport = Arc::new(Mutex::new(transport));
        devices
            .mmio
            .insert(transport.clone(), base, VIRTIO_MMIO_SIZE)
            .map_err(bus_err(name))?;
        devices.transports.push(transport);
        devices
            .cmdline
            .push(format!("virtio_mmio.device=4K@{base:#x}:{gsi}"));
    }
    Ok(devices)
}

/// The device a description entry asks for; `taps` are the tap fds taken
/// so far.
fn virtio_device(
    spec: &Device,
    taps: &mut Vec<RawFd>,
) -> Result<Box<dyn VirtioDevice>, BuildError> {
    Ok(match spec {
        Device::Vsock { cid, uds } => {
            Box::new(Vsock::new(*cid, uds).map_err(|e| device_err("vsock")(e.to_string()))?)
        }
        Device::Fs { socket, tag } => {
            Box::new(Fs::connect(socket, tag).map_err(|e| device_err("fs")(e.to_string()))?)
        }
        Device::Rng => Box::new(Rng::new().map_err(|e| device_err("rng")(e.to_string()))?),
        Device::Net(net) => Box::new(net_device(net, taps)?),
    })
}

/// A NIC on the tap the runtime left inherited under `tap_fd` (one NIC per
/// tap: a descriptor owned twice would be closed twice).
fn net_device(spec: &NetDevice, taps: &mut Vec<RawFd>) -> Result<Net, BuildError> {
    if taps.contains(&spec.tap_fd) {
        let fd = spec.tap_fd;
        return Err(device_err("net")(format!(
            "tap fd {fd} is given to two NICs"
        )));
    }
    let tap = inherited_tap(spec.tap_fd)?;
    taps.push(spec.tap_fd);
    Net::new(tap, spec.mac, spec.mtu).map_err(|e| device_err("net")(e.to_string()))
}

/// Owns the inherited descriptor `fd` once it is known to be an open tap:
/// a number that is not one is refused, neither owned nor closed (it may be
/// one of ours).
fn inherited_tap(fd: RawFd) -> Result<Tap, BuildError> {
    let err = device_err("net");
    // SAFETY: F_GETFD only reads the flags of a descriptor number; asking
    // about any number is harmless.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        let e = std::io::Error::last_os_error();
        return Err(err(format!("tap fd {fd} is not open: {e}")));
    }
    // SAFETY: `fd` is open (checked above) and nothing closes it while
    // borrowed for the check.
    tap::check(unsafe { BorrowedFd::borrow_raw(fd) }).map_err(|e| err(e.to_string()))?;
    // SAFETY: `fd` is an open tap the runtime passed for this device alone;
    // nothing else in the monitor owns or closes it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Tap::new(owned).map_err(|e| err(e.to_string()))
}

/// The i8042 reset line ends the VM: a tiny thread turns the eventfd into
/// an exit report.
fn watch_reset(reset: EventFd, exit: Arc<ExitSignal>) {
    let _ = std::thread::Builder::new()
        .name("i8042-reset".into())
        .stack_size(64 << 10)
        .spawn(move || {
            crate::jail::enter_thread(crate::jail::ThreadKind::Reset);
            // SAFETY: plain fcntl on an fd we own.
            unsafe {
                let fd = std::os::fd::AsRawFd::as_raw_fd(&reset);
                let flags = libc::fcntl(fd, libc::F_GETFL);
                libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
            }
            if reset.read().is_ok() {
                exit.report(VmExit::Reset);
            }
        });
}

fn load_kernel(memory: &GuestMemory, path: &Path) -> Result<GuestAddress, BuildError> {
    let err = |message: String| BuildError::Kernel {
        path: path.to_path_buf(),
        message,
    };
    let mut file = File::open(path).map_err(|e| err(e.to_string()))?;
    let loaded = Elf::load(
        memory.as_ref(),
        None,
        &mut GuestFileCopy::new(&mut file, memory),
        Some(GuestAddress(HIMEM_START)),
    )
    .map_err(|e| err(format!("not a loadable vmlinux: {e}")))?;
    match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => Ok(entry),
        _ => Err(err(
            "has no PVH entry note (build it with CONFIG_PVH=y)".into()
        )),
    }
}

fn load_initramfs(memory: &GuestMemory, path: &Path) -> Result<(GuestAddress, u64), BuildError> {
    let err = |message: String| BuildError::Initramfs {
        path: path.to_path_buf(),
        message,
    };
    let mut file = File::open(path).map_err(|e| err(e.to_string()))?;
    let size = file.metadata().map_err(|e| err(e.to_string()))?.len();
    let low_end = memory.last_addr().0.saturating_add(1).min(MMIO_GAP_START);
    let addr = low_end
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= HIMEM_START)
        .ok_or_else(|| err(format!("{size} bytes do not fit in guest memory")))?;
    // Straight from the file into guest memory, no copy in between.
    memory
        .read_exact_volatile_from(
            GuestAddress(addr),
            &mut GuestFileCopy::new(&mut file, memory),
            size as usize,
        )
        .map_err(|e| err(e.to_string()))?;
    Ok((GuestAddress(addr), size))
}

fn write_boot_info(
    memory: &GuestMemory,
    vcpus: u8,
    cmdline: &str,
    initramfs: (GuestAddress, u64),
) -> Result<(), BuildError> {
    let boot_err = |what| move |message: String| BuildError::BootInfo { what, message };
    if cmdline.len() >= CMDLINE_MAX || cmdline.contains('\0') {
        return Err(boot_err("the command line")(format!(
            "{} bytes or a NUL; at most {} bytes",
            cmdline.len(),
            CMDLINE_MAX - 1
        )));
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    memory
        .write_slice(&bytes, GuestAddress(CMDLINE_ADDR))
        .map_err(|e| boot_err("the command line")(e.to_string()))?;
    regs::write_gdt(memory).map_err(|e| boot_err("the GDT")(e.to_string()))?;
    mptable::write(memory, vcpus).map_err(|e| boot_err("the MP table")(e.to_string()))?;
    let ram: Vec<_> = memory.iter().map(|r| (r.start_addr(), r.len())).collect();
    let map = pvh::memory_map(&ram);
    let info = pvh::StartInfo {
        initramfs,
        memory_map: &map,
    };
    pvh::write_start_info(memory, &info).map_err(|e| boot_err("hvm_start_info")(e.to_string()))
}

fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    count: u8,
    entry: GuestAddress,
) -> Result<Vec<VcpuFd>, BuildError> {
    let supported = cpuid::supported(kvm).map_err(|e| BuildError::Vcpu {
        index: 0,
        message: format!("KVM_GET_SUPPORTED_CPUID: {e}"),
    })?;
    let supported = cpuid::with_emulated(
        supported,
        kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer),
    );
    let supported = cpuid::with_brand(supported, cpuid::host_brand());
    (0..count)
        .map(|index| {
            let err = |message: String| BuildError::Vcpu { index, message };
            let vcpu = vm
                .create_vcpu(u64::from(index))
                .map_err(|e| err(format!("KVM_CREATE_VCPU: {e}")))?;
            vcpu.set_cpuid2(&cpuid::for_vcpu(&supported, index, count))
                .map_err(|e| err(format!("KVM_SET_CPUID2: {e}")))?;
            regs::set_boot_msrs(&vcpu).map_err(|e| err(e.to_string()))?;
            regs::set_fpu(&vcpu).map_err(|e| err(e.to_string()))?;
            regs::set_lint(&vcpu).map_err(|e| err(e.to_string()))?;
            if index == 0 {
                regs::set_pvh_entry(&vcpu, entry.0).map_err(|e| err(e.to_string()))?;
            }
            Ok(vcpu)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn a_tap_fd_that_is_not_open_names_the_device_and_the_fd() {
        let err = inherited_tap(999_999).unwrap_err();

        let message = err.to_string();
        assert!(
            message.starts_with("device net: tap fd 999999 is not open: "),
            "{message}"
        );
    }

    #[test]
    fn a_descriptor_that_is_not_a_tap_is_refused_and_left_open() {
        let file = tempfile::tempfile().unwrap();
        let fd = file.as_raw_fd();

        let err = inherited_tap(fd).unwrap_err();

        let message = err.to_string();
        assert!(
            message.starts_with(&format!("device net: tap fd {fd}: TUNGETIFF")),
            "{message}"
        );
        assert!(file.metadata().is_ok(), "the descriptor was closed");
    }

    #[test]
    fn one_tap_fd_given_to_two_nics_is_refused() {
        let spec = NetDevice {
            tap_fd: 7,
            mac: [2, 0, 0, 0, 0, 1],
            mtu: None,
        };

        let err = net_device(&spec, &mut vec![7]).err().unwrap();

        assert_eq!(err.to_string(), "device net: tap fd 7 is given to two NICs");
    }
}

//! The KVM VM: capability checks, the in-kernel irqchip (PIC, IOAPIC,
//! LAPICs) and PIT, and guest memory registered as memory slots.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::x86_64::layout::{KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR};
use crate::vstate::memory::GuestMemory;

/// Errors creating the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm could not be opened.
    #[error("opening /dev/kvm: {0}")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// A capability the monitor relies on is missing.
    #[error("KVM on this host lacks {0:?}, which the builtin monitor needs")]
    MissingCap(Cap),
    /// A VM ioctl failed.
    #[error("{what}: {source}")]
    Kvm {
        /// Which step.
        what: &'static str,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// Opens /dev/kvm and checks the capabilities used here.
pub fn open_kvm() -> Result<Kvm, VmError> {
    let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
    for cap in [
        Cap::Irqchip,
        Cap::Ioeventfd,
        Cap::Irqfd,
        Cap::UserMemory,
        Cap::SetTssAddr,
        Cap::Pit2,
        Cap::ExtCpuid,
        Cap::ImmediateExit,
    ] {
        if !kvm.check_extension(cap) {
            return Err(VmError::MissingCap(cap));
        }
    }
    Ok(kvm)
}

/// Creates the VM with its irqchip, PIT and memory.
pub fn create(kvm_fd: &Kvm, memory: &GuestMemory) -> Result<VmFd, VmError> {
    let vm = kvm_fd.create_vm().map_err(kvm("KVM_CREATE_VM"))?;
    vm.set_tss_address(KVM_TSS_ADDR as usize)
        .map_err(kvm("KVM_SET_TSS_ADDR"))?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
        .map_err(kvm("KVM_SET_IDENTITY_MAP_ADDR"))?;
    vm.create_irq_chip().map_err(kvm("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm("KVM_CREATE_PIT2"))?;
    for (slot, region) in memory.iter().enumerate() {
        let slot_info = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping of `memory_size` bytes owned
        // by `memory`, which the VMM keeps alive as long as the VM.
        unsafe { vm.set_user_memory_region(slot_info) }
            .map_err(kvm("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(vm)
}

//! The register state a vCPU starts with for the PVH entry: 32-bit protected
//! mode, paging off, flat segments from a small GDT, `%ebx` pointing at the
//! `hvm_start_info`. Plus the FPU, boot MSRs and the local APIC's LINT pins.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{GDT_ADDR, START_INFO_ADDR};

/// Errors setting up a vCPU's registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A KVM ioctl failed.
    #[error("{what}: {source}")]
    Kvm {
        /// Which ioctl.
        what: &'static str,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM accepted fewer MSRs than given.
    #[error("KVM set {set} of {wanted} boot MSRs")]
    Msrs {
        /// Accepted.
        set: usize,
        /// Given.
        wanted: usize,
    },
    /// Writing the GDT failed.
    #[error("writing the GDT: {0}")]
    Gdt(#[source] vm_memory::GuestMemoryError),
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { what, source }
}

/// GDT entries: null, 32-bit code, 32-bit data, TSS.
const GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xc09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x008b, 0, 0x67),
];
const CODE_SELECTOR: u16 = 0x08;
const DATA_SELECTOR: u16 = 0x10;
const TSS_SELECTOR: u16 = 0x18;

/// One GDT descriptor from its access/flags word, base and limit.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The `kvm_segment` a GDT entry describes.
fn segment(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let granular = (entry >> 55) & 1 == 1;
    kvm_segment {
        base,
        limit: if granular {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granular as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Writes the boot GDT into guest memory (once per VM).
pub fn write_gdt(memory: &GuestMemoryMmap) -> Result<(), RegsError> {
    for (i, entry) in GDT.iter().enumerate() {
        memory
            .write_obj(*entry, GuestAddress(GDT_ADDR + 8 * i as u64))
            .map_err(RegsError::Gdt)?;
    }
    Ok(())
}

/// Sets the general-purpose and special registers for the PVH entry at
/// `entry` (boot vCPU only; the others wait for INIT/SIPI).
pub fn set_pvh_entry(vcpu: &VcpuFd, entry: u64) -> Result<(), RegsError> {
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rbx: START_INFO_ADDR,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))?;

    let mut sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    let code = segment(GDT[1], CODE_SELECTOR);
    let data = segment(GDT[2], DATA_SELECTOR);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(GDT[3], TSS_SELECTOR);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))
}

const X86_CR0_PE: u64 = 1;
const X86_CR0_ET: u64 = 1 << 4;

/// x87 control word and MXCSR at their reset values.
pub fn set_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("KVM_SET_FPU"))
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// IA32_MISC_ENABLE: fast string operations.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// The MSRs a booting vCPU starts with.
pub fn set_boot_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect();
    let msrs = Msrs::from_entries(&entries).expect("fewer entries than the FAM limit");
    let set = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
    if set != entries.len() {
        return Err(RegsError::Msrs {
            set,
            wanted: entries.len(),
        });
    }
    Ok(())
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
        lapic.regs[offset + i] = byte as _;
    }
}

/// Sets the delivery mode bits (10:8) of an LVT entry.
fn delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// LINT0 delivers the legacy PIC's interrupts (ExtINT), LINT1 is the NMI.
pub fn set_lint(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut lapic = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    let lvt0 = lapic_reg(&lapic, APIC_LVT0);
    set_lapic_reg(&mut lapic, APIC_LVT0, delivery_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(&lapic, APIC_LVT1);
    set_lapic_reg(&mut lapic, APIC_LVT1, delivery_mode(lvt1, APIC_MODE_NMI));
    vcpu.set_lapic(&lapic).map_err(kvm("KVM_SET_LAPIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_code_segment_covers_4_gib() {
        let cs = segment(GDT[1], CODE_SELECTOR);
        assert_eq!((cs.base, cs.limit), (0, 0xffff_ffff));
        assert_eq!(
            (cs.type_, cs.present, cs.s, cs.db, cs.l, cs.g),
            (0xb, 1, 1, 1, 0, 1)
        );
    }

    #[test]
    fn data_segment_is_writable_and_tss_is_a_system_segment() {
        let ds = segment(GDT[2], DATA_SELECTOR);
        assert_eq!((ds.type_, ds.s), (0x3, 1));
        let tr = segment(GDT[3], TSS_SELECTOR);
        assert_eq!((tr.type_, tr.s, tr.limit, tr.g), (0xb, 0, 0x67, 0));
    }

    #[test]
    fn gdt_entry_encodes_base_and_limit() {
        let entry = gdt_entry(0xc093, 0x1234_5678, 0xabcde);
        let seg = segment(entry, 0);
        assert_eq!(seg.base, 0x1234_5678);
        assert_eq!(seg.limit, 0xabcd_efff);
    }

    #[test]
    fn lint_delivery_modes_are_replaced() {
        assert_eq!(delivery_mode(0x0001_0700, APIC_MODE_NMI), 0x0001_0400);
        assert_eq!(delivery_mode(0, APIC_MODE_EXTINT), 0x700);
    }
}

//! Where things go in guest-physical memory.
//!
//! ```text
//! 0x0000_0500  GDT (4 entries)
//! 0x0000_6000  PVH hvm_start_info, its module list and memory map
//! 0x0002_0000  kernel command line
//! 0x0009_f000  MP configuration table; floating pointer at 0x9_fc00
//! 0x0010_0000  kernel (vmlinux at its ELF physical addresses)
//! ...          initramfs at the top of low RAM
//! 0xc000_0000  MMIO gap: virtio-mmio devices, IOAPIC, LAPIC
//! 0x1_0000_0000 RAM above 4 GiB, if any
//! ```

/// The GDT used to enter the kernel in 32-bit protected mode.
pub const GDT_ADDR: u64 = 0x500;
/// The PVH `hvm_start_info` structure.
pub const START_INFO_ADDR: u64 = 0x6000;
/// The kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Longest command line accepted (the kernel's COMMAND_LINE_SIZE).
pub const CMDLINE_MAX: usize = 2048;
/// The MP configuration table.
pub const MPTABLE_ADDR: u64 = 0x9_f000;
/// The MP floating pointer (in the last KiB of base memory, where Linux
/// looks for it).
pub const MP_FLOATING_ADDR: u64 = 0x9_fc00;
/// End of the RAM below 1 MiB given to the guest.
pub const LOW_RAM_END: u64 = MPTABLE_ADDR;
/// Where high memory starts.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap (guest RAM stops here below 4 GiB).
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio device window.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Size of one virtio-mmio window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// First IRQ for virtio-mmio devices (serial has 4).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// IRQs the IOAPIC routes (one per input pin).
pub const IOAPIC_PINS: u32 = 24;
/// The IOAPIC's MMIO address.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// The local APIC's MMIO address.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// KVM's TSS (needed on Intel), in the MMIO gap.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// KVM's identity map page (needed on Intel), just below the TSS.
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;
/// The serial console's I/O port base and IRQ.
pub const SERIAL_PORT: u16 = 0x3f8;
/// The serial console's IRQ.
pub const SERIAL_IRQ: u32 = 4;

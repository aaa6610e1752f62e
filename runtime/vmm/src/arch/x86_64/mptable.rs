//! The Intel MultiProcessor table (spec 1.4): how a guest without ACPI learns
//! its CPUs, its IOAPIC and how ISA IRQs reach the IOAPIC pins.
//!
//! Layout: the configuration table at [`MPTABLE_ADDR`], the 16-byte
//! floating pointer at [`MP_FLOATING_ADDR`] pointing to it.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{IOAPIC_ADDR, IOAPIC_PINS, LAPIC_ADDR, MPTABLE_ADDR, MP_FLOATING_ADDR};

/// Errors writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// The table for this many vCPUs does not fit below the floating pointer.
    #[error("an MP table for {0} vCPUs does not fit in guest memory")]
    TooManyCpus(u8),
    /// Writing to guest memory failed.
    #[error("writing the MP table: {0}")]
    Write(#[source] vm_memory::GuestMemoryError),
}

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const SPEC_REV: u8 = 4;
/// Family 6 in the processor signature; FPU and APIC in the feature flags.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;
const HEADER_LEN: usize = 44;

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)))
}

/// The configuration table (header and entries) for `cpus` vCPUs.
pub fn config_table(cpus: u8) -> Vec<u8> {
    let ioapic_id = cpus + 1;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 };
        entries.extend([ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend(CPU_SIGNATURE.to_le_bytes());
        entries.extend(CPU_FEATURES.to_le_bytes());
        entries.extend([0; 8]);
        count += 1;
    }
    entries.extend([ENTRY_BUS, 0]);
    entries.extend(*b"ISA   ");
    entries.extend([ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, CPU_ENABLED]);
    entries.extend(IOAPIC_ADDR.to_le_bytes());
    count += 2;
    for pin in 0..IOAPIC_PINS as u8 {
        // type, interrupt type, flags (conforming), source bus and IRQ,
        // destination IOAPIC and pin.
        entries.extend([
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            0,
            pin,
            ioapic_id,
            pin,
        ]);
        count += 1;
    }
    entries.extend([ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend([ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let mut table = Vec::with_capacity(HEADER_LEN + entries.len());
    table.extend(*b"PCMP");
    table.extend(((HEADER_LEN + entries.len()) as u16).to_le_bytes());
    table.extend([SPEC_REV, 0]);
    table.extend(*b"HUSK    ");
    table.extend(*b"MICROVM     ");
    table.extend(0u32.to_le_bytes()); // OEM table pointer
    table.extend(0u16.to_le_bytes()); // OEM table size
    table.extend(count.to_le_bytes());
    table.extend(LAPIC_ADDR.to_le_bytes());
    table.extend([0; 4]); // extended table length and checksum, reserved
    table.extend(entries);
    table[7] = checksum(&table);
    table
}

/// The floating pointer structure naming the table at `table_addr`.
pub fn floating_pointer(table_addr: u32) -> [u8; 16] {
    let mut fp = [0u8; 16];
    fp[..4].copy_from_slice(b"_MP_");
    fp[4..8].copy_from_slice(&table_addr.to_le_bytes());
    fp[8] = 1; // length in 16-byte units
    fp[9] = SPEC_REV;
    fp[10] = checksum(&fp);
    fp
}

/// Writes the floating pointer and the table for `cpus` vCPUs.
pub fn write(memory: &GuestMemoryMmap, cpus: u8) -> Result<(), MptableError> {
    let table = config_table(cpus);
    if MPTABLE_ADDR + table.len() as u64 > MP_FLOATING_ADDR || MP_FLOATING_ADDR + 16 > 0xa_0000 {
        return Err(MptableError::TooManyCpus(cpus));
    }
    memory
        .write_slice(&table, GuestAddress(MPTABLE_ADDR))
        .map_err(MptableError::Write)?;
    memory
        .write_slice(
            &floating_pointer(MPTABLE_ADDR as u32),
            GuestAddress(MP_FLOATING_ADDR),
        )
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_checksums_to_zero_and_counts_its_entries() {
        let table = config_table(4);
        assert_eq!(table.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
        let count = u16::from_le_bytes([table[34], table[35]]);
        assert_eq!(count, 4 + 2 + IOAPIC_PINS as u16 + 2);
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(
            len,
            HEADER_LEN + 4 * 20 + 2 * 8 + IOAPIC_PINS as usize * 8 + 2 * 8
        );
    }

    #[test]
    fn only_the_first_cpu_boots() {
        let table = config_table(2);
        assert_eq!(table[HEADER_LEN + 3], CPU_ENABLED | CPU_BOOTSTRAP);
        assert_eq!(table[HEADER_LEN + 20 + 3], CPU_ENABLED);
    }

    #[test]
    fn floating_pointer_checksums_to_zero() {
        let fp = floating_pointer(0x9_f000);
        assert_eq!(&fp[..4], b"_MP_");
        assert_eq!(fp.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
    }

    #[test]
    fn the_largest_guest_fits() {
        let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write(&memory, 64).unwrap();
    }
}

//! The PVH boot information: `hvm_start_info` (version 1) with one module
//! (the initramfs), the command line and the E820-style memory map.
//! Layouts from Xen's `arch-x86/hvm/start_info.h`.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{CMDLINE_ADDR, HIMEM_START, LOW_RAM_END, START_INFO_ADDR};

const START_INFO_MAGIC: u32 = 0x336e_c578;
const START_INFO_LEN: u64 = 56;
const MODLIST_ENTRY_LEN: u64 = 32;
/// E820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// E820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// One memory map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRange {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// E820 type.
    pub kind: u32,
}

/// The guest's memory map: low RAM, the reserved MP table area, then RAM
/// from 1 MiB, for the given RAM ranges (from [`crate::vstate::memory::ram_ranges`]).
pub fn memory_map(ram: &[(GuestAddress, u64)]) -> Vec<MemoryRange> {
    let mut map = vec![
        MemoryRange {
            addr: 0,
            size: LOW_RAM_END,
            kind: E820_RAM,
        },
        MemoryRange {
            addr: LOW_RAM_END,
            size: 0xa_0000 - LOW_RAM_END,
            kind: E820_RESERVED,
        },
    ];
    for (start, len) in ram {
        let (start, end) = (start.0.max(HIMEM_START), start.0 + len);
        if end > start {
            map.push(MemoryRange {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    map
}

/// Where the boot information goes and what it says.
pub struct StartInfo<'a> {
    /// The initramfs' address and size.
    pub initramfs: (GuestAddress, u64),
    /// The memory map.
    pub memory_map: &'a [MemoryRange],
}

/// Writes `hvm_start_info`, its module list and memory map at
/// [`START_INFO_ADDR`]; the command line must already be at
/// [`CMDLINE_ADDR`].
pub fn write_start_info(
    memory: &GuestMemoryMmap,
    info: &StartInfo<'_>,
) -> Result<(), vm_memory::GuestMemoryError> {
    let modlist_addr = START_INFO_ADDR + START_INFO_LEN;
    let memmap_addr = modlist_addr + MODLIST_ENTRY_LEN;

    let mut start = Vec::with_capacity(START_INFO_LEN as usize);
    start.extend(START_INFO_MAGIC.to_le_bytes());
    start.extend(1u32.to_le_bytes()); // version
    start.extend(0u32.to_le_bytes()); // flags
    start.extend(1u32.to_le_bytes()); // nr_modules
    start.extend(modlist_addr.to_le_bytes());
    start.extend(CMDLINE_ADDR.to_le_bytes());
    start.extend(0u64.to_le_bytes()); // rsdp_paddr: no ACPI
    start.extend(memmap_addr.to_le_bytes());
    start.extend((info.memory_map.len() as u32).to_le_bytes());
    start.extend(0u32.to_le_bytes());
    memory.write_slice(&start, GuestAddress(START_INFO_ADDR))?;

    let mut module = Vec::with_capacity(MODLIST_ENTRY_LEN as usize);
    module.extend(info.initramfs.0 .0.to_le_bytes());
    module.extend(info.initramfs.1.to_le_bytes());
    module.extend(0u64.to_le_bytes()); // no module command line
    module.extend(0u64.to_le_bytes());
    memory.write_slice(&module, GuestAddress(modlist_addr))?;

    let mut map = Vec::new();
    for range in info.memory_map {
        map.extend(range.addr.to_le_bytes());
        map.extend(range.size.to_le_bytes());
        map.extend(range.kind.to_le_bytes());
        map.extend(0u32.to_le_bytes());
    }
    memory.write_slice(&map, GuestAddress(memmap_addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_reserves_the_mp_table_and_starts_high_ram_at_1_mib() {
        let map = memory_map(&[(GuestAddress(0), 256 << 20)]);
        assert_eq!(map[0].size, LOW_RAM_END);
        assert_eq!(map[1].kind, E820_RESERVED);
        assert_eq!(map[2].addr, HIMEM_START);
        assert_eq!(map[2].addr + map[2].size, 256 << 20);
    }

    #[test]
    fn start_info_has_the_magic_the_module_and_the_map() {
        let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let map = memory_map(&[(GuestAddress(0), 1 << 20)]);
        let info = StartInfo {
            initramfs: (GuestAddress(0x8_0000), 0x1234),
            memory_map: &map,
        };
        write_start_info(&memory, &info).unwrap();
        let at = |off: u64| GuestAddress(START_INFO_ADDR + off);
        assert_eq!(memory.read_obj::<u32>(at(0)).unwrap(), START_INFO_MAGIC);
        assert_eq!(memory.read_obj::<u64>(at(24)).unwrap(), CMDLINE_ADDR);
        assert_eq!(memory.read_obj::<u32>(at(48)).unwrap(), map.len() as u32);
        let modlist = memory.read_obj::<u64>(at(16)).unwrap();
        assert_eq!(
            memory.read_obj::<u64>(GuestAddress(modlist + 8)).unwrap(),
            0x1234
        );
    }
}

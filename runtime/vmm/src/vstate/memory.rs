//! Guest memory: one memfd, mapped shared, split around the 32-bit MMIO gap.
//!
//! A memfd (not anonymous memory) because vhost-user backends such as
//! virtiofsd map the guest's memory themselves from the file descriptors we
//! send them.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::layout::{MMIO_GAP_END, MMIO_GAP_START};

/// The guest memory every device shares.
pub type GuestMemory = Arc<GuestMemoryMmap>;

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// memfd_create or ftruncate failed.
    #[error("creating a {mib} MiB memfd for guest memory: {source}")]
    Memfd {
        /// The size asked for.
        mib: u64,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Mapping the memfd failed.
    #[error("mapping guest memory: {0}")]
    Map(#[source] vm_memory::mmap::FromRangesError),
}

/// The guest-physical ranges of `size` bytes of RAM: below the MMIO gap, and
/// the rest above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    let low = size.min(MMIO_GAP_START);
    let mut ranges = vec![(GuestAddress(0), low)];
    if size > low {
        ranges.push((GuestAddress(MMIO_GAP_END), size - low));
    }
    ranges
}

/// Creates `mib` MiB of guest memory backed by one memfd.
pub fn create(mib: u64) -> Result<GuestMemory, MemoryError> {
    let size = mib << 20;
    let memfd = memfd(size).map_err(|source| MemoryError::Memfd { mib, source })?;
    let memfd = Arc::new(memfd);
    let mut offset = 0;
    let regions: Vec<_> = ram_ranges(size)
        .into_iter()
        .map(|(start, len)| {
            let file = FileOffset::from_arc(memfd.clone(), offset);
            offset += len;
            (start, len as usize, Some(file))
        })
        .collect();
    let memory = GuestMemoryMmap::from_ranges_with_files(regions).map_err(MemoryError::Map)?;
    Ok(Arc::new(memory))
}

fn memfd(size: u64) -> std::io::Result<File> {
    let name = CString::new("husk-guest-ram").expect("no NUL");
    // SAFETY: `name` is a valid NUL-terminated string; the flags are valid.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a new descriptor we now own.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn small_guests_get_one_range_from_zero() {
        assert_eq!(ram_ranges(256 << 20), vec![(GuestAddress(0), 256 << 20)]);
    }

    #[test]
    fn big_guests_skip_the_mmio_gap() {
        let ranges = ram_ranges(4 << 30);
        assert_eq!(ranges[0], (GuestAddress(0), MMIO_GAP_START));
        assert_eq!(
            ranges[1],
            (GuestAddress(MMIO_GAP_END), (4 << 30) - MMIO_GAP_START)
        );
    }

    #[test]
    fn memory_is_file_backed_and_writable() {
        let memory = create(2).unwrap();
        memory
            .write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        assert_eq!(
            memory.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        let region = memory.iter().next().unwrap();
        assert!(region.file_offset().is_some());
    }
}

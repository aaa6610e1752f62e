//! Writes the guest initramfs: a newc cpio archive holding only `/init` (the
//! agent), `/dev` and the `/dev/console` node the kernel opens for init's
//! stdio. Every field is fixed (owner root, mtime 0, inode numbers in order),
//! so the same agent binary always gives the same bytes.
//!
//! Format: `usr/gen_init_cpio.c` and Documentation/driver-api/early-userspace
//! in the kernel tree: a 110-byte ASCII header of 8-digit hex fields, the
//! NUL-terminated name, data, each padded to 4 bytes, and a `TRAILER!!!`.

use std::io::{self, Write};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// One archive member.
struct Entry<'a> {
    name: &'a str,
    mode: u32,
    rdev: (u32, u32),
    data: &'a [u8],
}

/// Writes the archive with `init` as `/init` (mode 0755).
pub fn write_initramfs<W: Write>(out: &mut W, init: &[u8]) -> io::Result<()> {
    let entries = [
        Entry {
            name: "dev",
            mode: S_IFDIR | 0o755,
            rdev: (0, 0),
            data: &[],
        },
        Entry {
            name: "dev/console",
            mode: S_IFCHR | 0o600,
            rdev: (5, 1),
            data: &[],
        },
        Entry {
            name: "init",
            mode: S_IFREG | 0o755,
            rdev: (0, 0),
            data: init,
        },
        Entry {
            name: "TRAILER!!!",
            mode: 0,
            rdev: (0, 0),
            data: &[],
        },
    ];
    let mut offset = 0usize;
    for (ino, entry) in entries.iter().enumerate() {
        offset += write_entry(out, ino as u32 + 1, entry, offset)?;
    }
    Ok(())
}

fn write_entry<W: Write>(out: &mut W, ino: u32, e: &Entry, offset: usize) -> io::Result<usize> {
    let nlink = if e.mode & S_IFDIR != 0 { 2 } else { 1 };
    let fields = [
        ino,
        e.mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        e.data.len() as u32,
        0, // devmajor
        0, // devminor
        e.rdev.0,
        e.rdev.1,
        e.name.len() as u32 + 1,
        0, // check
    ];
    let mut header = String::from("070701");
    for field in fields {
        header.push_str(&format!("{field:08X}"));
    }
    let mut written = 0;
    written += write_all(out, header.as_bytes())?;
    written += write_all(out, e.name.as_bytes())?;
    written += write_all(out, &[0])?;
    written += pad(out, offset + written)?;
    written += write_all(out, e.data)?;
    written += pad(out, offset + written)?;
    Ok(written)
}

fn write_all<W: Write>(out: &mut W, bytes: &[u8]) -> io::Result<usize> {
    out.write_all(bytes)?;
    Ok(bytes.len())
}

fn pad<W: Write>(out: &mut W, position: usize) -> io::Result<usize> {
    let n = (4 - position % 4) % 4;
    write_all(out, &[0u8; 3][..n])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(init: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_initramfs(&mut out, init).unwrap();
        out
    }

    /// Parses names, modes and data back (a minimal reader for the test).
    fn members(bytes: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let field = |b: &[u8], i: usize| {
            u32::from_str_radix(std::str::from_utf8(&b[6 + i * 8..14 + i * 8]).unwrap(), 16)
                .unwrap()
        };
        let align = |n: usize| (n + 3) & !3;
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            let h = &bytes[pos..pos + 110];
            assert_eq!(&h[..6], b"070701");
            let (mode, size, namesize) = (field(h, 1), field(h, 6) as usize, field(h, 11) as usize);
            let name =
                String::from_utf8(bytes[pos + 110..pos + 110 + namesize - 1].to_vec()).unwrap();
            pos = align(pos + 110 + namesize);
            let data = bytes[pos..pos + size].to_vec();
            pos = align(pos + size);
            if name == "TRAILER!!!" {
                assert_eq!(pos, bytes.len());
                return out;
            }
            out.push((name, mode, data));
        }
    }

    #[test]
    fn holds_only_init_dev_and_console() {
        let members = members(&archive(b"\x7fELF agent"));
        let names: Vec<_> = members.iter().map(|m| m.0.as_str()).collect();
        assert_eq!(names, ["dev", "dev/console", "init"]);
        assert_eq!(members[1].1, S_IFCHR | 0o600);
        assert_eq!(members[2].1, S_IFREG | 0o755);
        assert_eq!(members[2].2, b"\x7fELF agent");
    }

    #[test]
    fn is_reproducible_and_aligned() {
        let a = archive(b"abc");
        assert_eq!(a, archive(b"abc"));
        assert_eq!(a.len() % 4, 0);
    }
}

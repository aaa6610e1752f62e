//! A minimal container root filesystem for engine tests, built from the
//! host's statically linked `/bin/busybox` (Debian package `busybox-static`),
//! since no image registry is reachable from the test machines.
//!
//! The tree is `bin/busybox`, one `bin/<applet>` symlink per applet that
//! `busybox --list` prints, the empty directories an OCI runtime mounts over
//! (`proc`, `sys`, `dev`, `tmp`...), and the `/etc` files tools look up
//! (`passwd`, `group`, `hostname`). It trusts the host's busybox to be what
//! it says it is; it refuses a dynamically linked one, which would fail
//! inside the container with a confusing "no such file or directory".

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

/// The host busybox the rootfs is built from.
pub const HOST_BUSYBOX: &str = "/bin/busybox";

/// The image's `/etc/passwd`: root, and nobody for tests that drop privileges.
pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
/// The image's `/etc/group`.
pub const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";
/// The image's `/etc/hostname`.
pub const HOSTNAME: &str = "husk-bb\n";

/// Directories created besides `bin`, with their modes (`tmp` is sticky and
/// world-writable, as every distribution has it).
const DIRS: &[(&str, u32)] = &[
    ("sbin", 0o755),
    ("usr", 0o755),
    ("usr/bin", 0o755),
    ("usr/sbin", 0o755),
    ("etc", 0o755),
    ("tmp", 0o1777),
    ("proc", 0o555),
    ("sys", 0o555),
    ("dev", 0o755),
    ("root", 0o700),
    ("run", 0o755),
    ("var", 0o755),
    ("var/tmp", 0o1777),
];

/// Builds the busybox rootfs in `dir` (created if missing) from
/// [`HOST_BUSYBOX`].
pub fn busybox_rootfs(dir: &Path) -> io::Result<()> {
    let busybox = Path::new(HOST_BUSYBOX);
    let binary = fs::read(busybox).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("reading {HOST_BUSYBOX} (apt-get install busybox-static): {e}"),
        )
    })?;
    if !is_static_elf(&binary) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{HOST_BUSYBOX} is not a statically linked ELF (apt-get install busybox-static)"
            ),
        ));
    }
    let list = Command::new(busybox).arg("--list").output()?;
    if !list.status.success() {
        return Err(io::Error::other(format!(
            "{HOST_BUSYBOX} --list: {}",
            list.status
        )));
    }
    let list = String::from_utf8_lossy(&list.stdout);
    write_rootfs(dir, busybox, &applets(&list))
}

/// Lays the rootfs out in `dir` with a copy of `busybox` and one symlink
/// per name in `applets`.
pub fn write_rootfs(dir: &Path, busybox: &Path, applets: &[&str]) -> io::Result<()> {
    fs::create_dir_all(dir.join("bin"))?;
    fs::set_permissions(dir.join("bin"), fs::Permissions::from_mode(0o755))?;
    for (path, mode) in DIRS {
        let path = dir.join(path);
        fs::create_dir_all(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(*mode))?;
    }
    let target = dir.join("bin/busybox");
    fs::copy(busybox, &target)?;
    fs::set_permissions(&target, fs::Permissions::from_mode(0o755))?;
    for applet in applets {
        let link = dir.join("bin").join(applet);
        match fs::symlink_metadata(&link) {
            Ok(_) => fs::remove_file(&link)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        symlink("busybox", &link)?;
    }
    for (name, contents) in [("passwd", PASSWD), ("group", GROUP), ("hostname", HOSTNAME)] {
        let path = dir.join("etc").join(name);
        fs::write(&path, contents)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

/// The applet names in `busybox --list` output: one a line, without
/// `busybox` itself and without anything that is not a plain file name.
pub fn applets(list: &str) -> Vec<&str> {
    list.lines()
        .map(str::trim)
        .filter(|name| {
            !name.is_empty()
                && *name != "busybox"
                && *name != "."
                && *name != ".."
                && !name.contains('/')
        })
        .collect()
}

/// True if `elf` is a 64-bit little-endian ELF with no program interpreter
/// (`PT_INTERP`), i.e. needs no dynamic loader (constants from `elf(5)`).
pub fn is_static_elf(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    // e_ident: magic, ELFCLASS64 (2), ELFDATA2LSB (1).
    if elf.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    (0..usize::from(phnum)).all(|i| {
        phoff
            .checked_add(i * usize::from(phentsize))
            .and_then(u32_at)
            .is_some_and(|p_type| p_type != PT_INTERP)
    })
}

/// Writes a tar of the contents of `dir` (entries `./...`, owned by root)
/// to `out_tar`, with the host's `tar`.
pub fn tar_dir(dir: &Path, out_tar: &Path) -> io::Result<()> {
    let status = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(dir)
        .arg("-cf")
        .arg(out_tar)
        .arg(".")
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "tar of {} into {}: {status}",
            dir.display(),
            out_tar.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header followed by program headers of `types`.
    fn elf_with_program_headers(types: &[u32]) -> Vec<u8> {
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for p_type in types {
            let mut header = vec![0u8; 56];
            header[..4].copy_from_slice(&p_type.to_le_bytes());
            elf.extend(header);
        }
        elf
    }

    #[test]
    fn applets_skips_busybox_blanks_and_paths() {
        let list = "[\n[[\nash\nbusybox\n\n sh \n../evil\n";

        assert_eq!(applets(list), ["[", "[[", "ash", "sh"]);
    }

    #[test]
    fn is_static_elf_accepts_headers_without_an_interpreter() {
        // PT_LOAD, PT_NOTE, PT_GNU_STACK.
        let elf = elf_with_program_headers(&[1, 4, 0x6474_e551]);

        assert!(is_static_elf(&elf));
    }

    #[test]
    fn is_static_elf_rejects_an_interpreter_and_non_elf() {
        assert!(!is_static_elf(&elf_with_program_headers(&[6, 3, 1])));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
        assert!(!is_static_elf(b"\x7fELF\x01\x01"));
    }

    #[test]
    fn is_static_elf_rejects_truncated_program_headers() {
        let mut elf = elf_with_program_headers(&[1, 1]);
        elf.truncate(64 + 56 + 2);

        assert!(!is_static_elf(&elf));
    }

    #[test]
    fn write_rootfs_lays_out_binary_links_dirs_and_etc() {
        let tmp = tempfile::tempdir().unwrap();
        let busybox = tmp.path().join("fake-busybox");
        fs::write(&busybox, b"binary").unwrap();
        let root = tmp.path().join("rootfs");

        write_rootfs(&root, &busybox, &["sh", "echo", "["]).unwrap();

        assert_eq!(fs::read(root.join("bin/busybox")).unwrap(), b"binary");
        let mode = |p: &str| fs::metadata(root.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("bin/busybox"), 0o755);
        for applet in ["sh", "echo", "["] {
            let link = root.join("bin").join(applet);
            assert_eq!(fs::read_link(&link).unwrap(), Path::new("busybox"));
        }
        assert_eq!(mode("tmp"), 0o1777);
        assert_eq!(mode("var/tmp"), 0o1777);
        assert_eq!(mode("root"), 0o700);
        for dir in ["sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "run"] {
            assert!(root.join(dir).is_dir(), "{dir}");
        }
        assert_eq!(fs::read_to_string(root.join("etc/passwd")).unwrap(), PASSWD);
        assert!(PASSWD.starts_with("root:x:0:0:root:/root:/bin/sh\n"));
        assert!(PASSWD.contains("\nnobody:x:65534:65534:"));
        assert_eq!(fs::read_to_string(root.join("etc/group")).unwrap(), GROUP);
        assert_eq!(
            fs::read_to_string(root.join("etc/hostname")).unwrap(),
            HOSTNAME
        );
    }

    #[test]
    fn write_rootfs_twice_replaces_the_links() {
        let tmp = tempfile::tempdir().unwrap();
        let busybox = tmp.path().join("fake-busybox");
        fs::write(&busybox, b"binary").unwrap();
        let root = tmp.path().join("rootfs");
        write_rootfs(&root, &busybox, &["sh"]).unwrap();

        write_rootfs(&root, &busybox, &["sh"]).unwrap();

        assert_eq!(
            fs::read_link(root.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
    }

    #[test]
    fn tar_dir_archives_the_contents_with_relative_names() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tree");
        fs::create_dir_all(dir.join("etc")).unwrap();
        fs::write(dir.join("etc/hostname"), HOSTNAME).unwrap();
        symlink("hostname", dir.join("etc/link")).unwrap();
        let tar = tmp.path().join("tree.tar");

        tar_dir(&dir, &tar).unwrap();

        let listing = Command::new("tar").arg("-tvf").arg(&tar).output().unwrap();
        assert!(listing.status.success());
        let listing = String::from_utf8(listing.stdout).unwrap();
        assert!(listing.contains(" ./etc/hostname\n"), "{listing}");
        assert!(listing.contains(" ./etc/link -> hostname\n"), "{listing}");
        assert!(listing.lines().all(|l| l.contains(" 0/0 ")), "{listing}");
    }

    #[test]
    fn tar_dir_of_a_missing_directory_fails_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("missing");

        let error = tar_dir(&missing, &tmp.path().join("out.tar")).unwrap_err();

        assert!(error.to_string().contains("missing"), "{error}");
    }

    #[test]
    fn host_busybox_if_installed_is_static() {
        let Ok(binary) = fs::read(HOST_BUSYBOX) else {
            crate::skip!("{HOST_BUSYBOX} is not installed");
        };

        assert!(is_static_elf(&binary), "install busybox-static");
    }
}

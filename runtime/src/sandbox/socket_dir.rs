//! Where a sandbox's Unix sockets live.
//!
//! A socket path must fit in `sun_path` (108 bytes). Engines choose long
//! state roots (docker: `.../runtime-runc/moby/<64 hex>`), so when the
//! container's state directory is too long for its longest socket name the
//! sockets move to `/run/husk-sockets/<hash of the state dir>`: a pure
//! function of the state directory, so every command finds them again.
//!
//! The VM's own files (its sockets, the guest console log, the monitor's
//! description and log) are in the socket directory's [`VM_DIR`]: the one
//! directory a jailed monitor keeps, without the sandbox's other state.

use std::path::{Path, PathBuf};

/// Where the sockets go when the state directory is too long.
pub const LONG_PATH_BASE: &str = "/run/husk-sockets";

/// `sun_path` holds 108 bytes with the terminating NUL.
const SUN_PATH_MAX: usize = 107;

/// The VM's directory, in the socket directory.
pub const VM_DIR: &str = "vm";

/// The longest socket name a sandbox uses: the hybrid vsock socket of a
/// guest-initiated connection, `vm/vsock.sock_<u32 port>`.
const LONGEST_NAME: usize = "vm/vsock.sock_4294967295".len();

/// The directory for the sockets of the sandbox whose state is in `dir`.
pub fn socket_dir(dir: &Path) -> PathBuf {
    if dir.as_os_str().len() + 1 + LONGEST_NAME <= SUN_PATH_MAX {
        return dir.to_path_buf();
    }
    Path::new(LONG_PATH_BASE).join(format!(
        "{:016x}",
        fnv1a(dir.as_os_str().as_encoded_bytes())
    ))
}

/// Creates the socket directory of `dir` and its VM directory (private to
/// root); returns the VM directory.
pub fn create(dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let vm = socket_dir(dir).join(VM_DIR);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&vm)?;
    Ok(vm)
}

/// Removes the socket directory of `dir` when it is not `dir` itself.
pub fn remove(dir: &Path) -> std::io::Result<()> {
    let sockets = socket_dir(dir);
    if sockets == dir {
        return Ok(());
    }
    match std::fs::remove_dir_all(&sockets) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// 64-bit FNV-1a: stable across builds, unlike std's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_state_dir_keeps_its_sockets() {
        let dir = Path::new("/run/husk/abc");

        assert_eq!(socket_dir(dir), dir);
    }

    #[test]
    fn a_long_state_dir_gets_a_short_stable_socket_dir() {
        let long = format!("/run/docker/runtime-runc/moby/{}", "a".repeat(64));
        let other = format!("/run/docker/runtime-runc/moby/{}", "b".repeat(64));

        let sockets = socket_dir(Path::new(&long));

        assert!(sockets.starts_with(LONG_PATH_BASE), "{}", sockets.display());
        assert!(sockets.as_os_str().len() + 1 + LONGEST_NAME <= SUN_PATH_MAX);
        assert_eq!(sockets, socket_dir(Path::new(&long)));
        assert_ne!(sockets, socket_dir(Path::new(&other)));
    }

    #[test]
    fn fnv1a_matches_the_reference_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn remove_leaves_a_short_state_dir_alone() {
        let tmp = tempfile::tempdir().unwrap();

        remove(tmp.path()).unwrap();

        assert!(tmp.path().is_dir());
    }
}

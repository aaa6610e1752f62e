//! The sandbox share: `ROOT/ID/shared`, the one directory virtiofsd serves.
//! The bundle's rootfs and every bind-mount source of config.json are bound
//! into it (read-only where the spec says so), before virtiofsd starts, and
//! the spec's mounts are rewritten to point inside the share.
//!
//! Trust: paths come from the user's bundle; each source is bound as given
//! (the user may share what they can read). The binds are private, so
//! nothing the host mounts later leaks into the guest's view and back.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use husk_protocol::oci::Mount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Where the rootfs appears in the share.
pub const ROOTFS: &str = "rootfs";
/// Where bind sources appear in the share: `mounts/<index>`.
pub const MOUNTS: &str = "mounts";

/// The share directory and what was mounted in it.
pub struct Share {
    dir: PathBuf,
    mounted: Vec<PathBuf>,
}

impl Share {
    /// Creates `dir` (empty) and binds the rootfs, writable even for a
    /// read-only root, as runc does it: mount points are made first, then
    /// the guest remounts the root read-only.
    pub fn create(dir: &Path, rootfs: &Path) -> Result<Share> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut share = Share {
            dir: dir.to_path_buf(),
            mounted: Vec::new(),
        };
        let target = dir.join(ROOTFS);
        fs::create_dir_all(&target)?;
        share.bind(rootfs, &target, true, false)?;
        fs::create_dir_all(dir.join(MOUNTS))?;
        Ok(share)
    }

    /// The share directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Binds the source of each bind mount into the share and returns the
    /// mounts with sources relative to the share. `bundle` resolves
    /// relative sources.
    pub fn add_binds(&mut self, mounts: &[Mount], bundle: &Path) -> Result<Vec<Mount>> {
        let mut rewritten = Vec::with_capacity(mounts.len());
        for (i, m) in mounts.iter().enumerate() {
            let mut m = m.clone();
            if m.is_bind() {
                let source = bundle.join(m.source.as_deref().unwrap_or_default());
                let meta = fs::metadata(&source)
                    .with_context(|| format!("mounts[{i}].source {}", source.display()))?;
                let relative = format!("{MOUNTS}/{i}");
                let target = self.dir.join(&relative);
                if meta.is_dir() {
                    fs::create_dir_all(&target)?;
                } else {
                    fs::File::create(&target)?;
                }
                let recursive = m.options.iter().any(|o| o == "rbind");
                let readonly = m.options.iter().any(|o| o == "ro");
                self.bind(&source, &target, recursive, readonly)
                    .with_context(|| format!("mounts[{i}] ({})", m.destination))?;
                m.source = Some(relative);
            }
            rewritten.push(m);
        }
        Ok(rewritten)
    }

    fn bind(
        &mut self,
        source: &Path,
        target: &Path,
        recursive: bool,
        readonly: bool,
    ) -> Result<()> {
        let mut flags = MsFlags::MS_BIND;
        if recursive {
            flags |= MsFlags::MS_REC;
        }
        mount(Some(source), target, None::<&str>, flags, None::<&str>)
            .with_context(|| format!("binding {} into the share", source.display()))?;
        self.mounted.push(target.to_path_buf());
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            None::<&str>,
        )
        .context("making the share bind private")?;
        if readonly {
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
                .context("making the share bind read-only")?;
        }
        Ok(())
    }

    /// Unmounts everything and removes the directory.
    pub fn remove(mut self) -> Result<()> {
        self.unmount_all();
        remove_dir(&self.dir)
    }

    fn unmount_all(&mut self) {
        for target in self.mounted.drain(..).rev() {
            let _ = umount2(&target, MntFlags::MNT_DETACH);
        }
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.unmount_all();
    }
}

/// Unmounts whatever is still mounted under `dir` (after a crash) and
/// removes it. Nothing under it is followed into a mount.
pub fn remove_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for target in mounts_under(dir).into_iter().rev() {
        let _ = umount2(&target, MntFlags::MNT_DETACH);
    }
    if !mounts_under(dir).is_empty() {
        anyhow::bail!("{} still has mounts; not removing it", dir.display());
    }
    fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

/// Mount points at or under `dir`, in mount order.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    mount_table()
        .into_iter()
        .map(|(point, _)| point)
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// Every mount of this process's namespace as (mount point, filesystem
/// type), in mount order, from /proc/self/mountinfo (proc(5)).
pub fn mount_table() -> Vec<(PathBuf, String)> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = unescape_mount_path(left.split(' ').nth(4)?);
            Some((point, right.split(' ').next()?.to_string()))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(field: &str) -> PathBuf {
    let mut out = Vec::with_capacity(field.len());
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Ok(v) = u8::from_str_radix(&field[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mount_path("/a\\040b"), PathBuf::from("/a b"));
        assert_eq!(unescape_mount_path("/plain"), PathBuf::from("/plain"));
    }

    #[test]
    fn root_is_a_mount_point() {
        assert!(!mounts_under(Path::new("/")).is_empty());
    }
}

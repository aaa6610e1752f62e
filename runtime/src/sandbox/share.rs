//! The sandbox share: `ROOT/ID/shared`, the one directory virtiofsd serves.
//! Each container's rootfs and every bind-mount source of its config.json
//! are bound into `<container id>/` in it (read-only where the spec says
//! so), and the spec's mounts are rewritten to point inside the share.
//! Containers are added while the VM runs (a pod's): the share is a mount
//! of its own with shared propagation, made before virtiofsd starts, so
//! binds added later reach virtiofsd's mount namespace (a slave copy);
//! each bind itself is private, so nothing the host mounts under a source
//! later leaks into the guest's view and back.
//!
//! Trust: paths come from the user's bundle; each source is bound as given
//! (the user may share what they can read).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use husk_protocol::oci::Mount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Where a container's rootfs appears in its directory of the share.
pub const ROOTFS: &str = "rootfs";
/// Where its bind sources appear: `mounts/<index>`.
pub const MOUNTS: &str = "mounts";

/// A container's view in the share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerFiles {
    /// Its rootfs, relative to the share.
    pub rootfs: String,
    /// Its mounts, bind sources relative to the share.
    pub mounts: Vec<Mount>,
}

/// The share directory and what was mounted in it.
pub struct Share {
    dir: PathBuf,
    /// The share's own mount (it must go last).
    own_mount: bool,
    /// Each container's binds, in mount order.
    containers: HashMap<String, Vec<PathBuf>>,
}

impl Share {
    /// Creates `dir` (empty) as a mount of its own with shared propagation
    /// (in a peer group of its own), ready for containers.
    pub fn create(dir: &Path) -> Result<Share> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut share = Share {
            dir: dir.to_path_buf(),
            own_mount: false,
            containers: HashMap::new(),
        };
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .with_context(|| format!("binding {} onto itself", dir.display()))?;
        share.own_mount = true;
        for (flags, what) in [
            (MsFlags::MS_PRIVATE, "private"),
            (MsFlags::MS_SHARED, "shared"),
        ] {
            mount(None::<&str>, dir, None::<&str>, flags, None::<&str>)
                .with_context(|| format!("making {} {what}", dir.display()))?;
        }
        Ok(share)
    }

    /// The share directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Binds container `id`'s rootfs (writable even for a read-only root,
    /// as runc does it: mount points are made first, then the guest
    /// remounts the root read-only) and its bind sources into the share;
    /// `bundle` resolves relative sources. On error, nothing of it stays.
    pub fn add_container(
        &mut self,
        id: &str,
        rootfs: &Path,
        mounts: &[Mount],
        bundle: &Path,
    ) -> Result<ContainerFiles> {
        if id.is_empty() || id.contains('/') || id == "." || id == ".." {
            bail!("container id {id:?} cannot name a directory of the share");
        }
        if self.containers.contains_key(id) {
            bail!("container {id} is already in the share");
        }
        let root = self.dir.join(id);
        fs::create_dir(&root).with_context(|| format!("creating {}", root.display()))?;
        let mut binds = Vec::new();
        let added = add_binds(&root, id, rootfs, mounts, bundle, &mut binds);
        self.containers.insert(id.to_string(), binds);
        if added.is_err() {
            let _ = self.remove_container(id);
        }
        added
    }

    /// Unmounts container `id`'s binds and removes its directory.
    pub fn remove_container(&mut self, id: &str) -> Result<()> {
        let Some(binds) = self.containers.remove(id) else {
            return Ok(());
        };
        for target in binds.into_iter().rev() {
            let _ = umount2(&target, MntFlags::MNT_DETACH);
        }
        remove_dir(&self.dir.join(id))
    }

    /// Unmounts everything and removes the directory.
    pub fn remove(mut self) -> Result<()> {
        self.unmount_all();
        remove_dir(&self.dir)
    }

    fn unmount_all(&mut self) {
        for (_, binds) in self.containers.drain() {
            for target in binds.into_iter().rev() {
                let _ = umount2(&target, MntFlags::MNT_DETACH);
            }
        }
        if std::mem::take(&mut self.own_mount) {
            let _ = umount2(&self.dir, MntFlags::MNT_DETACH);
        }
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.unmount_all();
    }
}

/// Binds `rootfs` and the bind sources of `mounts` under `root` (the
/// container's directory, `id` relative to the share), recording each
/// bind in `binds`.
fn add_binds(
    root: &Path,
    id: &str,
    rootfs: &Path,
    mounts: &[Mount],
    bundle: &Path,
    binds: &mut Vec<PathBuf>,
) -> Result<ContainerFiles> {
    let target = root.join(ROOTFS);
    fs::create_dir_all(&target)?;
    bind(rootfs, &target, true, false, binds)?;
    fs::create_dir_all(root.join(MOUNTS))?;
    let mut rewritten = Vec::with_capacity(mounts.len());
    for (i, m) in mounts.iter().enumerate() {
        let mut m = m.clone();
        if m.is_bind() {
            let source = bundle.join(m.source.as_deref().unwrap_or_default());
            let meta = fs::metadata(&source)
                .with_context(|| format!("mounts[{i}].source {}", source.display()))?;
            let relative = format!("{MOUNTS}/{i}");
            let target = root.join(&relative);
            if meta.is_dir() {
                fs::create_dir_all(&target)?;
            } else {
                fs::File::create(&target)?;
            }
            let recursive = m.options.iter().any(|o| o == "rbind");
            let readonly = m.options.iter().any(|o| o == "ro");
            bind(&source, &target, recursive, readonly, binds)
                .with_context(|| format!("mounts[{i}] ({})", m.destination))?;
            m.source = Some(format!("{id}/{relative}"));
        }
        rewritten.push(m);
    }
    Ok(ContainerFiles {
        rootfs: format!("{id}/{ROOTFS}"),
        mounts: rewritten,
    })
}

fn bind(
    source: &Path,
    target: &Path,
    recursive: bool,
    readonly: bool,
    binds: &mut Vec<PathBuf>,
) -> Result<()> {
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    mount(Some(source), target, None::<&str>, flags, None::<&str>)
        .with_context(|| format!("binding {} into the share", source.display()))?;
    binds.push(target.to_path_buf());
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

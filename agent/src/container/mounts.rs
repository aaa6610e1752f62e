//! The container's filesystem view, built inside its own mount namespace:
//! the rootfs from the share, the spec's mounts, `pivot_root`, the device
//! nodes of a fresh `/dev` and those of `linux.devices`, masked and read-only
//! paths.
//!
//! Trust: the spec comes from the host; the rootfs comes from the user's
//! image, so every destination is resolved inside the rootfs
//! ([`resolve_in_root`]) and symlinks cannot point a mount outside it.
//! Mount option names come from mount(8) and runc's `mount_linux.go` table.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use husk_protocol::oci::{Device, Mount};
use husk_protocol::ContainerSpec;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

/// How one OCI mount option changes the mount flags.
enum OptionEffect {
    Set(MsFlags),
    Clear(MsFlags),
    Propagation(MsFlags),
    /// Options runc handles elsewhere or that mean nothing here.
    Ignore,
}

fn option_effect(option: &str) -> Option<OptionEffect> {
    use OptionEffect::*;
    Some(match option {
        "ro" => Set(MsFlags::MS_RDONLY),
        "rw" => Clear(MsFlags::MS_RDONLY),
        "nosuid" => Set(MsFlags::MS_NOSUID),
        "suid" => Clear(MsFlags::MS_NOSUID),
        "nodev" => Set(MsFlags::MS_NODEV),
        "dev" => Clear(MsFlags::MS_NODEV),
        "noexec" => Set(MsFlags::MS_NOEXEC),
        "exec" => Clear(MsFlags::MS_NOEXEC),
        "sync" => Set(MsFlags::MS_SYNCHRONOUS),
        "async" => Clear(MsFlags::MS_SYNCHRONOUS),
        "dirsync" => Set(MsFlags::MS_DIRSYNC),
        "remount" => Set(MsFlags::MS_REMOUNT),
        "mand" => Set(MsFlags::MS_MANDLOCK),
        "nomand" => Clear(MsFlags::MS_MANDLOCK),
        "noatime" => Set(MsFlags::MS_NOATIME),
        "atime" => Clear(MsFlags::MS_NOATIME),
        "nodiratime" => Set(MsFlags::MS_NODIRATIME),
        "diratime" => Clear(MsFlags::MS_NODIRATIME),
        "relatime" => Set(MsFlags::MS_RELATIME),
        "norelatime" => Clear(MsFlags::MS_RELATIME),
        "strictatime" => Set(MsFlags::MS_STRICTATIME),
        "nostrictatime" => Clear(MsFlags::MS_STRICTATIME),
        "bind" => Set(MsFlags::MS_BIND),
        "rbind" => Set(MsFlags::MS_BIND | MsFlags::MS_REC),
        "private" => Propagation(MsFlags::MS_PRIVATE),
        "rprivate" => Propagation(MsFlags::MS_PRIVATE | MsFlags::MS_REC),
        "shared" => Propagation(MsFlags::MS_SHARED),
        "rshared" => Propagation(MsFlags::MS_SHARED | MsFlags::MS_REC),
        "slave" => Propagation(MsFlags::MS_SLAVE),
        "rslave" => Propagation(MsFlags::MS_SLAVE | MsFlags::MS_REC),
        "unbindable" => Propagation(MsFlags::MS_UNBINDABLE),
        "runbindable" => Propagation(MsFlags::MS_UNBINDABLE | MsFlags::MS_REC),
        "tmpcopyup" | "defaults" | "idmap" | "ridmap" => Ignore,
        _ => return None,
    })
}

/// A mount's options split into flags, propagation changes and the data string.
#[derive(Debug, PartialEq, Eq)]
pub struct ParsedOptions {
    /// Flags for mount(2).
    pub flags: MsFlags,
    /// Propagation changes applied after the mount.
    pub propagation: Vec<MsFlags>,
    /// The filesystem-specific rest (`mode=755,size=65536k`).
    pub data: String,
}

/// Splits OCI mount options the way mount(8) does.
pub fn parse_options(options: &[String]) -> ParsedOptions {
    let mut parsed = ParsedOptions {
        flags: MsFlags::empty(),
        propagation: Vec::new(),
        data: String::new(),
    };
    let mut data = Vec::new();
    for option in options {
        match option_effect(option) {
            Some(OptionEffect::Set(f)) => parsed.flags |= f,
            Some(OptionEffect::Clear(f)) => parsed.flags &= !f,
            Some(OptionEffect::Propagation(f)) => parsed.propagation.push(f),
            Some(OptionEffect::Ignore) => {}
            None => data.push(option.as_str()),
        }
    }
    parsed.data = data.join(",");
    parsed
}

/// Resolves `path` (absolute inside the container) under `root`, following
/// symlinks as the container would see them, never leaving `root`.
pub fn resolve_in_root(root: &Path, path: &str) -> Result<PathBuf> {
    let mut resolved = PathBuf::new();
    let mut pending: Vec<String> = components_of(path);
    pending.reverse();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        match fs::read_link(root.join(&candidate)) {
            Ok(target) => {
                links += 1;
                if links > 40 {
                    bail!("too many symlinks resolving {path} in the rootfs");
                }
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    resolved = PathBuf::new();
                }
                let mut more = components_of(&target);
                more.reverse();
                pending.extend(more);
            }
            Err(_) => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

fn components_of(path: &str) -> Vec<String> {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

/// Builds the container's root in the current (new) mount namespace and
/// pivots into it. `share_root` is where the host's share is mounted.
pub fn setup_rootfs(spec: &ContainerSpec, share_root: &Path) -> Result<()> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .context("making / a slave mount")?;
    let rootfs = resolve_in_root(share_root, &spec.rootfs)?;
    mount(
        Some(&rootfs),
        &rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .with_context(|| format!("bind-mounting the rootfs {}", rootfs.display()))?;
    for (index, m) in spec.mounts.iter().enumerate() {
        mount_one(&rootfs, share_root, m)
            .with_context(|| format!("mounts[{index}] ({})", m.destination))?;
    }
    pivot_into(&rootfs)?;
    if let Some(propagation) = &spec.rootfs_propagation {
        // Set on the new root after the pivot, which needs a root that is
        // not shared; until then the namespace's mounts are the guest's
        // slaves.
        let Some(OptionEffect::Propagation(flags)) = option_effect(propagation) else {
            bail!("linux.rootfsPropagation: unknown propagation {propagation:?}");
        };
        mount(None::<&str>, "/", None::<&str>, flags, None::<&str>)
            .with_context(|| format!("making / {propagation} (linux.rootfsPropagation)"))?;
        // A recursive change reached the spec's mounts: their own
        // propagation goes last, as runc's order (root first) has it.
        for (index, m) in spec.mounts.iter().enumerate() {
            let target = resolve_in_root(Path::new("/"), &m.destination)?;
            set_propagation(&target, &parse_options(&m.options).propagation)
                .with_context(|| format!("mounts[{index}] ({})", m.destination))?;
        }
    }
    make_default_devices()?;
    for (index, device) in spec.devices.iter().enumerate() {
        make_device(device).with_context(|| format!("linux.devices[{index}] ({})", device.path))?;
    }
    Ok(())
}

/// Makes one `linux.devices` node (after the pivot, so its path resolves in
/// the container), replacing what is there, as runc does.
fn make_device(device: &Device) -> Result<()> {
    let path = Path::new(&device.path);
    let kind = match device.kind.as_str() {
        "c" | "u" => SFlag::S_IFCHR,
        "b" => SFlag::S_IFBLK,
        "p" => SFlag::S_IFIFO,
        other => bail!("{other:?} is not a device type"),
    };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).context("removing what is there");
        }
        _ => {}
    }
    let mode = device.file_mode.unwrap_or(0o666);
    mknod(
        path,
        kind,
        Mode::from_bits_truncate(mode),
        makedev(device.major.into(), device.minor.into()),
    )
    .context("mknod")?;
    // mknod applies the umask; the spec's mode is exact.
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).context("chmod")?;
    std::os::unix::fs::chown(
        path,
        Some(device.uid.unwrap_or(0)),
        Some(device.gid.unwrap_or(0)),
    )
    .context("chown")?;
    Ok(())
}

fn mount_one(rootfs: &Path, share_root: &Path, m: &Mount) -> Result<()> {
    let target = resolve_in_root(rootfs, &m.destination)?;
    let opts = parse_options(&m.options);
    if m.is_bind() {
        let source = resolve_in_root(share_root, m.source.as_deref().unwrap_or_default())?;
        let meta = fs::metadata(&source)
            .with_context(|| format!("bind source {} in the share", source.display()))?;
        create_mountpoint(&target, meta.is_dir())?;
        let bind = MsFlags::MS_BIND | (opts.flags & MsFlags::MS_REC);
        mount(Some(&source), &target, None::<&str>, bind, None::<&str>)
            .with_context(|| format!("bind mount {}", source.display()))?;
        let rest = opts.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
        if !rest.is_empty() {
            let remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | rest;
            mount(None::<&str>, &target, None::<&str>, remount, None::<&str>)
                .context("applying options to the bind mount")?;
        }
    } else {
        // The guest has only the unified hierarchy; runc does the same
        // translation on cgroup v2 hosts.
        let fstype = match m.kind.as_deref().unwrap_or("none") {
            "cgroup" => "cgroup2",
            other => other,
        };
        create_mountpoint(&target, true)?;
        let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
        let source = m.source.as_deref().unwrap_or(fstype);
        let result = mount(Some(source), &target, Some(fstype), opts.flags, data);
        match (result, fstype) {
            (Ok(()), _) => {}
            // sysfs cannot be mounted in a new network namespace without
            // its own; runc falls back to a read-only bind of the guest's.
            (Err(_), "sysfs") => mount(
                Some("/sys"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )?,
            (Err(e), _) => return Err(e).with_context(|| format!("mounting {fstype} ({source})")),
        }
    }
    set_propagation(&target, &opts.propagation)
}

/// Applies a mount's propagation changes, in order.
fn set_propagation(target: &Path, changes: &[MsFlags]) -> Result<()> {
    for propagation in changes {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            *propagation,
            None::<&str>,
        )
        .context("setting mount propagation")?;
    }
    Ok(())
}

fn create_mountpoint(target: &Path, dir: bool) -> Result<()> {
    if dir {
        fs::create_dir_all(target).with_context(|| format!("creating {}", target.display()))?;
    } else if !target.exists() {
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        fs::File::create(target).with_context(|| format!("creating {}", target.display()))?;
    }
    Ok(())
}

fn pivot_into(rootfs: &Path) -> Result<()> {
    std::env::set_current_dir(rootfs).context("entering the rootfs")?;
    nix::unistd::pivot_root(".", ".").context("pivot_root into the rootfs")?;
    umount2(".", MntFlags::MNT_DETACH).context("detaching the guest's root")?;
    std::env::set_current_dir("/").context("chdir /")?;
    Ok(())
}

/// The nodes runc creates in a container's `/dev` (runtime-spec "Default
/// Devices"), when `/dev` is a fresh tmpfs.
const DEFAULT_DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

fn make_default_devices() -> Result<()> {
    let dev = Path::new("/dev");
    if !dev.is_dir() {
        return Ok(());
    }
    for (name, major, minor) in DEFAULT_DEVICES {
        let path = dev.join(name);
        if path.exists() {
            continue;
        }
        mknod(
            &path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(*major, *minor),
        )
        .with_context(|| format!("creating {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666))?;
    }
    let links = [
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
        ("/proc/kcore", "/dev/core"),
    ];
    for (target, link) in links {
        if fs::symlink_metadata(link).is_err() {
            let _ = symlink(target, link);
        }
    }
    if Path::new("/dev/pts/ptmx").exists() && fs::symlink_metadata("/dev/ptmx").is_err() {
        symlink("pts/ptmx", "/dev/ptmx").context("linking /dev/ptmx")?;
    }
    Ok(())
}

/// Masks paths (after the pivot): files get `/dev/null` bound over them,
/// directories an empty read-only tmpfs. Missing paths are skipped.
pub fn mask_paths(paths: &[String]) -> Result<()> {
    for path in paths {
        let target = Path::new(path);
        let Ok(meta) = fs::metadata(target) else {
            continue;
        };
        let result = if meta.is_dir() {
            mount(
                Some("tmpfs"),
                target,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            )
        } else {
            mount(
                Some("/dev/null"),
                target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        };
        result.with_context(|| format!("masking {path}"))?;
    }
    Ok(())
}

/// Makes paths read-only (after the pivot). Missing paths are skipped.
pub fn readonly_paths(paths: &[String]) -> Result<()> {
    for path in paths {
        if fs::symlink_metadata(path).is_err() {
            continue;
        }
        mount(
            Some(path.as_str()),
            path.as_str(),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .with_context(|| format!("binding {path} for read-only"))?;
        let flags = MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC;
        mount(
            None::<&str>,
            path.as_str(),
            None::<&str>,
            flags,
            None::<&str>,
        )
        .with_context(|| format!("making {path} read-only"))?;
    }
    Ok(())
}

/// Remounts the container's root read-only (`root.readonly`).
pub fn readonly_root() -> Result<()> {
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    mount(None::<&str>, "/", None::<&str>, flags, None::<&str>).context("making / read-only")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let parsed = parse_options(&opts(&["nosuid", "ro", "rbind", "rprivate", "mode=755"]));

        assert!(parsed
            .flags
            .contains(MsFlags::MS_NOSUID | MsFlags::MS_RDONLY));
        assert!(parsed.flags.contains(MsFlags::MS_BIND | MsFlags::MS_REC));
        assert_eq!(parsed.propagation, [MsFlags::MS_PRIVATE | MsFlags::MS_REC]);
        assert_eq!(parsed.data, "mode=755");
    }

    #[test]
    fn a_later_rw_clears_an_earlier_ro() {
        let parsed = parse_options(&opts(&["ro", "rw"]));
        assert!(!parsed.flags.contains(MsFlags::MS_RDONLY));
    }

    #[test]
    fn resolving_stays_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("etc")).unwrap();
        symlink("/../../../../etc", root.path().join("escape")).unwrap();
        symlink("../etc", root.path().join("etc/up")).unwrap();

        assert_eq!(
            resolve_in_root(root.path(), "/escape/x").unwrap(),
            root.path().join("etc/x")
        );
        assert_eq!(
            resolve_in_root(root.path(), "/../../etc/up/y").unwrap(),
            root.path().join("etc/y")
        );
    }

    #[test]
    fn a_symlink_loop_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        symlink("b", root.path().join("a")).unwrap();
        symlink("a", root.path().join("b")).unwrap();

        let err = resolve_in_root(root.path(), "/a").unwrap_err();

        assert!(err.to_string().contains("too many symlinks"), "{err}");
    }
}

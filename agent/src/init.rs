//! The guest's early setup as PID 1: the pseudo filesystems every container
//! runtime expects, and the sandbox share over virtio-fs.
//!
//! The share's tag and mount point come from [`husk_protocol`]; the host puts
//! the device on the kernel command line.

use std::path::Path;

use anyhow::{Context, Result};
use husk_protocol::{SHARE_MOUNTPOINT, SHARE_TAG};

use crate::syscall::Syscalls;

/// One pseudo filesystem of the base system.
struct BaseMount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: libc::c_ulong,
    data: Option<&'static str>,
}

const NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// In order: later entries live inside earlier ones.
const BASE_MOUNTS: &[BaseMount] = &[
    BaseMount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    BaseMount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    BaseMount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: libc::MS_NOSUID,
        data: Some("mode=0755"),
    },
    BaseMount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: libc::MS_NOSUID | libc::MS_NOEXEC,
        data: Some("newinstance,ptmxmode=0666,mode=0620"),
    },
    BaseMount {
        source: "tmpfs",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("mode=1777"),
    },
    BaseMount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: Some("mode=0755"),
    },
    BaseMount {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
];

/// Mounts the base pseudo filesystems. Any failure is fatal: the guest is
/// useless without them.
pub fn mount_base(sys: &dyn Syscalls) -> Result<()> {
    for m in BASE_MOUNTS {
        let target = Path::new(m.target);
        sys.create_dir_all(target)
            .with_context(|| format!("creating {}", m.target))?;
        sys.mount(m.source, target, m.fstype, m.flags, m.data)
            .with_context(|| format!("mounting {} on {}", m.fstype, m.target))?;
    }
    Ok(())
}

/// Puts the root on a bind mount of the initramfs instead of the initramfs
/// itself: `pivot_root(2)` refuses to move the initial rootfs, and every
/// container's mount namespace pivots. Same files, one mount deeper (what
/// switch_root does, without copying).
pub fn leave_initramfs() -> Result<()> {
    use nix::mount::{mount, MsFlags};
    const NEW_ROOT: &str = "/.root";
    std::fs::create_dir_all(NEW_ROOT).with_context(|| format!("creating {NEW_ROOT}"))?;
    mount(
        Some("/"),
        NEW_ROOT,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .context("binding / for the new root")?;
    std::env::set_current_dir(NEW_ROOT).context("entering the new root")?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .context("moving the new root onto /")?;
    nix::unistd::chroot(".").context("chroot into the new root")?;
    std::env::set_current_dir("/").context("chdir /")?;
    Ok(())
}

/// Mounts the sandbox share if the host offered one; the answer goes into the
/// hello, so the host learns why a share is missing.
pub fn mount_share(sys: &dyn Syscalls) -> Result<String, String> {
    let target = Path::new(SHARE_MOUNTPOINT);
    sys.create_dir_all(target)
        .map_err(|e| format!("creating {SHARE_MOUNTPOINT}: {e}"))?;
    sys.mount(
        SHARE_TAG,
        target,
        "virtiofs",
        libc::MS_NOSUID | libc::MS_NODEV,
        None,
    )
    .map_err(|e| format!("mounting virtio-fs tag {SHARE_TAG:?} on {SHARE_MOUNTPOINT}: {e}"))?;
    Ok(SHARE_MOUNTPOINT.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::test::{Call, RecordingSyscalls};

    #[test]
    fn base_mounts_proc_first_and_cgroup2_last() {
        let sys = RecordingSyscalls::default();

        mount_base(&sys).unwrap();

        let mounts: Vec<_> = sys
            .calls
            .borrow()
            .iter()
            .filter_map(|c| match c {
                Call::Mount(_, target, fstype) => Some((target.clone(), fstype.clone())),
                Call::Mkdir(_) => None,
            })
            .collect();
        assert_eq!(
            mounts.first().unwrap(),
            &("/proc".to_string(), "proc".to_string())
        );
        assert_eq!(
            mounts.last().unwrap(),
            &("/sys/fs/cgroup".to_string(), "cgroup2".to_string())
        );
        assert!(mounts.contains(&("/run".into(), "tmpfs".into())));
        assert!(mounts.contains(&("/dev".into(), "devtmpfs".into())));
    }

    #[test]
    fn base_mount_failure_names_the_filesystem() {
        let sys = RecordingSyscalls {
            fail_fstypes: vec!["cgroup2"],
            ..Default::default()
        };

        let err = mount_base(&sys).unwrap_err();

        assert_eq!(format!("{err}"), "mounting cgroup2 on /sys/fs/cgroup");
    }

    #[test]
    fn share_mount_uses_the_virtiofs_tag() {
        let sys = RecordingSyscalls::default();

        assert_eq!(mount_share(&sys), Ok(SHARE_MOUNTPOINT.to_string()));

        assert!(sys.calls.borrow().contains(&Call::Mount(
            SHARE_TAG.into(),
            SHARE_MOUNTPOINT.into(),
            "virtiofs".into()
        )));
    }

    #[test]
    fn share_mount_failure_is_reported_not_fatal() {
        let sys = RecordingSyscalls {
            fail_fstypes: vec!["virtiofs"],
            ..Default::default()
        };

        let err = mount_share(&sys).unwrap_err();

        assert!(err.contains("virtio-fs tag \"husk\""), "{err}");
    }
}

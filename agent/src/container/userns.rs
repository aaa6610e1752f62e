//! The container's user namespace, with the spec's uid and gid maps.
//!
//! A process cannot write an arbitrary map for its own new user namespace:
//! the writer needs CAP_SETUID and CAP_SETGID in the parent namespace. So
//! the container process, once its rootfs is set up (as the guest's root,
//! which mounting and making device nodes need), unshares the user
//! namespace and asks; the stage, its parent and still the guest's root,
//! writes both maps through a `/proc` opened before the fork (the child's
//! pivot changes the stage's root too) and answers. The child then makes
//! its mount, uts, ipc and cgroup namespaces again, owned by the new user
//! namespace, so the container's root may mount and set its hostname there
//! as under runc, while the mounts made before stay locked under it. The
//! pid and network namespaces stay the guest's root's: `exec` joins those
//! first, then the user namespace, then the rest.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};

use anyhow::{bail, Context, Result};
use husk_protocol::oci::IdMapping;
use nix::fcntl::OFlag;
use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Pid, Uid};

/// The stage's side: writes the child's maps when asked.
pub struct MapWriter {
    proc_dir: File,
    asked: File,
    answer: File,
}

/// The container process's side: enters the user namespace.
pub struct Entry {
    ask: File,
    answered: File,
}

/// Both sides, made before the fork; each process drops the other's.
pub fn handshake() -> Result<(MapWriter, Entry)> {
    let proc_dir = File::open("/proc").context("opening /proc for the user namespace's maps")?;
    let (asked, ask) = pipe()?;
    let (answered, answer) = pipe()?;
    Ok((
        MapWriter {
            proc_dir,
            asked,
            answer,
        },
        Entry { ask, answered },
    ))
}

fn pipe() -> Result<(File, File)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).context("pipe2")?;
    Ok((File::from(r), File::from(w)))
}

impl MapWriter {
    /// Waits for `child` to unshare its user namespace and writes its maps.
    /// A child that fails before asking reports its own error; a map the
    /// kernel refuses is the child's error too, sent back to it.
    pub fn serve(mut self, child: Pid, uid: &[IdMapping], gid: &[IdMapping]) {
        let mut byte = [0u8; 1];
        if !matches!(self.asked.read(&mut byte), Ok(1)) {
            return;
        }
        let result = self
            .write_map(child, "uid_map", "linux.uidMappings", uid)
            .and_then(|_| self.write_map(child, "gid_map", "linux.gidMappings", gid));
        let answer = match result {
            Ok(()) => String::new(),
            Err(e) => format!("{e:#}"),
        };
        let _ = self.answer.write_all(answer.as_bytes());
    }

    fn write_map(&self, child: Pid, file: &str, field: &str, maps: &[IdMapping]) -> Result<()> {
        use std::os::fd::AsRawFd;
        let path = format!("{child}/{file}");
        let fd = nix::fcntl::openat(
            Some(self.proc_dir.as_raw_fd()),
            path.as_str(),
            OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("{field}: opening /proc/{path}"))?;
        // SAFETY: openat just returned this fd and nothing else owns it.
        let mut map = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        // The kernel takes the whole map in one write.
        map.write_all(map_text(maps).as_bytes())
            .with_context(|| format!("{field}: writing /proc/{path}"))
    }
}

/// A map file's text: one `inside outside count` line per mapping.
pub fn map_text(maps: &[IdMapping]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.container_id, m.host_id, m.size))
        .collect()
}

impl Entry {
    /// Unshares the user namespace, has the stage write its maps, becomes
    /// its root when 0 is mapped (so a later switch to another user drops
    /// the capabilities as it would for root), and makes `renew` again
    /// under it.
    pub fn enter(mut self, uid: &[IdMapping], gid: &[IdMapping], renew: CloneFlags) -> Result<()> {
        unshare(CloneFlags::CLONE_NEWUSER).context("creating the user namespace")?;
        self.ask
            .write_all(b"u")
            .context("asking for the user namespace's maps")?;
        drop(self.ask);
        let mut answer = String::new();
        self.answered
            .read_to_string(&mut answer)
            .context("waiting for the user namespace's maps")?;
        if !answer.is_empty() {
            bail!("{answer}");
        }
        let maps_zero = |maps: &[IdMapping]| maps.iter().any(|m| m.container_id == 0);
        if maps_zero(uid) && maps_zero(gid) {
            nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
                .context("setresgid(0) in the user namespace")?;
            nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
                .context("setresuid(0) in the user namespace")?;
        }
        unshare(renew).context("making the container's namespaces under its user namespace")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_is_one_line_per_mapping() {
        let maps = [
            IdMapping {
                container_id: 0,
                host_id: 100_000,
                size: 65_536,
            },
            IdMapping {
                container_id: 65_536,
                host_id: 1000,
                size: 1,
            },
        ];

        assert_eq!(map_text(&maps), "0 100000 65536\n65536 1000 1\n");
    }
}

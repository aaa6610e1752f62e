//! A root with nothing in it but what a process still needs.
//!
//! [`enter`] gives the calling process a private mount namespace whose
//! root is a small empty tmpfs; each [`Entry`] (a file, directory or
//! device node of the host) is bound into it at its own path, so the
//! process's paths keep working; the host's root is then gone from the
//! namespace, and the new root is read-only. Bind mounts are not
//! recursive: what is mounted below an entry on the host stays hidden.
//!
//! Entries are checked before anything changes, then opened (`O_PATH`)
//! in the new namespace before anything is mounted there, and bound from
//! those descriptors, so a path the tmpfs covers on its way in still
//! resolves. Nothing is ever created on the host: a mount point is made
//! only in the tmpfs, and an entry inside another directory entry must
//! exist there already.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Where the new root is mounted while it is built (in the private
/// namespace only; its host content stays untouched, and an entry below
/// it is bound from its descriptor).
const BUILD_AT: &str = "/tmp";

/// The new root's tmpfs: small, and nothing in it runs or is a device.
const ROOT_OPTIONS: &str = "size=256k,nr_inodes=512,mode=0755";

/// How a bound path may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read (and list, connect to a socket in it), never written.
    ReadOnly,
    /// Read and written: files and sockets created, logs appended.
    Writable,
    /// A device node (`/dev/kvm`) opened read-write.
    Device,
}

/// One host path the jailed process keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Absolute path, the same inside and outside.
    pub path: PathBuf,
    /// How it may be used.
    pub access: Access,
}

impl Entry {
    /// `path`, read-only.
    pub fn read_only(path: impl Into<PathBuf>) -> Entry {
        Entry {
            path: path.into(),
            access: Access::ReadOnly,
        }
    }

    /// `path`, writable.
    pub fn writable(path: impl Into<PathBuf>) -> Entry {
        Entry {
            path: path.into(),
            access: Access::Writable,
        }
    }

    /// The device node at `path`.
    pub fn device(path: impl Into<PathBuf>) -> Entry {
        Entry {
            path: path.into(),
            access: Access::Device,
        }
    }
}

/// Why the root could not be built; the process is then in an unknown
/// state of confinement and must not go on.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    /// An entry cannot be kept.
    #[error("jail entry {path}: {message}")]
    Entry {
        /// The entry.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A step of building the namespace failed.
    #[error("jail: {step}: {source}")]
    Step {
        /// The step.
        step: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
}

fn step_err(step: impl Into<String>) -> impl FnOnce(io::Error) -> RootError {
    let step = step.into();
    move |source| RootError::Step { step, source }
}

fn entry_err(path: &Path, message: impl Into<String>) -> RootError {
    RootError::Entry {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"))
}

/// `mount(2)`.
fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = source.map(cstring).transpose()?;
    let target = cstring(target)?;
    let fstype = fstype.map(|t| CString::new(t).expect("no NUL"));
    let data = data.map(|d| CString::new(d).expect("no NUL"));
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string that lives
    // through the call.
    let rc = unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An entry opened before the mounts begin.
struct Opened {
    entry: Entry,
    fd: OwnedFd,
    is_dir: bool,
}

fn open(entry: &Entry) -> Result<Opened, RootError> {
    let path = &entry.path;
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(entry_err(path, "not an absolute path without `..`"));
    }
    let c_path = cstring(path).map_err(|e| entry_err(path, e.to_string()))?;
    // SAFETY: open with a NUL-terminated path; the result is checked.
    let fd = unsafe { libc::open(c_path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(entry_err(path, io::Error::last_os_error().to_string()));
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero stat is a valid value for fstat to fill.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat fills `stat`, which outlives the call.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) } < 0 {
        return Err(entry_err(path, io::Error::last_os_error().to_string()));
    }
    let kind = stat.st_mode & libc::S_IFMT;
    if entry.access == Access::Device && kind != libc::S_IFCHR {
        return Err(entry_err(path, "not a character device"));
    }
    Ok(Opened {
        entry: entry.clone(),
        fd,
        is_dir: kind == libc::S_IFDIR,
    })
}

/// The flags an entry's bind mount is remounted with.
fn bind_flags(access: Access) -> libc::c_ulong {
    let base = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID;
    match access {
        Access::ReadOnly => base | libc::MS_RDONLY | libc::MS_NODEV | libc::MS_NOEXEC,
        Access::Writable => base | libc::MS_NODEV | libc::MS_NOEXEC,
        // Opening a device node for writing works on a read-only mount.
        Access::Device => base | libc::MS_RDONLY | libc::MS_NOEXEC,
    }
}

/// Moves the calling process into a new mount namespace whose root holds
/// `entries` only. The process must have one thread (the kernel refuses a
/// new mount namespace to a thread that shares its filesystem context)
/// and CAP_SYS_ADMIN. On error the process must exit: it may be half
/// confined.
pub fn enter(entries: &[Entry]) -> Result<(), RootError> {
    // Checked here, before anything changes; opened again in the new
    // namespace, since a bind mount's source must be one of its mounts.
    for entry in entries {
        open(entry)?;
    }

    // SAFETY: unshare with a flag; changes only this process's namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } < 0 {
        return Err(step_err(
            "unshare(CLONE_NEWNS) (it needs CAP_SYS_ADMIN and a single thread)",
        )(io::Error::last_os_error()));
    }
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
    .map_err(step_err("making every mount private"))?;
    let mut opened = entries.iter().map(open).collect::<Result<Vec<_>, _>>()?;
    // Parents before children.
    opened.sort_by_key(|o| o.entry.path.components().count());
    let root = Path::new(BUILD_AT);
    mount(
        Some(Path::new("tmpfs")),
        root,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some(ROOT_OPTIONS),
    )
    .map_err(step_err(format!(
        "mounting the new root's tmpfs at {BUILD_AT}"
    )))?;

    let mut dirs: Vec<PathBuf> = Vec::new();
    for entry in &opened {
        bind(root, entry, &dirs)?;
        if entry.is_dir {
            dirs.push(entry.entry.path.clone());
        }
    }
    pivot(root)
}

/// Binds one entry into the root under construction; `dirs` are the
/// directory entries bound so far.
fn bind(root: &Path, opened: &Opened, dirs: &[PathBuf]) -> Result<(), RootError> {
    let path = &opened.entry.path;
    let target = root.join(path.strip_prefix("/").expect("absolute"));
    let inside_entry = dirs.iter().any(|dir| path.starts_with(dir));
    if inside_entry {
        // The host's own file is the mount point: nothing is created.
        if !target.exists() {
            return Err(entry_err(path, "inside another entry but missing there"));
        }
    } else if !target.exists() {
        let parent = target.parent().expect("below the root");
        std::fs::create_dir_all(parent)
            .map_err(|e| entry_err(path, format!("making its mount point: {e}")))?;
        let made = if opened.is_dir {
            std::fs::create_dir(&target)
        } else {
            std::fs::File::create(&target).map(drop)
        };
        made.map_err(|e| entry_err(path, format!("making its mount point: {e}")))?;
    }
    let source = PathBuf::from(format!("/proc/self/fd/{}", opened.fd.as_raw_fd()));
    mount(Some(&source), &target, None, libc::MS_BIND, None)
        .map_err(|e| entry_err(path, format!("binding it: {e}")))?;
    mount(None, &target, None, bind_flags(opened.entry.access), None)
        .map_err(|e| entry_err(path, format!("remounting it: {e}")))
}

/// Makes `root` the root, drops the old one, and makes the new one
/// read-only.
fn pivot(root: &Path) -> Result<(), RootError> {
    std::env::set_current_dir(root).map_err(step_err("entering the new root"))?;
    let dot = c".";
    // SAFETY: pivot_root with two NUL-terminated paths; "." for both
    // stacks the old root on the new one, to be detached next.
    if unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } < 0 {
        return Err(step_err("pivot_root")(io::Error::last_os_error()));
    }
    // SAFETY: umount2 with a NUL-terminated path and a flag.
    if unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) } < 0 {
        return Err(step_err("detaching the old root")(
            io::Error::last_os_error(),
        ));
    }
    std::env::set_current_dir("/").map_err(step_err("entering /"))?;
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REMOUNT
            | libc::MS_BIND
            | libc::MS_RDONLY
            | libc::MS_NOSUID
            | libc::MS_NODEV
            | libc::MS_NOEXEC,
        None,
    )
    .map_err(step_err("making the new root read-only"))
}

#[cfg(test)]
mod tests;

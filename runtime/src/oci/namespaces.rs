//! The namespace paths of `linux.namespaces`, checked on the host before
//! anything is created. A path must name a namespace of the entry's type
//! (runc checks the same); and of the host's namespaces a VM can carry only
//! the network one (its traffic is redirected to the guest's NIC): the
//! container runs on the guest's own kernel, so joining a host pid, ipc,
//! uts, mount or cgroup namespace is refused by name rather than ignored.

use std::fs::File;
use std::os::fd::AsRawFd;

use thiserror::Error;

use crate::oci::spec::Linux;

/// `NS_GET_NSTYPE` from linux/nsfs.h: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Why a namespace entry cannot be used.
#[derive(Debug, Error)]
pub enum NamespaceError {
    /// The path cannot be opened.
    #[error("linux.namespaces[{index}].path: opening {path}")]
    Open {
        index: usize,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The path is no namespace (not an nsfs file).
    #[error("linux.namespaces[{index}].path: {path} is not a namespace")]
    NotANamespace {
        index: usize,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The path is a namespace of another type.
    #[error("linux.namespaces[{index}].path: {path} is a {actual} namespace, not a {wanted} one")]
    WrongType {
        index: usize,
        path: String,
        actual: &'static str,
        wanted: String,
    },
    /// A host namespace other than the network one.
    #[error(
        "linux.namespaces[{index}].path: cannot join the {kind} namespace {path}: the container \
         runs on its VM's own kernel, which can carry only a network namespace from the host"
    )]
    NotCarried {
        index: usize,
        kind: String,
        path: String,
    },
}

/// The spec's name of a `CLONE_NEW*` namespace type.
fn type_name(clone_flag: libc::c_int) -> &'static str {
    match clone_flag {
        libc::CLONE_NEWNET => "network",
        libc::CLONE_NEWPID => "pid",
        libc::CLONE_NEWNS => "mount",
        libc::CLONE_NEWIPC => "ipc",
        libc::CLONE_NEWUTS => "uts",
        libc::CLONE_NEWUSER => "user",
        libc::CLONE_NEWCGROUP => "cgroup",
        // CLONE_NEWTIME.
        0x80 => "time",
        _ => "unknown",
    }
}

/// The type of the namespace `file` is.
fn type_of(file: &File) -> std::io::Result<&'static str> {
    // SAFETY: NS_GET_NSTYPE takes no argument and returns the type or -1.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
    if kind < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(type_name(kind))
}

/// Checks every entry that names a path: its type, and that a VM can
/// carry it.
pub fn check_paths(linux: &Linux) -> Result<(), NamespaceError> {
    for (index, entry) in linux.namespaces.iter().enumerate() {
        let Some(path) = entry.path.as_deref().filter(|p| !p.is_empty()) else {
            continue;
        };
        let file = File::open(path).map_err(|source| NamespaceError::Open {
            index,
            path: path.to_string(),
            source,
        })?;
        let actual = type_of(&file).map_err(|source| NamespaceError::NotANamespace {
            index,
            path: path.to_string(),
            source,
        })?;
        if actual != entry.kind {
            return Err(NamespaceError::WrongType {
                index,
                path: path.to_string(),
                actual,
                wanted: entry.kind.clone(),
            });
        }
        if entry.kind != "network" {
            return Err(NamespaceError::NotCarried {
                index,
                kind: entry.kind.clone(),
                path: path.to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::spec::Namespace;

    fn linux(kind: &str, path: &str) -> Linux {
        Linux {
            namespaces: vec![Namespace {
                kind: kind.into(),
                path: Some(path.into()),
            }],
            ..Linux::default()
        }
    }

    #[test]
    fn a_network_path_to_a_network_namespace_passes() {
        check_paths(&linux("network", "/proc/self/ns/net")).unwrap();
    }

    #[test]
    fn a_path_of_another_type_names_both_types() {
        let err = check_paths(&linux("network", "/proc/self/ns/uts")).unwrap_err();

        assert!(matches!(err, NamespaceError::WrongType { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("linux.namespaces[0].path")
                && text.contains("is a uts namespace, not a network one"),
            "{text}"
        );
    }

    #[test]
    fn a_host_namespace_other_than_the_network_is_refused_by_name() {
        let err = check_paths(&linux("ipc", "/proc/self/ns/ipc")).unwrap_err();

        assert!(matches!(err, NamespaceError::NotCarried { .. }), "{err}");
        assert!(err.to_string().contains("cannot join the ipc namespace"));
    }

    #[test]
    fn a_file_that_is_no_namespace_is_named() {
        let err = check_paths(&linux("network", "/proc/self/status")).unwrap_err();

        assert!(matches!(err, NamespaceError::NotANamespace { .. }), "{err}");
    }

    #[test]
    fn a_missing_path_is_named() {
        let err = check_paths(&linux("pid", "/no/such/ns")).unwrap_err();

        assert!(err.to_string().contains("/no/such/ns"), "{err}");
    }
}

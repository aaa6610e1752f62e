//! The operating-system calls the agent's setup makes, behind a narrow trait
//! so that the boot sequence is unit-tested without root or a guest
//! ([`test::RecordingSyscalls`]).

use std::ffi::CString;
use std::io;
use std::path::Path;

/// The calls [`crate::init`] needs.
pub trait Syscalls {
    /// mount(2).
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> io::Result<()>;
    /// mkdir -p.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
}

/// The real calls.
pub struct LinuxSyscalls;

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in argument"))
}

impl Syscalls for LinuxSyscalls {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> io::Result<()> {
        let source = cstring(source)?;
        let target = cstring(&target.to_string_lossy())?;
        let fstype = cstring(fstype)?;
        let data = data.map(cstring).transpose()?;
        let data_ptr = data
            .as_ref()
            .map_or(std::ptr::null(), |d| d.as_ptr().cast());
        // SAFETY: all pointers come from CStrings that live until after the call;
        // `data` is either NULL or a NUL-terminated string, as mount(2) expects.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                flags,
                data_ptr,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }
}

/// A test double that records the calls and fails the ones it is told to.
#[cfg(test)]
pub mod test {
    use super::*;
    use std::cell::RefCell;

    /// One recorded call.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Call {
        /// mount(source, target, fstype).
        Mount(String, String, String),
        /// mkdir -p.
        Mkdir(String),
    }

    /// Records every call; mounts of an fstype in `fail_fstypes` fail with ENODEV.
    #[derive(Default)]
    pub struct RecordingSyscalls {
        pub calls: RefCell<Vec<Call>>,
        pub fail_fstypes: Vec<&'static str>,
    }

    impl Syscalls for RecordingSyscalls {
        fn mount(
            &self,
            source: &str,
            target: &Path,
            fstype: &str,
            _flags: libc::c_ulong,
            _data: Option<&str>,
        ) -> io::Result<()> {
            self.calls.borrow_mut().push(Call::Mount(
                source.into(),
                target.display().to_string(),
                fstype.into(),
            ));
            if self.fail_fstypes.contains(&fstype) {
                return Err(io::Error::from_raw_os_error(libc::ENODEV));
            }
            Ok(())
        }

        fn create_dir_all(&self, path: &Path) -> io::Result<()> {
            self.calls
                .borrow_mut()
                .push(Call::Mkdir(path.display().to_string()));
            Ok(())
        }
    }
}

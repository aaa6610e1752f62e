//! The VMM process of a VM (QEMU or husk-vmm): its exit, noticed once and
//! described with the last line of its log.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use crate::process::ChildGuard;

use super::{HypervisorError, VmExit};

/// When the description carries the last line of the VMM's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTail {
    /// Only when the VMM failed (QEMU says nothing useful on success).
    OnFailure,
    /// Always (husk-vmm's last line says how the guest ended).
    Always,
}

/// A running VMM process and how it ended, once it has.
pub struct MonitorProcess {
    process: ChildGuard,
    name: &'static str,
    log: PathBuf,
    tail: LogTail,
    exit: Option<VmExit>,
}

impl MonitorProcess {
    /// Spawns `cmd` as `name`, its output going to `log`.
    pub fn spawn(
        name: &'static str,
        cmd: std::process::Command,
        log: &Path,
        tail: LogTail,
    ) -> Result<Self, HypervisorError> {
        let process = ChildGuard::spawn(name, cmd, log)
            .map_err(|source| HypervisorError::Spawn { what: name, source })?;
        Ok(MonitorProcess {
            process,
            name,
            log: log.to_path_buf(),
            tail,
            exit: None,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// `Some` once the process has ended.
    pub fn try_wait(&mut self) -> Result<Option<VmExit>, HypervisorError> {
        if self.exit.is_none() {
            if let Some(status) = self.process.try_wait().map_err(HypervisorError::Wait)? {
                self.exit = Some(describe(self.name, self.tail, &self.log, status));
            }
        }
        Ok(self.exit.clone())
    }

    /// Kills the process if it still runs; returns how it ended. Idempotent.
    pub fn kill(&mut self) -> Result<VmExit, HypervisorError> {
        let status = self.process.kill().map_err(HypervisorError::Wait)?;
        let (name, tail, log) = (self.name, self.tail, &self.log);
        Ok(self
            .exit
            .get_or_insert_with(|| describe(name, tail, log, status))
            .clone())
    }
}

/// "`name` `status`", plus ": <last log line>" (without a leading
/// "`name`: ") when `tail` asks for it.
fn describe(name: &str, tail: LogTail, log: &Path, status: ExitStatus) -> VmExit {
    let mut description = format!("{name} {status}");
    if tail == LogTail::Always || !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(last) = text.lines().rev().find(|l| !l.trim().is_empty()) {
            let prefix = format!("{name}: ");
            description.push_str(&format!(": {}", last.trim_start_matches(prefix.as_str())));
        }
    }
    VmExit { description }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn log_with(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn qemu_success_is_just_the_status() {
        let log = log_with("some warning\n");
        let exit = describe(
            "qemu",
            LogTail::OnFailure,
            log.path(),
            ExitStatus::from_raw(0),
        );
        assert_eq!(exit.description, "qemu exit status: 0");
    }

    #[test]
    fn failures_carry_the_last_log_line() {
        let log = log_with("qemu-system-x86_64: bad kernel\n\n");
        let exit = describe(
            "qemu",
            LogTail::OnFailure,
            log.path(),
            ExitStatus::from_raw(1 << 8),
        );
        assert_eq!(
            exit.description,
            "qemu exit status: 1: qemu-system-x86_64: bad kernel"
        );
    }

    #[test]
    fn husk_vmm_always_says_how_the_guest_ended_without_its_own_prefix() {
        let log = log_with("husk-vmm: the guest rebooted\n");
        let exit = describe(
            "husk-vmm",
            LogTail::Always,
            log.path(),
            ExitStatus::from_raw(0),
        );
        assert_eq!(
            exit.description,
            "husk-vmm exit status: 0: the guest rebooted"
        );
    }
}

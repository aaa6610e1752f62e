//! The vhost-user device backends a VMM connects to: virtiofsd for the
//! sandbox share and vhost-device-vsock for the agent channel. Each is one
//! child process per VM, listening on a socket in the VM's state directory.
//!
//! Measured facts that shape this: virtiofsd exits when its VMM disconnects
//! (one per boot); passing `--tag` to virtiofsd crashes QEMU 7.x, so the tag
//! is given to QEMU only.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{wait_for_socket, ChildGuard};

use super::HypervisorError;

/// How long a helper may take to create its socket.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// A started helper and its vhost-user socket.
pub struct Backend {
    /// The process.
    pub process: ChildGuard,
    /// The vhost-user socket the VMM connects to.
    pub socket: PathBuf,
}

/// Spawns a helper without waiting for its socket: the caller starts all of
/// them first, then waits ([`Backend::wait_ready`]), so their start-up
/// overlaps.
fn spawn(
    what: &'static str,
    cmd: Command,
    socket: PathBuf,
    log: &Path,
) -> Result<Backend, HypervisorError> {
    let _ = std::fs::remove_file(&socket);
    let process = ChildGuard::spawn(what, cmd, log)
        .map_err(|source| HypervisorError::Spawn { what, source })?;
    Ok(Backend { process, socket })
}

impl Backend {
    /// Kills the helper (with anything it forked) and removes its socket and
    /// pid file. Idempotent.
    pub fn stop(&mut self, grace: Duration) -> std::io::Result<()> {
        let stopped = self.process.stop(grace).map(|_| ());
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(format!("{}.pid", self.socket.display()));
        stopped
    }

    /// Waits for the helper's socket to appear.
    pub fn wait_ready(&mut self) -> Result<(), HypervisorError> {
        let what = self.process.name();
        wait_for_socket(&mut self.process, &self.socket, SOCKET_TIMEOUT)
            .map_err(|source| HypervisorError::Spawn { what, source })
    }
}

/// Starts virtiofsd sharing `shared_dir` on `state_dir/virtiofsd.sock`.
pub fn start_virtiofsd(
    binary: &Path,
    shared_dir: &Path,
    state_dir: &Path,
) -> Result<Backend, HypervisorError> {
    let socket = state_dir.join("virtiofsd.sock");
    let mut cmd = Command::new(binary);
    cmd.arg(format!("--socket-path={}", socket.display()))
        .arg(format!("--shared-dir={}", shared_dir.display()))
        .args(["--sandbox=namespace", "--cache=auto", "--log-level=error"])
        .arg(super::jail::VIRTIOFSD_SECCOMP);
    spawn("virtiofsd", cmd, socket, &state_dir.join("virtiofsd.log"))
}

/// Starts vhost-device-vsock for guest `cid`; guest connections to host port
/// P arrive on `uds_path`_P. `jail`: without capabilities, under the
/// helpers' deny-list filter.
pub fn start_vsock(
    binary: &Path,
    cid: u32,
    uds_path: &Path,
    state_dir: &Path,
    jail: bool,
) -> Result<Backend, HypervisorError> {
    let socket = state_dir.join("vhost-vsock.sock");
    let mut cmd = Command::new(binary);
    cmd.arg(format!("--guest-cid={cid}"))
        .arg(format!("--socket={}", socket.display()))
        .arg(format!("--uds-path={}", uds_path.display()));
    if jail {
        super::jail::confine_helper_at_exec(&mut cmd)?;
    }
    spawn(
        "vhost-device-vsock",
        cmd,
        socket,
        &state_dir.join("vsock.log"),
    )
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.stop(Duration::ZERO);
    }
}

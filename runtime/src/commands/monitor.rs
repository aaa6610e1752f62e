//! `husk sandbox-monitor` (hidden): the per-container monitor process that
//! `create` starts. See [`husk::sandbox::monitor`].

use std::os::fd::FromRawFd;
use std::path::PathBuf;

use husk::oci::lifecycle::{GO_FD, READY_FD};
use husk::sandbox::monitor::{self, MonitorArgs};

use super::Global;

/// Options of the monitor.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The container id.
    pub id: String,
    /// The bundle directory.
    #[arg(long)]
    pub bundle: PathBuf,
    /// Where the pty master goes.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
}

/// Runs the monitor until the container ends.
pub fn run(global: &Global, args: Args) -> anyhow::Result<i32> {
    // SAFETY: `create` placed the write end of its ready pipe at READY_FD
    // and the read end of its go pipe at GO_FD for us; nothing else in
    // this process uses those fds.
    let (ready, go) = unsafe {
        (
            std::fs::File::from_raw_fd(READY_FD),
            std::fs::File::from_raw_fd(GO_FD),
        )
    };
    // The VMM and its helpers must not inherit them: create waits for EOF.
    for fd in [READY_FD, GO_FD] {
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )?;
    }
    Ok(monitor::run(MonitorArgs {
        dir: global.root.join(&args.id),
        id: args.id,
        bundle: args.bundle,
        console_socket: args.console_socket,
        ready,
        go,
    }))
}

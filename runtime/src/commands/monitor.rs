//! `husk sandbox-monitor` (hidden): the per-container monitor process that
//! `create` starts. See [`husk::sandbox::monitor`].

use std::os::fd::FromRawFd;
use std::path::PathBuf;

use husk::oci::lifecycle::READY_FD;
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
    // for us; nothing else in this process uses that fd.
    let ready = unsafe { std::fs::File::from_raw_fd(READY_FD) };
    // The VMM and its helpers must not inherit it: create waits for EOF.
    nix::fcntl::fcntl(
        READY_FD,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    Ok(monitor::run(MonitorArgs {
        dir: global.root.join(&args.id),
        id: args.id,
        bundle: args.bundle,
        console_socket: args.console_socket,
        ready,
    }))
}

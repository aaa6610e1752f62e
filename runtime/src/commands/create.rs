//! `husk create`: set the container up in its VM, ready for `start`.

use std::path::PathBuf;

use husk::oci::lifecycle::{self, CreateOptions};

use super::Global;

/// Options of `create` (and the creating half of `run`).
#[derive(clap::Args, Debug)]
#[group(skip)]
pub struct Args {
    /// The container id.
    pub id: String,
    /// The bundle directory (holds config.json).
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// A Unix socket that receives the pty master when process.terminal is set.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Where to write the pid of the container's process (the monitor).
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Accepted for compatibility with runc.
    #[arg(long)]
    pub no_pivot: bool,
    /// Accepted for compatibility with runc.
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Accepted for compatibility with runc (extra fds are not passed into a VM).
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
}

impl Args {
    /// The library's options.
    pub fn options(&self, global: &Global) -> CreateOptions {
        CreateOptions {
            root: global.root.clone(),
            id: self.id.clone(),
            bundle: self.bundle.clone(),
            console_socket: self.console_socket.clone(),
            pid_file: self.pid_file.clone(),
        }
    }
}

/// Creates the container and leaves its monitor running.
pub fn run(global: &Global, args: Args) -> anyhow::Result<i32> {
    lifecycle::create(&args.options(global))?;
    Ok(0)
}

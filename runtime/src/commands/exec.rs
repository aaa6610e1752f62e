//! `husk exec`: run another process in a running container, from a
//! process.json (`--process`) or from arguments on top of the container's
//! own process spec (as runc does).

use std::path::PathBuf;

use anyhow::{bail, Context};
use husk::sandbox::exec_relay::{self, ExecOptions};
use husk_protocol::oci::Process;

use super::Global;

/// Options of `exec`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The container id.
    pub id: String,
    /// The command and its arguments (when there is no --process).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
    /// A JSON file with the process spec.
    #[arg(short, long)]
    pub process: Option<PathBuf>,
    /// Return once the process runs.
    #[arg(short, long)]
    pub detach: bool,
    /// Give the process a terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// A Unix socket that receives the pty master.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Where to write the pid of the process's host side.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// The working directory.
    #[arg(long)]
    pub cwd: Option<String>,
    /// Extra environment, KEY=value.
    #[arg(short, long)]
    pub env: Vec<String>,
    /// uid[:gid].
    #[arg(short, long)]
    pub user: Option<String>,
    /// Extra groups.
    #[arg(short = 'g', long)]
    pub additional_gids: Vec<u32>,
    /// Set no_new_privs.
    #[arg(long)]
    pub no_new_privs: bool,
    /// Accepted for compatibility with runc.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    /// Accepted for compatibility with runc.
    #[arg(long)]
    pub process_label: Option<String>,
    /// Accepted for compatibility with runc.
    #[arg(long)]
    pub apparmor: Option<String>,
}

fn build_process(global: &Global, args: &Args) -> anyhow::Result<Process> {
    if let Some(path) = &args.process {
        let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let de = &mut serde_json::Deserializer::from_slice(&text);
        return serde_path_to_error::deserialize(de)
            .map_err(|e| anyhow::anyhow!("{}: {}: {}", path.display(), e.path(), e.inner()));
    }
    if args.command.is_empty() {
        bail!("exec needs a command or --process");
    }
    let container = global.container(&args.id)?;
    let bundle = container.bundle()?;
    let mut process = bundle.process().clone();
    process.args = args.command.clone();
    process.terminal = args.tty;
    process.console_size = None;
    process.env.extend(args.env.iter().cloned());
    if let Some(cwd) = &args.cwd {
        process.cwd = cwd.clone();
    }
    if let Some(user) = &args.user {
        let (uid, gid) = user.split_once(':').unwrap_or((user, "0"));
        process.user.uid = uid
            .parse()
            .with_context(|| format!("--user {user}: bad uid"))?;
        process.user.gid = gid
            .parse()
            .with_context(|| format!("--user {user}: bad gid"))?;
    }
    if !args.additional_gids.is_empty() {
        process.user.additional_gids = args.additional_gids.clone();
    }
    process.no_new_privileges |= args.no_new_privs;
    Ok(process)
}

/// Runs the process; exits with its code unless detached.
pub fn run(global: &Global, args: Args) -> anyhow::Result<i32> {
    let process = build_process(global, &args)?;
    let container = global.container(&args.id)?;
    if process.terminal && args.detach && args.console_socket.is_none() {
        bail!("cannot allocate a tty for a detached exec without --console-socket");
    }
    exec_relay::exec(ExecOptions {
        dir: container.dir,
        process,
        console_socket: args.console_socket,
        pid_file: args.pid_file,
        detach: args.detach,
    })
}

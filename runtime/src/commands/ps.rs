//! `husk ps`: the container's processes. The table lists the guest's
//! processes (guest pids). `--format json` is for engines, which match the
//! pids against the host's process table (`docker top` runs ps(1) on the
//! host): guest pids would name unrelated host processes, so it lists the
//! host process that stands for the container, its monitor (the pid
//! engines already know from `state`).

use anyhow::bail;
use husk::sandbox::control::{ControlReply, ControlRequest};

use super::Global;

/// Options of `ps`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The container id.
    pub id: String,
    /// `table` or `json` (a list of pids).
    #[arg(short, long, default_value = "table")]
    pub format: String,
    /// ps(1) options (accepted; husk prints its own columns).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub ps_args: Vec<String>,
}

/// Prints the processes.
pub fn run(global: &Global, args: Args) -> anyhow::Result<i32> {
    let container = global.container(&args.id)?;
    if !container.status().can_kill() {
        bail!("container not running");
    }
    let ControlReply::Processes(list) = container.call(&ControlRequest::Processes)? else {
        bail!("unexpected answer from the monitor");
    };
    match args.format.as_str() {
        "json" => println!("{}", serde_json::to_string(&[container.record.pid])?),
        "table" => {
            println!("{:<8}{:<8}{:<8}CMD", "UID", "PID", "PPID");
            for p in list {
                println!("{:<8}{:<8}{:<8}{}", p.uid, p.pid, p.ppid, p.cmd);
            }
        }
        other => bail!("invalid --format {other:?}: use table or json"),
    }
    Ok(0)
}

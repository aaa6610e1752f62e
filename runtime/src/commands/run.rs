//! `husk run`: create + start, then wait for the container and delete it;
//! exits with the container's exit code (with `--detach`, returns after start).

use std::os::unix::process::ExitStatusExt;

use husk::oci::lifecycle;

use super::Global;

/// Options of `run`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    create: super::create::Args,
    /// Return after start and leave the container running.
    #[arg(short, long)]
    detach: bool,
    /// Do not delete the container after it exits.
    #[arg(long)]
    keep: bool,
}

/// Runs the container to its end.
pub fn run(global: &Global, args: Args) -> anyhow::Result<i32> {
    let (container, mut monitor) = lifecycle::create(&args.create.options(global))?;
    if let Err(e) = lifecycle::start(&container) {
        let _ = lifecycle::delete(&container, true);
        let _ = monitor.wait();
        return Err(e);
    }
    if args.detach {
        return Ok(0);
    }
    let status = monitor.wait()?;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    if !args.keep {
        lifecycle::delete(&container, true)?;
    }
    Ok(code)
}

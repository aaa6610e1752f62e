//! `husk pause`: freeze every process of the container.

use husk::sandbox::control::ControlRequest;

use super::Global;

/// Options of `pause`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The container id.
    pub id: String,
}

/// Sends the request to the monitor.
pub fn run(global: &Global, args: Args) -> anyhow::Result<i32> {
    let container = global.container(&args.id)?;
    container.call(&ControlRequest::Pause)?;
    Ok(0)
}

//! `husk start`: let a created container's process run.

use super::Global;

/// Options of `start`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The container id.
    pub id: String,
}

/// Starts it.
pub fn run(global: &Global, args: Args) -> anyhow::Result<i32> {
    husk::oci::lifecycle::start(&global.container(&args.id)?)?;
    Ok(0)
}

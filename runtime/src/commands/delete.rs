//! `husk delete`: remove a stopped container (any container with `--force`).

use super::Global;

/// Options of `delete`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The container id.
    pub id: String,
    /// Kill it first if it still runs; a missing container is no error.
    #[arg(short, long)]
    pub force: bool,
}

/// Deletes it.
pub fn run(global: &Global, args: Args) -> anyhow::Result<i32> {
    let container = match global.container(&args.id) {
        Ok(c) => c,
        Err(_) if args.force => return Ok(0),
        Err(e) => return Err(e),
    };
    husk::oci::lifecycle::delete(&container, args.force)?;
    Ok(0)
}

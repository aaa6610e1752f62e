//! `husk state`: print the runtime-spec state document.

use super::Global;

/// Options of `state`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The container id.
    pub id: String,
}

/// Prints the state as indented JSON, like runc.
pub fn run(global: &Global, args: Args) -> anyhow::Result<i32> {
    let container = global.container(&args.id)?;
    let state = container.record.state(container.status());
    println!("{}", serde_json::to_string_pretty(&state)?);
    Ok(0)
}

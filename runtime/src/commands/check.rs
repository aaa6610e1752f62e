//! `husk check`.

/// No options yet.
#[derive(clap::Args)]
pub struct Args {}

/// Runs the check on stdout.
pub fn run(_args: Args) -> anyhow::Result<()> {
    husk::check::run(&mut std::io::stdout())
}

//! The `husk` command line: thin front ends, one file per subcommand in
//! `commands/`, parsing declared with clap.

mod commands;

use clap::{Parser, Subcommand};

/// husk runs OCI containers, each in its own KVM microVM.
#[derive(Parser)]
#[command(name = "husk", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check that this host can run husk: backend, files, and a test boot.
    Check(commands::check::Args),
    /// Write the guest initramfs with the given agent as /init.
    #[command(hide = true)]
    Mkinitramfs(commands::mkinitramfs::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(args) => commands::check::run(args),
        Command::Mkinitramfs(args) => commands::mkinitramfs::run(args),
    };
    if let Err(e) = result {
        eprintln!("husk: error: {e:#}");
        std::process::exit(1);
    }
}

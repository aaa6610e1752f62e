//! The `husk` command line: a runc-compatible OCI runtime. Thin front ends,
//! one file per subcommand in `commands/`, parsing declared with clap.
//! Errors go to stderr and, with `--log`, to the log file in runc's text or
//! JSON format (podman and containerd read it); the exit code is 1.

mod commands;

use std::io::Write;

use clap::{Parser, Subcommand};

/// husk runs OCI containers, each in its own KVM microVM.
#[derive(Parser)]
#[command(name = "husk", version, about)]
struct Cli {
    #[command(flatten)]
    global: commands::Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check that this host can run husk: backend, files, and a test boot.
    Check(commands::check::Args),
    /// Create a container from a bundle, ready to start.
    Create(commands::create::Args),
    /// Start a created container.
    Start(commands::start::Args),
    /// Create, start and wait for a container; exits with its code.
    Run(commands::run::Args),
    /// Print a container's state as JSON.
    State(commands::state::Args),
    /// Send a signal to a container.
    Kill(commands::kill::Args),
    /// Delete a container.
    Delete(commands::delete::Args),
    /// List containers.
    List(commands::list::Args),
    /// List a container's processes.
    Ps(commands::ps::Args),
    /// Run another process in a running container.
    Exec(commands::exec::Args),
    /// Freeze a container's processes.
    Pause(commands::pause::Args),
    /// Thaw a container's processes.
    Resume(commands::resume::Args),
    /// Change a running container's limits.
    Update(commands::update::Args),
    /// Print a container's stats as JSON events.
    Events(commands::events::Args),
    /// Print what this runtime supports.
    Features(commands::features::Args),
    /// Write a default config.json.
    Spec(commands::spec::Args),
    /// Write the guest initramfs with the given agent as /init.
    #[command(hide = true)]
    Mkinitramfs(commands::mkinitramfs::Args),
    /// Registers husk with docker, podman and containerd (hack/install.sh).
    RegisterEngines(commands::register_engines::Args),
    /// The per-container monitor (started by create).
    #[command(hide = true)]
    SandboxMonitor(commands::monitor::Args),
}

fn main() {
    let cli = Cli::parse();
    let mut global = cli.global.clone();
    if let Err(e) = global.canonicalize_root() {
        eprintln!("husk: error: {e:#}");
        std::process::exit(1);
    }
    let result = match cli.command {
        Command::Check(args) => commands::check::run(args).map(|_| 0),
        Command::Create(args) => commands::create::run(&global, args),
        Command::Start(args) => commands::start::run(&global, args),
        Command::Run(args) => commands::run::run(&global, args),
        Command::State(args) => commands::state::run(&global, args),
        Command::Kill(args) => commands::kill::run(&global, args),
        Command::Delete(args) => commands::delete::run(&global, args),
        Command::List(args) => commands::list::run(&global, args),
        Command::Ps(args) => commands::ps::run(&global, args),
        Command::Exec(args) => commands::exec::run(&global, args),
        Command::Pause(args) => commands::pause::run(&global, args),
        Command::Resume(args) => commands::resume::run(&global, args),
        Command::Update(args) => commands::update::run(&global, args),
        Command::Events(args) => commands::events::run(&global, args),
        Command::Features(args) => commands::features::run(&global, args),
        Command::Spec(args) => commands::spec::run(&global, args),
        Command::Mkinitramfs(args) => commands::mkinitramfs::run(args).map(|_| 0),
        Command::RegisterEngines(args) => commands::register_engines::run(args).map(|_| 0),
        Command::SandboxMonitor(args) => commands::monitor::run(&global, args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let message = format!("{e:#}");
            eprintln!("husk: error: {message}");
            if let Some(path) = &global.log {
                log_error(path, &global.log_format, &message);
            }
            std::process::exit(1);
        }
    }
}

/// Appends an error line to the `--log` file in runc's format.
fn log_error(path: &std::path::Path, format: &str, message: &str) {
    let time = husk::oci::state::now_rfc3339();
    let line = if format == "json" {
        serde_json::json!({"level": "error", "msg": message, "time": time}).to_string()
    } else {
        format!("time={time:?} level=error msg={message:?}")
    };
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn options_are_accepted_after_the_container_id() {
        let cli = Cli::try_parse_from([
            "husk",
            "create",
            "c1",
            "--bundle",
            "/b",
            "--pid-file",
            "/p",
            "--root",
            "/r",
        ])
        .unwrap();
        assert_eq!(cli.global.root, std::path::Path::new("/r"));
        let Command::Create(args) = cli.command else {
            panic!("not create")
        };
        assert_eq!(args.id, "c1");
        assert_eq!(args.bundle, std::path::Path::new("/b"));
    }

    #[test]
    fn kill_takes_all_before_the_id_and_a_signal_after() {
        let cli = Cli::try_parse_from(["husk", "kill", "--all", "c1", "9"]).unwrap();
        let Command::Kill(args) = cli.command else {
            panic!("not kill")
        };
        assert!(args.all);
        assert_eq!(args.signal, "9");
    }

    #[test]
    fn exec_keeps_the_command_options_for_the_command() {
        let cli = Cli::try_parse_from(["husk", "exec", "-t", "c1", "ls", "-la"]).unwrap();
        let Command::Exec(args) = cli.command else {
            panic!("not exec")
        };
        assert!(args.tty);
        assert_eq!(args.command, ["ls", "-la"]);
    }
}

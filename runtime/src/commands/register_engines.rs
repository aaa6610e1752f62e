//! `husk register-engines [--husk PATH] [--root DIR] [ENGINE...]`: adds
//! husk to the configuration of docker, podman and containerd (see
//! [`husk::engine_config`]); used by hack/install.sh. Engines whose
//! binary is not installed are skipped unless named; a file husk cannot
//! edit safely is left alone, named, and makes the exit status 1 once the
//! other engines are done.

use std::path::{Path, PathBuf};

use husk::engine_config::{register_file, Engine, Outcome};

/// Options.
#[derive(clap::Args)]
pub struct Args {
    /// The husk binary engines should run (default: this one).
    #[arg(long)]
    husk: Option<PathBuf>,
    /// Where the engines' /etc is (for packaging and tests).
    #[arg(long = "config-root", default_value = "/")]
    config_root: PathBuf,
    /// Only these engines (docker, podman, containerd), installed or not.
    engines: Vec<String>,
}

/// The binaries that say an engine is installed.
fn installed(engine: Engine) -> bool {
    let binaries: &[&str] = match engine {
        Engine::Docker => &["/usr/sbin/dockerd", "/usr/bin/dockerd"],
        Engine::Podman => &["/usr/bin/podman"],
        Engine::Containerd => &["/usr/bin/containerd", "/usr/local/bin/containerd"],
    };
    binaries.iter().any(|b| Path::new(b).is_file())
}

/// Registers husk; prints what changed.
pub fn run(args: Args) -> anyhow::Result<()> {
    let husk = match args.husk {
        Some(path) => path,
        None => std::env::current_exe()?,
    };
    let chosen: Vec<Engine> = if args.engines.is_empty() {
        Engine::ALL.into_iter().filter(|e| installed(*e)).collect()
    } else {
        args.engines
            .iter()
            .map(|name| {
                Engine::ALL
                    .into_iter()
                    .find(|e| e.name() == name)
                    .ok_or_else(|| {
                        anyhow::anyhow!("unknown engine {name:?} (docker, podman, containerd)")
                    })
            })
            .collect::<anyhow::Result<_>>()?
    };
    // Each engine on its own: a file husk cannot edit safely is left as it
    // is (the engine runs on as before), and the others are still done.
    let mut refused = Vec::new();
    for engine in chosen {
        match register_file(engine, &args.config_root, &husk) {
            Ok(Outcome::Updated(path)) => {
                println!("{}: registered husk in {}", engine.name(), path.display())
            }
            Ok(Outcome::Unchanged(path)) => {
                println!(
                    "{}: husk already registered in {}",
                    engine.name(),
                    path.display()
                )
            }
            Err(e) => {
                eprintln!(
                    "{}: not registered, file left unchanged: {e:#}",
                    engine.name()
                );
                refused.push(engine.name());
            }
        }
    }
    if !refused.is_empty() {
        anyhow::bail!("husk is not registered with {}", refused.join(", "));
    }
    Ok(())
}

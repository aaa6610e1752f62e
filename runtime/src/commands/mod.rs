//! One module per subcommand; each parses its options declaratively and
//! calls into the library. [`Global`] carries the options every command
//! shares.

pub mod check;
pub mod create;
pub mod delete;
pub mod events;
pub mod exec;
pub mod features;
pub mod kill;
pub mod list;
pub mod mkinitramfs;
pub mod monitor;
pub mod pause;
pub mod ps;
pub mod register_engines;
pub mod resume;
pub mod run;
pub mod spec;
pub mod start;
pub mod state;
pub mod update;

use std::path::PathBuf;

use husk::oci::container::Container;

/// Options accepted by every command (runc's global flags).
#[derive(clap::Args, Debug, Clone)]
pub struct Global {
    /// Where container state lives.
    #[arg(long, global = true, default_value = husk::oci::container::DEFAULT_ROOT)]
    pub root: PathBuf,
    /// Also write errors to this file.
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// Format of the --log file: text or json.
    #[arg(long, global = true, default_value = "text")]
    pub log_format: String,
    /// Verbose output (accepted for compatibility).
    #[arg(long, global = true)]
    pub debug: bool,
    /// Use systemd cgroups (accepted; husk places the monitor itself).
    #[arg(long, global = true)]
    pub systemd_cgroup: bool,
    /// Accepted for compatibility with runc.
    #[arg(long, global = true, hide = true)]
    pub criu: Option<String>,
}

impl Global {
    /// Loads a container by id.
    pub fn container(&self, id: &str) -> anyhow::Result<Container> {
        Container::load(&self.root, id)
    }

    /// Makes `--root` absolute and free of symlinks (creating it), so the
    /// mounts under it are found by their /proc/self/mountinfo paths.
    pub fn canonicalize_root(&mut self) -> anyhow::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(|e| anyhow::anyhow!("creating the state root {}: {e}", self.root.display()))?;
        self.root = self.root.canonicalize()?;
        Ok(())
    }
}

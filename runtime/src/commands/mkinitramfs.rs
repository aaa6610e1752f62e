//! `husk mkinitramfs --agent BIN --output FILE` (used by hack/build-initramfs.sh).

use std::path::PathBuf;

use anyhow::Context;

/// Paths.
#[derive(clap::Args)]
pub struct Args {
    /// The static husk-agent binary.
    #[arg(long)]
    agent: PathBuf,
    /// Where to write the archive.
    #[arg(long)]
    output: PathBuf,
}

/// Writes the archive atomically (temp file, then rename).
pub fn run(args: Args) -> anyhow::Result<()> {
    let agent = std::fs::read(&args.agent)
        .with_context(|| format!("reading agent {}", args.agent.display()))?;
    anyhow::ensure!(
        agent.starts_with(b"\x7fELF"),
        "{} is not an ELF binary",
        args.agent.display()
    );
    let tmp = args.output.with_extension("tmp");
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    husk::initramfs::write_initramfs(&mut file, &agent)?;
    file.sync_all()?;
    std::fs::rename(&tmp, &args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;
    Ok(())
}

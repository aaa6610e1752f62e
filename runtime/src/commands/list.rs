//! `husk list`: every container under `--root`, as a table or JSON.

use husk::oci::container::Container;
use husk::oci::state::OCI_VERSION;
use serde::Serialize;

use super::Global;

/// Options of `list`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// `table` or `json`.
    #[arg(short, long, default_value = "table")]
    pub format: String,
    /// Print only the ids.
    #[arg(short, long)]
    pub quiet: bool,
}

/// One entry of `list --format json` (runc's `containerState`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    oci_version: &'static str,
    id: String,
    pid: i32,
    status: String,
    bundle: String,
    rootfs: String,
    created: String,
    annotations: std::collections::BTreeMap<String, String>,
    owner: String,
}

/// Prints the list.
pub fn run(global: &Global, args: Args) -> anyhow::Result<i32> {
    let entries: Vec<Entry> = Container::list(&global.root)
        .into_iter()
        .map(|c| {
            let status = c.status();
            let r = c.record;
            Entry {
                oci_version: OCI_VERSION,
                pid: if status == husk::oci::state::Status::Stopped {
                    0
                } else {
                    r.pid
                },
                id: r.id,
                status: status.to_string(),
                bundle: r.bundle.display().to_string(),
                rootfs: r.rootfs.display().to_string(),
                created: r.created,
                annotations: r.annotations,
                owner: r.owner,
            }
        })
        .collect();
    if args.quiet {
        for e in &entries {
            println!("{}", e.id);
        }
    } else if args.format == "json" {
        println!("{}", serde_json::to_string(&entries)?);
    } else if args.format == "table" {
        println!(
            "{:<12}{:<10}{:<10}{:<40}{:<32}OWNER",
            "ID", "PID", "STATUS", "BUNDLE", "CREATED"
        );
        for e in &entries {
            println!(
                "{:<12}{:<10}{:<10}{:<40}{:<32}{}",
                e.id, e.pid, e.status, e.bundle, e.created, e.owner
            );
        }
    } else {
        anyhow::bail!("invalid --format {:?}: use table or json", args.format);
    }
    Ok(0)
}

//! `husk update`: change a running container's limits. They apply to its
//! cgroup inside the VM and to the VM's envelope in its host cgroup (all
//! but the memory there); the VM's own memory and vCPUs stay as created,
//! and the command says so when a limit goes beyond them.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use husk::sandbox::control::ControlRequest;
use husk_protocol::oci::Resources;

use super::Global;

/// Options of `update`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The container id.
    pub id: String,
    /// A JSON file of linux.resources, or `-` for stdin.
    #[arg(short, long)]
    pub resources: Option<PathBuf>,
    /// Memory limit in bytes.
    #[arg(short, long)]
    pub memory: Option<i64>,
    /// CPU quota in microseconds per period.
    #[arg(long)]
    pub cpu_quota: Option<i64>,
    /// CPU period in microseconds.
    #[arg(long)]
    pub cpu_period: Option<u64>,
    /// Most tasks.
    #[arg(long)]
    pub pids_limit: Option<i64>,
}

/// Reads the resources and sends them to the monitor.
pub fn run(global: &Global, args: Args) -> anyhow::Result<i32> {
    let mut resources: Resources = match &args.resources {
        Some(path) if path.as_os_str() == "-" => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            serde_json::from_str(&text).context("parsing the resources from stdin")?
        }
        Some(path) => {
            let text =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => Resources::default(),
    };
    if let Some(limit) = args.memory {
        resources.memory.get_or_insert_with(Default::default).limit = Some(limit);
    }
    if args.cpu_quota.is_some() || args.cpu_period.is_some() {
        let cpu = resources.cpu.get_or_insert_with(Default::default);
        cpu.quota = args.cpu_quota.or(cpu.quota);
        cpu.period = args.cpu_period.or(cpu.period);
    }
    if let Some(limit) = args.pids_limit {
        resources.pids = Some(husk_protocol::oci::PidsResources { limit });
    }
    let container = global.container(&args.id)?;
    if !container.status().can_kill() {
        anyhow::bail!("container not running");
    }
    container.call(&ControlRequest::Update(Box::new(resources.clone())))?;
    if resources.memory.as_ref().and_then(|m| m.limit).is_some()
        || resources
            .cpu
            .as_ref()
            .is_some_and(|c| c.quota.is_some() || c.cpus.is_some())
    {
        eprintln!(
            "husk: note: limits changed inside the VM; its memory and vCPU count stay as created"
        );
    }
    Ok(0)
}

//! `husk check`: tells a user whether this host can run husk, which backend
//! it will use and why, and proves it by booting a throwaway VM: agent hello,
//! a request round trip, a file read through virtio-fs, and a clean
//! shutdown, with the time of each phase.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use husk_protocol::{Request, Response};

use crate::config::{resolve_binary, Config};
use crate::guest::Guest;
use crate::host::Virtualization;
use crate::hypervisor::{self, VmConfig};

/// How long one request to the agent may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The file `husk check` reads back through virtio-fs.
const PROBE_FILE: &str = "husk-check.txt";

/// Runs the check, printing to `out`. An error means the host cannot run
/// husk; its message says what to do.
pub fn run(out: &mut dyn Write) -> Result<()> {
    let (config, config_path) = Config::load()?;
    let line = |out: &mut dyn Write, label: &str, value: &str| writeln!(out, "{label:<12}{value}");
    line(out, "husk", env!("CARGO_PKG_VERSION"))?;
    let source = config_path.map_or("defaults (no config file)".into(), |p| {
        p.display().to_string()
    });
    line(out, "config", &source)?;

    let host = Virtualization::probe();
    line(out, "kvm", &host.describe())?;
    let selection = hypervisor::select(&config, &host)?;
    line(
        out,
        "backend",
        &format!("{}: {}", selection.hypervisor.name(), selection.reason),
    )?;

    let mut missing = Vec::new();
    for (label, path) in [("kernel", &config.kernel), ("initramfs", &config.initramfs)] {
        match std::fs::metadata(path) {
            Ok(m) => line(
                out,
                label,
                &format!("{} ({} KiB)", path.display(), m.len() / 1024),
            )?,
            Err(e) => {
                line(out, label, &format!("MISSING {}: {e}", path.display()))?;
                missing.push(label);
            }
        }
    }
    for (label, path) in [
        ("qemu", &config.qemu),
        ("virtiofsd", &config.virtiofsd),
        ("vsock", &config.vsock_backend),
    ] {
        match resolve_binary(label, path) {
            Ok(found) => line(
                out,
                label,
                &format!("{} ({})", found.display(), version_of(&found)),
            )?,
            Err(e) => {
                line(out, label, &format!("MISSING: {e}"))?;
                missing.push(label);
            }
        }
    }
    if !missing.is_empty() {
        bail!(
            "missing: {}. Install them with hack/install.sh (or set their paths in {})",
            missing.join(", "),
            crate::config::DEFAULT_CONFIG_PATH
        );
    }

    writeln!(out, "boot test:")?;
    boot_test(&config, selection.hypervisor.as_ref(), out)?;
    writeln!(
        out,
        "ok: husk can run containers on this host with {}",
        selection.hypervisor.name()
    )?;
    Ok(())
}

fn boot_test(
    config: &Config,
    hypervisor: &dyn hypervisor::Hypervisor,
    out: &mut dyn Write,
) -> Result<()> {
    let state = tempfile::Builder::new()
        .prefix("husk-check-")
        .tempdir()
        .context("creating a state directory")?;
    let shared = state.path().join("shared");
    std::fs::create_dir(&shared)?;
    let token = format!("husk check {} {:?}\n", std::process::id(), Instant::now());
    std::fs::write(shared.join(PROBE_FILE), &token)?;
    let vm_config = VmConfig::from_config(config, state.path(), &shared);
    let phase = |out: &mut dyn Write, name: &str, took: Duration, note: &str| {
        writeln!(
            out,
            "  {name:<28}{:>8.1} ms  {note}",
            took.as_secs_f64() * 1000.0
        )
    };

    let timeout = Duration::from_millis(config.boot_timeout_ms);
    let mut guest = Guest::boot(hypervisor, &vm_config, timeout).context(
        "booting the check VM failed; the kernel and initramfs may be stale or broken: \
         rebuild them with hack/install.sh, or run with kernel_cmdline = \"loglevel=7\" in the config for a verbose console",
    )?;
    let hello = guest.agent().hello().clone();
    phase(out, "launch (VMM + helpers)", guest.timings.launch, "")?;
    phase(
        out,
        "agent hello",
        guest.timings.hello,
        &format!(
            "agent {}, protocol {}, kernel {}, guest uptime {:.0} ms",
            hello.agent_version,
            hello.protocol_version,
            hello.kernel_release,
            hello.boot_time_ns as f64 / 1e6
        ),
    )?;
    if let Err(e) = &hello.share {
        bail!("the guest could not mount the virtio-fs share: {e}");
    }

    let t = Instant::now();
    match guest.agent().request(Request::Ping, REQUEST_TIMEOUT)? {
        Response::Pong { .. } => phase(out, "request round trip", t.elapsed(), "ping over vsock")?,
        other => bail!("ping answered with {other:?}"),
    }

    let t = Instant::now();
    match guest.agent().request(
        Request::ReadFile {
            path: PROBE_FILE.into(),
        },
        REQUEST_TIMEOUT,
    )? {
        Response::File { data } if data.0 == token.as_bytes() => phase(
            out,
            "virtio-fs read",
            t.elapsed(),
            &format!("{} bytes, content matches", data.0.len()),
        )?,
        other => bail!("reading {PROBE_FILE} through virtio-fs gave {other:?}, expected {token:?}"),
    }

    let t = Instant::now();
    let exit = guest
        .shutdown(REQUEST_TIMEOUT)
        .context("shutting the check VM down")?;
    phase(out, "shutdown", t.elapsed(), &exit.description)?;
    leftover_sockets(state.path())?;
    Ok(())
}

/// After a clean shutdown only logs may remain in the state directory.
fn leftover_sockets(state: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    for entry in std::fs::read_dir(state)? {
        let entry = entry?;
        if entry.file_type()?.is_socket() {
            bail!(
                "socket {} left behind after shutdown",
                entry.path().display()
            );
        }
    }
    Ok(())
}

/// The first line of `BINARY --version`, or why it could not be read.
fn version_of(binary: &Path) -> String {
    match Command::new(binary).arg("--version").output() {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("no version")
            .trim()
            .to_string(),
        Err(e) => format!("--version failed: {e}"),
    }
}

//! husk-bench: repeated measurements, min / median / max, each next to a
//! baseline measured in the same run (see `hack/bench-boot`).
//!
//! `husk-bench boot --runs N --bare-initramfs FILE`: N boots through husk
//! (launch -> agent hello -> request answered -> VM gone), alternating with
//! N boots of the same kernel under plain QEMU with a trivial init and no
//! virtiofsd or vsock (launch -> init ready -> VM gone). The difference
//! between the two is what husk adds over the unavoidable boot.
//!
//! `husk-bench backends --runs N`: N boots to the agent's hello with the
//! builtin monitor alternating with N under QEMU (`-accel kvm -M microvm`),
//! same kernel, initramfs and share, and with the builtin monitor unjailed
//! (what the jail costs); plus the builtin monitor's time from start to the
//! first vCPU entry and each monitor's host memory overhead
//! (RSS minus the guest memory the guest touched), and the guest's uptime at
//! its first ping (its own boot, apart from the host's start-up). Needs
//! hardware KVM: `hack/bench-builtin` runs it inside the KVM test host, with
//! `--recycle-mib` (see there).
//!
//! `husk-bench run --runs N --bundle DIR --husk BIN`: N times `husk run` of
//! the bundle end to end (create, boot, start, exit, delete), alternating
//! with N boots to the agent's hello, the floor any container start pays.
//!
//! `husk-bench net --runs N --rootfs DIR --husk BIN --runc BIN`: TCP
//! throughput each way and round-trip latency between a peer namespace and
//! a container, husk and runc alternating ([`net`]).

mod net;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use husk::config::Config;
use husk::guest::Guest;
use husk::host::Virtualization;
use husk::hypervisor::builtin::{self, BuiltinBackend};
use husk::hypervisor::{self, qemu::QemuBackend, VmConfig};
use husk_protocol::{Request, Response};
use husk_vm_spec::control::{self, ControlRequest};

/// The line husk-bare-init prints when it runs.
const BARE_READY: &str = "HUSK-BARE-INIT-READY";

#[derive(Parser)]
#[command(name = "husk-bench")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Boot phases of husk against a bare QEMU boot.
    Boot {
        /// Boots of each kind.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Initramfs whose /init is husk-bare-init.
        #[arg(long)]
        bare_initramfs: PathBuf,
    },
    /// Builtin monitor against QEMU with KVM, same guest.
    Backends {
        /// Boots of each kind.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Before each boot (untimed), fill and free this many MiB of shared
        /// memory, so that every boot starts from the same host page state.
        /// For the nested test host: its emulated CPU makes the first writes
        /// to pages a previous VM ran code from slow (it drops what it
        /// translated from them), and that cost lands on whichever process
        /// allocates next. 0 leaves the pages as the last VM left them.
        #[arg(long, default_value_t = 0)]
        recycle_mib: usize,
    },
    /// TCP throughput and latency to a container, husk against runc.
    Net {
        /// Containers of each runtime.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// A rootfs with iperf3 and python3.
        #[arg(long)]
        rootfs: PathBuf,
        /// The husk binary.
        #[arg(long)]
        husk: PathBuf,
        /// The runc binary.
        #[arg(long, default_value = "/usr/bin/runc")]
        runc: PathBuf,
        /// Seconds of each iperf3 test.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
    },
    /// `husk run` of a bundle end to end, next to the agent-hello boot time.
    Run {
        /// Runs of each kind.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// The bundle to run (its process should exit at once, e.g. `true`).
        #[arg(long)]
        bundle: PathBuf,
        /// The husk binary.
        #[arg(long)]
        husk: PathBuf,
    },
}

/// A measured quantity: durations (shown in ms) or plain numbers.
trait Metric: Copy + PartialOrd {
    /// The mean of two values (for the median of an even count).
    fn midpoint(self, other: Self) -> Self;
    /// The value in the unit its rows show.
    fn shown(self) -> f64;
}

impl Metric for Duration {
    fn midpoint(self, other: Self) -> Self {
        (self + other) / 2
    }
    fn shown(self) -> f64 {
        self.as_secs_f64() * 1000.0
    }
}

impl Metric for f64 {
    fn midpoint(self, other: Self) -> Self {
        (self + other) / 2.0
    }
    fn shown(self) -> f64 {
        self
    }
}

/// Samples of one phase.
struct Samples<T = Duration>(Vec<T>);

impl<T> Default for Samples<T> {
    fn default() -> Self {
        Samples(Vec::new())
    }
}

impl<T: Metric> Samples<T> {
    fn sorted(&self) -> Vec<T> {
        let mut v = self.0.clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        v
    }
    fn median(&self) -> T {
        let v = self.sorted();
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            v[n / 2 - 1].midpoint(v[n / 2])
        }
    }
    fn row(&self, name: &str) -> String {
        let v = self.sorted();
        format!(
            "{name:<34}{:>10.1}{:>10.1}{:>10.1}",
            v[0].shown(),
            self.median().shown(),
            v[v.len() - 1].shown()
        )
    }
}

fn main() -> Result<()> {
    match Cli::parse().bench {
        Bench::Boot {
            runs,
            bare_initramfs,
        } => bench_boot(runs, bare_initramfs),
        Bench::Run { runs, bundle, husk } => bench_run(runs, bundle, husk),
        Bench::Backends { runs, recycle_mib } => bench_backends(runs, recycle_mib),
        Bench::Net {
            runs,
            rootfs,
            husk,
            runc,
            seconds,
        } => net::bench_net(net::NetArgs {
            runs,
            rootfs,
            husk,
            runc,
            seconds,
        }),
    }
}

/// Host memory a monitor uses beyond guest RAM: its resident set minus the
/// shared memfd pages (the guest memory the guest touched).
fn monitor_overhead(pid: u32) -> Result<Duration> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| -> Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(key))
            .with_context(|| format!("no {key} in /proc/{pid}/status"))?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .context("malformed status line")?
            .parse()?)
    };
    // Returned as a Duration of "microseconds = KiB" so Samples can sort it.
    Ok(Duration::from_micros(kib("VmRSS:")? - kib("RssShmem:")?))
}

/// Writes `mib` MiB into a fresh memfd and frees it again: the host's
/// recently freed pages are allocated, written and returned.
fn recycle_host_pages(mib: usize) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::from(
        nix::sys::memfd::memfd_create(
            c"husk-bench-recycle",
            nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
        )
        .context("memfd_create")?,
    );
    let chunk = vec![0x5a_u8; 1 << 20];
    for _ in 0..mib {
        file.write_all(&chunk)
            .context("filling the recycle memfd")?;
    }
    Ok(())
}

/// What `backends` measures of each boot of one monitor.
#[derive(Default)]
struct BackendSamples {
    /// Boot to the agent's hello.
    hello: Samples,
    /// The guest's uptime at its first ping.
    uptime: Samples,
    /// Monitor RSS beyond guest memory, as "µs = KiB".
    rss: Samples,
}

fn bench_backends(runs: usize, recycle_mib: usize) -> Result<()> {
    anyhow::ensure!(runs > 0, "--runs must be at least 1");
    let (config, _) = Config::load()?;
    let host = Virtualization::probe();
    anyhow::ensure!(
        matches!(host, Virtualization::Hardware { .. }),
        "this benchmark needs hardware KVM, but {}",
        host.describe()
    );
    let builtin = BuiltinBackend::from_config(&config);
    // The same monitor without its jail: what jailing costs at start.
    let unjailed = BuiltinBackend::from_config(&Config {
        jail: false,
        ..config.clone()
    });
    let qemu = QemuBackend::from_config(&config, true);
    let timeout = Duration::from_millis(config.boot_timeout_ms);
    println!(
        "kernel: {}\nmemory: {} MiB, {} vCPU\nruns: {runs} of each, alternating\n\
         host pages recycled before each boot: {recycle_mib} MiB\n",
        config.kernel.display(),
        config.memory_mib,
        config.vcpus
    );
    let (mut b, mut u, mut q): (BackendSamples, BackendSamples, BackendSamples) =
        Default::default();
    let (mut b_entry, mut u_entry) = (Samples::default(), Samples::default());
    for run in 0..runs {
        for (name, backend, samples, entry) in [
            (
                "builtin",
                &builtin as &dyn hypervisor::Hypervisor,
                &mut b,
                Some(&mut b_entry),
            ),
            (
                "builtin without jail",
                &unjailed,
                &mut u,
                Some(&mut u_entry),
            ),
            ("qemu", &qemu, &mut q, None),
        ] {
            let state = tempfile::Builder::new().prefix("husk-bench-").tempdir()?;
            let shared = state.path().join("shared");
            std::fs::create_dir(&shared)?;
            let vm = VmConfig::from_config(&config, state.path(), &shared);
            if recycle_mib > 0 {
                recycle_host_pages(recycle_mib)?;
            }
            let mut guest =
                Guest::boot(backend, &vm, timeout).with_context(|| format!("{name} boot {run}"))?;
            let uptime = match guest.agent().request(Request::Ping, timeout)? {
                Response::Pong { boot_time_ns } => Duration::from_nanos(boot_time_ns),
                other => bail!("ping answered with {other:?}"),
            };
            samples.hello.0.push(guest.timings.hello);
            samples.uptime.0.push(uptime);
            samples.rss.0.push(monitor_overhead(guest.vm().pid())?);
            if let Some(entry) = entry {
                let timing = control::request(
                    &builtin::control_socket(&vm),
                    ControlRequest::Timing,
                    timeout,
                )?;
                let us: u64 = timing
                    .strip_prefix("first-entry-us ")
                    .and_then(|v| v.parse().ok())
                    .with_context(|| format!("unexpected timing answer {timing:?}"))?;
                entry.0.push(Duration::from_micros(us));
            }
            guest.shutdown(timeout)?;
        }
        eprint!(".");
    }
    eprintln!();
    println!("{:<40}{:>10}{:>10}{:>10}", "ms", "min", "median", "max");
    println!("{}", b.hello.row("builtin: boot to agent hello"));
    println!("{}", u.hello.row("builtin, no jail: boot to agent hello"));
    println!("{}", q.hello.row("qemu -accel kvm: boot to agent hello"));
    println!(
        "{}",
        b_entry.row("builtin: monitor start to 1st vCPU entry")
    );
    println!("{}", u_entry.row("  the same without its jail"));
    println!("{}", b.uptime.row("builtin: guest uptime at 1st ping"));
    println!("{}", q.uptime.row("qemu: guest uptime at 1st ping"));
    println!(
        "\nbuiltin / qemu median boot to hello: {:.2}",
        b.hello.median().as_secs_f64() / q.hello.median().as_secs_f64()
    );
    println!(
        "the jail's cost at monitor start (median to 1st vCPU entry): {:+.1} ms",
        (b_entry.median().as_secs_f64() - u_entry.median().as_secs_f64()) * 1000.0
    );
    println!(
        "\n{:<40}{:>10}{:>10}{:>10}",
        "monitor RSS beyond guest memory (KiB)", "min", "median", "max"
    );
    let kib_row = |s: &Samples, name: &str| {
        let v = s.sorted();
        format!(
            "{name:<40}{:>10}{:>10}{:>10}",
            v[0].as_micros(),
            s.median().as_micros(),
            v[v.len() - 1].as_micros()
        )
    };
    println!("{}", kib_row(&b.rss, "builtin (husk-vmm)"));
    println!("{}", kib_row(&u.rss, "builtin without jail"));
    println!("{}", kib_row(&q.rss, "qemu (without its helpers)"));
    Ok(())
}

/// The config, the qemu backend the host allows, and the boot timeout;
/// prints the backend.
fn setup(runs: usize) -> Result<(Config, QemuBackend, Duration)> {
    anyhow::ensure!(runs > 0, "--runs must be at least 1");
    let (config, _) = Config::load()?;
    let host = Virtualization::probe();
    let (kvm, reason) = hypervisor::use_kvm(&config, &host)?;
    let backend = QemuBackend::from_config(&config, kvm);
    let timeout = Duration::from_millis(config.boot_timeout_ms);
    println!(
        "backend: qemu {} ({reason})",
        if kvm { "KVM" } else { "TCG" }
    );
    Ok((config, backend, timeout))
}

fn bench_run(runs: usize, bundle: PathBuf, husk: PathBuf) -> Result<()> {
    let (config, backend, timeout) = setup(runs)?;
    println!(
        "bundle: {}\nruns: {runs} of each, alternating\n",
        bundle.display()
    );
    let root = tempfile::Builder::new()
        .prefix("husk-bench-root-")
        .tempdir()?;
    let [mut run_total, mut hello] = std::array::from_fn(|_| Samples::default());
    for i in 0..runs {
        let t0 = Instant::now();
        let status = Command::new(&husk)
            .arg("--root")
            .arg(root.path())
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(format!("husk-bench-{i}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("husk run {i}: {status}");
        }
        run_total.0.push(t0.elapsed());

        let state = tempfile::Builder::new().prefix("husk-bench-").tempdir()?;
        let shared = state.path().join("shared");
        std::fs::create_dir(&shared)?;
        let vm = VmConfig::from_config(&config, state.path(), &shared);
        let guest =
            Guest::boot(&backend, &vm, timeout).with_context(|| format!("husk boot {i}"))?;
        hello.0.push(guest.timings.hello);
        guest.shutdown(timeout)?;
        eprint!(".");
    }
    eprintln!();
    println!("{:<34}{:>10}{:>10}{:>10}", "ms", "min", "median", "max");
    println!("{}", run_total.row("husk run (create..delete)"));
    println!("{}", hello.row("boot to agent hello"));
    let extra = run_total.median().as_secs_f64() - hello.median().as_secs_f64();
    println!(
        "\nhusk run beyond the boot (median - median): {:.1} ms",
        extra * 1000.0
    );
    Ok(())
}

fn bench_boot(runs: usize, bare_initramfs: PathBuf) -> Result<()> {
    let (config, backend, timeout) = setup(runs)?;
    println!(
        "kernel: {}\nruns: {runs} of each, alternating\n",
        config.kernel.display()
    );

    let [mut launch, mut hello, mut answered, mut gone, mut bare_ready, mut bare_gone] =
        std::array::from_fn(|_| Samples::default());
    for run in 0..runs {
        let state = tempfile::Builder::new().prefix("husk-bench-").tempdir()?;
        let shared = state.path().join("shared");
        std::fs::create_dir(&shared)?;
        let vm = VmConfig::from_config(&config, state.path(), &shared);

        let t0 = Instant::now();
        let mut guest =
            Guest::boot(&backend, &vm, timeout).with_context(|| format!("husk boot {run}"))?;
        launch.0.push(guest.timings.launch);
        hello.0.push(guest.timings.hello);
        match guest.agent().request(Request::Ping, timeout)? {
            Response::Pong { .. } => answered.0.push(t0.elapsed()),
            other => bail!("ping answered with {other:?}"),
        }
        guest.shutdown(timeout)?;
        gone.0.push(t0.elapsed());

        let bare = VmConfig {
            initramfs: bare_initramfs.clone(),
            ..vm
        };
        let (ready, exit) =
            bare_boot(&backend, &bare, timeout).with_context(|| format!("baseline boot {run}"))?;
        bare_ready.0.push(ready);
        bare_gone.0.push(exit);
        eprint!(".");
    }
    eprintln!();
    println!(
        "{:<34}{:>10}{:>10}{:>10}",
        "phase (ms from launch)", "min", "median", "max"
    );
    println!("{}", launch.row("husk: VMM + helpers launched"));
    println!("{}", hello.row("husk: agent hello"));
    println!("{}", answered.row("husk: first request answered"));
    println!("{}", gone.row("husk: VM gone"));
    println!("{}", bare_ready.row("baseline: bare init ready"));
    println!("{}", bare_gone.row("baseline: VM gone"));
    let overhead = hello.median().as_secs_f64() - bare_ready.median().as_secs_f64();
    println!(
        "\nhusk overhead to agent hello (median - baseline median): {:.1} ms",
        overhead * 1000.0
    );
    Ok(())
}

/// One baseline boot: plain QEMU, same machine and kernel, the bare init,
/// console on stdout. Returns (init ready, VM gone) from launch.
fn bare_boot(
    backend: &QemuBackend,
    vm: &VmConfig,
    timeout: Duration,
) -> Result<(Duration, Duration)> {
    let qemu = backend.qemu_binary()?;
    let mut cmdline = vm.base_cmdline();
    cmdline.push("husk.backend=bare".into());
    let t0 = Instant::now();
    let mut child = Command::new(qemu)
        .args(backend.machine_args(vm, false, &cmdline))
        .args(["-serial", "stdio"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let mut ready = None;
    for line in BufReader::new(stdout).lines() {
        if line?.contains(BARE_READY) {
            ready = Some(t0.elapsed());
            break;
        }
        if t0.elapsed() > timeout {
            break;
        }
    }
    let status = child.wait()?;
    let gone = t0.elapsed();
    match ready {
        Some(ready) if status.success() => Ok((ready, gone)),
        Some(_) => bail!("baseline qemu {status}"),
        None => bail!("the bare init never printed {BARE_READY} (qemu {status})"),
    }
}

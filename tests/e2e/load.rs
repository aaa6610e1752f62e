//! Load: many containers at once, each with its own output and exit code.
//! 50 `husk run`s started together, and 20 concurrent `podman run --rm`
//! through husk, each printing its own 1 MiB and exiting with its own code:
//! every byte and every code must arrive, the host's memory stays within
//! what the VMs themselves are given, and nothing is left. Each test
//! prints its wall time and the host's peak memory growth.
//!
//! Under TCG (this project's PVM hosts) fifty guests booting on two cores
//! take minutes, so the VMs get a boot timeout of their own.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use husk_tests::podman::Podman;
use husk_tests::{cli_or_skip, env_or_skip, husk_binary, skip};

/// Concurrent `husk run`s.
const RUNS: usize = 50;
/// Concurrent `podman run`s.
const PODMAN_RUNS: usize = 20;
/// What each container prints.
const BYTES: usize = 1 << 20;
/// The boot timeout under load.
const BOOT_TIMEOUT_MS: u64 = 600_000;
/// What one VM may add to the host beyond its guest memory (its monitor,
/// VMM, helpers and their buffers) before the growth counts as unbounded.
const HOST_OVERHEAD_PER_VM_MIB: u64 = 160;

/// The workload of container `i`: its own text, `BYTES` of it, and its own
/// exit code.
fn workload(i: usize) -> String {
    format!("yes husk-load-{i} | head -c {BYTES}; exit {}", code(i))
}

fn code(i: usize) -> i32 {
    (i % 200) as i32 + 1
}

fn expected(i: usize) -> Vec<u8> {
    let line = format!("husk-load-{i}\n");
    line.as_bytes()
        .iter()
        .copied()
        .cycle()
        .take(BYTES)
        .collect()
}

/// The test config with a boot timeout for a loaded host; its path.
fn loaded_config(dir: &Path, base: &Path) -> PathBuf {
    let text = std::fs::read_to_string(base).expect("reading the test config");
    let kept: String = text
        .lines()
        .filter(|line| !line.trim_start().starts_with("boot_timeout_ms"))
        .map(|line| format!("{line}\n"))
        .collect();
    let path = dir.join("load-config.toml");
    std::fs::write(
        &path,
        format!("{kept}boot_timeout_ms = {BOOT_TIMEOUT_MS}\n"),
    )
    .unwrap();
    path
}

/// Used host memory (MemTotal - MemAvailable), in MiB.
fn used_mib() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    field("MemTotal:").saturating_sub(field("MemAvailable:")) / 1024
}

/// Samples used host memory until dropped; its peak.
struct PeakMemory {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl PeakMemory {
    fn start() -> PeakMemory {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut peak = used_mib();
            while !flag.load(Ordering::Relaxed) {
                peak = peak.max(used_mib());
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        });
        PeakMemory {
            stop,
            thread: Some(thread),
        }
    }

    fn peak(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// A started container command and the threads reading its output.
struct Running {
    child: Child,
    stdout: std::thread::JoinHandle<Vec<u8>>,
    stderr: std::thread::JoinHandle<Vec<u8>>,
}

fn start(mut command: Command) -> Running {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting a container");
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = reader(Box::new(child.stdout.take().unwrap()));
    let stderr = reader(Box::new(child.stderr.take().unwrap()));
    Running {
        child,
        stdout,
        stderr,
    }
}

/// Waits for every container; what went wrong with each.
fn check_all(running: Vec<Running>) -> Vec<String> {
    let mut failures = Vec::new();
    for (i, mut run) in running.into_iter().enumerate() {
        let status = run.child.wait().expect("waiting for a container");
        let stdout = run.stdout.join().unwrap();
        let stderr = run.stderr.join().unwrap();
        if status.code() != Some(code(i)) {
            failures.push(format!(
                "{i}: exit {:?}, not {}: {}",
                status.code(),
                code(i),
                String::from_utf8_lossy(&stderr)
            ));
        }
        if stdout != expected(i) {
            failures.push(format!(
                "{i}: {} bytes of output differ from the {BYTES} printed",
                stdout.len()
            ));
        }
    }
    failures
}

/// Prints what the load took; a failure if the host memory grew past
/// what `vms` VMs of `memory_mib` are given, plus their overhead.
fn memory_within(
    what: &str,
    started: Instant,
    (before, peak): (u64, u64),
    vms: usize,
    memory_mib: u64,
) -> Option<String> {
    let growth = peak.saturating_sub(before);
    let bound = vms as u64 * (memory_mib + HOST_OVERHEAD_PER_VM_MIB);
    eprintln!(
        "load: {what}: {:.1} s, host memory peak +{growth} MiB ({:.1} MiB per VM, bound {bound} MiB)",
        started.elapsed().as_secs_f64(),
        growth as f64 / vms as f64
    );
    (growth > bound).then(|| format!("{what}: host memory grew {growth} MiB, past {bound} MiB"))
}

#[test]
fn fifty_husk_runs_at_once_keep_every_byte_and_code() {
    let cli = cli_or_skip!();
    let memory_mib = env_or_skip!().config.memory_mib;
    let configs = tempfile::tempdir().unwrap();
    let config = loaded_config(configs.path(), &cli.config);
    let bundles: Vec<_> = (0..RUNS)
        .map(|i| cli.bundle(&["sh", "-c", &workload(i)]))
        .collect();
    let before = used_mib();
    let peak = PeakMemory::start();
    let started = Instant::now();

    let running: Vec<Running> = bundles
        .iter()
        .enumerate()
        .map(|(i, bundle)| {
            let mut command = cli.husk(["run", "--bundle", &bundle.path(), &format!("load-{i}")]);
            command.env("HUSK_CONFIG", &config);
            start(command)
        })
        .collect();
    let mut failures = check_all(running);

    failures.extend(memory_within(
        &format!("{RUNS} husk runs"),
        started,
        (before, peak.peak()),
        RUNS,
        memory_mib.into(),
    ));
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(
        cli.ids().is_empty(),
        "runs left containers: {:?}",
        cli.ids()
    );
}

#[test]
fn twenty_podman_runs_at_once_keep_every_byte_and_code() {
    let env = env_or_skip!();
    let husk = match husk_binary().and_then(|p| p.canonicalize().map_err(|e| e.to_string())) {
        Ok(husk) => husk,
        Err(why) => skip!("{why}"),
    };
    let podman = match Podman::setup() {
        Ok(podman) => podman,
        Err(why) => skip!("{why}"),
    };
    let config = loaded_config(podman.dir(), &env.config_path.canonicalize().unwrap());
    // podman and conmon start the runtime with an environment of their own.
    let runtime = podman
        .wrap_runtime(&husk, &[("HUSK_CONFIG", config.as_os_str())])
        .expect("writing the husk wrapper");
    let image = podman.image();
    let before = used_mib();
    let peak = PeakMemory::start();
    let started = Instant::now();

    let running: Vec<Running> = (0..PODMAN_RUNS)
        .map(|i| {
            let mut command = podman.command(&runtime);
            command
                .args(["run", "--rm", "--network", "none", image])
                .args(["sh", "-c", &workload(i)]);
            start(command)
        })
        .collect();
    let mut failures = check_all(running);

    failures.extend(memory_within(
        &format!("{PODMAN_RUNS} podman runs"),
        started,
        (before, peak.peak()),
        PODMAN_RUNS,
        env.config.memory_mib.into(),
    ));
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(
        podman.containers().unwrap(),
        Vec::<String>::new(),
        "--rm left containers"
    );
    podman.cleanup().unwrap();
}

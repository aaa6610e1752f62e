//! `husk-cri-bench`: the pod benchmark behind `hack/bench-pod`, through a
//! test-owned containerd's CRI (the CRI suite's fixture), husk and runc in
//! one run:
//!
//! - start: RunPodSandbox + CreateContainer + StartContainer until the
//!   container's first line is in its CRI log, alternating handlers, min /
//!   median / max of `--runs`;
//! - memory: `--pods` idle pods of each handler at once; each pod's host
//!   memory is the PSS of every process under its shim (the shim, and for
//!   husk the VMM and its helpers with the guest memory they map, for runc
//!   the pause and container processes), min / median / max per pod, and
//!   the median of each program's share.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use husk_tests::cri::fixture::CriFixture;
use husk_tests::cri::leftovers::{descendants_of, shims_of};
use husk_tests::cri::pod::{container_config, pod_config, TestPod};
use husk_tests::cri::Handler;

/// How long the first output may take.
const FIRST_OUTPUT: Duration = Duration::from_secs(120);
/// How long idle pods settle before they are measured.
const SETTLE: Duration = Duration::from_secs(5);

fn main() {
    let mut runs = 5usize;
    let mut pods = 10usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().and_then(|v| v.parse().ok());
        match (arg.as_str(), value) {
            ("--runs", Some(v)) => runs = v,
            ("--pods", Some(v)) => pods = v,
            _ => {
                eprintln!("usage: husk-cri-bench [--runs N] [--pods N]");
                std::process::exit(2);
            }
        }
    }
    if let Err(e) = bench(runs.max(1), pods.max(1)) {
        eprintln!("husk-cri-bench: {e}");
        std::process::exit(1);
    }
}

fn bench(runs: usize, pods: usize) -> Result<(), String> {
    let fixture = CriFixture::setup()?;
    let result = measure(&fixture, runs, pods);
    let cleanup = fixture.cleanup();
    result?;
    cleanup
}

fn measure(fixture: &CriFixture, runs: usize, pods: usize) -> Result<(), String> {
    println!("runs: {runs} pod starts of each handler, alternating; {pods} idle pods of each\n");
    let handlers = [Handler::Runc, Handler::Husk];
    let mut starts: [Vec<f64>; 2] = Default::default();
    for run in 0..runs {
        for (i, handler) in handlers.into_iter().enumerate() {
            let ms = start_to_first_output(
                fixture,
                handler,
                &format!("start-{}-{run}", handler.name()),
            )?;
            starts[i].push(ms);
        }
        eprint!(".");
    }
    eprintln!();
    let mut memory: [Vec<f64>; 2] = Default::default();
    let mut programs: [BTreeMap<String, Vec<f64>>; 2] = Default::default();
    for (i, handler) in handlers.into_iter().enumerate() {
        (memory[i], programs[i]) = idle_pods_pss(fixture, handler, pods)?;
    }
    println!("{:<44}{:>10}{:>10}{:>10}", "", "min", "median", "max");
    for (i, handler) in handlers.into_iter().enumerate() {
        println!(
            "{}",
            row(
                &format!("{}: pod start to first output (ms)", handler.name()),
                &mut starts[i]
            )
        );
    }
    for (i, handler) in handlers.into_iter().enumerate() {
        println!(
            "{}",
            row(
                &format!("{}: host PSS per idle pod (MiB)", handler.name()),
                &mut memory[i]
            )
        );
    }
    for (i, handler) in handlers.into_iter().enumerate() {
        for (program, values) in &mut programs[i] {
            println!(
                "{}",
                row(&format!("  {}: {program} (MiB)", handler.name()), values)
            );
        }
    }
    println!(
        "\nhusk / runc, medians: start {:.1} x, memory {:.1} x",
        median(&mut starts[1]) / median(&mut starts[0]),
        median(&mut memory[1]) / median(&mut memory[0])
    );
    Ok(())
}

/// One pod with one container, from RunPodSandbox to its first log line.
fn start_to_first_output(
    fixture: &CriFixture,
    handler: Handler,
    name: &str,
) -> Result<f64, String> {
    let started = Instant::now();
    let config = pod_config(fixture, name)?;
    let log = std::path::Path::new(&config.log_directory).join("c-0.log");
    let pod = TestPod::run(fixture, handler, config)?;
    let id = pod.create(&container_config(
        "c",
        &["sh", "-c", "echo first-output; sleep 1000"],
    ))?;
    pod.client().start_container(&id)?;
    loop {
        if std::fs::read_to_string(&log).is_ok_and(|t| t.contains("first-output")) {
            break;
        }
        if started.elapsed() > FIRST_OUTPUT {
            return Err(format!("{name}: no output in {FIRST_OUTPUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    pod.remove()?;
    Ok(ms)
}

/// Per program, the PSS it holds in each pod (MiB).
type ByProgram = BTreeMap<String, Vec<f64>>;

/// Runs `count` idle pods of `handler` at once; the PSS of each, and of
/// each program in each, MiB.
fn idle_pods_pss(
    fixture: &CriFixture,
    handler: Handler,
    count: usize,
) -> Result<(Vec<f64>, ByProgram), String> {
    let mut pods = Vec::new();
    for n in 0..count {
        let pod = TestPod::run(
            fixture,
            handler,
            pod_config(fixture, &format!("idle-{}-{n}", handler.name()))?,
        )?;
        pod.start(&container_config("c", &["sleep", "1000"]))?;
        pods.push(pod);
    }
    std::thread::sleep(SETTLE);
    let mut pss = Vec::new();
    let mut programs = ByProgram::new();
    for pod in &pods {
        let shims = shims_of(handler, &pod.id);
        if shims.is_empty() {
            return Err(format!("no shim serves the pod {}", pod.id));
        }
        let mut by_program = BTreeMap::<String, u64>::new();
        for shim in shims {
            let pid = shim.pid;
            for process in std::iter::once(shim).chain(descendants_of(pid)) {
                *by_program.entry(process.program().to_string()).or_default() +=
                    pss_kib(process.pid);
            }
        }
        pss.push(by_program.values().sum::<u64>() as f64 / 1024.0);
        for (program, kib) in by_program {
            programs
                .entry(program)
                .or_default()
                .push(kib as f64 / 1024.0);
        }
    }
    for pod in pods {
        pod.remove()?;
    }
    Ok((pss, programs))
}

/// A process's proportional set size, KiB (0 once it is gone).
fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn row(name: &str, values: &mut [f64]) -> String {
    let mid = median(values);
    format!(
        "{name:<44}{:>10.1}{:>10.1}{:>10.1}",
        values[0],
        mid,
        values[values.len() - 1]
    )
}

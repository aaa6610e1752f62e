//! The CRI suite: kubelet's side of a node, played against a private
//! containerd 1.6 with its CRI plugin (`husk_tests::cri`), once per
//! runtime handler. runc (containerd's own `io.containerd.runc.v2` shim)
//! is the baseline; husk (`containerd-shim-husk-v2`, one VM per pod) must
//! show the same through CRI, and one VM per pod where runc shows host
//! processes.
//!
//! Each handler is one test that starts a fixture, runs every scenario,
//! reports each with its time, cleans up, and fails listing every scenario
//! that failed. The idle exec (two minutes by the requirement) runs on a
//! thread of its own beside the others. The handlers take turns: husk's
//! VMs share two cores.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use husk_tests::cri::fixture::CriFixture;
use husk_tests::cri::{husk_shim_path, Handler};
use husk_tests::{or_skip, skip};

#[path = "cri/lifecycle.rs"]
mod lifecycle;
#[path = "cri/network.rs"]
mod network;
#[path = "cri/streaming.rs"]
mod streaming;
#[path = "cri/support.rs"]
mod support;
#[path = "cri/teardown.rs"]
mod teardown;

/// One handler at a time.
static HANDLERS: Mutex<()> = Mutex::new(());

/// A scenario: runs against the fixture with the handler under test.
type Scenario = fn(&CriFixture, Handler) -> Result<(), String>;

/// The scenarios run one after the other.
const SCENARIOS: &[(&str, Scenario)] = &[
    ("pod-with-two-containers", network::pod_with_two_containers),
    (
        "port-forward-and-host-port",
        network::port_forward_and_host_port,
    ),
    (
        "exec-sync-and-streaming-exec",
        streaming::exec_sync_and_streaming_exec,
    ),
    (
        "attach-to-a-tty-container",
        streaming::attach_to_a_tty_container,
    ),
    ("container-logs", lifecycle::container_logs),
    (
        "restart-in-a-living-pod",
        lifecycle::restart_in_a_living_pod,
    ),
    ("container-stats", lifecycle::container_stats),
    (
        "stop-and-remove-leave-nothing",
        teardown::stop_and_remove_leave_nothing,
    ),
    (
        "bad-input-is-refused-cleanly",
        teardown::bad_input_is_refused_cleanly,
    ),
    (
        "a-killed-shim-is-cleaned-up",
        teardown::a_killed_shim_is_cleaned_up,
    ),
];

/// The scenarios that mostly wait: each on a thread of its own while the
/// others run.
const BESIDE: &[(&str, Scenario)] = &[("idle-interactive-exec", streaming::idle_interactive_exec)];

/// The variable naming the scenarios to run (comma-separated; first-pod
/// always runs), for a host where only some can (the KVM test host runs
/// the builtin backend's pod scenarios).
const ONLY_ENV: &str = "HUSK_CRI_SCENARIOS";

/// The scenarios of `list` that [`ONLY_ENV`] selects.
fn selected(list: &'static [(&'static str, Scenario)]) -> Vec<(&'static str, Scenario)> {
    let Ok(only) = std::env::var(ONLY_ENV) else {
        return list.to_vec();
    };
    let names: Vec<&str> = only
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    for name in &names {
        let known = SCENARIOS.iter().chain(BESIDE).any(|(n, _)| n == name);
        assert!(
            known || *name == "first-pod",
            "${ONLY_ENV}: no scenario {name:?}"
        );
    }
    list.iter()
        .filter(|(n, _)| names.contains(n))
        .copied()
        .collect()
}

#[test]
fn cri_with_runc() {
    run_suite(Handler::Runc);
}

#[test]
fn cri_with_husk() {
    let shim = husk_shim_path();
    if !shim.is_file() {
        skip!(
            "containerd-shim-husk-v2 is not built yet ({} does not exist); \
             the same scenarios run against it once it is",
            shim.display()
        );
    }
    if std::env::var_os(husk_tests::TEST_CONFIG_ENV).is_none() {
        skip!(
            "${} is not set: the husk shim needs the test config",
            husk_tests::TEST_CONFIG_ENV
        );
    }
    run_suite(Handler::Husk);
}

/// What one scenario did.
struct Report {
    name: &'static str,
    took: Duration,
    outcome: Result<(), String>,
}

fn timed(name: &'static str, scenario: Scenario, fixture: &CriFixture, handler: Handler) -> Report {
    let started = Instant::now();
    let outcome = scenario(fixture, handler);
    let report = Report {
        name,
        took: started.elapsed(),
        outcome,
    };
    print_report(handler, &report, fixture);
    report
}

fn print_report(handler: Handler, report: &Report, fixture: &CriFixture) {
    let secs = report.took.as_secs_f64();
    match &report.outcome {
        Ok(()) => eprintln!("cri/{}/{}: ok in {secs:.1} s", handler.name(), report.name),
        Err(why) => eprintln!(
            "cri/{}/{}: FAILED in {secs:.1} s: {why}\ncontainerd's log ends:\n{}",
            handler.name(),
            report.name,
            fixture.log_tail()
        ),
    }
}

fn run_suite(handler: Handler) {
    let _turn = HANDLERS.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let fixture = or_skip!(CriFixture::setup());
    eprintln!(
        "cri/{}: containerd with CRI up in {:.1} s",
        handler.name(),
        started.elapsed().as_secs_f64()
    );
    // A handler that cannot run one pod would fail every scenario, each
    // after CRI's timeouts: say so once instead.
    let first = timed("first-pod", support::first_pod, &fixture, handler);
    if let Err(why) = first.outcome {
        let cleanup = fixture.cleanup();
        panic!(
            "the {} handler cannot run a pod, so no scenario ran: {why}\ncleanup: {cleanup:?}",
            handler.name()
        );
    }
    let mut reports = vec![first];
    std::thread::scope(|scope| {
        let fixture = &fixture;
        let beside: Vec<_> = selected(BESIDE)
            .into_iter()
            .map(|(name, scenario)| {
                let handle = scope.spawn(move || timed(name, scenario, fixture, handler));
                (name, handle)
            })
            .collect();
        for (name, scenario) in selected(SCENARIOS) {
            reports.push(timed(name, scenario, fixture, handler));
        }
        for (name, handle) in beside {
            reports.push(handle.join().unwrap_or_else(|_| Report {
                name,
                took: Duration::ZERO,
                outcome: Err("the scenario panicked".into()),
            }));
        }
    });
    let cleanup = fixture.cleanup();
    eprintln!(
        "cri/{}: {} scenarios in {:.1} s",
        handler.name(),
        reports.len(),
        started.elapsed().as_secs_f64()
    );
    let mut failures: Vec<String> = reports
        .into_iter()
        .filter_map(|r| r.outcome.err().map(|why| format!("{}: {why}", r.name)))
        .collect();
    if let Err(e) = cleanup {
        failures.push(e);
    }
    assert!(
        failures.is_empty(),
        "{} CRI scenario(s) failed with the {} handler:\n{}",
        failures.len(),
        handler.name(),
        failures.join("\n")
    );
}

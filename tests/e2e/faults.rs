//! The fault matrix: `kill -9` of each host process of a container's VM
//! (the VMM, virtiofsd, the vsock backend where there is one, the monitor)
//! in each state it can be in (created, running, during an exec), of
//! `husk create` midway through its steps and of `husk delete` midway, and
//! the guest's kernel panicking. The container then reads `stopped`, its
//! monitor (what an engine waits on) ends, what waited on it (`husk run`, an
//! exec) exits 255 as runc's does when it loses its container, `delete
//! --force` succeeds, and no process, mount or state is left.

use std::process::Stdio;
use std::time::{Duration, Instant};

use husk_tests::cli::Cli;
use husk_tests::cli_or_skip;
use husk_tests::cri::leftovers::descendants_of;

/// How long a fault may take to show.
const TIMEOUT: Duration = Duration::from_secs(60);

/// A host process of a container's VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    Vmm,
    Virtiofsd,
    VsockBackend,
    Monitor,
}

/// The state the container is in when its process is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    Created,
    Running,
}

/// The victims this backend has.
fn victims() -> Vec<Victim> {
    let builtin = husk_tests::TestEnv::load()
        .map(|env| env.hypervisor.name().starts_with("builtin"))
        .unwrap_or(false);
    let mut victims = vec![Victim::Vmm, Victim::Virtiofsd, Victim::Monitor];
    if !builtin {
        victims.push(Victim::VsockBackend);
    }
    victims
}

/// The pid of `victim` for the container whose monitor is `monitor`.
fn pid_of(victim: Victim, monitor: u32) -> Option<u32> {
    let programs: &[&str] = match victim {
        Victim::Monitor => return Some(monitor),
        Victim::Vmm => &["husk-vmm", "qemu-system-x86_64"],
        Victim::Virtiofsd => &["virtiofsd"],
        Victim::VsockBackend => &["vhost-device-vsock"],
    };
    let found = descendants_of(monitor)
        .into_iter()
        .filter(|p| programs.contains(&p.program()))
        .map(|p| p.pid)
        .min();
    found
}

fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    condition()
}

fn status(cli: &Cli, id: &str) -> String {
    let out = cli.output(["state", id]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|state| state["status"].as_str().map(String::from))
        .unwrap_or_else(|| format!("no state: {}", String::from_utf8_lossy(&out.stderr)))
}

/// husk with `args` started in the background, its stdio on /dev/null.
fn spawned<const N: usize>(cli: &Cli, args: [&str; N]) -> std::process::Child {
    cli.husk(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting husk {args:?}: {e}"))
}

fn kill9(pid: u32) {
    // SAFETY: kill takes no pointers; the pid is the test's own.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

/// One cell of the matrix; the failures it saw.
fn one_fault(cli: &Cli, victim: Victim, when: When) -> Vec<String> {
    let id = format!("{victim:?}-{when:?}").to_lowercase();
    let bundle = cli.bundle(&["sleep", "1000"]);
    let mut failures = Vec::new();
    assert!(
        cli.detached(["create", "--bundle", &bundle.path(), &id]),
        "{id}: create"
    );
    if when == When::Running {
        assert!(cli.output(["start", &id]).status.success(), "{id}: start");
    }
    let monitor = cli.state(&id)["pid"].as_i64().unwrap() as u32;
    match pid_of(victim, monitor) {
        Some(pid) => kill9(pid),
        None => failures.push(format!("{id}: no {victim:?} under monitor {monitor}")),
    }
    failures.extend(ends_stopped_and_deletes(cli, &id, monitor));
    failures
}

/// `delete --force` of `id`; the failure, named by `label`, if it fails.
fn delete_force(cli: &Cli, id: &str, label: &str) -> Option<String> {
    let delete = cli.output(["delete", "--force", id]);
    (!delete.status.success()).then(|| {
        format!(
            "{label}: delete --force: {}",
            String::from_utf8_lossy(&delete.stderr)
        )
    })
}

/// What is left of container `id` after its delete: processes naming the
/// root on their command line (the monitor, the VM's processes), mounts
/// under the root, its state directory.
fn left_behind(cli: &Cli, id: &str) -> Vec<String> {
    let root = cli.root.path();
    let mut left = Vec::new();
    let processes = husk_tests::helpers_left(root);
    if !processes.is_empty() {
        left.push(format!("{id}: processes left: {processes:?}"));
    }
    let needle = root.to_string_lossy().into_owned();
    let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(&needle))
        .map(String::from)
        .collect();
    if !mounts.is_empty() {
        left.push(format!("{id}: mounts left: {mounts:#?}"));
    }
    let dir = root.join(id);
    if dir.exists() {
        left.push(format!("{id}: {} is left", dir.display()));
    }
    left
}

/// Waits for `child` up to [`TIMEOUT`] (killing it past that); its exit code.
fn wait_exit(child: &mut std::process::Child) -> Option<i32> {
    if !eventually(|| child.try_wait().ok().flatten().is_some()) {
        let _ = child.kill();
    }
    child.wait().ok().and_then(|status| status.code())
}

#[test]
fn a_killed_vm_process_leaves_a_stopped_container_that_delete_removes() {
    let cli = cli_or_skip!();
    let mut failures = Vec::new();

    for victim in victims() {
        for when in [When::Created, When::Running] {
            failures.extend(one_fault(&cli, victim, when));
        }
    }

    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn run_exits_255_when_its_vm_loses_a_process() {
    let cli = cli_or_skip!();
    let mut failures = Vec::new();

    for victim in victims().into_iter().filter(|&v| v != Victim::Monitor) {
        let id = format!("run-{victim:?}").to_lowercase();
        let bundle = cli.bundle(&["sleep", "1000"]);
        let mut run = spawned(&cli, ["run", "--bundle", &bundle.path(), &id]);
        let running = eventually(|| status(&cli, &id) == "running");
        let monitor = cli.state(&id)["pid"].as_i64().unwrap_or(0) as u32;
        match pid_of(victim, monitor) {
            Some(pid) if running => kill9(pid),
            _ => failures.push(format!("{id}: no running {victim:?}")),
        }
        let code = wait_exit(&mut run);
        if code != Some(255) {
            failures.push(format!("{id}: husk run ended with {code:?}, not 255"));
        }
        let _ = cli.output(["delete", "--force", &id]);
        failures.extend(left_behind(&cli, &id));
    }

    assert!(failures.is_empty(), "{failures:#?}");
}

/// Starts `bundle` as container `id`; its monitor's pid.
fn started(cli: &Cli, id: &str, bundle: &husk_tests::cli::Bundle) -> u32 {
    assert!(
        cli.detached(["create", "--bundle", &bundle.path(), id]),
        "{id}: create"
    );
    assert!(cli.output(["start", id]).status.success(), "{id}: start");
    cli.state(id)["pid"].as_i64().unwrap() as u32
}

/// The container ends as a lost one does: `stopped`, its monitor gone, and
/// `delete --force` leaves nothing.
fn ends_stopped_and_deletes(cli: &Cli, id: &str, monitor: u32) -> Vec<String> {
    let mut failures = Vec::new();
    if !eventually(|| status(cli, id) == "stopped") {
        failures.push(format!("{id}: reads {:?}, not stopped", status(cli, id)));
    }
    if !eventually(|| !husk_tests::process_exists(monitor)) {
        failures.push(format!("{id}: the monitor {monitor} still runs"));
    }
    failures.extend(delete_force(cli, id, id));
    failures.extend(left_behind(cli, id));
    failures
}

#[test]
fn an_exec_ends_with_255_when_its_vm_loses_a_process() {
    let cli = cli_or_skip!();
    let mut failures = Vec::new();

    for victim in victims() {
        let id = format!("exec-{victim:?}").to_lowercase();
        let sleeper = cli.bundle(&["sleep", "1000"]);
        let monitor = started(&cli, &id, &sleeper);
        let mut exec = spawned(&cli, ["exec", &id, "sleep", "1000"]);
        // `ps` lists the guest's processes: a header, the sleeper, the exec.
        let exec_runs = eventually(|| {
            let ps = cli.output(["ps", &id]);
            String::from_utf8_lossy(&ps.stdout).matches("sleep").count() >= 2
        });
        match pid_of(victim, monitor) {
            Some(pid) if exec_runs => kill9(pid),
            _ => failures.push(format!("{id}: no {victim:?} with a running exec")),
        }
        let code = wait_exit(&mut exec);
        if code != Some(255) {
            failures.push(format!("{id}: husk exec ended with {code:?}, not 255"));
        }
        failures.extend(ends_stopped_and_deletes(&cli, &id, monitor));
    }

    assert!(failures.is_empty(), "{failures:#?}");
}

/// How far `husk create` got when it is killed.
#[derive(Debug, Clone, Copy)]
enum CreateStep {
    /// The state directory holds state.json.
    StateWritten,
    /// The monitor runs (its pid is in state.json).
    MonitorStarted,
    /// The monitor started the VM.
    VmStarted,
}

/// The monitor's pid once state.json names it.
fn recorded_monitor(cli: &Cli, id: &str) -> Option<u32> {
    let text = std::fs::read(cli.root.path().join(id).join("state.json")).ok()?;
    let state: serde_json::Value = serde_json::from_slice(&text).ok()?;
    Some(state["pid"].as_i64().filter(|&pid| pid > 0)? as u32)
}

#[test]
fn a_create_killed_midway_leaves_what_delete_removes() {
    let cli = cli_or_skip!();
    let mut failures = Vec::new();

    for step in [
        CreateStep::StateWritten,
        CreateStep::MonitorStarted,
        CreateStep::VmStarted,
    ] {
        let id = format!("create-{step:?}").to_lowercase();
        let bundle = cli.bundle(&["sleep", "1000"]);
        let mut create = spawned(&cli, ["create", "--bundle", &bundle.path(), &id]);
        let state = cli.root.path().join(&id).join("state.json");
        let reached = |cli: &Cli| match step {
            CreateStep::StateWritten => state.exists(),
            CreateStep::MonitorStarted => recorded_monitor(cli, &id).is_some(),
            CreateStep::VmStarted => recorded_monitor(cli, &id)
                .and_then(|monitor| pid_of(Victim::Vmm, monitor))
                .is_some(),
        };
        let deadline = Instant::now() + TIMEOUT;
        while !reached(&cli) && create.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        match create.try_wait() {
            Ok(None) if reached(&cli) => kill9(create.id()),
            other => failures.push(format!("{id}: create ended ({other:?}) before {step:?}")),
        }
        let _ = create.wait();

        // The monitor goes on or gives up; either way the container is
        // not running and the next command finds what is left.
        let seen = status(&cli, &id);
        if seen == "running" {
            failures.push(format!("{id}: reads running after a killed create"));
        }
        failures.extend(delete_force(&cli, &id, &format!("{id} ({seen})")));
        failures.extend(left_behind(&cli, &id));
    }

    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn a_delete_killed_midway_is_finished_by_the_next() {
    let cli = cli_or_skip!();
    let mut failures = Vec::new();
    // A poststop hook that takes a while keeps delete midway (the VM is
    // gone, the state not yet) long enough to kill it there.
    let slow_poststop = serde_json::json!([{"path": "/bin/sh", "args": ["sh", "-c", "sleep 2"]}]);

    for (name, after) in [
        ("stopping-the-vm", Duration::from_millis(50)),
        ("in-poststop", Duration::from_millis(1000)),
    ] {
        let id = format!("delete-{name}");
        let mut bundle = cli.bundle(&["sleep", "1000"]);
        bundle.config["hooks"]["poststop"] = slow_poststop.clone();
        bundle.write();
        let monitor = started(&cli, &id, &bundle);
        let mut delete = spawned(&cli, ["delete", "--force", &id]);
        std::thread::sleep(after);
        match delete.try_wait() {
            Ok(None) => kill9(delete.id()),
            other => failures.push(format!("{id}: delete ended ({other:?}) before {after:?}")),
        }
        let _ = delete.wait();

        // Killed before it reached the monitor, delete leaves the container
        // running (a slow host gets there); either way the next one finishes.
        let seen = status(&cli, &id);
        if seen != "running" && seen != "stopped" {
            failures.push(format!("{id}: reads {seen:?} after a killed delete"));
        }
        failures.extend(delete_force(&cli, &id, &format!("{id} ({seen})")));
        if !eventually(|| !husk_tests::process_exists(monitor)) {
            failures.push(format!("{id}: the monitor {monitor} still runs"));
        }
        failures.extend(left_behind(&cli, &id));
    }

    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn a_guest_kernel_panic_stops_the_container_with_255() {
    let cli = cli_or_skip!();
    let mut failures = Vec::new();
    // `c` to sysrq-trigger crashes the guest kernel; it reboots at once
    // (panic=-1), which ends the VM. If the write fails, the exit code
    // says so.
    let crash = "echo c > /proc/sysrq-trigger || exit 3; sleep 1000";

    let writable_sysrq = |args: &[&str]| {
        let mut bundle = cli.bundle(args);
        bundle.config["linux"]["readonlyPaths"] = serde_json::json!([]);
        bundle.write();
        bundle
    };

    let bundle = writable_sysrq(&["sh", "-c", crash]);
    let mut run = spawned(&cli, ["run", "--bundle", &bundle.path(), "panic-in-run"]);
    let code = wait_exit(&mut run);
    if code != Some(255) {
        failures.push(format!(
            "panic-in-run: husk run ended with {code:?}, not 255"
        ));
    }
    let _ = cli.output(["delete", "--force", "panic-in-run"]);
    failures.extend(left_behind(&cli, "panic-in-run"));

    let id = "panic-in-exec";
    let sleeper = writable_sysrq(&["sleep", "1000"]);
    let monitor = started(&cli, id, &sleeper);
    let exec = cli.output(["exec", id, "sh", "-c", crash]);
    if exec.status.code() != Some(255) {
        failures.push(format!(
            "{id}: husk exec ended with {:?}, not 255: {}",
            exec.status.code(),
            String::from_utf8_lossy(&exec.stderr)
        ));
    }
    failures.extend(ends_stopped_and_deletes(&cli, id, monitor));

    assert!(failures.is_empty(), "{failures:#?}");
}

//! Containers coming and going in a living pod: logs in CRI's format, a
//! crashed container's exit code, removal and re-creation under the same
//! name, kubelet's next attempt, StopContainer's escalation, and the stats
//! kubelet's eviction and `kubectl top` read.

use std::path::Path;
use std::time::{Duration, Instant};

use husk_tests::cri::fixture::CriFixture;
use husk_tests::cri::logs;
use husk_tests::cri::pod::{
    container_config, pod_config, wait_container_state, TestPod, CONTAINER_TIMEOUT,
};
use husk_tests::cri::Handler;
use k8s_cri::v1::{ContainerState, ContainerStats};

use super::support::{ensure, exec_ok, exec_until, expect_eq};

/// A container writes lines to stdout and stderr, and one line longer than
/// containerd's 16 KiB limit: its log file has every line, each entry
/// `TIMESTAMP STREAM F|P CONTENT`, the long line cut into `P` entries.
pub fn container_logs(fixture: &CriFixture, handler: Handler) -> Result<(), String> {
    let pod = TestPod::run(fixture, handler, pod_config(fixture, "logs")?)?;
    let script = "echo out-1; echo err-1 >&2; echo out-2; \
                  head -c 20000 /dev/zero | tr '\\0' x; echo; echo done; exec sleep 3600";
    let id = pod.start(&container_config("logger", &["sh", "-c", script]))?;
    let status = fixture
        .client()
        .container_status(&id, false)?
        .status
        .ok_or("no container status")?;
    let log_dir = pod.config.log_directory.clone();
    expect_eq(
        "the log path",
        Path::new(&status.log_path),
        Path::new(&log_dir).join("logger-0.log").as_path(),
    )?;
    let deadline = Instant::now() + CONTAINER_TIMEOUT;
    let entries = loop {
        let entries = logs::read(Path::new(&status.log_path)).unwrap_or_default();
        if logs::lines_of(&entries, "stdout")
            .iter()
            .any(|l| l == "done")
        {
            break entries;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the log has no \"done\" after {CONTAINER_TIMEOUT:?}: {entries:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let long = "x".repeat(20000);
    expect_eq(
        "the stdout lines",
        logs::lines_of(&entries, "stdout"),
        vec!["out-1".to_string(), "out-2".into(), long, "done".into()],
    )?;
    expect_eq(
        "the stderr lines",
        logs::lines_of(&entries, "stderr"),
        vec!["err-1".to_string()],
    )?;
    ensure(entries.iter().any(|e| !e.full), || {
        "the 20000-byte line was not cut into partial (P) entries".into()
    })?;
    pod.remove()
}

/// In a pod whose other container keeps running: a container that exits
/// 42 is reported EXITED with 42 and reason `Error`; it is removed and
/// created again under the same name, runs and answers; one that exits 0
/// is `Completed` and its next attempt is created beside it (kubelet's
/// way); StopContainer kills a process that ignores SIGTERM (137).
pub fn restart_in_a_living_pod(fixture: &CriFixture, handler: Handler) -> Result<(), String> {
    let pod = TestPod::run(fixture, handler, pod_config(fixture, "restart")?)?;
    let client = fixture.client();
    let keeper = pod.start(&container_config("keeper", &["sleep", "3600"]))?;

    let crash = container_config("app", &["sh", "-c", "echo attempt-one; exit 42"]);
    let crashed = pod.run_to_exit(&crash)?;
    expect_eq("the crashed container's exit code", crashed.exit_code, 42)?;
    expect_eq("its reason", crashed.reason.as_str(), "Error")?;
    // containerd 1.6 stamps started_at when StartContainer returns, which
    // can be after a quick container's exit: only the creation comes first.
    ensure(
        crashed.started_at > crashed.created_at && crashed.finished_at > crashed.created_at,
        || format!("its times are out of order: {crashed:?}"),
    )?;
    client.remove_container(&crashed.id)?;
    let names: Vec<String> = client
        .list_containers(&pod.id)?
        .into_iter()
        .filter_map(|c| c.metadata.map(|m| m.name))
        .collect();
    ensure(!names.contains(&"app".to_string()), || {
        format!("app is still listed after its removal: {names:?}")
    })?;

    let again = container_config("app", &["sh", "-c", "echo attempt-two; exec sleep 3600"]);
    let second = pod.start(&again)?;
    ensure(second != crashed.id, || {
        "the re-created container kept its id".into()
    })?;
    expect_eq(
        "the re-created container answers",
        exec_ok(client, &second, &["echo", "alive"])?,
        "alive\n".into(),
    )?;

    let done = container_config("done", &["true"]);
    let completed = pod.run_to_exit(&done)?;
    expect_eq(
        "the completed container's exit code",
        completed.exit_code,
        0,
    )?;
    expect_eq("its reason", completed.reason.as_str(), "Completed")?;
    let mut next = done.clone();
    next.metadata.as_mut().expect("metadata").attempt = 1;
    next.log_path = "done-1.log".into();
    let next_attempt = pod.run_to_exit(&next)?;
    expect_eq("attempt 1's exit code", next_attempt.exit_code, 0)?;

    let started = Instant::now();
    client.stop_container(&second, 2)?;
    let stopped = wait_container_state(
        client,
        &second,
        ContainerState::ContainerExited,
        CONTAINER_TIMEOUT,
    )?;
    expect_eq(
        "a SIGTERM-deaf container's exit code after StopContainer",
        stopped.exit_code,
        137,
    )?;
    ensure(started.elapsed() < Duration::from_secs(30), || {
        format!(
            "StopContainer with a 2 s timeout took {:?}",
            started.elapsed()
        )
    })?;

    wait_container_state(
        client,
        &keeper,
        ContainerState::ContainerRunning,
        Duration::ZERO,
    )?;
    ensure(pod.is_ready()?, || "the pod is no longer ready".into())?;
    pod.remove()
}

/// After a busy loop, ContainerStats and ListContainerStats report the
/// container's CPU time and working set.
pub fn container_stats(fixture: &CriFixture, handler: Handler) -> Result<(), String> {
    let pod = TestPod::run(fixture, handler, pod_config(fixture, "stats")?)?;
    let script = "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; \
                  touch /tmp/done; exec sleep 3600";
    let id = pod.start(&container_config("busy", &["sh", "-c", script]))?;
    exec_until(
        fixture.client(),
        &id,
        &["sh", "-c", "test -f /tmp/done && echo done"],
        "done\n",
        Duration::from_secs(300),
    )?;
    let stats = fixture.client().container_stats(&id)?;
    check_stats("ContainerStats", &id, &stats)?;
    let listed = fixture.client().list_container_stats(&pod.id)?;
    let mine = listed
        .iter()
        .find(|s| s.attributes.as_ref().is_some_and(|a| a.id == id))
        .ok_or_else(|| format!("ListContainerStats of the pod has no {id}: {listed:?}"))?;
    check_stats("ListContainerStats", &id, mine)?;
    pod.remove()
}

fn check_stats(call: &str, id: &str, stats: &ContainerStats) -> Result<(), String> {
    let cpu = stats
        .cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds)
        .map(|v| v.value)
        .unwrap_or(0);
    let working_set = stats
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes)
        .map(|v| v.value)
        .unwrap_or(0);
    eprintln!("cri {call} of {id}: {cpu} ns of CPU, {working_set} bytes working set");
    ensure(cpu > 0 && working_set > 0, || {
        format!("{call} of {id} lacks CPU time or a working set: {stats:?}")
    })
}

//! Helpers the CRI scenarios share: exec-and-check, polling, and the one
//! check that differs by handler (what runs on the host for a pod).

use std::time::{Duration, Instant};

use husk_tests::cri::client::CriClient;
use husk_tests::cri::fixture::CriFixture;
use husk_tests::cri::leftovers::{shims_of, vmms_of};
use husk_tests::cri::pod::{container_config, pod_config, verbose_info, TestPod};
use husk_tests::cri::Handler;

/// The gate before the scenarios: one pod with one container that
/// answers an ExecSync, then removed.
pub fn first_pod(fixture: &CriFixture, handler: Handler) -> Result<(), String> {
    let pod = TestPod::run(fixture, handler, pod_config(fixture, "first")?)?;
    let id = pod.start(&container_config("hello", &["sleep", "3600"]))?;
    expect_eq(
        "ExecSync in the first pod",
        exec_ok(fixture.client(), &id, &["echo", "hello"])?,
        "hello\n".into(),
    )?;
    pod.remove()
}

/// Fails with `what` unless `got == want`.
pub fn expect_eq<T: PartialEq + std::fmt::Debug>(
    what: &str,
    got: T,
    want: T,
) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, want {want:?}"))
    }
}

/// Fails with `why` unless `condition`.
pub fn ensure(condition: bool, why: impl FnOnce() -> String) -> Result<(), String> {
    if condition {
        Ok(())
    } else {
        Err(why())
    }
}

/// `ExecSync` of `cmd` in `id` that must exit 0; its stdout.
pub fn exec_ok(client: &CriClient, id: &str, cmd: &[&str]) -> Result<String, String> {
    let out = client.exec_sync(id, cmd, 60)?;
    ensure(out.exit_code == 0, || {
        format!(
            "{cmd:?} in {id} exited {}: stdout {:?}, stderr {:?}",
            out.exit_code,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` in `id` until it exits 0 with `want` on stdout (a server
/// may still be starting); fails with the last outcome after `timeout`.
pub fn exec_until(
    client: &CriClient,
    id: &str,
    cmd: &[&str],
    want: &str,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = exec_ok(client, id, cmd);
        match &last {
            Ok(stdout) if stdout == want => return Ok(()),
            _ if Instant::now() >= deadline => {
                return Err(format!(
                    "{cmd:?} in {id} did not print {want:?} within {timeout:?}; last: {last:?}"
                ))
            }
            _ => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// Polls `check` until it returns no problem or `timeout` passes; the
/// problems of the last try.
pub fn settle<T>(timeout: Duration, mut check: impl FnMut() -> Vec<T>) -> Vec<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let problems = check();
        if problems.is_empty() || Instant::now() >= deadline {
            return problems;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// containerd's verbose info on the container `id` (`ContainerInfo`).
pub fn container_info(client: &CriClient, id: &str) -> Result<serde_json::Value, String> {
    verbose_info(&client.container_status(id, true)?.info)
}

/// The network namespace of process `pid` (`net:[inode]`).
fn netns_of_pid(pid: u64) -> Result<String, String> {
    std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .map(|link| link.to_string_lossy().into_owned())
        .map_err(|e| format!("/proc/{pid}/ns/net: {e}"))
}

/// What the host runs for a pod with `containers`: one shim for the whole
/// pod with either handler (both group by sandbox id); then with runc,
/// each container a host process in the sandbox's network namespace and
/// no VM; with husk, exactly one VMM process for the pod.
pub fn check_pod_processes(pod: &TestPod, containers: &[String]) -> Result<(), String> {
    let shims = shims_of(pod.handler, &pod.id);
    ensure(shims.len() == 1, || {
        format!(
            "expected one {} for the pod {}, found {shims:?}",
            pod.handler.shim_binary_name(),
            pod.id
        )
    })?;
    let vmms = vmms_of(pod.handler, &pod.id);
    match pod.handler {
        Handler::Runc => {
            ensure(vmms.is_empty(), || {
                format!("runc's pod runs VMMs: {vmms:?}")
            })?;
            let sandbox_pid = pod.info()?["pid"].as_u64().ok_or("no sandbox pid")?;
            let sandbox_netns = netns_of_pid(sandbox_pid)?;
            for id in containers {
                let pid = container_info(pod.client(), id)?["pid"]
                    .as_u64()
                    .ok_or_else(|| format!("no pid for the container {id}"))?;
                expect_eq(
                    &format!("the network namespace of {id} (pid {pid})"),
                    netns_of_pid(pid)?,
                    sandbox_netns.clone(),
                )?;
            }
            Ok(())
        }
        Handler::Husk => ensure(vmms.len() == 1, || {
            format!(
                "expected exactly one VMM process for the pod {}, found {vmms:?}",
                pod.id
            )
        }),
    }
}

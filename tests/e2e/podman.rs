//! Podman smoke tests: `podman run` through runc (the baseline) and through
//! husk, on a busybox image imported from the host's busybox-static.
//! Each test skips with a message when its runtime, podman, root, or (for
//! husk) the guest kernel and the `create` command are not available.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use husk_tests::podman::{mounts_under, Podman};
use husk_tests::{env_or_skip, helpers_of, husk_binary, process_exists, skip};

/// The baseline runtime.
const RUNC: &str = "/usr/bin/runc";

/// Runs a workload that prints and exits non-zero through `runtime`, checks
/// its output and exit code, and that nothing is left afterwards.
fn assert_run_prints_and_exits(podman: Podman, runtime: &Path) {
    let image = podman.image();
    let started = Instant::now();

    let out = podman
        .command(runtime)
        .args(["run", "--rm", "--network", "none", image])
        .args(["sh", "-c", "echo hi; exit 3"])
        .output()
        .expect("running podman");

    eprintln!(
        "podman --runtime {} run --rm: {:.0?}",
        runtime.display(),
        started.elapsed()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stderr: {stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hi\n",
        "stderr: {stderr}"
    );
    assert_eq!(
        podman.containers().unwrap(),
        Vec::<String>::new(),
        "--rm left a container"
    );
    podman.cleanup().unwrap();
}

#[test]
fn podman_run_prints_and_exits_with_the_workload_code_runc() {
    if !Path::new(RUNC).is_file() {
        skip!("{RUNC} is not installed (hack/install-deps.sh installs it)");
    }
    let podman = match Podman::setup() {
        Ok(podman) => podman,
        Err(why) => skip!("{why}"),
    };

    assert_run_prints_and_exits(podman, Path::new(RUNC));
}

#[test]
fn podman_cleanup_stops_containers_unmounts_and_removes_the_dir_runc() {
    if !Path::new(RUNC).is_file() {
        skip!("{RUNC} is not installed (hack/install-deps.sh installs it)");
    }
    let podman = match Podman::setup() {
        Ok(podman) => podman,
        Err(why) => skip!("{why}"),
    };
    let image = podman.image();
    let mut run = podman.command(Path::new(RUNC));
    run.args([
        "run",
        "--detach",
        "--network",
        "none",
        image,
        "sleep",
        "1000",
    ]);
    let id = String::from_utf8(run_ok(&mut run).stdout).unwrap();
    let mut inspect = podman.podman();
    inspect.args(["inspect", "--format", "{{.State.Pid}}", id.trim()]);
    let pid: u32 = String::from_utf8(run_ok(&mut inspect).stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let dir = podman.dir().to_owned();
    assert!(
        !mounts_in(&dir).is_empty(),
        "the container's rootfs is not mounted"
    );
    assert!(!helpers_of(&dir).is_empty(), "no conmon for the container");

    podman.cleanup().unwrap();

    assert!(!process_exists(pid), "the workload {pid} still runs");
    assert_eq!(helpers_of(&dir), Vec::<u32>::new(), "processes left");
    assert_eq!(mounts_in(&dir), Vec::<PathBuf>::new(), "mounts left");
    assert!(!dir.exists(), "{} left", dir.display());
}

fn run_ok(command: &mut Command) -> std::process::Output {
    husk_tests::podman::run(command).unwrap()
}

fn mounts_in(dir: &Path) -> Vec<PathBuf> {
    mounts_under(&std::fs::read_to_string("/proc/mounts").unwrap(), dir)
}

#[test]
fn podman_run_prints_and_exits_with_the_workload_code_husk() {
    let husk = match husk_binary().and_then(|p| p.canonicalize().map_err(|e| e.to_string())) {
        Ok(husk) => husk,
        Err(why) => skip!("{why}"),
    };
    match Command::new(&husk).args(["create", "--help"]).output() {
        Ok(out) if out.status.success() => {}
        _ => skip!("{} has no working `create` command yet", husk.display()),
    }
    let env = env_or_skip!();
    let config = env
        .config_path
        .canonicalize()
        .expect("canonicalizing the test config path");
    let podman = match Podman::setup() {
        Ok(podman) => podman,
        Err(why) => skip!("{why}"),
    };
    // Setting HUSK_CONFIG on the podman command would not reach husk:
    // podman and conmon start the runtime with an environment of their own.
    let runtime = podman
        .wrap_runtime(&husk, &[("HUSK_CONFIG", config.as_os_str())])
        .expect("writing the husk wrapper");

    assert_run_prints_and_exits(podman, &runtime);
}

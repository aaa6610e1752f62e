//! End-to-end tests of the runc-compatible CLI: real guests (qemu backend
//! here), real bundles with a busybox rootfs. Each checks the output, state
//! and exit codes runc gives, and that nothing is left behind.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use husk_tests::cli::Cli;
use husk_tests::cli_or_skip;
use serde_json::Value;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn wait_for_status(cli: &Cli, id: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = cli.output(["state", id]);
        let state: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let status = state["status"].as_str().unwrap_or("").to_string();
        if status == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} stayed {status}, wanted {want}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn run_relays_both_streams_and_the_exit_code() {
    let cli = cli_or_skip!();
    let bundle = cli.bundle(&["sh", "-c", "echo out; echo err >&2; exit 3"]);

    let out = cli.output(["run", "--bundle", &bundle.path(), "streams"]);

    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");
    assert_eq!(out.status.code(), Some(3));
    assert!(cli.ids().is_empty(), "run deletes the container");
}

#[test]
fn a_cpuset_runs_on_as_many_guest_cpus() {
    let cli = cli_or_skip!();
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The VM gets a vCPU per CPU of the set (as the host has); the set
    // becomes the guest's first CPUs.
    for (id, cpus) in [("cpus01", "0-1"), ("cpus1", "1")] {
        let size = if cpus == "1" { 1 } else { 2.min(host_cpus) };
        let mut bundle = cli.bundle(&["sh", "-c", "nproc; cat /sys/fs/cgroup/cpuset.cpus"]);
        bundle.config["linux"]["resources"]["cpu"] = serde_json::json!({"cpus": cpus});
        bundle.write();

        let out = cli.output(["run", "--bundle", &bundle.path(), id]);

        assert_eq!(out.status.code(), Some(0), "{id}: {}", text(&out.stderr));
        let guest_set = if size == 1 {
            "0".to_string()
        } else {
            format!("0-{}", size - 1)
        };
        assert_eq!(text(&out.stdout), format!("{size}\n{guest_set}\n"), "{id}");
    }
}

#[test]
fn linux_devices_become_nodes_in_the_container() {
    let cli = cli_or_skip!();
    // /dev/full refuses writes (ENOSPC); the zero device in its place
    // takes them.
    let script = "stat -c '%n %F %t %T %a %u %g' /dev/husk-null /dev/sub/fifo /dev/full; \
                  echo x > /dev/full && echo written";
    let mut bundle = cli.bundle(&["sh", "-c", script]);
    bundle.config["linux"]["devices"] = serde_json::json!([
        {"path": "/dev/husk-null", "type": "c", "major": 1, "minor": 3,
         "fileMode": 0o640, "uid": 1000, "gid": 1001},
        {"path": "/dev/sub/fifo", "type": "p", "fileMode": 0o600},
        // Replaces the default /dev/full with another node, as runc does.
        {"path": "/dev/full", "type": "c", "major": 1, "minor": 5}
    ]);
    bundle.write();

    let out = cli.output(["run", "--bundle", &bundle.path(), "devices"]);

    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "/dev/husk-null character special file 1 3 640 1000 1001\n\
         /dev/sub/fifo fifo 0 0 600 0 0\n\
         /dev/full character special file 1 5 666 0 0\n\
         written\n"
    );
}

#[test]
fn mount_propagation_and_rootfs_propagation_are_honoured() {
    let cli = cli_or_skip!();
    let volume = tempfile::tempdir().unwrap();
    // The optional fields of each mount's line in mountinfo: the propagation.
    let script = "for m in / /shared /slave /private /unbindable; do \
                    awk -v m=$m '$5 == m { f = \"\"; \
                      for (i = 7; $i != \"-\"; i++) f = f \" \" $i; print m f }' \
                      /proc/self/mountinfo; \
                  done";
    let mut bundle = cli.bundle(&["sh", "-c", script]);
    let mounts = bundle.config["mounts"].as_array_mut().unwrap();
    for (destination, propagation) in [
        ("/shared", "rshared"),
        ("/slave", "rslave"),
        ("/private", "rprivate"),
        ("/unbindable", "runbindable"),
    ] {
        mounts.push(serde_json::json!({
            "destination": destination, "type": "bind",
            "source": volume.path(), "options": ["rbind", propagation]
        }));
    }
    bundle.config["linux"]["rootfsPropagation"] = "rshared".into();
    bundle.write();

    let out = cli.output(["run", "--bundle", &bundle.path(), "propagation"]);

    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines: Vec<(String, String)> = text(&out.stdout)
        .lines()
        .map(|line| {
            let (mount, fields) = line.split_once(' ').unwrap_or((line, ""));
            (mount.to_string(), fields.to_string())
        })
        .collect();
    let fields = |mount: &str| -> &str {
        let found = lines.iter().find(|(m, _)| m == mount);
        found.map(|(_, f)| f.as_str()).unwrap_or("not mounted")
    };
    assert!(fields("/").contains("shared:"), "{lines:?}");
    assert!(fields("/shared").contains("shared:"), "{lines:?}");
    // Made a slave, a mount without peers (the guest's are private) has no
    // master to follow and stays private, as on any Linux host.
    assert!(!fields("/slave").contains("shared:"), "{lines:?}");
    assert_eq!(fields("/private"), "", "{lines:?}");
    assert_eq!(fields("/unbindable"), "unbindable", "{lines:?}");

    let mut bad = cli.bundle(&["true"]);
    bad.config["linux"]["rootfsPropagation"] = "sideways".into();
    bad.write();
    let out = cli.output(["create", "--bundle", &bad.path(), "badpropagation"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("linux.rootfsPropagation"),
        "{}",
        text(&out.stderr)
    );
    assert!(cli.ids().is_empty());
}

#[test]
fn stdin_eof_reaches_the_workload_and_binary_data_survives() {
    let cli = cli_or_skip!();
    let bundle = cli.bundle(&["cat"]);
    let input: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();

    let mut child = cli
        .husk(["run", "--bundle", &bundle.path(), "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = input.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();

    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(out.stdout.len(), input.len());
    assert!(out.stdout == input, "the bytes differ");
}

#[test]
fn a_workload_killed_by_a_signal_exits_128_plus_n() {
    let cli = cli_or_skip!();
    let bundle = cli.bundle(&["sleep", "1000"]);
    let run = cli
        .husk(["run", "--bundle", &bundle.path(), "sig"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_status(&cli, "sig", "running");

    let kill = cli.output(["kill", "sig", "KILL"]);

    assert!(kill.status.success(), "{}", text(&kill.stderr));
    let out = run.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(137));
}

#[test]
fn the_lifecycle_follows_runc() {
    let cli = cli_or_skip!();
    let bundle = cli.bundle(&["sleep", "1000"]);
    let pid_file = bundle.dir.path().join("pid");

    assert!(cli.detached([
        "create",
        "--bundle",
        &bundle.path(),
        "--pid-file",
        &pid_file.to_string_lossy(),
        "life",
    ]));
    let state = cli.state("life");
    assert_eq!(state["status"], "created");
    assert_eq!(state["ociVersion"], "1.1.0");
    let pid: i64 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
    assert_eq!(state["pid"], pid);
    assert_eq!(state["bundle"], bundle.path());

    let dup = cli.output(["create", "--bundle", &bundle.path(), "life"]);
    assert_eq!(dup.status.code(), Some(1));
    assert!(
        text(&dup.stderr).contains("already exists"),
        "{}",
        text(&dup.stderr)
    );

    assert!(cli.output(["start", "life"]).status.success());
    assert_eq!(cli.state("life")["status"], "running");
    let again = cli.output(["start", "life"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again.stderr).contains("already running"),
        "{}",
        text(&again.stderr)
    );

    let busy = cli.output(["delete", "life"]);
    assert_eq!(busy.status.code(), Some(1));
    assert!(
        text(&busy.stderr).contains("not stopped: running"),
        "{}",
        text(&busy.stderr)
    );

    let list = cli.output(["list", "--format", "json"]);
    let list: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list[0]["id"], "life");
    assert_eq!(list[0]["status"], "running");

    assert!(cli.output(["kill", "life", "KILL"]).status.success());
    wait_for_status(&cli, "life", "stopped");
    let late = cli.output(["kill", "life", "9"]);
    assert_eq!(late.status.code(), Some(1));
    assert!(
        text(&late.stderr).contains("container not running"),
        "{}",
        text(&late.stderr)
    );

    assert!(cli.output(["delete", "life"]).status.success());
    let gone = cli.output(["state", "life"]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(text(&gone.stderr).contains("does not exist"));
}

#[test]
fn start_and_exec_use_the_spec_captured_at_create() {
    let cli = cli_or_skip!();
    let mut bundle = cli.bundle(&["sleep", "1000"]);
    bundle.config["process"]["env"]
        .as_array_mut()
        .unwrap()
        .push("MARK=captured".into());
    bundle.write();
    assert!(cli.detached(["create", "--bundle", &bundle.path(), "captured"]));
    let config = bundle.dir.path().join("config.json");
    let mark = || {
        let out = cli.output(["exec", "captured", "sh", "-c", "echo $MARK"]);
        assert!(out.status.success(), "exec: {}", text(&out.stderr));
        text(&out.stdout)
    };

    std::fs::write(&config, "{broken").unwrap();
    let start = cli.output(["start", "captured"]);
    assert!(start.status.success(), "start: {}", text(&start.stderr));
    assert_eq!(mark(), "captured\n");
    bundle.config["process"]["env"] = serde_json::json!(["MARK=rewritten", "PATH=/bin"]);
    bundle.config["process"]["args"] = serde_json::json!(["true"]);
    bundle.write();
    assert_eq!(mark(), "captured\n");
    assert_eq!(cli.state("captured")["status"], "running");

    assert!(cli
        .output(["delete", "--force", "captured"])
        .status
        .success());
    assert!(cli.ids().is_empty());
}

#[test]
fn exec_ps_pause_resume_events_and_update_work_on_a_running_container() {
    let cli = cli_or_skip!();
    let bundle = cli.bundle(&["sleep", "1000"]);
    assert!(cli.detached(["run", "--detach", "--bundle", &bundle.path(), "busy"]));

    let exec = cli.output(["exec", "busy", "sh", "-c", "echo hi; echo $$ >&2; exit 5"]);
    assert_eq!(text(&exec.stdout), "hi\n");
    assert_eq!(exec.status.code(), Some(5));

    let ps = cli.output(["ps", "--format", "json", "busy"]);
    let pids: Vec<i64> = serde_json::from_slice(&ps.stdout).unwrap();
    let monitor = cli.state("busy")["pid"].as_i64().unwrap();
    assert_eq!(pids, [monitor], "ps --format json lists the host pid");

    let init = cli.output([
        "exec",
        "busy",
        "sh",
        "-c",
        "cat /proc/1/cmdline | tr '\\0' ' '",
    ]);
    assert_eq!(text(&init.stdout), "sleep 1000 ", "the workload is PID 1");

    assert!(cli.output(["pause", "busy"]).status.success());
    assert_eq!(cli.state("busy")["status"], "paused");
    assert!(cli.output(["resume", "busy"]).status.success());
    assert_eq!(cli.state("busy")["status"], "running");

    let events = cli.output(["events", "--stats", "busy"]);
    let event: Value = serde_json::from_slice(&events.stdout).unwrap();
    assert_eq!(event["type"], "stats");
    assert!(event["data"]["memory"]["usage"]["usage"].as_u64().unwrap() > 0);

    let mut update = cli
        .husk(["update", "--resources", "-", "busy"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    update
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"pids":{"limit":77}}"#)
        .unwrap();
    assert!(update.wait().unwrap().success());
    let pids_max = cli.output(["exec", "busy", "cat", "/sys/fs/cgroup/pids.max"]);
    assert_eq!(text(&pids_max.stdout), "77\n", "{}", text(&pids_max.stderr));

    assert!(cli.output(["delete", "--force", "busy"]).status.success());
}

#[test]
fn exec_detach_leaves_a_waitable_process_with_the_exit_code() {
    let cli = cli_or_skip!();
    let bundle = cli.bundle(&["sleep", "1000"]);
    assert!(cli.detached(["run", "-d", "--bundle", &bundle.path(), "ed"]));
    let pid_file = bundle.dir.path().join("exec.pid");

    let out = cli.output([
        "exec",
        "--detach",
        "--pid-file",
        &pid_file.to_string_lossy(),
        "ed",
        "sh",
        "-c",
        "exit 4",
    ]);

    assert!(out.status.success(), "{}", text(&out.stderr));
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while husk_tests::process_exists(pid) {
        assert!(Instant::now() < deadline, "exec relay {pid} did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(cli.output(["delete", "-f", "ed"]).status.success());
}

#[test]
fn bind_mounts_share_files_with_the_host_rw_and_ro() {
    let cli = cli_or_skip!();
    let rw = tempfile::tempdir().unwrap();
    let ro = tempfile::tempdir().unwrap();
    std::fs::write(ro.path().join("in.txt"), "from host\n").unwrap();
    let mut bundle = cli.bundle(&[
        "sh",
        "-c",
        "echo written > /data/out.txt; cat /ro/in.txt; echo x > /ro/new 2>/dev/null || echo ro-refused",
    ]);
    let mounts = bundle.config["mounts"].as_array_mut().unwrap();
    mounts.push(serde_json::json!({"destination": "/data", "type": "bind",
        "source": rw.path(), "options": ["rbind", "rw"]}));
    mounts.push(serde_json::json!({"destination": "/ro", "type": "bind",
        "source": ro.path(), "options": ["rbind", "ro"]}));
    bundle.write();

    let out = cli.output(["run", "--bundle", &bundle.path(), "binds"]);

    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "from host\nro-refused\n");
    assert_eq!(
        std::fs::read_to_string(rw.path().join("out.txt")).unwrap(),
        "written\n"
    );
    assert!(!ro.path().join("new").exists());
}

#[test]
fn the_process_spec_is_applied_in_the_guest() {
    let cli = cli_or_skip!();
    let mut bundle = cli.bundle(&[
        "sh",
        "-c",
        "echo $$ $(id -u):$(id -g) $(hostname) $PWD $FOO $(ulimit -n); touch /x 2>/dev/null || echo ro",
    ]);
    let c = &mut bundle.config;
    c["process"]["user"] = serde_json::json!({"uid": 1000, "gid": 1000});
    c["process"]["env"]
        .as_array_mut()
        .unwrap()
        .push("FOO=bar".into());
    c["process"]["cwd"] = "/tmp".into();
    c["hostname"] = "guesthost".into();
    c["root"]["readonly"] = true.into();
    bundle.write();

    let out = cli.output(["run", "--bundle", &bundle.path(), "spec"]);

    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "1 1000:1000 guesthost /tmp bar 1024\nro\n"
    );
}

#[test]
fn hooks_run_on_the_host_with_the_state_on_stdin() {
    let cli = cli_or_skip!();
    let mut bundle = cli.bundle(&["true"]);
    let log = bundle.dir.path().join("hooks.log");
    let hook = |name: &str| {
        serde_json::json!({"path": "/bin/sh",
            "args": ["sh", "-c", format!("echo {name} $(cat) >> {}", log.display())]})
    };
    bundle.config["hooks"] = serde_json::json!({
        "createRuntime": [hook("createRuntime")],
        "prestart": [hook("prestart")],
        "startContainer": [hook("startContainer")],
        "poststart": [hook("poststart")],
        "poststop": [hook("poststop")],
    });
    bundle.write();

    let out = cli.output(["run", "--bundle", &bundle.path(), "hooked"]);

    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let text = std::fs::read_to_string(&log).unwrap();
    let order: Vec<&str> = text.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(
        order,
        [
            "createRuntime",
            "prestart",
            "startContainer",
            "poststart",
            "poststop"
        ]
    );
    assert!(text.contains("\"id\":\"hooked\""), "{text}");
}

/// Gives the spec's `kind` namespace entry the path `path`.
fn join(config: &mut Value, kind: &str, path: &str) {
    let namespaces = config["linux"]["namespaces"].as_array_mut().unwrap();
    let entry = namespaces
        .iter_mut()
        .find(|ns| ns["type"] == kind)
        .expect("the default spec has the namespace");
    entry["path"] = path.into();
}

#[test]
fn bad_bundles_get_one_clear_error_and_leave_nothing() {
    let cli = cli_or_skip!();
    let bundle = cli.bundle(&["true"]);
    type Patch = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Patch, &str)> =
        vec![
            (
                "badversion",
                Box::new(|c| c["ociVersion"] = "2.0.0".into()),
                "ociVersion",
            ),
            (
                "nocwd",
                Box::new(|c| {
                    c["process"].as_object_mut().unwrap().remove("cwd");
                }),
                "cwd",
            ),
            (
                "norootfs",
                Box::new(|c| c["root"]["path"] = "missing".into()),
                "root.path",
            ),
            (
                "badmount",
                Box::new(|c| {
                    c["mounts"].as_array_mut().unwrap().push(
                        serde_json::json!({"destination": "/x", "type": "ext9", "source": "x"}),
                    );
                }),
                "mounts[7].type",
            ),
            (
                "nosource",
                Box::new(|c| {
                    c["mounts"].as_array_mut().unwrap().push(
                serde_json::json!({"destination": "/x", "type": "bind", "source": "/no/such"}));
                }),
                "/no/such",
            ),
            (
                "dotdot",
                Box::new(|c| c["mounts"][0]["destination"] = "/../proc".into()),
                "mounts[0].destination",
            ),
            (
                "huge",
                Box::new(|c| c["annotations"] = serde_json::json!({"big": "x".repeat(100 << 20)})),
                "larger than the 8 MiB",
            ),
            (
                "wrongtype",
                Box::new(|c| c["linux"]["namespaces"][0]["type"] = 7.into()),
                "linux.namespaces[0].type",
            ),
            (
                "nsmismatch",
                Box::new(|c| join(c, "network", "/proc/self/ns/pid")),
                "/proc/self/ns/pid is a pid namespace, not a network one",
            ),
            (
                "hostipc",
                Box::new(|c| join(c, "ipc", "/proc/self/ns/ipc")),
                "cannot join the ipc namespace /proc/self/ns/ipc",
            ),
        ];
    for (id, patch, needle) in cases {
        let mut b = cli.bundle(&["true"]);
        patch(&mut b.config);
        b.write();
        let out = cli.output(["create", "--bundle", &b.path(), id]);
        assert_eq!(out.status.code(), Some(1), "{id}");
        assert!(
            text(&out.stderr).contains(needle),
            "{id}: {}",
            text(&out.stderr)
        );
        assert!(cli.ids().is_empty(), "{id} left state");
    }
    std::fs::write(bundle.dir.path().join("config.json"), "{not json").unwrap();
    let out = cli.output(["create", "--bundle", &bundle.path(), "json"]);
    assert!(
        text(&out.stderr).contains("invalid JSON"),
        "{}",
        text(&out.stderr)
    );
    let long_id = "a".repeat(1000);
    for bad_id in ["a/b", "..", "x..y", &long_id] {
        let out = cli.output(["create", "--bundle", &bundle.path(), bad_id]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out.stderr).contains("invalid container id"),
            "{}",
            text(&out.stderr)
        );
    }
    assert_eq!(std::fs::read_dir(cli.root.path()).unwrap().count(), 0);
}

#[test]
fn errors_go_to_the_log_file_as_json() {
    let cli = cli_or_skip!();
    let log = cli.root.path().join("../husk-log.json");
    let out = cli.output([
        "--log",
        &log.to_string_lossy(),
        "--log-format",
        "json",
        "start",
        "nonexistent",
    ]);

    assert_eq!(out.status.code(), Some(1));
    let line: Value = serde_json::from_str(std::fs::read_to_string(&log).unwrap().trim()).unwrap();
    let _ = std::fs::remove_file(&log);
    assert_eq!(line["level"], "error");
    assert!(line["msg"].as_str().unwrap().contains("does not exist"));
}

#[test]
fn features_and_spec_print_what_runc_prints() {
    let cli = cli_or_skip!();
    let features: Value = serde_json::from_slice(&cli.output(["features"]).stdout).unwrap();
    assert_eq!(features["ociVersionMin"], "1.0.0");
    assert_eq!(features["linux"]["seccomp"]["enabled"], true);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_string_lossy().into_owned();
    assert!(cli.output(["spec", "--bundle", &path]).status.success());
    let again = cli.output(["spec", "--bundle", &path]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("exists"));
}

/// Receives one fd over a Unix socket (the console socket protocol).
fn receive_fd(listener: &std::os::unix::net::UnixListener) -> std::os::fd::OwnedFd {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{AsRawFd, FromRawFd, RawFd};
    let (stream, _) = listener.accept().unwrap();
    let mut buf = [0u8; 256];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .unwrap();
    for cmsg in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            // SAFETY: the kernel installed this fd for us.
            return unsafe { std::os::fd::OwnedFd::from_raw_fd(fds[0]) };
        }
    }
    panic!("no fd on the console socket");
}

#[test]
fn a_terminal_goes_over_the_console_socket_and_resizes_reach_the_guest() {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let cli = cli_or_skip!();
    let mut bundle = cli.bundle(&["sh", "-c", "stty size; test -t 0 && echo tty; exit 7"]);
    bundle.config["process"]["terminal"] = true.into();
    bundle.write();
    let socket = bundle.dir.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let receiver = std::thread::spawn(move || receive_fd(&listener));

    assert!(cli.detached([
        "create",
        "--bundle",
        &bundle.path(),
        "--console-socket",
        &socket.to_string_lossy(),
        "tty",
    ]));
    let master = receiver.join().unwrap();
    let size = libc::winsize {
        ws_row: 33,
        ws_col: 99,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a valid winsize.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    assert_eq!(rc, 0);
    std::thread::sleep(Duration::from_millis(300));
    assert!(cli.output(["start", "tty"]).status.success());

    let mut output = Vec::new();
    let mut file = std::fs::File::from(master);
    let mut buf = [0u8; 4096];
    while let Ok(n) = file.read(&mut buf) {
        if n == 0 {
            break;
        }
        output.extend_from_slice(&buf[..n]);
    }
    let output = text(&output);
    assert!(output.contains("33 99"), "{output:?}");
    assert!(output.contains("tty"), "{output:?}");
    wait_for_status(&cli, "tty", "stopped");
    assert!(cli.output(["delete", "tty"]).status.success());
}

#[test]
fn seccomp_capabilities_masked_and_readonly_paths_apply() {
    let cli = cli_or_skip!();
    let mut bundle = cli.bundle(&[
        "sh",
        "-c",
        "mkdir /tmp/x 2>&1; grep CapEff /proc/self/status; touch /etc/new 2>/dev/null || echo ro-etc; wc -c < /etc/passwd",
    ]);
    let c = &mut bundle.config;
    c["linux"]["seccomp"] = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    });
    c["process"]["capabilities"] = serde_json::json!({
        "bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]
    });
    c["linux"]["maskedPaths"] = serde_json::json!(["/etc/passwd"]);
    c["linux"]["readonlyPaths"] = serde_json::json!(["/etc"]);
    bundle.write();

    let out = cli.output(["run", "--bundle", &bundle.path(), "sec"]);

    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("Operation not permitted"), "{stdout}");
    assert!(stdout.contains("CapEff:\t0000000000000020"), "{stdout}");
    assert!(
        stdout.ends_with("ro-etc\n0\n"),
        "/etc is read-only, /etc/passwd masked: {stdout}"
    );
}

#[test]
fn the_monitor_joins_the_host_cgroups_path_and_delete_removes_it() {
    let cli = cli_or_skip!();
    let mut bundle = cli.bundle(&["sleep", "1000"]);
    let parent = format!("husk-test-{}", std::process::id());
    bundle.config["linux"]["cgroupsPath"] = format!("/{parent}/cg").into();
    bundle.write();

    assert!(cli.detached(["run", "-d", "--bundle", &bundle.path(), "cg"]));
    let pid = cli.state("cg")["pid"].as_i64().unwrap().to_string();
    let hierarchies = husk::sandbox::host_cgroup::hierarchies();
    let joined: Vec<_> = hierarchies
        .iter()
        .map(|h| h.join(&parent).join("cg/cgroup.procs"))
        .filter(|procs| {
            std::fs::read_to_string(procs).is_ok_and(|text| text.lines().any(|l| l == pid))
        })
        .collect();
    assert!(cli.output(["delete", "--force", "cg"]).status.success());

    assert!(
        !joined.is_empty(),
        "the monitor {pid} is in no hierarchy's {parent}/cg"
    );
    for h in &hierarchies {
        assert!(!h.join(&parent).join("cg").exists(), "{} left", h.display());
        let _ = std::fs::remove_dir(h.join(&parent));
    }
}

#[test]
fn a_user_namespace_maps_the_spec_s_ids_for_init_and_exec() {
    use std::os::unix::fs::MetadataExt;
    let cli = cli_or_skip!();
    let volume = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(volume.path(), Some(1000), Some(1000)).unwrap();
    // The init writes into the volume as its root, then sleeps.
    let mut bundle = cli.bundle(&["sh", "-c", "id -u >/vol/by-init && exec sleep 1000"]);
    bundle.config["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"type": "user"}));
    let map = serde_json::json!([{"containerID": 0, "hostID": 1000, "size": 1000}]);
    bundle.config["linux"]["uidMappings"] = map.clone();
    bundle.config["linux"]["gidMappings"] = map;
    // Its root's capabilities are the user namespace's, over the mount and
    // uts namespaces made under it.
    let caps = serde_json::json!(["CAP_SYS_ADMIN", "CAP_SETUID", "CAP_SETGID"]);
    for set in ["bounding", "effective", "permitted"] {
        bundle.config["process"]["capabilities"][set] = caps.clone();
    }
    bundle.config["mounts"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "destination": "/vol", "type": "bind",
            "source": volume.path(), "options": ["rbind", "rw"]
        }));
    bundle.write();

    assert!(cli.detached(["run", "-d", "--bundle", &bundle.path(), "userns"]));
    let script = "cat /proc/1/uid_map /proc/1/gid_map /proc/self/uid_map; \
                  id -u; id -g; stat -c '%u %g' /bin/sh; touch /vol/by-exec; \
                  mkdir /vol/m && mount -t tmpfs t /vol/m && echo mounted; \
                  hostname inside && hostname";
    let exec = cli.output(["exec", "userns", "sh", "-c", script]);
    let written = volume.path().join("by-init");
    let by_init = eventually_read(&written);
    assert!(cli.output(["delete", "--force", "userns"]).status.success());

    assert_eq!(exec.status.code(), Some(0), "{}", text(&exec.stderr));
    let words: Vec<String> = text(&exec.stdout)
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        words,
        [
            "0 1000 1000",
            "0 1000 1000",
            "0 1000 1000",
            "0",
            "0",
            // Host root's files are unmapped inside: the overflow ids.
            "65534 65534",
            "mounted",
            "inside"
        ],
        "{}",
        text(&exec.stderr)
    );
    // Root inside is uid 1000 on the host, for the init and an exec alike.
    assert_eq!(by_init.as_deref(), Some("0\n"));
    for file in ["by-init", "by-exec"] {
        let meta = std::fs::metadata(volume.path().join(file)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (1000, 1000), "{file}");
    }
}

/// The content of `path` once it has some, within 30 s.
fn eventually_read(path: &Path) -> Option<String> {
    let mut content = None;
    husk_tests::engines::eventually(Duration::from_secs(30), || {
        content = std::fs::read_to_string(path).ok().filter(|c| !c.is_empty());
        content.is_some()
    });
    content
}

#[test]
fn the_host_cgroup_carries_the_limits_as_the_vms_envelope() {
    use husk::sandbox::host_cgroup::envelope::{envelope_bytes, HOST_TASKS};
    let cli = cli_or_skip!();
    let mut bundle = cli.bundle(&["sleep", "1000"]);
    let cgroup = format!("husk-envelope-{}", std::process::id());
    bundle.config["linux"]["cgroupsPath"] = format!("/{cgroup}").into();
    let limit: i64 = 64 << 20;
    bundle.config["linux"]["resources"] = serde_json::json!({
        "memory": {"limit": limit, "reservation": 32 << 20},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"},
        "pids": {"limit": 40}
    });
    bundle.write();

    assert!(cli.detached(["run", "-d", "--bundle", &bundle.path(), "envelope"]));
    let pid = cli.state("envelope")["pid"].as_i64().unwrap().to_string();
    let envelope = envelope_bytes(limit).to_string();
    let pids = (40 + HOST_TASKS).to_string();
    // Each limit where runc puts it: v1 files on a v1 host, v2 in the test
    // host; whichever hierarchy holds a file, its value is the envelope.
    let expected = [
        ("memory.limit_in_bytes", envelope.as_str()),
        ("memory.soft_limit_in_bytes", "33554432"),
        ("cpu.shares", "512"),
        ("cpu.cfs_quota_us", "50000"),
        ("memory.max", envelope.as_str()),
        ("memory.low", "33554432"),
        ("cpu.weight", "20"),
        ("cpu.max", "50000 100000"),
        ("cpuset.cpus", "0"),
        ("pids.max", pids.as_str()),
    ];
    let mut found = Vec::new();
    let mut wrong = Vec::new();
    let mut holds_monitor = false;
    for h in husk::sandbox::host_cgroup::hierarchies() {
        let dir = h.join(&cgroup);
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        holds_monitor |= procs.lines().any(|l| l == pid);
        for (file, value) in expected {
            if let Ok(text) = std::fs::read_to_string(dir.join(file)) {
                found.push(file);
                if text.trim() != value {
                    wrong.push(format!(
                        "{}: {:?}, not {value:?}",
                        dir.join(file).display(),
                        text.trim()
                    ));
                }
            }
        }
    }
    // update changes the envelope too, as runc's does (but its memory: the
    // VM's stays as created).
    let update = cli.output([
        "update",
        "--cpu-quota",
        "30000",
        "--pids-limit",
        "20",
        "envelope",
    ]);
    let updated_pids = (20 + HOST_TASKS).to_string();
    let mut updated = Vec::new();
    for h in husk::sandbox::host_cgroup::hierarchies() {
        for (file, value) in [
            ("cpu.cfs_quota_us", "30000"),
            ("cpu.max", "30000 100000"),
            ("pids.max", updated_pids.as_str()),
        ] {
            if let Ok(text) = std::fs::read_to_string(h.join(&cgroup).join(file)) {
                updated.push((file, text.trim() == value));
            }
        }
    }
    assert!(cli
        .output(["delete", "--force", "envelope"])
        .status
        .success());

    assert_eq!(update.status.code(), Some(0), "{}", text(&update.stderr));
    assert!(
        updated.iter().filter(|(_, ok)| *ok).count() >= 2 && updated.iter().all(|(_, ok)| *ok),
        "after update: {updated:?}"
    );
    assert!(
        holds_monitor,
        "the monitor {pid} is in no hierarchy's {cgroup}"
    );
    assert!(wrong.is_empty(), "{wrong:#?}");
    // Memory, CPU, cpuset and pids, in one version or the other.
    for group in [
        ["memory.limit_in_bytes", "memory.max"],
        ["memory.soft_limit_in_bytes", "memory.low"],
        ["cpu.cfs_quota_us", "cpu.max"],
        ["cpu.shares", "cpu.weight"],
        ["cpuset.cpus", "cpuset.cpus"],
        ["pids.max", "pids.max"],
    ] {
        assert!(
            group.iter().any(|f| found.contains(f)),
            "no hierarchy has {group:?} under {cgroup} (found {found:?})"
        );
    }
    for h in husk::sandbox::host_cgroup::hierarchies() {
        assert!(!h.join(&cgroup).exists(), "{} left", h.display());
    }
}

#[test]
fn the_workload_starts_with_default_signal_handling() {
    let cli = cli_or_skip!();
    let bundle = cli.bundle(&[
        "sh",
        "-c",
        "set -o pipefail; yes | head -c 1 >/dev/null; echo $?",
    ]);

    let out = cli.output(["run", "--bundle", &bundle.path(), "sigpipe"]);

    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "141\n",
        "yes dies of SIGPIPE, as under runc"
    );
}

#[test]
fn an_unread_stdout_stalls_only_itself_and_loses_nothing() {
    let cli = cli_or_skip!();
    // 8 MiB, far more than the stream window and a pipe hold together.
    let bundle = cli.bundle(&[
        "sh",
        "-c",
        "head -c 8388608 /dev/zero | tr '\\0' x; echo; sleep 1000",
    ]);
    let mut run = cli
        .husk(["run", "--bundle", &bundle.path(), "unread"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_status(&cli, "unread", "running");
    std::thread::sleep(Duration::from_secs(10));

    // The container's stdout is full and unread: the rest still answers.
    let started = Instant::now();
    let exec = cli.output(["exec", "unread", "echo", "exec answers"]);
    let ps = cli.output(["ps", "unread"]);
    assert_eq!(
        text(&exec.stdout),
        "exec answers\n",
        "{}",
        text(&exec.stderr)
    );
    assert!(ps.status.success(), "{}", text(&ps.stderr));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "exec and ps took {:?} while stdout was unread",
        started.elapsed()
    );
    // Everything the workload wrote arrives once it is read; then the
    // kill ends it and nothing more comes.
    let mut stdout = run.stdout.take().unwrap();
    let (whole_tx, whole) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut bytes = vec![0; 8 * 1024 * 1024 + 1];
        std::io::Read::read_exact(&mut stdout, &mut bytes).unwrap();
        whole_tx.send(()).unwrap();
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut rest).unwrap();
        (bytes, rest)
    });
    whole
        .recv_timeout(Duration::from_secs(120))
        .expect("the whole output arrives once read");
    let kill = cli.output(["kill", "unread", "KILL"]);
    assert!(kill.status.success(), "{}", text(&kill.stderr));
    let (bytes, rest) = reader.join().unwrap();
    let status = run.wait().unwrap();

    assert_eq!(status.code(), Some(137));
    assert!(rest.is_empty(), "{} bytes after the output", rest.len());
    assert_eq!(bytes[bytes.len() - 1], b'\n');
    assert!(bytes[..bytes.len() - 1].iter().all(|&b| b == b'x'));
}

#[test]
fn the_vm_s_host_processes_are_jailed() {
    let cli = cli_or_skip!();
    let bundle = cli.bundle(&["sleep", "1000"]);

    assert!(cli.detached(["run", "-d", "--bundle", &bundle.path(), "jailed"]));
    let monitor = cli.state("jailed")["pid"].as_i64().unwrap() as u32;
    let (problems, seen) = husk_tests::jail::problems_under(monitor);
    assert!(cli.output(["delete", "--force", "jailed"]).status.success());

    assert!(problems.is_empty(), "{problems:#?}");
    let vmm = seen
        .iter()
        .any(|p| p == "husk-vmm" || p == "qemu-system-x86_64");
    assert!(vmm, "no VMM among the monitor's processes: {seen:?}");
    assert!(seen.iter().any(|p| p == "virtiofsd"), "{seen:?}");
    if seen.iter().any(|p| p == "qemu-system-x86_64") {
        let vsock = seen.iter().any(|p| p == "vhost-device-vsock");
        assert!(vsock, "QEMU without its vsock backend: {seen:?}");
    }
}

#[test]
fn a_guest_flooding_its_console_stays_under_the_cap() {
    let mut cli = cli_or_skip!();
    let configs = tempfile::tempdir().unwrap();
    let capped = configs.path().join("capped.toml");
    let base = std::fs::read_to_string(&cli.config).unwrap();
    // The smallest cap the log takes, and three times it straight onto the
    // guest's serial port (the container may mount devtmpfs: it has
    // CAP_SYS_ADMIN), then a last line. Every byte is an exit to the VMM,
    // and a long run of them freezes the KVM test host's emulated CPU now
    // and then (KVM-TESTHOST.md): the flood is small, the cap smaller.
    let cap = husk_console_log::MIN_CAP;
    std::fs::write(
        &capped,
        format!("{base}\nconsole_log_max_kib = {}\n", cap / 1024),
    )
    .unwrap();
    cli.config = capped;
    let flood = format!(
        "mkdir -p /d && mount -t devtmpfs dev /d && \
         head -c {} /dev/zero | tr '\\0' x > /d/ttyS0 && \
         echo 'flood over' >/d/ttyS0; sleep 1000",
        3 * cap
    );
    let mut bundle = cli.bundle(&["sh", "-c", &flood]);
    let caps = serde_json::json!(["CAP_SYS_ADMIN", "CAP_MKNOD", "CAP_DAC_OVERRIDE"]);
    for set in ["bounding", "effective", "permitted"] {
        bundle.config["process"]["capabilities"][set] = caps.clone();
    }
    bundle.write();

    assert!(cli.detached(["run", "-d", "--bundle", &bundle.path(), "flood"]));
    let log = find_file(cli.root.path(), "console.log")
        .or_else(|| find_file(Path::new("/run/husk-sockets"), "console.log"))
        .expect("the running container's console.log");
    // Under the KVM test host's 90 s watchdog (its boot for this test): a
    // flood that stalls fails here, naming it, rather than looking like a
    // frozen test host. It takes seconds.
    let over = husk_tests::engines::eventually(Duration::from_secs(60), || {
        std::fs::read(&log).is_ok_and(|c| c.windows(10).any(|w| w == b"flood over"))
    });
    let content = std::fs::read(&log).unwrap();
    let exec = cli.output(["exec", "flood", "echo", "still answering"]);
    assert!(cli.output(["delete", "--force", "flood"]).status.success());

    assert!(
        over,
        "the flood's end never reached {}; it ends with {:?}",
        log.display(),
        String::from_utf8_lossy(&content[content.len().saturating_sub(200)..])
    );
    assert!(content.len() as u64 <= cap, "{} bytes", content.len());
    assert!(
        content.starts_with(b"[husk: earlier console output dropped"),
        "{:?}",
        String::from_utf8_lossy(&content[..80.min(content.len())])
    );
    assert_eq!(String::from_utf8_lossy(&exec.stdout), "still answering\n");
}

/// The first file called `name` under `dir`.
fn find_file(dir: &Path, name: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == name) {
            return Some(path);
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        }
    }
    None
}

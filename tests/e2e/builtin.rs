//! End-to-end tests of the builtin backend (`husk-vmm`): vCPU pause and
//! resume, several concurrent vsock streams with large transfers both ways,
//! and a clean end with no thread or descriptor left behind, also under
//! the jail with a NIC.
//!
//! They need hardware KVM. On this project's machines `/dev/kvm` is PVM, so
//! `hack/test.sh` runs this suite (with `boot` and `cli`) inside the KVM test
//! host (`hack/kvm-testhost.sh`) with `backend = "builtin"`; elsewhere the
//! tests skip and say why.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use husk::hypervisor::Nic;
use husk_protocol::net::MacAddr;

use husk_protocol::{GuestMessage, Request, Response};
use husk_tests::cli::Cli;
use husk_tests::{assert_nothing_left, TestEnv};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// The test environment if its backend is the builtin monitor.
fn builtin_env() -> Result<TestEnv, String> {
    let env = TestEnv::load()?;
    let name = env.hypervisor.name();
    if !name.starts_with("builtin") {
        return Err(format!(
            "the configured backend is {name}, not builtin (it needs hardware KVM; \
             hack/test.sh runs this suite inside the KVM test host)"
        ));
    }
    Ok(env)
}

macro_rules! builtin_or_skip {
    () => {
        husk_tests::or_skip!(builtin_env())
    };
}

fn count_entries(dir: String) -> usize {
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .count()
}

#[test]
fn paused_vcpus_answer_nothing_until_resumed_and_lose_nothing() {
    let env = builtin_or_skip!();
    let state = tempfile::tempdir().unwrap();
    let mut guest = env.boot(state.path());

    guest.vm().pause_vcpus().unwrap();
    let while_paused = guest
        .agent()
        .request(Request::Ping, Duration::from_millis(1500));
    guest.vm().resume_vcpus().unwrap();
    let late = guest.agent().receive(REQUEST_TIMEOUT).unwrap();

    assert!(
        while_paused.is_err(),
        "a paused guest answered: {while_paused:?}"
    );
    assert!(
        matches!(
            late,
            GuestMessage::Response {
                result: Ok(Response::Pong { .. }),
                ..
            }
        ),
        "the ping sent while paused is answered after resume: {late:?}"
    );
    assert!(matches!(
        guest.agent().request(Request::Ping, REQUEST_TIMEOUT),
        Ok(Response::Pong { .. })
    ));
    assert!(
        guest.vm().resume_vcpus().is_err(),
        "resuming a running VM is refused"
    );
    guest.shutdown(REQUEST_TIMEOUT).unwrap();
    assert_nothing_left(state.path());
}

#[test]
fn the_monitor_keeps_its_threads_and_descriptors_and_ends_cleanly() {
    let env = builtin_or_skip!();
    let state = tempfile::tempdir().unwrap();
    let mut guest = env.boot(state.path());
    let pid = guest.vm().pid();
    assert!(matches!(
        guest.agent().request(Request::Ping, REQUEST_TIMEOUT),
        Ok(Response::Pong { .. })
    ));
    let threads = count_entries(format!("/proc/{pid}/task"));
    let fds = count_entries(format!("/proc/{pid}/fd"));

    // Host-initiated connections to a guest port nobody listens on: each is
    // refused by the guest and must be closed by the monitor.
    let base = guest.vm().vsock_uds().to_path_buf();
    for _ in 0..50 {
        let mut stream = UnixStream::connect(&base).unwrap();
        stream.set_read_timeout(Some(REQUEST_TIMEOUT)).unwrap();
        stream.write_all(b"CONNECT 4444\n").unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).unwrap();
        assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    }
    for _ in 0..20 {
        assert!(matches!(
            guest.agent().request(Request::Ping, REQUEST_TIMEOUT),
            Ok(Response::Pong { .. })
        ));
    }

    // main, one per vCPU, the vsock and rng workers, the reset watcher.
    assert_eq!(threads, 1 + env.config.vcpus as usize + 3);
    assert_eq!(count_entries(format!("/proc/{pid}/task")), threads);
    assert_eq!(count_entries(format!("/proc/{pid}/fd")), fds);
    let exit = guest.shutdown(REQUEST_TIMEOUT).unwrap();
    assert_eq!(
        exit.description,
        "husk-vmm exit status: 0: the guest rebooted"
    );
    assert!(!husk_tests::process_exists(pid));
    assert_nothing_left(state.path());
}

#[test]
fn a_jailed_monitor_with_a_nic_ends_cleanly() {
    let env = builtin_or_skip!();
    let state = tempfile::tempdir().unwrap();
    // Not persistent: the tap goes with the last descriptor.
    let name = format!("husk-tap{}", std::process::id() % 100_000);
    let tap = husk::sandbox::network::tap::create(&name).expect("creating a tap");
    let mut config = env.vm_config(state.path());
    config.nics = vec![Nic {
        tap: Arc::new(tap),
        mac: MacAddr([2, 0, 0, 0, 0, 7]),
        mtu: Some(1400),
    }];
    let mut guest = husk::guest::Guest::boot(env.hypervisor.as_ref(), &config, REQUEST_TIMEOUT)
        .expect("booting a guest with a NIC");
    let pid = guest.vm().pid();
    let seccomp = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        matches!(
            guest.agent().request(Request::Ping, REQUEST_TIMEOUT),
            Ok(Response::Pong { .. })
        ),
        "the agent answers"
    );
    drop(config);

    // The NIC's worker frees its frame buffers as the VM ends: a filter
    // that kills on what glibc does then ends the monitor with SIGSYS.
    let exit = guest.shutdown(REQUEST_TIMEOUT).unwrap();

    assert!(seccomp.contains("Seccomp:\t2"), "{seccomp}");
    assert_eq!(
        exit.description,
        "husk-vmm exit status: 0: the guest rebooted"
    );
    assert!(!husk_tests::process_exists(pid));
    assert_nothing_left(state.path());
}

/// Bytes that differ per stream and per position.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[seed as usize % 4] ^ seed)
        .collect()
}

#[test]
fn concurrent_streams_carry_large_transfers_both_ways() {
    builtin_or_skip!();
    let cli = husk_tests::or_skip!(Cli::new());
    // Four times the 256 KiB credit window each: large enough that every
    // stream waits for credit, small enough for the nested test host.
    const LEN: usize = 1 << 20;
    let bundle = cli.bundle(&["sleep", "1000"]);
    let rootfs = bundle.dir.path().join("rootfs");
    for seed in 0..4u8 {
        std::fs::write(rootfs.join(format!("big{seed}")), pattern(seed, LEN)).unwrap();
    }
    assert!(cli.detached(["run", "--detach", "--bundle", &bundle.path(), "streams"]));

    // Every stream is read on its own thread, as engines do.
    let readers: Vec<_> = (0..4u8)
        .map(|seed| {
            let child = cli
                .husk(["exec", "streams", "cat", &format!("/big{seed}")])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            std::thread::spawn(move || child.wait_with_output())
        })
        .collect();
    let mut writer = cli
        .husk(["exec", "streams", "sh", "-c", "cat > /up; wc -c < /up"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let upload = pattern(9, LEN);
    let mut stdin = writer.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || stdin.write_all(&upload));

    for (seed, reader) in readers.into_iter().enumerate() {
        let out = reader.join().unwrap().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout == pattern(seed as u8, LEN),
            "stream {seed} differs"
        );
    }
    feeder.join().unwrap().unwrap();
    let out = writer.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), LEN.to_string());
    assert!(std::fs::read(rootfs.join("up")).unwrap() == pattern(9, LEN));

    assert!(cli
        .output(["delete", "--force", "streams"])
        .status
        .success());
}

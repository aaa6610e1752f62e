//! End-to-end boot tests: real guests through husk's hypervisor backend and
//! agent channel, and the `husk check` command line. Skipped (with a
//! message) where the guest kernel or helpers are not built.

use std::process::Command;
use std::time::{Duration, Instant};

use husk::agent_client::AgentClientError;
use husk::guest::{Guest, GuestError};
use husk::hypervisor::HypervisorError;
use husk_protocol::frame::encode;
use husk_protocol::{GuestMessage, HostMessage, Request, Response, MAX_FRAME_LEN};
use husk_tests::{assert_nothing_left, env_or_skip, helpers_of, husk_binary, or_skip};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

#[test]
fn boots_round_trips_reads_virtiofs_and_shuts_down_cleanly() {
    let env = env_or_skip!();
    let state = tempfile::tempdir().unwrap();
    let config = env.vm_config(state.path());
    std::fs::create_dir(config.shared_dir.join("dir")).unwrap();
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(config.shared_dir.join("dir/payload.bin"), &payload).unwrap();

    let mut guest =
        Guest::boot(env.hypervisor.as_ref(), &config, husk_tests::BOOT_TIMEOUT).unwrap();
    let vmm_pid = guest.vm().pid();

    let hello = guest.agent().hello().clone();
    assert_eq!(hello.protocol_version, husk_protocol::PROTOCOL_VERSION);
    assert!(hello.kernel_release.starts_with("6.1"), "{hello:?}");
    assert_eq!(hello.share, Ok(husk_protocol::SHARE_MOUNTPOINT.to_string()));
    assert!(matches!(
        guest
            .agent()
            .request(Request::Ping, REQUEST_TIMEOUT)
            .unwrap(),
        Response::Pong { .. }
    ));
    let read = guest.agent().request(
        Request::ReadFile {
            path: "dir/payload.bin".into(),
        },
        REQUEST_TIMEOUT,
    );
    assert_eq!(
        read.unwrap(),
        Response::File {
            data: payload.into()
        }
    );
    let helpers = helpers_of(state.path());
    // The monitor (qemu or husk-vmm), virtiofsd (two processes with its
    // namespace sandbox) and, with qemu, the vsock backend.
    assert!(
        helpers.len() >= 3 && helpers.contains(&vmm_pid),
        "{helpers:?}"
    );

    let exit = guest.shutdown(REQUEST_TIMEOUT).unwrap();

    assert!(
        exit.description.contains("exit status: 0"),
        "{}",
        exit.description
    );
    assert!(!husk_tests::process_exists(vmm_pid));
    assert_nothing_left(state.path());
}

#[test]
fn missing_file_in_the_share_is_an_error_naming_it() {
    let env = env_or_skip!();
    let state = tempfile::tempdir().unwrap();
    let mut guest = env.boot(state.path());

    let err = guest
        .agent()
        .request(
            Request::ReadFile {
                path: "nope.txt".into(),
            },
            REQUEST_TIMEOUT,
        )
        .unwrap_err();

    match err {
        AgentClientError::Agent(e) => {
            assert_eq!(e.errno, Some(libc_enoent()));
            assert!(e.message.contains("nope.txt"), "{e}");
        }
        other => panic!("expected an agent error, got {other}"),
    }
    guest.shutdown(REQUEST_TIMEOUT).unwrap();
}

fn libc_enoent() -> i32 {
    2
}

#[test]
fn oversized_and_malformed_frames_get_errors_and_the_agent_keeps_serving() {
    let env = env_or_skip!();
    let state = tempfile::tempdir().unwrap();
    let mut guest = env.boot(state.path());
    let mut oversized = (MAX_FRAME_LEN + 1).to_be_bytes().to_vec();
    oversized.resize(4 + MAX_FRAME_LEN as usize + 1, b'x');

    guest.agent().send_raw(&oversized).unwrap();
    let first = guest.agent().receive(REQUEST_TIMEOUT).unwrap();
    guest.agent().send_raw(&[0, 0, 0, 2, b'{', b'}']).unwrap();
    let second = guest.agent().receive(REQUEST_TIMEOUT).unwrap();

    assert!(
        matches!(&first, GuestMessage::ProtocolError { message } if message.contains("over the limit")),
        "{first:?}"
    );
    assert!(
        matches!(&second, GuestMessage::ProtocolError { message } if message.contains("malformed")),
        "{second:?}"
    );
    assert!(matches!(
        guest
            .agent()
            .request(Request::Ping, REQUEST_TIMEOUT)
            .unwrap(),
        Response::Pong { .. }
    ));
    guest.shutdown(REQUEST_TIMEOUT).unwrap();
}

#[test]
fn host_disconnecting_mid_frame_powers_the_guest_off() {
    let env = env_or_skip!();
    let state = tempfile::tempdir().unwrap();
    let mut guest = env.boot(state.path());
    let frame = encode(&HostMessage::Request {
        id: 1,
        request: Request::Ping,
    })
    .unwrap();

    guest.agent().send_raw(&frame[..frame.len() / 2]).unwrap();
    guest.agent().disconnect();

    let exit = guest.vm().wait_timeout(REQUEST_TIMEOUT).unwrap();
    let description = exit.map(|e| e.description).unwrap_or_default();
    assert!(description.contains("exit status: 0"), "{description}");
    guest.kill().unwrap();
    assert_nothing_left(state.path());
}

#[test]
fn missing_kernel_is_named_and_nothing_is_started() {
    let env = env_or_skip!();
    let state = tempfile::tempdir().unwrap();
    let mut config = env.vm_config(state.path());
    config.kernel = "/nonexistent/vmlinux".into();

    let err = env.boot_error(&config, husk_tests::BOOT_TIMEOUT);

    assert!(
        matches!(
            err,
            GuestError::Start(HypervisorError::MissingFile { what: "kernel", .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("/nonexistent/vmlinux"), "{err}");
    assert_nothing_left(state.path());
}

#[test]
fn a_file_that_is_not_a_kernel_fails_fast_with_the_monitors_reason() {
    let env = env_or_skip!();
    let state = tempfile::tempdir().unwrap();
    let mut config = env.vm_config(state.path());
    let bogus = state.path().join("not-a-kernel");
    std::fs::write(&bogus, b"this is not an ELF kernel").unwrap();
    config.kernel = bogus;
    let started = Instant::now();

    let err = env.boot_error(&config, husk_tests::BOOT_TIMEOUT);

    assert!(
        started.elapsed() < husk_tests::BOOT_TIMEOUT,
        "failed only at the timeout"
    );
    let text = err.to_string();
    assert!(
        text.contains("the VM stopped (qemu exit status: 1")
            || text.contains("the VM stopped (husk-vmm exit status: 1: kernel"),
        "{text}"
    );
    assert!(text.contains("last lines of the guest console"), "{text}");
    assert_nothing_left(state.path());
}

#[test]
fn initramfs_without_an_agent_times_out_with_the_console_tail() {
    let env = env_or_skip!();
    let state = tempfile::tempdir().unwrap();
    let mut config = env.vm_config(state.path());
    config.initramfs = env.bare_initramfs.clone();
    config.cmdline_extra.push("husk.bare=hang".into());
    let timeout = Duration::from_secs(20);

    let err = env.boot_error(&config, timeout);

    let text = err.to_string();
    assert!(
        text.contains("timed out") && text.contains("the agent's hello"),
        "{text}"
    );
    assert!(
        text.contains("HUSK-BARE-INIT-READY"),
        "the console tail shows the guest's init ran: {text}"
    );
    assert_nothing_left(state.path());
}

#[test]
fn initramfs_with_a_broken_init_reports_the_kernel_panic() {
    let env = env_or_skip!();
    let state = tempfile::tempdir().unwrap();
    let mut config = env.vm_config(state.path());
    let broken = state.path().join("broken.cpio");
    let mut file = std::fs::File::create(&broken).unwrap();
    husk::initramfs::write_initramfs(&mut file, b"#!/nonexistent/interpreter\n").unwrap();
    config.initramfs = broken;

    let err = env.boot_error(&config, husk_tests::BOOT_TIMEOUT);

    let text = err.to_string();
    assert!(text.contains("the VM stopped"), "{text}");
    assert!(text.contains("No working init found"), "{text}");
    assert_nothing_left(state.path());
}

#[test]
fn husk_check_passes_and_prints_every_phase() {
    let env = env_or_skip!();
    let husk = or_skip!(husk_binary());

    let out = Command::new(husk)
        .arg("check")
        .env("HUSK_CONFIG", &env.config_path)
        .output()
        .unwrap();

    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "husk check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for phase in [
        "launch",
        "agent hello",
        "request round trip",
        "virtio-fs read",
        "shutdown",
        "backend",
        "ok: ",
    ] {
        assert!(stdout.contains(phase), "no {phase:?} in:\n{stdout}");
    }
}

#[test]
fn husk_check_with_a_missing_kernel_says_what_to_do() {
    let env = env_or_skip!();
    let husk = or_skip!(husk_binary());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let text = std::fs::read_to_string(&env.config_path).unwrap();
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("kernel ="))
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        + "kernel = \"/nonexistent/vmlinux\"\n";
    std::fs::write(&config, text).unwrap();

    let out = Command::new(husk)
        .arg("check")
        .env("HUSK_CONFIG", &config)
        .output()
        .unwrap();

    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("MISSING /nonexistent/vmlinux"), "{stdout}");
    assert!(stderr.contains("hack/install.sh"), "{stderr}");
}

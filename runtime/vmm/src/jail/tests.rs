//! The monitor's filters compile, keep what the VM needs, and kill on
//! what it does not (in forked children: a filter cannot come off).

use std::path::PathBuf;

use husk_jail::root::Access;
use husk_vm_spec::NetDevice;

use super::*;

fn spec() -> VmSpec {
    VmSpec {
        kernel: "/k/vmlinux".into(),
        initramfs: "/k/initramfs.cpio".into(),
        cmdline: String::new(),
        vcpus: 1,
        memory_mib: 256,
        console_log: "/run/husk/x/vm/console.log".into(),
        control_socket: Some("/run/husk/x/vm/vmm-control.sock".into()),
        devices: vec![
            Device::Vsock {
                cid: 3,
                uds: "/run/husk/x/vm/vsock.sock".into(),
            },
            Device::Fs {
                socket: "/run/husk/x/vm/virtiofsd.sock".into(),
                tag: "husk".into(),
            },
            Device::Rng,
            Device::Net(NetDevice {
                tap_fd: 5,
                mac: [2, 0, 0, 0, 0, 1],
                mtu: None,
            }),
        ],
        jail: true,
        console_log_max: 1 << 20,
    }
}

#[test]
fn the_jail_keeps_only_the_vm_directory() {
    let entries = entries(&spec());

    let listed: Vec<(PathBuf, Access)> = entries.into_iter().map(|e| (e.path, e.access)).collect();
    assert_eq!(listed, vec![("/run/husk/x/vm".into(), Access::Writable)]);
}

/// How a forked child that installed `kind`'s filter and ran `body` ended:
/// `Ok(exit code)` or `Err(signal)`.
fn filtered_child(kind: ThreadKind, body: impl FnOnce()) -> Result<i32, i32> {
    let filters = Filters::compile().unwrap();
    let failing = filters.failing.clone();
    let filter = filters.of(kind).clone();
    // SAFETY: the child installs the filters as `enter_thread` does, runs
    // `body` (raw syscalls) and `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        if failing.apply().and_then(|()| filter.apply()).is_err() {
            // SAFETY: ends the child.
            unsafe { libc::_exit(100) };
        }
        body();
        // SAFETY: ends the child.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    if libc::WIFSIGNALED(status) {
        Err(libc::WTERMSIG(status))
    } else {
        Ok(libc::WEXITSTATUS(status))
    }
}

#[test]
fn the_filters_compiled_at_build_time_are_the_lists_compiled_now() {
    let (built, now) = (Filters::load(), Filters::compile().unwrap());

    assert_eq!(built.failing.instructions(), now.failing.instructions());
    for kind in [
        ThreadKind::Main,
        ThreadKind::Vcpu,
        ThreadKind::Worker,
        ThreadKind::Reset,
    ] {
        assert_eq!(
            built.of(kind).instructions(),
            now.of(kind).instructions(),
            "{kind:?}"
        );
    }
}

#[test]
fn every_kind_of_thread_dies_on_a_syscall_off_its_list() {
    for kind in [
        ThreadKind::Main,
        ThreadKind::Vcpu,
        ThreadKind::Worker,
        ThreadKind::Reset,
    ] {
        let allowed = filtered_child(kind, || {
            // SAFETY: getpid takes no arguments.
            unsafe { libc::getpid() };
        });
        // SAFETY: (in the child) mkdir of a path; the filter kills first.
        let made = filtered_child(kind, || unsafe {
            libc::mkdir(c"/tmp/husk-jail-never-made".as_ptr(), 0o700);
        });

        assert_eq!(allowed, Ok(0), "{kind:?}: getpid");
        assert_eq!(made, Err(libc::SIGSYS), "{kind:?}: mkdir");
    }
}

#[test]
fn opening_a_path_fails_with_eacces_instead_of_killing() {
    for kind in [ThreadKind::Main, ThreadKind::Vcpu, ThreadKind::Worker] {
        let opened = filtered_child(kind, || {
            // SAFETY: open of a NUL-terminated path; then _exit with what
            // it said.
            let fd = unsafe { libc::open(c"/etc/passwd".as_ptr(), libc::O_RDONLY) };
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            // SAFETY: ends the child with the errno of the refused open.
            unsafe { libc::_exit(if fd < 0 { errno } else { 0 }) };
        });

        assert_eq!(opened, Ok(libc::EACCES), "{kind:?}");
    }
}

#[test]
fn signals_may_only_go_to_the_monitor_itself() {
    let to_init = filtered_child(ThreadKind::Main, || {
        // SAFETY: tgkill of pid 1 with signal 0 (a probe); the filter
        // kills first.
        unsafe { libc::syscall(libc::SYS_tgkill, 1, 1, 0) };
    });

    assert_eq!(to_init, Err(libc::SIGSYS));
}

#[test]
fn only_unix_sockets_may_be_made() {
    let unix = filtered_child(ThreadKind::Worker, || {
        // SAFETY: socket with integer arguments.
        unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
    });
    let inet = filtered_child(ThreadKind::Worker, || {
        // SAFETY: socket with integer arguments; the filter kills first.
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    });

    assert_eq!(unix, Ok(0));
    assert_eq!(inet, Err(libc::SIGSYS));
}

//! Filters are installed in forked children (a filter cannot be taken off
//! a thread again); each child reports through its exit status or dies of
//! the filter's SIGSYS.

use super::*;

/// How a forked child running `body` ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Exited(i32),
    Signalled(i32),
}

fn in_child(body: impl FnOnce() -> i32) -> Ended {
    // SAFETY: the child only makes syscalls and `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = body();
        // SAFETY: ends the child without the parent's atexit work.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child; `status` outlives the call.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    if libc::WIFSIGNALED(status) {
        Ended::Signalled(libc::WTERMSIG(status))
    } else {
        Ended::Exited(libc::WEXITSTATUS(status))
    }
}

/// What a child needs to get to `_exit` once filtered.
fn exit_only() -> Vec<Allowed> {
    vec![always(libc::SYS_exit_group), always(libc::SYS_exit)]
}

#[test]
fn a_listed_syscall_runs_and_an_unlisted_one_kills_the_process() {
    let mut list = exit_only();
    list.push(always(libc::SYS_getppid));
    let filter = Filter::allow_only(&list).unwrap();

    let listed = in_child(|| {
        if filter.apply().is_err() {
            return 1;
        }
        // SAFETY: getppid takes no arguments.
        unsafe { libc::syscall(libc::SYS_getppid) };
        0
    });
    let unlisted = in_child(|| {
        if filter.apply().is_err() {
            return 1;
        }
        // SAFETY: getuid takes no arguments; the filter kills us here.
        unsafe { libc::syscall(libc::SYS_getuid) };
        0
    });

    assert_eq!(listed, Ended::Exited(0));
    assert_eq!(unlisted, Ended::Signalled(libc::SIGSYS));
}

#[test]
fn argument_rules_allow_only_the_values_listed() {
    let mut list = exit_only();
    list.push(when_arg(libc::SYS_fcntl, 1, &[libc::F_GETFD as u64]));
    let filter = Filter::allow_only(&list).unwrap();

    let allowed = in_child(|| {
        if filter.apply().is_err() {
            return 1;
        }
        // SAFETY: F_GETFD on stdin only reads its flags.
        unsafe { libc::syscall(libc::SYS_fcntl, 0, libc::F_GETFD) };
        0
    });
    let other = in_child(|| {
        if filter.apply().is_err() {
            return 1;
        }
        // SAFETY: F_GETFL on stdin only reads its flags; the filter kills us.
        unsafe { libc::syscall(libc::SYS_fcntl, 0, libc::F_GETFL) };
        0
    });

    assert_eq!(allowed, Ended::Exited(0));
    assert_eq!(other, Ended::Signalled(libc::SIGSYS));
}

#[test]
fn an_unconditional_entry_wins_over_argument_rules() {
    let mut list = exit_only();
    list.push(when_arg(libc::SYS_fcntl, 1, &[libc::F_GETFD as u64]));
    list.push(always(libc::SYS_fcntl));
    let filter = Filter::allow_only(&list).unwrap();

    let ended = in_child(|| {
        if filter.apply().is_err() {
            return 1;
        }
        // SAFETY: F_GETFL on stdin only reads its flags.
        unsafe { libc::syscall(libc::SYS_fcntl, 0, libc::F_GETFL) };
        0
    });

    assert_eq!(ended, Ended::Exited(0));
}

#[test]
fn the_helpers_deny_list_fails_with_eperm_and_allows_the_rest() {
    let filter = Filter::deny(DENIED_TO_HELPERS).unwrap();

    let ended = in_child(|| {
        if filter.apply().is_err() {
            return 1;
        }
        // SAFETY: unshare with a flag; refused by the filter.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNS) };
        let errno = std::io::Error::last_os_error().raw_os_error();
        if rc != -1 || errno != Some(libc::EPERM) {
            return 2;
        }
        // SAFETY: getpid takes no arguments; allowed.
        if unsafe { libc::getpid() } <= 0 {
            return 3;
        }
        0
    });

    assert_eq!(ended, Ended::Exited(0));
}

//! The root is built in a forked child: a mount namespace cannot be
//! entered by the multi-threaded test process. The child reports through
//! its exit status and raw writes to stderr (no lock another thread of
//! the parent may have held at fork).

use super::*;

/// Runs `check` in a forked child; its result is the child's exit status
/// (0: all held, else the number of the check that failed).
fn in_child(check: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child runs `check`, which only makes syscalls and
    // allocates (glibc's malloc is fork-safe), then `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
    if pid == 0 {
        let code = check();
        // SAFETY: ends the child without running the parent's atexit work.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child; `status` outlives the call.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status),
        "the child died: status {status:#x}"
    );
    libc::WEXITSTATUS(status)
}

fn say(message: &str) {
    // SAFETY: write from a live buffer to stderr.
    unsafe { libc::write(2, message.as_ptr().cast(), message.len()) };
}

#[test]
fn the_root_holds_the_entries_and_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let kept = tmp.path().join("kernel");
    std::fs::write(&kept, "read me").unwrap();
    let dir = tmp.path().join("vm");
    std::fs::create_dir(&dir).unwrap();
    let hidden = tmp.path().join("secret");
    std::fs::write(&hidden, "not for the jail").unwrap();
    let entries = vec![
        Entry::read_only(&kept),
        Entry::writable(&dir),
        Entry::device("/dev/null"),
    ];

    let code = in_child(|| {
        if let Err(e) = enter(&entries) {
            say(&format!("enter: {e}\n"));
            return 1;
        }
        if std::fs::read_to_string(&kept).ok().as_deref() != Some("read me") {
            return 2;
        }
        if std::fs::write(&kept, "changed").is_ok() {
            return 3;
        }
        if std::fs::write(dir.join("console.log"), "written").is_err() {
            return 4;
        }
        if std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .is_err()
        {
            return 5;
        }
        if hidden.exists() || Path::new("/etc/passwd").exists() || Path::new("/proc/1").exists() {
            return 6;
        }
        if std::fs::create_dir("/new").is_ok() {
            return 7;
        }
        0
    });

    assert_eq!(code, 0, "check {code} failed in the jail");
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), "read me");
    assert_eq!(
        std::fs::read_to_string(dir.join("console.log")).unwrap(),
        "written"
    );
    let host_tmp: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert_eq!(host_tmp.len(), 3, "nothing was created on the host");
}

#[test]
fn an_entry_inside_a_directory_entry_is_bound_over_the_host_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vm");
    std::fs::create_dir(&dir).unwrap();
    let socket_like = dir.join("fs.sock");
    std::fs::write(&socket_like, "x").unwrap();
    let entries = vec![Entry::writable(&dir), Entry::read_only(&socket_like)];

    let code = in_child(|| match enter(&entries) {
        Err(e) => {
            say(&format!("enter: {e}\n"));
            1
        }
        Ok(()) if std::fs::write(&socket_like, "y").is_ok() => 2,
        Ok(()) if std::fs::write(dir.join("other"), "z").is_err() => 3,
        Ok(()) => 0,
    });

    assert_eq!(code, 0, "check {code} failed in the jail");
    assert_eq!(std::fs::read_to_string(&socket_like).unwrap(), "x");
}

#[test]
fn a_bad_entry_is_named_before_anything_changes() {
    let missing = Path::new("/nonexistent/husk-jail-entry");

    let err = enter(&[Entry::read_only(missing)]).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/husk-jail-entry"),
        "{err}"
    );

    let err = enter(&[Entry::read_only("relative/path")]).unwrap_err();
    assert!(err.to_string().contains("absolute"), "{err}");

    let err = enter(&[Entry::device("/etc/passwd")]).unwrap_err();
    assert!(err.to_string().contains("not a character device"), "{err}");
}

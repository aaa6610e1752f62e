//! What the kernel tests share: a private network namespace per test,
//! links looked up by name, and the skip.
//!
//! The skip follows the workspace's one rule (`husk-tests`' `skip`, which
//! this crate cannot depend on without pulling in the runtime): it prints
//! `SKIPPED <test>: <why>`, or panics under `HUSK_TEST_NO_SKIP=1`.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::thread;

use husk_netlink::{Link, LinkChange, Netlink, NetlinkError};

/// The variable under which a test that would skip fails instead.
const NO_SKIP_ENV: &str = "HUSK_TEST_NO_SKIP";

/// Prints why `test` cannot run, or panics under `HUSK_TEST_NO_SKIP=1`.
pub fn skip(test: &str, why: &str) {
    if std::env::var_os(NO_SKIP_ENV).is_some_and(|v| v == "1") {
        panic!("{test} cannot run here and ${NO_SKIP_ENV}=1 makes a skip a failure: {why}");
    }
    eprintln!("SKIPPED {test}: {why}");
}

/// The name of the running test (libtest names its thread after it).
pub fn test_name() -> String {
    thread::current().name().unwrap_or("a test").to_string()
}

/// Runs `body` on a thread in a new, empty network namespace, with a
/// [`Netlink`] opened there. Skips (see [`skip`]) when not root or when
/// the namespace cannot be made; a panic in `body` fails the test.
pub fn in_private_netns(body: impl FnOnce(&mut Netlink) + Send) {
    let test = test_name();
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return skip(&test, "needs root to make a network namespace");
    }
    let outcome = thread::scope(|scope| {
        thread::Builder::new()
            .name(test.clone())
            .spawn_scoped(scope, || -> Result<(), String> {
                unshare_netns().map_err(|e| format!("cannot make a network namespace: {e}"))?;
                let mut netlink = Netlink::open().expect("opening netlink in the new namespace");
                body(&mut netlink);
                Ok(())
            })
            .expect("spawning the namespace thread")
            .join()
    });
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(why)) => skip(&test, &why),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Moves the calling thread (only it) into a new network namespace.
fn unshare_netns() -> io::Result<()> {
    // SAFETY: unshare takes no pointers; CLONE_NEWNET changes the network
    // namespace of the calling thread only.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Another new network namespace, kept alive by the returned file.
pub fn new_netns() -> File {
    thread::spawn(|| {
        unshare_netns().expect("making a second network namespace");
        File::open("/proc/thread-self/ns/net").expect("opening the second namespace")
    })
    .join()
    .expect("the namespace thread panicked")
}

/// Runs `body` with a [`Netlink`] opened in the namespace of `netns`.
pub fn in_netns<R: Send>(netns: &File, body: impl FnOnce(&mut Netlink) -> R + Send) -> R {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: the fd is a network namespace file, open for the
                // whole call; setns changes the calling thread only.
                let joined = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(joined, 0, "setns: {}", io::Error::last_os_error());
                let mut netlink = Netlink::open().expect("opening netlink in the other namespace");
                body(&mut netlink)
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// The link called `name`.
pub fn link_named(netlink: &mut Netlink, name: &str) -> Link {
    netlink
        .links()
        .expect("listing links")
        .into_iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no link {name}"))
}

/// The link with `index`.
pub fn link_at(netlink: &mut Netlink, index: u32) -> Link {
    netlink
        .links()
        .expect("listing links")
        .into_iter()
        .find(|l| l.index == index)
        .unwrap_or_else(|| panic!("no link {index}"))
}

/// Sets link `index` up.
pub fn set_up(netlink: &mut Netlink, index: u32) {
    let up = LinkChange {
        up: Some(true),
        ..LinkChange::default()
    };
    netlink.set_link(index, &up).expect("setting a link up");
}

/// A veth called `name` (its peer `<name>p`), both ends up; the kernel
/// these tests run on may have no dummy driver.
pub fn link_up(netlink: &mut Netlink, name: &str) -> Link {
    veth_up(netlink, name, &format!("{name}p")).0
}

/// A veth pair, both ends up.
pub fn veth_up(netlink: &mut Netlink, name: &str, peer: &str) -> (Link, Link) {
    netlink.add_veth(name, peer).expect("adding a veth pair");
    let a = link_named(netlink, name).index;
    let b = link_named(netlink, peer).index;
    set_up(netlink, a);
    set_up(netlink, b);
    (link_at(netlink, a), link_at(netlink, b))
}

/// Whether `error` says IPv6 is off (in the kernel, the namespace or on
/// the link), as the guest agent tolerates it.
pub fn ipv6_is_off(error: &NetlinkError) -> bool {
    matches!(
        error.errno(),
        Some(libc::EACCES | libc::EAFNOSUPPORT | libc::EPERM | libc::EOPNOTSUPP)
    )
}

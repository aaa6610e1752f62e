//! The ioctls on a real tap (skipped, saying why, where `/dev/net/tun` or
//! CAP_NET_ADMIN is missing); the taps are not persistent and vanish with
//! their descriptor.

use std::fs::OpenOptions;

use super::*;

/// A new tap with `flags`, or why this host cannot make one.
fn open_tap(flags: libc::c_int) -> Result<OwnedFd, String> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| format!("opening /dev/net/tun: {e}"))?;
    // SAFETY: ifreq is plain data; all zeros is a valid value.
    let mut ifreq: libc::ifreq = unsafe { std::mem::zeroed() };
    ifreq.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which lives through the
    // call.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifreq) } < 0 {
        let e = io::Error::last_os_error();
        return Err(format!("TUNSETIFF (needs CAP_NET_ADMIN): {e}"));
    }
    Ok(OwnedFd::from(file))
}

/// A tap, or `None` after saying why the test is skipped (a failure under
/// `HUSK_TEST_NO_SKIP=1`, as everywhere in the suite).
fn tap_or_skip(flags: libc::c_int) -> Option<OwnedFd> {
    match open_tap(flags) {
        Ok(fd) => Some(fd),
        Err(why) => {
            let thread = std::thread::current();
            let test = thread.name().unwrap_or("a test");
            if std::env::var_os("HUSK_TEST_NO_SKIP").is_some_and(|v| v == "1") {
                panic!("{test} cannot run here and $HUSK_TEST_NO_SKIP=1: {why}");
            }
            eprintln!("SKIPPED {test}: {why}");
            None
        }
    }
}

#[test]
fn a_tap_with_vnet_headers_passes_the_check_and_takes_the_header_and_offloads() {
    let Some(fd) = tap_or_skip(REQUIRED_FLAGS) else {
        return;
    };
    check(fd.as_fd()).unwrap();
    let mut tap = Tap::new(fd).unwrap();

    tap.set_header_len(12).unwrap();
    let all = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_UFO;
    for flags in [all, libc::TUN_F_CSUM, 0] {
        tap.set_offloads(flags).unwrap();
    }

    assert_eq!(tap.header_len(), Some(12));
    assert_eq!(tap.offloads(), Some(0));
}

#[test]
fn a_tap_without_vnet_headers_is_refused() {
    let Some(fd) = tap_or_skip(libc::IFF_TAP | libc::IFF_NO_PI) else {
        return;
    };

    let err = check(fd.as_fd()).unwrap_err();

    let message = err.to_string();
    assert!(
        message.contains("lack IFF_TAP | IFF_NO_PI | IFF_VNET_HDR"),
        "{message}"
    );
    assert!(
        message.starts_with(&format!("tap fd {}: ", fd.as_raw_fd())),
        "{message}"
    );
}

#[test]
fn a_tap_that_is_down_refuses_writes_and_does_not_block_reads() {
    let Some(fd) = tap_or_skip(REQUIRED_FLAGS) else {
        return;
    };
    let mut tap = Tap::new(fd).unwrap();
    tap.set_header_len(12).unwrap();

    let written = tap.write(&[0u8; 12 + 60]);
    let read = tap.read(&mut [0u8; 128]);

    assert_eq!(written.unwrap_err().raw_os_error(), Some(libc::EIO));
    assert_eq!(read.unwrap_err().kind(), io::ErrorKind::WouldBlock);
}

#[test]
fn a_socket_standing_in_for_a_tap_only_records_its_settings() {
    let (tap, _host) = crate::devices::virtio::test_utils::seqpacket_pair();
    assert!(check(tap.as_fd()).is_err(), "a socket is no tap");
    let mut tap = Tap::from_socket_for_tests(tap);

    tap.set_header_len(12).unwrap();
    tap.set_offloads(libc::TUN_F_CSUM).unwrap();

    assert_eq!(tap.header_len(), Some(12));
    assert_eq!(tap.offloads(), Some(libc::TUN_F_CSUM));
}

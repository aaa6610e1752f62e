//! A trivial PID 1 for the boot benchmark's baseline and for tests of boot
//! failures: it prints [`READY_MARKER`] on the console and powers the VM off,
//! or, with `husk.bare=hang` on the kernel command line, waits forever (a
//! guest whose agent never answers).

/// What the baseline's host side waits for on the serial console.
const READY_MARKER: &str = "HUSK-BARE-INIT-READY";

fn main() {
    std::fs::create_dir_all("/proc").ok();
    // SAFETY: every pointer is a NUL-terminated literal that outlives the call.
    unsafe {
        libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            0,
            std::ptr::null(),
        );
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    println!("{READY_MARKER}");
    if cmdline
        .split_whitespace()
        .any(|arg| arg == "husk.bare=hang")
    {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    // SAFETY: sync and reboot take no pointers; as PID 1 we are allowed to reboot.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
}

//! husk-agent: PID 1 of every husk guest.
//!
//! Boot sequence: block SIGCHLD (so the reaper thread owns it), mount the
//! pseudo filesystems and the sandbox share, connect out to the host over
//! vsock, say hello, serve requests, and power the VM off when told to, when
//! the host goes away, or when anything fatal happens (a guest without its
//! agent is of no use to anyone).

mod container;
mod init;
mod network;
mod outbox;
mod reaper;
mod server;
mod syscall;
mod vsock;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use husk_protocol::{
    FrameReader, GuestMessage, Hello, AGENT_PORT, PROTOCOL_VERSION, SHARE_MOUNTPOINT,
};

use crate::syscall::LinuxSyscalls;

/// How long the agent retries its first connection to the host.
const CONNECT_ATTEMPTS: u32 = 100;
const CONNECT_RETRY: Duration = Duration::from_millis(20);

fn main() {
    if std::env::args().nth(1).as_deref() == Some(container::stage::STAGE_ARG) {
        container::stage::main();
    }
    if std::process::id() != 1 {
        eprintln!("husk-agent: must run as PID 1 (/init) of a husk guest");
        std::process::exit(2);
    }
    match run() {
        Ok(outcome) => log(&format!("{outcome:?}, powering off")),
        Err(e) => log(&format!("fatal: {e:#}; powering off")),
    }
    power_off();
}

fn run() -> Result<server::Outcome> {
    reaper::block_sigchld().context("blocking SIGCHLD")?;
    init::leave_initramfs().context("moving the root off the initramfs")?;
    init::mount_base(&LinuxSyscalls)?;
    if let Err(e) = network::bring_up_loopback() {
        log(&format!("{e:#}"));
    }
    if let Err(e) = network::port_forward::start() {
        log(&format!("{e:#}"));
    }
    let share = init::mount_share(&LinuxSyscalls);
    if let Err(e) = &share {
        log(e);
    }
    reaper::spawn().context("starting the reaper thread")?;

    let port = cmdline_port()?;
    let conn = connect(port)?;
    let writer = conn.try_clone().context("cloning the host connection")?;
    let outbox = outbox::Outbox::new(writer);
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel_release: kernel_release(),
        boot_time_ns: server::boot_time_ns(),
        share,
    };
    outbox
        .send(&GuestMessage::Hello(hello))
        .context("sending hello")?;
    let mut reader = FrameReader::new(conn);
    let outcome = server::serve(&mut reader, &outbox, SHARE_MOUNTPOINT.as_ref())?;
    Ok(outcome)
}

/// The host port from `husk.port=` on the kernel command line, or the default.
fn cmdline_port() -> Result<u32> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")?;
    match cmdline
        .split_whitespace()
        .find_map(|arg| arg.strip_prefix("husk.port="))
    {
        None => Ok(AGENT_PORT),
        Some(p) => match p.parse() {
            Ok(port) => Ok(port),
            Err(_) => bail!("bad husk.port={p:?} on the kernel command line"),
        },
    }
}

fn connect(port: u32) -> Result<UnixStream> {
    let mut attempt = 0;
    loop {
        match vsock::connect_host(port) {
            Ok(conn) => return Ok(conn),
            Err(e) if attempt + 1 < CONNECT_ATTEMPTS => {
                attempt += 1;
                if attempt == 1 {
                    log(&format!("connecting to host port {port}: {e}; retrying"));
                }
                std::thread::sleep(CONNECT_RETRY);
            }
            Err(e) => {
                return Err(e).with_context(|| format!("connecting to vsock host port {port}"))
            }
        }
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn log(message: &str) {
    let _ = writeln!(std::io::stderr(), "husk-agent: {message}");
}

/// Ends the VM. The host boots the kernel with `reboot=t` and a VMM that
/// exits on reset, so a restart is the fastest way out on every backend.
fn power_off() -> ! {
    // SAFETY: sync and reboot take no pointers; PID 1 may reboot.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    // Only reached if reboot(2) failed; PID 1 exiting panics the kernel,
    // which (panic=-1) resets the VM as well.
    std::process::exit(1)
}

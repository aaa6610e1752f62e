//! `husk-vmm`: runs one microVM until the guest ends or the host says stop.
//!
//! The husk runtime starts one per container with a description of that
//! sandbox's VM (`--config FILE`, a [`husk_vm_spec::VmSpec`]: kernel,
//! initramfs, size, console log, devices); see [`husk_vmm::builder`]. It
//! jails itself first ([`husk_vmm::jail`]) unless the description says not
//! to. Exit
//! status: 0 when the guest rebooted, powered off or was stopped through the
//! control socket, 1 when building the VM failed or the VM crashed.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use husk_vmm::control::{self, Followup};
use husk_vmm::jail::{self, ThreadKind};
use husk_vmm::{boot, prepare, VmExit, VmSpec};

/// Runs one KVM microVM.
#[derive(Parser, Debug)]
#[command(name = "husk-vmm", version)]
struct Args {
    /// The VM description (JSON, husk_vm_spec::VmSpec).
    #[arg(long)]
    config: PathBuf,
}

fn main() {
    let started = Instant::now();
    let args = Args::parse();
    match run(args, started) {
        Ok(exit) => {
            eprintln!("husk-vmm: {exit}");
            std::process::exit(match exit {
                VmExit::Crashed(_) => 1,
                _ => 0,
            });
        }
        Err(e) => {
            eprintln!("husk-vmm: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run(args: Args, started: Instant) -> Result<VmExit> {
    let config = VmSpec::read(&args.config)?;
    let prepared = prepare(&config)?;
    // After /dev/kvm, memory and the boot files, before any thread starts
    // (see husk_vmm::jail).
    if config.jail {
        jail::confine(&config).context("jailing the monitor")?;
    }
    let control = config
        .control_socket
        .as_ref()
        .map(|path| {
            let _ = std::fs::remove_file(path);
            UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))
        })
        .transpose()?;
    let mut vmm = boot(prepared, &config, started)?;
    jail::enter_thread(ThreadKind::Main);
    let exit_fd = vmm.exit_event().as_raw_fd();
    loop {
        let mut fds = vec![libc::pollfd {
            fd: exit_fd,
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(listener) = &control {
            fds.push(libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: `fds` is a valid array of pollfd of the given length.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if ready < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("waiting for the VM");
        }
        if fds[0].revents != 0 {
            break;
        }
        if let (Some(listener), Some(fd)) = (&control, fds.get(1)) {
            if fd.revents != 0 {
                if let Ok((stream, _)) = listener.accept() {
                    if control::serve(&vmm, stream) == Followup::Stop {
                        break;
                    }
                }
            }
        }
    }
    let exit = vmm.stop();
    if let Some(path) = &config.control_socket {
        let _ = std::fs::remove_file(path);
    }
    Ok(exit)
}

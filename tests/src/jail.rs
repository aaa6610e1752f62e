//! What the jail of a VM's host processes looks like from outside
//! (`/proc/PID/task/*/status`, `/proc/PID/ns/mnt`, `/proc/PID/root`): the
//! checks the CLI and pod suites make on a running sandbox.

use std::path::Path;

use crate::cri::leftovers::{descendants_of, Process};

/// Capabilities no VM helper may keep: CAP_NET_ADMIN (12), CAP_SYS_MODULE
/// (16), CAP_SYS_RAWIO (17), CAP_SYS_PTRACE (19), CAP_SYS_ADMIN (21).
const NEVER_KEPT: u64 = (1 << 12) | (1 << 16) | (1 << 17) | (1 << 19) | (1 << 21);

/// One thread's confinement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadJail {
    /// `Seccomp:` (2: a filter).
    pub seccomp: u32,
    /// `NoNewPrivs:`.
    pub no_new_privs: bool,
    /// `CapEff:`.
    pub cap_eff: u64,
}

/// Every thread of `pid` (empty once it is gone).
pub fn threads_of(pid: u32) -> Vec<ThreadJail> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .map(|status| {
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::trim)
                    .unwrap_or("")
                    .to_string()
            };
            ThreadJail {
                seccomp: field("Seccomp:").parse().unwrap_or(0),
                no_new_privs: field("NoNewPrivs:") == "1",
                cap_eff: u64::from_str_radix(&field("CapEff:"), 16).unwrap_or(u64::MAX),
            }
        })
        .collect()
}

fn own_mount_namespace(pid: u32) -> bool {
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/mnt")).ok();
    ns(&pid.to_string()) != ns("self")
}

/// What the VM processes under `monitor` (a sandbox's monitor or shim)
/// get wrong, and the programs seen. Every thread of the VMM (husk-vmm
/// or QEMU) and of the vsock backend: a seccomp filter, no_new_privs, no
/// capabilities; husk-vmm in a mount namespace whose root has no `/etc`;
/// the virtiofsd that serves (in its own namespace sandbox): a filter,
/// no_new_privs, none of [`NEVER_KEPT`]. (The virtiofsd that built the
/// sandbox and waits for the one serving in it must keep the calls the
/// sandbox needs; it must hold no capability.)
pub fn problems_under(monitor: u32) -> (Vec<String>, Vec<String>) {
    let mut problems = Vec::new();
    let mut seen = Vec::new();
    let processes = descendants_of(monitor);
    let waiters: Vec<u32> = processes
        .iter()
        .filter(|p| p.program() == "virtiofsd")
        .filter_map(|p| crate::cri::leftovers::parent_of(p.pid))
        .collect();
    for process in processes {
        let program = process.program().to_string();
        let threads = threads_of(process.pid);
        let name = format!("{program} ({})", process.pid);
        match program.as_str() {
            "husk-vmm" | "qemu-system-x86_64" | "vhost-device-vsock" => {
                check_threads(&name, &threads, 0, &mut problems);
                if program == "husk-vmm" {
                    check_vmm_root(&process, &name, &mut problems);
                }
            }
            "virtiofsd" if waiters.contains(&process.pid) => {
                if threads.iter().any(|t| t.cap_eff != 0) {
                    problems.push(format!("{name} waits with capabilities: {threads:?}"));
                }
            }
            "virtiofsd" if own_mount_namespace(process.pid) => {
                check_threads(&name, &threads, !NEVER_KEPT, &mut problems);
            }
            _ => continue,
        }
        seen.push(program);
    }
    seen.sort();
    seen.dedup();
    (problems, seen)
}

/// Every thread filtered, no_new_privs, and capabilities within `allowed`.
fn check_threads(name: &str, threads: &[ThreadJail], allowed: u64, problems: &mut Vec<String>) {
    if threads.is_empty() {
        problems.push(format!("{name}: no threads to read"));
    }
    for thread in threads {
        if thread.seccomp != 2 || !thread.no_new_privs || thread.cap_eff & !allowed != 0 {
            problems.push(format!("{name}: a thread has {thread:?}"));
            return;
        }
    }
}

fn check_vmm_root(process: &Process, name: &str, problems: &mut Vec<String>) {
    if !own_mount_namespace(process.pid) {
        problems.push(format!("{name} shares the host's mount namespace"));
    }
    let root = format!("/proc/{}/root", process.pid);
    if Path::new(&root).join("etc").exists() {
        problems.push(format!("{name} sees the host's /etc"));
    }
}

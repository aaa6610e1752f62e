//! The VM's host processes a killed monitor left. Each helper leads its own
//! process group and dies with the monitor (PR_SET_PDEATHSIG), but
//! virtiofsd's namespace sandbox forks, and its inner process, waiting for
//! a VMM that never connected (a monitor killed while it booted), has no
//! such tie. `delete` finds what is left by the VM directory on its command
//! line, among the programs a VM runs, and kills it.

use std::path::Path;

/// The programs of a VM's host processes.
const VM_PROGRAMS: &[&str] = &[
    "husk-vmm",
    "qemu-system-x86_64",
    "virtiofsd",
    "vhost-device-vsock",
];

/// Kills every VM program whose command line names `vm_dir`; their pids.
pub fn kill(vm_dir: &Path) -> Vec<u32> {
    let mut needle = vm_dir.as_os_str().as_encoded_bytes().to_vec();
    needle.push(b'/');
    let mut killed = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let is_vm_program = std::fs::read_link(entry.path().join("exe"))
            .ok()
            .and_then(|exe| exe.file_name().map(|n| n.to_string_lossy().into_owned()))
            .is_some_and(|name| VM_PROGRAMS.contains(&name.as_str()));
        let names_vm_dir = std::fs::read(entry.path().join("cmdline"))
            .is_ok_and(|cmdline| cmdline.windows(needle.len()).any(|w| w == needle));
        if is_vm_program && names_vm_dir {
            // SAFETY: kill takes no pointers; the pid was just read and is
            // a VM program of this container.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            killed.push(pid);
        }
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_that_is_no_vm_program_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let vm = dir.path().join("vm");
        let mut sleeper = std::process::Command::new("sleep")
            .arg("30")
            .arg(vm.join("x"))
            .spawn()
            .unwrap();

        let killed = kill(&vm);

        assert!(!killed.contains(&sleeper.id()));
        assert!(sleeper.try_wait().unwrap().is_none());
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
    }
}

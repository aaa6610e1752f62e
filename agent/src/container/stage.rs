//! The stage: a fresh, single-threaded exec of the agent that enters or
//! creates the container's namespaces, forks the container process (so it is
//! PID 1 of a new pid namespace, or a member of the container's), and waits
//! for it, exiting with its status.
//!
//! The agent talks to the stage and to its child over fd [`CONTROL_FD`], a
//! socketpair carrying JSON lines: the agent sends one [`StageTask`]; the
//! stage answers [`StageReport::Pid`]; the child answers
//! [`StageReport::Ready`] (set up, waiting for `start`) or
//! [`StageReport::Error`]. After `start` the child's end closes on exec,
//! which is how the agent learns the exec succeeded.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use anyhow::{Context, Result};
use husk_protocol::oci::{Process, Seccomp};
use husk_protocol::ContainerSpec;
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};
use serde::{Deserialize, Serialize};

use super::{identity, mounts, seccomp, userns};

/// The fd of the control socket in the stage and its child.
pub const CONTROL_FD: i32 = 3;

/// The fd of the console socket of a process with a terminal
/// ([`super::stdio::open_console`]).
pub const CONSOLE_FD: i32 = 4;

/// The first argument that makes the agent binary run as a stage.
pub const STAGE_ARG: &str = "husk-stage";

/// What the stage is asked to do.
#[derive(Debug, Serialize, Deserialize)]
pub enum StageTask {
    /// Create the container: new namespaces (the sandbox's joined),
    /// rootfs, then wait for start.
    Create {
        /// The container.
        spec: Box<ContainerSpec>,
        /// Where the share is mounted.
        share_root: PathBuf,
        /// The container's cgroup directory.
        cgroup: PathBuf,
        /// The sandbox holder whose namespaces `spec.sandbox_namespaces`
        /// names.
        join: Option<i32>,
    },
    /// Hold a pod's shared namespaces: the child is PID 1 of a new pid
    /// namespace (when asked) and reaps what its containers leave.
    Hold {
        /// The pod's hostname.
        hostname: Option<String>,
        /// The namespace types to make.
        namespaces: Vec<String>,
        /// The holder's cgroup directory.
        cgroup: PathBuf,
    },
    /// Join the container of `target_pid` and run `process` there.
    Exec {
        /// What to run.
        process: Box<Process>,
        /// The container's seccomp profile, applied to exec'd processes too.
        seccomp: Option<Seccomp>,
        /// The container's init, whose namespaces are joined.
        target_pid: i32,
        /// The container's cgroup directory.
        cgroup: PathBuf,
    },
}

/// What the stage and its child report.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum StageReport {
    /// The container process's pid (in the guest's initial namespace).
    Pid(i32),
    /// The child is set up and waits for `start`.
    Ready,
    /// Setup failed.
    Error(String),
}

/// The line the agent sends to let a created container exec.
pub const START_LINE: &str = "start\n";

/// Namespace types of the spec mapped to clone flags. A `user` namespace
/// is made apart ([`userns`]); `time` is refused by the host before.
pub fn clone_flag(kind: &str) -> Option<CloneFlags> {
    Some(match kind {
        "pid" => CloneFlags::CLONE_NEWPID,
        "mount" => CloneFlags::CLONE_NEWNS,
        "uts" => CloneFlags::CLONE_NEWUTS,
        "ipc" => CloneFlags::CLONE_NEWIPC,
        "network" => CloneFlags::CLONE_NEWNET,
        "cgroup" => CloneFlags::CLONE_NEWCGROUP,
        _ => return None,
    })
}

/// The stage's main: never returns.
pub fn main() -> ! {
    // SAFETY: the agent placed the control socket at CONTROL_FD for us and
    // nothing else in this fresh process owns it.
    let control = unsafe { UnixStream::from_raw_fd(CONTROL_FD) };
    let mut reporter = control.try_clone().ok();
    let code = match run(control) {
        Ok(child) => {
            // Every copy of the control socket must be closed here: the
            // agent learns of the exec from its EOF.
            drop(reporter);
            detach_stdio();
            wait_for(child)
        }
        Err(e) => {
            if let Some(r) = reporter.as_mut() {
                report(r, &StageReport::Error(format!("{e:#}")));
            }
            1
        }
    };
    std::process::exit(code)
}

fn report(w: &mut impl Write, r: &StageReport) {
    if let Ok(mut line) = serde_json::to_string(r) {
        line.push('\n');
        let _ = w.write_all(line.as_bytes());
    }
}

/// Sets up and forks; returns the child's pid in the parent.
fn run(control: UnixStream) -> Result<nix::unistd::Pid> {
    let mut reader = BufReader::new(control.try_clone()?);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .context("reading the stage task")?;
    let task: StageTask = serde_json::from_str(&line).context("decoding the stage task")?;
    let cgroup = match &task {
        StageTask::Create { cgroup, .. }
        | StageTask::Exec { cgroup, .. }
        | StageTask::Hold { cgroup, .. } => cgroup.clone(),
    };
    // Opened before any namespace changes, written by the child.
    let procs = File::options()
        .write(true)
        .open(cgroup.join("cgroup.procs"))
        .with_context(|| format!("opening {}/cgroup.procs", cgroup.display()))?;
    let mut new_cgroup_ns = false;
    // A user namespace comes after the rootfs, its maps written from here.
    let user_namespace = match &task {
        StageTask::Create { spec, .. } if spec.namespaces.iter().any(|n| n == "user") => {
            Some(userns::handshake()?)
        }
        _ => None,
    };
    match &task {
        StageTask::Create { spec, join, .. } => {
            if let Some(holder) = join {
                join_namespaces_of(*holder, &spec.sandbox_namespaces)?;
            }
            // The rootfs always gets its own mount namespace. So does the
            // cgroup view: the guest's root cgroup is nothing to share, and
            // a private view shows the container its own limits at
            // /sys/fs/cgroup (docker on a v1 host asks for none). The
            // network is the sandbox's: the guest's own namespace, where
            // the agent configured the NICs of the namespace the engine
            // gave the container on the host.
            let mut flags = CloneFlags::CLONE_NEWNS;
            new_cgroup_ns = true;
            for kind in &spec.namespaces {
                if spec.sandbox_namespaces.contains(kind) || kind == "user" {
                    continue;
                }
                match clone_flag(kind) {
                    Some(CloneFlags::CLONE_NEWCGROUP | CloneFlags::CLONE_NEWNET) => {}
                    Some(f) => flags |= f,
                    None => anyhow::bail!("linux.namespaces: type {kind:?} is not supported"),
                }
            }
            unshare(flags).context("creating the container's namespaces")?;
        }
        StageTask::Exec {
            target_pid,
            process,
            ..
        } => {
            // Limits only the guest's root may raise, before a user
            // namespace is joined; the child inherits them.
            identity::apply_rlimits(&process.rlimits)?;
            identity::apply_oom_score_adj(process)?;
            join_namespaces(*target_pid)?
        }
        StageTask::Hold { namespaces, .. } => {
            let mut flags = CloneFlags::empty();
            for kind in namespaces {
                match clone_flag(kind) {
                    Some(CloneFlags::CLONE_NEWNET) => {}
                    Some(f) => flags |= f,
                    None => anyhow::bail!("the sandbox's namespace {kind:?} is not supported"),
                }
            }
            unshare(flags).context("creating the sandbox's namespaces")?;
        }
    }
    // SAFETY: the stage is single-threaded (a fresh exec), so the child may
    // do anything after fork.
    match unsafe { fork() }.context("forking the container process")? {
        ForkResult::Parent { child } => {
            // The console socket is the child's: a child that fails before
            // sending the console must close the agent's last peer.
            let terminal = match &task {
                StageTask::Create { spec, .. } => spec.process.terminal,
                StageTask::Exec { process, .. } => process.terminal,
                StageTask::Hold { .. } => false,
            };
            if terminal {
                let _ = nix::unistd::close(CONSOLE_FD);
            }
            let mut w = &control;
            report(&mut w, &StageReport::Pid(child.as_raw()));
            if let (Some((writer, entry)), StageTask::Create { spec, .. }) = (user_namespace, &task)
            {
                drop(entry);
                writer.serve(child, &spec.uid_mappings, &spec.gid_mappings);
            }
            Ok(child)
        }
        ForkResult::Child => {
            let mut w = control.try_clone()?;
            let entry = user_namespace.map(|(writer, entry)| {
                // The guest's /proc must not stay open in the container.
                drop(writer);
                entry
            });
            let result = child(task, procs, new_cgroup_ns, entry, &mut reader);
            let e = match result {
                Ok(never) => match never {},
                Err(e) => e,
            };
            report(&mut w, &StageReport::Error(format!("{e:#}")));
            std::process::exit(127)
        }
    }
}

/// Enters the namespaces `kinds` (spec names: `uts`, `ipc`, `pid`) of the
/// sandbox holder `pid`.
fn join_namespaces_of(pid: i32, kinds: &[String]) -> Result<()> {
    for kind in kinds {
        let file = match kind.as_str() {
            "uts" | "ipc" | "pid" => kind.as_str(),
            other => anyhow::bail!("the sandbox's {other:?} namespace cannot be joined"),
        };
        let theirs = format!("/proc/{pid}/ns/{file}");
        let fd: OwnedFd = File::open(&theirs)
            .with_context(|| format!("opening {theirs}"))?
            .into();
        setns(&fd, CloneFlags::empty()).with_context(|| format!("joining {theirs}"))?;
    }
    Ok(())
}

/// Enters every namespace of `pid` that differs from ours; mount last, as
/// it changes the root.
fn join_namespaces(pid: i32) -> Result<()> {
    // The pid and network namespaces are the guest root's; the rest are a
    // user namespace's, if the container has one, so it comes between.
    for kind in ["net", "pid", "user", "ipc", "uts", "cgroup", "mnt"] {
        let theirs = format!("/proc/{pid}/ns/{kind}");
        let ours = format!("/proc/self/ns/{kind}");
        if std::fs::read_link(&theirs).ok() == std::fs::read_link(&ours).ok() {
            continue;
        }
        let fd: OwnedFd = File::open(&theirs)
            .with_context(|| format!("opening {theirs}"))?
            .into();
        setns(&fd, CloneFlags::empty()).with_context(|| format!("joining {theirs}"))?;
    }
    Ok(())
}

fn detach_stdio() {
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        for fd in 0..3 {
            let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
        }
    }
}

fn wait_for(child: nix::unistd::Pid) -> i32 {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 255,
        }
    }
}

/// The container process: sets itself up and execs. Returns only on failure.
fn child(
    task: StageTask,
    procs: File,
    new_cgroup_ns: bool,
    user_namespace: Option<userns::Entry>,
    control: &mut BufReader<UnixStream>,
) -> Result<std::convert::Infallible> {
    (&procs)
        .write_all(b"0")
        .context("joining the container's cgroup")?;
    drop(procs);
    if new_cgroup_ns {
        unshare(CloneFlags::CLONE_NEWCGROUP).context("creating the cgroup namespace")?;
    }
    nix::unistd::setsid().context("setsid")?;
    if let StageTask::Hold { hostname, .. } = &task {
        return hold(hostname.as_deref(), control);
    }
    let mut renew = None;
    let (process, seccomp, wait_for_start) = match task {
        StageTask::Create {
            spec, share_root, ..
        } => {
            setup_container(&spec, &share_root)?;
            if let Some(entry) = user_namespace {
                // A pod's shared uts and ipc stay the pod's.
                let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWCGROUP;
                for kind in ["uts", "ipc"] {
                    let own = spec.namespaces.iter().any(|n| n == kind)
                        && !spec.sandbox_namespaces.iter().any(|n| n == kind);
                    if own {
                        flags |= clone_flag(kind).unwrap_or(CloneFlags::empty());
                    }
                }
                renew = Some((entry, spec.uid_mappings, spec.gid_mappings, flags));
            }
            (spec.process, spec.seccomp, true)
        }
        StageTask::Exec {
            process, seccomp, ..
        } => (*process, seccomp, false),
        StageTask::Hold { .. } => unreachable!("handled above"),
    };
    if process.terminal {
        // SAFETY: the agent placed the console socket at CONSOLE_FD for a
        // process with a terminal; nothing else here owns it.
        let console = unsafe { UnixStream::from_raw_fd(CONSOLE_FD) };
        super::stdio::open_console(&console, process.console_size)?;
    }
    let executable = setup_process(&process)?;
    if let Some((entry, uid, gid, flags)) = renew {
        entry.enter(&uid, &gid, flags)?;
    }
    let caps = process.capabilities.clone().unwrap_or_default();
    if let Some(profile) = seccomp.as_ref().filter(|_| !process.no_new_privileges) {
        seccomp::apply(profile).context("linux.seccomp")?;
    }
    if process.capabilities.is_some() {
        identity::apply_bounding(&caps)?;
    }
    identity::switch_user(&process)?;
    if process.capabilities.is_some() {
        identity::apply_capabilities(&caps)?;
    }
    super::stdio::set_cloexec(&CONTROL_FD).context("marking the control fd close-on-exec")?;
    if wait_for_start {
        let mut w = control.get_ref().try_clone()?;
        report(&mut w, &StageReport::Ready);
        let mut line = String::new();
        control.read_line(&mut line).context("waiting for start")?;
        if line != START_LINE {
            anyhow::bail!("the agent went away before start");
        }
    }
    if process.no_new_privileges {
        nix::sys::prctl::set_no_new_privs().context("prctl(PR_SET_NO_NEW_PRIVS)")?;
        if let Some(profile) = &seccomp {
            seccomp::apply(profile).context("linux.seccomp")?;
        }
    }
    reset_signals();
    Err(identity::exec(&executable, &process))
}

/// The sandbox holder: sets the pod's hostname, says it is ready, then,
/// as PID 1 of the pod's pid namespace, reaps whatever is left to it until
/// the guest ends.
fn hold(
    hostname: Option<&str>,
    control: &mut BufReader<UnixStream>,
) -> Result<std::convert::Infallible> {
    if let Some(name) = hostname {
        nix::unistd::sethostname(name).context("setting the pod's hostname")?;
    }
    let mut w = control.get_ref().try_clone()?;
    report(&mut w, &StageReport::Ready);
    drop(w);
    detach_stdio();
    loop {
        match waitpid(None::<nix::unistd::Pid>, None) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            // Nothing to reap yet: orphans arrive later.
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(500)),
        }
    }
}

/// Gives the workload default signal handling and an empty mask, as a
/// fresh process has: the agent's runtime ignores SIGPIPE, and ignored
/// signals survive execve.
fn reset_signals() {
    use nix::sys::signal::{signal, sigprocmask, SigHandler, SigSet, SigmaskHow, Signal};
    for sig in Signal::iterator() {
        if sig == Signal::SIGKILL || sig == Signal::SIGSTOP {
            continue;
        }
        // SAFETY: installing SIG_DFL runs no code of ours in a handler.
        let _ = unsafe { signal(sig, SigHandler::SigDfl) };
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

fn setup_container(spec: &ContainerSpec, share_root: &std::path::Path) -> Result<()> {
    let has = |kind: &str| spec.namespaces.iter().any(|n| n == kind);
    if has("uts") {
        if let Some(name) = &spec.hostname {
            nix::unistd::sethostname(name).context("setting the hostname")?;
        }
        if let Some(name) = &spec.domainname {
            // SAFETY: the pointer and length describe `name`'s bytes.
            let rc = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error()).context("setting the domainname");
            }
        }
    }
    mounts::setup_rootfs(spec, share_root)?;
    for (key, value) in &spec.sysctl {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        std::fs::write(&path, value)
            .with_context(|| format!("linux.sysctl: setting {key} = {value:?}"))?;
    }
    mounts::mask_paths(&spec.masked_paths)?;
    mounts::readonly_paths(&spec.readonly_paths)?;
    if spec.readonly_root {
        mounts::readonly_root()?;
    }
    Ok(())
}

/// Steps every container process takes: cwd, rlimits, OOM score, and the
/// executable's path.
fn setup_process(process: &Process) -> Result<PathBuf> {
    let cwd = std::path::Path::new(&process.cwd);
    if !cwd.is_dir() {
        std::fs::create_dir_all(cwd).with_context(|| format!("process.cwd {}", process.cwd))?;
    }
    std::env::set_current_dir(cwd).with_context(|| format!("process.cwd {}", process.cwd))?;
    identity::apply_rlimits(&process.rlimits)?;
    identity::apply_oom_score_adj(process)?;
    identity::find_executable(process)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_namespaces_map_to_clone_flags() {
        assert_eq!(clone_flag("pid"), Some(CloneFlags::CLONE_NEWPID));
        assert_eq!(clone_flag("mount"), Some(CloneFlags::CLONE_NEWNS));
        assert_eq!(clone_flag("user"), None);
    }

    #[test]
    fn reports_are_json_lines() {
        let mut out = Vec::new();
        report(&mut out, &StageReport::Pid(42));
        assert_eq!(out, b"{\"Pid\":42}\n");
    }
}

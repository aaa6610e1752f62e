//! The lifecycle operations behind `create`, `start`, `run` and `delete`:
//! each a short sequence of named steps, shared by the commands that use
//! them.
//!
//! `create` starts the monitor as its child with two pipes: fd 3, on which
//! the monitor reports "ok" (or its error) once the container is created in
//! the guest, and fd 4, on which `create` says "go" once the createRuntime
//! and prestart hooks ran. The monitor prepares the share meanwhile, then
//! reads the namespace the engine (or a hook: docker's libnetwork-setkey)
//! filled and boots the VM with its NICs. On any failure everything
//! created so far is removed: the state directory, the share, the monitor.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::oci::container::Container;
use crate::oci::hooks;
use crate::oci::namespaces;
use crate::oci::spec::Bundle;
use crate::oci::state::{check_id, now_rfc3339, process_alive, process_start_time, Record, Status};
use crate::sandbox::control::{ControlReply, ControlRequest};
use crate::sandbox::netns::NetnsPlan;
use crate::sandbox::{host_cgroup, network, share, socket_dir, strays};

/// The fd on which the monitor reports readiness.
pub const READY_FD: i32 = 3;
/// The fd on which the monitor waits for "go" (the hooks ran).
pub const GO_FD: i32 = 4;

/// How long `delete` waits for a killed container's monitor to finish.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// What `create` (and `run`) are given.
pub struct CreateOptions {
    /// `--root`.
    pub root: PathBuf,
    /// The container id.
    pub id: String,
    /// `--bundle`.
    pub bundle: PathBuf,
    /// `--console-socket`.
    pub console_socket: Option<PathBuf>,
    /// `--pid-file`.
    pub pid_file: Option<PathBuf>,
}

/// Creates a container; returns it and its monitor (our child).
pub fn create(opts: &CreateOptions) -> Result<(Container, Child)> {
    check_id(&opts.id).map_err(anyhow::Error::msg)?;
    let bundle = Bundle::load(&opts.bundle)?;
    namespaces::check_paths(&bundle.linux())?;
    if bundle.process().terminal && opts.console_socket.is_none() {
        bail!("process.terminal is set: a --console-socket is required to create it");
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&opts.root)
        .with_context(|| format!("creating the state root {}", opts.root.display()))?;
    let dir = opts.root.join(&opts.id);
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            bail!("container with id {} already exists", opts.id)
        }
        Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
    }
    let mut record = Record {
        id: opts.id.clone(),
        bundle: bundle.dir.clone(),
        rootfs: bundle.rootfs.clone(),
        pid: 0,
        pid_start: 0,
        created: now_rfc3339(),
        annotations: bundle.spec.annotations.clone(),
        owner: "root".into(),
        poststop: bundle.spec.hooks.clone().unwrap_or_default().poststop,
        host_cgroups: host_cgroup_dirs(&bundle),
    };
    let mut monitor: Option<Child> = None;
    let created = (|| {
        record.save(&dir).context("writing state.json")?;
        bundle
            .capture(&dir)
            .context("capturing the spec in the state directory")?;
        let netns = NetnsPlan::from_spec(&bundle.linux())?;
        if let NetnsPlan::Host = netns {
            bail!(
                "the spec shares the host's network namespace (--network host: no network \
                 entry in linux.namespaces, or one naming the runtime's own), which a VM \
                 cannot do"
            );
        }
        let terminal = bundle.process().terminal;
        let (child, ready, go) = spawn_monitor(opts, &bundle.dir, netns, terminal)?;
        let child = monitor.insert(child);
        record.pid = child.id() as i32;
        record.pid_start = process_start_time(record.pid).unwrap_or(0);
        record.save(&dir).context("writing state.json")?;
        // runc runs these in the created namespaces before the container's
        // process starts; the engine's hooks fill the network namespace
        // (docker's libnetwork-setkey), which the monitor reads after "go".
        let all = bundle.spec.hooks.clone().unwrap_or_default();
        let creating = record.state(Status::Creating);
        for (kind, list) in [
            ("createRuntime", &all.create_runtime),
            ("prestart", &all.prestart),
        ] {
            hooks::run(kind, list, &creating).map_err(anyhow::Error::msg)?;
        }
        let mut go = go;
        go.write_all(crate::sandbox::monitor::GO_LINE.as_bytes())
            .context("telling the monitor to go on")?;
        drop(go);
        wait_ready(child, ready)?;
        hooks::run("createContainer", &all.create_container, &creating)
            .map_err(anyhow::Error::msg)?;
        if let Some(path) = &opts.pid_file {
            write_pid_file(path, record.pid)?;
        }
        Ok(())
    })();
    match (created, monitor) {
        (Ok(()), Some(monitor)) => Ok((Container { dir, record }, monitor)),
        (result, monitor) => {
            // Undo everything: the monitor (its VM dies with it), the
            // share's mounts, the host cgroups, the state directory.
            if let Some(mut monitor) = monitor {
                let container = Container {
                    dir: dir.clone(),
                    record: record.clone(),
                };
                // It is our child: a zombie counts as stopped, then we reap it.
                stop_monitor(&container);
                let _ = monitor.kill();
                let _ = monitor.wait();
                strays::kill(&socket_dir::socket_dir(&dir).join(socket_dir::VM_DIR));
            }
            let _ = socket_dir::remove(&dir);
            let _ = share::remove_dir(&dir);
            for cgroup in &record.host_cgroups {
                let _ = fs::remove_dir(cgroup);
            }
            Err(result
                .err()
                .unwrap_or_else(|| anyhow::anyhow!("the monitor did not start")))
        }
    }
}

/// The host cgroup directories the monitor will join (removed by delete).
fn host_cgroup_dirs(bundle: &Bundle) -> Vec<PathBuf> {
    let linux = bundle.linux();
    let Some(relative) = linux
        .cgroups_path
        .as_deref()
        .and_then(host_cgroup::relative_path)
    else {
        return Vec::new();
    };
    host_cgroup::hierarchies()
        .into_iter()
        .map(|root| root.join(&relative))
        .collect()
}

fn spawn_monitor(
    opts: &CreateOptions,
    bundle: &Path,
    netns: NetnsPlan,
    terminal: bool,
) -> Result<(Child, std::io::PipeReader, std::io::PipeWriter)> {
    let (ready_r, ready_w) = std::io::pipe().context("creating the ready pipe")?;
    let (go_r, go_w) = std::io::pipe().context("creating the go pipe")?;
    let exe = std::env::current_exe().context("finding the husk binary")?;
    let mut command = Command::new(exe);
    command
        .arg("--root")
        .arg(&opts.root)
        .arg("sandbox-monitor")
        .arg("--bundle")
        .arg(bundle)
        .arg(&opts.id);
    if let Some(socket) = &opts.console_socket {
        command.arg("--console-socket").arg(socket);
    }
    if terminal {
        // The workload's stdio is the pty. Our own stdio belongs to whoever
        // ran create, which may wait for it to close (containerd's shim).
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
    }
    // Both are moved above the fds they land on first, so that placing
    // one never overwrites the other.
    let ready_fd = fcntl_dup_above(&ready_w, GO_FD + 1)?;
    let go_fd = fcntl_dup_above(&go_r, GO_FD + 1)?;
    // SAFETY: setsid, dup2, close_range, unshare and setns are
    // async-signal-safe and only change this child.
    unsafe {
        command.pre_exec(move || {
            libc::setsid();
            netns.enter()?;
            for (from, to) in [(ready_fd.as_raw_fd(), READY_FD), (go_fd.as_raw_fd(), GO_FD)] {
                if libc::dup2(from, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Fds the engine leaked to us are not the monitor's.
            libc::syscall(libc::SYS_close_range, GO_FD + 1, u32::MAX, 0);
            Ok(())
        });
    }
    let child = command.spawn().context("starting the monitor")?;
    drop(ready_w);
    drop(go_r);
    Ok((child, ready_r, go_w))
}

/// A close-on-exec duplicate of `fd` numbered `min` or above.
fn fcntl_dup_above(fd: &impl AsFd, min: i32) -> Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC duplicates an fd we borrow; the new fd is
    // ours alone.
    let new = unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
    if new < 0 {
        return Err(std::io::Error::last_os_error()).context("duplicating a pipe for the monitor");
    }
    // SAFETY: `new` is a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Waits for the monitor's "ok"; on anything else, waits for it to exit.
fn wait_ready(child: &mut Child, mut ready: std::io::PipeReader) -> Result<()> {
    let mut answer = String::new();
    let _ = ready.read_to_string(&mut answer);
    let answer = answer.trim();
    if answer == "ok" {
        return Ok(());
    }
    let _ = child.kill();
    let _ = child.wait();
    if answer.is_empty() {
        bail!("the monitor exited during setup without a reason (see its log)");
    }
    bail!("{answer}")
}

/// Writes the pid file atomically, as runc does.
pub fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let tmp = path.with_extension("husk-tmp");
    fs::write(&tmp, pid.to_string()).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("writing the pid file {}", path.display()))
}

/// Starts a created container: startContainer hooks, start, poststart hooks.
pub fn start(container: &Container) -> Result<()> {
    let status = container.status();
    match status {
        Status::Created => {}
        Status::Stopped => bail!("cannot start a container that has stopped"),
        Status::Running | Status::Paused => bail!("cannot start an already running container"),
        Status::Creating => bail!("cannot start a container that is still being created"),
    }
    let bundle = container.bundle()?;
    let all = bundle.spec.hooks.unwrap_or_default();
    let state = container.record.state(Status::Created);
    hooks::run("startContainer", &all.start_container, &state).map_err(anyhow::Error::msg)?;
    container.call(&ControlRequest::Start)?;
    let state = container.record.state(Status::Running);
    if let Err(e) = hooks::run("poststart", &all.poststart, &state) {
        eprintln!("husk: warning: {e}");
    }
    Ok(())
}

/// Deletes a container: kills it first with `force` (or when only created),
/// waits for its monitor, removes every trace, runs poststop hooks.
pub fn delete(container: &Container, force: bool) -> Result<()> {
    let status = container.status();
    let id = &container.record.id;
    if matches!(status, Status::Running | Status::Paused) && !force {
        bail!("cannot delete container {id} that is not stopped: {status}");
    }
    if container.monitor_alive() {
        // Also when "stopped": the monitor may still be tearing the VM down.
        stop_monitor(container);
    }
    let vm_dir = socket_dir::socket_dir(&container.dir).join(socket_dir::VM_DIR);
    let strays = strays::kill(&vm_dir);
    if !strays.is_empty() {
        eprintln!("husk: warning: killed the VM processes {strays:?} its monitor left");
    }
    // What a killed monitor left in the engine's namespace.
    if let Some(record) = network::record::Record::load(&container.dir) {
        if let Err(e) = record.undo() {
            eprintln!("husk: warning: undoing the network redirects of {id}: {e}");
        }
    }
    share::remove_dir(&container.dir.join("shared"))?;
    socket_dir::remove(&container.dir)
        .with_context(|| format!("removing the sockets of {}", container.record.id))?;
    for cgroup in &container.record.host_cgroups {
        remove_cgroup(cgroup);
    }
    let state = container.record.state(Status::Stopped);
    if let Err(e) = hooks::run("poststop", &container.record.poststop, &state) {
        eprintln!("husk: warning: {e}");
    }
    share::remove_dir(&container.dir)
}

/// Removes a host cgroup directory, waiting up to a second while it is
/// busy (the monitor's children leave it a moment after the monitor).
fn remove_cgroup(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while let Err(e) = fs::remove_dir(dir) {
        if e.raw_os_error() != Some(libc::EBUSY) || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills the container and waits for its monitor to end (SIGKILL to the
/// monitor if it does not).
fn stop_monitor(container: &Container) {
    let kill = ControlRequest::Kill {
        signal: libc::SIGKILL,
        all: true,
    };
    let asked = matches!(container.call(&kill), Ok(ControlReply::Done));
    let (pid, start) = (container.record.pid, container.record.pid_start);
    let deadline = Instant::now() + if asked { STOP_TIMEOUT } else { Duration::ZERO };
    while pid > 0 && process_alive(pid, start) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if pid > 0 && process_alive(pid, start) {
        // SAFETY: kill takes no pointers; the pid is checked to be our monitor.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while process_alive(pid, start) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

//! The containers in the guest: created on the host's request, each with
//! its own guest cgroup, mount namespace and rootfs in the share, its init
//! and exec'd processes, their stdio relays and exits, signals,
//! pause/resume, limits and counters. A pod's containers share the
//! sandbox's namespaces ([`Request::CreateSandbox`]: a holder process, the
//! pod's pause, keeps them) and the guest's network.
//!
//! Every process starts as a [`stage`]: a fresh exec of this binary that
//! creates or joins the namespaces and forks the real process. The agent
//! watches the stage's exit ([`crate::reaper::watch`]), whose status is the
//! process's, and reports it after the process's output reached EOF.
//!
//! Process ids are the host's and unique in the sandbox; a container's
//! record stays after its init exited, until the host removes it.

pub mod cgroup;
pub mod identity;
pub mod mounts;
pub mod seccomp;
pub mod spawn;
pub mod stage;
pub mod stdio;
pub mod userns;

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use husk_protocol::flow::Windows;
use husk_protocol::oci::{Process, Resources, Seccomp};
use husk_protocol::{
    stream_owner, AgentError, ContainerId, ContainerSpec, GuestMessage, ProcessId, Request,
    Response, SandboxSpec,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::outbox::Outbox;
use cgroup::Cgroup;
use spawn::{read_report, spawn_stage, Spawned};
use stage::{StageReport, StageTask, START_LINE};
use stdio::{AgentEnds, StdinSink};

/// The guest's cgroup v2 root.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// How long an exec'd process's output may stay open after it exited (a
/// background child may hold it) before the exit is reported anyway.
const EXEC_OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// Most containers one sandbox holds at once.
const MAX_CONTAINERS: usize = 256;

/// The containers and their processes.
pub struct Sandbox {
    outbox: Outbox,
    share_root: PathBuf,
    state: Arc<Mutex<State>>,
    /// The send windows of the output streams (the host grants them).
    windows: Arc<Windows>,
}

#[derive(Default)]
struct State {
    /// The pod's namespace holder, once made.
    holder: Option<i32>,
    containers: HashMap<ContainerId, Container>,
    processes: HashMap<ProcessId, Running>,
}

struct Container {
    cgroup: Cgroup,
    init_pid: i32,
    seccomp: Option<Seccomp>,
    /// The init's control socket until it was started.
    pending_start: Option<BufReader<UnixStream>>,
}

struct Running {
    container: ContainerId,
    pid: i32,
    stdin: StdinSink,
    pty: Option<File>,
}

impl Sandbox {
    /// A sandbox without containers yet.
    pub fn new(outbox: Outbox, share_root: &Path) -> Self {
        Sandbox {
            outbox,
            share_root: share_root.to_path_buf(),
            state: Default::default(),
            windows: Default::default(),
        }
    }

    /// Carries out a container request.
    pub fn handle(&self, request: Request) -> Result<Response, AgentError> {
        let result = match request {
            Request::CreateSandbox(spec) => self.create_sandbox(&spec),
            Request::CreateContainer(spec) => self.create(*spec),
            Request::StartContainer { container } => self.start(&container),
            Request::Exec {
                container,
                process,
                spec,
            } => self.exec(&container, process, *spec),
            Request::Signal {
                process,
                signal,
                all,
            } => self.signal(process, signal, all),
            Request::Resize {
                process,
                rows,
                cols,
            } => self.resize(process, rows, cols),
            Request::Pause { container } => {
                self.with_cgroup(&container, |c| c.freeze(true).map(|_| Response::Done))
            }
            Request::Resume { container } => {
                self.with_cgroup(&container, |c| c.freeze(false).map(|_| Response::Done))
            }
            Request::Processes { container } => self.with_cgroup(&container, |c| {
                Ok(Response::Processes {
                    list: c.processes(),
                })
            }),
            Request::Stats { container } => {
                self.with_cgroup(&container, |c| Ok(Response::Stats(c.stats())))
            }
            Request::Update {
                container,
                resources,
            } => self.update(&container, &resources),
            Request::RemoveContainer { container } => self.remove(&container),
            other => Err(anyhow!("{other:?} is not a container request")),
        };
        result.map_err(|e| {
            let errno = e
                .chain()
                .find_map(|c| c.downcast_ref::<nix::errno::Errno>().map(|e| *e as i32));
            AgentError {
                errno,
                message: format!("{e:#}"),
            }
        })
    }

    /// Bytes from the host for a process's stdin.
    pub fn stream_data(&self, stream: u32, data: Vec<u8>) {
        let (process, fd) = stream_owner(stream);
        let state = self.lock();
        if let Some(p) = state.processes.get(&process).filter(|_| fd == 0) {
            p.stdin.write(data);
        }
    }

    /// The host's stdin for a process ended.
    pub fn stream_eof(&self, stream: u32) {
        let (process, fd) = stream_owner(stream);
        let state = self.lock();
        if let Some(p) = state.processes.get(&process).filter(|_| fd == 0) {
            p.stdin.close();
        }
    }

    /// The host consumed `bytes` of an output stream.
    pub fn stream_credit(&self, stream: u32, bytes: u32) {
        self.windows.grant(stream, bytes);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_cgroup(
        &self,
        container: &str,
        f: impl FnOnce(&Cgroup) -> Result<Response>,
    ) -> Result<Response> {
        let cgroup = match self.lock().containers.get(container) {
            Some(c) => c.cgroup.clone(),
            None => bail!("no container {container}"),
        };
        f(&cgroup)
    }

    /// Makes the pod's shared namespaces, kept by a holder process.
    fn create_sandbox(&self, spec: &SandboxSpec) -> Result<Response> {
        if self.lock().holder.is_some() {
            bail!("the sandbox's namespaces already exist");
        }
        let cgroup = Cgroup::create(Path::new(CGROUP_ROOT), "sandbox")?;
        let task = StageTask::Hold {
            hostname: spec.hostname.clone(),
            namespaces: spec.namespaces.clone(),
            cgroup: cgroup.path().to_path_buf(),
        };
        let (_, child) = stdio::pipes()?;
        let Spawned {
            pid, mut control, ..
        } = spawn_stage(&task, child, None)?;
        match read_report(&mut control)? {
            Some(StageReport::Ready) => {}
            Some(StageReport::Error(e)) => bail!("{e}"),
            other => bail!("the sandbox's holder reported {other:?} instead of ready"),
        }
        self.lock().holder = Some(pid);
        Ok(Response::Process { pid })
    }

    fn create(&self, spec: ContainerSpec) -> Result<Response> {
        let id = spec.id.clone();
        let holder = {
            let state = self.lock();
            if state.containers.contains_key(&id) {
                bail!("a container {id} already exists in this sandbox");
            }
            if state.containers.len() >= MAX_CONTAINERS {
                bail!("the sandbox holds {MAX_CONTAINERS} containers already");
            }
            if state.processes.contains_key(&spec.init) {
                bail!("process id {} is in use", spec.init);
            }
            state.holder
        };
        let join = match (spec.sandbox_namespaces.is_empty(), holder) {
            (true, _) => None,
            (false, Some(pid)) => Some(pid),
            (false, None) => bail!(
                "container {id} joins the sandbox's namespaces ({}) but the sandbox has none",
                spec.sandbox_namespaces.join(", ")
            ),
        };
        let cgroup = Cgroup::create(Path::new(CGROUP_ROOT), &cgroup_name(&id))?;
        let created = self.create_in(spec, &cgroup, join);
        if created.is_err() {
            let _ = cgroup.remove();
        }
        created
    }

    fn create_in(
        &self,
        spec: ContainerSpec,
        cgroup: &Cgroup,
        join: Option<i32>,
    ) -> Result<Response> {
        cgroup.apply(&spec.resources).context("linux.resources")?;
        let stdio = stdio::for_process(&spec.process)?;
        let (id, init, seccomp) = (spec.id.clone(), spec.init, spec.seccomp.clone());
        let task = StageTask::Create {
            spec: Box::new(spec),
            share_root: self.share_root.clone(),
            cgroup: cgroup.path().to_path_buf(),
            join,
        };
        let (console, stage_console) = stdio.console.unzip();
        let Spawned {
            pid,
            exited,
            mut control,
        } = spawn_stage(&task, stdio.child, stage_console)?;
        let ends = agent_ends(stdio.agent, console, &mut control)?;
        match read_report(&mut control)? {
            Some(StageReport::Ready) => {}
            Some(StageReport::Error(e)) => bail!("{e}"),
            other => bail!("the container process reported {other:?} instead of ready"),
        }
        self.track(&id, init, pid, exited, ends, None)?;
        self.lock().containers.insert(
            id,
            Container {
                cgroup: cgroup.clone(),
                init_pid: pid,
                seccomp,
                pending_start: Some(control),
            },
        );
        Ok(Response::Process { pid })
    }

    fn start(&self, container: &str) -> Result<Response> {
        let mut control = {
            let mut state = self.lock();
            let Some(record) = state.containers.get_mut(container) else {
                bail!("no container {container}");
            };
            match record.pending_start.take() {
                Some(c) => c,
                None => bail!("container {container} was already started"),
            }
        };
        control
            .get_mut()
            .write_all(START_LINE.as_bytes())
            .context("telling the container process to start")?;
        match read_report(&mut control)? {
            None => Ok(Response::Done),
            Some(StageReport::Error(e)) => bail!("{e}"),
            Some(other) => bail!("unexpected report {other:?} after start"),
        }
    }

    fn exec(&self, container: &str, process: ProcessId, spec: Process) -> Result<Response> {
        let (target_pid, cgroup, seccomp) = {
            let state = self.lock();
            if state.processes.contains_key(&process) {
                bail!("process id {process} is in use");
            }
            match state.containers.get(container) {
                Some(c) if c.pending_start.is_none() => {
                    (c.init_pid, c.cgroup.path().to_path_buf(), c.seccomp.clone())
                }
                Some(_) => bail!("container {container} is not running (created, not started)"),
                None => bail!("no container {container}"),
            }
        };
        if !alive(target_pid) {
            bail!("container {container} is not running");
        }
        let stdio = stdio::for_process(&spec)?;
        let task = StageTask::Exec {
            process: Box::new(spec),
            seccomp,
            target_pid,
            cgroup,
        };
        let (console, stage_console) = stdio.console.unzip();
        let Spawned {
            pid,
            exited,
            mut control,
        } = spawn_stage(&task, stdio.child, stage_console)?;
        let ends = agent_ends(stdio.agent, console, &mut control)?;
        match read_report(&mut control)? {
            None => {}
            Some(StageReport::Error(e)) => bail!("{e}"),
            Some(other) => bail!("unexpected report {other:?} from the exec'd process"),
        }
        self.track(
            container,
            process,
            pid,
            exited,
            ends,
            Some(EXEC_OUTPUT_GRACE),
        )?;
        Ok(Response::Process { pid })
    }

    /// Starts the relays and the exit watcher of a process.
    fn track(
        &self,
        container: &str,
        process: ProcessId,
        pid: i32,
        exited: std::sync::mpsc::Receiver<crate::reaper::ExitStatus>,
        ends: AgentEnds,
        grace: Option<Duration>,
    ) -> Result<()> {
        let relays = stdio::start(process, ends, &self.outbox, &self.windows)?;
        self.lock().processes.insert(
            process,
            Running {
                container: container.to_string(),
                pid,
                stdin: relays.stdin,
                pty: relays.pty,
            },
        );
        let outbox = self.outbox.clone();
        let state = Arc::clone(&self.state);
        let (outputs_done, outputs) = (relays.outputs_done, relays.outputs);
        std::thread::Builder::new()
            .name(format!("exit-{process}"))
            .spawn(move || {
                let code = exited.recv().map_or(255, |s| s.code());
                for _ in 0..outputs {
                    let done = match grace {
                        None => outputs_done.recv().is_ok(),
                        Some(g) => outputs_done.recv_timeout(g).is_ok(),
                    };
                    if !done {
                        break;
                    }
                }
                state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .processes
                    .remove(&process);
                let _ = outbox.send(&GuestMessage::ProcessExited {
                    process,
                    exit_code: code,
                });
            })
            .context("starting the exit watcher")?;
        Ok(())
    }

    fn signal(&self, process: ProcessId, signal: i32, all: bool) -> Result<Response> {
        let signal = Signal::try_from(signal).with_context(|| format!("signal {signal}"))?;
        let state = self.lock();
        let Some(target) = state.processes.get(&process) else {
            bail!("process {process} is not running");
        };
        if all {
            if let Some(container) = state.containers.get(&target.container) {
                for pid in container.cgroup.pids() {
                    let _ = kill(Pid::from_raw(pid), signal);
                }
            }
            return Ok(Response::Done);
        }
        kill(Pid::from_raw(target.pid), signal)
            .with_context(|| format!("sending {signal} to pid {}", target.pid))?;
        Ok(Response::Done)
    }

    fn resize(&self, process: ProcessId, rows: u16, cols: u16) -> Result<Response> {
        let state = self.lock();
        match state.processes.get(&process).and_then(|p| p.pty.as_ref()) {
            Some(master) => stdio::resize(master, rows, cols).map(|_| Response::Done),
            None => bail!("process {process} has no terminal"),
        }
    }

    fn update(&self, container: &str, resources: &Resources) -> Result<Response> {
        self.with_cgroup(container, |c| c.apply(resources).map(|_| Response::Done))
    }

    /// Forgets a container: whatever still runs in its cgroup is killed,
    /// the cgroup removed.
    fn remove(&self, container: &str) -> Result<Response> {
        let record = self
            .lock()
            .containers
            .remove(container)
            .ok_or_else(|| anyhow!("no container {container}"))?;
        record
            .cgroup
            .remove()
            .with_context(|| format!("removing the cgroup of {container}"))?;
        Ok(Response::Done)
    }
}

/// The agent's ends of a started stage's stdio: its pipes, or the master
/// of the console it opened in the container (a stage that closes the
/// console socket without one failed: its report says why).
fn agent_ends(
    pipes: Option<AgentEnds>,
    console: Option<UnixStream>,
    control: &mut BufReader<UnixStream>,
) -> Result<AgentEnds> {
    let Some(console) = console else {
        return pipes.ok_or_else(|| anyhow!("a process without stdio"));
    };
    match stdio::receive_console(&console)? {
        Some(master) => Ok(AgentEnds::Pty { master }),
        None => match read_report(control)? {
            Some(StageReport::Error(e)) => bail!("{e}"),
            other => bail!("the process sent no console (then {other:?})"),
        },
    }
}

/// The guest cgroup of container `id`: its id, where the cgroup
/// filesystem allows it.
fn cgroup_name(id: &str) -> String {
    let safe: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(200)
        .collect();
    format!("c-{safe}")
}

fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_names_keep_safe_ids_and_replace_the_rest() {
        assert_eq!(cgroup_name("web-1.a_b"), "c-web-1.a_b");
        assert_eq!(cgroup_name("a/b c"), "c-a_b_c");
        assert_eq!(cgroup_name(&"x".repeat(300)).len(), 202);
    }
}

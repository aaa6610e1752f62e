//! The container in the guest: created on the host's request, its init and
//! exec'd processes, their stdio relays and exits, signals, pause/resume,
//! limits and counters.
//!
//! Every process starts as a [`stage`]: a fresh exec of this binary that
//! creates or joins the namespaces and forks the real process. The agent
//! watches the stage's exit ([`crate::reaper::watch`]), whose status is the
//! process's, and reports it after the process's output reached EOF.

pub mod cgroup;
pub mod identity;
pub mod mounts;
pub mod seccomp;
pub mod stage;
pub mod stdio;

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use husk_protocol::oci::{Process, Resources, Seccomp};
use husk_protocol::{
    stream_owner, AgentError, ContainerSpec, GuestMessage, ProcessId, Request, Response,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::outbox::Outbox;
use cgroup::Cgroup;
use stage::{StageReport, StageTask, CONTROL_FD, STAGE_ARG, START_LINE};
use stdio::{AgentEnds, ChildEnds, StdinSink};

/// The guest's cgroup v2 root.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// How long an exec'd process's output may stay open after it exited (a
/// background child may hold it) before the exit is reported anyway.
const EXEC_OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// The container and its processes.
pub struct Sandbox {
    outbox: Outbox,
    share_root: PathBuf,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    container: Option<Container>,
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
    pid: i32,
    stdin: StdinSink,
    pty: Option<File>,
}

impl Sandbox {
    /// A sandbox without a container yet.
    pub fn new(outbox: Outbox, share_root: &Path) -> Self {
        Sandbox {
            outbox,
            share_root: share_root.to_path_buf(),
            state: Default::default(),
        }
    }

    /// Carries out a container request.
    pub fn handle(&self, request: Request) -> Result<Response, AgentError> {
        let result = match request {
            Request::CreateContainer(spec) => self.create(*spec),
            Request::StartContainer => self.start(),
            Request::Exec { process, spec } => self.exec(process, *spec),
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
            Request::Pause => self.with_cgroup(|c| c.freeze(true).map(|_| Response::Done)),
            Request::Resume => self.with_cgroup(|c| c.freeze(false).map(|_| Response::Done)),
            Request::Processes => self.with_cgroup(|c| {
                Ok(Response::Processes {
                    list: c.processes(),
                })
            }),
            Request::Stats => self.with_cgroup(|c| Ok(Response::Stats(c.stats()))),
            Request::Update(resources) => self.update(&resources),
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

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_cgroup(&self, f: impl FnOnce(&Cgroup) -> Result<Response>) -> Result<Response> {
        let cgroup = match &self.lock().container {
            Some(c) => c.cgroup.clone(),
            None => bail!("no container has been created"),
        };
        f(&cgroup)
    }

    fn create(&self, spec: ContainerSpec) -> Result<Response> {
        if self.lock().container.is_some() {
            bail!("a container already exists in this sandbox");
        }
        let cgroup = Cgroup::create(Path::new(CGROUP_ROOT), "container")?;
        cgroup.apply(&spec.resources).context("linux.resources")?;
        let ends = stdio::for_process(&spec.process)?;
        let seccomp = spec.seccomp.clone();
        let task = StageTask::Create {
            spec: Box::new(spec),
            share_root: self.share_root.clone(),
            cgroup: cgroup.path().to_path_buf(),
        };
        let Spawned {
            pid,
            exited,
            mut control,
        } = spawn_stage(&task, ends.1)?;
        match read_report(&mut control)? {
            Some(StageReport::Ready) => {}
            Some(StageReport::Error(e)) => bail!("{e}"),
            other => bail!("the container process reported {other:?} instead of ready"),
        }
        self.track(0, pid, exited, ends.0, None)?;
        self.lock().container = Some(Container {
            cgroup,
            init_pid: pid,
            seccomp,
            pending_start: Some(control),
        });
        Ok(Response::Process { pid })
    }

    fn start(&self) -> Result<Response> {
        let mut control = {
            let mut state = self.lock();
            let Some(container) = state.container.as_mut() else {
                bail!("no container has been created");
            };
            match container.pending_start.take() {
                Some(c) => c,
                None => bail!("the container was already started"),
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

    fn exec(&self, process: ProcessId, spec: Process) -> Result<Response> {
        let (target_pid, cgroup, seccomp) = {
            let state = self.lock();
            if process == 0 || state.processes.contains_key(&process) {
                bail!("process id {process} is in use");
            }
            match &state.container {
                Some(c) if c.pending_start.is_none() => {
                    (c.init_pid, c.cgroup.path().to_path_buf(), c.seccomp.clone())
                }
                Some(_) => bail!("the container is not running (created, not started)"),
                None => bail!("no container has been created"),
            }
        };
        if !state_alive(target_pid) {
            bail!("the container is not running");
        }
        let ends = stdio::for_process(&spec)?;
        let task = StageTask::Exec {
            process: Box::new(spec),
            seccomp,
            target_pid,
            cgroup,
        };
        let Spawned {
            pid,
            exited,
            mut control,
        } = spawn_stage(&task, ends.1)?;
        match read_report(&mut control)? {
            None => {}
            Some(StageReport::Error(e)) => bail!("{e}"),
            Some(other) => bail!("unexpected report {other:?} from the exec'd process"),
        }
        self.track(process, pid, exited, ends.0, Some(EXEC_OUTPUT_GRACE))?;
        Ok(Response::Process { pid })
    }

    /// Starts the relays and the exit watcher of a process.
    fn track(
        &self,
        process: ProcessId,
        pid: i32,
        exited: std::sync::mpsc::Receiver<crate::reaper::ExitStatus>,
        ends: AgentEnds,
        grace: Option<Duration>,
    ) -> Result<()> {
        let relays = stdio::start(process, ends, &self.outbox)?;
        self.lock().processes.insert(
            process,
            Running {
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
        if all {
            let Some(container) = &state.container else {
                bail!("no container has been created");
            };
            for pid in container.cgroup.pids() {
                let _ = kill(Pid::from_raw(pid), signal);
            }
            return Ok(Response::Done);
        }
        let Some(target) = state.processes.get(&process) else {
            bail!("process {process} is not running");
        };
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

    fn update(&self, resources: &Resources) -> Result<Response> {
        self.with_cgroup(|c| c.apply(resources).map(|_| Response::Done))
    }
}

fn state_alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

/// A started stage.
struct Spawned {
    /// The container process's pid.
    pid: i32,
    /// The stage's exit status, which is the process's.
    exited: std::sync::mpsc::Receiver<crate::reaper::ExitStatus>,
    /// The control socket.
    control: BufReader<UnixStream>,
}

/// Starts a stage with `task`.
fn spawn_stage(task: &StageTask, child: ChildEnds) -> Result<Spawned> {
    let (mut ours, theirs) = UnixStream::pair().context("creating the stage socketpair")?;
    let theirs_fd = theirs.as_raw_fd();
    let [stdin, stdout, stderr] = child.0;
    let mut command = Command::new("/proc/self/exe");
    command
        .arg0(STAGE_ARG)
        .arg(STAGE_ARG)
        .env_clear()
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr));
    // SAFETY: dup2 is async-signal-safe; it only touches fds of the child.
    unsafe {
        command.pre_exec(move || {
            // dup2 onto itself keeps close-on-exec set: clear it instead.
            let rc = if theirs_fd == CONTROL_FD {
                libc::fcntl(theirs_fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(theirs_fd, CONTROL_FD)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (stage, exited) =
        crate::reaper::spawn_watched(|| command.spawn()).context("starting the container stage")?;
    drop(theirs);
    drop(stage);
    let mut line = serde_json::to_string(task).context("encoding the stage task")?;
    line.push('\n');
    ours.write_all(line.as_bytes())
        .context("sending the stage task")?;
    let mut control = BufReader::new(ours);
    match read_report(&mut control)? {
        Some(StageReport::Pid(pid)) => Ok(Spawned {
            pid,
            exited,
            control,
        }),
        Some(StageReport::Error(e)) => {
            let _ = exited.recv();
            Err(anyhow!("{e}"))
        }
        other => Err(anyhow!("the stage reported {other:?} instead of a pid")),
    }
}

/// Reads one report; `None` when the other end closed (the process exec'd).
fn read_report(control: &mut BufReader<UnixStream>) -> Result<Option<StageReport>> {
    let mut line = String::new();
    let n = control
        .read_line(&mut line)
        .context("reading from the container process")?;
    if n == 0 {
        return Ok(None);
    }
    serde_json::from_str(&line)
        .map(Some)
        .with_context(|| format!("bad report from the stage: {line:?}"))
}

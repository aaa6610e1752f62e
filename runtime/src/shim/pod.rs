//! The tasks one shim serves: a pod (its sandbox task is the VM itself,
//! its containers records in that VM, added and removed while it runs) or
//! a container with a VM of its own. Every task operation of the shim's
//! Task service lands here, checked against the task's state.
//!
//! The VM is booted by a keeper thread that joined the pod's network
//! namespace and lives as long as the VM (the VMM's helpers die with the
//! thread that started them), and is shut down when the task that owns it
//! (the sandbox, or the standalone container) is deleted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::SystemTime;

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use husk_protocol::oci::{Process, Resources};
use husk_protocol::{ProcessId, Request, Response, SandboxSpec, Stats};

use super::error::TaskError;
use super::events::{Event, Events};
use super::io::StdioPaths;
use super::port_forward;
use super::spec::{pod_namespaces, pod_size, TaskKind, POD_NAMESPACES};
use crate::config::Config;
use crate::oci::spec::Bundle;
use crate::sandbox::instance::{InputRelay, NewContainer, Sandbox, SandboxOptions};
use crate::sandbox::{network, share};

/// A process's state, as containerd's `State` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Frozen.
    Paused,
    /// Ended.
    Stopped,
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Exited {
    /// Its exit status (128 + N for a signal).
    pub status: u32,
    /// When.
    pub at: Timestamp,
}

/// Filled once, when a process ends; `wait` blocks on it.
#[derive(Default)]
struct ExitCell {
    exited: Mutex<Option<Exited>>,
    ended: Condvar,
}

impl ExitCell {
    fn set(&self, status: u32) -> Exited {
        let exited = Exited { status, at: now() };
        let mut slot = self.exited.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(exited.clone());
        }
        self.ended.notify_all();
        slot.clone().unwrap_or(exited)
    }

    fn get(&self) -> Option<Exited> {
        self.exited
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn wait(&self) -> Exited {
        let mut slot = self.exited.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(exited) = slot.clone() {
                return exited;
            }
            slot = self.ended.wait(slot).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// One process of a task.
struct Proc {
    /// Its id in the sandbox (none for a pod's sandbox task).
    process: Option<ProcessId>,
    /// The pid containerd sees: the VMM's.
    pid: u32,
    started: bool,
    exit: Arc<ExitCell>,
    input: Option<InputRelay>,
}

/// An exec of a task, before and after its start.
struct Exec {
    spec: Process,
    stdio: StdioPaths,
    /// Filled when it ends (containerd waits on it before the start).
    exit: Arc<ExitCell>,
    proc: Option<Proc>,
}

/// One task.
struct Task {
    kind: TaskKind,
    bundle: PathBuf,
    /// Where the shim mounted containerd's rootfs mounts, if it did.
    rootfs: Option<PathBuf>,
    stdio: StdioPaths,
    init: Proc,
    paused: bool,
    execs: HashMap<String, Exec>,
}

/// The pod's VM and the thread that keeps it.
struct PodVm {
    sandbox: Arc<Sandbox>,
    /// Dropping it lets the keeper thread shut the VM down.
    keeper: Sender<()>,
    /// The task whose delete ends the VM.
    owner: String,
    dir: PathBuf,
}

#[derive(Default)]
struct State {
    vm: Option<PodVm>,
    tasks: HashMap<String, Task>,
}

/// What `create` gets.
pub struct CreateTask {
    /// The task (container) id.
    pub id: String,
    /// The bundle directory.
    pub bundle: PathBuf,
    /// containerd's rootfs mounts: (type, source, options).
    pub rootfs: Vec<(String, String, Vec<String>)>,
    /// The init's stdio.
    pub stdio: StdioPaths,
}

/// The tasks of one shim.
pub struct Pod {
    /// Where each VM's state directory goes (`<root>/<task id>`).
    root: PathBuf,
    events: Events,
    state: Mutex<State>,
}

impl Pod {
    /// A shim with no task yet, keeping VM state under `root`.
    pub fn new(root: PathBuf, events: Events) -> Pod {
        Pod {
            root,
            events,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether no task remains (the shim may exit).
    pub fn is_empty(&self) -> bool {
        self.lock().tasks.is_empty()
    }

    /// Creates a task: a pod's VM, a container in it, or a container with
    /// a VM of its own. Returns the pid containerd sees.
    pub fn create(self: &Arc<Self>, task: CreateTask) -> Result<u32, TaskError> {
        if self.lock().tasks.contains_key(&task.id) {
            return Err(TaskError::AlreadyExists(format!(
                "task {} already exists",
                task.id
            )));
        }
        let rootfs = mount_rootfs(&task.bundle, &task.rootfs)?;
        let created = self.create_mounted(&task, rootfs.clone());
        if created.is_err() {
            if let Some(target) = &rootfs {
                unmount(target);
            }
        }
        created
    }

    fn create_mounted(
        self: &Arc<Self>,
        task: &CreateTask,
        rootfs: Option<PathBuf>,
    ) -> Result<u32, TaskError> {
        let bundle = Bundle::load(&task.bundle)
            .map_err(|e| TaskError::InvalidArgument(format!("{:#}", anyhow::Error::new(e))))?;
        let kind = TaskKind::of(&bundle.spec.annotations).map_err(TaskError::InvalidArgument)?;
        let (pid, process) = match &kind {
            TaskKind::PodSandbox => (self.boot_vm(&task.id, &bundle, true)?, None),
            TaskKind::PodContainer { sandbox } => {
                let vm = self.vm_of(sandbox)?;
                let (joined, own) = pod_namespaces(&bundle);
                let process = self.add_container(&vm, task, &bundle, joined, own)?;
                (vm.vm_pid(), Some(process))
            }
            TaskKind::Standalone => {
                let pid = self.boot_vm(&task.id, &bundle, false)?;
                let vm = self.vm_of(&task.id)?;
                let own = bundle
                    .linux()
                    .namespaces
                    .iter()
                    .map(|n| n.kind.clone())
                    .collect();
                match self.add_container(&vm, task, &bundle, Vec::new(), own) {
                    Ok(process) => (pid, Some(process)),
                    Err(e) => {
                        self.end_vm();
                        return Err(e);
                    }
                }
            }
        };
        let (process, input, exit) = match process {
            Some((process, input, exit)) => (Some(process), Some(input), exit),
            None => (None, None, Arc::default()),
        };
        self.lock().tasks.insert(
            task.id.clone(),
            Task {
                kind,
                bundle: task.bundle.clone(),
                rootfs,
                stdio: task.stdio.clone(),
                init: Proc {
                    process,
                    pid,
                    started: false,
                    exit,
                    input,
                },
                paused: false,
                execs: HashMap::new(),
            },
        );
        self.events.publish(Event::Create {
            id: task.id.clone(),
            bundle: task.bundle.to_string_lossy().into_owned(),
            io: containerd_shim::protos::events::task::TaskIO {
                stdin: task.stdio.stdin.clone(),
                stdout: task.stdio.stdout.clone(),
                stderr: task.stdio.stderr.clone(),
                terminal: task.stdio.terminal,
                ..Default::default()
            },
            pid,
        });
        Ok(pid)
    }

    /// Boots the VM of `owner` (a pod's sandbox, or a standalone
    /// container) in the network namespace its spec names, from a keeper
    /// thread that lives as long as the VM; returns the VMM's pid.
    fn boot_vm(&self, owner: &str, bundle: &Bundle, pod: bool) -> Result<u32, TaskError> {
        if self.lock().vm.is_some() {
            return Err(TaskError::FailedPrecondition(format!(
                "this shim already runs a VM; {owner} needs one of its own"
            )));
        }
        let (config, _) = Config::load().map_err(|e| TaskError::Internal(format!("{e:#}")))?;
        let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let (memory_mib, vcpus) = if pod {
            pod_size(&bundle.spec.annotations, &config, host_cpus)
        } else {
            let linux = bundle.linux();
            (
                crate::sandbox::sizing::memory_mib(linux.resources.as_ref(), config.memory_mib),
                crate::sandbox::sizing::vcpus(linux.resources.as_ref(), config.vcpus, host_cpus),
            )
        };
        let netns = bundle
            .linux()
            .namespaces
            .iter()
            .find(|ns| ns.kind == "network")
            .and_then(|ns| ns.path.clone())
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        let dir = self.root.join(owner);
        std::fs::create_dir_all(&dir)
            .map_err(|e| TaskError::Internal(format!("creating {}: {e}", dir.display())))?;
        let opts = SandboxOptions {
            dir: dir.clone(),
            memory_mib,
            vcpus,
            dns_relays: network::dns::loopback_nameservers(
                &bundle.spec.mounts,
                &bundle.dir,
                &bundle.rootfs,
            ),
            lasting_netns: network::record::lasting_path(netns.as_deref()),
            config,
            on_disconnect: Box::new(|why| containerd_shim::warn!("the VM is gone: {why}")),
        };
        let hostname = bundle.spec.hostname.clone();
        let booted = keep_vm(netns, opts, pod).and_then(|(sandbox, keeper)| {
            if pod {
                let spec = SandboxSpec {
                    hostname,
                    namespaces: POD_NAMESPACES.map(String::from).to_vec(),
                };
                if let Err(e) = sandbox.request(Request::CreateSandbox(Box::new(spec))) {
                    drop(keeper);
                    return Err(TaskError::Internal(format!(
                        "making the pod's namespaces: {e}"
                    )));
                }
            }
            Ok((sandbox, keeper))
        });
        let (sandbox, keeper) = match booted {
            Ok(booted) => booted,
            Err(e) => {
                let _ = share::remove_dir(&dir);
                return Err(e);
            }
        };
        let pid = sandbox.vm_pid();
        self.lock().vm = Some(PodVm {
            sandbox,
            keeper,
            owner: owner.to_string(),
            dir,
        });
        Ok(pid)
    }

    /// The VM of the pod whose sandbox task is `sandbox`.
    fn vm_of(&self, sandbox: &str) -> Result<Arc<Sandbox>, TaskError> {
        match &self.lock().vm {
            Some(vm) if vm.owner == sandbox => Ok(Arc::clone(&vm.sandbox)),
            _ => Err(TaskError::NotFound(format!(
                "the pod sandbox {sandbox} does not exist in this shim"
            ))),
        }
    }

    /// Adds task `task` as a container of `vm`; returns its init's process
    /// id, stdin relay and exit cell.
    fn add_container(
        self: &Arc<Self>,
        vm: &Sandbox,
        task: &CreateTask,
        bundle: &Bundle,
        joined: Vec<String>,
        own: Vec<String>,
    ) -> Result<(ProcessId, InputRelay, Arc<ExitCell>), TaskError> {
        let io = task
            .stdio
            .open()
            .map_err(|e| TaskError::InvalidArgument(format!("{e:#}")))?;
        let process = vm.new_process_id();
        let cell: Arc<ExitCell> = Arc::default();
        let on_exit = self.exit_reporter(
            task.id.clone(),
            String::new(),
            vm.vm_pid(),
            Arc::clone(&cell),
        );
        let container = NewContainer {
            id: &task.id,
            bundle,
            process: bundle.process().clone(),
            io,
            sandbox_namespaces: joined,
            namespaces: own,
            on_exit,
        };
        let (_, input) = vm
            .create_container(container, process)
            .map_err(|e| TaskError::Internal(format!("{e:#}")))?;
        Ok((process, input, cell))
    }

    /// What runs when a process ended: the cell is filled and the exit
    /// published (after its start).
    fn exit_reporter(
        self: &Arc<Self>,
        id: String,
        exec: String,
        pid: u32,
        cell: Arc<ExitCell>,
    ) -> Box<dyn FnOnce(i32) + Send> {
        let events = self.events.clone();
        Box::new(move |code| {
            let exited = cell.set(code.max(0) as u32);
            events.publish(Event::Exit {
                id,
                exec,
                pid,
                status: exited.status,
                at: exited.at,
            });
        })
    }

    /// Ends the VM (its keeper thread shuts it down) and removes its state.
    fn end_vm(&self) {
        let vm = self.lock().vm.take();
        if let Some(vm) = vm {
            let PodVm {
                sandbox,
                keeper,
                dir,
                ..
            } = vm;
            drop(sandbox);
            drop(keeper);
            let _ = share::remove_dir(&dir);
        }
    }

    /// Starts a task's init or an exec; returns the pid containerd sees.
    pub fn start(self: &Arc<Self>, id: &str, exec: &str) -> Result<u32, TaskError> {
        if !exec.is_empty() {
            return self.start_exec(id, exec);
        }
        let (kind, pid) = {
            let state = self.lock();
            let task = task(&state, id)?;
            if task.init.started {
                return Err(TaskError::FailedPrecondition(format!(
                    "task {id} was already started"
                )));
            }
            (task.kind.clone(), task.init.pid)
        };
        if kind != TaskKind::PodSandbox {
            let vm = self.vm_for(&kind, id)?;
            vm.start_container(id)
                .map_err(|e| TaskError::Internal(format!("starting {id}: {e:#}")))?;
        }
        if let Some(task) = self.lock().tasks.get_mut(id) {
            task.init.started = true;
        }
        self.events.publish(Event::Start {
            id: id.to_string(),
            exec: String::new(),
            pid,
        });
        Ok(pid)
    }

    /// The VM a task's processes run in.
    fn vm_for(&self, kind: &TaskKind, id: &str) -> Result<Arc<Sandbox>, TaskError> {
        match kind {
            TaskKind::PodContainer { sandbox } => self.vm_of(sandbox),
            TaskKind::PodSandbox | TaskKind::Standalone => self.vm_of(id),
        }
    }

    /// Records an exec of task `id`, to start later.
    pub fn add_exec(
        &self,
        id: &str,
        exec: &str,
        spec: Process,
        stdio: StdioPaths,
    ) -> Result<(), TaskError> {
        let mut state = self.lock();
        let task = task_mut(&mut state, id)?;
        if task.kind == TaskKind::PodSandbox {
            return Err(TaskError::FailedPrecondition(format!(
                "the pod sandbox {id} has no processes to exec beside"
            )));
        }
        if task.init.exit.get().is_some() {
            return Err(TaskError::FailedPrecondition(format!(
                "task {id} is not running"
            )));
        }
        if task.execs.contains_key(exec) {
            return Err(TaskError::AlreadyExists(format!(
                "exec {exec} of {id} already exists"
            )));
        }
        task.execs.insert(
            exec.to_string(),
            Exec {
                spec,
                stdio,
                exit: Arc::default(),
                proc: None,
            },
        );
        drop(state);
        self.events.publish(Event::ExecAdded {
            id: id.to_string(),
            exec: exec.to_string(),
        });
        Ok(())
    }

    fn start_exec(self: &Arc<Self>, id: &str, exec: &str) -> Result<u32, TaskError> {
        let (kind, spec, stdio, cell) = {
            let state = self.lock();
            let task = task(&state, id)?;
            let record = task.execs.get(exec).ok_or_else(|| {
                TaskError::NotFound(format!("exec {exec} of {id} does not exist"))
            })?;
            if record.proc.is_some() {
                return Err(TaskError::FailedPrecondition(format!(
                    "exec {exec} was already started"
                )));
            }
            let cell = Arc::clone(&record.exit);
            (
                task.kind.clone(),
                record.spec.clone(),
                record.stdio.clone(),
                cell,
            )
        };
        let vm = self.vm_for(&kind, id)?;
        let io = stdio
            .open()
            .map_err(|e| TaskError::InvalidArgument(format!("{e:#}")))?;
        let process = vm.new_process_id();
        let pid = vm.vm_pid();
        let on_exit = self.exit_reporter(id.to_string(), exec.to_string(), pid, Arc::clone(&cell));
        let input = vm
            .exec(id, process, spec, io, on_exit)
            .map_err(|e| TaskError::Internal(format!("exec {exec} in {id}: {e:#}")))?;
        if let Some(record) = self
            .lock()
            .tasks
            .get_mut(id)
            .and_then(|t| t.execs.get_mut(exec))
        {
            record.proc = Some(Proc {
                process: Some(process),
                pid,
                started: true,
                exit: cell,
                input: Some(input),
            });
        }
        self.events.publish(Event::Start {
            id: id.to_string(),
            exec: exec.to_string(),
            pid,
        });
        Ok(pid)
    }

    /// Signals a task's init (with `all`, every process of it) or an exec.
    pub fn kill(&self, id: &str, exec: &str, signal: u32, all: bool) -> Result<(), TaskError> {
        let (kind, process, exit) = {
            let state = self.lock();
            let task = task(&state, id)?;
            let proc = if exec.is_empty() {
                &task.init
            } else {
                task.execs
                    .get(exec)
                    .and_then(|e| e.proc.as_ref())
                    .ok_or_else(|| {
                        TaskError::NotFound(format!("exec {exec} of {id} is not running"))
                    })?
            };
            (task.kind.clone(), proc.process, Arc::clone(&proc.exit))
        };
        if exit.get().is_some() {
            return Err(TaskError::NotFound(format!(
                "process of {id} has already exited"
            )));
        }
        let Some(process) = process else {
            // The pod's sandbox task: nothing runs; killing it ends it.
            let exited = exit.set(128 + signal);
            let pid = self.lock().tasks.get(id).map_or(0, |t| t.init.pid);
            self.events.publish(Event::Exit {
                id: id.to_string(),
                exec: String::new(),
                pid,
                status: exited.status,
                at: exited.at,
            });
            return Ok(());
        };
        let vm = self.vm_for(&kind, id)?;
        vm.request(Request::Signal {
            process,
            signal: signal as i32,
            all,
        })
        .map_err(|e| TaskError::Internal(format!("signalling {id}: {e}")))?;
        Ok(())
    }

    /// Waits for a process to end.
    pub fn wait(&self, id: &str, exec: &str) -> Result<Exited, TaskError> {
        let cell = self.exit_of(id, exec)?;
        Ok(cell.wait())
    }

    fn exit_of(&self, id: &str, exec: &str) -> Result<Arc<ExitCell>, TaskError> {
        let state = self.lock();
        let task = task(&state, id)?;
        if exec.is_empty() {
            return Ok(Arc::clone(&task.init.exit));
        }
        task.execs
            .get(exec)
            .map(|e| Arc::clone(&e.exit))
            .ok_or_else(|| TaskError::NotFound(format!("exec {exec} of {id} does not exist")))
    }

    /// A process's state: status, pid, stdio, exit.
    pub fn state(&self, id: &str, exec: &str) -> Result<TaskState, TaskError> {
        let state = self.lock();
        let task = task(&state, id)?;
        let (proc, stdio) = if exec.is_empty() {
            (Some(&task.init), &task.stdio)
        } else {
            let record = task.execs.get(exec).ok_or_else(|| {
                TaskError::NotFound(format!("exec {exec} of {id} does not exist"))
            })?;
            (record.proc.as_ref(), &record.stdio)
        };
        let exited = proc.and_then(|p| p.exit.get());
        let status = match (proc, &exited) {
            (_, Some(_)) => Status::Stopped,
            (Some(p), None) if p.started && task.paused => Status::Paused,
            (Some(p), None) if p.started => Status::Running,
            _ => Status::Created,
        };
        Ok(TaskState {
            bundle: task.bundle.clone(),
            pid: proc.map_or(0, |p| p.pid),
            status,
            stdio: stdio.clone(),
            exited,
        })
    }

    /// Deletes a stopped (or never started) process; deleting a task's
    /// init removes the task, and the task that owns the VM ends it.
    pub fn delete(&self, id: &str, exec: &str) -> Result<(u32, Exited), TaskError> {
        if !exec.is_empty() {
            let mut state = self.lock();
            let task = task_mut(&mut state, id)?;
            let record = task.execs.remove(exec).ok_or_else(|| {
                TaskError::NotFound(format!("exec {exec} of {id} does not exist"))
            })?;
            let exited = record
                .proc
                .as_ref()
                .and_then(|p| p.exit.get())
                .unwrap_or_else(|| Exited {
                    status: 0,
                    at: now(),
                });
            let pid = record.proc.as_ref().map_or(0, |p| p.pid);
            return Ok((pid, exited));
        }
        let (kind, pid, process, running) = {
            let state = self.lock();
            let task = task(&state, id)?;
            let running = task.init.started && task.init.exit.get().is_none();
            (task.kind.clone(), task.init.pid, task.init.process, running)
        };
        if running {
            return Err(TaskError::FailedPrecondition(format!(
                "task {id} is running: kill it before deleting it"
            )));
        }
        if kind != TaskKind::PodSandbox {
            if let (Ok(vm), Some(process)) = (self.vm_for(&kind, id), process) {
                // A created task that never ran is killed first.
                let _ = vm.request(Request::Signal {
                    process,
                    signal: libc::SIGKILL,
                    all: true,
                });
                if let Err(e) = vm.remove_container(id) {
                    containerd_shim::warn!("removing {id} from its VM: {e:#}");
                }
                vm.forget_process(process);
            }
        }
        let task = self.lock().tasks.remove(id);
        let Some(task) = task else {
            return Err(TaskError::NotFound(format!("task {id} does not exist")));
        };
        let exited = task.init.exit.get().unwrap_or_else(|| {
            let status = if task.init.started {
                0
            } else {
                128 + libc::SIGKILL as u32
            };
            task.init.exit.set(status)
        });
        let owns_vm = self.lock().vm.as_ref().is_some_and(|vm| vm.owner == id);
        if owns_vm {
            self.end_vm();
        }
        if let Some(target) = &task.rootfs {
            unmount(target);
        }
        self.events.publish(Event::Delete {
            id: id.to_string(),
            pid,
            status: exited.status,
            at: exited.at.clone(),
        });
        Ok((pid, exited))
    }

    /// Sends a request about container `id` to its VM.
    fn container_request(&self, id: &str, request: Request) -> Result<Response, TaskError> {
        let kind = task(&self.lock(), id)?.kind.clone();
        if kind == TaskKind::PodSandbox {
            return Err(TaskError::FailedPrecondition(format!(
                "the pod sandbox {id} has no processes of its own"
            )));
        }
        self.vm_for(&kind, id)?
            .request(request)
            .map_err(|e| TaskError::Internal(format!("{id}: {e}")))
    }

    /// The guest pids of a container's processes.
    pub fn pids(&self, id: &str) -> Result<Vec<u32>, TaskError> {
        if task(&self.lock(), id)?.kind == TaskKind::PodSandbox {
            return Ok(Vec::new());
        }
        match self.container_request(
            id,
            Request::Processes {
                container: id.into(),
            },
        )? {
            Response::Processes { list } => Ok(list.iter().map(|p| p.pid.max(0) as u32).collect()),
            other => Err(TaskError::Internal(format!("the guest answered {other:?}"))),
        }
    }

    /// Freezes (`true`) or thaws a container.
    pub fn set_paused(&self, id: &str, paused: bool) -> Result<(), TaskError> {
        let request = if paused {
            Request::Pause {
                container: id.into(),
            }
        } else {
            Request::Resume {
                container: id.into(),
            }
        };
        self.container_request(id, request)?;
        if let Some(task) = self.lock().tasks.get_mut(id) {
            task.paused = paused;
        }
        self.events.publish(if paused {
            Event::Paused { id: id.into() }
        } else {
            Event::Resumed { id: id.into() }
        });
        Ok(())
    }

    /// A container's counters (the pod sandbox's: zero).
    pub fn stats(&self, id: &str) -> Result<Stats, TaskError> {
        if task(&self.lock(), id)?.kind == TaskKind::PodSandbox {
            return Ok(Stats::default());
        }
        match self.container_request(
            id,
            Request::Stats {
                container: id.into(),
            },
        )? {
            Response::Stats(stats) => Ok(stats),
            other => Err(TaskError::Internal(format!("the guest answered {other:?}"))),
        }
    }

    /// Changes a container's limits in its guest cgroup.
    pub fn update(&self, id: &str, resources: Resources) -> Result<(), TaskError> {
        if task(&self.lock(), id)?.kind == TaskKind::PodSandbox {
            return Ok(());
        }
        self.container_request(
            id,
            Request::Update {
                container: id.into(),
                resources: Box::new(resources),
            },
        )
        .map(drop)
    }

    /// A terminal changed size.
    pub fn resize(&self, id: &str, exec: &str, rows: u16, cols: u16) -> Result<(), TaskError> {
        let process = self.process_of(id, exec)?;
        self.container_request(
            id,
            Request::Resize {
                process,
                rows,
                cols,
            },
        )
        .map(drop)
    }

    /// The client's stdin of a process ended.
    pub fn close_stdin(&self, id: &str, exec: &str) -> Result<(), TaskError> {
        let (kind, process) = {
            let state = self.lock();
            let task = task(&state, id)?;
            (task.kind.clone(), self_process(task, exec)?)
        };
        let vm = self.vm_for(&kind, id)?;
        let mut state = self.lock();
        let task = task_mut(&mut state, id)?;
        let proc = if exec.is_empty() {
            Some(&mut task.init)
        } else {
            task.execs.get_mut(exec).and_then(|e| e.proc.as_mut())
        };
        if let Some(relay) = proc.and_then(|p| p.input.take()) {
            vm.close_input(process, &relay);
        }
        Ok(())
    }

    fn process_of(&self, id: &str, exec: &str) -> Result<ProcessId, TaskError> {
        let state = self.lock();
        self_process(task(&state, id)?, exec)
    }

    /// The pid of the VMM serving task `id`.
    pub fn task_pid(&self, id: &str) -> Result<u32, TaskError> {
        Ok(task(&self.lock(), id)?.init.pid)
    }
}

/// What `state` reports.
pub struct TaskState {
    /// The bundle.
    pub bundle: PathBuf,
    /// The pid containerd sees.
    pub pid: u32,
    /// Its status.
    pub status: Status,
    /// Its stdio.
    pub stdio: StdioPaths,
    /// How it ended, if it did.
    pub exited: Option<Exited>,
}

fn task<'a>(state: &'a State, id: &str) -> Result<&'a Task, TaskError> {
    state
        .tasks
        .get(id)
        .ok_or_else(|| TaskError::NotFound(format!("task {id} does not exist")))
}

fn task_mut<'a>(state: &'a mut State, id: &str) -> Result<&'a mut Task, TaskError> {
    state
        .tasks
        .get_mut(id)
        .ok_or_else(|| TaskError::NotFound(format!("task {id} does not exist")))
}

/// The sandbox process id of a task's init or exec.
fn self_process(task: &Task, exec: &str) -> Result<ProcessId, TaskError> {
    let proc = if exec.is_empty() {
        Some(&task.init)
    } else {
        task.execs.get(exec).and_then(|e| e.proc.as_ref())
    };
    proc.and_then(|p| p.process)
        .ok_or_else(|| TaskError::NotFound(format!("no such process (exec {exec:?})")))
}

/// Boots a sandbox from a thread that joins `netns` and keeps the VM until
/// the returned sender is dropped; a pod's gets the port-forward relay in
/// that namespace.
fn keep_vm(
    netns: Option<PathBuf>,
    opts: SandboxOptions,
    pod: bool,
) -> Result<(Arc<Sandbox>, Sender<()>), TaskError> {
    let (booted_tx, booted) = channel();
    let (keeper, release) = channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("vm-keeper".into())
        .spawn(move || {
            let boot = || -> anyhow::Result<Arc<Sandbox>> {
                if let Some(path) = &netns {
                    let file = std::fs::File::open(path).map_err(|e| {
                        anyhow::anyhow!("opening the network namespace {}: {e}", path.display())
                    })?;
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(
                        |e| {
                            anyhow::anyhow!("joining the network namespace {}: {e}", path.display())
                        },
                    )?;
                }
                Ok(Arc::new(Sandbox::boot(opts)?))
            };
            match boot() {
                Ok(sandbox) => {
                    let relay = match pod.then(|| port_forward::start(Arc::clone(&sandbox))) {
                        Some(Err(e)) => {
                            containerd_shim::warn!("no port-forward into the pod: {e}");
                            None
                        }
                        relay => relay.and_then(Result::ok),
                    };
                    let _ = booted_tx.send(Ok(Arc::clone(&sandbox)));
                    // Until the shim lets go of the VM.
                    let _ = release.recv();
                    if let Some(relay) = relay {
                        relay.stop();
                    }
                    sandbox.shutdown();
                }
                Err(e) => {
                    let _ = booted_tx.send(Err(format!("{e:#}")));
                }
            }
        });
    if let Err(e) = spawned {
        return Err(TaskError::Internal(format!(
            "starting the VM's keeper thread: {e}"
        )));
    }
    match booted.recv() {
        Ok(Ok(sandbox)) => Ok((sandbox, keeper)),
        Ok(Err(e)) => Err(TaskError::Internal(e)),
        Err(_) => Err(TaskError::Internal("the VM's keeper thread ended".into())),
    }
}

/// Mounts containerd's rootfs mounts at `bundle/rootfs`, if it passed any.
fn mount_rootfs(
    bundle: &Path,
    mounts: &[(String, String, Vec<String>)],
) -> Result<Option<PathBuf>, TaskError> {
    if mounts.is_empty() {
        return Ok(None);
    }
    let target = bundle.join("rootfs");
    std::fs::create_dir_all(&target)
        .map_err(|e| TaskError::Internal(format!("creating {}: {e}", target.display())))?;
    for (kind, source, options) in mounts {
        let (flags, data) = mount_options(options);
        let kind = (!kind.is_empty() && kind != "bind").then_some(kind.as_str());
        let data = (!data.is_empty()).then_some(data.as_str());
        nix::mount::mount(Some(source.as_str()), &target, kind, flags, data).map_err(|e| {
            unmount(&target);
            TaskError::Internal(format!(
                "mounting the rootfs ({source}) at {}: {e}",
                target.display()
            ))
        })?;
    }
    Ok(Some(target))
}

/// mount(8)-style options split into flags and the filesystem's data.
fn mount_options(options: &[String]) -> (nix::mount::MsFlags, String) {
    use nix::mount::MsFlags;
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for option in options {
        match option.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" | "defaults" => {}
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

fn unmount(target: &Path) {
    let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
}

/// Now, as a protobuf timestamp.
pub fn now() -> Timestamp {
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos() as i32,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_options_split_into_flags_and_data() {
        let options: Vec<String> = [
            "ro",
            "nosuid",
            "lowerdir=/a:/b",
            "upperdir=/u",
            "workdir=/w",
        ]
        .map(String::from)
        .to_vec();

        let (flags, data) = mount_options(&options);

        assert_eq!(
            flags,
            nix::mount::MsFlags::MS_RDONLY | nix::mount::MsFlags::MS_NOSUID
        );
        assert_eq!(data, "lowerdir=/a:/b,upperdir=/u,workdir=/w");
        assert!(mount_options(&["rbind".to_string()])
            .0
            .contains(nix::mount::MsFlags::MS_REC));
    }
}

//! The monitor: one long-lived process per container, started by `create`.
//! It owns the VM, relays the container's stdio (its own fds 0/1/2 are the
//! container's), forwards the signals it receives to the container's init,
//! serves the other commands on the control socket, and exits with the
//! workload's exit code once the workload ended and the VM is gone.
//!
//! Its parent (`create`) exits early, so engines that are child subreapers
//! (conmon, containerd-shim) inherit it and waitpid() it, as they would
//! runc's container init.
//!
//! Trust: everything from the guest arrives through [`AgentMux`] (bounded
//! frames; unknown stream and process ids are dropped); the control socket
//! is in the root-only state directory.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use husk_protocol::{stdio_stream, ContainerSpec, ProcessId, Request, Response, StreamId};

use crate::config::Config;
use crate::guest::Guest;
use crate::hypervisor::{self, Vm, VmConfig};
use crate::oci::spec::Bundle;
use crate::oci::state::Status;
use crate::sandbox::agent_mux::{AgentMux, Events, MuxError};
use crate::sandbox::control::{self, ControlReply, ControlRequest};
use crate::sandbox::network::{self, HostNetwork};
use crate::sandbox::share::Share;
use crate::sandbox::stdio::{relay_input, OutputSink};
use crate::sandbox::{host_cgroup, signals, sizing, socket_dir, tty};

/// How long a request to the agent may take.
const AGENT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the guest gets to power off before the VM is killed.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// What `create` writes on the go pipe once the createRuntime and
/// prestart hooks ran: the network namespace is then as the engine wants
/// it.
pub const GO_LINE: &str = "go\n";

/// What the monitor is started with.
pub struct MonitorArgs {
    /// The container's state directory.
    pub dir: PathBuf,
    /// The container id.
    pub id: String,
    /// The bundle.
    pub bundle: PathBuf,
    /// Where to send the pty master, if the process has a terminal.
    pub console_socket: Option<PathBuf>,
    /// Where to report "ok" or the error that ended setup.
    pub ready: std::fs::File,
    /// Where `create` says [`GO_LINE`] once its hooks ran.
    pub go: std::fs::File,
}

/// What the monitor waits for after setup.
enum Ending {
    InitExited(i32),
    GuestGone(String),
}

/// Shared by the control server, the signal forwarder and the reader thread.
struct Shared {
    mux: Arc<AgentMux>,
    status: Mutex<Status>,
    outputs: Mutex<HashMap<StreamId, OutputSink>>,
    exits: Mutex<HashMap<ProcessId, Sender<i32>>>,
    next_process: AtomicU32,
    /// The pty the monitor's own process relays, for resizes.
    tty: Option<OwnedFd>,
    /// The namespace's interfaces connected to the VM.
    network: Mutex<HostNetwork>,
    /// The state directory (for the network record).
    dir: PathBuf,
}

/// The reader thread's sink: routes output to fds, exits to waiters, and
/// the end of the init (or of the guest) to the monitor's main thread.
struct Router {
    /// Filled in once setup made it (the reader starts before).
    shared: Arc<Mutex<Option<Arc<Shared>>>>,
    ending: Sender<Ending>,
}

impl Events for Router {
    fn data(&self, stream: StreamId, data: Vec<u8>) {
        if let Some(shared) = self.shared() {
            if let Some(sink) = shared.outputs.lock().unwrap().get_mut(&stream) {
                sink.write(&data);
            }
        }
    }

    fn eof(&self, stream: StreamId) {
        if let Some(shared) = self.shared() {
            shared.outputs.lock().unwrap().remove(&stream);
        }
    }

    fn exited(&self, process: ProcessId, code: i32) {
        let Some(shared) = self.shared() else { return };
        if process == 0 {
            *shared.status.lock().unwrap() = Status::Stopped;
            let _ = self.ending.send(Ending::InitExited(code));
        } else if let Some(tx) = shared.exits.lock().unwrap().remove(&process) {
            let _ = tx.send(code);
        }
    }

    fn disconnected(&self, why: String) {
        if let Some(shared) = self.shared() {
            *shared.status.lock().unwrap() = Status::Stopped;
            shared.exits.lock().unwrap().clear();
        }
        let _ = self.ending.send(Ending::GuestGone(why));
    }
}

impl Router {
    fn shared(&self) -> Option<Arc<Shared>> {
        self.shared.lock().unwrap().clone()
    }
}

/// Runs the monitor; returns the exit code for the process.
pub fn run(mut args: MonitorArgs) -> i32 {
    let blocked = signals::block_forwarded();
    let result = setup(&mut args);
    let (shared, vm, share, ending, dns) = match result {
        Ok(parts) => parts,
        Err(e) => {
            let _ = writeln!(args.ready, "{e:#}");
            return 1;
        }
    };
    let _ = writeln!(args.ready, "ok");
    drop(args.ready);
    if let Ok(set) = blocked {
        let target = Arc::clone(&shared);
        let _ = signals::forward(set, move |signal| on_signal(&target, signal));
    }
    let code = match ending.recv() {
        Ok(Ending::InitExited(code)) => code,
        Ok(Ending::GuestGone(why)) => {
            log(
                &args.dir,
                &format!("the guest ended before the container: {why}"),
            );
            255
        }
        Err(_) => 255,
    };
    finish(&shared, vm, share, &args.dir);
    if let Some(socket) = dns {
        let _ = std::fs::remove_file(socket);
    }
    code
}

type SetupParts = (
    Arc<Shared>,
    Box<dyn Vm>,
    Share,
    std::sync::mpsc::Receiver<Ending>,
    Option<PathBuf>,
);

/// Waits for `create`'s [`GO_LINE`]; anything else means create gave up.
fn wait_for_go(go: &mut std::fs::File) -> Result<()> {
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(go), &mut line)
        .context("waiting for create's hooks")?;
    if line != GO_LINE {
        bail!("create went away before its hooks ran");
    }
    Ok(())
}

/// Connects the namespace's interfaces and records what that changed
/// there (for `delete` after a crash).
fn connect_network(dir: &Path, bundle: &Bundle) -> Result<HostNetwork> {
    let joined = bundle
        .linux()
        .namespaces
        .iter()
        .find(|ns| ns.kind == "network")
        .and_then(|ns| ns.path.clone())
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    // A standby NIC in every namespace: an engine may fill its own later
    // (docker 26), and one the monitor made through /proc/PID/ns/net
    // between create and start (`ctr run --cni`).
    let seed = {
        use std::hash::{BuildHasher, Hasher};
        // Keyed by the OS's randomness.
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    };
    let lasting = network::record::lasting_path(joined.as_deref());
    let network = HostNetwork::connect(seed, lasting)?;
    network
        .record()
        .save(dir)
        .with_context(|| format!("writing {}", network::record::FILE))?;
    Ok(network)
}

fn setup(args: &mut MonitorArgs) -> Result<SetupParts> {
    let bundle = Bundle::load(&args.bundle)?;
    let (config, _) = Config::load()?;
    let linux = bundle.linux();
    if let Some(relative) = linux
        .cgroups_path
        .as_deref()
        .and_then(host_cgroup::relative_path)
    {
        let (_, refused) = host_cgroup::join(&relative);
        for why in refused {
            log(&args.dir, &format!("host cgroup not joined: {why}"));
        }
    }
    let root = bundle.spec.root.clone().unwrap_or_default();
    let mut share = Share::create(&args.dir.join("shared"), &bundle.rootfs)?;
    let mounts = share.add_binds(&bundle.spec.mounts, &bundle.dir)?;

    let mut process = bundle.process().clone();
    let tty = if process.terminal {
        let socket = args
            .console_socket
            .as_deref()
            .ok_or_else(|| anyhow!("process.terminal is set but no --console-socket was given"))?;
        let pty = tty::open_and_send(socket)?;
        process.console_size = tty::size(&pty.slave).or(process.console_size);
        Some(pty)
    } else {
        None
    };

    wait_for_go(&mut args.go)?;
    let network = connect_network(&args.dir, &bundle)?;
    let sockets = socket_dir::create(&args.dir)
        .with_context(|| format!("creating the socket directory of {}", args.dir.display()))?;
    let mut vm_config = VmConfig::from_config(&config, &sockets, share.dir());
    vm_config.nics = network.nics();
    let dns_relays =
        network::dns::loopback_nameservers(&bundle.spec.mounts, &bundle.dir, &bundle.rootfs);
    let dns_socket = if dns_relays.is_empty() {
        None
    } else {
        let socket = network::dns::socket_path(&vm_config.vsock_uds());
        network::dns::serve(&socket, dns_relays.clone())
            .with_context(|| format!("serving DNS relays on {}", socket.display()))?;
        Some(socket)
    };
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    vm_config.memory_mib = sizing::memory_mib(linux.resources.as_ref(), config.memory_mib);
    vm_config.vcpus = sizing::vcpus(linux.resources.as_ref(), config.vcpus, host_cpus);
    let host = crate::host::Virtualization::probe();
    let selection = hypervisor::select(&config, &host)?;
    let timeout = Duration::from_millis(config.boot_timeout_ms);
    let guest = Guest::boot(selection.hypervisor.as_ref(), &vm_config, timeout)?;
    let (vm, conn) = guest.into_parts();
    let (reader, writer) = conn.into_parts()?;

    let (ending_tx, ending_rx) = channel();
    let slot = Arc::new(Mutex::new(None));
    let router = Arc::new(Router {
        shared: Arc::clone(&slot),
        ending: ending_tx,
    });
    let mux = AgentMux::start(reader, writer, router)?;

    let mut outputs = HashMap::new();
    let stdin: OwnedFd;
    let tty_fd = match tty {
        Some(pty) => {
            outputs.insert(stdio_stream(0, 1), OutputSink::new(pty.slave.try_clone()?));
            stdin = pty.slave.try_clone()?;
            Some(pty.slave)
        }
        None => {
            outputs.insert(stdio_stream(0, 1), OutputSink::own(1)?);
            outputs.insert(stdio_stream(0, 2), OutputSink::own(2)?);
            stdin = std::io::stdin().as_fd().try_clone_to_owned()?;
            None
        }
    };
    let shared = Arc::new(Shared {
        mux: Arc::clone(&mux),
        status: Mutex::new(Status::Creating),
        outputs: Mutex::new(outputs),
        exits: Mutex::new(HashMap::new()),
        next_process: AtomicU32::new(1),
        tty: tty_fd,
        network: Mutex::new(network),
        dir: args.dir.clone(),
    });
    *slot.lock().unwrap() = Some(Arc::clone(&shared));
    let spec = ContainerSpec {
        id: args.id.clone(),
        rootfs: crate::sandbox::share::ROOTFS.into(),
        readonly_root: root.readonly,
        hostname: bundle.spec.hostname.clone(),
        domainname: bundle.spec.domainname.clone(),
        mounts,
        process,
        namespaces: linux.namespaces.iter().map(|n| n.kind.clone()).collect(),
        masked_paths: linux.masked_paths.clone(),
        readonly_paths: linux.readonly_paths.clone(),
        sysctl: linux.sysctl.clone(),
        seccomp: linux.seccomp.clone(),
        resources: linux.resources.clone().unwrap_or_default(),
    };
    let description = shared.network.lock().unwrap().description(dns_relays);
    let prepared = mux
        .request(
            Request::ConfigureNetwork(Box::new(description)),
            AGENT_TIMEOUT,
        )
        .map_err(|e| anyhow!("configuring the guest's network: {e}"))
        .and_then(|_| {
            mux.request(Request::CreateContainer(Box::new(spec)), AGENT_TIMEOUT)
                .map_err(|e| anyhow!("creating the container in the guest: {e}"))
        });
    if let Err(e) = prepared {
        mux.close();
        let mut vm = vm;
        let _ = vm.stop();
        drop(share);
        return Err(e);
    }
    relay_input(
        stdin,
        stdio_stream(0, 0),
        mux,
        Arc::new(AtomicBool::new(false)),
    )?;
    *shared.status.lock().unwrap() = Status::Created;
    serve_control(&args.dir, Arc::clone(&shared))?;
    Ok((shared, vm, share, ending_rx, dns_socket))
}

/// Powers the guest off, stops the VM, unmounts the share, removes the socket.
fn finish(shared: &Shared, mut vm: Box<dyn Vm>, share: Share, dir: &Path) {
    *shared.status.lock().unwrap() = Status::Stopped;
    if let Ok(Response::ShuttingDown) = shared.mux.request(Request::Shutdown, SHUTDOWN_TIMEOUT) {
        let _ = vm.wait_timeout(SHUTDOWN_TIMEOUT);
    }
    shared.mux.close();
    if let Err(e) = vm.stop() {
        log(dir, &format!("stopping the VM: {e}"));
    }
    shared.network.lock().unwrap().teardown();
    let _ = std::fs::remove_file(dir.join(network::record::FILE));
    shared.outputs.lock().unwrap().clear();
    if let Err(e) = share.remove() {
        log(dir, &format!("removing the share: {e:#}"));
    }
    let _ = std::fs::remove_file(control::socket_path(dir));
}

/// Appends a line to the monitor's log in the state directory (its own
/// stderr belongs to the container).
pub fn log(dir: &Path, message: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("monitor.log"))
    {
        let _ = writeln!(f, "{} {message}", crate::oci::state::now_rfc3339());
    }
}

fn serve_control(dir: &Path, shared: Arc<Shared>) -> Result<()> {
    let path = control::socket_path(dir);
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = Arc::clone(&shared);
                let _ = std::thread::Builder::new()
                    .name("control-conn".into())
                    .spawn(move || serve_connection(stream, &shared));
            }
        })?;
    Ok(())
}

fn serve_connection(stream: UnixStream, shared: &Arc<Shared>) {
    let (request, fds) = match control::receive_with_fds::<ControlRequest>(&stream) {
        Ok(r) => r,
        Err(e) => {
            let _ = control::send(&stream, &ControlReply::Error(format!("{e:#}")), &[]);
            return;
        }
    };
    let reply = match request {
        ControlRequest::Exec(process) => return exec(&stream, shared, *process, fds),
        other => handle(other, shared).unwrap_or_else(|e| ControlReply::Error(format!("{e:#}"))),
    };
    let _ = control::send(&stream, &reply, &[]);
}

fn agent(shared: &Shared, request: Request) -> Result<Response> {
    shared
        .mux
        .request(request, AGENT_TIMEOUT)
        .map_err(|e: MuxError| anyhow!("{e}"))
}

fn handle(request: ControlRequest, shared: &Shared) -> Result<ControlReply> {
    let status = *shared.status.lock().unwrap();
    // Moves only from the state the request started in: the workload may
    // have stopped meanwhile, and stopped is final.
    let set_status = |s: Status| {
        let mut current = shared.status.lock().unwrap();
        if *current == status {
            *current = s;
        }
    };
    match request {
        ControlRequest::Status => Ok(ControlReply::Status(status)),
        ControlRequest::Start => {
            if !status.can_start() {
                bail!("cannot start a container that is {status}");
            }
            connect_late_interfaces(shared)?;
            agent(shared, Request::StartContainer)?;
            set_status(Status::Running);
            Ok(ControlReply::Done)
        }
        ControlRequest::Kill { signal, all } => {
            if !status.can_kill() {
                bail!("container not running");
            }
            agent(
                shared,
                Request::Signal {
                    process: 0,
                    signal,
                    all,
                },
            )?;
            Ok(ControlReply::Done)
        }
        ControlRequest::KillProcess { process, signal } => {
            agent(
                shared,
                Request::Signal {
                    process,
                    signal,
                    all: false,
                },
            )?;
            Ok(ControlReply::Done)
        }
        ControlRequest::Pause => {
            if !status.can_pause() {
                bail!("container not running");
            }
            agent(shared, Request::Pause)?;
            set_status(Status::Paused);
            Ok(ControlReply::Done)
        }
        ControlRequest::Resume => {
            if !status.can_resume() {
                bail!("container not paused");
            }
            agent(shared, Request::Resume)?;
            set_status(Status::Running);
            Ok(ControlReply::Done)
        }
        ControlRequest::Processes => match agent(shared, Request::Processes)? {
            Response::Processes { list } => Ok(ControlReply::Processes(list)),
            other => bail!("unexpected answer {other:?}"),
        },
        ControlRequest::Stats => match agent(shared, Request::Stats)? {
            Response::Stats(stats) => Ok(ControlReply::Stats(stats)),
            other => bail!("unexpected answer {other:?}"),
        },
        ControlRequest::Update(resources) => {
            agent(shared, Request::Update(resources))?;
            Ok(ControlReply::Done)
        }
        ControlRequest::Resize {
            process,
            rows,
            cols,
        } => {
            agent(
                shared,
                Request::Resize {
                    process,
                    rows,
                    cols,
                },
            )?;
            Ok(ControlReply::Done)
        }
        ControlRequest::Exec(_) => bail!("exec is handled with its fds"),
    }
}

/// Connects an interface the engine added to the namespace since create
/// (docker 26 and later) to the standby NIC, before the workload starts.
fn connect_late_interfaces(shared: &Shared) -> Result<()> {
    let mut network = shared.network.lock().unwrap();
    let Some(late) = network.connect_late()? else {
        return Ok(());
    };
    let record = network.record();
    drop(network);
    record
        .save(&shared.dir)
        .with_context(|| format!("writing {}", network::record::FILE))?;
    agent(shared, Request::ConfigureNetwork(Box::new(late)))?;
    Ok(())
}

/// Runs an exec'd process with the caller's fds as its stdio; answers
/// `ExecStarted`, then `Exited` when it ends.
fn exec(
    stream: &UnixStream,
    shared: &Arc<Shared>,
    process: husk_protocol::oci::Process,
    fds: Vec<OwnedFd>,
) {
    let reply_error = |e: String| {
        let _ = control::send(stream, &ControlReply::Error(e), &[]);
    };
    let status = *shared.status.lock().unwrap();
    if status != Status::Running {
        return reply_error(format!("cannot exec in a container that is {status}"));
    }
    let Ok([stdin, stdout, stderr]) = <[OwnedFd; 3]>::try_from(fds) else {
        return reply_error("exec needs stdin, stdout and stderr fds".into());
    };
    let id = shared.next_process.fetch_add(1, Ordering::Relaxed);
    let (exit_tx, exit_rx) = channel();
    shared.exits.lock().unwrap().insert(id, exit_tx);
    {
        let mut outputs = shared.outputs.lock().unwrap();
        outputs.insert(stdio_stream(id, 1), OutputSink::new(stdout));
        if !process.terminal {
            outputs.insert(stdio_stream(id, 2), OutputSink::new(stderr));
        }
    }
    let forget = || {
        shared.exits.lock().unwrap().remove(&id);
        let mut outputs = shared.outputs.lock().unwrap();
        outputs.remove(&stdio_stream(id, 1));
        outputs.remove(&stdio_stream(id, 2));
    };
    let request = Request::Exec {
        process: id,
        spec: Box::new(process),
    };
    if let Err(e) = agent(shared, request) {
        forget();
        return reply_error(format!("{e:#}"));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stream_id = stdio_stream(id, 0);
    if let Err(e) = relay_input(stdin, stream_id, Arc::clone(&shared.mux), Arc::clone(&stop)) {
        forget();
        return reply_error(format!("starting the stdin relay: {e}"));
    }
    let _ = control::send(stream, &ControlReply::ExecStarted { process: id }, &[]);
    let code = exit_rx.recv().unwrap_or(255);
    stop.store(true, Ordering::Relaxed);
    forget();
    let _ = control::send(stream, &ControlReply::Exited { code }, &[]);
}

/// Handles a signal the monitor received: a window change resizes the
/// container's terminal, anything else goes to the container's init.
fn on_signal(shared: &Shared, signal: i32) {
    if signal == libc::SIGWINCH {
        if let Some(size) = shared.tty.as_ref().and_then(tty::size) {
            let resize = Request::Resize {
                process: 0,
                rows: size.height,
                cols: size.width,
            };
            let _ = agent(shared, resize);
        }
        return;
    }
    if shared.status.lock().unwrap().can_kill() {
        let _ = agent(
            shared,
            Request::Signal {
                process: 0,
                signal,
                all: false,
            },
        );
    }
}

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

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use husk_protocol::{ProcessId, Request, Response};

use crate::config::Config;
use crate::oci::spec::Bundle;
use crate::oci::state::Status;
use crate::sandbox::control::{self, ControlReply, ControlRequest};
use crate::sandbox::instance::{NewContainer, ProcessIo, Sandbox, SandboxOptions};
use crate::sandbox::stdio::OutputSink;
use crate::sandbox::{host_cgroup, network, signals, sizing, tty};

/// What `create` writes on the go pipe once the createRuntime and
/// prestart hooks ran: the network namespace is then as the engine wants
/// it.
pub const GO_LINE: &str = "go\n";

/// The process id of the container's init (the CLI has one container).
const INIT: ProcessId = 0;

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

/// Shared by the control server and the signal forwarder.
struct Shared {
    sandbox: Sandbox,
    id: String,
    status: Mutex<Status>,
    /// The pty the monitor's own process relays, for resizes.
    tty: Option<OwnedFd>,
    /// The host cgroups the monitor joined, for `update`.
    host_cgroups: Vec<host_cgroup::Joined>,
}

/// Runs the monitor; returns the exit code for the process.
pub fn run(mut args: MonitorArgs) -> i32 {
    let blocked = signals::block_forwarded();
    let result = setup(&mut args);
    let (shared, ending) = match result {
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
    *shared.status.lock().unwrap() = Status::Stopped;
    shared.sandbox.shutdown();
    let _ = std::fs::remove_file(control::socket_path(&args.dir));
    code
}

type SetupParts = (Arc<Shared>, std::sync::mpsc::Receiver<Ending>);

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

fn setup(args: &mut MonitorArgs) -> Result<SetupParts> {
    let bundle = Bundle::load_captured(&args.bundle, &args.dir)?;
    let (config, _) = Config::load()?;
    let linux = bundle.linux();
    let mut host_cgroups = Vec::new();
    if let Some(relative) = linux
        .cgroups_path
        .as_deref()
        .and_then(host_cgroup::relative_path)
    {
        let (joined, refused) = host_cgroup::join(&relative, linux.resources.as_ref());
        for why in refused {
            log(&args.dir, &format!("host cgroup not joined: {why}"));
        }
        host_cgroups = joined;
    }
    let mut process = bundle.process().clone();
    let (io, tty) = if process.terminal {
        let socket = args
            .console_socket
            .as_deref()
            .ok_or_else(|| anyhow!("process.terminal is set but no --console-socket was given"))?;
        let pty = tty::open_and_send(socket)?;
        process.console_size = tty::size(&pty.slave).or(process.console_size);
        let io = ProcessIo::Terminal {
            input: Some(pty.slave.try_clone()?),
            output: OutputSink::new(pty.slave.try_clone()?),
        };
        (io, Some(pty.slave))
    } else {
        let io = ProcessIo::Pipes {
            stdin: Some(std::io::stdin().as_fd().try_clone_to_owned()?),
            stdout: OutputSink::own(1)?,
            stderr: OutputSink::own(2)?,
        };
        (io, None)
    };

    wait_for_go(&mut args.go)?;
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let (ending_tx, ending_rx) = channel();
    let gone = ending_tx.clone();
    let sandbox = Sandbox::boot(SandboxOptions {
        dir: args.dir.clone(),
        memory_mib: sizing::memory_mib(linux.resources.as_ref(), config.memory_mib),
        vcpus: sizing::vcpus(linux.resources.as_ref(), config.vcpus, host_cpus),
        dns_relays: network::dns::loopback_nameservers(
            &bundle.spec.mounts,
            &bundle.dir,
            &bundle.rootfs,
        ),
        lasting_netns: lasting_netns(&bundle),
        config,
        on_disconnect: Box::new(move |why| {
            let _ = gone.send(Ending::GuestGone(why));
        }),
    })?;
    let container = NewContainer {
        id: &args.id,
        bundle: &bundle,
        process,
        io,
        sandbox_namespaces: Vec::new(),
        namespaces: linux.namespaces.iter().map(|n| n.kind.clone()).collect(),
        on_exit: exit_reporter(ending_tx),
    };
    sandbox.create_container(container, INIT)?;
    let shared = Arc::new(Shared {
        sandbox,
        id: args.id.clone(),
        status: Mutex::new(Status::Created),
        tty,
        host_cgroups,
    });
    serve_control(&args.dir, Arc::clone(&shared))?;
    Ok((shared, ending_rx))
}

/// Sends the init's exit to the monitor's main thread.
fn exit_reporter(ending: Sender<Ending>) -> Box<dyn FnOnce(i32) + Send> {
    Box::new(move |code| {
        let _ = ending.send(Ending::InitExited(code));
    })
}

/// A path of the container's network namespace that outlives the monitor:
/// the spec's, or a bind mount of the monitor's (docker's setkey hook).
fn lasting_netns(bundle: &Bundle) -> Option<PathBuf> {
    let joined = bundle
        .linux()
        .namespaces
        .iter()
        .find(|ns| ns.kind == "network")
        .and_then(|ns| ns.path.clone())
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    network::record::lasting_path(joined.as_deref())
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
    shared.sandbox.request(request).map_err(|e| anyhow!("{e}"))
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
            shared.sandbox.start_container(&shared.id)?;
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
                    process: INIT,
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
            agent(
                shared,
                Request::Pause {
                    container: shared.id.clone(),
                },
            )?;
            set_status(Status::Paused);
            Ok(ControlReply::Done)
        }
        ControlRequest::Resume => {
            if !status.can_resume() {
                bail!("container not paused");
            }
            agent(
                shared,
                Request::Resume {
                    container: shared.id.clone(),
                },
            )?;
            set_status(Status::Running);
            Ok(ControlReply::Done)
        }
        ControlRequest::Processes => match agent(
            shared,
            Request::Processes {
                container: shared.id.clone(),
            },
        )? {
            Response::Processes { list } => Ok(ControlReply::Processes(list)),
            other => bail!("unexpected answer {other:?}"),
        },
        ControlRequest::Stats => match agent(
            shared,
            Request::Stats {
                container: shared.id.clone(),
            },
        )? {
            Response::Stats(stats) => Ok(ControlReply::Stats(stats)),
            other => bail!("unexpected answer {other:?}"),
        },
        ControlRequest::Update(resources) => {
            let refused = host_cgroup::update(&shared.host_cgroups, &resources);
            agent(
                shared,
                Request::Update {
                    container: shared.id.clone(),
                    resources,
                },
            )?;
            if let Some(why) = refused.first() {
                bail!("the host refused a limit: {why}");
            }
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
    let id = shared.sandbox.new_process_id();
    let (exit_tx, exit_rx) = channel();
    let io = if process.terminal {
        ProcessIo::Terminal {
            input: Some(stdin),
            output: OutputSink::new(stdout),
        }
    } else {
        ProcessIo::Pipes {
            stdin: Some(stdin),
            stdout: OutputSink::new(stdout),
            stderr: OutputSink::new(stderr),
        }
    };
    let on_exit = Box::new(move |code| {
        let _ = exit_tx.send(code);
    });
    let input = match shared.sandbox.exec(&shared.id, id, process, io, on_exit) {
        Ok(input) => input,
        Err(e) => return reply_error(format!("{e:#}")),
    };
    let _ = control::send(stream, &ControlReply::ExecStarted { process: id }, &[]);
    let code = exit_rx.recv().unwrap_or(255);
    input.stop();
    shared.sandbox.forget_process(id);
    let _ = control::send(stream, &ControlReply::Exited { code }, &[]);
}

/// Handles a signal the monitor received: a window change resizes the
/// container's terminal, anything else goes to the container's init.
fn on_signal(shared: &Shared, signal: i32) {
    if signal == libc::SIGWINCH {
        if let Some(size) = shared.tty.as_ref().and_then(tty::size) {
            let resize = Request::Resize {
                process: INIT,
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
                process: INIT,
                signal,
                all: false,
            },
        );
    }
}

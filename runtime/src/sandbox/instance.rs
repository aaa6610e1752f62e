//! One sandbox on the host: a VM with its agent connection, its share, the
//! network carried into it ([`HostNetwork`]) and the containers in it, each
//! a record in the guest with its own processes. The runc-compatible
//! monitor makes one per container; the containerd shim one per pod (its
//! containers added while the VM runs). Neither is a special case of the
//! other: both are clients of [`Sandbox`].
//!
//! Booting reads the calling thread's network namespace (the monitor's, or
//! a shim thread that joined the pod's), so call [`Sandbox::boot`] from
//! there.
//!
//! Trust: everything from the guest arrives through the [`AgentMux`] and
//! the [`Router`] (bounded frames and windows; unknown ids dropped).

use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use husk_protocol::oci::Process;
use husk_protocol::{stdio_stream, ContainerSpec, ProcessId, Request, Response};

use crate::config::Config;
use crate::guest::Guest;
use crate::hypervisor::{self, Vm, VmConfig};
use crate::oci::spec::Bundle;
use crate::sandbox::agent_mux::{AgentMux, MuxError};
use crate::sandbox::network::{self, HostNetwork};
use crate::sandbox::router::{OnDisconnect, OnExit, Router};
use crate::sandbox::share::Share;
use crate::sandbox::socket_dir;
use crate::sandbox::stdio::{relay_input, OutputSink};

/// How long a request to the agent may take.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the guest gets to power off before the VM is killed.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// What a sandbox is booted with.
pub struct SandboxOptions {
    /// Its state directory (sockets, logs, the network record, `shared/`).
    pub dir: PathBuf,
    /// The husk configuration.
    pub config: Config,
    /// Guest memory, MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// Loopback nameservers the guest relays to this namespace.
    pub dns_relays: Vec<IpAddr>,
    /// A path of the network namespace that outlives this process.
    pub lasting_netns: Option<PathBuf>,
    /// Called once when the guest is gone.
    pub on_disconnect: OnDisconnect,
}

/// A process's stdio on the host.
pub enum ProcessIo {
    /// Separate streams: stdin (none: at EOF at once), stdout, stderr.
    Pipes {
        /// Read for the process's stdin.
        stdin: Option<OwnedFd>,
        /// Where its stdout goes.
        stdout: OutputSink,
        /// Where its stderr goes.
        stderr: OutputSink,
    },
    /// A terminal in the guest: one output stream, input into the pty.
    Terminal {
        /// Read for the terminal's input (none: at EOF at once).
        input: Option<OwnedFd>,
        /// Where the terminal's output goes.
        output: OutputSink,
    },
}

/// A running process's input relay; stopping it ends the relay thread.
pub struct InputRelay(Arc<AtomicBool>);

impl InputRelay {
    /// Stops the relay (without an EOF to the guest).
    pub fn stop(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A container to add: its bundle, its init's process spec and stdio.
pub struct NewContainer<'a> {
    /// The container id.
    pub id: &'a str,
    /// Its bundle.
    pub bundle: &'a Bundle,
    /// Its init's process (the bundle's, with the terminal size).
    pub process: Process,
    /// The init's stdio.
    pub io: ProcessIo,
    /// Namespace types joined from the sandbox (a pod's `uts`, `ipc`, `pid`).
    pub sandbox_namespaces: Vec<String>,
    /// Namespace types it makes of its own.
    pub namespaces: Vec<String>,
    /// Called with the init's exit code.
    pub on_exit: OnExit,
}

/// One VM and what runs in it.
pub struct Sandbox {
    dir: PathBuf,
    mux: Arc<AgentMux>,
    router: Arc<Router>,
    vm: Mutex<Option<Box<dyn Vm>>>,
    share: Mutex<Option<Share>>,
    network: Mutex<HostNetwork>,
    dns_socket: Option<PathBuf>,
    vm_pid: u32,
    /// The hybrid vsock socket host-initiated connections go through.
    vsock_uds: PathBuf,
    next_process: AtomicU32,
}

impl Sandbox {
    /// Connects the calling thread's network namespace, boots the VM with
    /// its NICs and share, and configures the guest's network. On error
    /// nothing it made is left.
    pub fn boot(opts: SandboxOptions) -> Result<Sandbox> {
        let share = Share::create(&opts.dir.join("shared"))?;
        let network = connect_network(&opts.dir, opts.lasting_netns.clone())?;
        let vm_dir = socket_dir::create(&opts.dir)
            .with_context(|| format!("creating the socket directory of {}", opts.dir.display()))?;
        let mut vm_config = VmConfig::from_config(&opts.config, &vm_dir, share.dir());
        vm_config.memory_mib = opts.memory_mib;
        vm_config.vcpus = opts.vcpus;
        vm_config.nics = network.nics();
        let dns_socket = if opts.dns_relays.is_empty() {
            None
        } else {
            let socket = network::dns::socket_path(&vm_config.vsock_uds());
            network::dns::serve(&socket, opts.dns_relays.clone())
                .with_context(|| format!("serving DNS relays on {}", socket.display()))?;
            Some(socket)
        };
        let host = crate::host::Virtualization::probe();
        let selection = hypervisor::select(&opts.config, &host)?;
        let timeout = Duration::from_millis(opts.config.boot_timeout_ms);
        let guest = Guest::boot(selection.hypervisor.as_ref(), &vm_config, timeout)?;
        let (vm, conn) = guest.into_parts();
        let (reader, writer) = conn.into_parts()?;
        let router = Router::new(opts.on_disconnect);
        let mux = AgentMux::start(reader, writer, Arc::clone(&router) as _)?;
        router.attach(&mux);
        let sandbox = Sandbox {
            dir: opts.dir,
            vm_pid: vm.pid(),
            vsock_uds: vm_config.vsock_uds(),
            mux,
            router,
            vm: Mutex::new(Some(vm)),
            share: Mutex::new(Some(share)),
            network: Mutex::new(network),
            dns_socket,
            next_process: AtomicU32::new(1),
        };
        let description = lock(&sandbox.network).description(opts.dns_relays);
        if let Err(e) = sandbox.request(Request::ConfigureNetwork(Box::new(description))) {
            sandbox.shutdown();
            return Err(anyhow!("configuring the guest's network: {e}"));
        }
        Ok(sandbox)
    }

    /// The VMM's host pid.
    pub fn vm_pid(&self) -> u32 {
        self.vm_pid
    }

    /// A stream to the guest's vsock `port` (hybrid vsock: `CONNECT
    /// <port>` on the VM's socket, answered `OK <local port>`).
    pub fn connect_guest(&self, port: u32) -> std::io::Result<std::os::unix::net::UnixStream> {
        use std::io::Write;
        let mut stream = std::os::unix::net::UnixStream::connect(&self.vsock_uds)?;
        stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        // Byte by byte: what follows the line belongs to the connection.
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while line.len() < 64 {
            std::io::Read::read_exact(&mut stream, &mut byte)?;
            if byte[0] == b'\n' {
                break;
            }
            line.push(byte[0]);
        }
        stream.set_read_timeout(None)?;
        if !line.starts_with(b"OK ") {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                format!(
                    "the guest refused vsock port {port}: {:?}",
                    String::from_utf8_lossy(&line)
                ),
            ));
        }
        Ok(stream)
    }

    /// A process id not used in this sandbox yet (0 is left to the CLI's
    /// single container).
    pub fn new_process_id(&self) -> ProcessId {
        self.next_process.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends `request` to the agent.
    pub fn request(&self, request: Request) -> Result<Response, MuxError> {
        self.mux.request(request, AGENT_TIMEOUT)
    }

    /// Adds a container (its files to the share, its record in the guest)
    /// with `init` as its init's process id; returns the init's guest pid.
    /// On error nothing of it stays.
    pub fn create_container(
        &self,
        container: NewContainer<'_>,
        init: ProcessId,
    ) -> Result<(i32, InputRelay)> {
        let bundle = container.bundle;
        let linux = bundle.linux();
        let files = lock(&self.share)
            .as_mut()
            .ok_or_else(|| anyhow!("the sandbox is shutting down"))?
            .add_container(
                container.id,
                &bundle.rootfs,
                &bundle.spec.mounts,
                &bundle.dir,
            )?;
        let spec = ContainerSpec {
            id: container.id.to_string(),
            init,
            rootfs: files.rootfs,
            readonly_root: bundle.spec.root.as_ref().is_some_and(|r| r.readonly),
            hostname: bundle.spec.hostname.clone(),
            domainname: bundle.spec.domainname.clone(),
            mounts: files.mounts,
            process: container.process,
            namespaces: container.namespaces,
            sandbox_namespaces: container.sandbox_namespaces,
            masked_paths: linux.masked_paths.clone(),
            readonly_paths: linux.readonly_paths.clone(),
            sysctl: linux.sysctl.clone(),
            seccomp: linux.seccomp.clone(),
            resources: linux.resources.clone().unwrap_or_default(),
            devices: linux.devices.clone(),
            rootfs_propagation: linux.rootfs_propagation.clone(),
            uid_mappings: linux.uid_mappings.clone(),
            gid_mappings: linux.gid_mappings.clone(),
        };
        let created = self
            .start_outputs(init, container.io, container.on_exit)
            .and_then(|stdin| {
                let response = self
                    .request(Request::CreateContainer(Box::new(spec)))
                    .map_err(|e| anyhow!("creating the container in the guest: {e}"))?;
                let Response::Process { pid } = response else {
                    return Err(anyhow!("the guest answered {response:?} to create"));
                };
                Ok((pid, self.start_input(init, stdin)?))
            });
        if created.is_err() {
            self.router.forget(init);
            if let Some(share) = lock(&self.share).as_mut() {
                let _ = share.remove_container(container.id);
            }
        }
        created
    }

    /// Starts a created container: an interface added to the namespace
    /// since create (docker 26) is connected first.
    pub fn start_container(&self, id: &str) -> Result<()> {
        self.connect_late_interfaces()?;
        self.request(Request::StartContainer {
            container: id.to_string(),
        })?;
        Ok(())
    }

    /// Runs `spec` in container `id` as `process`.
    pub fn exec(
        &self,
        id: &str,
        process: ProcessId,
        spec: Process,
        io: ProcessIo,
        on_exit: OnExit,
    ) -> Result<InputRelay> {
        let request = Request::Exec {
            container: id.to_string(),
            process,
            spec: Box::new(spec),
        };
        let stdin = self.start_outputs(process, io, on_exit)?;
        if let Err(e) = self.request(request) {
            self.router.forget(process);
            return Err(anyhow!("{e}"));
        }
        self.start_input(process, stdin)
    }

    /// Ends `process`'s stdin: its relay stops and the guest gets an EOF.
    pub fn close_input(&self, process: ProcessId, relay: &InputRelay) {
        relay.stop();
        self.router.input_windows.close(stdio_stream(process, 0));
        let _ = self.mux.stream_eof(stdio_stream(process, 0));
    }

    /// Stops waiting for `process` and drops its outputs.
    pub fn forget_process(&self, process: ProcessId) {
        self.router.forget(process);
    }

    /// Removes a container whose processes ended: its record in the guest
    /// and its files in the share.
    pub fn remove_container(&self, id: &str) -> Result<()> {
        let removed = self.request(Request::RemoveContainer {
            container: id.to_string(),
        });
        if let Some(share) = lock(&self.share).as_mut() {
            share.remove_container(id)?;
        }
        removed.map(drop).map_err(|e| anyhow!("{e}"))
    }

    /// Registers `process`'s outputs and exit; returns its stdin fd.
    fn start_outputs(
        &self,
        process: ProcessId,
        io: ProcessIo,
        on_exit: OnExit,
    ) -> Result<Option<OwnedFd>> {
        self.router.wait_exit(process, on_exit);
        let (stdin, outputs) = match io {
            ProcessIo::Pipes {
                stdin,
                stdout,
                stderr,
            } => (stdin, vec![(1, stdout), (2, stderr)]),
            ProcessIo::Terminal { input, output } => (input, vec![(1, output)]),
        };
        for (fd, sink) in outputs {
            if let Err(e) = self.router.add_output(stdio_stream(process, fd), sink) {
                self.router.forget(process);
                return Err(anyhow!("starting an output relay: {e}"));
            }
        }
        Ok(stdin)
    }

    /// Relays `stdin` (or an EOF at once) to `process`.
    fn start_input(&self, process: ProcessId, stdin: Option<OwnedFd>) -> Result<InputRelay> {
        let stream = stdio_stream(process, 0);
        let stop = Arc::new(AtomicBool::new(false));
        match stdin {
            Some(fd) => {
                let window = self.router.input_windows.open(stream);
                relay_input(fd, stream, Arc::clone(&self.mux), window, Arc::clone(&stop))
                    .context("starting the stdin relay")?;
            }
            None => {
                let _ = self.mux.stream_eof(stream);
            }
        }
        Ok(InputRelay(stop))
    }

    /// Connects an interface the engine added to the namespace since
    /// create to the standby NIC, and records it.
    fn connect_late_interfaces(&self) -> Result<()> {
        let mut network = lock(&self.network);
        let Some(late) = network.connect_late()? else {
            return Ok(());
        };
        let record = network.record();
        drop(network);
        record
            .save(&self.dir)
            .with_context(|| format!("writing {}", network::record::FILE))?;
        self.request(Request::ConfigureNetwork(Box::new(late)))?;
        Ok(())
    }

    /// Powers the guest off, stops the VM, undoes the network, unmounts and
    /// removes the share. Idempotent.
    pub fn shutdown(&self) {
        let Some(mut vm) = lock(&self.vm).take() else {
            return;
        };
        if let Ok(Response::ShuttingDown) = self.mux.request(Request::Shutdown, SHUTDOWN_TIMEOUT) {
            let _ = vm.wait_timeout(SHUTDOWN_TIMEOUT);
        }
        self.mux.close();
        if let Err(e) = vm.stop() {
            crate::sandbox::monitor::log(&self.dir, &format!("stopping the VM: {e}"));
        }
        lock(&self.network).teardown();
        let _ = std::fs::remove_file(self.dir.join(network::record::FILE));
        self.router.close_outputs();
        if let Some(share) = lock(&self.share).take() {
            if let Err(e) = share.remove() {
                crate::sandbox::monitor::log(&self.dir, &format!("removing the share: {e:#}"));
            }
        }
        if let Some(socket) = &self.dns_socket {
            let _ = std::fs::remove_file(socket);
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Connects the namespace's interfaces and records what that changed
/// there (for `delete` after a crash).
fn connect_network(dir: &Path, lasting: Option<PathBuf>) -> Result<HostNetwork> {
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
    let network = HostNetwork::connect(seed, lasting)?;
    network
        .record()
        .save(dir)
        .with_context(|| format!("writing {}", network::record::FILE))?;
    Ok(network)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

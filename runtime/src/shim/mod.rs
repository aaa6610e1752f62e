//! `containerd-shim-husk-v2`: containerd's shim v2 for husk, one VM per
//! Kubernetes pod (shared/PODS.md, shared/DESIGN.md 7b). Built on the
//! containerd-shim crate's synchronous API.
//!
//! containerd starts the shim once per task (`start`); a pod's containers
//! carry CRI's `io.kubernetes.cri.sandbox-id`, and grouping by it hands
//! them all the address of the shim that serves their pod, so one process
//! holds the pod's VM ([`pod`]) and answers every task's RPCs
//! ([`service`]). The pod's sandbox (pause) container is the VM itself; a
//! container without CRI annotations gets a VM of its own; a pod's
//! localhost is reachable for CRI port-forward ([`port_forward`]). Events go out in
//! containerd's order ([`events`]); errors carry the kind containerd maps
//! ([`error`]). `delete` after a crash removes what the dead shim left.
//!
//! State: each VM's directory is `/run/husk-shim/<namespace>/<task id>`
//! (sockets, logs, the share, the network record).

pub mod error;
pub mod events;
pub mod io;
pub mod pod;
pub mod port_forward;
pub mod service;
pub mod spec;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, DeleteResponse, ExitSignal, Flags, StartOpts};

use crate::oci::spec::Bundle;
use crate::sandbox::{network, share};

/// The runtime containerd names this shim by.
pub const RUNTIME_ID: &str = "io.containerd.husk.v2";

/// Where the shims keep their VMs' state.
pub const STATE_ROOT: &str = "/run/husk-shim";

/// Runs the shim (its `start`, `delete` or serving action).
pub fn run() {
    let config = Config {
        // The sandbox reaps its own children (QEMU, virtiofsd, husk-vmm);
        // a reaper waiting on every pid would take their exits.
        no_reaper: true,
        no_sub_reaper: true,
        ..Config::default()
    };
    containerd_shim::run::<HuskShim>(RUNTIME_ID, Some(config));
}

/// The shim process.
struct HuskShim {
    exit: Arc<ExitSignal>,
    namespace: String,
    id: String,
    bundle: PathBuf,
    /// The ttrpc socket this shim serves (`unix://PATH`), when serving.
    socket: String,
    /// containerd's address, which the shims' socket paths derive from.
    containerd: String,
}

impl HuskShim {
    fn state_root(&self) -> PathBuf {
        Path::new(STATE_ROOT).join(&self.namespace)
    }
}

impl containerd_shim::Shim for HuskShim {
    type T = service::TaskService;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&args.bundle)
        };
        HuskShim {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            bundle,
            socket: args.socket.clone(),
            containerd: args.address.clone(),
        }
    }

    /// Starts (or finds) the shim of this task's pod; its address.
    fn start_shim(&mut self, opts: StartOpts) -> Result<String, containerd_shim::Error> {
        let bundle = Bundle::load(&self.bundle).map_err(|e| {
            containerd_shim::Error::InvalidArgument(format!("{:#}", anyhow::Error::new(e)))
        })?;
        let kind = spec::TaskKind::of(&bundle.spec.annotations)
            .map_err(containerd_shim::Error::InvalidArgument)?;
        let grouping = kind.grouping(&opts.id);
        let (_, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        // The bundle's `address` file, as containerd's shims keep it.
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    /// After a crash: removes what the dead shim left of this task's VM
    /// (the share's mounts, the network redirects, the state), the rootfs
    /// mount, and the dead shim's socket.
    fn delete_shim(&mut self) -> Result<DeleteResponse, containerd_shim::Error> {
        let grouping = Bundle::load(&self.bundle)
            .ok()
            .and_then(|b| spec::TaskKind::of(&b.spec.annotations).ok())
            .map_or_else(|| self.id.clone(), |kind| kind.grouping(&self.id));
        let address = containerd_shim::socket_address(&self.containerd, &self.namespace, &grouping);
        remove_dead_socket(&address);
        let dir = self.state_root().join(&self.id);
        if let Some(record) = network::record::Record::load(&dir) {
            if let Err(e) = record.undo() {
                containerd_shim::warn!("undoing the network of {}: {e}", self.id);
            }
        }
        crate::sandbox::socket_dir::remove(&dir).ok();
        share::remove_dir(&dir).map_err(|e| containerd_shim::Error::Other(format!("{e:#}")))?;
        let _ = nix::mount::umount2(
            &self.bundle.join("rootfs"),
            nix::mount::MntFlags::MNT_DETACH,
        );
        Ok(DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: containerd_shim::protos::protobuf::MessageField::some(pod::now()),
            ..Default::default()
        })
    }

    /// Until the last task is gone; the socket goes with the shim (its
    /// first task's bundle, where the crate would look for it, may be
    /// gone by then).
    fn wait(&mut self) {
        self.exit.wait();
        if let Some(path) = self.socket.strip_prefix("unix://") {
            let _ = std::fs::remove_file(path);
        }
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let events = events::Events::start(publisher, self.namespace.clone());
        let pod = Arc::new(pod::Pod::new(self.state_root(), events));
        service::TaskService::new(pod, Arc::clone(&self.exit))
    }
}

/// Removes the shim socket at `address` (`unix://PATH`) if no shim
/// listens there any more: a shim killed with SIGKILL leaves it, and
/// containerd (1.6) does not remove it.
fn remove_dead_socket(address: &str) {
    let Some(path) = address.strip_prefix("unix://") else {
        return;
    };
    let refused = matches!(
        std::os::unix::net::UnixStream::connect(path),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    );
    if refused {
        let _ = std::fs::remove_file(path);
    }
}

//! Kubernetes' CRI, driven as kubelet drives it: a private containerd 1.6
//! with its CRI plugin ([`fixture`]), a gRPC client for its CRI socket
//! ([`client`]), and the second leg of the streaming calls, the WebSocket
//! and SPDY sessions on containerd's stream server ([`stream`]).
//!
//! The same scenarios run once per [`Handler`], the runtime handler a
//! `RuntimeClass` would name: containerd's runc shim (the baseline) and
//! husk's shim v2, which puts a whole pod in one VM.
//!
//! What the CRI plugin does is containerd 1.6.20's (`pkg/cri/server`,
//! `pkg/cri/streaming`): the protocols here were read from that source.

pub mod client;
pub mod config;
pub mod fixture;
pub mod leftovers;
pub mod logs;
pub mod pause;
pub mod pod;
pub mod stream;

use std::path::PathBuf;

/// The shim binary husk's handler uses, built next to `husk`.
pub const HUSK_SHIM: &str = "containerd-shim-husk-v2";

/// A runtime handler of the fixture's containerd (`runtime_handler` in
/// `RunPodSandbox`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    /// containerd's runc shim, `io.containerd.runc.v2`: one shim per pod,
    /// every container a host process.
    Runc,
    /// husk's shim, `io.containerd.husk.v2`: one VM per pod.
    Husk,
}

impl Handler {
    /// The handler's name in containerd's config.
    pub fn name(self) -> &'static str {
        match self {
            Handler::Runc => "runc",
            Handler::Husk => "husk",
        }
    }

    /// Its `runtime_type`.
    pub fn runtime_type(self) -> &'static str {
        match self {
            Handler::Runc => "io.containerd.runc.v2",
            Handler::Husk => "io.containerd.husk.v2",
        }
    }

    /// The file name of its shim binary (containerd derives it from the
    /// runtime type: `containerd-shim-<name>-<version>`).
    pub fn shim_binary_name(self) -> &'static str {
        match self {
            Handler::Runc => "containerd-shim-runc-v2",
            Handler::Husk => HUSK_SHIM,
        }
    }

    /// Where the handler's shim keeps per-pod state outside containerd's
    /// directories (entries named by the sandbox or container id).
    pub fn state_roots(self) -> &'static [&'static str] {
        match self {
            // runc's root is the fixture's (the `Root` option).
            Handler::Runc => &[],
            Handler::Husk => &["/run/husk-shim/k8s.io"],
        }
    }
}

/// Where the husk shim is built: next to the `husk` binary
/// (`target/debug`), whether or not it exists yet.
pub fn husk_shim_path() -> PathBuf {
    crate::husk_binary()
        .map(|husk| husk.with_file_name(HUSK_SHIM))
        .unwrap_or_else(|_| crate::debug_dir().join(HUSK_SHIM))
}

//! The messages: what the host asks ([`HostMessage`]) and what the guest
//! says ([`GuestMessage`]).
//!
//! Requests carry an `id` chosen by the host; the agent answers each with a
//! [`GuestMessage::Response`] of the same id. A frame the agent cannot read at
//! all (no id to answer to) gets a [`GuestMessage::ProtocolError`].

use serde::{Deserialize, Serialize};

use crate::Bytes;

/// Identifies one byte stream (a process's stdin, stdout or stderr).
pub type StreamId = u32;

/// Everything the host sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum HostMessage {
    /// A request the agent answers with a response of the same `id`.
    Request {
        /// Chosen by the host, echoed in the response.
        id: u64,
        /// What to do.
        request: Request,
    },
    /// Bytes for a stream into the guest.
    StreamData {
        /// Which stream.
        stream: StreamId,
        /// The bytes, in order.
        data: Bytes,
    },
    /// The end of a stream into the guest: no more data follows.
    StreamEof {
        /// Which stream.
        stream: StreamId,
    },
    /// The host consumed `bytes` more of an output stream: the guest may
    /// send that many more ([`STREAM_WINDOW`]).
    StreamCredit {
        /// Which stream.
        stream: StreamId,
        /// How many bytes.
        bytes: u32,
    },
}

/// What the host can ask of the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Answered with [`Response::Pong`]; measures the round trip.
    Ping,
    /// Read a file of the sandbox share; `path` is relative to its root.
    ReadFile {
        /// Relative path inside the share, without `..`.
        path: String,
    },
    /// Answered with [`Response::ShuttingDown`], then the guest powers off.
    Shutdown,
    /// Makes the namespaces a pod's containers share (the pod's pause
    /// container, in the guest): answered with [`Response::Process`].
    CreateSandbox(Box<SandboxSpec>),
    /// Sets up a container and its init process up to the point of exec;
    /// answered with [`Response::Process`].
    CreateContainer(Box<ContainerSpec>),
    /// Lets a created container's init process exec its command.
    StartContainer {
        /// The container.
        container: ContainerId,
    },
    /// Starts another process in a running container; answered with
    /// [`Response::Process`].
    Exec {
        /// The container.
        container: ContainerId,
        /// Chosen by the host, unique in the guest.
        process: ProcessId,
        /// What to run.
        spec: Box<crate::oci::Process>,
    },
    /// Sends a signal to a process, or with `all` to every process of its
    /// container.
    Signal {
        /// The target.
        process: ProcessId,
        /// The signal number.
        signal: i32,
        /// Every process of the target's container, not just the target.
        all: bool,
    },
    /// The terminal of a process changed size.
    Resize {
        /// The process whose terminal it is.
        process: ProcessId,
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Freezes every process of a container (cgroup freezer).
    Pause {
        /// The container.
        container: ContainerId,
    },
    /// Thaws them.
    Resume {
        /// The container.
        container: ContainerId,
    },
    /// Lists a container's processes; answered with [`Response::Processes`].
    Processes {
        /// The container.
        container: ContainerId,
    },
    /// Reads a container's cgroup counters; answered with [`Response::Stats`].
    Stats {
        /// The container.
        container: ContainerId,
    },
    /// Changes a container's cgroup limits.
    Update {
        /// The container.
        container: ContainerId,
        /// The new limits.
        resources: Box<crate::oci::Resources>,
    },
    /// Forgets a container whose processes all ended: its cgroup and
    /// record go; another with the same id may be created.
    RemoveContainer {
        /// The container.
        container: ContainerId,
    },
    /// Configures the guest's NICs and the DNS relays (before the first
    /// container, and again for interfaces the engine added later);
    /// answered with [`Response::Done`].
    ConfigureNetwork(Box<crate::net::Network>),
}

/// Names a container in the sandbox (the OCI id).
pub type ContainerId = String;

/// The window of every stdio stream, each way: a sender has at most this
/// many bytes of a stream unacknowledged, and the receiver grants more
/// ([`HostMessage::StreamCredit`], [`GuestMessage::StreamCredit`]) as its
/// reader consumes them. A stream nobody reads stalls only itself.
pub const STREAM_WINDOW: u32 = 256 * 1024;

/// The namespaces a pod's containers share, made once per sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSpec {
    /// The pod's hostname (its UTS namespace).
    pub hostname: Option<String>,
    /// Namespace types to make (`uts`, `ipc`, `pid`); the network is the
    /// guest's own.
    pub namespaces: Vec<String>,
}

/// Identifies a process the host started, unique in the sandbox (the
/// runc-compatible CLI's single container has its init as 0).
pub type ProcessId = u32;

/// The stream of a process's stdio `fd` (0, 1 or 2).
pub fn stdio_stream(process: ProcessId, fd: u32) -> StreamId {
    process.wrapping_mul(4).wrapping_add(fd)
}

/// The process and fd of a stream made by [`stdio_stream`].
pub fn stream_owner(stream: StreamId) -> (ProcessId, u32) {
    (stream / 4, stream % 4)
}

/// Everything the agent needs to set up the container, with paths of the
/// share already resolved by the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    /// The container id (names its guest cgroup).
    pub id: ContainerId,
    /// The process id of its init, chosen by the host.
    pub init: ProcessId,
    /// The rootfs directory, relative to the share.
    pub rootfs: String,
    /// `root.readonly`.
    pub readonly_root: bool,
    /// `hostname`.
    pub hostname: Option<String>,
    /// `domainname`.
    pub domainname: Option<String>,
    /// `mounts`, in order; bind sources are relative to the share.
    pub mounts: Vec<crate::oci::Mount>,
    /// `process`.
    pub process: crate::oci::Process,
    /// Namespace types to create (`pid`, `mount`, `uts`, `ipc`, `network`, `cgroup`).
    pub namespaces: Vec<String>,
    /// Namespace types to join from the sandbox ([`Request::CreateSandbox`]):
    /// a pod's containers share its `uts`, `ipc` and, if asked, `pid`.
    #[serde(default)]
    pub sandbox_namespaces: Vec<String>,
    /// `linux.maskedPaths`.
    pub masked_paths: Vec<String>,
    /// `linux.readonlyPaths`.
    pub readonly_paths: Vec<String>,
    /// `linux.sysctl`.
    pub sysctl: crate::oci::Sysctl,
    /// `linux.seccomp`.
    pub seccomp: Option<crate::oci::Seccomp>,
    /// `linux.resources`, applied to the container's guest cgroup.
    pub resources: crate::oci::Resources,
    /// `linux.devices`, made in the container's `/dev`.
    #[serde(default)]
    pub devices: Vec<crate::oci::Device>,
    /// `linux.rootfsPropagation` (`rshared`, `private`, ...), for the
    /// container's `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs_propagation: Option<String>,
    /// `linux.uidMappings`, for a container with a `user` namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uid_mappings: Vec<crate::oci::IdMapping>,
    /// `linux.gidMappings`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gid_mappings: Vec<crate::oci::IdMapping>,
}

/// Everything the guest sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum GuestMessage {
    /// The first message on a connection.
    Hello(Hello),
    /// The answer to the request with the same `id`.
    Response {
        /// The request's id.
        id: u64,
        /// The outcome.
        result: Result<Response, AgentError>,
    },
    /// A frame from the host could not be read; the connection goes on.
    ProtocolError {
        /// What was wrong with it.
        message: String,
    },
    /// Bytes from a stream out of the guest.
    StreamData {
        /// Which stream.
        stream: StreamId,
        /// The bytes, in order.
        data: Bytes,
    },
    /// The end of a stream out of the guest.
    StreamEof {
        /// Which stream.
        stream: StreamId,
    },
    /// The guest consumed `bytes` more of an input stream: the host may
    /// send that many more ([`STREAM_WINDOW`]).
    StreamCredit {
        /// Which stream.
        stream: StreamId,
        /// How many bytes.
        bytes: u32,
    },
    /// A process ended; sent after the EOF of its output streams.
    ProcessExited {
        /// Which process.
        process: ProcessId,
        /// Its exit code, or 128 + the signal that killed it (as runc reports).
        exit_code: i32,
    },
}

/// The agent introduces itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The agent's [`crate::PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The agent's crate version.
    pub agent_version: String,
    /// `uname -r` of the guest kernel.
    pub kernel_release: String,
    /// Guest time since boot (CLOCK_BOOTTIME) when the hello was sent.
    pub boot_time_ns: u64,
    /// Whether the sandbox share is mounted, and if not, why.
    pub share: Result<String, String>,
}

/// Successful answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    /// Answer to [`Request::Ping`].
    Pong {
        /// Guest time since boot.
        boot_time_ns: u64,
    },
    /// Answer to [`Request::ReadFile`].
    File {
        /// The file's contents.
        data: Bytes,
    },
    /// Answer to [`Request::Shutdown`]; the guest powers off next.
    ShuttingDown,
    /// Done; nothing to report.
    Done,
    /// A process was set up (create) or started (exec).
    Process {
        /// Its pid in the guest's initial pid namespace.
        pid: i32,
    },
    /// Answer to [`Request::Processes`].
    Processes {
        /// One entry per process.
        list: Vec<ProcessInfo>,
    },
    /// Answer to [`Request::Stats`].
    Stats(Stats),
}

/// One process of the container, as `ps` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessInfo {
    /// The pid in the guest.
    pub pid: i32,
    /// The parent's pid.
    pub ppid: i32,
    /// The real user id.
    pub uid: u32,
    /// The command line, arguments joined by spaces.
    pub cmd: String,
}

/// Cgroup counters of the container in the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stats {
    /// CPU time used, nanoseconds.
    pub cpu_usage_ns: u64,
    /// User CPU time, nanoseconds.
    pub cpu_user_ns: u64,
    /// System CPU time, nanoseconds.
    pub cpu_system_ns: u64,
    /// Memory in use, bytes.
    pub memory_usage: u64,
    /// The memory limit, bytes (the guest's memory when unlimited).
    pub memory_limit: u64,
    /// Number of tasks.
    pub pids: u64,
    /// The pids limit, 0 when unlimited.
    pub pids_limit: u64,
}

/// A request failed in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("agent: {message}")]
#[serde(deny_unknown_fields)]
pub struct AgentError {
    /// The errno when the failure was a system call, for the host to map.
    pub errno: Option<i32>,
    /// What failed, naming the path or field.
    pub message: String,
}

impl AgentError {
    /// An error without an errno.
    pub fn new(message: impl Into<String>) -> Self {
        AgentError {
            errno: None,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_json_is_readable() {
        let msg = HostMessage::Request {
            id: 4,
            request: Request::ReadFile { path: "a/b".into() },
        };
        let json = serde_json::to_string(&msg).unwrap();
        assert_eq!(
            json,
            r#"{"type":"request","id":4,"request":{"op":"read_file","path":"a/b"}}"#
        );
    }

    #[test]
    fn error_response_round_trips() {
        let msg = GuestMessage::Response {
            id: 1,
            result: Err(AgentError {
                errno: Some(2),
                message: "no such file: x".into(),
            }),
        };
        let json = serde_json::to_vec(&msg).unwrap();
        assert_eq!(serde_json::from_slice::<GuestMessage>(&json).unwrap(), msg);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let json = r#"{"type":"stream_eof","stream":1,"extra":true}"#;
        assert!(serde_json::from_str::<GuestMessage>(json).is_err());
    }

    #[test]
    fn every_container_message_round_trips() {
        let responses = [
            Response::Done,
            Response::Process { pid: 7 },
            Response::Processes {
                list: vec![ProcessInfo {
                    pid: 1,
                    ppid: 0,
                    uid: 0,
                    cmd: "sh".into(),
                }],
            },
            Response::Stats(Stats::default()),
        ];
        for response in responses {
            let msg = GuestMessage::Response {
                id: 1,
                result: Ok(response),
            };
            let json = serde_json::to_vec(&msg).unwrap();
            assert_eq!(serde_json::from_slice::<GuestMessage>(&json).unwrap(), msg);
        }
        let requests = [
            Request::CreateContainer(Box::new(ContainerSpec {
                id: "c".into(),
                init: 0,
                rootfs: "rootfs".into(),
                readonly_root: false,
                hostname: None,
                domainname: None,
                mounts: vec![],
                process: crate::oci::Process::default(),
                namespaces: vec!["pid".into()],
                sandbox_namespaces: vec!["uts".into()],
                masked_paths: vec![],
                readonly_paths: vec![],
                sysctl: Default::default(),
                seccomp: None,
                resources: Default::default(),
                devices: vec![crate::oci::Device {
                    path: "/dev/fuse".into(),
                    kind: "c".into(),
                    major: 10,
                    minor: 229,
                    file_mode: Some(0o666),
                    uid: None,
                    gid: Some(5),
                }],
                rootfs_propagation: Some("rshared".into()),
                uid_mappings: vec![crate::oci::IdMapping {
                    container_id: 0,
                    host_id: 1000,
                    size: 65536,
                }],
                gid_mappings: vec![],
            })),
            Request::CreateSandbox(Box::new(SandboxSpec {
                hostname: Some("pod".into()),
                namespaces: vec!["uts".into(), "ipc".into()],
            })),
            Request::StartContainer {
                container: "c".into(),
            },
            Request::Exec {
                container: "c".into(),
                process: 1,
                spec: Box::default(),
            },
            Request::Signal {
                process: 0,
                signal: 9,
                all: true,
            },
            Request::Resize {
                process: 0,
                rows: 1,
                cols: 2,
            },
            Request::Pause {
                container: "c".into(),
            },
            Request::Processes {
                container: "c".into(),
            },
            Request::Update {
                container: "c".into(),
                resources: Box::default(),
            },
            Request::RemoveContainer {
                container: "c".into(),
            },
            Request::ConfigureNetwork(Box::default()),
        ];
        for request in requests {
            let msg = HostMessage::Request { id: 2, request };
            let json = serde_json::to_vec(&msg).unwrap();
            assert_eq!(serde_json::from_slice::<HostMessage>(&json).unwrap(), msg);
        }
        let exited = GuestMessage::ProcessExited {
            process: 3,
            exit_code: 137,
        };
        let json = serde_json::to_vec(&exited).unwrap();
        assert_eq!(
            serde_json::from_slice::<GuestMessage>(&json).unwrap(),
            exited
        );
    }

    #[test]
    fn stdio_streams_encode_process_and_fd() {
        assert_eq!(stream_owner(stdio_stream(5, 2)), (5, 2));
        assert_eq!(stream_owner(stdio_stream(0, 0)), (0, 0));
    }

    #[test]
    fn unknown_request_is_refused() {
        let json = r#"{"type":"request","id":1,"request":{"op":"format_disk"}}"#;
        let err = serde_json::from_str::<HostMessage>(json).unwrap_err();
        assert!(err.to_string().contains("format_disk"), "{err}");
    }
}

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
    fn unknown_request_is_refused() {
        let json = r#"{"type":"request","id":1,"request":{"op":"format_disk"}}"#;
        let err = serde_json::from_str::<HostMessage>(json).unwrap_err();
        assert!(err.to_string().contains("format_disk"), "{err}");
    }
}

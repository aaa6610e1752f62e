//! The second leg of CRI's streaming calls. `Exec`, `Attach` and
//! `PortForward` answer with a URL on containerd's stream server
//! (`http://127.0.0.1:PORT/{exec,attach,portforward}/TOKEN`, the token
//! single-use, the options those of the CRI request); a client then
//! upgrades an HTTP request to it, as kubelet's clients do, to one of:
//!
//! - WebSocket ([`websocket`]), subprotocol `v4.channel.k8s.io` (or
//!   `channel.k8s.io`, base64 variants): every message is one channel byte
//!   and data. Exec/attach channels: 0 stdin, 1 stdout, 2 stderr, 3 the
//!   error channel (v4: a JSON `metav1.Status` carrying the exit code), 4
//!   resize (JSON `{"Width":W,"Height":H}`). Port-forward: channels 2i
//!   (data) and 2i+1 (error) per port of the CRI request, each opened by
//!   the port as two little-endian bytes. containerd 1.6's wsstream has no
//!   v5 CLOSE message: a WebSocket client cannot close stdin alone.
//! - SPDY/3.1 ([`spdy`]), `X-Stream-Protocol-Version: v4.channel.k8s.io`
//!   (exec, attach) or `portforward.k8s.io`: one SPDY stream per
//!   `streamtype` header (`error`, `stdin`, `stdout`, `stderr`, `resize`;
//!   `data` and `error` with `port` and `requestid` for port-forward). A
//!   FIN on the stdin stream closes the process's stdin; this is what
//!   `kubectl exec` (through the API server and kubelet) speaks.
//!
//! Sources: containerd v1.6.20 `pkg/cri/streaming/remotecommand/
//! {websocket,httpstream,exec}.go`, `pkg/cri/streaming/portforward/`,
//! `vendor/k8s.io/apiserver/pkg/util/wsstream/conn.go`,
//! `vendor/github.com/moby/spdystream/spdy/`.
//!
//! The stream server listens in containerd's network namespace, so each
//! connection is made there ([`connect`]).

pub mod spdy;
pub mod spdy_frame;
pub mod websocket;

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

/// The remote-command protocol both transports negotiate.
pub const V4_CHANNEL_PROTOCOL: &str = "v4.channel.k8s.io";
/// The SPDY port-forward protocol.
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";

/// The remote-command channels (WebSocket channel bytes).
pub mod channel {
    /// The process's stdin.
    pub const STDIN: u8 = 0;
    /// Its stdout.
    pub const STDOUT: u8 = 1;
    /// Its stderr.
    pub const STDERR: u8 = 2;
    /// The session's status.
    pub const ERROR: u8 = 3;
    /// Terminal size changes.
    pub const RESIZE: u8 = 4;
}

/// Which streams a session has: the flags of the CRI `Exec`/`Attach`
/// request, which the stream server expects the client to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stdio {
    /// Stdin is forwarded.
    pub stdin: bool,
    /// Stdout is.
    pub stdout: bool,
    /// Stderr is (never with a tty).
    pub stderr: bool,
    /// A terminal (adds the resize stream).
    pub tty: bool,
}

/// One of the process's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Stdout.
    Stdout,
    /// Stderr.
    Stderr,
}

/// A session that ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// Everything on stdout.
    pub stdout: Vec<u8>,
    /// Everything on stderr.
    pub stderr: Vec<u8>,
    /// The exit code from the status, or what the status said instead.
    pub exit: Result<i32, String>,
}

impl Finished {
    /// Stdout as text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Stderr as text.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// An exec or attach session, over either transport.
pub trait RemoteCommand: Send {
    /// Sends `data` to the process's stdin.
    fn write_stdin(&mut self, data: &[u8]) -> Result<(), String>;
    /// Closes the process's stdin (EOF), leaving the session open.
    fn close_stdin(&mut self) -> Result<(), String>;
    /// Tells the terminal its size.
    fn resize(&mut self, width: u16, height: u16) -> Result<(), String>;
    /// Waits until `stream` has shown `needle`.
    fn wait_output(
        &mut self,
        stream: Output,
        needle: &str,
        timeout: Duration,
    ) -> Result<(), String>;
    /// What `stream` has shown so far.
    fn output(&self, stream: Output) -> Vec<u8>;
    /// Waits for the server to end the session; everything it sent.
    fn finish(&mut self, timeout: Duration) -> Result<Finished, String>;
    /// Leaves the session (closes the connection).
    fn detach(&mut self);
}

/// A stream server URL: where to connect and what to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamUrl {
    /// The server's address.
    pub addr: SocketAddr,
    /// The path and query (`/exec/TOKEN`).
    pub path: String,
}

impl StreamUrl {
    /// Parses containerd's `http://HOST:PORT/PATH` (HOST an IP address).
    pub fn parse(url: &str) -> Result<StreamUrl, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url:?} is not an http:// URL"))?;
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let addr = host
            .parse()
            .map_err(|e| format!("{url:?}: {host:?} is not IP:PORT: {e}"))?;
        Ok(StreamUrl {
            addr,
            path: if path.is_empty() {
                "/".into()
            } else {
                path.into()
            },
        })
    }
}

/// A TCP connection to `url`'s server, made in the network namespace at
/// `netns` (containerd's).
pub fn connect(netns: &Path, url: &StreamUrl) -> Result<TcpStream, String> {
    let addr = url.addr;
    crate::net::try_in_netns(netns, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(10))
    })
    .map_err(|e| format!("connecting to the stream server {addr}: {e}"))
}

/// The exit code in a v4 status (`metav1.Status` as JSON): 0 for
/// `Success`, the `ExitCode` cause of a `NonZeroExitCode` failure, or
/// the status's message for any other failure.
pub fn exit_code_of_status(status: &[u8]) -> Result<i32, String> {
    if status.is_empty() {
        return Err("the session ended without a status".into());
    }
    let json: serde_json::Value = serde_json::from_slice(status).map_err(|e| {
        format!(
            "the status is not JSON ({e}): {:?}",
            String::from_utf8_lossy(status)
        )
    })?;
    match json["status"].as_str() {
        Some("Success") => Ok(0),
        Some("Failure") if json["reason"] == "NonZeroExitCode" => json["details"]["causes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|cause| cause["reason"] == "ExitCode")
            .and_then(|cause| cause["message"].as_str()?.parse().ok())
            .ok_or_else(|| format!("a NonZeroExitCode status without an exit code: {json}")),
        _ => Err(format!("the session failed: {json}")),
    }
}

/// The resize message: `remotecommand.TerminalSize` as JSON.
pub fn resize_message(width: u16, height: u16) -> Vec<u8> {
    serde_json::json!({"Width": width, "Height": height})
        .to_string()
        .into_bytes()
}

/// True if `haystack` contains `needle`.
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    needle.is_empty()
        || haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_url_splits_the_address_and_the_path() {
        let url = StreamUrl::parse("http://127.0.0.1:40123/exec/AbC-d").unwrap();

        assert_eq!(url.addr, "127.0.0.1:40123".parse().unwrap());
        assert_eq!(url.path, "/exec/AbC-d");
        assert!(StreamUrl::parse("https://127.0.0.1:1/x").is_err());
        assert!(StreamUrl::parse("http://localhost:1/x").is_err());
    }

    #[test]
    fn exit_code_of_status_reads_success_and_the_exit_code_cause() {
        let success = br#"{"metadata":{},"status":"Success"}"#;
        let failure = br#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: 7","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"7"}]}}"#;
        let internal =
            br#"{"metadata":{},"status":"Failure","message":"boom","reason":"InternalError"}"#;

        assert_eq!(exit_code_of_status(success), Ok(0));
        assert_eq!(exit_code_of_status(failure), Ok(7));
        assert!(exit_code_of_status(internal).unwrap_err().contains("boom"));
        assert!(exit_code_of_status(b"").is_err());
    }

    #[test]
    fn resize_message_is_terminal_size_json() {
        let message: serde_json::Value = serde_json::from_slice(&resize_message(100, 30)).unwrap();

        assert_eq!(message, serde_json::json!({"Width": 100, "Height": 30}));
    }
}

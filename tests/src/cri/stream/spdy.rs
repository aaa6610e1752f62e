//! The stream server's SPDY side, as `kubectl exec`/`port-forward` (and
//! the API server on their behalf) speak it: an HTTP/1.1 request upgraded
//! to `SPDY/3.1` with `X-Stream-Protocol-Version`, then one client-opened
//! SPDY stream per `streamtype` header. The server starts the process once
//! every stream it expects (from the CRI request's flags) is opened and
//! replied to, writes the status on the `error` stream, then sends GOAWAY
//! and closes. A FIN on our `stdin` stream is the process's EOF.
//!
//! A reader thread collects every stream's data and answers PINGs; the
//! caller's thread opens streams, writes, and waits on what was read.

use std::collections::HashMap;
use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::spdy_frame::{self, Frame, HeaderCompressor};
use super::{
    connect, contains, exit_code_of_status, resize_message, Finished, Output, RemoteCommand, Stdio,
    StreamUrl,
};

/// What the peer sent on one stream.
#[derive(Debug, Default, Clone)]
pub struct StreamState {
    /// The server accepted it (SYN_REPLY).
    pub replied: bool,
    /// Its data so far.
    pub data: Vec<u8>,
    /// The server half-closed it (FIN).
    pub finished: bool,
    /// The server reset it, with this status.
    pub reset: Option<u32>,
}

/// What the reader thread saw.
#[derive(Debug, Default)]
pub struct SessionState {
    /// Our streams, by id.
    pub streams: HashMap<u32, StreamState>,
    /// The server sent GOAWAY.
    pub gone_away: bool,
    /// The connection ended (or failed: `error`).
    pub ended: bool,
    /// Why reading failed, if not at a clean end.
    pub error: Option<String>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<SessionState>,
    changed: Condvar,
}

/// An upgraded SPDY connection to the stream server.
pub struct SpdySession {
    writer: Arc<Mutex<TcpStream>>,
    shared: Arc<Shared>,
    compressor: HeaderCompressor,
    next_stream: u32,
    reader: Option<JoinHandle<()>>,
}

impl SpdySession {
    /// Upgrades a POST to `url` (from the network namespace `netns`) with
    /// `protocol` as the stream protocol version; fails unless the server
    /// switches to SPDY/3.1 and agrees on `protocol`.
    pub fn upgrade(netns: &Path, url: &str, protocol: &str) -> Result<SpdySession, String> {
        let parsed = StreamUrl::parse(url)?;
        let mut stream = connect(netns, &parsed)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\n\
             Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {protocol}\r\n\
             Content-Length: 0\r\n\r\n",
            path = parsed.path,
            host = parsed.addr,
        );
        stream
            .write_all(request.as_bytes())
            .map_err(|e| format!("sending the upgrade request to {url}: {e}"))?;
        let head = read_http_head(&mut stream).map_err(|e| format!("upgrading {url}: {e}"))?;
        check_upgrade(&head, protocol).map_err(|e| format!("upgrading {url}: {e}"))?;
        stream.set_read_timeout(None).map_err(|e| e.to_string())?;

        let reading = stream.try_clone().map_err(|e| e.to_string())?;
        let writer = Arc::new(Mutex::new(stream));
        let shared = Arc::new(Shared::default());
        let reader = {
            let (writer, shared) = (writer.clone(), shared.clone());
            std::thread::spawn(move || read_frames(reading, &writer, &shared))
        };
        Ok(SpdySession {
            writer,
            shared,
            compressor: HeaderCompressor::default(),
            next_stream: 1,
            reader: Some(reader),
        })
    }

    fn write(&self, frame: &[u8]) -> Result<(), String> {
        let mut stream = self.writer.lock().expect("the writer lock");
        stream
            .write_all(frame)
            .map_err(|e| format!("writing a SPDY frame: {e}"))
    }

    /// Opens a stream with `headers`; its id.
    pub fn open_stream(&mut self, headers: &[(&str, &str)]) -> Result<u32, String> {
        let id = self.next_stream;
        self.next_stream += 2;
        self.shared
            .state
            .lock()
            .expect("the state lock")
            .streams
            .insert(id, StreamState::default());
        let block = self.compressor.compress(headers);
        self.write(&spdy_frame::syn_stream(id, &block))?;
        Ok(id)
    }

    /// Sends `bytes` on `stream`.
    pub fn send(&self, stream: u32, bytes: &[u8]) -> Result<(), String> {
        self.write(&spdy_frame::data(stream, bytes, false))
    }

    /// Half-closes `stream` (an empty data frame with FIN).
    pub fn finish_stream(&self, stream: u32) -> Result<(), String> {
        self.write(&spdy_frame::data(stream, &[], true))
    }

    /// Waits until `done` holds for what was read, or fails naming `what`
    /// (with a summary) after `timeout` or when the connection ends first.
    pub fn wait(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&SessionState) -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.state.lock().expect("the state lock");
        loop {
            if done(&state) {
                return Ok(());
            }
            let now = Instant::now();
            if state.ended || now >= deadline {
                let why = if state.ended {
                    "the connection ended"
                } else {
                    "timed out"
                };
                return Err(format!("{why} waiting for {what}: {}", summary(&state)));
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .expect("the state lock")
                .0;
        }
    }

    /// A copy of what `stream` received.
    pub fn stream(&self, stream: u32) -> StreamState {
        let state = self.shared.state.lock().expect("the state lock");
        state.streams.get(&stream).cloned().unwrap_or_default()
    }

    /// Closes the connection (GOAWAY, then the socket); joins the reader.
    pub fn close(&mut self) {
        let _ = self.write(&spdy_frame::goaway(0));
        if let Ok(stream) = self.writer.lock() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl Drop for SpdySession {
    fn drop(&mut self) {
        self.close();
    }
}

fn summary(state: &SessionState) -> String {
    let mut ids: Vec<&u32> = state.streams.keys().collect();
    ids.sort();
    let streams: Vec<String> = ids
        .into_iter()
        .map(|id| {
            let s = &state.streams[id];
            format!(
                "stream {id}: replied={} fin={} reset={:?} data={:?}",
                s.replied,
                s.finished,
                s.reset,
                String::from_utf8_lossy(&s.data)
            )
        })
        .collect();
    format!(
        "goaway={} ended={} error={:?}; {}",
        state.gone_away,
        state.ended,
        state.error,
        streams.join("; ")
    )
}

/// Reads the response head byte by byte (nothing after it is consumed).
fn read_http_head(stream: &mut TcpStream) -> Result<String, String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return Err("a response head over 16 KiB".into());
        }
        match stream.read(&mut byte) {
            Ok(0) => {
                return Err(format!(
                    "the server closed after {:?}",
                    String::from_utf8_lossy(&head)
                ))
            }
            Ok(_) => head.push(byte[0]),
            Err(e) => return Err(format!("reading the response: {e}")),
        }
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// Fails unless `head` is a 101 to SPDY/3.1 agreeing on `protocol`.
pub fn check_upgrade(head: &str, protocol: &str) -> Result<(), String> {
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("101") {
        return Err(format!("the server answered {head:?}"));
    }
    let header = |name: &str| {
        head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    };
    if !header("Upgrade").is_some_and(|u| u.eq_ignore_ascii_case("SPDY/3.1")) {
        return Err(format!("no Upgrade: SPDY/3.1 in {head:?}"));
    }
    match header("X-Stream-Protocol-Version") {
        Some(agreed) if agreed == protocol => Ok(()),
        other => Err(format!(
            "the server agreed on the protocol {other:?}, not {protocol}"
        )),
    }
}

/// The reader thread: records every frame in `shared` until the end.
fn read_frames(stream: TcpStream, writer: &Mutex<TcpStream>, shared: &Shared) {
    let mut reader = BufReader::new(stream);
    loop {
        let frame = spdy_frame::read_frame(&mut reader);
        let mut state = shared.state.lock().expect("the state lock");
        match frame {
            Ok(Frame::Data {
                stream,
                flags,
                data,
            }) => {
                let entry = state.streams.entry(stream).or_default();
                entry.data.extend_from_slice(&data);
                entry.finished |= flags & spdy_frame::FLAG_FIN != 0;
            }
            Ok(Frame::Control {
                kind,
                flags,
                payload,
            }) => match kind {
                spdy_frame::SYN_REPLY | spdy_frame::RST_STREAM => {
                    if let Some(id) = Frame::control_stream(&payload) {
                        let entry = state.streams.entry(id).or_default();
                        if kind == spdy_frame::SYN_REPLY {
                            entry.replied = true;
                            entry.finished |= flags & spdy_frame::FLAG_FIN != 0;
                        } else {
                            let status = payload
                                .get(4..8)
                                .map(|s| u32::from_be_bytes(s.try_into().expect("4 bytes")));
                            entry.reset = Some(status.unwrap_or(0));
                        }
                    }
                }
                spdy_frame::PING => {
                    if let Ok(mut out) = writer.lock() {
                        let _ = out.write_all(&spdy_frame::ping(&payload));
                    }
                }
                spdy_frame::GOAWAY => state.gone_away = true,
                // SETTINGS, WINDOW_UPDATE, HEADERS: nothing to do.
                _ => {}
            },
            Err(e) => {
                if e.kind() != std::io::ErrorKind::UnexpectedEof {
                    state.error = Some(e.to_string());
                }
                state.ended = true;
                shared.changed.notify_all();
                return;
            }
        }
        shared.changed.notify_all();
    }
}

/// An exec or attach session over SPDY.
pub struct SpdyCommand {
    session: SpdySession,
    error: u32,
    stdin: Option<u32>,
    stdout: Option<u32>,
    stderr: Option<u32>,
    resize: Option<u32>,
}

impl SpdyCommand {
    /// Opens the session at `url` with the streams `stdio` asks for (the
    /// same flags as the CRI request), the error stream first as
    /// client-go does, and waits until the server accepted them all.
    pub fn open(netns: &Path, url: &str, stdio: Stdio) -> Result<SpdyCommand, String> {
        let mut session = SpdySession::upgrade(netns, url, super::V4_CHANNEL_PROTOCOL)?;
        let mut open = |wanted: bool, kind: &str| -> Result<Option<u32>, String> {
            match wanted {
                true => session.open_stream(&[("streamtype", kind)]).map(Some),
                false => Ok(None),
            }
        };
        let error = open(true, "error")?.expect("opened");
        let stdin = open(stdio.stdin, "stdin")?;
        let stdout = open(stdio.stdout, "stdout")?;
        let stderr = open(stdio.stderr && !stdio.tty, "stderr")?;
        let resize = open(stdio.tty, "resize")?;
        let ids: Vec<u32> = [Some(error), stdin, stdout, stderr, resize]
            .into_iter()
            .flatten()
            .collect();
        session.wait("the replies to our streams", Duration::from_secs(30), |s| {
            ids.iter()
                .all(|id| s.streams.get(id).is_some_and(|st| st.replied))
        })?;
        Ok(SpdyCommand {
            session,
            error,
            stdin,
            stdout,
            stderr,
            resize,
        })
    }

    fn output_stream(&self, stream: Output) -> Option<u32> {
        match stream {
            Output::Stdout => self.stdout,
            Output::Stderr => self.stderr,
        }
    }
}

impl RemoteCommand for SpdyCommand {
    fn write_stdin(&mut self, data: &[u8]) -> Result<(), String> {
        let id = self.stdin.ok_or("the session has no stdin")?;
        self.session.send(id, data)
    }

    fn close_stdin(&mut self) -> Result<(), String> {
        let id = self.stdin.ok_or("the session has no stdin")?;
        self.session.finish_stream(id)
    }

    fn resize(&mut self, width: u16, height: u16) -> Result<(), String> {
        let id = self.resize.ok_or("the session has no terminal")?;
        self.session.send(id, &resize_message(width, height))
    }

    fn wait_output(
        &mut self,
        stream: Output,
        needle: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let id = self
            .output_stream(stream)
            .ok_or_else(|| format!("the session has no {stream:?}"))?;
        self.session
            .wait(&format!("{needle:?} on {stream:?}"), timeout, |s| {
                s.streams
                    .get(&id)
                    .is_some_and(|st| contains(&st.data, needle))
            })
    }

    fn output(&self, stream: Output) -> Vec<u8> {
        self.output_stream(stream)
            .map(|id| self.session.stream(id).data)
            .unwrap_or_default()
    }

    fn finish(&mut self, timeout: Duration) -> Result<Finished, String> {
        self.session.wait("the end of the session", timeout, |s| {
            s.gone_away || s.ended
        })?;
        Ok(Finished {
            stdout: self.output(Output::Stdout),
            stderr: self.output(Output::Stderr),
            exit: exit_code_of_status(&self.session.stream(self.error).data),
        })
    }

    fn detach(&mut self) {
        self.session.close();
    }
}

/// One connection forwarded to `port` over SPDY, as kubectl makes it: an
/// `error` and a `data` stream with the port and a request id; sends
/// `request` on the data stream, reads until the server half-closes it,
/// then half-closes ours. The data and the error stream's text.
pub fn port_forward(
    netns: &Path,
    url: &str,
    port: u16,
    request: &[u8],
    timeout: Duration,
) -> Result<(Vec<u8>, String), String> {
    let mut session = SpdySession::upgrade(netns, url, super::PORT_FORWARD_PROTOCOL)?;
    let port_text = port.to_string();
    let headers = |kind: &'static str| {
        [
            ("streamtype", kind),
            ("port", &port_text),
            ("requestid", "0"),
        ]
    };
    let error = session.open_stream(&headers("error"))?;
    let data = session.open_stream(&headers("data"))?;
    session.wait("the replies to our streams", timeout, |s| {
        [error, data]
            .iter()
            .all(|id| s.streams.get(id).is_some_and(|st| st.replied))
    })?;
    session.send(data, request)?;
    session.wait("the end of the forwarded connection", timeout, |s| {
        s.ended || s.streams.get(&data).is_some_and(|st| st.finished)
    })?;
    let _ = session.finish_stream(data);
    let answer = session.stream(data).data;
    let error_text = String::from_utf8_lossy(&session.stream(error).data).into_owned();
    session.close();
    Ok((answer, error_text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_upgrade_accepts_a_101_to_spdy_with_the_protocol() {
        let head = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
                    Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n";

        assert_eq!(check_upgrade(head, "v4.channel.k8s.io"), Ok(()));
        assert!(check_upgrade(head, "portforward.k8s.io").is_err());
        assert!(check_upgrade("HTTP/1.1 403 Forbidden\r\n\r\n", "v4.channel.k8s.io").is_err());
    }
}

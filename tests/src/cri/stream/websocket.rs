//! The stream server's WebSocket side (k8s.io/apiserver's wsstream, as
//! containerd 1.6 vendors it): a channel protocol where every binary
//! message is `[channel, data...]` both ways.
//!
//! What the server does, from its source: it accepts the subprotocols
//! `""`, `channel.k8s.io`, `base64.channel.k8s.io` and their `v4.` forms
//! (exec, attach) or `""` and the `v4.` forms (port-forward); ignores
//! empty messages and ones for channels it does not have; for exec and
//! attach first sends an empty message on the lowest output channel
//! ("connected"); for port-forward first sends each channel's port (two
//! little-endian bytes); and ends the session by closing the socket,
//! after the status on channel 3. There is no message that closes one
//! channel: closing the socket is the only EOF a client can give.
//!
//! The socket is read with a short timeout on this one thread, so that
//! sending and waiting interleave without a reader thread (tungstenite
//! resumes a message cut by a timeout).

use std::io::ErrorKind;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

use super::{
    channel, connect, contains, exit_code_of_status, resize_message, Finished, Output,
    RemoteCommand, StreamUrl,
};

/// How long one read waits before the caller's deadline is checked.
const POLL: Duration = Duration::from_millis(100);

/// A channel-protocol WebSocket session with everything received so far.
pub struct ChannelSocket {
    ws: WebSocket<TcpStream>,
    received: Vec<Vec<u8>>,
    messages: usize,
    closed: bool,
}

impl ChannelSocket {
    /// Opens the session at `url` (containerd's `http://` URL) from the
    /// network namespace `netns`, asking for `protocol`.
    pub fn open(netns: &Path, url: &str, protocol: &str) -> Result<ChannelSocket, String> {
        let parsed = StreamUrl::parse(url)?;
        let stream = connect(netns, &parsed)?;
        let ws_url = format!("ws://{}{}", parsed.addr, parsed.path);
        let mut request = ws_url
            .as_str()
            .into_client_request()
            .map_err(|e| format!("{ws_url}: {e}"))?;
        if !protocol.is_empty() {
            let value = protocol
                .parse()
                .map_err(|e| format!("subprotocol {protocol:?}: {e}"))?;
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", value);
        }
        let (ws, response) = tungstenite::client(request, stream)
            .map_err(|e| format!("the WebSocket handshake with {ws_url}: {e}"))?;
        let negotiated = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if negotiated != protocol {
            return Err(format!(
                "{ws_url} negotiated the subprotocol {negotiated:?}, not {protocol:?}"
            ));
        }
        ws.get_ref()
            .set_read_timeout(Some(POLL))
            .map_err(|e| e.to_string())?;
        Ok(ChannelSocket {
            ws,
            received: Vec::new(),
            messages: 0,
            closed: false,
        })
    }

    /// Sends `data` on `channel`.
    pub fn send(&mut self, channel: u8, data: &[u8]) -> Result<(), String> {
        let mut frame = Vec::with_capacity(data.len() + 1);
        frame.push(channel);
        frame.extend_from_slice(data);
        self.ws
            .send(Message::binary(frame))
            .map_err(|e| format!("sending {} bytes on channel {channel}: {e}", data.len()))
    }

    /// What `channel` received so far.
    pub fn received(&self, channel: u8) -> &[u8] {
        self.received
            .get(usize::from(channel))
            .map_or(&[], Vec::as_slice)
    }

    /// True once the server closed the session.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Reads one message, or returns after [`POLL`] without one.
    fn pump(&mut self) -> Result<(), String> {
        if self.closed {
            return Ok(());
        }
        match self.ws.read() {
            Ok(Message::Binary(data)) => self.keep(&data),
            Ok(Message::Text(text)) => self.keep(text.as_bytes()),
            Ok(Message::Close(_)) => self.closed = true,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(
                tungstenite::Error::ConnectionClosed
                | tungstenite::Error::AlreadyClosed
                | tungstenite::Error::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                ),
            ) => self.closed = true,
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::ConnectionReset => {
                self.closed = true
            }
            Err(e) => return Err(format!("reading the WebSocket: {e}")),
        }
        Ok(())
    }

    fn keep(&mut self, message: &[u8]) {
        self.messages += 1;
        let Some((&channel, data)) = message.split_first() else {
            return;
        };
        let index = usize::from(channel);
        if self.received.len() <= index {
            self.received.resize(index + 1, Vec::new());
        }
        self.received[index].extend_from_slice(data);
    }

    /// Reads until `done` holds for what was received, or fails naming
    /// `what` after `timeout` (or when the server closes first).
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&ChannelSocket) -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if done(self) {
                return Ok(());
            }
            if self.closed {
                return Err(format!(
                    "the server closed the session before {what}; received {}",
                    self.summary()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no {what} within {timeout:?}; received {}",
                    self.summary()
                ));
            }
            self.pump()?;
        }
    }

    /// Reads until the server closes the session.
    pub fn wait_closed(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while !self.closed {
            if Instant::now() >= deadline {
                return Err(format!(
                    "the session did not end within {timeout:?}; received {}",
                    self.summary()
                ));
            }
            self.pump()?;
        }
        Ok(())
    }

    /// Closes the session from our side.
    pub fn close(&mut self) {
        if !self.closed {
            let _ = self.ws.close(None);
            let _ = self.ws.flush();
            self.closed = true;
        }
        let _ = self.ws.get_ref().shutdown(std::net::Shutdown::Both);
    }

    /// What each channel received, for messages.
    pub fn summary(&self) -> String {
        let channels: Vec<String> = self
            .received
            .iter()
            .enumerate()
            .filter(|(_, data)| !data.is_empty())
            .map(|(n, data)| format!("channel {n}: {:?}", String::from_utf8_lossy(data)))
            .collect();
        format!("{} messages; {}", self.messages, channels.join("; "))
    }
}

impl Drop for ChannelSocket {
    fn drop(&mut self) {
        self.close();
    }
}

/// An exec or attach session over WebSocket.
pub struct WebSocketCommand {
    socket: ChannelSocket,
}

impl WebSocketCommand {
    /// Opens the session at `url` with `v4.channel.k8s.io`.
    pub fn open(netns: &Path, url: &str) -> Result<WebSocketCommand, String> {
        let socket = ChannelSocket::open(netns, url, super::V4_CHANNEL_PROTOCOL)?;
        Ok(WebSocketCommand { socket })
    }

    /// The session's socket.
    pub fn socket(&mut self) -> &mut ChannelSocket {
        &mut self.socket
    }
}

fn channel_of(stream: Output) -> u8 {
    match stream {
        Output::Stdout => channel::STDOUT,
        Output::Stderr => channel::STDERR,
    }
}

impl RemoteCommand for WebSocketCommand {
    fn write_stdin(&mut self, data: &[u8]) -> Result<(), String> {
        self.socket.send(channel::STDIN, data)
    }

    fn close_stdin(&mut self) -> Result<(), String> {
        Err(
            "channel.k8s.io (v4) cannot close stdin alone: containerd 1.6's wsstream \
             has no v5 CLOSE message"
                .into(),
        )
    }

    fn resize(&mut self, width: u16, height: u16) -> Result<(), String> {
        self.socket
            .send(channel::RESIZE, &resize_message(width, height))
    }

    fn wait_output(
        &mut self,
        stream: Output,
        needle: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let ch = channel_of(stream);
        self.socket
            .wait_until(&format!("{needle:?} on {stream:?}"), timeout, |s| {
                contains(s.received(ch), needle)
            })
    }

    fn output(&self, stream: Output) -> Vec<u8> {
        self.socket.received(channel_of(stream)).to_vec()
    }

    fn finish(&mut self, timeout: Duration) -> Result<Finished, String> {
        self.socket.wait_closed(timeout)?;
        Ok(Finished {
            stdout: self.output(Output::Stdout),
            stderr: self.output(Output::Stderr),
            exit: exit_code_of_status(self.socket.received(channel::ERROR)),
        })
    }

    fn detach(&mut self) {
        self.socket.close();
    }
}

/// One connection forwarded to `port` over WebSocket: sends `request` on
/// the data channel, reads until the server closes; the data and the
/// error channel's text, each without its port prefix.
pub fn port_forward(
    netns: &Path,
    url: &str,
    port: u16,
    request: &[u8],
    timeout: Duration,
) -> Result<(Vec<u8>, String), String> {
    let mut socket = ChannelSocket::open(netns, url, super::V4_CHANNEL_PROTOCOL)?;
    socket.wait_until("the port prefixes", timeout, |s| {
        s.received(0).len() >= 2 && s.received(1).len() >= 2
    })?;
    for ch in [0, 1] {
        let prefix = &socket.received(ch)[..2];
        if prefix != port.to_le_bytes() {
            return Err(format!(
                "channel {ch} opened with {prefix:?}, not port {port} in little-endian"
            ));
        }
    }
    socket.send(0, request)?;
    socket.wait_closed(timeout)?;
    Ok((
        socket.received(0)[2..].to_vec(),
        String::from_utf8_lossy(&socket.received(1)[2..]).into_owned(),
    ))
}

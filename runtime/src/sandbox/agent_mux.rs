//! The monitor's side of the agent connection, shared by many threads:
//! requests from any thread get their own response (matched by id), while
//! one reader thread hands stream data, stream EOFs and process exits to an
//! [`Events`] sink in the order the guest sent them.
//!
//! Trust: frames come from the guest. The strict decoder bounds their
//! size; unknown ids and streams are ignored, never a panic.

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use husk_protocol::frame::write_frame;
use husk_protocol::{
    AgentError, FrameReader, GuestMessage, HostMessage, ProcessId, Request, Response, StreamId,
};

/// What the reader thread delivers.
pub trait Events: Send + Sync + 'static {
    /// Bytes of an output stream.
    fn data(&self, stream: StreamId, data: Vec<u8>);
    /// An output stream ended.
    fn eof(&self, stream: StreamId);
    /// The guest consumed `bytes` more of an input stream.
    fn credit(&self, stream: StreamId, bytes: u32);
    /// A process ended.
    fn exited(&self, process: ProcessId, code: i32);
    /// The connection ended (the guest is gone); `why` says how.
    fn disconnected(&self, why: String);
}

/// Errors of a multiplexed request.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    /// The guest refused or failed the request.
    #[error("{}", .0.message)]
    Agent(#[from] AgentError),
    /// No answer in time.
    #[error("the guest did not answer in {0:?}")]
    Timeout(Duration),
    /// The connection is gone.
    #[error("the connection to the guest is gone")]
    Gone,
    /// Writing failed.
    #[error("writing to the guest: {0}")]
    Write(String),
}

type Pending = Arc<Mutex<HashMap<u64, Sender<Result<Response, AgentError>>>>>;

/// The shared connection.
pub struct AgentMux {
    writer: Mutex<UnixStream>,
    pending: Pending,
    gone: Arc<AtomicBool>,
    next_id: AtomicU64,
}

impl AgentMux {
    /// Takes over a connection and starts its reader thread.
    pub fn start(
        mut reader: FrameReader<UnixStream>,
        writer: UnixStream,
        events: Arc<dyn Events>,
    ) -> std::io::Result<Arc<AgentMux>> {
        let pending: Pending = Default::default();
        let gone = Arc::new(AtomicBool::new(false));
        let mux = Arc::new(AgentMux {
            writer: Mutex::new(writer),
            pending: Arc::clone(&pending),
            gone: Arc::clone(&gone),
            next_id: AtomicU64::new(1),
        });
        std::thread::Builder::new()
            .name("agent-reader".into())
            .spawn(move || {
                let why = loop {
                    match reader.read_frame::<GuestMessage>() {
                        Ok(Some(message)) => dispatch(message, &pending, events.as_ref()),
                        Ok(None) => break "the guest closed the connection".to_string(),
                        Err(e) => break format!("agent connection: {e}"),
                    }
                };
                gone.store(true, Ordering::SeqCst);
                pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
                events.disconnected(why);
            })?;
        Ok(mux)
    }

    /// Sends `request` and waits up to `timeout` for its response.
    pub fn request(&self, request: Request, timeout: Duration) -> Result<Response, MuxError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        if self.gone.load(Ordering::SeqCst) {
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            return Err(MuxError::Gone);
        }
        if let Err(e) = self.send(&HostMessage::Request { id, request }) {
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            return Err(e);
        }
        match rx.recv_timeout(timeout) {
            Ok(result) => Ok(result?),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                self.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                Err(MuxError::Timeout(timeout))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(MuxError::Gone),
        }
    }

    /// Sends bytes of an input stream.
    pub fn stream_data(&self, stream: StreamId, data: &[u8]) -> Result<(), MuxError> {
        self.send(&HostMessage::StreamData {
            stream,
            data: data.into(),
        })
    }

    /// Ends an input stream.
    pub fn stream_eof(&self, stream: StreamId) -> Result<(), MuxError> {
        self.send(&HostMessage::StreamEof { stream })
    }

    /// Grants the guest `bytes` more of an output stream.
    pub fn stream_credit(&self, stream: StreamId, bytes: u32) -> Result<(), MuxError> {
        self.send(&HostMessage::StreamCredit { stream, bytes })
    }

    fn send(&self, message: &HostMessage) -> Result<(), MuxError> {
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        write_frame(&mut *writer, message).map_err(|e| MuxError::Write(e.to_string()))
    }

    /// Closes the connection (the reader thread then ends).
    pub fn close(&self) {
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writer.shutdown(std::net::Shutdown::Both);
    }
}

fn dispatch(message: GuestMessage, pending: &Pending, events: &dyn Events) {
    match message {
        GuestMessage::Response { id, result } => {
            let waiter = pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            if let Some(tx) = waiter {
                let _ = tx.send(result);
            }
        }
        GuestMessage::StreamData { stream, data } => events.data(stream, data.0),
        GuestMessage::StreamEof { stream } => events.eof(stream),
        GuestMessage::StreamCredit { stream, bytes } => events.credit(stream, bytes),
        GuestMessage::ProcessExited { process, exit_code } => events.exited(process, exit_code),
        GuestMessage::Hello(_) | GuestMessage::ProtocolError { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_protocol::stdio_stream;
    use std::sync::mpsc::Receiver;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);
    impl Events for Recorder {
        fn data(&self, stream: StreamId, data: Vec<u8>) {
            self.0
                .lock()
                .unwrap()
                .push(format!("data {stream} {}", String::from_utf8_lossy(&data)));
        }
        fn eof(&self, stream: StreamId) {
            self.0.lock().unwrap().push(format!("eof {stream}"));
        }
        fn credit(&self, stream: StreamId, bytes: u32) {
            self.0
                .lock()
                .unwrap()
                .push(format!("credit {stream} {bytes}"));
        }
        fn exited(&self, process: ProcessId, code: i32) {
            self.0
                .lock()
                .unwrap()
                .push(format!("exit {process} {code}"));
        }
        fn disconnected(&self, _why: String) {
            self.0.lock().unwrap().push("gone".into());
        }
    }

    /// A fake guest on the other end of a socketpair.
    fn pair() -> (
        Arc<AgentMux>,
        Arc<Recorder>,
        UnixStream,
        Receiver<HostMessage>,
    ) {
        let (host, guest) = UnixStream::pair().unwrap();
        let recorder = Arc::new(Recorder::default());
        let mux = AgentMux::start(
            FrameReader::strict(host.try_clone().unwrap()),
            host,
            recorder.clone(),
        )
        .unwrap();
        let (tx, rx) = channel();
        let mut reader = FrameReader::strict(guest.try_clone().unwrap());
        std::thread::spawn(move || {
            while let Ok(Some(m)) = reader.read_frame::<HostMessage>() {
                if tx.send(m).is_err() {
                    break;
                }
            }
        });
        (mux, recorder, guest, rx)
    }

    #[test]
    fn responses_reach_their_request_and_events_keep_order() {
        let (mux, recorder, mut guest, requests) = pair();
        let asker = {
            let mux = Arc::clone(&mux);
            std::thread::spawn(move || mux.request(Request::Ping, Duration::from_secs(5)))
        };
        let HostMessage::Request { id, .. } = requests.recv().unwrap() else {
            panic!("expected a request")
        };
        let out = stdio_stream(0, 1);
        for m in [
            GuestMessage::StreamData {
                stream: out,
                data: b"a".to_vec().into(),
            },
            GuestMessage::StreamEof { stream: out },
            GuestMessage::ProcessExited {
                process: 0,
                exit_code: 3,
            },
            GuestMessage::Response {
                id,
                result: Ok(Response::Done),
            },
        ] {
            write_frame(&mut guest, &m).unwrap();
        }

        assert_eq!(asker.join().unwrap().unwrap(), Response::Done);
        guest.shutdown(std::net::Shutdown::Both).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            *recorder.0.lock().unwrap(),
            ["data 1 a", "eof 1", "exit 0 3", "gone"]
        );
    }

    #[test]
    fn a_request_fails_when_the_guest_goes_away() {
        let (mux, _recorder, guest, _requests) = pair();
        guest.shutdown(std::net::Shutdown::Both).unwrap();
        std::thread::sleep(Duration::from_millis(50));

        let err = mux
            .request(Request::Ping, Duration::from_secs(5))
            .unwrap_err();

        assert!(matches!(err, MuxError::Gone | MuxError::Write(_)), "{err}");
    }
}

//! What the agent connection delivers, routed ([`Events`]): output streams
//! to their sinks, each drained by a writer thread of its own that grants
//! the guest credit as it writes ([`husk_protocol::flow`]); input credits to
//! the windows of the input relays; process exits to whoever waits for
//! them, once that process's output is written out; the end of the
//! connection to the sandbox.
//!
//! A sink whose reader stops reading stalls its own stream: the guest
//! sends no more than a window of it, and the other streams, the exits and
//! the requests keep flowing (the reader thread never blocks on a sink).
//!
//! Trust: data and ids come from the guest. Unknown streams and processes
//! are dropped; a stream that sends more than its window is cut off at the
//! window, so no sink queue holds more than [`STREAM_WINDOW`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use husk_protocol::flow::Windows;
use husk_protocol::{stream_owner, ProcessId, StreamId, STREAM_WINDOW};

use crate::sandbox::agent_mux::{AgentMux, Events};
use crate::sandbox::stdio::OutputSink;

/// What happens when a process ended (after its output was written).
pub type OnExit = Box<dyn FnOnce(i32) + Send>;
/// What happens when the connection ends.
pub type OnDisconnect = Box<dyn FnOnce(String) + Send>;

/// One output stream's writer thread.
struct Output {
    chunks: Sender<Option<Vec<u8>>>,
    /// Bytes queued and not yet written.
    queued: Arc<AtomicUsize>,
}

#[derive(Default)]
struct Processes {
    /// Output streams of each process still being written.
    open_outputs: HashMap<ProcessId, usize>,
    /// Who waits for each process's exit.
    waiters: HashMap<ProcessId, OnExit>,
    /// Exits that arrived while output was still being written.
    held: HashMap<ProcessId, i32>,
}

/// Routes the events of one sandbox's agent connection.
pub struct Router {
    mux: OnceLock<Weak<AgentMux>>,
    outputs: Mutex<HashMap<StreamId, Output>>,
    processes: Arc<Mutex<Processes>>,
    /// The send windows of the input streams (the guest grants them).
    pub input_windows: Arc<Windows>,
    on_disconnect: Mutex<Option<OnDisconnect>>,
}

impl Router {
    /// A router calling `on_disconnect` when the guest is gone.
    pub fn new(on_disconnect: OnDisconnect) -> Arc<Router> {
        Arc::new(Router {
            mux: OnceLock::new(),
            outputs: Mutex::default(),
            processes: Arc::default(),
            input_windows: Arc::default(),
            on_disconnect: Mutex::new(Some(on_disconnect)),
        })
    }

    /// The connection credits go back on (set once it exists).
    pub fn attach(&self, mux: &Arc<AgentMux>) {
        let _ = self.mux.set(Arc::downgrade(mux));
    }

    /// Sends stream `stream` to `sink` from a writer thread of its own.
    pub fn add_output(&self, stream: StreamId, sink: OutputSink) -> std::io::Result<()> {
        let (process, _) = stream_owner(stream);
        let (tx, rx) = channel::<Option<Vec<u8>>>();
        let queued = Arc::new(AtomicUsize::new(0));
        let written = Arc::clone(&queued);
        let mux = self.mux.get().cloned();
        let processes = Arc::clone(&self.processes);
        *lock(&self.processes)
            .open_outputs
            .entry(process)
            .or_default() += 1;
        let spawned = std::thread::Builder::new()
            .name(format!("out-{stream}"))
            .spawn(move || {
                let mut sink = sink;
                while let Ok(Some(chunk)) = rx.recv() {
                    sink.write(&chunk);
                    written.fetch_sub(chunk.len(), Ordering::AcqRel);
                    if let Some(mux) = mux.as_ref().and_then(Weak::upgrade) {
                        let _ = mux.stream_credit(stream, chunk.len() as u32);
                    }
                }
                drop(sink);
                output_done(&processes, process);
            });
        if let Err(e) = spawned {
            output_done(&self.processes, process);
            return Err(e);
        }
        lock(&self.outputs).insert(stream, Output { chunks: tx, queued });
        Ok(())
    }

    /// Calls `on_exit` with the exit code of `process` once it ended and
    /// its output is written out.
    pub fn wait_exit(&self, process: ProcessId, on_exit: OnExit) {
        lock(&self.processes).waiters.insert(process, on_exit);
    }

    /// Forgets `process`: its outputs end, nobody waits for it.
    pub fn forget(&self, process: ProcessId) {
        let mut outputs = lock(&self.outputs);
        for fd in [1, 2] {
            if let Some(output) = outputs.remove(&husk_protocol::stdio_stream(process, fd)) {
                let _ = output.chunks.send(None);
            }
        }
        drop(outputs);
        let mut processes = lock(&self.processes);
        processes.waiters.remove(&process);
        processes.held.remove(&process);
    }

    /// Ends every output (the sandbox is going away).
    pub fn close_outputs(&self) {
        for (_, output) in lock(&self.outputs).drain() {
            let _ = output.chunks.send(None);
        }
    }
}

/// One output stream of `process` is written out: a held exit goes out
/// with the last.
fn output_done(processes: &Mutex<Processes>, process: ProcessId) {
    let mut state = lock(processes);
    let open = state.open_outputs.entry(process).or_default();
    *open = open.saturating_sub(1);
    if *open > 0 {
        return;
    }
    state.open_outputs.remove(&process);
    let Some(code) = state.held.remove(&process) else {
        return;
    };
    let waiter = state.waiters.remove(&process);
    drop(state);
    if let Some(on_exit) = waiter {
        on_exit(code);
    }
}

impl Events for Router {
    fn data(&self, stream: StreamId, data: Vec<u8>) {
        let outputs = lock(&self.outputs);
        let Some(output) = outputs.get(&stream) else {
            return;
        };
        let len = data.len();
        let queued = output.queued.fetch_add(len, Ordering::AcqRel) + len;
        if queued > STREAM_WINDOW as usize {
            // The guest sent past its window: drop the excess.
            output.queued.fetch_sub(len, Ordering::AcqRel);
            return;
        }
        let _ = output.chunks.send(Some(data));
    }

    fn eof(&self, stream: StreamId) {
        if let Some(output) = lock(&self.outputs).remove(&stream) {
            let _ = output.chunks.send(None);
        }
    }

    fn credit(&self, stream: StreamId, bytes: u32) {
        self.input_windows.grant(stream, bytes);
    }

    fn exited(&self, process: ProcessId, code: i32) {
        let mut state = lock(&self.processes);
        if state.open_outputs.get(&process).copied().unwrap_or(0) > 0 {
            state.held.insert(process, code);
            return;
        }
        let waiter = state.waiters.remove(&process);
        drop(state);
        if let Some(on_exit) = waiter {
            on_exit(code);
        }
    }

    fn disconnected(&self, why: String) {
        self.input_windows.close_all();
        self.close_outputs();
        let waiters: Vec<OnExit> = lock(&self.processes)
            .waiters
            .drain()
            .map(|(_, w)| w)
            .collect();
        drop(waiters);
        if let Some(on_disconnect) = lock(&self.on_disconnect).take() {
            on_disconnect(why);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::OwnedFd;
    use std::time::Duration;

    fn pipe_sink() -> (OutputSink, std::fs::File) {
        let (r, w) = std::io::pipe().unwrap();
        (
            OutputSink::new(OwnedFd::from(w)),
            std::fs::File::from(OwnedFd::from(r)),
        )
    }

    #[test]
    fn an_exit_waits_until_the_process_output_is_written() {
        let router = Router::new(Box::new(|_| {}));
        let (sink, mut reader) = pipe_sink();
        router
            .add_output(husk_protocol::stdio_stream(3, 1), sink)
            .unwrap();
        let (tx, rx) = channel();
        router.wait_exit(3, Box::new(move |code| tx.send(code).unwrap()));

        router.data(husk_protocol::stdio_stream(3, 1), b"last words".to_vec());
        router.exited(3, 7);
        assert!(
            rx.recv_timeout(Duration::from_millis(100)).is_err(),
            "held until EOF"
        );
        router.eof(husk_protocol::stdio_stream(3, 1));

        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 7);
        let mut text = String::new();
        reader.read_to_string(&mut text).unwrap();
        assert_eq!(text, "last words");
    }

    #[test]
    fn a_stream_past_its_window_is_cut_off_there() {
        let router = Router::new(Box::new(|_| {}));
        // A sink nobody reads: the first writes fill the pipe and block.
        let (sink, reader) = pipe_sink();
        router
            .add_output(husk_protocol::stdio_stream(1, 1), sink)
            .unwrap();

        for _ in 0..64 {
            router.data(husk_protocol::stdio_stream(1, 1), vec![0; 64 << 10]);
        }

        let queued = lock(&router.outputs)[&husk_protocol::stdio_stream(1, 1)]
            .queued
            .load(Ordering::Acquire);
        assert!(queued <= STREAM_WINDOW as usize, "{queued} bytes queued");
        drop(reader);
        router.close_outputs();
    }

    #[test]
    fn an_exit_without_output_is_reported_at_once_and_unknown_ones_dropped() {
        let router = Router::new(Box::new(|_| {}));
        let (tx, rx) = channel();
        router.wait_exit(5, Box::new(move |code| tx.send(code).unwrap()));

        router.exited(9, 1);
        router.exited(5, 0);

        assert_eq!(rx.recv_timeout(Duration::from_secs(1)).unwrap(), 0);
    }
}

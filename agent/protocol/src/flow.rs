//! Flow control of the stdio streams, the same on both sides: each stream
//! has a send [`Window`] of [`crate::STREAM_WINDOW`] bytes; a sender takes
//! from it before it sends, and the receiver grants bytes back (a
//! `StreamCredit` message) once its reader consumed them. So a reader that
//! stops reading stalls its own stream's sender and nothing else, and no
//! side holds more than a window of any stream.
//!
//! Trust: grants come from the peer; a window never grows past what a
//! `u32` holds, and a closed one never blocks.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

use crate::StreamId;

/// The bytes one stream may still send.
#[derive(Debug)]
pub struct Window {
    state: Mutex<WindowState>,
    changed: Condvar,
}

#[derive(Debug)]
struct WindowState {
    available: u32,
    closed: bool,
}

impl Window {
    /// A window of `bytes`.
    pub fn new(bytes: u32) -> Window {
        Window {
            state: Mutex::new(WindowState {
                available: bytes,
                closed: false,
            }),
            changed: Condvar::new(),
        }
    }

    /// Waits until the window has room, then takes up to `max` bytes of it;
    /// `None` once it is closed.
    pub fn take(&self, max: usize) -> Option<usize> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if state.closed {
                return None;
            }
            if state.available > 0 {
                let n = (state.available as usize).min(max);
                state.available -= n as u32;
                return Some(n);
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Gives back or grants `bytes`.
    pub fn grant(&self, bytes: u32) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.available = state.available.saturating_add(bytes);
        self.changed.notify_all();
    }

    /// Ends every wait, now and later.
    pub fn close(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.closed = true;
        self.changed.notify_all();
    }

    /// The bytes available now (tests, diagnostics).
    pub fn available(&self) -> u32 {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .available
    }
}

/// The send windows of the streams a side sends, by stream.
#[derive(Debug, Default)]
pub struct Windows(Mutex<HashMap<StreamId, Arc<Window>>>);

impl Windows {
    /// A fresh full window for `stream` (replacing an old one).
    pub fn open(&self, stream: StreamId) -> Arc<Window> {
        let window = Arc::new(Window::new(crate::STREAM_WINDOW));
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = map.insert(stream, Arc::clone(&window)) {
            old.close();
        }
        window
    }

    /// The peer granted `bytes` of `stream`; unknown streams are ignored.
    pub fn grant(&self, stream: StreamId, bytes: u32) {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(window) = map.get(&stream) {
            window.grant(bytes);
        }
    }

    /// Forgets `stream`, ending its sender's waits.
    pub fn close(&self, stream: StreamId) {
        let removed = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&stream);
        if let Some(window) = removed {
            window.close();
        }
    }

    /// Ends every window (the connection is gone).
    pub fn close_all(&self) {
        let windows: Vec<_> = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, w)| w)
            .collect();
        for window in windows {
            window.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn take_is_bounded_by_the_window_and_grants_refill_it() {
        let window = Window::new(10);

        assert_eq!(window.take(4), Some(4));
        assert_eq!(window.take(100), Some(6));
        window.grant(3);
        assert_eq!(window.take(100), Some(3));
        assert_eq!(window.available(), 0);
    }

    #[test]
    fn an_empty_window_blocks_until_a_grant_or_close() {
        let window = Arc::new(Window::new(0));
        let waiter = {
            let window = Arc::clone(&window);
            std::thread::spawn(move || window.take(5))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "it waits for credit");

        window.grant(2);

        assert_eq!(waiter.join().unwrap(), Some(2));
        let closed = {
            let window = Arc::clone(&window);
            std::thread::spawn(move || window.take(5))
        };
        window.close();
        assert_eq!(closed.join().unwrap(), None);
    }

    #[test]
    fn grants_saturate_and_unknown_streams_are_ignored() {
        let windows = Windows::default();
        let window = windows.open(4);

        windows.grant(4, u32::MAX);
        windows.grant(99, 5);

        assert_eq!(window.available(), u32::MAX);
        windows.close(4);
        assert_eq!(window.take(1), None);
    }
}

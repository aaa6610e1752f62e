//! A device's worker thread: one epoll loop over the device's file
//! descriptors (queue kicks, host sockets) plus a stop eventfd.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// The token of the stop eventfd.
const STOP_TOKEN: u64 = u64::MAX;

/// What a worker runs.
pub trait EventHandler: Send + 'static {
    /// Registers the handler's initial descriptors.
    fn init(&mut self, epoll: &Poller) -> io::Result<()>;
    /// Handles readiness of the descriptor registered with `token`.
    fn handle(&mut self, epoll: &Poller, token: u64, events: EventSet);
}

/// The epoll instance a handler registers its descriptors with.
pub struct Poller(Epoll);

impl Poller {
    /// A new epoll instance.
    pub fn new() -> io::Result<Self> {
        Ok(Poller(Epoll::new()?))
    }

    /// Watches `fd` for `events`, reported with `token`.
    pub fn add(&self, fd: RawFd, token: u64, events: EventSet) -> io::Result<()> {
        self.0
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
    }

    /// Changes what `fd` is watched for.
    pub fn modify(&self, fd: RawFd, token: u64, events: EventSet) -> io::Result<()> {
        self.0
            .ctl(ControlOperation::Modify, fd, EpollEvent::new(events, token))
    }

    /// Stops watching `fd`.
    pub fn remove(&self, fd: RawFd) -> io::Result<()> {
        self.0
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }

    /// Waits for events, up to `timeout_ms` (-1: forever).
    pub fn wait(&self, timeout_ms: i32, events: &mut [EpollEvent]) -> io::Result<usize> {
        loop {
            match self.0.wait(timeout_ms, events) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }
}

/// A running worker thread; stopping it gives the handler back.
pub struct Worker<H> {
    stop: EventFd,
    thread: Option<JoinHandle<H>>,
}

impl<H: EventHandler> Worker<H> {
    /// Starts a thread named `name` running `handler` until [`Self::stop`].
    pub fn spawn(name: &str, mut handler: H) -> io::Result<Worker<H>> {
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let poller = Poller::new()?;
        poller.add(stop.as_raw_fd(), STOP_TOKEN, EventSet::IN)?;
        handler.init(&poller)?;
        let thread = std::thread::Builder::new()
            .name(name.into())
            .stack_size(256 << 10)
            .spawn(move || run(poller, handler))?;
        Ok(Worker {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread, waits for it and returns its handler (`None` if it
    /// was stopped before or panicked).
    pub fn stop(&mut self) -> Option<H> {
        let thread = self.thread.take()?;
        let _ = self.stop.write(1);
        thread.join().ok()
    }
}

impl<H> Drop for Worker<H> {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.stop.write(1);
            let _ = thread.join();
        }
    }
}

fn run<H: EventHandler>(poller: Poller, mut handler: H) -> H {
    let mut events = vec![EpollEvent::default(); 64];
    loop {
        let ready = match poller.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("husk-vmm: device worker: epoll_wait: {e}");
                return handler;
            }
        };
        for event in &events[..ready] {
            if event.data() == STOP_TOKEN {
                return handler;
            }
            handler.handle(&poller, event.data(), event.event_set());
        }
    }
}

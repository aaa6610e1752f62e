//! A device's worker thread: one epoll loop over the device's file
//! descriptors (queue kicks, host sockets) plus a stop eventfd, on a thread
//! that lives as long as the device and runs its handler while the device
//! is active.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{channel, Receiver, Sender};
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

/// What the worker thread is asked to do.
enum Job<H> {
    /// Run this handler until stopped.
    Run(H),
    /// End the thread.
    Quit,
}

/// What the worker thread answers.
enum Done<H> {
    /// The handler's descriptors are registered (or could not be); it runs.
    Started(io::Result<()>),
    /// The handler stopped and comes back.
    Stopped(H),
}

/// A device's worker thread. It starts with the device, while the monitor
/// is still single-minded about building the VM, installs its seccomp
/// filter ([`crate::jail`]) and parks; activating the device hands it a
/// handler, resetting the device takes the handler back. So a vCPU thread
/// (which activates devices) never starts a thread, and the worker's
/// filter is its own, not one stacked on a vCPU's.
pub struct Worker<H> {
    jobs: Sender<Job<H>>,
    done: Receiver<Done<H>>,
    stop: EventFd,
    running: bool,
    thread: Option<JoinHandle<()>>,
}

impl<H: EventHandler> Worker<H> {
    /// Starts the parked thread named `name`.
    pub fn new(name: &str) -> io::Result<Worker<H>> {
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let thread_stop = stop.try_clone()?;
        let (jobs, job_queue) = channel();
        let (done_tx, done) = channel();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .stack_size(256 << 10)
            .spawn(move || {
                crate::jail::enter_thread(crate::jail::ThreadKind::Worker);
                park(&job_queue, &done_tx, &thread_stop)
            })?;
        Ok(Worker {
            jobs,
            done,
            stop,
            running: false,
            thread: Some(thread),
        })
    }

    /// Runs `handler` on the thread until [`Self::stop`]. A handler whose
    /// descriptors cannot be registered is dropped.
    pub fn start(&mut self, handler: H) -> io::Result<()> {
        let gone = || io::Error::other("the worker thread is gone");
        if self.running {
            return Err(io::Error::other("the worker already runs a handler"));
        }
        self.jobs.send(Job::Run(handler)).map_err(|_| gone())?;
        match self.done.recv() {
            Ok(Done::Started(result)) => {
                result?;
                self.running = true;
                Ok(())
            }
            Ok(Done::Stopped(_)) | Err(_) => Err(gone()),
        }
    }

    /// Stops the handler and returns it (`None` if none ran, or the thread
    /// is gone).
    pub fn stop(&mut self) -> Option<H> {
        if !std::mem::take(&mut self.running) {
            return None;
        }
        let _ = self.stop.write(1);
        match self.done.recv() {
            Ok(Done::Stopped(handler)) => Some(handler),
            _ => None,
        }
    }
}

impl<H> Drop for Worker<H> {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        let _ = self.jobs.send(Job::Quit);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The thread: one handler at a time, until told to quit.
fn park<H: EventHandler>(jobs: &Receiver<Job<H>>, done: &Sender<Done<H>>, stop: &EventFd) {
    while let Ok(Job::Run(mut handler)) = jobs.recv() {
        // A stop left over from a handler that ended by itself.
        let _ = stop.read();
        let poller = Poller::new().and_then(|poller| {
            poller.add(stop.as_raw_fd(), STOP_TOKEN, EventSet::IN)?;
            handler.init(&poller)?;
            Ok(poller)
        });
        let poller = match poller {
            Ok(poller) => poller,
            Err(e) => {
                let _ = done.send(Done::Started(Err(e)));
                continue;
            }
        };
        if done.send(Done::Started(Ok(()))).is_err() {
            return;
        }
        let handler = run(poller, handler);
        if done.send(Done::Stopped(handler)).is_err() {
            return;
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

//! vCPU threads and their run state.
//!
//! ```text
//!            pause()               resume()
//!  Running ───────────▶ Paused ───────────▶ Running
//!     │                   │
//!     └──── stop() ───────┴──────▶ Stopped (threads joined)
//! ```
//!
//! Each vCPU runs `KVM_RUN` on a thread of its own and handles port and
//! MMIO exits on the buses. To pause or stop, the state changes first, then
//! every thread is kicked with a signal that interrupts `KVM_RUN`; a kick
//! that lands outside `KVM_RUN` is repeated until every thread has parked
//! (or ended), so no state change is lost.

use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::devices::{lock, Bus};

/// How long `pause` waits for every vCPU to park.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);
/// The signal that kicks a vCPU out of `KVM_RUN`.
fn kick_signal() -> i32 {
    SIGRTMIN()
}

/// The run state of the vCPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// The guest runs.
    Running,
    /// Every vCPU is parked outside `KVM_RUN`.
    Paused,
    /// The vCPU threads are gone.
    Stopped,
}

impl RunState {
    /// Whether `pause` is allowed.
    pub fn can_pause(self) -> bool {
        self == RunState::Running
    }

    /// Whether `resume` is allowed.
    pub fn can_resume(self) -> bool {
        self == RunState::Paused
    }
}

/// How the guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest rebooted (triple fault, i8042 reset): how our guests end.
    Reset,
    /// The guest powered off or halted for good.
    PowerOff,
    /// The host stopped the VM.
    Stopped,
    /// The vCPU hit something the monitor cannot continue from.
    Crashed(String),
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmExit::Reset => write!(f, "the guest rebooted"),
            VmExit::PowerOff => write!(f, "the guest powered off"),
            VmExit::Stopped => write!(f, "stopped by the host"),
            VmExit::Crashed(why) => write!(f, "the VM crashed: {why}"),
        }
    }
}

/// Where the first guest exit is reported: the first report wins, and the
/// eventfd wakes whoever waits for the end.
pub struct ExitSignal {
    event: EventFd,
    reason: Mutex<Option<VmExit>>,
}

impl ExitSignal {
    /// A signal with no exit yet.
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitSignal {
            event: EventFd::new(libc::EFD_NONBLOCK)?,
            reason: Mutex::new(None),
        })
    }

    /// Records `exit` unless one was recorded before, and wakes the waiter.
    pub fn report(&self, exit: VmExit) {
        let mut reason = lock(&self.reason);
        if reason.is_none() {
            *reason = Some(exit);
            let _ = self.event.write(1);
        }
    }

    /// The recorded exit.
    pub fn reason(&self) -> Option<VmExit> {
        lock(&self.reason).clone()
    }

    /// The eventfd signalled on the first report.
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

/// Errors driving the vCPUs.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// The request does not fit the current state.
    #[error("cannot {action} a VM that is {state:?}")]
    WrongState {
        /// What was asked.
        action: &'static str,
        /// The state it was in.
        state: RunState,
    },
    /// A vCPU did not park in time.
    #[error("{parked} of {total} vCPUs parked within {PAUSE_TIMEOUT:?}")]
    PauseTimeout {
        /// Parked vCPUs.
        parked: usize,
        /// All vCPUs.
        total: usize,
    },
    /// Starting a thread or the kick signal failed.
    #[error("starting vCPU threads: {0}")]
    Start(#[source] std::io::Error),
}

struct Shared {
    state: RunState,
    /// Threads parked in `Paused` or ended.
    parked: usize,
}

struct Control {
    shared: Mutex<Shared>,
    changed: Condvar,
}

/// The guest's vCPUs, each on its own thread.
pub struct VcpuSet {
    control: Arc<Control>,
    threads: Vec<JoinHandle<()>>,
    first_entry: Arc<OnceLock<Instant>>,
}

/// What a vCPU thread needs besides its fd.
#[derive(Clone)]
pub struct ExitHandlers {
    /// Port I/O devices.
    pub pio: Bus,
    /// MMIO devices.
    pub mmio: Bus,
    /// Where the end of the guest is reported.
    pub exit: Arc<ExitSignal>,
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

impl VcpuSet {
    /// Starts one thread per vCPU, running.
    pub fn start(vcpus: Vec<VcpuFd>, handlers: ExitHandlers) -> Result<VcpuSet, VcpuError> {
        static KICK_HANDLER: OnceLock<Result<(), i32>> = OnceLock::new();
        KICK_HANDLER
            .get_or_init(|| register_signal_handler(kick_signal(), on_kick).map_err(|e| e.errno()))
            .map_err(|errno| VcpuError::Start(std::io::Error::from_raw_os_error(errno)))?;
        let control = Arc::new(Control {
            shared: Mutex::new(Shared {
                state: RunState::Running,
                parked: 0,
            }),
            changed: Condvar::new(),
        });
        let first_entry = Arc::new(OnceLock::new());
        let mut set = VcpuSet {
            control: control.clone(),
            threads: Vec::new(),
            first_entry: first_entry.clone(),
        };
        for (index, vcpu) in vcpus.into_iter().enumerate() {
            let (control, handlers, first_entry) =
                (control.clone(), handlers.clone(), first_entry.clone());
            let thread = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .stack_size(256 << 10)
                .spawn(move || {
                    crate::jail::enter_thread(crate::jail::ThreadKind::Vcpu);
                    run_vcpu(vcpu, &control, &handlers, &first_entry)
                })
                .map_err(VcpuError::Start)?;
            set.threads.push(thread);
        }
        Ok(set)
    }

    /// The current state.
    pub fn state(&self) -> RunState {
        lock(&self.control.shared).state
    }

    /// When a vCPU first entered the guest.
    pub fn first_entry(&self) -> Option<Instant> {
        self.first_entry.get().copied()
    }

    fn kick_all(&self) {
        use std::os::unix::thread::JoinHandleExt;
        for thread in &self.threads {
            // SAFETY: the thread is joinable (not joined yet), so its
            // pthread_t is valid; the signal has a no-op handler.
            unsafe { libc::pthread_kill(thread.as_pthread_t(), kick_signal()) };
        }
    }

    /// Parks every vCPU outside `KVM_RUN`.
    pub fn pause(&self) -> Result<(), VcpuError> {
        let state = self.state();
        if !state.can_pause() {
            return Err(VcpuError::WrongState {
                action: "pause",
                state,
            });
        }
        self.transition(RunState::Paused)
    }

    fn transition(&self, to: RunState) -> Result<(), VcpuError> {
        let total = self.threads.len();
        let deadline = Instant::now() + PAUSE_TIMEOUT;
        lock(&self.control.shared).state = to;
        self.control.changed.notify_all();
        loop {
            self.kick_all();
            let shared = lock(&self.control.shared);
            if shared.parked >= total {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(VcpuError::PauseTimeout {
                    parked: shared.parked,
                    total,
                });
            }
            let _ = self
                .control
                .changed
                .wait_timeout(shared, Duration::from_millis(1));
        }
    }

    /// Lets paused vCPUs run again.
    pub fn resume(&self) -> Result<(), VcpuError> {
        let mut shared = lock(&self.control.shared);
        if !shared.state.can_resume() {
            return Err(VcpuError::WrongState {
                action: "resume",
                state: shared.state,
            });
        }
        shared.state = RunState::Running;
        drop(shared);
        self.control.changed.notify_all();
        Ok(())
    }

    /// Stops and joins every vCPU thread. Idempotent.
    pub fn stop(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        let _ = self.transition(RunState::Stopped);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for VcpuSet {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the loop does after one exit.
enum Next {
    Continue,
    End(VmExit),
}

fn run_vcpu(
    mut vcpu: VcpuFd,
    control: &Control,
    handlers: &ExitHandlers,
    first_entry: &OnceLock<Instant>,
) {
    loop {
        {
            let mut shared = lock(&control.shared);
            if shared.state == RunState::Paused {
                shared.parked += 1;
                control.changed.notify_all();
                while shared.state == RunState::Paused {
                    shared = control
                        .changed
                        .wait(shared)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                shared.parked -= 1;
            }
            if shared.state == RunState::Stopped {
                shared.parked += 1;
                control.changed.notify_all();
                return;
            }
        }
        first_entry.get_or_init(Instant::now);
        if let Next::End(exit) = handle_exit(&mut vcpu, handlers) {
            handlers.exit.report(exit);
            // Park as "ended" until the host stops the VM.
            let mut shared = lock(&control.shared);
            shared.parked += 1;
            control.changed.notify_all();
            while shared.state != RunState::Stopped {
                shared = control
                    .changed
                    .wait(shared)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            return;
        }
    }
}

const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;

fn handle_exit(vcpu: &mut VcpuFd, handlers: &ExitHandlers) -> Next {
    match vcpu.run() {
        Ok(VcpuExit::IoIn(port, data)) => {
            if !handlers.pio.read(u64::from(port), data) {
                data.fill(0xff);
            }
        }
        Ok(VcpuExit::IoOut(port, data)) => {
            handlers.pio.write(u64::from(port), data);
        }
        Ok(VcpuExit::MmioRead(addr, data)) => {
            if !handlers.mmio.read(addr, data) {
                data.fill(0);
            }
        }
        Ok(VcpuExit::MmioWrite(addr, data)) => {
            handlers.mmio.write(addr, data);
        }
        Ok(VcpuExit::Shutdown) => return Next::End(VmExit::Reset),
        Ok(VcpuExit::Hlt) => return Next::End(VmExit::PowerOff),
        Ok(VcpuExit::SystemEvent(kind, _)) => {
            return Next::End(match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => VmExit::PowerOff,
                KVM_SYSTEM_EVENT_RESET => VmExit::Reset,
                other => VmExit::Crashed(format!("system event {other}")),
            })
        }
        Ok(VcpuExit::FailEntry(reason, cpu)) => {
            return Next::End(VmExit::Crashed(format!(
                "VM entry failed on cpu {cpu}: hardware reason {reason:#x}"
            )))
        }
        Ok(VcpuExit::InternalError) => {
            return Next::End(VmExit::Crashed("KVM internal error".into()))
        }
        Ok(VcpuExit::Intr) => {}
        Ok(other) => return Next::End(VmExit::Crashed(format!("unexpected vCPU exit {other:?}"))),
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
            vcpu.set_kvm_immediate_exit(0);
        }
        Err(e) => return Next::End(VmExit::Crashed(format!("KVM_RUN: {e}"))),
    }
    Next::Continue
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_running_vms_pause_and_only_paused_ones_resume() {
        assert!(RunState::Running.can_pause());
        assert!(!RunState::Paused.can_pause());
        assert!(RunState::Paused.can_resume());
        assert!(!RunState::Stopped.can_resume());
        assert!(!RunState::Stopped.can_pause());
    }

    #[test]
    fn the_first_exit_reported_wins() {
        let signal = ExitSignal::new().unwrap();
        signal.report(VmExit::Reset);
        signal.report(VmExit::Crashed("later".into()));
        assert_eq!(signal.reason(), Some(VmExit::Reset));
        assert_eq!(signal.event().read().unwrap(), 1);
    }

    #[test]
    fn a_set_without_vcpus_pauses_resumes_and_stops() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let handlers = ExitHandlers {
            pio: Bus::default(),
            mmio: Bus::default(),
            exit,
        };
        let mut set = VcpuSet::start(Vec::new(), handlers).unwrap();
        set.pause().unwrap();
        assert_eq!(set.state(), RunState::Paused);
        assert!(set.pause().is_err());
        set.resume().unwrap();
        assert!(set.resume().is_err());
        set.stop();
    }
}

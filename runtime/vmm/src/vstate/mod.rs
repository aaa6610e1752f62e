//! The running machine's state: KVM VM, guest memory, vCPU threads.

pub mod file_copy;
pub mod memory;
pub mod vcpu;
pub mod vm;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use crate::devices::lock;
use crate::devices::virtio::mmio::MmioTransport;
use memory::GuestMemory;
use vcpu::{ExitSignal, RunState, VcpuError, VcpuSet, VmExit};

/// A booted VM.
pub struct Vmm {
    pub(crate) vcpus: VcpuSet,
    pub(crate) exit: Arc<ExitSignal>,
    pub(crate) transports: Vec<Arc<Mutex<MmioTransport>>>,
    pub(crate) started: Instant,
    // Dropped last: the VM and the memory its slots point into.
    pub(crate) _vm: VmFd,
    pub(crate) _memory: GuestMemory,
}

impl Vmm {
    /// Signalled when the guest ends (reboot, power off, crash).
    pub fn exit_event(&self) -> &EventFd {
        self.exit.event()
    }

    /// How the guest ended, once it has.
    pub fn exit_reason(&self) -> Option<VmExit> {
        self.exit.reason()
    }

    /// The vCPUs' state.
    pub fn state(&self) -> RunState {
        self.vcpus.state()
    }

    /// Parks every vCPU; devices keep their state.
    pub fn pause(&self) -> Result<(), VcpuError> {
        self.vcpus.pause()
    }

    /// Runs paused vCPUs again.
    pub fn resume(&self) -> Result<(), VcpuError> {
        self.vcpus.resume()
    }

    /// Time from `started` (given to the builder) to the first guest entry.
    pub fn time_to_first_entry(&self) -> Option<Duration> {
        self.vcpus
            .first_entry()
            .map(|at| at.saturating_duration_since(self.started))
    }

    /// Stops the vCPUs and the devices' workers; returns how the guest
    /// ended ([`VmExit::Stopped`] if it still ran). Idempotent.
    pub fn stop(&mut self) -> VmExit {
        self.exit.report(VmExit::Stopped);
        self.vcpus.stop();
        for transport in &self.transports {
            lock(transport).shut_down();
        }
        self.exit.reason().expect("reported above")
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        self.stop();
    }
}

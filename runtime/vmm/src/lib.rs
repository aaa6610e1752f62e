//! husk's builtin microVM monitor: one KVM virtual machine per process, built
//! on rust-vmm crates and knowing nothing of OCI.
//!
//! The boot recipe lives in [`builder`]: guest memory in a shared memfd (so
//! vhost-user backends can map it) → VM with the in-kernel irqchip → devices
//! on virtio-mmio → `vmlinux` loaded through its PVH entry with the command
//! line, initramfs and memory map → vCPU threads. [`Vmm`] is the running
//! machine: it can be paused, resumed and stopped, and it reports how the
//! guest ended.
//!
//! Everything the guest writes (MMIO accesses, descriptors, vsock packets, net
//! frames) is untrusted: a bad access is logged and ignored or resets the
//! device, it never panics the monitor. And in case one gets through, the
//! monitor runs in a [`jail`]: its files only, no capabilities, a seccomp
//! filter on every thread.

pub mod arch;
pub mod builder;
pub mod control;
pub mod devices;
pub mod jail;
pub mod vstate;

pub use builder::{boot, build_and_boot, prepare, BuildError, Prepared};
pub use husk_vm_spec::VmSpec;
pub use vstate::vcpu::{RunState, VmExit};
pub use vstate::Vmm;

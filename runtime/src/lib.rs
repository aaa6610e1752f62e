//! husk, the host side: an OCI runtime that runs every container in its own
//! KVM microVM.
//!
//! Map: [`config`] (the TOML file), [`host`] (what the host offers),
//! [`hypervisor`] (the backend trait and the qemu backend), [`agent_client`]
//! (the vsock channel to the guest agent), [`guest`] (the boot recipe: VM +
//! agent hello), [`check`] (`husk check`), [`initramfs`] (the guest's
//! initramfs), [`process`] (child processes that never outlive us),
//! [`engine_config`] (registering husk with docker, podman, containerd).

pub mod agent_client;
pub mod check;
pub mod config;
pub mod engine_config;
pub mod guest;
pub mod host;
pub mod hypervisor;
pub mod initramfs;
pub mod oci;
pub mod process;
pub mod sandbox;
pub mod shim;

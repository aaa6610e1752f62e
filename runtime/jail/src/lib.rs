//! Confinement for husk's host processes: what a VM's monitor and its
//! helpers give up once they are set up, so that a guest that takes one of
//! them over holds as little of the host as it can (shared/DESIGN.md; the
//! model is Firecracker's jailer).
//!
//! - [`caps`]: every capability of every set dropped, no_new_privs set,
//!   with raw syscalls that allocate nothing, so a forked child may do it
//!   before exec;
//! - [`root`]: a private mount namespace whose root is an empty tmpfs with
//!   only the host paths a process still needs bound into it, at their own
//!   paths, read-only unless asked;
//! - [`filter`]: seccomp filters compiled to BPF once and installed per
//!   thread: allow-lists that kill the process on anything else, and a
//!   deny-list for the helpers husk does not build.
//!
//! All three act on the calling thread (capabilities, no_new_privs and
//! seccomp are per thread; a mount namespace cannot be entered by a
//! process with several threads): a process confines itself before its
//! first thread starts, and each thread then installs its own filter.

pub mod caps;
pub mod filter;
pub mod root;

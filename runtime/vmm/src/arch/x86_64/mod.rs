//! x86_64 guest setup: the memory layout, CPUID, registers, the MP table and
//! the PVH boot information.

pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod pvh;
pub mod regs;

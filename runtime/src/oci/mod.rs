//! The OCI side of husk: the bundle's spec ([`spec`]), container state and
//! its record on disk ([`state`]), and lifecycle hooks ([`hooks`]).

pub mod container;
pub mod hooks;
pub mod lifecycle;
pub mod spec;
pub mod state;

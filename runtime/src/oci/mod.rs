//! The OCI side of husk: the bundle's spec ([`spec`]) and the host
//! namespaces it names ([`namespaces`]), container state and its record on
//! disk ([`state`]), and lifecycle hooks ([`hooks`]). The tests hold a corpus
//! of malformed bundles.

pub mod container;
pub mod hooks;
pub mod lifecycle;
#[cfg(test)]
mod malformed_bundles;
pub mod namespaces;
pub mod spec;
pub mod state;

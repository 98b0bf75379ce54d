//! berth-agent: everything one node needs to run containers well.
//!
//! - [`image`]: pulls from registries and OCI layouts into a shared,
//!   content-addressed layer store.
//! - [`runtime`]: containers, each run by its own shim process.
pub mod image;
pub mod runtime;

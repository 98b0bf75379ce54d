//! berth-agent: everything one node needs to run containers well.
//!
//! - [`image`]: pulls from registries and OCI layouts into a shared,
//!   content-addressed layer store.
pub mod image;

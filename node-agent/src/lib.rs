//! berth-agent: everything one node needs to run containers well.
//!
//! - [`image`]: pulls from registries and OCI layouts into a shared,
//!   content-addressed layer store.
//! - [`runtime`]: containers, each run by its own shim process.
//! - [`network`]: the node's bridge and each task's network namespace.
//! - [`tasks`]: what to do about the tasks the cluster places here (pure).
//! - [`driver`]: carries it out, and the node's network with it.
//! - [`dns`]: the node's DNS for service discovery.
//! - [`format`]: the data dir's format version and its migrations.
//! - [`namespaces`]: user and network namespaces kept at files.
//! - [`probe`]: health probes from the node into a task (tcp, http).
pub mod dns;
pub mod driver;
pub mod durable;
pub mod format;
pub mod image;
pub mod namespaces;
pub mod network;
pub mod probe;
pub mod runtime;
pub mod stats;
pub mod tasks;

/// An error and its causes on one line, `outer: cause: root cause`: the
/// form a single-line report needs when the error crosses a process or a
/// string boundary.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        out = format!("{out}: {c}");
        cause = c.source();
    }
    out
}

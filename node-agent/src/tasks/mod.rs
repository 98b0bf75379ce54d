//! Running the node's share of the cluster's tasks: what to do about them
//! ([`plan`], pure) and when an exited one starts again ([`restart`],
//! pure). The loop that watches the control plane, acts through the
//! runtime and reports back builds on these.

pub mod plan;
pub mod restart;

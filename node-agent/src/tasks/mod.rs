//! Running the node's share of the cluster's tasks: what to do about them
//! ([`plan`], pure), when an exited one starts again ([`restart`], pure),
//! and the loop that watches the control plane, acts through the runtime
//! and reports back ([`worker`]).

pub mod plan;
pub mod restart;
pub mod worker;

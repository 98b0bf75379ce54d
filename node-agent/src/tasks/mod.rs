//! Running the node's share of the cluster's tasks: what to do about them
//! ([`plan`], pure), when an exited one starts again ([`restart`], pure),
//! and the loop that watches the control plane, acts through the runtime
//! and reports back ([`worker`]); and the service the agent answers on its
//! advertise address, for the logs of its tasks ([`logs`]).

pub mod logs;
pub mod plan;
pub mod restart;
pub mod worker;

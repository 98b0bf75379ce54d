//! The node's share of the cluster's tasks, decided without IO: what to do
//! about them ([`plan`]), when an exited one starts again ([`restart`]),
//! what the worker remembers between passes ([`books`]), which exclusive
//! tasks the node's lease lets run ([`fence`]), which wait for the
//! services they depend on ([`depends`]), and one whole
//! pass: jobs to start ([`job`]) and reports to send ([`step`]). The driver
//! (`crate::driver`) carries them out. Also the service the agent answers
//! on its advertise address, for the logs of its tasks ([`logs`]).

pub mod books;
pub mod depends;
pub mod fence;
pub mod health;
pub mod job;
pub mod logs;
pub mod plan;
pub mod restart;
pub mod step;

//! The work a pass of [`super::step`] hands the driver, one task at a time.

use berth_proto::model::AssignedTask;

/// Work on one task, run by the driver on its own; a task has at most one
/// under way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    /// Pull its image, make its namespace, create and start its container.
    Start(AssignedTask),
    /// Start its container again on a fresh writable layer (a new one if
    /// that cannot be done).
    Restart(AssignedTask),
    /// Stop its running container (its stop signal and grace), then start
    /// it again as `Restart` does: it failed its health check.
    Replace(AssignedTask),
    /// SIGTERM, the grace, SIGKILL; then remove it and its namespace.
    Stop(String),
    /// Its lease lapsed: SIGTERM, a short grace, SIGKILL; it is kept, to
    /// start again once a lease names it.
    Fence(String),
    /// Remove a container that does not run, and its namespace.
    Remove(String),
    /// Remove a namespace of no task and no container (left by an agent
    /// that stopped halfway).
    Detach(String),
}

impl Job {
    pub fn task(&self) -> &str {
        match self {
            Self::Start(t) | Self::Restart(t) | Self::Replace(t) => &t.id,
            Self::Stop(t) | Self::Fence(t) | Self::Remove(t) | Self::Detach(t) => t,
        }
    }
}

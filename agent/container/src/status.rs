//! A container's lifecycle state and which verbs each state allows.

use std::fmt;

/// Where a container is in its lifecycle (the OCI runtime states; `creating` is inside
/// [`crate::ContainerBuilder::build`] and never observable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerStatus {
    /// The init process is set up and waits for start.
    Created,
    /// The init process exec'd the container's program.
    Running,
    /// The init process exited (the caller said so with `mark_stopped`).
    Stopped,
}

impl ContainerStatus {
    /// Only a created container can start.
    pub fn can_start(self) -> bool {
        self == ContainerStatus::Created
    }

    /// Signals reach created and running containers.
    pub fn can_kill(self) -> bool {
        matches!(self, ContainerStatus::Created | ContainerStatus::Running)
    }

    /// Processes can be exec'd into created and running containers (their namespaces
    /// exist), as with runc.
    pub fn can_exec(self) -> bool {
        matches!(self, ContainerStatus::Created | ContainerStatus::Running)
    }

    /// A running container must be killed (and its exit seen) before delete.
    pub fn can_delete(self) -> bool {
        matches!(self, ContainerStatus::Created | ContainerStatus::Stopped)
    }
}

impl fmt::Display for ContainerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ContainerStatus::Created => "created",
            ContainerStatus::Running => "running",
            ContainerStatus::Stopped => "stopped",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::ContainerStatus::*;

    #[test]
    fn guards_follow_the_oci_lifecycle() {
        assert!(Created.can_start() && !Running.can_start() && !Stopped.can_start());
        assert!(Created.can_kill() && Running.can_kill() && !Stopped.can_kill());
        assert!(Created.can_exec() && Running.can_exec() && !Stopped.can_exec());
        assert!(Created.can_delete() && !Running.can_delete() && Stopped.can_delete());
    }
}

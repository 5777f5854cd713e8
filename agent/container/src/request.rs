//! What the caller sends to the init helper (JSON over a pipe).

use std::path::PathBuf;

use oci_spec::runtime::{LinuxSeccomp, Process, Spec};
use serde::{Deserialize, Serialize};

use crate::namespaces::NamespacePlan;
use crate::pins::SourcePins;
use crate::rootfs::RootSwitch;

/// The helper's job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub(crate) enum InitRequest {
    /// Create a container whose init waits for start.
    Create(Box<CreateRequest>),
    /// Run a process in a running container.
    Exec(Box<ExecRequest>),
}

/// A validated container creation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CreateRequest {
    /// The container id (for messages).
    pub id: String,
    /// The rootfs directory in the agent's mount namespace.
    pub rootfs: PathBuf,
    /// The OCI spec; `process` is present (validated).
    pub spec: Spec,
    /// Namespaces to join and create.
    pub namespaces: NamespacePlan,
    /// stdin is a pty slave.
    pub terminal: bool,
    /// How the root is switched.
    pub root_switch: RootSwitch,
    /// The cgroup directory the helper joins before anything else.
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    /// Where the rootfs and bind sources must lead (see [`SourcePins`]).
    #[serde(default)]
    pub pins: Option<SourcePins>,
}

/// A process to run in an existing container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ExecRequest {
    /// The container's init pid in the caller's pid namespace.
    pub container_pid: i32,
    /// The process to run.
    pub process: Process,
    /// stdin is a pty slave.
    pub terminal: bool,
    /// The container's cgroup directory, joined like at create.
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    /// The container's seccomp profile, which holds its exec'd processes too (as runc's).
    #[serde(default)]
    pub seccomp: Option<LinuxSeccomp>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespaces::Kind;

    #[test]
    fn create_request_round_trips_with_the_default_spec() {
        let request = InitRequest::Create(Box::new(CreateRequest {
            id: "c1".into(),
            rootfs: "/run/rootfs".into(),
            spec: Spec::default(),
            namespaces: NamespacePlan {
                join: vec![(Kind::Net, "/proc/9/ns/net".into())],
                create: vec![Kind::Mount, Kind::Pid],
            },
            terminal: true,
            root_switch: RootSwitch::PivotRootOrChroot,
            cgroup: Some("/sys/fs/cgroup/veil/c1".into()),
            pins: None,
        }));
        let json = serde_json::to_vec(&request).unwrap();
        let InitRequest::Create(back) = serde_json::from_slice(&json).unwrap() else {
            panic!("mode changed");
        };
        assert_eq!(back.spec, Spec::default());
        assert_eq!(back.namespaces.create, vec![Kind::Mount, Kind::Pid]);
        assert_eq!(back.root_switch, RootSwitch::PivotRootOrChroot);
        assert!(back.terminal);
        assert_eq!(back.cgroup, Some("/sys/fs/cgroup/veil/c1".into()));
    }
}

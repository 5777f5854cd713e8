//! Which namespaces a container gets: joined by path (setns) or created new (unshare).

use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};
use serde::{Deserialize, Serialize};

use crate::failure::{InitFailure, StepContext};
use crate::syscall::Syscall;

/// The namespace kinds veil supports, in the order they are joined: mount last, so that
/// the other `/proc/<pid>/ns/*` paths still resolve in the agent's mount namespace.
pub(crate) const JOIN_ORDER: [Kind; 6] = [
    Kind::Ipc,
    Kind::Uts,
    Kind::Net,
    Kind::Pid,
    Kind::Cgroup,
    Kind::Mount,
];

/// A namespace kind veil can create or join.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Kind {
    Mount,
    Uts,
    Ipc,
    Net,
    Pid,
    Cgroup,
}

impl Kind {
    /// The clone flag for unshare/setns.
    pub fn flag(self) -> CloneFlags {
        match self {
            Kind::Mount => CloneFlags::CLONE_NEWNS,
            Kind::Uts => CloneFlags::CLONE_NEWUTS,
            Kind::Ipc => CloneFlags::CLONE_NEWIPC,
            Kind::Net => CloneFlags::CLONE_NEWNET,
            Kind::Pid => CloneFlags::CLONE_NEWPID,
            Kind::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        }
    }

    /// The file name under `/proc/<pid>/ns/`.
    pub fn proc_name(self) -> &'static str {
        match self {
            Kind::Mount => "mnt",
            Kind::Uts => "uts",
            Kind::Ipc => "ipc",
            Kind::Net => "net",
            Kind::Pid => "pid",
            Kind::Cgroup => "cgroup",
        }
    }
}

/// A namespace in the spec that veil cannot honour yet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NamespaceError {
    /// User namespaces need uid/gid mappings written by the parent; not built yet.
    #[error("user namespaces are not supported by veil yet; remove the \"user\" namespace from the spec (the VM is the isolation boundary)")]
    UserUnsupported,
    /// Time namespaces are not built yet.
    #[error("time namespaces are not supported by veil yet; remove the \"time\" namespace from the spec")]
    TimeUnsupported,
    /// The spec names the same namespace type twice.
    #[error("the spec lists the {0} namespace more than once")]
    Duplicate(&'static str),
    /// Every container needs its own mount namespace: its rootfs and mounts must not leak
    /// into the agent's.
    #[error("the spec has no mount namespace; veil needs one (add {{\"type\": \"mount\"}})")]
    MountRequired,
    /// Joining another container's mount namespace would share its rootfs.
    #[error(
        "joining an existing mount namespace ({0}) is not supported; give the container a new one"
    )]
    MountJoinUnsupported(PathBuf),
}

/// The namespace part of a container's setup.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub(crate) struct NamespacePlan {
    /// Namespaces entered with setns, in [`JOIN_ORDER`].
    pub join: Vec<(Kind, PathBuf)>,
    /// Namespaces created with one unshare call.
    pub create: Vec<Kind>,
}

impl NamespacePlan {
    /// Reads the spec's `linux.namespaces`.
    pub fn from_spec(namespaces: &[LinuxNamespace]) -> Result<Self, NamespaceError> {
        let mut seen: Vec<Kind> = Vec::new();
        let mut plan = NamespacePlan::default();
        for ns in namespaces {
            let kind = match ns.typ() {
                LinuxNamespaceType::Mount => Kind::Mount,
                LinuxNamespaceType::Uts => Kind::Uts,
                LinuxNamespaceType::Ipc => Kind::Ipc,
                LinuxNamespaceType::Network => Kind::Net,
                LinuxNamespaceType::Pid => Kind::Pid,
                LinuxNamespaceType::Cgroup => Kind::Cgroup,
                LinuxNamespaceType::User => return Err(NamespaceError::UserUnsupported),
                LinuxNamespaceType::Time => return Err(NamespaceError::TimeUnsupported),
            };
            if seen.contains(&kind) {
                return Err(NamespaceError::Duplicate(kind.proc_name()));
            }
            seen.push(kind);
            match ns.path() {
                Some(path) if !path.as_os_str().is_empty() => {
                    if kind == Kind::Mount {
                        return Err(NamespaceError::MountJoinUnsupported(path.clone()));
                    }
                    plan.join.push((kind, path.clone()));
                }
                _ => plan.create.push(kind),
            }
        }
        if !seen.contains(&Kind::Mount) {
            return Err(NamespaceError::MountRequired);
        }
        plan.join.sort_by_key(|(kind, _)| order_of(*kind));
        plan.create.sort_by_key(|kind| order_of(*kind));
        Ok(plan)
    }

    /// Whether the container gets (or joins) this namespace.
    pub fn has(&self, kind: Kind) -> bool {
        self.create.contains(&kind) || self.join.iter().any(|(k, _)| *k == kind)
    }

    /// Whether this namespace is newly created for the container.
    pub fn creates(&self, kind: Kind) -> bool {
        self.create.contains(&kind)
    }

    /// Joins, then creates. Must run in a single-threaded process; a new pid namespace
    /// applies to the children forked afterwards.
    pub fn apply(&self, sys: &dyn Syscall) -> Result<(), InitFailure> {
        for (kind, path) in &self.join {
            sys.setns(path, kind.flag())
                .step(|| join_step(*kind, path))?;
        }
        if !self.create.is_empty() {
            let flags = self
                .create
                .iter()
                .fold(CloneFlags::empty(), |acc, kind| acc | kind.flag());
            sys.unshare(flags).step(|| {
                let names: Vec<&str> = self.create.iter().map(|k| k.proc_name()).collect();
                format!("create namespaces {}", names.join(","))
            })?;
        }
        Ok(())
    }
}

fn order_of(kind: Kind) -> usize {
    JOIN_ORDER
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(JOIN_ORDER.len())
}

fn join_step(kind: Kind, path: &Path) -> String {
    format!("join {} namespace {}", kind.proc_name(), path.display())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::recording::RecordingSyscall;
    use oci_spec::runtime::LinuxNamespaceBuilder;

    fn ns(typ: LinuxNamespaceType, path: Option<&str>) -> LinuxNamespace {
        let mut b = LinuxNamespaceBuilder::default().typ(typ);
        if let Some(p) = path {
            b = b.path(PathBuf::from(p));
        }
        b.build().unwrap()
    }

    #[test]
    fn joins_in_fixed_order_then_unshares_once() {
        let plan = NamespacePlan::from_spec(&[
            ns(LinuxNamespaceType::Mount, None),
            ns(LinuxNamespaceType::Network, Some("/proc/7/ns/net")),
            ns(LinuxNamespaceType::Pid, None),
            ns(LinuxNamespaceType::Ipc, Some("/proc/7/ns/ipc")),
            ns(LinuxNamespaceType::Uts, None),
        ])
        .unwrap();
        let sys = RecordingSyscall::new();
        plan.apply(&sys).unwrap();
        assert_eq!(
            sys.calls(),
            vec![
                "setns /proc/7/ns/ipc CloneFlags(CLONE_NEWIPC)",
                "setns /proc/7/ns/net CloneFlags(CLONE_NEWNET)",
                "unshare CloneFlags(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWPID)",
            ]
        );
    }

    #[test]
    fn failing_join_names_the_namespace() {
        let plan = NamespacePlan::from_spec(&[
            ns(LinuxNamespaceType::Mount, None),
            ns(LinuxNamespaceType::Network, Some("/proc/7/ns/net")),
        ])
        .unwrap();
        let sys = RecordingSyscall::new().failing("setns", nix::errno::Errno::ENOENT);
        let err = plan.apply(&sys).unwrap_err();
        assert_eq!(err.step, "join net namespace /proc/7/ns/net");
        assert_eq!(err.errno(), Some(nix::errno::Errno::ENOENT));
        assert_eq!(sys.calls().len(), 1, "nothing after the failure");
    }

    #[test]
    fn refuses_user_time_duplicates_and_missing_mount() {
        assert_eq!(
            NamespacePlan::from_spec(&[ns(LinuxNamespaceType::User, None)]),
            Err(NamespaceError::UserUnsupported)
        );
        assert_eq!(
            NamespacePlan::from_spec(&[ns(LinuxNamespaceType::Time, None)]),
            Err(NamespaceError::TimeUnsupported)
        );
        assert_eq!(
            NamespacePlan::from_spec(&[
                ns(LinuxNamespaceType::Mount, None),
                ns(LinuxNamespaceType::Mount, None)
            ]),
            Err(NamespaceError::Duplicate("mnt"))
        );
        assert_eq!(
            NamespacePlan::from_spec(&[ns(LinuxNamespaceType::Pid, None)]),
            Err(NamespaceError::MountRequired)
        );
    }

    #[test]
    fn empty_path_means_create() {
        let plan = NamespacePlan::from_spec(&[ns(LinuxNamespaceType::Mount, Some(""))]).unwrap();
        assert!(plan.creates(Kind::Mount));
    }
}

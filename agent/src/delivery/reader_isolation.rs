//! What an approved reader shares with the pod's other containers: nothing it writes.
//!
//! An approved reader holds the plaintext model, and the node writes the pod: it can add a
//! container of its own next to the reader. Kubernetes shares some things between a pod's
//! containers without anyone asking, and a reader's program may put what it derives from
//! the model there (a server's workers hand tensors to each other through `/dev/shm` or
//! System V shared memory). So:
//!
//! - an approved reader gets an IPC namespace and a `/dev/shm` of its own, both in guest
//!   memory, instead of the pod's ([`isolate`]); its own processes still share them;
//! - a memory volume an approved reader mounts writable may not be mounted by a container
//!   the owner did not approve, whichever comes first ([`check_volume_sharing`]), so that
//!   what the reader writes there reaches only other approved readers. A volume it mounts
//!   read-only may come from anyone: it is the reader's input.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceBuilder, LinuxNamespaceType, Mount, MountBuilder, Spec};
use veil_protocol::{GUEST_VOLUMES_DIR, POD_SHM_VOLUME};

const SHM_DESTINATION: &str = "/dev/shm";

/// One container, as the sharing rule sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeUse {
    /// Its id.
    pub id: String,
    /// Whether it runs as a reader the owner approved.
    pub approved: bool,
    /// The memory volumes it mounts.
    pub mounts: Vec<String>,
    /// Those of them it mounts writable.
    pub writes: Vec<String>,
}

/// Gives `spec`, an approved reader's, its own IPC namespace and, in place of the pod's
/// `/dev/shm` (the memory volume [`POD_SHM_VOLUME`]), a tmpfs of `shm_bytes` (0: the
/// kernel's default) of its own. Returns what it changed, for the log.
pub fn isolate(spec: &mut Spec, shm_bytes: u64) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if own_ipc_namespace(spec) {
        changed.push("IPC namespace");
    }
    if own_shm(spec, shm_bytes) {
        changed.push("/dev/shm");
    }
    changed
}

/// Replaces a joined IPC namespace (the pod's) with a new one, and gives one to a spec
/// without any (which would share the agent's with every other such container).
fn own_ipc_namespace(spec: &mut Spec) -> bool {
    let namespaces = spec
        .linux_mut()
        .get_or_insert_with(Default::default)
        .namespaces_mut()
        .get_or_insert_with(Vec::new);
    let new_ipc = LinuxNamespaceBuilder::default()
        .typ(LinuxNamespaceType::Ipc)
        .build()
        .expect("a namespace with a type builds");
    match namespaces
        .iter_mut()
        .find(|n| n.typ() == LinuxNamespaceType::Ipc)
    {
        Some(ipc) if ipc.path().is_none() => false,
        Some(ipc) => {
            *ipc = new_ipc;
            true
        }
        None => {
            namespaces.push(new_ipc);
            true
        }
    }
}

fn own_shm(spec: &mut Spec, shm_bytes: u64) -> bool {
    let pod_shm = Path::new(GUEST_VOLUMES_DIR).join(POD_SHM_VOLUME);
    let Some(mounts) = spec.mounts_mut().as_mut() else {
        return false;
    };
    let mut changed = false;
    for mount in mounts.iter_mut().filter(|m| {
        m.destination() == Path::new(SHM_DESTINATION) && m.source().as_deref() == Some(&pod_shm)
    }) {
        *mount = private_shm(shm_bytes);
        changed = true;
    }
    changed
}

/// What runc gives a container that has no pod: a tmpfs of its own.
fn private_shm(bytes: u64) -> Mount {
    let mut options: Vec<String> = ["nosuid", "noexec", "nodev", "mode=1777"]
        .map(String::from)
        .to_vec();
    if bytes > 0 {
        options.push(format!("size={bytes}"));
    }
    MountBuilder::default()
        .destination(PathBuf::from(SHM_DESTINATION))
        .typ("tmpfs")
        .source(PathBuf::from("shm"))
        .options(options)
        .build()
        .expect("a mount with a destination builds")
}

/// Why `new` may not run next to `existing`: a memory volume written by an approved reader
/// and mounted by a container the owner did not approve. `None` when it may.
pub fn check_volume_sharing(new: &VolumeUse, existing: &[VolumeUse]) -> Option<String> {
    existing.iter().find_map(|other| {
        let (reader, outsider) = match (new.approved, other.approved) {
            (true, false) => (new, other),
            (false, true) => (other, new),
            _ => return None,
        };
        let volume = reader
            .writes
            .iter()
            .find(|v| outsider.mounts.contains(v))?;
        Some(format!(
            "memory volume {volume} is written by container {}, which the model owner approved to read the model, and mounted by container {}, which the owner did not approve; what the reader writes there would reach it. Mount {volume} read-only in the reader, keep it out of the other container, or have the owner approve that container as a reader too",
            reader.id, outsider.id
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cri_reader_spec() -> Spec {
        serde_json::from_str(
            r#"{"ociVersion":"1.0.2","process":{"cwd":"/","args":["server"],"user":{"uid":0,"gid":0}},
                "mounts":[
                  {"destination":"/proc","type":"proc","source":"proc"},
                  {"destination":"/dev/shm","type":"bind","source":"/run/veil/volumes/veil.shm","options":["rbind","rw"]},
                  {"destination":"/cache","type":"bind","source":"/run/veil/volumes/cache","options":["rbind","rw"]}],
                "linux":{"namespaces":[{"type":"pid"},{"type":"ipc","path":"/proc/42/ns/ipc"},{"type":"mount"}]}}"#,
        )
        .expect("spec")
    }

    #[test]
    fn a_reader_gets_its_own_ipc_namespace_and_shm() {
        let mut spec = cri_reader_spec();
        assert_eq!(
            isolate(&mut spec, 64 << 20),
            vec!["IPC namespace", "/dev/shm"]
        );
        let namespaces = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
        let ipc = namespaces
            .iter()
            .find(|n| n.typ() == LinuxNamespaceType::Ipc)
            .expect("ipc");
        assert_eq!(ipc.path(), &None, "a new IPC namespace");
        let mounts = spec.mounts().clone().unwrap();
        assert_eq!(mounts[1].typ().as_deref(), Some("tmpfs"));
        assert_eq!(mounts[1].destination(), Path::new("/dev/shm"));
        assert!(mounts[1]
            .options()
            .as_ref()
            .unwrap()
            .contains(&format!("size={}", 64 << 20)));
        assert_eq!(
            mounts[2].source().as_deref(),
            Some(Path::new("/run/veil/volumes/cache")),
            "other volumes stay"
        );
        assert!(isolate(&mut spec, 0).is_empty(), "nothing left to change");
    }

    #[test]
    fn a_reader_without_an_ipc_namespace_gets_one() {
        let json = serde_json::to_string(&cri_reader_spec())
            .unwrap()
            .replace(r#",{"type":"ipc","path":"/proc/42/ns/ipc"}"#, "");
        assert!(!json.contains("ns/ipc"), "{json}");
        let mut spec: Spec = serde_json::from_str(&json).unwrap();
        assert_eq!(isolate(&mut spec, 0), vec!["IPC namespace", "/dev/shm"]);
        let namespaces = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
        assert!(namespaces
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Ipc && n.path().is_none()));
    }

    #[test]
    fn a_reader_with_its_own_shm_volume_keeps_it() {
        let json = serde_json::to_string(&cri_reader_spec())
            .unwrap()
            .replace("volumes/veil.shm", "volumes/dshm");
        let mut spec: Spec = serde_json::from_str(&json).unwrap();
        assert_eq!(isolate(&mut spec, 0), vec!["IPC namespace"]);
    }

    fn uses(id: &str, approved: bool, mounts: &[&str], writes: &[&str]) -> VolumeUse {
        VolumeUse {
            id: id.into(),
            approved,
            mounts: mounts.iter().map(|s| s.to_string()).collect(),
            writes: writes.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn what_a_reader_writes_reaches_no_container_the_owner_did_not_approve() {
        let reader = uses("server", true, &["model", "cache", "config"], &["cache"]);
        let sidecar = uses("sidecar", false, &["cache"], &[]);
        let refusal = check_volume_sharing(&sidecar, std::slice::from_ref(&reader))
            .expect("the sidecar would read the reader's cache");
        assert!(
            refusal.contains("memory volume cache is written by container server"),
            "{refusal}"
        );
        assert!(
            refusal.contains("mounted by container sidecar"),
            "{refusal}"
        );
        assert!(
            check_volume_sharing(&reader, std::slice::from_ref(&sidecar)).is_some(),
            "whichever comes first"
        );
        let feeder = uses("feeder", false, &["config"], &["config"]);
        assert_eq!(
            check_volume_sharing(&feeder, std::slice::from_ref(&reader)),
            None,
            "input the reader only reads"
        );
        let second_reader = uses("worker", true, &["cache"], &["cache"]);
        assert_eq!(check_volume_sharing(&second_reader, &[reader]), None);
    }
}

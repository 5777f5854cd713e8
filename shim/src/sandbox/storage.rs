//! Getting a container's files into the guest: the rootfs containerd prepared
//! (snapshot mounts) and the spec's bind mounts are bind-mounted into the sandbox's
//! shared directory, which QEMU exports over virtio-9p; the spec is rewritten to the
//! guest paths.

use std::path::{Path, PathBuf};

use containerd_shim::protos::types::mount::Mount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::{Error, Result};

/// Where a container's files live inside the shared directory.
pub fn container_share(shared_dir: &Path, container_id: &str) -> PathBuf {
    shared_dir.join(container_id)
}

fn guest_path(container_id: &str, relative: &str) -> String {
    format!(
        "{}/{container_id}/{relative}",
        veil_protocol::GUEST_SHARED_DIR
    )
}

fn bind(source: &Path, target: &Path) -> Result<()> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| Error::Io {
        what: format!("bind {} to {}", source.display(), target.display()),
        source: e.into(),
    })
}

/// Mounts containerd's rootfs mounts (usually one overlay) at `<bundle>/rootfs`, or uses
/// the spec's root path when containerd passed none. Returns the host rootfs and
/// whether the shim mounted it (and must unmount it).
pub async fn mount_rootfs(bundle: &Path, mounts: &[Mount], spec: &Spec) -> Result<(PathBuf, bool)> {
    if mounts.is_empty() {
        let root = spec
            .root()
            .as_ref()
            .map(|r| r.path().clone())
            .ok_or_else(|| {
                Error::InvalidArgument(
                    "the OCI spec has no root and containerd passed no rootfs mounts".into(),
                )
            })?;
        let root = if root.is_absolute() {
            root
        } else {
            bundle.join(root)
        };
        return Ok((root, false));
    }
    let target = bundle.join("rootfs");
    std::fs::create_dir_all(&target).map_err(Error::io(format!("create {}", target.display())))?;
    for m in mounts {
        containerd_shim::asynchronous::util::mount_rootfs(m, &target)
            .await
            .map_err(|e| Error::Io {
                what: format!(
                    "mount rootfs ({} from {}) at {}",
                    m.type_,
                    m.source,
                    target.display()
                ),
                source: std::io::Error::other(e.to_string()),
            })?;
    }
    Ok((target, true))
}

/// Binds the host rootfs into the shared directory; returns its guest path.
pub fn share_rootfs(shared_dir: &Path, container_id: &str, host_rootfs: &Path) -> Result<String> {
    let target = container_share(shared_dir, container_id).join("rootfs");
    std::fs::create_dir_all(&target).map_err(Error::io(format!("create {}", target.display())))?;
    bind(host_rootfs, &target)?;
    Ok(guest_path(container_id, "rootfs"))
}

/// Whether an OCI mount is a bind mount (by type or by option).
pub fn is_bind(mount: &oci_spec::runtime::Mount) -> bool {
    mount.typ().as_deref() == Some("bind")
        || mount
            .options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|opt| opt == "bind" || opt == "rbind"))
}

/// Shares every bind mount's host source and points the spec at the guest copy.
pub fn share_bind_mounts(shared_dir: &Path, container_id: &str, spec: &mut Spec) -> Result<()> {
    let Some(mut mounts) = spec.mounts().clone() else {
        return Ok(());
    };
    let dir = container_share(shared_dir, container_id).join("mounts");
    for (index, m) in mounts.iter_mut().enumerate() {
        let Some(source) = m.source().clone().filter(|s| s.is_absolute()) else {
            continue;
        };
        // Memory volumes live in the guest only; they are never shared from the host.
        if source.starts_with(veil_protocol::GUEST_VOLUMES_DIR) {
            continue;
        }
        if !is_bind(m) {
            continue;
        }
        let meta = std::fs::metadata(&source).map_err(Error::io(format!(
            "bind mount source {} for {}",
            source.display(),
            m.destination().display()
        )))?;
        let target = dir.join(index.to_string());
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("create {}", dir.display())))?;
        if meta.is_dir() {
            std::fs::create_dir_all(&target)
                .map_err(Error::io(format!("create {}", target.display())))?;
        } else {
            std::fs::File::create(&target)
                .map_err(Error::io(format!("create {}", target.display())))?;
        }
        bind(&source, &target)?;
        m.set_source(Some(PathBuf::from(guest_path(
            container_id,
            &format!("mounts/{index}"),
        ))));
    }
    spec.set_mounts(Some(mounts));
    Ok(())
}

/// Makes a host-generated spec meaningful inside the guest. Hooks name host programs, so they
/// go. A network namespace joined by path is the pod's network: every container of the pod
/// shares it, and in the guest that is the VM's own network (where the agent put the pod
/// NICs), so the entry goes and the container stays in the guest's namespace. IPC, UTS
/// and pid namespaces of another container of the pod (one of `pod_pids`, guest pids) are
/// kept, so the pod's containers share them as on runc; any other path names a host object,
/// and the container gets a fresh namespace instead.
pub fn adapt_spec_for_guest(spec: &mut Spec, pod_pids: &[u32]) {
    if spec.hooks().is_some() {
        tracing::warn!("OCI hooks run on the host with runc; veil does not run them inside the VM");
        spec.set_hooks(None);
    }
    if let Some(linux) = spec.linux_mut() {
        if let Some(namespaces) = linux.namespaces().clone() {
            let adapted = namespaces
                .into_iter()
                .filter(|ns| !(ns.typ() == LinuxNamespaceType::Network && ns.path().is_some()))
                .map(|mut ns| {
                    let kept = ns.path().as_deref().and_then(|path| {
                        joinable_in_guest(ns.typ(), path, pod_pids).then(|| path.to_path_buf())
                    });
                    if let (None, Some(path)) = (&kept, ns.path()) {
                        tracing::warn!(
                            namespace = ?ns.typ(),
                            path = %path.display(),
                            "a namespace path that names no container of this pod in the VM: the container gets a fresh one"
                        );
                    }
                    ns.set_path(kept);
                    ns
                })
                .collect();
            linux.set_namespaces(Some(adapted));
        }
    }
}

/// Whether `path` is `/proc/<pid>/ns/<kind>` of a container of this pod, for a kind the
/// guest shares by path.
fn joinable_in_guest(kind: LinuxNamespaceType, path: &Path, pod_pids: &[u32]) -> bool {
    let Some(name) = shared_by_path_in_guest(kind) else {
        return false;
    };
    pod_pids
        .iter()
        .any(|&pid| pid != 0 && path == Path::new(&format!("/proc/{pid}/ns/{name}")))
}

/// The `/proc/<pid>/ns/` name of a namespace a container shares with its pod by the path
/// containerd gives (the pid namespace only when the pod asks, as `shareProcessNamespace`
/// does): `/proc/<pid>/ns/<name>` of the pod's sandbox container. The shim reports guest pids
/// to containerd, so such a path names the sandbox container inside the VM and the agent can
/// join it there, as runc joins it on the host.
fn shared_by_path_in_guest(kind: LinuxNamespaceType) -> Option<&'static str> {
    match kind {
        LinuxNamespaceType::Ipc => Some("ipc"),
        LinuxNamespaceType::Uts => Some("uts"),
        LinuxNamespaceType::Pid => Some("pid"),
        _ => None,
    }
}

/// Undoes [`share_rootfs`] and [`share_bind_mounts`] for one container.
pub fn unshare(shared_dir: &Path, container_id: &str) {
    let dir = container_share(shared_dir, container_id);
    detach_mounts_under(&dir);
    if let Err(error) = std::fs::remove_dir_all(&dir) {
        if error.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), %error, "could not remove the container's share");
        }
    }
}

/// Lazily unmounts every mount at or below `dir` (deepest first).
pub fn detach_mounts_under(dir: &Path) {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut targets: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4))
        .map(PathBuf::from)
        .filter(|target| target.starts_with(dir))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.components().count()));
    for target in targets {
        if let Err(error) = umount2(&target, MntFlags::MNT_DETACH) {
            tracing::warn!(target = %target.display(), %error, "unmount failed");
        }
    }
}

/// Unmounts `<bundle>/rootfs` mounted by [`mount_rootfs`].
pub fn unmount_rootfs(bundle: &Path) {
    detach_mounts_under(&bundle.join("rootfs"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with(json: &str) -> Spec {
        serde_json::from_str(json).expect("spec")
    }

    #[test]
    fn namespace_paths_and_hooks_are_dropped() {
        let mut spec = spec_with(
            r#"{"ociVersion":"1.0.2","hooks":{"prestart":[{"path":"/bin/true"}]},
                "linux":{"namespaces":[{"type":"network","path":"/var/run/netns/cni-1"},{"type":"pid"},{"type":"ipc","path":"/proc/7/ns/ipc"}]}}"#,
        );
        adapt_spec_for_guest(&mut spec, &[]);
        assert!(spec.hooks().is_none());
        let namespaces = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .expect("namespaces");
        // The pod network is the VM's: the container joins none of its own.
        let types: Vec<_> = namespaces.iter().map(|ns| ns.typ()).collect();
        assert_eq!(
            types,
            vec![
                oci_spec::runtime::LinuxNamespaceType::Pid,
                oci_spec::runtime::LinuxNamespaceType::Ipc
            ]
        );
        assert!(namespaces.iter().all(|ns| ns.path().is_none()));
        // `ctr run` asks for a fresh network namespace: it keeps it.
        let mut fresh =
            spec_with(r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"network"}]}}"#);
        adapt_spec_for_guest(&mut fresh, &[]);
        assert_eq!(
            fresh
                .linux()
                .as_ref()
                .and_then(|l| l.namespaces().clone())
                .map(|n| n.len()),
            Some(1)
        );
    }

    fn namespace_paths(spec: &Spec) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
        spec.linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .unwrap_or_default()
            .into_iter()
            .map(|ns| (ns.typ(), ns.path().clone()))
            .collect()
    }

    #[test]
    fn ipc_and_uts_of_a_pod_container_are_joined_in_the_guest() {
        let json = r#"{"ociVersion":"1.0.2","linux":{"namespaces":[
            {"type":"ipc","path":"/proc/42/ns/ipc"},{"type":"uts","path":"/proc/42/ns/uts"},
            {"type":"pid","path":"/proc/42/ns/pid"},{"type":"mount"}]}}"#;
        let mut spec = spec_with(json);
        adapt_spec_for_guest(&mut spec, &[1, 42]);
        assert_eq!(
            namespace_paths(&spec),
            vec![
                (
                    LinuxNamespaceType::Ipc,
                    Some(PathBuf::from("/proc/42/ns/ipc"))
                ),
                (
                    LinuxNamespaceType::Uts,
                    Some(PathBuf::from("/proc/42/ns/uts"))
                ),
                (
                    LinuxNamespaceType::Pid,
                    Some(PathBuf::from("/proc/42/ns/pid"))
                ),
                (LinuxNamespaceType::Mount, None),
            ]
        );
        // A pid that is no container of this pod names a host process: fresh namespaces.
        let mut foreign = spec_with(json);
        adapt_spec_for_guest(&mut foreign, &[7]);
        assert!(namespace_paths(&foreign).iter().all(|(_, p)| p.is_none()));
    }

    #[test]
    fn only_proc_pid_ns_paths_of_the_matching_kind_are_joinable() {
        let ipc = LinuxNamespaceType::Ipc;
        let pods = [42];
        assert!(joinable_in_guest(ipc, Path::new("/proc/42/ns/ipc"), &pods));
        assert!(!joinable_in_guest(ipc, Path::new("/proc/42/ns/uts"), &pods));
        assert!(!joinable_in_guest(
            ipc,
            Path::new("/proc/42/ns/ipc/x"),
            &pods
        ));
        assert!(!joinable_in_guest(ipc, Path::new("/run/ipc/42"), &pods));
        assert!(!joinable_in_guest(
            ipc,
            Path::new("/proc/self/ns/ipc"),
            &pods
        ));
        assert!(!joinable_in_guest(ipc, Path::new("/proc/0/ns/ipc"), &[0]));
        assert!(!joinable_in_guest(
            LinuxNamespaceType::Network,
            Path::new("/proc/42/ns/net"),
            &pods
        ));
    }

    #[test]
    fn bind_detection_covers_type_and_options() {
        let spec = spec_with(
            r#"{"ociVersion":"1.0.2","mounts":[
                {"destination":"/a","type":"bind","source":"/x"},
                {"destination":"/b","source":"/y","options":["rbind","ro"]},
                {"destination":"/proc","type":"proc","source":"proc"}]}"#,
        );
        let mounts = spec.mounts().clone().expect("mounts");
        assert!(is_bind(&mounts[0]) && is_bind(&mounts[1]) && !is_bind(&mounts[2]));
    }

    #[test]
    fn guest_paths_live_under_the_guest_share() {
        assert_eq!(guest_path("c1", "rootfs"), "/run/veil/shared/c1/rootfs");
    }

    #[test]
    fn missing_bind_source_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spec = spec_with(
            r#"{"ociVersion":"1.0.2","mounts":[{"destination":"/data","type":"bind","source":"/nonexistent/data"}]}"#,
        );
        let error = share_bind_mounts(dir.path(), "c1", &mut spec).expect_err("missing");
        assert!(error.to_string().contains("/nonexistent/data"));
    }
}

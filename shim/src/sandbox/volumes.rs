//! Memory volumes on the shim's side: which of a container's mounts must live only in
//! guest RAM, and the rewrite that points them at the agent's tmpfs instead of a host
//! share.
//!
//! A bind mount is a memory volume when
//! * its source is a Kubernetes emptyDir (`.../volumes/kubernetes.io~empty-dir/<name>`)
//!   on a tmpfs (what kubelet makes for `medium: Memory`), or
//! * the annotation `io.veil.volume.<name>.medium` is `Memory`, `<name>` being the last
//!   component of the mount's source.
//!
//! `io.veil.volume.<name>.size-limit` (a Kubernetes quantity such as `64Mi`) sizes the
//! tmpfs: containerd drops emptyDir's `sizeLimit`, so it travels as an annotation.
//!
//! Any other bind at `/dev/shm` (the pod's shared memory, which containerd's CRI binds from a
//! host tmpfs into each of the pod's containers) becomes the pod's memory volume
//! [`POD_SHM_VOLUME`], as Kata keeps a pod's shm in the guest: what the pod's processes share
//! through it (tensors handed between a server's workers, say) stays out of the host's
//! reach, and they still share it with each other. It is as large as the host's tmpfs was.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use nix::sys::statfs::{statfs, TMPFS_MAGIC};
use oci_spec::runtime::Spec;

use veil_protocol::POD_SHM_VOLUME;

use crate::error::{Error, Result};

/// Prefix of the per-volume annotations.
pub const VOLUME_ANNOTATION_PREFIX: &str = "io.veil.volume.";
const EMPTY_DIR_MARKER: &str = "/volumes/kubernetes.io~empty-dir/";
const SHM_DESTINATION: &str = "/dev/shm";
/// containerd's size for a pod's shm, used when the host's cannot be measured.
const DEFAULT_SHM_BYTES: u64 = 64 << 20;

/// What the annotations say about one volume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct VolumeAnnotation {
    memory: bool,
    size_bytes: Option<u64>,
}

/// Parses a Kubernetes quantity (`64Mi`, `1G`, `1048576`) into bytes.
pub fn parse_quantity(text: &str) -> std::result::Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a quantity like 64Mi, 1Gi or 1048576"))?;
    let multiplier: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "{text:?} has an unknown unit {other:?}; use Ki, Mi, Gi, Ti, k, M, G or T"
            ))
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

fn volume_annotations(
    annotations: Option<&HashMap<String, String>>,
) -> Result<HashMap<String, VolumeAnnotation>> {
    let mut volumes: HashMap<String, VolumeAnnotation> = HashMap::new();
    for (key, value) in annotations.into_iter().flatten() {
        let Some(rest) = key.strip_prefix(VOLUME_ANNOTATION_PREFIX) else {
            continue;
        };
        let bad =
            |why: String| Error::InvalidArgument(format!("annotation {key}={value:?}: {why}"));
        let (name, field) = rest.rsplit_once('.').ok_or_else(|| {
            bad("expected io.veil.volume.<name>.medium or io.veil.volume.<name>.size-limit".into())
        })?;
        let entry = volumes.entry(name.to_string()).or_default();
        match field {
            "medium" if value == "Memory" => entry.memory = true,
            "medium" => return Err(bad("the only medium veil knows is Memory".into())),
            "size-limit" => entry.size_bytes = Some(parse_quantity(value).map_err(bad)?),
            other => {
                return Err(bad(format!(
                    "unknown field {other:?}; use medium or size-limit"
                )))
            }
        }
    }
    // A model is only ever delivered into guest RAM.
    if let Some(model_volume) =
        annotations.and_then(|a| a.get(super::delivery::MODEL_VOLUME_ANNOTATION))
    {
        volumes.entry(model_volume.clone()).or_default().memory = true;
    }
    Ok(volumes)
}

fn is_memory_empty_dir(source: &Path) -> bool {
    source.to_string_lossy().contains(EMPTY_DIR_MARKER)
        && statfs(source)
            .map(|s| s.filesystem_type() == TMPFS_MAGIC)
            .unwrap_or(false)
}

/// The size of the host tmpfs a pod's shm was bound from, or containerd's default.
fn shm_size(source: &Path) -> u64 {
    statfs(source)
        .ok()
        .filter(|s| s.filesystem_type() == TMPFS_MAGIC)
        .map(|s| s.blocks() * s.block_size() as u64)
        .filter(|&bytes| bytes > 0)
        .unwrap_or(DEFAULT_SHM_BYTES)
}

/// Checks the volume annotations without changing anything, so that bad input is
/// refused before a VM is started for it.
pub fn validate_annotations(annotations: Option<&HashMap<String, String>>) -> Result<()> {
    volume_annotations(annotations).map(|_| ())
}

/// The memory volume `name` as the agent must mount it (sized by its annotation), for a
/// volume the spec need not mount itself (the target of a model delivery).
pub fn memory_volume(
    annotations: Option<&HashMap<String, String>>,
    name: &str,
) -> Result<veil_protocol::MemoryVolume> {
    let annotated = volume_annotations(annotations)?;
    Ok(veil_protocol::MemoryVolume {
        name: name.to_string(),
        size_bytes: annotated.get(name).and_then(|a| a.size_bytes).unwrap_or(0),
        ..Default::default()
    })
}

/// Points every memory-volume mount of `spec` at the agent's tmpfs and returns the
/// volumes the agent must mount. Bad volume annotations are refused, naming the annotation.
pub fn take_memory_volumes(spec: &mut Spec) -> Result<Vec<veil_protocol::MemoryVolume>> {
    let annotated = volume_annotations(spec.annotations().as_ref())?;
    let Some(mut mounts) = spec.mounts().clone() else {
        return Ok(Vec::new());
    };
    let mut volumes: Vec<veil_protocol::MemoryVolume> = Vec::new();
    for mount in &mut mounts {
        let Some(source) = mount.source().clone() else {
            continue;
        };
        if !super::storage::is_bind(mount) {
            continue;
        }
        let Some(name) = source
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        let annotation = annotated.get(&name).cloned().unwrap_or_default();
        let (name, size_bytes) = if annotation.memory || is_memory_empty_dir(&source) {
            (name, annotation.size_bytes.unwrap_or(0))
        } else if mount.destination() == Path::new(SHM_DESTINATION) {
            (POD_SHM_VOLUME.to_string(), shm_size(&source))
        } else {
            continue;
        };
        mount.set_source(Some(
            PathBuf::from(veil_protocol::GUEST_VOLUMES_DIR).join(&name),
        ));
        if !volumes.iter().any(|v| v.name == name) {
            volumes.push(veil_protocol::MemoryVolume {
                name,
                size_bytes,
                ..Default::default()
            });
        }
    }
    spec.set_mounts(Some(mounts));
    Ok(volumes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).expect("spec")
    }

    #[test]
    fn quantities_follow_kubernetes() {
        assert_eq!(parse_quantity("64Mi"), Ok(64 << 20));
        assert_eq!(parse_quantity("1G"), Ok(1_000_000_000));
        assert_eq!(parse_quantity("4096"), Ok(4096));
        assert!(parse_quantity("12 parsecs").is_err());
        assert!(parse_quantity("Mi").is_err());
        assert!(parse_quantity("99999999999Ti").is_err());
    }

    #[test]
    fn annotated_bind_becomes_a_guest_tmpfs_volume() {
        let mut spec = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": {"io.veil.volume.model.medium": "Memory", "io.veil.volume.model.size-limit": "8Mi"},
            "mounts": [
                {"destination": "/model", "type": "bind", "source": "/var/lib/x/model", "options": ["rbind", "rw"]},
                {"destination": "/other", "type": "bind", "source": "/var/lib/x/other", "options": ["rbind"]},
                {"destination": "/proc", "type": "proc", "source": "proc"}
            ]
        }));
        let volumes = take_memory_volumes(&mut spec).expect("volumes");
        assert_eq!(volumes.len(), 1);
        assert_eq!(
            (volumes[0].name.as_str(), volumes[0].size_bytes),
            ("model", 8 << 20)
        );
        let mounts = spec.mounts().clone().expect("mounts");
        assert_eq!(
            mounts[0].source().as_deref(),
            Some(Path::new("/run/veil/volumes/model"))
        );
        assert_eq!(
            mounts[1].source().as_deref(),
            Some(Path::new("/var/lib/x/other"))
        );
    }

    #[test]
    fn the_model_volume_is_a_memory_volume_without_its_own_medium_annotation() {
        let mut spec = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": {"io.veil.model.volume": "weights", "io.veil.volume.weights.size-limit": "1Mi"},
            "mounts": [{"destination": "/model", "type": "bind", "source": "/var/lib/x/weights", "options": ["rbind", "ro"]}]
        }));
        let volumes = take_memory_volumes(&mut spec).expect("volumes");
        assert_eq!(volumes.len(), 1);
        assert_eq!(volumes[0].size_bytes, 1 << 20);
        let unmounted = memory_volume(spec.annotations().as_ref(), "weights").expect("volume");
        assert_eq!(
            (unmounted.name.as_str(), unmounted.size_bytes),
            ("weights", 1 << 20)
        );
    }

    #[test]
    fn bad_annotations_are_refused_by_name() {
        for (key, value, expected) in [
            ("io.veil.volume.model.medium", "Disk", "Memory"),
            ("io.veil.volume.model.size-limit", "lots", "quantity"),
            ("io.veil.volume.model.colour", "red", "unknown field"),
            ("io.veil.volume.nofield", "x", "expected"),
        ] {
            let mut spec =
                spec(serde_json::json!({"ociVersion": "1.0.2", "annotations": {key: value}}));
            let error = take_memory_volumes(&mut spec)
                .expect_err("refused")
                .to_string();
            assert!(error.contains(key) && error.contains(expected), "{error}");
        }
    }

    #[test]
    fn an_empty_dir_on_disk_is_not_a_memory_volume() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = dir
            .path()
            .join("pods/uid/volumes/kubernetes.io~empty-dir/cache");
        std::fs::create_dir_all(&source).expect("mkdir");
        let on_tmpfs = statfs(dir.path())
            .map(|s| s.filesystem_type() == TMPFS_MAGIC)
            .unwrap_or(false);
        assert_eq!(is_memory_empty_dir(&source), on_tmpfs);
    }

    #[test]
    fn the_pods_shm_becomes_a_guest_memory_volume_as_large_as_the_hosts() {
        let cri_shm = "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/0123/shm";
        let mut spec = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": {"io.veil.volume.dshm.medium": "Memory"},
            "mounts": [
                {"destination": "/dev/shm", "type": "bind", "source": cri_shm, "options": ["rbind", "rprivate", "rw"]},
                {"destination": "/dev/shm", "type": "bind", "source": "/var/lib/x/dshm", "options": ["rbind"]},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["size=65536k"]}
            ]
        }));
        let volumes = take_memory_volumes(&mut spec).expect("volumes");
        let found: Vec<(&str, u64)> = volumes
            .iter()
            .map(|v| (v.name.as_str(), v.size_bytes))
            .collect();
        assert_eq!(
            found,
            [(POD_SHM_VOLUME, DEFAULT_SHM_BYTES), ("dshm", 0)],
            "a source that cannot be measured gets containerd's size; an annotated volume keeps its name"
        );
        let sources: Vec<Option<&Path>> = spec
            .mounts()
            .iter()
            .flatten()
            .map(|m| m.source().as_deref())
            .collect();
        assert_eq!(
            sources,
            [
                Some(Path::new("/run/veil/volumes/veil.shm")),
                Some(Path::new("/run/veil/volumes/dshm")),
                Some(Path::new("shm")),
            ]
        );
    }

    #[test]
    fn the_shm_volume_takes_the_size_of_the_hosts_tmpfs() {
        let host = Path::new("/dev/shm");
        let Ok(stat) = statfs(host) else { return };
        if stat.filesystem_type() != TMPFS_MAGIC {
            return;
        }
        assert_eq!(shm_size(host), stat.blocks() * stat.block_size() as u64);
        assert!(veil_protocol::is_valid_volume_name(POD_SHM_VOLUME));
    }
}

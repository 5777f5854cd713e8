//! What the shim reads from containerd besides the task request: the runtime
//! options (`ConfigPath`) and the sandbox a container belongs to.

use std::collections::HashMap;
use std::path::PathBuf;

use containerd_shim::protos::protobuf::{well_known_types::any::Any, CodedInputStream};

/// Annotations that put containers into one sandbox (one VM), most specific first.
pub const SANDBOX_ID_ANNOTATIONS: &[&str] = &[
    "io.kubernetes.cri.sandbox-id",
    "io.containerd.veil.v2.group",
];

/// The sandbox (VM) a container belongs to: its CRI sandbox id, else its own id.
pub fn sandbox_id(annotations: Option<&HashMap<String, String>>, container_id: &str) -> String {
    annotations
        .and_then(|a| SANDBOX_ID_ANNOTATIONS.iter().find_map(|key| a.get(*key)))
        .filter(|id| !id.is_empty())
        .cloned()
        .unwrap_or_else(|| container_id.to_string())
}

/// `ConfigPath` from containerd's runtime options (`runtimeoptions.v1.Options`, the
/// type CRI and `ctr --runtime-config-path` send to non-runc runtimes), if present.
pub fn config_path(options: Option<&Any>) -> Result<Option<PathBuf>, String> {
    let Some(any) = options else {
        return Ok(None);
    };
    if !any.type_url.ends_with("runtimeoptions.v1.Options") {
        return Ok(None);
    }
    decode_config_path(&any.value)
        .map(|p| p.filter(|p| !p.is_empty()).map(PathBuf::from))
        .map_err(|e| format!("decode runtime options ({}): {e}", any.type_url))
}

/// Field 2 (`config_path`) of `runtimeoptions.v1.Options { string type_url = 1; string config_path = 2; }`.
fn decode_config_path(bytes: &[u8]) -> containerd_shim::protos::protobuf::Result<Option<String>> {
    let mut input = CodedInputStream::from_bytes(bytes);
    let mut found = None;
    while let Some(tag) = input.read_raw_tag_or_eof()? {
        let (field, wire_type) = (tag >> 3, tag & 7);
        if field == 2 && wire_type == 2 {
            found = Some(input.read_string()?);
        } else {
            input.skip_field(
                containerd_shim::protos::protobuf::rt::WireType::new(wire_type)
                    .unwrap_or(containerd_shim::protos::protobuf::rt::WireType::LengthDelimited),
            )?;
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(type_url: &str, config_path: &str) -> Vec<u8> {
        let mut bytes = vec![0x0a, type_url.len() as u8];
        bytes.extend_from_slice(type_url.as_bytes());
        bytes.push(0x12);
        bytes.push(config_path.len() as u8);
        bytes.extend_from_slice(config_path.as_bytes());
        bytes
    }

    #[test]
    fn reads_config_path_from_runtime_options() {
        let any = Any {
            type_url: "type.googleapis.com/runtimeoptions.v1.Options".into(),
            value: encoded("io.containerd.veil.v2", "/etc/veil/configuration.toml"),
            ..Default::default()
        };
        assert_eq!(
            config_path(Some(&any)).expect("decode"),
            Some(PathBuf::from("/etc/veil/configuration.toml"))
        );
    }

    #[test]
    fn other_option_types_and_absence_mean_none() {
        assert_eq!(config_path(None).expect("none"), None);
        let runc = Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: vec![1, 2, 3],
            ..Default::default()
        };
        assert_eq!(config_path(Some(&runc)).expect("ignored"), None);
    }

    #[test]
    fn garbage_options_are_an_error() {
        let any = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: vec![0x12, 0x40, b'a'],
            ..Default::default()
        };
        assert!(config_path(Some(&any)).is_err());
    }

    #[test]
    fn sandbox_id_prefers_the_cri_annotation() {
        let mut annotations = HashMap::new();
        assert_eq!(sandbox_id(Some(&annotations), "c1"), "c1");
        annotations.insert(
            "io.kubernetes.cri.sandbox-id".to_string(),
            "pod1".to_string(),
        );
        assert_eq!(sandbox_id(Some(&annotations), "c1"), "pod1");
        assert_eq!(sandbox_id(None, "c1"), "c1");
    }
}

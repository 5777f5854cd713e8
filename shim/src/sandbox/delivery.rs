//! Model delivery on the shim's side: the pod's `io.veil.model.*` annotations become the
//! agent's [`ModelDelivery`] declaration, checked before any VM starts.
//!
//! | annotation | meaning |
//! | --- | --- |
//! | `io.veil.model.source` | sealed model URL: `http(s)://`, or `file://` for a host file (shared read-only; ciphertext only) |
//! | `io.veil.model.kbs` | key broker base URL |
//! | `io.veil.model.key` | key resource at the broker: `<repository>/<type>/<tag>` |
//! | `io.veil.model.volume` | memory volume that receives the model (always guest RAM) |
//! | `io.veil.model.sha256` | expected SHA-256 of the plaintext (recommended) |
//! | `io.veil.model.path` | file (unpack none, default `model`) or directory (tar) in the volume |
//! | `io.veil.model.unpack` | `none` (default), `tar` or `tar.gz` |
//! | `io.veil.model.aad` | associated data the model was sealed with |
//! | `io.veil.model.ca` | PEM certificate(s) of a private CA that https:// URLs are verified against |
//! | `io.veil.model.exec` | `deny` (default) or `allow`: whether the node may exec into the containers that can reach the model |
//! | `io.veil.model.exec-commands` | JSON list of command lines (`[["cat", "/tmp/healthy"]]`) the node may still exec there while exec is denied (exec probes); default none |
//! | `io.veil.model.readers` | JSON list of `{"rootfs": "sha256:...", "args": [...], "env": [...], "cwd": "/"}`: the only containers that may mount the volume (rootfs digest, exact command, and optionally the environment it may have and its working directory); default any |
//!
//! URLs naming the node's loopback (`127.0.0.1`, `localhost`) are rewritten to the
//! address under which the guest's user network reaches it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use veil_protocol::delivery::Plan;
use veil_protocol::{Command, ModelDelivery, Reader};

use crate::error::{Error, Result};

/// Prefix of the model delivery annotations.
pub const MODEL_ANNOTATION_PREFIX: &str = "io.veil.model.";
/// The annotation naming the target volume.
pub const MODEL_VOLUME_ANNOTATION: &str = "io.veil.model.volume";
/// Where a `file://` source is shared, inside the sandbox's shared directory.
const SOURCE_SHARE: &str = ".model-source";

const REQUIRED: [&str; 4] = ["source", "kbs", "key", "volume"];

fn invalid(key: &str, problem: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("annotation {key}: {problem}"))
}

/// Points loopback URLs at the node as the guest sees it.
fn guest_reachable(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let host_end = rest.find([':', '/']).unwrap_or(rest.len());
    let host = &rest[..host_end];
    if host == "127.0.0.1" || host == "localhost" {
        let node = std::net::Ipv4Addr::from(veil_protocol::egress::HOST_ADDRESS);
        return format!("{scheme}://{node}{}", &rest[host_end..]);
    }
    url.to_string()
}

/// The pod's delivery declaration, or `None` when it declares none. Unknown or missing
/// fields and malformed values are refused, naming the annotation.
pub fn declaration(annotations: Option<&HashMap<String, String>>) -> Result<Option<ModelDelivery>> {
    let mut fields: HashMap<&str, &str> = HashMap::new();
    for (key, value) in annotations.into_iter().flatten() {
        let Some(field) = key.strip_prefix(MODEL_ANNOTATION_PREFIX) else {
            continue;
        };
        let known = [
            "source",
            "kbs",
            "key",
            "volume",
            "sha256",
            "path",
            "unpack",
            "aad",
            "ca",
            "exec",
            "exec-commands",
            "readers",
        ];
        if !known.contains(&field) {
            return Err(invalid(
                key,
                format!("unknown field; use one of {}", known.join(", ")),
            ));
        }
        fields.insert(field, value.as_str());
    }
    if fields.is_empty() {
        return Ok(None);
    }
    for field in REQUIRED {
        if fields.get(field).is_none_or(|v| v.is_empty()) {
            return Err(invalid(
                &format!("{MODEL_ANNOTATION_PREFIX}{field}"),
                "required for a model delivery (needs source, kbs, key and volume)",
            ));
        }
    }
    let get = |field: &str| fields.get(field).copied().unwrap_or_default().to_string();
    let source = get("source");
    let declaration = ModelDelivery {
        volume: get("volume"),
        path: get("path"),
        source_url: if source.starts_with("file://") {
            source
        } else {
            guest_reachable(&source)
        },
        kbs_url: guest_reachable(&get("kbs")),
        key_resource: get("key"),
        sha256: get("sha256").to_ascii_lowercase(),
        unpack: get("unpack"),
        associated_data: get("aad").into_bytes(),
        trusted_ca_pem: get("ca"),
        exec: get("exec"),
        readers: parse_readers(&get("readers"))?,
        exec_commands: parse_exec_commands(&get("exec-commands"))?,
        ..Default::default()
    };
    // The plan's field names are the annotations' suffixes.
    Plan::parse(&declaration)
        .map_err(|e| invalid(&format!("{MODEL_ANNOTATION_PREFIX}{}", e.field), e.problem))?;
    if !veil_protocol::is_valid_volume_name(&declaration.volume) {
        return Err(invalid(
            MODEL_VOLUME_ANNOTATION,
            "must be 1-63 characters of a-z, 0-9, '-' or '.'",
        ));
    }
    Ok(Some(declaration))
}

/// One approved reader as the annotation writes it.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReaderAnnotation {
    rootfs: String,
    args: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    cwd: String,
}

/// The `readers` annotation: a JSON list (empty text: none). The plan checks the values.
fn parse_readers(text: &str) -> Result<Vec<Reader>> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let readers: Vec<ReaderAnnotation> = serde_json::from_str(text).map_err(|e| {
        invalid(
            "io.veil.model.readers",
            format!("{e}; write a JSON list such as [{{\"rootfs\": \"sha256:<64 hex>\", \"args\": [\"/bin/server\", \"--model\", \"/model\"]}}]"),
        )
    })?;
    Ok(readers
        .into_iter()
        .map(|r| Reader {
            rootfs: r.rootfs,
            args: r.args,
            env: r.env,
            cwd: r.cwd,
            ..Default::default()
        })
        .collect())
}

/// The `exec-commands` annotation: a JSON list of command lines (empty text: none). The
/// plan checks the values.
fn parse_exec_commands(text: &str) -> Result<Vec<Command>> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let commands: Vec<Vec<String>> = serde_json::from_str(text).map_err(|e| {
        invalid(
            "io.veil.model.exec-commands",
            format!(
                "{e}; write a JSON list of command lines, such as [[\"cat\", \"/tmp/healthy\"]]"
            ),
        )
    })?;
    Ok(commands
        .into_iter()
        .map(|args| Command {
            args,
            ..Default::default()
        })
        .collect())
}

/// The file name a `file://` source is shared under, or `None` for another source.
fn file_source_name(declaration: &ModelDelivery) -> Result<Option<(PathBuf, String)>> {
    let Some(host_path) = declaration.source_url.strip_prefix("file://") else {
        return Ok(None);
    };
    let host_path = PathBuf::from(host_path);
    let name = host_path
        .file_name()
        .ok_or_else(|| invalid("io.veil.model.source", "a file:// URL must name a file"))?
        .to_string_lossy()
        .into_owned();
    Ok(Some((host_path, name)))
}

fn guest_file_url(name: &str) -> String {
    format!(
        "file://{}/{SOURCE_SHARE}/{name}",
        veil_protocol::GUEST_SHARED_DIR
    )
}

/// The declaration exactly as the agent will receive it (a `file://` source pointing at
/// its share in the guest), so that its digest is the one the agent computes.
pub fn as_the_guest_receives_it(declaration: &ModelDelivery) -> Result<ModelDelivery> {
    let mut guest_view = declaration.clone();
    if let Some((_, name)) = file_source_name(declaration)? {
        guest_view.source_url = guest_file_url(&name);
    }
    Ok(guest_view)
}

/// The SEV-SNP `host_data` of a pod: the digest of its delivery declaration as the agent
/// receives it (`veil_protocol::delivery::declaration_digest_bytes`, the function the
/// agent's `Plan` uses), or all zero for a pod without a delivery.
pub fn host_data(declaration: Option<&ModelDelivery>) -> Result<[u8; 32]> {
    match declaration {
        None => Ok(crate::hypervisor::snp::NO_DELIVERY_HOST_DATA),
        Some(declaration) => Ok(veil_protocol::delivery::declaration_digest_bytes(
            &as_the_guest_receives_it(declaration)?,
        )),
    }
}

/// For a `file://` source, shares the host file read-only into the sandbox's shared
/// directory (once per sandbox) and points the declaration at the guest's view of it.
pub fn share_file_source(shared_dir: &Path, declaration: &mut ModelDelivery) -> Result<()> {
    let Some((host_path, name)) = file_source_name(declaration)? else {
        return Ok(());
    };
    let dir = shared_dir.join(SOURCE_SHARE);
    let target = dir.join(&name);
    if !target.exists() {
        let meta = std::fs::metadata(&host_path).map_err(|e| {
            invalid(
                "io.veil.model.source",
                format!("{}: {e}", host_path.display()),
            )
        })?;
        if !meta.is_file() {
            return Err(invalid(
                "io.veil.model.source",
                format!("{} is not a regular file", host_path.display()),
            ));
        }
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("create {}", dir.display())))?;
        std::fs::File::create(&target)
            .map_err(Error::io(format!("create {}", target.display())))?;
        bind_read_only(&host_path, &target)?;
    }
    declaration.source_url = guest_file_url(&name);
    Ok(())
}

fn bind_read_only(source: &Path, target: &Path) -> Result<()> {
    let error = |e: nix::errno::Errno| Error::Io {
        what: format!(
            "bind {} read-only to {}",
            source.display(),
            target.display()
        ),
        source: e.into(),
    };
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(error)?;
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (format!("{MODEL_ANNOTATION_PREFIX}{k}"), v.to_string()))
            .collect()
    }

    fn full() -> Vec<(&'static str, &'static str)> {
        vec![
            ("source", "http://127.0.0.1:8000/model.sealed"),
            ("kbs", "http://localhost:8080"),
            ("key", "models/key/demo"),
            ("volume", "model"),
            ("sha256", "AB"),
        ]
    }

    #[test]
    fn no_model_annotation_means_no_delivery() {
        let other = HashMap::from([("io.veil.volume.x.medium".to_string(), "Memory".to_string())]);
        assert_eq!(declaration(Some(&other)).expect("ok"), None);
        assert_eq!(declaration(None).expect("ok"), None);
    }

    #[test]
    fn loopback_urls_point_at_the_node_as_the_guest_sees_it() {
        let mut pairs = full();
        pairs.retain(|(k, _)| *k != "sha256");
        let delivery = declaration(Some(&annotations(&pairs)))
            .expect("ok")
            .expect("declared");
        assert_eq!(delivery.source_url, "http://10.0.2.2:8000/model.sealed");
        assert_eq!(delivery.kbs_url, "http://10.0.2.2:8080");
        assert_eq!(
            guest_reachable("https://models.example/m"),
            "https://models.example/m"
        );
        assert_eq!(guest_reachable("http://localhost/m"), "http://10.0.2.2/m");
    }

    #[test]
    fn bad_annotations_are_refused_by_name() {
        let mut unknown = full();
        unknown.push(("colour", "red"));
        let error = declaration(Some(&annotations(&unknown)))
            .expect_err("unknown")
            .to_string();
        assert!(error.contains("io.veil.model.colour"), "{error}");

        let mut missing = full();
        missing.retain(|(k, _)| *k != "kbs");
        let error = declaration(Some(&annotations(&missing)))
            .expect_err("missing")
            .to_string();
        assert!(
            error.contains("io.veil.model.kbs") && error.contains("required"),
            "{error}"
        );

        let error = declaration(Some(&annotations(&full())))
            .expect_err("short digest")
            .to_string();
        assert!(
            error.contains("io.veil.model.sha256") && error.contains("64 hex"),
            "{error}"
        );

        let mut bad_volume = full();
        bad_volume.retain(|(k, _)| *k != "sha256");
        bad_volume.retain(|(k, _)| *k != "volume");
        bad_volume.push(("volume", "Model_Dir"));
        let error = declaration(Some(&annotations(&bad_volume)))
            .expect_err("volume")
            .to_string();
        assert!(error.contains("io.veil.model.volume"), "{error}");
    }

    #[test]
    fn a_private_ca_is_passed_on_and_a_non_certificate_refused_by_name() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let mut pairs = full();
        pairs.retain(|(k, _)| *k != "sha256");
        pairs.push(("ca", pem));
        let delivery = declaration(Some(&annotations(&pairs)))
            .expect("ok")
            .expect("declared");
        assert_eq!(delivery.trusted_ca_pem, pem);
        pairs.retain(|(k, _)| *k != "ca");
        pairs.push(("ca", "my-ca.crt"));
        let error = declaration(Some(&annotations(&pairs)))
            .expect_err("not PEM")
            .to_string();
        assert!(error.contains("io.veil.model.ca"), "{error}");
    }

    #[test]
    fn the_exec_policy_is_passed_on_and_a_misspelling_refused_by_name() {
        let mut pairs = full();
        pairs.retain(|(k, _)| *k != "sha256");
        pairs.push(("exec", "allow"));
        let delivery = declaration(Some(&annotations(&pairs)))
            .expect("ok")
            .expect("declared");
        assert_eq!(delivery.exec, "allow");
        pairs.retain(|(k, _)| *k != "exec");
        pairs.push(("exec", "true"));
        let error = declaration(Some(&annotations(&pairs)))
            .expect_err("misspelt")
            .to_string();
        assert!(
            error.contains("io.veil.model.exec") && error.contains("deny"),
            "{error}"
        );
    }

    #[test]
    fn readers_are_passed_on_and_malformed_ones_refused_by_name() {
        let mut pairs: Vec<(&str, &str)> = full();
        pairs.retain(|(k, _)| *k != "sha256");
        let digest = format!("sha256:{}", "ab".repeat(32));
        let json = format!(
            r#"[{{"rootfs": "{digest}", "args": ["server", "--model", "/model"], "env": ["PATH=/bin", "KUBERNETES_*"], "cwd": "/srv"}}]"#
        );
        pairs.push(("readers", &json));
        let delivery = declaration(Some(&annotations(&pairs)))
            .expect("ok")
            .expect("declared");
        assert_eq!(delivery.readers.len(), 1);
        assert_eq!(delivery.readers[0].rootfs, digest);
        assert_eq!(delivery.readers[0].args, ["server", "--model", "/model"]);
        assert_eq!(delivery.readers[0].env, ["PATH=/bin", "KUBERNETES_*"]);
        assert_eq!(delivery.readers[0].cwd, "/srv");
        let malformed = [
            r#"{"rootfs": "x"}"#.to_string(),
            r#"[{"rootfs": "sha256:ab", "args": ["server"]}]"#.to_string(),
            format!(r#"[{{"rootfs": "{digest}", "args": ["s"], "user": "0"}}]"#),
            format!(r#"[{{"rootfs": "{digest}", "args": ["s"], "env": ["*"]}}]"#),
            format!(r#"[{{"rootfs": "{digest}", "args": []}}]"#),
        ];
        for json in &malformed {
            pairs.retain(|(k, _)| *k != "readers");
            pairs.push(("readers", json));
            let error = declaration(Some(&annotations(&pairs)))
                .expect_err(json)
                .to_string();
            assert!(error.contains("io.veil.model.readers"), "{json}: {error}");
        }
    }

    #[test]
    fn exec_commands_are_passed_on_and_malformed_ones_refused_by_name() {
        let mut pairs: Vec<(&str, &str)> = full();
        pairs.retain(|(k, _)| *k != "sha256");
        pairs.push(("exec-commands", r#"[["cat", "/tmp/healthy"], ["true"]]"#));
        let delivery = declaration(Some(&annotations(&pairs)))
            .expect("ok")
            .expect("declared");
        assert_eq!(delivery.exec_commands.len(), 2);
        assert_eq!(delivery.exec_commands[0].args, ["cat", "/tmp/healthy"]);
        for json in [r#"["cat /tmp/healthy"]"#, "[[]]", r#"[[""]]"#] {
            pairs.retain(|(k, _)| *k != "exec-commands");
            pairs.push(("exec-commands", json));
            let error = declaration(Some(&annotations(&pairs)))
                .expect_err(json)
                .to_string();
            assert!(
                error.contains("io.veil.model.exec-commands"),
                "{json}: {error}"
            );
        }
        pairs.retain(|(k, _)| *k != "exec-commands");
        pairs.extend([("exec-commands", r#"[["true"]]"#), ("exec", "allow")]);
        let error = declaration(Some(&annotations(&pairs)))
            .expect_err("exec allow with commands")
            .to_string();
        assert!(error.contains("remove one of the two"), "{error}");
    }

    fn to_hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn host_data_is_the_digest_the_agents_plan_computes() {
        let mut pairs = full();
        pairs.retain(|(k, _)| *k != "sha256");
        let delivery = declaration(Some(&annotations(&pairs)))
            .expect("ok")
            .expect("declared");
        let plan = Plan::parse(&delivery).expect("plan");
        assert_eq!(
            to_hex(&host_data(Some(&delivery)).expect("digest")),
            plan.declaration_digest
        );
        assert_eq!(host_data(None).expect("none"), [0; 32]);
    }

    #[test]
    fn a_file_source_is_digested_as_the_guest_sees_it() {
        let host_file = tempfile::NamedTempFile::new().expect("file");
        let delivery = ModelDelivery {
            volume: "model".into(),
            source_url: format!("file://{}", host_file.path().display()),
            kbs_url: "http://10.0.2.2:8080".into(),
            key_resource: "models/key/demo".into(),
            ..Default::default()
        };
        let guest_view = as_the_guest_receives_it(&delivery).expect("guest view");
        assert!(
            guest_view.source_url.starts_with(&format!(
                "file://{}/{SOURCE_SHARE}/",
                veil_protocol::GUEST_SHARED_DIR
            )),
            "{}",
            guest_view.source_url
        );
        // What the agent gets after the share is what the digest was computed over.
        let name = host_file.path().file_name().expect("name");
        assert_eq!(
            guest_view.source_url,
            guest_file_url(&name.to_string_lossy())
        );
        assert_eq!(
            to_hex(&host_data(Some(&delivery)).expect("digest")),
            Plan::parse(&guest_view).expect("plan").declaration_digest
        );
    }

    #[test]
    fn a_missing_file_source_is_named() {
        let shared = tempfile::tempdir().expect("tempdir");
        let mut delivery = ModelDelivery {
            source_url: "file:///nonexistent/model.sealed".into(),
            ..Default::default()
        };
        let error = share_file_source(shared.path(), &mut delivery)
            .expect_err("missing")
            .to_string();
        assert!(error.contains("/nonexistent/model.sealed"), "{error}");
    }
}

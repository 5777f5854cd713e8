//! `veil host-data`: the SEV-SNP `host_data` a pod's model delivery is launched with,
//! printed as the broker policy condition that pins it.
//!
//! The shim launches a delivering pod's VM with the digest of its delivery declaration as
//! `host_data`, and the guest checks it in its report before asking for a key. A model owner
//! who pins the digest in the key's policy refuses the key to a pod whose node changed any
//! part of the declaration: another store, broker, digest, or exec allowed
//! (`io.veil.model.exec`). The digest is computed by the shim's own functions, from the pod's
//! `io.veil.model.*` annotations exactly as the node would pass them.

use std::collections::HashMap;

use anyhow::{bail, Context};
use clap::Args;

/// Arguments of `veil host-data`.
#[derive(Debug, Args)]
pub struct HostDataArgs {
    /// A pod annotation, `io.veil.model.<field>=<value>`; repeat for each (source, kbs,
    /// key, volume, and the optional sha256, path, unpack, aad, ca, exec).
    #[arg(long = "annotation", value_name = "KEY=VALUE", required = true)]
    annotations: Vec<String>,
    /// Print the digest and the condition as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `veil host-data`.
pub fn run(args: HostDataArgs) -> anyhow::Result<()> {
    let annotations = parse_annotations(&args.annotations)?;
    let host_data = host_data_of(&annotations)?;
    let text = if args.json {
        serde_json::to_string_pretty(&serde_json::json!({
            "host_data": host_data,
            "condition": condition(&host_data),
        }))?
    } else {
        condition(&host_data)
    };
    crate::doctor::write_stdout(&format!("{text}\n"))
}

fn parse_annotations(pairs: &[String]) -> anyhow::Result<HashMap<String, String>> {
    pairs
        .iter()
        .map(|pair| {
            let (key, value) = pair.split_once('=').with_context(|| {
                format!("--annotation {pair:?}: expected KEY=VALUE, e.g. io.veil.model.exec=deny")
            })?;
            if !key.starts_with(veil_shim::sandbox::delivery::MODEL_ANNOTATION_PREFIX) {
                bail!(
                    "--annotation {key}: only io.veil.model.* annotations make up the declaration"
                );
            }
            Ok((key.to_string(), value.to_string()))
        })
        .collect()
}

/// The hex `host_data` of the pod whose annotations are `annotations`.
fn host_data_of(annotations: &HashMap<String, String>) -> anyhow::Result<String> {
    use veil_shim::sandbox::delivery::{declaration, host_data};
    let declared = declaration(Some(annotations))?.context(
        "no model delivery declared: give at least io.veil.model.source, kbs, key and volume",
    )?;
    Ok(hex::encode(host_data(Some(&declared))?))
}

fn condition(host_data: &str) -> String {
    format!("claims.host_data == '{host_data}'")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(extra: &[&str]) -> Vec<String> {
        [
            "io.veil.model.source=http://127.0.0.1:8000/model.sealed",
            "io.veil.model.kbs=http://127.0.0.1:8080",
            "io.veil.model.key=models/key/demo",
            "io.veil.model.volume=model",
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
    }

    fn digest(extra: &[&str]) -> anyhow::Result<String> {
        host_data_of(&parse_annotations(&pairs(extra))?)
    }

    #[test]
    fn the_digest_is_what_the_agent_finds_for_the_declaration_it_receives() {
        let guest_view = veil_protocol::ModelDelivery {
            volume: "model".into(),
            source_url: "http://10.0.2.2:8000/model.sealed".into(),
            kbs_url: "http://10.0.2.2:8080".into(),
            key_resource: "models/key/demo".into(),
            ..Default::default()
        };
        let plan = veil_protocol::delivery::Plan::parse(&guest_view).expect("plan");
        assert_eq!(digest(&[]).expect("digest"), plan.declaration_digest);
    }

    #[test]
    fn allowing_exec_changes_the_digest_and_denying_it_does_not() {
        let default = digest(&[]).expect("default");
        assert_eq!(digest(&["io.veil.model.exec=deny"]).expect("deny"), default);
        assert_ne!(
            digest(&["io.veil.model.exec=allow"]).expect("allow"),
            default
        );
        assert_eq!(
            condition(&default),
            format!("claims.host_data == '{default}'")
        );
    }

    #[test]
    fn bad_annotations_are_refused_by_name() {
        let error = digest(&["io.veil.model.exec=sometimes"]).expect_err("bad value");
        assert!(
            error.to_string().contains("io.veil.model.exec"),
            "{error:#}"
        );
        let error = parse_annotations(&["io.veil.model.exec".into()]).expect_err("no =");
        assert!(error.to_string().contains("KEY=VALUE"), "{error:#}");
        let error = parse_annotations(&["app=web".into()]).expect_err("not a model field");
        assert!(error.to_string().contains("io.veil.model."), "{error:#}");
    }
}

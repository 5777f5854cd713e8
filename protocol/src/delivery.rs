//! A model delivery declaration ([`ModelDelivery`]) checked into a [`Plan`]: the shim
//! checks it before any VM starts (so bad annotations are refused early) and the agent
//! checks it again before running it (the agent trusts nothing from the host).
//!
//! The declaration comes from the host (pod annotations), which is not trusted with the
//! model but is trusted to say where to find it: a wrong URL, key or digest can only make
//! the delivery fail, because the key is released only to an attested guest and the
//! plaintext must match the owner's digest.

use std::path::{Component, Path, PathBuf};

use crate::rootfs::{format_digest, parse_digest};
use crate::{Command, ModelDelivery, Reader};
use sha2::{Digest, Sha256};

/// Where the sealed model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An `http://` or `https://` URL.
    Http(String),
    /// A file in the guest (shared from the host: ciphertext only).
    File(PathBuf),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Http(url) => f.write_str(url),
            Source::File(path) => write!(f, "file://{}", path.display()),
        }
    }
}

/// How the decrypted model is laid out in the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unpack {
    /// The plaintext is the model file itself.
    None,
    /// The plaintext is a tar archive.
    Tar,
    /// The plaintext is a gzip-compressed tar archive.
    TarGz,
}

/// Whether the node may exec into the containers that can reach the delivered model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExecPolicy {
    /// Refused (the default): a process the node starts there could read the model.
    #[default]
    Deny,
    /// The model owner allows it (the declaration, and so SNP's `host_data`, says so).
    Allow,
}

/// A container the model owner approves to read the model: it may mount the volume only
/// when its rootfs has this digest and its process these args.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovedReader {
    /// The digest of its rootfs ([`crate::rootfs::digest_tree`]).
    pub rootfs: [u8; 32],
    /// Its process's args, exactly.
    pub args: Vec<String>,
    /// When not empty, what its environment may hold: `NAME=VALUE` exactly, `NAME` with any
    /// value, `PREFIX*` any variable whose name starts so.
    pub env: Vec<String>,
    /// When given, its working directory, exactly.
    pub cwd: Option<PathBuf>,
}

impl ApprovedReader {
    /// The first variable of `env` (as `NAME=VALUE` entries) the reader's environment rules
    /// do not allow, by name; `None` when all are allowed or the reader has no rules.
    pub fn unapproved_variable<'a>(&self, env: &'a [String]) -> Option<&'a str> {
        if self.env.is_empty() {
            return None;
        }
        env.iter()
            .find(|entry| !self.env.iter().any(|rule| env_rule_allows(rule, entry)))
            .map(|entry| variable_name(entry))
    }
}

/// The name of an environment entry (`NAME=VALUE`, or a bare `NAME`).
pub fn variable_name(entry: &str) -> &str {
    entry.split('=').next().unwrap_or(entry)
}

fn env_rule_allows(rule: &str, entry: &str) -> bool {
    let name = variable_name(entry);
    if rule.contains('=') {
        rule == entry
    } else if let Some(prefix) = rule.strip_suffix('*') {
        name.starts_with(prefix)
    } else {
        rule == name
    }
}

impl std::fmt::Display for ApprovedReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} running {:?}", format_digest(&self.rootfs), self.args)?;
        if !self.env.is_empty() {
            write!(f, " with environment {:?}", self.env)?;
        }
        if let Some(cwd) = &self.cwd {
            write!(f, " in {}", cwd.display())?;
        }
        Ok(())
    }
}

/// A checked delivery declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Target memory volume.
    pub volume: String,
    /// Path relative to the volume's root (file for `Unpack::None`, directory otherwise).
    pub path: PathBuf,
    /// The sealed model.
    pub source: Source,
    /// Key broker base URL.
    pub kbs_url: String,
    /// `<repository>/<type>/<tag>` at the broker.
    pub key_resource: String,
    /// Expected plaintext digest.
    pub sha256: Option<[u8; 32]>,
    /// Layout.
    pub unpack: Unpack,
    /// Associated data of the seal.
    pub associated_data: Vec<u8>,
    /// SHA-256 over the declaration (what the shim measures into SNP `host_data`, and what the
    /// `sample` attester reports as its host data), hex.
    pub declaration_digest: String,
    /// The same digest as bytes: the SNP `host_data` the shim launches this pod's VM with,
    /// which the guest checks in its attestation report before asking for a key.
    pub host_data: [u8; 32],
    /// PEM certificates to verify https:// URLs against instead of the WebPKI roots.
    pub trusted_ca_pem: Option<String>,
    /// Whether the node may exec into the containers that can reach the model.
    pub exec: ExecPolicy,
    /// The only containers that may mount the volume; empty: any container.
    pub readers: Vec<ApprovedReader>,
    /// While exec is denied, the command lines that may still be exec'd, exactly.
    pub exec_commands: Vec<Vec<String>>,
}

/// The declaration is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("model delivery declaration: {field}: {problem}")]
pub struct PlanError {
    /// The field (named as its annotation suffix).
    pub field: &'static str,
    /// What is wrong and what is expected.
    pub problem: String,
}

fn bad(field: &'static str, problem: impl Into<String>) -> PlanError {
    PlanError {
        field,
        problem: problem.into(),
    }
}

fn parse_source(url: &str) -> Result<Source, PlanError> {
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(bad(
                "source",
                format!("{url:?}: file URLs need an absolute path"),
            ));
        }
        return Ok(Source::File(PathBuf::from(path)));
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(Source::Http(url.to_string()));
    }
    Err(bad(
        "source",
        format!("{url:?}: use an http://, https:// or file:// URL"),
    ))
}

fn parse_relative_path(text: &str, unpack: Unpack) -> Result<PathBuf, PlanError> {
    let default = match unpack {
        Unpack::None => "model",
        Unpack::Tar | Unpack::TarGz => "",
    };
    let text = if text.is_empty() { default } else { text };
    let path = Path::new(text.trim_start_matches('/'));
    if path
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(bad(
            "path",
            format!("{text:?} must stay inside the volume (no '..')"),
        ));
    }
    if unpack == Unpack::None && path.as_os_str().is_empty() {
        return Err(bad("path", "unpack none needs a file name"));
    }
    Ok(path.to_path_buf())
}

fn parse_unpack(text: &str) -> Result<Unpack, PlanError> {
    match text {
        "" | "none" => Ok(Unpack::None),
        "tar" => Ok(Unpack::Tar),
        "tar.gz" | "tgz" => Ok(Unpack::TarGz),
        other => Err(bad("unpack", format!("{other:?}: use none, tar or tar.gz"))),
    }
}

fn parse_exec(text: &str) -> Result<ExecPolicy, PlanError> {
    match text {
        "" | "deny" => Ok(ExecPolicy::Deny),
        "allow" => Ok(ExecPolicy::Allow),
        other => Err(bad(
            "exec",
            format!("{other:?}: use deny (the default) or allow"),
        )),
    }
}

fn parse_exec_commands(
    commands: &[Command],
    exec: ExecPolicy,
) -> Result<Vec<Vec<String>>, PlanError> {
    if !commands.is_empty() && exec == ExecPolicy::Allow {
        return Err(bad(
            "exec-commands",
            "it lists the commands a denied exec still lets through, but exec is allow, which lets every command through; remove one of the two",
        ));
    }
    commands
        .iter()
        .enumerate()
        .map(|(index, command)| {
            if command.args.is_empty() || command.args[0].is_empty() {
                return Err(bad(
                    "exec-commands",
                    format!("command {index} has no program; give each as the exec's args, e.g. [\"cat\", \"/tmp/healthy\"]"),
                ));
            }
            Ok(command.args.clone())
        })
        .collect()
}

fn parse_readers(readers: &[Reader]) -> Result<Vec<ApprovedReader>, PlanError> {
    readers
        .iter()
        .enumerate()
        .map(|(index, reader)| {
            let rootfs = parse_digest(&reader.rootfs).ok_or_else(|| {
                bad(
                    "readers",
                    format!(
                        "reader {index}: rootfs {:?} is not sha256:<64 hex digits>; veil rootfs digest DIR prints it for an unpacked image",
                        reader.rootfs
                    ),
                )
            })?;
            if reader.args.is_empty() {
                return Err(bad(
                    "readers",
                    format!("reader {index}: args is empty; give the container's command exactly as it runs (entrypoint and arguments)"),
                ));
            }
            if let Some(rule) = reader.env.iter().find(|rule| !is_env_rule(rule)) {
                return Err(bad(
                    "readers",
                    format!("reader {index}: env entry {rule:?} is not NAME=VALUE, NAME or PREFIX*"),
                ));
            }
            if !reader.cwd.is_empty() && !reader.cwd.starts_with('/') {
                return Err(bad(
                    "readers",
                    format!("reader {index}: cwd {:?} is not an absolute path", reader.cwd),
                ));
            }
            Ok(ApprovedReader {
                rootfs,
                args: reader.args.clone(),
                env: reader.env.clone(),
                cwd: (!reader.cwd.is_empty()).then(|| PathBuf::from(&reader.cwd)),
            })
        })
        .collect()
}

fn is_env_rule(rule: &str) -> bool {
    let name = variable_name(rule);
    let name = if rule.contains('=') {
        name
    } else {
        name.strip_suffix('*').unwrap_or(name)
    };
    !name.is_empty() && !name.contains('*') && !name.contains(char::is_whitespace)
}

fn parse_sha256(text: &str) -> Result<Option<[u8; 32]>, PlanError> {
    if text.is_empty() {
        return Ok(None);
    }
    let mut digest = [0u8; 32];
    match hex::decode_to_slice(text, &mut digest) {
        Ok(()) if text.len() == 64 => Ok(Some(digest)),
        _ => Err(bad("sha256", format!("{text:?} is not 64 hex digits"))),
    }
}

fn check_key_resource(path: &str) -> Result<(), PlanError> {
    let segments: Vec<&str> = path.split('/').collect();
    if segments.len() != 3 || segments.iter().any(|s| s.is_empty()) {
        return Err(bad(
            "key",
            format!("{path:?}: expected <repository>/<type>/<tag>, e.g. models/key/llama"),
        ));
    }
    Ok(())
}

fn check_kbs_url(url: &str) -> Result<(), PlanError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(bad(
            "kbs",
            format!("{url:?}: use the broker's http:// or https:// base URL"),
        ))
    }
}

/// Digest over every field of the declaration, each length-prefixed so that no two
/// declarations share one, as hex (the form [`Plan::declaration_digest`] holds).
pub fn declaration_digest(delivery: &ModelDelivery) -> String {
    hex::encode(declaration_digest_bytes(delivery))
}

/// [`declaration_digest`] as the 32 bytes the shim launches an SEV-SNP guest with as its
/// `host_data` and the guest finds again in its attestation report. One function for both
/// sides, so that they cannot drift apart.
pub fn declaration_digest_bytes(delivery: &ModelDelivery) -> [u8; 32] {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    };
    for bytes in [
        delivery.volume.as_bytes(),
        delivery.path.as_bytes(),
        delivery.source_url.as_bytes(),
        delivery.kbs_url.as_bytes(),
        delivery.key_resource.as_bytes(),
        delivery.sha256.as_bytes(),
        delivery.unpack.as_bytes(),
        &delivery.associated_data,
    ] {
        field(bytes);
    }
    // Only when given, so that the digests of declarations without one stay what they were.
    if !delivery.trusted_ca_pem.is_empty() {
        field(delivery.trusted_ca_pem.as_bytes());
    }
    // The same rule: a declaration that denies exec (the default, however spelled) keeps
    // its digest, and one that allows it gets another, which a broker policy can refuse.
    if delivery.exec == "allow" {
        field(EXEC_ALLOWED);
    }
    // Where one argument ends is part of a command line, so each goes in as a field.
    fn command(field: &mut dyn FnMut(&[u8]), args: &[String]) {
        field(&(args.len() as u64).to_be_bytes());
        for arg in args {
            field(arg.as_bytes());
        }
    }
    if !delivery.readers.is_empty() {
        field(READERS_TAG);
        field(&(delivery.readers.len() as u64).to_be_bytes());
        for reader in &delivery.readers {
            field(reader.rootfs.as_bytes());
            command(&mut field, &reader.args);
            if !reader.env.is_empty() {
                field(ENV_TAG);
                command(&mut field, &reader.env);
            }
            if !reader.cwd.is_empty() {
                field(CWD_TAG);
                field(reader.cwd.as_bytes());
            }
        }
    }
    if !delivery.exec_commands.is_empty() {
        field(EXEC_COMMANDS_TAG);
        field(&(delivery.exec_commands.len() as u64).to_be_bytes());
        for exec in &delivery.exec_commands {
            command(&mut field, &exec.args);
        }
    }
    hasher.finalize().into()
}

/// What the digest of a declaration that allows exec covers in addition.
const EXEC_ALLOWED: &[u8] = b"exec=allow";
/// Starts the approved readers in the digest of a declaration that lists them.
const READERS_TAG: &[u8] = b"readers";
/// Starts a reader's environment rules in the digest of a declaration that gives them.
const ENV_TAG: &[u8] = b"env";
/// Starts a reader's working directory in the digest of a declaration that gives it.
const CWD_TAG: &[u8] = b"cwd";
/// Starts the exec commands in the digest of a declaration that lists them.
const EXEC_COMMANDS_TAG: &[u8] = b"exec-commands";

/// The PEM marker every certificate starts with.
const PEM_CERTIFICATE: &str = "-----BEGIN CERTIFICATE-----";

/// A trusted CA, when given, is PEM text with at least one certificate (the agent parses it).
fn check_trusted_ca(pem: &str) -> Result<(), PlanError> {
    if pem.is_empty() || pem.contains(PEM_CERTIFICATE) {
        return Ok(());
    }
    Err(bad(
        "ca",
        format!("not a PEM certificate: give the CA's certificate as PEM text (starting with {PEM_CERTIFICATE})"),
    ))
}

impl Plan {
    /// Checks a declaration.
    pub fn parse(delivery: &ModelDelivery) -> Result<Plan, PlanError> {
        if delivery.volume.is_empty() {
            return Err(bad(
                "volume",
                "name the memory volume that receives the model",
            ));
        }
        let unpack = parse_unpack(&delivery.unpack)?;
        let exec = parse_exec(&delivery.exec)?;
        check_kbs_url(&delivery.kbs_url)?;
        check_trusted_ca(&delivery.trusted_ca_pem)?;
        check_key_resource(&delivery.key_resource)?;
        Ok(Plan {
            volume: delivery.volume.clone(),
            path: parse_relative_path(&delivery.path, unpack)?,
            source: parse_source(&delivery.source_url)?,
            kbs_url: delivery.kbs_url.clone(),
            key_resource: delivery.key_resource.clone(),
            sha256: parse_sha256(&delivery.sha256)?,
            unpack,
            associated_data: delivery.associated_data.clone(),
            declaration_digest: declaration_digest(delivery),
            host_data: declaration_digest_bytes(delivery),
            trusted_ca_pem: (!delivery.trusted_ca_pem.is_empty())
                .then(|| delivery.trusted_ca_pem.clone()),
            exec,
            readers: parse_readers(&delivery.readers)?,
            exec_commands: parse_exec_commands(&delivery.exec_commands, exec)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declaration() -> ModelDelivery {
        ModelDelivery {
            volume: "model".into(),
            path: "".into(),
            source_url: "http://10.0.2.2:8000/model.sealed".into(),
            kbs_url: "http://10.0.2.2:8080".into(),
            key_resource: "models/key/demo".into(),
            sha256: "ab".repeat(32),
            unpack: "".into(),
            associated_data: b"demo".to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn a_full_declaration_parses_with_defaults() {
        let plan = Plan::parse(&declaration()).expect("plan");
        assert_eq!(plan.path, PathBuf::from("model"));
        assert_eq!(plan.unpack, Unpack::None);
        assert_eq!(plan.sha256, Some([0xab; 32]));
        assert!(matches!(plan.source, Source::Http(_)));
        assert_eq!(plan.declaration_digest.len(), 64);
    }

    #[test]
    fn each_bad_field_is_named() {
        type Breakage = fn(&mut ModelDelivery);
        let cases: [(Breakage, &str); 13] = [
            (|d| d.volume.clear(), "volume"),
            (|d| d.source_url = "ftp://x/y".into(), "source"),
            (|d| d.kbs_url = "kbs.example".into(), "kbs"),
            (|d| d.key_resource = "models/key".into(), "key"),
            (|d| d.sha256 = "xyz".into(), "sha256"),
            (|d| d.unpack = "zip".into(), "unpack"),
            (|d| d.path = "../etc/passwd".into(), "path"),
            (|d| d.trusted_ca_pem = "not a certificate".into(), "ca"),
            (|d| d.exec = "yes".into(), "exec"),
            (
                |d| d.readers = vec![reader("sha256:ab", &["serve"])],
                "readers",
            ),
            (
                |d| d.readers = vec![reader(&digest_text(1), &[])],
                "readers",
            ),
            (|d| d.exec_commands = vec![command(&[])], "exec-commands"),
            (
                |d| {
                    d.exec = "allow".into();
                    d.exec_commands = vec![command(&["true"])];
                },
                "exec-commands",
            ),
        ];
        for (break_it, field) in cases {
            let mut delivery = declaration();
            break_it(&mut delivery);
            let error = Plan::parse(&delivery).expect_err(field);
            assert_eq!(error.field, field, "{error}");
        }
    }

    #[test]
    fn the_digest_changes_with_any_field() {
        let base = declaration_digest(&declaration());
        let mut moved = declaration();
        moved.path = "m".into();
        assert_ne!(declaration_digest(&moved), base);
        let mut shifted = declaration();
        shifted.volume = "mode".into();
        shifted.path = "l".into();
        assert_ne!(declaration_digest(&shifted), base);
    }

    #[test]
    fn a_trusted_ca_is_part_of_the_digest_only_when_given() {
        let plain = declaration();
        let mut with_ca = declaration();
        with_ca.trusted_ca_pem = format!("{PEM_CERTIFICATE}\nMIIB\n-----END CERTIFICATE-----\n");
        assert_ne!(declaration_digest(&with_ca), declaration_digest(&plain));
        let plan = Plan::parse(&with_ca).expect("plan");
        assert_eq!(
            plan.trusted_ca_pem.as_deref(),
            Some(with_ca.trusted_ca_pem.as_str())
        );
        assert_eq!(Plan::parse(&plain).expect("plan").trusted_ca_pem, None);
    }

    #[test]
    fn exec_is_denied_unless_allowed_and_only_allowing_it_changes_the_digest() {
        let default = declaration();
        let mut denied = declaration();
        denied.exec = "deny".into();
        let mut allowed = declaration();
        allowed.exec = "allow".into();
        assert_eq!(Plan::parse(&default).expect("plan").exec, ExecPolicy::Deny);
        assert_eq!(Plan::parse(&denied).expect("plan").exec, ExecPolicy::Deny);
        assert_eq!(Plan::parse(&allowed).expect("plan").exec, ExecPolicy::Allow);
        assert_eq!(declaration_digest(&denied), declaration_digest(&default));
        assert_ne!(declaration_digest(&allowed), declaration_digest(&default));
    }

    fn reader(rootfs: &str, args: &[&str]) -> Reader {
        Reader {
            rootfs: rootfs.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        }
    }

    fn command(args: &[&str]) -> Command {
        Command {
            args: args.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_readers_environment_rules_allow_exact_entries_names_and_prefixes() {
        let mut pinned = declaration();
        let mut with_env = reader(&digest_text(1), &["serve"]);
        with_env.env = vec!["PATH=/bin".into(), "HOSTNAME".into(), "KUBERNETES_*".into()];
        pinned.readers = vec![with_env.clone()];
        let plan = Plan::parse(&pinned).expect("plan");
        let approved = &plan.readers[0];
        let env = |entries: &[&str]| entries.iter().map(|e| e.to_string()).collect::<Vec<_>>();
        let allowed = env(&[
            "PATH=/bin",
            "HOSTNAME=pod-1",
            "KUBERNETES_SERVICE_HOST=10.0.0.1",
        ]);
        assert_eq!(approved.unapproved_variable(&allowed), None);
        let other_path = env(&["PATH=/tmp:/bin"]);
        assert_eq!(approved.unapproved_variable(&other_path), Some("PATH"));
        let python = env(&["PATH=/bin", "PYTHONPATH=/dev/shm"]);
        assert_eq!(approved.unapproved_variable(&python), Some("PYTHONPATH"));
        // Without rules, any environment; rules enter the digest only when given.
        let mut unpinned = pinned.clone();
        unpinned.readers[0].env.clear();
        let plain = Plan::parse(&unpinned).expect("plan");
        assert_eq!(plain.readers[0].unapproved_variable(&python), None);
        assert_ne!(declaration_digest(&pinned), declaration_digest(&unpinned));
        let mut unpinned_before = declaration();
        unpinned_before.readers = vec![reader(&digest_text(1), &["serve"])];
        assert_eq!(
            declaration_digest(&unpinned),
            declaration_digest(&unpinned_before)
        );
        // A working directory too, only when given.
        let mut in_root = pinned.clone();
        in_root.readers[0].cwd = "/".into();
        assert_eq!(
            Plan::parse(&in_root).expect("plan").readers[0].cwd,
            Some("/".into())
        );
        assert_ne!(declaration_digest(&in_root), declaration_digest(&pinned));
        let mut relative = pinned.clone();
        relative.readers[0].cwd = "srv".into();
        assert_eq!(
            Plan::parse(&relative).expect_err("relative").field,
            "readers"
        );
        for bad_rule in ["", "*", "A*B", "NAME WITH SPACE"] {
            let mut broken = pinned.clone();
            broken.readers[0].env = vec![bad_rule.into()];
            assert_eq!(Plan::parse(&broken).expect_err(bad_rule).field, "readers");
        }
    }

    #[test]
    fn exec_commands_are_parsed_and_enter_the_digest_only_when_given() {
        let plain = declaration();
        assert!(Plan::parse(&plain).expect("plan").exec_commands.is_empty());
        let mut probes = declaration();
        probes.exec_commands = vec![command(&["cat", "/tmp/healthy"]), command(&["true"])];
        let plan = Plan::parse(&probes).expect("plan");
        assert_eq!(plan.exec, ExecPolicy::Deny);
        assert_eq!(plan.exec_commands[0], vec!["cat", "/tmp/healthy"]);
        let base = declaration_digest(&probes);
        assert_ne!(base, declaration_digest(&plain));
        let mut split = probes.clone();
        split.exec_commands[0] = command(&["cat", "/tmp/", "healthy"]);
        let mut fewer = probes.clone();
        fewer.exec_commands.pop();
        // The same command lines as approved readers' commands are another declaration.
        let mut as_reader = declaration();
        as_reader.readers = vec![reader(&digest_text(1), &["true"])];
        let mut both = as_reader.clone();
        both.exec_commands = vec![command(&["true"])];
        for changed in [split, fewer] {
            assert_ne!(declaration_digest(&changed), base);
        }
        assert_ne!(declaration_digest(&both), declaration_digest(&as_reader));
    }

    fn digest_text(byte: u8) -> String {
        format_digest(&[byte; 32])
    }

    #[test]
    fn readers_are_parsed_and_enter_the_digest_only_when_given() {
        let plain = declaration();
        assert!(Plan::parse(&plain).expect("plan").readers.is_empty());
        let mut pinned = declaration();
        pinned.readers = vec![
            reader(&digest_text(1), &["server", "--model", "/model"]),
            reader(&digest_text(2), &["sidecar"]),
        ];
        let plan = Plan::parse(&pinned).expect("plan");
        assert_eq!(plan.readers.len(), 2);
        assert_eq!(plan.readers[0].rootfs, [1; 32]);
        assert_eq!(plan.readers[1].args, vec!["sidecar".to_string()]);
        let base = declaration_digest(&pinned);
        assert_ne!(base, declaration_digest(&plain));
        // Every part of a reader counts, and where one argument ends is part of it.
        let mut other_rootfs = pinned.clone();
        other_rootfs.readers[1].rootfs = digest_text(3);
        let mut split_arg = pinned.clone();
        split_arg.readers[0].args = vec![
            "server".into(),
            "--model".into(),
            "/mo".into(),
            "del".into(),
        ];
        let mut fewer = pinned.clone();
        fewer.readers.pop();
        for changed in [other_rootfs, split_arg, fewer] {
            assert_ne!(declaration_digest(&changed), base);
        }
    }

    #[test]
    fn the_hex_digest_is_the_bytes_digest() {
        let bytes = declaration_digest_bytes(&declaration());
        assert_eq!(declaration_digest(&declaration()), hex::encode(bytes));
        let plan = Plan::parse(&declaration()).expect("plan");
        assert_eq!(plan.declaration_digest, hex::encode(bytes));
        assert_eq!(plan.host_data, bytes);
    }

    #[test]
    fn tar_defaults_to_the_volume_root_and_file_urls_are_absolute() {
        let mut delivery = declaration();
        delivery.unpack = "tar.gz".into();
        delivery.source_url = "file:///run/veil/shared/model/m.sealed".into();
        let plan = Plan::parse(&delivery).expect("plan");
        assert_eq!(plan.path, PathBuf::new());
        assert_eq!(
            plan.source,
            Source::File(PathBuf::from("/run/veil/shared/model/m.sealed"))
        );
        delivery.source_url = "file://relative".into();
        assert_eq!(
            Plan::parse(&delivery).expect_err("relative").field,
            "source"
        );
    }
}

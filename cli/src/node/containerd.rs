//! Registering veil as a CRI runtime in containerd's `config.toml`.
//!
//! The file is edited with `toml_edit`, so every setting, comment and blank line the operator
//! wrote stays byte-for-byte as it was: install adds one table (`runtimes.veil` and its
//! `options`), uninstall removes it and the empty parent tables install had to create, which
//! gives back the original text.
//!
//! Where the entry lives depends on the config `version`:
//! - 2 (containerd 1.6 / 1.7): `plugins."io.containerd.grpc.v1.cri".containerd.runtimes.veil`
//! - 3 (containerd 2.x): `plugins."io.containerd.cri.v1.runtime".containerd.runtimes.veil`
//!
//! A file without `version` is version 1 (containerd 1.0-1.2 layout, deprecated since 1.5). It
//! is refused rather than migrated: migrating rewrites every plugin section of the operator's
//! file, which is `containerd config migrate`'s job (containerd 1.7+) or the operator's.

use std::path::{Path, PathBuf};

use toml_edit::{Array, DocumentMut, Item, Table, TableLike, Value};

/// Name of the CRI runtime (the RuntimeClass handler).
pub const RUNTIME_NAME: &str = "veil";
/// containerd runtime type; containerd maps it to the binary `containerd-shim-veil-v2`.
pub const RUNTIME_TYPE: &str = "io.containerd.veil.v2";
/// Pod annotations the CRI plugin passes through to the shim (veil's own prefix).
pub const POD_ANNOTATIONS: &str = "io.veil.*";
/// containerd's built-in runtime, written out next to veil's when it would otherwise be lost.
const RUNC_NAME: &str = "runc";
/// The built-in runtime's type.
const RUNC_RUNTIME_TYPE: &str = "io.containerd.runc.v2";
/// Marks the runc entry install wrote, so uninstall removes that one and no other.
const RUNC_MARKER: &str =
    "# Written by `veil node install` (containerd drops its built-in runc runtime once any \
runtime is listed here); `veil node uninstall` removes it.";
/// What a containerd config file that install creates from nothing holds before the entry.
const NEW_FILE_HEADER: &str = "version = 2\n";

/// The containerd config schema version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigVersion {
    /// containerd 1.6 / 1.7.
    V2,
    /// containerd 2.x.
    V3,
}

impl ConfigVersion {
    /// The table path of the CRI runtimes map in this version.
    fn runtimes_path(self) -> [&'static str; 4] {
        let cri_plugin = match self {
            ConfigVersion::V2 => "io.containerd.grpc.v1.cri",
            ConfigVersion::V3 => "io.containerd.cri.v1.runtime",
        };
        ["plugins", cri_plugin, "containerd", "runtimes"]
    }

    /// The number written in the file.
    pub fn number(self) -> i64 {
        match self {
            ConfigVersion::V2 => 2,
            ConfigVersion::V3 => 3,
        }
    }
}

/// The veil runtime entry install writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeEntry {
    /// The veil configuration file the shim reads (runtime option `ConfigPath`).
    pub config_path: PathBuf,
}

/// The result of an edit: the new text and whether it differs from the old one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    /// The file's schema version.
    pub version: ConfigVersion,
    /// The new file text.
    pub text: String,
    /// Whether `text` differs from the input.
    pub changed: bool,
}

/// Editing a containerd configuration failed.
#[derive(Debug, thiserror::Error)]
pub enum EditContainerdConfigError {
    /// The text is not TOML.
    #[error("{path} is not valid TOML: {source}; fix the file (containerd would refuse it too)")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<toml_edit::TomlError>,
    },
    /// A version-1 file (no `version` key).
    #[error(
        "{path} is a version 1 containerd config (it has no `version = 2` or `version = 3` line); \
         veil registers itself only in version 2 (containerd 1.6/1.7) or 3 (containerd 2.x) \
         configs: convert it first (`containerd config migrate` on containerd 1.7+, or \
         `containerd config default` and carry your settings over), then run this again"
    )]
    Version1 {
        /// The file.
        path: PathBuf,
    },
    /// A version this code does not know.
    #[error("{path} has containerd config version {found}; veil supports versions 2 and 3")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The value of `version`.
        found: String,
    },
    /// A table on the way to the entry is written in a form that cannot hold a sub-table.
    #[error(
        "{path}: `{key}` is not a table (an inline table or a value), so the veil runtime \
         cannot be added under it; rewrite it as a [section] or add the entry by hand \
         (see configs/containerd/)"
    )]
    NotATable {
        /// The file.
        path: PathBuf,
        /// The dotted key.
        key: String,
    },
}

/// Reads the `version` of a parsed containerd config.
fn config_version(
    doc: &DocumentMut,
    path: &Path,
) -> Result<ConfigVersion, EditContainerdConfigError> {
    let Some(item) = doc.get("version") else {
        return Err(EditContainerdConfigError::Version1 {
            path: path.to_path_buf(),
        });
    };
    match item.as_integer() {
        Some(1) => Err(EditContainerdConfigError::Version1 {
            path: path.to_path_buf(),
        }),
        Some(2) => Ok(ConfigVersion::V2),
        Some(3) => Ok(ConfigVersion::V3),
        _ => Err(EditContainerdConfigError::UnsupportedVersion {
            path: path.to_path_buf(),
            found: item.to_string().trim().to_string(),
        }),
    }
}

fn parse(
    text: &str,
    path: &Path,
) -> Result<(DocumentMut, ConfigVersion), EditContainerdConfigError> {
    let doc: DocumentMut = text
        .parse()
        .map_err(|source| EditContainerdConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
    let version = config_version(&doc, path)?;
    Ok((doc, version))
}

/// The text of a config file that install creates because none existed.
pub fn new_file_text() -> &'static str {
    NEW_FILE_HEADER
}

/// Whether `text` is what is left of a file install created, once the entry is gone.
pub fn is_bare_new_file(text: &str) -> bool {
    text == NEW_FILE_HEADER
}

/// Adds (or brings up to date) the veil runtime entry in `text`, the contents of `path`.
pub fn register(
    text: &str,
    path: &Path,
    entry: &RuntimeEntry,
) -> Result<Edit, EditContainerdConfigError> {
    let (mut doc, version) = parse(text, path)?;
    let runtimes = runtimes_table_mut(&mut doc, version, path)?;
    if runtimes.is_empty() {
        keep_builtin_runc(runtimes);
    }
    let veil = runtimes
        .entry(RUNTIME_NAME)
        .or_insert_with(|| Item::Table(Table::new()));
    let Some(veil) = veil.as_table_mut() else {
        return Err(not_a_table(path, version, Some(RUNTIME_NAME)));
    };
    set_entry_keys(veil, entry);
    let new_text = doc.to_string();
    Ok(Edit {
        version,
        changed: new_text != text,
        text: new_text,
    })
}

/// Removes the veil runtime entry from `text`, and the parent tables that only held it.
pub fn unregister(text: &str, path: &Path) -> Result<Edit, EditContainerdConfigError> {
    let (mut doc, version) = parse(text, path)?;
    remove_entry(doc.as_table_mut(), &version.runtimes_path());
    let new_text = doc.to_string();
    Ok(Edit {
        version,
        changed: new_text != text,
        text: new_text,
    })
}

/// Whether `text` holds a veil runtime entry identical to the one install writes.
#[cfg(test)]
pub fn has_entry(text: &str, entry: &RuntimeEntry) -> bool {
    register(text, Path::new("config.toml"), entry).is_ok_and(|edit| !edit.changed)
}

/// Walks to the runtimes table, creating missing levels as implicit tables (no header of
/// their own, so they leave no trace in the file once the entry is removed again).
fn runtimes_table_mut<'d>(
    doc: &'d mut DocumentMut,
    version: ConfigVersion,
    path: &Path,
) -> Result<&'d mut Table, EditContainerdConfigError> {
    let mut table = doc.as_table_mut();
    let keys = version.runtimes_path();
    for (depth, key) in keys.iter().enumerate() {
        let item = table.entry(key).or_insert_with(|| {
            let mut created = Table::new();
            created.set_implicit(true);
            Item::Table(created)
        });
        table = match item {
            Item::Table(next) => next,
            _ => {
                return Err(EditContainerdConfigError::NotATable {
                    path: path.to_path_buf(),
                    key: dotted(&keys[..=depth]),
                })
            }
        };
    }
    Ok(table)
}

fn not_a_table(
    path: &Path,
    version: ConfigVersion,
    last: Option<&str>,
) -> EditContainerdConfigError {
    let mut keys: Vec<&str> = version.runtimes_path().to_vec();
    keys.extend(last);
    EditContainerdConfigError::NotATable {
        path: path.to_path_buf(),
        key: dotted(&keys),
    }
}

fn dotted(keys: &[&str]) -> String {
    keys.iter()
        .map(|key| {
            if key.contains('.') {
                format!("\"{key}\"")
            } else {
                (*key).to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Sets the keys veil owns; keys an operator added to the entry stay. Values already right
/// are left alone so that a second install changes not even their formatting.
fn set_entry_keys(veil: &mut Table, entry: &RuntimeEntry) {
    set_if_different(veil, "runtime_type", Value::from(RUNTIME_TYPE));
    let mut annotations = Array::new();
    annotations.push(POD_ANNOTATIONS);
    set_if_different(veil, "pod_annotations", Value::Array(annotations));
    // The pod's privileged flag must not hand the host's devices to a VM.
    set_if_different(veil, "privileged_without_host_devices", Value::from(true));
    let options = veil
        .entry("options")
        .or_insert_with(|| Item::Table(Table::new()));
    if options.as_table_like().is_none() {
        *options = Item::Table(Table::new());
    }
    if let Some(options) = options.as_table_like_mut() {
        let config_path = entry.config_path.to_string_lossy().into_owned();
        set_if_different(options, "ConfigPath", Value::from(config_path));
    }
}

fn set_if_different(table: &mut dyn TableLike, key: &str, wanted: Value) {
    let same = table
        .get(key)
        .and_then(Item::as_value)
        .is_some_and(|current| same_value(current, &wanted));
    if !same {
        table.insert(key, Item::Value(wanted));
    }
}

/// Compares values ignoring formatting (quotes, spacing, comments).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(a), Value::String(b)) => a.value() == b.value(),
        (Value::Boolean(a), Value::Boolean(b)) => a.value() == b.value(),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b.iter()).all(|(a, b)| same_value(a, b))
        }
        _ => false,
    }
}

/// containerd ships a built-in `runc` runtime (the default `default_runtime_name`), but a
/// config that lists any runtime replaces the whole built-in map: with only `veil` listed,
/// containerd 1.6's CRI plugin fails to load ("no corresponding runtime configured in
/// `containerd.runtimes` for `default_runtime_name = "runc"`"). So when install creates the
/// first runtime entry it writes runc out too, marked so that uninstall takes it away again.
fn keep_builtin_runc(runtimes: &mut Table) {
    let mut runc = Table::new();
    runc.insert("runtime_type", toml_edit::value(RUNC_RUNTIME_TYPE));
    runc.decor_mut().set_prefix(format!("\n{RUNC_MARKER}\n"));
    runtimes.insert(RUNC_NAME, Item::Table(runc));
}

/// Whether `runtimes.runc` is the one [`keep_builtin_runc`] wrote (marker and value intact).
fn is_runc_added_by_install(runtimes: &Table) -> bool {
    let Some(runc) = runtimes.get(RUNC_NAME).and_then(Item::as_table) else {
        return false;
    };
    let marked = runc
        .decor()
        .prefix()
        .and_then(|prefix| prefix.as_str())
        .is_some_and(|prefix| prefix.contains(RUNC_MARKER));
    let only_type = runc.len() == 1
        && runc.get("runtime_type").and_then(Item::as_str) == Some(RUNC_RUNTIME_TYPE);
    marked && only_type
}

/// Removes `runtimes.veil` under `keys`, then every parent on the way that is now empty and
/// implicit (no header in the file: install created it).
fn remove_entry(table: &mut Table, keys: &[&str]) {
    let Some((first, rest)) = keys.split_first() else {
        if table.remove(RUNTIME_NAME).is_some() && is_runc_added_by_install(table) {
            table.remove(RUNC_NAME);
        }
        return;
    };
    let Some(child) = table.get_mut(first).and_then(Item::as_table_mut) else {
        return;
    };
    remove_entry(child, rest);
    if child.is_empty() && child.is_implicit() {
        table.remove(first);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2_ORIGINAL: &str = r#"# operator's containerd config
version = 2
root = "/var/lib/containerd"   # keep me

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.6"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      # systemd cgroups on this node
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = true

[metrics]
  address = ""
"#;

    const V3_ORIGINAL: &str = r#"version = 3
# containerd 2.x
[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
"#;

    fn entry() -> RuntimeEntry {
        RuntimeEntry {
            config_path: PathBuf::from("/etc/veil/configuration.toml"),
        }
    }

    fn path() -> &'static Path {
        Path::new("/etc/containerd/config.toml")
    }

    #[test]
    fn v2_entry_is_added_under_the_cri_plugin_and_everything_else_stays() {
        let edit = register(V2_ORIGINAL, path(), &entry()).expect("register");
        assert!(edit.changed);
        assert_eq!(edit.version, ConfigVersion::V2);
        let parsed: toml::Table = toml::from_str(&edit.text).expect("still TOML");
        let veil =
            &parsed["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["veil"];
        assert_eq!(veil["runtime_type"].as_str(), Some(RUNTIME_TYPE));
        assert_eq!(
            veil["pod_annotations"].as_array().map(Vec::len),
            Some(1),
            "{}",
            edit.text
        );
        assert_eq!(veil["pod_annotations"][0].as_str(), Some("io.veil.*"));
        assert_eq!(
            veil["privileged_without_host_devices"].as_bool(),
            Some(true)
        );
        assert_eq!(
            veil["options"]["ConfigPath"].as_str(),
            Some("/etc/veil/configuration.toml")
        );
        // The operator's text is still there, line for line.
        for line in V2_ORIGINAL.lines() {
            assert!(edit.text.contains(line), "lost {line:?} in\n{}", edit.text);
        }
    }

    #[test]
    fn v3_entry_goes_under_the_cri_runtime_plugin() {
        let edit = register(V3_ORIGINAL, path(), &entry()).expect("register");
        assert_eq!(edit.version, ConfigVersion::V3);
        assert!(edit.text.starts_with(V3_ORIGINAL), "{}", edit.text);
        let parsed: toml::Table = toml::from_str(&edit.text).expect("still TOML");
        let veil =
            &parsed["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["veil"];
        assert_eq!(veil["runtime_type"].as_str(), Some(RUNTIME_TYPE));
    }

    #[test]
    fn registering_twice_changes_nothing() {
        for original in [V2_ORIGINAL, V3_ORIGINAL, NEW_FILE_HEADER] {
            let first = register(original, path(), &entry()).expect("first");
            let second = register(&first.text, path(), &entry()).expect("second");
            assert!(!second.changed, "{}", second.text);
            assert_eq!(second.text, first.text);
            assert!(has_entry(&first.text, &entry()));
        }
    }

    #[test]
    fn unregister_gives_back_the_original_bytes() {
        for original in [V2_ORIGINAL, V3_ORIGINAL, NEW_FILE_HEADER] {
            let installed = register(original, path(), &entry()).expect("register");
            let removed = unregister(&installed.text, path()).expect("unregister");
            assert!(removed.changed);
            assert_eq!(removed.text, original);
            let again = unregister(&removed.text, path()).expect("unregister twice");
            assert!(!again.changed);
        }
    }

    #[test]
    fn a_stale_entry_is_brought_up_to_date_and_operator_keys_in_it_stay() {
        let stale = format!(
            "{V2_ORIGINAL}\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.veil]\n\
             runtime_type = \"io.containerd.veil.v2\"\nsnapshotter = \"overlayfs\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.veil.options]\n\
             ConfigPath = \"/old/path.toml\"\n"
        );
        let edit = register(&stale, path(), &entry()).expect("register");
        assert!(edit.changed);
        assert!(edit.text.contains("snapshotter = \"overlayfs\""));
        assert!(edit.text.contains("/etc/veil/configuration.toml"));
        assert!(!edit.text.contains("/old/path.toml"));
        assert!(has_entry(&edit.text, &entry()));
    }

    #[test]
    fn same_values_in_another_style_count_as_installed() {
        let text = "version = 2\n[plugins.'io.containerd.grpc.v1.cri'.containerd.runtimes.veil]\n\
                    runtime_type = 'io.containerd.veil.v2'\n\
                    pod_annotations = [ 'io.veil.*' ]\n\
                    privileged_without_host_devices = true\n\
                    options = { ConfigPath = '/etc/veil/configuration.toml' }\n";
        assert!(has_entry(text, &entry()));
    }

    #[test]
    fn version_1_is_refused_with_advice() {
        for text in ["root = \"/var/lib/containerd\"\n", "version = 1\n"] {
            let error = register(text, path(), &entry()).expect_err("v1");
            let message = error.to_string();
            assert!(message.contains("version 1"), "{message}");
            assert!(message.contains("/etc/containerd/config.toml"), "{message}");
            assert!(message.contains("containerd config migrate"), "{message}");
        }
    }

    #[test]
    fn unknown_versions_and_bad_toml_are_refused() {
        let error = register("version = 4\n", path(), &entry()).expect_err("v4");
        assert!(error.to_string().contains("version 4"), "{error}");
        let error = register("version = \n", path(), &entry()).expect_err("toml");
        assert!(error.to_string().contains("not valid TOML"), "{error}");
    }

    #[test]
    fn an_inline_parent_table_is_refused_naming_the_key() {
        let text =
            "version = 2\n[plugins]\n\"io.containerd.grpc.v1.cri\" = { sandbox_image = \"p\" }\n";
        let error = register(text, path(), &entry()).expect_err("inline");
        assert!(
            error
                .to_string()
                .contains("plugins.\"io.containerd.grpc.v1.cri\""),
            "{error}"
        );
    }

    #[test]
    fn the_operators_explicit_empty_runtimes_table_survives_uninstall() {
        let original = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes]\n";
        let installed = register(original, path(), &entry()).expect("register");
        let removed = unregister(&installed.text, path()).expect("unregister");
        assert_eq!(removed.text, original);
    }

    #[test]
    fn the_shipped_snippets_are_exactly_what_install_writes() {
        let v2 = include_str!("../../../configs/containerd/veil-v2.toml");
        let v3 = include_str!("../../../configs/containerd/veil-v3.toml");
        assert!(
            has_entry(v2, &entry()),
            "configs/containerd/veil-v2.toml is stale"
        );
        assert!(
            has_entry(v3, &entry()),
            "configs/containerd/veil-v3.toml is stale"
        );
        assert_eq!(
            register(v3, path(), &entry()).expect("v3").version,
            ConfigVersion::V3
        );
    }

    #[test]
    fn the_builtin_runc_is_written_out_when_veil_is_the_first_runtime() {
        for original in [NEW_FILE_HEADER, V3_ORIGINAL] {
            let installed = register(original, path(), &entry()).expect("register");
            let parsed: toml::Table = toml::from_str(&installed.text).expect("TOML");
            let cri = if installed.version == ConfigVersion::V2 {
                "io.containerd.grpc.v1.cri"
            } else {
                "io.containerd.cri.v1.runtime"
            };
            let runtimes = &parsed["plugins"][cri]["containerd"]["runtimes"];
            assert_eq!(
                runtimes["runc"]["runtime_type"].as_str(),
                Some(RUNC_RUNTIME_TYPE),
                "{}",
                installed.text
            );
            assert!(installed.text.contains(RUNC_MARKER));
        }
        // The operator's own runc is neither duplicated nor marked.
        let installed = register(V2_ORIGINAL, path(), &entry()).expect("register");
        assert!(!installed.text.contains(RUNC_MARKER));
    }

    #[test]
    fn a_marked_runc_the_operator_changed_survives_uninstall() {
        let installed = register(NEW_FILE_HEADER, path(), &entry()).expect("register");
        let edited = installed.text.replace(
            "runtime_type = \"io.containerd.runc.v2\"",
            "runtime_type = \"io.containerd.runc.v2\"\npod_annotations = [\"x\"]",
        );
        assert_ne!(edited, installed.text);
        let removed = unregister(&edited, path()).expect("unregister");
        assert!(
            removed.text.contains("pod_annotations = [\"x\"]"),
            "{}",
            removed.text
        );
        assert!(
            !removed.text.contains("io.containerd.veil.v2"),
            "{}",
            removed.text
        );
    }

    #[test]
    fn bare_new_file_is_recognised() {
        let installed = register(new_file_text(), path(), &entry()).expect("register");
        let removed = unregister(&installed.text, path()).expect("unregister");
        assert!(is_bare_new_file(&removed.text));
        assert!(!is_bare_new_file(V2_ORIGINAL));
    }
}

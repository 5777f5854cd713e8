//! Resolving and fetching pinned Debian packages with the host's apt.
//!
//! The kernel is chosen through the `linux-image-amd64` meta package: its candidate version
//! depends on exactly one versioned image package (`linux-image-6.1.0-NN-amd64 (= V)`). That
//! package, its version and the SHA-256 that the signed archive index lists for it are the
//! pin. The `.deb` is fetched with `apt-get download` (never installed on the host), checked
//! against the pinned SHA-256 and kept in the cache under its name and version, so a second
//! build with the same pin downloads nothing.

use crate::command::{run_captured, RunToolError};
use crate::digest::{sha256_file, HashFileError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A binary package pinned to one version and one file hash.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PinnedPackage {
    /// Package name, e.g. `linux-image-6.1.0-56-amd64`.
    pub name: String,
    /// Exact Debian version, e.g. `6.1.192-2`.
    pub version: String,
    /// SHA-256 of the `.deb` as listed in the archive index.
    pub deb_sha256: String,
}

/// The kernel image package chosen through a meta package.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KernelPin {
    /// The meta package that selected it, e.g. `linux-image-amd64`.
    pub meta_package: String,
    /// The meta package's candidate version.
    pub meta_version: String,
    /// The versioned image package.
    pub package: PinnedPackage,
}

/// Resolving a package pin through apt-cache failed.
#[derive(Debug, thiserror::Error)]
pub enum ResolvePackageError {
    /// apt-cache could not be run or failed.
    #[error("cannot query apt for {package}: {source}; run `apt-get update` first")]
    Query {
        /// The package asked about.
        package: String,
        /// The underlying error.
        source: RunToolError,
    },
    /// apt knows no candidate for the package.
    #[error("apt has no candidate for {package}; run `apt-get update` and check the sources list")]
    NoCandidate {
        /// The package asked about.
        package: String,
    },
    /// A field the pin needs is missing from apt-cache's record.
    #[error("apt-cache's record for {package} has no {field} field")]
    MissingField {
        /// The package asked about.
        package: String,
        /// The missing field.
        field: &'static str,
    },
    /// The meta package does not depend on exactly one versioned image package.
    #[error("{package}'s Depends ({depends:?}) names no `linux-image-* (= version)` package")]
    NoImageDependency {
        /// The meta package.
        package: String,
        /// Its Depends field.
        depends: String,
    },
}

/// Fetching a pinned package into the cache failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchPackageError {
    /// The cache directory could not be prepared.
    #[error("cannot prepare package cache {path}: {source}")]
    Cache {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// apt-get download failed.
    #[error("cannot download {package}: {source}")]
    Download {
        /// `name=version`.
        package: String,
        /// The underlying error.
        source: RunToolError,
    },
    /// apt-get download did not leave exactly one .deb behind.
    #[error("apt-get download of {package} left no single .deb in {dir}")]
    NoDebFile {
        /// `name=version`.
        package: String,
        /// Where it was downloaded to.
        dir: PathBuf,
    },
    /// The downloaded file could not be hashed.
    #[error(transparent)]
    Hash(#[from] HashFileError),
    /// The downloaded file does not match the pinned hash.
    #[error("{path} has sha256 {actual}, but the pin says {expected}; delete it and check the apt sources")]
    HashMismatch {
        /// The file.
        path: PathBuf,
        /// The pinned hash.
        expected: String,
        /// The file's hash.
        actual: String,
    },
}

/// Resolves `meta_package`'s candidate to the image package it pins.
pub fn resolve_kernel(meta_package: &str) -> Result<KernelPin, ResolvePackageError> {
    let meta = show_candidate(meta_package)?;
    let meta_version = field(&meta, meta_package, "Version")?;
    let depends = field(&meta, meta_package, "Depends")?;
    let (name, version) =
        exact_image_dependency(&depends).ok_or_else(|| ResolvePackageError::NoImageDependency {
            package: meta_package.to_owned(),
            depends: depends.clone(),
        })?;
    let package = resolve_package(&format!("{name}={version}"))?;
    tracing::info!(meta_package, %meta_version, package = %package.name, version = %package.version,
        sha256 = %package.deb_sha256, "resolved guest kernel package");
    Ok(KernelPin {
        meta_package: meta_package.to_owned(),
        meta_version,
        package,
    })
}

/// Pins `spec` (`name` for the candidate, or `name=version`) to its name, version and hash.
pub fn resolve_package(spec: &str) -> Result<PinnedPackage, ResolvePackageError> {
    let stanza = show_candidate(spec)?;
    Ok(PinnedPackage {
        name: field(&stanza, spec, "Package")?,
        version: field(&stanza, spec, "Version")?,
        deb_sha256: field(&stanza, spec, "SHA256")?,
    })
}

/// Returns the path of the pinned `.deb` in `cache_dir`, downloading it if it is not there.
pub fn fetch(package: &PinnedPackage, cache_dir: &Path) -> Result<PathBuf, FetchPackageError> {
    let debs = cache_dir.join("debs");
    let cache_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FetchPackageError::Cache { path, source }
    };
    std::fs::create_dir_all(&debs).map_err(cache_err(&debs))?;
    let cached = debs.join(cached_file_name(package));
    if cached.is_file() {
        if sha256_file(&cached)? == package.deb_sha256 {
            tracing::info!(path = %cached.display(), "using cached package");
            return Ok(cached);
        }
        tracing::warn!(path = %cached.display(), "cached package does not match its pin; downloading again");
    }
    // A private staging dir, so concurrent builds never see each other's partial downloads.
    let staging = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(&debs)
        .map_err(cache_err(&debs))?;
    let downloaded = download_into(package, staging.path())?;
    verify(&downloaded, &package.deb_sha256)?;
    std::fs::rename(&downloaded, &cached).map_err(cache_err(&cached))?;
    Ok(cached)
}

fn download_into(package: &PinnedPackage, dir: &Path) -> Result<PathBuf, FetchPackageError> {
    let spec = format!("{}={}", package.name, package.version);
    tracing::info!(package = %spec, "downloading with apt-get download");
    run_captured(
        Command::new("apt-get")
            // apt drops to the _apt user, which cannot write into root-owned cache dirs.
            .args(["-q", "-o", "APT::Sandbox::User=root", "download", &spec])
            .current_dir(dir),
        "apt-get install -y apt",
    )
    .map_err(|source| FetchPackageError::Download {
        package: spec.clone(),
        source,
    })?;
    let mut debs = std::fs::read_dir(dir)
        .map_err(|source| FetchPackageError::Cache {
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "deb"));
    match (debs.next(), debs.next()) {
        (Some(deb), None) => Ok(deb),
        _ => Err(FetchPackageError::NoDebFile {
            package: spec,
            dir: dir.to_path_buf(),
        }),
    }
}

fn verify(path: &Path, expected: &str) -> Result<(), FetchPackageError> {
    let actual = sha256_file(path)?;
    if actual != expected {
        return Err(FetchPackageError::HashMismatch {
            path: path.to_path_buf(),
            expected: expected.to_owned(),
            actual,
        });
    }
    Ok(())
}

fn cached_file_name(package: &PinnedPackage) -> String {
    // Same name apt-get download uses: the epoch's ':' is written as %3a.
    format!(
        "{}_{}_amd64.deb",
        package.name,
        package.version.replace(':', "%3a")
    )
}

fn show_candidate(spec: &str) -> Result<BTreeMap<String, String>, ResolvePackageError> {
    let text = run_captured(
        Command::new("apt-cache").args(["show", "--no-all-versions", spec]),
        "apt-get install -y apt",
    )
    .map_err(|source| ResolvePackageError::Query {
        package: spec.to_owned(),
        source,
    })?;
    let stanza = first_stanza(&text);
    if stanza.is_empty() {
        return Err(ResolvePackageError::NoCandidate {
            package: spec.to_owned(),
        });
    }
    Ok(stanza)
}

fn field(
    stanza: &BTreeMap<String, String>,
    package: &str,
    name: &'static str,
) -> Result<String, ResolvePackageError> {
    stanza
        .get(name)
        .cloned()
        .ok_or_else(|| ResolvePackageError::MissingField {
            package: package.to_owned(),
            field: name,
        })
}

/// Parses the first deb822 stanza; continuation lines are folded into their field.
fn first_stanza(text: &str) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            if fields.is_empty() {
                continue;
            }
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(value) = last.as_ref().and_then(|key| fields.get_mut(key)) {
                let value: &mut String = value;
                value.push('\n');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some((key, value)) = line.split_once(':') {
            fields.insert(key.to_owned(), value.trim().to_owned());
            last = Some(key.to_owned());
        }
    }
    fields
}

/// Finds `linux-image-X (= V)` among the alternatives of a Depends field.
fn exact_image_dependency(depends: &str) -> Option<(String, String)> {
    depends
        .split([',', '|'])
        .map(str::trim)
        .find_map(|relation| {
            let (name, rest) = relation.split_once('(')?;
            let version = rest
                .trim()
                .strip_prefix('=')?
                .trim()
                .strip_suffix(')')?
                .trim();
            let name = name.trim();
            (name.starts_with("linux-image-") && !version.is_empty())
                .then(|| (name.to_owned(), version.to_owned()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_meta_package_dependency() {
        let text = "Package: linux-image-amd64\nVersion: 6.1.192-2\n\
                    Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)\nDescription: x\n more\n\nPackage: other\n";
        let stanza = first_stanza(text);
        assert_eq!(stanza["Version"], "6.1.192-2");
        assert_eq!(stanza["Description"], "x\nmore");
        assert!(!stanza.contains_key("other"));
        assert_eq!(
            exact_image_dependency(&stanza["Depends"]),
            Some((
                "linux-image-6.1.0-56-amd64".to_owned(),
                "6.1.192-2".to_owned()
            ))
        );
        assert_eq!(exact_image_dependency("kmod, linux-base (>= 4.3~)"), None);
    }

    #[test]
    fn cache_name_matches_apt_get_download() {
        let package = PinnedPackage {
            name: "linux-image-6.1.0-56-amd64".into(),
            version: "1:6.1.192-2".into(),
            deb_sha256: String::new(),
        };
        assert_eq!(
            cached_file_name(&package),
            "linux-image-6.1.0-56-amd64_1%3a6.1.192-2_amd64.deb"
        );
    }

    #[test]
    fn a_corrupt_cached_file_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.deb");
        std::fs::write(&path, b"not a deb").unwrap();
        assert!(matches!(
            verify(&path, "00"),
            Err(FetchPackageError::HashMismatch { .. })
        ));
    }
}

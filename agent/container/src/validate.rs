//! Checks a spec before anything is spawned, so that bad input fails with a clear error in
//! the caller rather than half-way through setup in the child.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Process, Spec};

use crate::mount_options::rootfs_propagation;
use crate::namespaces::{Kind, NamespaceError, NamespacePlan};

/// The spec or the builder's input cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    /// Ids become file and log names; keep them simple.
    #[error("container id {0:?} is invalid; use 1-128 characters from [A-Za-z0-9_.-], not starting with '.'")]
    InvalidId(String),
    /// The rootfs must already be present (shared from the host).
    #[error("rootfs {0} is not a directory; the rootfs share must be mounted before create")]
    RootfsNotDirectory(PathBuf),
    /// The rootfs path must be absolute (the child changes directory).
    #[error("rootfs {0} must be an absolute path")]
    RootfsRelative(PathBuf),
    /// The spec has no `process`.
    #[error("the spec has no process; nothing to run")]
    MissingProcess,
    /// `process.args` is empty.
    #[error("process.args is empty; give the program to run")]
    EmptyArgs,
    /// `process.cwd` must be absolute (OCI requires it).
    #[error("process.cwd {0} must be an absolute path")]
    RelativeCwd(PathBuf),
    /// A namespace the spec asks for cannot be honoured.
    #[error(transparent)]
    Namespaces(#[from] NamespaceError),
    /// Setting a hostname without a new UTS namespace would change the agent's.
    #[error(
        "the spec sets hostname {0:?} but has no new uts namespace; add {{\"type\": \"uts\"}}"
    )]
    HostnameWithoutUts(String),
    /// The seccomp profile cannot be enforced as written.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// `linux.rootfsPropagation` has an unknown value.
    #[error("linux.rootfsPropagation {0:?} is not one of private, rprivate, slave, rslave, shared, rshared, unbindable, runbindable")]
    RootfsPropagation(String),
}

/// Checks an id.
pub(crate) fn validate_id(id: &str) -> Result<(), ValidateError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ValidateError::InvalidId(id.to_string()))
    }
}

/// Checks the process part (shared by create and exec).
pub(crate) fn validate_process(process: &Process) -> Result<(), ValidateError> {
    if process.args().as_deref().unwrap_or_default().is_empty() {
        return Err(ValidateError::EmptyArgs);
    }
    if !process.cwd().is_absolute() {
        return Err(ValidateError::RelativeCwd(process.cwd().clone()));
    }
    Ok(())
}

/// Checks a create request and returns its namespace plan.
pub(crate) fn validate_create(rootfs: &Path, spec: &Spec) -> Result<NamespacePlan, ValidateError> {
    if !rootfs.is_absolute() {
        return Err(ValidateError::RootfsRelative(rootfs.to_path_buf()));
    }
    if !rootfs.is_dir() {
        return Err(ValidateError::RootfsNotDirectory(rootfs.to_path_buf()));
    }
    let process = spec
        .process()
        .as_ref()
        .ok_or(ValidateError::MissingProcess)?;
    validate_process(process)?;
    let linux = spec.linux().clone().unwrap_or_default();
    let plan = NamespacePlan::from_spec(linux.namespaces().as_deref().unwrap_or_default())?;
    if let Some(hostname) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        if !plan.creates(Kind::Uts) && !plan.has(Kind::Uts) {
            return Err(ValidateError::HostnameWithoutUts(hostname.to_string()));
        }
    }
    rootfs_propagation(linux.rootfs_propagation().as_deref())
        .map_err(ValidateError::RootfsPropagation)?;
    if let Some(profile) = linux.seccomp() {
        crate::seccomp::compile(profile)?;
    }
    Ok(plan)
}

/// Spec fields veil accepts but does not apply yet; the builder logs them so that nobody
/// mistakes them for enforced.
pub(crate) fn ignored_fields(spec: &Spec) -> Vec<&'static str> {
    let mut ignored = Vec::new();
    if spec.hooks().is_some() {
        ignored.push("hooks");
    }
    if let Some(linux) = spec.linux() {
        if linux.resources().as_ref().is_some_and(|r| {
            r.memory().is_some()
                || r.cpu().is_some()
                || r.pids().is_some()
                || r.block_io().is_some()
        }) {
            ignored.push("linux.resources");
        }
        if linux.personality().is_some() {
            ignored.push("linux.personality");
        }
    }
    if let Some(process) = spec.process() {
        if process
            .apparmor_profile()
            .as_deref()
            .is_some_and(|p| !p.is_empty())
        {
            ignored.push("process.apparmorProfile");
        }
        if process
            .selinux_label()
            .as_deref()
            .is_some_and(|l| !l.is_empty())
        {
            ignored.push("process.selinuxLabel");
        }
        if process.scheduler().is_some() {
            ignored.push("process.scheduler");
        }
        if process.io_priority().is_some() {
            ignored.push("process.ioPriority");
        }
    }
    ignored
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, ProcessBuilder,
    };

    fn spec_with(namespaces: &[LinuxNamespaceType]) -> Spec {
        let namespaces = namespaces
            .iter()
            .map(|t| LinuxNamespaceBuilder::default().typ(*t).build().unwrap())
            .collect::<Vec<_>>();
        let mut spec = Spec::default();
        spec.set_linux(Some(
            LinuxBuilder::default()
                .namespaces(namespaces)
                .build()
                .unwrap(),
        ));
        spec.set_process(Some(
            ProcessBuilder::default()
                .args(vec!["sh".to_string()])
                .cwd("/")
                .build()
                .unwrap(),
        ));
        spec
    }

    #[test]
    fn hooks_are_reported_as_ignored_and_seccomp_is_applied() {
        let mut spec = spec_with(&[LinuxNamespaceType::Mount]);
        assert!(ignored_fields(&spec).is_empty());
        let mut linux = spec.linux().clone().unwrap();
        linux.set_seccomp(Some(Default::default()));
        spec.set_linux(Some(linux));
        spec.set_hooks(Some(Default::default()));
        assert_eq!(ignored_fields(&spec), vec!["hooks"]);
    }

    #[test]
    fn a_seccomp_profile_the_guest_cannot_enforce_is_refused_at_create() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = spec_with(&[LinuxNamespaceType::Mount, LinuxNamespaceType::Uts]);
        let mut linux = spec.linux().clone().unwrap();
        linux.set_seccomp(Some(
            serde_json::from_str(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#).unwrap(),
        ));
        spec.set_linux(Some(linux));
        let error = validate_create(dir.path(), &spec).expect_err("notify");
        assert!(matches!(error, ValidateError::Seccomp(_)), "{error}");
    }

    #[test]
    fn ids() {
        assert!(validate_id("abc-1_2.3").is_ok());
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(129)] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_default_spec_is_valid() {
        let plan = validate_create(
            Path::new("/"),
            &spec_with(&[
                LinuxNamespaceType::Mount,
                LinuxNamespaceType::Uts,
                LinuxNamespaceType::Pid,
            ]),
        )
        .unwrap();
        assert!(plan.creates(Kind::Pid));
    }

    #[test]
    fn hostname_needs_uts() {
        let err =
            validate_create(Path::new("/"), &spec_with(&[LinuxNamespaceType::Mount])).unwrap_err();
        assert!(matches!(err, ValidateError::HostnameWithoutUts(_)), "{err}");
    }

    #[test]
    fn rootfs_must_exist_and_be_absolute() {
        let spec = spec_with(&[LinuxNamespaceType::Mount]);
        assert!(matches!(
            validate_create(Path::new("relative"), &spec),
            Err(ValidateError::RootfsRelative(_))
        ));
        assert!(matches!(
            validate_create(Path::new("/nonexistent/rootfs"), &spec),
            Err(ValidateError::RootfsNotDirectory(_))
        ));
    }

    #[test]
    fn process_needs_args_and_absolute_cwd() {
        let mut spec = spec_with(&[LinuxNamespaceType::Mount, LinuxNamespaceType::Uts]);
        spec.set_process(Some(
            ProcessBuilder::default()
                .args(Vec::<String>::new())
                .build()
                .unwrap(),
        ));
        assert!(matches!(
            validate_create(Path::new("/"), &spec),
            Err(ValidateError::EmptyArgs)
        ));
        spec.set_process(Some(
            ProcessBuilder::default()
                .args(vec!["a".to_string()])
                .cwd("rel")
                .build()
                .unwrap(),
        ));
        assert!(matches!(
            validate_create(Path::new("/"), &spec),
            Err(ValidateError::RelativeCwd(_))
        ));
        spec.set_process(None);
        assert!(matches!(
            validate_create(Path::new("/"), &spec),
            Err(ValidateError::MissingProcess)
        ));
    }
}

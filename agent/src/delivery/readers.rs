//! Holds the containers that mount a delivered model's volume to what its owner approved
//! (the declaration's `readers`: a rootfs digest and an exact command each).
//!
//! The node writes every container's spec and shares every rootfs, so without this it
//! could run the approved image with another command, or change the image's files on the
//! share, and read the model. For a container that mounts a volume whose declaration
//! lists readers, the agent:
//!
//! - checks what the spec takes from the node: its command must be an approved one, it
//!   needs a pid namespace of its own, its binds may cover only the files a pod runtime
//!   writes (hosts, hostname, resolver, the termination log) and memory
//!   volumes (its other mounts are kernel file systems, as in every container next to a
//!   model, see [`super::guard`]), and its environment no dynamic-loader variable;
//! - copies the shared rootfs into guest memory ([`VERIFIED_DIR`]), digesting exactly what
//!   it copied, and runs the container from the copy only if the digest is approved with
//!   that command. The node cannot change the copy: it is not shared.
//!
//! Where the owner gives a reader environment rules or a working directory, the container
//! must match them too (a variable such as `PYTHONPATH`, or a working directory the node
//! binds, would otherwise make an approved interpreter run the node's code). What stays the
//! node's: the environment and working directory of readers without them, the user,
//! resource limits, and the contents of the files it may bind (DNS answers included).

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Mount, Spec};
use veil_protocol::delivery::ApprovedReader;
use veil_protocol::rootfs::{copy_tree, format_digest, TreeError};
use veil_protocol::{PathError, GUEST_VOLUMES_DIR};

use super::guard::{bind_of, loader_variable, PidNamespace, Reach};

/// Where approved readers' rootfs are copied, in the guest's `/run` tmpfs (guest RAM).
pub const VERIFIED_DIR: &str = "/run/veil/verified";

/// Destinations a reader may bind from the node: files the pod runtime writes for every
/// container. A bind anywhere else could lay the node's files over the verified rootfs;
/// `/dev/shm` from the node would show the node what the reader's processes share there
/// (the shim gives a pod's shm as the memory volume `veil.shm`).
const NODE_BIND_DESTINATIONS: [&str; 4] = [
    "/etc/hosts",
    "/etc/hostname",
    "/etc/resolv.conf",
    "/dev/termination-log",
];

/// The delivered volumes a container mounts whose owners approve their readers, each with
/// its approved readers.
pub type Pins = [(String, Vec<ApprovedReader>)];

/// For each pinned volume, the rootfs digests approved with a container's command.
pub type ApprovedDigests = Vec<(String, Vec<[u8; 32]>)>;

/// Why a container may not mount a volume whose owner approves its readers. Each says what
/// the owner approved or what to change.
#[derive(Debug, thiserror::Error)]
pub enum Unapproved {
    /// Its command is not approved.
    #[error("its command {args:?} is not one the model owner approved for volume {volume} (approved: {approved}); run an approved command, or have the owner add this one to io.veil.model.readers")]
    Command {
        /// The container's args.
        args: Vec<String>,
        /// The volume.
        volume: String,
        /// What the owner approved.
        approved: String,
    },
    /// Its environment has a variable the owner's rules for this command do not allow.
    #[error("its environment sets {variable}, which the model owner's environment rules for this command do not allow for volume {volume} (approved: {approved}); the node added or changed it, and such a variable (PYTHONPATH, say) can make the approved program run other code")]
    Environment {
        /// The variable's name.
        variable: String,
        /// The volume.
        volume: String,
        /// What the owner approved.
        approved: String,
    },
    /// Its working directory is not the one the owner approved with this command.
    #[error("its working directory is {}, not the one the model owner approved with this command for volume {volume} (approved: {approved}); from another directory (one the node binds, say) an interpreter can load the node's code", .cwd.display())]
    WorkingDirectory {
        /// The container's working directory.
        cwd: PathBuf,
        /// The volume.
        volume: String,
        /// What the owner approved.
        approved: String,
    },
    /// Its rootfs is not the approved one.
    #[error("its rootfs has the digest {got}, which the model owner did not approve with this command for volume {volume} (approved: {approved}); the node changed the image's files or runs another image")]
    Rootfs {
        /// What the copy digested to.
        got: String,
        /// The volume.
        volume: String,
        /// What the owner approved for this command.
        approved: String,
    },
    /// It does not have a pid namespace of its own.
    #[error("it does not have a pid namespace of its own ({0}); a container approved to read the model needs one (no shareProcessNamespace), or the containers sharing it could read the model through /proc/<pid>/root")]
    SharedPidNamespace(String),
    /// A bind from the node over the rootfs.
    #[error("the mount at {} binds {} from the node; a container approved to read the model may take from the node only /etc/hosts, /etc/hostname, /etc/resolv.conf and /dev/termination-log, besides memory volumes (a pod's /dev/shm among them), so that nothing of the node's covers its verified rootfs and the node sees nothing it writes", .destination.display(), .from.display())]
    NodeBind {
        /// Where it is mounted.
        destination: PathBuf,
        /// The source.
        from: PathBuf,
    },
    /// An environment variable that makes the dynamic loader run other code.
    #[error("its environment sets {0}, which makes the dynamic loader load code the model owner did not approve; remove it")]
    LoaderVariable(String),
    /// The copy failed.
    #[error("its rootfs could not be copied into guest memory to be verified: {0}")]
    Copy(#[from] TreeError),
    /// The copy could not be prepared or removed.
    #[error(transparent)]
    Io(#[from] PathError),
}

/// For each pinned volume, the rootfs digests the owner approved with the container's
/// command, after checking what else its spec takes from the node.
pub fn check_spec(spec: &Spec, reach: &Reach, pins: &Pins) -> Result<ApprovedDigests, Unapproved> {
    match &reach.pid {
        PidNamespace::New => {}
        PidNamespace::Joined(path) => {
            return Err(Unapproved::SharedPidNamespace(format!(
                "it joins {}",
                path.display()
            )))
        }
        PidNamespace::Agent => {
            return Err(Unapproved::SharedPidNamespace("it has none".into()));
        }
    }
    for mount in spec.mounts().iter().flatten() {
        check_mount(mount)?;
    }
    let process = spec.process().as_ref();
    if let Some(name) = process.and_then(loader_variable) {
        return Err(Unapproved::LoaderVariable(name));
    }
    let args = process.and_then(|p| p.args().clone()).unwrap_or_default();
    let cwd = process.map_or(Path::new("/"), |p| p.cwd().as_path());
    pins.iter()
        .map(|(volume, readers)| {
            let with_command: Vec<&ApprovedReader> =
                readers.iter().filter(|r| r.args == args).collect();
            if with_command.is_empty() {
                return Err(Unapproved::Command {
                    args: args.clone(),
                    volume: volume.clone(),
                    approved: list(readers),
                });
            }
            let in_cwd: Vec<&ApprovedReader> = with_command
                .into_iter()
                .filter(|r| r.cwd.as_deref().is_none_or(|c| c == cwd))
                .collect();
            if in_cwd.is_empty() {
                return Err(Unapproved::WorkingDirectory {
                    cwd: cwd.to_path_buf(),
                    volume: volume.clone(),
                    approved: list(readers),
                });
            }
            let digests: Vec<[u8; 32]> = in_cwd
                .iter()
                .filter(|r| r.unapproved_variable(&reach.env).is_none())
                .map(|r| r.rootfs)
                .collect();
            if digests.is_empty() {
                let variable = in_cwd[0]
                    .unapproved_variable(&reach.env)
                    .unwrap_or_default();
                return Err(Unapproved::Environment {
                    variable: variable.to_string(),
                    volume: volume.clone(),
                    approved: list(readers),
                });
            }
            Ok((volume.clone(), digests))
        })
        .collect()
}

fn list(readers: &[ApprovedReader]) -> String {
    readers
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Binds only from memory volumes or at the files the pod runtime writes; the other file
/// systems are the kernel's (the guard refuses the rest in every container next to a model).
fn check_mount(mount: &Mount) -> Result<(), Unapproved> {
    let Some(bind) = bind_of(mount) else {
        return Ok(());
    };
    let destination = mount.destination();
    let from_volume = bind.resolved.starts_with(GUEST_VOLUMES_DIR);
    if from_volume
        || NODE_BIND_DESTINATIONS
            .iter()
            .any(|d| destination == Path::new(d))
    {
        return Ok(());
    }
    Err(Unapproved::NodeBind {
        destination: destination.clone(),
        from: bind.source.clone(),
    })
}

/// Where container `id`'s verified rootfs is copied.
pub fn verified_rootfs(id: &str) -> PathBuf {
    Path::new(VERIFIED_DIR).join(id)
}

/// Copies `rootfs` to `destination` (replacing what a failed earlier attempt left) and
/// keeps the copy only if its digest is among those approved for every pinned volume.
pub fn copy_approved(
    rootfs: &Path,
    destination: &Path,
    approved: &ApprovedDigests,
) -> Result<[u8; 32], Unapproved> {
    remove_copy(destination)?;
    if let Some(parent) = destination.parent() {
        std::fs::create_dir_all(parent).map_err(PathError::at("create", parent))?;
    }
    let outcome = copy_tree(rootfs, destination)
        .map_err(Unapproved::from)
        .and_then(|digest| check_digest(digest, approved).map(|()| digest));
    if outcome.is_err() {
        let _ = remove_copy(destination);
    }
    outcome
}

pub(crate) fn check_digest(digest: [u8; 32], approved: &ApprovedDigests) -> Result<(), Unapproved> {
    match approved
        .iter()
        .find(|(_, digests)| !digests.contains(&digest))
    {
        None => Ok(()),
        Some((volume, digests)) => Err(Unapproved::Rootfs {
            got: format_digest(&digest),
            volume: volume.clone(),
            approved: digests
                .iter()
                .map(format_digest)
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// Removes a verified copy; one that is not there is fine.
pub fn remove_copy(destination: &Path) -> Result<(), Unapproved> {
    match std::fs::remove_dir_all(destination) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(PathError::at("remove", destination)(e).into())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_protocol::rootfs::digest_tree;

    const ARGS: &str = r#"["veil-model-server", "serve", "--model", "/model/m"]"#;

    /// A reader's spec as the shim writes it for `ctr run --net-host --mount ...`.
    fn spec(args: &str, extra_mounts: &str, env: &str, namespaces: &str) -> Spec {
        let json = format!(
            r#"{{"ociVersion": "1.0.2",
                "process": {{"args": {args}, "cwd": "/", "user": {{"uid": 0, "gid": 0}}, "env": ["PATH=/bin", {env}]}},
                "mounts": [
                    {{"destination": "/proc", "type": "proc", "source": "proc"}},
                    {{"destination": "/dev", "type": "tmpfs", "source": "tmpfs"}},
                    {{"destination": "/etc/hosts", "type": "bind", "source": "/run/veil/shared/c1/hosts", "options": ["rbind", "ro"]}},
                    {{"destination": "/model", "type": "bind", "source": "{GUEST_VOLUMES_DIR}/model", "options": ["rbind", "ro"]}}
                    {extra_mounts}
                ],
                "linux": {{"namespaces": [{{"type": "mount"}}, {namespaces}]}}}}"#
        );
        serde_json::from_str(&json.replace(", ]", "]")).expect("spec")
    }

    fn reader_spec() -> Spec {
        spec(ARGS, "", r#""HOME=/""#, r#"{"type": "pid"}"#)
    }

    fn pins(digests: &[[u8; 32]]) -> Vec<(String, Vec<ApprovedReader>)> {
        let args: Vec<String> = serde_json::from_str(ARGS).expect("args");
        let readers = digests
            .iter()
            .map(|d| ApprovedReader {
                rootfs: *d,
                args: args.clone(),
                env: Vec::new(),
                cwd: None,
            })
            .collect();
        vec![("model".into(), readers)]
    }

    fn check(spec: &Spec) -> Result<ApprovedDigests, Unapproved> {
        let reach = Reach::of(spec, Path::new("/run/veil/shared/c1/rootfs"));
        check_spec(spec, &reach, &pins(&[[1; 32], [2; 32]]))
    }

    #[test]
    fn an_approved_command_yields_the_digests_approved_with_it() {
        let approved = check(&reader_spec()).expect("approved");
        assert_eq!(
            approved,
            vec![("model".to_string(), vec![[1; 32], [2; 32]])]
        );
    }

    #[test]
    fn another_command_is_refused_naming_what_was_approved() {
        let other = spec(
            r#"["sh", "-c", "cat /model/m"]"#,
            "",
            r#""A=b""#,
            r#"{"type": "pid"}"#,
        );
        let error = check(&other).expect_err("other command");
        assert!(matches!(error, Unapproved::Command { .. }), "{error}");
        let text = error.to_string();
        assert!(
            text.contains("cat /model/m") && text.contains("veil-model-server"),
            "{text}"
        );
        // One argument more is another command too.
        let longer = spec(
            r#"["veil-model-server", "serve", "--model", "/model/m", "--dump"]"#,
            "",
            r#""A=b""#,
            r#"{"type": "pid"}"#,
        );
        assert!(matches!(check(&longer), Err(Unapproved::Command { .. })));
    }

    #[test]
    fn with_environment_and_directory_rules_only_the_readers_they_allow_count() {
        let mut readers = pins(&[[1; 32], [2; 32]]);
        readers[0].1[0].env = vec!["PATH=/bin".into(), "HOME".into()];
        readers[0].1[1].env = vec!["PATH=/bin".into()];
        let spec_with = |env: &str| spec(ARGS, "", env, r#"{"type": "pid"}"#);
        let check_with = |spec: &Spec| {
            let reach = Reach::of(spec, Path::new("/run/veil/shared/c1/rootfs"));
            check_spec(spec, &reach, &readers)
        };
        assert_eq!(
            check_with(&spec_with(r#""HOME=/root""#)).expect("allowed"),
            vec![("model".to_string(), vec![[1; 32]])]
        );
        let error = check_with(&spec_with(r#""PYTHONPATH=/dev/shm""#)).expect_err("PYTHONPATH");
        assert!(
            matches!(&error, Unapproved::Environment { variable, .. } if variable == "PYTHONPATH"),
            "{error}"
        );
        // And a working directory, where the reader gives one (the spec's is /).
        readers[0].1[0].cwd = Some("/srv".into());
        readers[0].1[1].cwd = Some("/srv".into());
        let reach = Reach::of(
            &spec_with(r#""HOME=/root""#),
            Path::new("/run/veil/shared/c1/rootfs"),
        );
        let moved = check_spec(&spec_with(r#""HOME=/root""#), &reach, &readers).expect_err("cwd");
        assert!(
            matches!(&moved, Unapproved::WorkingDirectory { cwd, .. } if cwd == Path::new("/")),
            "{moved}"
        );
    }

    #[test]
    fn a_shared_or_missing_pid_namespace_is_refused() {
        let joined = spec(
            ARGS,
            "",
            r#""A=b""#,
            r#"{"type": "pid", "path": "/proc/7/ns/pid"}"#,
        );
        assert!(matches!(
            check(&joined),
            Err(Unapproved::SharedPidNamespace(_))
        ));
        let none = spec(ARGS, "", r#""A=b""#, r#"{"type": "network"}"#);
        assert!(matches!(
            check(&none),
            Err(Unapproved::SharedPidNamespace(_))
        ));
    }

    #[test]
    fn node_files_may_cover_only_the_pod_runtimes_files() {
        let over_binary = r#", {"destination": "/bin", "type": "bind", "source": "/run/veil/shared/c1/evil", "options": ["rbind"]}"#;
        let error = check(&spec(ARGS, over_binary, r#""A=b""#, r#"{"type": "pid"}"#))
            .expect_err("bind over /bin");
        assert!(
            matches!(&error, Unapproved::NodeBind { destination, .. } if destination == Path::new("/bin")),
            "{error}"
        );
        let by_option = r#", {"destination": "/lib", "source": "/run/veil/shared/c1/lib", "options": ["bind"]}"#;
        assert!(matches!(
            check(&spec(ARGS, by_option, r#""A=b""#, r#"{"type": "pid"}"#)),
            Err(Unapproved::NodeBind { .. })
        ));
        let resolver = r#", {"destination": "/etc/resolv.conf", "type": "bind", "source": "/run/veil/shared/c1/resolv.conf", "options": ["rbind"]}, {"destination": "/scratch", "type": "bind", "source": "/run/veil/volumes/scratch", "options": ["rbind"]}, {"destination": "/dev/shm", "type": "bind", "source": "/run/veil/volumes/veil.shm", "options": ["rbind"]}"#;
        check(&spec(ARGS, resolver, r#""A=b""#, r#"{"type": "pid"}"#))
            .expect("resolver, a volume and the pod's shm in guest memory");
        let node_shm = r#", {"destination": "/dev/shm", "type": "bind", "source": "/run/veil/shared/c1/mounts/3", "options": ["rbind"]}"#;
        let error = check(&spec(ARGS, node_shm, r#""A=b""#, r#"{"type": "pid"}"#))
            .expect_err("the node's shm");
        assert!(
            matches!(&error, Unapproved::NodeBind { destination, .. } if destination == Path::new("/dev/shm")),
            "{error}"
        );
    }

    #[test]
    fn loader_variables_are_refused() {
        let preload = spec(ARGS, "", r#""LD_PRELOAD=/model/m""#, r#"{"type": "pid"}"#);
        let error = check(&preload).expect_err("LD_PRELOAD");
        assert!(
            matches!(&error, Unapproved::LoaderVariable(name) if name == "LD_PRELOAD"),
            "{error}"
        );
    }

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("bin")).expect("bin");
        std::fs::write(dir.path().join("bin/server"), b"approved code").expect("server");
        dir
    }

    #[test]
    fn an_approved_rootfs_is_copied_and_kept() {
        let source = tree();
        let digest = digest_tree(source.path()).expect("digest");
        let target = tempfile::tempdir().expect("target");
        let copy = target.path().join("verified/c1");
        let got = copy_approved(source.path(), &copy, &vec![("model".into(), vec![digest])])
            .expect("approved");
        assert_eq!(got, digest);
        assert_eq!(
            std::fs::read(copy.join("bin/server")).expect("copied"),
            b"approved code"
        );
        remove_copy(&copy).expect("remove");
        assert!(!copy.exists());
        remove_copy(&copy).expect("removing twice is fine");
    }

    #[test]
    fn a_changed_rootfs_is_refused_and_its_copy_removed() {
        let source = tree();
        let approved = digest_tree(source.path()).expect("digest");
        std::fs::write(source.path().join("bin/server"), b"the node's code").expect("change");
        let target = tempfile::tempdir().expect("target");
        let copy = target.path().join("c1");
        let error = copy_approved(
            source.path(),
            &copy,
            &vec![("model".into(), vec![approved])],
        )
        .expect_err("changed");
        let text = error.to_string();
        assert!(matches!(error, Unapproved::Rootfs { .. }), "{text}");
        assert!(text.contains(&format_digest(&approved)), "{text}");
        assert!(!copy.exists(), "the refused copy is removed");
    }
}

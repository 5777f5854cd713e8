//! The pod's cgroup on the host.
//!
//! kubelet sizes every pod's cgroup (its containers' limits plus the RuntimeClass overhead)
//! and containerd names the sandbox's place in it in the sandbox spec's `linux.cgroupsPath`.
//! Under runc the containers' processes live there. Under veil the VM is what spends the
//! pod's CPU and memory, so the shim moves itself into that cgroup before it starts QEMU,
//! which inherits it: the pod's usage, limits and overhead then cover the VM, as with Kata's
//! `sandbox_cgroup_only`. The containers' own cgroups are inside the guest.
//!
//! Both forms of `cgroupsPath` are understood: a path (containerd's cgroupfs driver,
//! `/kubepods/besteffort/pod<uid>/<id>`) and systemd's `slice:prefix:name`
//! (`kubepods-besteffort-pod<uid>.slice:cri-containerd:<id>`), whose slice names expand to
//! nested directories the way systemd lays them out. Where systemd is init, it is asked for
//! that scope first ([`systemd`]); elsewhere the leaf is a plain directory. The shim joins
//! that path in every mounted hierarchy, as runc's cgroupfs driver does: the unified one
//! (cgroup v2) and, on a v1 or hybrid host, each v1 controller's (a new cpuset first inherits
//! its parent's CPUs and memory nodes, without which the kernel refuses members).

use std::path::{Path, PathBuf};

use cgroups_rs::systemd::utils::expand_slice;

mod systemd;

/// Placing the VM in the pod's cgroup failed.
#[derive(Debug, thiserror::Error)]
pub enum PodCgroupError {
    /// The spec's `cgroupsPath` is neither a path nor `slice:prefix:name`.
    #[error("linux.cgroupsPath {0:?} is neither a cgroup path nor systemd's slice:prefix:name; check the kubelet and containerd cgroup driver settings")]
    InvalidPath(String),
    /// systemd refused the pod's scope, or did not answer on the system bus.
    #[error("ask systemd for the pod's scope {scope} in {slice}: {reason}; the cgroupsPath is systemd's slice:prefix:name (kubelet's and containerd's systemd cgroup driver) and systemd runs this host, so its manager must answer on the system bus (/run/dbus/system_bus_socket)")]
    Systemd {
        /// The scope unit.
        scope: String,
        /// Its slice.
        slice: String,
        /// What failed.
        reason: String,
    },
    /// The cgroup could not be created or joined.
    #[error("{what} {path}: {source}; the shim runs as root and needs the cgroup hierarchies mounted writable (as runc does)")]
    Io {
        /// The step.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PodCgroupError {
    let path = path.to_path_buf();
    move |source| PodCgroupError::Io { what, path, source }
}

/// What a spec's `linux.cgroupsPath` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupsPath {
    /// A directory below each hierarchy's root (containerd's cgroupfs driver).
    Directory(PathBuf),
    /// systemd's `slice:prefix:name`: the scope unit `prefix-name.scope` in `slice`.
    Systemd {
        /// `kubepods-besteffort-pod<uid>.slice`.
        slice: String,
        /// `cri-containerd-<id>.scope`.
        scope: String,
    },
}

impl CgroupsPath {
    /// Parses `cgroups_path`, refusing what neither driver writes.
    pub fn parse(cgroups_path: &str) -> Result<CgroupsPath, PodCgroupError> {
        let invalid = || PodCgroupError::InvalidPath(cgroups_path.to_string());
        if cgroups_path.contains("..") {
            return Err(invalid());
        }
        if let Some(relative) = cgroups_path.strip_prefix('/') {
            return Ok(CgroupsPath::Directory(PathBuf::from(relative)));
        }
        match cgroups_path.split(':').collect::<Vec<_>>().as_slice() {
            [slice, prefix, name] if !name.is_empty() && !name.contains('/') => {
                let scope = if prefix.is_empty() {
                    format!("{name}.scope")
                } else {
                    format!("{prefix}-{name}.scope")
                };
                expand_slice(slice).map_err(|_| invalid())?;
                Ok(CgroupsPath::Systemd {
                    slice: slice.to_string(),
                    scope,
                })
            }
            // runc reads a relative path below its own cgroup; the shim's is containerd's, which
            // is not where kubelet put the pod, so the root is the only sensible base.
            [relative] if !relative.is_empty() => {
                Ok(CgroupsPath::Directory(PathBuf::from(relative)))
            }
            _ => Err(invalid()),
        }
    }

    /// The directory, relative to a hierarchy's mount: systemd nests a slice in the slice
    /// named by each prefix up to a dash (`kubepods-besteffort-pod1.slice` →
    /// `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice`).
    pub fn relative_dir(&self) -> PathBuf {
        match self {
            CgroupsPath::Directory(relative) => relative.clone(),
            CgroupsPath::Systemd { slice, scope } => {
                // parse() checked the slice.
                PathBuf::from(expand_slice(slice).unwrap_or_default()).join(scope)
            }
        }
    }
}

/// One mounted cgroup hierarchy this process is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Where it is mounted.
    pub mount: PathBuf,
    /// Its controllers as `/proc/self/cgroup` names them (`memory`, `cpu,cpuacct`,
    /// `name=systemd`); empty for the unified hierarchy.
    pub controllers: String,
    /// This process's cgroup in it (`/system.slice/containerd.service`).
    pub current: String,
}

/// The hierarchies mounted in full (`/proc/self/mountinfo`) that this process is a member of
/// (`/proc/self/cgroup`), each once.
pub fn hierarchies(mountinfo: &str, own: &str) -> Vec<Hierarchy> {
    let memberships: Vec<(&str, &str)> = own
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let _id = fields.next()?;
            Some((fields.next()?, fields.next()?.trim()))
        })
        .collect();
    let mut found: Vec<Hierarchy> = Vec::new();
    for line in mountinfo.lines() {
        let Some((mount_fields, fs_fields)) = line.split_once(" - ") else {
            continue;
        };
        let mount_fields: Vec<&str> = mount_fields.split(' ').collect();
        let fs_fields: Vec<&str> = fs_fields.split(' ').collect();
        let (Some(&root), Some(&mount), Some(&fstype), Some(&options)) = (
            mount_fields.get(3),
            mount_fields.get(4),
            fs_fields.first(),
            fs_fields.get(2),
        ) else {
            continue;
        };
        // A bind mount of a sub-tree does not show the hierarchy's paths as they are.
        if root != "/" {
            continue;
        }
        let options: Vec<&str> = options.split(',').collect();
        let membership = memberships.iter().find(|(controllers, _)| match fstype {
            "cgroup2" => controllers.is_empty(),
            "cgroup" => {
                !controllers.is_empty() && controllers.split(',').all(|c| options.contains(&c))
            }
            _ => false,
        });
        if let Some((controllers, current)) = membership {
            if !found.iter().any(|h| h.controllers == *controllers) {
                found.push(Hierarchy {
                    mount: PathBuf::from(mount),
                    controllers: controllers.to_string(),
                    current: current.to_string(),
                });
            }
        }
    }
    found
}

/// The hierarchies this process is in, read from `/proc/self`.
pub fn own_hierarchies() -> Result<Vec<Hierarchy>, PodCgroupError> {
    let read =
        |path: &str| std::fs::read_to_string(path).map_err(io_error("read", Path::new(path)));
    Ok(hierarchies(
        &read("/proc/self/mountinfo")?,
        &read("/proc/self/cgroup")?,
    ))
}

/// Gives every cpuset from below `mount` down to `dir` its parent's CPUs and memory nodes
/// where it has none: a v1 cpuset starts empty, and an empty one takes no members.
fn inherit_cpusets(mount: &Path, dir: &Path) -> Result<(), PodCgroupError> {
    let Ok(relative) = dir.strip_prefix(mount) else {
        return Ok(());
    };
    let mut parent = mount.to_path_buf();
    for part in relative.components() {
        let child = parent.join(part);
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let own = std::fs::read_to_string(child.join(file)).unwrap_or_default();
            if own.trim().is_empty() {
                let inherited = std::fs::read_to_string(parent.join(file))
                    .map_err(io_error("read", &parent.join(file)))?;
                std::fs::write(child.join(file), inherited.trim())
                    .map_err(io_error("initialise", &child.join(file)))?;
            }
        }
        parent = child;
    }
    Ok(())
}

/// The shim (and so its VM) inside the pod's cgroup, in every hierarchy.
#[derive(Debug)]
pub struct PodCgroup {
    /// Per hierarchy joined: the pod's directory, and where the shim was before (to go back
    /// to, so the directory can be removed).
    joined: Vec<(PathBuf, PathBuf)>,
    /// systemd's unit for the pod, where systemd made it.
    scope: Option<systemd::Scope>,
}

impl PodCgroup {
    /// Moves the shim into the cgroup `cgroups_path` names in every hierarchy, creating it.
    /// With systemd's form on a host that systemd runs, systemd is first asked for the
    /// pod's scope, as runc's and Kata's systemd drivers do: a directory made behind
    /// systemd's back is unknown to it, so nothing would stop or account the unit.
    pub fn join(cgroups_path: &str) -> Result<PodCgroup, PodCgroupError> {
        let path = CgroupsPath::parse(cgroups_path)?;
        // Read before systemd moves the shim: this is where it goes back to.
        let found = own_hierarchies()?;
        let pid = std::process::id();
        let scope = match &path {
            CgroupsPath::Systemd { slice, scope } if systemd::is_running() => {
                Some(systemd::Scope::start(slice, scope, pid)?)
            }
            CgroupsPath::Systemd { scope, .. } => {
                tracing::info!(%scope, "systemd does not run this host: the pod's scope is a plain directory");
                None
            }
            CgroupsPath::Directory(_) => None,
        };
        match Self::join_hierarchies(&found, &path.relative_dir(), pid) {
            Ok(mut pod) => {
                pod.scope = scope;
                Ok(pod)
            }
            Err(error) => {
                if let Some(scope) = scope {
                    scope.stop();
                }
                Err(error)
            }
        }
    }

    fn join_hierarchies(
        found: &[Hierarchy],
        relative: &Path,
        pid: u32,
    ) -> Result<PodCgroup, PodCgroupError> {
        let mut pod = PodCgroup {
            joined: Vec::new(),
            scope: None,
        };
        for hierarchy in found {
            let dir = hierarchy.mount.join(relative);
            let previous = hierarchy
                .mount
                .join(hierarchy.current.trim_start_matches('/'));
            if let Err(error) = join_one(hierarchy, &dir, pid) {
                pod.leave_directories();
                return Err(error);
            }
            pod.joined.push((dir, previous));
        }
        if pod.joined.is_empty() {
            tracing::warn!("no cgroup hierarchy mounted: the VM is not placed in the pod's cgroup");
        } else {
            tracing::info!(cgroups = ?pod.dirs(), "the shim and its VM run in the pod's cgroup");
        }
        Ok(pod)
    }

    /// The pod's directory in each hierarchy.
    pub fn dirs(&self) -> Vec<&Path> {
        self.joined.iter().map(|(dir, _)| dir.as_path()).collect()
    }

    /// Moves the shim back where it was and removes the pod's directories (after QEMU
    /// exited; a directory with processes in it cannot be removed), then stops systemd's
    /// scope, which is empty by then, so stopping it kills nothing.
    pub fn leave(&self) {
        self.leave_directories();
        if let Some(scope) = &self.scope {
            scope.stop();
        }
    }

    fn leave_directories(&self) {
        let pid = std::process::id().to_string();
        for (dir, previous) in self.joined.iter().rev() {
            let procs = previous.join("cgroup.procs");
            if let Err(error) = std::fs::write(&procs, &pid) {
                tracing::warn!(cgroup = %previous.display(), %error, "could not move the shim out of the pod cgroup");
                continue;
            }
            if let Err(error) = std::fs::remove_dir(dir) {
                if error.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(cgroup = %dir.display(), %error, "could not remove the pod cgroup");
                }
            }
        }
    }
}

/// Creates `dir` (and its parents) in `hierarchy`, ready to take members.
pub fn create_in(hierarchy: &Hierarchy, dir: &Path) -> Result<(), PodCgroupError> {
    std::fs::create_dir_all(dir).map_err(io_error("create the pod cgroup", dir))?;
    if hierarchy.controllers.split(',').any(|c| c == "cpuset") {
        inherit_cpusets(&hierarchy.mount, dir)?;
    }
    Ok(())
}

fn join_one(hierarchy: &Hierarchy, dir: &Path, pid: u32) -> Result<(), PodCgroupError> {
    create_in(hierarchy, dir)?;
    let procs = dir.join("cgroup.procs");
    std::fs::write(&procs, pid.to_string())
        .map_err(io_error("move the shim into the pod cgroup", &procs))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "/sys/fs/cgroup";

    fn dir(path: &str) -> Result<PathBuf, PodCgroupError> {
        CgroupsPath::parse(path).map(|parsed| Path::new(ROOT).join(parsed.relative_dir()))
    }

    #[test]
    fn cgroupfs_paths_are_below_the_root() {
        assert_eq!(
            dir("/kubepods/besteffort/pod1234/abcd").unwrap(),
            PathBuf::from("/sys/fs/cgroup/kubepods/besteffort/pod1234/abcd")
        );
        assert_eq!(
            dir("/default/ctr-1").unwrap(),
            PathBuf::from("/sys/fs/cgroup/default/ctr-1")
        );
    }

    #[test]
    fn systemd_slices_expand_to_nested_directories_with_a_scope_leaf() {
        assert_eq!(
            dir("kubepods-besteffort-pod12_34.slice:cri-containerd:abcd").unwrap(),
            PathBuf::from(
                "/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12_34.slice/cri-containerd-abcd.scope"
            )
        );
        assert_eq!(
            dir("system.slice::abcd").unwrap(),
            PathBuf::from("/sys/fs/cgroup/system.slice/abcd.scope")
        );
        assert_eq!(
            dir("-.slice:veil:x").unwrap(),
            PathBuf::from("/sys/fs/cgroup/veil-x.scope")
        );
    }

    #[test]
    fn malformed_paths_are_refused_naming_them() {
        for bad in [
            "",
            "/a/../../etc",
            "kubepods.slice:cri-containerd:",
            "kubepods:cri-containerd:abcd",
            "kubepods--x.slice:p:abcd",
            "a:b",
            "a:b:c:d",
            "kubepods.slice:p:a/b",
        ] {
            let error = dir(bad).expect_err(bad).to_string();
            assert!(error.contains("cgroupsPath"), "{bad}: {error}");
        }
    }

    /// This development machine's (hybrid: v1 controllers and an empty unified hierarchy).
    const HYBRID_MOUNTINFO: &str =
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
90 35 0:32 /pods /mnt/pods rw,relatime - cgroup cgroup rw,memory
";
    const HYBRID_CGROUP: &str = "9:name=systemd:/
4:memory:/process_api/d9c7
3:cpuset:/
1:cpu:/
0::/
";

    #[test]
    fn every_fully_mounted_hierarchy_is_found_with_the_own_path() {
        let found = hierarchies(HYBRID_MOUNTINFO, HYBRID_CGROUP);
        let summary: Vec<(String, String, String)> = found
            .iter()
            .map(|h| {
                (
                    h.mount.display().to_string(),
                    h.controllers.clone(),
                    h.current.clone(),
                )
            })
            .collect();
        let expected = [
            ("/sys/fs/cgroup/cpu", "cpu", "/"),
            ("/sys/fs/cgroup/cpuset", "cpuset", "/"),
            ("/sys/fs/cgroup/memory", "memory", "/process_api/d9c7"),
            ("/sys/fs/cgroup/systemd", "name=systemd", "/"),
            ("/sys/fs/cgroup/unified", "", "/"),
        ]
        .map(|(m, c, p)| (m.to_string(), c.to_string(), p.to_string()));
        assert_eq!(summary, expected);

        let unified = hierarchies(
            "30 1 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
            "0::/system.slice/containerd.service\n",
        );
        assert_eq!(
            unified,
            vec![Hierarchy {
                mount: PathBuf::from("/sys/fs/cgroup"),
                controllers: String::new(),
                current: "/system.slice/containerd.service".into(),
            }]
        );
    }

    #[test]
    fn joining_creates_the_directories_seeds_cpusets_and_writes_the_pid() {
        let root = tempfile::tempdir().expect("tempdir");
        let mount = |name: &str| {
            let dir = root.path().join(name);
            std::fs::create_dir_all(&dir).expect("mkdir");
            dir
        };
        let cpuset = mount("cpuset");
        std::fs::write(cpuset.join("cpuset.cpus"), "0-1\n").expect("write");
        std::fs::write(cpuset.join("cpuset.mems"), "0\n").expect("write");
        let found = [
            Hierarchy {
                mount: mount("memory"),
                controllers: "memory".into(),
                current: "/".into(),
            },
            Hierarchy {
                mount: cpuset.clone(),
                controllers: "cpuset".into(),
                current: "/".into(),
            },
        ];
        let pod = PodCgroup::join_hierarchies(&found, Path::new("kubepods/pod1/abcd"), 4242)
            .expect("joined");
        assert_eq!(
            pod.dirs(),
            vec![
                root.path().join("memory/kubepods/pod1/abcd"),
                root.path().join("cpuset/kubepods/pod1/abcd")
            ]
        );
        for dir in pod.dirs() {
            assert_eq!(
                std::fs::read_to_string(dir.join("cgroup.procs")).expect("procs"),
                "4242"
            );
        }
        for level in ["kubepods", "kubepods/pod1", "kubepods/pod1/abcd"] {
            let dir = cpuset.join(level);
            assert_eq!(
                std::fs::read_to_string(dir.join("cpuset.cpus")).expect("cpus"),
                "0-1"
            );
            assert_eq!(
                std::fs::read_to_string(dir.join("cpuset.mems")).expect("mems"),
                "0"
            );
        }
    }
}

//! Keeps the node's hands off a delivered model: what a container of a VM that receives a
//! sealed model may ask for.
//!
//! The node writes every container's OCI spec, so in a VM with a model delivery the agent
//! checks each spec for the ways it could reach the model's volume other than by mounting
//! it (which makes the container wait for the delivery and is announced to the owner):
//!
//! - a rootfs or a bind mount from a guest path outside the files the node shares
//!   ([`GUEST_SHARED_DIR`]) and the memory volumes ([`GUEST_VOLUMES_DIR`]), for example
//!   the guest's `/`, or a shared symlink that points at the volume;
//! - the agent's own pid namespace, whose `/proc/1/root` is the guest's root;
//! - capabilities that read kernel memory or other processes' memory;
//! - sysctls outside the container's own namespaces (`kernel.core_pattern` runs a program
//!   as the guest's root);
//! - mounts other than binds and the kernel's own file systems: an overlay whose
//!   `lowerdir` is the volume shows the model without binding it;
//! - kernel file systems it could change the whole guest through: `/proc/sys` not read-only
//!   (the guest's root may set `kernel.core_pattern` there, whose program the kernel runs
//!   as the guest's root outside every container), or a writable sysfs or cgroup mount;
//! - device rules that let it open the guest's attestation devices (`/dev/sev-guest`,
//!   `/dev/tdx_guest`, TPMs): a container that can ask for a report of this VM with data of
//!   its choosing can be given the model's key by the broker. configfs, the other way to
//!   reports, is not a file system it may mount.
//!
//! Every check is of paths as they resolve at the time, and the node's side of the share can
//! answer differently later. So the container's init mounts only what was checked
//! ([`Reach::pins`]): it opens each source once, compares where it leads with what the check
//! saw, and mounts from the descriptor; the shared rootfs is bound onto a guest directory
//! under [`PINNED_ROOTFS_DIR`], so no later step looks the shared path up again.
//!
//! Exec into a container that can reach the model is refused unless the owner's
//! declaration allows it (see [`super::Deliveries::exec_denied_for`]).
//!
//! The containers' files and commands come from the node: which containers may mount the
//! volume, the owner says with approved readers, held in [`super::readers`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, Mount, Process, Spec};
use veil_container::cgroups::{Access, DeviceClass, DeviceRuleError, DeviceRules};
use veil_container::{Pin, SourcePins};
use veil_protocol::delivery::variable_name;
use veil_protocol::rootfs::clean_lexically;
use veil_protocol::{GUEST_SHARED_DIR, GUEST_VOLUMES_DIR};

/// Where the shared rootfs of a container in a VM that receives a model is bound for its
/// init: guest memory, out of the node's reach.
pub const PINNED_ROOTFS_DIR: &str = "/run/veil/roots";

/// Capabilities that reach beyond a container's namespaces: kernel memory, modules, raw
/// devices, other processes' memory, and mounts or BPF programs that can read either.
const REACHING_CAPABILITIES: [&str; 6] = [
    "CAP_SYS_ADMIN",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_PTRACE",
    "CAP_BPF",
    "CAP_PERFMON",
];

/// File systems a container may mount besides binds: they take no guest path, so they hold
/// nothing of the node's and cannot show the model's volume (an overlay could, through its
/// `lowerdir`).
const KERNEL_FILE_SYSTEMS: [&str; 7] = [
    "proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2",
];

/// Kernel file systems whose files change the whole guest, which containerd mounts `ro`
/// unless the container is privileged: through a writable cgroup mount a process could
/// move itself out of its cgroup, past its device rules.
const GUEST_WIDE_FILE_SYSTEMS: [&str; 3] = ["sysfs", "cgroup", "cgroup2"];

/// Sysctl prefixes that belong to a container's own namespaces (runc's list).
const NAMESPACED_SYSCTL_PREFIXES: [&str; 3] = ["net.", "fs.mqueue.", "kernel.shm"];
/// Single namespaced sysctls (runc's list).
const NAMESPACED_SYSCTLS: [&str; 6] = [
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.hostname",
    "kernel.domainname",
];

/// Misc devices that give attestation reports: SEV-SNP's and TDX's guest drivers.
const ATTESTATION_MISC_DEVICES: [&str; 2] = ["sev-guest", "tdx_guest"];
/// Device classes whose every device gives attestation evidence (TPM quotes).
const ATTESTATION_CLASSES: [&str; 2] = ["tpm", "tpmrm"];

/// A character device of the guest, as sysfs numbers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestDevice {
    /// Its name, e.g. `sev-guest`.
    pub name: String,
    /// Its major number.
    pub major: u32,
    /// Its minor number.
    pub minor: u32,
}

/// The attestation devices the guest kernel has, found under `sys` (normally `/sys`): a
/// container may make a node for any of them, so their numbers matter, not their nodes.
pub fn attestation_devices(sys: &Path) -> Vec<GuestDevice> {
    let misc = ATTESTATION_MISC_DEVICES
        .iter()
        .map(|name| (name.to_string(), sys.join("class/misc").join(name)));
    let classes = ATTESTATION_CLASSES.iter().flat_map(|class| {
        std::fs::read_dir(sys.join("class").join(class))
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| {
                (
                    entry.file_name().to_string_lossy().into_owned(),
                    entry.path(),
                )
            })
    });
    misc.chain(classes)
        .filter_map(|(name, dir)| {
            let numbers = std::fs::read_to_string(dir.join("dev")).ok()?;
            let (major, minor) = numbers.trim().split_once(':')?;
            Some(GuestDevice {
                name,
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
            })
        })
        .collect()
}

/// How a container's pid namespace is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidNamespace {
    /// A new one.
    New,
    /// Joined by path.
    Joined(PathBuf),
    /// None in the spec: the agent's own.
    Agent,
}

/// One bind mount, with its source as the guest resolves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// Where it is mounted in the container.
    pub destination: PathBuf,
    /// The source the spec names.
    pub source: PathBuf,
    /// The source with symlinks resolved (lexically normalised when it does not exist).
    pub resolved: PathBuf,
    /// Bound `ro`.
    pub read_only: bool,
}

/// A mount of a file system other than a bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSystemMount {
    /// Where it is mounted.
    pub destination: PathBuf,
    /// Its type.
    pub typ: String,
    /// Mounted `ro`.
    pub read_only: bool,
}

/// What a container's create request reaches in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    /// The rootfs, resolved.
    pub rootfs: PathBuf,
    /// Its bind mounts.
    pub binds: Vec<Bind>,
    /// Its pid namespace.
    pub pid: PidNamespace,
    /// The IPC namespace it joins by path, if it does.
    pub joined_ipc: Option<PathBuf>,
    /// Capabilities in any of its process's sets.
    pub capabilities: BTreeSet<String>,
    /// Sysctl keys it sets.
    pub sysctls: Vec<String>,
    /// Its other mounts.
    pub file_systems: Vec<FileSystemMount>,
    /// The paths its spec makes read-only or masks (`linux.readonlyPaths`,
    /// `linux.maskedPaths`).
    pub protected_paths: Vec<PathBuf>,
    /// Its process's environment (`NAME=VALUE`), what an exec the owner listed may have.
    pub env: Vec<String>,
    /// The device rules its cgroup will enforce.
    pub devices: Result<DeviceRules, DeviceRuleError>,
}

/// Why a container may not run next to a delivered model. Each says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Confinement {
    /// The rootfs is not a shared directory.
    #[error("its rootfs {} is a guest path, not one the node shares under {GUEST_SHARED_DIR}; a pod that receives a sealed model runs containers from shared rootfs only", .0.display())]
    RootfsOutsideShare(PathBuf),
    /// A bind mount's source is a guest path.
    #[error("the mount at {} binds {}, which resolves to the guest path {}; in a pod that receives a sealed model only files shared by the node (under {GUEST_SHARED_DIR}) and memory volumes (under {GUEST_VOLUMES_DIR}) can be bound", .destination.display(), .given.display(), .resolved.display())]
    BindOutsideShare {
        /// Where it is mounted.
        destination: PathBuf,
        /// The source as given.
        given: PathBuf,
        /// Where it leads.
        resolved: PathBuf,
    },
    /// No pid namespace of its own.
    #[error("it has no pid namespace, so it would share the agent's, whose /proc/1/root is the guest's root with the model's volume; give it one (no hostPID)")]
    AgentPidNamespace,
    /// Joins a pid namespace that is no container's.
    #[error("it joins the pid namespace {}, which is not /proc/<pid>/ns/pid of a container in this VM; give it a new one or join its pod's", .0.display())]
    ForeignPidNamespace(PathBuf),
    /// Joins an IPC namespace that is no container's.
    #[error("it joins the IPC namespace {}, which is not /proc/<pid>/ns/ipc of a container in this VM; give it a new one or join its pod's", .0.display())]
    ForeignIpcNamespace(PathBuf),
    /// A capability that reaches beyond its namespaces.
    #[error("it asks for {0}, which can read kernel or other processes' memory; a pod that receives a sealed model cannot have it (drop it, and do not run the container privileged)")]
    ReachingCapability(String),
    /// A file system that could show guest paths (an overlay whose lower directory is the
    /// volume) or another share.
    #[error("the mount at {} is of type {typ}, which can show guest directories (an overlay's lowerdir) or another share; besides bind mounts, only {} can be mounted", .destination.display(), KERNEL_FILE_SYSTEMS.join(", "))]
    FileSystem {
        /// Where it is mounted.
        destination: PathBuf,
        /// Its type.
        typ: String,
    },
    /// Device rules that cannot be enforced.
    #[error("{0}")]
    DeviceRules(DeviceRuleError),
    /// Device rules that let it open an attestation device.
    #[error("its device rules (linux.resources.devices) let it open {} ({}:{}), through which it could ask for attestation reports of this VM and be given the model's key; a pod that receives a sealed model cannot allow that device (remove the rule that allows it, and do not run the container privileged)", .0.name, .0.major, .0.minor)]
    AttestationDevice(GuestDevice),
    /// A kernel file system mounted writable whose files change the whole guest.
    #[error("the {typ} mount at {} is writable, and through it the container could change the whole guest (move itself out of its cgroup, past its device rules, say); mount it ro, as containerd does unless the container is privileged", .destination.display())]
    WritableGuestFileSystem {
        /// Where it is mounted.
        destination: PathBuf,
        /// Its type.
        typ: String,
    },
    /// A proc mount whose sysctls are writable.
    #[error("its proc mount leaves {} writable: as the guest's root it could set kernel.core_pattern, whose program the kernel runs as the guest's root outside every container; list {} in linux.readonlyPaths, as containerd does unless the container is privileged", .0.display(), .0.display())]
    WritableSysctls(PathBuf),
    /// A sysctl of the whole guest.
    #[error("it sets the sysctl {0}, which is not namespaced and would change the whole guest; only net.*, kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.* and the host and domain names can be set")]
    GlobalSysctl(String),
}

impl Reach {
    /// What `spec`, run on `rootfs`, reaches.
    pub fn of(spec: &Spec, rootfs: &Path) -> Reach {
        Reach {
            rootfs: resolve(rootfs),
            binds: spec.mounts().iter().flatten().filter_map(bind_of).collect(),
            pid: pid_namespace(spec),
            joined_ipc: namespace_entry(spec, LinuxNamespaceType::Ipc)
                .and_then(|ns| ns.path().clone()),
            capabilities: capabilities(spec),
            sysctls: spec
                .linux()
                .as_ref()
                .and_then(|l| l.sysctl().as_ref())
                .map(|s| s.keys().cloned().collect())
                .unwrap_or_default(),
            file_systems: spec
                .mounts()
                .iter()
                .flatten()
                .filter(|m| bind_of(m).is_none())
                .map(|m| FileSystemMount {
                    destination: m.destination().clone(),
                    typ: m.typ().as_deref().unwrap_or("none").to_string(),
                    read_only: m.options().iter().flatten().any(|o| o == "ro"),
                })
                .collect(),
            protected_paths: spec
                .linux()
                .iter()
                .flat_map(|l| [l.readonly_paths(), l.masked_paths()])
                .flatten()
                .flatten()
                .map(PathBuf::from)
                .collect(),
            env: spec
                .process()
                .as_ref()
                .and_then(|p| p.env().clone())
                .unwrap_or_default(),
            devices: DeviceRules::of(spec.linux().as_ref().and_then(|l| l.resources().as_ref())),
        }
    }

    /// Holds the container's init to what this check saw: every bind source, and the shared
    /// rootfs at `shared_rootfs` unless it runs from a copy in guest memory (`None`).
    pub fn pins(&self, shared_rootfs: Option<&Path>) -> SourcePins {
        SourcePins {
            rootfs: shared_rootfs.map(|path| Pin {
                path: path.to_path_buf(),
                leads_to: self.rootfs.clone(),
            }),
            binds: self
                .binds
                .iter()
                .map(|b| (b.source.clone(), b.resolved.clone()))
                .collect(),
        }
    }

    /// Names of the memory volumes its bind mounts lead to, sorted.
    pub fn volumes(&self) -> Vec<String> {
        volume_names(self.binds.iter())
    }

    /// The namespace of an approved reader it joins, if any, as a refusal's subject;
    /// `readers` are the approved readers' ids and init pids.
    pub fn joined_reader(&self, readers: &[(String, i32)]) -> Option<String> {
        readers.iter().find_map(|(reader, pid)| {
            if self.pid == PidNamespace::Joined(pid_ns_path(*pid)) {
                return Some(format!("the pid namespace of container {reader}, which the model owner approved to read the sealed model: it could read the model through /proc/<pid>/root; give it a pid namespace of its own"));
            }
            (self.joined_ipc == Some(ipc_ns_path(*pid))).then(|| format!("the IPC namespace of container {reader}, which the model owner approved to read the sealed model: it could attach the reader's shared memory; give it the pod's IPC namespace or one of its own"))
        })
    }

    /// Names of the memory volumes it binds writable, sorted.
    pub fn written_volumes(&self) -> Vec<String> {
        volume_names(self.binds.iter().filter(|b| !b.read_only))
    }

    /// Whether it may run in a VM that receives a sealed model; `containers` are the init
    /// pids of the VM's containers, whose pid namespaces it may join, and `attestation` the
    /// guest's attestation devices ([`attestation_devices`]).
    pub fn check_sealed(
        &self,
        containers: &[i32],
        attestation: &[GuestDevice],
    ) -> Result<(), Confinement> {
        if !self.rootfs.starts_with(GUEST_SHARED_DIR) {
            return Err(Confinement::RootfsOutsideShare(self.rootfs.clone()));
        }
        if let Some(bind) = self
            .binds
            .iter()
            .find(|b| !is_shared_or_volume(&b.resolved))
        {
            return Err(Confinement::BindOutsideShare {
                destination: bind.destination.clone(),
                given: bind.source.clone(),
                resolved: bind.resolved.clone(),
            });
        }
        match &self.pid {
            PidNamespace::New => {}
            PidNamespace::Agent => return Err(Confinement::AgentPidNamespace),
            PidNamespace::Joined(path) => {
                if !containers
                    .iter()
                    .any(|&pid| pid > 1 && *path == pid_ns_path(pid))
                {
                    return Err(Confinement::ForeignPidNamespace(path.clone()));
                }
            }
        }
        if let Some(path) = &self.joined_ipc {
            if !containers
                .iter()
                .any(|&pid| pid > 1 && *path == ipc_ns_path(pid))
            {
                return Err(Confinement::ForeignIpcNamespace(path.clone()));
            }
        }
        if let Some(cap) = REACHING_CAPABILITIES
            .iter()
            .find(|c| self.capabilities.contains(**c))
        {
            return Err(Confinement::ReachingCapability(cap.to_string()));
        }
        let devices = self
            .devices
            .as_ref()
            .map_err(|e| Confinement::DeviceRules(e.clone()))?;
        if let Some(device) = attestation.iter().find(|d| {
            [Access::READ, Access::WRITE]
                .into_iter()
                .any(|access| devices.allows(DeviceClass::Char, d.major, d.minor, access))
        }) {
            return Err(Confinement::AttestationDevice(device.clone()));
        }
        if let Some(key) = self.sysctls.iter().find(|k| !is_namespaced_sysctl(k)) {
            return Err(Confinement::GlobalSysctl(key.clone()));
        }
        if let Some(mount) = self
            .file_systems
            .iter()
            .find(|m| !KERNEL_FILE_SYSTEMS.contains(&m.typ.as_str()))
        {
            return Err(Confinement::FileSystem {
                destination: mount.destination.clone(),
                typ: mount.typ.clone(),
            });
        }
        self.check_kernel_file_systems_cannot_change_the_guest()
    }

    fn check_kernel_file_systems_cannot_change_the_guest(&self) -> Result<(), Confinement> {
        for mount in self.file_systems.iter().filter(|m| !m.read_only) {
            if GUEST_WIDE_FILE_SYSTEMS.contains(&mount.typ.as_str()) {
                return Err(Confinement::WritableGuestFileSystem {
                    destination: mount.destination.clone(),
                    typ: mount.typ.clone(),
                });
            }
            let sysctls = mount.destination.join("sys");
            let protected = self.protected_paths.iter().any(|p| sysctls.starts_with(p));
            if mount.typ == "proc" && !protected {
                return Err(Confinement::WritableSysctls(sysctls));
            }
        }
        Ok(())
    }
}

/// Creates the empty guest directory container `id`'s pinned rootfs is bound onto.
pub fn pinned_rootfs_mountpoint(id: &str) -> std::io::Result<PathBuf> {
    let path = Path::new(PINNED_ROOTFS_DIR).join(id);
    std::fs::create_dir_all(&path)?;
    Ok(path)
}

/// Removes the mount point; the bind onto it lived in the container's mount namespace.
pub fn remove_pinned_rootfs_mountpoint(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The memory volumes `binds` lead to, sorted.
fn volume_names<'a>(binds: impl Iterator<Item = &'a Bind>) -> Vec<String> {
    let base = Path::new(GUEST_VOLUMES_DIR);
    let names: BTreeSet<String> = binds
        .filter_map(|b| b.resolved.strip_prefix(base).ok())
        .filter_map(|rest| rest.components().next())
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    names.into_iter().collect()
}

fn pid_ns_path(pid: i32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/ns/pid"))
}

fn ipc_ns_path(pid: i32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/ns/ipc"))
}

/// Inside the share, or inside one named volume: the volumes' parent would bind them all
/// without naming any, so no delivery would be waited for.
fn is_shared_or_volume(path: &Path) -> bool {
    path.starts_with(GUEST_SHARED_DIR)
        || path
            .strip_prefix(GUEST_VOLUMES_DIR)
            .is_ok_and(|rest| rest.components().next().is_some())
}

fn is_namespaced_sysctl(key: &str) -> bool {
    NAMESPACED_SYSCTLS.contains(&key)
        || NAMESPACED_SYSCTL_PREFIXES
            .iter()
            .any(|prefix| key.starts_with(prefix))
}

/// A mount the container runtime binds (type `bind`, or a `bind`/`rbind` option). A
/// relative source stays as given: it would resolve against the mounting process's working
/// directory, so it is never inside the share.
pub(crate) fn bind_of(mount: &Mount) -> Option<Bind> {
    let source = mount.source().as_ref()?;
    let is_bind = mount.typ().as_deref() == Some("bind")
        || mount
            .options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind");
    is_bind.then(|| Bind {
        destination: mount.destination().clone(),
        source: source.clone(),
        read_only: mount.options().iter().flatten().any(|o| o == "ro"),
        resolved: if source.is_absolute() {
            resolve(source)
        } else {
            source.clone()
        },
    })
}

/// `path` with symlinks resolved as the guest sees them; a path that does not exist (yet)
/// is normalised lexically, `..` included, so that it cannot climb out of a prefix.
fn resolve(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| Path::new("/").join(clean_lexically(path)))
}

fn namespace_entry(spec: &Spec, kind: LinuxNamespaceType) -> Option<&LinuxNamespace> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|ns| ns.iter().find(|n| n.typ() == kind))
}

fn pid_namespace(spec: &Spec) -> PidNamespace {
    match namespace_entry(spec, LinuxNamespaceType::Pid) {
        None => PidNamespace::Agent,
        Some(ns) => match ns.path() {
            Some(path) => PidNamespace::Joined(path.clone()),
            None => PidNamespace::New,
        },
    }
}

fn capabilities(spec: &Spec) -> BTreeSet<String> {
    spec.process()
        .as_ref()
        .map(process_capabilities)
        .unwrap_or_default()
}

fn process_capabilities(process: &Process) -> BTreeSet<String> {
    let Some(caps) = process.capabilities().as_ref() else {
        return BTreeSet::new();
    };
    [
        caps.bounding(),
        caps.effective(),
        caps.inheritable(),
        caps.permitted(),
        caps.ambient(),
    ]
    .into_iter()
    .flatten()
    .flatten()
    .filter_map(|c| Some(serde_json::to_value(c).ok()?.as_str()?.to_string()))
    .collect()
}

/// The first dynamic-loader variable (`LD_*`) of the process's environment: it would make
/// the loader run code of the node's choosing inside an approved program.
pub(crate) fn loader_variable(process: &Process) -> Option<String> {
    let variable = process
        .env()
        .iter()
        .flatten()
        .find(|entry| entry.starts_with("LD_"))?;
    Some(variable_name(variable).to_string())
}

/// A process exec'd only because its command line is one the owner listed in
/// `exec-commands` still may not bring in code or reach: no variable the container itself
/// does not have (`PYTHONPATH`, say, would make a listed interpreter run the node's code),
/// no dynamic-loader variable, and no capability that reads kernel or other processes'
/// memory.
pub fn check_listed_exec(process: &Process, container_env: &[String]) -> Result<(), String> {
    if let Some(added) = process
        .env()
        .iter()
        .flatten()
        .find(|entry| !container_env.contains(entry))
    {
        let name = variable_name(added);
        return Err(format!("its environment sets {name}, which the container's own environment does not have as given; a listed command runs with the container's environment only"));
    }
    if let Some(name) = loader_variable(process) {
        return Err(format!("its environment sets {name}, which makes the dynamic loader load code the model owner did not list; remove it"));
    }
    let capabilities = process_capabilities(process);
    if let Some(reaching) = REACHING_CAPABILITIES
        .iter()
        .find(|c| capabilities.contains(**c))
    {
        return Err(format!(
            "it asks for {reaching}, which can read kernel or other processes' memory; exec it without"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).expect("spec")
    }

    fn shared_rootfs() -> PathBuf {
        PathBuf::from(format!("{GUEST_SHARED_DIR}/c1/rootfs"))
    }

    const CONFINED: &str = r#"{"ociVersion":"1.0.2",
        "process":{"cwd":"/","args":["sh"],"user":{"uid":0,"gid":0},"capabilities":{"bounding":["CAP_CHOWN","CAP_KILL"]}},
        "mounts":[
          {"destination":"/proc","type":"proc","source":"proc"},
          {"destination":"/model","type":"bind","source":"/run/veil/volumes/model","options":["rbind","ro"]},
          {"destination":"/etc/hosts","type":"bind","source":"/run/veil/shared/c1/mounts/0","options":["rbind"]}],
        "linux":{"namespaces":[{"type":"mount"},{"type":"pid"}],"sysctl":{"net.ipv4.ip_forward":"1","kernel.shmmax":"1"},
          "readonlyPaths":["/proc/bus","/proc/sys"]}}"#;

    #[test]
    fn a_container_as_the_shim_writes_it_is_confined_and_mounts_its_volume() {
        let reach = Reach::of(&spec(CONFINED), &shared_rootfs());
        assert_eq!(reach.check_sealed(&[], &[]), Ok(()));
        assert_eq!(reach.volumes(), vec!["model".to_string()]);
    }

    #[test]
    fn pins_hold_the_init_to_every_bind_source_and_the_shared_rootfs_as_resolved() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, "127.0.0.1 localhost\n").expect("write");
        let link = dir.path().join("hosts-link");
        std::os::unix::fs::symlink(&hosts, &link).expect("symlink");
        let json = CONFINED.replace(
            "/run/veil/shared/c1/mounts/0",
            link.to_str().expect("utf-8"),
        );
        let reach = Reach::of(&spec(&json), &shared_rootfs());
        let pins = reach.pins(Some(&shared_rootfs()));
        let rootfs = pins.rootfs.expect("the shared rootfs is pinned");
        assert_eq!(rootfs.path, shared_rootfs());
        assert_eq!(rootfs.leads_to, shared_rootfs());
        let expected_binds = [
            (
                PathBuf::from("/run/veil/volumes/model"),
                PathBuf::from("/run/veil/volumes/model"),
            ),
            (link, std::fs::canonicalize(&hosts).expect("canonical")),
        ];
        assert_eq!(pins.binds, expected_binds.into());
        assert_eq!(
            reach.pins(None).rootfs,
            None,
            "a verified copy is not pinned"
        );
    }

    #[test]
    fn a_listed_exec_brings_no_variable_of_its_own_and_no_reaching_capability() {
        let process = |json: &str| -> Process { serde_json::from_str(json).expect("process") };
        let plain = process(
            r#"{"cwd":"/","user":{"uid":0,"gid":0},"args":["cat","/tmp/healthy"],"env":["PATH=/bin"],"capabilities":{"bounding":["CAP_KILL"]}}"#,
        );
        let container_env = ["PATH=/bin".to_string(), "LD_PRELOAD=/tmp/x.so".to_string()];
        assert_eq!(check_listed_exec(&plain, &container_env), Ok(()));
        let python = process(
            r#"{"cwd":"/","user":{"uid":0,"gid":0},"args":["cat"],"env":["PATH=/bin","PYTHONPATH=/dev/shm"]}"#,
        );
        let error = check_listed_exec(&python, &container_env).expect_err("PYTHONPATH");
        assert!(error.contains("PYTHONPATH"), "{error}");
        let other_path = process(
            r#"{"cwd":"/","user":{"uid":0,"gid":0},"args":["cat"],"env":["PATH=/dev/shm:/bin"]}"#,
        );
        assert!(check_listed_exec(&other_path, &container_env).is_err());
        let preload = process(
            r#"{"cwd":"/","user":{"uid":0,"gid":0},"args":["cat"],"env":["LD_PRELOAD=/tmp/x.so"]}"#,
        );
        let error = check_listed_exec(&preload, &container_env).expect_err("LD_PRELOAD");
        assert!(error.contains("LD_PRELOAD"), "{error}");
        let ptrace = process(
            r#"{"cwd":"/","user":{"uid":0,"gid":0},"args":["cat"],"capabilities":{"effective":["CAP_SYS_PTRACE"]}}"#,
        );
        let error = check_listed_exec(&ptrace, &container_env).expect_err("CAP_SYS_PTRACE");
        assert!(error.contains("CAP_SYS_PTRACE"), "{error}");
    }

    fn refusal(json: &str, rootfs: &Path, containers: &[i32]) -> Confinement {
        Reach::of(&spec(json), rootfs)
            .check_sealed(containers, &[])
            .expect_err("refused")
    }

    #[test]
    fn a_rootfs_outside_the_share_is_refused() {
        let error = refusal(CONFINED, Path::new("/"), &[]);
        assert_eq!(error, Confinement::RootfsOutsideShare(PathBuf::from("/")));
        let climbing = PathBuf::from(format!("{GUEST_SHARED_DIR}/../volumes/model"));
        assert_eq!(
            refusal(CONFINED, &climbing, &[]),
            Confinement::RootfsOutsideShare(PathBuf::from("/run/veil/volumes/model"))
        );
    }

    #[test]
    fn binding_a_guest_path_is_refused_however_it_is_spelled() {
        for source in [
            "/",
            "run/veil/volumes",
            "/run/veil",
            "/run/veil/shared/../volumes",
            "/proc/1/root",
        ] {
            let json = CONFINED.replace("/run/veil/shared/c1/mounts/0", source);
            let error = refusal(&json, &shared_rootfs(), &[]);
            assert!(
                matches!(&error, Confinement::BindOutsideShare { destination, .. } if destination == Path::new("/etc/hosts")),
                "{source}: {error}"
            );
            assert!(error.to_string().contains(GUEST_SHARED_DIR), "{error}");
        }
        // A bind by option, whatever the type says.
        let by_option = CONFINED.replace(
            r#""type":"bind","source":"/run/veil/shared/c1/mounts/0""#,
            r#""type":"none","source":"/""#,
        );
        assert!(matches!(
            refusal(&by_option, &shared_rootfs(), &[]),
            Confinement::BindOutsideShare { .. }
        ));
    }

    #[test]
    fn a_shared_symlink_to_the_volume_counts_as_mounting_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/", &link).expect("symlink");
        let json = CONFINED.replace(
            "/run/veil/shared/c1/mounts/0",
            link.to_str().expect("utf-8"),
        );
        let error = refusal(&json, &shared_rootfs(), &[]);
        assert!(
            matches!(&error, Confinement::BindOutsideShare { resolved, .. } if resolved == Path::new("/")),
            "{error}"
        );
    }

    #[test]
    fn the_agents_pid_namespace_and_foreign_ones_are_refused() {
        let none = CONFINED.replace(r#",{"type":"pid"}"#, "");
        assert_eq!(
            refusal(&none, &shared_rootfs(), &[]),
            Confinement::AgentPidNamespace
        );
        let joined = CONFINED.replace(
            r#"{"type":"pid"}"#,
            r#"{"type":"pid","path":"/proc/42/ns/pid"}"#,
        );
        Reach::of(&spec(&joined), &shared_rootfs())
            .check_sealed(&[42], &[])
            .expect("the pod's sandbox container");
        assert_eq!(
            refusal(&joined, &shared_rootfs(), &[7]),
            Confinement::ForeignPidNamespace(PathBuf::from("/proc/42/ns/pid"))
        );
        let agent = joined.replace("/proc/42/", "/proc/1/");
        assert!(matches!(
            refusal(&agent, &shared_rootfs(), &[1]),
            Confinement::ForeignPidNamespace(_)
        ));
    }

    #[test]
    fn reaching_capabilities_in_any_set_are_refused() {
        for set in [
            "bounding",
            "effective",
            "permitted",
            "inheritable",
            "ambient",
        ] {
            let json = CONFINED.replace(
                r#""bounding":["CAP_CHOWN","CAP_KILL"]"#,
                &format!(r#""{set}":["CAP_CHOWN","CAP_SYS_PTRACE"]"#),
            );
            assert_eq!(
                refusal(&json, &shared_rootfs(), &[]),
                Confinement::ReachingCapability("CAP_SYS_PTRACE".into()),
                "{set}"
            );
        }
    }

    #[test]
    fn only_kernel_file_systems_are_mounted_besides_binds() {
        let overlay = r#"{"destination":"/peek","type":"overlay","source":"overlay","options":["lowerdir=/run/veil/volumes/model"]}"#;
        let share_again = r#"{"destination":"/opt","type":"virtiofs","source":"veil"}"#;
        for (mount, typ) in [(overlay, "overlay"), (share_again, "virtiofs")] {
            let json = CONFINED.replace(
                r#"{"destination":"/proc","type":"proc","source":"proc"},"#,
                &format!(r#"{{"destination":"/proc","type":"proc","source":"proc"}},{mount},"#),
            );
            let error = refusal(&json, &shared_rootfs(), &[]);
            assert!(
                matches!(&error, Confinement::FileSystem { typ: t, .. } if t == typ),
                "{error}"
            );
        }
    }

    #[test]
    fn only_namespaced_sysctls_are_allowed() {
        let json = CONFINED.replace(r#""kernel.shmmax":"1""#, r#""kernel.core_pattern":"|/x""#);
        assert_eq!(
            refusal(&json, &shared_rootfs(), &[]),
            Confinement::GlobalSysctl("kernel.core_pattern".into())
        );
        for key in [
            "kernel.msgmax",
            "fs.mqueue.msg_max",
            "kernel.hostname",
            "net.core.somaxconn",
        ] {
            assert!(is_namespaced_sysctl(key), "{key}");
        }
        assert!(!is_namespaced_sysctl("kernel.modprobe"));
        assert!(!is_namespaced_sysctl("vm.overcommit_memory"));
    }

    fn sev_guest() -> GuestDevice {
        GuestDevice {
            name: "sev-guest".into(),
            major: 10,
            minor: 123,
        }
    }

    fn with_device_rules(rules: &str) -> String {
        CONFINED.replace(
            r#""linux":{"#,
            &format!(r#""linux":{{"resources":{{"devices":{rules}}},"#),
        )
    }

    #[test]
    fn attestation_devices_are_found_by_their_sysfs_numbers() {
        let sys = tempfile::tempdir().expect("tempdir");
        let device = |dir: &str, numbers: &str| {
            let dir = sys.path().join("class").join(dir);
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(dir.join("dev"), numbers).expect("write");
        };
        device("misc/sev-guest", "10:123\n");
        device("misc/vsock", "10:121\n");
        device("tpmrm/tpmrm0", "253:65536\n");
        device("tpm/tpm0", "garbage\n");
        assert_eq!(
            attestation_devices(sys.path()),
            vec![
                sev_guest(),
                GuestDevice {
                    name: "tpmrm0".into(),
                    major: 253,
                    minor: 65536
                }
            ]
        );
        assert_eq!(attestation_devices(&sys.path().join("none")), vec![]);
    }

    #[test]
    fn device_rules_that_open_an_attestation_device_are_refused() {
        let check = |rules: &str, attestation: &[GuestDevice]| {
            Reach::of(&spec(&with_device_rules(rules)), &shared_rootfs())
                .check_sealed(&[], attestation)
        };
        let containerd = r#"[{"allow":false,"access":"rwm"}]"#;
        assert_eq!(check(containerd, &[sev_guest()]), Ok(()));
        let privileged = r#"[{"allow":true,"access":"rwm"}]"#;
        assert_eq!(check(privileged, &[]), Ok(()), "nothing to open");
        let refused = check(privileged, &[sev_guest()]).expect_err("allow all");
        assert_eq!(refused, Confinement::AttestationDevice(sev_guest()));
        assert!(
            refused.to_string().contains("sev-guest (10:123)"),
            "{refused}"
        );
        let misc_read =
            r#"[{"allow":false,"access":"rwm"},{"allow":true,"type":"c","major":10,"access":"r"}]"#;
        assert!(
            check(misc_read, &[sev_guest()]).is_err(),
            "reading is enough"
        );
        let mknod_only =
            r#"[{"allow":false,"access":"rwm"},{"allow":true,"type":"c","major":10,"access":"m"}]"#;
        assert_eq!(
            check(mknod_only, &[sev_guest()]),
            Ok(()),
            "a node it cannot open"
        );
        let bad = check(r#"[{"allow":true,"access":"rwx"}]"#, &[]).expect_err("bad rule");
        assert!(matches!(bad, Confinement::DeviceRules(_)), "{bad}");
    }

    fn with_mount(mount: &str) -> String {
        CONFINED.replace(
            r#"{"destination":"/proc","type":"proc","source":"proc"},"#,
            &format!(r#"{{"destination":"/proc","type":"proc","source":"proc"}},{mount},"#),
        )
    }

    #[test]
    fn writable_sysctls_are_refused_wherever_proc_is_mounted() {
        let open = CONFINED.replace(
            r#""readonlyPaths":["/proc/bus","/proc/sys"]"#,
            r#""readonlyPaths":["/proc/bus"]"#,
        );
        let refused = refusal(&open, &shared_rootfs(), &[]);
        assert_eq!(
            refused,
            Confinement::WritableSysctls(PathBuf::from("/proc/sys"))
        );
        assert!(
            refused.to_string().contains("kernel.core_pattern"),
            "{refused}"
        );
        let masked = open.replace(
            r#""readonlyPaths":["/proc/bus"]"#,
            r#""readonlyPaths":["/proc/bus"],"maskedPaths":["/proc/sys"]"#,
        );
        Reach::of(&spec(&masked), &shared_rootfs())
            .check_sealed(&[], &[])
            .expect("masked is as good");
        let second_proc =
            with_mount(r#"{"destination":"/host/proc","type":"proc","source":"proc"}"#);
        assert_eq!(
            refusal(&second_proc, &shared_rootfs(), &[]),
            Confinement::WritableSysctls(PathBuf::from("/host/proc/sys"))
        );
        let read_only =
            with_mount(r#"{"destination":"/p2","type":"proc","source":"proc","options":["ro"]}"#);
        Reach::of(&spec(&read_only), &shared_rootfs())
            .check_sealed(&[], &[])
            .expect("a read-only proc");
    }

    #[test]
    fn writable_sysfs_and_cgroup_mounts_are_refused() {
        for typ in ["sysfs", "cgroup", "cgroup2"] {
            let writable = with_mount(&format!(
                r#"{{"destination":"/sys","type":"{typ}","source":"{typ}","options":["nosuid","rw"]}}"#
            ));
            let refused = refusal(&writable, &shared_rootfs(), &[]);
            assert!(
                matches!(&refused, Confinement::WritableGuestFileSystem { typ: t, .. } if t == typ),
                "{typ}: {refused}"
            );
            let read_only = writable.replace(r#""rw""#, r#""ro""#);
            Reach::of(&spec(&read_only), &shared_rootfs())
                .check_sealed(&[], &[])
                .expect(typ);
        }
    }

    #[test]
    fn ipc_namespaces_are_joined_only_from_the_vms_containers() {
        let joined = CONFINED.replace(
            r#"{"type":"pid"}"#,
            r#"{"type":"pid"},{"type":"ipc","path":"/proc/42/ns/ipc"}"#,
        );
        Reach::of(&spec(&joined), &shared_rootfs())
            .check_sealed(&[42], &[])
            .expect("the pod's sandbox container");
        let through_a_task = joined.replace("/proc/42/ns/ipc", "/proc/42/task/42/ns/ipc");
        assert_eq!(
            refusal(&through_a_task, &shared_rootfs(), &[42]),
            Confinement::ForeignIpcNamespace(PathBuf::from("/proc/42/task/42/ns/ipc"))
        );
    }

    #[test]
    fn joining_a_readers_pid_or_ipc_namespace_is_named() {
        let readers = [("server".to_string(), 42)];
        for kind in ["pid", "ipc"] {
            let json = CONFINED.replace(
                r#"{"type":"pid"}"#,
                &format!(r#"{{"type":"{kind}","path":"/proc/42/ns/{kind}"}}"#),
            );
            let reach = Reach::of(&spec(&json), &shared_rootfs());
            let refusal = reach.joined_reader(&readers).expect(kind);
            assert!(
                refusal.starts_with(&format!(
                    "the {} namespace of container server",
                    kind.to_uppercase().replace("PID", "pid")
                )),
                "{refusal}"
            );
            assert_eq!(reach.joined_reader(&[("server".into(), 7)]), None);
        }
    }
}

//! One cgroup v2 directory per container, as Kata's agent keeps them in the guest:
//! `<root>/veil/<container-id>` (root normally /sys/fs/cgroup). The caller creates it and
//! applies `linux.resources` before the container is built; the init helper joins it
//! before it creates namespaces or forks, so the container's program (and every process
//! exec'd later) runs inside it from its first instruction.
//!
//! `linux.cgroupsPath` is the host's idea of a path (kubepods/...); in the guest it names
//! nothing, so the container id alone names the directory.

mod bpf;
mod devices;
mod resources;
mod stats;

use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::LinuxResources;

pub use bpf::BpfError;
pub use devices::{Access, DeviceClass, DeviceRule, DeviceRuleError, DeviceRules};
pub use resources::{cpu_max, plan_resources, shares_to_weight, ResourcePlan};
pub use stats::{CgroupStats, CpuStats, MemoryEvents, MemoryStats, PidsStats};

/// Where the agent mounts the cgroup2 hierarchy in the guest.
pub const GUEST_CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The directory below the root that holds every container's cgroup.
pub const CONTAINERS_PARENT: &str = "veil";
/// Controllers delegated to container cgroups, where the kernel has them.
const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];
/// How often removal retries while the killed processes finish exiting.
const REMOVE_ATTEMPTS: u32 = 100;
const REMOVE_RETRY_DELAY: Duration = Duration::from_millis(20);
/// How long the kernel may take to report a freeze or thaw complete (it waits for each
/// task to reach a safe point).
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);
const FREEZE_POLL: Duration = Duration::from_millis(5);

/// A cgroup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The name would not be a single directory below the parent.
    #[error("cgroup name {0:?} is not a plain directory name; use the container id")]
    InvalidName(String),
    /// mkdir failed.
    #[error(
        "create cgroup {path}: {source}; the guest needs cgroup2 mounted at {GUEST_CGROUP_ROOT}"
    )]
    Create {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Writing an interface file failed (a controller the kernel lacks, a bad value).
    #[error("write {value:?} to {path}: {source}; check the value and that the guest kernel has the controller (guest-image/kernel/minimal.fragment.config)")]
    Write {
        /// The interface file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// Why.
        source: std::io::Error,
    },
    /// Reading an interface file failed.
    #[error("read {path}: {source}")]
    Read {
        /// The interface file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An interface file held something unexpected.
    #[error("parse {path}: {detail}")]
    Parse {
        /// The interface file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// The kernel did not report the freeze or thaw complete in time.
    #[error("{path}: the kernel did not report frozen {wanted} within {seconds}s (cgroup.events: {events}); a task may be stuck in the kernel, try again")]
    FreezeTimeout {
        /// The cgroup.
        path: PathBuf,
        /// How long it waited.
        seconds: f32,
        /// 1 (freezing) or 0 (thawing).
        wanted: u8,
        /// What cgroup.events last said.
        events: String,
    },
    /// A `linux.resources.devices` rule cannot be enforced as written.
    #[error(transparent)]
    DeviceRule(#[from] DeviceRuleError),
    /// The device program could not be loaded or attached.
    #[error(transparent)]
    Devices(#[from] BpfError),
    /// rmdir failed (processes still in it, usually).
    #[error("remove cgroup {path}: {source}; a process of the container may still be exiting")]
    Remove {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The `frozen` line of cgroup.events.
fn frozen_flag(events: &str) -> Option<u8> {
    events
        .lines()
        .find_map(|line| line.strip_prefix("frozen "))
        .and_then(|value| value.trim().parse().ok())
}

/// A container's cgroup directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates (or reuses) `<root>/veil/<name>`, delegating the cpu, memory and pids
    /// controllers the kernel offers through each level's cgroup.subtree_control.
    pub fn create(root: &Path, name: &str) -> Result<Cgroup, CgroupError> {
        if name.is_empty() || name.starts_with('.') || name.contains('/') {
            return Err(CgroupError::InvalidName(name.to_string()));
        }
        let parent = root.join(CONTAINERS_PARENT);
        let controllers = available_controllers(root)?;
        enable_controllers(root, &controllers)?;
        make_dir(&parent)?;
        enable_controllers(&parent, &controllers)?;
        let path = parent.join(name);
        make_dir(&path)?;
        tracing::debug!(cgroup = %path.display(), ?controllers, "container cgroup created");
        Ok(Cgroup { path })
    }

    /// The directory, e.g. /sys/fs/cgroup/veil/web.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `resources` into the cgroup (create and update alike). Fields veil does not
    /// apply are logged at debug level, not refused: kubelet sends some for every pod.
    pub fn apply(&self, resources: &LinuxResources) -> Result<(), CgroupError> {
        let plan = plan_resources(resources);
        if !plan.ignored.is_empty() {
            tracing::debug!(cgroup = %self.path.display(), fields = ?plan.ignored, "resource fields not applied in the guest");
        }
        for (file, value) in &plan.writes {
            write_file(&self.path.join(file), value)?;
        }
        tracing::info!(cgroup = %self.path.display(), writes = ?plan.writes, "container resources applied");
        Ok(())
    }

    /// Lets the cgroup's processes create, read and write only the device nodes `rules`
    /// allow, replacing what it allowed before.
    pub fn restrict_devices(&self, rules: &DeviceRules) -> Result<(), CgroupError> {
        let program = bpf::load_device_program(&rules.program())?;
        bpf::attach_device_program(&self.path, &program)?;
        tracing::info!(cgroup = %self.path.display(), rules = rules.rules().len(), "container devices restricted");
        tracing::debug!(cgroup = %self.path.display(), rules = ?rules.rules().iter().map(ToString::to_string).collect::<Vec<_>>(), "device rules");
        Ok(())
    }

    /// CPU, memory and pids statistics.
    pub fn stats(&self) -> Result<CgroupStats, CgroupError> {
        stats::read_stats(&self.path)
    }

    /// How many times the kernel's OOM killer acted in the cgroup (one small read, for every
    /// container exit).
    pub fn oom_kills(&self) -> Result<u64, CgroupError> {
        stats::read_oom_kills(&self.path)
    }

    /// Freezes (`frozen`) or thaws every process in the cgroup, and waits until the kernel
    /// reports it done (`frozen 1` or `frozen 0` in cgroup.events): a write alone only
    /// starts it.
    pub fn freeze(&self, frozen: bool) -> Result<(), CgroupError> {
        self.freeze_within(frozen, FREEZE_TIMEOUT)
    }

    fn freeze_within(&self, frozen: bool, timeout: Duration) -> Result<(), CgroupError> {
        let wanted = u8::from(frozen);
        write_file(&self.path.join("cgroup.freeze"), &wanted.to_string())?;
        let events_file = self.path.join("cgroup.events");
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let events = read_file(&events_file)?;
            if frozen_flag(&events) == Some(wanted) {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(CgroupError::FreezeTimeout {
                    path: self.path.clone(),
                    seconds: timeout.as_secs_f32(),
                    wanted,
                    events: events.trim().replace('\n', ", "),
                });
            }
            std::thread::sleep(FREEZE_POLL);
        }
    }

    /// The pids of every process in the cgroup (cgroup.procs): all of the container's
    /// processes, whichever pid namespace they are in, as runc finds them for `kill --all`.
    pub fn processes(&self) -> Result<Vec<i32>, CgroupError> {
        let text = read_file(&self.path.join("cgroup.procs"))?;
        Ok(text
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect())
    }

    /// Kills whatever still runs in the cgroup (cgroup.kill) and removes the directory,
    /// retrying for about two seconds while the processes finish exiting.
    pub fn remove(self) -> Result<(), CgroupError> {
        let kill = self.path.join("cgroup.kill");
        if kill.exists() {
            // Best effort: rmdir below reports what is still there.
            if let Err(error) = std::fs::write(&kill, "1") {
                tracing::debug!(cgroup = %self.path.display(), %error, "cgroup.kill failed");
            }
        }
        let mut attempt = 0;
        loop {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) if is_busy(&e) && attempt < REMOVE_ATTEMPTS => {
                    attempt += 1;
                    std::thread::sleep(REMOVE_RETRY_DELAY);
                }
                Err(source) => {
                    return Err(CgroupError::Remove {
                        path: self.path,
                        source,
                    })
                }
            }
        }
    }
}

fn is_busy(error: &std::io::Error) -> bool {
    error.raw_os_error() == Some(libc::EBUSY)
}

fn make_dir(path: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(CgroupError::Create {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn read_file(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

/// The wanted controllers the root offers (cgroup.controllers).
fn available_controllers(root: &Path) -> Result<Vec<&'static str>, CgroupError> {
    let offered = read_file(&root.join("cgroup.controllers"))?;
    let offered: Vec<&str> = offered.split_whitespace().collect();
    Ok(CONTROLLERS
        .into_iter()
        .filter(|c| offered.contains(c))
        .collect())
}

/// One write per controller: a multi-controller write fails as a whole on the first
/// controller the level cannot enable.
fn enable_controllers(dir: &Path, controllers: &[&str]) -> Result<(), CgroupError> {
    let control = dir.join("cgroup.subtree_control");
    let enabled = std::fs::read_to_string(&control).unwrap_or_default();
    for controller in controllers {
        if enabled.split_whitespace().any(|c| c == *controller) {
            continue;
        }
        write_file(&control, &format!("+{controller}"))?;
    }
    Ok(())
}

/// Moves the calling process into the cgroup at `path` (writes "0" to cgroup.procs).
/// Runs in the init helper before it creates namespaces, so the container inherits it.
pub(crate) fn join(path: &Path) -> std::io::Result<()> {
    std::fs::write(path.join("cgroup.procs"), "0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxMemoryBuilder, LinuxResourcesBuilder};

    fn fake_root() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(
            root.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        root
    }

    #[test]
    fn freezing_writes_the_flag_and_waits_for_the_kernel_to_report_it() {
        let root = fake_root();
        let cgroup = Cgroup::create(root.path(), "web").unwrap();
        let events = cgroup.path().join("cgroup.events");
        std::fs::write(&events, "populated 1\nfrozen 1\n").unwrap();
        cgroup.freeze(true).unwrap();
        let flag = || std::fs::read_to_string(cgroup.path().join("cgroup.freeze")).unwrap();
        assert_eq!(flag(), "1");

        // Thawing is not done while the kernel still says frozen 1.
        let error = cgroup
            .freeze_within(false, Duration::from_millis(30))
            .unwrap_err()
            .to_string();
        assert_eq!(flag(), "0");
        assert!(error.contains("did not report frozen 0"), "{error}");
        assert!(error.contains("populated 1, frozen 1"), "{error}");
        std::fs::write(&events, "populated 1\nfrozen 0\n").unwrap();
        cgroup.freeze(false).unwrap();
    }

    #[test]
    fn create_delegates_controllers_and_makes_the_directory() {
        let root = fake_root();
        let cgroup = Cgroup::create(root.path(), "web").unwrap();
        assert_eq!(cgroup.path(), root.path().join("veil/web"));
        assert!(cgroup.path().is_dir());
        // A plain file keeps only the last write: the last controller enabled.
        let control = root.path().join("veil/cgroup.subtree_control");
        assert_eq!(std::fs::read_to_string(control).unwrap(), "+pids");
    }

    #[test]
    fn controllers_already_enabled_are_not_written_again() {
        let root = fake_root();
        std::fs::write(
            root.path().join("cgroup.subtree_control"),
            "cpu memory pids",
        )
        .unwrap();
        Cgroup::create(root.path(), "web").unwrap();
        let control = root.path().join("cgroup.subtree_control");
        assert_eq!(std::fs::read_to_string(control).unwrap(), "cpu memory pids");
    }

    #[test]
    fn names_that_leave_the_parent_are_refused() {
        let root = fake_root();
        for name in ["", "..", "../x", "a/b", ".hidden"] {
            assert!(
                matches!(
                    Cgroup::create(root.path(), name),
                    Err(CgroupError::InvalidName(_))
                ),
                "{name}"
            );
        }
    }

    fn memory_limit(bytes: i64) -> LinuxResources {
        LinuxResourcesBuilder::default()
            .memory(LinuxMemoryBuilder::default().limit(bytes).build().unwrap())
            .build()
            .unwrap()
    }

    #[test]
    fn apply_writes_the_mapped_files() {
        let root = fake_root();
        let cgroup = Cgroup::create(root.path(), "web").unwrap();
        let resources = memory_limit(1 << 26);
        cgroup.apply(&resources).unwrap();
        let max = std::fs::read_to_string(cgroup.path().join("memory.max")).unwrap();
        assert_eq!(max, "67108864");
    }

    #[test]
    fn a_failed_write_names_the_file_and_value() {
        let root = fake_root();
        let cgroup = Cgroup {
            path: root.path().join("missing"),
        };
        let resources = memory_limit(1 << 26);
        let error = cgroup.apply(&resources).unwrap_err().to_string();
        assert!(
            error.contains("memory.max") && error.contains("67108864"),
            "{error}"
        );
    }

    #[test]
    fn remove_deletes_the_directory_and_tolerates_absence() {
        let root = fake_root();
        let cgroup = Cgroup::create(root.path(), "web").unwrap();
        let path = cgroup.path().to_path_buf();
        cgroup.clone().remove().unwrap();
        assert!(!path.exists());
        cgroup.remove().unwrap();
    }

    #[test]
    fn processes_are_read_from_cgroup_procs() {
        let root = tempfile::tempdir().unwrap();
        let cgroup = Cgroup {
            path: root.path().to_path_buf(),
        };
        std::fs::write(root.path().join("cgroup.procs"), "12\n345\n").unwrap();
        assert_eq!(cgroup.processes().unwrap(), vec![12, 345]);
        std::fs::remove_file(root.path().join("cgroup.procs")).unwrap();
        let error = cgroup.processes().unwrap_err();
        assert!(error.to_string().contains("cgroup.procs"), "{error}");
    }

    #[test]
    fn join_writes_zero_to_cgroup_procs() {
        let root = fake_root();
        let cgroup = Cgroup::create(root.path(), "web").unwrap();
        join(cgroup.path()).unwrap();
        let procs = std::fs::read_to_string(cgroup.path().join("cgroup.procs")).unwrap();
        assert_eq!(procs, "0");
    }
}

//! `ContainerBuilder`: new -> options -> validate -> build (as youki's libcontainer).

use std::path::PathBuf;
use std::time::Duration;

use oci_spec::runtime::Spec;

use crate::cgroups::Cgroup;
use crate::container::Container;
use crate::pins::SourcePins;
use crate::request::{CreateRequest, InitRequest};
use crate::rootfs::RootSwitch;
use crate::signal::HeldNamespace;
use crate::spawn::{default_init_binary, launch, LaunchOptions, SpawnError};
use crate::stdio::{allocate, StdioConfig, StdioError};
use crate::validate::{ignored_fields, validate_create, validate_id, ValidateError};

/// How long a report from the init may take by default: generous, because a TCG guest
/// mounting over 9p is slow.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Creating a container failed.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The input was refused before anything ran.
    #[error("container {id}: {source}")]
    Validate {
        /// The container id.
        id: String,
        /// Why.
        source: ValidateError,
    },
    /// stdio could not be allocated.
    #[error("container {id}: {source}")]
    Stdio {
        /// The container id.
        id: String,
        /// Why.
        source: StdioError,
    },
    /// The new init's namespace could not be read from /proc (is /proc mounted?).
    #[error("container {id}: read /proc/{pid}/ns/mnt of its init: {source}")]
    Inspect {
        /// The container id.
        id: String,
        /// The init's pid.
        pid: i32,
        /// Why.
        source: std::io::Error,
    },
    /// The init helper or the container's init failed (the step is named).
    #[error("container {id}: {source}")]
    Spawn {
        /// The container id.
        id: String,
        /// Why.
        source: SpawnError,
    },
}

/// Builds a container from an already-present rootfs directory and an OCI spec.
///
/// The spec's `root.path` is ignored: `rootfs` is where the shim's share appears in the
/// guest. The stdio choice decides between pipes and a terminal (the shim knows what
/// containerd asked for; the spec's `process.terminal` is not consulted).
#[derive(Debug, Clone)]
pub struct ContainerBuilder {
    id: String,
    rootfs: PathBuf,
    spec: Spec,
    stdio: StdioConfig,
    init_binary: PathBuf,
    timeout: Duration,
    root_switch: RootSwitch,
    cgroup: Option<Cgroup>,
    pins: Option<SourcePins>,
}

impl ContainerBuilder {
    /// Starts a builder; stdio defaults to pipes without stdin.
    pub fn new(id: impl Into<String>, rootfs: impl Into<PathBuf>, spec: Spec) -> Self {
        ContainerBuilder {
            id: id.into(),
            rootfs: rootfs.into(),
            spec,
            stdio: StdioConfig::Pipes { stdin: false },
            init_binary: default_init_binary(),
            timeout: DEFAULT_TIMEOUT,
            root_switch: RootSwitch::PivotRoot,
            cgroup: None,
            pins: None,
        }
    }

    /// Runs the container (its init and every exec) in `cgroup`, which the caller created
    /// and configured ([`Cgroup::create`], [`Cgroup::apply`]). The init helper joins it
    /// before creating namespaces, so nothing of the container runs outside it.
    pub fn cgroup(mut self, cgroup: Cgroup) -> Self {
        self.cgroup = Some(cgroup);
        self
    }

    /// Chooses pipes, a terminal or /dev/null for the init process.
    pub fn stdio(mut self, stdio: StdioConfig) -> Self {
        self.stdio = stdio;
        self
    }

    /// The binary re-executed in init mode (default `/proc/self/exe`); it must call
    /// [`crate::maybe_run_init`] first in `main`.
    pub fn init_binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.init_binary = path.into();
        self
    }

    /// How long each report from the init may take (default [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How the root is switched (default [`RootSwitch::PivotRoot`]). An agent that runs
    /// from the initramfs cannot pivot_root: switch_root it into a tmpfs at boot, or use
    /// [`RootSwitch::PivotRootOrChroot`].
    pub fn root_switch(mut self, how: RootSwitch) -> Self {
        self.root_switch = how;
        self
    }

    /// Holds the rootfs and every bind source to where the caller saw them lead (see
    /// [`SourcePins`]); with a pinned rootfs, the builder's rootfs path is the empty
    /// directory it is bound onto.
    pub fn pin_sources(mut self, pins: SourcePins) -> Self {
        self.pins = Some(pins);
        self
    }

    /// Checks the input without running anything.
    pub fn validate(&self) -> Result<(), CreateError> {
        self.request().map(drop)
    }

    fn request(&self) -> Result<CreateRequest, CreateError> {
        let validate_error = |source| CreateError::Validate {
            id: self.id.clone(),
            source,
        };
        validate_id(&self.id).map_err(validate_error)?;
        let namespaces = validate_create(&self.rootfs, &self.spec).map_err(validate_error)?;
        Ok(CreateRequest {
            id: self.id.clone(),
            rootfs: self.rootfs.clone(),
            spec: self.spec.clone(),
            namespaces,
            terminal: self.stdio == StdioConfig::Terminal,
            root_switch: self.root_switch,
            cgroup: self.cgroup.as_ref().map(|c| c.path().to_path_buf()),
            pins: self.pins.clone(),
        })
    }

    /// Validates, then creates the container: namespaces, rootfs, mounts, credentials; its
    /// init waits for [`Container::start`] just before exec. Blocks until the init reports
    /// ready or fails (at most the timeout).
    pub fn build(self) -> Result<Container, CreateError> {
        let request = self.request()?;
        let mut ignored = ignored_fields(&self.spec);
        if self.cgroup.is_some() {
            // Applied by the caller through the cgroup.
            ignored.retain(|field| *field != "linux.resources");
        }
        if !ignored.is_empty() {
            tracing::warn!(container = %self.id, fields = ?ignored, "spec fields not applied by veil yet");
        }
        let size = self
            .spec
            .process()
            .as_ref()
            .and_then(|p| p.console_size())
            .map(|b| {
                (
                    u16::try_from(b.height()).unwrap_or(u16::MAX),
                    u16::try_from(b.width()).unwrap_or(u16::MAX),
                )
            });
        let (child_stdio, io) =
            allocate(self.stdio, size).map_err(|source| CreateError::Stdio {
                id: self.id.clone(),
                source,
            })?;
        let options = LaunchOptions {
            init_binary: self.init_binary,
            timeout: self.timeout,
        };
        let launched = launch(
            &InitRequest::Create(Box::new(request)),
            child_stdio,
            true,
            &options,
        )
        .map_err(|source| CreateError::Spawn {
            id: self.id.clone(),
            source,
        })?;
        // The init waits at the start gate, so its /proc entry is certainly its own.
        let mount_namespace =
            HeldNamespace::of(launched.pid).map_err(|source| CreateError::Inspect {
                id: self.id.clone(),
                pid: launched.pid,
                source,
            })?;
        tracing::debug!(container = %self.id, pid = launched.pid, "container created");
        let mut container =
            Container::new(self.id, self.rootfs, launched, io, options, mount_namespace);
        container.cgroup = self.cgroup;
        container.seccomp = self.spec.linux().as_ref().and_then(|l| l.seccomp().clone());
        Ok(container)
    }
}

//! Creates and runs OCI containers inside the veil guest, as runc does on a host: the
//! namespaces the spec asks for, the rootfs with pivot_root, the spec's mounts and devices,
//! hostname, user and groups, capabilities, rlimits, no_new_privileges, and stdio over
//! pipes or a pty. `veil-agent` (the guest's PID 1) links it.
//!
//! # How it works
//!
//! Creating a process re-executes the calling binary (`/proc/self/exe`) in an init mode
//! with the request as JSON on a pipe. That single-threaded helper joins (setns) or creates
//! (unshare) the namespaces and forks the container's init, which is PID 1 of the new pid
//! namespace. The helper reports the init's pid on a sync pipe and exits; the init prepares
//! the rootfs and the process, reports ready and blocks on a start pipe; `start` releases
//! it into execve. Any failure travels back as an [`InitFailure`] naming the step
//! (`mount proc at /proc: EPERM: Operation not permitted`). Exec works the same way,
//! joining the namespaces of the container's init and chrooting into its root.
//!
//! # What the caller must do
//!
//! - Call [`maybe_run_init`] first thing in `main`, before any thread or async runtime
//!   (build the tokio runtime by hand after it; `#[tokio::main]` starts threads first, and
//!   the helper refuses to run multi-threaded).
//! - Reap: the crate never waits for a process. Every process it starts (and the short-lived
//!   helpers) become children of the caller, which must be PID 1 or a child subreaper
//!   (`prctl(PR_SET_CHILD_SUBREAPER)`) and reap with `waitpid(-1)`. Exit statuses of pids the
//!   caller did not get from this crate are the helpers' and can be ignored. A process may
//!   exit (and be reaped) before the call that started it returns its pid: keep early
//!   exits by pid.
//! - Calls block (at most the builder's timeout per report); wrap them in
//!   `spawn_blocking` under tokio.
//! - The agent's mount namespace needs /proc, and devpts on /dev/pts for terminals.
//!
//! # API
//!
//! - [`maybe_run_init`]: first call in `main`.
//! - [`ContainerBuilder::new`]`(id, rootfs, spec)`, then [`stdio`](ContainerBuilder::stdio)
//!   ([`StdioConfig::Pipes`] / [`StdioConfig::Terminal`] / [`StdioConfig::Null`]),
//!   [`timeout`](ContainerBuilder::timeout), [`root_switch`](ContainerBuilder::root_switch),
//!   [`pin_sources`](ContainerBuilder::pin_sources) ([`SourcePins`]),
//!   [`validate`](ContainerBuilder::validate), [`build`](ContainerBuilder::build) giving a
//!   created [`Container`] whose init waits before exec.
//! - [`Container`]: [`pid`](Container::pid), [`status`](Container::status),
//!   [`take_init_process`](Container::take_init_process) (a [`Process`]: pid, stdin,
//!   stdout, stderr, pty_master), [`start`](Container::start), [`exec`](Container::exec),
//!   [`signal`](Container::signal), [`signal_all`](Container::signal_all),
//!   [`pids`](Container::pids), [`mark_stopped`](Container::mark_stopped),
//!   [`delete`](Container::delete).
//! - [`resize_pty`] and [`signal_process`] for any process the crate started.
//! - Errors: one enum per verb ([`CreateError`], [`StartError`], [`ExecError`],
//!   [`SignalError`], [`DeleteError`], [`StdioError`]), rolled up in [`Error`]; a failed step
//!   inside the container arrives as [`SpawnError::Init`] with an [`InitFailure`].
//!
//! ```no_run
//! use veil_container::{maybe_run_init, resize_pty, signal_process, ContainerBuilder, StdioConfig};
//! # fn main() -> Result<(), veil_container::Error> {
//! maybe_run_init();
//! # let spec = oci_spec::runtime::Spec::default();
//! let mut container = ContainerBuilder::new("web", "/run/veil/rootfs/web", spec)
//!     .stdio(StdioConfig::Pipes { stdin: true }) // or StdioConfig::Terminal
//!     .build()?; // created: init waits before exec
//! let init = container.take_init_process(); // pid + stdin/stdout/stderr or pty_master
//! container.start()?; // init execs process.args
//! # let process = oci_spec::runtime::Process::default();
//! let exec = container.exec("exec-1", &process, StdioConfig::Terminal)?;
//! if let Some(master) = &exec.pty_master {
//!     use std::os::fd::AsFd;
//!     resize_pty(master.as_fd(), 40, 120)?;
//! }
//! signal_process(exec.pid, libc::SIGTERM)?; // one process
//! container.signal(libc::SIGKILL)?; // the init (kills its whole pid namespace)
//! // ... the caller's reaper sees init.pid exit ...
//! container.mark_stopped();
//! container.delete()?;
//! # Ok(()) }
//! ```
//!
//! # Not applied yet
//!
//! User and time namespaces (refused), seccomp, hooks, AppArmor/SELinux, scheduler and I/O
//! priority (accepted, logged as not applied). Resources apply only through a
//! [`cgroups::Cgroup`] given to [`ContainerBuilder::cgroup`]; see [`cgroups`] for which
//! fields.

pub mod address_layout;
mod builder;
mod capabilities;
pub mod cgroups;
mod container;
mod delete;
mod devices;
mod error;
mod exec;
mod failure;
mod fd;
mod init;
mod mount_options;
mod namespaces;
mod pins;
mod process_setup;
mod request;
mod rootfs;
mod seccomp;
mod secure_join;
mod signal;
mod spawn;
mod start;
mod status;
mod stdio;
mod sync;
mod syscall;
mod validate;

pub use builder::{ContainerBuilder, CreateError, DEFAULT_TIMEOUT};
pub use container::{Container, Process};
pub use delete::DeleteError;
pub use error::Error;
pub use exec::ExecError;
pub use failure::InitFailure;
pub use init::maybe_run_init;
pub use namespaces::NamespaceError;
pub use pins::{Pin, SourcePins};
pub use rootfs::RootSwitch;
pub use seccomp::SeccompError;
pub use signal::{signal_process, SignalError};
pub use spawn::SpawnError;
pub use start::StartError;
pub use status::ContainerStatus;
pub use stdio::{resize_pty, StdioConfig, StdioError};
pub use sync::SyncError;
pub use validate::ValidateError;

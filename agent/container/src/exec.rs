//! `exec`: run another process in a container's namespaces and root (`ctr task exec`).

use crate::container::{Container, Process};
use crate::request::{ExecRequest, InitRequest};
use crate::spawn::{launch, SpawnError};
use crate::status::ContainerStatus;
use crate::stdio::{allocate, StdioConfig, StdioError};
use crate::validate::{validate_process, ValidateError};

/// Exec'ing a process failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The container has no live namespaces to join.
    #[error("container {id} is {status}; exec needs a created or running container")]
    InvalidState {
        /// The container id.
        id: String,
        /// Its state.
        status: ContainerStatus,
    },
    /// The process spec was refused.
    #[error("exec {exec_id} in container {id}: {source}")]
    Validate {
        /// The container id.
        id: String,
        /// The exec id.
        exec_id: String,
        /// Why.
        source: ValidateError,
    },
    /// stdio could not be allocated.
    #[error("exec {exec_id} in container {id}: {source}")]
    Stdio {
        /// The container id.
        id: String,
        /// The exec id.
        exec_id: String,
        /// Why.
        source: StdioError,
    },
    /// The helper or the process failed (the step is named).
    #[error("exec {exec_id} in container {id}: {source}")]
    Spawn {
        /// The container id.
        id: String,
        /// The exec id.
        exec_id: String,
        /// Why.
        source: SpawnError,
    },
}

impl Container {
    /// Runs `process` inside the container: joins all of its namespaces (the pid namespace
    /// through a fork), chroots into its root, applies user, capabilities, rlimits, cwd and
    /// no_new_privileges, and execs. Returns once the process exec'd; it starts at once
    /// (call this at the shim's Start of the exec). Its exit reaches the caller's reaper,
    /// possibly before this returns.
    pub fn exec(
        &self,
        exec_id: &str,
        process: &oci_spec::runtime::Process,
        stdio: StdioConfig,
    ) -> Result<Process, ExecError> {
        if !self.status.can_exec() {
            return Err(ExecError::InvalidState {
                id: self.id.clone(),
                status: self.status,
            });
        }
        validate_process(process).map_err(|source| ExecError::Validate {
            id: self.id.clone(),
            exec_id: exec_id.to_string(),
            source,
        })?;
        let size = process.console_size().map(|b| {
            (
                u16::try_from(b.height()).unwrap_or(u16::MAX),
                u16::try_from(b.width()).unwrap_or(u16::MAX),
            )
        });
        let (child_stdio, io) = allocate(stdio, size).map_err(|source| ExecError::Stdio {
            id: self.id.clone(),
            exec_id: exec_id.to_string(),
            source,
        })?;
        let request = InitRequest::Exec(Box::new(ExecRequest {
            container_pid: self.init_pid,
            process: process.clone(),
            terminal: stdio == StdioConfig::Terminal,
            cgroup: self.cgroup.as_ref().map(|c| c.path().to_path_buf()),
            seccomp: self.seccomp.clone(),
        }));
        let launched = launch(&request, child_stdio, false, &self.options).map_err(|source| {
            ExecError::Spawn {
                id: self.id.clone(),
                exec_id: exec_id.to_string(),
                source,
            }
        })?;
        tracing::debug!(container = %self.id, exec_id, pid = launched.pid, "process exec'd");
        Ok(Process::new(launched.pid, io))
    }
}

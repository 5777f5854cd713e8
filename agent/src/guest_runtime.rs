//! [`ContainerRuntime`] over `veil-container`, the in-guest container library.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use oci_spec::runtime::LinuxResources;
use veil_container::cgroups::{Cgroup, CgroupStats, DeviceRules, GUEST_CGROUP_ROOT};
use veil_container::{Container, ContainerBuilder, SourcePins, StdioConfig};

use crate::runtime::{ContainerRuntime, RuntimeError, SpawnedProcess, StdioRequest};

/// The real runtime: namespaces, pivot_root and all, via `veil-container`.
///
/// Each container has its own lock, so a slow start or exec in one container never
/// holds up the others.
#[derive(Default)]
pub struct GuestRuntime {
    containers: Mutex<HashMap<String, Arc<Mutex<Container>>>>,
}

fn stdio_config(stdio: StdioRequest) -> StdioConfig {
    if stdio.terminal {
        StdioConfig::Terminal
    } else if stdio.stdin || stdio.stdout || stdio.stderr {
        StdioConfig::Pipes { stdin: stdio.stdin }
    } else {
        StdioConfig::Null
    }
}

fn spawned(process: veil_container::Process) -> SpawnedProcess {
    SpawnedProcess {
        pid: process.pid,
        stdin: process.stdin,
        stdout: process.stdout,
        stderr: process.stderr,
        pty_master: process.pty_master,
    }
}

impl GuestRuntime {
    fn containers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Mutex<Container>>>> {
        self.containers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn with_container<T>(
        &self,
        id: &str,
        action: impl FnOnce(&mut Container) -> Result<T, RuntimeError>,
    ) -> Result<T, RuntimeError> {
        let container = self
            .containers()
            .get(id)
            .cloned()
            .ok_or_else(|| format!("container {id} is not known to the runtime"))?;
        let mut container = container
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        action(&mut container)
    }
}

impl ContainerRuntime for GuestRuntime {
    fn create(
        &self,
        id: &str,
        rootfs: &Path,
        spec: oci_spec::runtime::Spec,
        stdio: StdioRequest,
        pins: Option<SourcePins>,
    ) -> Result<SpawnedProcess, RuntimeError> {
        let cgroup = container_cgroup(id, &spec)?;
        let mut builder = ContainerBuilder::new(id, rootfs, spec)
            .stdio(stdio_config(stdio))
            .cgroup(cgroup.clone());
        if let Some(pins) = pins {
            builder = builder.pin_sources(pins);
        }
        let built = builder.build();
        let mut container = match built {
            Ok(container) => container,
            Err(error) => {
                discard_cgroup(id, cgroup);
                return Err(error.into());
            }
        };
        let init = container.take_init_process();
        self.containers()
            .insert(id.to_string(), Arc::new(Mutex::new(container)));
        Ok(spawned(init))
    }

    fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.with_container(id, |container| Ok(container.start()?))
    }

    fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process: oci_spec::runtime::Process,
        stdio: StdioRequest,
    ) -> Result<SpawnedProcess, RuntimeError> {
        self.with_container(id, |container| {
            Ok(spawned(container.exec(
                exec_id,
                &process,
                stdio_config(stdio),
            )?))
        })
    }

    fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        let Some(container) = self.containers().remove(id) else {
            return Ok(());
        };
        let mut container = match Arc::try_unwrap(container) {
            Ok(container) => container
                .into_inner()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            Err(_) => {
                return Err(
                    format!("container {id} is busy (a start or exec is in progress)").into(),
                )
            }
        };
        container.mark_stopped();
        Ok(container.delete()?)
    }

    fn stats(&self, id: &str) -> Result<CgroupStats, RuntimeError> {
        self.with_container(id, |container| Ok(cgroup_of(container)?.stats()?))
    }

    fn oom_kills(&self, id: &str) -> Result<u64, RuntimeError> {
        self.with_container(id, |container| Ok(cgroup_of(container)?.oom_kills()?))
    }

    fn processes(&self, id: &str) -> Result<Option<Vec<i32>>, RuntimeError> {
        self.with_container(id, |container| Ok(Some(cgroup_of(container)?.processes()?)))
    }

    fn update(&self, id: &str, resources: &LinuxResources) -> Result<(), RuntimeError> {
        self.with_container(id, |container| {
            update_cgroup(cgroup_of(container)?, resources)
        })
    }

    fn freeze(&self, id: &str, frozen: bool) -> Result<(), RuntimeError> {
        self.with_container(id, |container| Ok(cgroup_of(container)?.freeze(frozen)?))
    }
}

/// Creates the container's cgroup and applies the spec's `linux.resources` to it, device
/// rules included (runc's defaults when it has none), before any of its processes exists.
fn container_cgroup(id: &str, spec: &oci_spec::runtime::Spec) -> Result<Cgroup, RuntimeError> {
    let linux = spec.linux().as_ref();
    if let Some(path) = linux.and_then(|l| l.cgroups_path().as_ref()) {
        tracing::debug!(container = %id, cgroups_path = %path.display(), "linux.cgroupsPath is a host path; the guest cgroup is named by the container id");
    }
    let resources = linux.and_then(|l| l.resources().as_ref());
    let devices = DeviceRules::of(resources)?;
    let cgroup = Cgroup::create(std::path::Path::new(GUEST_CGROUP_ROOT), id)?;
    let applied = cgroup
        .restrict_devices(&devices)
        .and_then(|()| resources.map_or(Ok(()), |r| cgroup.apply(r)));
    if let Err(error) = applied {
        discard_cgroup(id, cgroup);
        return Err(error.into());
    }
    Ok(cgroup)
}

/// New resources for a running container; device rules, when given, replace the old ones
/// as runc's update does.
fn update_cgroup(cgroup: &Cgroup, resources: &LinuxResources) -> Result<(), RuntimeError> {
    if resources.devices().is_some() {
        cgroup.restrict_devices(&DeviceRules::of(Some(resources))?)?;
    }
    Ok(cgroup.apply(resources)?)
}

/// Removes the cgroup of a create that failed; a failure to do so is logged, since the
/// create's own error is the one to report.
fn discard_cgroup(id: &str, cgroup: Cgroup) {
    if let Err(cleanup) = cgroup.remove() {
        tracing::warn!(container = %id, error = %cleanup, "cgroup of a failed create left behind");
    }
}

fn cgroup_of(container: &Container) -> Result<&Cgroup, RuntimeError> {
    container
        .cgroup()
        .ok_or_else(|| format!("container {} has no cgroup", container.id()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdio_choice_follows_the_request() {
        assert_eq!(stdio_config(StdioRequest::default()), StdioConfig::Null);
        let pipes = StdioRequest {
            stdout: true,
            ..Default::default()
        };
        assert_eq!(stdio_config(pipes), StdioConfig::Pipes { stdin: false });
        let tty = StdioRequest {
            terminal: true,
            stdin: true,
            ..Default::default()
        };
        assert_eq!(stdio_config(tty), StdioConfig::Terminal);
    }
}

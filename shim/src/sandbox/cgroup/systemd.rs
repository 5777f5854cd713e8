//! The pod's scope as a systemd unit.
//!
//! When kubelet and containerd use systemd's cgroup driver and systemd runs the host, a
//! pod's cgroup belongs to systemd: kubelet asks it for the pod's slice, and runc (or Kata)
//! asks it for a transient scope in that slice holding the container's (here the VM's)
//! processes. A plain directory there works until systemd stops the slice or reloads; a
//! scope is known to it, accounted and stopped with the slice. The D-Bus client is
//! cgroups-rs's (Kata's), already in the shim's tree through containerd-shim.

use std::path::Path;
use std::time::{Duration, Instant};

use cgroups_rs::systemd::props::PropertiesBuilder;
use cgroups_rs::systemd::SystemdClient;
use cgroups_rs::CgroupPid;

use super::PodCgroupError;

/// StartTransientUnit only queues a job: how long systemd may take to move the shim.
const PLACEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether systemd runs this host (and so owns the cgroup tree).
pub fn is_running() -> bool {
    veil_host::systemd::is_init(Path::new("/"))
}

/// A transient scope unit systemd made for the pod.
#[derive(Debug)]
pub struct Scope {
    unit: String,
}

impl Scope {
    /// Asks systemd for `unit` in `slice` holding `pid` (the shim; QEMU inherits it), and
    /// waits until the shim is in it. A scope left by an earlier shim of the same pod gets
    /// the shim added instead.
    pub fn start(slice: &str, unit: &str, pid: u32) -> Result<Scope, PodCgroupError> {
        let failed = |reason: String| PodCgroupError::Systemd {
            scope: unit.to_string(),
            slice: slice.to_string(),
            reason,
        };
        let properties = PropertiesBuilder::default_cgroup(slice, unit)
            .description(format!("veil pod VM {unit}"))
            // As runc: the shim may make cgroups below its own.
            .delegate(true)
            .pids(vec![pid])
            .build();
        let client = SystemdClient::new(unit, properties).map_err(|e| failed(e.to_string()))?;
        if client.exists() {
            client
                .add_process(CgroupPid::from(u64::from(pid)), "/")
                .map_err(|e| failed(format!("AttachProcessesToUnit: {e}")))?;
        } else {
            client
                .start()
                .map_err(|e| failed(format!("StartTransientUnit: {e}")))?;
        }
        let scope = Scope {
            unit: unit.to_string(),
        };
        if let Err(reason) = wait_until_placed(unit, pid) {
            scope.stop();
            return Err(failed(reason));
        }
        tracing::info!(scope = unit, slice, "systemd made the pod's scope");
        Ok(scope)
    }

    /// Stops the unit (and resets it if it failed); a unit systemd already collected is
    /// fine. Errors are logged: the pod is going away regardless.
    pub fn stop(&self) {
        let stopped = SystemdClient::new(&self.unit, Vec::new()).and_then(|client| client.stop());
        if let Err(error) = stopped {
            tracing::warn!(scope = %self.unit, %error, "could not stop the pod's systemd scope");
        }
    }
}

fn wait_until_placed(unit: &str, pid: u32) -> Result<(), String> {
    let cgroup_file = format!("/proc/{pid}/cgroup");
    let deadline = Instant::now() + PLACEMENT_TIMEOUT;
    loop {
        let memberships = std::fs::read_to_string(&cgroup_file).unwrap_or_default();
        if in_unit(&memberships, unit) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "systemd accepted the unit but had not moved process {pid} into it after {}s (its cgroups: {})",
                PLACEMENT_TIMEOUT.as_secs(),
                memberships.trim().replace('\n', ", ")
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `/proc/<pid>/cgroup` puts the process in `unit` in systemd's own hierarchy: the
/// unified one on cgroup v2, `name=systemd` on v1 and hybrid hosts.
fn in_unit(memberships: &str, unit: &str) -> bool {
    let suffix = format!("/{unit}");
    let own = memberships
        .lines()
        .find(|line| line.contains(":name=systemd:"))
        .or_else(|| memberships.lines().find(|line| line.starts_with("0::")));
    own.is_some_and(|line| line.trim_end().ends_with(&suffix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_read_from_systemds_own_hierarchy() {
        let unit = "cri-containerd-abcd.scope";
        let v2 = "0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-abcd.scope\n";
        assert!(in_unit(v2, unit));
        assert!(!in_unit("0::/system.slice/containerd.service\n", unit));

        // Hybrid: the v1 name=systemd line decides, whatever the empty unified one says.
        let hybrid = "9:name=systemd:/kubepods.slice/cri-containerd-abcd.scope\n4:memory:/\n0::/\n";
        assert!(in_unit(hybrid, unit));
        let not_yet = "9:name=systemd:/system.slice/containerd.service\n0::/kubepods.slice/cri-containerd-abcd.scope\n";
        assert!(!in_unit(not_yet, unit));

        // A unit whose name merely ends the same way is another unit.
        assert!(!in_unit(
            "0::/kubepods.slice/x-cri-containerd-abcd.scope\n",
            unit
        ));
    }
}

//! How large a pod's VM is: the configured base (`[hypervisor] memory_mib` and `vcpus`), or
//! the pod's own base from its `io.veil.vm.memory-mib` and `io.veil.vm.vcpus` annotations,
//! plus what its containers are limited to, which containerd's CRI passes on the sandbox
//! as `io.kubernetes.cri.sandbox-memory` (bytes) and `-cpu-quota`/`-cpu-period`. This is
//! Kata's static sandbox sizing: the guest's own kernel, agent and page cache get the base,
//! the containers get what kubelet reserved for them, and nothing is hot-plugged later.
//!
//! A model delivered into a memory volume lives in this memory, so a pod serving a model of
//! N GiB needs a memory limit (or a base) of at least that. On SEV-SNP the vCPU count is
//! part of the launch measurement (one VMSA per vCPU), so the owner's policy must admit
//! the measurement of each size its pods run at; the memory size is not measured.

use std::collections::HashMap;

use veil_config::HypervisorConfig;

use crate::error::{Error, Result};

/// Pod annotation: the VM's memory in MiB before its containers' limits.
pub const MEMORY_ANNOTATION: &str = "io.veil.vm.memory-mib";
/// Pod annotation: the VM's vCPUs before its containers' limits.
pub const VCPUS_ANNOTATION: &str = "io.veil.vm.vcpus";
/// containerd's CRI: the sum of the pod's container memory limits, in bytes.
const CRI_SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
/// containerd's CRI: the sum of the pod's container CPU quotas, in µs per period.
const CRI_SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
/// containerd's CRI: the CFS period the quota is over, in µs.
const CRI_SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";

const MIB: u64 = 1 << 20;

/// A pod VM's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    /// Guest memory, MiB.
    pub memory_mib: u32,
    /// Guest vCPUs.
    pub vcpus: u32,
}

impl VmSize {
    /// `config` with this size in place of its base, for the hypervisor to launch.
    pub fn apply(self, config: &HypervisorConfig) -> HypervisorConfig {
        HypervisorConfig {
            memory_mib: self.memory_mib,
            vcpus: self.vcpus,
            ..config.clone()
        }
    }
}

/// What the host has, the bound when `max_memory_mib` or `max_vcpus` is 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostCapacity {
    /// `MemTotal`, MiB.
    pub memory_mib: u64,
    /// Online CPUs.
    pub cpus: u32,
}

impl HostCapacity {
    /// Reads `/proc/meminfo` and the online CPU count; a figure it cannot read does not
    /// bound the size.
    pub fn probe() -> Self {
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|meminfo| mem_total_kib(&meminfo))
            .map_or(u64::MAX, |kib| kib / 1024);
        let online = nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN);
        HostCapacity {
            memory_mib,
            cpus: online
                .ok()
                .flatten()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|&n| n > 0)
                .unwrap_or(u32::MAX),
        }
    }
}

fn mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

/// The size of the VM of a pod whose sandbox spec carries `annotations`.
pub fn size_for(
    config: &HypervisorConfig,
    annotations: Option<&HashMap<String, String>>,
    host: HostCapacity,
) -> Result<VmSize> {
    let empty = HashMap::new();
    let annotations = annotations.unwrap_or(&empty);
    let memory = Figure {
        unit: "MiB",
        annotation: MEMORY_ANNOTATION,
        max_setting: "max_memory_mib",
        base: veil_annotation(annotations, MEMORY_ANNOTATION, "MiB, e.g. 4096")?
            .unwrap_or(config.memory_mib.into()),
        containers: containers_memory_mib(annotations)?,
        max: match config.max_memory_mib {
            0 => host.memory_mib,
            max => max.into(),
        },
    };
    let vcpus = Figure {
        unit: "vCPUs",
        annotation: VCPUS_ANNOTATION,
        max_setting: "max_vcpus",
        base: veil_annotation(annotations, VCPUS_ANNOTATION, "vCPUs, e.g. 4")?
            .unwrap_or(config.vcpus.into()),
        containers: containers_vcpus(annotations)?,
        max: match config.max_vcpus {
            0 => host.cpus.into(),
            max => max.into(),
        },
    };
    Ok(VmSize {
        memory_mib: memory.total()?,
        vcpus: vcpus.total()?,
    })
}

/// One figure of a VM's size (memory or vCPUs), worked out the same way for both.
struct Figure {
    unit: &'static str,
    annotation: &'static str,
    max_setting: &'static str,
    base: u64,
    containers: u64,
    max: u64,
}

impl Figure {
    /// The base plus the containers' share, if the node allows that much.
    fn total(&self) -> Result<u32> {
        let total = self.base.saturating_add(self.containers);
        u32::try_from(total)
            .ok()
            .filter(|_| total <= self.max)
            .ok_or_else(|| {
                let Figure { unit, annotation, max_setting, base, max, .. } = self;
                Error::InvalidArgument(format!(
                    "the pod's VM would get {total} {unit} (the base {base} plus its containers' limits), more than the {max} this node allows ([hypervisor] {max_setting}, or the host's own when 0); lower the pod's limits or its {annotation} annotation, or raise {max_setting} in the veil configuration"
                ))
            })
    }
}

/// A veil sizing annotation: a whole number of at least 1.
fn veil_annotation(
    annotations: &HashMap<String, String>,
    name: &str,
    unit: &str,
) -> Result<Option<u64>> {
    let Some(value) = annotations.get(name) else {
        return Ok(None);
    };
    match value.trim().parse::<u64>() {
        Ok(n) if n >= 1 => Ok(Some(n)),
        _ => Err(Error::InvalidArgument(format!(
            "annotation {name}: {value:?} is not a whole number of at least 1; give {unit}, or remove it to use the node's default"
        ))),
    }
}

/// A number containerd's CRI wrote; its absence, or a value of 0 or less, means no limit.
fn cri_number(annotations: &HashMap<String, String>, name: &str) -> Result<u64> {
    let Some(value) = annotations.get(name) else {
        return Ok(0);
    };
    value
        .trim()
        .parse::<i64>()
        .map(|n| u64::try_from(n).unwrap_or(0))
        .map_err(|_| {
            Error::InvalidArgument(format!(
                "annotation {name}: {value:?} is not a number; it is containerd's, set from the pod's resource limits: check what sets it"
            ))
        })
}

/// The containers' memory limits, in MiB rounded up.
fn containers_memory_mib(annotations: &HashMap<String, String>) -> Result<u64> {
    Ok(cri_number(annotations, CRI_SANDBOX_MEMORY)?.div_ceil(MIB))
}

/// The containers' CPU limits, in whole vCPUs rounded up.
fn containers_vcpus(annotations: &HashMap<String, String>) -> Result<u64> {
    let quota = cri_number(annotations, CRI_SANDBOX_CPU_QUOTA)?;
    let period = cri_number(annotations, CRI_SANDBOX_CPU_PERIOD)?;
    Ok(if period == 0 {
        0
    } else {
        quota.div_ceil(period)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: HostCapacity = HostCapacity {
        memory_mib: 16 * 1024,
        cpus: 8,
    };

    fn annotations(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn size(pairs: &[(&str, &str)]) -> Result<VmSize> {
        size_for(
            &HypervisorConfig::default(),
            Some(&annotations(pairs)),
            HOST,
        )
    }

    #[test]
    fn without_annotations_a_vm_gets_the_configured_base() {
        assert_eq!(
            size_for(&HypervisorConfig::default(), None, HOST).unwrap(),
            VmSize {
                memory_mib: 512,
                vcpus: 1
            }
        );
    }

    #[test]
    fn the_containers_limits_are_added_to_the_base_rounded_up() {
        // kubelet's sums for containers limited to 1.5 GiB + 1 byte and 1.5 CPUs.
        let sized = size(&[
            (CRI_SANDBOX_MEMORY, "1610612737"),
            (CRI_SANDBOX_CPU_QUOTA, "150000"),
            (CRI_SANDBOX_CPU_PERIOD, "100000"),
            ("io.kubernetes.cri.sandbox-cpu-shares", "1536"),
        ])
        .unwrap();
        assert_eq!(
            sized,
            VmSize {
                memory_mib: 512 + 1537,
                vcpus: 1 + 2
            }
        );
        // containerd writes 0 when the pod has no limits.
        let unlimited = size(&[
            (CRI_SANDBOX_MEMORY, "0"),
            (CRI_SANDBOX_CPU_QUOTA, "0"),
            (CRI_SANDBOX_CPU_PERIOD, "100000"),
        ])
        .unwrap();
        assert_eq!(unlimited, size(&[]).unwrap());
        assert_eq!(
            size(&[(CRI_SANDBOX_CPU_QUOTA, "-1")]).unwrap(),
            size(&[]).unwrap()
        );
    }

    #[test]
    fn the_pods_annotations_replace_the_base() {
        let sized = size(&[
            (MEMORY_ANNOTATION, "4096"),
            (VCPUS_ANNOTATION, "2"),
            (CRI_SANDBOX_MEMORY, "1073741824"),
        ])
        .unwrap();
        assert_eq!(
            sized,
            VmSize {
                memory_mib: 4096 + 1024,
                vcpus: 2
            }
        );
        let applied = sized.apply(&HypervisorConfig::default());
        assert_eq!((applied.memory_mib, applied.vcpus), (5120, 2));
    }

    #[test]
    fn a_malformed_annotation_is_refused_naming_it() {
        for (name, value) in [
            (MEMORY_ANNOTATION, "4G"),
            (MEMORY_ANNOTATION, "0"),
            (VCPUS_ANNOTATION, "-1"),
            (CRI_SANDBOX_MEMORY, "lots"),
        ] {
            let error = size(&[(name, value)]).unwrap_err().to_string();
            assert!(error.contains(name) && error.contains(value), "{error}");
        }
    }

    #[test]
    fn a_vm_larger_than_the_node_allows_is_refused() {
        let error = size(&[
            (MEMORY_ANNOTATION, "16000"),
            (CRI_SANDBOX_MEMORY, "1073741824"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("17024 MiB") && error.contains("max_memory_mib"),
            "{error}"
        );
        let error = size(&[(VCPUS_ANNOTATION, "9")]).unwrap_err().to_string();
        assert!(
            error.contains("9 vCPUs") && error.contains("max_vcpus"),
            "{error}"
        );
        let config = HypervisorConfig {
            max_memory_mib: 1024,
            max_vcpus: 2,
            ..HypervisorConfig::default()
        };
        let sized = |pairs: &[(&str, &str)]| size_for(&config, Some(&annotations(pairs)), HOST);
        assert!(sized(&[(MEMORY_ANNOTATION, "1024")]).is_ok());
        assert!(sized(&[(MEMORY_ANNOTATION, "1025")]).is_err());
        assert!(sized(&[(VCPUS_ANNOTATION, "3")]).is_err());
    }

    #[test]
    fn the_hosts_memory_is_read_from_meminfo() {
        let meminfo = "MemTotal:       24634068 kB\nMemFree:        1000 kB\n";
        assert_eq!(mem_total_kib(meminfo), Some(24634068));
        assert_eq!(mem_total_kib("MemFree: 1 kB\n"), None);
        let host = HostCapacity::probe();
        assert!(host.memory_mib > 0 && host.cpus > 0);
    }
}

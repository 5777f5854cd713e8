//! Choosing the kernel modules the guest needs and putting them in load order.
//!
//! The guest wants a fixed set of features (virtio transport, console, 9p, vsock, net, rng,
//! block, overlayfs). For a given kernel each one is either built in (listed in
//! `modules.builtin`, nothing to do) or a loadable module (listed in `modules.dep`, which
//! `depmod` generates with every module's transitive dependencies). [`ModuleIndex::plan`]
//! turns the wanted names into a load order in which every module comes after all of its
//! dependencies, so the agent can load them one by one with `finit_module` and no modprobe.

use std::collections::{BTreeMap, BTreeSet};

/// Module names (as `modprobe` spells them) that the guest needs on a modular kernel.
///
/// Names that the kernel builds in are skipped; dependencies are added from `modules.dep`.
pub const GUEST_MODULES: &[&str] = &[
    "virtio",
    "virtio_ring",
    "virtio_pci",
    "virtio_console",
    "9pnet",
    "9pnet_virtio",
    "9p",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
    "virtio_net",
    "rng_core",
    "virtio_rng",
    "virtio_blk",
    "overlay",
];

/// Errors from reading `modules.dep` / `modules.builtin`.
#[derive(Debug, thiserror::Error)]
pub enum ParseModuleIndexError {
    /// A `modules.dep` line has no `:` separator.
    #[error("modules.dep line {line}: expected `path.ko: dep.ko ...`, got {text:?}; rerun depmod")]
    MalformedDepLine {
        /// 1-based line number.
        line: usize,
        /// The line's text.
        text: String,
    },
    /// A path in `modules.dep` or `modules.builtin` does not name a `.ko` file.
    #[error("{path:?} is not a kernel module path (expected a name ending in .ko, .ko.xz, .ko.zst or .ko.gz)")]
    NotAModulePath {
        /// The offending path.
        path: String,
    },
}

/// Errors from planning which modules to load.
#[derive(Debug, thiserror::Error)]
pub enum PlanModulesError {
    /// A wanted module is neither built in nor shipped as a module.
    #[error(
        "kernel has no module {name:?} and does not build it in; choose a kernel with it enabled"
    )]
    Missing {
        /// The module name.
        name: String,
    },
    /// `modules.dep` names a dependency it has no entry for.
    #[error("modules.dep lists {dependency:?} as a dependency of {module:?} but has no entry for it; rerun depmod")]
    DanglingDependency {
        /// The module that needs it.
        module: String,
        /// The missing dependency.
        dependency: String,
    },
    /// `modules.dep` describes a dependency cycle.
    #[error("modules.dep has a dependency cycle through {name:?}; the modules cannot be ordered")]
    Cycle {
        /// A module on the cycle.
        name: String,
    },
}

/// One loadable module: its name and its path relative to `/lib/modules/<kver>/`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModuleFile {
    /// Module name with `-` folded to `_`, as the kernel reports it.
    pub name: String,
    /// Path relative to `/lib/modules/<kver>/`, e.g. `kernel/fs/9p/9p.ko`.
    pub path: String,
}

/// What to put into the initramfs for the wanted modules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModulePlan {
    /// Modules to load, each after all of its dependencies.
    pub load_order: Vec<ModuleFile>,
    /// Wanted names that the kernel builds in (nothing to load), sorted.
    pub builtin: Vec<String>,
}

#[derive(Debug, Clone)]
struct DepEntry {
    path: String,
    dependencies: Vec<String>,
}

/// The parsed `modules.dep` and `modules.builtin` of one kernel.
#[derive(Debug, Clone, Default)]
pub struct ModuleIndex {
    modules: BTreeMap<String, DepEntry>,
    builtin: BTreeSet<String>,
}

impl ModuleIndex {
    /// Parses the text of `modules.dep` and `modules.builtin`.
    pub fn parse(modules_dep: &str, modules_builtin: &str) -> Result<Self, ParseModuleIndexError> {
        let mut modules = BTreeMap::new();
        for (index, line) in modules_dep.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let (path, deps) =
                line.split_once(':')
                    .ok_or_else(|| ParseModuleIndexError::MalformedDepLine {
                        line: index + 1,
                        text: line.to_owned(),
                    })?;
            let dependencies = deps
                .split_whitespace()
                .map(module_name)
                .collect::<Result<Vec<_>, _>>()?;
            let entry = DepEntry {
                path: path.trim().to_owned(),
                dependencies,
            };
            modules.insert(module_name(path.trim())?, entry);
        }
        let builtin = modules_builtin
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| module_name(line.trim()))
            .collect::<Result<_, _>>()?;
        Ok(Self { modules, builtin })
    }

    /// Resolves `wanted` module names into a load order (dependencies first).
    ///
    /// The order is deterministic: wanted names are visited in the order given, and each
    /// module's dependencies in the order `modules.dep` lists them.
    pub fn plan(&self, wanted: &[&str]) -> Result<ModulePlan, PlanModulesError> {
        let mut planner = Planner {
            index: self,
            done: BTreeSet::new(),
            visiting: BTreeSet::new(),
            order: Vec::new(),
        };
        let mut builtin = BTreeSet::new();
        for raw in wanted {
            let name = fold_name(raw);
            if self.modules.contains_key(&name) {
                planner.visit(&name)?;
            } else if self.builtin.contains(&name) {
                builtin.insert(name);
            } else {
                return Err(PlanModulesError::Missing { name });
            }
        }
        Ok(ModulePlan {
            load_order: planner.order,
            builtin: builtin.into_iter().collect(),
        })
    }
}

struct Planner<'a> {
    index: &'a ModuleIndex,
    done: BTreeSet<String>,
    visiting: BTreeSet<String>,
    order: Vec<ModuleFile>,
}

impl Planner<'_> {
    /// Depth-first post-order: a module is emitted only after everything it depends on.
    fn visit(&mut self, name: &str) -> Result<(), PlanModulesError> {
        if self.done.contains(name) {
            return Ok(());
        }
        if !self.visiting.insert(name.to_owned()) {
            return Err(PlanModulesError::Cycle {
                name: name.to_owned(),
            });
        }
        let entry = self
            .index
            .modules
            .get(name)
            .ok_or_else(|| PlanModulesError::Missing {
                name: name.to_owned(),
            })?;
        for dependency in &entry.dependencies {
            if !self.index.modules.contains_key(dependency) {
                return Err(PlanModulesError::DanglingDependency {
                    module: name.to_owned(),
                    dependency: dependency.clone(),
                });
            }
            self.visit(dependency)?;
        }
        self.visiting.remove(name);
        self.done.insert(name.to_owned());
        self.order.push(ModuleFile {
            name: name.to_owned(),
            path: entry.path.clone(),
        });
        Ok(())
    }
}

/// `kernel/drivers/char/hw_random/virtio-rng.ko` -> `virtio_rng`.
fn module_name(path: &str) -> Result<String, ParseModuleIndexError> {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|suffix| file.strip_suffix(suffix))
        .filter(|stem| !stem.is_empty())
        .ok_or_else(|| ParseModuleIndexError::NotAModulePath {
            path: path.to_owned(),
        })?;
    Ok(fold_name(stem))
}

fn fold_name(name: &str) -> String {
    name.replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An excerpt of Debian 6.1's modules.dep (6.1.0-56-amd64) covering the guest's modules.
    const DEBIAN_DEP: &str = "\
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/9p/9pnet.ko:
kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko
kernel/fs/netfs/netfs.ko:
kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko
kernel/net/vmw_vsock/vsock.ko:
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/net/vmw_vsock/vsock.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/fs/overlayfs/overlay.ko:
kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
";
    const DEBIAN_BUILTIN: &str =
        "kernel/crypto/rng.ko\nkernel/drivers/char/hw_random/rng-core.ko\n";

    fn debian_plan() -> ModulePlan {
        let index = ModuleIndex::parse(DEBIAN_DEP, DEBIAN_BUILTIN).unwrap();
        index.plan(GUEST_MODULES).unwrap()
    }

    fn position(plan: &ModulePlan, name: &str) -> usize {
        plan.load_order
            .iter()
            .position(|module| module.name == name)
            .unwrap_or_else(|| panic!("{name} not in plan"))
    }

    #[test]
    fn every_module_comes_after_its_dependencies() {
        let index = ModuleIndex::parse(DEBIAN_DEP, DEBIAN_BUILTIN).unwrap();
        let plan = debian_plan();
        for (at, module) in plan.load_order.iter().enumerate() {
            for dependency in &index.modules[&module.name].dependencies {
                assert!(
                    position(&plan, dependency) < at,
                    "{dependency} must load before {}",
                    module.name
                );
            }
        }
    }

    #[test]
    fn plan_holds_exactly_the_needed_modules() {
        let plan = debian_plan();
        let names: Vec<&str> = plan.load_order.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "virtio_ring",
                "virtio",
                "virtio_pci_legacy_dev",
                "virtio_pci_modern_dev",
                "virtio_pci",
                "virtio_console",
                "9pnet",
                "9pnet_virtio",
                "netfs",
                "fscache",
                "9p",
                "vsock",
                "vmw_vsock_virtio_transport_common",
                "vmw_vsock_virtio_transport",
                "failover",
                "net_failover",
                "virtio_net",
                "virtio_rng",
                "virtio_blk",
                "overlay",
            ]
        );
        assert_eq!(plan.builtin, ["rng_core"]);
        let rng = &plan.load_order[position(&plan, "virtio_rng")];
        assert_eq!(rng.path, "kernel/drivers/char/hw_random/virtio-rng.ko");
    }

    #[test]
    fn missing_module_is_named() {
        let index = ModuleIndex::parse(DEBIAN_DEP, "").unwrap();
        let error = index.plan(&["rng_core"]).unwrap_err();
        assert!(
            matches!(error, PlanModulesError::Missing { ref name } if name == "rng_core"),
            "{error}"
        );
    }

    #[test]
    fn dangling_dependency_and_cycle_are_errors() {
        let index = ModuleIndex::parse("a.ko: b.ko\n", "").unwrap();
        assert!(matches!(
            index.plan(&["a"]),
            Err(PlanModulesError::DanglingDependency { .. })
        ));
        let index = ModuleIndex::parse("a.ko: b.ko\nb.ko: a.ko\n", "").unwrap();
        assert!(matches!(
            index.plan(&["a"]),
            Err(PlanModulesError::Cycle { .. })
        ));
    }

    #[test]
    fn malformed_lines_are_rejected() {
        assert!(matches!(
            ModuleIndex::parse("no separator here\n", ""),
            Err(ParseModuleIndexError::MalformedDepLine { line: 1, .. })
        ));
        assert!(matches!(
            ModuleIndex::parse("a.txt:\n", ""),
            Err(ParseModuleIndexError::NotAModulePath { .. })
        ));
    }
}

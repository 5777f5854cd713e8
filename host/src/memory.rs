//! Free memory: an SNP guest's memory is pinned (no overcommit), so what is available now is
//! what pods can get.

use std::path::Path;

use crate::finding::Finding;

/// Below this, even one small guest (512 MiB plus QEMU) will not start reliably.
pub const LOW_MEMORY_KIB: u64 = 1024 * 1024;

/// The `memory` finding from `/proc/meminfo` below `root`.
pub fn check(root: &Path) -> Finding {
    let path = root.join("proc/meminfo");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) => {
            return Finding::missing("memory", format!("cannot read {}: {error}", path.display()))
        }
    };
    let (Some(total), Some(available)) = (
        field_kib(&text, "MemTotal"),
        field_kib(&text, "MemAvailable"),
    ) else {
        return Finding::unusable(
            "memory",
            format!(
                "{} has no MemTotal/MemAvailable lines (kernel older than 3.14?)",
                path.display()
            ),
        );
    };
    let summary = format!("{} MiB available of {} MiB", available / 1024, total / 1024);
    if available < LOW_MEMORY_KIB {
        Finding::unusable(
            "memory",
            format!(
                "{summary}: less than {} MiB free; stop other workloads or lower pod memory",
                LOW_MEMORY_KIB / 1024
            ),
        )
    } else {
        Finding::ok("memory", summary)
    }
}

/// The value in KiB of a `Name:   123 kB` line.
fn field_kib(meminfo: &str, name: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let (key, rest) = line.split_once(':')?;
        if key.trim() != name {
            return None;
        }
        rest.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::Status;
    use crate::testing::FakeTree;

    #[test]
    fn available_memory_is_reported_in_mib() {
        let tree = FakeTree::new().file(
            "proc/meminfo",
            "MemTotal:       24684084 kB\nMemFree:  1 kB\nMemAvailable:   23761248 kB\n",
        );
        let finding = check(tree.root());
        assert!(finding.is_ok());
        assert_eq!(finding.detail, "23204 MiB available of 24105 MiB");
    }

    #[test]
    fn low_memory_is_unusable() {
        let tree = FakeTree::new().file(
            "proc/meminfo",
            "MemTotal: 900000 kB\nMemAvailable: 100000 kB\n",
        );
        assert_eq!(check(tree.root()).status, Status::Unusable);
    }
}

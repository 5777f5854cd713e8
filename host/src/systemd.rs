//! systemd as the node's init: with kubelet's and containerd's systemd cgroup driver, the
//! shim asks systemd over D-Bus for each pod's scope, so a node that systemd runs needs its
//! system bus. A node without systemd as init keeps pod cgroups as plain directories.

use std::path::Path;

use crate::finding::Finding;

/// sd_booted(3): this directory exists only when systemd is the host's init.
pub const BOOTED_MARKER: &str = "run/systemd/system";
/// Where the system bus listens (D-Bus's default system bus address).
pub const SYSTEM_BUS_SOCKET: &str = "run/dbus/system_bus_socket";

/// Whether systemd is init on the host whose `/` is `root`.
pub fn is_init(root: &Path) -> bool {
    root.join(BOOTED_MARKER).is_dir()
}

/// The finding `systemd-cgroup`: how the pod scopes of systemd's cgroup driver are made.
pub fn check(root: &Path) -> Finding {
    const CHECK: &str = "systemd-cgroup";
    if !is_init(root) {
        return Finding::ok(
            CHECK,
            "systemd is not init: pod cgroups are plain directories (either cgroup driver)",
        );
    }
    if root.join(SYSTEM_BUS_SOCKET).exists() {
        Finding::ok(
            CHECK,
            format!("systemd is init and its system bus listens (/{SYSTEM_BUS_SOCKET}): pods of the systemd cgroup driver run in a systemd scope"),
        )
    } else {
        Finding::unusable(
            CHECK,
            format!("systemd is init but nothing listens at /{SYSTEM_BUS_SOCKET}: pods of kubelet's systemd cgroup driver will not start; install and start dbus (apt install dbus)"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::Status;
    use crate::testing::FakeTree;

    #[test]
    fn the_verdict_follows_init_and_the_system_bus() {
        let no_systemd = FakeTree::new().dir("run");
        let found = check(no_systemd.root());
        assert_eq!(found.status, Status::Ok);
        assert!(
            found.detail.contains("plain directories"),
            "{}",
            found.detail
        );

        let with_bus = FakeTree::new()
            .dir(BOOTED_MARKER)
            .file(SYSTEM_BUS_SOCKET, "");
        let found = check(with_bus.root());
        assert_eq!(found.status, Status::Ok);
        assert!(found.detail.contains("systemd scope"), "{}", found.detail);

        let without_bus = FakeTree::new().dir(BOOTED_MARKER);
        let found = check(without_bus.root());
        assert_eq!(found.status, Status::Unusable);
        assert!(
            found.detail.contains("apt install dbus"),
            "{}",
            found.detail
        );
    }
}

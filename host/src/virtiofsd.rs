//! virtiofsd: where it is installed, the shim serves containers' files to the guest over
//! virtio-fs (`hypervisor.shared_fs = "auto"`); without it, over QEMU's slower virtio-9p.

use std::path::Path;

use crate::command::{version_line, CommandRunner};
use crate::finding::Finding;

/// Where virtiofsd is looked for, in order: the Rust daemon as Debian 13, Ubuntu and Fedora
/// install it, then the C one Debian 12's QEMU 7.2 ships (qemu-system-common).
pub const KNOWN_PATHS: [&str; 3] = [
    "/usr/libexec/virtiofsd",
    "/usr/bin/virtiofsd",
    "/usr/lib/qemu/virtiofsd",
];

/// The first of [`KNOWN_PATHS`] present below `root`, as an absolute path on the host.
pub fn find(root: &Path) -> Option<&'static str> {
    KNOWN_PATHS
        .into_iter()
        .find(|path| root.join(path.trim_start_matches('/')).exists())
}

/// The finding `virtiofsd`.
pub fn check(root: &Path, runner: &dyn CommandRunner) -> Finding {
    let Some(path) = find(root) else {
        return Finding::missing(
            "virtiofsd",
            format!(
                "none at {}: containers' files reach the guest over virtio-9p, about 10x slower on metadata; install virtiofsd (qemu-system-common on Debian 12)",
                KNOWN_PATHS.join(", ")
            ),
        );
    };
    match version_line(runner, "virtiofsd", path, "reinstall it") {
        Ok(version) => Finding::ok(
            "virtiofsd",
            format!("{version} at {path} (containers' files over virtio-fs)"),
        ),
        Err(finding) => finding,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::fake::FakeRunner;
    use crate::finding::Status;
    use crate::testing::FakeTree;

    #[test]
    fn the_first_installed_daemon_is_reported_with_its_version() {
        let tree = FakeTree::new()
            .file("usr/lib/qemu/virtiofsd", "")
            .file("usr/bin/virtiofsd", "");
        let runner =
            FakeRunner::default().answer("/usr/bin/virtiofsd --version", "virtiofsd 1.13.0\n");
        let found = check(tree.root(), &runner);
        assert_eq!(found.status, Status::Ok, "{}", found.detail);
        assert_eq!(
            found.detail,
            "virtiofsd 1.13.0 at /usr/bin/virtiofsd (containers' files over virtio-fs)"
        );
    }

    #[test]
    fn without_one_the_fallback_and_the_package_are_named() {
        let missing = check(FakeTree::new().root(), &FakeRunner::default());
        assert_eq!(missing.status, Status::Missing);
        assert!(missing.detail.contains("virtio-9p"), "{}", missing.detail);
        assert!(
            missing.detail.contains("qemu-system-common"),
            "{}",
            missing.detail
        );
    }
}

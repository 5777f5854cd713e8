//! containerd: its version, and whether its configuration registers veil's runtime.

use std::path::Path;

use crate::command::{version_line, CommandRunner};
use crate::finding::Finding;

/// The runtime type veil's shim serves.
pub const VEIL_RUNTIME_TYPE: &str = "io.containerd.veil.v2";
/// containerd's configuration file, relative to the root.
pub const CONTAINERD_CONFIG: &str = "etc/containerd/config.toml";

/// The findings `containerd` (installed, version) and `containerd-veil` (the configuration
/// names veil's runtime type).
pub fn check(runner: &dyn CommandRunner, root: &Path) -> Vec<Finding> {
    let version = match version_line(
        runner,
        "containerd",
        "containerd",
        "install Debian's containerd package (1.6 or later)",
    ) {
        Ok(version) => Finding::ok("containerd", version),
        Err(finding) => finding,
    };
    vec![version, check_config(root)]
}

fn check_config(root: &Path) -> Finding {
    let path = root.join(CONTAINERD_CONFIG);
    match std::fs::read_to_string(&path) {
        Err(error) => Finding::missing(
            "containerd-veil",
            format!("cannot read {}: {error}: run `veil node install` or `containerd config default > /etc/containerd/config.toml` and add the veil runtime", path.display()),
        ),
        Ok(text) if names_veil_runtime(&text) => Finding::ok(
            "containerd-veil",
            format!("{} registers {VEIL_RUNTIME_TYPE}", path.display()),
        ),
        Ok(_) => Finding::missing(
            "containerd-veil",
            format!("{} does not register runtime_type = \"{VEIL_RUNTIME_TYPE}\": add the veil runtime under plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes and restart containerd", path.display()),
        ),
    }
}

/// True when a non-comment line of the configuration names veil's runtime type.
fn names_veil_runtime(config: &str) -> bool {
    config
        .lines()
        .map(str::trim_start)
        .filter(|line| !line.starts_with('#'))
        .any(|line| line.contains(VEIL_RUNTIME_TYPE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::fake::FakeRunner;
    use crate::finding::Status;
    use crate::testing::FakeTree;

    const VERSION: &str =
        "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3\n";

    #[test]
    fn version_and_registration_are_reported() {
        let runner = FakeRunner::default().answer("containerd --version", VERSION);
        let tree = FakeTree::new().file(
            CONTAINERD_CONFIG,
            "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.veil]\n  runtime_type = \"io.containerd.veil.v2\"\n",
        );
        let findings = check(&runner, tree.root());
        assert!(findings.iter().all(Finding::is_ok), "{findings:?}");
        assert!(findings[0].detail.contains("1.6.20"));
    }

    #[test]
    fn a_commented_out_runtime_does_not_count() {
        let tree = FakeTree::new().file(
            CONTAINERD_CONFIG,
            "# runtime_type = \"io.containerd.veil.v2\"\nversion = 2\n",
        );
        let findings = check(&FakeRunner::default(), tree.root());
        assert_eq!(findings[0].status, Status::Missing);
        assert_eq!(findings[1].status, Status::Missing);
        assert!(findings[1].detail.contains("runtime_type"));
    }
}

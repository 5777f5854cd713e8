//! nftables: the shim redirects `kubectl port-forward` connections in a pod's network
//! namespace with one `nft` rule, so a node without `nft` runs pods but cannot forward ports.

use crate::command::{version_line, CommandRunner};
use crate::finding::Finding;

/// The finding `nft` (installed, version).
pub fn check(runner: &dyn CommandRunner) -> Finding {
    match version_line(
        runner,
        "nft",
        "nft",
        "install nftables (apt install nftables); pods run without it, but kubectl port-forward will not reach them",
    ) {
        Ok(version) => Finding::ok(
            "nft",
            format!("{version} (kubectl port-forward into veil pods)"),
        ),
        Err(finding) => finding,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::fake::FakeRunner;
    use crate::finding::Status;

    #[test]
    fn the_version_is_reported_and_its_absence_says_what_to_install() {
        let runner =
            FakeRunner::default().answer("nft --version", "nftables v1.0.6 (Lester Gooch #5)\n");
        let found = check(&runner);
        assert_eq!(found.status, Status::Ok);
        assert!(
            found.detail.starts_with("nftables v1.0.6"),
            "{}",
            found.detail
        );
        let missing = check(&FakeRunner::default());
        assert_eq!(missing.status, Status::Missing);
        assert!(
            missing.detail.contains("apt install nftables"),
            "{}",
            missing.detail
        );
        assert!(
            missing.detail.contains("port-forward"),
            "{}",
            missing.detail
        );
    }
}

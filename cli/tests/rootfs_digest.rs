//! `veil rootfs digest DIR` as a model owner runs it: the digest of an unpacked rootfs,
//! stable across runs and copies, changed by any change to a file, and a clear error for a
//! directory that is not there.

use std::path::Path;
use std::process::Command;

fn digest(dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(["rootfs", "digest"])
        .arg(dir)
        .output()
        .expect("run veil")
}

fn printed(dir: &Path) -> String {
    let output = digest(dir);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

#[test]
fn the_digest_of_a_rootfs_is_stable_and_follows_its_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("usr/bin")).expect("mkdir");
    std::fs::write(dir.path().join("usr/bin/server"), b"serve").expect("write");
    std::os::unix::fs::symlink("usr/bin", dir.path().join("bin")).expect("symlink");

    let first = printed(dir.path());
    assert!(first.starts_with("sha256:") && first.len() == 71, "{first}");
    assert_eq!(printed(dir.path()), first);

    std::fs::write(dir.path().join("usr/bin/server"), b"leak").expect("write");
    assert_ne!(printed(dir.path()), first);
}

#[test]
fn a_missing_directory_is_named() {
    let output = digest(Path::new("/nonexistent/rootfs"));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/rootfs"), "{stderr}");
}

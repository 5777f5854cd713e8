//! Helpers shared by the guest-image integration tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use veil_guest_image::{build, BuildOptions, BuildOutput, KernelChoice};

/// A cache shared by all test runs: `$VEIL_GUEST_IMAGE_CACHE` when set (`make test` sets it to
/// the cache `make image` filled, so the minimal kernel is built once), else one per target dir.
pub fn shared_cache_dir() -> PathBuf {
    std::env::var_os(veil_guest_image::CACHE_DIR_ENV)
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("guest-image-cache"))
}

/// Compiles tests/smoke-init/main.rs into a static binary in `dir` and returns its path.
///
/// Plain rustc, no Cargo: the program has no dependencies, and this keeps the static build
/// from rebuilding the workspace's crates with different flags.
pub fn build_smoke_init(dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smoke-init/main.rs");
    let output = dir.join("smoke-init");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let status = Command::new(&rustc)
        .args([
            "--edition",
            "2021",
            "-O",
            "-C",
            "target-feature=+crt-static",
            "-C",
            "debuginfo=0",
            "-o",
        ])
        .arg(&output)
        .arg(&source)
        .status()
        .unwrap_or_else(|error| panic!("cannot run {rustc}: {error}"));
    assert!(
        status.success(),
        "building the static smoke init failed; the static glibc comes from libc6-dev (apt-get install -y libc6-dev)"
    );
    output
}

/// Builds the Debian-kernel image with `agent` as /init into `out`.
pub fn build_image(agent: &Path, out: &Path) -> BuildOutput {
    build_image_with(agent, out, KernelChoice::Debian)
}

/// Builds the image for `kernel` with `agent` as /init into `out`.
pub fn build_image_with(agent: &Path, out: &Path, kernel: KernelChoice) -> BuildOutput {
    let options = BuildOptions {
        agent: agent.to_path_buf(),
        out_dir: out.to_path_buf(),
        cache_dir: shared_cache_dir(),
        kernel,
    };
    build(&options).unwrap_or_else(|error| {
        panic!("guest image build failed: {error}\n(needs apt lists: apt-get update; and dpkg-deb, depmod: apt-get install -y dpkg kmod)")
    })
}

/// Fails with an install hint when a host program the test needs is missing.
pub fn require_program(program: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|output| output.status.success());
    assert!(
        found,
        "{program} is required for this test: apt-get install -y {package}"
    );
}

//! Building the same inputs twice gives a bit-identical initramfs, and the second build reuses
//! the cached kernel package.

mod common;

use std::os::unix::fs::MetadataExt;

#[test]
fn two_builds_give_identical_outputs_and_reuse_the_cached_package() {
    common::require_program("dpkg-deb", "dpkg");
    common::require_program("depmod", "kmod");
    let dir = tempfile::tempdir().unwrap();
    let agent = common::build_smoke_init(dir.path());

    let first = common::build_image(&agent, &dir.path().join("first"));
    let deb = common::shared_cache_dir()
        .join("debs")
        .read_dir()
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .expect("the first build leaves the kernel package in the cache");
    let deb_before = std::fs::metadata(&deb).unwrap();

    let second = common::build_image(&agent, &dir.path().join("second"));
    let deb_after = std::fs::metadata(&deb).unwrap();
    assert_eq!(
        (deb_before.ino(), deb_before.mtime()),
        (deb_after.ino(), deb_after.mtime()),
        "the second build replaced the cached .deb"
    );

    assert_eq!(first.manifest, second.manifest);
    assert_eq!(
        std::fs::read(&first.initramfs).unwrap(),
        std::fs::read(&second.initramfs).unwrap()
    );
    assert_eq!(
        std::fs::read(&first.vmlinuz).unwrap(),
        std::fs::read(&second.vmlinuz).unwrap()
    );
    assert_eq!(
        std::fs::read(&first.manifest_path).unwrap(),
        std::fs::read(&second.manifest_path).unwrap()
    );
    let printed = &first.manifest.outputs.initramfs.sha256;
    assert_eq!(
        printed,
        &veil_guest_image::digest::sha256_file(&second.initramfs).unwrap()
    );
}

//! The minimal kernel is built once and then reused from the cache while its inputs stay the
//! same. The first run builds it (about 6 minutes on 2 cores); later runs reuse the cache in
//! the target dir.

mod common;

use veil_guest_image::minimal_kernel;

#[test]
fn second_build_reuses_the_cached_kernel() {
    common::require_program("make", "make");
    common::require_program("gcc", "gcc");
    common::require_program("flex", "flex");
    common::require_program("bison", "bison");
    common::require_program("bc", "bc");
    let cache = common::shared_cache_dir();
    let first = minimal_kernel::build_or_reuse(&cache).unwrap_or_else(|error| panic!("{error}"));
    let second = minimal_kernel::build_or_reuse(&cache).unwrap_or_else(|error| panic!("{error}"));
    assert!(
        second.reused,
        "the second build did not reuse the cached kernel"
    );
    assert_eq!(first.cache_key, second.cache_key);
    assert_eq!(first.bzimage, second.bzimage);
    assert_eq!(
        std::fs::read(&first.vmlinux).unwrap(),
        std::fs::read(&second.vmlinux).unwrap()
    );
    let config = std::fs::read_to_string(&second.config).unwrap();
    for option in [
        "CONFIG_PVH=y",
        "CONFIG_HW_RANDOM_VIRTIO=y",
        "CONFIG_9P_FS=y",
        "CONFIG_VIRTIO_CONSOLE=y",
    ] {
        assert!(
            config.lines().any(|line| line == option),
            "{option} missing from the built config"
        );
    }
}

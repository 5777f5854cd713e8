//! The build manifest pins every input, and the module list is in dependency order.

mod common;

#[test]
fn manifest_pins_every_input_and_lists_modules_dependencies_first() {
    let dir = tempfile::tempdir().unwrap();
    let agent = common::build_smoke_init(dir.path());
    let output = common::build_image(&agent, &dir.path().join("out"));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&output.manifest_path).unwrap()).unwrap();
    let kernel = &json["image"]["kernel"];
    assert_eq!(kernel["source"], "debian");
    assert_eq!(kernel["meta_package"], "linux-image-amd64");
    assert!(kernel["package"]["name"]
        .as_str()
        .unwrap()
        .starts_with("linux-image-"));
    assert_eq!(kernel["package"]["deb_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(json["image"]["agent"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(
        json["outputs"]["initramfs"]["sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );

    let order: Vec<&str> = output
        .manifest
        .image
        .modules
        .load_order
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    let at = |name: &str| {
        order
            .iter()
            .position(|n| *n == name)
            .unwrap_or_else(|| panic!("{name} missing: {order:?}"))
    };
    for (dependency, module) in [
        ("virtio_ring", "virtio"),
        ("virtio", "virtio_pci"),
        ("virtio_pci_modern_dev", "virtio_pci"),
        ("virtio", "virtio_console"),
        ("9pnet", "9pnet_virtio"),
        ("netfs", "fscache"),
        ("fscache", "9p"),
        ("vsock", "vmw_vsock_virtio_transport_common"),
        (
            "vmw_vsock_virtio_transport_common",
            "vmw_vsock_virtio_transport",
        ),
        ("failover", "net_failover"),
        ("net_failover", "virtio_net"),
    ] {
        assert!(
            at(dependency) < at(module),
            "{dependency} must load before {module}: {order:?}"
        );
    }
}

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

/// An OCI image archive of `layers` (each a tar, gzip-compressed where `gzip`), named `name`.
fn oci_archive(path: &Path, name: &str, layers: &[(Vec<u8>, bool)]) {
    use sha2::Digest;
    let hex = |bytes: &[u8]| format!("{:x}", sha2::Sha256::digest(bytes));
    let mut blobs: Vec<Vec<u8>> = Vec::new();
    let mut descriptors = Vec::new();
    for (tar, gzip) in layers {
        let blob = if *gzip {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut encoder, tar).expect("gzip");
            encoder.finish().expect("gzip")
        } else {
            tar.clone()
        };
        let media_type = if *gzip {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        } else {
            "application/vnd.oci.image.layer.v1.tar"
        };
        descriptors.push(serde_json::json!({"mediaType": media_type, "digest": format!("sha256:{}", hex(&blob)), "size": blob.len()}));
        blobs.push(blob);
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "layers": descriptors
    }))
    .expect("json");
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{}", hex(&manifest)), "size": manifest.len(), "annotations": {"io.containerd.image.name": name}}]
    }))
    .expect("json");
    blobs.push(manifest);
    let mut archive = tar::Builder::new(std::fs::File::create(path).expect("create"));
    let mut add = |name: &str, data: &[u8]| {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        archive
            .append_data(&mut header, name, data)
            .expect("append");
    };
    add("index.json", &index);
    for blob in &blobs {
        add(&format!("blobs/sha256/{}", hex(blob)), blob);
    }
    archive.finish().expect("finish");
}

/// A layer of `(path, entry type, mode, content or link target)`.
fn layer(entries: &[(&str, tar::EntryType, u32, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, kind, mode, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(*kind);
        header.set_mode(*mode);
        if *kind == tar::EntryType::Symlink {
            header.set_size(0);
            builder.append_link(&mut header, path, data).expect("link");
        } else {
            let body = if *kind == tar::EntryType::Regular {
                data.as_bytes()
            } else {
                &[]
            };
            header.set_size(body.len() as u64);
            builder
                .append_data(&mut header, path, body)
                .expect("append");
        }
    }
    builder.into_inner().expect("tar")
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn an_images_layers_digest_as_the_rootfs_they_unpack_to() {
    use tar::EntryType::{Directory as D, Regular as F, Symlink as L};
    let work = tempfile::tempdir().expect("tempdir");
    let archive = work.path().join("image.tar");
    let base = layer(&[
        ("bin/", D, 0o755, ""),
        ("bin/server", F, 0o755, "serve"),
        ("etc/conf", F, 0o644, "threads=2"),
        ("etc/secret", F, 0o600, "s"),
        ("usr/lib/", D, 0o755, ""),
        ("lib", L, 0o777, "usr/lib"),
    ]);
    let top = layer(&[
        ("etc/.wh.secret", F, 0o644, ""),
        ("lib/libx.so", F, 0o644, "x"),
        ("bin/setuid", F, 0o4755, "root"),
    ]);
    oci_archive(
        &archive,
        "example.com/server:1",
        &[(base, true), (top, false)],
    );

    // The same tree, unpacked by hand as containerd would leave it.
    let rootfs = work.path().join("rootfs");
    for dir in ["bin", "etc", "usr/lib"] {
        std::fs::create_dir_all(rootfs.join(dir)).expect("mkdir");
    }
    std::fs::write(rootfs.join("bin/server"), "serve").expect("write");
    std::fs::write(rootfs.join("bin/setuid"), "root").expect("write");
    std::fs::write(rootfs.join("etc/conf"), "threads=2").expect("write");
    std::fs::write(rootfs.join("usr/lib/libx.so"), "x").expect("write");
    std::os::unix::fs::symlink("usr/lib", rootfs.join("lib")).expect("symlink");
    for (path, mode) in [
        ("", 0o755),
        ("bin", 0o755),
        ("etc", 0o755),
        ("usr", 0o755),
        ("usr/lib", 0o755),
        ("bin/server", 0o755),
        ("bin/setuid", 0o4755),
        ("etc/conf", 0o644),
        ("usr/lib/libx.so", 0o644),
    ] {
        chmod(&rootfs.join(path), mode);
    }

    let from_image = Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(["rootfs", "digest", "--oci"])
        .arg(&archive)
        .output()
        .expect("run veil");
    assert!(
        from_image.status.success(),
        "{}",
        String::from_utf8_lossy(&from_image.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&from_image.stdout).trim(),
        printed(&rootfs)
    );

    let wrong_name = Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(["rootfs", "digest", "--image", "other", "--oci"])
        .arg(&archive)
        .output()
        .expect("run veil");
    let stderr = String::from_utf8_lossy(&wrong_name.stderr);
    assert!(
        !wrong_name.status.success() && stderr.contains("example.com/server:1"),
        "{stderr}"
    );
}

#[test]
fn a_file_that_is_no_oci_image_is_named_with_how_to_save_one() {
    let work = tempfile::tempdir().expect("tempdir");
    let archive = work.path().join("rootfs.tar");
    std::fs::write(
        &archive,
        layer(&[("bin/sh", tar::EntryType::Regular, 0o755, "sh")]),
    )
    .expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(["rootfs", "digest", "--oci"])
        .arg(&archive)
        .output()
        .expect("run veil");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success()
            && stderr.contains("not an OCI image archive")
            && stderr.contains("oci-archive"),
        "{stderr}"
    );
}

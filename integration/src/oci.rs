//! A busybox OCI image built locally from Debian's busybox-static (no registry needed).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// The image name the harness imports.
pub const BUSYBOX_IMAGE: &str = "veil.test/busybox:latest";
/// Where Debian's busybox-static puts the binary.
pub const BUSYBOX_BINARY: &str = "/bin/busybox";

const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "ls", "uname", "sleep", "id", "hostname", "true", "false", "ps", "mount",
    "stty", "tty", "env", "wc", "head", "grep", "kill", "pwd", "readlink", "test", "printf", "dd",
    "df", "touch", "rm", "mkdir", "seq", "od", "md5sum",
];

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn add_file(builder: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(mode);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut header, path, data)?;
    Ok(())
}

fn add_dir(builder: &mut tar::Builder<Vec<u8>>, path: &str) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(0);
    header.set_mode(0o755);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Directory);
    builder.append_data(&mut header, path, std::io::empty())?;
    Ok(())
}

fn add_symlink(builder: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(0);
    header.set_mode(0o777);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Symlink);
    builder.append_link(&mut header, path, target)?;
    Ok(())
}

/// A file added to an image on top of busybox.
#[derive(Debug, Clone)]
pub struct ExtraFile {
    /// Path in the image, without a leading `/`.
    pub path: String,
    /// Mode bits.
    pub mode: u32,
    /// Content.
    pub data: Vec<u8>,
}

fn busybox_layer(extra: &[ExtraFile]) -> Result<Vec<u8>> {
    let busybox = std::fs::read(BUSYBOX_BINARY)
        .with_context(|| format!("read {BUSYBOX_BINARY}: install Debian's busybox-static (apt-get install busybox-static)"))?;
    let mut layer = tar::Builder::new(Vec::new());
    for dir in [
        "bin", "dev", "proc", "sys", "etc", "tmp", "root", "var", "run",
    ] {
        add_dir(&mut layer, dir)?;
    }
    add_file(&mut layer, "bin/busybox", 0o755, &busybox)?;
    for applet in APPLETS {
        add_symlink(&mut layer, &format!("bin/{applet}"), "busybox")?;
    }
    add_file(
        &mut layer,
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    add_file(
        &mut layer,
        "etc/group",
        0o644,
        b"root:x:0:\nnogroup:x:65534:\n",
    )?;
    for file in extra {
        add_file(&mut layer, &file.path, file.mode, &file.data)?;
    }
    Ok(layer.into_inner()?)
}

/// Writes an OCI image layout tarball of a busybox image named [`BUSYBOX_IMAGE`] to `out`,
/// ready for `ctr image import`.
pub fn write_busybox_image(out: &Path) -> Result<()> {
    write_image(out, BUSYBOX_IMAGE, &[])
}

/// Writes an OCI image layout tarball named `name`: busybox plus `extra` files.
pub fn write_image(out: &Path, name: &str, extra: &[ExtraFile]) -> Result<()> {
    write_image_running(out, name, extra, &["/bin/sh"])
}

/// Writes a pod sandbox ("pause") image named `name`: busybox whose default command
/// sleeps for good, since CRI runs the sandbox image's own command as the pod's first
/// container and there is no registry to pull the real pause image from.
pub fn write_pause_image(out: &Path, name: &str) -> Result<()> {
    write_image_running(out, name, &[], &["/bin/sleep", "2147483647"])
}

fn write_image_running(out: &Path, name: &str, extra: &[ExtraFile], cmd: &[&str]) -> Result<()> {
    let layer = busybox_layer(extra)?;
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(&layer))]}
    }))?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", sha256_hex(&config)), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{}", sha256_hex(&layer)), "size": layer.len()}]
    }))?;
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", sha256_hex(&manifest)),
            "size": manifest.len(),
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": "latest"}
        }]
    }))?;
    let mut image = tar::Builder::new(Vec::new());
    add_file(
        &mut image,
        "oci-layout",
        0o644,
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    add_file(&mut image, "index.json", 0o644, &index)?;
    for blob in [&layer, &config, &manifest] {
        add_file(
            &mut image,
            &format!("blobs/sha256/{}", sha256_hex(blob)),
            0o644,
            blob,
        )?;
    }
    let mut file =
        std::fs::File::create(out).with_context(|| format!("create {}", out.display()))?;
    file.write_all(&image.into_inner()?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_layout_names_every_blob_by_its_digest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("busybox.tar");
        write_busybox_image(&out).expect("image");
        let mut archive = tar::Archive::new(std::fs::File::open(&out).expect("open"));
        let mut names = Vec::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let name = entry.path().expect("path").display().to_string();
            if let Some(digest) = name.strip_prefix("blobs/sha256/") {
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut data).expect("read");
                assert_eq!(sha256_hex(&data), digest);
            }
            names.push(name);
        }
        assert!(
            names.contains(&"index.json".to_string()) && names.contains(&"oci-layout".to_string())
        );
        assert_eq!(names.iter().filter(|n| n.starts_with("blobs/")).count(), 3);
    }
}

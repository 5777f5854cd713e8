//! Memory volumes end to end: a bind mount marked `medium: Memory` becomes a tmpfs in
//! guest RAM (not a host share), its size limit holds, and the host copy stays empty.

use std::time::Duration;

use veil_integration::{Containerd, VEIL_RUNTIME};

const IMAGE: &str = veil_integration::oci::BUSYBOX_IMAGE;

#[test]
fn a_memory_volume_is_a_guest_tmpfs_with_its_size_limit() {
    let containerd = Containerd::start().expect("start containerd");
    containerd.import_busybox().expect("import");
    let host_dir = containerd.dir().join("pod/volumes/model");
    std::fs::create_dir_all(&host_dir).expect("mkdir");
    let mount = format!(
        "type=bind,src={},dst=/model,options=rbind:rw",
        host_dir.display()
    );
    let script = "grep ' /model ' /proc/mounts; echo secret > /model/plain; \
                  dd if=/dev/zero of=/model/big bs=1024 count=2048 2>&1 | grep -o 'No space left on device'; \
                  cat /model/plain";
    let output = containerd
        .run_ctr(
            &[
                "run",
                "--rm",
                "--runtime",
                VEIL_RUNTIME,
                "--annotation",
                "io.veil.volume.model.medium=Memory",
                "--annotation",
                "io.veil.volume.model.size-limit=1Mi",
                "--mount",
                &mount,
                IMAGE,
                "memvol",
                "sh",
                "-c",
                script,
            ],
            None,
            Duration::from_secs(300),
        )
        .expect("ctr run");
    let lines: Vec<&str> = output.stdout.lines().collect();
    assert!(
        lines
            .first()
            .is_some_and(|l| l.starts_with("veil-memory-volume /model tmpfs")),
        "mounts: {:?} stderr: {}",
        lines,
        output.stderr
    );
    assert!(
        output.stdout.contains("No space left on device"),
        "write past the limit: {}",
        output.stdout
    );
    assert_eq!(lines.last(), Some(&"secret"));
    let on_host: Vec<_> = std::fs::read_dir(&host_dir)
        .expect("read host dir")
        .collect();
    assert!(
        on_host.is_empty(),
        "the host copy must stay empty, found {on_host:?}"
    );
}

#[test]
fn a_malformed_volume_annotation_is_refused_naming_it() {
    let containerd = Containerd::start().expect("start containerd");
    containerd.import_busybox().expect("import");
    let output = containerd
        .run_ctr(
            &[
                "run",
                "--rm",
                "--runtime",
                VEIL_RUNTIME,
                "--annotation",
                "io.veil.volume.model.size-limit=lots",
                IMAGE,
                "badvol",
                "true",
            ],
            None,
            Duration::from_secs(120),
        )
        .expect("ctr run");
    assert_ne!(output.code, 0);
    assert!(
        output.stderr.contains("io.veil.volume.model.size-limit"),
        "stderr: {}",
        output.stderr
    );
    assert!(
        containerd.qemu_processes().is_empty(),
        "no VM should start for a refused container"
    );
}

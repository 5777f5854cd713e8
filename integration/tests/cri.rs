//! The Kubernetes path, end to end: containerd's CRI plugin driven over its socket as
//! kubelet drives it (RunPodSandbox, CreateContainer, StartContainer, ExecSync,
//! ContainerStatus, StopPodSandbox, RemovePodSandbox), with the `veil` runtime handler
//! and, for parity, runc. Pods use host networking (no CNI). Every case starts its own
//! private containerd. Needs root and the built artifacts (`make test` provides both).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_cri::v1::{ContainerConfig, ContainerState, NamespaceMode, PodSandboxConfig};
use veil_integration::cri::{self, CriClient, RUNC_HANDLER, VEIL_HANDLER};
use veil_integration::streaming::RemoteCommand;
use veil_integration::{eventually, Containerd, Options};

const EXEC: Duration = Duration::from_secs(60);
const TASK_END: Duration = Duration::from_secs(120);

struct Cluster {
    containerd: Containerd,
    cri: CriClient,
}

fn cluster() -> Cluster {
    let containerd = Containerd::start_cri(&Options::default()).expect("start containerd with CRI");
    cri::import_images(&containerd).expect("import the images into k8s.io");
    let cri = CriClient::connect(&containerd.socket)
        .unwrap_or_else(|e| panic!("CRI client: {e:#}\n{}", containerd.log()));
    Cluster { containerd, cri }
}

impl Cluster {
    /// A directory for the pod's logs and volumes, like kubelet's `pods/<uid>`.
    fn pod_dir(&self, name: &str) -> PathBuf {
        let dir = self.containerd.dir().join("pods").join(name);
        std::fs::create_dir_all(dir.join("volumes/shared")).expect("create the pod dir");
        dir
    }

    fn run_pod(&mut self, config: &PodSandboxConfig, handler: &str) -> String {
        match self.cri.run_pod_sandbox(config, handler) {
            Ok(id) => id,
            Err(e) => panic!(
                "RunPodSandbox ({handler:?}): {e:#}\n{}",
                self.containerd.log()
            ),
        }
    }

    fn start(
        &mut self,
        pod: &str,
        sandbox: &PodSandboxConfig,
        container: &k8s_cri::v1::ContainerConfig,
    ) -> String {
        let id = self
            .cri
            .create_container(pod, container, sandbox)
            .unwrap_or_else(|e| {
                panic!(
                    "CreateContainer: {e:#}\n{}\n{}",
                    self.containerd.log(),
                    cri::console_log(&self.containerd, pod)
                )
            });
        self.cri.start_container(&id).unwrap_or_else(|e| {
            panic!(
                "StartContainer: {e:#}\n{}\n{}",
                self.containerd.log(),
                cri::console_log(&self.containerd, pod)
            )
        });
        id
    }

    fn exec(&mut self, id: &str, command: &[&str]) -> cri::ExecOutput {
        self.cri.exec_sync(id, command, EXEC).unwrap_or_else(|e| {
            panic!(
                "ExecSync {command:?} in {id}: {e:#}\n{}",
                self.containerd.log()
            )
        })
    }

    fn state(&mut self, id: &str) -> (i32, i32) {
        let status = self.cri.container_status(id).expect("ContainerStatus");
        (status.state, status.exit_code)
    }

    fn tear_down(&mut self, pod: &str) {
        self.cri.stop_pod_sandbox(pod).unwrap_or_else(|e| {
            panic!(
                "StopPodSandbox: {e:#}\n{}\nconsole: {}",
                self.containerd.log(),
                cri::console_log(&self.containerd, pod)
            )
        });
        self.cri
            .remove_pod_sandbox(pod)
            .unwrap_or_else(|e| panic!("RemovePodSandbox: {e:#}\n{}", self.containerd.log()));
    }
}

fn host_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .expect("boot id")
        .trim()
        .to_string()
}

/// What containerd handed the shim, printed so the test log records it.
fn show_spec(containerd: &Containerd, role: &str, id: &str) -> serde_json::Value {
    let spec = cri::bundle_spec(containerd, id).expect("bundle spec");
    eprintln!(
        "{role} {id}: annotations {}\n  namespaces {}\n  mounts {}\n  process.args {}",
        spec["annotations"], spec["linux"]["namespaces"], spec["mounts"], spec["process"]["args"]
    );
    spec
}

fn assert_nothing_left(containerd: &Containerd) {
    assert!(
        eventually(Duration::from_secs(30), || containerd
            .qemu_processes()
            .is_empty()
            && containerd.shim_processes().is_empty()),
        "left behind: qemu {:?}, shims {:?}",
        containerd.qemu_processes(),
        containerd.shim_processes()
    );
    let state = containerd.dir().join("state");
    assert!(
        containerd.mounts_below(&state).is_empty(),
        "mounts left: {:?}",
        containerd.mounts_below(&state)
    );
    assert!(
        containerd.mounts_below(&containerd.veil_state).is_empty(),
        "mounts left: {:?}",
        containerd.mounts_below(&containerd.veil_state)
    );
    assert!(
        cri::veil_state_entries(containerd).is_empty(),
        "veil state left: {:?}",
        cri::veil_state_entries(containerd)
    );
}

fn two_container_pod(
    cluster: &mut Cluster,
    name: &str,
    handler: &str,
) -> (String, PodSandboxConfig, String, String) {
    let dir = cluster.pod_dir(name);
    let config = cri::host_network_pod(name, &dir, HashMap::new());
    let pod = cluster.run_pod(&config, handler);
    let shared = || vec![cri::bind_mount(&dir.join("volumes/shared"), "/shared")];
    let sleeper = cluster.start(
        &pod,
        &config,
        &cri::busybox_container("sleeper", &["sleep", "1000"], shared()),
    );
    let writer = cluster.start(
        &pod,
        &config,
        &cri::busybox_container(
            "writer",
            &["sh", "-c", "echo from-writer > /shared/note; sleep 1000"],
            shared(),
        ),
    );
    (pod, config, sleeper, writer)
}

/// The namespaces two containers of one pod have in common, by comparing their
/// `/proc/self/ns/*` links: as containerd's specs ask, the pod's containers share the
/// sandbox's IPC namespace (and, with host networking, the UTS namespace of the node or
/// VM), while each has its own pid namespace.
fn assert_pod_namespaces_shared(cluster: &mut Cluster, a: &str, b: &str) {
    let links = |cluster: &mut Cluster, id: &str| {
        let out = cluster.exec(
            id,
            &[
                "sh",
                "-c",
                "for ns in ipc uts pid; do readlink /proc/self/ns/$ns; done",
            ],
        );
        assert_eq!(out.exit_code, 0, "{out:?}");
        out.stdout.lines().map(str::to_string).collect::<Vec<_>>()
    };
    let (of_a, of_b) = (links(cluster, a), links(cluster, b));
    assert_eq!(of_a.len(), 3, "{of_a:?}");
    assert_eq!(of_a[0], of_b[0], "the pod's containers do not share IPC");
    assert_eq!(of_a[1], of_b[1], "the pod's containers do not share UTS");
    assert_ne!(
        of_a[2], of_b[2],
        "each container should have its own pid namespace"
    );
}

/// The pod's /dev/shm, which containerd binds from a host tmpfs, is one tmpfs in guest
/// memory for all of the pod's containers: what one writes there the other reads, and the
/// host's directory stays empty.
fn assert_pod_shm_is_shared_in_guest_memory(
    cluster: &mut Cluster,
    spec: &serde_json::Value,
    reader: &str,
    writer: &str,
) {
    let host_shm = spec["mounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| m["destination"] == "/dev/shm")
        .and_then(|m| m["source"].as_str())
        .map(std::path::PathBuf::from)
        .expect("containerd binds the pod's /dev/shm");
    let wrote = cluster.exec(writer, &["sh", "-c", "echo tensors > /dev/shm/handed-over"]);
    assert_eq!(wrote.exit_code, 0, "{wrote:?}");
    let read = cluster.exec(reader, &["cat", "/dev/shm/handed-over"]);
    assert_eq!(
        read.stdout, "tensors\n",
        "the pod's containers do not share /dev/shm: {read:?}"
    );
    let mounted = cluster.exec(reader, &["grep", " /dev/shm ", "/proc/self/mounts"]);
    assert!(
        mounted
            .stdout
            .starts_with("veil-memory-volume /dev/shm tmpfs"),
        "/dev/shm is not the pod's memory volume: {mounted:?}"
    );
    let on_host: Vec<_> = std::fs::read_dir(&host_shm)
        .map(|entries| entries.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        on_host.is_empty(),
        "the host's {} has {on_host:?}",
        host_shm.display()
    );
}

#[test]
fn a_veil_pod_runs_all_its_containers_in_one_vm_and_leaves_nothing_when_removed() {
    let mut cluster = cluster();
    let (pod, _, sleeper, writer) = two_container_pod(&mut cluster, "veil-pod", VEIL_HANDLER);
    show_spec(&cluster.containerd, "sandbox", &pod);
    let sleeper_spec = show_spec(&cluster.containerd, "container", &sleeper);

    let boot_sleeper = cluster.exec(&sleeper, &["cat", "/proc/sys/kernel/random/boot_id"]);
    let boot_writer = cluster.exec(&writer, &["cat", "/proc/sys/kernel/random/boot_id"]);
    assert_eq!(boot_sleeper.exit_code, 0, "{boot_sleeper:?}");
    assert_eq!(
        boot_sleeper.stdout, boot_writer.stdout,
        "the pod's containers booted different kernels: not one VM"
    );
    assert_ne!(
        boot_sleeper.stdout.trim(),
        host_boot_id(),
        "the pod shares the host's boot: it did not run in a VM"
    );
    assert_eq!(
        cluster.containerd.qemu_processes().len(),
        1,
        "expected one VM for the pod"
    );
    assert_eq!(
        cri::veil_state_entries(&cluster.containerd),
        vec![pod.clone()]
    );

    // The emptyDir-like volume is one directory for both containers.
    assert!(
        eventually(EXEC, || cluster
            .cri
            .exec_sync(&sleeper, &["cat", "/shared/note"], EXEC)
            .map(|o| o.stdout == "from-writer\n")
            .unwrap_or(false)),
        "the sleeper does not see the writer's file in the shared volume"
    );
    assert_pod_namespaces_shared(&mut cluster, &sleeper, &writer);
    assert_pod_shm_is_shared_in_guest_memory(&mut cluster, &sleeper_spec, &sleeper, &writer);

    let listed = cluster
        .cri
        .list_containers(Some(&pod))
        .expect("ListContainers");
    assert_eq!(listed.len(), 2, "{listed:?}");

    cluster.tear_down(&pod);
    assert_nothing_left(&cluster.containerd);
    // Kubelet's signals that race with exits (ExecSync's, StopPodSandbox's) are answered as
    // runc's shim answers them, not logged as failures.
    let log = cluster.containerd.log();
    let failed: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("request failed"))
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
}

/// A veil pod `name` whose container "waiter" runs `first`, then waits for /tmp/go (so
/// "running" is observed without racing a timer) and runs `then`: the pod's directory, its
/// config, the pod's and the waiter's ids.
fn waiting_pod(
    cluster: &mut Cluster,
    name: &str,
    first: &str,
    then: &str,
) -> (PathBuf, PodSandboxConfig, String, String) {
    let dir = cluster.pod_dir(name);
    let config = cri::host_network_pod(name, &dir, HashMap::new());
    let pod = cluster.run_pod(&config, VEIL_HANDLER);
    let script = format!("{first}; while [ ! -f /tmp/go ]; do sleep 0.2; done; {then}");
    let waiter = cluster.start(
        &pod,
        &config,
        &cri::busybox_container("waiter", &["sh", "-c", &script], Vec::new()),
    );
    (dir, config, pod, waiter)
}

/// Lets a [`waiting_pod`]'s waiter go on, and returns the exit code CRI reports for it.
fn let_finish(cluster: &mut Cluster, waiter: &str) -> i32 {
    let touch = cluster.exec(waiter, &["touch", "/tmp/go"]);
    assert_eq!(touch.exit_code, 0, "{touch:?}");
    assert!(
        eventually(TASK_END, || cluster.state(waiter).0
            == ContainerState::ContainerExited as i32),
        "the container's exit did not reach CRI: {:?}",
        cluster.cri.container_status(waiter)
    );
    cluster.state(waiter).1
}

/// containerd restarts under kubelet (an upgrade, a crash): its CRI plugin recovers the
/// veil pod in the same VM; what the container prints, its exit and exit code after the
/// restart reach CRI, and the pod is torn down leaving nothing.
#[test]
fn a_veil_pod_goes_on_across_a_containerd_restart() {
    let mut cluster = cluster();
    let (dir, config, pod, waiter) = waiting_pod(
        &mut cluster,
        "restart-pod",
        "echo before",
        "echo after; exit 9",
    );
    let boot = cluster.exec(&waiter, &["cat", "/proc/sys/kernel/random/boot_id"]);
    let qemu = cluster.containerd.qemu_processes();

    cluster.containerd.restart().expect("restart containerd");
    // The CRI plugin answers once it has recovered the node's pods, after containerd's
    // own API is up.
    let mut reconnected = None;
    let recovered = eventually(Duration::from_secs(60), || {
        reconnected = CriClient::connect(&cluster.containerd.socket).ok();
        reconnected.is_some()
    });
    assert!(
        recovered,
        "CRI did not answer after the restart\n{}",
        cluster.containerd.log()
    );
    cluster.cri = reconnected.expect("a CRI client");
    assert_eq!(
        cluster.state(&waiter).0,
        ContainerState::ContainerRunning as i32
    );
    assert_eq!(cluster.containerd.qemu_processes(), qemu, "another VM");
    let again = cluster.exec(&waiter, &["cat", "/proc/sys/kernel/random/boot_id"]);
    assert_eq!(again.stdout, boot.stdout, "another guest kernel");
    assert_eq!(let_finish(&mut cluster, &waiter), 9);
    let log = std::fs::read_to_string(dir.join("waiter.log")).expect("the CRI log file");
    assert!(
        log.lines().any(|l| l.contains(" stdout F before"))
            && log.lines().any(|l| l.contains(" stdout F after")),
        "the CRI log lacks what the container printed around the restart: {log:?}"
    );

    // The pod's shim took its events to the containerd that started it; an OOM kill
    // after the restart must still reach the new one (CRI's reason comes from TaskOOM).
    let hog = cri::with_resources(
        cri::busybox_container(
            "hog",
            &["dd", "if=/dev/zero", "of=/dev/null", "bs=96M", "count=1"],
            Vec::new(),
        ),
        cri::memory_and_cpu_limits(32 << 20, None),
    );
    let hog = cluster.start(&pod, &config, &hog);
    assert!(
        eventually(Duration::from_secs(120), || cluster.state(&hog).0
            == ContainerState::ContainerExited as i32),
        "the hog did not exit: {:?}",
        cluster.cri.container_status(&hog)
    );
    let status = cluster.cri.container_status(&hog).expect("ContainerStatus");
    assert_eq!(
        (status.exit_code, status.reason.as_str()),
        (137, "OOMKilled"),
        "the OOM kill after the restart did not reach CRI"
    );

    cluster.tear_down(&pod);
    assert_nothing_left(&cluster.containerd);
}

#[test]
fn container_status_reports_running_then_the_exit_code_and_logs_reach_the_cri_log() {
    let mut cluster = cluster();
    // It prints only at the end: see exec_sync_after_the_container_printed.
    let (dir, _, pod, waiter) = waiting_pod(
        &mut cluster,
        "status-pod",
        "true",
        "echo finishing; echo done >&2; exit 7",
    );
    assert_eq!(
        cluster.state(&waiter).0,
        ContainerState::ContainerRunning as i32
    );
    assert_eq!(let_finish(&mut cluster, &waiter), 7);

    let log = std::fs::read_to_string(dir.join("waiter.log")).expect("the CRI log file");
    assert!(
        log.lines().any(|l| l.contains(" stdout F finishing"))
            && log.lines().any(|l| l.contains(" stderr F done")),
        "CRI log lacks the output: {log:?}"
    );

    let exec = cluster.cri.exec_sync(&waiter, &["true"], EXEC);
    assert!(
        exec.is_err(),
        "ExecSync in an exited container succeeded: {exec:?}"
    );

    cluster.tear_down(&pod);
    assert_nothing_left(&cluster.containerd);
}

#[test]
fn the_same_pod_runs_with_runc_on_the_host_kernel() {
    let mut cluster = cluster();
    let (pod, _, sleeper, writer) = two_container_pod(&mut cluster, "runc-pod", RUNC_HANDLER);
    let boot = cluster.exec(&writer, &["cat", "/proc/sys/kernel/random/boot_id"]);
    assert_eq!(
        boot.stdout.trim(),
        host_boot_id(),
        "runc runs on the host kernel"
    );
    assert!(
        eventually(EXEC, || cluster
            .cri
            .exec_sync(&sleeper, &["cat", "/shared/note"], EXEC)
            .map(|o| o.stdout == "from-writer\n")
            .unwrap_or(false)),
        "the sleeper does not see the writer's file in the shared volume"
    );
    assert_pod_namespaces_shared(&mut cluster, &sleeper, &writer);
    assert!(cluster.containerd.qemu_processes().is_empty());
    cluster.tear_down(&pod);
    assert!(
        cluster
            .cri
            .list_containers(None)
            .expect("ListContainers")
            .is_empty(),
        "containers left after RemovePodSandbox"
    );
}

/// `seccompProfile: RuntimeDefault`: containerd writes its default profile into the spec,
/// and the agent holds the container to it as runc does on the host. The profile lets
/// `unshare(CLONE_NEWUSER)` through only with CAP_SYS_ADMIN, which the container lacks.
#[test]
fn a_runtime_default_seccomp_profile_holds_veil_containers_as_runc_ones() {
    let mut cluster = cluster();
    for handler in [VEIL_HANDLER, RUNC_HANDLER] {
        let name = format!("seccomp-{handler}");
        let dir = cluster.pod_dir(&name);
        let config = cri::host_network_pod(&name, &dir, HashMap::new());
        let pod = cluster.run_pod(&config, handler);
        let mut container = cri::busybox_container("confined", &["sleep", "1000"], Vec::new());
        if let Some(context) = container
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
        {
            context.seccomp = Some(k8s_cri::v1::SecurityProfile::default());
        }
        let confined = cluster.start(&pod, &config, &container);
        let out = cluster.exec(
            &confined,
            &[
                "sh",
                "-c",
                "grep Seccomp: /proc/self/status; unshare -U true 2>/dev/null && echo unshared || echo refused",
            ],
        );
        assert_eq!(out.stdout, "Seccomp:\t2\nrefused\n", "{handler}: {out:?}");
        let unconfined = cluster.start(
            &pod,
            &config,
            &cri::busybox_container("unconfined", &["sleep", "1000"], Vec::new()),
        );
        let out = cluster.exec(&unconfined, &["grep", "Seccomp:", "/proc/self/status"]);
        assert_eq!(out.stdout, "Seccomp:\t0\n", "{handler}: {out:?}");
        cluster.tear_down(&pod);
    }
}

/// Once the agent had relayed a running container's output, its async runtime stalled:
/// the output pipes were blocking and the relay's next read blocked the guest's only
/// worker thread, so every later reply (here an ExecSync) never came.
#[test]
fn exec_sync_after_the_container_printed() {
    let mut cluster = cluster();
    let dir = cluster.pod_dir("printer-pod");
    let config = cri::host_network_pod("printer-pod", &dir, HashMap::new());
    let pod = cluster.run_pod(&config, VEIL_HANDLER);
    let printer = cluster.start(
        &pod,
        &config,
        &cri::busybox_container(
            "printer",
            &["sh", "-c", "echo printed; sleep 1000"],
            Vec::new(),
        ),
    );
    assert!(
        eventually(EXEC, || std::fs::read_to_string(dir.join("printer.log"))
            .is_ok_and(|log| log.contains("printed"))),
        "the container's output did not reach its CRI log"
    );
    let boot = cluster.exec(&printer, &["cat", "/proc/sys/kernel/random/boot_id"]);
    assert_eq!(boot.exit_code, 0, "{boot:?}");
    cluster.tear_down(&pod);
    assert_nothing_left(&cluster.containerd);
}

/// The pod's resources (the sum of its containers' limits, which kubelet sends with
/// RunPodSandbox) size its VM on top of the node's base, as Kata sizes its sandboxes: 512 MiB
/// and 1 vCPU by default, plus 256 MiB and one CPU here.
#[test]
fn a_pods_vm_is_sized_by_its_containers_limits() {
    let mut cluster = cluster();
    let dir = cluster.pod_dir("sized-pod");
    let mut config = cri::host_network_pod("sized-pod", &dir, HashMap::new());
    let limits = cri::memory_and_cpu_limits(256 << 20, Some(100_000));
    if let Some(linux) = config.linux.as_mut() {
        linux.resources = Some(limits.clone());
    }
    let pod = cluster.run_pod(&config, VEIL_HANDLER);
    let container = cri::with_resources(
        cri::busybox_container("sized", &["sleep", "1000"], Vec::new()),
        limits,
    );
    let id = cluster.start(&pod, &config, &container);
    let sandbox = show_spec(&cluster.containerd, "sandbox", &pod);
    assert_eq!(
        sandbox["annotations"]["io.kubernetes.cri.sandbox-memory"], "268435456",
        "containerd did not pass the pod's memory on"
    );
    let cpus = cluster.exec(&id, &["grep", "-c", "^processor", "/proc/cpuinfo"]);
    assert_eq!(cpus.stdout.trim(), "2", "{cpus:?}");
    let meminfo = cluster.exec(&id, &["grep", "MemTotal", "/proc/meminfo"]);
    let total_kib: u64 = meminfo
        .stdout
        .split_whitespace()
        .nth(1)
        .and_then(|kib| kib.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal: {meminfo:?}"));
    // 768 MiB less what the guest kernel keeps for itself; the base alone is under 512.
    assert!(
        (600 << 10..=768 << 10).contains(&total_kib),
        "MemTotal {total_kib} kB in a VM of 768 MiB"
    );
    assert!(cluster
        .containerd
        .log()
        .lines()
        .any(|line| line.contains("VM sized")
            && line.contains("memory_mib=768")
            && line.contains("vcpus=2")));
    cluster.tear_down(&pod);
    assert_nothing_left(&cluster.containerd);
}

/// The stdout lines of the CRI log file `log` in `dir`.
fn stdout_lines(dir: &std::path::Path, log: &str) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join(log)).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            line.split_once(" stdout F ")
                .map(|(_, rest)| rest.to_string())
        })
        .collect()
}

/// What kubelet does for init containers and for a container that exits under
/// `restartPolicy: Always`: the init container runs to completion first, then the main
/// container starts; when it exits, kubelet creates the same container again with the
/// next attempt number, in the same sandbox, so in the same VM.
#[test]
fn an_init_container_completes_first_and_a_restarted_container_runs_again_in_the_same_vm() {
    let mut cluster = cluster();
    let dir = cluster.pod_dir("init-pod");
    let config = cri::host_network_pod("init-pod", &dir, HashMap::new());
    let pod = cluster.run_pod(&config, VEIL_HANDLER);
    let shared = || vec![cri::bind_mount(&dir.join("volumes/shared"), "/shared")];
    let exited = |cluster: &mut Cluster, id: &str| {
        assert!(
            eventually(TASK_END, || cluster.state(id).0
                == ContainerState::ContainerExited as i32),
            "{id} did not exit: {:?}",
            cluster.cri.container_status(id)
        );
        cluster.state(id).1
    };

    let init = cluster.start(
        &pod,
        &config,
        &cri::busybox_container(
            "init",
            &["sh", "-c", "echo prepared-by-init > /shared/ready"],
            shared(),
        ),
    );
    assert_eq!(exited(&mut cluster, &init), 0, "the init container failed");

    let main_command = [
        "sh",
        "-c",
        "cat /shared/ready; cat /proc/sys/kernel/random/boot_id; exit 3",
    ];
    let first = cluster.start(
        &pod,
        &config,
        &cri::busybox_container("main", &main_command, shared()),
    );
    assert_eq!(exited(&mut cluster, &first), 3);
    let mut again = cri::busybox_container("main", &main_command, shared());
    if let Some(metadata) = again.metadata.as_mut() {
        metadata.attempt = 1;
    }
    again.log_path = "main-1.log".into();
    let second = cluster.start(&pod, &config, &again);
    assert_ne!(first, second, "a restart is a new container");
    assert_eq!(exited(&mut cluster, &second), 3);

    let first_lines = stdout_lines(&dir, "main.log");
    let second_lines = stdout_lines(&dir, "main-1.log");
    assert_eq!(
        first_lines.first().map(String::as_str),
        Some("prepared-by-init"),
        "the main container did not see the init container's work: {first_lines:?}"
    );
    assert_eq!(
        first_lines, second_lines,
        "the restarted container saw another volume or another VM"
    );
    assert_ne!(
        second_lines.get(1).map(String::as_str),
        Some(host_boot_id().as_str())
    );
    assert_eq!(
        cluster.containerd.qemu_processes().len(),
        1,
        "one VM for the pod"
    );
    cluster.tear_down(&pod);
    assert_nothing_left(&cluster.containerd);
}

/// Opens the stream at `url` (from Attach or Exec), writes `input` to the process's stdin and
/// returns its stdout once it holds `expected`.
fn stdin_round_trip(cluster: &Cluster, url: &str, input: &[u8], expected: &str) -> String {
    let mut session = RemoteCommand::connect(url).expect("open the stream");
    session.send_stdin(input).expect("send stdin");
    let stdout = session
        .read_stdout_until(expected, EXEC)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.containerd.log()));
    session.close();
    stdout
}

/// `kubectl attach -i` and `kubectl exec -i`: what the client writes reaches the process's
/// stdin through containerd's streaming server, and the answer comes back on its stdout.
fn attach_round_trip(handler: &str) {
    let mut cluster = cluster();
    let name = format!("attach-{handler}");
    let dir = cluster.pod_dir(&name);
    let config = cri::host_network_pod(&name, &dir, HashMap::new());
    let pod = cluster.run_pod(&config, handler);
    let mut reader = cri::busybox_container(
        "reader",
        &["sh", "-c", "read line; echo got:$line; sleep 1000"],
        Vec::new(),
    );
    reader.stdin = true;
    reader.stdin_once = true;
    let id = cluster.start(&pod, &config, &reader);
    let url = cluster
        .cri
        .attach(&id)
        .unwrap_or_else(|e| panic!("Attach: {e:#}\n{}", cluster.containerd.log()));
    let stdout = stdin_round_trip(&cluster, &url, b"hello-veil\n", "got:hello-veil");
    assert!(stdout.contains("got:hello-veil\n"), "{stdout:?}");

    // `kubectl exec -i`: a new process in the same container, its own stdin.
    let url = cluster
        .cri
        .exec_streaming(&id, &["sh", "-c", "read line; echo exec:$line"])
        .unwrap_or_else(|e| panic!("Exec: {e:#}\n{}", cluster.containerd.log()));
    stdin_round_trip(&cluster, &url, b"again\n", "exec:again");
    cluster.tear_down(&pod);
    assert_nothing_left(&cluster.containerd);
}

#[test]
fn attach_and_exec_stream_stdin_in_and_stdout_out_of_a_veil_container() {
    attach_round_trip(VEIL_HANDLER);
}

#[test]
fn attach_and_exec_stream_stdin_in_and_stdout_out_of_a_runc_container() {
    attach_round_trip(RUNC_HANDLER);
}

/// Sets the pid namespace mode of a pod or container config, as kubelet does for
/// `shareProcessNamespace: true` (POD on the sandbox and on every container).
fn share_process_namespace(
    sandbox: &mut PodSandboxConfig,
    containers: &mut [&mut ContainerConfig],
) {
    let of_sandbox = sandbox
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|c| c.namespace_options.as_mut());
    let of_containers = containers.iter_mut().filter_map(|c| {
        c.linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .and_then(|c| c.namespace_options.as_mut())
    });
    for options in of_sandbox.into_iter().chain(of_containers) {
        options.pid = NamespaceMode::Pod as i32;
    }
}

/// `shareProcessNamespace: true`: each container sees the other's processes, and stopping
/// one container stops only its own processes (found by its cgroup, not by the shared pid
/// namespace).
fn shared_process_namespace(handler: &str) {
    let mut cluster = cluster();
    let name = format!("sharepid-{handler}");
    let dir = cluster.pod_dir(&name);
    let mut config = cri::host_network_pod(&name, &dir, HashMap::new());
    let mut first = cri::busybox_container("first", &["sleep", "4242"], Vec::new());
    let mut second = cri::busybox_container("second", &["sleep", "4343"], Vec::new());
    share_process_namespace(&mut config, &mut [&mut first, &mut second]);
    let pod = cluster.run_pod(&config, handler);
    let first = cluster.start(&pod, &config, &first);
    let second = cluster.start(&pod, &config, &second);

    let seen = cluster.exec(&second, &["ps", "-o", "args"]);
    assert!(
        seen.stdout.contains("sleep 4242") && seen.stdout.contains("sleep 4343"),
        "the second container does not see the first one's process: {seen:?}"
    );
    cluster
        .cri
        .stop_container(&second, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("StopContainer: {e:#}\n{}", cluster.containerd.log()));
    let (state, _) = cluster.state(&first);
    assert_eq!(
        state,
        ContainerState::ContainerRunning as i32,
        "stopping one container of a shared pid namespace stopped its neighbour"
    );
    let still = cluster.exec(&first, &["ps", "-o", "args"]);
    assert!(
        still.stdout.contains("sleep 4242") && !still.stdout.contains("sleep 4343"),
        "after the stop, only the first container's process should be left: {still:?}"
    );
    cluster.tear_down(&pod);
    assert_nothing_left(&cluster.containerd);
}

#[test]
fn a_veil_pod_can_share_one_process_namespace() {
    shared_process_namespace(VEIL_HANDLER);
}

#[test]
fn a_runc_pod_can_share_one_process_namespace() {
    shared_process_namespace(RUNC_HANDLER);
}

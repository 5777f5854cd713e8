//! Container resources and statistics of a veil pod through containerd's CRI, as kubelet
//! uses them: limits from the container config reach the container's cgroup inside the
//! guest, ContainerStats/ListContainerStats report the guest's figures,
//! UpdateContainerResources changes the limit in the guest, and a container that exceeds
//! its memory limit is OOM-killed while the VM and its other containers carry on.
//! Needs root and the built artifacts, with a guest image whose kernel has
//! CONFIG_CFS_BANDWIDTH (`make image`).

use std::collections::HashMap;
use std::time::Duration;

use k8s_cri::v1::{ContainerConfig, ContainerState, PodSandboxConfig};
use veil_integration::cri::{self, CriClient, VEIL_HANDLER};
use veil_integration::systemd::SystemdManager;
use veil_integration::{eventually, Containerd, Options};

const EXEC: Duration = Duration::from_secs(60);
const MIB: i64 = 1024 * 1024;

struct Cluster {
    containerd: Containerd,
    cri: CriClient,
}

impl Cluster {
    fn launch() -> Cluster {
        Cluster::launch_with(&Options::default())
    }

    fn launch_with(options: &Options) -> Cluster {
        let containerd = Containerd::start_cri(options).expect("start containerd with CRI");
        cri::import_images(&containerd).expect("import the images into k8s.io");
        let cri = CriClient::connect(&containerd.socket)
            .unwrap_or_else(|e| panic!("CRI client: {e:#}\n{}", containerd.log()));
        Cluster { containerd, cri }
    }

    /// Runs a pod whose cgroup parent (kubelet's pod cgroup) is `parent`.
    fn run_pod_in_cgroup(&mut self, name: &str, parent: &str) -> String {
        let dir = self.containerd.dir().join("pods").join(name);
        std::fs::create_dir_all(&dir).expect("create the pod dir");
        let mut sandbox = cri::host_network_pod(name, &dir, HashMap::new());
        if let Some(linux) = sandbox.linux.as_mut() {
            linux.cgroup_parent = parent.to_string();
        }
        self.cri
            .run_pod_sandbox(&sandbox, VEIL_HANDLER)
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e:#}\n{}", self.containerd.log()))
    }

    fn run_pod(&mut self, name: &str) -> (String, PodSandboxConfig) {
        let dir = self.containerd.dir().join("pods").join(name);
        std::fs::create_dir_all(&dir).expect("create the pod dir");
        let config = cri::host_network_pod(name, &dir, HashMap::new());
        let pod = self
            .cri
            .run_pod_sandbox(&config, VEIL_HANDLER)
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e:#}\n{}", self.containerd.log()));
        (pod, config)
    }

    fn start(
        &mut self,
        pod: &str,
        sandbox: &PodSandboxConfig,
        container: &ContainerConfig,
    ) -> String {
        let id = self
            .cri
            .create_container(pod, container, sandbox)
            .unwrap_or_else(|e| panic!("CreateContainer: {e:#}\n{}", self.diagnostics(pod)));
        self.cri
            .start_container(&id)
            .unwrap_or_else(|e| panic!("StartContainer: {e:#}\n{}", self.diagnostics(pod)));
        id
    }

    /// Runs `script` with sh in container `id`; its stdout, trimmed, after checking it
    /// exited 0.
    fn sh(&mut self, pod: &str, id: &str, script: &str) -> String {
        let output = self
            .cri
            .exec_sync(id, &["sh", "-c", script], EXEC)
            .unwrap_or_else(|e| panic!("ExecSync {script:?}: {e:#}\n{}", self.diagnostics(pod)));
        assert_eq!(output.exit_code, 0, "{script:?}: {output:?}");
        output.stdout.trim().to_string()
    }

    fn diagnostics(&self, pod: &str) -> String {
        format!(
            "{}\nconsole: {}",
            self.containerd.log(),
            cri::console_log(&self.containerd, pod)
        )
    }

    fn tear_down(&mut self, pod: &str) {
        self.cri
            .stop_pod_sandbox(pod)
            .unwrap_or_else(|e| panic!("StopPodSandbox: {e:#}\n{}", self.diagnostics(pod)));
        self.cri
            .remove_pod_sandbox(pod)
            .unwrap_or_else(|e| panic!("RemovePodSandbox: {e:#}\n{}", self.containerd.log()));
        assert!(
            eventually(Duration::from_secs(30), || self
                .containerd
                .qemu_processes()
                .is_empty()),
            "VM left behind: {:?}",
            self.containerd.qemu_processes()
        );
    }
}

/// The container's own cgroup file `file` as the container sees it: /proc/self/cgroup
/// names its cgroup ("/" inside a cgroup namespace, /veil/<id> without one) below the
/// cgroup2 mount containerd puts at /sys/fs/cgroup.
fn own_cgroup_file(file: &str) -> String {
    format!("cat \"/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)/{file}\"")
}

fn cpu_nanos(stats: &k8s_cri::v1::ContainerStats) -> u64 {
    stats
        .cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds)
        .map_or(0, |v| v.value)
}

fn working_set(stats: &k8s_cri::v1::ContainerStats) -> u64 {
    stats
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes)
        .map_or(0, |v| v.value)
}

#[test]
fn a_veil_container_reports_guest_stats_and_its_limits_apply_and_update_in_the_guest() {
    let mut cluster = Cluster::launch();
    let (pod, sandbox) = cluster.run_pod("stats-pod");
    let worker = cri::with_resources(
        cri::busybox_container(
            "worker",
            // Some CPU and memory of its own, then idle.
            &[
                "sh",
                "-c",
                "head -c 8000000 /dev/urandom > /dev/shm/data; sleep 1000",
            ],
            Vec::new(),
        ),
        cri::memory_and_cpu_limits(64 * MIB, Some(50_000)),
    );
    let id = cluster.start(&pod, &sandbox, &worker);

    assert_eq!(
        cluster.sh(&pod, &id, &own_cgroup_file("memory.max")),
        (64 * MIB).to_string()
    );
    assert_eq!(
        cluster.sh(&pod, &id, &own_cgroup_file("cpu.max")),
        "50000 100000"
    );

    let mut last = None;
    let reported = eventually(Duration::from_secs(60), || {
        let stats = cluster.cri.container_stats(&id).ok();
        let ready = stats
            .as_ref()
            .is_some_and(|s| cpu_nanos(s) > 0 && working_set(s) > 0);
        last = stats;
        ready
    });
    assert!(
        reported,
        "ContainerStats has no CPU usage or working set from the guest: {last:?}\n{}",
        cluster.diagnostics(&pod)
    );
    eprintln!("ContainerStats of {id}: {last:?}");
    let listed = cluster
        .cri
        .list_container_stats(Some(&pod))
        .unwrap_or_else(|e| panic!("ListContainerStats: {e:#}\n{}", cluster.diagnostics(&pod)));
    let ours = listed
        .iter()
        .find(|s| s.attributes.as_ref().is_some_and(|a| a.id == id))
        .unwrap_or_else(|| panic!("ListContainerStats lacks {id}: {listed:?}"));
    assert!(working_set(ours) > 0, "{ours:?}");

    cluster
        .cri
        .update_container_resources(&id, cri::memory_and_cpu_limits(128 * MIB, None))
        .unwrap_or_else(|e| {
            panic!(
                "UpdateContainerResources: {e:#}\n{}",
                cluster.diagnostics(&pod)
            )
        });
    assert_eq!(
        cluster.sh(&pod, &id, &own_cgroup_file("memory.max")),
        (128 * MIB).to_string()
    );

    cluster.tear_down(&pod);
}

#[test]
fn a_container_over_its_memory_limit_is_oom_killed_and_the_vm_carries_on() {
    let mut cluster = Cluster::launch();
    let (pod, sandbox) = cluster.run_pod("oom-pod");
    let bystander = cluster.start(
        &pod,
        &sandbox,
        &cri::busybox_container("bystander", &["sleep", "1000"], Vec::new()),
    );
    // dd fills a 96 MiB buffer from /dev/zero: three times the limit.
    let hog = cri::with_resources(
        cri::busybox_container(
            "hog",
            &["dd", "if=/dev/zero", "of=/dev/null", "bs=96M", "count=1"],
            Vec::new(),
        ),
        cri::memory_and_cpu_limits(32 * MIB, None),
    );
    let hog = cluster.start(&pod, &sandbox, &hog);

    let mut status = None;
    let exited = eventually(Duration::from_secs(120), || {
        status = cluster.cri.container_status(&hog).ok();
        status
            .as_ref()
            .is_some_and(|s| s.state == ContainerState::ContainerExited as i32)
    });
    assert!(
        exited,
        "the hog did not exit: {status:?}\n{}",
        cluster.diagnostics(&pod)
    );
    let status = status.expect("status");
    assert!(
        // 137: SIGKILL; the reason comes from the shim's TaskOOM event, as with runc.
        status.exit_code == 137 && status.reason == "OOMKilled",
        "the hog was not OOM-killed: exit {} reason {:?}\n{}",
        status.exit_code,
        status.reason,
        cluster.diagnostics(&pod)
    );
    assert_eq!(
        cluster.sh(&pod, &bystander, "echo alive"),
        "alive",
        "the VM did not survive the OOM kill"
    );

    // Without a cgroup namespace (containerd adds one only on cgroup v2 hosts) a
    // container sees the guest's whole hierarchy: the hog's cgroup went with its task
    // (containerd deletes the task of an exited container), the bystander's is there.
    let visible = "[ -d /sys/fs/cgroup/veil ] && echo whole-hierarchy || echo own-only";
    if cluster.sh(&pod, &bystander, visible) == "whole-hierarchy" {
        let exists =
            |id: &str| format!("[ -d /sys/fs/cgroup/veil/{id} ] && echo present || echo gone");
        assert_eq!(cluster.sh(&pod, &bystander, &exists(&bystander)), "present");
        let hog_exists = exists(&hog);
        let removed = eventually(Duration::from_secs(30), || {
            cluster.sh(&pod, &bystander, &hog_exists) == "gone"
        });
        assert!(
            removed,
            "the exited container's cgroup is still in the guest"
        );
    }

    cluster.tear_down(&pod);
}

/// Where the memory controller's hierarchy is mounted and its usage file: the unified one on
/// a cgroup v2 host, the v1 memory hierarchy on a v1 or hybrid host (such as this project's
/// development machine).
fn memory_hierarchy() -> (std::path::PathBuf, &'static str) {
    let root = std::path::Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        (root.to_path_buf(), "memory.current")
    } else {
        (root.join("memory"), "memory.usage_in_bytes")
    }
}

/// The pids in a cgroup directory, each with its command name.
fn processes_in(cgroup: &std::path::Path) -> Vec<(u32, String)> {
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_else(|e| panic!("read {}/cgroup.procs: {e}", cgroup.display()));
    procs
        .lines()
        .filter_map(|line| line.trim().parse::<u32>().ok())
        .map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            (pid, comm.trim().to_string())
        })
        .collect()
}

/// kubelet sizes each pod's cgroup (its limits plus the RuntimeClass overhead) and gives it as
/// the sandbox's cgroup parent. The VM is what spends a veil pod's CPU and memory, so QEMU and
/// the shim run in the sandbox's cgroup below that parent (checked in the memory controller's
/// hierarchy, v2 or v1), PodSandboxStats reports the VM's memory and CPU, and the cgroup goes
/// with the pod.
#[test]
fn the_vm_runs_in_the_pods_cgroup_on_the_host() {
    let mut cluster = Cluster::launch();
    let parent = format!("/veil-it-pods-{}", std::process::id());
    let pod = cluster.run_pod_in_cgroup("placed", &parent);
    let (memory_root, usage_file) = memory_hierarchy();
    let parent_dir = memory_root.join(parent.trim_start_matches('/'));
    let cgroup = parent_dir.join(&pod);
    assert!(
        cgroup.is_dir(),
        "no cgroup {} for the pod; its spec's cgroupsPath: {}\n{}",
        cgroup.display(),
        cri::bundle_spec(&cluster.containerd, &pod)
            .map(|spec| spec["linux"]["cgroupsPath"].to_string())
            .unwrap_or_else(|e| format!("{e:#}")),
        cluster.containerd.log()
    );

    let processes = processes_in(&cgroup);
    assert!(
        processes
            .iter()
            .any(|(_, comm)| comm.starts_with("qemu-system")),
        "QEMU is not in the pod's cgroup {}: {processes:?}",
        cgroup.display()
    );
    assert!(
        processes
            .iter()
            .any(|(_, comm)| comm.starts_with("containerd-shim")),
        "the shim is not in the pod's cgroup: {processes:?}"
    );
    let charged: u64 = std::fs::read_to_string(cgroup.join(usage_file))
        .unwrap_or_else(|e| panic!("{usage_file}: {e}"))
        .trim()
        .parse()
        .expect("a number");
    assert!(
        charged > 64 << 20,
        "the VM's memory is not charged to the pod: {usage_file} {charged}"
    );

    // kubelet's pod-level figures (the summary API, `kubectl top pod`) come from that cgroup,
    // so they now show what the VM spends.
    let stats = cluster
        .cri
        .pod_sandbox_stats(&pod)
        .unwrap_or_else(|e| panic!("PodSandboxStats: {e:#}\n{}", cluster.containerd.log()));
    let linux = stats.linux.expect("Linux pod stats");
    let working_set = linux
        .memory
        .and_then(|m| m.working_set_bytes)
        .map_or(0, |v| v.value);
    let cpu = linux
        .cpu
        .and_then(|c| c.usage_core_nano_seconds)
        .map_or(0, |v| v.value);
    assert!(
        working_set > 64 << 20 && cpu > 0,
        "the pod's stats do not show the VM: working set {working_set} bytes, CPU {cpu} ns"
    );

    cluster.tear_down(&pod);
    assert!(
        eventually(Duration::from_secs(30), || !cgroup.exists()),
        "the pod's cgroup {} outlived the pod",
        cgroup.display()
    );
    // The parent is kubelet's to remove; the shim created it in every hierarchy, and leaves
    // the pod's cgroup in one hierarchy after another.
    let root = std::path::Path::new("/sys/fs/cgroup");
    let parents: Vec<std::path::PathBuf> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|mount| mount.path())
        .chain([root.to_path_buf()])
        .map(|mount| mount.join(parent.trim_start_matches('/')))
        .collect();
    assert!(
        eventually(Duration::from_secs(10), || parents.iter().all(|dir| {
            let _ = std::fs::remove_dir(dir);
            !dir.exists()
        })),
        "the pod's cgroup is still below {parent} in some hierarchy"
    );
}

/// With kubelet's and containerd's systemd cgroup driver, a cgroup parent is a slice and the
/// sandbox's cgroupsPath is `slice:cri-containerd:<id>`. On a node that systemd runs, the
/// shim asks systemd for that scope, as runc does: systemd then knows the VM's processes as
/// the unit `cri-containerd-<id>.scope` in the pod's slice, and the unit goes with the pod.
/// Run against the real systemd and D-Bus, booted in namespaces of their own
/// ([`SystemdManager`]), with containerd beside them.
#[test]
fn with_the_systemd_driver_the_vm_runs_in_a_systemd_scope() {
    let systemd = SystemdManager::boot().expect("boot systemd");
    let mut cluster = Cluster::launch_with(&Options {
        launcher: systemd.launcher(),
        ..Options::default()
    });
    let slice = format!("kubepods-besteffort-pod{}.slice", std::process::id());
    let pod = cluster.run_pod_in_cgroup("scoped", &slice);
    let unit = format!("cri-containerd-{pod}.scope");
    let show = |property: &str| {
        systemd
            .systemctl(&["show", "--value", "-p", property, &unit])
            .expect("systemctl show")
            .trim()
            .to_string()
    };
    assert_eq!(
        (show("ActiveState"), show("Slice")),
        ("active".to_string(), slice.clone()),
        "systemd has no running scope for the pod; shim log:\n{}",
        cluster.containerd.log()
    );
    let control_group = show("ControlGroup");
    let processes = processes_in(&systemd.host_cgroup(&control_group));
    for program in ["qemu-system", "containerd-shim"] {
        assert!(
            processes.iter().any(|(_, comm)| comm.starts_with(program)),
            "{program} is not in the scope's cgroup {control_group}: {processes:?}"
        );
    }

    cluster.tear_down(&pod);
    assert!(
        eventually(Duration::from_secs(30), || show("LoadState") == "not-found"),
        "the pod's scope outlived the pod: {} {}",
        show("LoadState"),
        show("ActiveState")
    );
}

//! A Kubernetes CRI client driving containerd's CRI plugin the way kubelet does (no
//! kubelet needed): the `k8s-cri` v1 runtime service over containerd's Unix socket,
//! behind blocking helpers so tests stay plain `#[test]` functions.
//!
//! Start containerd with [`Containerd::start_cri`], then [`import_images`] (CRI works
//! in the `k8s.io` namespace and needs its sandbox image locally: there is no
//! registry), then [`CriClient::connect`].

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerFilter, ContainerMetadata, ContainerStatus, CreateContainerRequest,
    ExecSyncRequest, ImageSpec, LinuxContainerConfig, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListContainersRequest, Mount,
    NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata, PodSandboxStatus,
    PodSandboxStatusRequest, RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopContainerRequest, StopPodSandboxRequest, VersionRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::{oci, Containerd};

/// containerd's namespace for everything CRI creates.
pub const NAMESPACE: &str = "k8s.io";
/// The pod sandbox image the harness's CRI configuration names (built locally by
/// [`oci::write_pause_image`]).
pub const PAUSE_IMAGE: &str = "veil.test/pause:latest";
/// The runtime handler (RuntimeClass `handler`) the harness registers for veil.
pub const VEIL_HANDLER: &str = "veil";
/// The runtime handler for containerd's default runtime (runc).
pub const RUNC_HANDLER: &str = "";
/// How long a CRI call that boots a VM or creates a container may take under TCG.
const SLOW_CALL: Duration = Duration::from_secs(300);
/// How long any other CRI call may take.
const CALL: Duration = Duration::from_secs(60);

/// Imports the busybox image ([`oci::BUSYBOX_IMAGE`]) and the sandbox image
/// ([`PAUSE_IMAGE`]) into CRI's `k8s.io` namespace.
pub fn import_images(containerd: &Containerd) -> Result<()> {
    let busybox = containerd.dir().join("cri-busybox.tar");
    oci::write_busybox_image(&busybox)?;
    let pause = containerd.dir().join("cri-pause.tar");
    oci::write_pause_image(&pause, PAUSE_IMAGE)?;
    for tarball in [&busybox, &pause] {
        import_tarball(containerd, tarball)?;
    }
    Ok(())
}

/// `ctr -n k8s.io image import TARBALL`.
fn import_tarball(containerd: &Containerd, tarball: &Path) -> Result<()> {
    let path = tarball.display().to_string();
    let output = containerd.run_ctr(
        &["-n", NAMESPACE, "image", "import", &path],
        None,
        Duration::from_secs(60),
    )?;
    if output.code != 0 {
        bail!(
            "ctr -n {NAMESPACE} image import {path} failed: {}",
            output.stderr
        );
    }
    Ok(())
}

/// Imports the serving image ([`crate::MODEL_SERVER_IMAGE`]: busybox plus the static
/// `veil-model-server`) into CRI's `k8s.io` namespace.
pub fn import_model_server(containerd: &Containerd) -> Result<()> {
    let tarball = model_server_archive(containerd);
    crate::write_model_server_archive(&tarball, crate::MODEL_SERVER_IMAGE, Vec::new())?;
    import_tarball(containerd, &tarball)
}

/// Where [`import_model_server`] wrote the serving image's OCI archive (what its owner
/// publishes, and digests for `io.veil.model.readers`).
pub fn model_server_archive(containerd: &Containerd) -> PathBuf {
    containerd.dir().join("cri-model-server.tar")
}

/// The OCI spec containerd wrote for container (or sandbox) `id`, read from its task
/// bundle: what the shim was given.
pub fn bundle_spec(containerd: &Containerd, id: &str) -> Result<serde_json::Value> {
    let path = containerd
        .dir()
        .join("state/io.containerd.runtime.v2.task")
        .join(NAMESPACE)
        .join(id)
        .join("config.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("read the bundle spec {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
}

/// Entries in veil's state directory for CRI's namespace (one per running pod VM).
pub fn veil_state_entries(containerd: &Containerd) -> Vec<String> {
    std::fs::read_dir(containerd.veil_state.join(NAMESPACE))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The guest console log of pod `sandbox_id`'s VM, for failure messages.
pub fn console_log(containerd: &Containerd, sandbox_id: &str) -> String {
    let path = containerd
        .veil_state
        .join(NAMESPACE)
        .join(sandbox_id)
        .join("console.log");
    std::fs::read_to_string(&path).unwrap_or_else(|e| format!("({}: {e})", path.display()))
}

/// A pod with host networking (no CNI needed), logging below `log_directory`.
pub fn host_network_pod(
    name: &str,
    log_directory: &Path,
    annotations: HashMap<String, String>,
) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_string(),
            uid: format!("uid-{name}"),
            namespace: "default".to_string(),
            attempt: 0,
        }),
        // kubelet leaves the hostname empty for host-network pods: they share the
        // node's UTS namespace, and a hostname without one is refused by runtimes.
        hostname: String::new(),
        log_directory: log_directory.display().to_string(),
        annotations,
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(host_network_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The namespaces kubelet asks for in a `hostNetwork: true` pod.
fn host_network_namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Node as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// A bind mount of host directory `host_path` at `container_path` (an emptyDir as
/// kubelet hands it over: a directory on the node).
pub fn bind_mount(host_path: &Path, container_path: &str) -> Mount {
    Mount {
        container_path: container_path.to_string(),
        host_path: host_path.display().to_string(),
        ..Default::default()
    }
}

/// The serving container `server`: the demo model server (from [`crate::MODEL_SERVER_IMAGE`],
/// imported by [`import_model_server`]) serving `/model/model.safetensors` from the memory
/// volume whose host side is `volume`, listening on `listen`.
pub fn model_server_container(volume: &Path, listen: &str) -> ContainerConfig {
    let mut config = busybox_container(
        "server",
        &[
            "veil-model-server",
            "serve",
            "--model",
            "/model/model.safetensors",
            "--listen",
            listen,
        ],
        vec![bind_mount(volume, "/model")],
    );
    config.image = Some(ImageSpec {
        image: crate::MODEL_SERVER_IMAGE.to_string(),
        ..Default::default()
    });
    config
}

/// What kubelet asks containerd to mask in every container with `procMount: Default`
/// (containerd's CRI masks nothing the request does not name).
const KUBELET_MASKED_PATHS: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
/// What kubelet asks containerd to make read-only in the same containers.
const KUBELET_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// A busybox container running `command`, logging to `<pod log dir>/<name>.log`.
pub fn busybox_container(name: &str, command: &[&str], mounts: Vec<Mount>) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: oci::BUSYBOX_IMAGE.to_string(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        mounts,
        log_path: format!("{name}.log"),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(host_network_namespaces()),
                masked_paths: KUBELET_MASKED_PATHS.map(String::from).to_vec(),
                readonly_paths: KUBELET_READONLY_PATHS.map(String::from).to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What ExecSync returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit code of the command.
    pub exit_code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// A blocking CRI runtime-service client on containerd's socket.
pub struct CriClient {
    runtime: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

impl CriClient {
    /// Connects to the CRI service on containerd's `socket` and checks that it answers.
    pub fn connect(socket: &Path) -> Result<CriClient> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("build the CRI client's tokio runtime")?;
        let path = socket.to_path_buf();
        let channel = runtime
            .block_on(async move {
                // The URI is required by tonic but unused: the connector dials the socket.
                Endpoint::try_from("http://[::]:50051")?
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path: PathBuf = path.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(TokioIo::new(stream))
                        }
                    }))
                    .await
            })
            .with_context(|| format!("connect to containerd's CRI socket {}", socket.display()))?;
        let mut cri = CriClient {
            runtime,
            client: RuntimeServiceClient::new(channel),
        };
        // Version answers only once the CRI plugin is serving.
        cri.call("Version", CALL, |mut c| async move {
            c.version(VersionRequest {
                version: "v1".into(),
            })
            .await
        })?;
        Ok(cri)
    }

    /// Runs one RPC on a clone of the client, bounded by `timeout`.
    fn call<T, F, Fut>(&mut self, what: &str, timeout: Duration, rpc: F) -> Result<T>
    where
        F: FnOnce(RuntimeServiceClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.client.clone();
        let outcome = self
            .runtime
            .block_on(async { tokio::time::timeout(timeout, rpc(client)).await });
        match outcome {
            Err(_) => bail!("CRI {what} did not answer within {timeout:?}"),
            Ok(Err(status)) => bail!(
                "CRI {what} failed: {:?}: {}",
                status.code(),
                status.message()
            ),
            Ok(Ok(response)) => Ok(response.into_inner()),
        }
    }

    /// RunPodSandbox with `handler` (a RuntimeClass handler; empty for the default);
    /// returns the sandbox id.
    pub fn run_pod_sandbox(&mut self, config: &PodSandboxConfig, handler: &str) -> Result<String> {
        let request = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.to_string(),
        };
        let response = self.call("RunPodSandbox", SLOW_CALL, |mut c| async move {
            c.run_pod_sandbox(request).await
        })?;
        Ok(response.pod_sandbox_id)
    }

    /// PodSandboxStatus of `pod_id`.
    pub fn pod_sandbox_status(&mut self, pod_id: &str) -> Result<PodSandboxStatus> {
        let request = PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.to_string(),
            verbose: false,
        };
        let response = self.call("PodSandboxStatus", CALL, |mut c| async move {
            c.pod_sandbox_status(request).await
        })?;
        response
            .status
            .context("PodSandboxStatus answered without a status")
    }

    /// CreateContainer in pod `pod_id` (whose config was `sandbox`); returns its id.
    pub fn create_container(
        &mut self,
        pod_id: &str,
        config: &ContainerConfig,
        sandbox: &PodSandboxConfig,
    ) -> Result<String> {
        let request = CreateContainerRequest {
            pod_sandbox_id: pod_id.to_string(),
            config: Some(config.clone()),
            sandbox_config: Some(sandbox.clone()),
        };
        let response = self.call("CreateContainer", SLOW_CALL, |mut c| async move {
            c.create_container(request).await
        })?;
        Ok(response.container_id)
    }

    /// StartContainer.
    pub fn start_container(&mut self, id: &str) -> Result<()> {
        let request = StartContainerRequest {
            container_id: id.to_string(),
        };
        self.call("StartContainer", SLOW_CALL, |mut c| async move {
            c.start_container(request).await
        })?;
        Ok(())
    }

    /// ContainerStatus.
    pub fn container_status(&mut self, id: &str) -> Result<ContainerStatus> {
        let request = k8s_cri::v1::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        };
        let response = self.call("ContainerStatus", CALL, |mut c| async move {
            c.container_status(request).await
        })?;
        response
            .status
            .context("ContainerStatus answered without a status")
    }

    /// ExecSync of `command` in container `id`, bounded by `timeout` (also sent to
    /// containerd, which kills the command after it).
    pub fn exec_sync(
        &mut self,
        id: &str,
        command: &[&str],
        timeout: Duration,
    ) -> Result<ExecOutput> {
        let request = ExecSyncRequest {
            container_id: id.to_string(),
            cmd: command.iter().map(|s| s.to_string()).collect(),
            timeout: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        };
        let response = self.call("ExecSync", timeout + CALL, |mut c| async move {
            c.exec_sync(request).await
        })?;
        Ok(ExecOutput {
            exit_code: response.exit_code,
            stdout: String::from_utf8_lossy(&response.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&response.stderr).into_owned(),
        })
    }

    /// Attach to container `id` (stdin, stdout and stderr, no TTY); returns the streaming
    /// URL kubectl would open ([`crate::streaming::RemoteCommand::connect`]).
    pub fn attach(&mut self, id: &str) -> Result<String> {
        let request = k8s_cri::v1::AttachRequest {
            container_id: id.to_string(),
            stdin: true,
            tty: false,
            stdout: true,
            stderr: true,
        };
        let response = self.call(
            "Attach",
            CALL,
            |mut c| async move { c.attach(request).await },
        )?;
        Ok(response.url)
    }

    /// Exec `command` in container `id` with stdin, stdout and stderr (no TTY), as `kubectl
    /// exec -i` does; returns the streaming URL.
    pub fn exec_streaming(&mut self, id: &str, command: &[&str]) -> Result<String> {
        let request = k8s_cri::v1::ExecRequest {
            container_id: id.to_string(),
            cmd: command.iter().map(|s| s.to_string()).collect(),
            tty: false,
            stdin: true,
            stdout: true,
            stderr: true,
        };
        let response = self.call("Exec", CALL, |mut c| async move { c.exec(request).await })?;
        Ok(response.url)
    }

    /// PodSandboxStats: the pod's CPU and memory as kubelet's summary API reads them.
    pub fn pod_sandbox_stats(&mut self, pod_id: &str) -> Result<k8s_cri::v1::PodSandboxStats> {
        let request = k8s_cri::v1::PodSandboxStatsRequest {
            pod_sandbox_id: pod_id.to_string(),
        };
        let response = self.call("PodSandboxStats", CALL, |mut c| async move {
            c.pod_sandbox_stats(request).await
        })?;
        response
            .stats
            .with_context(|| format!("PodSandboxStats of {pod_id} returned no stats"))
    }

    /// PortForward to `ports` of pod `pod_id`, as `kubectl port-forward` asks; returns the
    /// streaming URL ([`crate::streaming::PortForward::connect`]).
    pub fn port_forward(&mut self, pod_id: &str, ports: &[u16]) -> Result<String> {
        let request = k8s_cri::v1::PortForwardRequest {
            pod_sandbox_id: pod_id.to_string(),
            port: ports.iter().map(|&p| i32::from(p)).collect(),
        };
        let response = self.call("PortForward", CALL, |mut c| async move {
            c.port_forward(request).await
        })?;
        Ok(response.url)
    }

    /// StopContainer: SIGTERM (the image's stop signal), SIGKILL after `grace`.
    pub fn stop_container(&mut self, id: &str, grace: Duration) -> Result<()> {
        let request = StopContainerRequest {
            container_id: id.to_string(),
            timeout: i64::try_from(grace.as_secs()).unwrap_or(i64::MAX),
        };
        self.call("StopContainer", grace + CALL, |mut c| async move {
            c.stop_container(request).await
        })?;
        Ok(())
    }

    /// RemoveContainer.
    pub fn remove_container(&mut self, id: &str) -> Result<()> {
        let request = RemoveContainerRequest {
            container_id: id.to_string(),
        };
        self.call("RemoveContainer", CALL, |mut c| async move {
            c.remove_container(request).await
        })?;
        Ok(())
    }

    /// StopPodSandbox: stops every container of the pod, then the sandbox.
    pub fn stop_pod_sandbox(&mut self, pod_id: &str) -> Result<()> {
        let request = StopPodSandboxRequest {
            pod_sandbox_id: pod_id.to_string(),
        };
        self.call("StopPodSandbox", SLOW_CALL, |mut c| async move {
            c.stop_pod_sandbox(request).await
        })?;
        Ok(())
    }

    /// RemovePodSandbox: removes the pod's containers and the sandbox.
    pub fn remove_pod_sandbox(&mut self, pod_id: &str) -> Result<()> {
        let request = RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.to_string(),
        };
        self.call("RemovePodSandbox", SLOW_CALL, |mut c| async move {
            c.remove_pod_sandbox(request).await
        })?;
        Ok(())
    }

    /// ListContainers, of pod `pod_id` when given.
    pub fn list_containers(&mut self, pod_id: Option<&str>) -> Result<Vec<k8s_cri::v1::Container>> {
        let request = ListContainersRequest {
            filter: pod_id.map(|id| ContainerFilter {
                pod_sandbox_id: id.to_string(),
                ..Default::default()
            }),
        };
        let response = self.call("ListContainers", CALL, |mut c| async move {
            c.list_containers(request).await
        })?;
        Ok(response.containers)
    }
}

/// Where Debian's `containernetworking-plugins` installs the CNI plugins.
pub const CNI_PLUGIN_DIR: &str = "/usr/lib/cni";
/// The CNI plugins [`install_cni_bridge`] uses (containerd also runs `loopback`).
const CNI_PLUGINS: [&str; 3] = ["bridge", "host-local", "loopback"];

/// A CNI bridge network for pod-network tests: pods get addresses in `subnet` (a /24
/// such as `10.88.77.0/24`) on host bridge `bridge`, whose `.1` is the host's address
/// on it and the pods' default gateway.
#[derive(Debug, Clone)]
pub struct CniBridge {
    /// The CNI network name.
    pub name: String,
    /// The host bridge device (at most 15 characters).
    pub bridge: String,
    /// The pods' subnet.
    pub subnet: String,
    /// The gateway (the bridge's address on the host).
    pub gateway: String,
    /// For a dual-stack network: the pods' IPv6 subnet (a /64) and its gateway, also the
    /// bridge's address on the host.
    pub ipv6: Option<(String, String)>,
}

/// Links Debian's CNI plugins into the harness's CNI bin dir and writes a bridge +
/// host-local conflist for `network` into its conf dir (containerd's CRI plugin watches
/// it: wait with [`CriClient::wait_network_ready`]). host-local keeps its leases under
/// the harness directory, so nothing is left in /var/lib/cni. Without the plugins the
/// error says what to install.
pub fn install_cni_bridge(containerd: &Containerd, network: &CniBridge) -> Result<()> {
    let bin = containerd.dir().join("cni/bin");
    let conf = containerd.dir().join("cni/conf");
    for plugin in CNI_PLUGINS {
        let source = Path::new(CNI_PLUGIN_DIR).join(plugin);
        if !source.exists() {
            bail!(
                "the CNI plugin {} is missing: install Debian's CNI plugins (apt-get install containernetworking-plugins)",
                source.display()
            );
        }
        let link = bin.join(plugin);
        if !link.exists() {
            std::os::unix::fs::symlink(&source, &link)
                .with_context(|| format!("link {} into {}", source.display(), bin.display()))?;
        }
    }
    let leases = containerd.dir().join("cni/leases");
    let mut ranges =
        vec![serde_json::json!([{"subnet": network.subnet, "gateway": network.gateway}])];
    let mut routes = vec![serde_json::json!({"dst": "0.0.0.0/0"})];
    if let Some((subnet, gateway)) = &network.ipv6 {
        ranges.push(serde_json::json!([{"subnet": subnet, "gateway": gateway}]));
        routes.push(serde_json::json!({"dst": "::/0"}));
    }
    let conflist = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": network.name,
        "plugins": [{
            "type": "bridge",
            "bridge": network.bridge,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "dataDir": leases.display().to_string(),
                "ranges": ranges,
                "routes": routes
            }
        }]
    });
    let path = conf.join(format!("10-{}.conflist", network.name));
    std::fs::write(&path, serde_json::to_vec_pretty(&conflist)?)
        .with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

/// Removes the host bridge a [`CniBridge`] network created (CNI's DEL leaves it).
pub fn remove_cni_bridge(network: &CniBridge) {
    let _ = std::process::Command::new("ip")
        .args(["link", "del", &network.bridge])
        .output();
}

/// A pod in its own network namespace, set up by CNI (what kubelet asks for a pod
/// without `hostNetwork`), logging below `log_directory`.
pub fn pod_network_pod(
    name: &str,
    log_directory: &Path,
    annotations: HashMap<String, String>,
) -> PodSandboxConfig {
    let mut pod = host_network_pod(name, log_directory, annotations);
    pod.hostname = name.to_string();
    if let Some(context) = pod.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
        context.namespace_options = Some(pod_network_namespaces());
    }
    pod
}

/// The namespaces kubelet asks for in a pod with its own network.
fn pod_network_namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// `container` (e.g. from [`busybox_container`]) in its pod's network namespace.
pub fn in_pod_network(mut container: ContainerConfig) -> ContainerConfig {
    if let Some(context) = container
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
    {
        context.namespace_options = Some(pod_network_namespaces());
    }
    container
}

impl CriClient {
    /// Waits up to `timeout` for the runtime's `NetworkReady` condition (the CRI plugin
    /// has loaded a CNI configuration); the error carries the condition's last message.
    pub fn wait_network_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let status = self.call("Status", CALL, |mut c| async move {
                c.status(k8s_cri::v1::StatusRequest { verbose: false })
                    .await
            })?;
            let network = status
                .status
                .unwrap_or_default()
                .conditions
                .into_iter()
                .find(|c| c.r#type == "NetworkReady");
            match network {
                Some(condition) if condition.status => return Ok(()),
                other if std::time::Instant::now() >= deadline => {
                    bail!("the CRI network did not become ready within {timeout:?}: {other:?}")
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

/// `container` with kubelet's resource fields for it (`resources.limits` of a pod spec
/// become `linux.resources` in the OCI spec containerd generates).
pub fn with_resources(
    mut container: ContainerConfig,
    resources: k8s_cri::v1::LinuxContainerResources,
) -> ContainerConfig {
    container
        .linux
        .get_or_insert_with(Default::default)
        .resources = Some(resources);
    container
}

/// Container resources with a memory limit (bytes) and, when `cpu_quota` is given, a CFS
/// quota per 100 ms period (microseconds), as kubelet derives them from limits.
pub fn memory_and_cpu_limits(
    memory_bytes: i64,
    cpu_quota: Option<i64>,
) -> k8s_cri::v1::LinuxContainerResources {
    k8s_cri::v1::LinuxContainerResources {
        memory_limit_in_bytes: memory_bytes,
        cpu_period: if cpu_quota.is_some() { 100_000 } else { 0 },
        cpu_quota: cpu_quota.unwrap_or(0),
        cpu_shares: 2,
        ..Default::default()
    }
}

impl CriClient {
    /// ContainerStats (what kubelet's summary API reads).
    pub fn container_stats(&mut self, id: &str) -> Result<k8s_cri::v1::ContainerStats> {
        let request = k8s_cri::v1::ContainerStatsRequest {
            container_id: id.to_string(),
        };
        let response = self.call("ContainerStats", CALL, |mut c| async move {
            c.container_stats(request).await
        })?;
        response
            .stats
            .context("ContainerStats answered without stats")
    }

    /// ListContainerStats, of pod `pod_id` when given.
    pub fn list_container_stats(
        &mut self,
        pod_id: Option<&str>,
    ) -> Result<Vec<k8s_cri::v1::ContainerStats>> {
        let request = k8s_cri::v1::ListContainerStatsRequest {
            filter: pod_id.map(|id| k8s_cri::v1::ContainerStatsFilter {
                pod_sandbox_id: id.to_string(),
                ..Default::default()
            }),
        };
        let response = self.call("ListContainerStats", CALL, |mut c| async move {
            c.list_container_stats(request).await
        })?;
        Ok(response.stats)
    }

    /// UpdateContainerResources with new Linux resources.
    pub fn update_container_resources(
        &mut self,
        id: &str,
        resources: k8s_cri::v1::LinuxContainerResources,
    ) -> Result<()> {
        let request = k8s_cri::v1::UpdateContainerResourcesRequest {
            container_id: id.to_string(),
            linux: Some(resources),
            ..Default::default()
        };
        self.call("UpdateContainerResources", CALL, |mut c| async move {
            c.update_container_resources(request).await
        })?;
        Ok(())
    }
}

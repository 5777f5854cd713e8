//! A sandbox is one pod VM: its state directory, its shared directory, the QEMU
//! process and the connected agent. A plain `ctr run` container is its own sandbox;
//! under CRI every container with the same sandbox id shares one.

pub mod cgroup;
pub mod delivery;
pub mod image_cache;
pub mod network;
pub mod rootfs_image;
pub mod sizing;
pub mod storage;
pub mod volumes;

use std::path::{Path, PathBuf};
use std::time::Duration;

use veil_config::{AgentChannel, Config};

use crate::agent::AgentClient;
use crate::error::{Error, Result};
use crate::hypervisor::{qemu::Qemu, virtiofs, vsock_cid_for, Channel, Hypervisor, Vm, VmSpec};

/// How long a guest gets to power off by itself before QEMU is killed.
const POWER_OFF_GRACE: Duration = Duration::from_secs(5);

/// A running pod VM.
pub struct Sandbox {
    /// Sandbox id.
    pub id: String,
    /// `<state_dir>/<namespace>/<id>`.
    pub state_dir: PathBuf,
    /// Exported to the guest over virtio-9p.
    pub shared_dir: PathBuf,
    /// The guest console.
    pub console_log: PathBuf,
    /// The guest's answer to the first ping (kernel release, boot id).
    pub guest: veil_protocol::PingResponse,
    /// The VM has an egress NIC (its pod declared a model delivery).
    pub egress: bool,
    /// How the rootfs of a container approved to read the pod's model reaches the guest.
    pub reader_rootfs: veil_config::ReaderRootfs,
    /// The node's reader rootfs images, shared with every other pod.
    pub image_cache: image_cache::ImageCache,
    vm: Box<dyn Vm>,
    agent: AgentClient,
    pod_network: Option<network::PodNetwork>,
    port_forward: Option<network::PortForwarder>,
    pod_cgroup: Option<cgroup::PodCgroup>,
}

/// Where on the host a pod's VM goes, from its sandbox spec.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostPlacement<'a> {
    /// The pod's network namespace ([`network::pod_netns`]).
    pub netns: Option<&'a Path>,
    /// The spec's `linux.cgroupsPath` ([`cgroup::PodCgroup`]).
    pub cgroups_path: Option<&'a str>,
}

/// The agent channel for a VM: vsock when configured, or on `auto` when the host has
/// /dev/vhost-vsock; otherwise the virtio-serial port, which needs nothing from the host.
fn choose_channel(config: &Config, state_dir: &Path) -> Channel {
    let vsock = match config.agent.channel {
        AgentChannel::Vsock => true,
        AgentChannel::Serial => false,
        AgentChannel::Auto => Path::new("/dev/vhost-vsock").exists(),
    };
    if vsock {
        Channel::Vsock {
            cid: vsock_cid_for(state_dir),
        }
    } else {
        Channel::Serial {
            socket: state_dir.join("agent.sock"),
        }
    }
}

/// `<state_dir>/<namespace>/<sandbox id>`.
pub fn state_dir_for(config: &Config, namespace: &str, id: &str) -> PathBuf {
    config.runtime.state_dir.join(namespace).join(id)
}

/// Removes a state directory, unmounting whatever was left mounted below it.
pub fn remove_state_dir(state_dir: &Path) {
    storage::detach_mounts_under(state_dir);
    if let Err(error) = std::fs::remove_dir_all(state_dir) {
        if error.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %state_dir.display(), %error, "could not remove sandbox state");
        }
    }
}

impl Sandbox {
    /// Starts the VM for sandbox `id` and waits for its agent. A pod with a model
    /// `delivery` gets a user-network NIC for egress and, on SEV-SNP, its declaration's
    /// digest as the VM's `host_data`. The VM joins the pod's network namespace and cgroup
    /// (`placement`).
    pub async fn start(
        config: &Config,
        namespace: &str,
        id: &str,
        delivery: Option<&veil_protocol::ModelDelivery>,
        placement: HostPlacement<'_>,
        size: sizing::VmSize,
    ) -> Result<Sandbox> {
        let egress = delivery.is_some();
        let host_data = self::delivery::host_data(delivery)?;
        let share = virtiofs::choose(&config.hypervisor)?;
        let state_dir = state_dir_for(config, namespace, id);
        // A previous shim of this id may have crashed: start from a clean directory.
        remove_state_dir(&state_dir);
        let shared_dir = state_dir.join("shared");
        std::fs::create_dir_all(&shared_dir)
            .map_err(Error::io(format!("create {}", shared_dir.display())))?;
        let spec = VmSpec {
            id: id.to_string(),
            state_dir: state_dir.clone(),
            shared_dir: shared_dir.clone(),
            channel: choose_channel(config, &state_dir),
            console_log: state_dir.join("console.log"),
            egress,
            host_data,
            share,
        };
        let mut partial = PartialStart::new(&state_dir);
        let started = start_vm(config, size, &spec, placement, &mut partial).await;
        let (mut agent, guest) = match started {
            Ok(connected) => connected,
            Err(error) => {
                partial.undo().await;
                return Err(error);
            }
        };
        let vm = partial
            .vm
            .take()
            .expect("start_vm launches the VM before it connects to the agent");
        let PartialStart {
            pod_cgroup,
            pod_network,
            ..
        } = partial;
        agent.set_delivery_timeout(Duration::from_secs(config.agent.delivery_timeout_secs));
        let port_forward = match &pod_network {
            Some(pod) => serve_port_forward(pod.netns(), &agent).await,
            None => None,
        };
        tracing::info!(
            sandbox = %id,
            vm = %vm.description(),
            kernel = %guest.kernel_release,
            boot_id = %guest.boot_id,
            "{}", crate::stages::AGENT_CONNECTED
        );
        Ok(Sandbox {
            id: id.to_string(),
            state_dir,
            shared_dir,
            console_log: spec.console_log,
            guest,
            egress,
            reader_rootfs: config.runtime.reader_rootfs,
            image_cache: image_cache::ImageCache::new(
                &config.runtime.state_dir,
                config.runtime.image_cache_mib,
            ),
            vm,
            agent,
            pod_network,
            port_forward,
            pod_cgroup,
        })
    }

    /// The agent client.
    pub fn agent(&self) -> &AgentClient {
        &self.agent
    }

    /// Waits until the VM process exits; returns how it ended.
    pub async fn vm_exited(&self) -> String {
        self.vm.wait_exit().await
    }

    /// The hypervisor's host pid.
    pub fn vm_pid(&self) -> u32 {
        self.vm.pid()
    }

    /// Stops the VM and removes the state. The agent first stops every process (so
    /// nothing runs while the VM goes away); then QEMU is ended at once: the guest has
    /// no disk to flush and its RAM is discarded, so waiting for the guest kernel's own
    /// power-off (about 1.5 s under emulation) would only delay `ctr run --rm`.
    pub async fn stop(&self) {
        if !self.vm.has_exited() {
            let acknowledged = tokio::time::timeout(POWER_OFF_GRACE, self.agent.shutdown()).await;
            if !matches!(acknowledged, Ok(Ok(()))) {
                tracing::warn!(sandbox = %self.id, "agent did not acknowledge shutdown; killing QEMU anyway");
            }
            self.vm.kill().await;
        }
        if let Some(port_forward) = &self.port_forward {
            port_forward.stop().await;
        }
        release_host_side(
            self.pod_network.as_ref(),
            self.pod_cgroup.as_ref(),
            &self.state_dir,
        )
        .await;
        // The pod's containers no longer hold their images: collect what is now unused.
        let cache = self.image_cache.clone();
        let _ = tokio::task::spawn_blocking(move || cache.collect()).await;
        tracing::info!(sandbox = %self.id, "sandbox.stopped");
    }
}

/// What a sandbox start has set up so far, so that a failed step can undo all of it:
/// a failed start leaves no QEMU, no taps, no cgroup and no state behind.
struct PartialStart {
    state_dir: PathBuf,
    pod_cgroup: Option<cgroup::PodCgroup>,
    pod_network: Option<network::PodNetwork>,
    vm: Option<Box<dyn Vm>>,
}

impl PartialStart {
    fn new(state_dir: &Path) -> Self {
        PartialStart {
            state_dir: state_dir.to_path_buf(),
            pod_cgroup: None,
            pod_network: None,
            vm: None,
        }
    }

    /// Undoes the steps in reverse order.
    async fn undo(self) {
        if let Some(vm) = &self.vm {
            vm.kill().await;
        }
        release_host_side(
            self.pod_network.as_ref(),
            self.pod_cgroup.as_ref(),
            &self.state_dir,
        )
        .await;
    }
}

/// Joins the pod's cgroup, attaches its network, launches QEMU and waits for the agent,
/// recording each step in `partial` as it succeeds.
async fn start_vm(
    config: &Config,
    size: sizing::VmSize,
    spec: &VmSpec,
    placement: HostPlacement<'_>,
    partial: &mut PartialStart,
) -> Result<(AgentClient, veil_protocol::PingResponse)> {
    if let Some(path) = placement.cgroups_path {
        // Blocking: systemd's D-Bus client and the wait for its job.
        let path = path.to_string();
        let joined = match tokio::task::spawn_blocking(move || cgroup::PodCgroup::join(&path)).await
        {
            Ok(joined) => joined.map_err(|e| e.to_string()),
            Err(join) => Err(join.to_string()),
        };
        partial.pod_cgroup =
            Some(joined.map_err(|e| Error::Vm(format!("place the VM in the pod's cgroup: {e}")))?);
    }
    partial.pod_network = network::attach(placement.netns).await?;
    tracing::info!(
        sandbox = %spec.id,
        memory_mib = size.memory_mib,
        vcpus = size.vcpus,
        "VM sized from the configured base, the pod's io.veil.vm annotations and its containers' limits"
    );
    let hypervisor = Qemu::new(
        size.apply(&config.hypervisor),
        config.agent.log_level.clone(),
    )
    .with_pod_nics(
        partial
            .pod_network
            .as_ref()
            .map(|n| n.nics())
            .unwrap_or_default(),
    );
    let vm = partial.vm.insert(hypervisor.launch(spec).await?);
    let connected = AgentClient::connect(
        &spec.channel,
        vm.as_ref(),
        Duration::from_secs(config.hypervisor.boot_timeout_secs),
        Duration::from_secs(config.agent.request_timeout_secs),
    )
    .await;
    let connected = match (connected, &partial.pod_network) {
        (Ok((agent, guest)), Some(pod)) => {
            pod.configure_guest(&agent).await.map(|()| (agent, guest))
        }
        (connected, _) => connected,
    };
    connected.map_err(|error| {
        let console = console_tail(&spec.console_log);
        Error::Vm(format!("{error}; console: {console}"))
    })
}

/// What a stopped VM (or a failed start) leaves to undo on the host, in reverse order of
/// setting it up: the pod's taps and filters, the pod cgroup, the state directory.
async fn release_host_side(
    pod_network: Option<&network::PodNetwork>,
    pod_cgroup: Option<&cgroup::PodCgroup>,
    state_dir: &Path,
) {
    network::release(pod_network).await;
    if let Some(pod_cgroup) = pod_cgroup {
        pod_cgroup.leave();
    }
    remove_state_dir(state_dir);
}

/// Starts port forwarding into the VM for a pod with a network namespace. Without it the pod
/// still runs, so a failure only costs `kubectl port-forward`, and is logged as such.
async fn serve_port_forward(netns: &Path, agent: &AgentClient) -> Option<network::PortForwarder> {
    match network::PortForwarder::start(netns, agent.clone()).await {
        Ok(forwarder) => Some(forwarder),
        Err(error) => {
            tracing::warn!(%error, "kubectl port-forward will not reach this pod");
            None
        }
    }
}

/// The last lines of the console log, for error messages.
pub fn console_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(8).collect();
    if lines.is_empty() {
        return format!("(empty: {})", path.display());
    }
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration whose state lives in `dir`, with a kernel and initrd that exist.
    fn config_in(dir: &Path) -> Config {
        let mut config = Config::default();
        config.runtime.state_dir = dir.join("state");
        for (name, path) in [
            ("vmlinux", &mut config.hypervisor.kernel),
            ("initrd", &mut config.hypervisor.initrd),
        ] {
            *path = dir.join(name);
            std::fs::write(&*path, b"not really").expect("write");
        }
        config.hypervisor.accel = veil_config::Accel::Tcg;
        config.hypervisor.boot_timeout_secs = 30;
        config
    }

    /// Starts sandbox `id` with QEMU at `qemu`, expects it to fail with an error
    /// containing `named`, and checks that nothing of it is left in the state directory.
    async fn failed_start_leaves_no_state(qemu: PathBuf, id: &str, named: &str) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = config_in(dir.path());
        config.hypervisor.path = qemu;
        let size = sizing::VmSize {
            memory_mib: config.hypervisor.memory_mib,
            vcpus: config.hypervisor.vcpus,
        };
        let error = Sandbox::start(&config, "default", id, None, HostPlacement::default(), size)
            .await
            .err()
            .expect("the start fails");
        assert!(error.to_string().contains(named), "{error}");
        let state_dir = state_dir_for(&config, "default", id);
        assert!(
            !state_dir.exists(),
            "{} was left behind",
            state_dir.display()
        );
    }

    #[tokio::test]
    async fn a_start_that_cannot_launch_leaves_no_state() {
        failed_start_leaves_no_state("/no/such-qemu".into(), "pod1", "/no/such-qemu").await;
    }

    #[tokio::test]
    async fn a_vm_that_exits_before_its_agent_answers_leaves_no_state() {
        failed_start_leaves_no_state("/bin/false".into(), "pod2", "console").await;
    }
}

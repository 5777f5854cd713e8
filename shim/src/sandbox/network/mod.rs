//! Pod networking: connects the VM to the network namespace CNI made for the pod, the
//! way Kata's "tcfilter" model does.
//!
//! Under CRI, containerd creates a network namespace per pod, CNI puts a veth (`eth0`)
//! with the pod IP in it, and the sandbox container's OCI spec names that namespace by
//! path. Before QEMU starts, the shim enters the namespace (on a thread of its own:
//! `setns` changes only the calling thread) and, for every interface with an IPv4 or a
//! global IPv6 address:
//!
//! 1. reads the interface's MAC, MTU, addresses and routes (what the guest will get);
//! 2. creates a tap (`tap<N>_veil`, opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`);
//! 3. adds an ingress qdisc to the veth and to the tap, each with a u32 match-all filter
//!    whose action is `mirred egress redirect` to the other device.
//!
//! Every frame that reaches the veth is stolen before the namespace's own stack sees it
//! and handed to the tap, whose file descriptor QEMU holds; every frame the guest sends
//! leaves through the veth. The guest NIC carries the veth's MAC, so the bridge's ARP
//! entries and the pod IP stay valid: the guest owns the pod IP, the namespace keeps the
//! address only as a record. QEMU itself stays in the host namespace (the tap is handed
//! over as a file descriptor), so the egress NIC's user networking still reaches the
//! node's loopback.
//!
//! Teardown: the taps vanish when their last descriptor closes (QEMU's and the shim's),
//! and CNI's DEL removes the veth with its qdisc; [`PodNetwork::detach`] still removes
//! both when the namespace outlives the VM (containerd stops the sandbox task after the
//! CNI teardown, but a failed start or a shim-only stop leaves them in place).
//!
//! IPv4 and IPv6 are carried over alike (dual-stack and IPv6-only pods); IPv6 link-local
//! addresses are not, since the guest NIC derives the same one from the veth's MAC.
//!
//! `kubectl port-forward` needs one more piece in the namespace, a loopback listener and a
//! redirect to it: see [`port_forward`].

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::sched::{setns, CloneFlags};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use rtnetlink::Handle;
use veil_protocol as api;

use crate::agent::AgentClient;
use crate::hypervisor::net::PodNic;

mod port_forward;
mod scan;
mod tap;

pub use port_forward::{PortForwardError, PortForwarder};
pub use scan::{interfaces_from_scan, mac_string, InterfaceConfig, NamespaceScan, RouteConfig};
use scan::{link_name, scan_namespace};
use tap::{connect_tap, interface_number, remove_taps, Tap};

/// Suffix of the taps the shim creates (`tap0_veil`): tells them apart from CNI's links.
pub const TAP_SUFFIX: &str = "_veil";
/// The ingress qdisc's handle, `ffff:`.
const INGRESS_HANDLE: u32 = 0xffff_0000;

/// Connecting the VM to the pod's network namespace failed.
#[derive(Debug, thiserror::Error)]
pub enum PodNetworkError {
    /// The namespace named by the sandbox spec could not be opened.
    #[error("open the pod network namespace {path}: {source}; containerd's CNI setup may have failed or the pod was removed meanwhile")]
    OpenNamespace {
        /// The namespace path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `setns` into the namespace failed.
    #[error("enter the pod network namespace {path}: {source}; the shim needs CAP_SYS_ADMIN")]
    EnterNamespace {
        /// The namespace path.
        path: PathBuf,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// The worker thread could not start or died.
    #[error("pod network worker thread: {0}")]
    Worker(String),
    /// No netlink socket in the namespace.
    #[error("open a netlink socket in the pod network namespace: {0}")]
    Netlink(#[source] std::io::Error),
    /// A netlink request failed.
    #[error("{what} in the pod network namespace: {source}")]
    Request {
        /// The step.
        what: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// The tap could not be created.
    #[error("create tap {name} in the pod network namespace: {source}; the host needs /dev/net/tun (modprobe tun)")]
    Tap {
        /// The tap's name.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// CNI left no interface with an address in the namespace.
    #[error("the pod network namespace {path} has no interface with an IPv4 or global IPv6 address (links: {links:?}); check the CNI configuration")]
    NoInterface {
        /// The namespace path.
        path: PathBuf,
        /// The links seen.
        links: Vec<String>,
    },
}

fn request(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> PodNetworkError {
    let what = what.into();
    move |source| PodNetworkError::Request { what, source }
}
/// The network namespace the sandbox spec joins by path, unless it is the shim's own
/// (a host-network pod, or a runtime that hands over the host's namespace). `None` for
/// `ctr run` (a new, empty namespace) and host-network pods (no network namespace).
pub fn pod_netns(spec: &Spec) -> Option<PathBuf> {
    let path = spec
        .linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|ns| ns.typ() == LinuxNamespaceType::Network)?
        .path()
        .clone()?;
    (!is_own_netns(&path)).then_some(path)
}

fn is_own_netns(path: &Path) -> bool {
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    match (id(path), id(Path::new("/proc/self/ns/net"))) {
        (Some(pod), Some(own)) => pod == own,
        _ => false,
    }
}

/// Connects the pod network namespace `netns` (from [`pod_netns`]), if any, for a VM
/// about to start.
pub async fn attach(netns: Option<&Path>) -> crate::error::Result<Option<PodNetwork>> {
    match netns {
        None => Ok(None),
        Some(netns) => PodNetwork::attach(netns)
            .await
            .map(Some)
            .map_err(|e| crate::error::Error::Vm(format!("connect the pod network: {e}"))),
    }
}

/// Undoes [`attach`] after the VM failed to start or stopped.
pub async fn release(pod_network: Option<&PodNetwork>) {
    if let Some(pod_network) = pod_network {
        pod_network.detach().await;
    }
}
/// The pod's network as connected to one VM.
#[derive(Debug)]
pub struct PodNetwork {
    netns: PathBuf,
    interfaces: Vec<InterfaceConfig>,
    taps: Mutex<Vec<Tap>>,
}

impl PodNetwork {
    /// Enters `netns`, reads its interfaces and connects each to a new tap (see the module
    /// documentation); undoes what it did if a later interface fails.
    pub async fn attach(netns: &Path) -> Result<PodNetwork, PodNetworkError> {
        let path = netns.to_path_buf();
        let (interfaces, taps) = in_netns(netns, move |handle| async move {
            let interfaces = interfaces_from_scan(&scan_namespace(&handle).await?);
            if interfaces.is_empty() {
                let links = scan_namespace(&handle)
                    .await?
                    .links
                    .iter()
                    .map(link_name)
                    .collect();
                return Err(PodNetworkError::NoInterface { path, links });
            }
            let mut taps = Vec::new();
            for (number, interface) in interfaces.iter().enumerate() {
                match connect_tap(&handle, number, interface).await {
                    Ok(tap) => taps.push(tap),
                    Err(error) => {
                        remove_taps(&handle, &taps).await;
                        return Err(error);
                    }
                }
            }
            Ok((interfaces, taps))
        })
        .await?;
        for (interface, tap) in interfaces.iter().zip(&taps) {
            tracing::info!(
                netns = %netns.display(),
                interface = %interface.name,
                tap = %tap.name,
                mac = %mac_string(&interface.mac),
                addresses = ?interface.addresses,
                "pod interface connected to the VM"
            );
        }
        Ok(PodNetwork {
            netns: netns.to_path_buf(),
            interfaces,
            taps: Mutex::new(taps),
        })
    }

    /// The pod's network namespace on the host.
    pub fn netns(&self) -> &Path {
        &self.netns
    }

    /// The NICs QEMU gives the guest, one per pod interface.
    pub fn nics(&self) -> Vec<PodNic> {
        let taps = self.taps.lock().unwrap_or_else(|p| p.into_inner());
        self.interfaces
            .iter()
            .zip(taps.iter())
            .map(|(interface, tap)| PodNic {
                id: format!("pod{}", interface_number(&tap.name)),
                tap: tap.fd.clone(),
                mac: mac_string(&interface.mac),
            })
            .collect()
    }

    /// The agent's request configuring the guest NICs.
    pub fn update_request(&self) -> api::UpdateInterfacesRequest {
        api::UpdateInterfacesRequest {
            interfaces: self
                .interfaces
                .iter()
                .map(InterfaceConfig::to_request)
                .collect(),
            ..Default::default()
        }
    }

    /// Sends the guest its pod interfaces (before its first container starts).
    pub async fn configure_guest(&self, agent: &AgentClient) -> crate::error::Result<()> {
        agent.update_interfaces(self.update_request()).await
    }

    /// Closes the shim's tap descriptors and, if the namespace still exists, removes the
    /// taps and the veths' ingress qdiscs (with their redirects). Call after QEMU exited.
    pub async fn detach(&self) {
        let taps: Vec<Tap> =
            std::mem::take(&mut *self.taps.lock().unwrap_or_else(|p| p.into_inner()));
        if taps.is_empty() || !self.netns.exists() {
            return;
        }
        let names: Vec<String> = taps.iter().map(|t| t.name.clone()).collect();
        let result = in_netns(&self.netns, move |handle| async move {
            remove_taps(&handle, &taps).await;
            Ok(())
        })
        .await;
        match result {
            Ok(()) => {
                tracing::info!(netns = %self.netns.display(), taps = ?names, "pod network detached")
            }
            // The namespace went away between the check and the entry: nothing is left.
            Err(error) => tracing::debug!(%error, "pod network namespace gone before detach"),
        }
    }
}
/// Runs `work` with a netlink handle inside `netns`, on a thread of its own (whose
/// namespace `setns` changes) with a single-threaded runtime (so every socket is
/// opened in that namespace).
async fn in_netns<T, F, Fut>(netns: &Path, work: F) -> Result<T, PodNetworkError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, PodNetworkError>>,
{
    on_thread_in_netns(netns, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| PodNetworkError::Worker(format!("build its runtime: {e}")))?;
        runtime.block_on(async move {
            let (connection, handle, _) =
                rtnetlink::new_connection().map_err(PodNetworkError::Netlink)?;
            tokio::spawn(connection);
            work(handle).await
        })
    })
    .await
}

/// Runs `work` on a new thread that entered `netns`: sockets it opens and processes it
/// starts live in that namespace. `setns` changes only the calling thread, so the shim's
/// other threads stay in its own.
async fn on_thread_in_netns<T, F>(netns: &Path, work: F) -> Result<T, PodNetworkError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, PodNetworkError> + Send + 'static,
{
    let path = netns.to_path_buf();
    let namespace = File::open(&path).map_err(|source| PodNetworkError::OpenNamespace {
        path: path.clone(),
        source,
    })?;
    let (sender, receiver) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("veil-netns".into())
        .spawn(move || {
            let outcome = setns(&namespace, CloneFlags::CLONE_NEWNET)
                .map_err(|source| PodNetworkError::EnterNamespace { path, source })
                .and_then(|()| work());
            let _ = sender.send(outcome);
        })
        .map_err(|e| PodNetworkError::Worker(format!("spawn: {e}")))?;
    receiver
        .await
        .map_err(|_| PodNetworkError::Worker("ended without an answer".into()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with_namespaces(json: &str) -> Spec {
        serde_json::from_str(&format!(
            r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},"linux":{{"namespaces":{json}}}}}"#
        ))
        .expect("spec")
    }

    #[test]
    fn only_a_network_namespace_joined_by_path_gets_a_pod_nic() {
        let cni = spec_with_namespaces(
            r#"[{"type":"pid"},{"type":"network","path":"/var/run/netns/cni-1234"}]"#,
        );
        assert_eq!(
            pod_netns(&cni),
            Some(PathBuf::from("/var/run/netns/cni-1234"))
        );
        let ctr_run = spec_with_namespaces(r#"[{"type":"pid"},{"type":"network"}]"#);
        assert_eq!(pod_netns(&ctr_run), None);
        let host_network = spec_with_namespaces(r#"[{"type":"pid"}]"#);
        assert_eq!(pod_netns(&host_network), None);
        let own = spec_with_namespaces(r#"[{"type":"network","path":"/proc/self/ns/net"}]"#);
        assert_eq!(pod_netns(&own), None);
    }
}

//! Pod networking: connects the VM to the network namespace CNI made for the pod, the
//! way Kata's "tcfilter" model does.
//!
//! Under CRI, containerd creates a network namespace per pod, CNI puts a veth (`eth0`)
//! with the pod IP in it, and the sandbox container's OCI spec names that namespace by
//! path. Before QEMU starts, the shim enters the namespace (on a thread of its own:
//! `setns` changes only the calling thread) and, for every interface with an IPv4
//! address:
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
//! Only IPv4 is carried over; IPv6 addresses and routes stay behind in the namespace.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures_util::stream::TryStreamExt;
use nix::sched::{setns, CloneFlags};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::packet_route::tc::TcHandle;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use veil_protocol as api;

use crate::agent::AgentClient;
use crate::hypervisor::net::PodNic;

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
    /// CNI left no interface with an IPv4 address in the namespace.
    #[error("the pod network namespace {path} has no interface with an IPv4 address (links: {links:?}); check the CNI configuration (IPv6-only pods are not supported yet)")]
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

/// One IPv4 route through a pod interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// Destination network.
    pub destination: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// Next hop; `None` on the link itself.
    pub gateway: Option<Ipv4Addr>,
}

/// One interface CNI configured in the pod namespace: what the guest NIC takes over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceConfig {
    /// Name in the namespace (e.g. `eth0`).
    pub name: String,
    /// Link index in the namespace.
    pub index: u32,
    /// The veth's MAC, which the guest NIC gets.
    pub mac: [u8; 6],
    /// The veth's MTU (0 if the kernel did not say).
    pub mtu: u32,
    /// IPv4 addresses with prefix lengths.
    pub addresses: Vec<(Ipv4Addr, u8)>,
    /// IPv4 routes through it (not the kernel's own subnet routes, which the guest
    /// kernel adds itself with the addresses).
    pub routes: Vec<RouteConfig>,
}

/// `aa:bb:cc:dd:ee:ff`, as QEMU and `ip link` write MACs.
pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl InterfaceConfig {
    /// The agent's message for this interface.
    pub fn to_request(&self) -> api::PodInterface {
        api::PodInterface {
            name: self.name.clone(),
            mac: mac_string(&self.mac),
            mtu: self.mtu,
            addresses: self
                .addresses
                .iter()
                .map(|(address, prefix_len)| api::IPv4Address {
                    address: address.to_string(),
                    prefix_len: u32::from(*prefix_len),
                    ..Default::default()
                })
                .collect(),
            routes: self
                .routes
                .iter()
                .map(|route| api::IPv4Route {
                    destination: route.destination.to_string(),
                    destination_prefix_len: u32::from(route.prefix_len),
                    gateway: route.gateway.map(|g| g.to_string()).unwrap_or_default(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }
}

/// What one netlink dump of the namespace returned.
#[derive(Debug, Default, Clone)]
pub struct NamespaceScan {
    /// Every link.
    pub links: Vec<LinkMessage>,
    /// Every IPv4 address.
    pub addresses: Vec<AddressMessage>,
    /// Every IPv4 route.
    pub routes: Vec<RouteMessage>,
}

fn link_name(link: &LinkMessage) -> String {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(name) => Some(name.clone()),
            _ => None,
        })
        .unwrap_or_else(|| format!("#{}", link.header.index))
}

fn link_mac(link: &LinkMessage) -> Option<[u8; 6]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(mac) => <[u8; 6]>::try_from(mac.as_slice()).ok(),
        _ => None,
    })
}

fn link_mtu(link: &LinkMessage) -> u32 {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(mtu) => Some(*mtu),
            _ => None,
        })
        .unwrap_or(0)
}

fn ipv4_addresses_of(scan: &NamespaceScan, index: u32) -> Vec<(Ipv4Addr, u8)> {
    scan.addresses
        .iter()
        .filter(|a| a.header.index == index)
        .filter_map(|a| {
            a.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some((*ip, a.header.prefix_len)),
                _ => None,
            })
        })
        .collect()
}

fn route_table(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

fn route_through(route: &RouteMessage, index: u32) -> Option<RouteConfig> {
    let main = u32::from(RouteHeader::RT_TABLE_MAIN);
    let wanted = route_table(route) == main
        && route.header.kind == RouteType::Unicast
        // The kernel's own subnet routes come back in the guest with the addresses.
        && route.header.protocol != RouteProtocol::Kernel
        && route.attributes.contains(&RouteAttribute::Oif(index));
    if !wanted {
        return None;
    }
    let inet = |a: &RouteAttribute, gateway: bool| match (a, gateway) {
        (RouteAttribute::Destination(RouteAddress::Inet(ip)), false)
        | (RouteAttribute::Gateway(RouteAddress::Inet(ip)), true) => Some(*ip),
        _ => None,
    };
    Some(RouteConfig {
        destination: route
            .attributes
            .iter()
            .find_map(|a| inet(a, false))
            .unwrap_or(Ipv4Addr::UNSPECIFIED),
        prefix_len: route.header.destination_prefix_length,
        gateway: route.attributes.iter().find_map(|a| inet(a, true)),
    })
}

/// The interfaces the guest takes over: every non-loopback link with a MAC and an IPv4
/// address, except the shim's own taps, in link-index order.
pub fn interfaces_from_scan(scan: &NamespaceScan) -> Vec<InterfaceConfig> {
    let mut links: Vec<&LinkMessage> = scan.links.iter().collect();
    links.sort_by_key(|l| l.header.index);
    links
        .into_iter()
        .filter(|l| !l.header.flags.contains(LinkFlags::Loopback))
        .filter(|l| !link_name(l).ends_with(TAP_SUFFIX))
        .filter_map(|link| {
            let index = link.header.index;
            let addresses = ipv4_addresses_of(scan, index);
            if addresses.is_empty() {
                return None;
            }
            Some(InterfaceConfig {
                name: link_name(link),
                index,
                mac: link_mac(link)?,
                mtu: link_mtu(link),
                addresses,
                routes: scan
                    .routes
                    .iter()
                    .filter_map(|r| route_through(r, index))
                    .collect(),
            })
        })
        .collect()
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

/// A tap the shim created in the pod namespace, with the veth it mirrors.
#[derive(Debug)]
struct Tap {
    name: String,
    veth_index: u32,
    fd: Arc<OwnedFd>,
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
            let interfaces = interfaces_from_scan(&scan(&handle).await?);
            if interfaces.is_empty() {
                let links = scan(&handle).await?.links.iter().map(link_name).collect();
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

fn interface_number(tap_name: &str) -> &str {
    tap_name
        .strip_prefix("tap")
        .and_then(|rest| rest.strip_suffix(TAP_SUFFIX))
        .unwrap_or("0")
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
    let path = netns.to_path_buf();
    let namespace = File::open(&path).map_err(|source| PodNetworkError::OpenNamespace {
        path: path.clone(),
        source,
    })?;
    let (sender, receiver) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("veil-netns".into())
        .spawn(move || {
            let outcome = (|| {
                setns(&namespace, CloneFlags::CLONE_NEWNET)
                    .map_err(|source| PodNetworkError::EnterNamespace { path, source })?;
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
            })();
            let _ = sender.send(outcome);
        })
        .map_err(|e| PodNetworkError::Worker(format!("spawn: {e}")))?;
    receiver
        .await
        .map_err(|_| PodNetworkError::Worker("ended without an answer".into()))?
}

async fn scan(handle: &Handle) -> Result<NamespaceScan, PodNetworkError> {
    let links = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(request("list links"))?;
    let addresses: Vec<AddressMessage> = handle
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(request("list addresses"))?;
    let routes = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(request("list IPv4 routes"))?;
    Ok(NamespaceScan {
        links,
        addresses,
        routes,
    })
}

/// Creates tap `tap<number>_veil` for `interface` and the redirects both ways.
async fn connect_tap(
    handle: &Handle,
    number: usize,
    interface: &InterfaceConfig,
) -> Result<Tap, PodNetworkError> {
    let name = format!("tap{number}{TAP_SUFFIX}");
    let fd = open_tap(&name).map_err(|source| PodNetworkError::Tap {
        name: name.clone(),
        source,
    })?;
    let tap = Tap {
        name: name.clone(),
        veth_index: interface.index,
        fd: Arc::new(fd),
    };
    match redirect_both_ways(handle, &tap, interface).await {
        Ok(()) => Ok(tap),
        Err(error) => {
            remove_taps(handle, std::slice::from_ref(&tap)).await;
            Err(error)
        }
    }
}

async fn redirect_both_ways(
    handle: &Handle,
    tap: &Tap,
    interface: &InterfaceConfig,
) -> Result<(), PodNetworkError> {
    let tap_index = link_index(handle, &tap.name).await?;
    let mut link = LinkUnspec::new_with_index(tap_index).up();
    if interface.mtu > 0 {
        link = link.mtu(interface.mtu);
    }
    handle
        .link()
        .set(link.build())
        .execute()
        .await
        .map_err(request(format!("bring up {}", tap.name)))?;
    for (from, from_name, to) in [
        (interface.index, interface.name.as_str(), tap_index),
        (tap_index, tap.name.as_str(), interface.index),
    ] {
        let from_index = netlink_index(from)?;
        handle
            .qdisc()
            .add(from_index)
            .ingress()
            .execute()
            .await
            .map_err(request(format!("add an ingress qdisc to {from_name}")))?;
        handle
            .traffic_filter(from_index)
            .add()
            .parent(INGRESS_HANDLE)
            .protocol(eth_p_all())
            .redirect(to)
            .map_err(request(format!("build the redirect filter of {from_name}")))?
            .execute()
            .await
            .map_err(request(format!("add the redirect filter to {from_name}")))?;
    }
    Ok(())
}

/// ETH_P_ALL as tc's filter header carries it: in network byte order.
fn eth_p_all() -> u16 {
    // ETH_P_ALL is 0x0003: it fits u16.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    (libc::ETH_P_ALL as u16).to_be()
}

fn netlink_index(index: u32) -> Result<i32, PodNetworkError> {
    i32::try_from(index)
        .map_err(|_| PodNetworkError::Worker(format!("link index {index} out of range")))
}

async fn link_index(handle: &Handle, name: &str) -> Result<u32, PodNetworkError> {
    let links: Vec<LinkMessage> = handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_collect()
        .await
        .map_err(request(format!("find {name}")))?;
    links
        .first()
        .map(|l| l.header.index)
        .ok_or_else(|| PodNetworkError::Worker(format!("{name} vanished after its creation")))
}

/// Best effort: removes the veths' ingress qdiscs (their filters go with them) and the
/// taps, whichever still exist.
async fn remove_taps(handle: &Handle, taps: &[Tap]) {
    for tap in taps {
        if let Ok(veth) = netlink_index(tap.veth_index) {
            let mut delete = handle.qdisc().del(veth);
            delete.message_mut().header.parent = TcHandle::INGRESS;
            delete.message_mut().header.handle = TcHandle::from(INGRESS_HANDLE);
            if let Err(error) = delete.execute().await {
                tracing::debug!(%error, veth = tap.veth_index, "veth ingress qdisc already gone");
            }
        }
        if let Ok(index) = link_index(handle, &tap.name).await {
            if let Err(error) = handle.link().del(index).execute().await {
                tracing::warn!(%error, tap = %tap.name, "could not delete the tap");
            }
        }
    }
}

/// The `struct ifreq` of TUNSETIFF: a name and the flags (the rest of the union unused).
#[repr(C)]
struct TunRequest {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _unused: [u8; 22],
}

/// Creates tap `name` in the calling thread's network namespace; returns its queue's
/// descriptor (close-on-exec: QEMU is given it explicitly).
fn open_tap(name: &str) -> std::io::Result<OwnedFd> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut request = TunRequest {
        name: [0; libc::IFNAMSIZ],
        // The flags are below 0x8000: they fit c_short.
        #[allow(clippy::cast_possible_truncation)]
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
        _unused: [0; 22],
    };
    if name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::other(format!(
            "tap name {name} is too long"
        )));
    }
    for (slot, byte) in request.name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which TunRequest lays out
    // (name, then the flags at the start of the 24-byte union); the descriptor is open.
    let result = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request) };
    if result < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(OwnedFd::from(file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::address::AddressHeader;
    use rtnetlink::packet_route::AddressFamily;

    fn link(index: u32, name: &str, mac: Option<[u8; 6]>, loopback: bool) -> LinkMessage {
        let mut message = LinkMessage::default();
        message.header.index = index;
        if loopback {
            message.header.flags = LinkFlags::Loopback | LinkFlags::Up;
        }
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        message.attributes.push(LinkAttribute::Mtu(1450));
        if let Some(mac) = mac {
            message
                .attributes
                .push(LinkAttribute::Address(mac.to_vec()));
        }
        message
    }

    fn address(index: u32, ip: IpAddr, prefix_len: u8) -> AddressMessage {
        let mut message = AddressMessage::default();
        message.header = AddressHeader {
            family: if ip.is_ipv4() {
                AddressFamily::Inet
            } else {
                AddressFamily::Inet6
            },
            prefix_len,
            index,
            ..message.header
        };
        message.attributes.push(AddressAttribute::Address(ip));
        message
    }

    fn route(
        oif: u32,
        destination: Option<(Ipv4Addr, u8)>,
        gateway: Option<Ipv4Addr>,
        protocol: RouteProtocol,
    ) -> RouteMessage {
        let mut builder = RouteMessageBuilder::<Ipv4Addr>::new().output_interface(oif);
        if let Some((ip, len)) = destination {
            builder = builder.destination_prefix(ip, len);
        }
        if let Some(gateway) = gateway {
            builder = builder.gateway(gateway);
        }
        let mut message = builder.build();
        message.header.protocol = protocol;
        message.header.table = RouteHeader::RT_TABLE_MAIN;
        message
    }

    const VETH_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0x58, 0x4d, 0x05];

    fn cni_bridge_scan() -> NamespaceScan {
        NamespaceScan {
            links: vec![
                link(3, "eth0", Some(VETH_MAC), false),
                link(1, "lo", Some([0; 6]), true),
                link(7, "tap0_veil", Some([2, 0, 0, 0, 0, 1]), false),
            ],
            addresses: vec![
                address(1, IpAddr::V4(Ipv4Addr::LOCALHOST), 8),
                address(3, IpAddr::V4(Ipv4Addr::new(10, 88, 77, 5)), 24),
                address(3, "fe80::858:aff:fe58:4d05".parse().expect("ipv6"), 64),
                address(7, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 24),
            ],
            routes: vec![
                route(
                    3,
                    None,
                    Some(Ipv4Addr::new(10, 88, 77, 1)),
                    RouteProtocol::Boot,
                ),
                route(
                    3,
                    Some((Ipv4Addr::new(10, 88, 77, 0), 24)),
                    None,
                    RouteProtocol::Kernel,
                ),
                route(
                    3,
                    Some((Ipv4Addr::new(192, 168, 0, 0), 16)),
                    Some(Ipv4Addr::new(10, 88, 77, 254)),
                    RouteProtocol::Static,
                ),
                route(
                    1,
                    Some((Ipv4Addr::new(127, 0, 0, 0), 8)),
                    None,
                    RouteProtocol::Boot,
                ),
            ],
        }
    }

    #[test]
    fn a_cni_bridge_namespace_yields_eth0_with_its_ipv4_addresses_and_routes() {
        let interfaces = interfaces_from_scan(&cni_bridge_scan());
        assert_eq!(
            interfaces,
            vec![InterfaceConfig {
                name: "eth0".into(),
                index: 3,
                mac: VETH_MAC,
                mtu: 1450,
                addresses: vec![(Ipv4Addr::new(10, 88, 77, 5), 24)],
                routes: vec![
                    RouteConfig {
                        destination: Ipv4Addr::UNSPECIFIED,
                        prefix_len: 0,
                        gateway: Some(Ipv4Addr::new(10, 88, 77, 1)),
                    },
                    RouteConfig {
                        destination: Ipv4Addr::new(192, 168, 0, 0),
                        prefix_len: 16,
                        gateway: Some(Ipv4Addr::new(10, 88, 77, 254)),
                    },
                ],
            }]
        );
    }

    #[test]
    fn links_without_ipv4_or_in_other_tables_are_left_out() {
        let mut scan = cni_bridge_scan();
        scan.addresses.retain(|a| a.header.index != 3);
        assert!(interfaces_from_scan(&scan).is_empty());
        let mut other_table = cni_bridge_scan();
        for route in &mut other_table.routes {
            route.attributes.push(RouteAttribute::Table(100));
        }
        assert!(interfaces_from_scan(&other_table)[0].routes.is_empty());
    }

    #[test]
    fn the_agent_request_carries_mac_mtu_addresses_and_routes_as_text() {
        let request = interfaces_from_scan(&cni_bridge_scan())[0].to_request();
        assert_eq!(request.name, "eth0");
        assert_eq!(request.mac, "0a:58:0a:58:4d:05");
        assert_eq!(request.mtu, 1450);
        assert_eq!(request.addresses[0].address, "10.88.77.5");
        assert_eq!(request.addresses[0].prefix_len, 24);
        assert_eq!(request.routes[0].destination, "0.0.0.0");
        assert_eq!(request.routes[0].destination_prefix_len, 0);
        assert_eq!(request.routes[0].gateway, "10.88.77.1");
    }

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

    #[test]
    fn tap_names_number_the_nics_and_tc_gets_eth_p_all_in_network_order() {
        assert_eq!(interface_number("tap0_veil"), "0");
        assert_eq!(interface_number("tap12_veil"), "12");
        assert_eq!(eth_p_all().to_ne_bytes(), [0x00, 0x03]);
        assert_eq!(std::mem::size_of::<TunRequest>(), 40);
    }
}


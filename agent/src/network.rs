//! The guest's networking: loopback, the egress NIC through which the agent reaches
//! the model store and the key broker, and the pod's own NICs.
//!
//! The egress NIC is QEMU user networking (slirp) with its fixed addresses
//! ([`veil_protocol::egress`]), so no DHCP client is needed: the agent assigns the
//! address, brings the link up and routes everything through slirp's gateway. The host
//! sees only what the agent sends: ciphertext from the store, and the key broker
//! exchange (whose secret is wrapped to a key that never leaves the guest).
//!
//! A pod with a CNI network namespace on the host also gets a pod NIC per interface CNI
//! configured there: the shim connects the pod's veth to a tap with tc redirects (Kata's
//! "tcfilter" model) and gives the guest's NIC the veth's MAC, then sends the addresses
//! and routes it found ([`PodNetwork::apply`], before the first container). The guest
//! then owns the pod IP: packets for it cross the veth and the tap untouched.
//!
//! Who owns the default route when a VM has both: the pod network. Containers serve and
//! call out through the pod IP, as they would under runc, so CNI's default route wins;
//! the egress NIC keeps only its on-link subnet (10.0.2.0/24), which is all the model
//! delivery needs to reach slirp's gateway (the node's loopback) and its DNS relay.
//! [`PodNetwork::apply`] first waits for the egress configuration to finish (it runs in
//! the background at boot), then removes the egress default route, then adds the pod's,
//! so the two never race for the same destination. A model store or key broker beyond
//! the node is then reached through the pod network, like any other pod traffic.
//!
//! Names: the guest kernel names NICs by probe order, so the agent names the egress NIC
//! `veil-egress` and gives each pod NIC its name in the pod (CNI's `eth0`), as software in
//! a pod expects to find it.
//!
//! DNS for containers needs nothing here: containerd writes the pod's resolv.conf and
//! hosts files on the host and bind-mounts them into every container, and the shim shares
//! bind mounts with the guest.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use futures_util::stream::TryStreamExt;
use rtnetlink::packet_route::address::AddressHeaderFlags;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use tokio::sync::watch;
use veil_protocol as api;
use veil_protocol::egress;

/// Configuring the guest network failed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// No netlink socket.
    #[error("open a netlink socket: {0}")]
    Netlink(#[source] std::io::Error),
    /// A netlink request failed.
    #[error("{what}: {source}")]
    Request {
        /// The step.
        what: &'static str,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// The egress NIC is missing.
    #[error(
        "no network interface with the egress MAC {mac} (links: {links:?}); the guest kernel may lack \
         virtio_net, or the VM was started without its egress NIC"
    )]
    NoEgressLink {
        /// The MAC looked for.
        mac: String,
        /// The links seen.
        links: Vec<String>,
    },
    /// /etc/resolv.conf could not be written.
    #[error("write /etc/resolv.conf: {0}")]
    Resolver(#[source] std::io::Error),
    /// The shim sent a pod interface the agent cannot apply.
    #[error("invalid pod interface {interface}: {reason}")]
    InvalidPodInterface {
        /// The interface's pod-side name.
        interface: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No guest NIC carries a pod interface's MAC.
    #[error(
        "no network interface with MAC {mac} for pod interface {interface} (links: {links:?}); \
         the VM was started without the pod NIC, or the guest kernel lacks virtio_net"
    )]
    NoPodLink {
        /// The pod-side name.
        interface: String,
        /// The MAC looked for.
        mac: String,
        /// The links seen.
        links: Vec<String>,
    },
    /// The pod network was configured already.
    #[error("the pod network is configured already; UpdateInterfaces is sent once per VM")]
    AlreadyConfigured,
    /// The egress configuration did not finish, so the default route cannot be handed over.
    #[error("the egress network did not finish configuring: {0}")]
    EgressNotReady(String),
}

fn request(what: &'static str) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    move |source| NetworkError::Request { what, source }
}

fn connect() -> Result<Handle, NetworkError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(NetworkError::Netlink)?;
    tokio::spawn(connection);
    Ok(handle)
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

fn link_mac(link: &LinkMessage) -> Option<&[u8]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(mac) => Some(mac.as_slice()),
        _ => None,
    })
}

async fn links(handle: &Handle) -> Result<Vec<LinkMessage>, NetworkError> {
    handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(request("list network links"))
}

async fn set_up(handle: &Handle, index: u32, what: &'static str) -> Result<(), NetworkError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(request(what))
}

/// Brings up the loopback interface of the agent's network namespace.
pub async fn loopback_up() -> Result<(), NetworkError> {
    let handle = connect()?;
    let links = links(&handle).await?;
    if let Some(lo) = links.iter().find(|l| link_name(l) == "lo") {
        set_up(&handle, lo.header.index, "bring up lo").await?;
    }
    Ok(())
}

/// Configures the egress NIC: address, link up, default route via slirp, resolver.
pub async fn configure_egress() -> Result<(), NetworkError> {
    let handle = connect()?;
    let links = links(&handle).await?;
    let nic = links
        .iter()
        .find(|l| link_mac(l) == Some(&egress::MAC[..]))
        .ok_or_else(|| NetworkError::NoEgressLink {
            mac: egress::mac_string(),
            links: links.iter().map(link_name).collect(),
        })?;
    let index = nic.header.index;
    // Named before it comes up (a link is renamed only while down), so the ethN names stay
    // free for the pod's own interfaces.
    rename_link(&handle, index, EGRESS_LINK_NAME).await?;
    let address = Ipv4Addr::from(egress::GUEST_ADDRESS);
    handle
        .address()
        .add(index, address.into(), egress::PREFIX_LEN)
        .execute()
        .await
        .map_err(request("assign the egress address"))?;
    set_up(&handle, index, "bring up the egress NIC").await?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(Ipv4Addr::from(egress::HOST_ADDRESS))
        .output_interface(index)
        .build();
    handle
        .route()
        .add(route)
        .execute()
        .await
        .map_err(request("add the default route via the egress gateway"))?;
    std::fs::write(
        "/etc/resolv.conf",
        format!("nameserver {}\n", Ipv4Addr::from(egress::DNS_ADDRESS)),
    )
    .map_err(NetworkError::Resolver)?;
    tracing::info!(
        nic = EGRESS_LINK_NAME,
        %address,
        gateway = %Ipv4Addr::from(egress::HOST_ADDRESS),
        "egress network configured"
    );
    Ok(())
}

/// The egress NIC's name in the guest.
pub const EGRESS_LINK_NAME: &str = "veil-egress";

async fn rename_link(handle: &Handle, index: u32, name: &str) -> Result<(), NetworkError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).name(name).build())
        .execute()
        .await
        .map_err(request("rename a network interface"))
}

/// Whether Linux accepts `name` for a network interface: 1 to 15 bytes, not `.` or `..`, no
/// `/`, `:` or whitespace.
pub fn is_valid_link_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// How long the agent waits for a pod NIC to appear (virtio-net probes at boot, well
/// before the shim's first call; this covers a module still loading).
const POD_LINK_WAIT: Duration = Duration::from_secs(10);
/// How long the pod network waits for the egress configuration to finish.
const EGRESS_WAIT: Duration = Duration::from_secs(30);

/// The egress configuration's outcome, once known (`None` while it runs).
pub type EgressReady = watch::Receiver<Option<Result<(), String>>>;

/// One route of a pod interface, validated: destination and gateway of one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePlan {
    /// Destination network.
    pub destination: IpAddr,
    /// Its prefix length (0 for the default route).
    pub prefix_len: u8,
    /// Next hop; `None` for a route on the link itself.
    pub gateway: Option<IpAddr>,
}

/// One pod interface as the agent applies it: the shim's message, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfacePlan {
    /// Pod-side name, for logs and errors.
    pub name: String,
    /// The guest NIC's MAC (the pod veth's).
    pub mac: [u8; 6],
    /// MTU to set, if the shim gave one.
    pub mtu: Option<u32>,
    /// IPv4 and IPv6 addresses with prefix lengths.
    pub addresses: Vec<(IpAddr, u8)>,
    /// Routes, links routes first so that every gateway is reachable when its route is added.
    pub routes: Vec<RoutePlan>,
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// A prefix length valid for `address`'s family.
fn prefix(address: IpAddr, value: u32) -> Option<u8> {
    let longest = if address.is_ipv4() { 32 } else { 128 };
    u8::try_from(value).ok().filter(|p| *p <= longest)
}

impl InterfacePlan {
    /// Validates the shim's description of one pod interface.
    pub fn from_request(interface: &api::PodInterface) -> Result<InterfacePlan, NetworkError> {
        let invalid = |reason: String| NetworkError::InvalidPodInterface {
            interface: interface.name.clone(),
            reason,
        };
        let mac = parse_mac(&interface.mac)
            .ok_or_else(|| invalid(format!("MAC {:?} is not aa:bb:cc:dd:ee:ff", interface.mac)))?;
        let ip = |what: &str, text: &str| {
            text.parse::<IpAddr>()
                .map_err(|_| invalid(format!("{what} {text:?} is not an IPv4 or IPv6 address")))
        };
        let length = |what: &str, address: IpAddr, value: u32| {
            prefix(address, value).ok_or_else(|| {
                invalid(format!(
                    "{what} prefix length {value} is too long for {address}"
                ))
            })
        };
        let addresses = interface
            .addresses
            .iter()
            .map(|a| {
                let address = ip("address", &a.address)?;
                Ok((address, length("address", address, a.prefix_len)?))
            })
            .collect::<Result<Vec<_>, NetworkError>>()?;
        let mut routes = interface
            .routes
            .iter()
            .map(|r| {
                let destination = ip("route destination", &r.destination)?;
                let gateway = match r.gateway.as_str() {
                    "" => None,
                    gateway => Some(ip("gateway", gateway)?),
                };
                if gateway.is_some_and(|g| g.is_ipv4() != destination.is_ipv4()) {
                    return Err(invalid(format!(
                        "gateway {:?} is not of the same family as route destination {destination}",
                        r.gateway
                    )));
                }
                Ok(RoutePlan {
                    destination,
                    prefix_len: length("route", destination, r.destination_prefix_len)?,
                    gateway,
                })
            })
            .collect::<Result<Vec<_>, NetworkError>>()?;
        // A gateway outside the address's subnet (Calico's 169.254.1.1) is reachable only
        // once its link route exists: link routes first, then routes via gateways.
        routes.sort_by_key(|r| r.gateway.is_some());
        Ok(InterfacePlan {
            name: interface.name.clone(),
            mac,
            mtu: (interface.mtu > 0).then_some(interface.mtu),
            addresses,
            routes,
        })
    }

    fn mac_string(&self) -> String {
        self.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// The netlink request that adds `route` through the link with index `link`.
/// [`InterfacePlan::from_request`] made sure the gateway is of the destination's family.
pub fn route_message(route: &RoutePlan, link: u32) -> RouteMessage {
    match (route.destination, route.gateway) {
        (IpAddr::V4(destination), gateway) => {
            let builder = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(destination, route.prefix_len)
                .output_interface(link);
            match gateway {
                Some(IpAddr::V4(gateway)) => builder.gateway(gateway).build(),
                _ => builder
                    .scope(rtnetlink::packet_route::route::RouteScope::Link)
                    .build(),
            }
        }
        (IpAddr::V6(destination), gateway) => {
            let builder = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(destination, route.prefix_len)
                .output_interface(link);
            match gateway {
                Some(IpAddr::V6(gateway)) => builder.gateway(gateway).build(),
                _ => builder.build(),
            }
        }
    }
}

/// Whether `route` is a default route via slirp's gateway (the one
/// [`configure_egress`] adds).
fn is_egress_default_route(route: &RouteMessage) -> bool {
    let gateway = RouteAddress::Inet(Ipv4Addr::from(egress::HOST_ADDRESS));
    route.header.destination_prefix_length == 0
        && route
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Gateway(g) if *g == gateway))
}

/// The pod network inside the guest: applied once, after the egress NIC (if any) is done.
pub struct PodNetwork {
    egress: Option<EgressReady>,
    configured: tokio::sync::Mutex<bool>,
}

impl PodNetwork {
    /// A pod network for a VM whose egress configuration reports on `egress` (`None`
    /// when the VM has no egress NIC).
    pub fn new(egress: Option<EgressReady>) -> Self {
        PodNetwork {
            egress,
            configured: tokio::sync::Mutex::new(false),
        }
    }

    /// Gives each pod NIC its MTU, addresses and routes, and the pod network the default
    /// route (see the module documentation). Refused once it succeeded.
    pub async fn apply(&self, interfaces: &[api::PodInterface]) -> Result<(), NetworkError> {
        let plans = interfaces
            .iter()
            .map(InterfacePlan::from_request)
            .collect::<Result<Vec<_>, _>>()?;
        let mut configured = self.configured.lock().await;
        if *configured {
            return Err(NetworkError::AlreadyConfigured);
        }
        let handle = connect()?;
        if let Some(egress) = &self.egress {
            wait_for_egress(egress.clone()).await?;
            remove_egress_default_route(&handle).await?;
        }
        let mut indices = Vec::with_capacity(plans.len());
        for plan in &plans {
            indices.push(find_link_by_mac(&handle, plan).await?);
        }
        name_pod_links(&handle, &plans, &indices).await?;
        for (plan, index) in plans.iter().zip(indices) {
            configure_pod_interface(&handle, plan, index).await?;
        }
        *configured = true;
        Ok(())
    }
}

async fn wait_for_egress(mut egress: EgressReady) -> Result<(), NetworkError> {
    let outcome = tokio::time::timeout(EGRESS_WAIT, egress.wait_for(Option::is_some)).await;
    match outcome {
        Err(_) => Err(NetworkError::EgressNotReady(format!(
            "no result within {EGRESS_WAIT:?}"
        ))),
        Ok(Err(_)) => Err(NetworkError::EgressNotReady(
            "its task ended without a result".into(),
        )),
        // A failed egress left no default route to hand over: the pod network goes on.
        Ok(Ok(_)) => Ok(()),
    }
}

async fn remove_egress_default_route(handle: &Handle) -> Result<(), NetworkError> {
    let routes: Vec<RouteMessage> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(request("list IPv4 routes"))?;
    for route in routes.into_iter().filter(is_egress_default_route) {
        handle
            .route()
            .del(route)
            .execute()
            .await
            .map_err(request("remove the egress default route"))?;
        tracing::info!("egress default route handed over to the pod network");
    }
    Ok(())
}

async fn find_link_by_mac(handle: &Handle, plan: &InterfacePlan) -> Result<u32, NetworkError> {
    let deadline = tokio::time::Instant::now() + POD_LINK_WAIT;
    loop {
        let links = links(handle).await?;
        if let Some(link) = links.iter().find(|l| link_mac(l) == Some(&plan.mac[..])) {
            return Ok(link.header.index);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(NetworkError::NoPodLink {
                interface: plan.name.clone(),
                mac: plan.mac_string(),
                links: links.iter().map(link_name).collect(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Gives each pod NIC its pod-side name (CNI's `eth0`), as software in a pod expects; the
/// guest kernel named them by probe order. NICs whose name changes first move to temporary
/// names, so two of them can swap. A name Linux refuses, or one another guest link holds,
/// leaves the NIC as the guest named it, with a warning.
async fn name_pod_links(
    handle: &Handle,
    plans: &[InterfacePlan],
    indices: &[u32],
) -> Result<(), NetworkError> {
    let names: HashMap<u32, String> = links(handle)
        .await?
        .iter()
        .map(|l| (l.header.index, link_name(l)))
        .collect();
    let (renamed, invalid): (Vec<(&InterfacePlan, u32)>, Vec<_>) = plans
        .iter()
        .zip(indices.iter().copied())
        .filter(|(plan, index)| names.get(index) != Some(&plan.name))
        .partition(|(plan, _)| is_valid_link_name(&plan.name));
    for (plan, _) in invalid {
        tracing::warn!(interface = %plan.name, "not a valid Linux interface name: the pod NIC keeps the guest's name");
    }
    for (number, (_, index)) in renamed.iter().enumerate() {
        rename_link(handle, *index, &format!("veilpod{number}")).await?;
    }
    let ours: Vec<u32> = renamed.iter().map(|(_, index)| *index).collect();
    for (plan, index) in renamed {
        let holder = names
            .iter()
            .find(|(i, name)| **name == plan.name && !ours.contains(i));
        let name = match holder {
            None => plan.name.as_str(),
            Some(_) => {
                tracing::warn!(interface = %plan.name, "another guest link has this name: the pod NIC keeps the guest's name");
                names.get(&index).map(String::as_str).unwrap_or(&plan.name)
            }
        };
        rename_link(handle, index, name).await?;
    }
    Ok(())
}

async fn configure_pod_interface(
    handle: &Handle,
    plan: &InterfacePlan,
    index: u32,
) -> Result<(), NetworkError> {
    let mut link = LinkUnspec::new_with_index(index).up();
    if let Some(mtu) = plan.mtu {
        link = link.mtu(mtu);
    }
    handle
        .link()
        .set(link.build())
        .execute()
        .await
        .map_err(request("set the pod NIC's MTU and bring it up"))?;
    for (address, prefix_len) in &plan.addresses {
        let mut add = handle.address().add(index, *address, *prefix_len).replace();
        if address.is_ipv6() {
            // The pod's address is the pod's alone (CNI's IPAM said so); duplicate
            // detection would only hold it unusable ("tentative") for a second or more
            // while the first container starts.
            add.message_mut().header.flags |= AddressHeaderFlags::Nodad;
        }
        add.execute()
            .await
            .map_err(request("assign a pod address"))?;
    }
    for route in &plan.routes {
        handle
            .route()
            .add(route_message(route, index))
            .replace()
            .execute()
            .await
            .map_err(request("add a pod route"))?;
    }
    tracing::info!(
        interface = %plan.name,
        mac = %plan.mac_string(),
        addresses = ?plan.addresses,
        routes = plan.routes.len(),
        "pod network interface configured"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn v6(text: &str) -> IpAddr {
        text.parse().expect("ipv6")
    }

    fn interface() -> api::PodInterface {
        api::PodInterface {
            name: "eth0".into(),
            mac: "0a:58:0a:58:4d:05".into(),
            mtu: 1500,
            addresses: vec![api::IPAddress {
                address: "10.88.77.5".into(),
                prefix_len: 24,
                ..Default::default()
            }],
            routes: vec![
                api::IPRoute {
                    destination: "0.0.0.0".into(),
                    destination_prefix_len: 0,
                    gateway: "169.254.1.1".into(),
                    ..Default::default()
                },
                api::IPRoute {
                    destination: "169.254.1.1".into(),
                    destination_prefix_len: 32,
                    gateway: String::new(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn a_pod_interface_becomes_a_plan_with_link_routes_first() {
        let plan = InterfacePlan::from_request(&interface()).expect("valid");
        assert_eq!(plan.mac, [0x0a, 0x58, 0x0a, 0x58, 0x4d, 0x05]);
        assert_eq!(plan.mac_string(), "0a:58:0a:58:4d:05");
        assert_eq!(plan.mtu, Some(1500));
        assert_eq!(
            plan.addresses,
            vec![(IpAddr::V4(Ipv4Addr::new(10, 88, 77, 5)), 24)]
        );
        assert_eq!(
            plan.routes,
            vec![
                RoutePlan {
                    destination: v4(169, 254, 1, 1),
                    prefix_len: 32,
                    gateway: None,
                },
                RoutePlan {
                    destination: v4(0, 0, 0, 0),
                    prefix_len: 0,
                    gateway: Some(v4(169, 254, 1, 1)),
                },
            ]
        );
        let no_mtu = api::PodInterface {
            mtu: 0,
            ..interface()
        };
        assert_eq!(
            InterfacePlan::from_request(&no_mtu).expect("valid").mtu,
            None
        );
    }

    #[test]
    fn malformed_pod_interfaces_are_refused_naming_the_field() {
        let cases: Vec<(api::PodInterface, &str)> = vec![
            (
                api::PodInterface {
                    mac: "0a:58:0a:58:4d".into(),
                    ..interface()
                },
                "MAC",
            ),
            (
                api::PodInterface {
                    mac: "0a:58:0a:58:4d:05:01".into(),
                    ..interface()
                },
                "MAC",
            ),
            (
                api::PodInterface {
                    mac: "0a:58:0a:58:4d:zz".into(),
                    ..interface()
                },
                "MAC",
            ),
            (
                api::PodInterface {
                    addresses: vec![api::IPAddress {
                        address: "10.88.77.500".into(),
                        prefix_len: 24,
                        ..Default::default()
                    }],
                    ..interface()
                },
                "address",
            ),
            (
                api::PodInterface {
                    addresses: vec![api::IPAddress {
                        address: "10.88.77.5".into(),
                        prefix_len: 33,
                        ..Default::default()
                    }],
                    ..interface()
                },
                "prefix length 33",
            ),
            (
                api::PodInterface {
                    addresses: vec![api::IPAddress {
                        address: "fd00:88:77::5".into(),
                        prefix_len: 129,
                        ..Default::default()
                    }],
                    ..interface()
                },
                "prefix length 129",
            ),
            (
                api::PodInterface {
                    routes: vec![api::IPRoute {
                        destination: "0.0.0.0".into(),
                        gateway: "fe80::1".into(),
                        ..Default::default()
                    }],
                    ..interface()
                },
                "gateway",
            ),
        ];
        for (interface, word) in cases {
            let error = InterfacePlan::from_request(&interface)
                .expect_err("refused")
                .to_string();
            assert!(
                error.contains("eth0") && error.contains(word),
                "{word}: {error}"
            );
        }
    }

    #[test]
    fn ipv6_addresses_and_routes_are_planned_like_ipv4_ones() {
        let dual_stack = api::PodInterface {
            addresses: vec![
                api::IPAddress {
                    address: "10.88.77.5".into(),
                    prefix_len: 24,
                    ..Default::default()
                },
                api::IPAddress {
                    address: "fd00:88:77::5".into(),
                    prefix_len: 64,
                    ..Default::default()
                },
            ],
            routes: vec![api::IPRoute {
                destination: "::".into(),
                destination_prefix_len: 0,
                gateway: "fd00:88:77::1".into(),
                ..Default::default()
            }],
            ..interface()
        };
        let plan = InterfacePlan::from_request(&dual_stack).expect("valid");
        assert_eq!(plan.addresses[1], (v6("fd00:88:77::5"), 64));
        assert_eq!(
            plan.routes,
            vec![RoutePlan {
                destination: v6("::"),
                prefix_len: 0,
                gateway: Some(v6("fd00:88:77::1")),
            }]
        );
        let message = route_message(&plan.routes[0], 4);
        assert_eq!(
            message.header.address_family,
            rtnetlink::packet_route::AddressFamily::Inet6
        );
        assert!(message
            .attributes
            .contains(&RouteAttribute::Gateway(RouteAddress::Inet6(
                "fd00:88:77::1".parse().expect("ipv6")
            ))));
        assert!(message.attributes.contains(&RouteAttribute::Oif(4)));
    }

    #[test]
    fn a_gateway_of_the_other_family_is_refused() {
        let mixed = api::PodInterface {
            routes: vec![api::IPRoute {
                destination: "::".into(),
                gateway: "10.88.77.1".into(),
                ..Default::default()
            }],
            ..interface()
        };
        let error = InterfacePlan::from_request(&mixed).unwrap_err().to_string();
        assert!(error.contains("same family"), "{error}");
    }

    #[test]
    fn routes_become_netlink_requests_on_the_pod_link() {
        let via = route_message(
            &RoutePlan {
                destination: v4(0, 0, 0, 0),
                prefix_len: 0,
                gateway: Some(v4(10, 88, 77, 1)),
            },
            3,
        );
        assert_eq!(via.header.destination_prefix_length, 0);
        assert!(via.attributes.contains(&RouteAttribute::Oif(3)));
        assert!(via
            .attributes
            .contains(&RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(
                10, 88, 77, 1
            )))));
        assert!(!is_egress_default_route(&via));
        let link = route_message(
            &RoutePlan {
                destination: v4(169, 254, 1, 1),
                prefix_len: 32,
                gateway: None,
            },
            3,
        );
        assert_eq!(
            link.header.scope,
            rtnetlink::packet_route::route::RouteScope::Link
        );
        assert!(!link
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Gateway(_))));
    }

    #[test]
    fn interface_names_follow_linux_rules() {
        for good in ["eth0", "net1", "veil-egress", "a", "fifteen-chars-x"] {
            assert!(is_valid_link_name(good), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "sixteen-chars-xx",
            "a/b",
            "a:1",
            "a b",
            "tab\t",
        ] {
            assert!(!is_valid_link_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn only_the_default_route_via_slirp_counts_as_the_egress_route() {
        let egress_default = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(Ipv4Addr::from(egress::HOST_ADDRESS))
            .output_interface(2)
            .build();
        assert!(is_egress_default_route(&egress_default));
        let egress_subnet = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::new(10, 0, 2, 0), 24)
            .output_interface(2)
            .build();
        assert!(!is_egress_default_route(&egress_subnet));
    }
}

//! Reading the pod network namespace: which interfaces CNI configured there, with the
//! MAC, MTU, addresses and routes (IPv4 and IPv6) the guest NIC takes over.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::stream::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, RouteMessageBuilder};
use veil_protocol as api;

use super::{request, PodNetworkError, TAP_SUFFIX};

/// One route through a pod interface (destination and gateway of one family).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// Destination network.
    pub destination: IpAddr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// Next hop; `None` on the link itself.
    pub gateway: Option<IpAddr>,
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
    /// IPv4 and global IPv6 addresses with prefix lengths (not IPv6 link-local ones: the
    /// guest kernel derives the same one from the MAC).
    pub addresses: Vec<(IpAddr, u8)>,
    /// Routes through it (not the kernel's own subnet routes, which the guest kernel adds
    /// itself with the addresses).
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
                .map(|(address, prefix_len)| api::IPAddress {
                    address: address.to_string(),
                    prefix_len: u32::from(*prefix_len),
                    ..Default::default()
                })
                .collect(),
            routes: self
                .routes
                .iter()
                .map(|route| api::IPRoute {
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
    /// Every address.
    pub addresses: Vec<AddressMessage>,
    /// Every IPv4 and IPv6 route.
    pub routes: Vec<RouteMessage>,
}

pub(super) fn link_name(link: &LinkMessage) -> String {
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

fn addresses_of(scan: &NamespaceScan, index: u32) -> Vec<(IpAddr, u8)> {
    scan.addresses
        .iter()
        .filter(|a| a.header.index == index)
        .filter_map(|a| {
            a.attributes.iter().find_map(|attr| match attr {
                // fe80::/10: every IPv6 link has one, made from its MAC.
                AddressAttribute::Address(IpAddr::V6(ip)) if ip.is_unicast_link_local() => None,
                AddressAttribute::Address(ip) => Some((*ip, a.header.prefix_len)),
                _ => None,
            })
        })
        .collect()
}

fn route_ip(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
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
    let unspecified = match route.header.address_family {
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    let destination = route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Destination(address) => route_ip(address),
            _ => None,
        })
        .unwrap_or(unspecified);
    if matches!(destination, IpAddr::V6(ip) if ip.is_unicast_link_local()) {
        return None;
    }
    Some(RouteConfig {
        destination,
        prefix_len: route.header.destination_prefix_length,
        gateway: route.attributes.iter().find_map(|a| match a {
            RouteAttribute::Gateway(address) => route_ip(address),
            _ => None,
        }),
    })
}

/// The interfaces the guest takes over: every non-loopback link with a MAC and an IPv4 or
/// global IPv6 address, except the shim's own taps, in link-index order.
pub fn interfaces_from_scan(scan: &NamespaceScan) -> Vec<InterfaceConfig> {
    let mut links: Vec<&LinkMessage> = scan.links.iter().collect();
    links.sort_by_key(|l| l.header.index);
    links
        .into_iter()
        .filter(|l| !l.header.flags.contains(LinkFlags::Loopback))
        .filter(|l| !link_name(l).ends_with(TAP_SUFFIX))
        .filter_map(|link| {
            let index = link.header.index;
            let addresses = addresses_of(scan, index);
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
pub(super) async fn scan_namespace(handle: &Handle) -> Result<NamespaceScan, PodNetworkError> {
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
    let mut routes: Vec<RouteMessage> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(request("list IPv4 routes"))?;
    // A host kernel without IPv6 (or with it switched off) has no IPv6 routes to carry over.
    match handle
        .route()
        .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
        .execute()
        .try_collect::<Vec<RouteMessage>>()
        .await
    {
        Ok(ipv6_routes) => routes.extend(ipv6_routes),
        Err(error) => tracing::debug!(%error, "no IPv6 routes in the pod network namespace"),
    }
    Ok(NamespaceScan {
        links,
        addresses,
        routes,
    })
}
#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::address::AddressHeader;

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
        in_main_table(builder.build(), protocol)
    }

    fn route6(
        oif: u32,
        destination: Option<(&str, u8)>,
        gateway: Option<&str>,
        protocol: RouteProtocol,
    ) -> RouteMessage {
        let ip = |text: &str| text.parse::<Ipv6Addr>().expect("ipv6");
        let mut builder = RouteMessageBuilder::<Ipv6Addr>::new().output_interface(oif);
        if let Some((text, len)) = destination {
            builder = builder.destination_prefix(ip(text), len);
        }
        if let Some(gateway) = gateway {
            builder = builder.gateway(ip(gateway));
        }
        in_main_table(builder.build(), protocol)
    }

    fn in_main_table(mut message: RouteMessage, protocol: RouteProtocol) -> RouteMessage {
        message.header.protocol = protocol;
        message.header.table = RouteHeader::RT_TABLE_MAIN;
        message
    }

    fn v6(text: &str) -> IpAddr {
        text.parse().expect("ipv6")
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
                address(3, v6("fe80::858:aff:fe58:4d05"), 64),
                address(3, v6("fd00:88:77::5"), 64),
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
                route6(3, None, Some("fd00:88:77::1"), RouteProtocol::Boot),
                route6(3, Some(("fd00:88:77::", 64)), None, RouteProtocol::Kernel),
                route6(3, Some(("fe80::", 64)), None, RouteProtocol::Boot),
            ],
        }
    }

    #[test]
    fn a_dual_stack_cni_namespace_yields_eth0_with_its_addresses_and_routes_of_both_families() {
        let interfaces = interfaces_from_scan(&cni_bridge_scan());
        assert_eq!(
            interfaces,
            vec![InterfaceConfig {
                name: "eth0".into(),
                index: 3,
                mac: VETH_MAC,
                mtu: 1450,
                addresses: vec![
                    (IpAddr::V4(Ipv4Addr::new(10, 88, 77, 5)), 24),
                    (v6("fd00:88:77::5"), 64),
                ],
                routes: vec![
                    RouteConfig {
                        destination: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                        prefix_len: 0,
                        gateway: Some(IpAddr::V4(Ipv4Addr::new(10, 88, 77, 1))),
                    },
                    RouteConfig {
                        destination: IpAddr::V4(Ipv4Addr::new(192, 168, 0, 0)),
                        prefix_len: 16,
                        gateway: Some(IpAddr::V4(Ipv4Addr::new(10, 88, 77, 254))),
                    },
                    RouteConfig {
                        destination: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                        prefix_len: 0,
                        gateway: Some(v6("fd00:88:77::1")),
                    },
                ],
            }]
        );
    }

    #[test]
    fn links_with_only_a_link_local_address_or_routes_in_other_tables_are_left_out() {
        let mut scan = cni_bridge_scan();
        scan.addresses
            .retain(|a| a.header.index != 3 || a.header.family == AddressFamily::Inet6);
        assert_eq!(
            interfaces_from_scan(&scan)[0].addresses,
            vec![(v6("fd00:88:77::5"), 64)],
            "an IPv6-only pod keeps its global address"
        );
        scan.addresses.retain(|a| {
            !a.attributes
                .contains(&AddressAttribute::Address(v6("fd00:88:77::5")))
        });
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
        assert_eq!(request.addresses[1].address, "fd00:88:77::5");
        assert_eq!(request.routes[2].destination, "::");
        assert_eq!(request.routes[2].gateway, "fd00:88:77::1");
    }
}

//! The guest's networking: loopback, and the egress NIC through which the agent reaches
//! the model store and the key broker.
//!
//! The egress NIC is QEMU user networking (slirp) with its fixed addresses
//! ([`veil_protocol::egress`]), so no DHCP client is needed: the agent assigns the
//! address, brings the link up and routes everything through slirp's gateway. The host
//! sees only what the agent sends: ciphertext from the store, and the key broker
//! exchange (whose secret is wrapped to a key that never leaves the guest).

use std::net::Ipv4Addr;

use futures_util::stream::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
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
        nic = %link_name(nic),
        %address,
        gateway = %Ipv4Addr::from(egress::HOST_ADDRESS),
        "egress network configured"
    );
    Ok(())
}

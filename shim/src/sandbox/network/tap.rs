//! The tap side of a pod NIC: creating the tap in the pod namespace and the tc ingress
//! qdiscs with `mirred egress redirect` filters that join it to the veth, both ways.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use futures_util::stream::TryStreamExt;
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::packet_route::tc::TcHandle;
use rtnetlink::{Handle, LinkUnspec};

use super::{request, InterfaceConfig, PodNetworkError, INGRESS_HANDLE, TAP_SUFFIX};

/// A tap the shim created in the pod namespace, with the veth it mirrors.
#[derive(Debug)]
pub(super) struct Tap {
    pub(super) name: String,
    pub(super) veth_index: u32,
    pub(super) fd: Arc<OwnedFd>,
}

/// The NIC number in a tap name (`tap3_veil` -> `3`).
pub(super) fn interface_number(tap_name: &str) -> &str {
    tap_name
        .strip_prefix("tap")
        .and_then(|rest| rest.strip_suffix(TAP_SUFFIX))
        .unwrap_or("0")
}

/// Creates tap `tap<number>_veil` for `interface` and the redirects both ways.
pub(super) async fn connect_tap(
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
pub(super) async fn remove_taps(handle: &Handle, taps: &[Tap]) {
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

    #[test]
    fn tap_names_number_the_nics_and_tc_gets_eth_p_all_in_network_order() {
        assert_eq!(interface_number("tap0_veil"), "0");
        assert_eq!(interface_number("tap12_veil"), "12");
        assert_eq!(eth_p_all().to_ne_bytes(), [0x00, 0x03]);
        assert_eq!(std::mem::size_of::<TunRequest>(), 40);
    }
}

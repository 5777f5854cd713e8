//! QEMU's side of a pod NIC: a tap the shim opened in the pod's network namespace
//! (`crate::sandbox::network`), handed to QEMU as an inherited file descriptor, and the
//! virtio-net device the guest sees with the pod veth's MAC.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use veil_config::HypervisorConfig;

use super::qemu::{is_microvm, virtio};

/// One pod NIC of a VM.
#[derive(Debug, Clone)]
pub struct PodNic {
    /// QEMU netdev id (`pod0`, `pod1`, ...).
    pub id: String,
    /// The tap's queue descriptor (`IFF_VNET_HDR`); QEMU inherits it.
    pub tap: Arc<OwnedFd>,
    /// The guest NIC's MAC (the pod veth's), `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
}

impl PodNic {
    /// The descriptor number QEMU is told about (the same in the child: it is inherited).
    pub fn fd(&self) -> RawFd {
        self.tap.as_raw_fd()
    }
}

/// Where the host kernel's vhost-net device is.
pub const VHOST_NET_DEVICE: &str = "/dev/vhost-net";

/// Whether pod NICs get vhost-net: configured, under KVM (QEMU cannot use vhost under TCG)
/// and with the host's device present.
pub fn use_vhost_net(config: &HypervisorConfig, kvm: bool, device_present: bool) -> bool {
    config.vhost_net && kvm && device_present
}

/// QEMU arguments for the pod NICs: `-netdev tap,fd=N` (with `vhost=on` when `vhost`: the
/// host kernel then moves the packets, not QEMU's main loop) and a virtio-net device on the
/// machine's transport (PCI on q35, MMIO on microvm). PCI NICs get no option ROM: the
/// guest boots without network firmware.
pub fn pod_nic_devices(config: &HypervisorConfig, nics: &[PodNic], vhost: bool) -> Vec<String> {
    let rom = if is_microvm(config) { "" } else { ",romfile=" };
    let vhost = if vhost { ",vhost=on" } else { "" };
    nics.iter()
        .flat_map(|nic| {
            [
                "-netdev".to_string(),
                format!("tap,id={},fd={}{vhost}", nic.id, nic.fd()),
                "-device".to_string(),
                format!(
                    "{},netdev={},mac={}{rom}",
                    virtio(config, "virtio-net"),
                    nic.id,
                    nic.mac
                ),
            ]
        })
        .collect()
}

/// Lets the QEMU child inherit the taps' descriptors (they are close-on-exec in the shim,
/// so no other child gets them).
pub fn inherit_taps(command: &mut tokio::process::Command, nics: &[PodNic]) {
    if nics.is_empty() {
        return;
    }
    super::inherit_fds(command, nics.iter().map(PodNic::fd).collect());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic(number: u8) -> PodNic {
        let file = std::fs::File::open("/dev/null").expect("open /dev/null");
        PodNic {
            id: format!("pod{number}"),
            tap: Arc::new(OwnedFd::from(file)),
            mac: format!("0a:58:0a:58:4d:0{number}"),
        }
    }

    #[test]
    fn q35_gets_a_pci_nic_on_the_tap_descriptor_without_option_rom() {
        let config = HypervisorConfig {
            machine: "q35".into(),
            ..HypervisorConfig::default()
        };
        let pod0 = nic(5);
        let args = pod_nic_devices(&config, std::slice::from_ref(&pod0), false).join(" ");
        assert_eq!(
            args,
            format!(
                "-netdev tap,id=pod5,fd={} -device virtio-net-pci,netdev=pod5,mac=0a:58:0a:58:4d:05,romfile=",
                pod0.fd()
            )
        );
    }

    #[test]
    fn microvm_gets_an_mmio_nic_per_pod_interface() {
        let config = HypervisorConfig {
            machine: "microvm,acpi=on".into(),
            ..HypervisorConfig::default()
        };
        let nics = [nic(0), nic(1)];
        let args = pod_nic_devices(&config, &nics, false);
        assert_eq!(
            args,
            vec![
                "-netdev".to_string(),
                format!("tap,id=pod0,fd={}", nics[0].fd()),
                "-device".to_string(),
                "virtio-net-device,netdev=pod0,mac=0a:58:0a:58:4d:00".to_string(),
                "-netdev".to_string(),
                format!("tap,id=pod1,fd={}", nics[1].fd()),
                "-device".to_string(),
                "virtio-net-device,netdev=pod1,mac=0a:58:0a:58:4d:01".to_string(),
            ]
        );
        assert!(pod_nic_devices(&config, &[], true).is_empty());
    }

    #[test]
    fn vhost_net_is_asked_for_only_under_kvm_with_the_device_and_the_setting() {
        let config = HypervisorConfig::default();
        assert!(use_vhost_net(&config, true, true));
        assert!(!use_vhost_net(&config, false, true), "never under TCG");
        assert!(
            !use_vhost_net(&config, true, false),
            "not without /dev/vhost-net"
        );
        let off = HypervisorConfig {
            vhost_net: false,
            ..HypervisorConfig::default()
        };
        assert!(!use_vhost_net(&off, true, true));
        let pod0 = nic(2);
        let args = pod_nic_devices(&config, std::slice::from_ref(&pod0), true);
        assert_eq!(args[1], format!("tap,id=pod2,fd={},vhost=on", pod0.fd()));
    }

    #[tokio::test]
    async fn the_child_inherits_the_tap_descriptor() {
        let pod0 = nic(0);
        let mut command = tokio::process::Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(format!("test -e /proc/self/fd/{}", pod0.fd()));
        inherit_taps(&mut command, std::slice::from_ref(&pod0));
        let status = command.status().await.expect("run sh");
        assert!(status.success(), "descriptor {} not inherited", pod0.fd());
        let mut plain = tokio::process::Command::new("/bin/sh");
        plain
            .arg("-c")
            .arg(format!("test -e /proc/self/fd/{}", pod0.fd()));
        assert!(!plain.status().await.expect("run sh").success());
    }
}

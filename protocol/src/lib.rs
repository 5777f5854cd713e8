//! The shim-agent API: protobuf messages and the ttrpc `AgentService`, shared by
//! `containerd-shim-veil-v2` (client) and `veil-agent` (server).
//!
//! The definitions live in `proto/agent.proto`; `build.rs` compiles them with
//! `ttrpc-codegen` (pure Rust, no protoc needed).

#![allow(missing_docs)]

mod generated {
    #![allow(clippy::all, clippy::pedantic, unsafe_code, unused_qualifications)]
    include!(concat!(env!("OUT_DIR"), "/mod.rs"));
    #[allow(unused_imports, dead_code, non_camel_case_types, non_snake_case)]
    pub mod agent_ttrpc {
        include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
    }
}

pub mod delivery;
mod error_context;
mod path_error;
pub mod rootfs;

pub use error_context::in_context;
pub use generated::agent::*;
pub use generated::agent_ttrpc::{create_agent_service, AgentService, AgentServiceClient};
pub use path_error::PathError;
pub use protobuf;
pub use ttrpc;

/// Name of the virtio-serial port that carries the agent channel.
pub const SERIAL_PORT_NAME: &str = "veil.agent";
/// vsock port the agent listens on where the host has vhost-vsock.
pub const VSOCK_PORT: u32 = 1024;
/// 9p mount tag of the per-sandbox directory the shim shares with the guest.
pub const SHARED_FS_TAG: &str = "veilshare";
/// Where the agent mounts the shared directory inside the guest.
pub const GUEST_SHARED_DIR: &str = "/run/veil/shared";
/// Where the agent mounts memory volumes (one tmpfs per name) inside the guest.
pub const GUEST_VOLUMES_DIR: &str = "/run/veil/volumes";
/// The memory volume holding a pod's `/dev/shm`, which containerd's CRI binds from a tmpfs
/// of the node's; a Kubernetes volume name has no dot, so no pod volume can take it.
pub const POD_SHM_VOLUME: &str = "veil.shm";
/// The block size of a reader's rootfs image and of its dm-verity hash tree
/// ([`RootfsImage`]): the shim makes both with it, the agent's verity table reads with it.
pub const ROOTFS_IMAGE_BLOCK_SIZE: u64 = 4096;

/// Whether `name` can name a memory volume (a directory under [`GUEST_VOLUMES_DIR`]).
pub fn is_valid_volume_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

/// Kernel command-line word that tells the agent its VM runs under QEMU's TCG (emulation,
/// no KVM), where translated code is cached by address (see veil-container's
/// `address_layout`). Never set under KVM, so never in an SEV-SNP measurement.
pub const EMULATED_CMDLINE_WORD: &str = "veil.accel=tcg";

/// Kernel command-line word that tells the agent the shared directory (tag
/// [`SHARED_FS_TAG`]) is a virtio-fs device; without it, it is virtio-9p.
pub const VIRTIOFS_CMDLINE_WORD: &str = "veil.share=virtiofs";

/// The guest's egress to the model store and the key broker: QEMU user networking
/// (slirp), whose fixed addresses both sides rely on. The agent gives its NIC
/// [`EGRESS_GUEST_ADDRESS`]; slirp answers for the node's loopback at [`EGRESS_HOST_ADDRESS`]
/// and relays DNS at [`EGRESS_DNS_ADDRESS`].
pub mod egress {
    /// Kernel command-line word that tells the agent the VM has an egress NIC.
    pub const CMDLINE_WORD: &str = "veil.egress=user";
    /// The guest's address on the user network.
    pub const GUEST_ADDRESS: [u8; 4] = [10, 0, 2, 15];
    /// Prefix length of the user network.
    pub const PREFIX_LEN: u8 = 24;
    /// The gateway, which is also how the guest reaches the node's 127.0.0.1.
    pub const HOST_ADDRESS: [u8; 4] = [10, 0, 2, 2];
    /// slirp's DNS relay.
    pub const DNS_ADDRESS: [u8; 4] = [10, 0, 2, 3];
    /// MAC address of the egress NIC, by which the agent finds it among the VM's NICs.
    pub const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x76, 0x65, 0x01];

    /// [`MAC`] as QEMU and `ip link` write it.
    pub fn mac_string() -> String {
        MAC.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_egress_mac_prints_like_ip_link() {
        assert_eq!(egress::mac_string(), "52:54:00:76:65:01");
    }
    use protobuf::Message;

    #[test]
    fn create_request_round_trips_through_the_wire_format() {
        let request = CreateContainerRequest {
            container_id: "c1".into(),
            oci_spec_json: br#"{"ociVersion":"1.0.2"}"#.to_vec(),
            rootfs: "/run/veil/shared/c1/rootfs".into(),
            stdio: protobuf::MessageField::some(Stdio {
                stdin: true,
                stdout: true,
                terminal: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        let bytes = request.write_to_bytes().expect("encode");
        let decoded = CreateContainerRequest::parse_from_bytes(&bytes).expect("decode");
        assert_eq!(decoded, request);
    }

    #[test]
    fn wait_response_keeps_large_timestamps() {
        let response = WaitProcessResponse {
            exit_status: 137,
            exited_at_unix_us: u64::MAX - 1,
            ..Default::default()
        };
        let bytes = response.write_to_bytes().expect("encode");
        assert_eq!(
            WaitProcessResponse::parse_from_bytes(&bytes).expect("decode"),
            response
        );
    }

    #[test]
    fn stats_response_round_trips_with_unlimited_maxima() {
        let response = StatsContainerResponse {
            cpu: protobuf::MessageField::some(CpuStats {
                usage_usec: 1500,
                ..Default::default()
            }),
            memory: protobuf::MessageField::some(MemoryStats {
                current: 4096,
                max: u64::MAX,
                stat: [("inactive_file".to_string(), 512u64)]
                    .into_iter()
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let bytes = response.write_to_bytes().expect("encode");
        assert_eq!(
            StatsContainerResponse::parse_from_bytes(&bytes).expect("decode"),
            response
        );
    }
}

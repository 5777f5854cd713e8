//! Refusing a delivery early when the model cannot fit, instead of failing with ENOSPC
//! (or the guest running out of memory) minutes into the decryption.
//!
//! The plaintext size follows exactly from the ciphertext size and the key's segment
//! layout ([`veil_seal::StreamingParams::plaintext_len_of`]), so it is known once the store
//! said how long the sealed model is and the key was released. It must fit twice over:
//!
//! * in the volume's free space (`statvfs`): the tmpfs size limit
//!   (`io.veil.volume.<name>.size-limit`, Kubernetes' emptyDir `sizeLimit`);
//! * in the guest's available memory (`MemAvailable`, less a reserve for the decrypting
//!   pipeline and the serving process). A tmpfs accepts a size limit larger than the VM's
//!   RAM and only fails when the pages run out, at which point the guest kernel kills
//!   processes instead of returning ENOSPC: veil does not let a delivery overcommit, and
//!   says which of the two (size limit or VM memory) to raise.
//!
//! For `unpack: tar` / `tar.gz` the archive and its unpacked files are in the volume at
//! the same time, so the archive's size is a lower bound of what is needed; the check then
//! says so.

use std::path::Path;

use veil_protocol::delivery::Unpack;
use veil_seal::Keyset;

/// Memory the guest keeps for everything but the plaintext: the agent's decrypting
/// pipeline (a few segments per worker), the serving container's process, page tables.
pub const MEMORY_RESERVE_BYTES: u64 = 48 << 20;
const MIB: u64 = 1 << 20;

/// What the volume and the guest can still hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// Free bytes in the volume (for an unprivileged writer).
    pub volume_free: u64,
    /// The guest's `MemAvailable` less [`MEMORY_RESERVE_BYTES`]; `None` when unknown.
    pub memory_available: Option<u64>,
}

/// The model does not fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpaceError {
    /// The volume's size limit is too small.
    #[error("the sealed model needs {needed} MiB{bound} but volume {volume} has {free} MiB free: raise the emptyDir sizeLimit (annotation io.veil.volume.{volume}.size-limit) and the VM memory (hypervisor.memory_mib in the veil configuration) with it")]
    Volume {
        /// Volume name.
        volume: String,
        /// MiB needed (rounded up).
        needed: u64,
        /// " at least (the archive and its unpacked files share the volume)" for tar.
        bound: &'static str,
        /// MiB free (rounded down).
        free: u64,
    },
    /// The VM's memory is too small, whatever the size limit says.
    #[error("the sealed model needs {needed} MiB{bound} but the VM has {available} MiB of memory to spare (volume {volume}'s size limit is larger than that, and a tmpfs cannot hold more than the VM's RAM): raise the VM memory (hypervisor.memory_mib in the veil configuration)")]
    Memory {
        /// Volume name.
        volume: String,
        /// MiB needed (rounded up).
        needed: u64,
        /// As for [`SpaceError::Volume`].
        bound: &'static str,
        /// MiB available (rounded down).
        available: u64,
    },
    /// The volume's free space could not be read.
    #[error("statvfs {path}: {source}")]
    Statvfs {
        /// The volume's directory.
        path: String,
        /// Why.
        source: nix::errno::Errno,
    },
}

/// Plaintext bytes of a `ciphertext_bytes` long sealed model under the smallest layout any
/// enabled key of `keyset` allows (so a refusal is never wrong); `None` when no key's
/// layout matches the length (the decryption will then report the stream as malformed).
pub fn plaintext_bytes(ciphertext_bytes: u64, keyset: &Keyset) -> Option<u64> {
    keyset
        .enabled_keys()
        .filter_map(|key| key.params().plaintext_len_of(ciphertext_bytes))
        .min()
}

/// Bytes the volume must take for `plaintext` bytes unpacked as `unpack`, and whether that
/// is only a lower bound.
pub fn needed_bytes(plaintext: u64, unpack: Unpack) -> (u64, bool) {
    match unpack {
        Unpack::None => (plaintext, false),
        Unpack::Tar | Unpack::TarGz => (plaintext, true),
    }
}

/// Checks that `needed` bytes (a lower bound when `lower_bound`) fit `room`.
pub fn check_fits(
    volume: &str,
    needed: u64,
    lower_bound: bool,
    room: Room,
) -> Result<(), SpaceError> {
    let bound = if lower_bound {
        " at least (the archive and its unpacked files share the volume)"
    } else {
        ""
    };
    let needed_mib = needed.div_ceil(MIB);
    if needed > room.volume_free {
        return Err(SpaceError::Volume {
            volume: volume.to_string(),
            needed: needed_mib,
            bound,
            free: room.volume_free / MIB,
        });
    }
    match room.memory_available {
        Some(available) if needed > available => Err(SpaceError::Memory {
            volume: volume.to_string(),
            needed: needed_mib,
            bound,
            available: available / MIB,
        }),
        _ => Ok(()),
    }
}

/// The room left in the volume at `dir` and in the guest's memory.
pub fn room(dir: &Path) -> Result<Room, SpaceError> {
    let stats = nix::sys::statvfs::statvfs(dir).map_err(|source| SpaceError::Statvfs {
        path: dir.display().to_string(),
        source,
    })?;
    let volume_free = stats
        .blocks_available()
        .saturating_mul(stats.fragment_size());
    let memory_available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| mem_available(&text))
        .map(|bytes| bytes.saturating_sub(MEMORY_RESERVE_BYTES));
    Ok(Room {
        volume_free,
        memory_available,
    })
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let kib = line
            .strip_prefix("MemAvailable:")?
            .trim()
            .strip_suffix("kB")?;
        kib.trim().parse::<u64>().ok().map(|k| k * 1024)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_seal::KeyTemplate;

    #[test]
    fn the_plaintext_size_follows_from_the_ciphertext_size() {
        for template in [KeyTemplate::Aes256GcmHkdf1Mb, KeyTemplate::Aes128GcmHkdf4Kb] {
            let keyset = Keyset::generate(template).expect("keyset");
            let params = *keyset.primary().expect("primary").params();
            for plaintext in [0u64, 1, 4 << 20, (256 << 20) + 17] {
                let ciphertext = params.ciphertext_len(plaintext).expect("length");
                assert_eq!(
                    plaintext_bytes(ciphertext, &keyset),
                    Some(plaintext),
                    "{template} {plaintext}"
                );
            }
        }
    }

    #[test]
    fn a_length_no_key_can_produce_is_unknown() {
        let keyset = Keyset::generate(KeyTemplate::Aes256GcmHkdf1Mb).expect("keyset");
        assert_eq!(plaintext_bytes(3, &keyset), None);
    }

    #[test]
    fn a_model_bigger_than_the_volume_is_refused_naming_the_size_limit() {
        let room = Room {
            volume_free: 1 << 20,
            memory_available: Some(400 << 20),
        };
        let error = check_fits("model", 4 << 20, false, room).expect_err("too big");
        let text = error.to_string();
        assert!(
            text.contains("needs 4 MiB but volume model has 1 MiB free")
                && text.contains("io.veil.volume.model.size-limit")
                && text.contains("hypervisor.memory_mib"),
            "{text}"
        );
        assert!(!text.contains("at least"), "{text}");
    }

    #[test]
    fn an_archive_check_says_it_is_a_lower_bound() {
        let (needed, lower_bound) = needed_bytes(4 << 20, Unpack::TarGz);
        let room = Room {
            volume_free: 2 << 20,
            memory_available: None,
        };
        let text = check_fits("model", needed, lower_bound, room)
            .expect_err("too big")
            .to_string();
        assert!(text.contains("needs 4 MiB at least"), "{text}");
    }

    #[test]
    fn a_size_limit_beyond_the_vms_memory_does_not_let_the_model_overcommit() {
        // A tmpfs with a 4 GiB limit in a VM with 300 MiB to spare.
        let room = Room {
            volume_free: 4 << 30,
            memory_available: Some(300 << 20),
        };
        let text = check_fits("model", 512 << 20, false, room)
            .expect_err("too big for the VM")
            .to_string();
        assert!(
            text.contains("needs 512 MiB but the VM has 300 MiB")
                && text.contains("hypervisor.memory_mib"),
            "{text}"
        );
        check_fits("model", 200 << 20, false, room).expect("fits");
    }

    #[test]
    fn exactly_full_fits() {
        let room = Room {
            volume_free: 8 << 20,
            memory_available: Some(8 << 20),
        };
        check_fits("model", 8 << 20, false, room).expect("fits");
    }

    #[test]
    fn reads_mem_available_and_statvfs() {
        let meminfo = "MemTotal:         500000 kB\nMemFree:          400000 kB\nMemAvailable:     450000 kB\n";
        assert_eq!(mem_available(meminfo), Some(450_000 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
        let dir = tempfile::tempdir().expect("tempdir");
        let room = room(dir.path()).expect("room");
        assert!(room.volume_free > 0);
    }
}

//! The delivery steps, in order: network, fetch, attest (key release), decrypt + verify,
//! unpack, seal the volume read-only. Each step's failure says which step failed and what
//! to check; every failure empties the volume.

use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::mount::{mount, MsFlags};
use tokio::sync::watch;
use veil_kbs_client::{Attester, ClientError, KbsClientConfig, SampleClaims, Zeroizing};
use veil_seal::{DecryptError, DecryptOptions, Keyset};

use super::fetch::{self, FetchError, ProgressReader};
use super::space::{self, SpaceError};
use super::unpack::{unpack_archive, UnpackError};
use veil_protocol::delivery::{Plan, PlanError, Unpack};

/// Where the archive waits between decrypt and unpack (hidden, removed after unpacking).
const ARCHIVE_NAME: &str = ".veil-model-archive";
/// The guest device of the SEV-SNP firmware's guest interface.
const SEV_GUEST_DEVICE: &str = "/dev/sev-guest";

/// A delivery step failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The declaration is malformed.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Another declaration already targets the volume.
    #[error("volume {volume} already has a different model delivery; one delivery per volume")]
    Conflict {
        /// The volume.
        volume: String,
    },
    /// The egress network is not up.
    #[error("model delivery failed at step network: {0}")]
    Network(String),
    /// The sealed model could not be fetched.
    #[error("model delivery failed at step fetch: {0}; check io.veil.model.source and that the store is reachable from the VM")]
    Fetch(#[source] FetchError),
    /// The declared CA for https:// URLs is unusable.
    #[error("model delivery failed at step fetch: {0}")]
    TrustedCa(#[source] super::tls::TrustedCaError),
    /// The model cannot fit in the volume or the VM's memory.
    #[error("model delivery failed at step fetch: {0}")]
    Space(#[source] SpaceError),
    /// The key broker did not release the key.
    #[error("model delivery failed at step attest: key {resource} from {kbs}: {source}")]
    Key {
        /// Broker URL.
        kbs: String,
        /// Resource path.
        resource: String,
        /// The client's error (the broker's problem detail when it refused); boxed, it
        /// carries the whole problem document.
        #[source]
        source: Box<ClientError>,
    },
    /// The broker's TLS certificate is not trusted (not retried).
    #[error("model delivery failed at step attest: key {resource} from {kbs}: {source}; for a private CA, give its certificate in io.veil.model.ca")]
    UntrustedKeyBroker {
        /// Broker URL.
        kbs: String,
        /// Resource path.
        resource: String,
        /// The client's error.
        #[source]
        source: Box<ClientError>,
    },
    /// The released secret is not a keyset.
    #[error("model delivery failed at step attest: the broker released {resource}, but it is not a Tink keyset ({detail}); store the model's keyset JSON at that path")]
    Keyset {
        /// Resource path.
        resource: String,
        /// Parser's complaint.
        detail: String,
    },
    /// Decryption failed (tampered ciphertext, wrong key or associated data, or the
    /// download broke off).
    #[error("model delivery failed at step decrypt: {0}")]
    Decrypt(#[source] DecryptError),
    /// The volume filled up while writing (the model's size was not known in advance, or an
    /// archive unpacked into more than the room left).
    #[error("model delivery failed at step {step}: volume {volume} is full ({detail}): raise the emptyDir sizeLimit (annotation io.veil.volume.{volume}.size-limit) and the VM memory (hypervisor.memory_mib in the veil configuration)")]
    VolumeFull {
        /// The step.
        step: &'static str,
        /// Volume name.
        volume: String,
        /// The failed write.
        detail: String,
    },
    /// The plaintext is not the approved model.
    #[error("model delivery failed at step verify: {0}; check io.veil.model.sha256")]
    Verify(#[source] DecryptError),
    /// The archive could not be unpacked.
    #[error("model delivery failed at step unpack: {0}")]
    Unpack(#[source] UnpackError),
    /// The volume could not be prepared or sealed.
    #[error("model delivery failed at step {step}: volume {volume}: {source}")]
    Volume {
        /// The step.
        step: &'static str,
        /// Volume directory.
        volume: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What a successful delivery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Plaintext bytes written.
    pub plaintext_bytes: u64,
    /// SHA-256 of the plaintext, hex.
    pub sha256: String,
}

/// The attester this guest can use: SEV-SNP where the firmware interface exists, else the
/// INSECURE sample attester (which a broker refuses unless its policy allows it), whose
/// self-reported host data is the declaration's digest.
pub fn choose_attester(plan: &Plan) -> Attester {
    if Path::new(SEV_GUEST_DEVICE).exists() {
        // The VM must have been launched for this declaration (see shim's hypervisor::snp).
        Attester::Snp {
            vmpl: 0,
            expected_host_data: Some(plan.host_data),
        }
    } else {
        tracing::warn!(
            insecure = true,
            "no {SEV_GUEST_DEVICE}: attesting with the INSECURE sample attester; a broker releases keys to it only if its policy allows sample"
        );
        Attester::Sample(SampleClaims {
            measurement: String::new(),
            host_data: plan.declaration_digest.clone(),
        })
    }
}

async fn wait_for_network(
    network: Option<watch::Receiver<Option<Result<(), String>>>>,
) -> Result<(), DeliveryError> {
    let Some(mut network) = network else {
        return Ok(());
    };
    let result = network
        .wait_for(Option::is_some)
        .await
        .map(|r| r.clone())
        .map_err(|_| DeliveryError::Network("the network set-up task ended".into()))?;
    match result {
        Some(Err(error)) => Err(DeliveryError::Network(error)),
        _ => Ok(()),
    }
}

/// Runs the whole delivery; on failure the volume is emptied.
pub async fn deliver(
    plan: Plan,
    volume_dir: PathBuf,
    network: Option<watch::Receiver<Option<Result<(), String>>>>,
) -> Result<DeliveryReport, DeliveryError> {
    let started = Instant::now();
    tracing::info!(volume = %plan.volume, source = %plan.source, kbs = %plan.kbs_url, "delivery.started");
    let outcome = match wait_for_network(network).await {
        Ok(()) => {
            let dir = volume_dir.clone();
            tokio::task::spawn_blocking(move || deliver_blocking(&plan, &dir))
                .await
                .unwrap_or_else(|join| {
                    Err(DeliveryError::Network(format!(
                        "delivery worker failed: {join}"
                    )))
                })
        }
        Err(error) => Err(error),
    };
    match &outcome {
        Ok(report) => tracing::info!(
            volume = %volume_dir.display(),
            bytes = report.plaintext_bytes,
            sha256 = %report.sha256,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "delivery.ready"
        ),
        Err(error) => {
            let left_in_volume = empty_volume(&volume_dir);
            tracing::error!(volume = %volume_dir.display(), left_in_volume, %error, "delivery.failed");
        }
    }
    outcome
}

fn deliver_blocking(plan: &Plan, volume_dir: &Path) -> Result<DeliveryReport, DeliveryError> {
    let started = Instant::now();
    // Opened before attesting, so an unreachable store fails fast and costs the broker nothing.
    let roots =
        super::tls::root_certs(plan.trusted_ca_pem.as_deref()).map_err(DeliveryError::TrustedCa)?;
    let fetched = fetch::open(&plan.source, &roots).map_err(DeliveryError::Fetch)?;
    tracing::info!(length = ?fetched.length, elapsed_ms = started.elapsed().as_millis() as u64, "delivery.fetch.opened");
    let keyset = release_keyset(plan, &roots)?;
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "delivery.key.released"
    );
    check_room(plan, fetched.length, &keyset, volume_dir)?;
    let plaintext_path = match plan.unpack {
        Unpack::None => volume_dir.join(&plan.path),
        Unpack::Tar | Unpack::TarGz => volume_dir.join(ARCHIVE_NAME),
    };
    if let Some(parent) = plaintext_path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| DeliveryError::Volume {
            step: "decrypt",
            volume: volume_dir.to_path_buf(),
            source,
        })?;
    }
    let report = decrypt_with_retries(plan, &roots, fetched, &keyset, &plaintext_path)?;
    drop(keyset);
    tracing::info!(
        bytes = report.plaintext_bytes,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "delivery.decrypted"
    );
    if plan.unpack != Unpack::None {
        let target = volume_dir.join(&plan.path);
        let entries = unpack_archive(&plaintext_path, plan.unpack == Unpack::TarGz, &target)
            .map_err(|error| unpack_failed(plan, error))?;
        std::fs::remove_file(&plaintext_path).map_err(|source| DeliveryError::Volume {
            step: "unpack",
            volume: volume_dir.to_path_buf(),
            source,
        })?;
        tracing::info!(
            entries,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "delivery.unpacked"
        );
    }
    seal_read_only(volume_dir)?;
    Ok(report)
}

/// Refuses before decrypting when the plaintext cannot fit (see [`space`]). A store that
/// did not say the length gets no check: a full volume then fails the decrypt step.
fn check_room(
    plan: &Plan,
    ciphertext_bytes: Option<u64>,
    keyset: &Keyset,
    volume_dir: &Path,
) -> Result<(), DeliveryError> {
    let Some(ciphertext_bytes) = ciphertext_bytes else {
        tracing::warn!(volume = %plan.volume, "the store did not say the sealed model's length; its fit in the volume is not checked in advance");
        return Ok(());
    };
    let Some(plaintext) = space::plaintext_bytes(ciphertext_bytes, keyset) else {
        // No key's layout gives this length: decryption will name the broken stream.
        return Ok(());
    };
    let (needed, lower_bound) = space::needed_bytes(plaintext, plan.unpack);
    let room = space::room(volume_dir).map_err(DeliveryError::Space)?;
    tracing::info!(volume = %plan.volume, needed, lower_bound, volume_free = room.volume_free, memory_available = ?room.memory_available, "delivery.space.checked");
    space::check_fits(&plan.volume, needed, lower_bound, room).map_err(DeliveryError::Space)
}

fn is_no_space(error: &std::io::Error) -> bool {
    error.raw_os_error() == Some(libc::ENOSPC)
}

fn volume_full(plan: &Plan, step: &'static str, detail: String) -> DeliveryError {
    DeliveryError::VolumeFull {
        step,
        volume: plan.volume.clone(),
        detail,
    }
}

fn unpack_failed(plan: &Plan, error: UnpackError) -> DeliveryError {
    match &error {
        UnpackError::Entry { source, .. } if is_no_space(source) => {
            volume_full(plan, "unpack", error.to_string())
        }
        _ => DeliveryError::Unpack(error),
    }
}

fn release_keyset(plan: &Plan, roots: &ureq::tls::RootCerts) -> Result<Keyset, DeliveryError> {
    let config = KbsClientConfig {
        // The broker's host name resolves like the store's: not through glibc's NSS.
        resolver: Some(std::sync::Arc::new(super::resolve::GuestResolver::system())),
        root_certs: Some(roots.clone()),
        ..KbsClientConfig::new(plan.kbs_url.clone(), choose_attester(plan))
    };
    let mut attempt = 1;
    let secret: Zeroizing<Vec<u8>> = loop {
        match veil_kbs_client::fetch_resource(&config, &plan.key_resource) {
            Ok(secret) => break secret,
            Err(ClientError::Transport { url, reason }) if attempt < fetch::ATTEMPTS => {
                tracing::warn!(%url, %reason, attempt, "key broker unreachable; retrying");
                std::thread::sleep(std::time::Duration::from_millis(500 << attempt));
                attempt += 1;
            }
            Err(source @ ClientError::UntrustedCertificate { .. }) => {
                return Err(DeliveryError::UntrustedKeyBroker {
                    kbs: plan.kbs_url.clone(),
                    resource: plan.key_resource.clone(),
                    source: Box::new(source),
                })
            }
            Err(source) => {
                return Err(DeliveryError::Key {
                    kbs: plan.kbs_url.clone(),
                    resource: plan.key_resource.clone(),
                    source: Box::new(source),
                })
            }
        }
    };
    Keyset::parse(&secret).map_err(|e| DeliveryError::Keyset {
        resource: plan.key_resource.clone(),
        detail: e.to_string(),
    })
}

fn decrypt_with_retries(
    plan: &Plan,
    roots: &ureq::tls::RootCerts,
    mut fetched: fetch::Fetched,
    keyset: &Keyset,
    dest: &Path,
) -> Result<DeliveryReport, DeliveryError> {
    let mut attempt = 1;
    loop {
        let options = DecryptOptions {
            expected_sha256: plan.sha256,
            // Sized in advance, the model's file gets the volume's huge pages.
            sealed_len: fetched.length,
            ..Default::default()
        };
        let source = ProgressReader::new(fetched.reader, fetched.length);
        match veil_seal::decrypt_to_file(source, keyset, &plan.associated_data, dest, &options) {
            Ok(report) => {
                return Ok(DeliveryReport {
                    plaintext_bytes: report.plaintext_bytes,
                    // The agent never skips the digest: it is always computed.
                    sha256: report.sha256_hex().unwrap_or_default(),
                });
            }
            // The download broke off: the partial plaintext is gone, fetch it again.
            Err(DecryptError::Read { offset, source }) if attempt < fetch::ATTEMPTS => {
                tracing::warn!(offset, error = %source, attempt, "reading the sealed model failed; fetching again");
                attempt += 1;
                fetched = fetch::open(&plan.source, roots).map_err(DeliveryError::Fetch)?;
            }
            Err(error @ DecryptError::DigestMismatch { .. }) => {
                return Err(DeliveryError::Verify(error))
            }
            Err(DecryptError::Write { path, source }) if is_no_space(&source) => {
                let detail = match path {
                    Some(path) => format!("write {}: {source}", path.display()),
                    None => source.to_string(),
                };
                return Err(volume_full(plan, "decrypt", detail));
            }
            Err(error) => return Err(DeliveryError::Decrypt(error)),
        }
    }
}

/// Remounts the volume read-only, so no container can change the verified model.
fn seal_read_only(volume_dir: &Path) -> Result<(), DeliveryError> {
    mount(
        None::<&str>,
        volume_dir,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|errno| DeliveryError::Volume {
        step: "seal",
        volume: volume_dir.to_path_buf(),
        source: errno.into(),
    })
}

/// Removes everything in the volume (not the mount point itself); returns how many
/// entries are still there afterwards (0 unless a removal failed), for the log.
fn empty_volume(volume_dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(volume_dir) else {
        return 0;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let removed = if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(error) = removed {
            tracing::error!(path = %path.display(), %error, "could not empty the volume after a failed delivery");
        }
    }
    std::fs::read_dir(volume_dir).map_or(0, |entries| entries.count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_protocol::ModelDelivery;
    use veil_seal::KeyTemplate;

    fn plan(unpack: &str) -> Plan {
        Plan::parse(&ModelDelivery {
            volume: "model".into(),
            source_url: "http://10.0.2.2:8000/model.sealed".into(),
            kbs_url: "http://10.0.2.2:8080".into(),
            key_resource: "models/key/demo".into(),
            unpack: unpack.into(),
            ..Default::default()
        })
        .expect("plan")
    }

    /// A 1 MiB tmpfs, as a `size-limit: 1Mi` memory volume is in the guest.
    struct SmallVolume {
        dir: tempfile::TempDir,
    }

    impl SmallVolume {
        fn mount() -> SmallVolume {
            if !nix::unistd::geteuid().is_root() {
                panic!("this test mounts a tmpfs: run it as root (make test does)");
            }
            let dir = tempfile::tempdir().expect("tempdir");
            mount(
                Some("veil-test"),
                dir.path(),
                Some("tmpfs"),
                MsFlags::empty(),
                Some("size=1m"),
            )
            .expect("mount tmpfs");
            SmallVolume { dir }
        }
    }

    impl Drop for SmallVolume {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }

    #[test]
    fn a_model_bigger_than_the_volume_is_refused_before_decrypting() {
        let volume = SmallVolume::mount();
        let keyset = Keyset::generate(KeyTemplate::Aes256GcmHkdf1Mb).expect("keyset");
        let params = *keyset.primary().expect("primary").params();
        let ciphertext = params.ciphertext_len(4 << 20).expect("length");
        let error = check_room(&plan("none"), Some(ciphertext), &keyset, volume.dir.path())
            .expect_err("does not fit");
        let text = error.to_string();
        assert!(
            text.starts_with("model delivery failed at step fetch: the sealed model needs 4 MiB but volume model has 1 MiB free")
                && text.contains("io.veil.volume.model.size-limit"),
            "{text}"
        );
        let small = params.ciphertext_len(100 << 10).expect("length");
        check_room(&plan("tar.gz"), Some(small), &keyset, volume.dir.path()).expect("fits");
        // An unknown length is not checked in advance.
        check_room(&plan("none"), None, &keyset, volume.dir.path()).expect("unchecked");
    }

    #[test]
    fn a_failed_delivery_leaves_nothing_in_the_volume() {
        let volume = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(volume.path().join("m/sub")).expect("mkdir");
        std::fs::write(volume.path().join("m/sub/weights"), b"w").expect("write");
        std::fs::write(volume.path().join(".veil-model-archive.partial"), b"x").expect("write");
        assert_eq!(empty_volume(volume.path()), 0);
        assert_eq!(std::fs::read_dir(volume.path()).expect("dir").count(), 0);
    }

    #[test]
    fn a_full_volume_while_unpacking_names_the_size_limit() {
        let error = unpack_failed(
            &plan("tar"),
            UnpackError::Entry {
                entry: "m/weights".into(),
                dir: "/run/veil/volumes/model".into(),
                source: std::io::Error::from_raw_os_error(libc::ENOSPC),
            },
        );
        let text = error.to_string();
        assert!(
            text.contains("step unpack: volume model is full")
                && text.contains("io.veil.volume.model.size-limit"),
            "{text}"
        );
        let other = unpack_failed(
            &plan("tar"),
            UnpackError::Escapes {
                entry: "../x".into(),
                dir: "/v".into(),
            },
        );
        assert!(matches!(other, DeliveryError::Unpack(_)), "{other}");
    }
}

//! Model delivery inside the guest: fetch the sealed model, attest to the owner's key
//! broker for its key, decrypt and verify it into a memory volume, unpack it, and make
//! the volume read-only. Containers that mount the volume start only after that
//! succeeded; if it failed their start fails with the step's error and the volume is
//! left empty.
//!
//! The key exists only in this process's memory (zeroized buffers), the plaintext only
//! in the volume's tmpfs, in guest RAM. Nothing secret is logged: progress lines carry
//! sizes and rates, never content.

pub mod fetch;
pub mod guard;
pub mod reader_image;
pub mod reader_isolation;
pub mod readers;
pub mod resolve;
pub mod run;
pub mod space;
pub mod tls;
pub mod unpack;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use veil_protocol::ModelDelivery;

pub use run::{DeliveryError, DeliveryReport};
pub use veil_protocol::delivery::{ApprovedReader, ExecPolicy, Plan, PlanError};

/// Where one delivery stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryState {
    /// Still running.
    Running,
    /// The model is in the volume, verified; the volume is read-only.
    Ready,
    /// It failed; the text names the step and what to do. The volume is empty.
    Failed(String),
}

struct Entry {
    declaration: ModelDelivery,
    exec: ExecPolicy,
    readers: Vec<ApprovedReader>,
    exec_commands: Vec<Vec<String>>,
    state: watch::Receiver<DeliveryState>,
}

/// The deliveries of this VM, one per target volume.
#[derive(Clone, Default)]
pub struct Deliveries {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
    network: Option<watch::Receiver<Option<Result<(), String>>>>,
}

impl Deliveries {
    /// Deliveries that first wait for the egress network to be configured (its result
    /// arrives on `network`); `None` when the VM has no egress NIC.
    pub fn new(network: Option<watch::Receiver<Option<Result<(), String>>>>) -> Self {
        Deliveries {
            entries: Arc::default(),
            network,
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the delivery into `volume_dir` unless one for the same volume runs or ran.
    /// The same declaration again is a no-op (every container of a pod carries it); a
    /// different one for a volume that already has a delivery is refused.
    pub fn start(
        &self,
        declaration: &ModelDelivery,
        volume_dir: PathBuf,
    ) -> Result<(), DeliveryError> {
        let plan = Plan::parse(declaration)?;
        let mut entries = self.entries();
        if let Some(existing) = entries.get(&plan.volume) {
            if existing.declaration == *declaration {
                return Ok(());
            }
            return Err(DeliveryError::Conflict {
                volume: plan.volume,
            });
        }
        let (report, state) = watch::channel(DeliveryState::Running);
        entries.insert(
            plan.volume.clone(),
            Entry {
                declaration: declaration.clone(),
                exec: plan.exec,
                readers: plan.readers.clone(),
                exec_commands: plan.exec_commands.clone(),
                state,
            },
        );
        drop(entries);
        let network = self.network.clone();
        tokio::spawn(async move {
            let outcome = run::deliver(plan, volume_dir, network).await;
            let _ = report.send(match outcome {
                Ok(_) => DeliveryState::Ready,
                Err(error) => DeliveryState::Failed(error.to_string()),
            });
        });
        Ok(())
    }

    /// Waits for the deliveries into any of `volumes` to finish; an error carries the
    /// failed delivery's text. Volumes without a delivery do not wait.
    pub async fn wait_for(&self, volumes: &[String]) -> Result<(), String> {
        let waits: Vec<(String, watch::Receiver<DeliveryState>)> = {
            let entries = self.entries();
            volumes
                .iter()
                .filter_map(|v| entries.get(v).map(|e| (v.clone(), e.state.clone())))
                .collect()
        };
        for (volume, mut state) in waits {
            let settled = state
                .wait_for(|s| *s != DeliveryState::Running)
                .await
                .map(|s| s.clone())
                .unwrap_or_else(|_| {
                    DeliveryState::Failed(format!(
                        "model delivery into volume {volume} stopped without a result"
                    ))
                });
            if let DeliveryState::Failed(text) = settled {
                return Err(text);
            }
        }
        Ok(())
    }

    /// Whether this VM receives a model: its containers are then held to
    /// [`guard::Reach::check_sealed`].
    pub fn any(&self) -> bool {
        !self.entries().is_empty()
    }

    /// The first of `volumes` whose delivery denies an exec of `args` into the containers
    /// that can reach it (exec is denied and `args` is not one of its listed commands), if
    /// any. Empty `args` match no listed command: the volumes that deny exec at all.
    pub fn exec_denied_for<'a>(
        &self,
        volumes: impl IntoIterator<Item = &'a String>,
        args: &[String],
    ) -> Option<String> {
        let entries = self.entries();
        let denies = |e: &Entry| {
            e.exec == ExecPolicy::Deny && !e.exec_commands.iter().any(|listed| listed == args)
        };
        volumes
            .into_iter()
            .find(|v| entries.get(*v).is_some_and(denies))
            .cloned()
    }

    /// The approved readers of those of `volumes` whose owners list them.
    pub fn pinned<'a>(
        &self,
        volumes: impl IntoIterator<Item = &'a String>,
    ) -> Vec<(String, Vec<ApprovedReader>)> {
        let entries = self.entries();
        volumes
            .into_iter()
            .filter_map(|v| {
                let entry = entries.get(v).filter(|e| !e.readers.is_empty())?;
                Some((v.clone(), entry.readers.clone()))
            })
            .collect()
    }

    /// The current state of the delivery into `volume`, if there is one.
    pub fn state(&self, volume: &str) -> Option<DeliveryState> {
        self.entries().get(volume).map(|e| e.state.borrow().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declaration(kbs_url: &str) -> ModelDelivery {
        ModelDelivery {
            volume: "model".into(),
            source_url: "file:///nonexistent/model.sealed".into(),
            kbs_url: kbs_url.into(),
            key_resource: "models/key/demo".into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_failed_delivery_fails_every_waiter_with_its_step() {
        let volume = tempfile::tempdir().expect("tempdir");
        let deliveries = Deliveries::new(None);
        deliveries
            .start(
                &declaration("http://127.0.0.1:9"),
                volume.path().to_path_buf(),
            )
            .expect("start");
        // The same declaration again (the next container of the pod) is fine.
        deliveries
            .start(
                &declaration("http://127.0.0.1:9"),
                volume.path().to_path_buf(),
            )
            .expect("repeat");
        let error = deliveries
            .wait_for(&["model".to_string(), "other".to_string()])
            .await
            .expect_err("fails");
        assert!(
            error.contains("fetch") && error.contains("/nonexistent/model.sealed"),
            "{error}"
        );
        assert!(matches!(
            deliveries.state("model"),
            Some(DeliveryState::Failed(_))
        ));
        assert_eq!(deliveries.state("other"), None);
    }

    #[tokio::test]
    async fn a_different_declaration_for_the_same_volume_is_refused() {
        let volume = tempfile::tempdir().expect("tempdir");
        let deliveries = Deliveries::new(None);
        deliveries
            .start(
                &declaration("http://127.0.0.1:9"),
                volume.path().to_path_buf(),
            )
            .expect("start");
        let error = deliveries
            .start(
                &declaration("http://127.0.0.1:10"),
                volume.path().to_path_buf(),
            )
            .expect_err("conflict");
        assert!(matches!(error, DeliveryError::Conflict { .. }), "{error}");
    }

    #[tokio::test]
    async fn exec_is_denied_for_a_delivered_volume_unless_its_declaration_allows_it() {
        let volume = tempfile::tempdir().expect("tempdir");
        let deliveries = Deliveries::new(None);
        assert!(!deliveries.any());
        assert_eq!(
            deliveries.exec_denied_for(&["model".to_string()], &[]),
            None
        );
        deliveries
            .start(
                &declaration("http://127.0.0.1:9"),
                volume.path().to_path_buf(),
            )
            .expect("start");
        assert!(deliveries.any());
        let volumes = ["scratch".to_string(), "model".to_string()];
        let cat = ["cat".to_string(), "/tmp/healthy".to_string()];
        assert_eq!(
            deliveries.exec_denied_for(&volumes, &[]),
            Some("model".into())
        );
        assert_eq!(
            deliveries.exec_denied_for(&volumes, &cat),
            Some("model".into())
        );
        assert_eq!(deliveries.exec_denied_for(&volumes[..1], &[]), None);

        let allowing = Deliveries::new(None);
        let mut declaration = declaration("http://127.0.0.1:9");
        declaration.exec = "allow".into();
        allowing
            .start(&declaration, volume.path().to_path_buf())
            .expect("start");
        assert_eq!(allowing.exec_denied_for(&volumes, &[]), None);

        // Listed commands pass a denied exec, exactly as listed.
        let listing = Deliveries::new(None);
        declaration.exec = "deny".into();
        declaration.exec_commands = vec![veil_protocol::Command {
            args: cat.to_vec(),
            ..Default::default()
        }];
        listing
            .start(&declaration, volume.path().to_path_buf())
            .expect("start");
        assert_eq!(listing.exec_denied_for(&volumes, &cat), None);
        assert_eq!(listing.exec_denied_for(&volumes, &[]), Some("model".into()));
        let other = ["cat".to_string(), "/model/model".to_string()];
        assert_eq!(
            listing.exec_denied_for(&volumes, &other),
            Some("model".into())
        );
    }

    #[tokio::test]
    async fn volumes_without_a_delivery_do_not_wait() {
        Deliveries::new(None)
            .wait_for(&["scratch".to_string()])
            .await
            .expect("nothing to wait for");
    }
}

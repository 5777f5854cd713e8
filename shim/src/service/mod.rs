//! The containerd Task service: maps each Task RPC onto the sandbox (VM), its
//! containers and their processes, publishing events in the order containerd expects
//! (TaskCreate, TaskStart, TaskExecAdded, TaskExecStarted, TaskExit, TaskDelete).

mod events;
pub use events::timestamp;
pub mod process;
mod publisher;
pub(crate) use publisher::connect_unix;
pub use publisher::Publisher;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use containerd_shim::asynchronous::ExitSignal;
use oci_spec::runtime::Spec;
use veil_config::{Config, ReaderRootfs};

use crate::error::{Error, Result};
use crate::io::{self, StdioPaths};
use crate::options;
use crate::sandbox::image_cache::SnapshotKey;
use crate::sandbox::sizing::{self, HostCapacity, VmSize};
use crate::sandbox::{delivery, rootfs_image, storage, volumes, Sandbox};
use events::EventSink;
use process::{ExitInfo, ProcessState, Status};

mod task;

/// How long output relays may take to drain after a process exits.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);
/// How long Delete waits for a created-but-never-started init to die after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// Exit status reported for an exec deleted without having started (as a Wait whose
/// process went away reports).
const NEVER_STARTED: u32 = 255;
/// File in the bundle recording where the sandbox state lives (for `delete` after a crash).
pub const STATE_DIR_FILE: &str = "veil-state-dir";

struct ContainerState {
    bundle: PathBuf,
    rootfs_mounted: bool,
    init: Arc<ProcessState>,
    execs: Mutex<HashMap<String, Arc<ProcessState>>>,
}

/// A container's rootfs on the node: where it is mounted, and the mounts containerd gave
/// for it, which name its snapshot when an image of it may be reused ([`SnapshotKey`]).
struct HostRootfs<'a> {
    path: &'a std::path::Path,
    mounts: &'a [containerd_shim::protos::types::mount::Mount],
}

impl ContainerState {
    fn processes(&self) -> Vec<Arc<ProcessState>> {
        let mut all = vec![self.init.clone()];
        all.extend(locked(&self.execs).values().cloned());
        all
    }
}

type Containers = Arc<Mutex<HashMap<String, Arc<ContainerState>>>>;

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The task service of one shim (one sandbox).
pub struct TaskService {
    events: EventSink,
    exit: Arc<ExitSignal>,
    sandbox: tokio::sync::Mutex<Option<Arc<Sandbox>>>,
    containers: Containers,
}

impl TaskService {
    /// A service publishing to containerd through `publisher`.
    pub fn new(namespace: &str, publisher: Arc<Publisher>, exit: Arc<ExitSignal>) -> Self {
        TaskService {
            events: EventSink::new(namespace, publisher),
            exit,
            sandbox: tokio::sync::Mutex::new(None),
            containers: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn container(&self, id: &str) -> Result<Arc<ContainerState>> {
        locked(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("container {id}")))
    }

    /// Guest pids of this pod's containers (their init processes).
    fn container_pids(&self) -> Vec<u32> {
        locked(&self.containers)
            .values()
            .map(|c| c.init.pid())
            .collect()
    }

    fn process(&self, id: &str, exec_id: &str) -> Result<(Arc<ContainerState>, Arc<ProcessState>)> {
        let container = self.container(id)?;
        if exec_id.is_empty() {
            let init = container.init.clone();
            return Ok((container, init));
        }
        let exec = locked(&container.execs)
            .get(exec_id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("process {exec_id} of container {id}")))?;
        Ok((container, exec))
    }

    async fn current_sandbox(&self) -> Result<Arc<Sandbox>> {
        self.sandbox
            .lock()
            .await
            .clone()
            .ok_or_else(|| Error::FailedPrecondition("the sandbox VM is not running".into()))
    }

    /// The running sandbox, started first if this is the sandbox's first container; a
    /// new VM for a pod that declares a model `delivery` gets an egress NIC and the
    /// declaration's digest as its SEV-SNP host_data.
    async fn ensure_sandbox(
        &self,
        config: &Config,
        sandbox_id: &str,
        delivery: Option<&veil_protocol::ModelDelivery>,
        placement: crate::sandbox::HostPlacement<'_>,
        size: VmSize,
    ) -> Result<Arc<Sandbox>> {
        let mut slot = self.sandbox.lock().await;
        if let Some(sandbox) = slot.as_ref() {
            return Ok(sandbox.clone());
        }
        let sandbox = Arc::new(
            Sandbox::start(
                config,
                self.events.namespace(),
                sandbox_id,
                delivery,
                placement,
                size,
            )
            .await?,
        );
        self.watch_vm(sandbox.clone());
        *slot = Some(sandbox.clone());
        Ok(sandbox)
    }

    /// When the VM dies on its own, every process in it has ended: report each once.
    fn watch_vm(&self, sandbox: Arc<Sandbox>) {
        let events = self.events.clone();
        let containers = self.containers.clone();
        tokio::spawn(async move {
            let why = sandbox.vm_exited().await;
            let exit = ExitInfo {
                status: 128 + libc::SIGKILL as u32,
                at: SystemTime::now(),
            };
            let processes: Vec<_> = locked(&containers)
                .values()
                .flat_map(|c| c.processes())
                .collect();
            for process in processes {
                if process.mark_exited(exit) {
                    tracing::warn!(container = %process.container_id, exec = %process.exec_id, %why, "VM ended under a running process");
                    events.exit(&process, exit).await;
                }
            }
        });
    }

    /// Stops the VM when no container is left in it.
    async fn stop_sandbox_if_empty(&self) {
        if !locked(&self.containers).is_empty() {
            return;
        }
        let sandbox = self.sandbox.lock().await.take();
        if let Some(sandbox) = sandbox {
            sandbox.stop().await;
        }
    }

    async fn create(&self, request: &containerd_shim::api::CreateTaskRequest) -> Result<u32> {
        tracing::info!(container = %request.id, "{}", crate::stages::CREATE_RECEIVED);
        if request.id.is_empty() {
            return Err(Error::InvalidArgument("container id is empty".into()));
        }
        if locked(&self.containers).contains_key(&request.id) {
            return Err(Error::AlreadyExists(format!("container {}", request.id)));
        }
        if !request.checkpoint.is_empty() {
            return Err(Error::Unimplemented("restoring from a checkpoint"));
        }
        let bundle = PathBuf::from(&request.bundle);
        let spec_path = bundle.join("config.json");
        let spec = Spec::load(&spec_path).map_err(|e| {
            Error::InvalidArgument(format!("OCI spec {}: {e}", spec_path.display()))
        })?;
        let config_path =
            options::config_path(request.options.as_ref()).map_err(Error::InvalidArgument)?;
        let (config, found) = Config::discover(config_path.as_deref())?;
        tracing::info!(config = ?found, "configuration loaded");
        volumes::validate_annotations(spec.annotations().as_ref())?;
        let model_delivery = delivery::declaration(spec.annotations().as_ref())?;
        let sandbox_id = options::sandbox_id(spec.annotations().as_ref(), &request.id);
        let vm_size = sizing::size_for(
            &config.hypervisor,
            spec.annotations().as_ref(),
            HostCapacity::probe(),
        )?;

        let pod_netns = crate::sandbox::network::pod_netns(&spec);
        let cgroups_path = spec
            .linux()
            .as_ref()
            .and_then(|linux| linux.cgroups_path().as_ref())
            .map(|path| path.to_string_lossy().into_owned());
        let placement = crate::sandbox::HostPlacement {
            netns: pod_netns.as_deref(),
            cgroups_path: cgroups_path.as_deref(),
        };
        // Boot the VM while containerd's snapshot is mounted: both take time.
        let (sandbox, rootfs) = tokio::join!(
            self.ensure_sandbox(
                &config,
                &sandbox_id,
                model_delivery.as_ref(),
                placement,
                vm_size
            ),
            storage::mount_rootfs(&bundle, &request.rootfs, &spec)
        );
        let (host_rootfs, rootfs_mounted) = match rootfs {
            Ok(rootfs) => rootfs,
            Err(error) => {
                self.stop_sandbox_if_empty().await;
                return Err(error);
            }
        };
        let sandbox = match sandbox {
            Ok(sandbox) => sandbox,
            Err(error) => {
                if rootfs_mounted {
                    storage::unmount_rootfs(&bundle);
                }
                return Err(error);
            }
        };
        let _ = std::fs::write(
            bundle.join(STATE_DIR_FILE),
            sandbox.state_dir.display().to_string(),
        );
        let stdio = StdioPaths {
            stdin: request.stdin.clone(),
            stdout: request.stdout.clone(),
            stderr: request.stderr.clone(),
            terminal: request.terminal,
        };
        let created = self
            .create_in_guest(
                &sandbox,
                &request.id,
                spec,
                HostRootfs {
                    path: &host_rootfs,
                    mounts: &request.rootfs,
                },
                &stdio,
                model_delivery,
            )
            .await;
        let pid = match created {
            Ok(pid) => pid,
            Err(error) => {
                let error = with_console_tail(error, &sandbox);
                storage::unshare(&sandbox.shared_dir, &request.id);
                if rootfs_mounted {
                    storage::unmount_rootfs(&bundle);
                }
                self.stop_sandbox_if_empty().await;
                return Err(error);
            }
        };
        let init = Arc::new(ProcessState::new(&request.id, "", stdio, None));
        init.set_pid(pid);
        let container = Arc::new(ContainerState {
            bundle,
            rootfs_mounted,
            init: init.clone(),
            execs: Mutex::new(HashMap::new()),
        });
        locked(&self.containers).insert(request.id.clone(), container);
        self.start_relays(&sandbox, &init);
        self.events.create(request, pid).await;
        // Watch from creation: an init killed before Start must still report its exit.
        self.spawn_exit_watcher(sandbox, init);
        tracing::info!(container = %request.id, pid, "{}", crate::stages::CONTAINER_CREATED);
        Ok(pid)
    }

    async fn create_in_guest(
        &self,
        sandbox: &Sandbox,
        id: &str,
        mut spec: Spec,
        host_rootfs: HostRootfs<'_>,
        stdio: &StdioPaths,
        mut model_delivery: Option<veil_protocol::ModelDelivery>,
    ) -> Result<u32> {
        let guest_rootfs = storage::share_rootfs(&sandbox.shared_dir, id, host_rootfs.path)?;
        storage::adapt_spec_for_guest(&mut spec, &self.container_pids());
        let mut memory_volumes = volumes::take_memory_volumes(&mut spec)?;
        if let Some(declaration) = model_delivery.as_mut() {
            if !sandbox.egress && !declaration.source_url.starts_with("file://") {
                return Err(Error::FailedPrecondition(format!(
                    "container {id} declares a model delivery but its sandbox VM was started without one, so it has no network to fetch the model; put the io.veil.model.* annotations on the pod"
                )));
            }
            delivery::share_file_source(&sandbox.shared_dir, declaration)?;
            if !memory_volumes.iter().any(|v| v.name == declaration.volume) {
                memory_volumes.push(volumes::memory_volume(
                    spec.annotations().as_ref(),
                    &declaration.volume,
                )?);
            }
        }
        storage::share_bind_mounts(&sandbox.shared_dir, id, &mut spec)?;
        let rootfs_image = self
            .offer_rootfs_image(sandbox, id, &spec, &host_rootfs, model_delivery.as_ref())
            .await?;
        let spec_json = serde_json::to_vec(&spec)
            .map_err(|e| Error::InvalidArgument(format!("serialize the OCI spec of {id}: {e}")))?;
        sandbox
            .agent()
            .create_container(veil_protocol::CreateContainerRequest {
                container_id: id.to_string(),
                oci_spec_json: spec_json,
                rootfs: guest_rootfs,
                stdio: veil_protocol::protobuf::MessageField::some(stdio.to_agent()),
                memory_volumes,
                model_delivery: model_delivery.into(),
                rootfs_image: rootfs_image.into(),
                ..Default::default()
            })
            .await
    }

    /// For a container the guest must verify against a model owner's approved readers,
    /// the erofs image and hash tree it can verify in place (`[runtime] reader_rootfs`).
    async fn offer_rootfs_image(
        &self,
        sandbox: &Sandbox,
        id: &str,
        spec: &Spec,
        host_rootfs: &HostRootfs<'_>,
        delivery: Option<&veil_protocol::ModelDelivery>,
    ) -> Result<Option<veil_protocol::RootfsImage>> {
        if sandbox.reader_rootfs != ReaderRootfs::Image
            || !rootfs_image::is_reader_candidate(spec, delivery)
        {
            return Ok(None);
        }
        let started = std::time::Instant::now();
        let share = storage::container_share(&sandbox.shared_dir, id);
        // Only a reader's image is cached: other containers never stat the snapshot's layers.
        let snapshot = SnapshotKey::of(host_rootfs.mounts);
        let (image, reused) = rootfs_image::build_or_reuse(
            host_rootfs.path,
            &share,
            id,
            snapshot.as_ref().map(|key| (&sandbox.image_cache, key)),
        )
        .await?;
        tracing::info!(
            container = %id,
            blocks = image.data_blocks,
            root_hash = %image.root_hash,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "{}",
            if reused {
                "rootfs image of the same snapshot reused from the node's cache for the guest to verify in place"
            } else {
                "rootfs image made for the guest to verify in place"
            }
        );
        Ok(Some(image))
    }

    fn start_relays(&self, sandbox: &Sandbox, process: &ProcessState) {
        let agent = sandbox.agent().clone();
        let (cid, eid) = (process.container_id.clone(), process.exec_id.clone());
        let stdio = &process.stdio;
        if !stdio.stdout.is_empty() {
            process.add_relay(io::relay_output(
                agent.clone(),
                cid.clone(),
                eid.clone(),
                stdio.stdout.clone(),
                false,
            ));
        }
        if !stdio.stderr.is_empty() && !stdio.terminal {
            process.add_relay(io::relay_output(
                agent.clone(),
                cid.clone(),
                eid.clone(),
                stdio.stderr.clone(),
                true,
            ));
        }
        if !stdio.stdin.is_empty() {
            // Not awaited at exit: stdin may stay open after the process is gone.
            drop(io::relay_stdin(
                agent,
                cid,
                eid,
                stdio.stdin.clone(),
                process.stdin_end.clone(),
            ));
        }
    }

    /// Waits for the process to end (or the VM to die), lets its output drain, then
    /// records the exit and publishes TaskExit, after any TaskStart in flight.
    fn spawn_exit_watcher(&self, sandbox: Arc<Sandbox>, process: Arc<ProcessState>) {
        let events = self.events.clone();
        tokio::spawn(async move {
            let agent = sandbox.agent().clone();
            let waited = tokio::select! {
                waited = agent.wait_process(&process.container_id, &process.exec_id) => waited.ok(),
                _ = sandbox.vm_exited() => None,
            };
            let oom_killed = waited.as_ref().is_some_and(|w| w.oom_killed);
            let status = waited
                .map(|w| w.exit_status)
                .unwrap_or(128 + libc::SIGKILL as u32);
            for relay in process.take_relays() {
                let _ = tokio::time::timeout(OUTPUT_DRAIN, relay).await;
            }
            let _started = process.start_lock.lock().await;
            let exit = ExitInfo {
                status,
                at: SystemTime::now(),
            };
            if process.mark_exited(exit) {
                tracing::info!(container = %process.container_id, exec = %process.exec_id, status, oom_killed, "{}", crate::stages::PROCESS_EXITED);
                if oom_killed {
                    events.oom(&process.container_id).await;
                }
                events.exit(&process, exit).await;
            }
        });
    }

    /// Pauses (`frozen`) or resumes a container: the agent freezes or thaws its guest cgroup,
    /// then its status and containerd's event follow.
    async fn freeze(&self, id: &str, frozen: bool) -> Result<()> {
        let container = self.container(id)?;
        let (from, to, verb) = if frozen {
            (Status::Running, Status::Paused, "paused")
        } else {
            (Status::Paused, Status::Running, "resumed")
        };
        let status = container.init.status();
        if status != from {
            return Err(Error::FailedPrecondition(format!(
                "container {id} cannot be {verb}: it is {status:?}, not {from:?}"
            )));
        }
        let sandbox = self.current_sandbox().await?;
        sandbox.agent().freeze_container(id, frozen).await?;
        if container.init.mark_transition(from, to) {
            if frozen {
                self.events.paused(id).await;
            } else {
                self.events.resumed(id).await;
            }
            tracing::info!(container = %id, "container {verb}");
        }
        Ok(())
    }

    async fn start(&self, id: &str, exec_id: &str) -> Result<u32> {
        let (container, process) = self.process(id, exec_id)?;
        if !exec_id.is_empty() && container.init.status() == Status::Paused {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is paused: resume it (ctr task resume {id}) before starting exec {exec_id}"
            )));
        }
        let sandbox = self.current_sandbox().await?;
        let _starting = process.start_lock.lock().await;
        if !process.status().can_start() {
            return Err(Error::FailedPrecondition(format!(
                "{} cannot be started: it is {:?}",
                describe(id, exec_id),
                process.status()
            )));
        }
        let pid = if exec_id.is_empty() {
            sandbox.agent().start_container(id).await?
        } else {
            let pid = sandbox
                .agent()
                .exec_process(veil_protocol::ExecProcessRequest {
                    container_id: id.to_string(),
                    exec_id: exec_id.to_string(),
                    oci_process_json: process.exec_spec.clone().unwrap_or_default(),
                    stdio: veil_protocol::protobuf::MessageField::some(process.stdio.to_agent()),
                    ..Default::default()
                })
                .await?;
            process.set_pid(pid);
            self.start_relays(&sandbox, &process);
            self.spawn_exit_watcher(sandbox.clone(), process.clone());
            pid
        };
        process.mark_running();
        if exec_id.is_empty() {
            self.events.start(id, pid).await;
        } else {
            self.events.exec_started(id, exec_id, pid).await;
        }
        tracing::info!(container = %id, exec = %exec_id, pid, "{}", crate::stages::PROCESS_STARTED);
        Ok(pid)
    }

    async fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let (_, process) = self.process(id, exec_id)?;
        if process.status() == Status::Stopped {
            return Err(Error::Finished(describe(id, exec_id)));
        }
        let sandbox = self.current_sandbox().await?;
        sandbox.agent().signal(id, exec_id, signal, all).await
    }

    async fn delete(&self, id: &str, exec_id: &str) -> Result<(u32, ExitInfo)> {
        let (container, process) = self.process(id, exec_id)?;
        if !exec_id.is_empty() {
            if process.status() == Status::Running {
                return Err(Error::FailedPrecondition(format!(
                    "{} is still running",
                    describe(id, exec_id)
                )));
            }
            locked(&container.execs).remove(exec_id);
            process.release_stdin();
            self.forget_exec_in_guest(id, exec_id).await;
            // An exec whose start failed never exits: release containerd's Wait on it
            // (ExecSync waits before it starts) instead of leaving it to time out.
            process.mark_exited(ExitInfo {
                status: NEVER_STARTED,
                at: SystemTime::now(),
            });
            let exit = process.exit().unwrap_or(ExitInfo {
                status: 0,
                at: SystemTime::now(),
            });
            return Ok((process.pid(), exit));
        }
        match process.status() {
            Status::Running | Status::Paused => {
                return Err(Error::FailedPrecondition(format!(
                    "container {id} is still running; kill it before deleting it"
                )))
            }
            Status::Created => self.kill_unstarted(id, &process).await,
            Status::Stopped => {}
        }
        if let Ok(sandbox) = self.current_sandbox().await {
            if let Err(error) = sandbox.agent().remove_container(id).await {
                tracing::warn!(container = %id, %error, "agent could not remove the container");
            }
            storage::unshare(&sandbox.shared_dir, id);
        }
        if container.rootfs_mounted {
            storage::unmount_rootfs(&container.bundle);
        }
        locked(&self.containers).remove(id);
        container.processes().iter().for_each(|p| p.release_stdin());
        let exit = process.exit().unwrap_or(ExitInfo {
            status: 128 + libc::SIGKILL as u32,
            at: SystemTime::now(),
        });
        self.events.delete(id, process.pid(), exit).await;
        self.stop_sandbox_if_empty().await;
        tracing::info!(container = %id, "container.deleted");
        Ok((process.pid(), exit))
    }

    /// Best effort: an exec whose start failed is unknown to the agent, and a VM that is
    /// gone has nothing to forget.
    async fn forget_exec_in_guest(&self, id: &str, exec_id: &str) {
        if let Ok(sandbox) = self.current_sandbox().await {
            if let Err(error) = sandbox.agent().remove_process(id, exec_id).await {
                tracing::debug!(container = %id, exec = %exec_id, %error, "agent did not remove the exec");
            }
        }
    }

    async fn kill_unstarted(&self, id: &str, process: &ProcessState) {
        if let Ok(sandbox) = self.current_sandbox().await {
            let _ = sandbox
                .agent()
                .signal(id, "", libc::SIGKILL as u32, true)
                .await;
        }
        if tokio::time::timeout(KILL_WAIT, process.wait())
            .await
            .is_err()
        {
            process.mark_exited(ExitInfo {
                status: 128 + libc::SIGKILL as u32,
                at: SystemTime::now(),
            });
        }
    }

    async fn shutdown(&self) {
        if !locked(&self.containers).is_empty() {
            return;
        }
        self.stop_sandbox_if_empty().await;
        self.exit.signal();
    }
}

fn describe(id: &str, exec_id: &str) -> String {
    if exec_id.is_empty() {
        format!("container {id}")
    } else {
        format!("process {exec_id} of container {id}")
    }
}

/// An agent failure with the end of the VM console added: stopping an emptied sandbox
/// removes the console log the message would otherwise point to.
fn with_console_tail(error: Error, sandbox: &Sandbox) -> Error {
    match error {
        Error::Agent { what, detail } => Error::Agent {
            detail: format!(
                "{detail}; console: {}",
                crate::sandbox::console_tail(&sandbox.console_log)
            ),
            what,
        },
        other => other,
    }
}

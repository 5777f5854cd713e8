//! The ttrpc `AgentService`: containers, processes and their streams.

mod error;
mod procfs;
mod stats;
mod stream;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use veil_protocol as api;
use veil_protocol::ttrpc::{self, r#async::TtrpcContext};

pub use error::ServiceError;
use stream::{FdReader, FdWriter};

use crate::delivery::guard::{self, Reach};
use crate::delivery::reader_image::{self, ImageError};
use crate::delivery::reader_isolation::{self, VolumeUse};
use crate::delivery::readers::{self, Unapproved};
use crate::delivery::Deliveries;
use crate::network::PodNetwork;
use crate::port_forward::ForwardedConnections;
use crate::reaper::{ExitWatch, Reaper};
use crate::runtime::{ContainerRuntime, SpawnedProcess, StdioRequest};
use crate::volumes::MemoryVolumes;

/// The most bytes one ReadStdout/ReadStderr returns.
const MAX_READ: usize = 1 << 20;

/// One process of a container (its init, or an exec).
struct ProcessEntry {
    pid: i32,
    exit: ExitWatch,
    stdin: tokio::sync::Mutex<Option<FdWriter>>,
    stdout: Option<FdReader>,
    stderr: Option<FdReader>,
    terminal: Option<OwnedFd>,
}

impl ProcessEntry {
    fn new(
        spawned: SpawnedProcess,
        wanted: StdioRequest,
        exit: ExitWatch,
    ) -> Result<Self, ServiceError> {
        let SpawnedProcess {
            pid,
            stdin,
            stdout,
            stderr,
            pty_master,
        } = spawned;
        // A pipe nobody reads fills up and blocks the process: drain what the shim won't read.
        let stdout = keep_or_drain(stdout, wanted.stdout || wanted.terminal);
        let stderr = keep_or_drain(stderr, wanted.stderr);
        let spawned = SpawnedProcess {
            pid,
            stdin,
            stdout,
            stderr,
            pty_master,
        };
        let stream_error = |source| ServiceError::Io {
            what: "prepare process stream".into(),
            source,
        };
        let reader = |fd: Option<OwnedFd>| fd.map(FdReader::new).transpose().map_err(stream_error);
        let writer = |fd: Option<OwnedFd>| fd.map(FdWriter::new).transpose().map_err(stream_error);
        let dup = |fd: &OwnedFd| {
            fd.try_clone().map_err(|source| ServiceError::Io {
                what: "duplicate terminal descriptor".into(),
                source,
            })
        };
        let (stdin, stdout, terminal) = match spawned.pty_master {
            // One terminal carries both directions; each direction gets its own descriptor.
            Some(master) => (Some(dup(&master)?), Some(dup(&master)?), Some(master)),
            None => (spawned.stdin, spawned.stdout, None),
        };
        Ok(ProcessEntry {
            pid: spawned.pid,
            exit,
            stdin: tokio::sync::Mutex::new(writer(stdin)?),
            stdout: reader(stdout)?,
            stderr: reader(spawned.stderr)?,
            terminal,
        })
    }

    fn has_exited(&self) -> bool {
        self.exit.try_exit().is_some()
    }
}

struct ContainerEntry {
    init: Arc<ProcessEntry>,
    /// What its spec reaches (the memory volumes it mounts, whose deliveries its start
    /// waits for, among them), checked again when the VM's first delivery starts.
    reach: Reach,
    /// Where it runs from in guest memory, removed with it.
    own_rootfs: OwnRootfs,
    execs: Mutex<HashMap<String, Arc<ProcessEntry>>>,
}

/// The agent's API implementation.
pub struct AgentService {
    runtime: Arc<dyn ContainerRuntime>,
    reaper: Reaper,
    volumes: MemoryVolumes,
    deliveries: Deliveries,
    pod_network: PodNetwork,
    containers: Mutex<HashMap<String, Arc<ContainerEntry>>>,
    forwarded: ForwardedConnections,
    ready_at: SystemTime,
}

fn unix_us(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl AgentService {
    /// Creates the service over `runtime`, reaping through `reaper`, with memory volumes
    /// mounted below `volumes` and model deliveries run by `deliveries`.
    pub fn new(
        runtime: Arc<dyn ContainerRuntime>,
        reaper: Reaper,
        volumes: MemoryVolumes,
        deliveries: Deliveries,
    ) -> Self {
        AgentService {
            runtime,
            reaper,
            volumes,
            deliveries,
            pod_network: PodNetwork::new(None),
            containers: Mutex::new(HashMap::new()),
            forwarded: ForwardedConnections::default(),
            ready_at: SystemTime::now(),
        }
    }

    /// Configures pod NICs through `pod_network` (which knows about the egress NIC).
    pub fn with_pod_network(mut self, pod_network: PodNetwork) -> Self {
        self.pod_network = pod_network;
        self
    }

    fn container(&self, id: &str) -> Result<Arc<ContainerEntry>, ServiceError> {
        locked(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| ServiceError::ContainerNotFound(id.to_string()))
    }

    fn process(&self, id: &str, exec_id: &str) -> Result<Arc<ProcessEntry>, ServiceError> {
        let container = self.container(id)?;
        if exec_id.is_empty() {
            return Ok(container.init.clone());
        }
        let execs = locked(&container.execs);
        execs
            .get(exec_id)
            .cloned()
            .ok_or_else(|| ServiceError::ProcessNotFound {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
            })
    }

    /// Runs a blocking runtime call that creates a process, registering its pid with
    /// the reaper before any exit can be reaped.
    async fn spawn_process<F>(
        &self,
        what: String,
        wanted: StdioRequest,
        create: F,
    ) -> Result<ProcessEntry, ServiceError>
    where
        F: FnOnce(&dyn ContainerRuntime) -> Result<SpawnedProcess, crate::runtime::RuntimeError>
            + Send
            + 'static,
    {
        let guard = self.reaper.spawn_guard().await;
        let spawned = self.on_runtime(&what, create).await?;
        let exit = guard.register(spawned.pid);
        drop(guard);
        ProcessEntry::new(spawned, wanted, exit)
    }

    async fn create(&self, request: api::CreateContainerRequest) -> Result<u32, ServiceError> {
        let id = request.container_id.clone();
        validate_id(&id)?;
        if locked(&self.containers).contains_key(&id) {
            return Err(ServiceError::AlreadyExists(format!("container {id}")));
        }
        let created = self.create_new(id.clone(), request).await;
        if created.is_err() {
            // The checks and the runtime may have crossed into the share's submounts, and
            // no RemoveContainer comes for a container that was never created.
            crate::shares::release(Path::new(veil_protocol::GUEST_SHARED_DIR), &id);
        }
        created
    }

    async fn create_new(
        &self,
        id: String,
        request: api::CreateContainerRequest,
    ) -> Result<u32, ServiceError> {
        let spec: oci_spec::runtime::Spec = serde_json::from_slice(&request.oci_spec_json)
            .map_err(|e| {
                ServiceError::InvalidArgument(format!("OCI spec of container {id}: {e}"))
            })?;
        let rootfs = PathBuf::from(&request.rootfs);
        let reach = Reach::of(&spec, &rootfs);
        let confined = request.model_delivery.is_some() || self.deliveries.any();
        if confined {
            self.check_confined(&id, &reach, request.model_delivery.as_ref())?;
        }
        self.check_not_joining_a_reader(&id, &reach)?;
        for volume in &request.memory_volumes {
            self.volumes
                .ensure(&volume.name, volume.size_bytes)
                .map_err(|e| ServiceError::FailedPrecondition(format!("container {id}: {e}")))?;
        }
        if let Some(delivery) = request.model_delivery.as_ref() {
            self.start_delivery(&id, delivery)?;
        }
        let reader_pins = self.deliveries.pinned(&reach.volumes());
        let approved_reader = !reader_pins.is_empty();
        let (spec, reach) = if approved_reader {
            isolate_reader(&id, spec, &rootfs, &request.memory_volumes)
        } else {
            (spec, reach)
        };
        self.check_volume_sharing(&id, &reach, approved_reader)?;
        let verified_rootfs = self
            .verify_reader(
                &id,
                &spec,
                &reach,
                &reader_pins,
                request.rootfs_image.as_ref(),
            )
            .await?;
        let own = OwnRootfs::prepare(&id, confined, verified_rootfs)?;
        let pins = confined.then(|| reach.pins(own.mountpoint.as_ref().map(|_| rootfs.as_path())));
        let run_from = own.run_from().unwrap_or_else(|| rootfs.clone());
        if let Some(pins) = &pins {
            tracing::info!(
                container = %id,
                rootfs = %run_from.display(),
                shared_rootfs_pinned = pins.rootfs.is_some(),
                binds = pins.binds.len(),
                "mount sources pinned to what the checks saw"
            );
        }
        let stdio = StdioRequest::from(request.stdio.get_or_default());
        let runtime_id = id.clone();
        let created = self
            .spawn_process(format!("create container {id}"), stdio, move |runtime| {
                runtime.create(&runtime_id, &run_from, spec, stdio, pins)
            })
            .await;
        let entry = match created {
            Ok(entry) => entry,
            Err(error) => {
                own.release(&id);
                return Err(error);
            }
        };
        let pid = entry.pid;
        let container = ContainerEntry {
            init: Arc::new(entry),
            reach,
            own_rootfs: own,
            execs: Mutex::new(HashMap::new()),
        };
        locked(&self.containers).insert(id.clone(), Arc::new(container));
        tracing::info!(container = %id, pid, "container created");
        Ok(pid as u32)
    }

    /// Refuses a container that would share a memory volume with an approved reader that
    /// writes it, one of the two not approved ([`reader_isolation`]).
    fn check_volume_sharing(
        &self,
        id: &str,
        reach: &Reach,
        approved: bool,
    ) -> Result<(), ServiceError> {
        let existing: Vec<VolumeUse> = locked(&self.containers)
            .iter()
            .map(|(other, entry)| volume_use(other, &entry.reach, entry.own_rootfs.is_verified()))
            .collect();
        match reader_isolation::check_volume_sharing(&volume_use(id, reach, approved), &existing) {
            Some(refusal) => Err(ServiceError::PermissionDenied(format!(
                "container {id} cannot run next to a sealed model: {refusal}"
            ))),
            None => Ok(()),
        }
    }

    /// Refuses a container that could reach a delivered model other than by mounting its
    /// volume. With a `delivery`, the containers already in the VM are held to the same
    /// rules, since the model would arrive next to them; where its owner approves its
    /// readers, none of them may mount its volume, since none was verified.
    fn check_confined(
        &self,
        id: &str,
        reach: &Reach,
        delivery: Option<&api::ModelDelivery>,
    ) -> Result<(), ServiceError> {
        let containers: Vec<(String, Arc<ContainerEntry>)> = locked(&self.containers)
            .iter()
            .map(|(id, c)| (id.clone(), Arc::clone(c)))
            .collect();
        let pids: Vec<i32> = containers.iter().map(|(_, c)| c.init.pid).collect();
        let refuse = |who: &str, confinement: crate::delivery::guard::Confinement| {
            ServiceError::PermissionDenied(format!(
                "container {who} cannot run in a VM that receives a sealed model: {confinement}"
            ))
        };
        let attestation = guard::attestation_devices(std::path::Path::new("/sys"));
        reach
            .check_sealed(&pids, &attestation)
            .map_err(|c| refuse(id, c))?;
        let Some(delivery) = delivery else {
            return Ok(());
        };
        for (other, entry) in &containers {
            entry
                .reach
                .check_sealed(&pids, &attestation)
                .map_err(|c| refuse(other, c))?;
            let unverified_reader = !delivery.readers.is_empty()
                && !entry.own_rootfs.is_verified()
                && entry.reach.volumes().contains(&delivery.volume);
            if unverified_reader {
                return Err(ServiceError::PermissionDenied(format!(
                    "container {id} cannot start the model delivery into volume {}: container {other} already mounts the volume without having been verified as a reader the owner approved (it was created without the pod's declaration); remove it first",
                    delivery.volume
                )));
            }
        }
        Ok(())
    }

    /// Refuses to put a container into the pid or IPC namespace of one that reads a model
    /// whose owner approves its readers: it could read the model through `/proc/<pid>/root`
    /// or attach the reader's shared memory.
    fn check_not_joining_a_reader(&self, id: &str, reach: &Reach) -> Result<(), ServiceError> {
        let readers: Vec<(String, i32)> = locked(&self.containers)
            .iter()
            .filter(|(_, c)| c.own_rootfs.is_verified())
            .map(|(reader, c)| (reader.clone(), c.init.pid))
            .collect();
        match reach.joined_reader(&readers) {
            Some(refusal) => Err(ServiceError::PermissionDenied(format!(
                "container {id} cannot join {refusal}"
            ))),
            None => Ok(()),
        }
    }

    /// For a container that mounts a volume whose owner approves its readers (`pins`, none
    /// for any other): checks that it is one, and returns the verified rootfs it is to run
    /// from: the node's erofs image through dm-verity where the node offers one and this
    /// guest can mount it, otherwise a verified copy in guest memory.
    async fn verify_reader(
        &self,
        id: &str,
        spec: &oci_spec::runtime::Spec,
        reach: &Reach,
        pins: &readers::Pins,
        offered: Option<&api::RootfsImage>,
    ) -> Result<Option<VerifiedRootfs>, ServiceError> {
        if pins.is_empty() {
            return Ok(None);
        }
        let refuse = |e: Unapproved| match e {
            Unapproved::Io(_) | Unapproved::Copy(_) => {
                ServiceError::FailedPrecondition(format!("container {id}: {e}"))
            }
            refusal => ServiceError::PermissionDenied(format!(
                "container {id} may not mount the sealed model's volume: {refusal}"
            )),
        };
        let approved = readers::check_spec(spec, reach, pins).map_err(refuse)?;
        let dir = readers::verified_rootfs(id);
        let started = Instant::now();
        let stopped = |e: tokio::task::JoinError| {
            ServiceError::FailedPrecondition(format!(
                "container {id}: verifying its rootfs stopped: {e}"
            ))
        };
        if let Some(offered) = offered.cloned() {
            let (image_id, image_dir, image_approved) =
                (id.to_string(), dir.clone(), approved.clone());
            let mounted = tokio::task::spawn_blocking(move || {
                reader_image::mount_approved(&image_id, &offered, &image_dir, &image_approved)
            })
            .await
            .map_err(stopped)?;
            match mounted {
                Ok((image, digest)) => {
                    tracing::info!(
                        container = %id,
                        rootfs = %veil_protocol::rootfs::format_digest(&digest),
                        root = %image.root().display(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "rootfs verified as one the model owner approved, from the node's image through dm-verity"
                    );
                    return Ok(Some(VerifiedRootfs::Image(image)));
                }
                Err(ImageError::Unapproved(refusal)) => return Err(refuse(refusal)),
                Err(error @ ImageError::Read(_)) => {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "container {id}: {error}"
                    )))
                }
                Err(ImageError::Setup(error)) => tracing::warn!(
                    container = %id,
                    %error,
                    "the node's rootfs image could not be used; verifying a copy in guest memory instead"
                ),
            }
        }
        let (source, target) = (reach.rootfs.clone(), dir.clone());
        let digest = tokio::task::spawn_blocking(move || {
            readers::copy_approved(&source, &target, &approved)
        })
        .await
        .map_err(stopped)?
        .map_err(refuse)?;
        tracing::info!(
            container = %id,
            rootfs = %veil_protocol::rootfs::format_digest(&digest),
            copy = %dir.display(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "rootfs verified as one the model owner approved"
        );
        Ok(Some(VerifiedRootfs::Copy(dir)))
    }

    /// Refuses an exec into a container that can reach a delivered model whose owner keeps
    /// the node from exec, unless the command line is one the owner listed (and then it
    /// may bring in no code or reach of its own).
    fn check_exec_reach(
        &self,
        container: &ContainerEntry,
        id: &str,
        exec_id: &str,
        process: &oci_spec::runtime::Process,
    ) -> Result<(), ServiceError> {
        if !self.deliveries.any() {
            return Ok(());
        }
        let volumes = self.volumes_within_reach(container);
        let args = process.args().clone().unwrap_or_default();
        if let Some(volume) = self.deliveries.exec_denied_for(&volumes, &args) {
            return Err(ServiceError::PermissionDenied(format!(
                "exec {exec_id} into container {id} is refused: the container can reach the sealed model in volume {volume} (it mounts the volume, or shares a pid namespace with a container that does), and the model owner's declaration neither allows exec nor lists this command line {args:?}; the owner can list it (an exec probe, say) in the pod annotation io.veil.model.exec-commands or allow every exec with io.veil.model.exec: allow, either of which changes the declaration's digest (SNP host_data) that the key broker sees"
            )));
        }
        // Empty args match no listed command: a volume whose owner denies exec at all, so
        // this exec runs only because its command line is listed.
        if self.deliveries.exec_denied_for(&volumes, &[]).is_some() {
            guard::check_listed_exec(process, &container.reach.env).map_err(|refusal| {
                ServiceError::PermissionDenied(format!(
                    "exec {exec_id} into container {id} is refused: its command line is one the model owner listed, but {refusal}"
                ))
            })?;
        }
        Ok(())
    }

    /// The memory volumes an exec into `container` could reach: those it mounts, and those
    /// mounted by containers sharing its pid namespace (whose files it could read through
    /// `/proc/<pid>/root`).
    fn volumes_within_reach(&self, container: &ContainerEntry) -> Vec<String> {
        // The container itself is among them. A namespace that cannot be read counts as
        // shared, so that the refusal errs safe.
        let namespace = procfs::pid_namespace_of(container.init.pid);
        locked(&self.containers)
            .values()
            .filter(|other| {
                namespace.is_none()
                    || procfs::pid_namespace_of(other.init.pid).is_none_or(|n| Some(n) == namespace)
            })
            .flat_map(|other| other.reach.volumes())
            .collect()
    }

    /// Starts the pod's model delivery (once; later containers repeat the declaration).
    fn start_delivery(&self, id: &str, delivery: &api::ModelDelivery) -> Result<(), ServiceError> {
        if !self.volumes.is_mounted(&delivery.volume) {
            return Err(ServiceError::InvalidArgument(format!(
                "container {id}: model delivery targets volume {:?}, which is not among its memory volumes",
                delivery.volume
            )));
        }
        self.deliveries
            .start(delivery, self.volumes.path(&delivery.volume))
            .map_err(|e| ServiceError::InvalidArgument(format!("container {id}: {e}")))
    }

    async fn start(&self, id: &str) -> Result<u32, ServiceError> {
        let container = self.container(id)?;
        if let Err(failed) = self.deliveries.wait_for(&container.reach.volumes()).await {
            return Err(ServiceError::FailedPrecondition(format!(
                "container {id} not started: {failed}"
            )));
        }
        let runtime_id = id.to_string();
        self.on_runtime(&format!("start container {id}"), move |runtime| {
            runtime.start(&runtime_id)
        })
        .await?;
        tracing::info!(container = %id, pid = container.init.pid, "container started");
        Ok(container.init.pid as u32)
    }

    async fn exec(&self, request: api::ExecProcessRequest) -> Result<u32, ServiceError> {
        let id = request.container_id.clone();
        let exec_id = request.exec_id.clone();
        validate_id(&exec_id)?;
        let container = self.container(&id)?;
        if container.init.has_exited() {
            return Err(ServiceError::FailedPrecondition(format!(
                "container {id} is not running; cannot exec {exec_id}"
            )));
        }
        if locked(&container.execs).contains_key(&exec_id) {
            return Err(ServiceError::AlreadyExists(format!(
                "exec {exec_id} in container {id}"
            )));
        }
        let process: oci_spec::runtime::Process = serde_json::from_slice(&request.oci_process_json)
            .map_err(|e| {
                ServiceError::InvalidArgument(format!("OCI process of exec {exec_id}: {e}"))
            })?;
        self.check_exec_reach(&container, &id, &exec_id, &process)?;
        let stdio = StdioRequest::from(request.stdio.get_or_default());
        let (runtime_id, runtime_exec) = (id.clone(), exec_id.clone());
        let entry = self
            .spawn_process(
                format!("exec {exec_id} in container {id}"),
                stdio,
                move |runtime| runtime.exec(&runtime_id, &runtime_exec, process, stdio),
            )
            .await?;
        let pid = entry.pid;
        locked(&container.execs).insert(exec_id.clone(), Arc::new(entry));
        tracing::info!(container = %id, exec = %exec_id, pid, "process exec'd");
        Ok(pid as u32)
    }

    fn signal(&self, request: &api::SignalProcessRequest) -> Result<(), ServiceError> {
        let signal = i32::try_from(request.signal)
            .ok()
            .and_then(|n| Signal::try_from(n).ok())
            .ok_or_else(|| {
                ServiceError::InvalidArgument(format!(
                    "signal {} is not a valid signal number",
                    request.signal
                ))
            })?;
        let process = self.process(&request.container_id, &request.exec_id)?;
        let targets = if request.all {
            self.container_processes(&request.container_id, process.pid)
        } else {
            vec![process.pid]
        };
        for pid in targets {
            match kill(Pid::from_raw(pid), signal) {
                Ok(()) | Err(nix::Error::ESRCH) => {}
                Err(e) => {
                    return Err(ServiceError::Io {
                        what: format!("send {signal} to pid {pid}"),
                        source: e.into(),
                    })
                }
            }
        }
        tracing::info!(container = %request.container_id, exec = %request.exec_id, %signal, all = request.all, "signal delivered");
        Ok(())
    }

    fn remove(&self, id: &str) -> Result<(), ServiceError> {
        let container = self.container(id)?;
        if !container.init.has_exited() {
            return Err(ServiceError::FailedPrecondition(format!(
                "container {id} is still running; kill it before removing it"
            )));
        }
        self.runtime
            .delete(id)
            .map_err(|source| ServiceError::Runtime {
                what: format!("remove container {id}"),
                source,
            })?;
        locked(&self.containers).remove(id);
        container.own_rootfs.release(id);
        let share_mounts = crate::shares::release(Path::new(veil_protocol::GUEST_SHARED_DIR), id);
        tracing::info!(container = %id, share_mounts, "container removed");
        Ok(())
    }

    /// Forgets exec `exec_id` of container `id` once it has exited, closing the streams the
    /// agent kept for it.
    fn remove_exec(&self, id: &str, exec_id: &str) -> Result<(), ServiceError> {
        if exec_id.is_empty() {
            return Err(ServiceError::InvalidArgument(format!(
                "no exec id: remove container {id} itself with RemoveContainer"
            )));
        }
        let process = self.process(id, exec_id)?;
        if !process.has_exited() {
            return Err(ServiceError::FailedPrecondition(format!(
                "exec {exec_id} in container {id} is still running; kill it before removing it"
            )));
        }
        locked(&self.container(id)?.execs).remove(exec_id);
        tracing::debug!(container = %id, exec = %exec_id, "process removed");
        Ok(())
    }

    fn stats(&self, id: &str) -> Result<api::StatsContainerResponse, ServiceError> {
        self.container(id)?;
        let stats = self
            .runtime
            .stats(id)
            .map_err(|source| ServiceError::Runtime {
                what: format!("read the cgroup statistics of container {id}"),
                source,
            })?;
        Ok(stats::stats_response(stats))
    }

    /// Every process of container `id` (init pid `init`): its cgroup's, so a container that
    /// shares the pod's pid namespace never reaches its neighbours' processes. Without cgroups
    /// (the test runtime) the init's own pid namespace stands in; if the cgroup cannot be read,
    /// only the init, never a guess that could be the pod's shared namespace.
    fn container_processes(&self, id: &str, init: i32) -> Vec<i32> {
        match self.runtime.processes(id) {
            Ok(Some(pids)) => pids,
            Ok(None) => procfs::pids_in_pid_namespace_of(init),
            Err(error) => {
                tracing::warn!(container = id, %error, "cannot list the container's processes; only its init is reached");
                vec![init]
            }
        }
    }

    /// Whether the kernel's OOM killer acted in container `id`'s cgroup; a runtime without
    /// cgroups, or a cgroup that cannot be read, says no.
    fn oom_killed(&self, id: &str) -> bool {
        match self.runtime.oom_kills(id) {
            Ok(kills) => kills > 0,
            Err(error) => {
                tracing::debug!(container = id, %error, "no cgroup to check for an OOM kill");
                false
            }
        }
    }

    fn update(&self, request: &api::UpdateContainerRequest) -> Result<(), ServiceError> {
        let id = &request.container_id;
        self.container(id)?;
        let resources: oci_spec::runtime::LinuxResources =
            serde_json::from_slice(&request.linux_resources_json).map_err(|e| {
                ServiceError::InvalidArgument(format!(
                    "resources of container {id} (OCI LinuxResources JSON): {e}"
                ))
            })?;
        self.runtime
            .update(id, &resources)
            .map_err(|source| ServiceError::Runtime {
                what: format!("update the resources of container {id}"),
                source,
            })?;
        tracing::info!(container = %id, "container resources updated");
        Ok(())
    }

    /// Pauses or resumes a container (the runtime polls cgroup.events until the kernel is
    /// done).
    async fn freeze(&self, request: &api::FreezeContainerRequest) -> Result<(), ServiceError> {
        let id = request.container_id.clone();
        self.container(&id)?;
        let what = format!(
            "{} container {id}",
            if request.frozen { "pause" } else { "resume" }
        );
        let (runtime_id, frozen) = (id.clone(), request.frozen);
        self.on_runtime(&what, move |runtime| runtime.freeze(&runtime_id, frozen))
            .await?;
        tracing::info!(container = %id, frozen, "{what}: done");
        Ok(())
    }

    /// Runs `call` on a blocking thread, off the async workers (the guest may have one vCPU,
    /// and runtime calls wait on the kernel), naming `what` in its errors.
    async fn on_runtime<T, F>(&self, what: &str, call: F) -> Result<T, ServiceError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn ContainerRuntime) -> Result<T, crate::runtime::RuntimeError>
            + Send
            + 'static,
    {
        let runtime = self.runtime.clone();
        tokio::task::spawn_blocking(move || call(runtime.as_ref()))
            .await
            .map_err(|join| ServiceError::Io {
                what: what.to_string(),
                source: std::io::Error::other(join.to_string()),
            })?
            .map_err(|source| ServiceError::Runtime {
                what: what.to_string(),
                source,
            })
    }

    fn kill_everything(&self) {
        let containers: Vec<_> = locked(&self.containers)
            .iter()
            .map(|(id, c)| (id.clone(), c.clone()))
            .collect();
        for (id, container) in containers {
            for pid in self.container_processes(&id, container.init.pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// The rootfs of a container approved to read a delivered model, once verified.
#[derive(Debug)]
enum VerifiedRootfs {
    /// A copy of the shared rootfs in guest memory.
    Copy(PathBuf),
    /// The node's erofs image through dm-verity, under an overlay in guest memory.
    Image(reader_image::MountedImage),
}

impl VerifiedRootfs {
    fn root(&self) -> PathBuf {
        match self {
            VerifiedRootfs::Copy(copy) => copy.clone(),
            VerifiedRootfs::Image(image) => image.root(),
        }
    }

    fn release(&self, id: &str) {
        match self {
            VerifiedRootfs::Copy(copy) => {
                if let Err(error) = readers::remove_copy(copy) {
                    tracing::warn!(container = %id, %error, "the verified copy of its rootfs stays");
                }
            }
            VerifiedRootfs::Image(image) => image.release(id),
        }
    }
}

/// An approved reader's spec with its own IPC namespace and `/dev/shm`, and what it then
/// reaches.
fn isolate_reader(
    id: &str,
    mut spec: oci_spec::runtime::Spec,
    rootfs: &std::path::Path,
    volumes: &[api::MemoryVolume],
) -> (oci_spec::runtime::Spec, Reach) {
    let shm_bytes = volumes
        .iter()
        .find(|v| v.name == veil_protocol::POD_SHM_VOLUME)
        .map_or(0, |v| v.size_bytes);
    let changed = reader_isolation::isolate(&mut spec, shm_bytes);
    if !changed.is_empty() {
        tracing::info!(container = %id, own = ?changed, "an approved reader gets its own instead of the pod's");
    }
    let reach = Reach::of(&spec, rootfs);
    (spec, reach)
}

fn volume_use(id: &str, reach: &Reach, approved: bool) -> VolumeUse {
    VolumeUse {
        id: id.to_string(),
        approved,
        mounts: reach.volumes(),
        writes: reach.written_volumes(),
    }
}

/// What a container in a VM that receives a model runs from in guest memory rather than
/// straight from the share.
#[derive(Debug, Default)]
struct OwnRootfs {
    /// Its verified rootfs, when it mounts a volume whose owner approves its readers.
    verified: Option<VerifiedRootfs>,
    /// Otherwise the empty directory its shared rootfs is bound onto, pinned to what the
    /// checks saw.
    mountpoint: Option<PathBuf>,
}

impl OwnRootfs {
    fn prepare(
        id: &str,
        confined: bool,
        verified: Option<VerifiedRootfs>,
    ) -> Result<OwnRootfs, ServiceError> {
        if verified.is_some() || !confined {
            return Ok(OwnRootfs {
                verified,
                mountpoint: None,
            });
        }
        let mountpoint = guard::pinned_rootfs_mountpoint(id).map_err(|e| {
            ServiceError::FailedPrecondition(format!(
                "container {id}: create the guest directory its rootfs is bound onto under {}: {e}",
                guard::PINNED_ROOTFS_DIR
            ))
        })?;
        Ok(OwnRootfs {
            verified: None,
            mountpoint: Some(mountpoint),
        })
    }

    fn run_from(&self) -> Option<PathBuf> {
        self.verified
            .as_ref()
            .map(VerifiedRootfs::root)
            .or_else(|| self.mountpoint.clone())
    }

    fn is_verified(&self) -> bool {
        self.verified.is_some()
    }

    /// Guest memory only: the container is gone either way, so failures are logged.
    fn release(&self, id: &str) {
        if let Some(verified) = &self.verified {
            verified.release(id);
        }
        if let Some(mountpoint) = &self.mountpoint {
            if let Err(error) = guard::remove_pinned_rootfs_mountpoint(mountpoint) {
                tracing::warn!(container = %id, mountpoint = %mountpoint.display(), %error, "the rootfs mount point stays");
            }
        }
    }
}

fn keep_or_drain(fd: Option<OwnedFd>, wanted: bool) -> Option<OwnedFd> {
    match fd {
        Some(fd) if !wanted => {
            if let Ok(stream) = FdReader::new(fd) {
                tokio::spawn(async move {
                    while matches!(stream.read(MAX_READ).await, Ok(data) if !data.is_empty()) {}
                });
            }
            None
        }
        other => other,
    }
}

fn validate_id(id: &str) -> Result<(), ServiceError> {
    let valid = !id.is_empty()
        && id.len() <= 256
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !id.starts_with('.');
    if valid {
        Ok(())
    } else {
        Err(ServiceError::InvalidArgument(format!(
            "id {id:?} must be 1-256 characters of letters, digits, '-', '_' or '.', not starting with '.'"
        )))
    }
}

fn read_len(requested: u32) -> usize {
    usize::try_from(requested)
        .unwrap_or(MAX_READ)
        .clamp(1, MAX_READ)
}

fn stream_error(what: &str) -> impl FnOnce(std::io::Error) -> ServiceError + '_ {
    move |source| ServiceError::Io {
        what: what.to_string(),
        source,
    }
}

#[async_trait]
impl api::AgentService for AgentService {
    async fn ping(
        &self,
        _: &TtrpcContext,
        _: api::PingRequest,
    ) -> ttrpc::Result<api::PingResponse> {
        Ok(api::PingResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            kernel_release: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            ready_at_unix_us: unix_us(self.ready_at),
            ..Default::default()
        })
    }

    async fn create_container(
        &self,
        _: &TtrpcContext,
        request: api::CreateContainerRequest,
    ) -> ttrpc::Result<api::CreateContainerResponse> {
        let pid = self.create(request).await?;
        Ok(api::CreateContainerResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start_container(
        &self,
        _: &TtrpcContext,
        request: api::StartContainerRequest,
    ) -> ttrpc::Result<api::StartContainerResponse> {
        let pid = self.start(&request.container_id).await?;
        Ok(api::StartContainerResponse {
            pid,
            ..Default::default()
        })
    }

    async fn exec_process(
        &self,
        _: &TtrpcContext,
        request: api::ExecProcessRequest,
    ) -> ttrpc::Result<api::ExecProcessResponse> {
        let pid = self.exec(request).await?;
        Ok(api::ExecProcessResponse {
            pid,
            ..Default::default()
        })
    }

    async fn signal_process(
        &self,
        _: &TtrpcContext,
        request: api::SignalProcessRequest,
    ) -> ttrpc::Result<api::Empty> {
        self.signal(&request)?;
        Ok(api::Empty::default())
    }

    async fn wait_process(
        &self,
        _: &TtrpcContext,
        request: api::WaitProcessRequest,
    ) -> ttrpc::Result<api::WaitProcessResponse> {
        let mut exit = self
            .process(&request.container_id, &request.exec_id)?
            .exit
            .clone();
        let exit = exit.wait().await;
        Ok(api::WaitProcessResponse {
            exit_status: exit.status,
            exited_at_unix_us: unix_us(exit.at),
            oom_killed: request.exec_id.is_empty() && self.oom_killed(&request.container_id),
            ..Default::default()
        })
    }

    async fn list_processes(
        &self,
        _: &TtrpcContext,
        request: api::ListProcessesRequest,
    ) -> ttrpc::Result<api::ListProcessesResponse> {
        let container = self.container(&request.container_id)?;
        let pids = if container.init.has_exited() {
            Vec::new()
        } else {
            self.container_processes(&request.container_id, container.init.pid)
        };
        Ok(api::ListProcessesResponse {
            pids: pids.into_iter().map(|p| p as u32).collect(),
            ..Default::default()
        })
    }

    async fn remove_container(
        &self,
        _: &TtrpcContext,
        request: api::RemoveContainerRequest,
    ) -> ttrpc::Result<api::Empty> {
        self.remove(&request.container_id)?;
        Ok(api::Empty::default())
    }

    async fn remove_process(
        &self,
        _: &TtrpcContext,
        request: api::RemoveProcessRequest,
    ) -> ttrpc::Result<api::Empty> {
        self.remove_exec(&request.container_id, &request.exec_id)?;
        Ok(api::Empty::default())
    }

    async fn read_stdout(
        &self,
        _: &TtrpcContext,
        request: api::ReadStreamRequest,
    ) -> ttrpc::Result<api::ReadStreamResponse> {
        let process = self.process(&request.container_id, &request.exec_id)?;
        let data = match &process.stdout {
            Some(stream) => stream
                .read(read_len(request.max_len))
                .await
                .map_err(stream_error("read stdout"))?,
            None => Vec::new(),
        };
        Ok(api::ReadStreamResponse {
            data,
            ..Default::default()
        })
    }

    async fn read_stderr(
        &self,
        _: &TtrpcContext,
        request: api::ReadStreamRequest,
    ) -> ttrpc::Result<api::ReadStreamResponse> {
        let process = self.process(&request.container_id, &request.exec_id)?;
        let data = match &process.stderr {
            Some(stream) => stream
                .read(read_len(request.max_len))
                .await
                .map_err(stream_error("read stderr"))?,
            None => Vec::new(),
        };
        Ok(api::ReadStreamResponse {
            data,
            ..Default::default()
        })
    }

    async fn write_stdin(
        &self,
        _: &TtrpcContext,
        request: api::WriteStreamRequest,
    ) -> ttrpc::Result<api::WriteStreamResponse> {
        let process = self.process(&request.container_id, &request.exec_id)?;
        let stdin = process.stdin.lock().await;
        let stream = stdin.as_ref().ok_or_else(|| {
            ServiceError::FailedPrecondition(format!(
                "stdin of {}/{} is closed or was not requested",
                request.container_id, request.exec_id
            ))
        })?;
        let len = stream
            .write_all(&request.data)
            .await
            .map_err(stream_error("write stdin"))?;
        Ok(api::WriteStreamResponse {
            len: len as u32,
            ..Default::default()
        })
    }

    async fn close_stdin(
        &self,
        _: &TtrpcContext,
        request: api::CloseStdinRequest,
    ) -> ttrpc::Result<api::Empty> {
        let process = self.process(&request.container_id, &request.exec_id)?;
        process.stdin.lock().await.take();
        Ok(api::Empty::default())
    }

    async fn resize_tty(
        &self,
        _: &TtrpcContext,
        request: api::ResizeTtyRequest,
    ) -> ttrpc::Result<api::Empty> {
        let process = self.process(&request.container_id, &request.exec_id)?;
        let terminal = process.terminal.as_ref().ok_or_else(|| {
            ServiceError::FailedPrecondition(format!(
                "{}/{} has no terminal to resize",
                request.container_id, request.exec_id
            ))
        })?;
        let rows = u16::try_from(request.rows).unwrap_or(u16::MAX);
        let columns = u16::try_from(request.columns).unwrap_or(u16::MAX);
        veil_container::resize_pty(std::os::fd::AsFd::as_fd(terminal), rows, columns).map_err(
            |e| ServiceError::Io {
                what: "resize terminal".into(),
                source: std::io::Error::other(e.to_string()),
            },
        )?;
        Ok(api::Empty::default())
    }

    async fn update_interfaces(
        &self,
        _: &TtrpcContext,
        request: api::UpdateInterfacesRequest,
    ) -> ttrpc::Result<api::Empty> {
        self.pod_network
            .apply(&request.interfaces)
            .await
            .map_err(ServiceError::from)?;
        Ok(api::Empty::default())
    }

    async fn stats_container(
        &self,
        _: &TtrpcContext,
        request: api::StatsContainerRequest,
    ) -> ttrpc::Result<api::StatsContainerResponse> {
        Ok(self.stats(&request.container_id)?)
    }

    async fn update_container(
        &self,
        _: &TtrpcContext,
        request: api::UpdateContainerRequest,
    ) -> ttrpc::Result<api::Empty> {
        self.update(&request)?;
        Ok(api::Empty::default())
    }

    async fn freeze_container(
        &self,
        _: &TtrpcContext,
        request: api::FreezeContainerRequest,
    ) -> ttrpc::Result<api::Empty> {
        self.freeze(&request).await?;
        Ok(api::Empty::default())
    }

    async fn connect_port(
        &self,
        _: &TtrpcContext,
        request: api::ConnectPortRequest,
    ) -> ttrpc::Result<api::ConnectPortResponse> {
        let connection_id = self
            .forwarded
            .connect(request.port)
            .await
            .map_err(ServiceError::from)?;
        Ok(api::ConnectPortResponse {
            connection_id,
            ..Default::default()
        })
    }

    async fn read_connection(
        &self,
        _: &TtrpcContext,
        request: api::ReadConnectionRequest,
    ) -> ttrpc::Result<api::ReadConnectionResponse> {
        let data = self
            .forwarded
            .read(request.connection_id, request.max_len)
            .await
            .map_err(ServiceError::from)?;
        Ok(api::ReadConnectionResponse {
            data,
            ..Default::default()
        })
    }

    async fn write_connection(
        &self,
        _: &TtrpcContext,
        request: api::WriteConnectionRequest,
    ) -> ttrpc::Result<api::Empty> {
        self.forwarded
            .write(request.connection_id, &request.data)
            .await
            .map_err(ServiceError::from)?;
        Ok(api::Empty::default())
    }

    async fn close_connection(
        &self,
        _: &TtrpcContext,
        request: api::CloseConnectionRequest,
    ) -> ttrpc::Result<api::Empty> {
        self.forwarded
            .close(request.connection_id, request.write_only)
            .await
            .map_err(ServiceError::from)?;
        Ok(api::Empty::default())
    }

    async fn shutdown(
        &self,
        _: &TtrpcContext,
        _: api::ShutdownRequest,
    ) -> ttrpc::Result<api::Empty> {
        tracing::info!("shutdown requested: stopping every container and powering off");
        self.kill_everything();
        tokio::spawn(async {
            // Let the reply reach the shim before the VM disappears.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            if std::process::id() == 1 {
                crate::pid1::power_off();
            }
        });
        Ok(api::Empty::default())
    }
}

#[cfg(test)]
// Tests hold the one-reaper lock across awaits on purpose: it serializes them.
#[allow(clippy::await_holding_lock, clippy::zombie_processes)]
mod tests;

//! containerd's Task RPCs, each a thin translation onto [`TaskService`].

use async_trait::async_trait;
use containerd_shim::api;
use containerd_shim::protos::cgroups_v2::metrics;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::shim_async::Task;
use containerd_shim::{TtrpcContext, TtrpcResult};

use super::events::timestamp;
use super::process::ProcessState;
use super::TaskService;
use crate::error::Error;
use crate::io::StdioPaths;
use veil_protocol as agent_api;

fn state_response(bundle: &str, process: &ProcessState) -> api::StateResponse {
    let exit = process.exit();
    api::StateResponse {
        id: process.container_id.clone(),
        bundle: bundle.to_string(),
        pid: process.pid(),
        status: process.status().to_containerd().into(),
        stdin: process.stdio.stdin.clone(),
        stdout: process.stdio.stdout.clone(),
        stderr: process.stdio.stderr.clone(),
        terminal: process.stdio.terminal,
        exit_status: exit.map(|e| e.status).unwrap_or_default(),
        exited_at: exit
            .map(|e| MessageField::some(timestamp(e.at)))
            .unwrap_or_default(),
        exec_id: process.exec_id.clone(),
        ..Default::default()
    }
}

/// The type URL containerd's typeurl registry gives cgroups v2 `Metrics`; CRI's
/// ContainerStats decodes the Stats answer by it.
const CGROUPS_V2_METRICS_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

/// The OCI `LinuxResources` JSON of an Update, which containerd's typeurl marshals as
/// JSON under `.../opencontainers/runtime-spec/<major>/LinuxResources`.
fn linux_resources_json(request: &api::UpdateTaskRequest) -> Result<Vec<u8>, Error> {
    let any = request.resources.as_ref().ok_or_else(|| {
        Error::InvalidArgument(format!("update of {} carries no resources", request.id))
    })?;
    if !any.type_url.ends_with("/LinuxResources") {
        return Err(Error::InvalidArgument(format!(
            "update of {}: resources of type {:?} are not OCI LinuxResources; veil runs Linux guests",
            request.id, any.type_url
        )));
    }
    Ok(any.value.clone())
}

/// The agent's cgroup v2 figures as containerd's cgroups v2 `Metrics` (kubelet's working
/// set is `usage - inactive_file`, its CPU usage `cpu.usage_usec`).
fn cgroups_v2_metrics(stats: &agent_api::StatsContainerResponse) -> metrics::Metrics {
    let cpu = &stats.cpu;
    let memory = &stats.memory;
    let stat = |key: &str| memory.stat.get(key).copied().unwrap_or(0);
    metrics::Metrics {
        pids: MessageField::some(metrics::PidsStat {
            current: stats.pids.current,
            limit: stats.pids.max,
            ..Default::default()
        }),
        cpu: MessageField::some(metrics::CPUStat {
            usage_usec: cpu.usage_usec,
            user_usec: cpu.user_usec,
            system_usec: cpu.system_usec,
            nr_periods: cpu.nr_periods,
            nr_throttled: cpu.nr_throttled,
            throttled_usec: cpu.throttled_usec,
            ..Default::default()
        }),
        memory: MessageField::some(metrics::MemoryStat {
            anon: stat("anon"),
            file: stat("file"),
            kernel_stack: stat("kernel_stack"),
            slab: stat("slab"),
            sock: stat("sock"),
            shmem: stat("shmem"),
            file_mapped: stat("file_mapped"),
            file_dirty: stat("file_dirty"),
            file_writeback: stat("file_writeback"),
            anon_thp: stat("anon_thp"),
            inactive_anon: stat("inactive_anon"),
            active_anon: stat("active_anon"),
            inactive_file: stat("inactive_file"),
            active_file: stat("active_file"),
            unevictable: stat("unevictable"),
            slab_reclaimable: stat("slab_reclaimable"),
            slab_unreclaimable: stat("slab_unreclaimable"),
            pgfault: stat("pgfault"),
            pgmajfault: stat("pgmajfault"),
            workingset_refault: stat("workingset_refault_file"),
            workingset_activate: stat("workingset_activate_file"),
            workingset_nodereclaim: stat("workingset_nodereclaim"),
            pgrefill: stat("pgrefill"),
            pgscan: stat("pgscan"),
            pgsteal: stat("pgsteal"),
            pgactivate: stat("pgactivate"),
            pgdeactivate: stat("pgdeactivate"),
            pglazyfree: stat("pglazyfree"),
            pglazyfreed: stat("pglazyfreed"),
            thp_fault_alloc: stat("thp_fault_alloc"),
            thp_collapse_alloc: stat("thp_collapse_alloc"),
            usage: memory.current,
            usage_limit: memory.max,
            swap_usage: memory.swap_current,
            ..Default::default()
        }),
        memory_events: MessageField::some(metrics::MemoryEvents {
            low: memory.events.low,
            high: memory.events.high,
            max: memory.events.max,
            oom: memory.events.oom,
            oom_kill: memory.events.oom_kill,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[async_trait]
impl Task for TaskService {
    async fn state(
        &self,
        _: &TtrpcContext,
        request: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let (container, process) = self.process(&request.id, &request.exec_id)?;
        Ok(state_response(
            &container.bundle.display().to_string(),
            &process,
        ))
    }

    async fn create(
        &self,
        _: &TtrpcContext,
        request: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let pid = TaskService::create(self, &request).await?;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _: &TtrpcContext,
        request: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let pid = TaskService::start(self, &request.id, &request.exec_id).await?;
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn delete(
        &self,
        _: &TtrpcContext,
        request: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let (pid, exit) = TaskService::delete(self, &request.id, &request.exec_id).await?;
        Ok(api::DeleteResponse {
            pid,
            exit_status: exit.status,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        })
    }

    async fn pids(
        &self,
        _: &TtrpcContext,
        request: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let sandbox = self.current_sandbox().await?;
        let pids = sandbox.agent().list_processes(&request.id).await?;
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| containerd_shim::protos::types::task::ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn pause(&self, _: &TtrpcContext, request: api::PauseRequest) -> TtrpcResult<api::Empty> {
        self.freeze(&request.id, true).await?;
        Ok(api::Empty::default())
    }

    async fn resume(
        &self,
        _: &TtrpcContext,
        request: api::ResumeRequest,
    ) -> TtrpcResult<api::Empty> {
        self.freeze(&request.id, false).await?;
        Ok(api::Empty::default())
    }

    async fn checkpoint(
        &self,
        _: &TtrpcContext,
        _: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(Error::Unimplemented("Checkpoint").into())
    }

    async fn kill(&self, _: &TtrpcContext, request: api::KillRequest) -> TtrpcResult<api::Empty> {
        TaskService::kill(
            self,
            &request.id,
            &request.exec_id,
            request.signal,
            request.all,
        )
        .await?;
        Ok(api::Empty::default())
    }

    async fn exec(
        &self,
        _: &TtrpcContext,
        request: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        let container = self.container(&request.id)?;
        if request.exec_id.is_empty() {
            return Err(Error::InvalidArgument("exec id is empty".into()).into());
        }
        let spec = request
            .spec
            .as_ref()
            .map(|any| any.value.clone())
            .ok_or_else(|| {
                Error::InvalidArgument(format!("exec {} has no process spec", request.exec_id))
            })?;
        let stdio = StdioPaths {
            stdin: request.stdin.clone(),
            stdout: request.stdout.clone(),
            stderr: request.stderr.clone(),
            terminal: request.terminal,
        };
        {
            let mut execs = super::locked(&container.execs);
            if execs.contains_key(&request.exec_id) {
                return Err(Error::AlreadyExists(format!(
                    "process {} of container {}",
                    request.exec_id, request.id
                ))
                .into());
            }
            let process = ProcessState::new(&request.id, &request.exec_id, stdio, Some(spec));
            execs.insert(request.exec_id.clone(), std::sync::Arc::new(process));
        }
        self.events.exec_added(&request.id, &request.exec_id).await;
        Ok(api::Empty::default())
    }

    async fn resize_pty(
        &self,
        _: &TtrpcContext,
        request: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        self.process(&request.id, &request.exec_id)?;
        let sandbox = self.current_sandbox().await?;
        sandbox
            .agent()
            .resize_tty(&request.id, &request.exec_id, request.height, request.width)
            .await?;
        Ok(api::Empty::default())
    }

    async fn close_io(
        &self,
        _: &TtrpcContext,
        request: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        let (_, process) = self.process(&request.id, &request.exec_id)?;
        if request.stdin {
            process.stdin_end.close();
        }
        Ok(api::Empty::default())
    }

    async fn update(
        &self,
        _: &TtrpcContext,
        request: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        self.container(&request.id)?;
        let resources = linux_resources_json(&request)?;
        let sandbox = self.current_sandbox().await?;
        sandbox
            .agent()
            .update_container(&request.id, resources)
            .await?;
        Ok(api::Empty::default())
    }

    async fn wait(
        &self,
        _: &TtrpcContext,
        request: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let (_, process) = self.process(&request.id, &request.exec_id)?;
        let exit = process.wait().await;
        Ok(api::WaitResponse {
            exit_status: exit.status,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        })
    }

    async fn stats(
        &self,
        _: &TtrpcContext,
        request: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        self.container(&request.id)?;
        let sandbox = self.current_sandbox().await?;
        let stats = sandbox.agent().stats_container(&request.id).await?;
        let metrics = cgroups_v2_metrics(&stats)
            .write_to_bytes()
            .map_err(|e| Error::Io {
                what: format!(
                    "encode the cgroup metrics of {} (a bug in veil)",
                    request.id
                ),
                source: std::io::Error::other(e),
            })?;
        Ok(api::StatsResponse {
            stats: MessageField::some(Any {
                type_url: CGROUPS_V2_METRICS_TYPE_URL.to_string(),
                value: metrics,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _: &TtrpcContext,
        request: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self
            .container(&request.id)
            .map(|c| c.init.pid())
            .unwrap_or_default();
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _: &TtrpcContext, _: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        TaskService::shutdown(self).await;
        Ok(api::Empty::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update_request(type_url: &str, value: &[u8]) -> api::UpdateTaskRequest {
        api::UpdateTaskRequest {
            id: "web".into(),
            resources: MessageField::some(Any {
                type_url: type_url.into(),
                value: value.to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn update_forwards_oci_linux_resources_json() {
        let json = br#"{"memory":{"limit":134217728}}"#;
        let request = update_request(
            "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources",
            json,
        );
        assert_eq!(linux_resources_json(&request).unwrap(), json.to_vec());
    }

    #[test]
    fn update_refuses_other_resource_types_and_none() {
        let windows = update_request(
            "types.containerd.io/opencontainers/runtime-spec/1/WindowsResources",
            b"{}",
        );
        let error = linux_resources_json(&windows).unwrap_err().to_string();
        assert!(error.contains("WindowsResources"), "{error}");
        let empty = api::UpdateTaskRequest {
            id: "web".into(),
            ..Default::default()
        };
        assert!(linux_resources_json(&empty).is_err());
    }

    #[test]
    fn metrics_carry_what_kubelet_reads() {
        let stats = agent_api::StatsContainerResponse {
            cpu: MessageField::some(agent_api::CpuStats {
                usage_usec: 2_000,
                user_usec: 1_500,
                system_usec: 500,
                ..Default::default()
            }),
            memory: MessageField::some(agent_api::MemoryStats {
                current: 10 << 20,
                max: 64 << 20,
                stat: [
                    ("inactive_file".to_string(), 1u64 << 20),
                    ("anon".to_string(), 8 << 20),
                ]
                .into_iter()
                .collect(),
                events: MessageField::some(agent_api::MemoryEvents {
                    oom_kill: 1,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            pids: MessageField::some(agent_api::PidsStats {
                current: 3,
                max: u64::MAX,
                ..Default::default()
            }),
            ..Default::default()
        };
        let bytes = cgroups_v2_metrics(&stats).write_to_bytes().unwrap();
        let decoded = metrics::Metrics::parse_from_bytes(&bytes).unwrap();
        assert_eq!(decoded.cpu.usage_usec, 2_000);
        assert_eq!(decoded.memory.usage, 10 << 20);
        assert_eq!(decoded.memory.usage_limit, 64 << 20);
        assert_eq!(decoded.memory.inactive_file, 1 << 20);
        assert_eq!(decoded.memory.anon, 8 << 20);
        assert_eq!(decoded.memory_events.oom_kill, 1);
        assert_eq!(decoded.pids.current, 3);
        assert_eq!(decoded.pids.limit, u64::MAX);
    }
}

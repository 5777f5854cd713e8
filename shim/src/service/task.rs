//! containerd's Task RPCs, each a thin translation onto [`TaskService`].

use async_trait::async_trait;
use containerd_shim::api;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::shim_async::Task;
use containerd_shim::{TtrpcContext, TtrpcResult};

use super::events::timestamp;
use super::process::ProcessState;
use super::TaskService;
use crate::error::Error;
use crate::io::StdioPaths;

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

    async fn pause(&self, _: &TtrpcContext, _: api::PauseRequest) -> TtrpcResult<api::Empty> {
        Err(Error::Unimplemented("Pause").into())
    }

    async fn resume(&self, _: &TtrpcContext, _: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        Err(Error::Unimplemented("Resume").into())
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
            process.close_stdin.notify_one();
        }
        Ok(api::Empty::default())
    }

    async fn update(&self, _: &TtrpcContext, _: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        Err(Error::Unimplemented("Update (resource limits)").into())
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
        _: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        Err(Error::Unimplemented("Stats").into())
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

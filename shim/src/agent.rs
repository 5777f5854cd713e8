//! The shim's side of the agent channel: connecting through the VM's socket and
//! one method per agent call, each with a timeout unless it is a deliberate long wait.

use std::time::{Duration, Instant};

use veil_protocol as api;
use veil_protocol::ttrpc::{self, context, r#async::transport::Socket, r#async::Client};

use crate::error::{Error, Result};
use crate::hypervisor::{Channel, Vm};

/// A connected agent.
#[derive(Clone)]
pub struct AgentClient {
    client: api::AgentServiceClient,
    timeout: Duration,
    /// Bound on a container start that may wait for the pod's model delivery.
    delivery_timeout: Duration,
}

fn agent_error(what: &str, error: ttrpc::Error) -> Error {
    match error {
        ttrpc::Error::RpcStatus(status) => {
            let detail = status.message().to_string();
            match status.code() {
                ttrpc::Code::NOT_FOUND => Error::NotFoundInGuest(detail),
                ttrpc::Code::ALREADY_EXISTS => Error::AlreadyExists(detail),
                ttrpc::Code::INVALID_ARGUMENT => Error::InvalidArgument(detail),
                ttrpc::Code::FAILED_PRECONDITION => Error::FailedPrecondition(detail),
                ttrpc::Code::PERMISSION_DENIED => Error::PermissionDenied(detail),
                _ => Error::Agent {
                    what: what.to_string(),
                    detail,
                },
            }
        }
        other => Error::Agent {
            what: what.to_string(),
            detail: format!("{other}; the VM may have stopped (see its console log)"),
        },
    }
}

async fn open_channel(channel: &Channel) -> std::io::Result<Socket> {
    match channel {
        Channel::Serial { socket } => {
            Ok(Socket::new(tokio::net::UnixStream::connect(socket).await?))
        }
        Channel::Vsock { cid } => {
            Socket::connect(format!("vsock://{cid}:{}", veil_protocol::VSOCK_PORT)).await
        }
    }
}

/// Connects to the agent channel. A serial socket appears within milliseconds of QEMU
/// starting; a vsock connection is refused until the agent listens. Either way the
/// retry is fine-grained (2 ms) and stops at once if the VM exits.
async fn connect_channel(channel: &Channel, vm: &dyn Vm, deadline: Instant) -> Result<Socket> {
    loop {
        match open_channel(channel).await {
            Ok(socket) => return Ok(socket),
            Err(e) if Instant::now() >= deadline => {
                return Err(Error::Vm(format!(
                    "agent channel {channel:?} did not open: {e}"
                )))
            }
            Err(_) if vm.has_exited() => {
                return Err(Error::Vm(format!(
                    "VM stopped before its agent channel opened: {}",
                    vm.wait_exit().await
                )))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

impl AgentClient {
    /// Connects to the agent of `vm` and waits (up to `boot_timeout`) for its first answer.
    ///
    /// The ping is sent at once and waits in the channel until the guest's agent opens
    /// its port, so readiness is seen the moment it happens, with no polling.
    pub async fn connect(
        channel: &Channel,
        vm: &dyn Vm,
        boot_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<(AgentClient, api::PingResponse)> {
        let deadline = Instant::now() + boot_timeout;
        let socket = connect_channel(channel, vm, deadline).await?;
        let client = api::AgentServiceClient::new(Client::new(socket));
        let agent = AgentClient {
            client,
            timeout: request_timeout,
            delivery_timeout: request_timeout,
        };
        let ping_request = api::PingRequest::default();
        let ping = agent.client.ping(
            context::with_timeout(i64::try_from(boot_timeout.as_nanos()).unwrap_or(i64::MAX)),
            &ping_request,
        );
        tokio::select! {
            answer = ping => match answer {
                Ok(answer) => Ok((agent, answer)),
                // A broken channel usually means QEMU went away: say why, if it did.
                Err(error) => match tokio::time::timeout(Duration::from_millis(500), vm.wait_exit()).await {
                    Ok(exit) => Err(Error::Vm(format!("VM stopped before its agent answered: {exit}"))),
                    Err(_) => Err(agent_error("wait for the guest agent to start", error)),
                },
            },
            exit = vm.wait_exit() => Err(Error::Vm(format!(
                "VM stopped before its agent answered: {exit}; see the VM console log"
            ))),
        }
    }

    /// Lets container starts wait up to `timeout` for a model delivery.
    pub fn set_delivery_timeout(&mut self, timeout: Duration) {
        self.delivery_timeout = timeout.max(self.timeout);
    }

    fn short(&self) -> context::Context {
        context::with_timeout(i64::try_from(self.timeout.as_nanos()).unwrap_or(i64::MAX))
    }

    fn long(&self) -> context::Context {
        context::with_timeout(i64::try_from(self.delivery_timeout.as_nanos()).unwrap_or(i64::MAX))
    }

    /// Creates a container (init process stopped before exec).
    ///
    /// Where the owner approves the model's readers, the agent copies a reader's rootfs
    /// into guest memory and digests it before it creates the container, which takes as
    /// long as the image is large, so the call gets the delivery timeout.
    pub async fn create_container(&self, request: api::CreateContainerRequest) -> Result<u32> {
        let what = format!("create container {}", request.container_id);
        let verifies_readers = request
            .model_delivery
            .as_ref()
            .is_some_and(|d| !d.readers.is_empty());
        let context = if verifies_readers {
            self.long()
        } else {
            self.short()
        };
        let response = self
            .client
            .create_container(context, &request)
            .await
            .map_err(|e| agent_error(&what, e))?;
        Ok(response.pid)
    }

    /// Starts a created container.
    ///
    /// The agent holds the start of a container that mounts a model delivery's volume
    /// until the delivery has finished, so the call gets the delivery timeout.
    pub async fn start_container(&self, container_id: &str) -> Result<u32> {
        let request = api::StartContainerRequest {
            container_id: container_id.to_string(),
            ..Default::default()
        };
        let response = self
            .client
            .start_container(self.long(), &request)
            .await
            .map_err(|e| agent_error(&format!("start container {container_id}"), e))?;
        Ok(response.pid)
    }

    /// Runs an additional process in a container.
    pub async fn exec_process(&self, request: api::ExecProcessRequest) -> Result<u32> {
        let what = format!(
            "exec {} in container {}",
            request.exec_id, request.container_id
        );
        let response = self
            .client
            .exec_process(self.short(), &request)
            .await
            .map_err(|e| agent_error(&what, e))?;
        Ok(response.pid)
    }

    /// Sends a signal.
    pub async fn signal(
        &self,
        container_id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<()> {
        let request = api::SignalProcessRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            signal,
            all,
            ..Default::default()
        };
        self.client
            .signal_process(self.short(), &request)
            .await
            .map_err(|e| agent_error(&format!("signal {signal} to {container_id}/{exec_id}"), e))?;
        Ok(())
    }

    /// Waits, without a timeout, for a process to exit.
    pub async fn wait_process(
        &self,
        container_id: &str,
        exec_id: &str,
    ) -> Result<api::WaitProcessResponse> {
        let request = api::WaitProcessRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        self.client
            .wait_process(context::Context::default(), &request)
            .await
            .map_err(|e| agent_error(&format!("wait for {container_id}/{exec_id}"), e))
    }

    /// Lists the container's processes.
    pub async fn list_processes(&self, container_id: &str) -> Result<Vec<u32>> {
        let request = api::ListProcessesRequest {
            container_id: container_id.to_string(),
            ..Default::default()
        };
        let response = self
            .client
            .list_processes(self.short(), &request)
            .await
            .map_err(|e| agent_error(&format!("list processes of {container_id}"), e))?;
        Ok(response.pids)
    }

    /// Removes a stopped container.
    pub async fn remove_container(&self, container_id: &str) -> Result<()> {
        let request = api::RemoveContainerRequest {
            container_id: container_id.to_string(),
            ..Default::default()
        };
        self.client
            .remove_container(self.short(), &request)
            .await
            .map_err(|e| agent_error(&format!("remove container {container_id}"), e))?;
        Ok(())
    }

    /// Has the agent forget an exec that has exited.
    pub async fn remove_process(&self, container_id: &str, exec_id: &str) -> Result<()> {
        let request = api::RemoveProcessRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        self.client
            .remove_process(self.short(), &request)
            .await
            .map_err(|e| {
                agent_error(
                    &format!("remove exec {exec_id} in container {container_id}"),
                    e,
                )
            })?;
        Ok(())
    }

    /// Reads the next chunk of stdout (`stderr` false) or stderr; empty means end of stream.
    /// Waits without a timeout: a quiet process may print nothing for hours.
    pub async fn read_output(
        &self,
        container_id: &str,
        exec_id: &str,
        stderr: bool,
    ) -> Result<Vec<u8>> {
        let request = api::ReadStreamRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            max_len: 64 * 1024,
            ..Default::default()
        };
        let response = if stderr {
            self.client
                .read_stderr(context::Context::default(), &request)
                .await
        } else {
            self.client
                .read_stdout(context::Context::default(), &request)
                .await
        };
        response
            .map(|r| r.data)
            .map_err(|e| agent_error(&format!("read output of {container_id}/{exec_id}"), e))
    }

    /// Writes to the process's stdin.
    pub async fn write_stdin(
        &self,
        container_id: &str,
        exec_id: &str,
        data: Vec<u8>,
    ) -> Result<()> {
        let request = api::WriteStreamRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            data,
            ..Default::default()
        };
        self.client
            .write_stdin(context::Context::default(), &request)
            .await
            .map_err(|e| agent_error(&format!("write stdin of {container_id}/{exec_id}"), e))?;
        Ok(())
    }

    /// Closes the process's stdin.
    pub async fn close_stdin(&self, container_id: &str, exec_id: &str) -> Result<()> {
        let request = api::CloseStdinRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        self.client
            .close_stdin(self.short(), &request)
            .await
            .map_err(|e| agent_error(&format!("close stdin of {container_id}/{exec_id}"), e))?;
        Ok(())
    }

    /// Resizes the process's terminal.
    pub async fn resize_tty(
        &self,
        container_id: &str,
        exec_id: &str,
        rows: u32,
        columns: u32,
    ) -> Result<()> {
        let request = api::ResizeTtyRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            rows,
            columns,
            ..Default::default()
        };
        self.client
            .resize_tty(self.short(), &request)
            .await
            .map_err(|e| agent_error(&format!("resize terminal of {container_id}/{exec_id}"), e))?;
        Ok(())
    }

    /// Gives the guest's pod NICs their addresses and routes.
    pub async fn update_interfaces(&self, request: api::UpdateInterfacesRequest) -> Result<()> {
        self.client
            .update_interfaces(self.short(), &request)
            .await
            .map_err(|e| agent_error("configure the pod network", e))?;
        Ok(())
    }

    /// Opens a connection to `127.0.0.1:port` in the guest for port forwarding; returns its id.
    pub async fn connect_port(&self, port: u16) -> Result<u64> {
        let request = api::ConnectPortRequest {
            port: u32::from(port),
            ..Default::default()
        };
        self.client
            .connect_port(self.short(), &request)
            .await
            .map(|r| r.connection_id)
            .map_err(|e| agent_error(&format!("forward port {port} into the VM"), e))
    }

    /// The next bytes of a forwarded connection from the guest side; empty at its end.
    /// Waits without a timeout: a forwarded connection may stay quiet for hours.
    pub async fn read_connection(&self, connection_id: u64) -> Result<Vec<u8>> {
        let request = api::ReadConnectionRequest {
            connection_id,
            max_len: 64 * 1024,
            ..Default::default()
        };
        self.client
            .read_connection(context::Context::default(), &request)
            .await
            .map(|r| r.data)
            .map_err(|e| agent_error(&format!("read forwarded connection {connection_id}"), e))
    }

    /// Sends bytes to the guest side of a forwarded connection. Without a timeout: a guest
    /// server that reads slowly holds the write back, as a TCP peer would.
    pub async fn write_connection(&self, connection_id: u64, data: Vec<u8>) -> Result<()> {
        let request = api::WriteConnectionRequest {
            connection_id,
            data,
            ..Default::default()
        };
        self.client
            .write_connection(context::Context::default(), &request)
            .await
            .map_err(|e| agent_error(&format!("write forwarded connection {connection_id}"), e))?;
        Ok(())
    }

    /// Ends the host-to-guest direction of a forwarded connection (`write_only`), or closes it.
    pub async fn close_connection(&self, connection_id: u64, write_only: bool) -> Result<()> {
        let request = api::CloseConnectionRequest {
            connection_id,
            write_only,
            ..Default::default()
        };
        self.client
            .close_connection(self.short(), &request)
            .await
            .map_err(|e| agent_error(&format!("close forwarded connection {connection_id}"), e))?;
        Ok(())
    }

    /// The container's cgroup statistics from inside the guest.
    pub async fn stats_container(&self, container_id: &str) -> Result<api::StatsContainerResponse> {
        let request = api::StatsContainerRequest {
            container_id: container_id.to_string(),
            ..Default::default()
        };
        self.client
            .stats_container(self.short(), &request)
            .await
            .map_err(|e| {
                agent_error(
                    &format!("read the statistics of container {container_id}"),
                    e,
                )
            })
    }

    /// Freezes (`frozen`) or thaws every process of a container; returns once the guest
    /// kernel reports it done.
    pub async fn freeze_container(&self, container_id: &str, frozen: bool) -> Result<()> {
        let request = api::FreezeContainerRequest {
            container_id: container_id.to_string(),
            frozen,
            ..Default::default()
        };
        let what = if frozen { "pause" } else { "resume" };
        self.client
            .freeze_container(self.short(), &request)
            .await
            .map_err(|e| agent_error(&format!("{what} container {container_id}"), e))?;
        Ok(())
    }

    /// Applies new resources (OCI LinuxResources as JSON) to a container's guest cgroup.
    pub async fn update_container(
        &self,
        container_id: &str,
        linux_resources_json: Vec<u8>,
    ) -> Result<()> {
        let request = api::UpdateContainerRequest {
            container_id: container_id.to_string(),
            linux_resources_json,
            ..Default::default()
        };
        self.client
            .update_container(self.short(), &request)
            .await
            .map_err(|e| {
                agent_error(
                    &format!("update the resources of container {container_id}"),
                    e,
                )
            })?;
        Ok(())
    }

    /// Asks the agent to stop everything and power the VM off.
    pub async fn shutdown(&self) -> Result<()> {
        self.client
            .shutdown(self.short(), &api::ShutdownRequest::default())
            .await
            .map_err(|e| agent_error("shut the VM down", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_answer_is_not_prefixed_with_what_it_already_names() {
        let refused = |message: &str| {
            let status = ttrpc::get_status(ttrpc::Code::UNKNOWN, message.to_string());
            agent_error("exec e in container c", ttrpc::Error::RpcStatus(status)).to_string()
        };
        assert_eq!(
            refused("exec e in container c: find executable \"x\": ENOENT"),
            "guest agent: exec e in container c: find executable \"x\": ENOENT"
        );
        assert_eq!(refused("EIO"), "guest agent: exec e in container c: EIO");
        let status = ttrpc::get_status(
            ttrpc::Code::INTERNAL,
            "container c: cgroup2 is not mounted".to_string(),
        );
        assert_eq!(
            agent_error("create container c", ttrpc::Error::RpcStatus(status)).to_string(),
            "guest agent: create container c: cgroup2 is not mounted"
        );
    }

    #[test]
    fn what_the_agent_does_not_know_is_not_found_in_its_own_words() {
        let status = ttrpc::get_status(
            ttrpc::Code::NOT_FOUND,
            "process e not found in container c".to_string(),
        );
        let error = agent_error("signal exec e", ttrpc::Error::RpcStatus(status));
        assert_eq!(error.to_string(), "process e not found in container c");
        match ttrpc::Error::from(error) {
            ttrpc::Error::RpcStatus(status) => assert_eq!(status.code(), ttrpc::Code::NOT_FOUND),
            other => panic!("expected a status, got {other:?}"),
        }
    }
}

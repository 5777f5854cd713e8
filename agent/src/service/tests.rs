//! The service over a real ttrpc connection, with a fake runtime that runs plain host
//! processes (no namespaces), so the API's behaviour is tested without a VM.

use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use veil_protocol::ttrpc::context;
use veil_protocol::ttrpc::r#async::transport::{Listener, Socket};
use veil_protocol::ttrpc::r#async::{Client, Server};

use super::*;

use crate::reaper::ONE_REAPER;

#[derive(Default)]
struct HostProcesses;

fn host_spawn(
    args: &[String],
    stdio: StdioRequest,
) -> Result<SpawnedProcess, crate::runtime::RuntimeError> {
    let (program, rest) = args.split_first().ok_or("no args")?;
    let pipe_or_null = |wanted: bool| {
        if wanted {
            Stdio::piped()
        } else {
            Stdio::null()
        }
    };
    let mut child = Command::new(program)
        .args(rest)
        .stdin(pipe_or_null(stdio.stdin))
        .stdout(pipe_or_null(stdio.stdout))
        .stderr(pipe_or_null(stdio.stderr))
        .spawn()?;
    Ok(SpawnedProcess {
        pid: child.id() as i32,
        stdin: child.stdin.take().map(OwnedFd::from),
        stdout: child.stdout.take().map(OwnedFd::from),
        stderr: child.stderr.take().map(OwnedFd::from),
        pty_master: None,
    })
}

impl ContainerRuntime for HostProcesses {
    fn create(
        &self,
        _: &str,
        _: &std::path::Path,
        spec: oci_spec::runtime::Spec,
        stdio: StdioRequest,
        _: Option<veil_container::SourcePins>,
    ) -> Result<SpawnedProcess, crate::runtime::RuntimeError> {
        let args = spec
            .process()
            .as_ref()
            .and_then(|p| p.args().clone())
            .unwrap_or_default();
        host_spawn(&args, stdio)
    }
    fn start(&self, _: &str) -> Result<(), crate::runtime::RuntimeError> {
        Ok(())
    }
    fn exec(
        &self,
        _: &str,
        _: &str,
        process: oci_spec::runtime::Process,
        stdio: StdioRequest,
    ) -> Result<SpawnedProcess, crate::runtime::RuntimeError> {
        host_spawn(&process.args().clone().unwrap_or_default(), stdio)
    }
    fn delete(&self, _: &str) -> Result<(), crate::runtime::RuntimeError> {
        Ok(())
    }
}

async fn connect() -> api::AgentServiceClient {
    let reaper = Reaper::start().expect("reaper");
    let volumes = crate::volumes::MemoryVolumes::new("/nonexistent/veil-volumes");
    let service = Arc::new(AgentService::new(
        Arc::new(HostProcesses),
        reaper,
        volumes,
        crate::delivery::Deliveries::new(None),
    ));
    let (server_end, client_end) = tokio::net::UnixStream::pair().expect("socketpair");
    let connections = async_stream::stream! {
        yield Ok(server_end);
        std::future::pending::<()>().await;
    };
    let mut server = Server::new()
        .add_listener(Listener::new(connections))
        .register_service(api::create_agent_service(service));
    server.start().await.expect("serve");
    std::mem::forget(server);
    api::AgentServiceClient::new(Client::new(Socket::new(client_end)))
}

fn ctx() -> context::Context {
    context::with_timeout(Duration::from_secs(20).as_nanos() as i64)
}

fn spec_json(args: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": args, "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"}
    }))
    .expect("json")
}

fn create_request(id: &str, args: &[&str], stdio: api::Stdio) -> api::CreateContainerRequest {
    api::CreateContainerRequest {
        container_id: id.into(),
        oci_spec_json: spec_json(args),
        rootfs: "/".into(),
        stdio: veil_protocol::protobuf::MessageField::some(stdio),
        ..Default::default()
    }
}

fn output_only() -> api::Stdio {
    api::Stdio {
        stdout: true,
        stderr: true,
        ..Default::default()
    }
}

async fn read_all(client: &api::AgentServiceClient, id: &str, exec_id: &str) -> Vec<u8> {
    let mut all = Vec::new();
    for _ in 0..1000 {
        let request = api::ReadStreamRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            max_len: 4096,
            ..Default::default()
        };
        let chunk = client
            .read_stdout(ctx(), &request)
            .await
            .expect("read")
            .data;
        if chunk.is_empty() {
            break;
        }
        all.extend(chunk);
    }
    all
}

async fn wait(client: &api::AgentServiceClient, id: &str, exec_id: &str) -> u32 {
    let request = api::WaitProcessRequest {
        container_id: id.into(),
        exec_id: exec_id.into(),
        ..Default::default()
    };
    client
        .wait_process(ctx(), &request)
        .await
        .expect("wait")
        .exit_status
}

fn status_code(error: veil_protocol::ttrpc::Error) -> veil_protocol::ttrpc::Code {
    match error {
        veil_protocol::ttrpc::Error::RpcStatus(status) => status.code(),
        other => panic!("expected a status, got {other:?}"),
    }
}

#[tokio::test]
async fn output_exit_status_and_removal() {
    let _one = ONE_REAPER.lock().unwrap_or_else(|p| p.into_inner());
    let client = connect().await;
    client
        .create_container(
            ctx(),
            &create_request("c1", &["sh", "-c", "echo hello; exit 7"], output_only()),
        )
        .await
        .expect("create");
    client
        .start_container(
            ctx(),
            &api::StartContainerRequest {
                container_id: "c1".into(),
                ..Default::default()
            },
        )
        .await
        .expect("start");
    assert_eq!(read_all(&client, "c1", "").await, b"hello\n");
    assert_eq!(wait(&client, "c1", "").await, 7);
    client
        .remove_container(
            ctx(),
            &api::RemoveContainerRequest {
                container_id: "c1".into(),
                ..Default::default()
            },
        )
        .await
        .expect("remove");
    let gone = client
        .remove_container(
            ctx(),
            &api::RemoveContainerRequest {
                container_id: "c1".into(),
                ..Default::default()
            },
        )
        .await
        .expect_err("gone");
    assert_eq!(status_code(gone), veil_protocol::ttrpc::Code::NOT_FOUND);
}

#[tokio::test]
async fn stdin_reaches_the_process_and_close_ends_it() {
    let _one = ONE_REAPER.lock().unwrap_or_else(|p| p.into_inner());
    let client = connect().await;
    let stdio = api::Stdio {
        stdin: true,
        stdout: true,
        ..Default::default()
    };
    client
        .create_container(ctx(), &create_request("cat", &["cat"], stdio))
        .await
        .expect("create");
    let write = api::WriteStreamRequest {
        container_id: "cat".into(),
        data: b"data\n".to_vec(),
        ..Default::default()
    };
    assert_eq!(
        client.write_stdin(ctx(), &write).await.expect("write").len,
        5
    );
    client
        .close_stdin(
            ctx(),
            &api::CloseStdinRequest {
                container_id: "cat".into(),
                ..Default::default()
            },
        )
        .await
        .expect("close");
    assert_eq!(read_all(&client, "cat", "").await, b"data\n");
    assert_eq!(wait(&client, "cat", "").await, 0);
}

#[tokio::test]
async fn signals_exec_and_state_errors() {
    let _one = ONE_REAPER.lock().unwrap_or_else(|p| p.into_inner());
    let client = connect().await;
    client
        .create_container(
            ctx(),
            &create_request("sleeper", &["sleep", "30"], api::Stdio::default()),
        )
        .await
        .expect("create");

    let duplicate = client
        .create_container(
            ctx(),
            &create_request("sleeper", &["true"], api::Stdio::default()),
        )
        .await
        .expect_err("dup");
    assert_eq!(
        status_code(duplicate),
        veil_protocol::ttrpc::Code::ALREADY_EXISTS
    );
    let running = client
        .remove_container(
            ctx(),
            &api::RemoveContainerRequest {
                container_id: "sleeper".into(),
                ..Default::default()
            },
        )
        .await
        .expect_err("running");
    assert_eq!(
        status_code(running),
        veil_protocol::ttrpc::Code::FAILED_PRECONDITION
    );

    let process = serde_json::to_vec(&serde_json::json!({"args": ["echo", "from exec"], "cwd": "/", "user": {"uid": 0, "gid": 0}})).expect("json");
    let exec = api::ExecProcessRequest {
        container_id: "sleeper".into(),
        exec_id: "e1".into(),
        oci_process_json: process,
        stdio: veil_protocol::protobuf::MessageField::some(output_only()),
        ..Default::default()
    };
    client.exec_process(ctx(), &exec).await.expect("exec");
    assert_eq!(read_all(&client, "sleeper", "e1").await, b"from exec\n");
    assert_eq!(wait(&client, "sleeper", "e1").await, 0);

    // An exec that has exited is forgotten on request, and only then.
    let remove = |exec_id: &str| api::RemoveProcessRequest {
        container_id: "sleeper".into(),
        exec_id: exec_id.into(),
        ..Default::default()
    };
    let long = serde_json::to_vec(
        &serde_json::json!({"args": ["sleep", "30"], "cwd": "/", "user": {"uid": 0, "gid": 0}}),
    )
    .expect("json");
    let exec_long = api::ExecProcessRequest {
        exec_id: "e2".into(),
        oci_process_json: long,
        ..exec.clone()
    };
    client.exec_process(ctx(), &exec_long).await.expect("exec");
    let refused = |error| status_code(error);
    let running = client.remove_process(ctx(), &remove("e2")).await;
    assert_eq!(
        running.map_err(refused).expect_err("running"),
        veil_protocol::ttrpc::Code::FAILED_PRECONDITION
    );
    let no_exec = client.remove_process(ctx(), &remove("")).await;
    assert_eq!(
        no_exec.map_err(refused).expect_err("the init"),
        veil_protocol::ttrpc::Code::INVALID_ARGUMENT
    );
    client
        .remove_process(ctx(), &remove("e1"))
        .await
        .expect("remove an exited exec");
    let gone = client.remove_process(ctx(), &remove("e1")).await;
    assert_eq!(
        gone.map_err(refused).expect_err("removed"),
        veil_protocol::ttrpc::Code::NOT_FOUND
    );

    let kill = api::SignalProcessRequest {
        container_id: "sleeper".into(),
        signal: 9,
        ..Default::default()
    };
    client.signal_process(ctx(), &kill).await.expect("kill");
    assert_eq!(wait(&client, "sleeper", "").await, 137);

    let bad_signal = api::SignalProcessRequest {
        container_id: "sleeper".into(),
        signal: 4096,
        ..Default::default()
    };
    let error = client
        .signal_process(ctx(), &bad_signal)
        .await
        .expect_err("bad signal");
    assert_eq!(
        status_code(error),
        veil_protocol::ttrpc::Code::INVALID_ARGUMENT
    );
}

#[tokio::test]
async fn malformed_requests_are_refused_with_the_reason() {
    let _one = ONE_REAPER.lock().unwrap_or_else(|p| p.into_inner());
    let client = connect().await;
    let mut bad_spec = create_request("bad", &["true"], api::Stdio::default());
    bad_spec.oci_spec_json = b"{not json".to_vec();
    let error = client
        .create_container(ctx(), &bad_spec)
        .await
        .expect_err("bad spec");
    let veil_protocol::ttrpc::Error::RpcStatus(status) = error else {
        panic!("status")
    };
    assert_eq!(status.code(), veil_protocol::ttrpc::Code::INVALID_ARGUMENT);
    assert!(
        status.message().contains("OCI spec of container bad"),
        "{}",
        status.message()
    );

    let error = client
        .create_container(
            ctx(),
            &create_request("../escape", &["true"], api::Stdio::default()),
        )
        .await
        .expect_err("bad id");
    assert_eq!(
        status_code(error),
        veil_protocol::ttrpc::Code::INVALID_ARGUMENT
    );

    let unknown = api::WaitProcessRequest {
        container_id: "nope".into(),
        ..Default::default()
    };
    assert_eq!(
        status_code(
            client
                .wait_process(ctx(), &unknown)
                .await
                .expect_err("unknown")
        ),
        veil_protocol::ttrpc::Code::NOT_FOUND
    );

    let ping = client
        .ping(ctx(), &api::PingRequest::default())
        .await
        .expect("ping");
    assert_eq!(ping.version, env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn stats_and_update_name_the_container_and_the_bad_input() {
    let _one = ONE_REAPER.lock().unwrap_or_else(|p| p.into_inner());
    let client = connect().await;
    let unknown = client
        .stats_container(
            ctx(),
            &api::StatsContainerRequest {
                container_id: "nobody".into(),
                ..Default::default()
            },
        )
        .await
        .expect_err("unknown container");
    assert_eq!(status_code(unknown), veil_protocol::ttrpc::Code::NOT_FOUND);

    client
        .create_container(
            ctx(),
            &create_request("limited", &["sleep", "30"], api::Stdio::default()),
        )
        .await
        .expect("create");
    let malformed = client
        .update_container(
            ctx(),
            &api::UpdateContainerRequest {
                container_id: "limited".into(),
                linux_resources_json: b"{\"memory\": 5}".to_vec(),
                ..Default::default()
            },
        )
        .await
        .expect_err("malformed resources");
    let veil_protocol::ttrpc::Error::RpcStatus(status) = malformed else {
        panic!("not a status: {malformed:?}");
    };
    assert_eq!(status.code(), veil_protocol::ttrpc::Code::INVALID_ARGUMENT);
    assert!(status.message().contains("limited"), "{}", status.message());

    // The host-process fake keeps no cgroups: the error says so instead of inventing zeros.
    let no_cgroups = client
        .stats_container(
            ctx(),
            &api::StatsContainerRequest {
                container_id: "limited".into(),
                ..Default::default()
            },
        )
        .await
        .expect_err("fake runtime has no cgroups");
    let veil_protocol::ttrpc::Error::RpcStatus(status) = no_cgroups else {
        panic!("not a status: {no_cgroups:?}");
    };
    assert!(
        status.message().contains("no cgroups"),
        "{}",
        status.message()
    );

    let kill = api::SignalProcessRequest {
        container_id: "limited".into(),
        signal: 9,
        ..Default::default()
    };
    client.signal_process(ctx(), &kill).await.expect("kill");
    assert_eq!(wait(&client, "limited", "").await, 137);
}

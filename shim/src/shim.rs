//! The shim's process lifecycle as containerd drives it: `start` (spawn the pod's
//! shim server, or reuse it), `delete` (clean up after a shim that is gone), `-info`,
//! and serving the Task API.
//!
//! veil does its own bootstrap rather than `containerd_shim::asynchronous::run`
//! because that one speaks only containerd 2.x's task API v3: containerd 1.6/1.7 ask
//! for `containerd.task.v2.Task` and expect the plain socket address from `start`. So
//! the server registers the same service under both names (the messages are
//! identical), and `start` answers each protocol in its own form: a plain address
//! for the legacy flags (1.6, 1.7, 2.x), a `BootstrapResult` for the BootstrapParams
//! of containerd 2.3 and later.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use containerd_shim::asynchronous::{spawn, ExitSignal};
use containerd_shim::protos::bootstrap_api::{BootstrapParams, BootstrapResult};
use containerd_shim::protos::protobuf::{well_known_types::any::Any, Message, MessageField};
use containerd_shim::protos::shim_async::{create_task, TaskClient};
use containerd_shim::protos::ttrpc;
use containerd_shim::protos::ttrpc::r#async::{transport::Listener, Server};
use containerd_shim::{api::DeleteResponse, Flags, StartOpts};

use crate::sandbox;
use crate::service::{TaskService, STATE_DIR_FILE};

/// The runtime's name as containerd knows it.
pub const RUNTIME_ID: &str = "io.containerd.veil.v2";
const TASK_V2: &str = "containerd.task.v2.Task";
const TASK_V3: &str = "containerd.task.v3.Task";
const TTRPC_ADDRESS_ENV: &str = "TTRPC_ADDRESS";
/// How long a shim gets to answer [`shim_answers`]; containerd bounds `delete` at a few
/// seconds.
const SHIM_ANSWER_WAIT: Duration = Duration::from_secs(2);
/// How long an exiting shim waits for containerd to take its last events.
const EVENTS_DRAIN: Duration = Duration::from_secs(5);
const GRPC_ADDRESS_ENV: &str = "GRPC_ADDRESS";

/// A bootstrap step failed.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {detail}")]
pub struct BootstrapError {
    what: &'static str,
    detail: String,
}

fn failed(what: &'static str) -> impl FnOnce(String) -> BootstrapError {
    move |detail| BootstrapError { what, detail }
}

/// How containerd started us, which decides the form of the `start` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Legacy,
    Bootstrap,
}

/// Runs the shim for the command line containerd gave; returns the exit code.
pub async fn run() -> i32 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flags = match containerd_shim::parse(&args) {
        Ok(flags) => flags,
        Err(error) => {
            eprintln!("containerd-shim-veil-v2: {error}");
            return 1;
        }
    };
    if flags.version {
        println!(
            "containerd-shim-veil-v2 {} ({RUNTIME_ID})",
            env!("CARGO_PKG_VERSION")
        );
        return 0;
    }
    let outcome = if flags.info {
        write_runtime_info()
    } else {
        match flags.action.as_str() {
            "start" => start(&flags).await,
            "delete" => delete().await,
            "" => serve(&flags).await,
            other => Err(BootstrapError {
                what: "parse the command line",
                detail: format!("unknown action {other:?}; expected start, delete or none"),
            }),
        }
    };
    match outcome {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("containerd-shim-veil-v2: {error}");
            tracing::error!(%error, "shim failed");
            1
        }
    }
}

fn read_stdin() -> Vec<u8> {
    let mut input = Vec::new();
    let _ = std::io::stdin()
        .lock()
        .take(1 << 20)
        .read_to_end(&mut input);
    input
}

/// Decides the protocol from what containerd piped in: BootstrapParams naming this
/// shim, or (legacy) nothing or the runtime options as an `Any`.
fn start_options(input: &[u8], flags: &Flags) -> (StartOpts, Protocol) {
    if let Ok(params) = BootstrapParams::parse_from_bytes(input) {
        if !input.is_empty()
            && params.instance_id == flags.id
            && params.namespace == flags.namespace
        {
            let opts = StartOpts {
                id: params.instance_id,
                publish_binary: params.containerd_binary,
                address: params.containerd_grpc_address,
                ttrpc_address: params.containerd_ttrpc_address,
                namespace: params.namespace,
                debug: flags.debug,
                socket_dir: params.socket_dir.filter(|d| !d.is_empty()),
                extensions: params
                    .extensions
                    .into_iter()
                    .filter_map(|e| e.value.into_option())
                    .collect(),
                ..Default::default()
            };
            return (opts, Protocol::Bootstrap);
        }
    }
    let mut opts = StartOpts {
        id: flags.id.clone(),
        publish_binary: flags.publish_binary.clone(),
        address: flags.address.clone(),
        ttrpc_address: std::env::var(TTRPC_ADDRESS_ENV).unwrap_or_default(),
        namespace: flags.namespace.clone(),
        debug: flags.debug,
        ..Default::default()
    };
    if opts.address.is_empty() {
        opts.address = std::env::var(GRPC_ADDRESS_ENV).unwrap_or_default();
    }
    if let Ok(any) = Any::parse_from_bytes(input) {
        if !any.type_url.is_empty() {
            opts.extensions.push(any);
        }
    }
    (opts, Protocol::Legacy)
}

fn start_reply(address: &str, protocol: Protocol) -> Result<Vec<u8>, BootstrapError> {
    match protocol {
        Protocol::Legacy => Ok(address.as_bytes().to_vec()),
        Protocol::Bootstrap => BootstrapResult {
            version: 3,
            address: address.to_string(),
            protocol: "ttrpc".to_string(),
            ..Default::default()
        }
        .write_to_bytes()
        .map_err(|e| failed("encode the bootstrap result")(e.to_string())),
    }
}

async fn start(flags: &Flags) -> Result<(), BootstrapError> {
    let (opts, protocol) = start_options(&read_stdin(), flags);
    // One shim (one VM) per pod: containers of a sandbox reuse its shim's socket.
    let spec = containerd_shim::asynchronous::util::read_spec("")
        .await
        .ok();
    let annotations = spec.as_ref().and_then(|s| s.annotations().clone());
    let grouping = crate::options::sandbox_id(annotations.as_ref(), &opts.id);
    let existing = opts.socket_address(&grouping);
    // containerd_shim's `spawn` always starts a new server, and a new server takes the
    // socket over (and boots a second VM): join the pod's live shim instead.
    let address = if shim_answers(&existing).await {
        tracing::info!(container = %opts.id, sandbox = %grouping, address = %existing, "joining the pod's running shim");
        existing
    } else {
        spawn(opts, &grouping, Vec::new())
            .await
            .map_err(|e| failed("spawn the shim server")(e.to_string()))?
    };
    std::fs::write("address", &address)
        .map_err(|e| failed("write the address file")(e.to_string()))?;
    let reply = start_reply(&address, protocol)?;
    let mut stdout = std::io::stdout();
    stdout
        .write_all(&reply)
        .and_then(|()| stdout.flush())
        .map_err(|e| failed("answer containerd")(e.to_string()))
}

/// Whether a shim serves on `address`, asked with a Task API `Connect`. A connection alone
/// proves nothing: a shim being killed keeps its listening socket open (and the kernel
/// queues connections on it) until its last thread is gone, which is when containerd sees
/// it disconnect and runs `delete`. A socket file left by a dead shim refuses the
/// connection; a dying one takes the request and closes without an answer. A shim too
/// busy to answer within [`SHIM_ANSWER_WAIT`] counts as alive: taking a live pod's VM
/// down is the worse mistake.
async fn shim_answers(address: &str) -> bool {
    let Ok(client) = crate::service::connect_unix(address).await else {
        return false;
    };
    let request = containerd_shim::api::ConnectRequest::default();
    // Bounded here, not by ttrpc's own timeout, which would read as a dead shim.
    match tokio::time::timeout(
        SHIM_ANSWER_WAIT,
        TaskClient::new(client).connect(ttrpc::context::Context::default(), &request),
    )
    .await
    {
        Ok(Ok(_) | Err(ttrpc::Error::RpcStatus(_))) | Err(_) => true,
        Ok(Err(error)) => {
            tracing::debug!(%address, %error, "the shim took the connection but did not answer");
            false
        }
    }
}

/// Runs in the bundle directory after the serving shim is gone (or crashed).
///
/// containerd 1.6 also runs it after every ordinary task delete (it closes its
/// connection for that task, and a closed connection means "dead shim" to it): when the
/// pod's shim still answers, other containers of the pod are running in the VM, so only
/// this container's rootfs is cleaned up.
async fn delete() -> Result<(), BootstrapError> {
    let bundle = Path::new(".");
    let pod_shim_alive = match std::fs::read_to_string(bundle.join("address")) {
        Ok(address) => shim_answers(address.trim()).await,
        Err(_) => false,
    };
    let state_dir = std::fs::read_to_string(bundle.join(STATE_DIR_FILE))
        .ok()
        .filter(|_| !pod_shim_alive);
    if let Some(state_dir) = state_dir {
        let state_dir = Path::new(state_dir.trim());
        kill_leftover_vm(state_dir);
        sandbox::remove_state_dir(state_dir);
    }
    sandbox::storage::unmount_rootfs(bundle);
    let response = DeleteResponse {
        exit_status: 128 + libc::SIGKILL as u32,
        exited_at: MessageField::some(crate::service::timestamp(SystemTime::now())),
        ..Default::default()
    };
    let bytes = response
        .write_to_bytes()
        .map_err(|e| failed("encode the delete response")(e.to_string()))?;
    std::io::stdout()
        .write_all(&bytes)
        .map_err(|e| failed("answer containerd")(e.to_string()))
}

fn write_runtime_info() -> Result<(), BootstrapError> {
    let info = containerd_shim::protos::types::introspection::RuntimeInfo {
        name: RUNTIME_ID.to_string(),
        ..Default::default()
    };
    let bytes = info
        .write_to_bytes()
        .map_err(|e| failed("encode runtime info")(e.to_string()))?;
    std::io::stdout()
        .write_all(&bytes)
        .map_err(|e| failed("answer containerd")(e.to_string()))
}

/// Kills a QEMU whose shim died, found by the pid file in the sandbox state.
fn kill_leftover_vm(state_dir: &Path) {
    let Ok(pid) = std::fs::read_to_string(state_dir.join("qemu.pid")) else {
        return;
    };
    if let Ok(pid) = pid.trim().parse::<i32>() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
    }
}

fn bind_socket(address: &str) -> Result<Listener, BootstrapError> {
    let path = address.strip_prefix("unix://").unwrap_or(address);
    if let Some(parent) = Path::new(path).parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let _ = std::fs::remove_file(path);
    let listener = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| failed("listen on the shim socket")(format!("{path}: {e}")))?;
    Listener::try_from(listener).map_err(|e| failed("listen on the shim socket")(e.to_string()))
}

/// The serving shim: Task API on the socket containerd named, until Shutdown.
async fn serve(flags: &Flags) -> Result<(), BootstrapError> {
    crate::logging::init(flags.debug);
    if flags.socket.is_empty() {
        return Err(failed("serve")("no -socket given".to_string()));
    }
    // Writes to a FIFO whose reader left must fail with EPIPE, not kill the shim.
    // SAFETY: SIG_IGN installs no handler code; it only changes the disposition.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigIgn,
        );
    }
    let ttrpc_address = std::env::var(TTRPC_ADDRESS_ENV)
        .map_err(|_| failed("serve")(format!("{TTRPC_ADDRESS_ENV} is not set by containerd")))?;
    let publisher = crate::service::Publisher::connect(&ttrpc_address)
        .await
        .map_err(|e| failed("connect to containerd's event service")(e.to_string()))?;
    let exit = Arc::new(ExitSignal::default());
    let publisher = Arc::new(publisher);
    let service = Arc::new(TaskService::new(
        &flags.namespace,
        publisher.clone(),
        exit.clone(),
    ));
    let mut services = create_task(service.clone());
    if let Some(v2) = create_task(service).remove(TASK_V3) {
        services.insert(TASK_V2.to_string(), v2);
    }
    let mut server = Server::new()
        .add_listener(bind_socket(&flags.socket)?)
        .register_service(services);
    server
        .start()
        .await
        .map_err(|e| failed("start the Task API server")(e.to_string()))?;
    // The `start` process copies our stdout until it closes: close it now.
    let _ = nix::unistd::dup2_stdout(std::io::stderr());
    tracing::info!(socket = %flags.socket, namespace = %flags.namespace, id = %flags.id, "shim serving");
    tokio::select! {
        () = exit.wait() => {}
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
    }
    let _ = server.shutdown().await;
    publisher.drain(EVENTS_DRAIN).await;
    let path = flags
        .socket
        .strip_prefix("unix://")
        .unwrap_or(&flags.socket);
    let _ = std::fs::remove_file(path);
    tracing::info!("shim exiting");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> Flags {
        Flags {
            id: "c1".into(),
            namespace: "default".into(),
            ..Default::default()
        }
    }

    /// A Task API server that answers every call with UNIMPLEMENTED: an answer all the same.
    struct Answering;
    impl containerd_shim::protos::shim_async::Task for Answering {}

    #[tokio::test]
    async fn a_shim_is_alive_when_it_answers_not_when_its_socket_takes_a_connection() {
        let dir = tempfile::tempdir().expect("tempdir");
        let address = |name: &str| format!("unix://{}", dir.path().join(name).display());

        assert!(!shim_answers(&address("none.sock")).await, "no socket");

        let mut server = Server::new()
            .add_listener(bind_socket(&address("live.sock")).expect("bind"))
            .register_service(create_task(Arc::new(Answering)));
        server.start().await.expect("serve");
        assert!(shim_answers(&address("live.sock")).await, "a serving shim");

        // A shim being killed: its socket still queues connections, then closes unanswered.
        let dying =
            std::os::unix::net::UnixListener::bind(dir.path().join("dying.sock")).expect("bind");
        let closer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(dying);
        });
        assert!(!shim_answers(&address("dying.sock")).await, "a dying shim");
        closer.join().expect("closer");
        assert!(
            !shim_answers(&address("dying.sock")).await,
            "a socket file left behind"
        );

        // One that takes the connection but is too busy to answer counts as alive.
        let _busy =
            std::os::unix::net::UnixListener::bind(dir.path().join("busy.sock")).expect("bind");
        assert!(shim_answers(&address("busy.sock")).await, "a busy shim");
        server.shutdown().await.expect("shutdown");
    }

    #[test]
    fn empty_stdin_is_the_legacy_protocol_with_a_plain_address() {
        let (opts, protocol) = start_options(b"", &flags());
        assert_eq!(protocol, Protocol::Legacy);
        assert_eq!(opts.id, "c1");
        assert_eq!(
            start_reply("unix:///run/containerd/s/x", protocol).expect("reply"),
            b"unix:///run/containerd/s/x"
        );
    }

    #[test]
    fn runtime_options_on_stdin_stay_legacy_and_are_kept() {
        let any = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: vec![0x12, 0x01, b'x'],
            ..Default::default()
        };
        let (opts, protocol) = start_options(&any.write_to_bytes().expect("encode"), &flags());
        assert_eq!(protocol, Protocol::Legacy);
        assert_eq!(opts.extensions.len(), 1);
    }

    #[test]
    fn bootstrap_params_get_a_bootstrap_result() {
        let params = BootstrapParams {
            instance_id: "c1".into(),
            namespace: "default".into(),
            containerd_ttrpc_address: "/run/containerd/containerd.sock.ttrpc".into(),
            ..Default::default()
        };
        let (opts, protocol) = start_options(&params.write_to_bytes().expect("encode"), &flags());
        assert_eq!(protocol, Protocol::Bootstrap);
        assert_eq!(opts.ttrpc_address, "/run/containerd/containerd.sock.ttrpc");
        let reply = start_reply("unix:///s", protocol).expect("reply");
        let result = BootstrapResult::parse_from_bytes(&reply).expect("decode");
        assert_eq!(
            (
                result.version,
                result.address.as_str(),
                result.protocol.as_str()
            ),
            (3, "unix:///s", "ttrpc")
        );
    }
}

//! The shim's process lifecycle for containerd: `start` (spawn or reuse the shim
//! of the pod), `delete` (clean up after a shim that is gone) and serving.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::{api::DeleteResponse, Config, Flags, StartOpts};

use crate::sandbox;
use crate::service::{TaskService, STATE_DIR_FILE};

/// The runtime's name as containerd knows it.
pub const RUNTIME_ID: &str = "io.containerd.veil.v2";

/// containerd-shim-veil-v2.
pub struct VeilShim {
    namespace: String,
    exit: Arc<ExitSignal>,
}

#[async_trait]
impl Shim for VeilShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, config: &mut Config) -> Self {
        // The shim logs through tracing (see logging.rs), and reaps only QEMU, which
        // tokio waits for itself: the crate's reaper would steal QEMU's exit status.
        config.no_setup_logger = true;
        config.no_reaper = true;
        config.no_sub_reaper = true;
        if args.action.is_empty() {
            crate::logging::init(args.debug);
        }
        VeilShim {
            namespace: args.namespace.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        // One shim (one VM) per pod: containers of a sandbox reuse its shim's socket.
        let spec = containerd_shim::asynchronous::util::read_spec("").await.ok();
        let annotations = spec.as_ref().and_then(|s| s.annotations().clone());
        let grouping = crate::options::sandbox_id(annotations.as_ref(), &opts.id);
        let address = spawn(opts, &grouping, Vec::new()).await?;
        containerd_shim::asynchronous::util::write_str_to_file("address", &address).await?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        // Runs in the bundle directory after the serving shim is gone (or crashed).
        let bundle = Path::new(".");
        if let Ok(state_dir) = std::fs::read_to_string(bundle.join(STATE_DIR_FILE)) {
            let state_dir = Path::new(state_dir.trim());
            kill_leftover_vm(state_dir);
            sandbox::remove_state_dir(state_dir);
        }
        sandbox::storage::unmount_rootfs(bundle);
        Ok(DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: MessageField::some(crate::service::timestamp(SystemTime::now())),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        TaskService::new(&self.namespace, publisher, self.exit.clone())
    }
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

//! veil-agent: the guest's PID 1.
//!
//! Boot order: leave the initramfs (so containers can pivot_root), mount the
//! kernel filesystems, load the image's modules, start the reaper, mount the
//! host share, then serve the ttrpc API on the agent channel until told to shut down.
//! Nothing in this path panics: PID 1 exiting would crash the guest kernel, so every
//! failure is logged to the console (the VM's console log on the host) and, where the
//! agent can go on, reported to the shim through the API instead.

pub mod blockdev;
pub mod channel;
pub mod cmdline;
pub mod delivery;
pub mod guest_runtime;
pub mod network;
pub mod pid1;
pub mod port_forward;
pub mod reaper;
pub mod runtime;
pub mod service;
pub mod shares;
pub mod volumes;

use std::sync::Arc;

use veil_protocol::ttrpc::r#async::Server;

/// Starting the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The async runtime could not be built.
    #[error("build the tokio runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The reaper could not be installed.
    #[error("install the SIGCHLD reaper: {0}")]
    Reaper(#[source] std::io::Error),
    /// The agent channel could not be opened.
    #[error(transparent)]
    Channel(#[from] channel::ChannelError),
    /// The ttrpc server failed.
    #[error("serve the agent API: {0}")]
    Serve(String),
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The console is a slow serial line under emulation: compact lines, no colour.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Early PID-1 set-up; returns the options from the kernel command line.
fn boot() -> cmdline::AgentOptions {
    let is_pid1 = std::process::id() == 1;
    let switched = if is_pid1 {
        pid1::leave_initramfs()
    } else {
        Ok(false)
    };
    let mounted = if is_pid1 {
        pid1::mount_early_filesystems()
    } else {
        Ok(())
    };
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let (options, warnings) = cmdline::parse(&cmdline);
    init_logging(&options.log_filter);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        pid1 = is_pid1,
        "veil-agent starting"
    );
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    if let Err(error) = switched {
        tracing::error!(%error, "staying on the initramfs: containers will fail to pivot_root");
    }
    if let Err(error) = mounted {
        tracing::error!(%error, "early mounts incomplete");
    }
    if is_pid1 {
        match pid1::load_modules(std::path::Path::new(pid1::MODULES_LOAD_FILE)) {
            Ok(count) => tracing::info!(count, "kernel modules loaded"),
            Err(error) => tracing::error!(%error, "kernel modules not loaded"),
        }
        if let Err(error) = pid1::mount_shared_directory(options.virtio_fs) {
            tracing::error!(%error, "host share not mounted: containers cannot find their rootfs");
        }
    }
    options
}

/// Under TCG, container helpers load at one address so that QEMU reuses their translated
/// code; before the tokio threads start, which copy the setting.
fn fix_helper_addresses() {
    match veil_container::address_layout::fix_helper_addresses() {
        Ok(()) => tracing::info!("emulated VM: container helpers load without address randomization (container programs keep it)"),
        Err(errno) => tracing::warn!(%errno, "emulated VM: helper addresses stay randomized; container creates are slower"),
    }
}

fn open_listener(
    options: &cmdline::AgentOptions,
) -> Result<veil_protocol::ttrpc::r#async::transport::Listener, AgentError> {
    match options.channel {
        cmdline::ChannelKind::Vsock => Ok(channel::vsock_listener()?),
        cmdline::ChannelKind::Serial => {
            let port = channel::find_serial_port(
                std::path::Path::new("/sys/class/virtio-ports"),
                std::path::Path::new("/dev"),
                veil_protocol::SERIAL_PORT_NAME,
            )?;
            Ok(channel::serial_listener(port))
        }
    }
}

/// Brings up loopback and, when the VM has one, the egress NIC, in the background so the
/// API is served meanwhile. Model deliveries wait on the returned channel for the egress.
fn start_network(egress: bool) -> Option<tokio::sync::watch::Receiver<Option<Result<(), String>>>> {
    let (report, ready) = tokio::sync::watch::channel(None);
    tokio::spawn(async move {
        if let Err(error) = network::loopback_up().await {
            tracing::error!(%error, "loopback not up");
        }
        if egress {
            let result = network::configure_egress().await.map_err(|e| e.to_string());
            if let Err(error) = &result {
                tracing::error!(%error, "egress network not configured");
            }
            let _ = report.send(Some(result));
        }
    });
    egress.then_some(ready)
}

async fn serve(
    options: cmdline::AgentOptions,
    runtime: Arc<dyn runtime::ContainerRuntime>,
) -> Result<(), AgentError> {
    let reaper = reaper::Reaper::start().map_err(AgentError::Reaper)?;
    let volumes = volumes::MemoryVolumes::new(veil_protocol::GUEST_VOLUMES_DIR);
    let egress = start_network(options.egress);
    let deliveries = delivery::Deliveries::new(egress.clone());
    let service = Arc::new(
        service::AgentService::new(runtime, reaper, volumes, deliveries)
            .with_pod_network(network::PodNetwork::new(egress)),
    );
    let listener = open_listener(&options)?;
    let mut server = Server::new()
        .add_listener(listener)
        .register_service(veil_protocol::create_agent_service(service));
    server
        .start()
        .await
        .map_err(|e| AgentError::Serve(e.to_string()))?;
    tracing::info!(channel = ?options.channel, "agent ready");
    std::future::pending::<()>().await;
    Ok(())
}

/// Runs the agent as the guest's init with the given container runtime; returns only on a
/// fatal error (after which PID 1 powers the VM off so the shim sees it end).
pub fn run(runtime: Arc<dyn runtime::ContainerRuntime>) -> Result<(), AgentError> {
    let options = boot();
    if options.emulated {
        fix_helper_addresses();
    }
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(AgentError::Runtime)?;
    tokio.block_on(serve(options, runtime))
}

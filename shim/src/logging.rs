//! Shim logging: `tracing` events to containerd's per-shim log FIFO (`log` in the
//! bundle directory), which containerd copies into its own log.

use std::os::unix::fs::OpenOptionsExt;

/// Environment variable with a `tracing` filter for the shim (default `info`).
pub const LOG_ENV: &str = "VEIL_SHIM_LOG";

/// Installs the subscriber; `debug` is containerd's `-debug` flag.
pub fn init(debug: bool) {
    let default = if debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env(LOG_ENV)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Read-write: opening a FIFO this way never blocks, even before containerd reads it.
    let fifo = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("log");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(false);
    let _ = match fifo {
        Ok(file) => builder.with_writer(std::sync::Mutex::new(file)).try_init(),
        Err(_) => builder.with_writer(std::io::stderr).try_init(),
    };
}

//! `veil stages`: the cold-start stages of one container, read from a shim or containerd log.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

/// Arguments of `veil stages`.
#[derive(Debug, Args)]
pub struct StagesArgs {
    /// The log to read: containerd's (it carries the shim's lines) or a saved shim log.
    #[arg(long)]
    log: PathBuf,
    /// The container (task) id.
    container: String,
}

/// Prints each stage with its time since containerd's Create and since the previous stage.
pub fn run(args: StagesArgs) -> Result<()> {
    let log = std::fs::read_to_string(&args.log)
        .with_context(|| format!("read {}", args.log.display()))?;
    let events = veil_shim::stages::events_in_log(&log, &args.container);
    if events.is_empty() {
        bail!(
            "no stage events for container {} in {}: is it the log of the containerd that ran it, at info level?",
            args.container,
            args.log.display()
        );
    }
    print!("{}", veil_shim::stages::report(&events));
    Ok(())
}

//! `veil node install` / `veil node uninstall`: prepare a node to run pods in veil VMs.
//!
//! Install puts four things in place, each only when it is missing or different, so a second
//! run changes nothing:
//! 1. the shim at `<prefix>/bin/containerd-shim-veil-v2` (containerd finds
//!    `io.containerd.veil.v2` by that name on its PATH);
//! 2. the guest image (`vmlinux`, `vmlinuz`, `initramfs.img`, `manifest.json`)
//!    in `<prefix>/share/veil/`, built first when there is none;
//! 3. the veil configuration (default `/etc/veil/configuration.toml`), the shipped defaults
//!    pointing at that image; a file that differs is the operator's and is kept;
//! 4. the CRI runtime `veil` in containerd's config (see [`containerd`]), last, so containerd
//!    never knows a runtime whose files are not there yet.
//!
//! Uninstall removes exactly these, the configuration only when it is still what install
//! writes, and the containerd entry with only the tables install created; and the rootfs
//! images the shims cached under `[runtime] state_dir`, but those containers still use.

mod containerd;
mod files;
mod image;
mod images;
mod runtime_config;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use containerd::{ConfigVersion, RuntimeEntry};
use files::FileChange;
use image::ImageSource;
use veil_shim::sandbox::image_cache::{Cleared, ImageCache};

/// The shim's file name; containerd derives it from the runtime type.
const SHIM_NAME: &str = "containerd-shim-veil-v2";
/// The static guest agent's file name.
const AGENT_NAME: &str = "veil-agent";

/// Arguments of `veil node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    #[command(subcommand)]
    command: NodeCommand,
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Install the shim, the guest image (built if missing) and the configuration, and
    /// register the `veil` runtime in containerd's config. Idempotent.
    Install(NodeOptions),
    /// Remove what `install` added, and the rootfs images the shims cached that no
    /// container uses; everything else is left as it is. Idempotent.
    Uninstall(NodeOptions),
    /// List the rootfs images the shims cached on this node for pods of the same image;
    /// with --prune, drop those the shims would drop now (or, with --all, every unused one).
    Images(images::ImagesArgs),
}

/// Where things go; the same flags for install and uninstall.
#[derive(Debug, Clone, Args)]
pub struct NodeOptions {
    /// Installation prefix: the shim goes to PREFIX/bin, the guest image to PREFIX/share/veil.
    #[arg(long, default_value = "/usr/local")]
    prefix: PathBuf,
    /// containerd's configuration file (created with `version = 2` when missing).
    #[arg(long, default_value = "/etc/containerd/config.toml")]
    containerd_config: PathBuf,
    /// veil's configuration file (the runtime entry's `ConfigPath`).
    #[arg(long, default_value = veil_config::DEFAULT_CONFIG_PATH)]
    veil_config: PathBuf,
    /// The shim binary to install [default: containerd-shim-veil-v2 next to this executable].
    #[arg(long)]
    shim: Option<PathBuf>,
    /// A built guest image (vmlinux, vmlinuz, initramfs.img, manifest.json); built there when missing
    /// [default: the installed one, else $XDG_CACHE_HOME/veil/guest-image/image].
    #[arg(long, env = "VEIL_GUEST_IMAGE_DIR")]
    image_dir: Option<PathBuf>,
    /// The static veil-agent to build a missing image with [default: next to this executable].
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Print what would change, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Configure pods as SEV-SNP guests booted through this AmdSev OVMF build (q35, the
    /// bzImage kernel, `confidential_guest = "snp"`); the shim refuses them on a host
    /// `veil doctor` finds without SNP.
    #[arg(long)]
    snp_firmware: Option<PathBuf>,
    /// The node's root filesystem is mounted here (the node-installer DaemonSet mounts it at
    /// /host): files are written below it, while the paths inside the configuration files
    /// stay as the node sees them.
    #[arg(long)]
    host_root: Option<PathBuf>,
}

impl NodeOptions {
    fn shim_dest(&self) -> PathBuf {
        self.prefix.join("bin").join(SHIM_NAME)
    }

    fn share_dir(&self) -> PathBuf {
        self.prefix.join("share").join("veil")
    }

    /// Where a path of the node is, as this process reaches it (below `--host-root`).
    fn on_host(&self, path: &Path) -> PathBuf {
        match &self.host_root {
            Some(root) => root.join(path.strip_prefix("/").unwrap_or(path)),
            None => path.to_path_buf(),
        }
    }
}

/// Runs `veil node ...`.
pub fn run(args: NodeArgs) -> Result<()> {
    let (options, report) = match args.command {
        NodeCommand::Install(options) => {
            let report = install(&options)?;
            (options, report)
        }
        NodeCommand::Uninstall(options) => {
            let report = uninstall(&options)?;
            (options, report)
        }
        NodeCommand::Images(args) => return images::run(&args),
    };
    report.print(options.dry_run);
    Ok(())
}

/// One line of the report: what happened to which path.
#[derive(Debug)]
struct Step {
    change: FileChange,
    path: PathBuf,
    what: String,
}

/// What install or uninstall did, printed at the end.
#[derive(Debug, Default)]
struct Report {
    steps: Vec<Step>,
    kept: Vec<(PathBuf, String)>,
    install: bool,
}

impl Report {
    fn add(&mut self, change: FileChange, path: &Path, what: impl Into<String>) {
        tracing::debug!(path = %path.display(), ?change, "node file");
        self.steps.push(Step {
            change,
            path: path.to_path_buf(),
            what: what.into(),
        });
    }

    fn changed(&self) -> bool {
        self.steps.iter().any(|step| step.change.is_change())
    }

    fn print(&self, dry_run: bool) {
        for step in &self.steps {
            println!(
                "{:<16} {}  ({})",
                verb(step.change, dry_run),
                step.path.display(),
                step.what
            );
        }
        for (path, why) in &self.kept {
            println!("{:<16} {}  ({why})", "kept", path.display());
        }
        println!("{}", self.summary(dry_run));
    }

    fn summary(&self, dry_run: bool) -> &'static str {
        if !self.changed() {
            return if self.install {
                "nothing changed: veil was already installed"
            } else {
                "nothing changed: veil was not installed"
            };
        }
        if dry_run {
            "dry run: nothing was changed"
        } else if self.install {
            "veil installed; restart containerd to load the runtime (systemctl restart containerd)"
        } else {
            "veil uninstalled; restart containerd to drop the runtime"
        }
    }
}

fn verb(change: FileChange, dry_run: bool) -> &'static str {
    match (change, dry_run) {
        (FileChange::Created, false) => "created",
        (FileChange::Created, true) => "would create",
        (FileChange::Replaced, false) => "updated",
        (FileChange::Replaced, true) => "would update",
        (FileChange::Removed, false) => "removed",
        (FileChange::Removed, true) => "would remove",
        (FileChange::Unchanged, _) => "unchanged",
        (FileChange::Absent, _) => "absent",
    }
}

/// The directory of the running `veil`, where the shim and agent sit in a build or a release.
fn next_to_this_executable(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("find the path of the running veil executable")?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    Ok(dir.join(name))
}

fn install(options: &NodeOptions) -> Result<Report> {
    let mut report = Report {
        install: true,
        ..Report::default()
    };
    // A containerd config that cannot take the entry (version 1, broken TOML) stops the
    // install before anything is copied.
    let registration = plan_runtime_registration(options)?;
    install_shim(options, &mut report)?;
    install_image(options, &mut report)?;
    install_veil_config(options, &mut report)?;
    registration.apply(options, &mut report)?;
    Ok(report)
}

fn uninstall(options: &NodeOptions) -> Result<Report> {
    let mut report = Report::default();
    // Read before anything changes: the configuration goes last.
    let state_dir = configured_state_dir(options)?;
    unregister_runtime(options, &mut report)?;
    let shim = options.on_host(&options.shim_dest());
    report.add(files::remove(&shim, options.dry_run)?, &shim, "shim");
    let share = options.on_host(&options.share_dir());
    for name in image::REQUIRED_FILES {
        let path = share.join(name);
        report.add(files::remove(&path, options.dry_run)?, &path, "guest image");
    }
    remove_dir_if_empty(&share, options.dry_run, &mut report)?;
    uninstall_image_cache(options, &state_dir, &mut report);
    uninstall_veil_config(options, &mut report)?;
    Ok(report)
}

/// `[runtime] state_dir` of the installed configuration (the built-in default when there is
/// none), where the shims keep their cache of rootfs images.
fn configured_state_dir(options: &NodeOptions) -> Result<PathBuf> {
    let path = options.on_host(&options.veil_config);
    if !path.exists() {
        return Ok(veil_config::Config::default().runtime.state_dir);
    }
    let config = veil_config::Config::load(&path).with_context(|| {
        format!(
            "read {} to find [runtime] state_dir, where the shims cache rootfs images; fix the file (or remove it, if it is not wanted) and run uninstall again",
            path.display()
        )
    })?;
    Ok(config.runtime.state_dir)
}

/// The shims' cache of rootfs images is veil's own, in node memory by default
/// (`/run/veil`), so uninstall drops it, but for the images containers of running pods
/// link: those go with `veil node images --prune --all` once the pods end.
fn uninstall_image_cache(options: &NodeOptions, state_dir: &Path, report: &mut Report) {
    let cache = ImageCache::new(&options.on_host(state_dir), 0);
    for (path, fate) in cache.clear(options.dry_run) {
        let why = match fate {
            Cleared::Removed => {
                report.add(FileChange::Removed, &path, "cached rootfs image");
                continue;
            }
            Cleared::InUse(users) => format!(
                "rootfs image linked by {users} running container(s): once their pods end, `veil node images --prune --all` drops it"
            ),
            Cleared::Staging(pid) => {
                format!("rootfs image the running shim {pid} is caching now: run uninstall again once its pod ends")
            }
            Cleared::Failed(error) => format!("cached rootfs image not removed ({error}): remove it by hand"),
        };
        report.kept.push((path, why));
    }
}

/// Removes a directory install created once it is empty; a missing or non-empty one is not
/// worth a line.
fn remove_dir_if_empty(dir: &Path, dry_run: bool, report: &mut Report) -> Result<()> {
    // In a dry run the files were not removed, so the directory is not empty yet.
    if dry_run {
        return Ok(());
    }
    if files::remove_dir_if_empty(dir, dry_run)? == FileChange::Removed {
        report.add(FileChange::Removed, dir, "directory");
    }
    Ok(())
}

fn install_shim(options: &NodeOptions, report: &mut Report) -> Result<()> {
    let source = match &options.shim {
        Some(path) => path.clone(),
        None => next_to_this_executable(SHIM_NAME)?,
    };
    if !source.is_file() {
        anyhow::bail!(
            "no shim at {}: build it (`cargo build -p veil-shim`) and pass --shim PATH",
            source.display()
        );
    }
    let dest = options.on_host(&options.shim_dest());
    let change = files::install_copy(&source, &dest, 0o755, options.dry_run)?;
    report.add(change, &dest, format!("shim, from {}", source.display()));
    Ok(())
}

fn install_image(options: &NodeOptions, report: &mut Report) -> Result<()> {
    let share = options.on_host(&options.share_dir());
    let agent = match &options.agent {
        Some(path) => path.clone(),
        None => next_to_this_executable(AGENT_NAME)?,
    };
    let source = image::choose_source(
        options.image_dir.as_deref(),
        &share,
        &agent,
        &image::default_build_dir(),
    )?;
    let dir = match source {
        ImageSource::AlreadyInstalled => {
            for name in image::REQUIRED_FILES {
                report.add(FileChange::Unchanged, &share.join(name), "guest image");
            }
            return Ok(());
        }
        ImageSource::Prebuilt(dir) => dir,
        ImageSource::Build { agent, out_dir } if options.dry_run => {
            println!(
                "would build the guest image into {} with {}",
                out_dir.display(),
                agent.display()
            );
            return Ok(());
        }
        ImageSource::Build { agent, out_dir } => {
            eprintln!(
                "building the guest image into {} with {} (first build downloads Debian's \
                 kernel package; takes a few minutes)...",
                out_dir.display(),
                agent.display()
            );
            let dir = image::build(&agent, &out_dir)?;
            eprintln!("guest image built");
            dir
        }
    };
    copy_image(&dir, &share, options.dry_run, report)
}

fn copy_image(from: &Path, share: &Path, dry_run: bool, report: &mut Report) -> Result<()> {
    for name in image::REQUIRED_FILES {
        let dest = share.join(name);
        let change = files::install_copy(&from.join(name), &dest, 0o644, dry_run)?;
        report.add(
            change,
            &dest,
            format!("guest image, from {}", from.display()),
        );
    }
    Ok(())
}

fn desired_veil_config(options: &NodeOptions) -> Result<String> {
    let share = options.share_dir();
    let (kernel, initrd) = runtime_config::image_paths(&share);
    if let Some(firmware) = &options.snp_firmware {
        // SNP boots through OVMF, which measures the bzImage, not the PVH vmlinux.
        let vmlinuz = share.join(veil_guest_image::VMLINUZ_FILE);
        let snp = runtime_config::SNP_MACHINE;
        return Ok(runtime_config::render(
            &vmlinuz,
            &initrd,
            snp,
            Some(firmware),
        )?);
    }
    // The stock-kernel fallback image needs q35; before the image is installed (a dry run)
    // there is no manifest yet, and the default machine is the minimal kernel's.
    let machine = veil_guest_image::manifest::read_manifest(&options.on_host(&share))
        .map(|manifest| veil_guest_image::KernelChoice::of(&manifest).machine())
        .unwrap_or(veil_config::DEFAULT_MACHINE);
    Ok(runtime_config::render(&kernel, &initrd, machine, None)?)
}

fn install_veil_config(options: &NodeOptions, report: &mut Report) -> Result<()> {
    let path = &options.on_host(&options.veil_config);
    let desired = desired_veil_config(options)?;
    match files::read_if_exists(path)? {
        Some(current) if current != desired.as_bytes() => report.kept.push((
            path.clone(),
            "differs from what veil writes: the operator's settings, not overwritten".to_string(),
        )),
        _ => {
            let change = files::install_bytes(path, desired.as_bytes(), 0o644, options.dry_run)?;
            report.add(change, path, "veil configuration");
        }
    }
    Ok(())
}

fn uninstall_veil_config(options: &NodeOptions, report: &mut Report) -> Result<()> {
    let path = &options.on_host(&options.veil_config);
    let desired = desired_veil_config(options)?;
    match files::read_if_exists(path)? {
        None => report.add(FileChange::Absent, path, "veil configuration"),
        Some(current) if current == desired.as_bytes() => {
            let change = files::remove(path, options.dry_run)?;
            report.add(change, path, "veil configuration");
            if let Some(dir) = path.parent() {
                remove_dir_if_empty(dir, options.dry_run, report)?;
            }
        }
        Some(_) => report.kept.push((
            path.clone(),
            "changed by the operator since install: remove it by hand if unwanted".to_string(),
        )),
    }
    Ok(())
}

fn read_text(path: &Path) -> Result<Option<String>> {
    let Some(bytes) = files::read_if_exists(path)? else {
        return Ok(None);
    };
    let text = String::from_utf8(bytes)
        .with_context(|| format!("{} is not UTF-8 text", path.display()))?;
    Ok(Some(text))
}

/// The containerd config edit install will make, computed before anything is installed.
struct RuntimeRegistration {
    change: FileChange,
    edit: containerd::Edit,
}

fn plan_runtime_registration(options: &NodeOptions) -> Result<RuntimeRegistration> {
    let path = &options.on_host(&options.containerd_config);
    let existing = read_text(path)?;
    let original = existing.as_deref().unwrap_or(containerd::new_file_text());
    let entry = RuntimeEntry {
        config_path: options.veil_config.clone(),
    };
    let edit = containerd::register(original, path, &entry)?;
    let change = match (&existing, edit.changed) {
        (None, _) => FileChange::Created,
        (Some(_), true) => FileChange::Replaced,
        (Some(_), false) => FileChange::Unchanged,
    };
    Ok(RuntimeRegistration { change, edit })
}

impl RuntimeRegistration {
    fn apply(self, options: &NodeOptions, report: &mut Report) -> Result<()> {
        let path = &options.on_host(&options.containerd_config);
        if self.change.is_change() && !options.dry_run {
            files::write_through_symlink(path, self.edit.text.as_bytes())?;
        }
        let what = runtime_what(self.edit.version, "registered");
        report.add(self.change, path, what);
        Ok(())
    }
}

fn unregister_runtime(options: &NodeOptions, report: &mut Report) -> Result<()> {
    let path = &options.on_host(&options.containerd_config);
    let Some(existing) = read_text(path)? else {
        report.add(FileChange::Absent, path, "containerd config");
        return Ok(());
    };
    let edit = containerd::unregister(&existing, path)?;
    if !edit.changed {
        let what = runtime_what(edit.version, "not registered");
        report.add(FileChange::Unchanged, path, what);
        return Ok(());
    }
    let what = runtime_what(edit.version, "unregistered");
    if containerd::is_bare_new_file(&edit.text) {
        // Only `version = 2` is left: the file install created from nothing.
        report.add(files::remove(path, options.dry_run)?, path, what);
        return Ok(());
    }
    if !options.dry_run {
        files::write_through_symlink(path, edit.text.as_bytes())?;
    }
    report.add(FileChange::Replaced, path, what);
    Ok(())
}

fn runtime_what(version: ConfigVersion, done: &str) -> String {
    format!(
        "containerd config version {}: runtime `{}` {done}",
        version.number(),
        containerd::RUNTIME_NAME
    )
}

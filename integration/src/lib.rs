//! End-to-end test harness: a private containerd (own root, state and socket), the
//! locally built busybox image, the veil shim and guest image, and helpers that look
//! for leftovers (QEMU and shim processes, mounts, state directories).
//!
//! Artifacts come from the build (`make test` builds them):
//! * the shim: `$VEIL_SHIM`, else `containerd-shim-veil-v2` next to the test binary's
//!   target directory;
//! * the guest image: `$VEIL_GUEST_IMAGE_DIR`, else `<workspace>/build/image`
//!   (`vmlinuz` and `initramfs.img`);
//! * the static demo model server (for the serving image): `$VEIL_MODEL_SERVER`, else
//!   `<workspace>/target/agent-static/x86_64-unknown-linux-gnu/release/veil-model-server`
//!   (`make image` builds it with the agent).

pub mod cri;
pub mod oci;
pub mod owner;
pub mod streaming;
pub mod systemd;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The veil runtime name for `ctr run --runtime`.
pub const VEIL_RUNTIME: &str = "io.containerd.veil.v2";
/// The annotation that puts a `ctr run` container into another container's VM.
pub const GROUP_ANNOTATION: &str = "io.containerd.veil.v2.group";
/// The pod annotation by which a model owner allows exec into the containers that can
/// reach the model (denied by default).
pub const EXEC_ANNOTATION: &str = "io.veil.model.exec";
/// The demo serving image: busybox plus the static `veil-model-server`.
pub const MODEL_SERVER_IMAGE: &str = "veil.test/model-server:latest";
/// The serving container's command in [`Containerd::run_model_server`]: the model at
/// /model/model.safetensors, listening on 127.0.0.1:8080 in its VM's network.
pub const MODEL_SERVER_ARGS: [&str; 6] = [
    "veil-model-server",
    "serve",
    "--model",
    "/model/model.safetensors",
    "--listen",
    "127.0.0.1:8080",
];
/// The annotation naming the containers a model owner approves to read the model.
pub const READERS_ANNOTATION: &str = "io.veil.model.readers";

/// The static `veil-model-server` binary for the serving image.
pub fn model_server_binary() -> Result<PathBuf> {
    let path = std::env::var_os("VEIL_MODEL_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            workspace_root()
                .join("target/agent-static/x86_64-unknown-linux-gnu/release/veil-model-server")
        });
    if !path.exists() {
        bail!(
            "the static model server {} is missing: run `make image` first (make test does it)",
            path.display()
        );
    }
    Ok(path)
}

/// Writes the serving image named `name`, with `extra` files besides the server, as an OCI
/// image archive at `out` (what its owner publishes and the node imports).
pub fn write_model_server_archive(
    out: &Path,
    name: &str,
    extra: Vec<oci::ExtraFile>,
) -> Result<()> {
    let binary = model_server_binary()?;
    let data = std::fs::read(&binary).with_context(|| format!("read {}", binary.display()))?;
    let mut files = vec![oci::ExtraFile {
        path: "bin/veil-model-server".into(),
        mode: 0o755,
        data,
    }];
    files.extend(extra);
    oci::write_image(out, name, &files)
}

/// `veil rootfs digest --oci ARCHIVE`: the rootfs digest a model owner takes of the image
/// archive they publish, with the `veil` binary built next to this one.
pub fn owner_image_digest(archive: &Path) -> Result<String> {
    let archive = archive.to_string_lossy();
    veil_cli(&["rootfs", "digest", "--oci", &archive])
}

/// Runs the `veil` binary built next to this one with `args`; its stdout, trimmed.
pub fn veil_cli(args: &[&str]) -> Result<String> {
    let veil = target_profile_dir()
        .map(|d| d.join("veil"))
        .context("cannot find the build directory")?;
    let output = Command::new(&veil)
        .args(args)
        .output()
        .with_context(|| format!("run {} (cargo build --workspace builds it)", veil.display()))?;
    if !output.status.success() {
        bail!(
            "veil {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Where the built pieces are.
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// containerd-shim-veil-v2.
    pub shim: PathBuf,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Guest initramfs.
    pub initrd: PathBuf,
    /// The QEMU machine the image's kernel boots on (microvm for the minimal kernel, q35
    /// for the stock Debian one), as `veil node install` would configure it.
    pub machine: String,
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

pub(crate) fn target_profile_dir() -> Option<PathBuf> {
    // <target>/<profile>/deps/<test binary>  or  <target>/<profile>/<binary>
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    Some(if dir.ends_with("deps") {
        dir.parent()?.to_path_buf()
    } else {
        dir.to_path_buf()
    })
}

/// The machine for the image in `dir`, from its manifest.
fn image_machine(dir: &Path) -> Result<String> {
    let manifest = veil_guest_image::manifest::read_manifest(dir)
        .with_context(|| "the guest image has no usable manifest: run `make image`")?;
    Ok(veil_guest_image::KernelChoice::of(&manifest)
        .machine()
        .to_string())
}

impl Artifacts {
    /// Finds the shim and guest image; the error says how to build what is missing.
    pub fn locate() -> Result<Artifacts> {
        let shim = std::env::var_os("VEIL_SHIM")
            .map(PathBuf::from)
            .or_else(|| target_profile_dir().map(|d| d.join("containerd-shim-veil-v2")))
            .context("cannot tell where the shim binary is; set VEIL_SHIM")?;
        let image = std::env::var_os("VEIL_GUEST_IMAGE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("build/image"));
        // The uncompressed PVH kernel boots about 2.5x faster than the bzImage under TCG
        // (benches/guest-boot/results.md); use it when the image has one.
        let pvh = image.join("vmlinux");
        let artifacts = Artifacts {
            shim,
            kernel: if pvh.exists() {
                pvh
            } else {
                image.join("vmlinuz")
            },
            initrd: image.join("initramfs.img"),
            machine: image_machine(&image)?,
        };
        for (what, path, fix) in [
            ("shim", &artifacts.shim, "cargo build -p veil-shim"),
            ("guest kernel", &artifacts.kernel, "make image"),
            ("guest initramfs", &artifacts.initrd, "make image"),
        ] {
            if !path.exists() {
                bail!(
                    "{what} {} is missing: run `{fix}` first (make test does it)",
                    path.display()
                );
            }
        }
        Ok(artifacts)
    }
}

/// A private containerd with veil installed into it.
pub struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
    /// How containerd was started, to start it again ([`Containerd::restart`]).
    launch: Launch,
    /// containerd's socket.
    pub socket: PathBuf,
    /// The veil configuration file the shim uses.
    pub veil_config: PathBuf,
    /// veil's state directory root (per-sandbox state lives below it).
    pub veil_state: PathBuf,
    /// The artifacts in use.
    pub artifacts: Artifacts,
}

/// containerd's command line and environment.
struct Launch {
    /// The launcher (`unshare ...`, say) and its arguments, before `containerd`.
    launcher: Vec<String>,
    config: PathBuf,
    path: String,
    veil_config: PathBuf,
    log: PathBuf,
}

impl Launch {
    /// Starts containerd, appending to its log.
    fn spawn(&self) -> Result<Child> {
        let mut command = match self.launcher.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg("containerd");
                command
            }
            None => Command::new("containerd"),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        command
            .arg("--config")
            .arg(&self.config)
            .env("PATH", &self.path)
            .env("VEIL_CONFIG", &self.veil_config)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start containerd: install it (apt-get install containerd runc)")
    }
}

/// What one `ctr` invocation did.
#[derive(Debug)]
pub struct CtrOutput {
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl From<Output> for CtrOutput {
    fn from(output: Output) -> Self {
        CtrOutput {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

fn require_root() -> Result<()> {
    if !nix_is_root() {
        bail!("integration tests need root (containerd, mounts, QEMU): run them as root");
    }
    Ok(())
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl Containerd {
    /// Starts containerd with the veil shim on its PATH and a veil configuration naming
    /// the built guest image.
    pub fn start() -> Result<Containerd> {
        Containerd::start_with(&Options::default())
    }

    /// Like [`Containerd::start`], with `options` changing the veil configuration.
    pub fn start_with(options: &Options) -> Result<Containerd> {
        Containerd::start_instance(options, false)
    }

    /// Like [`Containerd::start_with`], with containerd's CRI plugin enabled (on
    /// [`Containerd::socket`]) and a `veil` runtime handler next to the default runc,
    /// as `veil node install` would configure it; [`cri`] has the client and imports
    /// the images CRI needs.
    pub fn start_cri(options: &Options) -> Result<Containerd> {
        Containerd::start_instance(options, true)
    }

    fn start_instance(options: &Options, cri: bool) -> Result<Containerd> {
        require_root()?;
        let mut artifacts = Artifacts::locate()?;
        if let Some(kernel) = &options.kernel {
            artifacts.kernel = kernel.clone();
        }
        let dir = tempfile::Builder::new()
            .prefix("veil-it-")
            .tempdir_in("/tmp")?;
        let root = dir.path();
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin)?;
        std::os::unix::fs::symlink(&artifacts.shim, bin.join("containerd-shim-veil-v2"))?;
        let socket = root.join("containerd.sock");
        let veil_state = root.join("veil");
        let veil_config = root.join("veil.toml");
        std::fs::write(
            &veil_config,
            format!(
                "[hypervisor]\nkernel = \"{}\"\ninitrd = \"{}\"\nmachine = \"{}\"\nboot_timeout_secs = 180\n{}\n[agent]\nlog_level = \"{}\"\n\n[runtime]\nstate_dir = \"{}\"\n{}",
                artifacts.kernel.display(),
                artifacts.initrd.display(),
                artifacts.machine,
                options
                    .shared_fs
                    .as_ref()
                    .map(|fs| format!("shared_fs = \"{fs}\"\n"))
                    .unwrap_or_default(),
                // VEIL_TEST_AGENT_LOG=debug makes the guest console log (console_log) verbose.
                std::env::var("VEIL_TEST_AGENT_LOG").unwrap_or_else(|_| "info".into()),
                veil_state.display(),
                options
                    .reader_rootfs
                    .as_ref()
                    .map(|how| format!("reader_rootfs = \"{how}\"\n"))
                    .unwrap_or_default(),
            ),
        )?;
        let config = root.join("containerd.toml");
        let base = format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n{1}[grpc]\n  address = \"{2}\"\n[debug]\n  level = \"info\"\n",
            root.display(),
            if cri {
                ""
            } else {
                "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n"
            },
            socket.display()
        );
        let cri_section = if cri {
            cri_plugin_config(root, &veil_config)?
        } else {
            String::new()
        };
        std::fs::write(&config, base + &cri_section)?;
        let launch = Launch {
            launcher: options.launcher.clone(),
            config,
            path: format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
            veil_config: veil_config.clone(),
            log: root.join("containerd.log"),
        };
        let child = launch.spawn()?;
        let containerd = Containerd {
            dir,
            child,
            launch,
            socket,
            veil_config,
            veil_state,
            artifacts,
        };
        containerd.wait_ready()?;
        Ok(containerd)
    }

    /// Stops containerd as systemd does (SIGTERM) and starts it again on the same root,
    /// state and socket, as a node's containerd upgrade or crash would; shims and VMs go on.
    pub fn restart(&mut self) -> Result<()> {
        self.stop_containerd();
        self.child = self.launch.spawn()?;
        self.wait_ready()
    }

    fn stop_containerd(&mut self) {
        // SAFETY: sending SIGTERM to our own child has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = eventually(Duration::from_secs(10), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.socket.exists()
                && self
                    .ctr(&["version"])
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false)
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("containerd did not come up; log:\n{}", self.log())
    }

    /// The private directory (containerd root and state, veil state, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `veil node images --json` with this instance's veil configuration, and `extra`
    /// flags (`--prune`, `--all`).
    pub fn node_images(&self, extra: &[&str]) -> Result<serde_json::Value> {
        let config = self.veil_config.to_string_lossy();
        let mut args = vec!["node", "images", "--json", "--config", &config];
        args.extend_from_slice(extra);
        Ok(serde_json::from_str(&veil_cli(&args)?)?)
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// A `ctr` command against this containerd.
    pub fn ctr(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ctr");
        command.arg("-a").arg(&self.socket).args(args);
        command
    }

    /// Runs `ctr` with `args` (bounded by `timeout`), stdin from `input`.
    pub fn run_ctr(
        &self,
        args: &[&str],
        input: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<CtrOutput> {
        let mut command = self.ctr(args);
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        command.stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = command.spawn().context("start ctr")?;
        if let Some(input) = input {
            use std::io::Write;
            let mut stdin = child.stdin.take().context("ctr stdin")?;
            stdin.write_all(input)?;
        }
        wait_with_timeout(child, timeout, &format!("ctr {}", args.join(" ")))
    }

    /// Imports the busybox image ([`oci::BUSYBOX_IMAGE`]).
    pub fn import_busybox(&self) -> Result<()> {
        let tarball = self.dir.path().join("busybox.tar");
        oci::write_busybox_image(&tarball)?;
        self.import_tarball(&tarball)
    }

    /// Imports the serving image ([`MODEL_SERVER_IMAGE`]): busybox plus
    /// `/bin/veil-model-server`.
    pub fn import_model_server(&self) -> Result<()> {
        self.import_model_server_as(MODEL_SERVER_IMAGE, Vec::new())
    }

    /// Imports the serving image under `name` with `extra` files besides the server (an
    /// image that differs from [`MODEL_SERVER_IMAGE`] by those files).
    pub fn import_model_server_as(&self, name: &str, extra: Vec<oci::ExtraFile>) -> Result<()> {
        let tarball = self.dir.path().join("model-server.tar");
        write_model_server_archive(&tarball, name, extra)?;
        self.import_tarball(&tarball)
    }

    /// The rootfs digest of `image` as a model owner approves it
    /// (`io.veil.model.readers`): the image mounted with `ctr images mount` and digested
    /// as `veil rootfs digest` does.
    pub fn image_rootfs_digest(&self, image: &str) -> Result<String> {
        let target = self.dir.path().join("image-mount");
        std::fs::create_dir_all(&target).with_context(|| format!("create {}", target.display()))?;
        let target_text = target.display().to_string();
        let mounted = self.run_ctr(
            &["images", "mount", image, &target_text],
            None,
            Duration::from_secs(60),
        )?;
        if mounted.code != 0 {
            bail!("ctr images mount {image} failed: {}", mounted.stderr);
        }
        let digest = veil_protocol::rootfs::digest_tree(&target);
        let unmounted = self.run_ctr(
            &["images", "unmount", "--rm", &target_text],
            None,
            Duration::from_secs(60),
        )?;
        if unmounted.code != 0 {
            bail!(
                "ctr images unmount {target_text} failed: {}",
                unmounted.stderr
            );
        }
        let digest = digest.with_context(|| format!("digest {image} mounted at {target_text}"))?;
        Ok(veil_protocol::rootfs::format_digest(&digest))
    }

    fn import_tarball(&self, tarball: &Path) -> Result<()> {
        let output = self.run_ctr(
            &["image", "import", &tarball.display().to_string()],
            None,
            Duration::from_secs(60),
        )?;
        if output.code != 0 {
            bail!("ctr image import failed: {}", output.stderr);
        }
        Ok(())
    }

    /// `ctr run --rm [--runtime veil] busybox <id> <args>`.
    pub fn run(
        &self,
        runtime: Runtime,
        id: &str,
        args: &[&str],
        input: Option<&[u8]>,
    ) -> Result<CtrOutput> {
        let mut all = vec!["run", "--rm"];
        if let Runtime::Veil = runtime {
            all.extend(["--runtime", VEIL_RUNTIME]);
        }
        all.push(oci::BUSYBOX_IMAGE);
        all.push(id);
        all.extend(args);
        self.run_ctr(&all, input, Duration::from_secs(300))
    }

    /// `ctr run -d` of the demo model server (listening on 127.0.0.1:8080 in its VM's network) with
    /// `annotations` and the memory volume `model` mounted read-only at /model. Returns
    /// once the container started (after its model delivery) or failed to.
    pub fn run_model_server(
        &self,
        id: &str,
        annotations: &[(String, String)],
    ) -> Result<CtrOutput> {
        let mount = self.model_volume_mount(id)?;
        let pairs: Vec<String> = annotations
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        // In the VM's network, where the pod's other containers reach it (`ctr run` would
        // otherwise give it a network namespace of its own, with its own loopback).
        // Its output goes to a file, as kubelet's CRI log path would take it: `ctr run -d`
        // alone leaves it to a FIFO nobody reads, and a server that logs every request
        // then blocks once the FIFO is full (as under runc).
        let log = format!("file://{}", self.server_log_path(id).display());
        let mut args = vec![
            "run",
            "-d",
            "--net-host",
            "--runtime",
            VEIL_RUNTIME,
            "--log-uri",
            &log,
        ];
        for pair in &pairs {
            args.extend(["--annotation", pair.as_str()]);
        }
        args.extend(["--mount", &mount, MODEL_SERVER_IMAGE, id]);
        args.extend(MODEL_SERVER_ARGS);
        self.run_ctr(&args, None, Duration::from_secs(600))
    }

    /// Where [`Self::run_model_server`] has the output of server `id` written.
    pub fn server_log_path(&self, id: &str) -> PathBuf {
        self.dir.path().join(format!("{id}.server.log"))
    }

    /// Asks the model server in container `id` (see [`Self::run_model_server`]) for a
    /// prediction on `input` (comma-separated numbers), from a client container started
    /// next to it in its VM (`veil-model-server query` from the same image, without the
    /// model's volume), as another container of the pod would: exec into the server is
    /// refused unless the model owner allows it. The server gets up to 60 s to come up (it
    /// loads the model before it listens, which takes seconds for a padded model under
    /// TCG). A server that never came up gives the health check's answer.
    pub fn query_model_server(&self, id: &str, input: &str) -> Result<CtrOutput> {
        let health = self.run_in_pod(
            id,
            "health",
            &[
                "veil-model-server",
                "query",
                "--url",
                "http://127.0.0.1:8080",
                "--health",
                "--wait-secs",
                "60",
            ],
        )?;
        if health.code != 0 {
            return Ok(health);
        }
        self.run_in_pod(
            id,
            "query",
            &[
                "veil-model-server",
                "query",
                "--url",
                "http://127.0.0.1:8080",
                "--input",
                input,
                "--wait-secs",
                "60",
            ],
        )
    }

    /// The server's answer to `input` (its JSON line); a failed query is an error with the
    /// query's output and the VM's console.
    pub fn model_server_answer(&self, id: &str, input: &str) -> Result<String> {
        let answer = self
            .query_model_server(id, input)
            .with_context(|| format!("query: console: {}", self.console_log(id)))?;
        if answer.code != 0 {
            bail!(
                "query failed: {} {}\nconsole: {}",
                answer.stdout,
                answer.stderr,
                self.console_log(id)
            );
        }
        Ok(answer.stdout)
    }

    /// `ctr run --rm` of `args` from the serving image as container `<group>-<name>` in
    /// the VM of container `group`, in the VM's network, with no volume; returns when it
    /// exited.
    pub fn run_in_pod(&self, group: &str, name: &str, args: &[&str]) -> Result<CtrOutput> {
        self.run_in_pod_with(group, name, &[], args)
    }

    /// [`Self::run_in_pod`] with more `ctr run` flags (`--privileged`, `--mount ...`): what
    /// a node might add to a pod's VM.
    pub fn run_in_pod_with(
        &self,
        group: &str,
        name: &str,
        flags: &[&str],
        args: &[&str],
    ) -> Result<CtrOutput> {
        self.run_in_group(group, name, MODEL_SERVER_IMAGE, &[], flags, args)
    }

    /// `ctr run --rm` of `args` from `image` as container `<group>-<name>` in the VM of
    /// container `group`, with `annotations` (the pod's) and the group's model volume at
    /// /model, as a second container of the pod that reads the model would; returns when
    /// it exited or failed to start. `flags` are more `ctr run` flags (`--env ...`).
    pub fn run_reader_in_pod(
        &self,
        group: &str,
        name: &str,
        image: &str,
        annotations: &[(String, String)],
        flags: &[&str],
        args: &[&str],
    ) -> Result<CtrOutput> {
        let mount = self.model_volume_mount(group)?;
        let mut all = vec!["--mount", mount.as_str()];
        all.extend(flags);
        self.run_in_group(group, name, image, annotations, &all, args)
    }

    fn run_in_group(
        &self,
        group: &str,
        name: &str,
        image: &str,
        annotations: &[(String, String)],
        flags: &[&str],
        args: &[&str],
    ) -> Result<CtrOutput> {
        let id = format!("{group}-{name}");
        let mut pairs: Vec<String> = annotations
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        pairs.push(format!("{GROUP_ANNOTATION}={group}"));
        let mut all = vec!["run", "--rm", "--net-host", "--runtime", VEIL_RUNTIME];
        for pair in &pairs {
            all.extend(["--annotation", pair.as_str()]);
        }
        all.extend(flags);
        all.extend([image, id.as_str()]);
        all.extend(args);
        self.run_ctr(&all, None, Duration::from_secs(300))
    }

    /// The `ctr run --mount` of pod `pod`'s memory volume `model` at /model, read-only.
    fn model_volume_mount(&self, pod: &str) -> Result<String> {
        let host_volume = self.dir.path().join(format!("pods/{pod}/volumes/model"));
        std::fs::create_dir_all(&host_volume)
            .with_context(|| format!("create {}", host_volume.display()))?;
        Ok(format!(
            "type=bind,src={},dst=/model,options=rbind:ro",
            host_volume.display()
        ))
    }

    /// `ctr task exec` of `args` in container `id`.
    pub fn exec(&self, id: &str, exec_id: &str, args: &[&str]) -> Result<CtrOutput> {
        let mut all = vec!["task", "exec", "--exec-id", exec_id, id];
        all.extend(args);
        self.run_ctr(&all, None, Duration::from_secs(120))
    }

    /// The guest console log of sandbox `id` (the agent's log), for failure messages.
    pub fn console_log(&self, id: &str) -> String {
        let path = self.veil_state.join("default").join(id).join("console.log");
        std::fs::read_to_string(&path).unwrap_or_else(|e| format!("({}: {e})", path.display()))
    }

    /// Kills and deletes container `id` and its task, whatever state they are in.
    pub fn remove(&self, id: &str) {
        let steps: [&[&str]; 3] = [
            &["task", "kill", "-s", "SIGKILL", id],
            &["task", "delete", "-f", id],
            &["container", "delete", id],
        ];
        for step in steps {
            let _ = self.run_ctr(step, None, Duration::from_secs(60));
        }
    }

    /// Pids of QEMU processes whose command line mentions this instance's directory.
    pub fn qemu_processes(&self) -> Vec<u32> {
        processes_mentioning(self.dir.path(), "qemu-system")
    }

    /// Pids of virtiofsd processes serving a VM of this instance.
    pub fn virtiofsd_processes(&self) -> Vec<u32> {
        processes_mentioning(self.dir.path(), "virtiofsd")
    }

    /// Pids of veil shims serving this containerd.
    pub fn shim_processes(&self) -> Vec<u32> {
        processes_mentioning(&self.socket, "containerd-shim-veil-v2")
    }

    /// Pids of every shim (veil or runc) serving this containerd.
    fn all_shim_processes(&self) -> Vec<u32> {
        processes_mentioning(&self.socket, "containerd-shim")
    }

    /// Mount points below this instance's veil state directory or bundles.
    pub fn mounts_below(&self, dir: &Path) -> Vec<String> {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.split_whitespace().nth(4))
            .filter(|target| Path::new(target).starts_with(dir))
            .map(str::to_string)
            .collect()
    }

    /// Entries left in the veil state directory for namespace `default`.
    pub fn state_entries(&self) -> Vec<String> {
        std::fs::read_dir(self.veil_state.join("default"))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Changes to the harness's veil configuration.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Use this guest kernel instead of the built one.
    pub kernel: Option<PathBuf>,
    /// `hypervisor.shared_fs` ("virtio-fs", "virtio-9p"); unset: the default, auto.
    pub shared_fs: Option<String>,
    /// A command prefix containerd runs under, such as [`systemd::SystemdManager::launcher`]
    /// (empty: containerd runs directly).
    pub launcher: Vec<String>,
    /// `runtime.reader_rootfs` ("image", "copy"); unset: the default, image.
    pub reader_rootfs: Option<String>,
}

/// The CRI plugin section: handler `veil` (veil's annotations passed through, the
/// harness's veil.toml as ConfigPath), runc as the default, empty CNI directories so
/// nothing on the host is read (host-network pods need no CNI), and the locally
/// imported [`cri::PAUSE_IMAGE`] as the sandbox image, since there is no registry.
fn cri_plugin_config(root: &Path, veil_config: &Path) -> Result<String> {
    let (cni_bin, cni_conf) = (root.join("cni/bin"), root.join("cni/conf"));
    std::fs::create_dir_all(&cni_bin)?;
    std::fs::create_dir_all(&cni_conf)?;
    let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
    Ok(format!(
        "[{cri}]\n  sandbox_image = \"{pause}\"\n  stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"0\"\n  restrict_oom_score_adj = true\n\
         [{cri}.cni]\n  bin_dir = \"{bin}\"\n  conf_dir = \"{conf}\"\n\
         [{cri}.containerd]\n  default_runtime_name = \"runc\"\n\
         [{cri}.containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\
         [{cri}.containerd.runtimes.veil]\n  runtime_type = \"{VEIL_RUNTIME}\"\n  pod_annotations = [\"io.veil.*\"]\n\
         [{cri}.containerd.runtimes.veil.options]\n  ConfigPath = \"{config}\"\n",
        pause = cri::PAUSE_IMAGE,
        bin = cni_bin.display(),
        conf = cni_conf.display(),
        config = veil_config.display(),
    ))
}

/// Which runtime `ctr run` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// runc (containerd's default).
    Runc,
    /// veil.
    Veil,
}

fn wait_with_timeout(mut child: Child, timeout: Duration, what: &str) -> Result<CtrOutput> {
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(child.wait_with_output()?.into());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let output = child.wait_with_output()?;
            bail!(
                "{what} did not finish within {timeout:?}; stdout: {} stderr: {}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pids whose command line contains both `needle` and `program`.
pub fn processes_mentioning(needle: &Path, program: &str) -> Vec<u32> {
    let needle = needle.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(program) && cmdline.contains(&needle)
        })
        .collect()
}

/// Polls `check` every 50 ms until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop_containerd();
        for pid in self
            .qemu_processes()
            .into_iter()
            .chain(self.all_shim_processes())
        {
            // SAFETY: as above; leftovers of this instance only.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
        let mut mounts = self.mounts_below(self.dir.path());
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in mounts {
            let _ = Command::new("umount").arg("-l").arg(&mount).status();
        }
    }
}

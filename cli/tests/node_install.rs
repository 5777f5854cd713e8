//! `veil node install` / `uninstall` end to end, as an operator runs them: a temporary
//! prefix, a temporary containerd config with the operator's own settings and comments, and
//! the real containerd binary judging the result.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const V2_CONFIG: &str = r#"# containerd config written by the node's operator
version = 2
root = "/var/lib/containerd"   # on the data disk
oom_score = -999

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.6"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      # this node uses systemd cgroups
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = true

[metrics]
  address = "127.0.0.1:1338"
# end of file
"#;

const V3_CONFIG: &str = r#"version = 3
# containerd 2.x, single quotes as `containerd config default` writes them
[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'

[plugins.'io.containerd.cri.v1.runtime'.containerd]
  default_runtime_name = 'runc'
"#;

/// A node laid out under one temporary directory.
struct Node {
    root: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        let root = tempfile::tempdir().expect("tempdir");
        let node = Node { root };
        fs::write(node.path("shim-build"), b"\x7fELF fake shim").expect("shim");
        fs::create_dir(node.path("image")).expect("image dir");
        for name in ["vmlinux", "vmlinuz", "initramfs.img", "manifest.json"] {
            fs::write(node.path("image").join(name), name).expect("image file");
        }
        node
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    fn containerd_config(&self) -> PathBuf {
        self.path("etc/containerd/config.toml")
    }

    fn veil_config(&self) -> PathBuf {
        self.path("etc/veil/configuration.toml")
    }

    fn prefix(&self) -> PathBuf {
        self.path("usr/local")
    }

    fn write_containerd_config(&self, text: &str) {
        let path = self.containerd_config();
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, text).expect("write config");
    }

    /// Runs `veil node VERB` with this node's paths and `extra` flags.
    fn veil(&self, verb: &str, extra: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_veil"));
        command
            .args(["node", verb, "--prefix"])
            .arg(self.prefix())
            .arg("--containerd-config")
            .arg(self.containerd_config())
            .arg("--veil-config")
            .arg(self.veil_config())
            .arg("--shim")
            .arg(self.path("shim-build"))
            .args(extra)
            // `make` exports this; the tests choose their image themselves.
            .env_remove("VEIL_GUEST_IMAGE_DIR")
            .env("XDG_CACHE_HOME", self.path("cache"));
        command.output().expect("run veil")
    }

    fn install(&self) -> String {
        let image = self.path("image");
        let image = image.to_str().expect("utf-8 path");
        succeed(self.veil("install", &["--image-dir", image]))
    }

    fn uninstall(&self) -> String {
        succeed(self.veil("uninstall", &[]))
    }

    fn installed_files(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        collect_files(self.prefix().as_path(), &mut found);
        collect_files(&self.path("etc/veil"), &mut found);
        found.sort();
        found
    }
}

fn collect_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, found);
        } else {
            found.push(path);
        }
    }
}

fn succeed(output: Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "veil failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()))
}

#[test]
fn v2_install_twice_then_uninstall_restores_the_operators_file() {
    let node = Node::new();
    node.write_containerd_config(V2_CONFIG);

    let first = node.install();
    let config = read(&node.containerd_config());
    for line in V2_CONFIG.lines() {
        assert!(config.contains(line), "lost {line:?}:\n{config}");
    }
    assert!(config.contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.veil]"));
    assert!(first.contains("runtime `veil` registered"), "{first}");
    assert_eq!(
        read(&node.prefix().join("bin/containerd-shim-veil-v2")),
        "\x7fELF fake shim"
    );
    for name in ["vmlinux", "vmlinuz", "initramfs.img", "manifest.json"] {
        assert_eq!(read(&node.prefix().join("share/veil").join(name)), name);
    }
    let veil_config = read(&node.veil_config());
    let share = node.prefix().join("share/veil");
    assert!(veil_config.contains(&format!("kernel = \"{}/vmlinux\"", share.display())));
    assert!(veil_config.contains(&format!("initrd = \"{}/initramfs.img\"", share.display())));

    let files_after_first = node.installed_files();
    let second = node.install();
    assert!(second.contains("nothing changed"), "{second}");
    assert!(
        !second.contains("created") && !second.contains("updated"),
        "{second}"
    );
    assert_eq!(read(&node.containerd_config()), config);
    assert_eq!(node.installed_files(), files_after_first);

    let removed = node.uninstall();
    assert!(removed.contains("veil uninstalled"), "{removed}");
    assert_eq!(read(&node.containerd_config()), V2_CONFIG);
    assert_eq!(node.installed_files(), Vec::<PathBuf>::new());
    let again = node.uninstall();
    assert!(again.contains("nothing changed"), "{again}");
    assert_eq!(read(&node.containerd_config()), V2_CONFIG);
}

#[test]
fn v3_install_and_uninstall_round_trip() {
    let node = Node::new();
    node.write_containerd_config(V3_CONFIG);
    node.install();
    let config = read(&node.containerd_config());
    assert!(config.starts_with(V3_CONFIG), "{config}");
    let parsed: toml::Table = toml::from_str(&config).expect("TOML");
    let veil = &parsed["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["veil"];
    assert_eq!(veil["runtime_type"].as_str(), Some("io.containerd.veil.v2"));
    assert_eq!(
        veil["options"]["ConfigPath"].as_str(),
        node.veil_config().to_str()
    );
    assert!(node.install().contains("nothing changed"));
    node.uninstall();
    assert_eq!(read(&node.containerd_config()), V3_CONFIG);
}

#[test]
fn version_1_config_is_refused_before_anything_is_installed() {
    let node = Node::new();
    let v1 = "root = \"/var/lib/containerd\"\n[plugins.cri]\n  sandbox_image = \"pause\"\n";
    node.write_containerd_config(v1);
    let image = node.path("image");
    let output = node.veil("install", &["--image-dir", image.to_str().expect("utf-8")]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("version 1"), "{stderr}");
    assert!(stderr.contains("containerd config migrate"), "{stderr}");
    assert_eq!(read(&node.containerd_config()), v1);
    assert_eq!(node.installed_files(), Vec::<PathBuf>::new());
}

#[test]
fn a_missing_containerd_config_is_created_and_removed_again() {
    let node = Node::new();
    node.install();
    let config = read(&node.containerd_config());
    assert!(config.starts_with("version = 2\n"), "{config}");
    assert!(config.contains("io.containerd.veil.v2"), "{config}");
    node.uninstall();
    assert!(!node.containerd_config().exists());
}

#[test]
fn an_operators_veil_config_is_kept_by_install_and_uninstall() {
    let node = Node::new();
    node.write_containerd_config(V2_CONFIG);
    let mine = "[hypervisor]\nmemory_mib = 2048\n";
    fs::create_dir_all(node.path("etc/veil")).expect("mkdir");
    fs::write(node.veil_config(), mine).expect("write");
    let installed = node.install();
    assert!(installed.contains("kept"), "{installed}");
    assert_eq!(read(&node.veil_config()), mine);
    let removed = node.uninstall();
    assert!(removed.contains("kept"), "{removed}");
    assert_eq!(read(&node.veil_config()), mine);
    assert_eq!(read(&node.containerd_config()), V2_CONFIG);
}

#[test]
fn dry_run_changes_nothing() {
    let node = Node::new();
    node.write_containerd_config(V2_CONFIG);
    let image = node.path("image");
    let output = succeed(node.veil(
        "install",
        &["--dry-run", "--image-dir", image.to_str().expect("utf-8")],
    ));
    assert!(output.contains("would create"), "{output}");
    assert_eq!(read(&node.containerd_config()), V2_CONFIG);
    assert_eq!(node.installed_files(), Vec::<PathBuf>::new());
}

#[test]
fn installed_image_is_reused_and_no_image_without_agent_is_a_clear_error() {
    let node = Node::new();
    // No image anywhere and no agent: nothing can be installed.
    let output = node.veil("install", &["--agent", "/nonexistent/veil-agent"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/nonexistent/veil-agent") && stderr.contains("--agent"),
        "{stderr}"
    );

    // Once installed, a later install without --image-dir keeps the installed image.
    node.install();
    let again = succeed(node.veil("install", &["--agent", "/nonexistent/veil-agent"]));
    assert!(again.contains("nothing changed"), "{again}");
}

/// containerd 1.6 itself reads the written v2 config and shows the veil runtime.
#[test]
fn containerd_accepts_the_written_v2_config() {
    let node = Node::new();
    node.write_containerd_config(V2_CONFIG);
    node.install();
    let output = Command::new("containerd")
        .arg("--config")
        .arg(node.containerd_config())
        .args(["config", "dump"])
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run containerd ({error}): install it with `apt-get install -y containerd`"
            )
        });
    let dump = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "containerd config dump failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let section = dump
        .split("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.veil]")
        .nth(1)
        .unwrap_or_else(|| panic!("no veil runtime in containerd's view:\n{dump}"));
    let veil_part: String = section
        .lines()
        .take_while(|line| {
            !line
                .trim_start()
                .starts_with("[plugins.\"io.containerd.grpc.v1.cri\".containerd.untrusted")
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        veil_part.contains("runtime_type = \"io.containerd.veil.v2\""),
        "{veil_part}"
    );
    assert!(
        veil_part.contains("pod_annotations = [\"io.veil.*\"]"),
        "{veil_part}"
    );
    assert!(
        veil_part.contains("privileged_without_host_devices = true"),
        "{veil_part}"
    );
    let config_path = format!("ConfigPath = \"{}\"", node.veil_config().display());
    assert!(veil_part.contains(&config_path), "{veil_part}");
    // The operator's runc settings are still what containerd sees.
    assert!(dump.contains("SystemdCgroup = true"), "{dump}");
}

/// A containerd started on its own root, state and socket; stopped when dropped.
struct PrivateContainerd {
    child: std::process::Child,
    socket: PathBuf,
    log: PathBuf,
}

impl PrivateContainerd {
    fn start(node: &Node) -> PrivateContainerd {
        let socket = node.path("run/containerd.sock");
        let log = node.path("containerd.log");
        let log_file = fs::File::create(&log).expect("log file");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(node.containerd_config())
            .arg("--root")
            .arg(node.path("containerd-root"))
            .arg("--state")
            .arg(node.path("containerd-state"))
            .arg("--address")
            .arg(&socket)
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|error| {
                panic!("cannot start containerd ({error}): apt-get install -y containerd")
            });
        PrivateContainerd { child, socket, log }
    }

    /// The state of the CRI plugin as `ctr plugins ls` shows it, once containerd answers.
    fn cri_plugin_status(&self) -> String {
        for _ in 0..60 {
            let output = Command::new("ctr")
                .arg("--address")
                .arg(&self.socket)
                .args(["plugins", "ls"])
                .output()
                .unwrap_or_else(|error| {
                    panic!("cannot run ctr ({error}): apt-get install -y containerd")
                });
            let listing = String::from_utf8_lossy(&output.stdout);
            if let Some(line) = listing
                .lines()
                .find(|line| line.starts_with("io.containerd.grpc.v1") && line.contains(" cri "))
            {
                return line
                    .split_whitespace()
                    .last()
                    .unwrap_or_default()
                    .to_string();
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        panic!(
            "containerd did not answer within 30 s; log:\n{}",
            read(&self.log)
        );
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// containerd's CRI plugin loads with a config that install created from nothing (the
/// built-in runc runtime must survive next to veil's) and sees the veil runtime.
#[test]
fn containerd_cri_plugin_loads_the_veil_runtime() {
    let node = Node::new();
    // The operator's one setting keeps containerd's `opt` plugin out of /opt.
    let opt = node.path("opt");
    node.write_containerd_config(&format!(
        "version = 2\n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{}\"\n",
        opt.display()
    ));
    node.install();
    let containerd = PrivateContainerd::start(&node);
    let status = containerd.cri_plugin_status();
    let log = read(&containerd.log);
    assert_eq!(
        status, "ok",
        "CRI plugin did not load; containerd log:\n{log}"
    );
    assert!(log.contains("veil:{Type:io.containerd.veil.v2"), "{log}");
    let config_path = format!("Options:map[ConfigPath:{}]", node.veil_config().display());
    assert!(log.contains(&config_path), "{log}");
    assert!(log.contains("runc:{Type:io.containerd.runc.v2"), "{log}");
}

/// What the node-installer DaemonSet does: the node's root is mounted at a directory, and
/// install writes below it while the configuration files name the node's own paths.
#[test]
fn install_from_a_pod_writes_below_the_host_root_and_records_the_nodes_paths() {
    let node = Node::new();
    let host = node.path("host");
    let image = node.path("image");
    let output = Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(["node", "install", "--host-root"])
        .arg(&host)
        .arg("--shim")
        .arg(node.path("shim-build"))
        .arg("--image-dir")
        .arg(&image)
        .env_remove("VEIL_GUEST_IMAGE_DIR")
        .env("XDG_CACHE_HOME", node.path("cache"))
        .output()
        .expect("run veil");
    succeed(output);
    assert!(host.join("usr/local/bin/containerd-shim-veil-v2").is_file());
    assert!(host.join("usr/local/share/veil/vmlinux").is_file());
    let veil_config = read(&host.join("etc/veil/configuration.toml"));
    assert!(
        veil_config.contains("kernel = \"/usr/local/share/veil/vmlinux\""),
        "{veil_config}"
    );
    let containerd_config = read(&host.join("etc/containerd/config.toml"));
    assert!(
        containerd_config.contains("/etc/veil/configuration.toml"),
        "{containerd_config}"
    );
    assert!(
        !veil_config.contains(host.to_str().expect("utf-8"))
            && !containerd_config.contains(host.to_str().expect("utf-8")),
        "a configuration names the mount point instead of the node's path"
    );
    let uninstall = Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(["node", "uninstall", "--host-root"])
        .arg(&host)
        .output()
        .expect("run veil");
    succeed(uninstall);
    assert!(!host.join("usr/local/bin/containerd-shim-veil-v2").exists());
    assert!(!host.join("etc/veil/configuration.toml").exists());
}

/// An image of a snapshot of `layer` kept in the node's cache under `state_dir` as a shim
/// keeps it; `in_use` leaves a container's share linking it.
fn cached_image(state_dir: &Path, layer: &Path, in_use: bool) -> PathBuf {
    use veil_shim::sandbox::image_cache::{ImageCache, SnapshotKey, DIR_NAME};
    fs::create_dir_all(layer).expect("layer");
    let key = SnapshotKey::of_layers(vec![layer.to_path_buf()]).expect("key");
    let share = layer.with_extension("share");
    fs::create_dir_all(&share).expect("share");
    for file in ["rootfs.erofs", "rootfs.verity"] {
        fs::write(share.join(file), file).expect("image");
    }
    ImageCache::new(state_dir, 4096)
        .keep(&key, &share, &veil_protocol::RootfsImage::default())
        .expect("keep");
    if !in_use {
        fs::remove_dir_all(&share).expect("pod ended");
    }
    state_dir.join(DIR_NAME).join(&key.name)
}

/// The shims' image cache is veil's (node memory by default): uninstall drops the images no
/// container uses, says which pods' images it kept, and a dry run only says.
#[test]
fn uninstall_drops_the_image_cache_but_what_running_pods_use() {
    let node = Node::new();
    let host = node.path("host");
    let veil = |verb: &str, extra: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_veil"));
        command
            .args(["node", verb, "--host-root"])
            .arg(&host)
            .args(extra)
            .env_remove("VEIL_GUEST_IMAGE_DIR")
            .env("XDG_CACHE_HOME", node.path("cache"));
        succeed(command.output().expect("run veil"))
    };
    let image = node.path("image");
    let shim = node.path("shim-build");
    veil(
        "install",
        &[
            "--shim",
            shim.to_str().expect("utf-8"),
            "--image-dir",
            image.to_str().expect("utf-8"),
        ],
    );
    // The installed configuration's state_dir, as the node sees it: /run/veil.
    let state_dir = host.join("run/veil");
    let unused = cached_image(&state_dir, &node.path("layer-unused"), false);
    let used = cached_image(&state_dir, &node.path("layer-used"), true);

    let dry = veil("uninstall", &["--dry-run"]);
    assert!(
        dry.contains(&format!("would remove     {}", unused.display())),
        "{dry}"
    );
    assert!(
        unused.exists() && used.exists(),
        "a dry run removed an image"
    );

    let output = veil("uninstall", &[]);
    assert!(!unused.exists(), "{output}");
    assert!(used.exists(), "{output}");
    let kept = output
        .lines()
        .find(|line| line.contains(used.to_str().expect("utf-8")))
        .unwrap_or_default();
    assert!(
        kept.starts_with("kept") && kept.contains("linked by 1 running container"),
        "{output}"
    );
    assert!(!host.join("etc/veil/configuration.toml").exists());

    // Once that pod ends, a second uninstall leaves nothing of the cache.
    fs::remove_dir_all(node.path("layer-used.share")).expect("pod ended");
    let output = veil("uninstall", &[]);
    assert!(output.contains("(cached rootfs image)"), "{output}");
    assert!(!state_dir.join("_rootfs-images").exists(), "{output}");
}

#[test]
fn uninstall_with_a_broken_veil_config_says_so_and_changes_nothing() {
    let node = Node::new();
    node.write_containerd_config(V2_CONFIG);
    node.install();
    let installed = read(&node.containerd_config());
    fs::write(node.veil_config(), "[runtime\n").expect("break the config");
    let output = node.veil("uninstall", &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("configuration.toml to find [runtime] state_dir")
            && stderr.contains("run uninstall again"),
        "{stderr}"
    );
    assert_eq!(read(&node.containerd_config()), installed);
    assert!(node.prefix().join("bin/containerd-shim-veil-v2").exists());
}

/// The node-installer DaemonSet's install and uninstall commands are ones this `veil`
/// accepts: run with the manifest's flags, the image's paths mapped to this test's files.
#[test]
fn the_node_installer_daemonset_runs_commands_veil_accepts() {
    let manifest = read(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/kubernetes/node-installer.yaml"),
    );
    let node = Node::new();
    fs::create_dir_all(node.path("opt/veil/bin")).expect("mkdir");
    fs::copy(
        node.path("shim-build"),
        node.path("opt/veil/bin/containerd-shim-veil-v2"),
    )
    .expect("shim");
    fs::rename(node.path("image"), node.path("opt/veil/image")).expect("image");
    for verb in ["install", "uninstall"] {
        let marker = format!("/opt/veil/bin/veil node {verb} ");
        let line = manifest
            .lines()
            .find_map(|line| line.split_once(marker.as_str()).map(|(_, args)| args))
            .unwrap_or_else(|| panic!("the manifest runs no `veil node {verb}`"));
        let args: Vec<String> = line
            .trim_end_matches(';')
            .split_whitespace()
            .take_while(|word| *word != "&&")
            .map(|word| {
                word.replacen("/host", node.path("host").to_str().expect("utf-8"), 1)
                    .replacen(
                        "/opt/veil",
                        node.path("opt/veil").to_str().expect("utf-8"),
                        1,
                    )
            })
            .collect();
        let output = Command::new(env!("CARGO_BIN_EXE_veil"))
            .args(["node", verb])
            .args(&args)
            .env_remove("VEIL_GUEST_IMAGE_DIR")
            .env("XDG_CACHE_HOME", node.path("cache"))
            .output()
            .expect("run veil");
        succeed(output);
    }
    assert!(!node
        .path("host/usr/local/bin/containerd-shim-veil-v2")
        .exists());
}

#[test]
fn an_snp_install_writes_an_snp_configuration() {
    let node = Node::new();
    let image = node.path("image");
    let output = node.veil(
        "install",
        &[
            "--image-dir",
            image.to_str().expect("utf-8"),
            "--snp-firmware",
            "/usr/share/ovmf/AmdSev.fd",
        ],
    );
    succeed(output);
    let config = read(&node.veil_config());
    assert!(config.contains("confidential_guest = \"snp\""), "{config}");
    assert!(
        config.contains("firmware = \"/usr/share/ovmf/AmdSev.fd\""),
        "{config}"
    );
    assert!(config.contains("machine = \"q35\""), "{config}");
    assert!(
        config.contains("vmlinuz\""),
        "SNP measures the bzImage: {config}"
    );
}

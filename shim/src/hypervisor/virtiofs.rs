//! virtio-fs: the containers' files (rootfs, bind mounts) served to the guest by a
//! virtiofsd per VM, as Kata does by default, instead of QEMU's virtio-9p.
//!
//! Why: under emulation on the development machine, listing a tree of 3000 small files took
//! 0.1 to 0.2 s over virtio-fs against about 2 s over 9p, and reading them 2 s against 7 s
//! (a busybox guest on veil's kernel, QEMU 7.2 TCG, the C virtiofsd Debian 12 ships).
//!
//! What it needs: a virtiofsd on the host, guest RAM in shared memory (memfd) that the
//! daemon maps, and on microvm the modern virtio-mmio transport (vhost-user refuses legacy
//! devices). An SEV-SNP guest keeps virtio-9p: its private memory cannot be handed to a
//! host daemon, and the rootfs it gets from the host is bound by digest either way.
//!
//! The daemon runs chrooted into the VM's shared directory (`sandbox=chroot`), in the
//! shim's mount namespace, so the bind mounts the shim adds there after the VM started (each
//! container's rootfs) are visible to it; each is announced to the guest as a submount.
//! The shim binds the vhost-user socket itself and hands the listening descriptor over
//! (`--fd`): QEMU can connect at once, while the daemon is still starting, instead of the
//! shim waiting for the daemon to create the socket.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::{Child, Command};
use veil_config::{ConfidentialGuest, HypervisorConfig, SharedFs};
use veil_host::command::first_line;
use veil_host::virtiofsd::{self as installed, KNOWN_PATHS};

use super::Share;
use crate::error::{Error, Result};

/// The daemon's vhost-user socket, in the VM's state directory. Short: a CRI sandbox's
/// state directory holds a 64-character id, and a socket path must fit in 108 bytes.
pub const SOCKET_NAME: &str = "fs.sock";
/// QEMU's id of the guest RAM backend the daemon maps.
pub const MEMORY_BACKEND_ID: &str = "veil-mem";

/// Which transport `config` gives a new VM, and the daemon for virtio-fs.
pub fn choose(config: &HypervisorConfig) -> Result<Share> {
    choose_below(config, Path::new("/"))
}

/// [`choose`] for the host whose `/` is `root` (a fake tree in tests).
fn choose_below(config: &HypervisorConfig, root: &Path) -> Result<Share> {
    let snp = config.confidential_guest == ConfidentialGuest::Snp;
    match config.shared_fs {
        SharedFs::Virtio9p => Ok(Share::Virtio9p),
        SharedFs::Auto if snp => Ok(Share::Virtio9p),
        SharedFs::Auto => Ok(find_daemon(config, root)
            .map_or(Share::Virtio9p, |daemon| Share::VirtioFs { daemon })),
        SharedFs::VirtioFs if snp => Err(Error::Vm(
            "hypervisor.shared_fs = \"virtio-fs\" cannot serve an SEV-SNP guest (its memory is private to it); use shared_fs = \"virtio-9p\" or \"auto\"".into(),
        )),
        SharedFs::VirtioFs => find_daemon(config, root)
            .map(|daemon| Share::VirtioFs { daemon })
            .ok_or_else(|| Error::Vm(missing_daemon(config))),
    }
}

/// The configured daemon if it exists, else the one `veil doctor` finds.
fn find_daemon(config: &HypervisorConfig, root: &Path) -> Option<PathBuf> {
    match &config.virtiofsd {
        Some(path) => root
            .join(path.strip_prefix("/").unwrap_or(path))
            .exists()
            .then(|| path.clone()),
        None => installed::find(root).map(PathBuf::from),
    }
}

fn missing_daemon(config: &HypervisorConfig) -> String {
    let looked = match &config.virtiofsd {
        Some(path) => path.display().to_string(),
        None => KNOWN_PATHS.join(", "),
    };
    format!(
        "hypervisor.shared_fs = \"virtio-fs\" but there is no virtiofsd at {looked}; install the virtiofsd package (qemu-system-common on Debian 12), set hypervisor.virtiofsd, or use shared_fs = \"auto\" or \"virtio-9p\""
    )
}

/// The two virtiofsd command lines in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// QEMU's C daemon (QEMU 7.2 and earlier): `-o key=value` options.
    Legacy,
    /// The Rust daemon (gitlab.com/virtio-fs/virtiofsd): long options.
    Rust,
}

/// The flavor from the first line of `virtiofsd --version`: the C daemon prints QEMU's
/// "virtiofsd version 7.2.22 (...)", the Rust one "virtiofsd 1.13.0" (older: "virtiofsd
/// backend 1.4.0").
pub fn flavor_of(version: &str) -> Flavor {
    if version.trim_start().starts_with("virtiofsd version ") {
        Flavor::Legacy
    } else {
        Flavor::Rust
    }
}

/// The daemon's arguments: serve `shared_dir` on the listening socket `fd`, chrooted into
/// it, with the guest caching metadata for a short while (`auto`) and each submount
/// announced.
pub fn daemon_args(flavor: Flavor, fd: RawFd, shared_dir: &Path) -> Vec<String> {
    let socket = format!("--fd={fd}");
    match flavor {
        Flavor::Legacy => vec![
            socket,
            "-o".into(),
            format!("source={}", shared_dir.display()),
            "-o".into(),
            "cache=auto".into(),
            "-o".into(),
            "sandbox=chroot".into(),
            "-o".into(),
            "announce_submounts".into(),
        ],
        Flavor::Rust => vec![
            socket,
            format!("--shared-dir={}", shared_dir.display()),
            "--cache=auto".into(),
            "--sandbox=chroot".into(),
            "--announce-submounts".into(),
        ],
    }
}

/// QEMU's side: guest RAM in shared memory, the vhost-user socket and the device. The
/// machine option naming the backend is added by [`machine_option`].
pub fn qemu_devices(
    config: &HypervisorConfig,
    state_dir: &Path,
    virtio: impl Fn(&str) -> String,
) -> Vec<String> {
    let mut args = vec![
        "-object".into(),
        format!(
            "memory-backend-memfd,id={MEMORY_BACKEND_ID},size={}M,share=on",
            config.memory_mib
        ),
        "-chardev".into(),
        format!(
            "socket,id=virtiofs,path={}",
            state_dir.join(SOCKET_NAME).display()
        ),
        "-device".into(),
        format!(
            "{},chardev=virtiofs,tag={}",
            virtio("vhost-user-fs"),
            veil_protocol::SHARED_FS_TAG
        ),
    ];
    if super::qemu::is_microvm(config) {
        // vhost-user devices refuse virtio-mmio's legacy (version 1) transport, microvm's default.
        args.extend(["-global".into(), "virtio-mmio.force-legacy=false".into()]);
    }
    args
}

/// The `-machine` option that makes the shared-memory backend the guest's RAM.
pub fn machine_option() -> String {
    format!(",memory-backend={MEMORY_BACKEND_ID}")
}

/// A running virtiofsd; killed when dropped.
pub struct Virtiofsd {
    child: Child,
    log: PathBuf,
}

impl Virtiofsd {
    /// Starts `daemon` for the VM whose state is in `state_dir`, serving `shared_dir` on
    /// [`SOCKET_NAME`] there. The socket listens when this returns.
    pub async fn start(daemon: &Path, state_dir: &Path, shared_dir: &Path) -> Result<Virtiofsd> {
        let flavor = flavor_of(&version_of(daemon).await?);
        let socket = state_dir.join(SOCKET_NAME);
        let listener = UnixListener::bind(&socket)
            .map_err(Error::io(format!("listen on {}", socket.display())))?;
        let log = state_dir.join("virtiofsd.log");
        let stderr =
            std::fs::File::create(&log).map_err(Error::io(format!("create {}", log.display())))?;
        let mut command = Command::new(daemon);
        command
            .args(daemon_args(flavor, listener.as_raw_fd(), shared_dir))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true);
        super::inherit_fds(&mut command, vec![listener.as_raw_fd()]);
        let child = command
            .spawn()
            .map_err(Error::io(format!("start {}", daemon.display())))?;
        tracing::info!(daemon = %daemon.display(), ?flavor, pid = child.id(), "virtiofsd serving the shared directory");
        Ok(Virtiofsd { child, log })
    }

    /// What the daemon wrote on stderr, for the VM's exit description.
    pub fn said(&self) -> String {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// Ends the daemon (it normally ends by itself when QEMU closes the socket).
    pub async fn stop(mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.start_kill();
        }
        let _ = self.child.wait().await;
    }
}

async fn version_of(daemon: &Path) -> Result<String> {
    let output = Command::new(daemon)
        .arg("--version")
        .output()
        .await
        .map_err(Error::io(format!("run {} --version", daemon.display())))?;
    // The C daemon prints its version on stdout; be lenient about where it lands.
    let text = if output.stdout.is_empty() {
        output.stderr
    } else {
        output.stdout
    };
    Ok(first_line(&String::from_utf8_lossy(&text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(shared_fs: SharedFs) -> HypervisorConfig {
        HypervisorConfig {
            shared_fs,
            ..HypervisorConfig::default()
        }
    }

    /// A fake `/` holding these files.
    fn tree(paths: &[&str]) -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("tempdir");
        for path in paths {
            let file = root.path().join(path.trim_start_matches('/'));
            std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
            std::fs::write(file, "").expect("write");
        }
        root
    }

    fn all_daemons() -> tempfile::TempDir {
        tree(&KNOWN_PATHS)
    }

    #[test]
    fn auto_takes_the_first_installed_daemon_and_falls_back_to_9p() {
        let legacy = "/usr/lib/qemu/virtiofsd";
        assert_eq!(
            choose_below(&config(SharedFs::Auto), tree(&[legacy]).path()).expect("auto"),
            Share::VirtioFs {
                daemon: legacy.into()
            }
        );
        assert_eq!(
            choose_below(&config(SharedFs::Auto), all_daemons().path()).expect("auto"),
            Share::VirtioFs {
                daemon: "/usr/libexec/virtiofsd".into()
            }
        );
        assert_eq!(
            choose_below(&config(SharedFs::Auto), tree(&[]).path()).expect("auto"),
            Share::Virtio9p
        );
    }

    #[test]
    fn an_snp_guest_keeps_9p_and_refuses_virtio_fs() {
        let snp = |shared_fs| HypervisorConfig {
            confidential_guest: ConfidentialGuest::Snp,
            ..config(shared_fs)
        };
        assert_eq!(
            choose_below(&snp(SharedFs::Auto), all_daemons().path()).expect("auto"),
            Share::Virtio9p
        );
        let error =
            choose_below(&snp(SharedFs::VirtioFs), all_daemons().path()).expect_err("refused");
        assert!(error.to_string().contains("SEV-SNP"), "{error}");
    }

    #[test]
    fn virtio_fs_without_a_daemon_says_where_it_looked_and_what_to_do() {
        let error =
            choose_below(&config(SharedFs::VirtioFs), tree(&[]).path()).expect_err("missing");
        let text = error.to_string();
        assert!(text.contains("/usr/lib/qemu/virtiofsd"), "{text}");
        assert!(text.contains("install the virtiofsd package"), "{text}");
        let named = HypervisorConfig {
            virtiofsd: Some("/opt/vfsd".into()),
            ..config(SharedFs::VirtioFs)
        };
        let text = choose_below(&named, tree(&[]).path())
            .expect_err("missing")
            .to_string();
        assert!(text.contains("no virtiofsd at /opt/vfsd;"), "{text}");
        assert_eq!(
            choose_below(&named, tree(&["/opt/vfsd"]).path()).expect("named"),
            Share::VirtioFs {
                daemon: "/opt/vfsd".into()
            }
        );
    }

    #[test]
    fn nine_p_is_chosen_when_asked_even_with_a_daemon() {
        assert_eq!(
            choose_below(&config(SharedFs::Virtio9p), all_daemons().path()).expect("9p"),
            Share::Virtio9p
        );
    }

    #[test]
    fn the_flavor_comes_from_the_version_line() {
        // Recorded from Debian 12's qemu-system-common and from virtiofsd releases.
        assert_eq!(
            flavor_of("virtiofsd version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"),
            Flavor::Legacy
        );
        assert_eq!(flavor_of("virtiofsd 1.13.0"), Flavor::Rust);
        assert_eq!(flavor_of("virtiofsd backend 1.4.0"), Flavor::Rust);
    }

    #[test]
    fn each_flavor_gets_its_own_options() {
        let shared = Path::new("/run/veil/default/p/shared");
        assert_eq!(
            daemon_args(Flavor::Legacy, 7, shared).join(" "),
            "--fd=7 -o source=/run/veil/default/p/shared -o cache=auto -o sandbox=chroot -o announce_submounts"
        );
        assert_eq!(
            daemon_args(Flavor::Rust, 7, shared).join(" "),
            "--fd=7 --shared-dir=/run/veil/default/p/shared --cache=auto --sandbox=chroot --announce-submounts"
        );
    }

    #[tokio::test]
    async fn the_daemon_gets_the_listening_socket_and_its_words_are_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let daemon = dir.path().join("fake-virtiofsd");
        // Stands in for virtiofsd: reports its arguments and whether descriptor 3 is open.
        std::fs::write(
            &daemon,
            "#!/bin/sh\n[ \"$1\" = --version ] && { echo 'virtiofsd 1.13.0'; exit 0; }\necho \"args: $*\" >&2\n[ -e /proc/self/fd/${1#--fd=} ] && echo 'socket inherited' >&2\n",
        )
        .expect("write");
        std::fs::set_permissions(&daemon, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let virtiofsd = Virtiofsd::start(&daemon, dir.path(), Path::new("/srv/share"))
            .await
            .expect("start");
        assert!(
            dir.path().join(SOCKET_NAME).exists(),
            "the socket listens before the daemon runs"
        );
        let mut virtiofsd = virtiofsd;
        let _ = virtiofsd.child.wait().await;
        let said = virtiofsd.said();
        assert!(
            said.contains("--shared-dir=/srv/share --cache=auto --sandbox=chroot"),
            "{said}"
        );
        assert!(said.contains("socket inherited"), "{said}");
        virtiofsd.stop().await;
    }
}

//! A real systemd as the node's service manager, for the tests of systemd's cgroup driver.
//!
//! Test machines have systemd installed without it being their init. [`SystemdManager`]
//! starts the real `/lib/systemd/systemd` as PID 1 of new PID, mount and cgroup namespaces:
//! inside a cgroup of its own in every hierarchy (which its cgroup namespace shows it as the
//! root), with its own `/run` (so its own system bus, served by the real dbus-daemon it
//! socket-activates) and only the units it needs. containerd, the shim and QEMU started
//! through [`SystemdManager::launcher`] see that systemd exactly as a node's, and processes
//! outside see everything under [`SystemdManager::host_cgroup`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use veil_shim::sandbox::cgroup::{self, Hierarchy};

use crate::eventually;

const SYSTEMD: &str = "/lib/systemd/systemd";
const DBUS_DAEMON: &str = "/usr/bin/dbus-daemon";

/// The default target (nothing of the host's own units is loaded: the unit path holds only
/// these), and D-Bus as systemd's units start it. Without default dependencies: they would
/// name sysinit.target and the rest of a real boot, which this unit path does not have.
const UNITS: &[(&str, &str)] = &[
    (
        "veil-test.target",
        "[Unit]\nDescription=veil test node\nDefaultDependencies=no\nWants=dbus.socket\n",
    ),
    (
        "dbus.socket",
        "[Unit]\nDefaultDependencies=no\n[Socket]\nListenStream=/run/dbus/system_bus_socket\n",
    ),
    (
        "dbus.service",
        "[Unit]\nDefaultDependencies=no\n[Service]\nExecStart=/usr/bin/dbus-daemon --system --address=systemd: --nofork --nopidfile --systemd-activation --syslog-only\n",
    ),
];

/// A systemd manager in its own namespaces; killed, with everything it holds, on drop.
pub struct SystemdManager {
    dir: tempfile::TempDir,
    unshare: Child,
    pid: u32,
    /// Each host hierarchy, with the manager's cgroup in it.
    cgroups: Vec<(Hierarchy, PathBuf)>,
}

impl SystemdManager {
    /// Boots it and waits until its system bus answers.
    pub fn boot() -> Result<SystemdManager> {
        for program in [SYSTEMD, DBUS_DAEMON] {
            if !Path::new(program).exists() {
                bail!(
                    "{program} is missing: install systemd and dbus (apt-get install systemd dbus)"
                );
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("veil-systemd-")
            .tempdir_in("/tmp")?;
        let units = dir.path().join("units");
        std::fs::create_dir_all(&units)?;
        for (name, text) in UNITS {
            std::fs::write(units.join(name), text)?;
        }
        let name = dir
            .path()
            .file_name()
            .context("tempdir name")?
            .to_string_lossy()
            .into_owned();
        let hierarchies = host_hierarchies()?;
        let cgroups: Vec<(Hierarchy, PathBuf)> = hierarchies
            .iter()
            .map(|h| (h.clone(), h.mount.join(&name)))
            .collect();
        for (hierarchy, dir) in &cgroups {
            cgroup::create_in(hierarchy, dir)?;
        }
        let script = dir.path().join("boot.sh");
        std::fs::write(&script, boot_script(&hierarchies, &units))?;
        let join_cgroups: String = cgroups
            .iter()
            .map(|(_, c)| format!("echo $$ > {}/cgroup.procs; ", c.display()))
            .collect();
        let log = std::fs::File::create(dir.path().join("systemd.log"))?;
        let unshare = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{join_cgroups}exec unshare --pid --fork --mount --cgroup --mount-proc sh {}",
                script.display()
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start unshare (util-linux)")?;
        let mut manager = SystemdManager {
            dir,
            unshare,
            pid: 0,
            cgroups,
        };
        manager.pid = manager.wait_for_init()?;
        manager.wait_for_bus()?;
        Ok(manager)
    }

    fn wait_for_init(&mut self) -> Result<u32> {
        let children = format!("/proc/{0}/task/{0}/children", self.unshare.id());
        let mut pid = None;
        eventually(Duration::from_secs(10), || {
            pid = std::fs::read_to_string(&children)
                .ok()
                .and_then(|c| c.split_whitespace().next()?.parse().ok());
            pid.is_some()
        });
        pid.with_context(|| format!("systemd did not start; its log:\n{}", self.log()))
    }

    /// Until a client gets an answer through the system bus (the first connection also
    /// socket-activates dbus-daemon).
    fn wait_for_bus(&self) -> Result<()> {
        let mut answer = String::new();
        let up = eventually(Duration::from_secs(60), || {
            match self.run(&["busctl", "--system", "status", "org.freedesktop.systemd1"]) {
                Ok(output) if output.status.success() => true,
                Ok(output) => {
                    answer = String::from_utf8_lossy(&output.stderr).into_owned();
                    false
                }
                Err(error) => {
                    answer = format!("{error:#}");
                    false
                }
            }
        });
        if !up {
            bail!(
                "systemd's system bus did not answer: {}; failed units: {}",
                answer.trim(),
                self.systemctl(&["list-units", "--failed", "--no-legend"])
                    .unwrap_or_default()
                    .trim()
            );
        }
        Ok(())
    }

    fn run(&self, command: &[&str]) -> Result<std::process::Output> {
        let launcher = self.launcher();
        Command::new(&launcher[0])
            .args(&launcher[1..])
            .args(command)
            .output()
            .with_context(|| format!("run {} through nsenter", command.join(" ")))
    }

    /// What systemd and the boot script printed.
    pub fn log(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        read("systemd.log") + &read("console.log")
    }

    /// The command prefix that runs a program in the manager's namespaces (its `/run`,
    /// PIDs and cgroup root), as a node's services run beside its systemd.
    pub fn launcher(&self) -> Vec<String> {
        [
            "nsenter",
            "-t",
            &self.pid.to_string(),
            "-m",
            "-p",
            "-C",
            "--",
        ]
        .map(String::from)
        .to_vec()
    }

    /// `systemctl ARGS` against this manager: its standard output (it may exit non-zero
    /// with an answer, as `is-system-running` does while starting).
    pub fn systemctl(&self, args: &[&str]) -> Result<String> {
        let command: Vec<&str> = std::iter::once("systemctl")
            .chain(args.iter().copied())
            .collect();
        let output = self.run(&command)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `relative` (a path as systemd names a unit's cgroup) in the host's view of the
    /// hierarchy systemd keeps its units in: the unified one on cgroup v2, `name=systemd`
    /// on v1 and hybrid hosts.
    pub fn host_cgroup(&self, relative: &str) -> PathBuf {
        let systemds = |(h, _): &&(Hierarchy, PathBuf)| h.controllers == "name=systemd";
        let unified = |(h, _): &&(Hierarchy, PathBuf)| h.controllers.is_empty();
        let (_, own) = self
            .cgroups
            .iter()
            .find(systemds)
            .or_else(|| self.cgroups.iter().find(unified))
            .unwrap_or(&self.cgroups[0]);
        own.join(relative.trim_start_matches('/'))
    }
}

impl Drop for SystemdManager {
    fn drop(&mut self) {
        // Killing a PID namespace's init kills every process in it.
        if self.pid != 0 {
            // SAFETY: kill has no memory-safety preconditions; the pid is our grandchild.
            unsafe {
                libc::kill(self.pid as i32, libc::SIGKILL);
            }
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        for (_, cgroup) in &self.cgroups {
            let _ = eventually(Duration::from_secs(10), || {
                remove_cgroup_tree(cgroup);
                !cgroup.exists()
            });
        }
    }
}

fn host_hierarchies() -> Result<Vec<Hierarchy>> {
    let found = cgroup::own_hierarchies()?;
    if found.is_empty() {
        bail!("no cgroup hierarchy is mounted");
    }
    Ok(found)
}

/// Mounts what systemd needs in its mount namespace (a private `/run`; each cgroup
/// hierarchy again, now rooted at its own cgroup) and becomes it.
fn boot_script(hierarchies: &[Hierarchy], units: &Path) -> String {
    let mut script = String::from(
        "set -e\nmount --make-rprivate /\nmount -t tmpfs tmpfs /run\nmkdir -p /run/dbus\n",
    );
    let unified_root = hierarchies
        .iter()
        .any(|h| h.mount == Path::new("/sys/fs/cgroup"));
    if unified_root {
        script.push_str("mount -t cgroup2 cgroup2 /sys/fs/cgroup\n");
    } else {
        script.push_str("mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup\n");
        for hierarchy in hierarchies {
            let mount = hierarchy.mount.display();
            script.push_str(&format!("mkdir -p {mount}\n"));
            if hierarchy.controllers.is_empty() {
                script.push_str(&format!("mount -t cgroup2 cgroup2 {mount}\n"));
            } else {
                let options = match hierarchy.controllers.strip_prefix("name=") {
                    Some(_) => format!("none,{}", hierarchy.controllers),
                    None => hierarchy.controllers.clone(),
                };
                script.push_str(&format!("mount -t cgroup -o {options} cgroup {mount}\n"));
            }
        }
    }
    // systemd as init writes to /dev/console, which a container manager gives it.
    let console = units.with_file_name("console.log");
    script.push_str(&format!(
        "touch {0}\nmount --bind {0} /dev/console\nexport SYSTEMD_UNIT_PATH={1} container=veil-test\nexec {SYSTEMD} --system --unit=veil-test.target --log-target=console\n",
        console.display(),
        units.display()
    ));
    script
}

/// Removes `cgroup` and what systemd made below it, deepest first.
fn remove_cgroup_tree(cgroup: &Path) {
    if let Ok(entries) = std::fs::read_dir(cgroup) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(cgroup);
}

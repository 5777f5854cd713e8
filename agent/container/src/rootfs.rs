//! Turns the shared rootfs directory into the container's `/`: propagation, a bind of the
//! rootfs onto itself, the spec's mounts, /dev, pivot_root, then the read-only and masked
//! paths and a read-only root. Runs in the container's init, inside its new mount namespace.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::MsFlags;
use oci_spec::runtime::{LinuxDevice, Mount};

use crate::devices::create_devices;
use crate::failure::{InitFailure, StepContext};
use crate::mount_options::MountOptions;
use crate::pins::SourcePins;
use crate::secure_join::secure_join;
use crate::syscall::{PathKind, Syscall};

/// How a container's root is switched to its rootfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum RootSwitch {
    /// pivot_root(2), then detach the old root: nothing of the agent's filesystem stays
    /// reachable. The default.
    #[default]
    PivotRoot,
    /// pivot_root, or MS_MOVE + chroot when the kernel refuses pivot_root because the
    /// agent's root is the initramfs (rootfs cannot be pivoted).
    PivotRootOrChroot,
    /// Always MS_MOVE + chroot (runc's --no-pivot). Weaker: a process with CAP_SYS_CHROOT
    /// inside can climb out of a chroot.
    MoveAndChroot,
}

/// Everything needed before the root switch.
pub(crate) struct RootfsSetup<'a> {
    /// The rootfs directory as the agent sees it.
    pub rootfs: &'a Path,
    /// The spec's mounts, in order.
    pub mounts: &'a [Mount],
    /// Propagation applied to `/` first (from `linux.rootfsPropagation`).
    pub propagation: MsFlags,
    /// The spec's `linux.devices`.
    pub devices: &'a [LinuxDevice],
    /// The pty slave (as /dev/pts/N in the agent's view) to bind onto /dev/console.
    pub console: Option<&'a Path>,
    /// The process cwd, created if missing (as runc does).
    pub cwd: &'a Path,
    /// How the process's root becomes the rootfs.
    pub root_switch: RootSwitch,
    /// Where the rootfs and bind sources must lead, when the caller checked them.
    pub pins: Option<&'a SourcePins>,
}

/// Everything applied after the root switch.
#[derive(Default)]
pub(crate) struct RootfsFinish<'a> {
    /// `linux.sysctl`, written under /proc/sys.
    pub sysctl: Vec<(&'a str, &'a str)>,
    /// `linux.readonlyPaths`.
    pub readonly_paths: &'a [String],
    /// `linux.maskedPaths`.
    pub masked_paths: &'a [String],
    /// `root.readonly`.
    pub readonly_root: bool,
}

/// Prepares the rootfs and switches the process's root to it.
pub(crate) fn prepare_rootfs(
    sys: &dyn Syscall,
    setup: &RootfsSetup<'_>,
) -> Result<(), InitFailure> {
    sys.mount(None, Path::new("/"), None, setup.propagation, None)
        .step(|| "set the propagation of / (linux.rootfsPropagation)".into())?;
    bind_rootfs(sys, setup)?;
    for mount in setup.mounts {
        mount_one(sys, setup.rootfs, mount, setup.pins)?;
    }
    if !dev_is_bind_mounted(setup.mounts) {
        create_devices(sys, setup.rootfs, setup.devices)?;
    }
    if let Some(console) = setup.console {
        bind_console(sys, setup.rootfs, console)?;
    }
    let cwd = secure_join(setup.rootfs, setup.cwd);
    sys.mkdir_all(&cwd)
        .step(|| format!("create the working directory {}", setup.cwd.display()))?;
    switch_root(sys, setup.rootfs, setup.root_switch)
}

/// Makes the rootfs a mount point (pivot_root needs one): a bind onto itself, or of the
/// pinned rootfs onto the empty directory the caller gave.
fn bind_rootfs(sys: &dyn Syscall, setup: &RootfsSetup<'_>) -> Result<(), InitFailure> {
    let pinned = match setup.pins {
        Some(pins) => pins.open_rootfs(sys)?,
        None => None,
    };
    let source = pinned.as_ref().map_or(setup.rootfs, |p| p.by_fd.as_path());
    sys.mount(
        Some(source),
        setup.rootfs,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
    .step(|| match setup.pins.and_then(|p| p.rootfs.as_ref()) {
        Some(pin) => format!(
            "bind the rootfs {} onto {}",
            pin.path.display(),
            setup.rootfs.display()
        ),
        None => format!("bind the rootfs {} onto itself", setup.rootfs.display()),
    })
}

/// Applies sysctls, read-only and masked paths and the read-only root, after the switch.
pub(crate) fn finish_rootfs(
    sys: &dyn Syscall,
    finish: &RootfsFinish<'_>,
) -> Result<(), InitFailure> {
    for (key, value) in &finish.sysctl {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        sys.write_file(&path, value)
            .step(|| format!("set sysctl {key}={value}"))?;
    }
    for path in finish.readonly_paths {
        make_readonly(sys, Path::new(path))?;
    }
    for path in finish.masked_paths {
        mask(sys, Path::new(path))?;
    }
    if finish.readonly_root {
        sys.mount(
            None,
            Path::new("/"),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None,
        )
        .step(|| "remount / read-only (root.readonly)".into())?;
    }
    Ok(())
}

fn dev_is_bind_mounted(mounts: &[Mount]) -> bool {
    mounts
        .iter()
        .any(|m| m.destination() == Path::new("/dev") && options_of(m).is_bind())
}

/// The parsed options; `"type": "bind"` without a bind option still means a bind (as
/// containerd and runc read it).
fn options_of(mount: &Mount) -> MountOptions {
    let mut options = MountOptions::parse(mount.options().as_deref().unwrap_or_default());
    if mount.typ().as_deref() == Some("bind") {
        options.flags.insert(MsFlags::MS_BIND);
    }
    options
}

/// Mounts one spec entry under the rootfs.
fn mount_one(
    sys: &dyn Syscall,
    rootfs: &Path,
    mount: &Mount,
    pins: Option<&SourcePins>,
) -> Result<(), InitFailure> {
    let options = options_of(mount);
    let destination = mount.destination();
    let target = secure_join(rootfs, destination);
    let typ = mount.typ().as_deref().unwrap_or("none");
    let step = || format!("mount {typ} at {}", destination.display());
    if options.is_bind() {
        bind_mount(sys, mount, &options, &target, pins, &step)?;
    } else {
        let fstype = filesystem_for(sys, typ).ok_or_else(|| {
            InitFailure::new(
                step(),
                "cgroup v1 is not supported; the guest kernel needs cgroup2",
            )
        })?;
        sys.mkdir_all(&target)
            .step(|| format!("{}: create the mount point", step()))?;
        let source = mount
            .source()
            .clone()
            .unwrap_or_else(|| PathBuf::from(fstype));
        sys.mount(
            Some(&source),
            &target,
            Some(fstype),
            options.flags,
            options.data.as_deref(),
        )
        .step(step)?;
    }
    for propagation in &options.propagation {
        sys.mount(None, &target, None, *propagation, None)
            .step(|| format!("{}: set propagation", step()))?;
    }
    Ok(())
}

/// The filesystem type to mount; a `cgroup` entry becomes cgroup2 (veil's guest runs the
/// unified hierarchy only).
fn filesystem_for<'a>(sys: &dyn Syscall, typ: &'a str) -> Option<&'a str> {
    match typ {
        "cgroup" | "cgroup2" if sys.filesystem_supported("cgroup2") => Some("cgroup2"),
        "cgroup" | "cgroup2" => None,
        other => Some(other),
    }
}

fn bind_mount(
    sys: &dyn Syscall,
    mount: &Mount,
    options: &MountOptions,
    target: &Path,
    pins: Option<&SourcePins>,
    step: &dyn Fn() -> String,
) -> Result<(), InitFailure> {
    let source = mount
        .source()
        .as_deref()
        .ok_or_else(|| InitFailure::new(step(), "a bind mount needs a source"))?;
    let pinned = pins
        .map(|p| p.open_bind(sys, source, mount.destination()))
        .transpose()?;
    let source = pinned.as_ref().map_or(source, |p| p.by_fd.as_path());
    match sys.path_kind(source) {
        Some(PathKind::Directory) => sys.mkdir_all(target),
        Some(PathKind::File) => sys.create_file(target),
        None => {
            return Err(InitFailure::from_errno(
                format!("{}: source {}", step(), source.display()),
                Errno::ENOENT,
            ))
        }
    }
    .step(|| format!("{}: create the mount point", step()))?;
    let bind_flags = options.flags & (MsFlags::MS_BIND | MsFlags::MS_REC);
    sys.mount(Some(source), target, None, bind_flags, None)
        .step(step)?;
    if let Some(flags) = options.bind_remount_flags() {
        sys.mount(None, target, None, flags, None)
            .step(|| format!("{}: remount with its options (ro, nosuid, ...)", step()))?;
    }
    Ok(())
}

/// runc binds the pty slave onto /dev/console so that programs that open it find the
/// container's terminal. The source is a path, not /proc/self/fd/0: the descriptor's mount
/// belongs to the agent's namespace, and the kernel refuses binds from another namespace.
fn bind_console(sys: &dyn Syscall, rootfs: &Path, slave: &Path) -> Result<(), InitFailure> {
    let console = rootfs.join("dev/console");
    sys.create_file(&console)
        .step(|| "create /dev/console".into())?;
    sys.mount(Some(slave), &console, None, MsFlags::MS_BIND, None)
        .step(|| "bind the terminal onto /dev/console".into())
}

/// pivot_root(".", ".") as runc does: no temporary directory; the old root, stacked on top
/// of the new one, is made a slave (so its unmount does not propagate to the agent) and
/// detached.
fn switch_root(sys: &dyn Syscall, rootfs: &Path, how: RootSwitch) -> Result<(), InitFailure> {
    sys.chdir(rootfs)
        .step(|| format!("enter the rootfs {}", rootfs.display()))?;
    if how == RootSwitch::MoveAndChroot {
        return move_root(sys);
    }
    match sys.pivot_root(Path::new("."), Path::new(".")) {
        Ok(()) => {}
        Err(Errno::EINVAL) if how == RootSwitch::PivotRootOrChroot => return move_root(sys),
        Err(errno) => {
            return Err(InitFailure {
                step: "pivot_root into the rootfs".into(),
                errno: Some(errno as i32),
                detail: "if the agent runs from the initramfs, switch_root it into a tmpfs at boot or build the container with RootSwitch::PivotRootOrChroot".into(),
            })
        }
    }
    sys.mount(
        None,
        Path::new("."),
        None,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None,
    )
    .step(|| "make the old root a slave before detaching it".into())?;
    sys.umount_detach(Path::new("."))
        .step(|| "detach the old root".into())?;
    sys.chdir(Path::new("/"))
        .step(|| "enter the new root".into())
}

/// The fallback when the current root cannot be pivoted (the initramfs): weaker, because a
/// process with CAP_SYS_CHROOT can climb out of a chroot.
fn move_root(sys: &dyn Syscall) -> Result<(), InitFailure> {
    sys.mount(
        Some(Path::new(".")),
        Path::new("/"),
        None,
        MsFlags::MS_MOVE,
        None,
    )
    .step(|| "move the rootfs onto / (chroot fallback)".into())?;
    sys.chroot(Path::new("."))
        .step(|| "chroot into the rootfs (chroot fallback)".into())?;
    sys.chdir(Path::new("/"))
        .step(|| "enter the new root".into())
}

fn make_readonly(sys: &dyn Syscall, path: &Path) -> Result<(), InitFailure> {
    if sys.path_kind(path).is_none() {
        return Ok(());
    }
    let step = || format!("make {} read-only (linux.readonlyPaths)", path.display());
    sys.mount(
        Some(path),
        path,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
    .step(step)?;
    sys.mount(
        None,
        path,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None,
    )
    .step(step)
}

fn mask(sys: &dyn Syscall, path: &Path) -> Result<(), InitFailure> {
    let step = || format!("mask {} (linux.maskedPaths)", path.display());
    match sys.path_kind(path) {
        None => Ok(()),
        Some(PathKind::Directory) => sys
            .mount(
                Some(Path::new("tmpfs")),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None,
            )
            .step(step),
        Some(PathKind::File) => sys
            .mount(
                Some(Path::new("/dev/null")),
                path,
                None,
                MsFlags::MS_BIND,
                None,
            )
            .step(step),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::recording::RecordingSyscall;
    use oci_spec::runtime::MountBuilder;

    fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
        MountBuilder::default()
            .destination(dest)
            .typ(typ)
            .source(source)
            .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .build()
            .unwrap()
    }

    fn setup<'a>(mounts: &'a [Mount]) -> RootfsSetup<'a> {
        RootfsSetup {
            rootfs: Path::new("/r"),
            mounts,
            propagation: MsFlags::MS_SLAVE | MsFlags::MS_REC,
            devices: &[],
            console: None,
            cwd: Path::new("/"),
            root_switch: RootSwitch::PivotRoot,
            pins: None,
        }
    }

    /// A shared rootfs bound onto the guest directory /r, and one shared bind source, as
    /// the caller saw them.
    fn pins() -> SourcePins {
        SourcePins {
            rootfs: Some(crate::pins::Pin {
                path: "/share/c1/rootfs".into(),
                leads_to: "/share/c1/rootfs".into(),
            }),
            binds: [(PathBuf::from("/share/hosts"), PathBuf::from("/share/hosts"))].into(),
        }
    }

    fn shared_paths() -> RecordingSyscall {
        RecordingSyscall::new()
            .with_path("/share/c1/rootfs", PathKind::Directory)
            .with_path("/share/hosts", PathKind::File)
            .with_path("/", PathKind::Directory)
    }

    #[test]
    fn pinned_sources_are_mounted_from_the_descriptors_that_were_compared() {
        let mounts = [mount("/etc/hosts", "bind", "/share/hosts", &["ro"])];
        let pins = pins();
        let sys = shared_paths();
        let setup = RootfsSetup {
            pins: Some(&pins),
            ..setup(&mounts)
        };
        prepare_rootfs(&sys, &setup).unwrap();
        let calls = sys.calls();
        assert_eq!(calls[1], "open_path /share/c1/rootfs");
        assert_eq!(calls[2], "mount /proc/self/fd/10 /r - [bind|rec] -");
        let i = calls
            .iter()
            .position(|c| c == "open_path /share/hosts")
            .unwrap();
        assert_eq!(calls[i + 1], "touch /r/etc/hosts");
        assert_eq!(
            calls[i + 2],
            "mount /proc/self/fd/11 /r/etc/hosts - [bind] -"
        );
        assert!(!calls.iter().any(|c| c.starts_with("mount /share")));
    }

    #[test]
    fn a_pinned_source_that_now_leads_elsewhere_is_refused_unmounted() {
        let mounts = [mount("/etc/hosts", "bind", "/share/hosts", &["ro"])];
        let pins = pins();
        let cases = [
            ("/share/c1/rootfs", "/", "mount /proc/self/fd/10 /r "),
            (
                "/share/hosts",
                "/run/veil/volumes/model",
                "mount /proc/self/fd/11 /r/etc/hosts ",
            ),
        ];
        for (path, to, refused_mount) in cases {
            let sys = shared_paths()
                .with_link(path, to)
                .with_path("/run/veil/volumes/model", PathKind::Directory);
            let setup = RootfsSetup {
                pins: Some(&pins),
                ..setup(&mounts)
            };
            let err = prepare_rootfs(&sys, &setup).unwrap_err();
            assert!(err.step.ends_with(path), "{err}");
            let expected = format!("it now leads to {to}, not to {path} as when it was checked");
            assert!(err.detail.starts_with(&expected), "{err}");
            assert!(!sys.calls().iter().any(|c| c.starts_with(refused_mount)));
        }
    }

    #[test]
    fn with_pins_an_unchecked_bind_source_is_refused() {
        let mounts = [mount("/data", "bind", "/share/other", &["rbind"])];
        let pins = pins();
        let sys = shared_paths().with_path("/share/other", PathKind::Directory);
        let setup = RootfsSetup {
            pins: Some(&pins),
            ..setup(&mounts)
        };
        let err = prepare_rootfs(&sys, &setup).unwrap_err();
        assert_eq!(err.step, "mount the source of the bind mount at /data");
        assert!(err
            .detail
            .contains("/share/other was not among the sources the caller checked"));
        assert!(!sys.calls().iter().any(|c| c.contains("/r/data")));
    }

    fn mounts_only(calls: &[String]) -> Vec<String> {
        calls
            .iter()
            .filter(|c| c.starts_with("mount"))
            .cloned()
            .collect()
    }

    #[test]
    fn order_is_propagation_bind_mounts_devices_pivot() {
        let mounts = [
            mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
            mount(
                "/dev",
                "tmpfs",
                "tmpfs",
                &["nosuid", "strictatime", "mode=755", "size=65536k"],
            ),
            mount(
                "/dev/pts",
                "devpts",
                "devpts",
                &[
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                    "gid=5",
                ],
            ),
        ];
        let sys = RecordingSyscall::new();
        prepare_rootfs(&sys, &setup(&mounts)).unwrap();
        let calls = sys.calls();
        assert_eq!(
            mounts_only(&calls),
            vec![
                "mount - / - [rec|slave] -",
                "mount /r /r - [bind|rec] -",
                "mount proc /r/proc proc [nosuid|nodev|noexec] -",
                "mount tmpfs /r/dev tmpfs [nosuid|strictatime] mode=755,size=65536k",
                "mount devpts /r/dev/pts devpts [nosuid|noexec] newinstance,ptmxmode=0666,mode=0620,gid=5",
                "mount - . - [rec|slave] -",
            ]
        );
        let pos = |prefix: &str| calls.iter().position(|c| c.starts_with(prefix)).unwrap();
        assert!(pos("mount devpts") < pos("mknod /r/dev/null"));
        assert!(pos("mknod /r/dev/null") < pos("chdir /r"));
        assert!(pos("chdir /r") < pos("pivot_root . ."));
        assert_eq!(
            &calls[calls.len() - 4..],
            &[
                "pivot_root . .",
                "mount - . - [rec|slave] -",
                "umount .",
                "chdir /",
            ]
        );
    }

    #[test]
    fn read_only_bind_is_remounted() {
        let mounts = [mount(
            "/data",
            "bind",
            "/host/data",
            &["rbind", "ro", "nosuid"],
        )];
        let sys = RecordingSyscall::new().with_path("/host/data", PathKind::Directory);
        prepare_rootfs(&sys, &setup(&mounts)).unwrap();
        let calls = sys.calls();
        let i = calls.iter().position(|c| c == "mkdir /r/data").unwrap();
        assert_eq!(calls[i + 1], "mount /host/data /r/data - [bind|rec] -");
        assert_eq!(calls[i + 2], "mount - /r/data - [ro|nosuid|remount|bind] -");
    }

    #[test]
    fn file_bind_creates_a_file_target_and_sets_propagation() {
        let mounts = [mount(
            "/etc/hosts",
            "none",
            "/host/hosts",
            &["bind", "rprivate"],
        )];
        let sys = RecordingSyscall::new().with_path("/host/hosts", PathKind::File);
        prepare_rootfs(&sys, &setup(&mounts)).unwrap();
        let calls = sys.calls();
        let i = calls
            .iter()
            .position(|c| c == "touch /r/etc/hosts")
            .unwrap();
        assert_eq!(calls[i + 1], "mount /host/hosts /r/etc/hosts - [bind] -");
        assert_eq!(calls[i + 2], "mount - /r/etc/hosts - [rec|private] -");
    }

    #[test]
    fn bind_type_without_bind_option_is_a_bind() {
        let mounts = [mount("/etc/hostname", "bind", "/host/hostname", &["ro"])];
        let sys = RecordingSyscall::new().with_path("/host/hostname", PathKind::File);
        prepare_rootfs(&sys, &setup(&mounts)).unwrap();
        let calls = sys.calls();
        let i = calls
            .iter()
            .position(|c| c == "touch /r/etc/hostname")
            .unwrap();
        assert_eq!(
            calls[i + 1],
            "mount /host/hostname /r/etc/hostname - [bind] -"
        );
        assert_eq!(
            calls[i + 2],
            "mount - /r/etc/hostname - [ro|remount|bind] -"
        );
    }

    #[test]
    fn missing_bind_source_is_named() {
        let mounts = [mount("/data", "bind", "/host/missing", &["bind"])];
        let sys = RecordingSyscall::new();
        let err = prepare_rootfs(&sys, &setup(&mounts)).unwrap_err();
        assert_eq!(err.step, "mount bind at /data: source /host/missing");
        assert_eq!(err.errno(), Some(Errno::ENOENT));
    }

    #[test]
    fn failing_mount_names_type_and_destination() {
        let mounts = [mount("/proc", "proc", "proc", &[])];
        let sys = RecordingSyscall::new().failing("mount proc", Errno::EPERM);
        let err = prepare_rootfs(&sys, &setup(&mounts)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "mount proc at /proc: EPERM: Operation not permitted"
        );
    }

    #[test]
    fn cgroup_becomes_cgroup2_or_a_clear_error() {
        let mounts = [mount("/sys/fs/cgroup", "cgroup", "cgroup", &["ro"])];
        let sys = RecordingSyscall::new();
        prepare_rootfs(&sys, &setup(&mounts)).unwrap();
        assert!(sys
            .calls()
            .contains(&"mount cgroup /r/sys/fs/cgroup cgroup2 [ro] -".to_string()));

        let sys = RecordingSyscall::new().without_filesystem("cgroup2");
        let err = prepare_rootfs(&sys, &setup(&mounts)).unwrap_err();
        assert!(err.detail.contains("cgroup2"), "{err}");
    }

    #[test]
    fn bind_mounted_dev_gets_no_device_nodes() {
        let mounts = [mount("/dev", "bind", "/dev", &["rbind"])];
        let sys = RecordingSyscall::new().with_path("/dev", PathKind::Directory);
        prepare_rootfs(&sys, &setup(&mounts)).unwrap();
        assert!(!sys.calls().iter().any(|c| c.starts_with("mknod")));
    }

    #[test]
    fn pivot_refusal_falls_back_only_when_allowed() {
        let sys = RecordingSyscall::new().failing("pivot_root", Errno::EINVAL);
        let err = prepare_rootfs(&sys, &setup(&[])).unwrap_err();
        assert_eq!(err.step, "pivot_root into the rootfs");

        let sys = RecordingSyscall::new().failing("pivot_root", Errno::EINVAL);
        let mut allowed = setup(&[]);
        allowed.root_switch = RootSwitch::PivotRootOrChroot;
        prepare_rootfs(&sys, &allowed).unwrap();
        assert_eq!(
            &sys.calls()[sys.calls().len() - 3..],
            &["mount . / - [move] -", "chroot .", "chdir /"]
        );
    }

    #[test]
    fn move_and_chroot_never_pivots() {
        let sys = RecordingSyscall::new();
        let mut s = setup(&[]);
        s.root_switch = RootSwitch::MoveAndChroot;
        prepare_rootfs(&sys, &s).unwrap();
        assert!(!sys.calls().iter().any(|c| c.starts_with("pivot_root")));
        assert_eq!(
            &sys.calls()[sys.calls().len() - 4..],
            &["chdir /r", "mount . / - [move] -", "chroot .", "chdir /"]
        );
    }

    #[test]
    fn console_is_bound_when_asked() {
        let sys = RecordingSyscall::new();
        let mut s = setup(&[]);
        s.console = Some(Path::new("/dev/pts/3"));
        prepare_rootfs(&sys, &s).unwrap();
        assert!(sys
            .calls()
            .contains(&"mount /dev/pts/3 /r/dev/console - [bind] -".to_string()));
    }

    #[test]
    fn finish_orders_sysctl_readonly_masked_root() {
        let readonly = vec!["/proc/sys".to_string(), "/proc/absent".to_string()];
        let masked = vec!["/proc/kcore".to_string(), "/proc/acpi".to_string()];
        let sys = RecordingSyscall::new()
            .with_path("/proc/sys", PathKind::Directory)
            .with_path("/proc/kcore", PathKind::File)
            .with_path("/proc/acpi", PathKind::Directory);
        let finish = RootfsFinish {
            sysctl: vec![("net.ipv4.ip_forward", "1")],
            readonly_paths: &readonly,
            masked_paths: &masked,
            readonly_root: true,
        };
        finish_rootfs(&sys, &finish).unwrap();
        assert_eq!(
            sys.calls(),
            vec![
                "write /proc/sys/net/ipv4/ip_forward 1",
                "mount /proc/sys /proc/sys - [bind|rec] -",
                "mount - /proc/sys - [ro|remount|bind] -",
                "mount /dev/null /proc/kcore - [bind] -",
                "mount tmpfs /proc/acpi tmpfs [ro] -",
                "mount - / - [ro|remount|bind] -",
            ]
        );
    }
}

//! The named cases.

use std::os::fd::AsFd;

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use oci_spec::runtime::{
    Capabilities, Capability, LinuxCapabilitiesBuilder, MountBuilder, PosixRlimitBuilder,
    PosixRlimitType, ProcessBuilder, RootBuilder, UserBuilder,
};
use veil_container::{
    resize_pty, Container, ContainerBuilder, ContainerStatus, CreateError, ExecError, Pin, Process,
    RootSwitch, SourcePins, SpawnError, StdioConfig, SyncError,
};

use crate::harness::{expect_exit_code, read_all, spec, wait_exit, Rootfs};

type Case = fn() -> Result<(), String>;

/// Names each case after its function.
macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        &[$((stringify!($case), $case as Case)),*]
    };
}

/// Every case, in the order they run.
pub const CASES: &[(&str, Case)] = cases![
    echo_hello_through_pipes,
    exit_status_is_reported,
    stdin_reaches_the_process,
    env_cwd_and_hostname_are_applied,
    user_group_and_additional_groups,
    capabilities_are_dropped,
    rlimit_is_applied,
    no_new_privileges_is_set,
    init_is_pid_1_of_its_namespace,
    readonly_rootfs_refuses_writes,
    sysctl_masked_and_readonly_paths,
    signals_are_reset_and_oom_score_set,
    bind_mount_read_only,
    pinned_sources_are_what_runs,
    a_pinned_source_that_moved_is_refused,
    exec_sees_the_container,
    exec_of_a_missing_program_fails,
    exec_with_a_terminal,
    terminal_is_a_tty_and_resizes,
    sigterm_ends_an_init_that_handles_it,
    sigkill_ends_the_init,
    a_deleted_container_kills_no_container_made_after_it_stopped,
    signal_all_reaches_every_process,
    failing_mount_reports_its_step,
    missing_program_fails_at_create,
    delete_before_start_ends_the_init,
    binary_without_init_mode_is_reported,
    silent_init_times_out,
    chroot_root_switch_runs_and_execs,
    containerd_shaped_spec_runs,
    a_new_network_namespace_has_loopback_up,
    device_rules_hold_the_container_to_its_devices,
    seccomp_profile_holds_the_process_with_and_without_no_new_privileges,
    threaded_helper_is_refused,
];

/// Creates, starts and returns the container and its init's stdio.
fn run(
    rootfs: &Rootfs,
    spec: oci_spec::runtime::Spec,
    stdio: StdioConfig,
) -> Result<(Container, Process), String> {
    let mut container = ContainerBuilder::new("test", rootfs.path(), spec)
        .stdio(stdio)
        .build()
        .map_err(|e| format!("create: {e}"))?;
    let init = container.take_init_process();
    container.start().map_err(|e| format!("start: {e}"))?;
    Ok((container, init))
}

/// Runs `args` to completion and returns (stdout, stderr) after checking the exit code.
fn output_of(spec: oci_spec::runtime::Spec, code: i32) -> Result<(String, String), String> {
    let rootfs = Rootfs::new()?;
    let (mut container, init) = run(&rootfs, spec, StdioConfig::Pipes { stdin: false })?;
    let stdout = read_all(init.stdout.ok_or("no stdout")?)?;
    let stderr = read_all(init.stderr.ok_or("no stderr")?)?;
    expect_exit_code(init.pid, code).map_err(|e| format!("{e}; stderr: {stderr}"))?;
    container.mark_stopped();
    container.delete().map_err(|e| format!("delete: {e}"))?;
    Ok((stdout, stderr))
}

fn expect_eq(what: &str, got: &str, want: &str) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: expected {want:?}, got {got:?}"))
    }
}

fn expect_contains(what: &str, got: &str, want: &str) -> Result<(), String> {
    if got.contains(want) {
        Ok(())
    } else {
        Err(format!(
            "{what}: expected it to contain {want:?}, got {got:?}"
        ))
    }
}

fn status_line<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find(|l| l.starts_with(key))
        .map_or("", |l| l[key.len()..].trim())
}

fn echo_hello_through_pipes() -> Result<(), String> {
    let (out, _) = output_of(spec(&["echo", "hello"]), 0)?;
    expect_eq("stdout", &out, "hello\n")
}

fn exit_status_is_reported() -> Result<(), String> {
    output_of(spec(&["sh", "-c", "exit 7"]), 7).map(drop)
}

fn stdin_reaches_the_process() -> Result<(), String> {
    let rootfs = Rootfs::new()?;
    let (_container, mut init) = run(&rootfs, spec(&["cat"]), StdioConfig::Pipes { stdin: true })?;
    let stdin = init.stdin.take().ok_or("no stdin")?;
    nix::unistd::write(&stdin, b"data\n").map_err(|e| format!("write stdin: {e}"))?;
    drop(stdin);
    let out = read_all(init.stdout.take().ok_or("no stdout")?)?;
    expect_exit_code(init.pid, 0)?;
    expect_eq("stdout", &out, "data\n")
}

fn env_cwd_and_hostname_are_applied() -> Result<(), String> {
    let mut s = spec(&["sh", "-c", "echo $FOO; pwd; hostname"]);
    let mut process = s.process().clone().ok_or("no process")?;
    process.set_env(Some(vec!["PATH=/bin".into(), "FOO=bar".into()]));
    process.set_cwd("/work/dir".into());
    s.set_process(Some(process));
    s.set_hostname(Some("veil-test".into()));
    let (out, _) = output_of(s, 0)?;
    expect_eq("stdout", &out, "bar\n/work/dir\nveil-test\n")
}

fn user_group_and_additional_groups() -> Result<(), String> {
    let mut s = spec(&["grep", "-E", "^(Uid|Gid|Groups):", "/proc/self/status"]);
    let mut process = s.process().clone().ok_or("no process")?;
    let user = UserBuilder::default()
        .uid(1000u32)
        .gid(1001u32)
        .additional_gids(vec![10u32, 20])
        .build()
        .map_err(|e| e.to_string())?;
    process.set_user(user);
    s.set_process(Some(process));
    let (out, _) = output_of(s, 0)?;
    expect_eq("Uid", status_line(&out, "Uid:"), "1000\t1000\t1000\t1000")?;
    expect_eq("Gid", status_line(&out, "Gid:"), "1001\t1001\t1001\t1001")?;
    expect_eq("Groups", status_line(&out, "Groups:"), "10 20")
}

fn capabilities_are_dropped() -> Result<(), String> {
    let mut s = spec(&["grep", "^Cap", "/proc/self/status"]);
    let mut process = s.process().clone().ok_or("no process")?;
    let kill: Capabilities = [Capability::Kill].into_iter().collect();
    let caps = LinuxCapabilitiesBuilder::default()
        .bounding(kill.clone())
        .effective(kill.clone())
        .permitted(kill.clone())
        .inheritable(Capabilities::new())
        .ambient(Capabilities::new())
        .build()
        .map_err(|e| e.to_string())?;
    process.set_capabilities(Some(caps));
    s.set_process(Some(process));
    let (out, _) = output_of(s, 0)?;
    // CAP_KILL is bit 5.
    expect_eq("CapEff", status_line(&out, "CapEff:"), "0000000000000020")?;
    expect_eq("CapPrm", status_line(&out, "CapPrm:"), "0000000000000020")?;
    expect_eq("CapBnd", status_line(&out, "CapBnd:"), "0000000000000020")?;
    expect_eq("CapInh", status_line(&out, "CapInh:"), "0000000000000000")
}

fn rlimit_is_applied() -> Result<(), String> {
    let mut s = spec(&["grep", "Max open files", "/proc/self/limits"]);
    let mut process = s.process().clone().ok_or("no process")?;
    let limit = PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .soft(123u64)
        .hard(456u64)
        .build()
        .map_err(|e| e.to_string())?;
    process.set_rlimits(Some(vec![limit]));
    s.set_process(Some(process));
    let (out, _) = output_of(s, 0)?;
    let fields: Vec<&str> = out.split_whitespace().collect();
    expect_eq(
        "limits",
        &fields.get(3..5).map(|f| f.join(" ")).unwrap_or_default(),
        "123 456",
    )
}

fn no_new_privileges_is_set() -> Result<(), String> {
    let (out, _) = output_of(spec(&["grep", "NoNewPrivs", "/proc/self/status"]), 0)?;
    expect_eq("NoNewPrivs", status_line(&out, "NoNewPrivs:"), "1")
}

fn init_is_pid_1_of_its_namespace() -> Result<(), String> {
    let (out, _) = output_of(spec(&["sh", "-c", "echo $$"]), 0)?;
    expect_eq("pid", &out, "1\n")
}

fn readonly_rootfs_refuses_writes() -> Result<(), String> {
    let mut s = spec(&["touch", "/newfile"]);
    s.set_root(Some(
        RootBuilder::default()
            .path("rootfs")
            .readonly(true)
            .build()
            .map_err(|e| e.to_string())?,
    ));
    let (_, err) = output_of(s, 1)?;
    expect_contains("stderr", &err, "Read-only file system")
}

fn exec_sees_the_container() -> Result<(), String> {
    let rootfs = Rootfs::new()?;
    std::fs::write(rootfs.join("etc/marker"), "from-the-rootfs\n").map_err(|e| e.to_string())?;
    let mut s = spec(&["sleep", "1000"]);
    s.set_hostname(Some("exec-host".into()));
    let (mut container, init) = run(&rootfs, s, StdioConfig::Null)?;
    let process = ProcessBuilder::default()
        .args(vec![
            "sh".to_string(),
            "-c".to_string(),
            "cat /etc/marker; tr '\\0' ' ' < /proc/1/cmdline; echo; hostname; id -u".to_string(),
        ])
        .env(vec!["PATH=/bin".to_string()])
        .cwd("/")
        .user(
            UserBuilder::default()
                .uid(1234u32)
                .gid(1234u32)
                .build()
                .map_err(|e| e.to_string())?,
        )
        .build()
        .map_err(|e| e.to_string())?;
    let result = (|| {
        let exec = container
            .exec("exec-1", &process, StdioConfig::Pipes { stdin: false })
            .map_err(|e| format!("exec: {e}"))?;
        let out = read_all(exec.stdout.ok_or("no stdout")?)?;
        expect_exit_code(exec.pid, 0)?;
        expect_eq(
            "exec stdout",
            &out,
            "from-the-rootfs\nsleep 1000 \nexec-host\n1234\n",
        )
    })();
    container.signal(libc::SIGKILL).map_err(|e| e.to_string())?;
    wait_exit(init.pid)?;
    container.mark_stopped();
    container.delete().map_err(|e| e.to_string())?;
    result
}

fn exec_of_a_missing_program_fails() -> Result<(), String> {
    let rootfs = Rootfs::new()?;
    let (mut container, init) = run(&rootfs, spec(&["sleep", "1000"]), StdioConfig::Null)?;
    let process = ProcessBuilder::default()
        .args(vec!["no-such-program".to_string()])
        .env(vec!["PATH=/bin".to_string()])
        .cwd("/")
        .build()
        .map_err(|e| e.to_string())?;
    let outcome = container.exec("exec-missing", &process, StdioConfig::Null);
    container.signal(libc::SIGKILL).map_err(|e| e.to_string())?;
    wait_exit(init.pid)?;
    container.mark_stopped();
    container.delete().map_err(|e| e.to_string())?;
    match outcome {
        Err(ExecError::Spawn {
            source: SpawnError::Init(failure),
            ..
        }) => expect_eq("step", &failure.step, "find executable \"no-such-program\""),
        other => Err(format!("expected a step failure, got {other:?}")),
    }
}

fn terminal_is_a_tty_and_resizes() -> Result<(), String> {
    let rootfs = Rootfs::new()?;
    let s = spec(&["sh", "-c", "test -t 0 && echo tty-yes; stty size"]);
    let mut container = ContainerBuilder::new("tty", rootfs.path(), s)
        .stdio(StdioConfig::Terminal)
        .build()
        .map_err(|e| format!("create: {e}"))?;
    let init = container.take_init_process();
    let master = init.pty_master.ok_or("no pty master")?;
    resize_pty(master.as_fd(), 33, 77).map_err(|e| e.to_string())?;
    container.start().map_err(|e| format!("start: {e}"))?;
    let out = read_all(master)?;
    expect_exit_code(init.pid, 0)?;
    expect_contains("tty output", &out, "tty-yes")?;
    expect_contains("tty output", &out, "33 77")
}

fn sigterm_ends_an_init_that_handles_it() -> Result<(), String> {
    let rootfs = Rootfs::new()?;
    let s = spec(&[
        "sh",
        "-c",
        "trap 'exit 143' TERM; echo ready; while true; do sleep 0.1; done",
    ]);
    let (container, mut init) = run(&rootfs, s, StdioConfig::Pipes { stdin: false })?;
    // Wait for the trap to be installed before signalling.
    let stdout = init.stdout.take().ok_or("no stdout")?;
    let mut first = [0u8; 6];
    nix::unistd::read(stdout.as_fd(), &mut first).map_err(|e| e.to_string())?;
    container.signal(libc::SIGTERM).map_err(|e| e.to_string())?;
    expect_exit_code(init.pid, 143)
}

fn sigkill_ends_the_init() -> Result<(), String> {
    let rootfs = Rootfs::new()?;
    let (mut container, init) = run(&rootfs, spec(&["sleep", "1000"]), StdioConfig::Null)?;
    if container.status() != ContainerStatus::Running {
        return Err(format!("status is {}", container.status()));
    }
    container.signal(libc::SIGKILL).map_err(|e| e.to_string())?;
    match wait_exit(init.pid)? {
        WaitStatus::Signaled(_, Signal::SIGKILL, _) => {}
        other => return Err(format!("expected death by SIGKILL, got {other:?}")),
    }
    container.mark_stopped();
    if container.signal(libc::SIGTERM).is_ok() {
        return Err("a stopped container accepted a signal".into());
    }
    container.delete().map_err(|e| e.to_string())
}

/// A stopped container holds its mount namespace until it is deleted: the kernel gives a
/// freed namespace's number to the next one made, and delete kills what it finds under the
/// number, so a container started in between was killed by its neighbour's delete.
fn a_deleted_container_kills_no_container_made_after_it_stopped() -> Result<(), String> {
    let rootfs = Rootfs::new()?;
    let mut first = ContainerBuilder::new("first", rootfs.path(), spec(&["true"]))
        .stdio(StdioConfig::Null)
        .build()
        .map_err(|e| format!("create first: {e}"))?;
    let first_init = first.take_init_process();
    first.start().map_err(|e| format!("start first: {e}"))?;
    expect_exit_code(first_init.pid, 0)?;
    first.mark_stopped();

    let other_rootfs = Rootfs::new()?;
    let mut second = ContainerBuilder::new("second", other_rootfs.path(), spec(&["sleep", "1000"]))
        .stdio(StdioConfig::Null)
        .build()
        .map_err(|e| format!("create second: {e}"))?;
    let second_init = second.take_init_process();
    second.start().map_err(|e| format!("start second: {e}"))?;
    first.delete().map_err(|e| format!("delete first: {e}"))?;
    std::thread::sleep(std::time::Duration::from_millis(200));
    let state = std::fs::read_to_string(format!("/proc/{}/stat", second_init.pid))
        .ok()
        .and_then(|stat| {
            stat.rsplit(") ")
                .next()
                .map(|rest| rest.chars().take(1).collect::<String>())
        });
    if !matches!(state.as_deref(), Some("S" | "R")) {
        return Err(format!(
            "deleting the first container ended the second (state {state:?})"
        ));
    }
    second.signal(libc::SIGKILL).map_err(|e| e.to_string())?;
    wait_exit(second_init.pid)?;
    second.mark_stopped();
    second.delete().map_err(|e| e.to_string())
}

fn failing_mount_reports_its_step() -> Result<(), String> {
    let rootfs = Rootfs::new()?;
    let mut s = spec(&["true"]);
    let mut mounts = s.mounts().clone().unwrap_or_default();
    mounts.push(
        MountBuilder::default()
            .destination("/mnt/bad")
            .typ("no-such-fs")
            .source("none")
            .build()
            .map_err(|e| e.to_string())?,
    );
    s.set_mounts(Some(mounts));
    match ContainerBuilder::new("badmount", rootfs.path(), s).build() {
        Err(CreateError::Spawn {
            source: SpawnError::Init(failure),
            ..
        }) => {
            expect_eq("step", &failure.step, "mount no-such-fs at /mnt/bad")?;
            expect_eq("errno", &format!("{:?}", failure.errno()), "Some(ENODEV)")
        }
        other => Err(format!("expected a step failure, got {other:?}")),
    }
}

fn missing_program_fails_at_create() -> Result<(), String> {
    let rootfs = Rootfs::new()?;
    match ContainerBuilder::new("noprog", rootfs.path(), spec(&["missing"])).build() {
        Err(CreateError::Spawn {
            source: SpawnError::Init(failure),
            ..
        }) => expect_contains(
            "failure",
            &failure.to_string(),
            "find executable \"missing\": ENOENT",
        ),
        other => Err(format!("expected a step failure, got {other:?}")),
    }
}

fn delete_before_start_ends_the_init() -> Result<(), String> {
    let rootfs = Rootfs::new()?;
    let container = ContainerBuilder::new("unstarted", rootfs.path(), spec(&["sleep", "1000"]))
        .stdio(StdioConfig::Null)
        .build()
        .map_err(|e| format!("create: {e}"))?;
    let pid = container.pid();
    container.delete().map_err(|e| e.to_string())?;
    wait_exit(pid).map(drop)
}

fn sysctl_masked_and_readonly_paths() -> Result<(), String> {
    let mut s = spec(&[
        "sh",
        "-c",
        "cat /proc/sys/net/ipv4/ip_forward; cat /proc/kcore; echo masked; echo 0 > /proc/sys/net/ipv4/ip_forward",
    ]);
    let mut linux = s.linux().clone().ok_or("no linux")?;
    linux.set_sysctl(Some(
        [("net.ipv4.ip_forward".to_string(), "1".to_string())].into(),
    ));
    s.set_linux(Some(linux));
    let (out, err) = output_of(s, 1)?;
    expect_eq("stdout", &out, "1\nmasked\n")?;
    expect_contains("stderr", &err, "Read-only file system")
}

fn signals_are_reset_and_oom_score_set() -> Result<(), String> {
    // grep is exec'd directly by the init, so it reports what the init handed over.
    let mut s = spec(&[
        "grep",
        "-h",
        "-E",
        "^Sig(Ign|Blk)|^[0-9]+$",
        "/proc/self/status",
        "/proc/self/oom_score_adj",
    ]);
    let mut process = s.process().clone().ok_or("no process")?;
    process.set_oom_score_adj(Some(500));
    s.set_process(Some(process));
    let (out, _) = output_of(s, 0)?;
    expect_eq("SigBlk", status_line(&out, "SigBlk:"), "0000000000000000")?;
    expect_eq("SigIgn", status_line(&out, "SigIgn:"), "0000000000000000")?;
    expect_eq("oom_score_adj", out.lines().last().unwrap_or(""), "500")
}

fn exec_with_a_terminal() -> Result<(), String> {
    let rootfs = Rootfs::new()?;
    let (mut container, init) = run(&rootfs, spec(&["sleep", "1000"]), StdioConfig::Null)?;
    let process = ProcessBuilder::default()
        .args(vec![
            "sh".to_string(),
            "-c".to_string(),
            "test -t 1 && echo exec-tty; stty size".to_string(),
        ])
        .env(vec!["PATH=/bin".to_string()])
        .cwd("/")
        .console_size(
            oci_spec::runtime::BoxBuilder::default()
                .height(12u64)
                .width(34u64)
                .build()
                .map_err(|e| e.to_string())?,
        )
        .build()
        .map_err(|e| e.to_string())?;
    let result = (|| {
        let exec = container
            .exec("exec-tty", &process, StdioConfig::Terminal)
            .map_err(|e| format!("exec: {e}"))?;
        let out = read_all(exec.pty_master.ok_or("no pty master")?)?;
        expect_exit_code(exec.pid, 0)?;
        expect_contains("exec output", &out, "exec-tty")?;
        expect_contains("exec output", &out, "12 34")
    })();
    container.signal(libc::SIGKILL).map_err(|e| e.to_string())?;
    wait_exit(init.pid)?;
    container.mark_stopped();
    container.delete().map_err(|e| e.to_string())?;
    result
}

/// Without its own pid namespace the init's death leaves exec'd processes running;
/// signal_all finds them through the container's mount namespace.
fn signal_all_reaches_every_process() -> Result<(), String> {
    let rootfs = Rootfs::new()?;
    let mut s = spec(&["sleep", "1000"]);
    let mut linux = s.linux().clone().ok_or("no linux")?;
    let namespaces = linux
        .namespaces()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.typ() != oci_spec::runtime::LinuxNamespaceType::Pid)
        .collect::<Vec<_>>();
    linux.set_namespaces(Some(namespaces));
    s.set_linux(Some(linux));
    let (mut container, init) = run(&rootfs, s, StdioConfig::Null)?;
    let process = ProcessBuilder::default()
        .args(vec!["sleep".to_string(), "1000".to_string()])
        .env(vec!["PATH=/bin".to_string()])
        .cwd("/")
        .build()
        .map_err(|e| e.to_string())?;
    let exec = container
        .exec("second", &process, StdioConfig::Null)
        .map_err(|e| format!("exec: {e}"))?;
    let mut pids = container.pids().map_err(|e| e.to_string())?;
    pids.sort_unstable();
    let mut want = vec![init.pid, exec.pid];
    want.sort_unstable();
    if pids != want {
        return Err(format!("pids: expected {want:?}, got {pids:?}"));
    }
    let sent = container
        .signal_all(libc::SIGKILL)
        .map_err(|e| e.to_string())?;
    wait_exit(init.pid)?;
    wait_exit(exec.pid)?;
    container.mark_stopped();
    container.delete().map_err(|e| e.to_string())?;
    expect_eq("signalled", &sent.to_string(), "2")
}

fn bind_mount_read_only() -> Result<(), String> {
    let rootfs = Rootfs::new()?;
    let shared = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::write(shared.path().join("file"), "shared-content\n").map_err(|e| e.to_string())?;
    let mut s = spec(&["sh", "-c", "cat /data/file; touch /data/new"]);
    let mut mounts = s.mounts().clone().unwrap_or_default();
    mounts.push(
        MountBuilder::default()
            .destination("/data")
            .typ("bind")
            .source(shared.path())
            .options(vec![
                "rbind".to_string(),
                "ro".to_string(),
                "nosuid".to_string(),
            ])
            .build()
            .map_err(|e| e.to_string())?,
    );
    s.set_mounts(Some(mounts));
    let (mut container, init) = run(&rootfs, s, StdioConfig::Pipes { stdin: false })?;
    let out = read_all(init.stdout.ok_or("no stdout")?)?;
    let err = read_all(init.stderr.ok_or("no stderr")?)?;
    expect_exit_code(init.pid, 1)?;
    container.mark_stopped();
    container.delete().map_err(|e| e.to_string())?;
    expect_eq("stdout", &out, "shared-content\n")?;
    expect_contains("stderr", &err, "Read-only file system")?;
    if shared.path().join("new").exists() {
        return Err("the read-only bind was written".into());
    }
    Ok(())
}

/// A spec that binds `source` read-only at /data and prints /data/file.
fn spec_binding(source: &std::path::Path) -> Result<oci_spec::runtime::Spec, String> {
    let mut s = spec(&["cat", "/data/file"]);
    let mut mounts = s.mounts().clone().unwrap_or_default();
    mounts.push(
        MountBuilder::default()
            .destination("/data")
            .typ("bind")
            .source(source)
            .options(vec!["rbind".to_string(), "ro".to_string()])
            .build()
            .map_err(|e| e.to_string())?,
    );
    s.set_mounts(Some(mounts));
    Ok(s)
}

fn canonical(path: &std::path::Path) -> Result<std::path::PathBuf, String> {
    std::fs::canonicalize(path).map_err(|e| format!("canonicalize {}: {e}", path.display()))
}

/// Pins `rootfs` and `bind` to where they lead now, as a caller's check would.
fn pins_as_checked(rootfs: &std::path::Path, bind: &std::path::Path) -> Result<SourcePins, String> {
    Ok(SourcePins {
        rootfs: Some(Pin {
            path: rootfs.to_path_buf(),
            leads_to: canonical(rootfs)?,
        }),
        binds: [(bind.to_path_buf(), canonical(bind)?)].into(),
    })
}

fn write_file(path: &std::path::Path, contents: &str) -> Result<(), String> {
    std::fs::write(path, contents).map_err(|e| format!("write {}: {e}", path.display()))
}

/// The caller's mount point shows nothing: the binds onto it stayed in the container's mount
/// namespace.
fn expect_empty_mountpoint(path: &std::path::Path) -> Result<(), String> {
    let left = std::fs::read_dir(path).map_err(|e| e.to_string())?.count();
    expect_eq("entries left in the mount point", &left.to_string(), "0")
}

fn pinned_sources_are_what_runs() -> Result<(), String> {
    let rootfs = Rootfs::new()?;
    let mountpoint = tempfile::tempdir().map_err(|e| e.to_string())?;
    let shared = tempfile::tempdir().map_err(|e| e.to_string())?;
    write_file(&shared.path().join("file"), "checked-content\n")?;
    let pins = pins_as_checked(rootfs.path(), shared.path())?;
    let mut container =
        ContainerBuilder::new("test", mountpoint.path(), spec_binding(shared.path())?)
            .pin_sources(pins)
            .build()
            .map_err(|e| format!("create: {e}"))?;
    let init = container.take_init_process();
    container.start().map_err(|e| format!("start: {e}"))?;
    let out = read_all(init.stdout.ok_or("no stdout")?)?;
    expect_exit_code(init.pid, 0)?;
    container.mark_stopped();
    container.delete().map_err(|e| e.to_string())?;
    expect_eq("stdout", &out, "checked-content\n")?;
    expect_empty_mountpoint(mountpoint.path())
}

/// A file server that changes a checked directory into a symlink between the check and the
/// mount, for the rootfs (to the host's `/`) and for a bind source (to a secret).
fn a_pinned_source_that_moved_is_refused() -> Result<(), String> {
    let rootfs = Rootfs::new()?;
    let mountpoint = tempfile::tempdir().map_err(|e| e.to_string())?;
    let share = tempfile::tempdir().map_err(|e| e.to_string())?;
    let secret = tempfile::tempdir().map_err(|e| e.to_string())?;
    write_file(&secret.path().join("file"), "secret\n")?;
    let data = share.path().join("data");
    std::fs::create_dir(&data).map_err(|e| e.to_string())?;
    let pins = pins_as_checked(rootfs.path(), &data)?;
    std::fs::remove_dir(&data).map_err(|e| e.to_string())?;
    std::os::unix::fs::symlink(secret.path(), &data).map_err(|e| e.to_string())?;
    let moved_bind = ContainerBuilder::new("test", mountpoint.path(), spec_binding(&data)?)
        .pin_sources(pins.clone())
        .build();
    let refusal = match moved_bind {
        Ok(_) => return Err("a bind source that moved after the check was mounted".into()),
        Err(e) => e.to_string(),
    };
    expect_contains(
        "refusal",
        &refusal,
        &format!(
            "open the source of the bind mount at /data {}",
            data.display()
        ),
    )?;
    expect_contains(
        "refusal",
        &refusal,
        &format!(
            "it now leads to {}, not to",
            canonical(secret.path())?.display()
        ),
    )?;

    let moved_root = share.path().join("rootfs");
    std::fs::create_dir(&moved_root).map_err(|e| e.to_string())?;
    let mut pins = pins_as_checked(&moved_root, secret.path())?;
    std::fs::remove_dir(&moved_root).map_err(|e| e.to_string())?;
    std::os::unix::fs::symlink("/", &moved_root).map_err(|e| e.to_string())?;
    pins.binds.clear();
    let moved_rootfs = ContainerBuilder::new("test", mountpoint.path(), spec(&["true"]))
        .pin_sources(pins)
        .build();
    let refusal = match moved_rootfs {
        Ok(_) => return Err("a rootfs that moved to / after the check was mounted".into()),
        Err(e) => e.to_string(),
    };
    expect_contains("refusal", &refusal, "it now leads to /, not to")?;
    expect_empty_mountpoint(mountpoint.path())
}

fn binary_without_init_mode_is_reported() -> Result<(), String> {
    let rootfs = Rootfs::new()?;
    let outcome = ContainerBuilder::new("noinit", rootfs.path(), spec(&["true"]))
        .init_binary("/bin/true")
        .build();
    match outcome {
        Err(CreateError::Spawn {
            source: SpawnError::Silent,
            ..
        }) => Ok(()),
        other => Err(format!("expected SpawnError::Silent, got {other:?}")),
    }
}

fn silent_init_times_out() -> Result<(), String> {
    let rootfs = Rootfs::new()?;
    let script = rootfs.join("hang.sh");
    std::fs::write(&script, "#!/bin/sh\nexec sleep 2\n").map_err(|e| e.to_string())?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    let outcome = ContainerBuilder::new("hang", rootfs.path(), spec(&["true"]))
        .init_binary(&script)
        .timeout(std::time::Duration::from_millis(200))
        .build();
    match outcome {
        Err(CreateError::Spawn {
            source: SpawnError::Sync(SyncError::Timeout(_)),
            ..
        }) => Ok(()),
        other => Err(format!("expected a timeout, got {other:?}")),
    }
}

/// The fallback for an agent on the initramfs, exercised for real: create, then exec
/// (which must chroot through /proc/<pid>/root, since the namespace root is not the
/// container's).
fn chroot_root_switch_runs_and_execs() -> Result<(), String> {
    let rootfs = Rootfs::new()?;
    std::fs::write(rootfs.join("etc/marker"), "chrooted\n").map_err(|e| e.to_string())?;
    let mut container = ContainerBuilder::new("chroot", rootfs.path(), spec(&["sleep", "1000"]))
        .stdio(StdioConfig::Null)
        .root_switch(RootSwitch::MoveAndChroot)
        .build()
        .map_err(|e| format!("create: {e}"))?;
    let init = container.take_init_process();
    container.start().map_err(|e| format!("start: {e}"))?;
    let process = ProcessBuilder::default()
        .args(vec!["cat".to_string(), "/etc/marker".to_string()])
        .env(vec!["PATH=/bin".to_string()])
        .cwd("/")
        .build()
        .map_err(|e| e.to_string())?;
    let result = (|| {
        let exec = container
            .exec("cat", &process, StdioConfig::Pipes { stdin: false })
            .map_err(|e| format!("exec: {e}"))?;
        let out = read_all(exec.stdout.ok_or("no stdout")?)?;
        expect_exit_code(exec.pid, 0)?;
        expect_eq("exec stdout", &out, "chrooted\n")
    })();
    container.signal(libc::SIGKILL).map_err(|e| e.to_string())?;
    wait_exit(init.pid)?;
    container.mark_stopped();
    container.delete().map_err(|e| e.to_string())?;
    result
}

/// The spec `ctr run` generates (containerd's default Unix spec), as the shim passes it on.
fn containerd_shaped_spec_runs() -> Result<(), String> {
    let json = include_str!("ctr-spec.json");
    let spec: oci_spec::runtime::Spec =
        serde_json::from_str(json).map_err(|e| format!("parse ctr-spec.json: {e}"))?;
    let (out, err) = output_of(spec, 0)?;
    // The 14 default capabilities of containerd: 0xa80425fb.
    expect_eq(
        "stdout",
        &out,
        "ctr-shaped\nCapEff:\t00000000a80425fb\nctr-host\n",
    )
    .map_err(|e| format!("{e}; stderr: {err}"))
}

fn a_new_network_namespace_has_loopback_up() -> Result<(), String> {
    let json = include_str!("ctr-spec.json");
    let mut spec: oci_spec::runtime::Spec =
        serde_json::from_str(json).map_err(|e| format!("parse ctr-spec.json: {e}"))?;
    let mut process = spec.process().clone().ok_or("no process")?;
    // IFF_UP is bit 0 of the flags.
    process.set_args(Some(vec!["cat".into(), "/sys/class/net/lo/flags".into()]));
    spec.set_process(Some(process));
    let (out, err) = output_of(spec, 0)?;
    let flags = u32::from_str_radix(out.trim().trim_start_matches("0x"), 16)
        .map_err(|e| format!("lo flags {out:?}: {e}; stderr: {err}"))?;
    if flags & 1 == 1 {
        Ok(())
    } else {
        Err(format!(
            "lo is down in the container's new network namespace: flags {out:?}"
        ))
    }
}

fn threaded_helper_is_refused() -> Result<(), String> {
    let rootfs = Rootfs::new()?;
    let me = std::fs::read_link("/proc/self/exe").map_err(|e| e.to_string())?;
    let script = rootfs.join("threaded.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec env {}=1 {} \"$@\"\n",
            crate::START_THREAD_FIRST,
            me.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    let outcome = ContainerBuilder::new("threaded", rootfs.path(), spec(&["true"]))
        .init_binary(&script)
        .build();
    match outcome {
        Err(CreateError::Spawn {
            source: SpawnError::Init(failure),
            ..
        }) => expect_contains("detail", &failure.detail, "before any thread"),
        other => Err(format!("expected a refusal, got {other:?}")),
    }
}

/// What a container with CAP_MKNOD gets from a node of /dev/kmsg (1:11, which root may open
/// for writing without other capabilities) it makes itself, under containerd's default
/// rules (deny all, then runc's defaults) and under rules that also allow writing it.
fn device_rules_hold_the_container_to_its_devices() -> Result<(), String> {
    let Some(hierarchy) = cgroup2_mount()? else {
        println!("skipped device_rules_hold_the_container_to_its_devices: no cgroup2 mounted");
        return Ok(());
    };
    // Not a TempDir: cgroupfs directories go by rmdir alone.
    let parent = hierarchy.join(format!("veil-device-test-{}", std::process::id()));
    std::fs::create_dir(&parent)
        .map_err(|e| format!("make a cgroup at {}: {e}", parent.display()))?;
    let denied = run_under_device_rules(&parent, r#"[{"allow":false,"access":"rwm"}]"#);
    let allowed = run_under_device_rules(
        &parent,
        r#"[{"allow":false,"access":"rwm"},{"allow":true,"type":"c","major":1,"minor":11,"access":"w"}]"#,
    );
    let removed = remove_cgroups(&parent);
    expect_eq(
        "under containerd's default rules",
        &denied?,
        "null ok\nkmsg refused\n",
    )?;
    expect_eq(
        "with kmsg allowed for writing",
        &allowed?,
        "null ok\nkmsg opened\n",
    )?;
    removed
}

/// Removes the test's cgroup and what a failed run left below it.
fn remove_cgroups(parent: &std::path::Path) -> Result<(), String> {
    let veil = parent.join(veil_container::cgroups::CONTAINERS_PARENT);
    for dir in [veil.join("devices"), veil, parent.to_path_buf()] {
        match std::fs::remove_dir(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("rmdir {}: {e}", dir.display()))
            }
            _ => {}
        }
    }
    Ok(())
}

fn run_under_device_rules(cgroup_root: &std::path::Path, rules: &str) -> Result<String, String> {
    let mut spec: oci_spec::runtime::Spec = serde_json::from_str(include_str!("ctr-spec.json"))
        .map_err(|e| format!("parse ctr-spec.json: {e}"))?;
    let mut process = spec.process().clone().ok_or("no process")?;
    process.set_args(Some(vec![
        "sh".into(),
        "-c".into(),
        "cat /dev/null && echo null ok; mknod /dev/probe c 1 11 || exit 3; \
         if (true > /dev/probe) 2>/dev/null; then echo kmsg opened; else echo kmsg refused; fi"
            .into(),
    ]));
    spec.set_process(Some(process));
    let resources: oci_spec::runtime::LinuxResources =
        serde_json::from_str(&format!(r#"{{"devices":{rules}}}"#)).map_err(|e| e.to_string())?;
    let device_rules =
        veil_container::cgroups::DeviceRules::of(Some(&resources)).map_err(|e| e.to_string())?;
    let cgroup = veil_container::cgroups::Cgroup::create(cgroup_root, "devices")
        .map_err(|e| e.to_string())?;
    cgroup
        .restrict_devices(&device_rules)
        .map_err(|e| e.to_string())?;
    let rootfs = Rootfs::new()?;
    let mut container = ContainerBuilder::new("devices", rootfs.path(), spec)
        .stdio(StdioConfig::Pipes { stdin: false })
        .cgroup(cgroup.clone())
        .build()
        .map_err(|e| format!("create: {e}"))?;
    let init = container.take_init_process();
    container.start().map_err(|e| format!("start: {e}"))?;
    let stdout = read_all(init.stdout.ok_or("no stdout")?)?;
    let stderr = read_all(init.stderr.ok_or("no stderr")?)?;
    expect_exit_code(init.pid, 0).map_err(|e| format!("{e}; stderr: {stderr}"))?;
    container.mark_stopped();
    container.delete().map_err(|e| format!("delete: {e}"))?;
    cgroup.remove().map_err(|e| e.to_string())?;
    Ok(stdout)
}

/// Where cgroup2 is mounted on this host (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a
/// hybrid host).
fn cgroup2_mount() -> Result<Option<std::path::PathBuf>, String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").map_err(|e| e.to_string())?;
    Ok(mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(2) == Some(&"cgroup2")).then(|| std::path::PathBuf::from(fields[1]))
    }))
}

/// A profile denying mkdir with EACCES, under both ways of installing it: just before exec
/// (no_new_privileges) and before the capabilities go (without).
fn seccomp_profile_holds_the_process_with_and_without_no_new_privileges() -> Result<(), String> {
    for no_new_privileges in [true, false] {
        let mut s = spec(&[
            "sh",
            "-c",
            "grep Seccomp: /proc/self/status; mkdir /tmp/denied 2>&1; echo done",
        ]);
        let mut process = s.process().clone().ok_or("no process")?;
        process.set_no_new_privileges(Some(no_new_privileges));
        s.set_process(Some(process));
        let profile: oci_spec::runtime::LinuxSeccomp = serde_json::from_str(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#,
        )
        .map_err(|e| e.to_string())?;
        let mut linux = s.linux().clone().unwrap_or_default();
        linux.set_seccomp(Some(profile));
        s.set_linux(Some(linux));
        let (out, err) = output_of(s, 0)?;
        let what = format!("no_new_privileges {no_new_privileges}");
        expect_contains(&what, &out, "Seccomp:\t2\n")?;
        expect_contains(&what, &out, "Permission denied")
            .map_err(|e| format!("{e}; stderr: {err}"))?;
        expect_contains(&what, &out, "done\n")?;
    }
    Ok(())
}

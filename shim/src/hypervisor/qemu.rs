//! The QEMU backend: the command line (a pure function, tested against golden
//! expectations) and the process that runs it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::process::Command;
use tokio::sync::watch;
use veil_config::{ConfidentialGuest, HypervisorConfig};

use super::accel::{self, AccelChoice, HostFacts};
use super::virtiofs::{self, Virtiofsd};
use super::{snp, Channel, Hypervisor, Share, Vm, VmSpec};
use crate::error::{Error, Result};

/// Kernel command-line words for every veil guest. `panic=-1` with `-no-reboot` turns a
/// guest panic into QEMU exiting, which the shim sees; the i8042 words skip probing
/// a keyboard controller the VM does not need.
const BASE_KERNEL_PARAMS: &str = "console=ttyS0 panic=-1 reboot=k pci=lastbus=0 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd cryptomgr.notests net.ifnames=0";

/// Builds the guest kernel command line.
pub fn kernel_cmdline(
    config: &HypervisorConfig,
    agent_log_level: &str,
    spec: &VmSpec,
    accel: &AccelChoice,
) -> String {
    kernel_cmdline_for(
        config,
        agent_log_level,
        &spec.channel,
        spec.egress,
        &spec.share,
        !accel.kvm,
    )
}

/// The guest kernel command line for a VM with this agent channel, egress and share,
/// `emulated` under TCG: what [`kernel_cmdline`] gives its VM, and what `veil measure
/// --config` measures (SEV-SNP runs under KVM, not emulated, and on virtio-9p).
pub fn kernel_cmdline_for(
    config: &HypervisorConfig,
    agent_log_level: &str,
    channel: &Channel,
    egress: bool,
    share: &Share,
    emulated: bool,
) -> String {
    let mut words = vec![BASE_KERNEL_PARAMS.to_string()];
    if is_microvm(config) {
        // microvm has no PIT/HPET to calibrate the TSC against: without the host's TSC
        // frequency early calibration can hang (guest-kernel/README.md); and without
        // ACPI reboot, `reboot=t` (triple fault) is what makes QEMU exit with -no-reboot.
        words.push(format!("reboot=t tsc_early_khz={}", host_tsc_khz()));
    }
    if !config.debug_console {
        words.push("quiet".to_string());
    }
    words.push(format!("veil.log={agent_log_level}"));
    words.push(format!("veil.channel={}", channel.kernel_word()));
    if egress {
        words.push(veil_protocol::egress::CMDLINE_WORD.to_string());
    }
    if let Some(word) = share.kernel_word() {
        words.push(word.to_string());
    }
    if emulated {
        words.push(veil_protocol::EMULATED_CMDLINE_WORD.to_string());
    }
    if !config.kernel_params.trim().is_empty() {
        words.push(config.kernel_params.trim().to_string());
    }
    words.join(" ")
}

/// Whether the machine type is QEMU's microvm (virtio-mmio devices, no PCI).
pub fn is_microvm(config: &HypervisorConfig) -> bool {
    config.machine.split(',').next() == Some("microvm")
}

/// The host's TSC frequency in kHz, from the kernel's cpu MHz figure.
fn host_tsc_khz() -> u64 {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    tsc_khz_from_cpuinfo(&cpuinfo).unwrap_or(2_000_000)
}

fn tsc_khz_from_cpuinfo(cpuinfo: &str) -> Option<u64> {
    let mhz: f64 = cpuinfo.lines().find_map(|line| {
        line.strip_prefix("cpu MHz")?
            .split(':')
            .nth(1)?
            .trim()
            .parse()
            .ok()
    })?;
    // cpu MHz is positive and far below u64::MAX / 1000.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Some((mhz * 1000.0).round() as u64)
}

/// A virtio device's QEMU name for the machine: `-pci` on q35, `-device` (mmio) on microvm.
pub(super) fn virtio(config: &HypervisorConfig, name: &str) -> String {
    let transport = if is_microvm(config) { "device" } else { "pci" };
    format!("{name}-{transport}{}", snp::virtio_options(config))
}

/// Builds QEMU's arguments for one pod VM.
pub fn command_line(
    config: &HypervisorConfig,
    accel: &AccelChoice,
    spec: &VmSpec,
    cmdline: &str,
) -> Vec<String> {
    let path = |p: &Path| p.display().to_string();
    let mut args: Vec<String> = vec![
        "-name".into(),
        format!("veil-{},debug-threads=on", spec.id),
        "-machine".into(),
        format!(
            "{}{}{}{}",
            config.machine,
            if accel.kvm { ",accel=kvm" } else { "" },
            snp::machine_options(config),
            match spec.share {
                Share::Virtio9p => String::new(),
                Share::VirtioFs { .. } => virtiofs::machine_option(),
            }
        ),
    ];
    if !accel.kvm {
        args.extend(["-accel".into(), tcg_accel(config)]);
    }
    args.extend([
        "-cpu".into(),
        snp::vcpu_model(config)
            .unwrap_or(if accel.kvm { "host" } else { "max" })
            .into(),
        "-smp".into(),
        config.vcpus.to_string(),
        "-m".into(),
        format!("{}M", config.memory_mib),
    ]);
    args.extend(snp::launch_args(config, &spec.host_data));
    args.extend([
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-nographic".into(),
        "-no-reboot".into(),
        "-kernel".into(),
        path(&config.kernel),
        "-initrd".into(),
        path(&config.initrd),
        "-append".into(),
        cmdline.to_string(),
        "-chardev".into(),
        format!("file,id=console,path={}", path(&spec.console_log)),
        "-serial".into(),
        "chardev:console".into(),
    ]);
    args.extend(match spec.share {
        Share::Virtio9p => nine_p_devices(config, &spec.shared_dir),
        Share::VirtioFs { .. } => {
            virtiofs::qemu_devices(config, &spec.state_dir, |name| virtio(config, name))
        }
    });
    args.extend([
        "-device".into(),
        virtio(config, "virtio-rng"),
        "-pidfile".into(),
        path(&spec.state_dir.join("qemu.pid")),
    ]);
    args.extend(channel_devices(config, &spec.channel));
    if spec.egress {
        args.extend(egress_devices(config));
    }
    args
}

/// TCG with its code cache bounded. QEMU refuses an -accel option next to -machine's
/// accel=, so under TCG the accelerator is named here only. Each vCPU already gets a host
/// thread of its own by default (QEMU 7.2: "CPU n/TCG" threads).
fn tcg_accel(config: &HypervisorConfig) -> String {
    match config.tcg_cache_mib {
        0 => "tcg".into(),
        mib => format!("tcg,tb-size={mib}"),
    }
}

/// virtio-9p: QEMU serves `shared_dir` itself. `multidevs=remap` keeps inode numbers of
/// the bind-mounted rootfs apart from the directory's own.
fn nine_p_devices(config: &HypervisorConfig, shared_dir: &Path) -> Vec<String> {
    vec![
        "-fsdev".into(),
        format!(
            "local,id=shared,path={},security_model=none,multidevs=remap",
            shared_dir.display()
        ),
        "-device".into(),
        format!(
            "{},fsdev=shared,mount_tag={}",
            virtio(config, "virtio-9p"),
            veil_protocol::SHARED_FS_TAG
        ),
    ]
}

/// QEMU user networking (slirp): outbound connections only, made by QEMU on the host
/// with the host's routes; nothing listens on the host for it. No option ROM: the guest
/// boots without network firmware.
fn egress_devices(config: &HypervisorConfig) -> Vec<String> {
    let mac = veil_protocol::egress::mac_string();
    let rom = if is_microvm(config) { "" } else { ",romfile=" };
    vec![
        "-netdev".into(),
        "user,id=egress".into(),
        "-device".into(),
        format!(
            "{},netdev=egress,mac={mac}{rom}",
            virtio(config, "virtio-net")
        ),
    ]
}

fn channel_devices(config: &HypervisorConfig, channel: &Channel) -> Vec<String> {
    match channel {
        Channel::Serial { socket } => vec![
            "-device".into(),
            format!("{},id=virtio-serial0", virtio(config, "virtio-serial")),
            "-chardev".into(),
            format!(
                "socket,id=agent,path={},server=on,wait=off",
                socket.display()
            ),
            "-device".into(),
            format!(
                "virtserialport,bus=virtio-serial0.0,chardev=agent,name={}",
                veil_protocol::SERIAL_PORT_NAME
            ),
        ],
        Channel::Vsock { cid } => {
            vec![
                "-device".into(),
                format!(
                    "vhost-vsock-pci{},guest-cid={cid}",
                    snp::virtio_options(config)
                ),
            ]
        }
    }
}

/// The QEMU hypervisor.
pub struct Qemu {
    config: HypervisorConfig,
    agent_log_level: String,
    pod_nics: Vec<super::net::PodNic>,
}

impl Qemu {
    /// A backend for `config`.
    pub fn new(config: HypervisorConfig, agent_log_level: String) -> Self {
        Qemu {
            config,
            agent_log_level,
            pod_nics: Vec::new(),
        }
    }

    /// Gives the VM these pod NICs (taps in the pod's network namespace).
    pub fn with_pod_nics(mut self, pod_nics: Vec<super::net::PodNic>) -> Self {
        self.pod_nics = pod_nics;
        self
    }

    fn check_inputs(&self) -> Result<()> {
        let hint = "set it under [hypervisor] in the veil configuration, or run `veil node install` to build and install the guest image";
        for (what, path) in [
            ("QEMU binary", &self.config.path),
            ("guest kernel", &self.config.kernel),
            ("guest initramfs", &self.config.initrd),
        ] {
            if !path.exists() {
                return Err(Error::MissingFile {
                    what,
                    path: path.clone(),
                    hint: hint.to_string(),
                });
            }
        }
        Ok(())
    }
}

/// Refuses an SEV-SNP sandbox up front, with the doctor's reasons, on a host that cannot
/// launch one.
fn check_confidential_guest(config: &HypervisorConfig) -> Result<()> {
    if config.confidential_guest != ConfidentialGuest::Snp {
        return Ok(());
    }
    let qemu = config.path.display().to_string();
    veil_host::snp_support_with_qemu(&qemu).map_err(|reason| {
        Error::Vm(format!(
            "hypervisor.confidential_guest = \"snp\" but this host cannot launch an SEV-SNP guest: {reason} (see `veil doctor`)"
        ))
    })
}

#[async_trait]
impl Hypervisor for Qemu {
    async fn launch(&self, spec: &VmSpec) -> Result<Box<dyn Vm>> {
        self.check_inputs()?;
        check_confidential_guest(&self.config)?;
        let accel = accel::choose(self.config.accel, &HostFacts::probe()).map_err(Error::Vm)?;
        let config = snp::prepare(&self.config, (accel.kvm, &accel.reason))?;
        let cmdline = kernel_cmdline(&config, &self.agent_log_level, spec, &accel);
        let mut args = command_line(&config, &accel, spec, &cmdline);
        let vhost = super::net::use_vhost_net(
            &config,
            accel.kvm,
            std::path::Path::new(super::net::VHOST_NET_DEVICE).exists(),
        );
        if vhost && !self.pod_nics.is_empty() {
            tracing::info!("pod NICs use vhost-net");
        }
        args.extend(super::net::pod_nic_devices(&config, &self.pod_nics, vhost));
        let virtiofsd = match &spec.share {
            Share::Virtio9p => None,
            Share::VirtioFs { daemon } => {
                Some(Virtiofsd::start(daemon, &spec.state_dir, &spec.shared_dir).await?)
            }
        };
        let stderr_log = spec.state_dir.join("qemu.log");
        let stderr = std::fs::File::create(&stderr_log)
            .map_err(Error::io(format!("create {}", stderr_log.display())))?;
        let mut command = Command::new(&self.config.path);
        super::net::inherit_taps(&mut command, &self.pod_nics);
        let child = command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(Error::io(format!("start {}", self.config.path.display())))?;
        let pid = child.id().unwrap_or_default();
        tracing::info!(
            sandbox = %spec.id,
            pid,
            accel = if accel.kvm { "kvm" } else { "tcg" },
            reason = %accel.reason,
            "{}", crate::stages::VM_SPAWNED
        );
        tracing::debug!(args = ?args, "qemu command line");
        Ok(Box::new(QemuVm::watch(
            child, pid, accel, stderr_log, virtiofsd,
        )))
    }
}

/// A running QEMU process.
pub struct QemuVm {
    pid: u32,
    accel: AccelChoice,
    exited: watch::Receiver<Option<String>>,
    kill: Arc<tokio::sync::Notify>,
}

impl QemuVm {
    fn watch(
        mut child: tokio::process::Child,
        pid: u32,
        accel: AccelChoice,
        stderr_log: PathBuf,
        virtiofsd: Option<Virtiofsd>,
    ) -> Self {
        let (sender, exited) = watch::channel(None);
        let kill = Arc::new(tokio::sync::Notify::new());
        let kill_requested = kill.clone();
        tokio::spawn(async move {
            let status = tokio::select! {
                status = child.wait() => status,
                () = kill_requested.notified() => {
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            let mut stderr = std::fs::read_to_string(&stderr_log).unwrap_or_default();
            if let Some(virtiofsd) = virtiofsd {
                let said = virtiofsd.said();
                if !said.is_empty() && status.as_ref().map_or(true, |s| !s.success()) {
                    stderr.push_str(&format!("; virtiofsd: {said}"));
                }
                virtiofsd.stop().await;
            }
            let description = match status {
                Ok(status) if stderr.trim().is_empty() => format!("QEMU exited ({status})"),
                Ok(status) => format!("QEMU exited ({status}): {}", stderr.trim()),
                Err(e) => format!("QEMU could not be waited for: {e}"),
            };
            tracing::info!(pid, %description, "vm.exited");
            let _ = sender.send(Some(description));
        });
        QemuVm {
            pid,
            accel,
            exited,
            kill,
        }
    }
}

#[async_trait]
impl Vm for QemuVm {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn description(&self) -> String {
        format!("QEMU pid {} ({})", self.pid, self.accel.reason)
    }

    async fn wait_exit(&self) -> String {
        let mut exited = self.exited.clone();
        loop {
            if let Some(description) = exited.borrow_and_update().clone() {
                return description;
            }
            if exited.changed().await.is_err() {
                return "QEMU watcher ended".to_string();
            }
        }
    }

    fn has_exited(&self) -> bool {
        self.exited.borrow().is_some()
    }

    async fn kill(&self) {
        self.kill.notify_one();
        self.wait_exit().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            id: "sb1".into(),
            state_dir: "/run/veil/default/sb1".into(),
            shared_dir: "/run/veil/default/sb1/shared".into(),
            channel: Channel::Serial {
                socket: "/run/veil/default/sb1/agent.sock".into(),
            },
            console_log: "/run/veil/default/sb1/console.log".into(),
            egress: false,
            share: Share::Virtio9p,
            host_data: [0; 32],
        }
    }

    fn emulated() -> AccelChoice {
        AccelChoice {
            kvm: false,
            reason: "test".into(),
        }
    }

    fn config() -> HypervisorConfig {
        HypervisorConfig {
            kernel: "/k/vmlinuz".into(),
            initrd: "/k/initramfs.img".into(),
            machine: "q35".into(),
            ..HypervisorConfig::default()
        }
    }

    #[test]
    fn tcg_command_line_matches_golden() {
        let tcg = emulated();
        let cmdline = kernel_cmdline(&config(), "info", &spec(), &emulated());
        let args = command_line(&config(), &tcg, &spec(), &cmdline).join(" ");
        let golden = "-name veil-sb1,debug-threads=on -machine q35 -accel tcg,tb-size=64 -cpu max -smp 1 -m 512M \
-nodefaults -no-user-config -nographic -no-reboot -kernel /k/vmlinuz -initrd /k/initramfs.img \
-append console=ttyS0 panic=-1 reboot=k pci=lastbus=0 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd cryptomgr.notests net.ifnames=0 quiet veil.log=info veil.channel=serial veil.accel=tcg \
-chardev file,id=console,path=/run/veil/default/sb1/console.log -serial chardev:console \
-fsdev local,id=shared,path=/run/veil/default/sb1/shared,security_model=none,multidevs=remap \
-device virtio-9p-pci,fsdev=shared,mount_tag=veilshare -device virtio-rng-pci \
-pidfile /run/veil/default/sb1/qemu.pid \
-device virtio-serial-pci,id=virtio-serial0 \
-chardev socket,id=agent,path=/run/veil/default/sb1/agent.sock,server=on,wait=off \
-device virtserialport,bus=virtio-serial0.0,chardev=agent,name=veil.agent";
        assert_eq!(args, golden);
    }

    #[test]
    fn microvm_uses_mmio_devices_and_a_calibrated_tsc() {
        let tcg = emulated();
        let microvm = HypervisorConfig {
            machine: "microvm,acpi=on".into(),
            ..config()
        };
        let cmdline = kernel_cmdline(&microvm, "info", &spec(), &emulated());
        assert!(cmdline.contains("reboot=t tsc_early_khz="), "{cmdline}");
        let args = command_line(&microvm, &tcg, &spec(), &cmdline).join(" ");
        for device in [
            "virtio-9p-device,",
            "virtio-rng-device",
            "virtio-serial-device,id=virtio-serial0",
        ] {
            assert!(args.contains(device), "{device} missing: {args}");
        }
        assert!(!args.contains("-pci"), "{args}");
        assert!(args.contains("-machine microvm,acpi=on -accel tcg,tb-size=64"));
        assert!(!kernel_cmdline(&config(), "info", &spec(), &emulated()).contains("tsc_early_khz"));
    }

    #[test]
    fn egress_adds_a_user_network_nic_without_option_rom_and_tells_the_agent() {
        let tcg = emulated();
        let with_egress = VmSpec {
            egress: true,
            ..spec()
        };
        let cmdline = kernel_cmdline(&config(), "info", &with_egress, &emulated());
        assert!(
            cmdline.ends_with("veil.channel=serial veil.egress=user veil.accel=tcg"),
            "{cmdline}"
        );
        let args = command_line(&config(), &tcg, &with_egress, &cmdline).join(" ");
        assert!(
            args.ends_with(
                "-netdev user,id=egress -device virtio-net-pci,netdev=egress,mac=52:54:00:76:65:01,romfile="
            ),
            "{args}"
        );
        let plain = command_line(
            &config(),
            &tcg,
            &spec(),
            &kernel_cmdline(&config(), "info", &spec(), &emulated()),
        )
        .join(" ");
        assert!(
            !plain.contains("netdev") && !plain.contains("egress"),
            "{plain}"
        );
    }

    #[test]
    fn only_an_emulated_vm_is_told_so() {
        let kvm = AccelChoice {
            kvm: true,
            reason: "test".into(),
        };
        let words = |accel: &AccelChoice| {
            kernel_cmdline(&config(), "info", &spec(), accel)
                .split_whitespace()
                .filter(|w| w.starts_with("veil.accel"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(words(&emulated()), ["veil.accel=tcg"]);
        assert!(words(&kvm).is_empty());
    }

    #[test]
    fn tsc_frequency_comes_from_cpuinfo() {
        assert_eq!(
            tsc_khz_from_cpuinfo("processor\t: 0\ncpu MHz\t\t: 2445.406\n"),
            Some(2_445_406)
        );
        assert_eq!(tsc_khz_from_cpuinfo("no such line"), None);
    }

    #[test]
    fn vsock_channel_uses_vhost_vsock_and_tells_the_agent() {
        let tcg = emulated();
        let vsock = VmSpec {
            channel: Channel::Vsock { cid: 1234 },
            ..spec()
        };
        let cmdline = kernel_cmdline(&config(), "info", &vsock, &emulated());
        assert!(cmdline.contains("veil.channel=vsock"));
        let args = command_line(&config(), &tcg, &vsock, &cmdline).join(" ");
        assert!(
            args.ends_with("-device vhost-vsock-pci,guest-cid=1234"),
            "{args}"
        );
        assert!(!args.contains("virtio-serial"));
    }

    #[test]
    fn kvm_uses_the_host_cpu_and_multi_vcpu_tcg_names_its_accelerator_once() {
        let kvm = AccelChoice {
            kvm: true,
            reason: "test".into(),
        };
        let args = command_line(&config(), &kvm, &spec(), "x");
        assert!(args.contains(&"q35,accel=kvm".to_string()) && args.contains(&"host".to_string()));
        let tcg = emulated();
        let four = HypervisorConfig {
            vcpus: 4,
            ..config()
        };
        let args = command_line(&four, &tcg, &spec(), "x");
        assert!(args.contains(&"4".to_string()));
        let named = |args: &[String], what: &str| args.iter().filter(|a| a.contains(what)).count();
        assert_eq!(named(&args, "tcg"), 1, "{args:?}");
        assert!(!args.contains(&"-accel".to_string()) || named(&args, "accel=") == 0);
        assert_eq!(
            named(&command_line(&config(), &kvm, &spec(), "x"), "tb-size"),
            0
        );
    }

    #[test]
    fn tcgs_code_cache_is_bounded_unless_set_to_qemus_default() {
        let tcg = emulated();
        let accel = |mib| {
            let config = HypervisorConfig {
                tcg_cache_mib: mib,
                ..config()
            };
            let args = command_line(&config, &tcg, &spec(), "x");
            let at = args.iter().position(|a| a == "-accel").expect("-accel");
            args[at + 1].clone()
        };
        assert_eq!(accel(32), "tcg,tb-size=32");
        assert_eq!(accel(0), "tcg");
    }

    #[test]
    fn debug_console_drops_quiet_and_extra_params_are_appended() {
        let loud = HypervisorConfig {
            debug_console: true,
            kernel_params: "tsc_early_khz=2000000".into(),
            ..config()
        };
        let cmdline = kernel_cmdline(&loud, "debug", &spec(), &emulated());
        assert!(!cmdline.contains("quiet"));
        assert!(cmdline
            .ends_with("veil.log=debug veil.channel=serial veil.accel=tcg tsc_early_khz=2000000"));
    }

    #[test]
    fn an_snp_pod_is_refused_with_the_doctors_reason_on_a_host_without_snp() {
        let snp = HypervisorConfig {
            confidential_guest: ConfidentialGuest::Snp,
            ..config()
        };
        let checked = check_confidential_guest(&snp);
        match veil_host::snp_support() {
            Err(reason) => {
                let error = checked.expect_err("refused").to_string();
                assert!(
                    error.contains(&reason) && error.contains("veil doctor"),
                    "{error}"
                );
            }
            Ok(()) => assert!(checked.is_ok()),
        }
        assert!(check_confidential_guest(&config()).is_ok());
    }

    #[tokio::test]
    async fn missing_kernel_is_named() {
        let qemu = Qemu::new(
            HypervisorConfig {
                path: "/bin/true".into(),
                kernel: "/nonexistent/vmlinuz".into(),
                ..config()
            },
            "info".into(),
        );
        let error = qemu.launch(&spec()).await.err().expect("refused");
        let text = error.to_string();
        assert!(
            text.contains("guest kernel") && text.contains("/nonexistent/vmlinuz"),
            "{text}"
        );
    }
}

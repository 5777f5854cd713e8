//! Boots the built image under QEMU (q35, TCG) with a test /init that loads the modules from
//! /etc/veil/modules.load, finds the virtio-serial port, mounts a 9p share, writes a marker
//! there and powers off. Prints how long QEMU took to reach /init and to exit (not asserted).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use veil_guest_image::{BuildOutput, KernelChoice};

const BOOT_LIMIT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(20);
/// Kernel command line used by the smoke test; `quiet` keeps the UART out of the boot path.
const KERNEL_CMDLINE: &str = "console=ttyS0 panic=-1 quiet";

/// The QEMU machine and the matching virtio transport.
#[derive(Clone, Copy)]
enum Machine {
    /// `-M q35`, virtio-pci devices.
    Q35,
    /// `-M microvm,acpi=on`, virtio-mmio devices described by ACPI (minimal kernel only: the
    /// Debian kernel's virtio_mmio is a module it would need before it can find the devices).
    Microvm,
}

fn qemu_args(dir: &Path, machine: Machine, kernel: &Path, initramfs: &Path) -> Vec<String> {
    let path = |name: &str| dir.join(name).display().to_string();
    let (machine_args, transport, cmdline) = match machine {
        Machine::Q35 => (vec!["-M", "q35"], "pci", KERNEL_CMDLINE.to_owned()),
        Machine::Microvm => (
            // Keep microvm's PIT/PIC/RTC: turning them off made /init 0.9 s later here.
            vec!["-M", "microvm,acpi=on"],
            "device",
            // microvm has no PIT/HPET to calibrate the TSC against; reboot=t makes QEMU exit
            // on power-off (see shared/guest-kernel/README.md).
            format!("{KERNEL_CMDLINE} reboot=t tsc_early_khz={}", host_cpu_khz()),
        ),
    };
    let mut args: Vec<String> = machine_args.iter().map(|arg| (*arg).to_owned()).collect();
    args.extend([
        "-accel".to_owned(),
        "tcg".to_owned(),
        "-nographic".to_owned(),
        "-no-reboot".to_owned(),
        "-m".to_owned(),
        "512".to_owned(),
        "-monitor".to_owned(),
        "none".to_owned(),
        "-serial".to_owned(),
        format!("file:{}", path("console.log")),
        "-kernel".to_owned(),
        kernel.display().to_string(),
        "-initrd".to_owned(),
        initramfs.display().to_string(),
        "-append".to_owned(),
        cmdline,
        "-fsdev".to_owned(),
        format!("local,id=share,path={},security_model=none", path("share")),
        "-device".to_owned(),
        format!("virtio-9p-{transport},fsdev=share,mount_tag=veilshare"),
        "-chardev".to_owned(),
        format!(
            "socket,id=agent,path={},server=on,wait=off",
            path("agent.sock")
        ),
        "-device".to_owned(),
        format!("virtio-serial-{transport}"),
        "-device".to_owned(),
        "virtserialport,chardev=agent,name=veil.agent".to_owned(),
        "-device".to_owned(),
        format!("virtio-rng-{transport}"),
    ]);
    args
}

/// The host CPU clock in kHz from /proc/cpuinfo, close enough to the TSC for early boot.
fn host_cpu_khz() -> u64 {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let mhz: f64 = cpuinfo
        .lines()
        .find_map(|line| {
            line.strip_prefix("cpu MHz")?
                .split(':')
                .nth(1)?
                .trim()
                .parse()
                .ok()
        })
        .expect("/proc/cpuinfo has a cpu MHz line");
    (mhz * 1000.0) as u64
}

struct Timings {
    to_init: Option<Duration>,
    to_exit: Duration,
}

/// Waits for QEMU to exit, noting when the console first shows /init's line.
fn wait_for_qemu(child: &mut Child, console: &Path) -> Result<Timings, String> {
    let start = Instant::now();
    let mut to_init = None;
    while start.elapsed() < BOOT_LIMIT {
        if to_init.is_none()
            && std::fs::read_to_string(console)
                .is_ok_and(|text| text.contains("veil-smoke: [?] init started"))
        {
            to_init = Some(start.elapsed());
        }
        match child.try_wait() {
            Ok(Some(status)) if status.success() => {
                return Ok(Timings {
                    to_init,
                    to_exit: start.elapsed(),
                })
            }
            Ok(Some(status)) => return Err(format!("qemu exited with {status}")),
            Ok(None) => std::thread::sleep(POLL),
            Err(error) => return Err(format!("cannot wait for qemu: {error}")),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(format!("the guest did not power off within {BOOT_LIMIT:?}"))
}

/// Boots `kernel` with the image's initramfs in a fresh share dir under `dir` and checks the
/// smoke init's report and marker.
fn boot_and_check(dir: &Path, machine: Machine, kernel: &Path, image: &BuildOutput) {
    std::fs::create_dir(dir).unwrap();
    std::fs::create_dir(dir.join("share")).unwrap();
    let args = qemu_args(dir, machine, kernel, &image.initramfs);
    let mut child = Command::new("qemu-system-x86_64")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cannot start qemu-system-x86_64 (apt-get install -y qemu-system-x86)");
    let console = dir.join("console.log");
    let outcome = wait_for_qemu(&mut child, &console);
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    let timings = outcome.unwrap_or_else(|error| panic!("{error}\nconsole:\n{log}"));

    assert!(
        log.contains("] PASS "),
        "guest did not pass; console:\n{log}"
    );
    let marker = std::fs::read_to_string(dir.join("share/marker"))
        .unwrap_or_else(|error| panic!("no marker in the 9p share ({error}); console:\n{log}"));
    let release = &image.manifest.image.kernel.release;
    assert!(
        marker.starts_with(&format!("veil-smoke-ok release={release} ")),
        "{marker}"
    );
    let modules = image.manifest.image.modules.load_order.len();
    assert!(marker.contains(&format!("modules={modules} ")), "{marker}");

    eprintln!("qemu-system-x86_64 {}", args.join(" "));
    eprintln!(
        "boot timings ({}): qemu start -> /init {:?}, -> poweroff {:?}",
        kernel.display(),
        timings.to_init,
        timings.to_exit
    );
    for line in log.lines().filter(|line| line.starts_with("veil-smoke:")) {
        eprintln!("{line}");
    }
}

#[test]
fn debian_kernel_boots_loads_modules_and_uses_9p_and_virtio_serial() {
    common::require_program("qemu-system-x86_64", "qemu-system-x86");
    let dir = tempfile::tempdir().unwrap();
    let agent = common::build_smoke_init(dir.path());
    let image = common::build_image(&agent, &dir.path().join("image"));
    // The bzImage (firmware boot path) and the extracted vmlinux (PVH direct boot).
    boot_and_check(
        &dir.path().join("bzimage-boot"),
        Machine::Q35,
        &image.vmlinuz,
        &image,
    );
    boot_and_check(
        &dir.path().join("pvh-boot"),
        Machine::Q35,
        &image.vmlinux,
        &image,
    );
}

#[test]
fn minimal_kernel_boots_with_pvh_and_needs_no_modules() {
    common::require_program("qemu-system-x86_64", "qemu-system-x86");
    let dir = tempfile::tempdir().unwrap();
    let agent = common::build_smoke_init(dir.path());
    let image = common::build_image_with(&agent, &dir.path().join("image"), KernelChoice::Minimal);
    assert!(image.manifest.image.modules.load_order.is_empty());
    boot_and_check(
        &dir.path().join("q35-pvh-boot"),
        Machine::Q35,
        &image.vmlinux,
        &image,
    );
    boot_and_check(
        &dir.path().join("microvm-pvh-boot"),
        Machine::Microvm,
        &image.vmlinux,
        &image,
    );
}

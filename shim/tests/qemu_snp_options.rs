//! The QEMU this machine has accepts every option of the SNP golden command line
//! (`tests/golden/qemu-snp.args`) except those only an SEV-SNP capable QEMU (9.1 or later)
//! has: this catches misspelt device, backend and machine options without SNP hardware.
//!
//! Left out, and why: the `sev-snp-guest` object and the machine's
//! `confidential-guest-support` (QEMU 9.1), the `EPYC-v4` CPU model (QEMU 8.0; `EPYC`
//! stands in), KVM (TCG stands in), direct boot (no bzImage here), and `vhost-vsock-pci`
//! (needs /dev/vhost-vsock; its options are checked on a virtio-serial device). The
//! firmware is Debian's OVMF. QEMU is started paused (`-S`): it answers on QMP only after
//! every device has been created, so an answer means the options were accepted.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const QEMU: &str = "/usr/bin/qemu-system-x86_64";
const DEBIAN_OVMF: &str = "/usr/share/ovmf/OVMF.fd";
/// QEMU under TCG creates its devices in well under a second; this bounds a hang.
const START_LIMIT: Duration = Duration::from_secs(60);

fn golden_snp_args() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/qemu-snp.args");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The golden line with the SNP-only parts replaced as the module documentation says.
fn runnable_here(golden: &[String], state: &Path) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    let mut skip_value = false;
    for (index, arg) in golden.iter().enumerate() {
        if skip_value {
            skip_value = false;
            continue;
        }
        let next = golden
            .get(index + 1)
            .map(String::as_str)
            .unwrap_or_default();
        let snp_object = arg == "-object" && next.starts_with("sev-snp-guest,");
        if snp_object || ["-kernel", "-initrd", "-append"].contains(&arg.as_str()) {
            skip_value = true;
            continue;
        }
        let arg = arg
            .replace("/run/veil/default/sb1", &state.display().to_string())
            .replace("/usr/local/share/veil/OVMF.amdsev.fd", DEBIAN_OVMF)
            .replace(",confidential-guest-support=snp0", "")
            .replace("accel=kvm", "accel=tcg");
        let arg = match arg.as_str() {
            "EPYC-v4" => "EPYC".to_owned(),
            vsock if vsock.starts_with("vhost-vsock-pci,") => {
                "virtio-serial-pci,disable-legacy=on,iommu_platform=true".to_owned()
            }
            _ => arg,
        };
        args.push(arg);
    }
    args
}

#[test]
fn this_qemu_accepts_the_snp_lines_device_memory_and_machine_options() {
    assert!(
        Path::new(QEMU).is_file(),
        "{QEMU} is missing: apt-get install qemu-system-x86"
    );
    assert!(
        Path::new(DEBIAN_OVMF).is_file(),
        "{DEBIAN_OVMF} is missing: apt-get install ovmf"
    );
    let state = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(state.path().join("shared")).expect("shared dir");
    let golden = golden_snp_args();
    let mut args = runnable_here(&golden, state.path());
    assert!(
        args.iter()
            .any(|a| a.contains("memory-backend-memfd,id=ram0"))
            && args.iter().any(|a| a.contains("kernel-irqchip=split"))
            && args
                .iter()
                .any(|a| a.ends_with("disable-legacy=on,iommu_platform=true")),
        "{args:?}"
    );
    let qmp = state.path().join("qmp.sock");
    args.extend([
        "-S".to_owned(),
        "-qmp".to_owned(),
        format!("unix:{},server=on,wait=off", qmp.display()),
    ]);
    let mut qemu = Command::new(QEMU)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start QEMU");
    let started = Instant::now();
    let greeting = loop {
        if let Some(status) = qemu.try_wait().expect("wait") {
            let mut stderr = String::new();
            std::io::Read::read_to_string(qemu.stderr.as_mut().expect("stderr"), &mut stderr)
                .expect("read stderr");
            panic!("QEMU refused the options ({status}): {stderr}\nargs: {args:?}");
        }
        if let Ok(stream) = UnixStream::connect(&qmp) {
            stream
                .set_read_timeout(Some(START_LIMIT))
                .expect("read timeout");
            let mut line = String::new();
            BufReader::new(stream)
                .read_line(&mut line)
                .expect("greeting");
            break line;
        }
        assert!(
            started.elapsed() < START_LIMIT,
            "QEMU neither answered nor exited"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = qemu.kill();
    let _ = qemu.wait();
    assert!(greeting.contains("QMP"), "{greeting}");
}

#[test]
fn this_qemu_has_no_snp_object_and_says_so() {
    let version = Command::new(QEMU)
        .arg("--version")
        .output()
        .expect("run QEMU");
    let version = String::from_utf8_lossy(&version.stdout);
    let output = Command::new(QEMU)
        .args([
            "-machine",
            "none",
            "-object",
            "sev-snp-guest,id=snp0,cbitpos=51,reduced-phys-bits=1",
        ])
        .output()
        .expect("run QEMU");
    let stderr = String::from_utf8_lossy(&output.stderr);
    if version.contains("version 7.") || version.contains("version 8.") {
        assert!(!output.status.success());
        assert!(stderr.contains("sev-snp-guest"), "{stderr}");
    }
}

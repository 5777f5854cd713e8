//! A tiny static `/init` for the boot smoke test of the guest image.
//!
//! It does what veil-agent does first in the guest, and nothing else: mounts /proc, /sys and
//! devtmpfs, loads every module of /etc/veil/modules.load in order with finit_module, checks
//! that the `veil.agent` virtio-serial port appeared, mounts the 9p share tagged `veilshare`,
//! writes a marker file there and powers the VM off. Every step is reported on the console
//! with the guest uptime; the last line is `veil-smoke: PASS` or `veil-smoke: FAIL: ...`.
//!
//! Built by the tests with `rustc -C target-feature=+crt-static` (no Cargo dependencies), so
//! the few libc calls std lacks are declared here.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::raw::{c_char, c_int, c_long, c_ulong, c_void};
use std::time::{Duration, Instant};

extern "C" {
    fn mount(
        source: *const c_char,
        target: *const c_char,
        fstype: *const c_char,
        flags: c_ulong,
        data: *const c_void,
    ) -> c_int;
    fn syscall(number: c_long, ...) -> c_long;
    fn reboot(command: c_int) -> c_int;
    fn sync();
}

const SYS_FINIT_MODULE: c_long = 313;
const RB_POWER_OFF: c_int = 0x4321_fedc_u32 as c_int;
const EEXIST: i32 = 17;
const SHARE_TAG: &str = "veilshare";
const PORT_NAME: &str = "veil.agent";

fn main() {
    say("init started");
    let result = run();
    match &result {
        Ok(summary) => say(&format!("PASS {summary}")),
        Err(message) => say(&format!("FAIL: {message}")),
    }
    // SAFETY: sync and reboot take no pointers; powering off is the intended end of the test.
    unsafe {
        sync();
        reboot(RB_POWER_OFF);
    }
}

fn run() -> Result<String, String> {
    mount_fs("proc", "/proc", "proc", "")?;
    mount_fs("sysfs", "/sys", "sysfs", "")?;
    mount_fs("devtmpfs", "/dev", "devtmpfs", "")?;
    say("mounted /proc /sys /dev");
    let loaded = load_modules()?;
    say(&format!("loaded {loaded} modules"));
    let port = wait_for_port()?;
    say(&format!("found {port}"));
    std::fs::create_dir_all("/mnt/share").map_err(|e| format!("mkdir /mnt/share: {e}"))?;
    retry_for(Duration::from_secs(10), || {
        mount_fs(
            SHARE_TAG,
            "/mnt/share",
            "9p",
            "trans=virtio,version=9p2000.L",
        )
    })?;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let marker = format!(
        "veil-smoke-ok release={} modules={loaded} port={port}\n",
        release.trim()
    );
    std::fs::write("/mnt/share/marker", marker).map_err(|e| format!("write marker: {e}"))?;
    Ok(format!("modules={loaded} port={port}"))
}

fn load_modules() -> Result<usize, String> {
    let list = std::fs::read_to_string("/etc/veil/modules.load")
        .map_err(|e| format!("read modules.load: {e}"))?;
    let mut count = 0;
    for path in list.lines().filter(|line| !line.trim().is_empty()) {
        let file = std::fs::File::open(path).map_err(|e| format!("open {path}: {e}"))?;
        let params = CString::default();
        // SAFETY: the fd is open for the duration of the call; params is a valid C string.
        let rc = unsafe {
            syscall(
                SYS_FINIT_MODULE,
                file.as_raw_fd(),
                params.as_ptr(),
                0 as c_int,
            )
        };
        if rc != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(EEXIST) {
                return Err(format!("finit_module {path}: {error}"));
            }
        }
        count += 1;
    }
    Ok(count)
}

/// The port's device node is created by devtmpfs once virtio_console has probed it.
fn wait_for_port() -> Result<String, String> {
    retry_for(Duration::from_secs(10), || {
        let entries = std::fs::read_dir("/sys/class/virtio-ports")
            .map_err(|e| format!("virtio-ports: {e}"))?;
        for entry in entries.flatten() {
            let device = entry.file_name().to_string_lossy().into_owned();
            let name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
            let node = format!("/dev/{device}");
            if name.trim() == PORT_NAME
                && device.ends_with("p1")
                && std::path::Path::new(&node).exists()
            {
                return Ok(node);
            }
        }
        Err(format!("no /dev/vport*p1 named {PORT_NAME}"))
    })
}

fn retry_for<T>(
    limit: Duration,
    mut attempt: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let start = Instant::now();
    loop {
        match attempt() {
            Ok(value) => return Ok(value),
            Err(error) if start.elapsed() >= limit => return Err(error),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn mount_fs(source: &str, target: &str, fstype: &str, data: &str) -> Result<(), String> {
    let _ = std::fs::create_dir_all(target);
    let c = |text: &str| CString::new(text).map_err(|e| e.to_string());
    let (source_c, target_c, fstype_c, data_c) = (c(source)?, c(target)?, c(fstype)?, c(data)?);
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        mount(
            source_c.as_ptr(),
            target_c.as_ptr(),
            fstype_c.as_ptr(),
            0,
            data_c.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "mount {fstype} on {target}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn say(message: &str) {
    let uptime = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    let seconds = uptime.split_whitespace().next().unwrap_or("?");
    println!("veil-smoke: [{seconds}] {message}");
}

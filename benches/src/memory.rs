//! Memory figures of a running pod: the host processes' resident sets and what the guest
//! itself reports as used.

/// A process's memory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProcessMemoryError {
    /// /proc/<pid>/status could not be read (the process exited?).
    #[error("read /proc/{pid}/status: {source}; did the process exit before it was measured?")]
    Read {
        /// The process.
        pid: u32,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The status file has no VmRSS/VmHWM (a kernel thread, or a zombie).
    #[error("/proc/{pid}/status has no VmRSS and VmHWM: is it a zombie or a kernel thread?")]
    NoFigures {
        /// The process.
        pid: u32,
    },
}

/// Resident memory of one host process, KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessMemory {
    /// Resident now (VmRSS).
    pub rss_kib: u64,
    /// Resident at its peak (VmHWM).
    pub peak_kib: u64,
    /// Resident anonymous memory (RssAnon): for QEMU, guest RAM it touched, its heap
    /// (including its copies of the kernel and initramfs) and TCG's code buffer.
    pub anon_kib: u64,
    /// Resident file-backed memory (RssFile): mapped binaries and libraries.
    pub file_kib: u64,
    /// Resident shared memory (RssShmem): guest RAM when it is a memfd or shm backend.
    pub shmem_kib: u64,
}

fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// VmRSS and VmHWM of a /proc/<pid>/status text.
pub fn parse_status(status: &str) -> Option<ProcessMemory> {
    Some(ProcessMemory {
        rss_kib: kib_field(status, "VmRSS:")?,
        peak_kib: kib_field(status, "VmHWM:")?,
        anon_kib: kib_field(status, "RssAnon:").unwrap_or(0),
        file_kib: kib_field(status, "RssFile:").unwrap_or(0),
        shmem_kib: kib_field(status, "RssShmem:").unwrap_or(0),
    })
}

/// The resident memory of process `pid` now.
pub fn process_memory(pid: u32) -> Result<ProcessMemory, ProcessMemoryError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|source| ProcessMemoryError::Read { pid, source })?;
    parse_status(&status).ok_or(ProcessMemoryError::NoFigures { pid })
}

/// The guest's own view of its memory, KiB (from its /proc/meminfo).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestMemory {
    /// MemTotal: what the guest kernel manages (the VM size minus firmware and kernel).
    pub total_kib: u64,
    /// MemAvailable.
    pub available_kib: u64,
    /// MemFree: never touched since boot, or freed; QEMU's resident set covers the rest.
    pub free_kib: u64,
}

impl GuestMemory {
    /// Used = MemTotal - MemAvailable (page cache that can be dropped does not count;
    /// the initramfs root and tmpfs volumes do, as they cannot be dropped).
    pub fn used_kib(&self) -> u64 {
        self.total_kib.saturating_sub(self.available_kib)
    }

    /// MemTotal - MemFree: used plus the page cache, which is what a VM's resident set on
    /// the host follows (the guest kernel does not give freed cache back to the host).
    pub fn not_free_kib(&self) -> u64 {
        self.total_kib.saturating_sub(self.free_kib)
    }
}

/// MemTotal and MemAvailable of a /proc/meminfo text.
pub fn parse_meminfo(meminfo: &str) -> Option<GuestMemory> {
    Some(GuestMemory {
        total_kib: kib_field(meminfo, "MemTotal:")?,
        available_kib: kib_field(meminfo, "MemAvailable:")?,
        free_kib: kib_field(meminfo, "MemFree:")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rss_and_peak_from_status() {
        let status = "Name:\tqemu-system-x86\nVmPeak:\t 900000 kB\nVmHWM:\t  210000 kB\nVmRSS:\t  200000 kB\nRssAnon:\t  150000 kB\nRssFile:\t   30000 kB\nRssShmem:\t   20000 kB\n";
        assert_eq!(
            parse_status(status),
            Some(ProcessMemory {
                rss_kib: 200_000,
                peak_kib: 210_000,
                anon_kib: 150_000,
                file_kib: 30_000,
                shmem_kib: 20_000,
            })
        );
        assert_eq!(parse_status("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn guest_used_is_total_minus_available() {
        let meminfo = "MemTotal:         490000 kB\nMemFree:          300000 kB\nMemAvailable:     400000 kB\n";
        let guest = parse_meminfo(meminfo).expect("meminfo");
        assert_eq!(guest.used_kib(), 90_000);
        assert_eq!(guest.not_free_kib(), 190_000);
    }

    #[test]
    fn this_process_has_a_resident_set() {
        let ours = process_memory(std::process::id()).expect("own status");
        assert!(ours.rss_kib > 0 && ours.peak_kib >= ours.rss_kib);
    }
}

//! Finding a container's processes through /proc.

use std::path::Path;

fn pid_namespace(proc_root: &Path, pid: i32) -> Option<std::path::PathBuf> {
    std::fs::read_link(proc_root.join(pid.to_string()).join("ns/pid")).ok()
}

/// The pid namespace `pid` is in (`pid:[<inode>]`), or `None` when it is gone.
pub fn pid_namespace_of(pid: i32) -> Option<std::path::PathBuf> {
    pid_namespace(Path::new("/proc"), pid)
}

/// Every pid (as the agent sees it) in the pid namespace that `pid` belongs to, `pid`
/// first. When that namespace is the agent's own (a container without a pid
/// namespace), only `pid` itself is returned: the container's other processes cannot
/// be told apart from the agent's.
pub fn pids_in_pid_namespace_of(pid: i32) -> Vec<i32> {
    pids_sharing_namespace(Path::new("/proc"), pid, std::process::id() as i32)
}

fn pids_sharing_namespace(proc_root: &Path, pid: i32, agent_pid: i32) -> Vec<i32> {
    let Some(target) = pid_namespace(proc_root, pid) else {
        return Vec::new();
    };
    if pid_namespace(proc_root, agent_pid).as_ref() == Some(&target) {
        return vec![pid];
    }
    let mut pids = vec![pid];
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(other) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if other != pid && pid_namespace(proc_root, other).as_ref() == Some(&target) {
            pids.push(other);
        }
    }
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_by_namespace_link() {
        let proc_root = tempfile::tempdir().expect("tempdir");
        for (pid, ns) in [
            (1, "pid:[1]"),
            (10, "pid:[2]"),
            (11, "pid:[2]"),
            (12, "pid:[3]"),
        ] {
            let dir = proc_root.path().join(pid.to_string()).join("ns");
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::os::unix::fs::symlink(ns, dir.join("pid")).expect("link");
        }
        let mut pids = pids_sharing_namespace(proc_root.path(), 10, 1);
        pids.sort();
        assert_eq!(pids, vec![10, 11]);
        assert_eq!(pids_sharing_namespace(proc_root.path(), 1, 1), vec![1]);
        assert!(pids_sharing_namespace(proc_root.path(), 99, 1).is_empty());
    }
}

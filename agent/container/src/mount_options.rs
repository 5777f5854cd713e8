//! Parses the `options` of an OCI mount into mount(2) flags, propagation changes and the
//! filesystem-specific data string, the way runc reads them.

use nix::mount::MsFlags;

/// How one option word changes the mount flags.
enum FlagEffect {
    Set(MsFlags),
    Clear(MsFlags),
}

/// Words that turn into mount(2) flags; everything else is filesystem data (`size=64k`,
/// `mode=755`, `newinstance`, ...).
fn flag_effect(word: &str) -> Option<FlagEffect> {
    use FlagEffect::{Clear, Set};
    let effect = match word {
        "async" => Clear(MsFlags::MS_SYNCHRONOUS),
        "atime" => Clear(MsFlags::MS_NOATIME),
        "bind" => Set(MsFlags::MS_BIND),
        "defaults" => Set(MsFlags::empty()),
        "dev" => Clear(MsFlags::MS_NODEV),
        "diratime" => Clear(MsFlags::MS_NODIRATIME),
        "dirsync" => Set(MsFlags::MS_DIRSYNC),
        "exec" => Clear(MsFlags::MS_NOEXEC),
        "mand" => Set(MsFlags::MS_MANDLOCK),
        "noatime" => Set(MsFlags::MS_NOATIME),
        "nodev" => Set(MsFlags::MS_NODEV),
        "nodiratime" => Set(MsFlags::MS_NODIRATIME),
        "noexec" => Set(MsFlags::MS_NOEXEC),
        "nomand" => Clear(MsFlags::MS_MANDLOCK),
        "norelatime" => Clear(MsFlags::MS_RELATIME),
        "nostrictatime" => Clear(MsFlags::MS_STRICTATIME),
        "nosuid" => Set(MsFlags::MS_NOSUID),
        "rbind" => Set(MsFlags::MS_BIND.union(MsFlags::MS_REC)),
        "relatime" => Set(MsFlags::MS_RELATIME),
        "remount" => Set(MsFlags::MS_REMOUNT),
        "ro" => Set(MsFlags::MS_RDONLY),
        "rw" => Clear(MsFlags::MS_RDONLY),
        "strictatime" => Set(MsFlags::MS_STRICTATIME),
        "suid" => Clear(MsFlags::MS_NOSUID),
        "sync" => Set(MsFlags::MS_SYNCHRONOUS),
        _ => return None,
    };
    Some(effect)
}

/// Propagation words; each becomes its own mount(2) call after the mount itself, because the
/// kernel refuses propagation flags combined with others.
fn propagation_flag(word: &str) -> Option<MsFlags> {
    let flag = match word {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    };
    Some(flag)
}

/// Option words that only steer the runtime (containerd and CRI add them) and mean nothing to
/// the kernel.
fn is_runtime_only(word: &str) -> bool {
    matches!(word, "tmpcopyup" | "notmpcopyup" | "copy-symlink")
}

/// The parsed form of one OCI mount's `options`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountOptions {
    /// Flags for the mount(2) call itself (includes `MS_BIND`/`MS_REC` for binds).
    pub flags: MsFlags,
    /// Propagation changes applied after the mount, in the order given.
    pub propagation: Vec<MsFlags>,
    /// Filesystem data, comma-joined in the order given (`None` when empty).
    pub data: Option<String>,
}

impl MountOptions {
    /// Parses option words; unknown words are passed to the filesystem as data, so the kernel
    /// (not this parser) decides whether they are valid.
    pub fn parse<S: AsRef<str>>(options: &[S]) -> Self {
        let mut flags = MsFlags::empty();
        let mut propagation = Vec::new();
        let mut data: Vec<&str> = Vec::new();
        for word in options.iter().map(AsRef::as_ref) {
            if let Some(effect) = flag_effect(word) {
                match effect {
                    FlagEffect::Set(f) => flags.insert(f),
                    FlagEffect::Clear(f) => flags.remove(f),
                }
            } else if let Some(p) = propagation_flag(word) {
                propagation.push(p);
            } else if !is_runtime_only(word) && !word.is_empty() {
                data.push(word);
            }
        }
        let data = (!data.is_empty()).then(|| data.join(","));
        MountOptions {
            flags,
            propagation,
            data,
        }
    }

    /// Whether this is a bind mount (`bind` or `rbind`).
    pub fn is_bind(&self) -> bool {
        self.flags.contains(MsFlags::MS_BIND)
    }

    /// The flags a bind mount needs in a second, remounting call: the kernel ignores `ro`,
    /// `nosuid`, ... on the initial MS_BIND, so runc remounts to apply them.
    pub fn bind_remount_flags(&self) -> Option<MsFlags> {
        let extra = self.flags - (MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        (!extra.is_empty()).then_some(MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra)
    }
}

/// The propagation the OCI `linux.rootfsPropagation` asks for on `/` before the rootfs is
/// prepared; runc's default is recursive slave so host mounts still reach the container but
/// nothing the container mounts leaks back.
pub(crate) fn rootfs_propagation(value: Option<&str>) -> Result<MsFlags, String> {
    match value {
        None | Some("") => Ok(MsFlags::MS_SLAVE | MsFlags::MS_REC),
        Some(word) => propagation_flag(word).ok_or_else(|| word.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_bind_needs_a_remount() {
        let o = MountOptions::parse(&["rbind", "ro", "nosuid", "nodev"]);
        assert!(o.is_bind());
        assert_eq!(
            o.flags,
            MsFlags::MS_BIND
                | MsFlags::MS_REC
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
        );
        assert_eq!(
            o.bind_remount_flags(),
            Some(
                MsFlags::MS_BIND
                    | MsFlags::MS_REMOUNT
                    | MsFlags::MS_RDONLY
                    | MsFlags::MS_NOSUID
                    | MsFlags::MS_NODEV
            )
        );
        assert_eq!(o.data, None);
    }

    #[test]
    fn plain_bind_needs_no_remount() {
        assert_eq!(MountOptions::parse(&["bind"]).bind_remount_flags(), None);
    }

    #[test]
    fn later_words_override_earlier_ones() {
        let o = MountOptions::parse(&["ro", "rw", "nosuid", "suid", "noexec"]);
        assert_eq!(o.flags, MsFlags::MS_NOEXEC);
    }

    #[test]
    fn unknown_words_become_filesystem_data_in_order() {
        let o = MountOptions::parse(&[
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
            "gid=5",
        ]);
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC);
        assert_eq!(
            o.data.as_deref(),
            Some("newinstance,ptmxmode=0666,mode=0620,gid=5")
        );
    }

    #[test]
    fn propagation_words_are_kept_apart() {
        let o = MountOptions::parse(&["rbind", "rslave", "private"]);
        assert_eq!(
            o.propagation,
            vec![MsFlags::MS_SLAVE | MsFlags::MS_REC, MsFlags::MS_PRIVATE]
        );
        assert_eq!(o.flags, MsFlags::MS_BIND | MsFlags::MS_REC);
    }

    #[test]
    fn runtime_only_words_are_dropped() {
        let o = MountOptions::parse(&["tmpcopyup", "size=65536k"]);
        assert_eq!(o.data.as_deref(), Some("size=65536k"));
    }

    #[test]
    fn rootfs_propagation_defaults_to_recursive_slave() {
        assert_eq!(
            rootfs_propagation(None),
            Ok(MsFlags::MS_SLAVE | MsFlags::MS_REC)
        );
        assert_eq!(rootfs_propagation(Some("private")), Ok(MsFlags::MS_PRIVATE));
        assert_eq!(rootfs_propagation(Some("bogus")), Err("bogus".into()));
    }
}

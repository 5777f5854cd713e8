//! A small writer for the "newc" cpio format (`070701`), the format the Linux kernel unpacks
//! as an initramfs.
//!
//! Written here rather than taken from a crate because reproducibility is the point: the
//! writer takes no metadata from the host file system. Every entry's inode number, owner,
//! timestamp and link count is decided by [`Archive`], so the same entries always give the
//! same bytes.
//!
//! Layout of one entry: a 110-byte ASCII header (`070701` then 13 fields of 8 hex digits:
//! ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor,
//! namesize, check), the NUL-terminated name padded to a multiple of 4 bytes, then the data
//! padded to a multiple of 4 bytes. The archive ends with an entry named `TRAILER!!!` and is
//! padded to a 512-byte block as GNU cpio does.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";
const HEADER_LEN: usize = 110;
const BLOCK: u64 = 512;

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;

/// The first inode number given out; entries are numbered in path order from here.
const FIRST_INODE: u32 = 1;

/// Errors from adding entries to or writing a cpio archive.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// An entry path is empty, absolute, not UTF-8-clean or walks upward.
    #[error("invalid archive path {path:?}: use a relative path without '..' components")]
    InvalidPath {
        /// The rejected path.
        path: String,
    },
    /// Two entries were added under the same path with different contents.
    #[error("archive path {path:?} was added twice; each path may appear once")]
    DuplicatePath {
        /// The duplicated path.
        path: String,
    },
    /// A source file could not be inspected.
    #[error("cannot stat {path}: {source}")]
    StatSource {
        /// The source file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A source file is larger than newc's 32-bit size field allows.
    #[error("{path} is {size} bytes; newc cpio holds files up to 4 GiB")]
    TooLarge {
        /// The source file.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
    /// A source file changed size between being added and being written.
    #[error("{path} changed while the archive was written (expected {expected} bytes, read {read}); rebuild")]
    SourceChanged {
        /// The source file.
        path: PathBuf,
        /// Size recorded when the entry was added.
        expected: u64,
        /// Bytes actually read.
        read: u64,
    },
    /// Reading a source file failed.
    #[error("cannot read {path}: {source}")]
    ReadSource {
        /// The source file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Writing the archive failed.
    #[error("cannot write the cpio archive: {0}")]
    Write(#[source] io::Error),
}

/// Where an entry's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Body {
    Directory,
    CharDevice { major: u32, minor: u32 },
    Bytes(Vec<u8>),
    File { path: PathBuf, size: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    permissions: u32,
    body: Body,
}

/// An in-memory description of an archive, written with fixed metadata.
///
/// Entries are kept sorted by path; parent directories are added automatically (mode 0755),
/// so a file's directory always precedes it in the archive as the kernel requires.
#[derive(Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    /// Creates an empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a directory with the given permission bits.
    pub fn add_directory(&mut self, path: &str, permissions: u32) -> Result<(), CpioError> {
        self.insert(path, permissions, Body::Directory)
    }

    /// Adds a regular file holding `data`.
    pub fn add_bytes(
        &mut self,
        path: &str,
        permissions: u32,
        data: Vec<u8>,
    ) -> Result<(), CpioError> {
        self.insert(path, permissions, Body::Bytes(data))
    }

    /// Adds a regular file whose bytes are read from `source` when the archive is written.
    pub fn add_file(
        &mut self,
        path: &str,
        permissions: u32,
        source: &Path,
    ) -> Result<(), CpioError> {
        let size = std::fs::metadata(source)
            .map_err(|source_err| CpioError::StatSource {
                path: source.to_path_buf(),
                source: source_err,
            })?
            .len();
        let size = u32::try_from(size).map_err(|_| CpioError::TooLarge {
            path: source.to_path_buf(),
            size,
        })?;
        let body = Body::File {
            path: source.to_path_buf(),
            size,
        };
        self.insert(path, permissions, body)
    }

    /// Adds a character device node.
    pub fn add_char_device(
        &mut self,
        path: &str,
        permissions: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        self.insert(path, permissions, Body::CharDevice { major, minor })
    }

    /// The archive's paths in the order they will be written.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Writes the archive to `out` and returns the number of bytes written.
    pub fn write_to<W: Write>(&self, out: &mut W) -> Result<u64, CpioError> {
        let mut counter = CountingWriter {
            inner: out,
            written: 0,
        };
        for (inode, (path, entry)) in (FIRST_INODE..).zip(&self.entries) {
            write_entry(&mut counter, inode, path, entry)?;
        }
        write_trailer(&mut counter)?;
        let padding = pad_len(counter.written, BLOCK);
        write_zeros(&mut counter, padding)?;
        Ok(counter.written)
    }

    fn insert(&mut self, path: &str, permissions: u32, body: Body) -> Result<(), CpioError> {
        let path = normalize(path)?;
        self.add_parents(&path)?;
        let entry = Entry {
            permissions: permissions & 0o7777,
            body,
        };
        match self.entries.get(&path) {
            None => {
                self.entries.insert(path, entry);
                Ok(())
            }
            // Re-adding an identical directory is what add_parents does; allow it.
            Some(existing) if *existing == entry && entry.body == Body::Directory => Ok(()),
            Some(_) => Err(CpioError::DuplicatePath { path }),
        }
    }

    fn add_parents(&mut self, path: &str) -> Result<(), CpioError> {
        let mut parent = Path::new(path).parent();
        while let Some(dir) = parent.filter(|dir| !dir.as_os_str().is_empty()) {
            let dir_str = dir.to_string_lossy().into_owned();
            match self.entries.get(&dir_str) {
                Some(entry) if entry.body == Body::Directory => {}
                Some(_) => return Err(CpioError::DuplicatePath { path: dir_str }),
                None => {
                    let entry = Entry {
                        permissions: 0o755,
                        body: Body::Directory,
                    };
                    self.entries.insert(dir_str, entry);
                }
            }
            parent = dir.parent();
        }
        Ok(())
    }
}

fn normalize(path: &str) -> Result<String, CpioError> {
    let trimmed = path.trim_start_matches('/').trim_end_matches('/');
    let invalid = || CpioError::InvalidPath {
        path: path.to_owned(),
    };
    if trimmed.is_empty() || trimmed.contains('\0') {
        return Err(invalid());
    }
    if trimmed
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(invalid());
    }
    Ok(trimmed.to_owned())
}

struct Header {
    inode: u32,
    mode: u32,
    nlink: u32,
    file_size: u32,
    rdev_major: u32,
    rdev_minor: u32,
}

fn write_entry<W: Write>(
    out: &mut CountingWriter<W>,
    inode: u32,
    path: &str,
    entry: &Entry,
) -> Result<(), CpioError> {
    let (kind, nlink, file_size, rdev_major, rdev_minor) = match &entry.body {
        Body::Directory => (S_IFDIR, 2, 0, 0, 0),
        Body::CharDevice { major, minor } => (S_IFCHR, 1, 0, *major, *minor),
        Body::Bytes(data) => (S_IFREG, 1, byte_len(data)?, 0, 0),
        Body::File { size, .. } => (S_IFREG, 1, *size, 0, 0),
    };
    let header = Header {
        inode,
        mode: kind | entry.permissions,
        nlink,
        file_size,
        rdev_major,
        rdev_minor,
    };
    write_header_and_name(out, &header, path)?;
    match &entry.body {
        Body::Bytes(data) => out.write_all(data).map_err(CpioError::Write)?,
        Body::File { path, size } => copy_file(out, path, u64::from(*size))?,
        Body::Directory | Body::CharDevice { .. } => {}
    }
    let padding = pad_len(u64::from(file_size), 4);
    write_zeros(out, padding)
}

fn write_trailer<W: Write>(out: &mut CountingWriter<W>) -> Result<(), CpioError> {
    let header = Header {
        inode: 0,
        mode: 0,
        nlink: 1,
        file_size: 0,
        rdev_major: 0,
        rdev_minor: 0,
    };
    write_header_and_name(out, &header, TRAILER)
}

fn write_header_and_name<W: Write>(
    out: &mut CountingWriter<W>,
    header: &Header,
    name: &str,
) -> Result<(), CpioError> {
    let name_size = byte_len(name.as_bytes())? + 1;
    // uid, gid, mtime, devmajor, devminor and check are always 0: owners root, epoch time.
    let text = format!(
        "{MAGIC}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
        header.inode,
        header.mode,
        0,
        0,
        header.nlink,
        0,
        header.file_size,
        0,
        0,
        header.rdev_major,
        header.rdev_minor,
        name_size,
        0
    );
    debug_assert_eq!(text.len(), HEADER_LEN);
    out.write_all(text.as_bytes()).map_err(CpioError::Write)?;
    out.write_all(name.as_bytes()).map_err(CpioError::Write)?;
    out.write_all(&[0]).map_err(CpioError::Write)?;
    let padding = pad_len((HEADER_LEN as u64) + u64::from(name_size), 4);
    write_zeros(out, padding)
}

fn copy_file<W: Write>(
    out: &mut CountingWriter<W>,
    path: &Path,
    expected: u64,
) -> Result<(), CpioError> {
    let file = File::open(path).map_err(|source| CpioError::ReadSource {
        path: path.to_path_buf(),
        source,
    })?;
    // Read one byte more than expected so that a file that grew is noticed.
    let mut limited = file.take(expected + 1);
    let read = io::copy(&mut limited, out).map_err(|source| CpioError::ReadSource {
        path: path.to_path_buf(),
        source,
    })?;
    if read != expected {
        return Err(CpioError::SourceChanged {
            path: path.to_path_buf(),
            expected,
            read,
        });
    }
    Ok(())
}

fn byte_len(data: &[u8]) -> Result<u32, CpioError> {
    u32::try_from(data.len()).map_err(|_| CpioError::TooLarge {
        path: PathBuf::from("<in-memory entry>"),
        size: data.len() as u64,
    })
}

fn pad_len(len: u64, align: u64) -> u64 {
    (align - len % align) % align
}

fn write_zeros<W: Write>(out: &mut W, count: u64) -> Result<(), CpioError> {
    io::copy(&mut io::repeat(0).take(count), out).map_err(CpioError::Write)?;
    Ok(())
}

struct CountingWriter<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn sample_archive(dir: &Path) -> Archive {
        let source = dir.join("source.bin");
        std::fs::write(&source, b"from a file\n").unwrap();
        let mut archive = Archive::new();
        archive.add_file("/init", 0o755, &source).unwrap();
        archive
            .add_bytes("etc/veil/modules.load", 0o644, b"/lib/a.ko\n".to_vec())
            .unwrap();
        archive
            .add_bytes("etc/odd", 0o600, b"abc".to_vec())
            .unwrap();
        archive.add_char_device("dev/console", 0o600, 5, 1).unwrap();
        archive.add_directory("empty", 0o700).unwrap();
        archive
    }

    fn written(archive: &Archive) -> Vec<u8> {
        let mut bytes = Vec::new();
        let len = archive.write_to(&mut bytes).unwrap();
        assert_eq!(len, bytes.len() as u64);
        bytes
    }

    fn run_cpio(args: &[&str], input: &[u8], cwd: &Path) -> String {
        let mut child = Command::new("cpio")
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("GNU cpio is needed for this test: apt-get install -y cpio");
        child.stdin.take().unwrap().write_all(input).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "cpio {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    #[test]
    fn entries_are_sorted_with_parents_first() {
        let dir = tempfile::tempdir().unwrap();
        let archive = sample_archive(dir.path());
        let paths: Vec<&str> = archive.paths().collect();
        assert_eq!(
            paths,
            [
                "dev",
                "dev/console",
                "empty",
                "etc",
                "etc/odd",
                "etc/veil",
                "etc/veil/modules.load",
                "init"
            ]
        );
    }

    #[test]
    fn same_entries_give_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let first = written(&sample_archive(dir.path()));
        let second = written(&sample_archive(dir.path()));
        assert_eq!(first, second);
        assert_eq!(first.len() % 512, 0);
    }

    #[test]
    fn gnu_cpio_lists_every_entry_with_fixed_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = written(&sample_archive(dir.path()));
        let listing = run_cpio(&["-t", "-v", "--quiet"], &bytes, dir.path());
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 8, "{listing}");
        assert!(lines[1].starts_with("crw-------"), "{}", lines[1]);
        assert!(lines[1].contains("5,"), "{}", lines[1]);
        assert!(lines[7].starts_with("-rwxr-xr-x"), "{}", lines[7]);
        assert!(
            lines
                .iter()
                .all(|line| line.contains(" root ") || line.contains(" 0 ")),
            "{listing}"
        );
        assert!(lines.iter().all(|line| line.contains("1970")), "{listing}");
    }

    #[test]
    fn gnu_cpio_extracts_the_same_bytes_and_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut archive = sample_archive(dir.path());
        // Device nodes need CAP_MKNOD to extract; keep this test about files and dirs.
        archive.entries.remove("dev/console");
        archive.entries.remove("dev");
        let bytes = written(&archive);
        let target = dir.path().join("extracted");
        std::fs::create_dir(&target).unwrap();
        run_cpio(
            &["-i", "-d", "--quiet", "--no-absolute-filenames"],
            &bytes,
            &target,
        );
        assert_eq!(
            std::fs::read(target.join("init")).unwrap(),
            b"from a file\n"
        );
        assert_eq!(
            std::fs::read(target.join("etc/veil/modules.load")).unwrap(),
            b"/lib/a.ko\n"
        );
        assert_eq!(std::fs::read(target.join("etc/odd")).unwrap(), b"abc");
        let mode = |path: &str| {
            std::fs::metadata(target.join(path))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("init"), 0o755);
        assert_eq!(mode("etc/odd"), 0o600);
        assert!(target.join("empty").is_dir());
    }

    #[test]
    fn rejects_paths_that_escape_or_repeat() {
        let mut archive = Archive::new();
        assert!(matches!(
            archive.add_bytes("../x", 0o644, vec![]),
            Err(CpioError::InvalidPath { .. })
        ));
        assert!(matches!(
            archive.add_bytes("", 0o644, vec![]),
            Err(CpioError::InvalidPath { .. })
        ));
        assert!(matches!(
            archive.add_bytes("a//b", 0o644, vec![]),
            Err(CpioError::InvalidPath { .. })
        ));
        archive.add_bytes("a/b", 0o644, vec![1]).unwrap();
        assert!(matches!(
            archive.add_bytes("a/b", 0o644, vec![2]),
            Err(CpioError::DuplicatePath { .. })
        ));
        assert!(matches!(
            archive.add_bytes("a/b/c", 0o644, vec![]),
            Err(CpioError::DuplicatePath { .. })
        ));
    }

    #[test]
    fn a_file_that_changes_size_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("grows");
        std::fs::write(&source, b"1234").unwrap();
        let mut archive = Archive::new();
        archive.add_file("grows", 0o644, &source).unwrap();
        std::fs::write(&source, b"12345").unwrap();
        let result = archive.write_to(&mut Vec::new());
        assert!(
            matches!(
                result,
                Err(CpioError::SourceChanged {
                    expected: 4,
                    read: 5,
                    ..
                })
            ),
            "{result:?}"
        );
    }
}

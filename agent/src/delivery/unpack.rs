//! Unpacking a verified model archive (tar or tar.gz) inside its memory volume.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Unpacking failed.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The archive could not be read.
    #[error("read the archive {archive}: {source}")]
    Read {
        /// The archive.
        archive: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An entry could not be written.
    #[error("unpack {entry:?} into {dir}: {source}")]
    Entry {
        /// The entry's path in the archive.
        entry: String,
        /// The target directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An entry points outside the target directory.
    #[error("entry {entry:?} would land outside {dir}; the archive is refused")]
    Escapes {
        /// The entry's path in the archive.
        entry: String,
        /// The target directory.
        dir: PathBuf,
    },
}

/// Unpacks the tar archive `archive` (gzip-compressed when `gzip`) into `dir`, which is
/// created if needed. Entries are written one by one with tar's path checks; any entry
/// that would escape `dir` refuses the whole archive. Returns the number of entries.
pub fn unpack_archive(archive: &Path, gzip: bool, dir: &Path) -> Result<u64, UnpackError> {
    let read_error = |source| UnpackError::Read {
        archive: archive.to_path_buf(),
        source,
    };
    let file = File::open(archive).map_err(read_error)?;
    let stream: Box<dyn Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    std::fs::create_dir_all(dir).map_err(|source| UnpackError::Entry {
        entry: String::new(),
        dir: dir.to_path_buf(),
        source,
    })?;
    let mut tar = tar::Archive::new(stream);
    tar.set_preserve_permissions(true);
    tar.set_overwrite(true);
    let mut count = 0;
    for entry in tar.entries().map_err(read_error)? {
        let mut entry = entry.map_err(read_error)?;
        let name = entry.path().map_or_else(
            |_| "<non-UTF-8 path>".to_string(),
            |p| p.display().to_string(),
        );
        let inside = entry.unpack_in(dir).map_err(|source| UnpackError::Entry {
            entry: name.clone(),
            dir: dir.to_path_buf(),
            source,
        })?;
        if !inside {
            return Err(UnpackError::Escapes {
                entry: name,
                dir: dir.to_path_buf(),
            });
        }
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(dir: &Path, gzip: bool, entries: &[(&str, &[u8])]) -> PathBuf {
        let path = dir.join(if gzip { "a.tar.gz" } else { "a.tar" });
        let file = File::create(&path).expect("create");
        let writer: Box<dyn std::io::Write> = if gzip {
            Box::new(flate2::write::GzEncoder::new(
                file,
                flate2::Compression::fast(),
            ))
        } else {
            Box::new(file)
        };
        let mut builder = tar::Builder::new(writer);
        for (name, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            // Written raw so that hostile names like "../x" reach the archive unchanged.
            let bytes = header.as_old_mut();
            bytes.name[..name.len()].copy_from_slice(name.as_bytes());
            header.set_cksum();
            builder.append(&header, *data).expect("append");
        }
        builder
            .into_inner()
            .expect("finish")
            .flush()
            .expect("flush");
        path
    }

    #[test]
    fn unpacks_tar_and_tar_gz() {
        for gzip in [false, true] {
            let scratch = tempfile::tempdir().expect("tempdir");
            let path = archive(
                scratch.path(),
                gzip,
                &[("m/config.json", b"{}"), ("m/weights", b"w")],
            );
            let dest = scratch.path().join("out");
            assert_eq!(unpack_archive(&path, gzip, &dest).expect("unpack"), 2);
            assert_eq!(std::fs::read(dest.join("m/weights")).expect("read"), b"w");
        }
    }

    #[test]
    fn an_escaping_entry_refuses_the_archive() {
        let scratch = tempfile::tempdir().expect("tempdir");
        let path = archive(scratch.path(), false, &[("../evil", b"x")]);
        let dest = scratch.path().join("out");
        let error = unpack_archive(&path, false, &dest).expect_err("escapes");
        assert!(matches!(error, UnpackError::Escapes { .. }), "{error}");
        assert!(!scratch.path().join("evil").exists());
    }

    #[test]
    fn a_corrupt_archive_names_itself() {
        let scratch = tempfile::tempdir().expect("tempdir");
        let path = scratch.path().join("bad.tar.gz");
        std::fs::write(&path, b"not gzip at all").expect("write");
        let error = unpack_archive(&path, true, &scratch.path().join("out")).expect_err("corrupt");
        assert!(error.to_string().contains("bad.tar.gz"), "{error}");
    }
}

//! Finding the guest image to install, and building it when there is none.

use std::path::{Path, PathBuf};

use veil_guest_image::{
    BuildImageError, BuildOptions, KernelChoice, INITRAMFS_FILE, MANIFEST_FILE, VMLINUX_FILE,
    VMLINUZ_FILE,
};

/// Files an image must have: both kernels (vmlinux boots by default, vmlinuz is the
/// firmware-boot form the SNP path measures), the initramfs and the manifest.
pub const REQUIRED_FILES: [&str; 4] = [VMLINUZ_FILE, VMLINUX_FILE, INITRAMFS_FILE, MANIFEST_FILE];

/// Where the image to install comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// A directory with a complete image.
    Prebuilt(PathBuf),
    /// The installed image is complete and no other was asked for.
    AlreadyInstalled,
    /// No image: build one with `agent` into `out_dir`, then install it.
    Build {
        /// The static agent.
        agent: PathBuf,
        /// Build output directory.
        out_dir: PathBuf,
    },
}

/// No guest image could be found or built.
#[derive(Debug, thiserror::Error)]
pub enum PrepareImageError {
    /// No image and no agent to build one with.
    #[error(
        "no guest image in {image_dir} and no static veil-agent at {agent} to build one: \
         build the agent (`make agent`) and pass --agent PATH, or pass --image-dir with a \
         built image (`make image` writes build/image)"
    )]
    NoAgent {
        /// Where an image was looked for.
        image_dir: PathBuf,
        /// Where the agent was looked for.
        agent: PathBuf,
    },
    /// The build failed.
    #[error("building the guest image into {out_dir} failed: {source}")]
    Build {
        /// The output directory.
        out_dir: PathBuf,
        /// Why.
        #[source]
        source: BuildImageError,
    },
}

/// Whether `dir` holds every required image file.
pub fn is_complete(dir: &Path) -> bool {
    REQUIRED_FILES.iter().all(|name| dir.join(name).is_file())
}

/// Decides where the image comes from: `image_dir` when it is complete, else the installed
/// image in `share_dir` when no directory was named, else a build into `image_dir` (or
/// `default_build_dir`) with `agent`.
pub fn choose_source(
    image_dir: Option<&Path>,
    share_dir: &Path,
    agent: &Path,
    default_build_dir: &Path,
) -> Result<ImageSource, PrepareImageError> {
    match image_dir {
        Some(dir) if is_complete(dir) => return Ok(ImageSource::Prebuilt(dir.to_path_buf())),
        None if is_complete(share_dir) => return Ok(ImageSource::AlreadyInstalled),
        None if is_complete(default_build_dir) => {
            return Ok(ImageSource::Prebuilt(default_build_dir.to_path_buf()))
        }
        _ => {}
    }
    let out_dir = image_dir.unwrap_or(default_build_dir).to_path_buf();
    if !agent.is_file() {
        return Err(PrepareImageError::NoAgent {
            image_dir: out_dir,
            agent: agent.to_path_buf(),
        });
    }
    Ok(ImageSource::Build {
        agent: agent.to_path_buf(),
        out_dir,
    })
}

/// Builds the image (the library logs each step; this can take minutes on a first build).
pub fn build(agent: &Path, out_dir: &Path) -> Result<PathBuf, PrepareImageError> {
    let options = BuildOptions {
        agent: agent.to_path_buf(),
        out_dir: out_dir.to_path_buf(),
        cache_dir: veil_guest_image::default_cache_dir(),
        kernel: KernelChoice::default(),
    };
    veil_guest_image::build(&options).map_err(|source| PrepareImageError::Build {
        out_dir: out_dir.to_path_buf(),
        source,
    })?;
    Ok(out_dir.to_path_buf())
}

/// The default directory a missing image is built into.
pub fn default_build_dir() -> PathBuf {
    veil_guest_image::default_cache_dir().join("image")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_image(dir: &Path) {
        std::fs::create_dir_all(dir).expect("mkdir");
        for name in REQUIRED_FILES {
            std::fs::write(dir.join(name), name).expect("write");
        }
    }

    #[test]
    fn a_complete_image_dir_is_used_as_is() {
        let root = tempfile::tempdir().expect("tempdir");
        let image = root.path().join("image");
        fake_image(&image);
        let source = choose_source(
            Some(&image),
            &root.path().join("share"),
            &root.path().join("no-agent"),
            &root.path().join("build"),
        )
        .expect("source");
        assert_eq!(source, ImageSource::Prebuilt(image));
    }

    #[test]
    fn an_installed_image_needs_nothing_more() {
        let root = tempfile::tempdir().expect("tempdir");
        let share = root.path().join("share");
        fake_image(&share);
        let source = choose_source(None, &share, &root.path().join("a"), &root.path().join("b"))
            .expect("source");
        assert_eq!(source, ImageSource::AlreadyInstalled);
    }

    #[test]
    fn no_image_means_a_build_with_the_agent() {
        let root = tempfile::tempdir().expect("tempdir");
        let agent = root.path().join("veil-agent");
        std::fs::write(&agent, b"elf").expect("write");
        let image = root.path().join("image");
        let source = choose_source(
            Some(&image),
            &root.path().join("s"),
            &agent,
            Path::new("/x"),
        )
        .expect("source");
        assert_eq!(
            source,
            ImageSource::Build {
                agent,
                out_dir: image
            }
        );
    }

    #[test]
    fn no_image_and_no_agent_says_what_to_do() {
        let root = tempfile::tempdir().expect("tempdir");
        let error = choose_source(
            None,
            &root.path().join("s"),
            &root.path().join("veil-agent"),
            &root.path().join("build"),
        )
        .expect_err("nothing");
        let message = error.to_string();
        assert!(
            message.contains("--agent") && message.contains("veil-agent"),
            "{message}"
        );
    }
}

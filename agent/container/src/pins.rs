//! Mount sources held to what the caller checked.
//!
//! A caller that vets a spec (veil's agent, in a VM that receives a sealed model) resolves
//! the rootfs and each bind source and decides whether the container may have them. The init
//! mounts them later, and a path is resolved again at every use: a file server that answers
//! differently the second time (the node's side of a shared directory) could turn a checked
//! directory into a symlink to the guest's `/` in between. With pins, the init opens each
//! source once (`O_PATH`), reads where the descriptor leads, refuses the container unless that
//! is where the caller saw it lead, and mounts from the descriptor, so the mount is of exactly
//! what was compared.
//!
//! The pinned rootfs is bound onto the builder's rootfs path, which the caller keeps empty
//! and out of the file server's reach: no later step resolves the shared path again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::failure::InitFailure;
use crate::syscall::{OpenedPath, Syscall};

/// One source and where it must lead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// The path as the caller names it.
    pub path: PathBuf,
    /// Where it led when the caller checked it: absolute, without symlinks.
    pub leads_to: PathBuf,
}

/// Where a container's rootfs and bind sources must lead when its init mounts them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePins {
    /// The rootfs to bind onto the builder's rootfs path (an empty directory the caller
    /// owns). `None`: the builder's rootfs path is the rootfs, as without pins (a copy the
    /// caller made in its own memory, say).
    pub rootfs: Option<Pin>,
    /// Bind sources as the spec writes them, and where each must lead. A bind mount whose
    /// source is not here is refused.
    pub binds: BTreeMap<PathBuf, PathBuf>,
}

impl SourcePins {
    /// Opens the pinned rootfs and checks where it leads.
    pub(crate) fn open_rootfs(&self, sys: &dyn Syscall) -> Result<Option<OpenedPath>, InitFailure> {
        self.rootfs
            .as_ref()
            .map(|pin| open_pinned(sys, &pin.path, &pin.leads_to, "the rootfs"))
            .transpose()
    }

    /// Opens the bind source mounted at `destination` and checks where it leads.
    pub(crate) fn open_bind(
        &self,
        sys: &dyn Syscall,
        source: &Path,
        destination: &Path,
    ) -> Result<OpenedPath, InitFailure> {
        let what = format!("the source of the bind mount at {}", destination.display());
        let leads_to = self.binds.get(source).ok_or_else(|| {
            InitFailure::new(
                format!("mount {what}"),
                format!(
                    "{} was not among the sources the caller checked; the container is not created",
                    source.display()
                ),
            )
        })?;
        open_pinned(sys, source, leads_to, &what)
    }
}

fn open_pinned(
    sys: &dyn Syscall,
    path: &Path,
    leads_to: &Path,
    what: &str,
) -> Result<OpenedPath, InitFailure> {
    let opened = sys.open_path(path).map_err(|errno| {
        InitFailure::from_errno(format!("open {what} {}", path.display()), errno)
    })?;
    if opened.leads_to != leads_to {
        return Err(InitFailure::new(
            format!("open {what} {}", path.display()),
            format!(
                "it now leads to {}, not to {} as when it was checked: the directory changed while the container was created (its file server moved it); the container is not created",
                opened.leads_to.display(),
                leads_to.display()
            ),
        ));
    }
    Ok(opened)
}

//! The shim's one error type and its one conversion to ttrpc status codes.

use std::path::PathBuf;

use containerd_shim::protos::ttrpc;

/// Why a shim operation failed. Each message says what failed and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration could not be loaded.
    #[error(transparent)]
    Config(#[from] veil_config::ConfigError),
    /// A file the VM needs is missing.
    #[error("{what} {path} does not exist: {hint}")]
    MissingFile {
        /// Which file (e.g. "guest kernel").
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What to do about it.
        hint: String,
    },
    /// The request or the bundle is malformed.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// No such container or process in this shim.
    #[error("{0} not found")]
    NotFound(String),
    /// The agent has no such container or process; its message says so.
    #[error("{0}")]
    NotFoundInGuest(String),
    /// A signal for a process that has exited: containerd's clients race with exits (CRI
    /// stops a container that just ended), and take this, as runc's shim gives it, as done.
    #[error("{0} has already finished")]
    Finished(String),
    /// The id is already in use.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The call is not allowed in the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The guest refused: the call would let the node reach a delivered model.
    #[error("{0}")]
    PermissionDenied(String),
    /// The feature is not built yet.
    #[error("{0} is not implemented by the veil runtime yet")]
    Unimplemented(&'static str),
    /// The VM could not be started or stopped.
    #[error("virtual machine: {0}")]
    Vm(String),
    /// The guest agent failed or did not answer.
    #[error("guest agent: {}", veil_protocol::in_context(what, detail))]
    Agent {
        /// What the shim asked for.
        what: String,
        /// The agent's (or the channel's) answer.
        detail: String,
    },
    /// A host-side I/O or syscall error.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// An [`Error::Io`] naming `what` was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }

    fn code(&self) -> ttrpc::Code {
        match self {
            Error::Config(_) | Error::InvalidArgument(_) | Error::MissingFile { .. } => {
                ttrpc::Code::INVALID_ARGUMENT
            }
            Error::NotFound(_) | Error::NotFoundInGuest(_) | Error::Finished(_) => {
                ttrpc::Code::NOT_FOUND
            }
            Error::AlreadyExists(_) => ttrpc::Code::ALREADY_EXISTS,
            Error::FailedPrecondition(_) => ttrpc::Code::FAILED_PRECONDITION,
            Error::PermissionDenied(_) => ttrpc::Code::PERMISSION_DENIED,
            Error::Unimplemented(_) => ttrpc::Code::UNIMPLEMENTED,
            Error::Vm(_) | Error::Agent { .. } | Error::Io { .. } => ttrpc::Code::INTERNAL,
        }
    }
}

/// The whole chain, outermost first, so containerd's user sees the root cause.
pub fn full_message(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

impl From<Error> for ttrpc::Error {
    fn from(error: Error) -> Self {
        let message = full_message(&error);
        // containerd asks about what is gone as part of its own cleanup (the Delete after a
        // failed Create, a kill racing an exit) and takes NOT_FOUND as done; its log has the
        // failures users act on.
        if error.code() == ttrpc::Code::NOT_FOUND {
            tracing::debug!(code = ?error.code(), error = %message, "request refused");
        } else {
            tracing::warn!(code = ?error.code(), error = %message, "request failed");
        }
        ttrpc::Error::RpcStatus(ttrpc::get_status(error.code(), message))
    }
}

/// Result with the shim's error.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    fn status(error: Error) -> ttrpc::Status {
        match ttrpc::Error::from(error) {
            ttrpc::Error::RpcStatus(status) => status,
            other => panic!("expected a status, got {other:?}"),
        }
    }

    #[test]
    fn a_signal_for_a_finished_process_is_not_found_and_says_why() {
        let status = status(Error::Finished("container c".into()));
        assert_eq!(status.code(), ttrpc::Code::NOT_FOUND);
        assert_eq!(status.message(), "container c has already finished");
    }

    #[test]
    fn unimplemented_calls_say_so() {
        let status = status(Error::Unimplemented("Checkpoint"));
        assert_eq!(status.code(), ttrpc::Code::UNIMPLEMENTED);
        assert!(status.message().contains("Checkpoint"));
    }

    #[test]
    fn missing_file_names_file_and_fix() {
        let status = status(Error::MissingFile {
            what: "guest kernel",
            path: "/nope/vmlinuz".into(),
            hint: "run `veil node install`".into(),
        });
        assert_eq!(status.code(), ttrpc::Code::INVALID_ARGUMENT);
        assert!(status.message().contains("/nope/vmlinuz"));
        assert!(status.message().contains("veil node install"));
    }

    #[test]
    fn io_errors_keep_their_cause() {
        let error = Error::io("mount rootfs")(std::io::Error::from_raw_os_error(libc::EPERM));
        let text = status(error).message().to_string();
        assert!(
            text.contains("mount rootfs") && text.contains("not permitted"),
            "{text}"
        );
    }
}

//! The service's errors and their one mapping to ttrpc status codes.

use veil_protocol::ttrpc;

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No container with that id.
    #[error("container {0} not found in the VM")]
    ContainerNotFound(String),
    /// No process with that exec id.
    #[error("process {exec_id} not found in container {container_id}")]
    ProcessNotFound {
        /// The container.
        container_id: String,
        /// The exec id asked for.
        exec_id: String,
    },
    /// The id is taken.
    #[error("{0} already exists in the VM")]
    AlreadyExists(String),
    /// The request is malformed.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// The call is not allowed in the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The call would let the node reach a delivered model.
    #[error("{0}")]
    PermissionDenied(String),
    /// The container runtime failed.
    #[error("{}", veil_protocol::in_context(what, &source.to_string()))]
    Runtime {
        /// What was being done.
        what: String,
        /// The runtime's error.
        source: crate::runtime::RuntimeError,
    },
    /// Configuring the pod network failed.
    #[error("configure the pod network: {0}")]
    Network(#[from] crate::network::NetworkError),
    /// A port-forward call failed.
    #[error(transparent)]
    Forward(#[from] crate::port_forward::ForwardError),
    /// An I/O error on a process stream or a syscall.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

impl ServiceError {
    fn code(&self) -> ttrpc::Code {
        match self {
            ServiceError::ContainerNotFound(_) | ServiceError::ProcessNotFound { .. } => {
                ttrpc::Code::NOT_FOUND
            }
            ServiceError::AlreadyExists(_) => ttrpc::Code::ALREADY_EXISTS,
            ServiceError::InvalidArgument(_) => ttrpc::Code::INVALID_ARGUMENT,
            ServiceError::FailedPrecondition(_) => ttrpc::Code::FAILED_PRECONDITION,
            ServiceError::PermissionDenied(_) => ttrpc::Code::PERMISSION_DENIED,
            ServiceError::Network(crate::network::NetworkError::InvalidPodInterface { .. }) => {
                ttrpc::Code::INVALID_ARGUMENT
            }
            ServiceError::Network(crate::network::NetworkError::AlreadyConfigured) => {
                ttrpc::Code::FAILED_PRECONDITION
            }
            ServiceError::Forward(error) => forward_code(error),
            ServiceError::Runtime { .. } | ServiceError::Io { .. } | ServiceError::Network(_) => {
                ttrpc::Code::INTERNAL
            }
        }
    }
}

fn forward_code(error: &crate::port_forward::ForwardError) -> ttrpc::Code {
    use crate::port_forward::ForwardError;
    match error {
        ForwardError::InvalidPort(_) => ttrpc::Code::INVALID_ARGUMENT,
        ForwardError::TooMany(_) => ttrpc::Code::RESOURCE_EXHAUSTED,
        ForwardError::Connect { .. } => ttrpc::Code::UNAVAILABLE,
        ForwardError::UnknownConnection(_) => ttrpc::Code::NOT_FOUND,
        ForwardError::Io { .. } => ttrpc::Code::INTERNAL,
    }
}

impl From<ServiceError> for ttrpc::Error {
    fn from(error: ServiceError) -> Self {
        let mut message = error.to_string();
        let mut source = std::error::Error::source(&error);
        // The runtime's own chain ("mount proc at /proc: EPERM") is what users need to see.
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = cause.source();
        }
        tracing::warn!(code = ?error.code(), %message, "request failed");
        ttrpc::Error::RpcStatus(ttrpc::get_status(error.code(), message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_maps_to_not_found() {
        let error: ttrpc::Error = ServiceError::ContainerNotFound("c1".into()).into();
        let ttrpc::Error::RpcStatus(status) = error else {
            panic!("expected a status")
        };
        assert_eq!(status.code(), ttrpc::Code::NOT_FOUND);
        assert!(status.message().contains("c1"));
    }

    #[test]
    fn a_runtime_error_that_names_its_exec_is_not_prefixed_with_it_again() {
        let message = |why: &str| {
            let error: ttrpc::Error = ServiceError::Runtime {
                what: "exec e in container c".into(),
                source: Box::new(std::io::Error::other(why.to_string())),
            }
            .into();
            let ttrpc::Error::RpcStatus(status) = error else {
                panic!("expected a status")
            };
            status.message().to_string()
        };
        assert_eq!(
            message("exec e in container c: find executable \"x\": ENOENT"),
            "exec e in container c: find executable \"x\": ENOENT"
        );
        assert_eq!(message("EPERM"), "exec e in container c: EPERM");
    }
}

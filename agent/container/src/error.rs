//! The crate's error, rolling up the error of each verb.

use crate::builder::CreateError;
use crate::delete::DeleteError;
use crate::exec::ExecError;
use crate::signal::SignalError;
use crate::start::StartError;
use crate::stdio::StdioError;

/// Any error of this crate, for callers that handle them alike.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Create failed.
    #[error(transparent)]
    Create(#[from] CreateError),
    /// Start failed.
    #[error(transparent)]
    Start(#[from] StartError),
    /// Exec failed.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// A signal could not be sent.
    #[error(transparent)]
    Signal(#[from] SignalError),
    /// Delete failed.
    #[error(transparent)]
    Delete(#[from] DeleteError),
    /// A pty could not be allocated or resized.
    #[error(transparent)]
    Stdio(#[from] StdioError),
}

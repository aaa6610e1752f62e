//! The errors of the shim's Task service, each carrying the kind
//! containerd maps to its own (`errdefs`: NotFound, AlreadyExists,
//! FailedPrecondition, ...) through the ttrpc status code, and a message
//! naming what is wrong.

use containerd_shim::protos::ttrpc::{self, Code};

/// A failed task operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// The task, exec or sandbox does not exist.
    #[error("{0}")]
    NotFound(String),
    /// It exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// It is in the wrong state for the request.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request or the bundle is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The shim does not do this.
    #[error("{0}")]
    NotImplemented(String),
    /// Something failed on the way (the VM, the guest).
    #[error("{0}")]
    Internal(String),
}

impl TaskError {
    /// The ttrpc status code containerd reads the kind from.
    pub fn code(&self) -> Code {
        match self {
            TaskError::NotFound(_) => Code::NOT_FOUND,
            TaskError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            TaskError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            TaskError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            TaskError::NotImplemented(_) => Code::UNIMPLEMENTED,
            TaskError::Internal(_) => Code::INTERNAL,
        }
    }
}

impl From<TaskError> for ttrpc::Error {
    fn from(e: TaskError) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_keeps_its_code_and_message() {
        let err: ttrpc::Error = TaskError::NotFound("task x does not exist".into()).into();
        let ttrpc::Error::RpcStatus(status) = err else {
            panic!("not a status: {err:?}");
        };
        assert_eq!(status.code(), Code::NOT_FOUND);
        assert_eq!(status.message(), "task x does not exist");
        assert_eq!(
            TaskError::AlreadyExists(String::new()).code(),
            Code::ALREADY_EXISTS
        );
        assert_eq!(
            TaskError::FailedPrecondition(String::new()).code(),
            Code::FAILED_PRECONDITION
        );
    }
}

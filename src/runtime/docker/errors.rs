//! The engine's error answers: their status, their own words, and which are transient.

use crate::runtime::RuntimeError;
use bollard::errors::Error as EngineError;

/// The HTTP status of an engine's error answer.
pub(super) fn status_of(err: &EngineError) -> Option<u16> {
    match err {
        EngineError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The engine's own words, without bollard's wrapping.
pub(super) fn engine_message(err: &EngineError) -> String {
    match err {
        EngineError::DockerResponseServerError { message, .. } => message.clone(),
        EngineError::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}

pub(super) fn transient(action: &str, err: EngineError) -> RuntimeError {
    RuntimeError::Transient(format!("docker: cannot {action}: {err}"))
}

/// The engine answered that this container's logs cannot be read back: 501, its logging
/// driver keeps none; 409, it is dead or being removed. Retrying will not change that.
pub(super) fn unreadable_logs(err: &EngineError) -> bool {
    matches!(status_of(err), Some(409 | 501))
}

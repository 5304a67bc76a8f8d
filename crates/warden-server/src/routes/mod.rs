//! The HTTP handlers, one module per area.

pub mod admin;
pub mod approvals;
pub mod budgets;
pub mod decisions;
pub mod health;
pub mod permits;

use crate::error::ApiError;
use axum::extract::Path;
use axum::extract::rejection::PathRejection;

/// An id from the path (`what` names it: `decision`, `approval`): decoded, printable, and
/// 1 to 64 bytes; anything else is no id of anyone's, said in JSON (400 `invalid_id`).
pub(crate) fn path_id(
    id: Result<Path<String>, PathRejection>,
    what: &str,
) -> Result<String, ApiError> {
    let invalid = || {
        ApiError::bad_request(
            "invalid_id",
            format!("{what} id is 1 to 64 printable characters"),
        )
    };
    let Path(id) = id.map_err(|_| invalid())?;
    if id.is_empty() || id.len() > 64 || !id.chars().all(warden_policy::action::printable) {
        return Err(invalid());
    }
    Ok(id)
}

//! The HTTP handlers, one module per area.

pub mod admin;
pub mod approvals;
pub mod budgets;
pub mod decisions;
pub mod denials;
pub mod health;
pub mod lifecycle;
pub mod permits;
pub mod policy;
pub mod proposals;

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

/// The value of query parameter `name` if it is an identifier: 1 to
/// [`warden_policy::action::MAX_IDENTIFIER`] printable characters (counted as JSON Schema's
/// `maxLength` counts them); otherwise 400 `invalid_query`.
pub(crate) fn identifier_param(name: &str, value: String) -> Result<String, ApiError> {
    let max = warden_policy::action::MAX_IDENTIFIER;
    if value.is_empty()
        || value.chars().count() > max
        || !value.chars().all(warden_policy::action::printable)
    {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("`{name}` must be 1 to {max} printable characters"),
        ));
    }
    Ok(value)
}

/// Parses `query` strictly: only `allowed` names, each at most once.
pub(crate) fn query_pairs(
    query: Option<&str>,
    allowed: &[&str],
) -> Result<Vec<(String, String)>, ApiError> {
    let bad = |detail: String| ApiError::bad_request("invalid_query", detail);
    let mut pairs: Vec<(String, String)> = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, raw) = pair.split_once('=').unwrap_or((pair, ""));
        let value = admin::decode(raw).ok_or_else(|| {
            bad(format!(
                "`{}` is not valid percent-encoded UTF-8",
                name.escape_debug()
            ))
        })?;
        if !allowed.contains(&name) {
            return Err(bad(format!(
                "unknown parameter `{}`; the parameters are {}",
                name.escape_debug(),
                allowed.join(", ")
            )));
        }
        if pairs.iter().any(|(n, _)| n == name) {
            return Err(bad(format!("`{name}` is given more than once")));
        }
        pairs.push((name.to_owned(), value));
    }
    Ok(pairs)
}

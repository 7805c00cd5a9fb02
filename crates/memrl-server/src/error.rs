//! Errors as HTTP answers: a status and a JSON body `{"error": {"kind", "message"}}`.
//!
//! The kind is the library's [`memrl::ErrorKind`] name (`invalid_input`, `not_found`,
//! `conflict`, `overloaded`, `corrupt`, `io`, `internal`) or one of the server's own
//! (`unauthorized`, `forbidden`, `payload_too_large`, `unsupported_media_type`,
//! `method_not_allowed`, `shutting_down`). Messages never contain a key, and the server's data
//! directory is replaced by `<data>` in them.

use std::sync::RwLock;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use memrl::ErrorKind;
use serde::Serialize;

/// Seconds a client is told to wait after a 429.
pub const RETRY_AFTER_SECS: u64 = 1;

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable kind name.
    pub kind: &'static str,
    /// What went wrong, for a person.
    pub message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    kind: &'a str,
    message: &'a str,
}

/// Data directories whose paths are replaced by `<data>` in error messages.
static REDACTED: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Hides `dir` in every later error message.
pub(crate) fn redact_path(dir: &std::path::Path) {
    let mut list = REDACTED.write().unwrap_or_else(|p| p.into_inner());
    let dir = dir.display().to_string();
    if !dir.is_empty() && !list.contains(&dir) {
        // Longest first, so a directory inside another is replaced whole.
        list.push(dir);
        list.sort_by_key(|d| std::cmp::Reverse(d.len()));
    }
}

fn redact(message: &str) -> String {
    let list = REDACTED.read().unwrap_or_else(|p| p.into_inner());
    let mut out = message.to_string();
    for dir in list.iter() {
        out = out.replace(dir.as_str(), "<data>");
    }
    out
}

impl ApiError {
    /// An error of this status and kind.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }

    /// 400: the request is wrong.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_input", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 401: no key, or not a key of this server.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: a key that may not touch this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 413.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    /// 500: a failure of the server (a bug, a stopped thread).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// 503: the server is shutting down.
    pub fn shutting_down() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down; retry against another instance or after it restarts",
        )
    }

    /// The status of a library error kind.
    pub fn status_of(kind: ErrorKind) -> StatusCode {
        match kind {
            ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            // Stored data, the disk, the device: the server's problem, not the request's.
            ErrorKind::Corrupt | ErrorKind::Io | ErrorKind::Internal => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<memrl::Error> for ApiError {
    fn from(e: memrl::Error) -> Self {
        let kind = e.kind();
        Self::new(Self::status_of(kind), kind.as_str(), e.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        match status {
            StatusCode::PAYLOAD_TOO_LARGE => Self::too_large(format!(
                "the request body is larger than the server accepts ({})",
                rejection.body_text()
            )),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::new(
                status,
                "unsupported_media_type",
                "send the body as JSON, with `Content-Type: application/json`",
            ),
            // Syntax (400) and shape (422) errors alike: the body is not what the route takes.
            _ => Self::invalid(rejection.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::invalid(rejection.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = redact(&self.message);
        let body = serde_json::to_vec(&Body {
            error: Detail {
                kind: self.kind,
                message: &message,
            },
        })
        .unwrap_or_else(|_| {
            br#"{"error":{"kind":"internal","message":"unprintable error"}}"#.to_vec()
        });
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match self.status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            }
            StatusCode::UNAUTHORIZED => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"memrl\""),
                );
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_kinds_map_to_statuses() {
        let e: ApiError = memrl::Error::NotFound(3).into();
        assert_eq!((e.status, e.kind), (StatusCode::NOT_FOUND, "not_found"));
        let e: ApiError = memrl::Error::Overloaded {
            pending: 1,
            capacity: 1,
        }
        .into();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        let response = e.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let e: ApiError = memrl::Error::DuplicateId(1).into();
        assert_eq!(e.status, StatusCode::CONFLICT);
    }

    #[test]
    fn data_paths_are_redacted() {
        redact_path(std::path::Path::new("/srv/memrl-test-redact"));
        assert_eq!(
            redact("/srv/memrl-test-redact/a/bank.safetensors: denied"),
            "<data>/a/bank.safetensors: denied"
        );
    }
}

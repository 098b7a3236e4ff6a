//! RFC 9457 problem details: every REST error answer is `application/problem+json`,
//! naming the offending fields for validation errors. A 5xx says nothing about its
//! cause; the cause chain is logged here, once.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{
    domain::{Field, Violation, Violations},
    error::Error,
    wire,
};

pub const CONTENT_TYPE: &str = "application/problem+json";

/// Seconds a client should wait before retrying after a 503.
const RETRY_AFTER_SECS: u64 = 5;

/// A problem details document (RFC 9457).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({
    "type": "urn:mailroom:problem:validation",
    "title": "Invalid input",
    "status": 400,
    "detail": "to: is not an email address (like user@example.com)",
    "errors": [{"field": "to", "code": "address", "message": "is not an email address (like user@example.com)"}]
}))]
pub struct Problem {
    /// A URI identifying the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong this time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Each invalid field, for validation problems.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    #[serde(skip)]
    retry_after: Option<u64>,
}

/// One invalid field.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FieldError {
    /// The field's name in the request (`body` for the request as a whole).
    pub field: String,
    /// A stable machine-readable code, such as `required`, `address`, `length`.
    pub code: String,
    /// What is wrong, for people.
    pub message: String,
}

impl Problem {
    pub fn new(
        status: StatusCode,
        kind: &str,
        title: &str,
        detail: impl Into<Option<String>>,
    ) -> Self {
        Problem {
            kind: kind.to_owned(),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            retry_after: None,
        }
    }

    /// A problem for a bare HTTP status (an unknown route, a wrong method, …).
    pub fn from_status(status: StatusCode) -> Self {
        let title = status.canonical_reason().unwrap_or("Error");
        let mut problem = Problem::new(status, "about:blank", title, None);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            problem.retry_after = Some(RETRY_AFTER_SECS);
        }
        problem
    }

    /// Too many calls: 429 with `Retry-After` (whole seconds, at least 1).
    pub fn rate_limited(wait: std::time::Duration) -> Self {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut problem = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "urn:mailroom:problem:rate-limited",
            "Too Many Requests",
            format!(
                "this API key is over its rate limit; retry in {} s",
                seconds.max(1)
            ),
        );
        problem.retry_after = Some(seconds.max(1));
        problem
    }

    pub fn validation(violations: &Violations) -> Self {
        let mut problem = Problem::new(
            StatusCode::BAD_REQUEST,
            "urn:mailroom:problem:validation",
            "Invalid input",
            wire::describe(violations),
        );
        problem.errors = violations
            .iter()
            .map(|v| FieldError {
                field: wire::json_path(&v.path),
                code: v.code.to_string(),
                message: v.message.to_string(),
            })
            .collect();
        problem
    }

    /// A request that could not be read: malformed JSON, a wrong type, an unknown field.
    pub fn malformed(field: Option<String>, message: String) -> Self {
        let mut problem = Problem::new(
            StatusCode::BAD_REQUEST,
            "urn:mailroom:problem:malformed-request",
            "Malformed request",
            message.clone(),
        );
        problem.errors.push(FieldError {
            field: field.unwrap_or_else(|| wire::json_name(Field::Body).to_owned()),
            code: "malformed".into(),
            message,
        });
        problem
    }

    pub fn violation(violation: Violation) -> Self {
        Problem::validation(&Violations::one(violation))
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = self.retry_after;
        let body = serde_json::to_vec(&self).expect("a problem always serialises");
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<Error> for Problem {
    fn from(err: Error) -> Self {
        match err {
            Error::Validation(violations) => Problem::validation(&violations),
            Error::NotFound(id) => Problem::new(
                StatusCode::NOT_FOUND,
                "urn:mailroom:problem:not-found",
                "Email not found",
                format!("no email has the id {id}"),
            ),
            Error::AttachmentNotFound { id, index } => Problem::new(
                StatusCode::NOT_FOUND,
                "urn:mailroom:problem:not-found",
                "Attachment not found",
                format!("email {id} has no attachment {index} (they count from 0)"),
            ),
            Error::TooLate { id, status, action } => Problem::new(
                StatusCode::CONFLICT,
                "urn:mailroom:problem:too-late",
                "Too late",
                format!("email {id} is {status}: too late to {action} it"),
            ),
            Error::Missing { kind, id } => Problem::new(
                StatusCode::NOT_FOUND,
                "urn:mailroom:problem:not-found",
                "Not found",
                format!("no {kind} has the id {id}"),
            ),
            Error::Conflict(detail) => Problem::new(
                StatusCode::CONFLICT,
                "urn:mailroom:problem:conflict",
                "Conflict",
                detail,
            ),
            Error::MessageTooLarge(too_large) => Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "urn:mailroom:problem:message-too-large",
                "Message too large",
                format!(
                    "the message would take at least {} bytes as delivered (every part encoded); \
                     limits.max_message_bytes allows {}",
                    too_large.size, too_large.limit
                ),
            ),
            Error::IdempotencyConflict { key, existing } => Problem::new(
                StatusCode::CONFLICT,
                "urn:mailroom:problem:idempotency-conflict",
                "Idempotency key reused",
                format!(
                    "the idempotency key {key:?} was already used for email {existing} with different content"
                ),
            ),
            Error::Unavailable { dependency, source } => {
                tracing::error!(%dependency, error = format!("{source:#}"), "answering 503: a dependency is down");
                let mut problem = Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "urn:mailroom:problem:unavailable",
                    "Service unavailable",
                    "a dependency is temporarily unavailable; try again shortly".to_owned(),
                );
                problem.retry_after = Some(RETRY_AFTER_SECS);
                problem
            }
            Error::Internal(source) => {
                tracing::error!(error = format!("{source:#}"), "answering 500");
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "about:blank",
                    "Internal Server Error",
                    "the request could not be completed".to_owned(),
                )
            }
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        Problem::from(self).into_response()
    }
}

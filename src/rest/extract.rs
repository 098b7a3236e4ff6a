//! Extractors whose rejections are problem documents that name the offending field.

use axum::{
    body::Bytes,
    extract::{FromRequest, Request, rejection::BytesRejection},
    http::{StatusCode, header},
};
use serde::{Deserialize, de::DeserializeOwned};
use utoipa::IntoParams;

use super::problem::Problem;
use crate::domain::{Cursor, DEFAULT_LIST_LIMIT, Field, MAX_LIST_LIMIT, Violation};

/// A JSON body. Refuses a missing or non-JSON content type (415), a body over the limit
/// (413), and JSON that does not fit `T` (400, naming the field).
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        if !is_json(&req) {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "urn:mailroom:problem:unsupported-media-type",
                "Unsupported Media Type",
                "the body must be JSON, sent with Content-Type: application/json".to_owned(),
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        let deserializer = &mut serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let path = err.path().to_string();
            let field = (path != ".").then_some(path);
            Problem::malformed(field, json_error_message(err.inner()))
        })?;
        Ok(ApiJson(value))
    }
}

fn is_json(req: &Request) -> bool {
    let Some(content_type) = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn body_rejection(rejection: BytesRejection) -> Problem {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "urn:mailroom:problem:payload-too-large",
            "Payload Too Large",
            "the request body exceeds the size limit".to_owned(),
        )
    } else {
        Problem::malformed(
            None,
            format!("the request body could not be read: {rejection}"),
        )
    }
}

/// serde_json's message, reworded where it would otherwise confuse a caller.
fn json_error_message(err: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match err.classify() {
        Category::Syntax | Category::Eof => format!("the body is not valid JSON: {err}"),
        Category::Data | Category::Io => err.to_string(),
    }
}

/// A page of a listing.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page size, 1 to 100 (default 20).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
    /// Where to continue: the `nextCursor` of the page before.
    pub cursor: Option<String>,
}

/// The cursor and page size a listing asks for.
pub fn page_of(params: &PageParams) -> Result<(Option<Cursor>, u32), Problem> {
    let limit = match params.limit.as_deref() {
        None => DEFAULT_LIST_LIMIT,
        Some(raw) => raw
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_LIST_LIMIT).contains(n))
            .ok_or_else(|| {
                Problem::violation(Violation::new(
                    Field::Limit,
                    "range",
                    format!("must be a whole number from 1 to {MAX_LIST_LIMIT}"),
                ))
            })?,
    };
    let cursor = params
        .cursor
        .as_deref()
        .map(Cursor::decode)
        .transpose()
        .map_err(Problem::violation)?;
    Ok((cursor, limit))
}

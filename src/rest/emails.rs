//! `/api/v1/email`: create, read and search emails.

use axum::{
    Json,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use crate::{
    domain::{EmailDraft, EmailId, Field, SearchQuery, Violation, Violations},
    usecase::{Accepted, Created},
    wire::CreateEmail,
};

use super::{
    AppState,
    auth::{ReadScope, Scoped, SendScope},
    dto::{AcceptedResponse, EmailResponse, SearchParams, SearchResponse},
    extract::ApiJson,
    problem::Problem,
};

pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
pub(super) const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
const PREFERENCE_APPLIED: HeaderName = HeaderName::from_static("preference-applied");

fn location(id: EmailId) -> HeaderValue {
    HeaderValue::from_str(&format!("/api/v1/email/{id}")).expect("a UUID path is a valid header")
}

pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    match headers.get(&IDEMPOTENCY_KEY) {
        None => Ok(None),
        Some(value) => value.to_str().map(|key| Some(key.to_owned())).map_err(|_| {
            Problem::violation(Violation::new(
                Field::IdempotencyKey,
                "characters",
                "must be printable ASCII",
            ))
        }),
    }
}

/// Whether the client asked for `Prefer: respond-async` (RFC 7240).
fn prefers_async(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::HeaderName::from_static("prefer"))
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|preference| {
            preference
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .eq_ignore_ascii_case("respond-async")
        })
}

/// Create an email and queue it for delivery.
///
/// Stores the email and answers 201 with it; delivery follows within seconds. With
/// `Prefer: respond-async` the email is only validated and handed to the create workers
/// over NATS (202, with the id it will get); an email too large to travel as an event is
/// stored right away instead (201). The same `Idempotency-Key` with the same
/// content returns the first email (header `Idempotent-Replayed: true`); with other
/// content, 409.
#[utoipa::path(post, path = "/api/v1/email", operation_id = "createEmail", tag = "emails",
    security(("api_key" = ["send"])),
    request_body = CreateEmail,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: 1 to 255 printable ASCII characters",
            min_length = 1, max_length = 255, pattern = "^[!-~]([ -~]*[!-~])?$"),
        ("Prefer" = Option<String>, Header, description = "`respond-async` to create the email asynchronously"),
    ),
    responses(
        (status = 201, description = "Created", body = EmailResponse,
            headers(("Location" = String, description = "The email's URL"))),
        (status = 202, description = "Accepted for asynchronous creation", body = AcceptedResponse,
            headers(("Location" = String, description = "Where the email will be"))),
        (status = 400, description = "Invalid input", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Idempotency key reused with other content", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over http.body_limit_bytes, or a message over limits.max_message_bytes as delivered", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key lacks the scope this operation needs", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "A dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(name = "rest.create", skip_all)]
pub async fn create(
    State(state): State<AppState>,
    Scoped(client, _): Scoped<SendScope>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<CreateEmail>,
) -> Result<Response, Problem> {
    let draft = EmailDraft {
        idempotency_key: idempotency_key(&headers)?,
        idempotency_client: Some(client.name.to_string()),
        ..request.into_draft()
    };
    if !prefers_async(&headers) {
        return Ok(created(state.mailroom.create(draft).await?));
    }
    let queued = match state.mailroom.accept(draft).await? {
        Accepted::Queued(queued) => queued,
        Accepted::Created(created_now) => return Ok(created(created_now)),
    };
    let body = AcceptedResponse {
        email_id: queued.id.as_uuid(),
        status: "accepted".into(),
    };
    Ok((
        StatusCode::ACCEPTED,
        [
            (header::LOCATION, location(queued.id)),
            (
                PREFERENCE_APPLIED,
                HeaderValue::from_static("respond-async"),
            ),
        ],
        Json(body),
    )
        .into_response())
}

/// 201 with the stored email.
fn created(created: Created) -> Response {
    let mut response = (
        StatusCode::CREATED,
        [(header::LOCATION, location(created.email.id))],
        Json(EmailResponse::from(&created.email)),
    )
        .into_response();
    if created.replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    response
}

/// Get an email by id, with its delivery status.
#[utoipa::path(get, path = "/api/v1/email/{emailID}", operation_id = "getEmail", tag = "emails",
    security(("api_key" = ["read"])),
    params(("emailID" = String, Path, description = "The email's id (a UUID)", format = Uuid)),
    responses(
        (status = 200, description = "The email", body = EmailResponse),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such email", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key lacks the scope this operation needs", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "A dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(name = "rest.get_by_id", skip_all)]
pub async fn get_by_id(
    State(state): State<AppState>,
    _: Scoped<ReadScope>,
    Path(raw_id): Path<String>,
) -> Result<Response, Problem> {
    let id = EmailId::parse(&raw_id, Field::EmailId).map_err(|v| Problem::validation(&v))?;
    let email = state.mailroom.get(id).await?;
    // Encoded once per cached copy: a read served from the local cache sends these bytes.
    let body = state.rendered.body(&email, |email| {
        serde_json::to_vec(&EmailResponse::from(email))
            .expect("an email encodes as JSON")
            .into()
    });
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

/// Download one attachment of an email, by its index (from 0) in `attachments`.
#[utoipa::path(get, path = "/api/v1/email/{emailID}/attachments/{index}", operation_id = "getAttachment", tag = "emails",
    security(("api_key" = ["read"])),
    params(
        ("emailID" = String, Path, description = "The email's id (a UUID)", format = Uuid),
        ("index" = u32, Path, description = "The attachment's place in the email's attachments, from 0"),
    ),
    responses(
        (status = 200, description = "The attachment's bytes, with its own content type", content_type = "*/*",
            headers(("Content-Disposition" = String, description = "attachment, with the file name"))),
        (status = 400, description = "The id is not a UUID, or the index not a number", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such email, or no such attachment", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key lacks the scope this operation needs", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "A dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(name = "rest.attachment", skip_all)]
pub async fn attachment(
    State(state): State<AppState>,
    _: Scoped<ReadScope>,
    Path((raw_id, raw_index)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let id = EmailId::parse(&raw_id, Field::EmailId).map_err(|v| Problem::validation(&v))?;
    let index: usize = raw_index.trim().parse().map_err(|_| {
        Problem::violation(Violation::new(
            Field::Attachments,
            "index",
            "the attachment index must be a number from 0",
        ))
    })?;
    let (meta, content) = state.mailroom.attachment(id, index).await?;
    let content_type = HeaderValue::from_str(&meta.content_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_DISPOSITION,
                content_disposition(&meta.filename),
            ),
        ],
        content,
    )
        .into_response())
}

/// `attachment; filename="…"; filename*=UTF-8''…` (RFC 6266): an ASCII fallback for old
/// clients, the exact name for the others.
fn content_disposition(filename: &str) -> HeaderValue {
    let fallback: String = filename
        .chars()
        .map(|c| {
            if (c.is_ascii_graphic() && c != '"' && c != '\\') || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for byte in filename.bytes() {
        if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    HeaderValue::from_str(&format!(
        "attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// Search emails: full text over recipient, subject and message, newest first.
#[utoipa::path(get, path = "/api/v1/email/search", operation_id = "searchEmails", tag = "emails",
    security(("api_key" = ["read"])),
    params(SearchParams),
    responses(
        (status = 200, description = "One page of results", body = SearchResponse),
        (status = 400, description = "Invalid parameters", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key lacks the scope this operation needs", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "A dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(name = "rest.search", skip_all)]
pub async fn search(
    State(state): State<AppState>,
    _: Scoped<ReadScope>,
    params: Result<Query<SearchParams>, QueryRejection>,
) -> Result<Json<SearchResponse>, Problem> {
    let Query(params) =
        params.map_err(|rejection| Problem::malformed(None, rejection.body_text()))?;
    let mut violations = Vec::new();
    let mut number =
        |raw: Option<&str>, field: Field| match raw.map(str::trim).filter(|s| !s.is_empty()) {
            None => None,
            Some(text) => match text.parse::<i64>() {
                Ok(n) if n >= 1 => Some(n),
                _ => {
                    violations.push(Violation::new(
                        field,
                        "integer",
                        "must be a positive integer",
                    ));
                    None
                }
            },
        };
    let page = number(params.page.as_deref(), Field::Page);
    let size = number(params.size.as_deref(), Field::Size);
    Violations::check(violations).map_err(|v| Problem::validation(&v))?;
    let query = SearchQuery::parse(params.search.as_deref(), page, size)
        .map_err(|v| Problem::validation(&v))?;
    Ok(Json(state.mailroom.search(query).await?.into()))
}

//! `/api/v1/email`: create, read and search emails.

use axum::{
    Json,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use crate::{
    domain::{Email, EmailId, Field, SearchQuery, Violation, Violations},
    usecase::{Accepted, Created},
};

use super::{
    AppState,
    dto::{AcceptedResponse, CreateEmailRequest, EmailResponse, SearchParams, SearchResponse},
    extract::ApiJson,
    problem::Problem,
};

pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
const PREFERENCE_APPLIED: HeaderName = HeaderName::from_static("preference-applied");

fn location(id: EmailId) -> HeaderValue {
    HeaderValue::from_str(&format!("/api/v1/email/{id}")).expect("a UUID path is a valid header")
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
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
#[utoipa::path(post, path = "/api/v1/email", tag = "emails",
    security(("api_key" = [])),
    request_body = CreateEmailRequest,
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
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "A dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(name = "rest.create", skip_all)]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<CreateEmailRequest>,
) -> Result<Response, Problem> {
    let draft = request.into_draft(idempotency_key(&headers)?);
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
        Json(EmailResponse::from(created.email)),
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
#[utoipa::path(get, path = "/api/v1/email/{emailID}", tag = "emails",
    security(("api_key" = [])),
    params(("emailID" = String, Path, description = "The email's id (a UUID)", format = Uuid)),
    responses(
        (status = 200, description = "The email", body = EmailResponse),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such email", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "A dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(name = "rest.get_by_id", skip_all)]
pub async fn get_by_id(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
) -> Result<Response, Problem> {
    let id = EmailId::parse(&raw_id, Field::EmailId).map_err(|v| Problem::validation(&v))?;
    let email = state.mailroom.get(id).await?;
    Ok(Json(EmailResponse::from(Email::clone(&email))).into_response())
}

/// Search emails: full text over recipient, subject and message, newest first.
#[utoipa::path(get, path = "/api/v1/email/search", tag = "emails",
    security(("api_key" = [])),
    params(SearchParams),
    responses(
        (status = 200, description = "One page of results", body = SearchResponse),
        (status = 400, description = "Invalid parameters", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "A dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(name = "rest.search", skip_all)]
pub async fn search(
    State(state): State<AppState>,
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

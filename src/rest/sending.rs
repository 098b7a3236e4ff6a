//! The sending API on REST: batches, the filtered listing, cancel, reschedule and the
//! attempts of an email.

use axum::{
    Json,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};

use crate::{
    domain::{EmailId, Field, ListParams as DomainListParams, ListQuery, Violation},
    wire::CreateEmail,
};

use super::{
    AppState,
    auth::{ReadScope, Scoped, SendScope},
    dto::{
        AttemptResponse, AttemptsResponse, BatchRequest, BatchResponse, EmailResponse, ListParams,
        ListResponse, RescheduleRequest,
    },
    emails::{IDEMPOTENT_REPLAYED, idempotency_key},
    extract::ApiJson,
    problem::Problem,
};

fn email_id(raw: &str) -> Result<EmailId, Problem> {
    EmailId::parse(raw, Field::EmailId).map_err(|v| Problem::validation(&v))
}

/// Create several emails at once: all of them, or (when one is invalid) none.
///
/// Every email is checked as `POST /api/v1/email` checks one; a violation is named under
/// its email (`emails[7].to`). The emails are stored in one transaction and answered in
/// the order given. An `Idempotency-Key` covers the whole batch: the same key with the
/// same emails answers the emails of the first request again (`Idempotent-Replayed:
/// true`); with other emails, 409.
#[utoipa::path(post, path = "/api/v1/email/batch", operation_id = "createEmailBatch", tag = "emails",
    security(("api_key" = ["send"])),
    request_body = BatchRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Makes retries of the batch safe: 1 to 255 printable ASCII characters",
            min_length = 1, max_length = 255, pattern = "^[!-~]([ -~]*[!-~])?$"),
    ),
    responses(
        (status = 201, description = "Every email stored", body = BatchResponse),
        (status = 400, description = "An email is invalid: nothing was stored", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Idempotency key reused for another batch", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over http.body_limit_bytes", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key lacks the scope this operation needs", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "A dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(name = "rest.create_batch", skip_all)]
pub async fn create_batch(
    State(state): State<AppState>,
    Scoped(client, _): Scoped<SendScope>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<BatchRequest>,
) -> Result<Response, Problem> {
    let key = idempotency_key(&headers)?;
    let drafts = request
        .emails
        .into_iter()
        .map(CreateEmail::into_draft)
        .collect();
    let batch = state
        .mailroom
        .create_batch(drafts, &client.name, key)
        .await?;
    let body = BatchResponse {
        emails: batch.emails.iter().map(EmailResponse::from).collect(),
    };
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    if batch.replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// List emails, newest first, filtered and paged.
///
/// Every filter is optional and they combine. Pages follow one another by cursor: pass
/// `nextCursor` as `cursor` for the next page (it is null on the last one); a cursor not
/// made by this service is a 400.
#[utoipa::path(get, path = "/api/v1/email", operation_id = "listEmails", tag = "emails",
    security(("api_key" = ["read"])),
    params(ListParams),
    responses(
        (status = 200, description = "One page", body = ListResponse),
        (status = 400, description = "A bad filter, limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key lacks the scope this operation needs", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "A dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(name = "rest.list", skip_all)]
pub async fn list(
    State(state): State<AppState>,
    _: Scoped<ReadScope>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<ListResponse>, Problem> {
    let Query(params) =
        params.map_err(|rejection| Problem::malformed(None, rejection.body_text()))?;
    let query = ListQuery::parse(DomainListParams {
        status: params.status.as_deref(),
        tag: params.tag.as_deref(),
        to: params.to.as_deref(),
        from: params.from.as_deref(),
        created_after: params.created_after.as_deref(),
        created_before: params.created_before.as_deref(),
        search: params.search.as_deref(),
        limit: params.limit.as_deref(),
        cursor: params.cursor.as_deref(),
    })
    .map_err(|v| Problem::validation(&v))?;
    let page = state.mailroom.list(query).await?;
    Ok(Json(ListResponse {
        emails: page.items.iter().map(EmailResponse::from).collect(),
        next_cursor: page.next.map(|cursor| cursor.encode()),
    }))
}

/// Cancel an email that has not begun to be sent (`scheduled`, `queued` or `deferred`).
///
/// A worker taking the email at the same moment either wins (the email is sent, and this
/// is a 409) or loses (the email is never sent).
#[utoipa::path(post, path = "/api/v1/email/{emailID}/cancel", operation_id = "cancelEmail", tag = "emails",
    security(("api_key" = ["send"])),
    params(("emailID" = String, Path, description = "The email's id (a UUID)", format = Uuid)),
    responses(
        (status = 200, description = "The email, now canceled", body = EmailResponse),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such email", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Too late: the email is sending, sent, failed or canceled", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key lacks the scope this operation needs", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "A dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(name = "rest.cancel", skip_all)]
pub async fn cancel(
    State(state): State<AppState>,
    _: Scoped<SendScope>,
    Path(raw_id): Path<String>,
) -> Result<Json<EmailResponse>, Problem> {
    let email = state.mailroom.cancel(email_id(&raw_id)?).await?;
    Ok(Json(EmailResponse::from(&email)))
}

/// Move a scheduled email to another time.
#[utoipa::path(patch, path = "/api/v1/email/{emailID}", operation_id = "rescheduleEmail", tag = "emails",
    security(("api_key" = ["send"])),
    params(("emailID" = String, Path, description = "The email's id (a UUID)", format = Uuid)),
    request_body = RescheduleRequest,
    responses(
        (status = 200, description = "The email, at its new time", body = EmailResponse),
        (status = 400, description = "A bad id or time", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such email", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Too late: the email is no longer scheduled", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key lacks the scope this operation needs", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "A dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(name = "rest.reschedule", skip_all)]
pub async fn reschedule(
    State(state): State<AppState>,
    _: Scoped<SendScope>,
    Path(raw_id): Path<String>,
    ApiJson(request): ApiJson<RescheduleRequest>,
) -> Result<Json<EmailResponse>, Problem> {
    let id = email_id(&raw_id)?;
    let scheduled_at = request.scheduled_at.ok_or_else(|| {
        Problem::violation(Violation::new(
            Field::ScheduledAt,
            "required",
            "is required",
        ))
    })?;
    let email = state.mailroom.reschedule(id, &scheduled_at).await?;
    Ok(Json(EmailResponse::from(&email)))
}

/// Every delivery attempt of an email, oldest first, with what the SMTP server said.
#[utoipa::path(get, path = "/api/v1/email/{emailID}/attempts", operation_id = "listAttempts", tag = "emails",
    security(("api_key" = ["read"])),
    params(("emailID" = String, Path, description = "The email's id (a UUID)", format = Uuid)),
    responses(
        (status = 200, description = "The attempts", body = AttemptsResponse),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such email", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key lacks the scope this operation needs", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "A dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(name = "rest.attempts", skip_all)]
pub async fn attempts(
    State(state): State<AppState>,
    _: Scoped<ReadScope>,
    Path(raw_id): Path<String>,
) -> Result<Json<AttemptsResponse>, Problem> {
    let attempts = state.mailroom.attempts(email_id(&raw_id)?).await?;
    Ok(Json(AttemptsResponse {
        attempts: attempts.into_iter().map(AttemptResponse::from).collect(),
    }))
}

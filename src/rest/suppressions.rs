//! The suppression list on REST (`admin` scope): list, read, add by hand, remove; and
//! `POST /api/v1/bounces`, where bounce reports (DSNs) and complaints (ARF) come in.

use axum::{
    Json,
    body::Bytes,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::{
    adapters::reports,
    domain::{Field, Suppression, SuppressionReason, Violation},
    usecase::{ReportOutcome, SuppressionAdded},
};

use super::{
    AppState,
    auth::{AdminScope, Scoped},
    extract::{ApiJson, PageParams, page_of},
    problem::Problem,
};

/// Why an address is on the list.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// A server said the mailbox does not exist.
    HardBounce,
    /// The recipient reported a message as spam.
    Complaint,
    /// Added through the API.
    Manual,
}

/// An address mailroom no longer sends to.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SuppressionResponse {
    /// Lowercase, the domain in ASCII (punycode): how addresses are compared.
    pub address: String,
    pub reason: Reason,
    /// The email whose refusal or report put it here; null for a manual entry.
    #[serde(rename = "emailID")]
    pub email_id: Option<Uuid>,
    /// What the receiving server said; null for a manual entry.
    pub smtp_text: Option<String>,
    /// The note of a manual entry.
    pub note: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl From<Suppression> for SuppressionResponse {
    fn from(entry: Suppression) -> Self {
        SuppressionResponse {
            address: entry.address.to_string(),
            reason: match entry.reason {
                SuppressionReason::HardBounce => Reason::HardBounce,
                SuppressionReason::Complaint => Reason::Complaint,
                SuppressionReason::Manual => Reason::Manual,
            },
            email_id: entry.email_id.map(|id| id.as_uuid()),
            smtp_text: entry.smtp_text,
            note: entry.note,
            created_at: entry.created_at,
        }
    }
}

/// A page of the list, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SuppressionList {
    pub suppressions: Vec<SuppressionResponse>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// An address to put on the list by hand.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"address": "jo@example.com", "reason": "manual", "note": "asked by phone"}))]
pub struct AddSuppressionRequest {
    pub address: String,
    /// Only `manual` can be given; the others come from bounces and complaints.
    #[schema(value_type = String, pattern = "^manual$")]
    pub reason: String,
    /// Why, for whoever reads the list later; at most 1000 characters.
    #[schema(pattern = r"^[^\u0000]*$")]
    pub note: Option<String>,
}

/// The listing's filter.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReasonParam {
    /// Only entries of this reason: hard_bounce, complaint or manual.
    pub reason: Option<String>,
}

/// The suppression list, newest first.
#[utoipa::path(get, path = "/api/v1/suppressions", operation_id = "listSuppressions", tag = "suppressions",
    security(("api_key" = ["admin"])),
    params(ReasonParam, PageParams),
    responses(
        (status = 200, description = "A page of entries", body = SuppressionList),
        (status = 400, description = "An unknown reason, or a bad limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key lacks the admin scope", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "A dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(name = "rest.suppressions.list", skip_all)]
pub async fn list(
    State(state): State<AppState>,
    _: Scoped<AdminScope>,
    reason: Result<Query<ReasonParam>, QueryRejection>,
    page: Result<Query<PageParams>, QueryRejection>,
) -> Result<Json<SuppressionList>, Problem> {
    let malformed = |rejection: QueryRejection| Problem::malformed(None, rejection.body_text());
    let Query(reason) = reason.map_err(malformed)?;
    let Query(page) = page.map_err(malformed)?;
    let (cursor, limit) = page_of(&page)?;
    let (entries, next) = state
        .mailroom
        .suppressions(reason.reason.as_deref(), cursor, limit)
        .await?;
    Ok(Json(SuppressionList {
        suppressions: entries.into_iter().map(Into::into).collect(),
        next_cursor: next.map(|cursor| cursor.encode()),
    }))
}

/// Put an address on the list by hand.
///
/// An address already on the list keeps its entry, which is answered with a 200.
#[utoipa::path(post, path = "/api/v1/suppressions", operation_id = "addSuppression", tag = "suppressions",
    security(("api_key" = ["admin"])),
    request_body = AddSuppressionRequest,
    responses(
        (status = 201, description = "Added", body = SuppressionResponse,
            headers(("Location" = String, description = "The entry's URL"))),
        (status = 200, description = "Already on the list: the entry as it was", body = SuppressionResponse),
        (status = 400, description = "Not an address, a reason other than manual, or a note too long", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key lacks the admin scope", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "A dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(name = "rest.suppressions.add", skip_all)]
pub async fn add(
    State(state): State<AppState>,
    _: Scoped<AdminScope>,
    ApiJson(request): ApiJson<AddSuppressionRequest>,
) -> Result<Response, Problem> {
    if request.reason != "manual" {
        return Err(Problem::violation(Violation::new(
            Field::Reason,
            "reason",
            "must be manual: hard_bounce and complaint entries come from bounces and complaints",
        )));
    }
    Ok(
        match state
            .mailroom
            .add_suppression(&request.address, request.note)
            .await?
        {
            SuppressionAdded::Created(entry) => (
                StatusCode::CREATED,
                [(
                    header::LOCATION,
                    format!("/api/v1/suppressions/{}", entry.address),
                )],
                Json(SuppressionResponse::from(entry)),
            )
                .into_response(),
            SuppressionAdded::Existing(entry) => {
                (StatusCode::OK, Json(SuppressionResponse::from(entry))).into_response()
            }
        },
    )
}

/// One entry.
#[utoipa::path(get, path = "/api/v1/suppressions/{address}", operation_id = "getSuppression", tag = "suppressions",
    security(("api_key" = ["admin"])),
    params(("address" = String, Path, description = "The address, in any case")),
    responses(
        (status = 200, description = "The entry", body = SuppressionResponse),
        (status = 400, description = "Not an address", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The address is not suppressed", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key lacks the admin scope", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "A dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(name = "rest.suppressions.get", skip_all)]
pub async fn get(
    State(state): State<AppState>,
    _: Scoped<AdminScope>,
    Path(address): Path<String>,
) -> Result<Json<SuppressionResponse>, Problem> {
    Ok(Json(state.mailroom.suppression(&address).await?.into()))
}

/// Take an address off the list: it is mailed again from now on.
#[utoipa::path(delete, path = "/api/v1/suppressions/{address}", operation_id = "deleteSuppression", tag = "suppressions",
    security(("api_key" = ["admin"])),
    params(("address" = String, Path, description = "The address, in any case")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "Not an address", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The address is not suppressed", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key lacks the admin scope", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "A dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(name = "rest.suppressions.delete", skip_all)]
pub async fn delete(
    State(state): State<AppState>,
    _: Scoped<AdminScope>,
    Path(address): Path<String>,
) -> Result<StatusCode, Problem> {
    state.mailroom.delete_suppression(&address).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// What a report amounted to.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReportResponse {
    /// Whether it is about one of mailroom's emails.
    pub matched: bool,
    /// That email; absent when unmatched.
    #[serde(rename = "emailID", skip_serializing_if = "Option::is_none")]
    pub email_id: Option<Uuid>,
    /// The email's status now (`bounced`, `complained`, or as it was).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<super::dto::EmailStatus>,
    /// The addresses it suppressed (or found suppressed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suppressed: Vec<String>,
    /// This very report was received before; nothing changed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// A delivery status notification, as a relay sends one back (the example of the
/// document).
const EXAMPLE_DSN: &str = "From: MAILER-DAEMON@mx.example\r\n\
To: bounces@acme.example\r\n\
Subject: Undelivered Mail Returned to Sender\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\
\r\n\
--b\r\n\
Content-Type: text/plain\r\n\
\r\n\
Your message could not be delivered.\r\n\
--b\r\n\
Content-Type: message/delivery-status\r\n\
\r\n\
Reporting-MTA: dns; mx.example\r\n\
\r\n\
Final-Recipient: rfc822; nobody@example.com\r\n\
Action: failed\r\n\
Status: 5.1.1\r\n\
Diagnostic-Code: smtp; 550 5.1.1 <nobody@example.com>: User unknown\r\n\
--b\r\n\
Content-Type: text/rfc822-headers\r\n\
\r\n\
From: billing@acme.example\r\n\
To: nobody@example.com\r\n\
Message-ID: <0193a1b2-0000-7000-8000-000000000001@acme.example>\r\n\
Subject: Invoice\r\n\
--b--\r\n";

/// The media type of a report: a whole message.
const RFC822: &str = "message/rfc822";

/// Receive a bounce report or a complaint.
///
/// The body is the raw message (`Content-Type: message/rfc822`): a delivery status
/// notification (`multipart/report; report-type=delivery-status`, RFC 3464) or a feedback
/// report (`report-type=feedback-report`, RFC 5965). It is matched to its email by the
/// Message-ID in the returned headers, or by the VERP return path (`smtp.return_path`).
/// A failed recipient makes a sent email `bounced`; a complaint makes it `complained`;
/// both put the recipient on the suppression list. A delay is recorded only.
#[utoipa::path(post, path = "/api/v1/bounces", operation_id = "receiveReport", tag = "suppressions",
    security(("api_key" = ["admin"])),
    request_body(content = String, content_type = "message/rfc822", description = "The report, as received",
        example = json!(EXAMPLE_DSN)),
    responses(
        (status = 200, description = "Matched to an email and acted on", body = ReportResponse),
        (status = 202, description = "A well-formed report about no email of ours", body = ReportResponse),
        (status = 400, description = "Not a delivery-status or feedback report", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than http.body_limit_bytes", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not message/rfc822", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key lacks the admin scope", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "A dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(name = "rest.bounces.receive", skip_all)]
pub async fn receive_report(
    State(state): State<AppState>,
    _: Scoped<AdminScope>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|value| value.trim().to_ascii_lowercase());
    if media_type.as_deref() != Some(RFC822) {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "urn:mailroom:problem:unsupported-media-type",
            "Unsupported media type",
            format!("a report is sent as {RFC822}, the raw message"),
        ));
    }
    let report = reports::parse(&body).map_err(|why| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "urn:mailroom:problem:not-a-report",
            "Not a report",
            why.to_string(),
        )
    })?;
    Ok(match state.mailroom.ingest_report(&report).await? {
        ReportOutcome::Unmatched => (
            StatusCode::ACCEPTED,
            Json(ReportResponse {
                matched: false,
                email_id: None,
                status: None,
                suppressed: Vec::new(),
                duplicate: false,
            }),
        )
            .into_response(),
        ReportOutcome::Matched {
            email,
            suppressed,
            duplicate,
        } => Json(ReportResponse {
            matched: true,
            email_id: Some(email.id.as_uuid()),
            status: Some(email.status.into()),
            suppressed: suppressed.iter().map(ToString::to_string).collect(),
            duplicate,
        })
        .into_response(),
    })
}

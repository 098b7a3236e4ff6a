//! Webhook endpoints on REST (`admin` scope): register, list, read, change, delete,
//! rotate the secret, read the delivery log and retry a delivery.

use axum::{
    Json,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::webhooks::{DeliveryAttempt, DeliveryStatus, NewWebhook, Webhook, WebhookChange, store};

use super::{
    AppState,
    auth::{AdminScope, Scoped},
    extract::{ApiJson, PageParams, page_of},
    problem::Problem,
};

/// An event type an endpoint can subscribe to, or `*` for all (in the document only:
/// requests carry the names as strings, checked by the use case).
#[derive(ToSchema)]
#[allow(dead_code)]
pub enum EventName {
    #[serde(rename = "*")]
    All,
    #[serde(rename = "email.queued")]
    Queued,
    #[serde(rename = "email.scheduled")]
    Scheduled,
    #[serde(rename = "email.sent")]
    Sent,
    #[serde(rename = "email.deferred")]
    Deferred,
    #[serde(rename = "email.failed")]
    Failed,
    #[serde(rename = "email.canceled")]
    Canceled,
    #[serde(rename = "email.suppressed")]
    Suppressed,
    #[serde(rename = "email.bounced")]
    Bounced,
    #[serde(rename = "email.complained")]
    Complained,
}

/// A registration.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateWebhookRequest {
    /// Where to send events: an `http` or `https` URL of a public address.
    #[schema(value_type = String, required = true, max_length = 2048,
        pattern = r"^https?://[A-Za-z0-9][A-Za-z0-9.-]{0,200}(:[1-9][0-9]{0,3})?(/[!-~]*)?$", example = "https://hooks.example.com/mailroom")]
    pub url: Option<String>,
    /// The event types to receive, or `["*"]` for all.
    #[schema(value_type = Vec<EventName>, required = true, min_items = 1,
        example = json!(["email.sent", "email.failed"]))]
    pub events: Option<Vec<String>>,
    #[schema(max_length = 500)]
    pub description: Option<String>,
}

/// Present (even as `null`) or absent, told apart.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

/// A change: the fields given are changed, the others kept.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateWebhookRequest {
    #[schema(value_type = Option<String>, max_length = 2048,
        pattern = r"^https?://[A-Za-z0-9][A-Za-z0-9.-]{0,200}(:[1-9][0-9]{0,3})?(/[!-~]*)?$")]
    pub url: Option<String>,
    #[schema(value_type = Option<Vec<EventName>>, min_items = 1)]
    pub events: Option<Vec<String>>,
    /// `null` clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 500)]
    pub description: Option<Option<String>>,
    /// `true` enables an endpoint again (after it was disabled for failing).
    pub enabled: Option<bool>,
}

/// A registered endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookResponse {
    pub id: Uuid,
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
    pub enabled: bool,
    /// Why mailroom disabled it, when it did.
    pub disabled_reason: Option<String>,
    /// Since when every attempt has failed, while that lasts.
    pub failing_since: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&Webhook> for WebhookResponse {
    fn from(webhook: &Webhook) -> Self {
        WebhookResponse {
            id: webhook.id,
            url: webhook.url.clone(),
            events: webhook.events.names(),
            description: webhook.description.clone(),
            enabled: webhook.enabled,
            disabled_reason: webhook.disabled_reason.clone(),
            failing_since: webhook.failing_since,
            created_at: webhook.created_at,
            updated_at: webhook.updated_at,
        }
    }
}

/// An endpoint with its signing secret: answered only when the secret is new.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookWithSecret {
    #[serde(flatten)]
    pub webhook: WebhookResponse,
    /// `whsec_` and the base64 of 32 random bytes: what Standard Webhooks libraries
    /// verify with. Keep it; it is not shown again.
    pub secret: String,
    /// After a rotation, until when the previous secret also signs requests.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
}

impl From<&Webhook> for WebhookWithSecret {
    fn from(webhook: &Webhook) -> Self {
        WebhookWithSecret {
            webhook: WebhookResponse::from(webhook),
            secret: webhook.secret.expose(),
            previous_secret_expires_at: webhook.previous_secret.as_ref().map(|(_, at)| *at),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<WebhookResponse>,
}

/// One request made for a delivery.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryAttemptResponse {
    pub attempt: i32,
    pub at: DateTime<Utc>,
    /// The answer's status code, when there was an answer.
    pub http_status: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: i32,
}

impl From<DeliveryAttempt> for DeliveryAttemptResponse {
    fn from(attempt: DeliveryAttempt) -> Self {
        DeliveryAttemptResponse {
            attempt: attempt.attempt,
            at: attempt.at,
            http_status: attempt.http_status,
            error: attempt.error,
            duration_ms: attempt.duration_ms,
        }
    }
}

/// One event for one endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryResponse {
    /// The `webhook-id` header of every attempt.
    pub id: Uuid,
    pub event_type: String,
    pub status: DeliveryStatus,
    pub created_at: DateTime<Utc>,
    pub attempts: Vec<DeliveryAttemptResponse>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryList {
    pub deliveries: Vec<DeliveryResponse>,
    /// Where the next page starts; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RetryResponse {
    pub id: Uuid,
    pub status: DeliveryStatus,
}

fn uuid_of(raw: &str, what: &str) -> Result<Uuid, Problem> {
    Uuid::try_parse(raw.trim()).map_err(|_| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "urn:mailroom:problem:validation",
            "Invalid input",
            format!("{raw:?} is not a {what} id (a UUID)"),
        )
    })
}

/// Register an endpoint for the events it names.
///
/// The answer holds the signing secret, shown only here (and after a rotation).
#[utoipa::path(post, path = "/api/v1/webhooks", operation_id = "createWebhook", tag = "webhooks",
    security(("api_key" = ["admin"])),
    request_body = CreateWebhookRequest,
    responses(
        (status = 201, description = "Registered", body = WebhookWithSecret,
            headers(("Location" = String, description = "The endpoint's URL"))),
        (status = 400, description = "A bad URL (not http or https, or a non-public address) or event type", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key lacks the admin scope", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "A dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(name = "rest.webhooks.create", skip_all)]
pub async fn create(
    State(state): State<AppState>,
    _: Scoped<AdminScope>,
    ApiJson(request): ApiJson<CreateWebhookRequest>,
) -> Result<Response, Problem> {
    let webhook = state
        .webhooks
        .create(NewWebhook {
            url: request.url,
            events: request.events,
            description: request.description,
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/api/v1/webhooks/{}", webhook.id))],
        Json(WebhookWithSecret::from(&webhook)),
    )
        .into_response())
}

/// Every registered endpoint, oldest first.
#[utoipa::path(get, path = "/api/v1/webhooks", operation_id = "listWebhooks", tag = "webhooks",
    security(("api_key" = ["admin"])),
    responses(
        (status = 200, description = "The endpoints", body = WebhookList),
        (status = 401, description = "No API key, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key lacks the admin scope", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "A dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(name = "rest.webhooks.list", skip_all)]
pub async fn list(
    State(state): State<AppState>,
    _: Scoped<AdminScope>,
) -> Result<Json<WebhookList>, Problem> {
    let webhooks = state.webhooks.list().await?;
    Ok(Json(WebhookList {
        webhooks: webhooks.iter().map(WebhookResponse::from).collect(),
    }))
}

/// One endpoint.
#[utoipa::path(get, path = "/api/v1/webhooks/{id}", operation_id = "getWebhook", tag = "webhooks",
    security(("api_key" = ["admin"])),
    params(("id" = String, Path, description = "The endpoint's id", format = Uuid)),
    responses(
        (status = 200, description = "The endpoint", body = WebhookResponse),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key lacks the admin scope", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "A dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(name = "rest.webhooks.get", skip_all)]
pub async fn get(
    State(state): State<AppState>,
    _: Scoped<AdminScope>,
    Path(raw_id): Path<String>,
) -> Result<Json<WebhookResponse>, Problem> {
    let webhook = state.webhooks.get(uuid_of(&raw_id, "webhook")?).await?;
    Ok(Json(WebhookResponse::from(&webhook)))
}

/// Change an endpoint's URL, events, description or whether it is enabled.
#[utoipa::path(patch, path = "/api/v1/webhooks/{id}", operation_id = "updateWebhook", tag = "webhooks",
    security(("api_key" = ["admin"])),
    params(("id" = String, Path, description = "The endpoint's id", format = Uuid)),
    request_body = UpdateWebhookRequest,
    responses(
        (status = 200, description = "The endpoint as changed", body = WebhookResponse),
        (status = 400, description = "A bad id, URL or event type", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key lacks the admin scope", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "A dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(name = "rest.webhooks.update", skip_all)]
pub async fn update(
    State(state): State<AppState>,
    _: Scoped<AdminScope>,
    Path(raw_id): Path<String>,
    ApiJson(request): ApiJson<UpdateWebhookRequest>,
) -> Result<Json<WebhookResponse>, Problem> {
    let id = uuid_of(&raw_id, "webhook")?;
    let webhook = state
        .webhooks
        .change(
            id,
            WebhookChange {
                url: request.url,
                events: request.events,
                description: request.description,
                enabled: request.enabled,
            },
        )
        .await?;
    Ok(Json(WebhookResponse::from(&webhook)))
}

/// Delete an endpoint and its delivery log; pending deliveries are dropped.
#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", operation_id = "deleteWebhook", tag = "webhooks",
    security(("api_key" = ["admin"])),
    params(("id" = String, Path, description = "The endpoint's id", format = Uuid)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key lacks the admin scope", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "A dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(name = "rest.webhooks.delete", skip_all)]
pub async fn delete(
    State(state): State<AppState>,
    _: Scoped<AdminScope>,
    Path(raw_id): Path<String>,
) -> Result<StatusCode, Problem> {
    state.webhooks.delete(uuid_of(&raw_id, "webhook")?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replace the signing secret. For `webhooks.rotation_overlap` (24 hours) requests
/// carry a signature by the old secret too, so receivers can switch without missing
/// an event.
#[utoipa::path(post, path = "/api/v1/webhooks/{id}/rotate-secret", operation_id = "rotateWebhookSecret", tag = "webhooks",
    security(("api_key" = ["admin"])),
    params(("id" = String, Path, description = "The endpoint's id", format = Uuid)),
    responses(
        (status = 200, description = "The endpoint with its new secret", body = WebhookWithSecret),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key lacks the admin scope", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "A dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(name = "rest.webhooks.rotate_secret", skip_all)]
pub async fn rotate_secret(
    State(state): State<AppState>,
    _: Scoped<AdminScope>,
    Path(raw_id): Path<String>,
) -> Result<Json<WebhookWithSecret>, Problem> {
    let webhook = state
        .webhooks
        .rotate_secret(uuid_of(&raw_id, "webhook")?)
        .await?;
    Ok(Json(WebhookWithSecret::from(&webhook)))
}

/// An endpoint's deliveries, newest first, each with its attempts.
#[utoipa::path(get, path = "/api/v1/webhooks/{id}/deliveries", operation_id = "listWebhookDeliveries", tag = "webhooks",
    security(("api_key" = ["admin"])),
    params(("id" = String, Path, description = "The endpoint's id", format = Uuid), PageParams),
    responses(
        (status = 200, description = "One page", body = DeliveryList),
        (status = 400, description = "A bad id, limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key lacks the admin scope", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "A dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(name = "rest.webhooks.deliveries", skip_all)]
pub async fn deliveries(
    State(state): State<AppState>,
    _: Scoped<AdminScope>,
    Path(raw_id): Path<String>,
    params: Result<Query<PageParams>, QueryRejection>,
) -> Result<Json<DeliveryList>, Problem> {
    let id = uuid_of(&raw_id, "webhook")?;
    let Query(params) =
        params.map_err(|rejection| Problem::malformed(None, rejection.body_text()))?;
    let (cursor, limit) = page_of(&params)?;
    let store::DeliveryPage { deliveries, next } =
        state.webhooks.deliveries(id, cursor, limit).await?;
    Ok(Json(DeliveryList {
        deliveries: deliveries
            .into_iter()
            .map(|(delivery, attempts)| DeliveryResponse {
                id: delivery.id,
                event_type: delivery.event_type,
                status: delivery.status,
                created_at: delivery.created_at,
                attempts: attempts.into_iter().map(Into::into).collect(),
            })
            .collect(),
        next_cursor: next.map(|cursor| cursor.encode()),
    }))
}

/// Attempt a delivery once more, now, with the same `webhook-id` (for one that
/// succeeded or failed; a pending one is attempted on its schedule).
#[utoipa::path(post, path = "/api/v1/webhooks/{id}/deliveries/{deliveryId}/retry", operation_id = "retryWebhookDelivery", tag = "webhooks",
    security(("api_key" = ["admin"])),
    params(
        ("id" = String, Path, description = "The endpoint's id", format = Uuid),
        ("deliveryId" = String, Path, description = "The delivery's id", format = Uuid),
    ),
    responses(
        (status = 202, description = "To be attempted", body = RetryResponse),
        (status = 400, description = "An id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint or delivery", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The delivery is pending already", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key lacks the admin scope", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "A dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(name = "rest.webhooks.retry", skip_all)]
pub async fn retry(
    State(state): State<AppState>,
    _: Scoped<AdminScope>,
    Path((raw_id, raw_delivery)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let id = uuid_of(&raw_id, "webhook")?;
    let delivery = uuid_of(&raw_delivery, "delivery")?;
    let status = state.webhooks.retry(id, delivery).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(RetryResponse {
            id: delivery,
            status,
        }),
    )
        .into_response())
}

//! Templates on REST (`admin` scope): save (every save a new version), list, read a
//! version, delete, and render a preview.

use axum::{
    Json,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{
    ToSchema,
    openapi::{
        RefOr, Schema,
        schema::{AllOfBuilder, AnyOfBuilder, ObjectBuilder, Ref},
    },
};
use uuid::Uuid;

use crate::{
    domain::{Field, Template, TemplateKey, Violation},
    usecase::TemplateDraft,
};

use super::{
    AppState,
    auth::{AdminScope, Scoped},
    extract::{ApiJson, PageParams, page_of},
    problem::Problem,
};

/// A template to save. Subject, message and html are minijinja templates
/// (`{{ user.name }}`, `{% if %}`, `{% for %}`, filters); the HTML part is escaped.
/// Message, html or both are required: the document says so in
/// [`SaveTemplateBody`], which requests name.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = TemplateFields, example = json!({
    "name": "welcome",
    "subject": "Welcome, {{ user.name }}",
    "message": "Hello {{ user.name }}, welcome aboard.",
    "html": "<p>Hello <b>{{ user.name }}</b>, welcome aboard.</p>"
}))]
pub struct SaveTemplateRequest {
    /// `[a-z0-9][a-z0-9_-]{0,63}`, unique. On `PUT`, the template's own name or nothing.
    #[schema(value_type = String, required = true, pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")]
    pub name: Option<String>,
    /// Renders to the email's subject (1 to 255 characters, one line).
    #[schema(value_type = String, required = true, min_length = 1, pattern = r"^[^\u0000]*$")]
    pub subject: Option<String>,
    /// Renders to the text part, at most 1 MiB. Required unless `html` is given.
    #[schema(pattern = r"^[^\u0000]*$")]
    pub message: Option<String>,
    /// Renders to the HTML part, with every variable HTML-escaped; at most 1 MiB.
    #[schema(pattern = r"^[^\u0000]*$")]
    pub html: Option<String>,
}

/// The schema of a save: [`SaveTemplateRequest`]'s fields, with `message`, `html` or
/// both given (`allOf` the fields, `anyOf` the two `required`), which a derived schema
/// cannot say.
pub struct SaveTemplateBody;

impl utoipa::PartialSchema for SaveTemplateBody {
    fn schema() -> RefOr<Schema> {
        let requiring = |field: &str| ObjectBuilder::new().required(field).build();
        AllOfBuilder::new()
            .item(Ref::from_schema_name(SaveTemplateRequest::name()))
            .item(
                AnyOfBuilder::new()
                    .item(requiring("message"))
                    .item(requiring("html")),
            )
            .description(Some("A template to save: message, html or both."))
            .into()
    }
}

impl ToSchema for SaveTemplateBody {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((
            SaveTemplateRequest::name().into(),
            <SaveTemplateRequest as utoipa::PartialSchema>::schema(),
        ));
    }
}

impl From<SaveTemplateRequest> for TemplateDraft {
    fn from(request: SaveTemplateRequest) -> Self {
        TemplateDraft {
            name: request.name,
            subject: request.subject,
            message: request.message,
            html: request.html,
        }
    }
}

/// One version of a template.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateResponse {
    pub id: Uuid,
    pub name: String,
    /// This version's number (1 for a new template; each `PUT` adds one).
    pub version: i32,
    /// The newest version, which sending without a version renders.
    pub latest_version: i32,
    pub subject: String,
    pub message: Option<String>,
    pub html: Option<String>,
    /// When the template was first saved.
    pub created_at: DateTime<Utc>,
    /// When this version was saved.
    pub updated_at: DateTime<Utc>,
}

impl From<Template> for TemplateResponse {
    fn from(template: Template) -> Self {
        TemplateResponse {
            id: template.id,
            name: template.name,
            version: template.version,
            latest_version: template.latest_version,
            subject: template.content.subject,
            message: template.content.message,
            html: template.content.html,
            created_at: template.created_at,
            updated_at: template.updated_at,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateList {
    /// Newest template first, each at its newest version.
    pub templates: Vec<TemplateResponse>,
    /// Where the next page starts; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// What to render a preview with.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"variables": {"user": {"name": "Alice"}}}))]
pub struct RenderRequest {
    /// The template's variables.
    #[schema(value_type = Option<Object>)]
    pub variables: Option<serde_json::Map<String, serde_json::Value>>,
    /// The version to render; the newest when missing.
    #[schema(minimum = 1)]
    pub version: Option<i64>,
}

/// A rendered template: what an email made from it would hold.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RenderedTemplate {
    pub subject: String,
    pub message: Option<String>,
    pub html: Option<String>,
}

fn location(template: &Template) -> String {
    format!("/api/v1/templates/{}", template.id)
}

fn version_of(raw: &str) -> Result<i32, Problem> {
    raw.trim()
        .parse::<i32>()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| {
            Problem::violation(Violation::new(
                Field::Version,
                "range",
                "must be a version number, 1 or more",
            ))
        })
}

/// Save a new template, as version 1.
///
/// Each part is compiled: a syntax error is a 400 naming the part and the line.
#[utoipa::path(post, path = "/api/v1/templates", operation_id = "createTemplate", tag = "templates",
    security(("api_key" = ["admin"])),
    request_body = SaveTemplateBody,
    responses(
        (status = 201, description = "Saved", body = TemplateResponse,
            headers(("Location" = String, description = "The template's URL"))),
        (status = 400, description = "A bad name, a missing part, or a syntax error", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A template has that name already", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key lacks the admin scope", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "A dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(name = "rest.templates.create", skip_all)]
pub async fn create(
    State(state): State<AppState>,
    _: Scoped<AdminScope>,
    ApiJson(request): ApiJson<SaveTemplateRequest>,
) -> Result<Response, Problem> {
    let template = state.mailroom.create_template(request.into()).await?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location(&template))],
        Json(TemplateResponse::from(template)),
    )
        .into_response())
}

/// Every template at its newest version, newest first.
#[utoipa::path(get, path = "/api/v1/templates", operation_id = "listTemplates", tag = "templates",
    security(("api_key" = ["admin"])),
    params(PageParams),
    responses(
        (status = 200, description = "A page of templates", body = TemplateList),
        (status = 400, description = "A bad limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key lacks the admin scope", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "A dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(name = "rest.templates.list", skip_all)]
pub async fn list(
    State(state): State<AppState>,
    _: Scoped<AdminScope>,
    params: Result<Query<PageParams>, QueryRejection>,
) -> Result<Json<TemplateList>, Problem> {
    let Query(params) =
        params.map_err(|rejection| Problem::malformed(None, rejection.body_text()))?;
    let (cursor, limit) = page_of(&params)?;
    let (templates, next) = state.mailroom.templates(cursor, limit).await?;
    Ok(Json(TemplateList {
        templates: templates.into_iter().map(Into::into).collect(),
        next_cursor: next.map(|cursor| cursor.encode()),
    }))
}

/// A template at its newest version.
#[utoipa::path(get, path = "/api/v1/templates/{idOrName}", operation_id = "getTemplate", tag = "templates",
    security(("api_key" = ["admin"])),
    params(("idOrName" = String, Path, description = "The template's id or name")),
    responses(
        (status = 200, description = "The template", body = TemplateResponse),
        (status = 404, description = "No such template", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key lacks the admin scope", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "A dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(name = "rest.templates.get", skip_all)]
pub async fn get(
    State(state): State<AppState>,
    _: Scoped<AdminScope>,
    Path(key): Path<String>,
) -> Result<Json<TemplateResponse>, Problem> {
    let template = state
        .mailroom
        .template(&TemplateKey::parse(&key), None)
        .await?;
    Ok(Json(template.into()))
}

/// Save a new version of a template.
///
/// The body is the same as for creating one; `name`, if given, must be the template's.
/// The versions before stay readable, and emails made from them keep their content.
#[utoipa::path(put, path = "/api/v1/templates/{idOrName}", operation_id = "updateTemplate", tag = "templates",
    security(("api_key" = ["admin"])),
    params(("idOrName" = String, Path, description = "The template's id or name")),
    request_body(content = SaveTemplateBody, description = "The new version; `name` may be left out",
        example = json!({"subject": "Welcome back, {{ user.name }}", "message": "Hello again {{ user.name }}."})),
    responses(
        (status = 200, description = "The new version", body = TemplateResponse),
        (status = 400, description = "A missing part, a syntax error, or another name", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such template", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key lacks the admin scope", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "A dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(name = "rest.templates.update", skip_all)]
pub async fn update(
    State(state): State<AppState>,
    _: Scoped<AdminScope>,
    Path(key): Path<String>,
    ApiJson(request): ApiJson<SaveTemplateRequest>,
) -> Result<Json<TemplateResponse>, Problem> {
    let template = state
        .mailroom
        .update_template(&TemplateKey::parse(&key), request.into())
        .await?;
    Ok(Json(template.into()))
}

/// Delete a template and every version of it.
///
/// Emails made from it keep their content; sending from it is refused from now on.
#[utoipa::path(delete, path = "/api/v1/templates/{idOrName}", operation_id = "deleteTemplate", tag = "templates",
    security(("api_key" = ["admin"])),
    params(("idOrName" = String, Path, description = "The template's id or name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such template", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key lacks the admin scope", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "A dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(name = "rest.templates.delete", skip_all)]
pub async fn delete(
    State(state): State<AppState>,
    _: Scoped<AdminScope>,
    Path(key): Path<String>,
) -> Result<StatusCode, Problem> {
    state
        .mailroom
        .delete_template(&TemplateKey::parse(&key))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// One version of a template.
#[utoipa::path(get, path = "/api/v1/templates/{idOrName}/versions/{version}", operation_id = "getTemplateVersion", tag = "templates",
    security(("api_key" = ["admin"])),
    params(
        ("idOrName" = String, Path, description = "The template's id or name"),
        ("version" = u32, Path, description = "The version number", minimum = 1),
    ),
    responses(
        (status = 200, description = "The version", body = TemplateResponse),
        (status = 400, description = "The version is not a number from 1", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such template or version", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key lacks the admin scope", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "A dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(name = "rest.templates.version", skip_all)]
pub async fn version(
    State(state): State<AppState>,
    _: Scoped<AdminScope>,
    Path((key, raw_version)): Path<(String, String)>,
) -> Result<Json<TemplateResponse>, Problem> {
    let version = version_of(&raw_version)?;
    let template = state
        .mailroom
        .template(&TemplateKey::parse(&key), Some(version))
        .await?;
    Ok(Json(template.into()))
}

/// Render a template with variables, storing nothing: the subject, text and HTML an
/// email made from it would hold.
#[utoipa::path(post, path = "/api/v1/templates/{idOrName}/render", operation_id = "renderTemplate", tag = "templates",
    security(("api_key" = ["admin"])),
    params(("idOrName" = String, Path, description = "The template's id or name")),
    request_body = RenderRequest,
    responses(
        (status = 200, description = "Rendered", body = RenderedTemplate),
        (status = 400, description = "A variable is missing, or rendering went past its limits", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such template or version", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The API key lacks the admin scope", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the key's rate limit", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "A dependency is down", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(name = "rest.templates.render", skip_all)]
pub async fn render(
    State(state): State<AppState>,
    _: Scoped<AdminScope>,
    Path(key): Path<String>,
    ApiJson(request): ApiJson<RenderRequest>,
) -> Result<Json<RenderedTemplate>, Problem> {
    let version = request
        .version
        .map(|n| version_of(&n.to_string()))
        .transpose()?;
    let rendered = state
        .mailroom
        .preview_template(
            &TemplateKey::parse(&key),
            version,
            &request.variables.unwrap_or_default(),
        )
        .await?;
    Ok(Json(RenderedTemplate {
        subject: rendered.subject,
        message: rendered.message,
        html: rendered.html,
    }))
}

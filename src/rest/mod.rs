//! The REST API (axum): routes, middleware and the OpenAPI document. Handlers only
//! translate between HTTP and the use cases.

mod auth;
pub mod dto;
mod emails;
mod extract;
mod health;
pub mod problem;
mod rendered;
mod sending;
mod suppressions;
mod templates;
mod trace;
mod webhooks;

pub use rendered::RenderedEmails;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::{HeaderName, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Redirect, Response},
    routing::get,
};
use tower::ServiceBuilder;
use tower_http::{
    cors::{AllowOrigin, CorsLayer},
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    set_header::SetResponseHeaderLayer,
    timeout::TimeoutLayer,
    trace::TraceLayer,
};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};
use utoipa_axum::{router::OpenApiRouter, routes};
use utoipa_swagger_ui::SwaggerUi;

use crate::{
    auth::Gate, config::HttpSettings, metrics::Metrics, usecase::Mailroom, webhooks::Webhooks,
};

use problem::Problem;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const OPENAPI_PATH: &str = "/api-docs/openapi.json";

/// What handlers share, behind one `Arc`: axum clones the state for every request.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub mailroom: Mailroom,
    pub webhooks: Webhooks,
    pub metrics: Metrics,
    pub gate: Arc<Gate>,
    /// JSON bodies of cached reads.
    pub rendered: RenderedEmails,
}

impl AppState {
    pub fn new(
        mailroom: Mailroom,
        webhooks: Webhooks,
        metrics: Metrics,
        gate: Arc<Gate>,
        rendered: RenderedEmails,
    ) -> Self {
        AppState(Arc::new(Shared {
            mailroom,
            webhooks,
            metrics,
            gate,
            rendered,
        }))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The name of the security scheme in the OpenAPI document.
pub const API_KEY_SCHEME: &str = "api_key";

#[derive(OpenApi)]
#[openapi(
    modifiers(&BearerAuth),
    info(
        title = "mailroom",
        description = "An email microservice: store emails, deliver them over SMTP with retries, \
            and follow their status. Errors are RFC 9457 problem documents.",
        license(name = "MIT", identifier = "MIT"),
    ),
    tags(
        (name = "emails", description = "Create, read and search emails"),
        (name = "webhooks", description = "Endpoints that receive signed status events"),
        (name = "templates", description = "Stored, versioned templates to send from"),
        (name = "suppressions", description = "Addresses no longer mailed, and the bounce and complaint reports that add them"),
        (name = "health", description = "Liveness and readiness"),
    ),
)]
struct ApiDoc;

/// The API routes (emails, webhooks, templates, suppressions): behind an API key.
fn emails_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(emails::create, sending::list))
        .routes(routes!(sending::create_batch))
        .routes(routes!(emails::search))
        .routes(routes!(emails::get_by_id, sending::reschedule))
        .routes(routes!(sending::cancel))
        .routes(routes!(sending::attempts))
        .routes(routes!(emails::attachment))
        .routes(routes!(webhooks::create, webhooks::list))
        .routes(routes!(webhooks::get, webhooks::update, webhooks::delete))
        .routes(routes!(webhooks::rotate_secret))
        .routes(routes!(webhooks::deliveries))
        .routes(routes!(webhooks::retry))
        .routes(routes!(templates::create, templates::list))
        .routes(routes!(
            templates::get,
            templates::update,
            templates::delete
        ))
        .routes(routes!(templates::version))
        .routes(routes!(templates::render))
        .routes(routes!(suppressions::list, suppressions::add))
        .routes(routes!(suppressions::get, suppressions::delete))
        .routes(routes!(suppressions::receive_report))
}

/// Liveness and readiness: open to probes.
fn health_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health::health))
        .routes(routes!(health::ready))
}

/// The OpenAPI document, as served and as committed in `docs/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    OpenApiRouter::<AppState>::with_openapi(ApiDoc::openapi())
        .merge(emails_router())
        .merge(health_router())
        .into_openapi()
}

/// Declares the bearer scheme, so Swagger UI's Authorize button works.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            API_KEY_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key: Authorization: Bearer KEY"))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document as pretty JSON with a final newline.
pub fn openapi_json() -> String {
    let mut json = openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serialises");
    json.push('\n');
    json
}

/// The whole REST application.
pub fn router(state: AppState, settings: &HttpSettings) -> Router {
    let (emails, _) = emails_router().split_for_parts();
    let (health, _) = health_router().split_for_parts();
    let swagger: Router<AppState> = SwaggerUi::new("/swagger-ui")
        .url(OPENAPI_PATH, openapi())
        .into();

    let middleware = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(trace::request_span)
                .on_response(trace::record_response),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(cors(&settings.cors_allowed_origins))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(middleware::map_response(problem_for_bare_errors))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            settings.request_timeout,
        ))
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            track_metrics,
        ));

    let emails = emails.route_layer(middleware::from_fn_with_state(
        state.gate.clone(),
        auth::require_api_key,
    ));
    Router::new()
        .merge(
            emails
                .merge(health)
                .layer(SetResponseHeaderLayer::if_not_present(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("no-store"),
                )),
        )
        .merge(swagger)
        // Where the original service served Swagger UI (swaggo's paths).
        .route("/swagger", get(to_swagger_ui))
        .route("/swagger/", get(to_swagger_ui))
        .route("/swagger/index.html", get(to_swagger_ui))
        .fallback(|| async { Problem::from_status(StatusCode::NOT_FOUND) })
        .method_not_allowed_fallback(|| async {
            Problem::from_status(StatusCode::METHOD_NOT_ALLOWED)
        })
        .layer(DefaultBodyLimit::max(settings.body_limit_bytes))
        .layer(middleware)
        .with_state(state)
}

/// Users of the original service open `/swagger/index.html`; Swagger UI is here.
async fn to_swagger_ui() -> Redirect {
    Redirect::permanent("/swagger-ui/")
}

fn cors(origins: &[String]) -> CorsLayer {
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST, Method::PATCH])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            emails::IDEMPOTENCY_KEY,
            HeaderName::from_static("prefer"),
            REQUEST_ID,
        ])
        .expose_headers([header::LOCATION, REQUEST_ID, header::RETRY_AFTER])
        .max_age(Duration::from_secs(600))
}

/// Gives error answers produced below the handlers (a timeout, an unknown method) a
/// problem document like every other error.
async fn problem_for_bare_errors(response: Response) -> Response {
    let status = response.status();
    if (status.is_client_error() || status.is_server_error())
        && !response.headers().contains_key(header::CONTENT_TYPE)
    {
        let mut problem = Problem::from_status(status).into_response();
        for (name, value) in response.headers() {
            if name != header::CONTENT_LENGTH {
                problem
                    .headers_mut()
                    .entry(name)
                    .or_insert_with(|| value.clone());
            }
        }
        return problem;
    }
    response
}

/// Counts requests and their latency by method and route template, never raw paths.
async fn track_metrics(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    // Kept as they are (a `Method` and the route's shared string), not copied to strings.
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let response = next.run(request).await;
    metrics
        .http_requests
        .with_label_values(&[method.as_str(), route, response.status().as_str()])
        .inc();
    metrics
        .http_duration
        .with_label_values(&[method.as_str(), route])
        .observe(started.elapsed().as_secs_f64());
    response
}

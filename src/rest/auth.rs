//! The REST side of [`crate::auth`]: `Authorization: Bearer KEY` on every API route,
//! answered with 401 or 429 problem documents.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::auth::{Denied, Gate};

use super::problem::Problem;

pub async fn require_api_key(
    State(gate): State<Arc<Gate>>,
    request: Request,
    next: Next,
) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("invalid"));
    let challenge = match gate.admit(authorization, "rest") {
        Ok(_) => return next.run(request).await,
        Err(Denied::RateLimited(wait)) => return Problem::rate_limited(wait).into_response(),
        Err(Denied::Missing) => (
            "an API key is required: send Authorization: Bearer KEY",
            HeaderValue::from_static("Bearer"),
        ),
        Err(Denied::Invalid) => (
            "the API key is not valid",
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        ),
    };
    let mut response = Problem::new(
        StatusCode::UNAUTHORIZED,
        "urn:mailroom:problem:unauthorized",
        "Unauthorized",
        challenge.0.to_owned(),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, challenge.1);
    response
}

//! The REST side of [`crate::auth`]: `Authorization: Bearer KEY` on every API route,
//! answered with 401 or 429 problem documents; the client it admits goes with the
//! request, and each handler names the scope it needs with a [`Scoped`] argument (403
//! when the key lacks it).

use std::{marker::PhantomData, sync::Arc};

use axum::{
    extract::{FromRequestParts, Request, State},
    http::{HeaderValue, StatusCode, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::{
    api_keys::{Client, Scope},
    auth::{Denied, Gate},
};

use super::problem::Problem;

/// A scope, as a type a handler names.
pub trait NeedsScope: Send + Sync + 'static {
    const SCOPE: Scope;
}

/// Creating, canceling and rescheduling emails.
pub struct SendScope;
/// Reading emails.
pub struct ReadScope;
/// Managing the service: webhooks.
pub struct AdminScope;

impl NeedsScope for SendScope {
    const SCOPE: Scope = Scope::Send;
}
impl NeedsScope for ReadScope {
    const SCOPE: Scope = Scope::Read;
}
impl NeedsScope for AdminScope {
    const SCOPE: Scope = Scope::Admin;
}

/// The admitted client, when its key has the scope `S` (else 403, naming the scope).
pub struct Scoped<S: NeedsScope>(pub Client, pub PhantomData<S>);

impl<S: NeedsScope, State: Send + Sync> FromRequestParts<State> for Scoped<S> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &State) -> Result<Self, Problem> {
        let client = parts
            .extensions
            .get::<Client>()
            .cloned()
            .ok_or_else(|| Problem::from_status(StatusCode::UNAUTHORIZED))?;
        if !client.may(S::SCOPE) {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "urn:mailroom:problem:forbidden",
                "Forbidden",
                format!(
                    "the API key {:?} lacks the {} scope this operation needs",
                    &*client.name,
                    S::SCOPE
                ),
            ));
        }
        Ok(Scoped(client, PhantomData))
    }
}

pub async fn require_api_key(
    State(gate): State<Arc<Gate>>,
    mut request: Request,
    next: Next,
) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("invalid"));
    let challenge = match gate.admit(authorization, "rest") {
        Ok(client) => {
            request.extensions_mut().insert(client);
            return next.run(request).await;
        }
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

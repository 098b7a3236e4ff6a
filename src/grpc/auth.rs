//! The authorization hook point. Every gRPC call, health checks and reflection included,
//! passes through an [`Authorize`] before it reaches its handler; a refusal is answered
//! with the status it returns and never reaches the handler.
//!
//! The server runs with [`ApiKeyAuth`]: the API keys of [`crate::auth`] in the
//! `authorization` metadata (`Bearer KEY`) for `emailService.EmailService`, while health
//! checks and reflection stay open, like `/health` and the API docs on REST. Handlers
//! never see credentials.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use tonic::{Code, Status, body::Body, metadata::MetadataMap};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{
    api_keys::{Client, Scope},
    auth::{Denied, Gate},
};
use tower::{Layer, Service};

/// Decides whether a call may go ahead.
pub trait Authorize: Send + Sync + 'static {
    /// `Ok` lets the call through; `Err` answers it with that status, usually
    /// UNAUTHENTICATED (no or unknown credentials) or PERMISSION_DENIED.
    ///
    /// `method` is the full method name, such as `emailService.EmailService/Create` or
    /// `grpc.health.v1.Health/Check`, so an implementation can leave probes and
    /// reflection open. `metadata` holds the call's metadata, `authorization` among it.
    /// The client admitted, if any, goes with the call (in its extensions).
    fn authorize(&self, method: &str, metadata: &MetadataMap) -> Result<Option<Client>, Status>;
}

/// Lets every call through (for tests of other layers).
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Authorize for AllowAll {
    fn authorize(&self, _method: &str, _metadata: &MetadataMap) -> Result<Option<Client>, Status> {
        Ok(None)
    }
}

/// API keys and rate limits through [`Gate`]: UNAUTHENTICATED without a valid key,
/// RESOURCE_EXHAUSTED (with `google.rpc.RetryInfo`) over the key's rate.
pub struct ApiKeyAuth {
    gate: Arc<Gate>,
}

impl ApiKeyAuth {
    pub fn new(gate: Arc<Gate>) -> Self {
        ApiKeyAuth { gate }
    }
}

/// Services anyone may call: probes and tooling, as `/health` and the API docs on REST.
fn is_open(method: &str) -> bool {
    method.starts_with("grpc.health.v1.Health/") || method.starts_with("grpc.reflection.")
}

/// The scope a method of `emailService.EmailService` needs, as the same operation on
/// REST. A method not listed needs `admin`, so a new one is closed until it is listed.
pub fn scope_of(method: &str) -> Scope {
    match method.strip_prefix("emailService.EmailService/") {
        Some("Create" | "CreateBatch" | "Cancel" | "Reschedule") => Scope::Send,
        Some("GetByID" | "Search" | "List") => Scope::Read,
        _ => Scope::Admin,
    }
}

impl Authorize for ApiKeyAuth {
    fn authorize(&self, method: &str, metadata: &MetadataMap) -> Result<Option<Client>, Status> {
        if is_open(method) {
            return Ok(None);
        }
        let authorization = metadata
            .get("authorization")
            .map(|value| value.to_str().unwrap_or("invalid"));
        match self.gate.admit(authorization, "grpc") {
            Ok(client) => {
                let scope = scope_of(method);
                if !client.may(scope) {
                    return Err(Status::permission_denied(format!(
                        "the API key {:?} lacks the {scope} scope this method needs",
                        &*client.name
                    )));
                }
                Ok(Some(client))
            }
            Err(Denied::Missing) => Err(Status::unauthenticated(
                "an API key is required: send the metadata authorization: Bearer KEY",
            )),
            Err(Denied::Invalid) => Err(Status::unauthenticated("the API key is not valid")),
            Err(Denied::RateLimited(wait)) => Err(Status::with_error_details(
                Code::ResourceExhausted,
                format!(
                    "this API key is over its rate limit; retry in {} ms",
                    wait.as_millis().max(1)
                ),
                ErrorDetails::with_retry_info(Some(wait)),
            )),
        }
    }
}

#[derive(Clone)]
pub struct AuthorizeLayer {
    authorize: Arc<dyn Authorize>,
}

impl AuthorizeLayer {
    pub fn new(authorize: Arc<dyn Authorize>) -> Self {
        AuthorizeLayer { authorize }
    }
}

impl<S> Layer<S> for AuthorizeLayer {
    type Service = AuthorizeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthorizeService {
            inner,
            authorize: self.authorize.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthorizeService<S> {
    inner: S,
    authorize: Arc<dyn Authorize>,
}

impl<S> Service<Request<Body>> for AuthorizeService<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let method = request.uri().path().trim_start_matches('/');
        let metadata = MetadataMap::from_headers(request.headers().clone());
        match self.authorize.authorize(method, &metadata) {
            Ok(client) => {
                if let Some(client) = client {
                    request.extensions_mut().insert(client);
                }
                Box::pin(self.inner.call(request))
            }
            Err(status) => {
                tracing::debug!(method, code = ?status.code(), "call refused by authorization");
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn each_method_needs_the_scope_of_its_rest_operation_and_new_ones_admin() {
        for (method, scope) in [
            ("Create", Scope::Send),
            ("CreateBatch", Scope::Send),
            ("Cancel", Scope::Send),
            ("Reschedule", Scope::Send),
            ("GetByID", Scope::Read),
            ("Search", Scope::Read),
            ("List", Scope::Read),
            ("Unlisted", Scope::Admin),
        ] {
            assert_eq!(
                scope_of(&format!("emailService.EmailService/{method}")),
                scope
            );
        }
    }

    use tower::ServiceExt;

    use super::*;

    /// Refuses every call without `authorization: Bearer good`.
    struct BearerGood;

    impl Authorize for BearerGood {
        fn authorize(
            &self,
            method: &str,
            metadata: &MetadataMap,
        ) -> Result<Option<Client>, Status> {
            assert_eq!(method, "emailService.EmailService/Create");
            match metadata.get("authorization").map(|v| v.to_str()) {
                Some(Ok("Bearer good")) => Ok(None),
                _ => Err(Status::unauthenticated("missing or unknown API key")),
            }
        }
    }

    #[tokio::test]
    async fn a_refused_call_never_reaches_its_handler() {
        let reached = Arc::new(AtomicUsize::new(0));
        let counter = reached.clone();
        let handler = tower::service_fn(move |_request: Request<Body>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, std::convert::Infallible>(Response::new(Body::empty())) }
        });
        let service = AuthorizeLayer::new(Arc::new(BearerGood)).layer(handler);
        let call = |key: &'static str| {
            Request::builder()
                .uri("/emailService.EmailService/Create")
                .header("authorization", key)
                .body(Body::empty())
                .unwrap()
        };

        let refused = service.clone().oneshot(call("Bearer bad")).await.unwrap();
        assert_eq!(refused.headers()["grpc-status"], "16", "UNAUTHENTICATED");
        assert_eq!(reached.load(Ordering::SeqCst), 0);

        let allowed = service.oneshot(call("Bearer good")).await.unwrap();
        assert!(allowed.headers().get("grpc-status").is_none());
        assert_eq!(reached.load(Ordering::SeqCst), 1);
    }
}

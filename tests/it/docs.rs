//! The OpenAPI document and Swagger UI.

use serde_json::Value;

use crate::helpers::spawn_app;

#[test]
fn the_committed_openapi_document_is_up_to_date() {
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json"))
            .expect("docs/openapi.json exists (make swagger)");
    assert!(
        committed == mailroom::rest::openapi_json(),
        "docs/openapi.json is stale: run `make swagger` and commit it"
    );
}

#[test]
fn every_operation_has_an_operation_id_of_its_own() {
    // OpenAPI requires it, and tools key operations by it: schemathesis chained a
    // template's Location to the webhook operations while both were called `get`.
    let spec: Value = serde_json::from_str(&mailroom::rest::openapi_json()).unwrap();
    let mut ids: Vec<String> = spec["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|path| path.as_object().unwrap().values())
        .map(|operation| {
            operation["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("an operation without an id: {operation}"))
                .to_owned()
        })
        .collect();
    let count = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), count, "repeated operation ids among {ids:?}");
}

#[tokio::test]
async fn the_openapi_document_is_served_and_lists_every_operation() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(app.url("/api-docs/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let spec: Value = response.json().await.unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    assert!(spec["paths"]["/api/v1/email"]["post"].is_object());
    assert!(spec["paths"]["/api/v1/email/{emailID}"]["get"].is_object());
    assert!(spec["paths"]["/api/v1/email/search"]["get"].is_object());
    assert_eq!(
        spec,
        serde_json::from_str::<Value>(&mailroom::rest::openapi_json()).unwrap()
    );
}

#[tokio::test]
async fn swagger_ui_is_served_without_the_network() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(app.url("/swagger-ui/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let page = response.text().await.unwrap();
    assert!(page.contains("swagger-ui"), "{page}");
    let script = app
        .client
        .get(app.url("/swagger-ui/swagger-ui-bundle.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), 200, "the assets are vendored");
    let config = app
        .client
        .get(app.url("/swagger-ui/swagger-initializer.js"))
        .send()
        .await
        .unwrap();
    assert!(
        config
            .text()
            .await
            .unwrap()
            .contains("/api-docs/openapi.json")
    );
}

#[tokio::test]
async fn the_original_services_swagger_paths_lead_to_swagger_ui() {
    let app = spawn_app().await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for path in ["/swagger", "/swagger/", "/swagger/index.html"] {
        let response = client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 308, "{path}");
        assert_eq!(response.headers()["location"], "/swagger-ui/", "{path}");
    }
    // Followed, the redirect ends on the page.
    let page = reqwest::get(app.url("/swagger/index.html")).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("swagger-ui"));
}

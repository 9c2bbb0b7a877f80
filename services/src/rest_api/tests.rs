//! Router-level tests: the whole middleware stack, driven in-process with `oneshot`. The database
//! URL points at a closed port, so everything here runs without PostgreSQL or a broker.

use super::problem::{PROBLEM_CONTENT_TYPE, Problem};
use super::*;
use crate::contract::{AnyFeature, EventClass, EventFeatures, FeatureB};
use axum::body::{Body, Bytes};
use axum::http::{Method, Request, StatusCode};
use axum::response::Response;
use rstest::rstest;
use tower::ServiceExt;

const TOKEN: &str = "test-token-1";

fn settings() -> Settings {
    let mut s = Settings::default();
    s.database.url = "postgres://postgres@127.0.0.1:1/nowhere".into();
    s.rest_api.tokens = vec!["other-token".into(), TOKEN.into()];
    s.rest_api.rate_limit_per_sec = 1000.0;
    s.rest_api.rate_limit_burst = 1000;
    s.rest_api.default_limit = 10;
    s.rest_api.max_limit = 50;
    s
}

fn state_with(f: impl FnOnce(&mut Settings)) -> Arc<AppState> {
    let mut s = settings();
    f(&mut s);
    Arc::new(AppState::new(&s).unwrap())
}

async fn call(state: &Arc<AppState>, method: Method, uri: &str, auth: Option<&str>) -> Response {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    app(state.clone()).oneshot(req.body(Body::empty()).unwrap()).await.unwrap()
}

async fn get(state: &Arc<AppState>, uri: &str) -> Response {
    call(state, Method::GET, uri, Some(&format!("Bearer {TOKEN}"))).await
}

async fn body(res: Response) -> Bytes {
    axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap()
}

/// Asserts a problem response and returns its body.
async fn problem(res: Response, status: u16, code: &str, path: &str) -> Problem {
    assert_eq!(res.status().as_u16(), status);
    assert_eq!(res.headers()["content-type"], PROBLEM_CONTENT_TYPE);
    assert_security_headers(&res);
    let p: Problem = serde_json::from_slice(&body(res).await).unwrap();
    assert_eq!(p.kind, format!("urn:apq:problem:{code}"));
    assert_eq!(p.status, status);
    assert_eq!(p.instance, path);
    assert!(!p.title.is_empty() && !p.detail.is_empty());
    p
}

fn assert_security_headers(res: &Response) {
    let h = res.headers();
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["content-security-policy"], "default-src 'none'; frame-ancestors 'none'");
    assert_eq!(h["referrer-policy"], "no-referrer");
}

#[tokio::test]
async fn openapi_is_served_byte_for_byte() {
    let res = call(&state_with(|_| {}), Method::GET, "/openapi.json", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_security_headers(&res);
    let on_disk = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/contracts/openapi.json")).unwrap();
    assert_eq!(body(res).await.as_ref(), on_disk.as_slice());
}

#[tokio::test]
async fn healthz_needs_no_token() {
    let res = call(&state_with(|_| {}), Method::GET, "/healthz", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_security_headers(&res);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body(res).await).unwrap(),
        serde_json::json!({"status": "ok"})
    );
}

#[tokio::test]
async fn readyz_is_503_without_database() {
    let res = call(&state_with(|_| {}), Method::GET, "/readyz", None).await;
    let p = problem(res, 503, "db_unavailable", "/readyz").await;
    assert!(!p.detail.contains("127.0.0.1") && !p.detail.contains("refused"), "{}", p.detail);
}

#[rstest]
#[case::missing(None, r#"Bearer realm="audio-pipeline""#)]
#[case::basic(Some("Basic dXNlcjpwYXNz"), r#"Bearer realm="audio-pipeline", error="invalid_request""#)]
#[case::malformed(Some("Bearer a b"), r#"Bearer realm="audio-pipeline", error="invalid_request""#)]
#[case::unknown(Some("Bearer wrong-token"), r#"Bearer realm="audio-pipeline", error="invalid_token""#)]
#[tokio::test]
async fn v1_requires_a_valid_bearer_token(#[case] auth: Option<&str>, #[case] challenge: &str) {
    for path in ["/v1/features?sensor_id=s", "/v1/sensors/s/features/latest?type=A", "/v1/features/x"] {
        let res = call(&state_with(|_| {}), Method::GET, path, auth).await;
        assert_eq!(res.headers()["www-authenticate"], challenge, "{path}");
        problem(res, 401, "unauthorized", path.split('?').next().unwrap()).await;
    }
}

#[tokio::test]
async fn the_right_token_gets_through() {
    let res = get(&state_with(|_| {}), "/v1/sensors/s-1/features/latest?type=A").await;
    // Authenticated, so the handler ran: nothing is cached yet.
    problem(res, 404, "not_found", "/v1/sensors/s-1/features/latest").await;
}

#[tokio::test]
async fn fault_skip_auth_lets_anyone_in() {
    let state = state_with(|s| s.rest_api.fault_skip_auth = true);
    let res = call(&state, Method::GET, "/v1/sensors/s-1/features/latest?type=A", None).await;
    problem(res, 404, "not_found", "/v1/sensors/s-1/features/latest").await;
}

#[tokio::test]
async fn burst_then_429_with_retry_after() {
    let state = state_with(|s| {
        s.rest_api.rate_limit_burst = 3;
        s.rest_api.rate_limit_per_sec = 0.5;
    });
    let path = "/v1/sensors/s/features/latest?type=A";
    for _ in 0..3 {
        assert_eq!(get(&state, path).await.status(), StatusCode::NOT_FOUND);
    }
    let res = get(&state, path).await;
    let retry: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    problem(res, 429, "rate_limited", "/v1/sensors/s/features/latest").await;
    // Another token has its own bucket; unauthenticated requests do not drain anyone's.
    let other = call(&state, Method::GET, path, Some("Bearer other-token")).await;
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
    assert_eq!(call(&state, Method::GET, path, Some("Bearer nope")).await.status(), 401);
}

#[rstest]
#[case::injection("/v1/features?sensor_id=%27%20OR%201%3D1%20--", "sensor_id")]
#[case::unknown_param("/v1/features?sensor_id=s&order=desc", "order")]
#[case::limit_zero("/v1/features?sensor_id=s&limit=0", "limit")]
#[case::limit_over("/v1/features?sensor_id=s&limit=51", "limit")]
#[case::bad_from("/v1/features?sensor_id=s&from=2024-13-01T00:00:00Z", "from")]
#[case::unencoded_plus("/v1/features?sensor_id=s&from=2024-01-01T00:00:00+02:00", "from")]
#[case::from_after_to("/v1/features?sensor_id=s&from=2024-01-02T00:00:00Z&to=2024-01-01T00:00:00Z", "from")]
#[case::bad_type("/v1/features?sensor_id=s&type=C", "type")]
#[case::bad_cursor("/v1/features?sensor_id=s&cursor=xyz", "cursor")]
#[case::latest_needs_type("/v1/sensors/s/features/latest", "type")]
#[case::latest_bad_sensor("/v1/sensors/a%20b/features/latest?type=A", "sensor_id")]
#[case::bad_uuid("/v1/features/not-a-uuid", "message_id")]
#[case::non_utf8_path("/v1/features/%FF", "message_id")]
#[tokio::test]
async fn validation_errors_are_problems(#[case] uri: &str, #[case] param: &str) {
    let res = get(&state_with(|_| {}), uri).await;
    let p = problem(res, 400, "validation", uri.split('?').next().unwrap()).await;
    let names: Vec<String> = p.invalid_params.unwrap().into_iter().map(|p| p.name).collect();
    assert_eq!(names, vec![param.to_string()]);
}

#[tokio::test]
async fn history_without_database_is_503_without_internals() {
    let res = get(&state_with(|_| {}), "/v1/features?sensor_id=s").await;
    let p = problem(res, 503, "db_unavailable", "/v1/features").await;
    assert!(!p.detail.to_lowercase().contains("error"), "{}", p.detail);
}

#[tokio::test]
async fn unknown_routes_are_404_problems() {
    let state = state_with(|_| {});
    problem(call(&state, Method::GET, "/nope", None).await, 404, "not_found", "/nope").await;
    problem(get(&state, "/v1/sensors").await, 404, "not_found", "/v1/sensors").await;
}

#[tokio::test]
async fn wrong_method_is_a_405_problem() {
    let state = state_with(|_| {});
    let res = call(&state, Method::POST, "/healthz", None).await;
    problem(res, 405, "method_not_allowed", "/healthz").await;
    let res = call(
        &state,
        Method::DELETE,
        "/v1/features/00000000-0000-0000-0000-000000000000",
        Some(&format!("Bearer {TOKEN}")),
    )
    .await;
    problem(res, 405, "method_not_allowed", "/v1/features/00000000-0000-0000-0000-000000000000").await;
}

#[tokio::test]
async fn oversized_bodies_are_413_problems() {
    let req = Request::builder()
        .method(Method::GET)
        .uri("/healthz")
        .header("content-length", (MAX_REQUEST_BODY + 1).to_string())
        .body(Body::from(vec![b'x'; MAX_REQUEST_BODY + 1]))
        .unwrap();
    let res = app(state_with(|_| {})).oneshot(req).await.unwrap();
    problem(res, 413, "payload_too_large", "/healthz").await;
}

async fn boom() -> &'static str {
    panic!("secret internals")
}

#[tokio::test]
async fn panics_become_500_problems_without_details() {
    let state = state_with(|_| {});
    let routes = routes(state.clone()).route("/boom", axum::routing::get(boom));
    let router = harden(routes.with_state(state));
    let res = router.oneshot(Request::get("/boom").body(Body::empty()).unwrap()).await.unwrap();
    let p = problem(res, 500, "internal", "/boom").await;
    assert!(!p.detail.contains("secret"), "{}", p.detail);
}

#[tokio::test]
async fn latest_serves_the_cached_body_verbatim() {
    let state = state_with(|_| {});
    let msg = FeatureB {
        schema_version: 1,
        feature_type: "B".into(),
        message_id: uuid::Uuid::new_v4(),
        feature_a_message_id: uuid::Uuid::new_v4(),
        source_message_id: uuid::Uuid::new_v4(),
        sensor_id: "s-1".into(),
        sequence: 1,
        captured_at: chrono::Utc::now(),
        processed_at: chrono::Utc::now(),
        processed_by: "b".into(),
        features: EventFeatures {
            event_class: EventClass::Noise,
            confidence: 0.5,
            loudness_dbfs: -20.0,
            dominant_frequency_hz: 0.0,
        },
    };
    // Key order and spacing as a producer might send them: served unchanged.
    let published = format!("{{ \"zz_extra\": 1, {}", &serde_json::to_string(&msg).unwrap()[1..]);
    state.cache.offer(&AnyFeature::B(msg), Bytes::from(published.clone()));
    let res = get(&state, "/v1/sensors/s-1/features/latest?type=B").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_security_headers(&res);
    assert_eq!(body(res).await, published.as_bytes());
    problem(
        get(&state, "/v1/sensors/s-1/features/latest?type=A").await,
        404,
        "not_found",
        "/v1/sensors/s-1/features/latest",
    )
    .await;
}

#[test]
fn openapi_documents_every_route() {
    let doc: serde_json::Value = serde_json::from_str(handlers::OPENAPI).unwrap();
    assert_eq!(doc["openapi"].as_str().unwrap().get(..4), Some("3.1."));
    let mut paths: Vec<&str> = doc["paths"].as_object().unwrap().keys().map(String::as_str).collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/healthz",
            "/openapi.json",
            "/readyz",
            "/v1/features",
            "/v1/features/{message_id}",
            "/v1/sensors/{sensor_id}/features/latest"
        ]
    );
    assert_eq!(doc["components"]["securitySchemes"]["bearerAuth"]["scheme"], "bearer");
}

#[rstest]
#[case::a("FeatureAMessage", crate::contract::FEATURE_A_SCHEMA)]
#[case::b("FeatureBMessage", crate::contract::FEATURE_B_SCHEMA)]
fn openapi_message_schemas_match_the_contract(#[case] name: &str, #[case] contract: &str) {
    let doc: serde_json::Value = serde_json::from_str(handlers::OPENAPI).unwrap();
    let contract: serde_json::Value = serde_json::from_str(contract).unwrap();
    let schema = &doc["components"]["schemas"][name];
    for key in ["required", "properties", "additionalProperties"] {
        assert_eq!(schema[key], contract[key], "{name}.{key} drifted from the contract schema");
    }
}

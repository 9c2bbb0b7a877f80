//! Router-level tests: the whole middleware stack, driven in-process with `oneshot`. The database
//! URL points at a closed port, so everything here runs without PostgreSQL or a broker.

use super::problem::{PROBLEM_CONTENT_TYPE, Problem};
use super::*;
use crate::contract::{AnyFeature, EventClass, EventFeatures, FeatureB};
use axum::body::{Body, Bytes};
use axum::http::{Method, Request, StatusCode};
use axum::response::Response;
use rstest::rstest;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
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
    // No database here: a cache miss must not try one (the database fallback on a miss is
    // covered by tests/rest_api_e2e.rs and the chaos scenarios).
    s.rest_api.fault_no_cache_refill = true;
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

// The limit is the documented 16 KiB (literal here, not the constant): a body up to it is
// ignored, one byte more is refused.
#[tokio::test]
async fn bodies_up_to_16_kib_are_tolerated() {
    for (len, status) in [(16 * 1024, 200), (16 * 1024 + 1, 413)] {
        let req = Request::builder()
            .method(Method::GET)
            .uri("/healthz")
            .header("content-length", len.to_string())
            .body(Body::from(vec![b'x'; len]))
            .unwrap();
        let res = app(state_with(|_| {})).oneshot(req).await.unwrap();
        assert_eq!(res.status().as_u16(), status, "GET /healthz with a {len}-byte body");
    }
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
            "/metrics",
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

#[rstest]
#[case::later("2024-01-02T00:00:00Z", "2024-01-01T00:00:00Z")]
#[case::equal("2024-01-01T00:00:00Z", "2024-01-01T00:00:00Z")]
#[tokio::test]
async fn an_empty_range_is_an_empty_page_without_the_database(#[case] from: &str, #[case] to: &str) {
    // The database is unreachable here, so a 200 proves it was not asked.
    let res = get(&state_with(|_| {}), &format!("/v1/features?sensor_id=s&from={from}&to={to}")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&body(res).await).unwrap();
    assert_eq!(v, serde_json::json!({"items": [], "next_cursor": null}));
}

#[tokio::test]
async fn the_api_refuses_to_start_without_tokens() {
    let mut s = settings();
    s.rest_api.tokens.clear();
    s.rest_api.bind = "127.0.0.1:0".into();
    let err = build(s, CancellationToken::new()).await.err().expect("no tokens, no API");
    assert!(err.to_string().contains("APQ_API_TOKENS"), "{err}");
    assert!(Settings::default().rest_api.tokens.is_empty(), "no token is built in");
}

#[test]
fn pipeline_live_keeps_its_dev_token() {
    let mut s = Settings::default();
    crate::cli::apply_live_defaults(&mut s);
    assert_eq!(s.rest_api.tokens, vec![crate::cli::LIVE_DEV_TOKEN.to_string()]);
    let mut configured = settings();
    crate::cli::apply_live_defaults(&mut configured);
    assert_eq!(configured.rest_api.tokens, settings().rest_api.tokens, "configured tokens are kept");
}

#[tokio::test]
async fn an_over_long_target_is_a_414_problem() {
    let uri = format!("/v1/features?sensor_id={}", "a".repeat(limits::MAX_URI_BYTES));
    let p = problem(get(&state_with(|_| {}), &uri).await, 414, "uri_too_long", "/v1/features").await;
    assert!(p.invalid_params.is_none());
}

#[rstest]
#[case::many_fields(limits::MAX_HEADER_FIELDS + 1, 10)]
#[case::one_huge_field(1, limits::MAX_HEADER_BYTES + 1)]
#[tokio::test]
async fn oversized_headers_are_431_problems(#[case] fields: usize, #[case] value_len: usize) {
    let mut req = Request::get("/healthz");
    for i in 0..fields {
        req = req.header(format!("x-filler-{i}"), "v".repeat(value_len));
    }
    let res = app(state_with(|_| {})).oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    problem(res, 431, "headers_too_large", "/healthz").await;
}

#[tokio::test]
async fn thousands_of_unknown_parameters_get_a_small_problem() {
    let query: Vec<String> = (0..900).map(|i| format!("p{i}=1")).collect();
    let uri = format!("/v1/features?sensor_id=s&{}", query.join("&"));
    assert!(uri.len() <= limits::MAX_URI_BYTES);
    let res = get(&state_with(|_| {}), &uri).await;
    assert_eq!(res.status(), 400);
    let bytes = body(res).await;
    assert!(bytes.len() <= 4096, "{} bytes", bytes.len());
    let p: Problem = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(p.invalid_params.unwrap()[0].name, "p0");
    assert!(p.detail.contains("and 890 more"), "{}", p.detail);
}

async fn call_from(state: &Arc<AppState>, peer: &str, auth: &str) -> Response {
    let mut req = Request::get("/v1/sensors/s/features/latest?type=A").header("authorization", auth);
    let peer: std::net::SocketAddr = peer.parse().unwrap();
    req = req.extension(axum::extract::ConnectInfo(peer));
    app(state.clone()).oneshot(req.body(Body::empty()).unwrap()).await.unwrap()
}

#[tokio::test]
async fn failed_authentication_is_throttled_per_client() {
    let state = state_with(|s| {
        s.rest_api.auth_failure_limit = 3;
        s.rest_api.auth_failure_window_ms = 60_000;
    });
    for _ in 0..3 {
        assert_eq!(call_from(&state, "10.0.0.1:1000", "Bearer wrong").await.status(), 401);
    }
    let res = call_from(&state, "10.0.0.1:1001", "Bearer wrong").await;
    let retry: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(retry, 20);
    problem(res, 429, "rate_limited", "/v1/sensors/s/features/latest").await;
    // Locked out: even the right token is not looked at; another client is unaffected.
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(call_from(&state, "10.0.0.1:1002", &bearer).await.status(), 429);
    assert_eq!(call_from(&state, "10.0.0.2:1000", &bearer).await.status(), 404);
    assert_eq!(call_from(&state, "10.0.0.2:1000", "Bearer wrong").await.status(), 401);
}

fn row(i: u128, features_len: usize) -> crate::db::FeatureRow {
    let t: chrono::DateTime<chrono::Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
    crate::db::FeatureRow {
        message_id: uuid::Uuid::from_u128(i),
        feature_type: "A".into(),
        sensor_id: "s".into(),
        source_message_id: uuid::Uuid::from_u128(i),
        sequence: i as i64,
        captured_at: t + chrono::Duration::seconds(i as i64),
        processed_by: "a-1".into(),
        features: serde_json::json!({ "pad": "x".repeat(features_len) }),
        written_at: t,
    }
}

#[rstest]
#[case::all_fit(3, 10, 100_000, 3, false)]
#[case::limit_cuts(4, 3, 100_000, 3, true)]
#[case::bytes_cut(5, 10, 1_500, 2, true)]
#[case::one_row_always(2, 10, 10, 1, true)]
fn history_pages_are_bounded_by_rows_and_bytes(
    #[case] rows: u128,
    #[case] limit: usize,
    #[case] max_bytes: usize,
    #[case] served: usize,
    #[case] more: bool,
) {
    let rows: Vec<_> = (0..rows).map(|i| row(i, 300)).collect();
    let body = handlers::page_body(&rows, limit, max_bytes).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), served);
    assert!(body.len() <= max_bytes.max(serde_json::to_vec(&rows[0]).unwrap().len()) + 100, "{}", body.len());
    let last = &rows[served - 1];
    let expected = more.then(|| query::Cursor { t: last.captured_at, id: last.message_id }.encode());
    assert_eq!(v["next_cursor"].as_str().map(String::from), expected);
}

/// A real server on a loopback port: what hyper itself does with hostile connections.
mod wire {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn serve(header_timeout_ms: u64) -> (std::net::SocketAddr, CancellationToken) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let limits = server::ServerLimits { header_timeout: Duration::from_millis(header_timeout_ms) };
        tokio::spawn(server::serve(listener, app(state_with(|_| {})), limits, stop.clone()));
        (addr, stop)
    }

    /// Everything the server sends until it closes (or 5 s pass).
    async fn read_all(s: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn a_slow_request_head_is_cut_off() {
        let (addr, stop) = serve(300).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let started = std::time::Instant::now();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let text = read_all(&mut s).await;
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        assert!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "{text:?}");
        stop.cancel();
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed() {
        let (addr, stop) = serve(300).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let started = std::time::Instant::now();
        let text = read_all(&mut s).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        stop.cancel();
    }

    #[rstest]
    #[case::garbage_request_line(b"NOT HTTP AT ALL\r\n\r\n".to_vec(), "400")]
    #[case::bad_header_name(b"GET /healthz HTTP/1.1\r\nBad Header: x\r\n\r\n".to_vec(), "400")]
    #[case::too_many_headers(
        [b"GET /healthz HTTP/1.1\r\n".to_vec(), b"x: y\r\n".repeat(server::HYPER_MAX_HEADERS + 1), b"\r\n".to_vec()].concat(),
        "431"
    )]
    #[tokio::test]
    async fn what_hyper_rejects_gets_a_bare_status_and_close(#[case] request: Vec<u8>, #[case] status: &str) {
        let (addr, stop) = serve(5_000).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&request).await.unwrap();
        let text = read_all(&mut s).await;
        assert!(text.starts_with(&format!("HTTP/1.1 {status}")), "{text:?}");
        eprintln!("{status}: {text:?}");
        stop.cancel();
    }

    #[tokio::test]
    async fn within_hyper_limits_protocol_errors_are_problems() {
        let (addr, stop) = serve(5_000).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!("GET /healthz?{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "a".repeat(9000));
        s.write_all(req.as_bytes()).await.unwrap();
        let text = read_all(&mut s).await;
        assert!(text.starts_with("HTTP/1.1 414"), "{text:?}");
        assert!(
            text.contains("application/problem+json") && text.contains("x-content-type-options: nosniff"),
            "{text}"
        );
        stop.cancel();
    }
}

//! Self-tests of the harness primitives: `eventually`/`never`, JSON matching, the API client
//! (against wiremock) and the SQL helpers (against the local PostgreSQL, in a scratch database).

use anyhow::anyhow;
use chrono::{DateTime, TimeZone as _, Utc};
use contract::MessageKind;
use harness::api::{ApiClient, Auth, HistoryQuery};
use harness::eventually::{Backoff, Check, convergence_log, eventually, never};
use harness::json_match::{MatchOptions, Mode, Tolerance, assert_match, diff, validate_contract};
use harness::sql::{self, Db, FeatureRow};
use rstest::rstest;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use uuid::Uuid;
use wiremock::matchers::{header, method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, ResponseTemplate};

// ---------------------------------------------------------------- eventually / never

#[rstest]
#[case::at_once(0)]
#[case::after_one(1)]
#[case::after_four(4)]
#[tokio::test]
async fn eventually_converges_after_failures(#[case] failures: u64) {
    let server = MockServer::start().await;
    // wiremock rejects `up_to_n_times(0)`, so the 503 mock exists only when failures are wanted.
    if failures > 0 {
        Mock::given(method("GET"))
            .and(path("/healthz"))
            .respond_with(ResponseTemplate::new(503))
            .up_to_n_times(failures)
            .with_priority(1)
            .mount(&server)
            .await;
    }
    Mock::given(method("GET"))
        .and(path("/healthz"))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .mount(&server)
        .await;
    let api = ApiClient::new(&server.uri(), None).unwrap();
    let scope = format!("converge-{failures}");
    let backoff = Backoff::with_deadline(Duration::from_secs(5)).scoped(&scope);

    let got = eventually("API health", "status 200", &backoff, || async {
        let resp = api.health().await?;
        Ok(match resp.status {
            200 => Check::Done(resp.body),
            other => Check::not_yet(format!("status {other}")),
        })
    })
    .await
    .unwrap();

    assert_eq!(got.value, "ok");
    assert_eq!(u64::from(got.attempts), failures + 1);
    let records: Vec<_> = convergence_log().into_iter().filter(|r| r.scope.as_deref() == Some(&scope)).collect();
    assert_eq!(records.len(), 1);
    assert!(records[0].ok);
    assert_eq!(records[0].what, "API health");
    assert_eq!(u64::from(records[0].attempts), failures + 1);
}

#[tokio::test(start_paused = true)]
async fn eventually_timeout_diagnostics_are_exact() {
    let backoff = Backoff::with_deadline(Duration::from_millis(100)).scoped("timeout-exact");
    let err =
        eventually::<(), _, _>("rows of sensor s-1", "3 rows", &backoff, || async { Ok(Check::not_yet("2 rows")) })
            .await
            .unwrap_err();

    // Paused clock: attempts at 0, 10, 30, 70 and 100 ms (the last pause is cut to the deadline).
    assert_eq!(
        err.to_string(),
        "timed out after 0.1s (5 attempts) waiting for rows of sensor s-1\n  expected: 3 rows\n  last seen: 2 rows"
    );
    let rec = convergence_log().into_iter().find(|r| r.scope.as_deref() == Some("timeout-exact")).unwrap();
    assert!(!rec.ok);
    assert_eq!((rec.attempts, rec.elapsed_ms), (5, 100));
}

#[tokio::test(start_paused = true)]
async fn eventually_reports_the_last_error_when_the_probe_fails_last() {
    let calls = AtomicU32::new(0);
    let backoff = Backoff::with_deadline(Duration::from_millis(30));
    let err = eventually::<(), _, _>("API ready", "status 200", &backoff, || {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                Ok(Check::not_yet("status 503"))
            } else {
                Err(anyhow!("connection refused").context("GET /readyz"))
            }
        }
    })
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "timed out after 0.0s (3 attempts) waiting for API ready\n  expected: status 200\n  last seen: GET /readyz: connection refused"
    );
}

#[tokio::test(start_paused = true)]
async fn never_fails_with_what_it_saw() {
    let calls = AtomicU32::new(0);
    let err = never("row for sensor quiet-1", Duration::from_secs(2), || {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        async move { Ok((n == 2).then(|| "message_id=m-1 sequence=7".to_owned())) }
    })
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("expected no row for sensor quiet-1 within 2.0s"), "{text}");
    assert!(text.ends_with("\n  seen: message_id=m-1 sequence=7"), "{text}");
    assert_eq!(calls.load(Ordering::SeqCst), 3, "stops at the first sighting");
}

#[tokio::test(start_paused = true)]
async fn never_passes_quiet_windows_and_needs_a_final_good_probe() {
    let attempts = never("dead letter", Duration::from_millis(500), || async { Ok(None) }).await.unwrap();
    assert!(attempts >= 3, "{attempts}");

    let calls = AtomicU32::new(0);
    let ok = never("dead letter", Duration::from_millis(500), || {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        async move { if n == 0 { Err(anyhow!("broker restarting")) } else { Ok(None) } }
    })
    .await;
    assert!(ok.is_ok(), "a transient error in between is tolerated: {ok:?}");

    let err =
        never("dead letter", Duration::from_millis(500), || async { Err(anyhow!("broker down")) }).await.unwrap_err();
    assert!(format!("{err:#}").contains("could not verify"), "{err:#}");
}

// ---------------------------------------------------------------- json_match

#[rstest]
#[case::low_edge(438.0, true)]
#[case::high_edge(442.0, true)]
#[case::centre(440.0, true)]
#[case::just_above(442.0001, false)]
#[case::just_below(437.9999, false)]
fn inline_tolerance_edges(#[case] actual: f64, #[case] ok: bool) {
    for spec in ["440 ± 2", "440 +- 2"] {
        let d = diff(&json!({ "f": spec }), &json!({ "f": actual }), &MatchOptions::exact());
        assert_eq!(d.is_empty(), ok, "{spec} vs {actual}: {d:?}");
        if !ok {
            assert_eq!(d, vec![format!("at /f: expected 440 ± 2, got {actual}")]);
        }
    }
}

#[rstest]
#[case(442.2, true)]
#[case(437.8, true)]
#[case(442.3, false)]
fn percentage_tolerance(#[case] actual: f64, #[case] ok: bool) {
    let inline = diff(&json!("440 ± 0.5%"), &json!(actual), &MatchOptions::exact());
    assert_eq!(inline.is_empty(), ok, "{inline:?}");
    let opts = MatchOptions::exact().with_tolerance("0.5%".parse().unwrap());
    assert_eq!(diff(&json!(440), &json!(actual), &opts).is_empty(), ok);
}

#[test]
fn mismatch_lines_name_every_path() {
    let opts = MatchOptions::subset().with_tolerance_at("/features/rms", Tolerance::abs(0.01));
    let expected = json!({ "sensor_id": "s-1", "features": { "rms": 0.35, "peak": 0.9 } });
    let actual = json!({ "sensor_id": "s-2", "features": { "rms": 0.5, "peak": 0.9, "extra": 1 }, "more": true });
    assert_eq!(
        diff(&expected, &actual, &opts),
        vec![r#"at /features/rms: expected 0.35 ± 0.01, got 0.5"#, r#"at /sensor_id: expected "s-1", got "s-2""#]
    );
    // The decimal edge must not be lost to binary rounding.
    assert!(diff(&json!({"features": {"rms": 0.35}}), &json!({"features": {"rms": 0.34}}), &opts).is_empty());
    let err = assert_match(&expected, &actual, &opts).unwrap_err().to_string();
    assert!(err.starts_with("JSON does not match (2 mismatches):\n  at /features/rms"), "{err}");
}

#[test]
fn ignore_paths_apply_to_both_sides() {
    let expected = json!({ "items": [ { "id": 1, "written_at": "x" }, { "id": 2 } ], "next_cursor": null });
    let actual =
        json!({ "items": [ { "id": 1, "written_at": "y" }, { "id": 2, "written_at": "z" } ], "next_cursor": "c" });
    let opts = MatchOptions::exact().ignoring(["/items/*/written_at", "/next_cursor"]);
    assert_eq!(diff(&expected, &actual, &opts), Vec::<String>::new());
    let d = diff(&expected, &actual, &MatchOptions::exact());
    assert_eq!(
        d,
        vec![
            r#"at /items/0/written_at: expected "x", got "y""#,
            r#"at /items/1/written_at: expected (absent), got "z""#,
            r#"at /next_cursor: expected null, got "c""#,
        ]
    );
}

#[test]
fn subset_recurses_into_nested_objects() {
    let actual = json!({ "a": { "b": { "c": 1, "d": 2 }, "e": 3 }, "f": 4 });
    let opts = MatchOptions::subset();
    assert!(diff(&json!({ "a": { "b": { "c": 1 } } }), &actual, &opts).is_empty());
    assert_eq!(diff(&json!({ "a": { "b": { "c": 2 } } }), &actual, &opts), vec!["at /a/b/c: expected 2, got 1"]);
    assert_eq!(diff(&json!({ "a": { "x": null } }), &actual, &opts), vec!["at /a/x: expected null, got (missing)"]);
    let exact = MatchOptions { mode: Mode::Exact, ..opts };
    assert_eq!(diff(&json!({ "f": 4 }), &json!({ "f": 4, "g": 5 }), &exact), vec!["at /g: expected (absent), got 5"]);
}

#[test]
fn arrays_compare_by_length_unless_contains() {
    let d = diff(&json!({ "items": [1, 2, 3] }), &json!({ "items": [1, 5] }), &MatchOptions::subset());
    assert_eq!(d, vec!["at /items: expected an array of 3 elements, got 2 elements", "at /items/1: expected 2, got 5"]);

    let actual = json!({ "items": [ { "t": "A", "n": 1 }, { "t": "B", "n": 2 } ] });
    let opts = MatchOptions::exact();
    assert!(diff(&json!({ "items": { "$contains": [ { "t": "B" } ] } }), &actual, &opts).is_empty());
    let d = diff(&json!({ "items": { "$contains": [ { "t": "C" } ] } }), &actual, &opts);
    assert_eq!(d.len(), 1);
    assert!(d[0].starts_with(r#"at /items: expected an element matching $contains[0] = {"t":"C"}"#), "{d:?}");
}

#[test]
fn contract_validation_lists_every_violation() {
    let mut msg = json!({
        "schema_version": 1, "feature_type": "A",
        "message_id": Uuid::new_v4(), "source_message_id": Uuid::new_v4(),
        "sensor_id": "s-1", "sequence": 0,
        "captured_at": "2025-01-01T00:00:00Z", "processed_at": "2025-01-01T00:00:01Z",
        "processed_by": "algo-a-1", "sample_rate": 16000, "channels": 1,
        "features": {
            "rms": 0.1, "peak": 0.2, "rms_dbfs": -20.0, "zero_crossing_rate": 0.1,
            "spectral_centroid_hz": 440.0, "dominant_frequency_hz": 440.0, "spectral_flatness": 0.1,
            "clipping_ratio": 0.0, "duration_ms": 100.0, "sample_count": 1600
        }
    });
    assert_eq!(validate_contract(MessageKind::FeatureA, &msg), Ok(()));
    msg["features"]["rms"] = json!(-1);
    msg["sequence"] = json!("seven");
    let errors = validate_contract(MessageKind::FeatureA, &msg).unwrap_err();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors.iter().any(|e| e.starts_with("at /features/rms: ")), "{errors:?}");
    assert!(errors.iter().any(|e| e.starts_with("at /sequence: ")), "{errors:?}");
    let root = validate_contract(MessageKind::FeatureB, &json!([])).unwrap_err();
    assert!(root[0].starts_with("at /: "), "{root:?}");
}

// ---------------------------------------------------------------- ApiClient

#[rstest]
#[case::sql_injection("x' OR 1=1 --", "/v1/sensors/x%27%20OR%201%3D1%20--/features/latest")]
#[case::slash_and_query("a/b?c#d", "/v1/sensors/a%2Fb%3Fc%23d/features/latest")]
#[case::percent_and_unicode("50%_é", "/v1/sensors/50%25_%C3%A9/features/latest")]
#[tokio::test]
async fn api_percent_encodes_hostile_sensor_ids(#[case] sensor_id: &str, #[case] raw_path: &str) {
    let server = MockServer::start().await;
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(404)).mount(&server).await;
    let api = ApiClient::new(&server.uri(), Some("s3cret".into())).unwrap();

    let resp = api.latest(sensor_id, "A").await.unwrap();
    assert_eq!(resp.status, 404);
    let received = server.received_requests().await.unwrap();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].url.path(), raw_path);
    assert_eq!(received[0].url.query(), Some("type=A"));
}

#[tokio::test]
async fn api_records_exchanges_with_the_token_redacted() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/features/abc"))
        .and(header("authorization", "Bearer s3cret"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("X-Request-Id", "r-1")
                .set_body_raw("x".repeat(100 * 1024), "text/plain"),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/features/abc"))
        .respond_with(
            ResponseTemplate::new(401)
                .insert_header("WWW-Authenticate", "Bearer")
                .set_body_raw(r#"{"title":"Unauthorized","status":401}"#, "application/problem+json"),
        )
        .mount(&server)
        .await;
    let api = ApiClient::new(&server.uri(), Some("s3cret".into())).unwrap();

    let ok = api.by_id("abc").await.unwrap();
    assert_eq!((ok.status, ok.header("x-request-id")), (200, Some("r-1")));
    let ex = api.last_exchange().unwrap();
    assert_eq!(ex.request_headers, vec![("authorization".to_owned(), "Bearer ***".to_owned())]);
    assert!(!format!("{ex:?}").contains("s3cret"));
    assert_eq!(ex.status, Some(200));
    assert!(ex.body.len() < 65 * 1024 && ex.body.starts_with(&"x".repeat(64 * 1024)), "{}", ex.body.len());
    let err = ok.json().unwrap_err().to_string();
    assert!(err.starts_with("response (status 200) is not JSON: xxx"), "{err}");

    let none = api.send("GET", "/v1/features/abc", &[], Auth::None).await.unwrap();
    assert_eq!((none.status, none.header("WWW-Authenticate")), (401, Some("Bearer")));
    assert_eq!(none.header("content-type"), Some("application/problem+json"));
    assert!(api.last_exchange().unwrap().request_headers.is_empty());

    let wrong = api.send("GET", "v1/features/abc", &[], Auth::Header("Bearer other".into())).await.unwrap();
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json().unwrap()["status"], 401);
    assert_eq!(api.last_exchange().unwrap().request_headers[0].1, "Bearer ***");
}

#[tokio::test]
async fn api_records_transport_errors() {
    // Bind then drop a listener to get a port with nothing behind it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let api = ApiClient::new(&format!("http://127.0.0.1:{port}"), None).unwrap();
    assert!(api.health().await.is_err());
    let ex = api.last_exchange().unwrap();
    assert_eq!(ex.status, None);
    assert!(ex.error.is_some());
    assert_eq!(ex.url, format!("http://127.0.0.1:{port}/healthz"));
}

#[tokio::test]
async fn api_history_sends_only_given_params() {
    let server = MockServer::start().await;
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(400)).mount(&server).await;
    let api = ApiClient::new(&server.uri(), None).unwrap();
    api.history(&HistoryQuery::default()).await.unwrap();
    let q = HistoryQuery {
        sensor_id: Some("a&b=c".into()),
        limit: Some("-1".into()),
        extra: vec![("limit".into(), "2".into())],
        ..HistoryQuery::default()
    };
    api.history(&q).await.unwrap();
    let received = server.received_requests().await.unwrap();
    assert_eq!(received[0].url.query(), None);
    assert_eq!(received[1].url.query(), Some("sensor_id=a%26b%3Dc&limit=-1&limit=2"));
}

fn page(items: &[i64], next: Option<&str>) -> ResponseTemplate {
    let items: Vec<Value> = items.iter().map(|i| json!({ "sequence": i })).collect();
    ResponseTemplate::new(200).set_body_json(json!({ "items": items, "next_cursor": next }))
}

async fn paged_server(third_cursor: Option<&str>) -> MockServer {
    let server = MockServer::start().await;
    let base = || Mock::given(method("GET")).and(path("/v1/features")).and(query_param("sensor_id", "s-1"));
    base().and(query_param_is_missing("cursor")).respond_with(page(&[1, 2], Some("c1"))).mount(&server).await;
    base().and(query_param("cursor", "c1")).respond_with(page(&[3, 4], Some("c2"))).mount(&server).await;
    base().and(query_param("cursor", "c2")).respond_with(page(&[5], third_cursor)).mount(&server).await;
    server
}

#[tokio::test]
async fn history_all_follows_cursors() {
    let server = paged_server(None).await;
    let api = ApiClient::new(&server.uri(), None).unwrap();
    let rows = api.history_all("s-1", "A", Some(2)).await.unwrap();
    let seqs: Vec<i64> = rows.iter().map(|r| r["sequence"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    let received = server.received_requests().await.unwrap();
    assert_eq!(received.len(), 3);
    assert_eq!(received[2].url.query(), Some("sensor_id=s-1&type=A&limit=2&cursor=c2"));
}

#[tokio::test]
async fn history_all_detects_a_repeated_cursor() {
    let server = paged_server(Some("c1")).await;
    let api = ApiClient::new(&server.uri(), None).unwrap();
    let err = api.history_all("s-1", "A", None).await.unwrap_err().to_string();
    assert_eq!(err, r#"history page 3 repeats cursor "c1": pagination would loop forever"#);
}

// ---------------------------------------------------------------- sql

/// Local PostgreSQL with trust auth; `HARNESS_SELFTEST_PG` overrides.
fn admin_url() -> String {
    std::env::var("HARNESS_SELFTEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn ts(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_735_689_600 + secs, 123_456_000).unwrap()
}

fn row(sensor: &str, ty: &str, seq: i64, captured: i64, source: Uuid) -> FeatureRow {
    FeatureRow {
        message_id: Uuid::new_v4(),
        feature_type: ty.into(),
        sensor_id: sensor.into(),
        source_message_id: source,
        sequence: seq,
        captured_at: ts(captured),
        processed_by: format!("algo-{}", ty.to_lowercase()),
        features: json!({ "rms": 0.25, "seq": seq }),
        written_at: ts(1000),
    }
}

async fn sql_scenario(config: &tokio_postgres::Config) -> anyhow::Result<()> {
    let db = Db::connect_config(config).await?;
    db.client().batch_execute(include_str!("../../fixtures/sql/0001_features.sql")).await?;

    let src = Uuid::new_v4();
    let rows = vec![
        row("ns_1/a", "A", 1, 10, src),
        row("ns_1/a", "B", 1, 10, src),
        row("ns_1/a", "A", 2, 20, Uuid::new_v4()),
        // Same captured_at as the previous one: the higher sequence must win `newest_row`.
        row("ns_1/a", "A", 3, 20, Uuid::new_v4()),
        row("ns_1/b", "A", 1, 5, Uuid::new_v4()),
        // Would match an unescaped `ns_1%` pattern.
        row("nsX1/c", "A", 1, 5, Uuid::new_v4()),
    ];
    assert_eq!(db.insert_rows(&rows).await?, 6);

    let a = db.rows_for_sensor("ns_1/a").await?;
    assert_eq!(a.len(), 4);
    assert_eq!(a[0].captured_at, ts(10), "oldest first");
    assert_eq!(db.rows_for_sensor_prefix("ns_1/").await?.len(), 5);
    assert_eq!(db.rows_for_sensor_prefix("ns_1").await?.len(), 5);
    assert_eq!(db.count_by_source(src).await?, (1, 1));

    let newest = db.newest_row("ns_1/a", "A").await?.expect("a newest row");
    assert_eq!(newest, rows[3], "round-trips exactly");
    assert_eq!(db.newest_row("ns_1/a", "Z").await?, None);
    let js = newest.to_json();
    assert_eq!(js["captured_at"], "2025-01-01T00:00:20.123456Z");
    assert_eq!(js["feature_type"], "A");
    assert_eq!(js["message_id"], json!(rows[3].message_id.to_string()));
    assert_eq!(js.as_object().map(|o| o.len()), Some(9));

    // The unique constraint is the SUT's guard; without it a duplicate must show up, not hide.
    let dup = rows[0].clone();
    assert_eq!(db.rows_by_message_id(dup.message_id).await?.len(), 1);
    assert!(db.insert_rows(std::slice::from_ref(&dup)).await.is_err(), "unique message_id");
    db.client().batch_execute("ALTER TABLE features DROP CONSTRAINT features_message_id_key").await?;
    db.insert_rows(std::slice::from_ref(&dup)).await?;
    assert_eq!(db.rows_by_message_id(dup.message_id).await?.len(), 2);

    assert!(db.delete_sensor_prefix("").await.is_err());
    assert_eq!(db.delete_sensor_prefix("ns_1").await?, 6);
    assert_eq!(db.rows_for_sensor_prefix("ns").await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn sql_helpers_against_a_scratch_database() {
    let admin = admin_url();
    let name = format!("harness_selftest_{}", Uuid::new_v4().simple());
    sql::create_database(&admin, &name).await.unwrap();
    let mut config: tokio_postgres::Config = admin.parse().unwrap();
    config.dbname(&name);
    // Run the body first and drop the database whatever happened, then report.
    let outcome = sql_scenario(&config).await;
    let dropped = sql::drop_database(&admin, &name).await;
    outcome.unwrap();
    dropped.unwrap();
    assert!(sql::create_database(&admin, "Bad-Name").await.is_err());
}

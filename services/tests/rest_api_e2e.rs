//! The REST API over real HTTP (reqwest) against `build()` on port 0, with a scratch database and
//! broker namespace: readiness, the broker-fed latest cache (and its DLQ), keyset pagination,
//! time-zone bounds, lookups by id, and auth/headers on the wire.

mod common;

use common::{Scratch, channel, eventually, feature_a, feature_b, publish, t};
use lapin::options::BasicGetOptions;
use reqwest::StatusCode;
use serde_json::Value;
use services::contract::AnyFeature;
use services::db;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const TOKEN: &str = "e2e-token";

struct Api {
    /// `http://127.0.0.1:<port>`.
    base: String,
    /// HTTP client with the bearer token set per request.
    http: reqwest::Client,
    /// Stops the server.
    stop: CancellationToken,
    /// The server task.
    task: tokio::task::JoinHandle<Result<(), services::runtime::ServiceError>>,
}

impl Api {
    async fn start(scratch: &Scratch) -> Api {
        let mut settings = scratch.settings();
        settings.rest_api.bind = "127.0.0.1:0".into();
        settings.rest_api.tokens = vec![TOKEN.into()];
        settings.rest_api.default_limit = 100;
        settings.rest_api.max_limit = 500;
        settings.instance_id = Some("rest-api-e2e".into());
        let stop = CancellationToken::new();
        let app = services::rest_api::build(settings, stop.clone()).await.unwrap();
        let base = format!("http://127.0.0.1:{}", app.port());
        let task = tokio::spawn(app.run_until_stopped());
        let api = Api { base, http: reqwest::Client::new(), stop, task };
        eventually(10, "/readyz to be 200", || async {
            let res = api.http.get(format!("{}/readyz", api.base)).send().await.ok()?;
            (res.status() == StatusCode::OK).then_some(())
        })
        .await;
        api
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> reqwest::Response {
        self.http.get(format!("{}{path}", self.base)).query(query).bearer_auth(TOKEN).send().await.unwrap()
    }

    async fn json(&self, path: &str, query: &[(&str, &str)]) -> (StatusCode, Value) {
        let res = self.get(path, query).await;
        (res.status(), res.json().await.unwrap())
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task).await.expect("API stops").unwrap().unwrap();
    }
}

async fn seeded(scratch: &Scratch, rows: &[AnyFeature]) {
    let mut c = scratch.client().await;
    db::migrate(&mut c).await.unwrap();
    db::insert_batch(&c, rows, false).await.unwrap();
}

#[tokio::test]
async fn history_pages_bounds_and_lookup_over_http() {
    let scratch = Scratch::new().await;
    let base = t("2024-06-01T00:00:00Z");
    let mut rows: Vec<AnyFeature> = (0..250u64)
        .map(|i| {
            let at = base + chrono::Duration::milliseconds((i / 3) as i64 * 250);
            if i % 2 == 0 { AnyFeature::A(feature_a("s-h", i, at)) } else { AnyFeature::B(feature_b("s-h", i, at)) }
        })
        .collect();
    rows.push(AnyFeature::A(feature_a("tz", 0, t("2024-01-01T00:00:00Z"))));
    rows.push(AnyFeature::A(feature_a("tz", 1, t("2024-01-01T00:00:10Z"))));
    seeded(&scratch, &rows).await;
    let api = Api::start(&scratch).await;

    // 250 rows, 100 per page: 100 + 100 + 50, in (captured_at, message_id) order, no repeats.
    let mut expected: Vec<(chrono::DateTime<chrono::Utc>, Uuid)> =
        rows[..250].iter().map(|r| (r.captured_at(), r.message_id())).collect();
    expected.sort();
    let expected: Vec<String> = expected.iter().map(|(_, id)| id.to_string()).collect();
    let (mut seen, mut sizes, mut cursor) = (Vec::new(), Vec::new(), None::<String>);
    loop {
        let mut q = vec![("sensor_id", "s-h"), ("limit", "100")];
        if let Some(c) = cursor.as_deref() {
            q.push(("cursor", c));
        }
        let (status, page) = api.json("/v1/features", &q).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let items = page["items"].as_array().unwrap();
        sizes.push(items.len());
        seen.extend(items.iter().map(|r| r["message_id"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(sizes, vec![100, 100, 50]);
    assert_eq!(seen, expected);

    // Row shape: UTC microsecond timestamps and the features object as stored.
    let probe = &rows[7];
    let (status, row) = api.json(&format!("/v1/features/{}", probe.message_id()), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(row["captured_at"], db::format_micros(&probe.captured_at()));
    assert_eq!(row["features"], probe.features_json());
    assert_eq!(row["feature_type"], "B");
    assert_eq!(row["sequence"], 7);
    let mut keys: Vec<&str> = row.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "captured_at",
            "feature_type",
            "features",
            "message_id",
            "processed_by",
            "sensor_id",
            "sequence",
            "source_message_id",
            "written_at"
        ]
    );
    let (status, p) = api.json(&format!("/v1/features/{}", Uuid::new_v4()), &[]).await;
    assert_eq!((status, p["type"].as_str()), (StatusCode::NOT_FOUND, Some("urn:apq:problem:not_found")));

    // Bounds given in other zones: from inclusive, to exclusive; from == to is empty.
    let q = [("sensor_id", "tz"), ("from", "2024-01-01T02:00:00+02:00"), ("to", "2023-12-31T19:00:10-05:00")];
    let (_, page) = api.json("/v1/features", &q).await;
    let seqs: Vec<i64> = page["items"].as_array().unwrap().iter().map(|r| r["sequence"].as_i64().unwrap()).collect();
    assert_eq!(seqs, vec![0]);
    let q = [("sensor_id", "tz"), ("from", "2024-01-01T00:00:00Z"), ("to", "2024-01-01T00:00:00Z")];
    let (status, page) = api.json("/v1/features", &q).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page, serde_json::json!({"items": [], "next_cursor": null}));
    // Type filter.
    let (_, page) = api.json("/v1/features", &[("sensor_id", "s-h"), ("type", "A"), ("limit", "500")]).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 125);

    api.stop().await;
    scratch.cleanup().await;
}

#[tokio::test]
async fn latest_comes_from_the_broker_and_garbage_is_dead_lettered() {
    let scratch = Scratch::new().await;
    seeded(&scratch, &[]).await;
    let api = Api::start(&scratch).await;
    let names = scratch.names();
    let (_conn, ch) = channel().await;

    let at = t("2024-04-01T00:00:00Z");
    let newest = feature_a("live-1", 3, at + chrono::Duration::seconds(3));
    // Out of order: the newest first, then older ones that must not replace it.
    for f in [&newest, &feature_a("live-1", 1, at), &feature_a("live-1", 2, at + chrono::Duration::seconds(1))] {
        publish(&ch, &names.features_a(), &serde_json::to_vec(f).unwrap()).await;
    }
    let b = feature_b("live-1", 3, at);
    let b_body = serde_json::to_vec(&b).unwrap();
    publish(&ch, &names.features_b(), &b_body).await;
    publish(&ch, &names.features_a(), br#"{"schema_version": 2}"#).await;
    // One queue is consumed in order: once this last one is cached, all earlier A's were handled.
    publish(&ch, &names.features_a(), &serde_json::to_vec(&feature_a("sentinel", 0, at)).unwrap()).await;

    let path = "/v1/sensors/live-1/features/latest";
    eventually(10, "the sentinel and the Feature B to be cached", || async {
        let sentinel = api.get("/v1/sensors/sentinel/features/latest", &[("type", "A")]).await.status();
        let b = api.get(path, &[("type", "B")]).await.status();
        (sentinel == StatusCode::OK && b == StatusCode::OK).then_some(())
    })
    .await;
    let res = api.get(path, &[("type", "B")]).await;
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(res.bytes().await.unwrap(), b_body, "served exactly as published");
    let (status, got) = api.json(path, &[("type", "A")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, serde_json::to_value(&newest).unwrap(), "an older message replaced the newest");
    let (status, p) = api.json("/v1/sensors/nobody/features/latest", &[("type", "A")]).await;
    assert_eq!((status, p["instance"].as_str()), (StatusCode::NOT_FOUND, Some("/v1/sensors/nobody/features/latest")));

    let dead = eventually(5, "the dead letter", || {
        let (ch, q) = (ch.clone(), names.rest_api_dlq());
        async move { ch.basic_get(q.as_str().into(), BasicGetOptions { no_ack: true }).await.unwrap() }
    })
    .await;
    assert_eq!(
        services::amqp::header_str(&dead.delivery.properties, "x-dlq-reason").as_deref(),
        Some("unsupported_schema_version")
    );

    // On the wire: auth challenge, problem type and hardening headers.
    let res = api.http.get(format!("{}{path}?type=A", api.base)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["www-authenticate"], r#"Bearer realm="audio-pipeline""#);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert_eq!(res.headers()["x-frame-options"], "DENY");
    let res =
        api.http.get(format!("{}/v1/features?sensor_id=x&bogus=1", api.base)).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let p: Value = res.json().await.unwrap();
    assert_eq!(p["invalid_params"][0]["name"], "bogus");

    api.stop().await;
    scratch.cleanup().await;
}

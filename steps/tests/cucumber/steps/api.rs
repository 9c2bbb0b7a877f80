//! The REST API, as a client sees it: auth, endpoints, validation, pagination, rate limiting.

use crate::params::{DurationParam, FeatureTypeParam};
use crate::world::World;
use anyhow::{Context, bail, ensure};
use cucumber::{given, then, when};
use harness::api::{Auth, HistoryQuery};
use harness::eventually::{Check, eventually};
use harness::sut::Component;
use serde_json::Value;
use std::net::IpAddr;
use std::time::Duration;

fn auth_of(spec: &str) -> Auth {
    match spec {
        "none" => Auth::None,
        "the valid token" => Auth::Default,
        other => Auth::Header(other.to_string()),
    }
}

#[when(expr = "I call GET {string} with authorization {string}")]
async fn call_with_auth(w: &mut World, path: String, auth: String) -> anyhow::Result<()> {
    let path = path.replace("{sensor}", &w.sensor("probe"));
    let r = w.api()?.send("GET", &path, &[], auth_of(&auth)).await?;
    w.set_response(r);
    Ok(())
}

#[when(expr = "I call {word} {string}")]
async fn call_method(w: &mut World, method: String, path: String) -> anyhow::Result<()> {
    let path = path.replace("{sensor}", &w.sensor("probe"));
    let r = w.api()?.send(&method, &path, &[], Auth::Default).await?;
    w.set_response(r);
    Ok(())
}

#[when(expr = "I ask the API for the latest Feature {type} of sensor {string}")]
async fn latest(w: &mut World, t: FeatureTypeParam, sensor: String) -> anyhow::Result<()> {
    let r = w.api()?.latest(&w.sensor(&sensor), t.letter()).await?;
    w.set_response(r);
    Ok(())
}

#[when(expr = "I ask the API for the latest features of sensor {string} with type {string}")]
async fn latest_raw_type(w: &mut World, sensor: String, t: String) -> anyhow::Result<()> {
    let r = w.api()?.latest(&w.sensor(&sensor), &t).await?;
    w.set_response(r);
    Ok(())
}

#[when(expr = "I ask the API for the history of sensor {string}")]
async fn history(w: &mut World, sensor: String) -> anyhow::Result<()> {
    let q = HistoryQuery { sensor_id: Some(w.sensor(&sensor)), ..Default::default() };
    let r = w.api()?.history(&q).await?;
    w.set_response(r);
    Ok(())
}

/// `param` is one of sensor_id, type, from, to, limit, cursor or any other name (sent verbatim).
#[when(expr = "I ask the API for the history of sensor {string} with {word} {string}")]
async fn history_with(w: &mut World, sensor: String, param: String, value: String) -> anyhow::Result<()> {
    let mut q = HistoryQuery { sensor_id: Some(w.sensor(&sensor)), ..Default::default() };
    match param.as_str() {
        "sensor_id" => q.sensor_id = Some(value),
        "type" => q.feature_type = Some(value),
        "from" => q.from = Some(value),
        "to" => q.to = Some(value),
        "limit" => q.limit = Some(value),
        "cursor" => q.cursor = Some(value),
        _ => q.extra.push((param, value)),
    }
    let r = w.api()?.history(&q).await?;
    w.set_response(r);
    Ok(())
}

#[when(expr = "I ask the API for the Feature {type} history of sensor {string} from {string} to {string}")]
async fn history_range(
    w: &mut World,
    t: FeatureTypeParam,
    sensor: String,
    from: String,
    to: String,
) -> anyhow::Result<()> {
    let q = HistoryQuery {
        sensor_id: Some(w.sensor(&sensor)),
        feature_type: Some(t.letter().into()),
        from: Some(from),
        to: Some(to),
        limit: Some("1000".into()),
        ..Default::default()
    };
    let r = w.api()?.history(&q).await?;
    w.set_response(r);
    Ok(())
}

#[when(expr = "I ask the API for feature {string}")]
async fn by_literal_id(w: &mut World, id: String) -> anyhow::Result<()> {
    let r = w.api()?.by_id(&id).await?;
    w.set_response(r);
    Ok(())
}

#[when(expr = "I ask the API for seeded row {int} by its message id")]
async fn by_seeded_id(w: &mut World, index: usize) -> anyhow::Result<()> {
    let row = w.seeded.get(index).with_context(|| format!("only {} rows were seeded", w.seeded.len()))?;
    let r = w.api()?.by_id(&row.message_id.to_string()).await?;
    w.set_response(r);
    Ok(())
}

#[then(expr = "the response status is {int}")]
async fn status_is(w: &mut World, status: u16) -> anyhow::Result<()> {
    w.response()?.expect_status(status).map(|_| ())
}

#[then(expr = "the response is a problem with status {int}")]
async fn problem(w: &mut World, status: u16) -> anyhow::Result<()> {
    let r = w.response()?;
    r.expect_status(status)?;
    let ct = r.header("content-type").unwrap_or("");
    ensure!(
        ct.starts_with("application/problem+json"),
        "expected content-type application/problem+json, got {ct:?}; body {}",
        r.body
    );
    let body = r.json()?;
    ensure!(body["status"] == status, "problem body status {} differs from HTTP status {status}", body["status"]);
    for field in ["type", "title"] {
        ensure!(body[field].as_str().is_some_and(|s| !s.is_empty()), "problem body lacks {field:?}: {body}");
    }
    let text = r.body.to_lowercase();
    ensure!(
        !text.contains("panicked") && !text.contains("stack backtrace") && !text.contains(".rs:"),
        "problem body leaks internals: {}",
        r.body
    );
    Ok(())
}

#[then(expr = "the problem names the invalid parameter {string}")]
async fn problem_names(w: &mut World, param: String) -> anyhow::Result<()> {
    let body = w.response()?.json()?;
    let names: Vec<&str> = body["invalid_params"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["name"].as_str()).collect())
        .unwrap_or_default();
    ensure!(names.contains(&param.as_str()), "expected invalid_params to name {param:?}; got {names:?} in {body}");
    Ok(())
}

#[then(expr = "the response has header {string} containing {string}")]
async fn header_contains(w: &mut World, name: String, needle: String) -> anyhow::Result<()> {
    let r = w.response()?;
    let v = r.header(&name).with_context(|| format!("no {name} header; headers: {:?}", r.headers))?;
    ensure!(v.contains(&needle), "header {name}: expected to contain {needle:?}, got {v:?}");
    Ok(())
}

#[then("the response carries the security headers")]
async fn security_headers(w: &mut World) -> anyhow::Result<()> {
    let r = w.response()?;
    for (name, want) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("cache-control", "no-store"),
        ("content-security-policy", "default-src 'none'"),
        ("referrer-policy", "no-referrer"),
    ] {
        let got = r.header(name).unwrap_or("<missing>");
        ensure!(got.contains(want), "header {name}: expected {want:?}, got {got:?}");
    }
    Ok(())
}

#[then(expr = "the response body has {string} equal to {string}")]
async fn body_field(w: &mut World, pointer: String, expected: String) -> anyhow::Result<()> {
    let body = w.response()?.json()?;
    let got = body.pointer(&pointer).with_context(|| format!("no {pointer} in {body}"))?;
    let got_text = got.as_str().map(String::from).unwrap_or_else(|| got.to_string());
    ensure!(got_text == expected, "{pointer}: expected {expected:?}, got {got_text:?}");
    Ok(())
}

#[then(expr = "the response lists {int} row(s)")]
async fn lists_n(w: &mut World, n: usize) -> anyhow::Result<()> {
    let body = w.response()?.expect_status(200)?.json()?;
    let items = body["items"].as_array().with_context(|| format!("no items array in {body}"))?;
    ensure!(items.len() == n, "expected {n} rows, got {}: {}", items.len(), body);
    Ok(())
}

#[then(expr = "the response lists exactly the seeded rows {int} to {int}")]
async fn lists_seeded_range(w: &mut World, first: usize, last: usize) -> anyhow::Result<()> {
    let body = w.response()?.expect_status(200)?.json()?;
    let got: Vec<String> = body["items"]
        .as_array()
        .context("no items")?
        .iter()
        .filter_map(|i| i["message_id"].as_str().map(String::from))
        .collect();
    let want: Vec<String> = w.seeded[first..=last].iter().map(|r| r.message_id.to_string()).collect();
    ensure!(
        got == want,
        "expected seeded rows {first}..={last} ({} ids), got {} ids\n  expected {:?}\n  got      {:?}",
        want.len(),
        got.len(),
        want,
        got
    );
    Ok(())
}

#[then(expr = "the response equals seeded row {int}")]
async fn equals_seeded(w: &mut World, index: usize) -> anyhow::Result<()> {
    let body = w.response()?.expect_status(200)?.json()?;
    let row = &w.seeded[index];
    let mut want = row.to_json();
    let mut got = body.clone();
    // written_at is set by the database clock; the rest must match exactly.
    for v in [&mut want, &mut got] {
        v.as_object_mut().map(|o| o.remove("written_at"));
    }
    let diffs = harness::json_match::diff(&want, &got, &harness::json_match::MatchOptions::exact());
    ensure!(diffs.is_empty(), "row differs from what was stored:\n  {}", diffs.join("\n  "));
    Ok(())
}

#[then(
    expr = "paging through the Feature {type} history of sensor {string} {int} rows at a time returns every seeded row exactly once, in order"
)]
async fn paging(w: &mut World, t: FeatureTypeParam, sensor: String, page: u32) -> anyhow::Result<()> {
    let items = w.api()?.history_all(&w.sensor(&sensor), t.letter(), Some(page)).await?;
    let got: Vec<String> = items.iter().filter_map(|i| i["message_id"].as_str().map(String::from)).collect();
    let mut seeded = w.seeded.clone();
    seeded.sort_by_key(|r| (r.captured_at, r.message_id));
    let want: Vec<String> = seeded.iter().map(|r| r.message_id.to_string()).collect();
    let mut unique = got.clone();
    unique.sort();
    unique.dedup();
    ensure!(unique.len() == got.len(), "{} rows were returned more than once", got.len() - unique.len());
    let missing: Vec<&String> = want.iter().filter(|id| !got.contains(id)).collect();
    ensure!(missing.is_empty(), "{} seeded rows never appeared (first: {:?})", missing.len(), missing.first());
    ensure!(got == want, "rows are not in (captured_at, message_id) order");
    Ok(())
}

/// Pages through a filtered history and checks every page against the harness's model of the
/// seeded rows (`harness::history::check_pages`). `type` "any" and `from`/`to` "open" leave the
/// parameter out.
#[then(
    expr = "paging the history of sensor {string} with type {string} from {string} to {string} {int} rows at a time serves exactly the model's rows on every page"
)]
async fn paging_model(
    w: &mut World,
    sensor: String,
    t: String,
    from: String,
    to: String,
    limit: usize,
) -> anyhow::Result<()> {
    let open = |v: &str| (v != "open").then(|| v.to_string());
    let parse = |v: &Option<String>| -> anyhow::Result<Option<chrono::DateTime<chrono::Utc>>> {
        v.as_deref()
            .map(|s| chrono::DateTime::parse_from_rfc3339(s).map(|d| d.with_timezone(&chrono::Utc)))
            .transpose()
            .map_err(|e| anyhow::anyhow!("a bound of the scenario: {e}"))
    };
    let (from, to) = (open(&from), open(&to));
    let filter = harness::history::Filter {
        sensor_id: w.sensor(&sensor),
        feature_type: (t != "any").then(|| t.clone()),
        from: parse(&from)?,
        to: parse(&to)?,
    };
    let want = harness::history::expected(&w.seeded, &filter).len();
    ensure!(want > 0, "the model selects no seeded row: the scenario checks nothing");
    let api = w.api()?;
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    // Enough pages for the model's rows, plus a few to show a server that never stops.
    for page in 1..=want / limit + 3 {
        let q = HistoryQuery {
            sensor_id: Some(filter.sensor_id.clone()),
            feature_type: filter.feature_type.clone(),
            from: from.clone(),
            to: to.clone(),
            limit: Some(limit.to_string()),
            cursor: cursor.clone(),
            ..Default::default()
        };
        let r = api.history(&q).await?;
        let body = r.expect_status(200).with_context(|| format!("stage: REST API history — page {page}"))?.json()?;
        let items = body["items"].as_array().with_context(|| format!("page {page} has no items: {body}"))?.clone();
        cursor = body["next_cursor"].as_str().map(String::from);
        pages.push(harness::history::Page { items, next_cursor: cursor.clone() });
        if cursor.is_none() {
            break;
        }
    }
    harness::history::check_pages(&w.seeded, &filter, limit, &pages).map_err(|e| {
        anyhow::anyhow!(
            "stage: REST API history (GET /v1/features over PostgreSQL, keyset paging) — sensor {sensor:?}, type {t}, from {}, to {}, limit {limit}: {e}",
            from.as_deref().unwrap_or("open"),
            to.as_deref().unwrap_or("open")
        )
    })?;
    Ok(())
}

#[then(expr = "the response only contains rows of sensor {string}")]
async fn only_sensor(w: &mut World, sensor: String) -> anyhow::Result<()> {
    let r = w.response()?;
    ensure!(r.status < 500, "server error {}: {}", r.status, r.body);
    if r.status == 200 {
        let want = w.sensor(&sensor);
        let body = r.json()?;
        for item in body["items"].as_array().map(Vec::as_slice).unwrap_or_default() {
            ensure!(item["sensor_id"] == want.as_str(), "a row of another sensor leaked: {item}");
        }
    }
    Ok(())
}

#[then(expr = "the API eventually serves the latest Feature {type} of sensor {string} from its last chunk")]
async fn eventually_latest(w: &mut World, t: FeatureTypeParam, sensor: String) -> anyhow::Result<()> {
    let last = w.chunks_of(&sensor).last().map(|c| c.message_id).context("no chunk was published for this sensor")?;
    latest_is(w, t, &sensor, last).await
}

/// "Latest" is the greatest `(captured_at, sequence, message_id)`, not the last to arrive.
#[then(expr = "the API eventually serves the latest Feature {type} of sensor {string} from its newest chunk")]
async fn eventually_latest_newest(w: &mut World, t: FeatureTypeParam, sensor: String) -> anyhow::Result<()> {
    let newest = w
        .chunks_of(&sensor)
        .into_iter()
        .max_by_key(|c| (c.captured_at, c.sequence, c.message_id))
        .map(|c| c.message_id)
        .context("no chunk was published for this sensor")?;
    latest_is(w, t, &sensor, newest).await
}

/// Waits until the API's latest Feature `t` of `sensor` comes from chunk `last`.
async fn latest_is(w: &mut World, t: FeatureTypeParam, sensor: &str, last: uuid::Uuid) -> anyhow::Result<()> {
    let api = w.api()?.clone();
    let sensor_id = w.sensor(sensor);
    let letter = t.letter();
    let body = eventually(
        &format!("the latest Feature {letter} of {sensor:?}"),
        &format!("a Feature {letter} whose source_message_id is {last}"),
        &w.backoff(),
        || {
            let (api, sensor_id) = (api.clone(), sensor_id.clone());
            async move {
                let r = api.latest(&sensor_id, letter).await?;
                if r.status != 200 {
                    return Ok(Check::NotYet {
                        observed: format!("status {}: {}", r.status, r.body.chars().take(200).collect::<String>()),
                    });
                }
                let body = r.json()?;
                Ok(if body["source_message_id"] == last.to_string() {
                    Check::Done(body)
                } else {
                    Check::NotYet { observed: format!("source_message_id {}", body["source_message_id"]) }
                })
            }
        },
    )
    .await?
    .value;
    w.ledger.record_api_seen(last);
    let errors = harness::json_match::validate_contract(t.0.kind(), &body).err().unwrap_or_default();
    ensure!(errors.is_empty(), "the API served a message that breaks the contract: {errors:?}");
    Ok(())
}

#[then(expr = "the latest Feature {type} of sensor {string} from the API equals the newest stored row")]
async fn latest_equals_newest(w: &mut World, t: FeatureTypeParam, sensor: String) -> anyhow::Result<()> {
    let sensor_id = w.sensor(&sensor);
    let newest = w.env.db.newest_row(&sensor_id, t.letter()).await?.context("no stored row")?;
    let r = w.api()?.latest(&sensor_id, t.letter()).await?;
    let body = r.expect_status(200)?.json()?;
    ensure!(
        body["message_id"] == newest.message_id.to_string(),
        "cache and database disagree: API latest {} (seq {}), newest row {} (seq {})",
        body["message_id"],
        body["sequence"],
        newest.message_id,
        newest.sequence
    );
    ensure!(
        body["features"] == newest.features,
        "features differ: API {} vs row {}",
        body["features"],
        newest.features
    );
    Ok(())
}

#[then("the OpenAPI document served equals fixtures/contracts/openapi.json")]
async fn openapi_same(w: &mut World) -> anyhow::Result<()> {
    let r = w.api()?.openapi().await?;
    r.expect_status(200)?;
    let file = std::fs::read_to_string(crate::workspace_root().join("fixtures/contracts/openapi.json"))?;
    let served: Value = r.json()?;
    let on_disk: Value = serde_json::from_str(&file)?;
    if served != on_disk {
        bail!("the served OpenAPI document differs from fixtures/contracts/openapi.json");
    }
    Ok(())
}

#[when(expr = "I send {int} requests for the latest Feature A of sensor {string} at once")]
async fn burst(w: &mut World, n: usize, sensor: String) -> anyhow::Result<()> {
    let api = w.api()?.clone();
    let sensor_id = w.sensor(&sensor);
    let futures = (0..n).map(|_| {
        let (api, sensor_id) = (api.clone(), sensor_id.clone());
        async move { api.latest(&sensor_id, "A").await }
    });
    w.responses = futures::future::try_join_all(futures).await?;
    Ok(())
}

#[then(expr = "at least {int} of them are rejected with 429 and a Retry-After header")]
async fn some_429(w: &mut World, min: usize) -> anyhow::Result<()> {
    let limited: Vec<_> = w.responses.iter().filter(|r| r.status == 429).collect();
    ensure!(
        limited.len() >= min,
        "expected at least {min} responses with 429, got {} (statuses {:?})",
        limited.len(),
        w.responses.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for r in limited {
        let ra = r.header("retry-after").context("a 429 without Retry-After")?;
        ensure!(ra.parse::<u64>().is_ok_and(|s| s >= 1), "Retry-After must be whole seconds >= 1, got {ra:?}");
    }
    let others: Vec<u16> =
        w.responses.iter().map(|r| r.status).filter(|s| *s != 429 && *s != 200 && *s != 404).collect();
    ensure!(others.is_empty(), "unexpected statuses besides 200/404/429: {others:?}");
    Ok(())
}

// ---- Negative authentication from clients of their own (issue #12)

/// The token the harness authenticates with (the run's first configured token).
fn valid_token(w: &World) -> anyhow::Result<String> {
    if let Some(t) = &w.env.config.api_token {
        return Ok(t.clone());
    }
    w.pipeline()
        .service_env
        .iter()
        .find(|(k, _)| k == "APQ_API_TOKENS")
        .and_then(|(_, v)| v.split(',').next())
        .map(String::from)
        .context("no API token is configured")
}

/// A loopback address of its own (127.x.y.z): a client with a failed-authentication allowance of
/// its own, so negative cases never eat the shared API's allowance for 127.0.0.1.
fn fresh_client_address() -> IpAddr {
    let [a, b, c]: [u8; 3] = rand::random();
    IpAddr::V4(std::net::Ipv4Addr::new(127, a.max(1), b, c.max(2)))
}

/// Authorization headers built from the valid token (none is written into a feature file):
/// `a prefix of the valid token`, `the valid token with a suffix`, `the valid token in upper
/// case`, `the valid token after two spaces`, `the valid token with a second word`, `the valid
/// token under the scheme bearer`, `the valid token twice`, `the valid token in the query only`;
/// anything else is sent as the header value itself (`none`: no header).
#[when(expr = "a client of its own calls GET {string} with authorization {string}")]
async fn fresh_client_auth(w: &mut World, path: String, spec: String) -> anyhow::Result<()> {
    let token = valid_token(w)?;
    let mut path = path.replace("{sensor}", &w.sensor("probe"));
    let mut headers = Vec::new();
    let auth = match spec.as_str() {
        "a prefix of the valid token" => Auth::Header(format!("Bearer {}", &token[..token.len() - 1])),
        "the valid token with a suffix" => Auth::Header(format!("Bearer {token}x")),
        "the valid token in upper case" => Auth::Header(format!("Bearer {}", token.to_uppercase())),
        "the valid token after two spaces" => Auth::Header(format!("Bearer  {token}")),
        "the valid token with a second word" => Auth::Header(format!("Bearer {token} extra")),
        "the valid token under the scheme bearer" => Auth::Header(format!("bearer {token}")),
        "the valid token twice" => {
            headers.push(("authorization".to_string(), format!("Bearer {token}")));
            Auth::Header(format!("Bearer {token}"))
        }
        "the valid token in the query only" => {
            path.push_str(&format!("&access_token={token}"));
            Auth::None
        }
        other => auth_of(other),
    };
    ensure!(token.len() > 1 && token != token.to_uppercase(), "the token {token:?} cannot be varied this way");
    let r = w.api()?.from_source(fresh_client_address())?.send("GET", &path, &headers, auth).await?;
    w.set_response(r);
    Ok(())
}

// ---- Readiness with the database or the broker gone (issue #12)

/// A private pipeline with one REST API whose database and broker links each go through a fault
/// proxy of the scenario's own (`api-db`, `api-broker`); the shared servers are never touched.
#[given("a private pipeline whose REST API reaches the database and the broker through fault proxies")]
async fn private_api_behind_proxies(w: &mut World) -> anyhow::Result<()> {
    use harness::faults::Proxy;
    use harness::sensor::{socket_addr_of, with_addr};
    let env_of = |k: &str| w.env.shared.service_env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let db_url = env_of("APQ_DATABASE_URL").context("no database URL for the services (local profile only)")?;
    let amqp_url = env_of("APQ_AMQP_URL").context("no broker URL for the services")?;
    let db = Proxy::start(&format!("{}-api-db", w.ns.prefix), socket_addr_of(&db_url)?).await?;
    let broker = Proxy::start(&format!("{}-api-broker", w.ns.prefix), socket_addr_of(&amqp_url)?).await?;
    private_api(
        w,
        &[
            ("APQ_DATABASE_URL", with_addr(&db_url, db.addr())?),
            ("APQ_AMQP_URL", with_addr(&amqp_url, broker.addr())?),
            // Come back quickly once a link heals.
            ("APQ_RECONNECT_MAX_MS", "500".into()),
        ],
    )
    .await?;
    w.sensor.proxies.insert("api-db".into(), db);
    w.sensor.proxies.insert("api-broker".into(), broker);
    Ok(())
}

fn api_link<'a>(w: &'a World, link: &str) -> anyhow::Result<&'a harness::faults::Proxy> {
    let name = match link {
        "database" => "api-db",
        "broker" => "api-broker",
        other => bail!("unknown link {other:?}: database or broker"),
    };
    w.sensor.proxies.get(name).with_context(|| format!("no {name} proxy: start the pipeline with fault proxies"))
}

#[when(expr = "the REST API's {word} link is cut")]
async fn cut_api_link(w: &mut World, link: String) -> anyhow::Result<()> {
    let p = api_link(w, &link)?;
    p.set(harness::faults::LinkFault::Reset);
    p.reset_connections();
    Ok(())
}

#[when(expr = "the REST API's {word} link is restored")]
async fn restore_api_link(w: &mut World, link: String) -> anyhow::Result<()> {
    api_link(w, &link)?.clear();
    Ok(())
}

/// Polls `/readyz` until it answers `status` (a 503 must be a problem that discloses nothing).
#[then(expr = "the API's readiness becomes {int} within {duration}")]
async fn readiness_becomes(w: &mut World, status: u16, within: DurationParam) -> anyhow::Result<()> {
    let api = w.api()?;
    let mut backoff = w.backoff();
    backoff.deadline = within.0;
    let r = eventually(&format!("/readyz answering {status}"), &format!("status {status}"), &backoff, || {
        let api = api.clone();
        async move {
            let r = api.ready().await?;
            Ok(if r.status == status {
                Check::Done(r)
            } else {
                Check::NotYet {
                    observed: format!("status {}: {}", r.status, r.body.chars().take(200).collect::<String>()),
                }
            })
        }
    })
    .await
    .map_err(|e| e.context("stage: REST API readiness (/readyz)"))?
    .value;
    if status == 503 {
        ensure!(
            r.header("content-type").is_some_and(|c| c.starts_with("application/problem+json")),
            "a 503 from /readyz must be a problem: {:?} {}",
            r.headers,
            r.body
        );
        let lower = r.body.to_lowercase();
        ensure!(
            !lower.contains("127.0.0.1") && !lower.contains("refused") && !lower.contains("reset by peer"),
            "the readiness problem discloses its cause: {}",
            r.body
        );
    }
    let live = api.health().await?;
    ensure!(
        live.status == 200,
        "stage: REST API liveness — /healthz answered {} while readiness was {status}",
        live.status
    );
    w.set_response(r);
    Ok(())
}

// ---- Hostile clients (features/rest_api_hostile.feature)

/// Starts a private pipeline whose one REST API instance gets `env` on top of the run's settings.
async fn private_api(w: &mut World, env: &[(&str, String)]) -> anyhow::Result<()> {
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let slug = format!("api{:04x}", rand::random::<u16>());
    let mut p = w.env.private_pipeline(&slug, &env).await?;
    p.start(Component::RestApi, 1, &[]).await?;
    w.private = Some(p);
    Ok(())
}

#[given(expr = "a private pipeline whose REST API allows {int} ms for a request head")]
async fn private_header_timeout(w: &mut World, ms: u64) -> anyhow::Result<()> {
    private_api(w, &[("APQ_API_HEADER_TIMEOUT_MS", ms.to_string())]).await
}

#[given(expr = "a private pipeline whose REST API allows {int} failed authentications per client per minute")]
async fn private_auth_throttle(w: &mut World, n: u32) -> anyhow::Result<()> {
    private_api(w, &[("APQ_API_AUTH_FAILURE_LIMIT", n.to_string()), ("APQ_API_AUTH_FAILURE_WINDOW_MS", "60000".into())])
        .await
}

#[given(expr = "a private pipeline whose REST API serves history pages of at most {int} bytes")]
async fn private_page_bytes(w: &mut World, bytes: usize) -> anyhow::Result<()> {
    private_api(w, &[("APQ_API_MAX_PAGE_BYTES", bytes.to_string())]).await
}

#[then(expr = "a client sending its request head one byte every {int} ms is cut off within {int} ms")]
async fn slowloris(w: &mut World, every_ms: u64, within_ms: u64) -> anyhow::Result<()> {
    let raw = w.api()?.raw()?;
    let request = raw.get_request("/healthz", &[("x-slow".into(), "a".repeat(64))]);
    let deadline = Duration::from_millis(within_ms) + Duration::from_secs(2);
    let o = raw.trickle(&request, Duration::from_millis(every_ms), deadline).await?;
    ensure!(o.sent < request.len(), "the whole request head ({} bytes) was taken: {}", request.len(), o.describe());
    ensure!(o.status.is_none() || o.status == Some(408), "expected no response or 408: {}", o.describe());
    let closed = o.closed_after.with_context(|| format!("the connection was not closed: {}", o.describe()))?;
    ensure!(closed <= Duration::from_millis(within_ms), "closed only after {closed:?}: {}", o.describe());
    Ok(())
}

#[then(expr = "a keep-alive connection left idle after a response is closed within {int} ms")]
async fn idle_keep_alive(w: &mut World, within_ms: u64) -> anyhow::Result<()> {
    let raw = w.api()?.raw()?;
    let request = raw.get_request("/healthz", &[]);
    let o = raw.idle_after(&request, Duration::from_millis(within_ms) + Duration::from_secs(2)).await?;
    ensure!(o.status == Some(200), "the request before idling failed: {}", o.describe());
    let closed = o.closed_after.with_context(|| format!("the idle connection was not closed: {}", o.describe()))?;
    ensure!(closed <= Duration::from_millis(within_ms), "closed only {closed:?} after the response: {}", o.describe());
    Ok(())
}

#[then(expr = "a keep-alive connection left idle for {int} ms is still open")]
async fn idle_within_timeout(w: &mut World, idle_ms: u64) -> anyhow::Result<()> {
    let raw = w.api()?.raw()?;
    let request = raw.get_request("/healthz", &[]);
    let o = raw.idle_after(&request, Duration::from_millis(idle_ms)).await?;
    ensure!(o.status == Some(200), "the first request failed: {}", o.describe());
    ensure!(!o.closed, "the connection was closed while idle for less than the timeout: {}", o.describe());
    Ok(())
}

#[when(expr = "a client at {string} sends {int} requests with a wrong token")]
async fn wrong_tokens_from(w: &mut World, ip: String, n: usize) -> anyhow::Result<()> {
    let ip: IpAddr = ip.parse().with_context(|| format!("client address {ip:?}"))?;
    let api = w.api()?.from_source(ip)?;
    let sensor = w.sensor("probe");
    w.responses.clear();
    // One after another: the order of 401s and 429s is what the scenario asserts.
    for _ in 0..n {
        let q = HistoryQuery { sensor_id: Some(sensor.clone()), ..Default::default() };
        let r = api.history_as(&q, Auth::Header("Bearer wrong-token".into())).await?;
        w.responses.push(r);
    }
    Ok(())
}

#[when(expr = "a client at {string} asks the API for the latest Feature {type} of sensor {string}")]
async fn latest_from(w: &mut World, ip: String, t: FeatureTypeParam, sensor: String) -> anyhow::Result<()> {
    let ip: IpAddr = ip.parse().with_context(|| format!("client address {ip:?}"))?;
    let r = w.api()?.from_source(ip)?.latest(&w.sensor(&sensor), t.letter()).await?;
    w.set_response(r);
    Ok(())
}

#[then(expr = "the first {int} of them get 401 and the rest 429 with a Retry-After header")]
async fn then_throttled(w: &mut World, first: usize) -> anyhow::Result<()> {
    let statuses: Vec<u16> = w.responses.iter().map(|r| r.status).collect();
    ensure!(statuses.len() > first, "only {} responses: {statuses:?}", statuses.len());
    let want: Vec<u16> = (0..statuses.len()).map(|i| if i < first { 401 } else { 429 }).collect();
    ensure!(statuses == want, "expected statuses {want:?}, got {statuses:?}");
    for r in &w.responses[first..] {
        let ra = r.header("retry-after").context("a 429 without Retry-After")?;
        ensure!(ra.parse::<u64>().is_ok_and(|s| s >= 1), "Retry-After must be whole seconds >= 1, got {ra:?}");
        ensure!(r.header("content-type").is_some_and(|c| c.starts_with("application/problem+json")), "{}", r.body);
    }
    Ok(())
}

#[when(expr = "I ask the API for the history of sensor {string} with {int} unknown parameters")]
async fn many_params(w: &mut World, sensor: String, n: usize) -> anyhow::Result<()> {
    let q = HistoryQuery {
        sensor_id: Some(w.sensor(&sensor)),
        extra: (0..n).map(|i| (format!("p{i}"), i.to_string())).collect(),
        ..Default::default()
    };
    let r = w.api()?.history(&q).await?;
    w.set_response(r);
    Ok(())
}

#[when(expr = "I send a request whose target is {int} bytes long")]
async fn long_target(w: &mut World, len: usize) -> anyhow::Result<()> {
    let r = w.api()?.health_with_target_of(len).await?;
    w.set_response(r);
    Ok(())
}

#[when(expr = "I send a request with {int} extra header fields of {int} bytes each")]
async fn many_headers(w: &mut World, count: usize, value_len: usize) -> anyhow::Result<()> {
    let r = w.api()?.health_with_headers(count, value_len).await?;
    w.set_response(r);
    Ok(())
}

#[then(expr = "the response body is at most {int} bytes")]
async fn body_at_most(w: &mut World, max: usize) -> anyhow::Result<()> {
    let r = w.response()?;
    ensure!(
        r.body.len() <= max,
        "the body is {} bytes, more than {max}: {}",
        r.body.len(),
        &r.body[..r.body.len().min(300)]
    );
    Ok(())
}

#[then(expr = "the response lists fewer than {int} rows and a next_cursor")]
async fn fewer_rows_with_cursor(w: &mut World, n: usize) -> anyhow::Result<()> {
    let body = w.response()?.expect_status(200)?.json()?;
    let items = body["items"].as_array().with_context(|| format!("no items array in {body}"))?;
    ensure!(!items.is_empty() && items.len() < n, "expected 1 to {} rows, got {}", n - 1, items.len());
    ensure!(body["next_cursor"].is_string(), "a page cut short must carry next_cursor: {}", body["next_cursor"]);
    Ok(())
}

#[then(expr = "a request with {string} is answered {int} by the HTTP layer and the connection closed")]
async fn http_layer_rejects(w: &mut World, defect: String, status: u16) -> anyhow::Result<()> {
    let raw = w.api()?.raw()?;
    let request = match defect.as_str() {
        "a malformed request line" => b"GET /healthz HTTP/1.1 extra\r\nHost: x\r\n\r\n".to_vec(),
        "a malformed header name" => raw.get_request("/healthz", &[("bad header".into(), "x".into())]),
        "200 header fields" => {
            let extra: Vec<(String, String)> = (0..200).map(|i| (format!("x-f{i}"), "v".into())).collect();
            raw.get_request("/healthz", &extra)
        }
        "a 100 KiB head" => raw.get_request("/healthz", &[("x-big".into(), "v".repeat(100 * 1024))]),
        other => bail!(
            "unknown defect {other:?}: a malformed request line, a malformed header name, 200 header fields, a 100 KiB head"
        ),
    };
    let o = raw.send(&request, Duration::from_secs(5)).await?;
    ensure!(o.status == Some(status), "expected status {status}: {}", o.describe());
    ensure!(o.closed, "the connection stayed open: {}", o.describe());
    ensure!(o.body.is_empty(), "the HTTP layer's own answer has no body, got {:?}", o.body);
    Ok(())
}

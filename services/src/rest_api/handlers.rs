//! The endpoint handlers. Extraction failures are turned into validation problems here, so
//! axum's plain-text rejections never reach a client.

use super::AppState;
use super::problem::{ApiError, Code};
use super::query::{self, Cursor};
use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// The OpenAPI document, served byte for byte as it is in the repository.
pub use contract::OPENAPI;

/// Upper bound on any one request's database work (pool checkout included).
const DB_TIMEOUT: Duration = Duration::from_secs(5);

type Pairs = Result<Query<Vec<(String, String)>>, QueryRejection>;

fn pairs(q: Pairs) -> Result<Vec<(String, String)>, ApiError> {
    q.map(|Query(p)| p).map_err(|_| ApiError::invalid("query", "the query string is not valid URL encoding"))
}

fn path_param(p: Result<Path<String>, PathRejection>, name: &str) -> Result<String, ApiError> {
    p.map(|Path(s)| s).map_err(|_| ApiError::invalid(name, "is not valid UTF-8 after percent-decoding"))
}

/// Runs database work with a pooled client, mapping every failure (pool, timeout, SQL) to 503.
async fn with_db<T, F, Fut>(state: &AppState, work: F) -> Result<T, ApiError>
where
    F: FnOnce(deadpool_postgres::Object) -> Fut,
    Fut: Future<Output = Result<T, crate::db::DbError>>,
{
    let run = async {
        let client = state.pool.get().await.map_err(|e| ApiError::db_unavailable(&e))?;
        work(client).await.map_err(|e| ApiError::db_unavailable(&e))
    };
    tokio::time::timeout(DB_TIMEOUT, run).await.unwrap_or_else(|_| Err(ApiError::db_unavailable(&"timed out")))
}

pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn readyz(State(state): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    with_db(&state, |c| async move {
        c.query_one("SELECT 1", &[]).await?;
        Ok(())
    })
    .await?;
    if !state.cache_health.is_ready() {
        return Err(ApiError::new(Code::NotReady, "the latest-feature cache is not consuming yet"));
    }
    Ok(Json(json!({ "status": "ready" })))
}

/// Prometheus text exposition of this instance's metrics (see `crate::metrics`).
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    crate::metrics::cache_age(state.cache.age_secs());
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"))], crate::metrics::render())
        .into_response()
}

pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], OPENAPI).into_response()
}

/// `GET /v1/sensors/{sensor_id}/features/latest?type=A|B`: the cached message, as published.
pub async fn latest(
    State(state): State<Arc<AppState>>,
    sensor_id: Result<Path<String>, PathRejection>,
    q: Pairs,
) -> Result<Response, ApiError> {
    let sensor_id = path_param(sensor_id, "sensor_id")?;
    let feature_type = query::latest_params(&sensor_id, &pairs(q)?)?;
    if let Some(body) = state.cache.get(&sensor_id, feature_type) {
        return Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response());
    }
    let not_seen = || {
        ApiError::not_found(format!(
            "no Feature {} message has been seen for sensor {sensor_id} since this API instance started",
            feature_type.as_str()
        ))
    };
    if state.no_cache_refill {
        return Err(not_seen());
    }
    // A miss may only mean the cache never saw it (a restart, a broker gap): the database has
    // the answer, and the cache keeps it for the next request.
    let sensor = sensor_id.clone();
    let stored =
        with_db(&state, |c| async move { crate::db::latest_message(&**c, &sensor, feature_type).await }).await?;
    let Some(message) = stored else {
        return Err(ApiError::not_found(format!(
            "no Feature {} message has been stored for sensor {sensor_id}",
            feature_type.as_str()
        )));
    };
    state.cache.offer_stored(&message);
    let body = serde_json::to_vec(&message).map_err(|_| ApiError::internal())?;
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response())
}

/// `GET /v1/features?...`: one keyset page of stored rows, at most `limit` of them and at most
/// `max_page_bytes` of row JSON (but at least one row, whatever its size, so paging always
/// advances); `next_cursor` is set whenever rows were left out. An empty range (`from` not before
/// `to`) is an empty page, without asking the database.
pub async fn history(State(state): State<Arc<AppState>>, q: Pairs) -> Result<Response, ApiError> {
    let (query, limit) = query::history_params(&pairs(q)?, state.default_limit, state.max_limit)?;
    if let (Some(from), Some(to)) = (query.from, query.to)
        && from >= to
    {
        return Ok(Json(json!({ "items": [], "next_cursor": null })).into_response());
    }
    let rows = with_db(&state, |c| async move { crate::db::history(&**c, &query).await }).await?;
    let body = page_body(&rows, limit as usize, state.max_page_bytes)?;
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response())
}

/// `{"items": [...], "next_cursor": ...}` of the first rows of `rows` that fit `limit` and
/// `max_bytes` of item JSON (at least one).
pub fn page_body(rows: &[crate::db::FeatureRow], limit: usize, max_bytes: usize) -> Result<Vec<u8>, ApiError> {
    const HEAD: &[u8] = b"{\"items\":[";
    let mut body = Vec::with_capacity(4096);
    body.extend_from_slice(HEAD);
    let mut served = 0;
    for row in rows.iter().take(limit) {
        let start = body.len();
        if served > 0 {
            body.push(b',');
        }
        serde_json::to_writer(&mut body, row).map_err(|_| ApiError::internal())?;
        if served > 0 && body.len() - HEAD.len() > max_bytes {
            body.truncate(start);
            break;
        }
        served += 1;
    }
    let next_cursor = (rows.len() > served)
        .then(|| served.checked_sub(1).and_then(|i| rows.get(i)))
        .flatten()
        .map(|r| Cursor { t: r.captured_at, id: r.message_id }.encode());
    body.extend_from_slice(b"],\"next_cursor\":");
    serde_json::to_writer(&mut body, &next_cursor).map_err(|_| ApiError::internal())?;
    body.push(b'}');
    Ok(body)
}

/// `GET /v1/features/{message_id}`: one stored row.
pub async fn by_id(
    State(state): State<Arc<AppState>>,
    message_id: Result<Path<String>, PathRejection>,
    q: Pairs,
) -> Result<Response, ApiError> {
    let raw = path_param(message_id, "message_id")?;
    let id = query::by_id_params(&raw, &pairs(q)?)?;
    let row = with_db(&state, |c| async move { crate::db::get_by_id(&**c, id).await }).await?;
    match row {
        Some(r) => Ok(Json(r).into_response()),
        None => Err(ApiError::not_found(format!("no feature with message_id {id}"))),
    }
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("no such resource")
}

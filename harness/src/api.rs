//! Typed client for the SUT's REST API, reached as a black box by base URL and bearer token.
//!
//! Every call, successful or not, is recorded as an [`Exchange`] (token redacted, body capped) so
//! a failure bundle can show the last request and response. Path segments are percent-encoded
//! here, so hostile sensor ids (`x' OR 1=1 --`, `a/b`, `%00`) reach the server as data.

use crate::http_raw::RawClient;
use anyhow::{Context as _, bail};
use reqwest::{Client, Method, Url};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Recorded response bodies are cut to this many bytes.
pub const MAX_RECORDED_BODY: usize = 64 * 1024;

/// `history_all` gives up after this many pages (a server that never ends pagination is a bug).
pub const MAX_PAGES: usize = 10_000;

/// Pooled connections idle longer than this are dropped by the client.
pub const POOL_IDLE: Duration = Duration::from_secs(5);

/// One request and its response, for failure bundles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// HTTP method.
    pub method: String,
    /// The full URL as sent (already percent-encoded).
    pub url: String,
    /// Request headers as sent; `Authorization` credentials are replaced by `***`.
    pub request_headers: Vec<(String, String)>,
    /// Response status; `None` when no response arrived (see `error`).
    pub status: Option<u16>,
    /// Response headers, lower-case names.
    pub response_headers: BTreeMap<String, String>,
    /// Response body as text, cut to [`MAX_RECORDED_BODY`] bytes.
    pub body: String,
    /// Transport error, when the request failed before a response arrived.
    pub error: Option<String>,
    /// Time from sending to the full body (or the error).
    pub elapsed: Duration,
}

/// Which `Authorization` header a raw request carries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Auth {
    /// The client's bearer token, if it has one.
    #[default]
    Default,
    /// No `Authorization` header at all.
    None,
    /// This exact header value (e.g. `Bearer wrong`, `Basic Zm9v`, or garbage).
    Header(String),
}

/// A response, fully read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Headers by lower-case name; repeated headers are joined with `, `.
    pub headers: BTreeMap<String, String>,
    /// Body as text (lossy UTF-8).
    pub body: String,
}

impl Response {
    /// The body parsed as JSON; the error names the status and the start of the body.
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("response (status {}) is not JSON: {}", self.status, snippet(&self.body, 500)))
    }

    /// A header by name, case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }

    /// Errors unless the status is `expected`, showing the body.
    pub fn expect_status(&self, expected: u16) -> anyhow::Result<&Self> {
        if self.status != expected {
            bail!("expected status {expected}, got {}: {}", self.status, snippet(&self.body, 1000));
        }
        Ok(self)
    }
}

/// Query of `GET /v1/features`; `None` leaves a parameter out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistoryQuery {
    /// `sensor_id` parameter.
    pub sensor_id: Option<String>,
    /// `type` parameter (`A` or `B`).
    pub feature_type: Option<String>,
    /// `from` parameter (RFC 3339, inclusive).
    pub from: Option<String>,
    /// `to` parameter (RFC 3339, exclusive).
    pub to: Option<String>,
    /// `limit` parameter, as a string so invalid values can be sent.
    pub limit: Option<String>,
    /// `cursor` parameter.
    pub cursor: Option<String>,
    /// Further parameters appended verbatim (unknown or repeated parameters for negative tests).
    pub extra: Vec<(String, String)>,
}

/// Where a client keeps its most recent exchange. Clones share one record; a scenario gives its
/// clients a record of its own ([`ApiClient::recording_into`]), so its failure bundle shows its
/// own last request and never a concurrent scenario's.
#[derive(Debug, Clone, Default)]
pub struct ExchangeRecord(Arc<Mutex<Option<Exchange>>>);

impl ExchangeRecord {
    /// The most recent exchange recorded here, if any.
    pub fn last(&self) -> Option<Exchange> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Client for the SUT's REST API. Cheap to clone; clones share the exchange record.
#[derive(Debug, Clone)]
pub struct ApiClient {
    /// Base URL, e.g. `http://api:8080` (may carry a path prefix).
    base: Url,
    /// Bearer token sent with [`Auth::Default`].
    token: Option<String>,
    /// Shared connection pool.
    http: Client,
    /// The most recent exchange of this client and its clones.
    last: ExchangeRecord,
}

impl ApiClient {
    /// A client with a 10 s request timeout.
    pub fn new(base: &str, token: Option<String>) -> anyhow::Result<Self> {
        Self::with_client(base, token, Self::builder().build().context("building the HTTP client")?)
    }

    /// The settings every client of this harness uses. Idle pooled connections are dropped after
    /// [`POOL_IDLE`], before a server's own idle timeout (the reference's default is 10 s) can
    /// close one just as a request goes out on it.
    fn builder() -> reqwest::ClientBuilder {
        Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(3))
            .pool_idle_timeout(POOL_IDLE)
    }

    /// The same API, token and exchange record, but connecting from the local address `ip`
    /// (e.g. `127.0.0.2`: any 127/8 address reaches a loopback server), so the server sees
    /// another client.
    pub fn from_source(&self, ip: IpAddr) -> anyhow::Result<Self> {
        let http = Self::builder().local_address(ip).build().context("building the HTTP client")?;
        Ok(ApiClient { http, ..self.clone() })
    }

    /// A raw HTTP/1.1 client for the same server.
    pub fn raw(&self) -> anyhow::Result<RawClient> {
        RawClient::for_base(&self.base)
    }

    /// `GET /healthz` whose request target is padded with a query to exactly `target_len` bytes
    /// (at least the bare path's length).
    pub async fn health_with_target_of(&self, target_len: usize) -> anyhow::Result<Response> {
        let mut url = self.url_for(&["healthz"])?;
        let bare = url.path().len() + "?pad=".len();
        url.set_query(Some(&format!("pad={}", "a".repeat(target_len.saturating_sub(bare)))));
        self.execute(Method::GET, url, &[], &Auth::None).await
    }

    /// `GET /healthz` with `count` extra header fields `x-filler-<i>`, each value `value_len` bytes.
    pub async fn health_with_headers(&self, count: usize, value_len: usize) -> anyhow::Result<Response> {
        let headers: Vec<(String, String)> =
            (0..count).map(|i| (format!("x-filler-{i}"), "v".repeat(value_len))).collect();
        self.execute(Method::GET, self.url_for(&["healthz"])?, &headers, &Auth::None).await
    }

    /// A client over a caller-configured `reqwest::Client`.
    pub fn with_client(base: &str, token: Option<String>, http: Client) -> anyhow::Result<Self> {
        let base = Url::parse(base).with_context(|| format!("API base URL {base:?}"))?;
        if base.cannot_be_a_base() {
            bail!("API base URL {base} cannot carry a path");
        }
        Ok(ApiClient { base, token, http, last: ExchangeRecord::default() })
    }

    /// The base URL.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// The most recent request and response, if any.
    pub fn last_exchange(&self) -> Option<Exchange> {
        self.last.last()
    }

    /// The same client (API, token, connection pool) recording its exchanges into `record`
    /// instead of the shared one.
    pub fn recording_into(&self, record: &ExchangeRecord) -> ApiClient {
        ApiClient { last: record.clone(), ..self.clone() }
    }

    /// `GET /v1/sensors/{sensor_id}/features/latest?type={feature_type}`.
    pub async fn latest(&self, sensor_id: &str, feature_type: &str) -> anyhow::Result<Response> {
        let mut url = self.url_for(&["v1", "sensors", sensor_id, "features", "latest"])?;
        url.query_pairs_mut().append_pair("type", feature_type);
        self.execute(Method::GET, url, &[], &Auth::Default).await
    }

    /// `GET /v1/features?...`.
    pub async fn history(&self, q: &HistoryQuery) -> anyhow::Result<Response> {
        self.history_as(q, Auth::Default).await
    }

    /// `GET /v1/features?...` with the given `Authorization`.
    pub async fn history_as(&self, q: &HistoryQuery, auth: Auth) -> anyhow::Result<Response> {
        let mut url = self.url_for(&["v1", "features"])?;
        {
            let mut pairs = url.query_pairs_mut();
            let named = [
                ("sensor_id", &q.sensor_id),
                ("type", &q.feature_type),
                ("from", &q.from),
                ("to", &q.to),
                ("limit", &q.limit),
                ("cursor", &q.cursor),
            ];
            for (name, value) in named.iter().filter_map(|(n, v)| Some((n, v.as_deref()?))) {
                pairs.append_pair(name, value);
            }
            for (name, value) in &q.extra {
                pairs.append_pair(name, value);
            }
        }
        // An empty query would leave a bare `?`, which some servers treat differently.
        if url.query() == Some("") {
            url.set_query(None);
        }
        self.execute(Method::GET, url, &[], &auth).await
    }

    /// `GET /v1/features/{id}`; `id` is any string so malformed ids can be tested.
    pub async fn by_id(&self, id: &str) -> anyhow::Result<Response> {
        let url = self.url_for(&["v1", "features", id])?;
        self.execute(Method::GET, url, &[], &Auth::Default).await
    }

    /// `GET /healthz` (no auth).
    pub async fn health(&self) -> anyhow::Result<Response> {
        self.execute(Method::GET, self.url_for(&["healthz"])?, &[], &Auth::None).await
    }

    /// `GET /readyz` (no auth).
    pub async fn ready(&self) -> anyhow::Result<Response> {
        self.execute(Method::GET, self.url_for(&["readyz"])?, &[], &Auth::None).await
    }

    /// `GET /openapi.json` (no auth).
    pub async fn openapi(&self) -> anyhow::Result<Response> {
        self.execute(Method::GET, self.url_for(&["openapi.json"])?, &[], &Auth::None).await
    }

    /// Any request. `path_and_query` is appended to the base URL as given (the caller encodes it;
    /// the URL parser still escapes characters that cannot appear in a URL at all).
    pub async fn send(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(String, String)],
        auth: Auth,
    ) -> anyhow::Result<Response> {
        let method = Method::from_bytes(method.as_bytes()).with_context(|| format!("HTTP method {method:?}"))?;
        let base = self.base.as_str().trim_end_matches('/');
        let sep = if path_and_query.starts_with('/') { "" } else { "/" };
        let url = Url::parse(&format!("{base}{sep}{path_and_query}"))
            .with_context(|| format!("request path {path_and_query:?}"))?;
        self.execute(method, url, headers, &auth).await
    }

    /// Every row of a sensor's history, following `next_cursor` until it is null.
    ///
    /// Fails on a non-200 page, on a repeated cursor (a pagination loop), and after
    /// [`MAX_PAGES`] pages.
    pub async fn history_all(
        &self,
        sensor_id: &str,
        feature_type: &str,
        page_limit: Option<u32>,
    ) -> anyhow::Result<Vec<Value>> {
        let mut rows = Vec::new();
        let mut seen = HashSet::new();
        let mut cursor: Option<String> = None;
        for page in 1..=MAX_PAGES {
            let q = HistoryQuery {
                sensor_id: Some(sensor_id.to_owned()),
                feature_type: Some(feature_type.to_owned()),
                limit: page_limit.map(|l| l.to_string()),
                cursor: cursor.clone(),
                ..HistoryQuery::default()
            };
            let resp = self.history(&q).await?;
            resp.expect_status(200).with_context(|| format!("history page {page}"))?;
            let body = resp.json()?;
            let items = body
                .get("items")
                .and_then(Value::as_array)
                .with_context(|| format!("history page {page} has no `items` array: {}", snippet(&resp.body, 500)))?;
            rows.extend(items.iter().cloned());
            let next = match body.get("next_cursor") {
                None | Some(Value::Null) => return Ok(rows),
                Some(Value::String(next)) => next.clone(),
                Some(other) => {
                    bail!("history page {page}: next_cursor is neither a string nor null: {other}")
                }
            };
            if !seen.insert(next.clone()) {
                bail!("history page {page} repeats cursor {next:?}: pagination would loop forever");
            }
            cursor = Some(next);
        }
        bail!("history of {sensor_id:?} type {feature_type} did not end within {MAX_PAGES} pages")
    }

    /// The base URL extended by percent-encoded path segments.
    fn url_for(&self, segments: &[&str]) -> anyhow::Result<Url> {
        let mut path = self.base.path().trim_end_matches('/').to_owned();
        for seg in segments {
            // WHATWG URL parsing removes `.`/`..` segments (even encoded), so they cannot be sent.
            if matches!(*seg, "." | "..") {
                bail!("path segment {seg:?} cannot be sent: URL normalisation would remove it");
            }
            path.push('/');
            encode_segment(seg, &mut path);
        }
        let mut url = self.base.clone();
        url.set_path(&path);
        url.set_query(None);
        Ok(url)
    }

    async fn execute(
        &self,
        method: Method,
        url: Url,
        headers: &[(String, String)],
        auth: &Auth,
    ) -> anyhow::Result<Response> {
        let mut sent: Vec<(String, String)> = headers.to_vec();
        let auth_value = match auth {
            Auth::Default => self.token.as_ref().map(|t| format!("Bearer {t}")),
            Auth::None => None,
            Auth::Header(v) => Some(v.clone()),
        };
        if let Some(v) = auth_value {
            sent.push(("authorization".to_owned(), v));
        }
        let mut req = self.http.request(method.clone(), url.clone());
        for (name, value) in &sent {
            req = req.header(name.as_str(), value.as_str());
        }
        let mut exchange = Exchange {
            method: method.to_string(),
            url: url.to_string(),
            request_headers: sent.iter().map(|(n, v)| (n.clone(), redact(n, v))).collect(),
            status: None,
            response_headers: BTreeMap::new(),
            body: String::new(),
            error: None,
            elapsed: Duration::ZERO,
        };
        let started = Instant::now();
        let result = async {
            let resp = req.send().await?;
            let status = resp.status().as_u16();
            let mut headers = BTreeMap::<String, String>::new();
            for (name, value) in resp.headers() {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                headers
                    .entry(name.as_str().to_owned())
                    .and_modify(|v| {
                        v.push_str(", ");
                        v.push_str(&value);
                    })
                    .or_insert(value);
            }
            let bytes = resp.bytes().await?;
            Ok::<_, reqwest::Error>(Response { status, headers, body: String::from_utf8_lossy(&bytes).into_owned() })
        }
        .await;
        exchange.elapsed = started.elapsed();
        match &result {
            Ok(resp) => {
                exchange.status = Some(resp.status);
                exchange.response_headers = resp.headers.clone();
                exchange.body = snippet(&resp.body, MAX_RECORDED_BODY).into_owned();
            }
            Err(err) => exchange.error = Some(error_chain(err)),
        }
        *self.last.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(exchange);
        result.with_context(|| format!("{method} {url}"))
    }
}

/// Appends `seg` with everything but RFC 3986 unreserved characters percent-encoded.
fn encode_segment(seg: &str, out: &mut String) {
    for b in seg.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// Keeps the auth scheme visible (it matters for auth tests) but never the credentials.
fn redact(name: &str, value: &str) -> String {
    if !name.eq_ignore_ascii_case("authorization") {
        return value.to_owned();
    }
    match value.split_once(' ') {
        Some((scheme, _)) => format!("{scheme} ***"),
        None => "***".to_owned(),
    }
}

/// reqwest's top-level message omits the cause (e.g. "connection refused"), so walk the chain.
fn error_chain(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn snippet(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return s.into();
    }
    let cut = contract::floor_char_boundary(s, max);
    format!("{}… ({} bytes in total)", &s[..cut], s.len()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_hostile_segments() {
        let mut s = String::new();
        encode_segment("x' OR 1=1 --/é%", &mut s);
        assert_eq!(s, "x%27%20OR%201%3D1%20--%2F%C3%A9%25");
    }

    #[test]
    fn redacts_credentials_only() {
        assert_eq!(redact("Authorization", "Bearer secret"), "Bearer ***");
        assert_eq!(redact("authorization", "garbage"), "***");
        assert_eq!(redact("accept", "application/json"), "application/json");
    }

    #[test]
    fn dot_segments_are_refused() {
        let c = ApiClient::new("http://127.0.0.1:1/prefix/", None).unwrap();
        assert!(c.url_for(&["v1", ".."]).is_err());
        assert_eq!(c.url_for(&["v1", "a b"]).unwrap().as_str(), "http://127.0.0.1:1/prefix/v1/a%20b");
    }
}

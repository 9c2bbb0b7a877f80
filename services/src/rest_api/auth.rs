//! Bearer-token authentication for `/v1` (RFC 6750). Tokens are compared in constant time against
//! every configured token, so neither the match nor its position leaks through timing.
//!
//! Failed authentications are throttled per client address ([`AuthThrottle`]): a client that has
//! used up its allowance gets 429 with `Retry-After` on every `/v1` request, before its token is
//! even looked at, until the allowance refills; other clients are unaffected.

use super::AppState;
use super::problem::{ApiError, Code};
use super::rate_limit::{TokenBucket, retry_after_secs};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// Clients the throttle remembers at most; beyond it, refilled entries are forgotten first, and if
/// that is not enough, all of them (the throttle then starts afresh rather than grow).
const MAX_THROTTLED_CLIENTS: usize = 100_000;

pub const REALM_CHALLENGE: &str = r#"Bearer realm="audio-pipeline""#;
pub const INVALID_REQUEST_CHALLENGE: &str = r#"Bearer realm="audio-pipeline", error="invalid_request""#;
pub const INVALID_TOKEN_CHALLENGE: &str = r#"Bearer realm="audio-pipeline", error="invalid_token""#;

/// Who made the request: the index of the matching configured token (the rate-limit key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Principal(pub usize);

impl Principal {
    /// Requests let through by the `fault_skip_auth` hook without a valid token share one bucket.
    pub const ANONYMOUS: Principal = Principal(usize::MAX);
}

/// Why a request was not authenticated; each maps to its own `WWW-Authenticate` challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization` header.
    Missing,
    /// Not `Bearer <token68>`, or several headers.
    InvalidRequest,
    /// Well-formed, but not a configured token.
    InvalidToken,
}

impl AuthFailure {
    pub fn into_error(self) -> ApiError {
        let (challenge, detail) = match self {
            AuthFailure::Missing => (REALM_CHALLENGE, "an Authorization: Bearer <token> header is required"),
            AuthFailure::InvalidRequest => {
                (INVALID_REQUEST_CHALLENGE, "the Authorization header must be a single `Bearer <token>`")
            }
            AuthFailure::InvalidToken => (INVALID_TOKEN_CHALLENGE, "the bearer token is not valid"),
        };
        ApiError::new(Code::Unauthorized, detail)
            .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge))
    }
}

/// Checks the request's bearer token against `tokens`.
pub fn authenticate(headers: &HeaderMap, tokens: &[String]) -> Result<Principal, AuthFailure> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthFailure::Missing)?;
    if values.next().is_some() {
        return Err(AuthFailure::InvalidRequest);
    }
    let value = value.to_str().map_err(|_| AuthFailure::InvalidRequest)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthFailure::InvalidRequest)?;
    if !scheme.eq_ignore_ascii_case("bearer") || !is_token68(token) {
        return Err(AuthFailure::InvalidRequest);
    }
    // No early exit: every configured token is compared, whatever matched before.
    let mut found = None;
    for (i, candidate) in tokens.iter().enumerate() {
        let equal: bool = candidate.as_bytes().ct_eq(token.as_bytes()).into();
        if equal && found.is_none() {
            found = Some(i);
        }
    }
    found.map(Principal).ok_or(AuthFailure::InvalidToken)
}

/// RFC 7235 `token68`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_token68(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/'))
}

/// The throttle's key for a client address: IPv4 as is, IPv6 by its /64 (one host usually holds
/// a whole /64, so single addresses would be free to rotate).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Failed authentications per client: a bucket of `limit` that refills evenly over `window`.
#[derive(Debug)]
pub struct AuthThrottle {
    /// Failures allowed at once.
    limit: u32,
    /// Refill rate, failures per second (`limit / window`).
    rate: f64,
    /// One bucket per client that has failed recently.
    clients: Mutex<HashMap<IpAddr, TokenBucket>>,
}

impl AuthThrottle {
    pub fn new(limit: u32, window: Duration) -> Self {
        let rate = f64::from(limit.max(1)) / window.as_secs_f64().max(1e-3);
        Self { limit, rate, clients: Mutex::new(HashMap::new()) }
    }

    /// How long `client` must wait before it may try again, if it has no failures left.
    pub fn locked_out(&self, client: IpAddr, now: Instant) -> Option<Duration> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.get_mut(&client).and_then(|b| b.peek(now).err())
    }

    /// Records a failure of `client`; returns the wait when this failure was one too many.
    pub fn failed(&self, client: IpAddr, now: Instant) -> Option<Duration> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if clients.len() >= MAX_THROTTLED_CLIENTS && !clients.contains_key(&client) {
            clients.retain(|_, b| !b.is_full(now));
            if clients.len() >= MAX_THROTTLED_CLIENTS {
                tracing::warn!(clients = clients.len(), "failed-authentication throttle full; forgetting every client");
                clients.clear();
            }
        }
        clients.entry(client).or_insert_with(|| TokenBucket::new(self.rate, self.limit, now)).try_take(now).err()
    }
}

/// The 429 of a throttled client.
fn throttled(wait: Duration) -> Response {
    let secs = retry_after_secs(wait);
    ApiError::new(Code::RateLimited, format!("too many failed authentications from this client; retry in {secs} s"))
        .with_header(header::RETRY_AFTER, HeaderValue::from(secs))
        .into_response()
}

/// Middleware: throttles clients with too many failed authentications, rejects unauthenticated
/// requests, or records the [`Principal`] for the rate limiter.
pub async fn require_bearer(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let client = super::server::peer_of(&req).map(|a| client_key(a.ip()));
    let now = Instant::now();
    if let Some(wait) = client.and_then(|c| state.auth_throttle.locked_out(c, now)) {
        return throttled(wait);
    }
    let principal = match authenticate(req.headers(), &state.tokens) {
        Ok(p) => p,
        Err(_) if state.skip_auth => Principal::ANONYMOUS,
        Err(failure) => {
            if let Some(wait) = client.and_then(|c| state.auth_throttle.failed(c, now)) {
                return throttled(wait);
            }
            return failure.into_error().into_response();
        }
    };
    req.extensions_mut().insert(principal);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn tokens() -> Vec<String> {
        vec!["first-token".into(), "second.token~2=".into()]
    }

    #[rstest]
    #[case::first(&["Bearer first-token"], 0)]
    #[case::second(&["Bearer second.token~2="], 1)]
    #[case::scheme_is_case_insensitive(&["bearer first-token"], 0)]
    fn configured_tokens_are_accepted(#[case] values: &[&str], #[case] index: usize) {
        assert_eq!(authenticate(&headers(values), &tokens()), Ok(Principal(index)));
    }

    #[rstest]
    #[case::missing(&[], AuthFailure::Missing)]
    #[case::basic_scheme(&["Basic Zmlyc3QtdG9rZW4="], AuthFailure::InvalidRequest)]
    #[case::no_token(&["Bearer"], AuthFailure::InvalidRequest)]
    #[case::empty_token(&["Bearer "], AuthFailure::InvalidRequest)]
    #[case::two_spaces(&["Bearer  first-token"], AuthFailure::InvalidRequest)]
    #[case::trailing_space(&["Bearer first-token "], AuthFailure::InvalidRequest)]
    #[case::bad_chars(&["Bearer first token"], AuthFailure::InvalidRequest)]
    #[case::two_headers(&["Bearer first-token", "Bearer first-token"], AuthFailure::InvalidRequest)]
    #[case::unknown(&["Bearer nope"], AuthFailure::InvalidToken)]
    #[case::prefix_of_a_token(&["Bearer first"], AuthFailure::InvalidToken)]
    #[case::token_with_suffix(&["Bearer first-token2"], AuthFailure::InvalidToken)]
    fn bad_credentials_are_refused(#[case] values: &[&str], #[case] failure: AuthFailure) {
        assert_eq!(authenticate(&headers(values), &tokens()), Err(failure));
    }

    #[test]
    fn no_configured_tokens_accepts_nothing() {
        assert_eq!(authenticate(&headers(&["Bearer first-token"]), &[]), Err(AuthFailure::InvalidToken));
    }

    #[test]
    fn failures_beyond_the_limit_lock_the_client_out_until_refilled() {
        let t0 = Instant::now();
        let throttle = AuthThrottle::new(3, Duration::from_secs(30));
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        for i in 0..3 {
            assert_eq!(throttle.locked_out(a, t0), None, "before failure {i}");
            assert_eq!(throttle.failed(a, t0), None, "failure {i} is within the limit");
        }
        assert!(throttle.locked_out(a, t0).is_some());
        let wait = throttle.failed(a, t0).expect("the fourth failure is one too many");
        assert_eq!(retry_after_secs(wait), 10, "{wait:?}");
        // Another client is unaffected; ten seconds later one more failure is allowed.
        assert_eq!(throttle.locked_out(b, t0), None);
        assert_eq!(throttle.locked_out(a, t0 + Duration::from_secs(10)), None);
    }

    // The table is bounded: at MAX_THROTTLED_CLIENTS clients that all still have failures
    // pending, the next new client makes it forget everyone (a flood of addresses must not grow
    // memory without bound; forgetting only lets the flooder's own victims retry sooner).
    #[test]
    fn a_full_throttle_table_forgets_rather_than_grows() {
        let t0 = Instant::now();
        let throttle = AuthThrottle::new(3, Duration::from_secs(30));
        let locked: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..4 {
            throttle.failed(locked, t0);
        }
        assert!(throttle.locked_out(locked, t0).is_some());
        let other = |i: usize| IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i as u32));
        for i in 0..MAX_THROTTLED_CLIENTS - 1 {
            throttle.failed(other(i), t0);
        }
        assert!(throttle.locked_out(locked, t0).is_some(), "still within the bound: nothing forgotten");
        throttle.failed(other(MAX_THROTTLED_CLIENTS), t0);
        let tracked = throttle.clients.lock().unwrap().len();
        assert_eq!(tracked, 1, "the table was full: only the newest client is tracked");
        assert_eq!(throttle.locked_out(locked, t0), None, "forgotten with the rest");
    }

    #[rstest]
    #[case::v4("10.0.0.7", "10.0.0.7")]
    #[case::v6_by_64("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::")]
    #[case::v4_mapped("::ffff:10.0.0.7", "10.0.0.7")]
    fn clients_are_keyed_by_address(#[case] ip: &str, #[case] key: &str) {
        assert_eq!(client_key(ip.parse().unwrap()), key.parse::<IpAddr>().unwrap());
    }

    #[rstest]
    #[case(AuthFailure::Missing, REALM_CHALLENGE)]
    #[case(AuthFailure::InvalidRequest, INVALID_REQUEST_CHALLENGE)]
    #[case(AuthFailure::InvalidToken, INVALID_TOKEN_CHALLENGE)]
    fn each_failure_has_its_challenge(#[case] failure: AuthFailure, #[case] challenge: &str) {
        let e = failure.into_error();
        assert_eq!(e.status, 401);
        assert_eq!(e.header(&header::WWW_AUTHENTICATE).unwrap(), challenge);
    }
}

//! Bearer-token authentication for `/v1` (RFC 6750). Tokens are compared in constant time against
//! every configured token, so neither the match nor its position leaks through timing.

use super::AppState;
use super::problem::{ApiError, Code};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use subtle::ConstantTimeEq;

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

/// Middleware: rejects unauthenticated requests, or records the [`Principal`] for the rate limiter.
pub async fn require_bearer(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let principal = match authenticate(req.headers(), &state.tokens) {
        Ok(p) => p,
        Err(_) if state.skip_auth => Principal::ANONYMOUS,
        Err(failure) => return failure.into_error().into_response(),
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

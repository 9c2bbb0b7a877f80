//! RFC 9457 problem details. Handlers and middleware return [`ApiError`]; the [`render`]
//! middleware turns it into an `application/problem+json` body whose `instance` is the request
//! path, and rewrites any other error response (axum's plain-text rejections, the 405 from the
//! router, the body-limit 413) into a problem too, so no plain-text error ever leaves the API.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// A validation problem lists at most this many parameters (the detail says how many more).
pub const MAX_LISTED_PARAMS: usize = 10;

/// Parameter names echoed in `invalid_params` are cut to this many bytes.
pub const MAX_ECHOED_BYTES: usize = 64;

/// The `instance` member (the request path) is cut to this many bytes.
pub const MAX_INSTANCE_BYTES: usize = 256;

/// At most `max` bytes of `s`, cut at a character boundary, with `…` when cut.
pub fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let end = contract::floor_char_boundary(s, max);
    format!("{}…", &s[..end])
}

/// Machine-readable problem codes; `type` is `urn:apq:problem:<code>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Unauthorized,
    RateLimited,
    Validation,
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    /// The request target is longer than the API reads.
    UriTooLong,
    /// Too many header fields, or too many header bytes.
    HeadersTooLarge,
    DbUnavailable,
    NotReady,
    Internal,
    /// Any other client error status that reached the renderer without a problem.
    HttpError,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Unauthorized => "unauthorized",
            Code::RateLimited => "rate_limited",
            Code::Validation => "validation",
            Code::NotFound => "not_found",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::PayloadTooLarge => "payload_too_large",
            Code::UriTooLong => "uri_too_long",
            Code::HeadersTooLarge => "headers_too_large",
            Code::DbUnavailable => "db_unavailable",
            Code::NotReady => "not_ready",
            Code::Internal => "internal",
            Code::HttpError => "http_error",
        }
    }
    fn title(self) -> &'static str {
        match self {
            Code::Unauthorized => "Unauthorized",
            Code::RateLimited => "Too many requests",
            Code::Validation => "Invalid request",
            Code::NotFound => "Not found",
            Code::MethodNotAllowed => "Method not allowed",
            Code::PayloadTooLarge => "Payload too large",
            Code::UriTooLong => "URI too long",
            Code::HeadersTooLarge => "Request header fields too large",
            Code::DbUnavailable => "Database unavailable",
            Code::NotReady => "Not ready",
            Code::Internal => "Internal error",
            Code::HttpError => "Request error",
        }
    }
    fn status(self) -> StatusCode {
        match self {
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Code::Validation => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::UriTooLong => StatusCode::URI_TOO_LONG,
            Code::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Code::DbUnavailable | Code::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Code::HttpError => StatusCode::BAD_REQUEST,
        }
    }
}

/// One offending request parameter of a validation problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvalidParam {
    /// Parameter name as the client sent it.
    pub name: String,
    /// Why it was refused.
    pub reason: String,
}

impl InvalidParam {
    /// `name` is echoed from the request, so it is cut to [`MAX_ECHOED_BYTES`].
    pub fn new(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { name: cut(&name.into(), MAX_ECHOED_BYTES), reason: reason.into() }
    }
}

/// The wire form of a problem (field order as in RFC 9457).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// `urn:apq:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary, fixed per code.
    pub title: String,
    /// The HTTP status, repeated.
    pub status: u16,
    /// Human explanation of this occurrence (never internals).
    pub detail: String,
    /// The request path.
    pub instance: String,
    /// Present on validation problems only.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub invalid_params: Option<Vec<InvalidParam>>,
}

/// An error response waiting for [`render`] to give it a body.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// Which problem.
    pub code: Code,
    /// Response status (normally the code's).
    pub status: StatusCode,
    /// Human explanation.
    pub detail: String,
    /// Validation details (empty unless `code` is `Validation`).
    pub invalid_params: Vec<InvalidParam>,
    /// Extra response headers (`WWW-Authenticate`, `Retry-After`, ...); a Vec keeps the error
    /// small, and there are at most one or two.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(code: Code, detail: impl Into<String>) -> Self {
        Self { code, status: code.status(), detail: detail.into(), invalid_params: Vec::new(), headers: Vec::new() }
    }
    /// A 400 naming the first [`MAX_LISTED_PARAMS`] offending parameters; the detail counts the
    /// rest, so the body stays small however many parameters a request carries.
    pub fn validation(mut params: Vec<InvalidParam>) -> Self {
        let total = params.len();
        params.truncate(MAX_LISTED_PARAMS);
        let names: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
        let mut detail = format!("invalid request parameters: {}", names.join(", "));
        if total > params.len() {
            detail.push_str(&format!(" and {} more", total - params.len()));
        }
        let mut e = Self::new(Code::Validation, detail);
        e.invalid_params = params;
        e
    }
    pub fn invalid(name: &str, reason: impl Into<String>) -> Self {
        Self::validation(vec![InvalidParam::new(name, reason)])
    }
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(Code::NotFound, detail)
    }
    /// 503 for any database trouble; the cause is logged, never sent.
    pub fn db_unavailable(cause: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %cause, "database unavailable");
        Self::new(Code::DbUnavailable, "the database is unavailable; retry later")
    }
    pub fn internal() -> Self {
        Self::new(Code::Internal, "an internal error occurred")
    }
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
    /// An extra header set on this error.
    pub fn header(&self, name: &HeaderName) -> Option<&HeaderValue> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// What a bare error status means when it reaches the renderer without a problem attached.
    fn from_status(status: StatusCode) -> Self {
        let (code, detail) = match status {
            StatusCode::BAD_REQUEST => (Code::Validation, "the request is malformed"),
            StatusCode::UNAUTHORIZED => (Code::Unauthorized, "authentication required"),
            StatusCode::NOT_FOUND => (Code::NotFound, "no such resource"),
            StatusCode::METHOD_NOT_ALLOWED => (Code::MethodNotAllowed, "this method is not allowed on this resource"),
            StatusCode::PAYLOAD_TOO_LARGE => (Code::PayloadTooLarge, "the request body is too large"),
            StatusCode::URI_TOO_LONG => (Code::UriTooLong, "the request target is too long"),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => (Code::HeadersTooLarge, "the request headers are too large"),
            StatusCode::TOO_MANY_REQUESTS => (Code::RateLimited, "too many requests"),
            s if s.is_server_error() => (Code::Internal, "an internal error occurred"),
            _ => (Code::HttpError, "the request could not be processed"),
        };
        let mut e = Self::new(code, detail);
        e.status = status;
        e
    }

    /// The body for a request to `path` (cut to [`MAX_INSTANCE_BYTES`]).
    pub fn to_problem(&self, path: &str) -> Problem {
        Problem {
            kind: format!("urn:apq:problem:{}", self.code.as_str()),
            title: self.code.title().to_string(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            instance: cut(path, MAX_INSTANCE_BYTES),
            invalid_params: (!self.invalid_params.is_empty()).then(|| self.invalid_params.clone()),
        }
    }
}

impl IntoResponse for ApiError {
    /// No body yet: the path is only known to [`render`], which finishes the response.
    fn into_response(self) -> Response {
        let mut res = Response::new(Body::empty());
        *res.status_mut() = self.status;
        for (k, v) in &self.headers {
            res.headers_mut().insert(k.clone(), v.clone());
        }
        res.extensions_mut().insert(self);
        res
    }
}

/// Middleware: gives every error response a problem body (see the module docs).
pub async fn render(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let mut res = next.run(req).await;
    let error = match res.extensions_mut().remove::<ApiError>() {
        Some(e) => e,
        None if res.status().is_client_error() || res.status().is_server_error() => {
            let is_problem = res.headers().get(header::CONTENT_TYPE).is_some_and(|v| v == PROBLEM_CONTENT_TYPE);
            if is_problem {
                return res;
            }
            ApiError::from_status(res.status())
        }
        None => return res,
    };
    let body = serde_json::to_vec(&error.to_problem(&path)).expect("a problem serialises");
    let (mut parts, _) = res.into_parts();
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

/// CatchPanic's response: a bare 500 that [`render`] turns into an `internal` problem. The panic
/// payload is logged, never sent.
pub fn panic_response(payload: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let msg = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("non-string panic payload");
    tracing::error!(panic = msg, "handler panicked");
    ApiError::internal().into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_problem_lists_params() {
        let e = ApiError::validation(vec![InvalidParam::new("limit", "too big"), InvalidParam::new("to", "bad")]);
        let p = serde_json::to_value(e.to_problem("/v1/features")).unwrap();
        assert_eq!(
            p,
            serde_json::json!({
                "type": "urn:apq:problem:validation", "title": "Invalid request", "status": 400,
                "detail": "invalid request parameters: limit, to", "instance": "/v1/features",
                "invalid_params": [{"name": "limit", "reason": "too big"}, {"name": "to", "reason": "bad"}]
            })
        );
    }

    #[test]
    fn non_validation_problems_have_no_invalid_params() {
        let p = serde_json::to_value(ApiError::not_found("nothing").to_problem("/x")).unwrap();
        assert!(p.get("invalid_params").is_none(), "{p}");
        assert_eq!(p["status"], 404);
        assert_eq!(p["type"], "urn:apq:problem:not_found");
    }

    #[test]
    fn validation_problems_stay_small_however_many_params() {
        let params: Vec<InvalidParam> =
            (0..5000).map(|i| InvalidParam::new("p".repeat(i % 300 + 1), "unknown parameter")).collect();
        let e = ApiError::validation(params);
        assert_eq!(e.invalid_params.len(), MAX_LISTED_PARAMS);
        assert!(e.detail.ends_with("and 4990 more"), "{}", e.detail);
        let body = serde_json::to_vec(&e.to_problem(&"/v1/features".repeat(1000))).unwrap();
        assert!(body.len() <= 4096, "{} bytes", body.len());
    }

    #[test]
    fn cut_respects_character_boundaries() {
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(cut("abcd", 3), "abc…");
        assert_eq!(cut("aé", 2), "a…");
    }

    #[test]
    fn db_problem_hides_the_cause() {
        let e = ApiError::db_unavailable(&"password authentication failed for user secret");
        let p = e.to_problem("/v1/features");
        assert_eq!(p.status, 503);
        assert!(!p.detail.contains("secret"), "{}", p.detail);
    }

    // Every status an axum/tower layer can produce on its own gets its own problem type; only
    // unknown ones fall back to the generic type.
    #[test]
    fn bare_statuses_map_to_their_problem_types() {
        for (status, ty) in [
            (StatusCode::BAD_REQUEST, "validation"),
            (StatusCode::UNAUTHORIZED, "unauthorized"),
            (StatusCode::NOT_FOUND, "not_found"),
            (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            (StatusCode::URI_TOO_LONG, "uri_too_long"),
            (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large"),
            (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            (StatusCode::BAD_GATEWAY, "internal"),
            (StatusCode::IM_A_TEAPOT, "http_error"),
        ] {
            let p = serde_json::to_value(ApiError::from_status(status).to_problem("/x")).unwrap();
            assert_eq!(p["type"], format!("urn:apq:problem:{ty}"), "{status}: {p}");
            assert_eq!(p["status"], status.as_u16(), "{status}: {p}");
        }
    }
}

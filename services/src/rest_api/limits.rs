//! Request-size limits checked before anything else, so an over-long target or an oversized
//! header section gets a problem body with the security headers. (hyper's own, larger limits in
//! [`super::server`] stop anything beyond these with a bare status.)

use super::problem::{ApiError, Code};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Longest request target (path and query, as sent) the API reads: 8 KiB.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// Most header fields a request may carry.
pub const MAX_HEADER_FIELDS: usize = 64;

/// Most header bytes (each field's name and value) a request may carry: 16 KiB.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// What is wrong with a request's size, if anything.
pub fn check(uri_len: usize, header_fields: usize, header_bytes: usize) -> Result<(), ApiError> {
    if uri_len > MAX_URI_BYTES {
        return Err(ApiError::new(
            Code::UriTooLong,
            format!("the request target is {uri_len} bytes; at most {MAX_URI_BYTES} are read"),
        ));
    }
    if header_fields > MAX_HEADER_FIELDS || header_bytes > MAX_HEADER_BYTES {
        return Err(ApiError::new(
            Code::HeadersTooLarge,
            format!(
                "{header_fields} header fields of {header_bytes} bytes; at most {MAX_HEADER_FIELDS} fields and \
                 {MAX_HEADER_BYTES} bytes are read"
            ),
        ));
    }
    Ok(())
}

/// Middleware: 414 or 431 problems for requests beyond the limits above.
pub async fn enforce(req: Request, next: Next) -> Response {
    let uri_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    let headers = req.headers();
    let header_bytes: usize = headers.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    match check(uri_len, headers.len(), header_bytes) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::at_the_limits(MAX_URI_BYTES, MAX_HEADER_FIELDS, MAX_HEADER_BYTES, None)]
    #[case::long_uri(MAX_URI_BYTES + 1, 1, 10, Some(414))]
    #[case::many_fields(10, MAX_HEADER_FIELDS + 1, 100, Some(431))]
    #[case::many_bytes(10, 2, MAX_HEADER_BYTES + 1, Some(431))]
    fn limits(#[case] uri: usize, #[case] fields: usize, #[case] bytes: usize, #[case] status: Option<u16>) {
        assert_eq!(check(uri, fields, bytes).err().map(|e| e.status.as_u16()), status);
    }
}

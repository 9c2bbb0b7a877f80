//! The HTTP/1.1 server loop. `axum::serve` offers no header-read timeout, so connections are
//! served here with hyper's own builder: a request head must arrive within the configured time of
//! the connection being accepted or of its previous response (the same timer closes idle
//! keep-alive connections), the head is bounded in size and header count, and every request
//! carries the peer address ([`ConnectInfo`]) for the failed-authentication throttle.
//!
//! What hyper rejects itself, before any of our code runs, gets hyper's own bare response and the
//! connection is closed: a request line or header that does not parse (400), more than
//! [`HYPER_MAX_HEADERS`] header fields or a head over [`HYPER_MAX_HEAD_BYTES`] (431). A head that
//! does not arrive in time is closed without a response. Everything within those limits reaches
//! the application, which answers with problem bodies (see [`super::limits`]).

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// More header fields than this and hyper answers a bare 431 itself (the application answers a
/// 431 problem from [`super::limits::MAX_HEADER_FIELDS`] on).
pub const HYPER_MAX_HEADERS: usize = 128;

/// A request head (request line and headers) longer than this gets hyper's bare 431 (the
/// application answers problems for URIs and header sections within it).
pub const HYPER_MAX_HEAD_BYTES: usize = 64 * 1024;

/// How long shutdown waits for in-flight requests before dropping their connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Connection-level settings.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Time allowed for a complete request head, from accept or from the previous response.
    pub header_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown` fires, then lets in-flight requests finish (at
/// most [`SHUTDOWN_GRACE`]); idle connections are closed at once.
pub async fn serve(listener: TcpListener, app: Router, limits: ServerLimits, shutdown: CancellationToken) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_headers(HYPER_MAX_HEADERS)
        .max_header_size(HYPER_MAX_HEAD_BYTES);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Small responses go out at once instead of possibly waiting (Nagle) for the client's
        // delayed ACK of an earlier segment.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let service = app.clone().map_request(move |req: Request<Incoming>| {
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(ConnectInfo(peer));
            req
        });
        let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open {SHUTDOWN_GRACE:?} after shutdown; dropping them");
    }
}

/// The peer of a request served by [`serve`] (absent in in-process tests).
pub fn peer_of<B>(req: &Request<B>) -> Option<SocketAddr> {
    req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0)
}

//! The REST API (axum): latest features from an in-memory cache fed by the broker, historical
//! features from PostgreSQL, bearer-token auth, per-token rate limits, RFC 9457 problems for every
//! error, and hardening headers on every response.
//!
//! [`build`] refuses to start without tokens, binds the listener (port 0 allowed) and
//! [`App::run_until_stopped`] serves until the shutdown token fires, running the cache consumer
//! alongside. Hostile clients are bounded: request-head time and size ([`server`]), target and
//! header sizes ([`limits`]), failed authentications per client ([`auth::AuthThrottle`]), problem
//! bodies ([`problem`]) and history pages ([`handlers::history`]).

pub mod auth;
pub mod cache;
pub mod handlers;
pub mod limits;
pub mod problem;
pub mod query;
pub mod rate_limit;
pub mod server;

use crate::config::Settings;
use crate::runtime::{Health, ServiceError, announce_ready};
use axum::Router;
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::get;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

pub const COMPONENT: &str = "rest-api";

/// Every endpoint is a GET; nothing legitimate has a body.
const MAX_REQUEST_BODY: usize = 16 * 1024;

/// How long start-up waits for the cache consumers before announcing readiness anyway: messages
/// published before the cache queues exist can never reach the cache.
const CACHE_READY_WAIT: Duration = Duration::from_secs(30);

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    /// Connections for the historical queries and readiness.
    pub pool: deadpool_postgres::Pool,
    /// Newest message per (sensor, type).
    pub cache: Arc<cache::LatestCache>,
    /// Ready while the cache consumers run.
    pub cache_health: Health,
    /// Per-token buckets.
    pub limiter: rate_limit::RateLimiter,
    /// Accepted bearer tokens.
    pub tokens: Vec<String>,
    /// Test hook: let unauthenticated requests through.
    pub skip_auth: bool,
    /// Page size when `limit` is absent.
    pub default_limit: u32,
    /// Largest `limit` accepted.
    pub max_limit: u32,
    /// Failed authentications per client address.
    pub auth_throttle: auth::AuthThrottle,
    /// Byte budget of one history page's rows.
    pub max_page_bytes: usize,
    /// Fault hook: no refill of the cache from the database and no fallback on a miss.
    pub no_cache_refill: bool,
}

impl AppState {
    /// State from settings; the pool connects lazily, so this never touches the network.
    pub fn new(settings: &Settings) -> Result<Self, ServiceError> {
        let api = &settings.rest_api;
        Ok(Self {
            pool: crate::db::pool(&settings.database.url, settings.database.pool_size)?,
            cache: Arc::default(),
            cache_health: Health::default(),
            limiter: rate_limit::RateLimiter::new(api.rate_limit_per_sec, api.rate_limit_burst),
            tokens: api.tokens.clone(),
            skip_auth: api.fault_skip_auth,
            default_limit: api.default_limit,
            max_limit: api.max_limit,
            auth_throttle: auth::AuthThrottle::new(
                api.auth_failure_limit,
                Duration::from_millis(api.auth_failure_window_ms),
            ),
            max_page_bytes: api.max_page_bytes,
            no_cache_refill: api.fault_no_cache_refill,
        })
    }
}

/// The routes, without the cross-cutting layers (tests add routes before [`harden`]).
pub fn routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    // route_layer: last added runs first, so authentication precedes rate limiting.
    let v1 = Router::new()
        .route("/v1/sensors/{sensor_id}/features/latest", get(handlers::latest))
        .route("/v1/features", get(handlers::history))
        .route("/v1/features/{message_id}", get(handlers::by_id))
        .route_layer(from_fn_with_state(state.clone(), rate_limit::limit))
        .route_layer(from_fn_with_state(state, auth::require_bearer));
    Router::new()
        .route("/healthz", get(handlers::healthz))
        .route("/metrics", get(handlers::metrics))
        .route("/readyz", get(handlers::readyz))
        .route("/openapi.json", get(handlers::openapi))
        .merge(v1)
        .fallback(handlers::not_found)
}

/// Adds, outermost first: security headers, tracing, problem rendering, the target and header
/// limits, panic catching and the body limit.
pub fn harden(router: Router) -> Router {
    let header = |name: HeaderName, value: &'static str| {
        SetResponseHeaderLayer::overriding(name, HeaderValue::from_static(value))
    };
    router.layer(
        ServiceBuilder::new()
            .layer(header(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
            .layer(header(header::X_FRAME_OPTIONS, "DENY"))
            .layer(header(header::CACHE_CONTROL, "no-store"))
            .layer(header(header::CONTENT_SECURITY_POLICY, "default-src 'none'; frame-ancestors 'none'"))
            .layer(header(header::REFERRER_POLICY, "no-referrer"))
            .layer(TraceLayer::new_for_http())
            .layer(from_fn(problem::render))
            .layer(from_fn(limits::enforce))
            .layer(CatchPanicLayer::custom(problem::panic_response))
            .layer(RequestBodyLimitLayer::new(MAX_REQUEST_BODY)),
    )
}

/// The complete application for `state`.
pub fn app(state: Arc<AppState>) -> Router {
    harden(routes(state.clone()).with_state(state))
}

/// A bound, not yet serving, API.
pub struct App {
    /// The bound socket.
    listener: tokio::net::TcpListener,
    /// The actual port (useful when bound to port 0).
    port: u16,
    /// Shared with the handlers and the cache consumer.
    state: Arc<AppState>,
    /// For the cache consumer.
    settings: Settings,
    /// This instance's id (readiness line, consumer tags).
    instance: String,
    /// Stops serving and the cache consumer.
    shutdown: CancellationToken,
}

/// Binds `settings.rest_api.bind` and prepares the application; nothing is served yet.
pub async fn build(settings: Settings, shutdown: CancellationToken) -> Result<App, ServiceError> {
    if settings.rest_api.fault_skip_auth {
        tracing::warn!(
            "FAULT INJECTION ACTIVE: rest_api.fault_skip_auth accepts requests WITHOUT a valid token. \
             Never use in production."
        );
    }
    if settings.rest_api.tokens.is_empty() {
        return Err(ServiceError::Other(
            "no API tokens configured: set APQ_API_TOKENS (comma-separated bearer tokens) or rest_api.tokens".into(),
        ));
    }
    let state = Arc::new(AppState::new(&settings)?);
    let listener = tokio::net::TcpListener::bind(&settings.rest_api.bind).await?;
    let port = listener.local_addr()?.port();
    let instance = settings.instance_id(COMPONENT);
    Ok(App { listener, port, state, settings, instance, shutdown })
}

impl App {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until the shutdown token fires (in-flight requests finish), with the cache consumer
    /// running alongside. Announces readiness once serving and the cache is consuming.
    pub async fn run_until_stopped(self) -> Result<(), ServiceError> {
        let App { listener, port, state, settings, instance, shutdown } = self;
        let limits =
            server::ServerLimits { header_timeout: Duration::from_millis(settings.rest_api.header_timeout_ms) };
        // A child token, so a server failure also stops the cache consumer.
        let cache_stop = shutdown.child_token();
        if settings.rest_api.fault_no_cache_refill {
            tracing::warn!(
                "FAULT INJECTION ACTIVE: rest_api.fault_no_cache_refill: no cache refill from the database and no \
                 fallback on a miss; 'latest' goes stale after a broker gap. Never use in production."
            );
        }
        let refill = (!settings.rest_api.fault_no_cache_refill).then(|| state.pool.clone());
        let cache_task = tokio::spawn(cache::run(
            settings,
            instance.clone(),
            state.cache.clone(),
            refill,
            state.cache_health.clone(),
            cache_stop.clone(),
        ));
        let mut server = tokio::spawn(server::serve(listener, app(state.clone()), limits, shutdown.clone()));
        tracing::info!(port, "rest api listening");

        let cache_ready = async {
            while !state.cache_health.is_ready() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let early_end = tokio::select! {
            _ = cache_ready => None,
            _ = tokio::time::sleep(CACHE_READY_WAIT) => {
                tracing::warn!("cache consumers not running yet; announcing readiness anyway");
                None
            }
            _ = shutdown.cancelled() => None,
            res = &mut server => Some(res),
        };
        let result = match early_end {
            Some(res) => res,
            None => {
                if !shutdown.is_cancelled() {
                    announce_ready(COMPONENT, &instance, Some(port));
                }
                server.await
            }
        };
        cache_stop.cancel();
        cache_task.await.ok();
        result.map_err(|e| ServiceError::Other(format!("server task failed: {e}")))
    }
}

#[cfg(test)]
mod tests;

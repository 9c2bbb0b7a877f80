//! Per-token rate limiting with token buckets: `burst` requests at once, refilled at `rate` per
//! second. Only authenticated principals get a bucket, so unknown tokens cannot grow the map.

use super::AppState;
use super::auth::Principal;
use super::problem::{ApiError, Code};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One principal's bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Largest number of stored tokens (the burst).
    capacity: f64,
    /// Tokens added per second.
    rate: f64,
    /// Tokens available as of `last`.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    last: Instant,
}

impl TokenBucket {
    /// A full bucket. A zero burst would refuse everything forever, so it counts as 1.
    pub fn new(rate_per_sec: f64, burst: u32, now: Instant) -> Self {
        let capacity = f64::from(burst.max(1));
        Self { capacity, rate: rate_per_sec, tokens: capacity, last: now }
    }

    /// Takes one token, or says how long until one is available.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        self.peek(now)?;
        self.tokens -= 1.0;
        Ok(())
    }

    /// Whether a token is available at `now` (taking none), or how long until one is.
    pub fn peek(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 { Ok(()) } else { Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate)) }
    }

    /// Whether the bucket has refilled completely by `now` (so forgetting it changes nothing).
    pub fn is_full(&mut self, now: Instant) -> bool {
        let _ = self.peek(now);
        self.tokens >= self.capacity
    }
}

/// `Retry-After` is whole seconds; rounding up and never 0 means a client that obeys it succeeds.
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs_f64().ceil() as u64).max(1)
}

/// All principals' buckets.
#[derive(Debug)]
pub struct RateLimiter {
    /// Sustained requests per second per principal.
    rate: f64,
    /// Burst per principal.
    burst: u32,
    /// Buckets, created full on a principal's first request.
    buckets: Mutex<HashMap<Principal, TokenBucket>>,
}

impl RateLimiter {
    pub fn new(rate_per_sec: f64, burst: u32) -> Self {
        Self { rate: rate_per_sec, burst, buckets: Mutex::new(HashMap::new()) }
    }

    /// Admits one request of `who` at `now`, or returns the wait until the next one is allowed.
    pub fn check(&self, who: Principal, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        buckets.entry(who).or_insert_with(|| TokenBucket::new(self.rate, self.burst, now)).try_take(now)
    }
}

/// Middleware (after authentication): 429 with `Retry-After` once a principal's bucket is empty.
pub async fn limit(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let who = req.extensions().get::<Principal>().copied().unwrap_or(Principal::ANONYMOUS);
    if let Err(wait) = state.limiter.check(who, Instant::now()) {
        let secs = retry_after_secs(wait);
        return ApiError::new(Code::RateLimited, format!("rate limit exceeded; retry in {secs} s"))
            .with_header(header::RETRY_AFTER, HeaderValue::from(secs))
            .into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn burst_then_refused_then_refilled() {
        let t0 = Instant::now();
        let limiter = RateLimiter::new(2.0, 3);
        let who = Principal(0);
        for i in 0..3 {
            assert!(limiter.check(who, t0).is_ok(), "request {i} of the burst");
        }
        let wait = limiter.check(who, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-9, "{wait:?}");
        assert_eq!(retry_after_secs(wait), 1);
        // Half a second later exactly one token is back.
        let t1 = t0 + Duration::from_millis(500);
        assert!(limiter.check(who, t1).is_ok());
        assert!(limiter.check(who, t1).is_err());
        // A long pause refills to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(limiter.check(who, t2).is_ok());
        }
        assert!(limiter.check(who, t2).is_err());
    }

    #[test]
    fn principals_have_separate_buckets() {
        let t0 = Instant::now();
        let limiter = RateLimiter::new(1.0, 1);
        assert!(limiter.check(Principal(0), t0).is_ok());
        assert!(limiter.check(Principal(0), t0).is_err());
        assert!(limiter.check(Principal(1), t0).is_ok());
    }

    #[test]
    fn zero_burst_still_admits_one() {
        let mut b = TokenBucket::new(1.0, 0, Instant::now());
        assert!(b.try_take(b.last).is_ok());
    }

    #[rstest]
    #[case::tiny(Duration::from_millis(1), 1)]
    #[case::exact(Duration::from_secs(2), 2)]
    #[case::rounds_up(Duration::from_millis(2001), 3)]
    #[case::zero(Duration::ZERO, 1)]
    fn retry_after_is_whole_seconds_at_least_one(#[case] wait: Duration, #[case] secs: u64) {
        assert_eq!(retry_after_secs(wait), secs);
    }

    #[test]
    fn slow_rate_gives_long_retry_after() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(0.1, 1, t0);
        b.try_take(t0).unwrap();
        assert_eq!(retry_after_secs(b.try_take(t0).unwrap_err()), 10);
    }
}

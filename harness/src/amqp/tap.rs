//! Taps: before anything is published, an exclusive auto-delete queue is bound to each fanout and
//! every DLQ is consumed; each message is buffered with its arrival time (push-based, no polling of
//! the broker). Steps then query the buffer: wait for the first match, for exactly N, or for none
//! within a window. Feature messages are validated against the contract schemas on arrival, so a
//! violation is on record even if no step looks at that message.

use super::Topology;
use anyhow::Context as _;
use anyhow::bail;
use contract::MessageKind;
use contract::topology::Names;
use futures::StreamExt;
use lapin::ExchangeKind;
use lapin::options::{BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Where a captured message was seen.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Source {
    FeatureA,
    FeatureB,
    /// A dead-letter queue, by full name.
    Dlq(String),
}

/// One message as the tap saw it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Captured {
    pub source: Source,
    /// Body parsed as JSON, when it is JSON.
    pub json: Option<Value>,
    /// Body as text (lossy), for messages that are not JSON.
    pub text: String,
    /// String-valued AMQP headers.
    pub headers: BTreeMap<String, String>,
    /// The AMQP `message_id` property.
    pub amqp_message_id: Option<String>,
    /// Time since the tap started, for per-hop latency.
    #[serde(skip)]
    pub arrived: Instant,
    pub arrived_at: chrono::DateTime<chrono::Utc>,
    /// Contract violations found on arrival (feature messages only).
    pub schema_errors: Vec<String>,
}

impl Captured {
    /// The sensor a message belongs to: from the body, else the `x-sensor-id` header.
    pub fn sensor_id(&self) -> Option<&str> {
        self.json
            .as_ref()
            .and_then(|j| j.get("sensor_id"))
            .and_then(Value::as_str)
            .or_else(|| self.headers.get(contract::HEADER_SENSOR_ID).map(String::as_str))
    }
    pub fn field(&self, pointer: &str) -> Option<&Value> {
        self.json.as_ref()?.pointer(pointer)
    }
    pub fn str_field(&self, pointer: &str) -> Option<&str> {
        self.field(pointer)?.as_str()
    }
    /// One line for diagnostics.
    pub fn summary(&self) -> String {
        let reason = self.headers.get(contract::HEADER_DLQ_REASON).map(|r| format!(" reason={r}")).unwrap_or_default();
        let body = match &self.json {
            Some(j) => {
                let mut s = j.to_string();
                if s.len() > 240 {
                    s.truncate(contract::floor_char_boundary(&s, 240)); // hostile bodies are multi-byte anywhere
                    s.push('…');
                }
                s
            }
            None => format!("{:?}", self.text.chars().take(80).collect::<String>()),
        };
        format!("[{:?}{reason}] {body}", self.source)
    }
}

struct Inner {
    /// Everything captured so far, in arrival order.
    messages: Mutex<Vec<Captured>>,
    /// Wakes waiters when a message arrives.
    notify: Notify,
    /// Names the tap listens on (for diagnostics).
    names: Names,
}

/// A running tap over one pipeline namespace. Cheap to clone.
#[derive(Clone)]
pub struct Tap {
    inner: Arc<Inner>,
    /// Keeps the tap's connection (and so its exclusive queues) alive.
    _conn: Arc<lapin::Connection>,
    /// Whose waits these are (a scenario's namespace), for the convergence log.
    scope: Option<Arc<str>>,
}

impl Tap {
    /// Binds a queue of the tap's own (exclusive, auto-delete) to each fanout and one to the
    /// dead-letter exchange under every DLQ's name; returns once all consumers are live, so
    /// anything published afterwards is captured. Nothing is taken from the pipeline's queues:
    /// the broker routes a copy of every feature message and every dead letter to the tap, and
    /// the DLQs keep theirs. In a [`Topology::Deployed`] namespace the exchanges are only
    /// checked passively.
    pub async fn start(amqp_url: &str, names: &Names, topology: Topology) -> anyhow::Result<Tap> {
        let conn = super::connect(amqp_url, "qa-tap").await?;
        let inner = Arc::new(Inner { messages: Mutex::new(Vec::new()), notify: Notify::new(), names: names.clone() });
        let dead_letters = names.dead_letters();
        let observed = [
            (names.features_a(), ExchangeKind::Fanout, vec![String::new()], Some(Source::FeatureA)),
            (names.features_b(), ExchangeKind::Fanout, vec![String::new()], Some(Source::FeatureB)),
            (dead_letters, ExchangeKind::Direct, names.all_dlqs(), None),
        ];
        for (exchange, kind, keys, source) in observed {
            let ch = conn.create_channel().await?;
            let queue = observer_queue(&ch, &exchange, kind, &keys, topology)
                .await
                .with_context(|| format!("tapping exchange {exchange:?}"))?;
            spawn_consumer(ch, queue, source, inner.clone()).await?;
        }
        Ok(Tap { inner, _conn: Arc::new(conn), scope: None })
    }

    /// The same tap (same captures), whose waits are attributed to `scope` (a scenario's
    /// namespace) in the convergence log.
    pub fn scoped(&self, scope: &str) -> Tap {
        Tap { scope: Some(scope.into()), ..self.clone() }
    }

    pub fn names(&self) -> &Names {
        &self.inner.names
    }

    /// A snapshot of every captured message matching `pred`.
    pub fn matching(&self, pred: impl Fn(&Captured) -> bool) -> Vec<Captured> {
        self.inner.messages.lock().expect("tap lock").iter().filter(|m| pred(m)).cloned().collect()
    }

    /// How many captured messages match `pred`, without copying them (cheap progress polling).
    pub fn count(&self, pred: impl Fn(&Captured) -> bool) -> usize {
        self.inner.messages.lock().expect("tap lock").iter().filter(|m| pred(m)).count()
    }

    /// Waits until at least `count` messages match (returns as soon as they do). On timeout the
    /// error names what was expected, how many matched, and the messages seen for `scope`.
    pub async fn wait_for(
        &self,
        what: &str,
        count: usize,
        deadline: Duration,
        scope: impl Fn(&Captured) -> bool,
        pred: impl Fn(&Captured) -> bool,
    ) -> anyhow::Result<Vec<Captured>> {
        let started = Instant::now();
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let found = self.matching(&pred);
            if found.len() >= count {
                self.note(what, started, true);
                return Ok(found);
            }
            let remaining = deadline.saturating_sub(started.elapsed());
            if remaining.is_zero() || tokio::time::timeout(remaining, notified).await.is_err() {
                let found = self.matching(&pred);
                if found.len() >= count {
                    self.note(what, started, true);
                    return Ok(found);
                }
                self.note(what, started, false);
                bail!(
                    "timed out after {:.1}s waiting for {what}\n  expected: at least {count} matching message(s)\n  actual: {} matching\n  seen in this scenario's namespace:\n{}",
                    started.elapsed().as_secs_f64(),
                    found.len(),
                    self.describe(&scope)
                );
            }
        }
    }

    /// Fails as soon as a message matching `pred` arrives within `window`; else Ok after it.
    /// The wait is the point of this check (absence can only be shown by waiting).
    pub async fn none_within(
        &self,
        what: &str,
        window: Duration,
        pred: impl Fn(&Captured) -> bool,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let found = self.matching(&pred);
            if let Some(m) = found.first() {
                bail!(
                    "expected no {what} within {:.1}s, but {} arrived after {:.2}s; first: {}",
                    window.as_secs_f64(),
                    found.len(),
                    started.elapsed().as_secs_f64(),
                    m.summary()
                );
            }
            let remaining = window.saturating_sub(started.elapsed());
            if remaining.is_zero() || tokio::time::timeout(remaining, notified).await.is_err() {
                if let Some(m) = self.matching(&pred).first() {
                    bail!("expected no {what} within {:.1}s, but one arrived: {}", window.as_secs_f64(), m.summary());
                }
                return Ok(());
            }
        }
    }

    /// Up to 20 captured messages for `scope`, one per line, for diagnostics.
    pub fn describe(&self, scope: impl Fn(&Captured) -> bool) -> String {
        let seen = self.matching(scope);
        if seen.is_empty() {
            return "    (nothing)".into();
        }
        let mut lines: Vec<String> = seen.iter().rev().take(20).map(|m| format!("    {}", m.summary())).collect();
        lines.reverse();
        if seen.len() > 20 {
            lines.insert(0, format!("    … {} earlier messages", seen.len() - 20));
        }
        lines.join("\n")
    }
}

/// The tap's own exclusive queue on `exchange`, bound under each of `keys`. An owned namespace
/// gets the exchange declared the contract's way; a deployment's must already have it.
async fn observer_queue(
    ch: &lapin::Channel,
    exchange: &str,
    kind: ExchangeKind,
    keys: &[String],
    topology: Topology,
) -> anyhow::Result<String> {
    let opts = ExchangeDeclareOptions { durable: true, passive: topology == Topology::Deployed, ..Default::default() };
    ch.exchange_declare(exchange.into(), kind, opts, FieldTable::default()).await.with_context(|| {
        if topology == Topology::Deployed {
            format!("the deployment has no exchange {exchange:?} (contract 1.1 names it)")
        } else {
            format!("declaring exchange {exchange:?}")
        }
    })?;
    let own = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
    let queue = ch.queue_declare("".into(), own, FieldTable::default()).await?.name().to_string();
    for key in keys {
        let bind = QueueBindOptions::default();
        ch.queue_bind(queue.as_str().into(), exchange.into(), key.as_str().into(), bind, FieldTable::default()).await?;
    }
    Ok(queue)
}

/// Consumes the tap's own queue; `source` None means "a dead letter: the routing key names its DLQ".
async fn spawn_consumer(
    ch: lapin::Channel,
    queue: String,
    source: Option<Source>,
    inner: Arc<Inner>,
) -> anyhow::Result<()> {
    let opts = BasicConsumeOptions { no_ack: true, ..Default::default() };
    let mut consumer = ch.basic_consume(queue.as_str().into(), "".into(), opts, FieldTable::default()).await?;
    tokio::spawn(async move {
        // The channel must live as long as the consumer.
        let _ch = ch;
        while let Some(Ok(delivery)) = consumer.next().await {
            let source = source.clone().unwrap_or_else(|| Source::Dlq(delivery.routing_key.to_string()));
            let captured = capture(&source, &delivery);
            inner.messages.lock().expect("tap lock").push(captured);
            inner.notify.notify_waiters();
        }
    });
    Ok(())
}

fn capture(source: &Source, d: &lapin::message::Delivery) -> Captured {
    let json: Option<Value> = serde_json::from_slice(&d.data).ok();
    let mut headers = BTreeMap::new();
    if let Some(h) = d.properties.headers() {
        for (k, v) in h.inner() {
            let s = match v {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                AMQPValue::ShortString(s) => s.as_str().to_string(),
                other => format!("{other:?}"),
            };
            headers.insert(k.as_str().to_string(), s);
        }
    }
    let kind = match source {
        Source::FeatureA => Some(MessageKind::FeatureA),
        Source::FeatureB => Some(MessageKind::FeatureB),
        Source::Dlq(_) => None,
    };
    let schema_errors = match (kind, &json) {
        (Some(k), Some(v)) => crate::json_match::validate_contract(k, v).err().unwrap_or_default(),
        (Some(_), None) => vec!["body is not JSON".into()],
        _ => Vec::new(),
    };
    Captured {
        source: source.clone(),
        text: String::from_utf8_lossy(&d.data).chars().take(4096).collect(),
        json,
        headers,
        amqp_message_id: d.properties.message_id().as_ref().map(|s| s.as_str().to_string()),
        arrived: Instant::now(),
        arrived_at: chrono::Utc::now(),
        schema_errors,
    }
}

impl Tap {
    /// Tap waits go into the same convergence log as `eventually`.
    fn note(&self, what: &str, started: Instant, ok: bool) {
        crate::eventually::record_wait(what, self.scope.as_deref(), started.elapsed(), 1, ok);
    }
}

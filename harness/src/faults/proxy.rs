//! A TCP fault proxy: one per link (component → broker, component → database, client → API).
//! The component connects to [`Proxy::addr`] instead of the real upstream; the proxy forwards
//! bytes both ways and applies at most one [`LinkFault`] at a time, changeable while connections
//! are open. Every change is recorded with a timestamp ([`Proxy::history`]) for run reports.
//!
//! Per connection and direction a reader stamps each chunk with the instant it may be released
//! and queues it (bounded: a stalled peer backpressures the sender); a writer releases chunks in
//! order. Delays therefore never reorder bytes, and Pause holds data without losing any.

use anyhow::Context;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// How long the proxy tries to reach its upstream for a new connection before resetting it.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read at a time from either side.
const READ_CHUNK: usize = 16 * 1024;
/// Chunks queued per direction before the proxy stops reading (4 MiB: Pause buffers that much).
const QUEUE_CHUNKS: usize = 256;

/// One fault on a link. Data, so scenarios can name it and reports can print it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LinkFault {
    /// Every chunk, in both directions, is held `ms` plus up to `jitter_ms` (uniform) before it
    /// is forwarded; order is kept, so a round trip gains at least `2 × ms`.
    Latency { ms: u64, jitter_ms: u64 },
    /// Each direction of each connection forwards at most this many bytes per second.
    Bandwidth { bytes_per_sec: u64 },
    /// A black hole: connections are accepted and never closed by the proxy, nothing is
    /// forwarded either way. Bytes that arrive while silent are read and DROPPED (the peer's
    /// writes succeed); bytes already queued are held and flow after [`Proxy::clear`]. A
    /// connection that dropped bytes has a gap in its stream, so a protocol peer will fail on it
    /// after the clear: use Silent for heartbeat/timeout detection, [`LinkFault::Pause`] for
    /// stalls without loss. New connections are not dialled upstream until cleared.
    Silent,
    /// Every open connection is reset (RST to both peers, SO_LINGER 0) and so is every new one,
    /// until cleared.
    Reset,
    /// Once `bytes` more bytes have been forwarded on a connection (both directions together,
    /// counted from when the fault is set), the proxy closes it on both sides.
    CloseAfter { bytes: u64 },
    /// Data is read and held (up to 4 MiB per direction, then the sender blocks) and all of it
    /// is delivered, in order, once cleared. Connections stay open.
    Pause,
    /// Only the upstream → client direction is delayed by `ms` (e.g. publish confirms, query
    /// results); requests go through at once.
    DelayServerToClient { ms: u64 },
}

impl std::fmt::Display for LinkFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkFault::Latency { ms, jitter_ms: 0 } => write!(f, "latency {ms} ms each way"),
            LinkFault::Latency { ms, jitter_ms } => write!(f, "latency {ms} ms (+0–{jitter_ms} ms jitter) each way"),
            LinkFault::Bandwidth { bytes_per_sec } => write!(f, "bandwidth {bytes_per_sec} B/s each way"),
            LinkFault::Silent => write!(f, "silent (black hole, connections kept open)"),
            LinkFault::Reset => write!(f, "reset (every connection gets RST)"),
            LinkFault::CloseAfter { bytes } => write!(f, "close each connection after {bytes} more bytes"),
            LinkFault::Pause => write!(f, "paused (data held until resumed)"),
            LinkFault::DelayServerToClient { ms } => write!(f, "server→client delayed {ms} ms"),
        }
    }
}

/// What happened to a link, for the report's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum FaultChange {
    /// A fault started (replacing any previous one).
    Set { fault: LinkFault },
    /// Back to pass-through.
    Cleared,
    /// A one-shot reset of the connections open at that moment.
    ResetConnections { connections: usize },
}

/// One entry of [`Proxy::history`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultEvent {
    /// Wall-clock time of the change, to line up with logs and the report.
    pub at: chrono::DateTime<chrono::Utc>,
    /// The link's name ([`Proxy::name`]), so merged timelines stay readable.
    pub link: String,
    /// What changed.
    pub change: FaultChange,
}

impl std::fmt::Display for FaultEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = self.at.format("%H:%M:%S%.3f");
        match &self.change {
            FaultChange::Set { fault } => write!(f, "{at} {}: {fault}", self.link),
            FaultChange::Cleared => write!(f, "{at} {}: cleared (pass-through)", self.link),
            FaultChange::ResetConnections { connections } => {
                write!(f, "{at} {}: reset {connections} open connection(s)", self.link)
            }
        }
    }
}

/// What every connection watches.
#[derive(Debug, Clone, Default)]
struct LinkState {
    /// The fault in force, None for pass-through.
    fault: Option<LinkFault>,
    /// Bumped on every set/clear, so a CloseAfter budget starts afresh.
    generation: u64,
    /// Bumped by [`Proxy::reset_connections`]; connections older than the bump reset.
    reset_epoch: u64,
}

/// State shared by the proxy handle, its accept loop and its connections.
struct Shared {
    /// The link's name in reports and errors.
    name: String,
    /// Where connections are forwarded.
    upstream: SocketAddr,
    /// The fault state, pushed to every connection.
    state: watch::Sender<LinkState>,
    /// Connections currently open (client accepted, not yet closed).
    open: AtomicUsize,
    /// Bytes dropped by Silent, for diagnostics.
    dropped: AtomicU64,
    /// Every change, oldest first.
    history: Mutex<Vec<FaultEvent>>,
}

/// A running proxy. Dropping it stops accepting and closes every connection.
pub struct Proxy {
    /// Shared with the tasks.
    shared: Arc<Shared>,
    /// Where clients connect.
    addr: SocketAddr,
    /// The accept loop; it owns the connection tasks, so aborting it ends them all.
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `upstream`, passing through until a
    /// fault is set.
    pub async fn start(name: &str, upstream: SocketAddr) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .with_context(|| format!("fault proxy {name}: binding 127.0.0.1:0 (is the loopback interface up?)"))?;
        let addr = listener.local_addr().context("fault proxy: reading its own address")?;
        let shared = Arc::new(Shared {
            name: name.to_string(),
            upstream,
            state: watch::Sender::new(LinkState::default()),
            open: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            history: Mutex::new(Vec::new()),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Proxy { shared, addr, accept })
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// Applies `fault` to open and new connections, replacing the previous one.
    pub fn set(&self, fault: LinkFault) {
        self.record(FaultChange::Set { fault: fault.clone() });
        self.shared.state.send_modify(|s| {
            s.fault = Some(fault);
            s.generation += 1;
        });
    }

    /// Back to pass-through. Paused data then flows; data a Silent link dropped is gone.
    pub fn clear(&self) {
        self.record(FaultChange::Cleared);
        self.shared.state.send_modify(|s| {
            s.fault = None;
            s.generation += 1;
        });
    }

    /// Resets (RST) every connection open now; new ones are accepted as usual.
    pub fn reset_connections(&self) {
        self.record(FaultChange::ResetConnections { connections: self.connections() });
        self.shared.state.send_modify(|s| s.reset_epoch += 1);
    }

    /// The fault in force, if any.
    pub fn fault(&self) -> Option<LinkFault> {
        self.shared.state.borrow().fault.clone()
    }

    /// Connections currently open through the proxy.
    pub fn connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Bytes a Silent link has dropped so far.
    pub fn dropped_bytes(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Every fault change so far, oldest first.
    pub fn history(&self) -> Vec<FaultEvent> {
        self.shared.history.lock().expect("history lock").clone()
    }

    fn record(&self, change: FaultChange) {
        let event = FaultEvent { at: chrono::Utc::now(), link: self.shared.name.clone(), change };
        self.shared.history.lock().expect("history lock").push(event);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Owned here so that aborting this task (Proxy dropped) aborts every connection too.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    shared.open.fetch_add(1, Ordering::SeqCst);
                    conns.spawn(serve(client, shared.clone()));
                }
                Err(e) => {
                    tracing::debug!(link = %shared.name, error = %e, "fault proxy: accept failed");
                    // Not a synchronisation: out of descriptors or the like; retrying at once
                    // would spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // Reap finished connections so the set does not grow without bound.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Decrements the open count however a connection ends (also when aborted).
struct OpenGuard(Arc<Shared>);
impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why a connection's pumps stopped early.
enum End {
    /// A CloseAfter budget ran out: close both sides.
    Budget,
    /// A read/write failed or the other pump went away: reset both sides.
    Broken,
}

fn rst(stream: TcpStream) {
    // Ignoring the error: the socket may already be dead, and dropping it closes it anyway.
    let _ = stream.set_zero_linger();
}

async fn serve(mut client: TcpStream, shared: Arc<Shared>) {
    let _open = OpenGuard(shared.clone());
    let mut rx = shared.state.subscribe();
    let epoch = rx.borrow().reset_epoch;
    // Before dialling: Reset refuses, Silent holds the client (dropping what it sends).
    loop {
        let (fault, reset) = {
            let s = rx.borrow_and_update();
            (s.fault.clone(), s.reset_epoch != epoch)
        };
        match fault {
            _ if reset => return rst(client),
            Some(LinkFault::Reset) => return rst(client),
            Some(LinkFault::Silent) => {
                let mut buf = vec![0u8; READ_CHUNK];
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return },
                    n = client.read(&mut buf) => match n {
                        Ok(0) | Err(_) => return,
                        Ok(n) => { shared.dropped.fetch_add(n as u64, Ordering::Relaxed); }
                    },
                }
            }
            _ => break,
        }
    }
    let upstream = match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(shared.upstream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(link = %shared.name, upstream = %shared.upstream, error = %e, "fault proxy: upstream refused");
            return rst(client);
        }
        Err(_) => {
            tracing::debug!(link = %shared.name, upstream = %shared.upstream, "fault proxy: upstream did not answer within 5 s");
            return rst(client);
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let mut upstream = upstream;
    // Bytes forwarded since which generation, for CloseAfter (both directions share it).
    let budget = Mutex::new((u64::MAX, 0u64));
    let outcome = {
        let (cr, cw) = client.split();
        let (ur, uw) = upstream.split();
        let up = pump(cr, uw, false, &shared, &budget);
        let down = pump(ur, cw, true, &shared, &budget);
        tokio::select! {
            r = async { tokio::try_join!(up, down) } => r.err(),
            () = reset_requested(rx, epoch) => Some(End::Broken),
        }
    };
    match outcome {
        None | Some(End::Budget) => {} // dropping both closes them (FIN)
        Some(End::Broken) => {
            rst(client);
            rst(upstream);
        }
    }
}

/// Resolves once this connection must be reset: a Reset fault or a newer reset epoch.
async fn reset_requested(mut rx: watch::Receiver<LinkState>, epoch: u64) {
    loop {
        {
            let s = rx.borrow_and_update();
            if s.reset_epoch != epoch || s.fault == Some(LinkFault::Reset) {
                return;
            }
        }
        if rx.changed().await.is_err() {
            // The proxy is gone; its abort ends this connection.
            std::future::pending::<()>().await;
        }
    }
}

/// A chunk and when it may be written, or the end of the direction.
enum Item {
    Data(Vec<u8>, Instant),
    Eof,
}

/// One direction: `to_client` is upstream → client.
async fn pump(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    to_client: bool,
    shared: &Shared,
    budget: &Mutex<(u64, u64)>,
) -> Result<(), End> {
    let (tx, mut queue) = mpsc::channel::<Item>(QUEUE_CHUNKS);
    let reader = async {
        let mut last_release = Instant::now();
        loop {
            let mut buf = vec![0u8; READ_CHUNK];
            let n = from.read(&mut buf).await.map_err(|_| End::Broken)?;
            if n == 0 {
                tx.send(Item::Eof).await.map_err(|_| End::Broken)?;
                return Ok(());
            }
            buf.truncate(n);
            let fault = shared.state.borrow().fault.clone();
            let delay_ms = match fault {
                Some(LinkFault::Silent) => {
                    shared.dropped.fetch_add(n as u64, Ordering::Relaxed);
                    continue;
                }
                Some(LinkFault::Latency { ms, jitter_ms }) => ms + rand::rng().random_range(0..=jitter_ms),
                Some(LinkFault::DelayServerToClient { ms }) if to_client => ms,
                _ => 0,
            };
            // Never earlier than the chunk before: jitter must not reorder.
            last_release = last_release.max(Instant::now() + Duration::from_millis(delay_ms));
            tx.send(Item::Data(buf, last_release)).await.map_err(|_| End::Broken)?;
        }
    };
    let writer = async {
        let mut rx = shared.state.subscribe();
        // Bandwidth pacing: when the next slice may go.
        let mut next_slot = Instant::now();
        while let Some(item) = queue.recv().await {
            // Pause and Silent hold everything queued (including an end of stream).
            while matches!(rx.borrow_and_update().fault, Some(LinkFault::Pause | LinkFault::Silent)) {
                if rx.changed().await.is_err() {
                    return Err(End::Broken);
                }
            }
            let (data, release) = match item {
                Item::Eof => {
                    // Half-close: the other direction may still be flowing.
                    let _ = to.shutdown().await;
                    return Ok(());
                }
                Item::Data(d, r) => (d, r),
            };
            tokio::time::sleep_until(release).await;
            let mut rest = &data[..];
            while !rest.is_empty() {
                let state = rx.borrow().clone();
                let mut n = rest.len();
                match state.fault {
                    Some(LinkFault::Bandwidth { bytes_per_sec }) => {
                        let bps = bytes_per_sec.max(1);
                        // Slices of ~50 ms worth keep the rate smooth.
                        n = n.min((bps / 20).max(1) as usize);
                        tokio::time::sleep_until(next_slot).await;
                        next_slot = next_slot.max(Instant::now()) + Duration::from_secs_f64(n as f64 / bps as f64);
                    }
                    Some(LinkFault::CloseAfter { bytes }) => {
                        let mut b = budget.lock().expect("budget lock");
                        if b.0 != state.generation {
                            *b = (state.generation, 0);
                        }
                        let left = bytes.saturating_sub(b.1);
                        if left == 0 {
                            return Err(End::Budget);
                        }
                        n = n.min(left as usize);
                        b.1 += n as u64;
                    }
                    _ => {}
                }
                to.write_all(&rest[..n]).await.map_err(|_| End::Broken)?;
                rest = &rest[n..];
                if let Some(LinkFault::CloseAfter { bytes }) = state.fault
                    && budget.lock().expect("budget lock").1 >= bytes
                {
                    return Err(End::Budget);
                }
            }
        }
        Err(End::Broken)
    };
    tokio::try_join!(reader, writer).map(|_| ())
}

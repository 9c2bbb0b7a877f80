//! The fault proxy against a local echo server: each fault does what it says, and clearing it
//! restores pass-through. Timing assertions are lower bounds with generous upper bounds, so a
//! noisy 2-core machine cannot make them flaky.

use harness::faults::{FaultChange, LinkFault, Proxy};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};

/// Generous bound for anything that should happen "soon".
const SOON: Duration = Duration::from_secs(10);

/// An echo server on a free port; runs until the test's runtime ends.
async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn proxied() -> (Proxy, TcpStream) {
    let proxy = Proxy::start("test-link", echo_server().await).await.unwrap();
    let client = timeout(SOON, TcpStream::connect(proxy.addr())).await.unwrap().unwrap();
    client.set_nodelay(true).unwrap();
    (proxy, client)
}

/// Sends `msg` and reads its echo back, returning how long the round trip took.
async fn round_trip(c: &mut TcpStream, msg: &[u8]) -> Duration {
    let began = Instant::now();
    c.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    timeout(Duration::from_secs(30), c.read_exact(&mut back)).await.expect("echo within 30 s").unwrap();
    assert_eq!(back, msg);
    began.elapsed()
}

/// The error kind of a failed read, None if it succeeded.
fn err_kind(r: &std::io::Result<usize>) -> Option<ErrorKind> {
    r.as_ref().err().map(std::io::Error::kind)
}

/// Polls `f` until true or SOON passes.
async fn soon(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + SOON;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        // A poll of proxy counters that have no change notification.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn passes_bytes_through_unchanged_and_in_order() {
    let (proxy, mut c) = proxied().await;
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = c.split();
    let send = async {
        w.write_all(&big).await.unwrap();
    };
    let recv = async {
        let mut back = vec![0u8; big.len()];
        timeout(SOON, r.read_exact(&mut back)).await.expect("echo within 10 s").unwrap();
        back
    };
    let ((), back) = tokio::join!(send, recv);
    assert!(back == big, "bytes changed or reordered through the proxy");
    assert_eq!(proxy.connections(), 1);
    assert_eq!(proxy.fault(), None);
}

#[tokio::test]
async fn latency_delays_each_direction_and_keeps_order() {
    let (proxy, mut c) = proxied().await;
    round_trip(&mut c, b"warm-up").await;
    proxy.set(LinkFault::Latency { ms: 150, jitter_ms: 50 });
    let rtt = round_trip(&mut c, b"ping").await;
    // 150 ms each way.
    assert!(rtt >= Duration::from_millis(300), "round trip {rtt:?} < 2 x 150 ms");
    assert!(rtt < Duration::from_secs(5), "round trip {rtt:?}");
    // Many small writes with jitter still arrive in order.
    let (mut r, mut w) = c.split();
    let send = async {
        for i in 0..50u8 {
            w.write_all(&[i]).await.unwrap();
        }
    };
    let recv = async {
        let mut back = [0u8; 50];
        timeout(SOON, r.read_exact(&mut back)).await.expect("within 10 s").unwrap();
        back
    };
    let ((), back) = tokio::join!(send, recv);
    assert_eq!(back.to_vec(), (0..50u8).collect::<Vec<_>>(), "jitter reordered bytes");
    proxy.clear();
    let rtt = round_trip(&mut c, b"fast").await;
    assert!(rtt < Duration::from_secs(2), "still slow after clear: {rtt:?}");
    let h = proxy.history();
    assert_eq!(h.len(), 2, "{h:?}");
    assert!(matches!(h[0].change, FaultChange::Set { .. }) && h[1].change == FaultChange::Cleared);
    assert!(h[0].at <= h[1].at);
    assert!(h[0].to_string().contains("latency 150 ms"), "{}", h[0]);
}

#[tokio::test]
async fn server_to_client_delay_leaves_requests_alone() {
    // An upstream that timestamps when the request arrives, then answers.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = l.local_addr().unwrap();
    let (arrived_tx, arrived_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.unwrap();
        let _ = arrived_tx.send(Instant::now());
        s.write_all(b"pong").await.unwrap();
        // Keep the socket open until the test ends.
        let _ = s.read(&mut b).await;
    });
    let proxy = Proxy::start("s2c", upstream).await.unwrap();
    proxy.set(LinkFault::DelayServerToClient { ms: 300 });
    let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
    let sent = Instant::now();
    c.write_all(b"ping").await.unwrap();
    let arrived = timeout(SOON, arrived_rx).await.unwrap().unwrap();
    let mut b = [0u8; 4];
    timeout(SOON, c.read_exact(&mut b)).await.unwrap().unwrap();
    let answered = sent.elapsed();
    assert!(arrived - sent < Duration::from_millis(250), "request was delayed: {:?}", arrived - sent);
    assert!(answered >= Duration::from_millis(300), "answer came after {answered:?} < 300 ms");
}

#[tokio::test]
async fn silent_forwards_nothing_and_keeps_the_connection_open() {
    let (proxy, mut c) = proxied().await;
    round_trip(&mut c, b"before").await;
    proxy.set(LinkFault::Silent);
    c.write_all(b"into the void").await.unwrap();
    let mut b = [0u8; 64];
    let r = timeout(Duration::from_millis(800), c.read(&mut b)).await;
    assert!(r.is_err(), "silent link answered: {r:?}");
    soon("the dropped bytes to be counted", || proxy.dropped_bytes() == 13).await;
    // A new connection is accepted and also left hanging, not refused.
    let mut c2 = timeout(SOON, TcpStream::connect(proxy.addr())).await.unwrap().unwrap();
    c2.write_all(b"x").await.unwrap();
    assert!(timeout(Duration::from_millis(500), c2.read(&mut b)).await.is_err());
    assert_eq!(proxy.connections(), 2, "a silent link closed a connection");
    proxy.clear();
    // The dropped bytes are gone; later ones flow (the new connection dials upstream now).
    round_trip(&mut c, b"after").await;
    round_trip(&mut c2, b"late").await;
}

#[tokio::test]
async fn reset_sends_rst_to_open_and_new_connections_until_cleared() {
    let (proxy, mut c) = proxied().await;
    round_trip(&mut c, b"hello").await;
    proxy.set(LinkFault::Reset);
    let mut b = [0u8; 8];
    let r = timeout(SOON, c.read(&mut b)).await.expect("reset within 10 s");
    assert_eq!(err_kind(&r), Some(ErrorKind::ConnectionReset), "open connection: {r:?}");
    let mut c2 = TcpStream::connect(proxy.addr()).await.unwrap();
    let r = timeout(SOON, c2.read(&mut b)).await.expect("reset within 10 s");
    assert_eq!(err_kind(&r), Some(ErrorKind::ConnectionReset), "new connection: {r:?}");
    soon("no connection left", || proxy.connections() == 0).await;
    proxy.clear();
    let mut c3 = TcpStream::connect(proxy.addr()).await.unwrap();
    round_trip(&mut c3, b"back").await;
}

#[tokio::test]
async fn reset_connections_is_one_shot() {
    let (proxy, mut c) = proxied().await;
    round_trip(&mut c, b"hello").await;
    proxy.reset_connections();
    let mut b = [0u8; 8];
    let r = timeout(SOON, c.read(&mut b)).await.expect("reset within 10 s");
    assert_eq!(err_kind(&r), Some(ErrorKind::ConnectionReset), "{r:?}");
    let mut c2 = TcpStream::connect(proxy.addr()).await.unwrap();
    round_trip(&mut c2, b"new ones work").await;
    assert_eq!(proxy.history()[0].change, FaultChange::ResetConnections { connections: 1 });
}

#[tokio::test]
async fn close_after_cuts_the_connection_after_n_bytes() {
    let (proxy, mut c) = proxied().await;
    round_trip(&mut c, b"not counted: before the fault").await;
    proxy.set(LinkFault::CloseAfter { bytes: 100 });
    let (mut r, mut w) = c.split();
    // The write may fail once the proxy has closed: that is the point.
    let send = async {
        let _ = w.write_all(&[7u8; 10_000]).await;
    };
    let recv = async {
        let mut got = Vec::new();
        let end = timeout(SOON, r.read_to_end(&mut got)).await.expect("closed within 10 s");
        (got.len(), end)
    };
    let ((), (got, end)) = tokio::join!(send, recv);
    // Both directions share the budget: at most 100 of the 10 000 bytes come back.
    assert!(got <= 100, "{got} bytes echoed through a 100-byte budget");
    // EOF, or RST when unread bytes were still in the proxy's socket.
    assert!(end.is_ok() || end.as_ref().is_err_and(|e| e.kind() == ErrorKind::ConnectionReset), "{end:?}");
}

#[tokio::test]
async fn pause_holds_data_until_resumed() {
    let (proxy, mut c) = proxied().await;
    round_trip(&mut c, b"before").await;
    proxy.set(LinkFault::Pause);
    c.write_all(b"held").await.unwrap();
    let mut b = [0u8; 4];
    assert!(timeout(Duration::from_millis(800), c.read_exact(&mut b)).await.is_err(), "paused link delivered");
    assert_eq!(proxy.connections(), 1);
    let resumed = Instant::now();
    proxy.clear();
    timeout(SOON, c.read_exact(&mut b)).await.expect("held data after resume").unwrap();
    assert_eq!(&b, b"held");
    assert!(resumed.elapsed() < Duration::from_secs(5));
    assert_eq!(proxy.dropped_bytes(), 0);
}

#[tokio::test]
async fn bandwidth_is_roughly_limited() {
    let (proxy, mut c) = proxied().await;
    proxy.set(LinkFault::Bandwidth { bytes_per_sec: 50_000 });
    let data = vec![1u8; 100_000];
    let (mut r, mut w) = c.split();
    let began = Instant::now();
    let send = async {
        w.write_all(&data).await.unwrap();
    };
    let recv = async {
        let mut back = vec![0u8; data.len()];
        timeout(Duration::from_secs(30), r.read_exact(&mut back)).await.expect("within 30 s").unwrap();
    };
    tokio::join!(send, recv);
    let took = began.elapsed();
    // 100 kB at 50 kB/s is 2 s (the two directions pipeline); allow a slice of burst.
    assert!(took >= Duration::from_millis(1_700), "100 kB at 50 kB/s took only {took:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");
}

#[tokio::test]
async fn an_unreachable_upstream_resets_the_client() {
    // A port that was free a moment ago: nothing listens there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let proxy = Proxy::start("dead", dead).await.unwrap();
    let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut b = [0u8; 1];
    let r = timeout(SOON, c.read(&mut b)).await.expect("answer within 10 s");
    assert!(r.is_err() || r.as_ref().is_ok_and(|n| *n == 0), "{r:?}");
}

#[tokio::test]
async fn faults_serialize_for_reports() {
    let f = LinkFault::Latency { ms: 10, jitter_ms: 2 };
    let json = serde_json::to_string(&f).unwrap();
    assert_eq!(json, r#"{"kind":"latency","ms":10,"jitter_ms":2}"#);
    assert_eq!(serde_json::from_str::<LinkFault>(&json).unwrap(), f);
    assert_eq!(LinkFault::DelayServerToClient { ms: 5 }.to_string(), "server→client delayed 5 ms");
}

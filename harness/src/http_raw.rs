//! Raw HTTP/1.1 over a plain TCP socket, for what a well-behaved client library will not send:
//! malformed request lines, request heads trickled byte by byte (slowloris), idle keep-alive
//! connections. Every call has a deadline; the outcome says what the server sent and whether and
//! when it closed the connection.

use anyhow::{Context as _, bail};
use reqwest::Url;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the server did with a raw request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawOutcome {
    /// Status of the first response, if one arrived.
    pub status: Option<u16>,
    /// Headers of the first response, lower-case names (repeated ones joined with `, `).
    pub headers: BTreeMap<String, String>,
    /// Body of the first response (by `Content-Length`; else everything after the head).
    pub body: String,
    /// Everything received, as text (lossy), for diagnostics.
    pub raw: String,
    /// Whether the server closed the connection before the deadline.
    pub closed: bool,
    /// When the server closed it, measured from the moment the request (or its trickle) started;
    /// for [`RawClient::idle_after`], from the end of the first response.
    pub closed_after: Option<Duration>,
    /// Bytes of the request the server took before it stopped reading or closed.
    pub sent: usize,
}

impl RawOutcome {
    /// As the typed client's [`crate::api::Response`], when a response arrived.
    pub fn response(&self) -> Option<crate::api::Response> {
        Some(crate::api::Response { status: self.status?, headers: self.headers.clone(), body: self.body.clone() })
    }

    /// One line for failure messages.
    pub fn describe(&self) -> String {
        let closed = match self.closed_after {
            Some(t) => format!("closed after {} ms", t.as_millis()),
            None if self.closed => "closed".to_string(),
            None => "still open at the deadline".to_string(),
        };
        let head: String = self.raw.chars().take(300).collect();
        format!("status {:?}, {closed}, {} request bytes taken, received {head:?}", self.status, self.sent)
    }
}

/// A raw client for the server behind an API base URL (`http://host:port`).
#[derive(Debug, Clone)]
pub struct RawClient {
    /// The server's socket address.
    addr: SocketAddr,
    /// The `Host` header value requests carry.
    host: String,
}

impl RawClient {
    /// For the server of `base` (plain `http` only).
    pub fn for_base(base: &Url) -> anyhow::Result<Self> {
        if base.scheme() != "http" {
            bail!("raw HTTP needs a plain http:// base URL, not {base}");
        }
        let addr = *base
            .socket_addrs(|| Some(80))
            .with_context(|| format!("resolving {base}"))?
            .first()
            .with_context(|| format!("{base} resolves to no address"))?;
        let host = base.host_str().unwrap_or("localhost").to_string();
        let host = match base.port() {
            Some(p) => format!("{host}:{p}"),
            None => host,
        };
        Ok(Self { addr, host })
    }

    /// The `Host` header value for this server.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// A well-formed `GET` request head for `path_and_query` with `extra` header lines.
    pub fn get_request(&self, path_and_query: &str, extra: &[(String, String)]) -> Vec<u8> {
        let mut req = format!("GET {path_and_query} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (k, v) in extra {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.into_bytes()
    }

    async fn connect(&self) -> anyhow::Result<TcpStream> {
        tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(self.addr))
            .await
            .with_context(|| format!("connecting to {} timed out", self.addr))?
            .with_context(|| format!("connecting to {}", self.addr))
    }

    /// Sends `request` at once and reads until the server closes or `deadline` passes.
    pub async fn send(&self, request: &[u8], deadline: Duration) -> anyhow::Result<RawOutcome> {
        let mut stream = self.connect().await?;
        let started = Instant::now();
        // A server may answer and close before taking everything (e.g. an over-large head).
        let sent = match stream.write_all(request).await {
            Ok(()) => request.len(),
            Err(_) => 0,
        };
        let (received, closed) = read_until_closed(&mut stream, started + deadline).await;
        Ok(outcome(received, closed.map(|t| t - started), sent))
    }

    /// Sends `request` one byte every `every`, stopping early when the server closes or answers,
    /// then reads until it closes or `deadline` (from the first byte) passes.
    pub async fn trickle(&self, request: &[u8], every: Duration, deadline: Duration) -> anyhow::Result<RawOutcome> {
        let mut stream = self.connect().await?;
        let started = Instant::now();
        let end = started + deadline;
        let mut sent = 0;
        let mut received = Vec::new();
        let mut closed = None;
        let mut buf = [0u8; 4096];
        'bytes: for byte in request {
            if stream.write_all(std::slice::from_ref(byte)).await.is_err() {
                closed = Some(Instant::now());
                break;
            }
            sent += 1;
            // Wait `every` before the next byte, noticing meanwhile whether the server answered
            // or closed (the pause is the point of the test: it is what a slow client does).
            let pause = tokio::time::sleep_until((Instant::now() + every).min(end).into());
            tokio::pin!(pause);
            tokio::select! {
                _ = &mut pause => {}
                n = stream.read(&mut buf) => match n {
                    Ok(0) | Err(_) => { closed = Some(Instant::now()); break 'bytes; }
                    Ok(n) => { received.extend_from_slice(&buf[..n]); break 'bytes; }
                },
            }
            if Instant::now() >= end {
                break;
            }
        }
        if closed.is_none() {
            let (rest, at) = read_until_closed(&mut stream, end).await;
            received.extend_from_slice(&rest);
            closed = at;
        }
        Ok(outcome(received, closed.map(|t| t - started), sent))
    }

    /// Sends one complete keep-alive `request`, reads its response, then stays idle and reports
    /// when (measured from the end of that response) the server closed the connection.
    pub async fn idle_after(&self, request: &[u8], deadline: Duration) -> anyhow::Result<RawOutcome> {
        let mut stream = self.connect().await?;
        stream.write_all(request).await.context("sending the request")?;
        let end = Instant::now() + deadline;
        let mut received = Vec::new();
        let mut buf = [0u8; 8192];
        // Read until the first response is complete (by Content-Length).
        let response_end = loop {
            if let Some(len) = complete_response_len(&received) {
                break len;
            }
            match tokio::time::timeout_at(end.into(), stream.read(&mut buf)).await {
                // Closed before the response was complete: closed "at once" after it.
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(outcome(received, Some(Duration::ZERO), request.len())),
                Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
                Err(_) => bail!("no complete response within {deadline:?}: {:?}", String::from_utf8_lossy(&received)),
            }
        };
        let idle_from = Instant::now();
        let (rest, closed) = read_until_closed(&mut stream, end).await;
        let extra = received.len() - response_end;
        received.extend_from_slice(&rest);
        let mut o = outcome(received, closed.map(|t| t - idle_from), request.len());
        if extra > 0 || !rest.is_empty() {
            o.raw.push_str(" [more bytes after the response]");
        }
        Ok(o)
    }
}

/// Reads until EOF, an error (both: closed, with the time) or `end` (open).
async fn read_until_closed(stream: &mut TcpStream, end: Instant) -> (Vec<u8>, Option<Instant>) {
    let mut received = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout_at(end.into(), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (received, Some(Instant::now())),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => return (received, None),
        }
    }
}

/// The length of the first complete response in `bytes` (head plus `Content-Length` body).
fn complete_response_len(bytes: &[u8]) -> Option<usize> {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let (_, headers) = parse_head(&bytes[..head_end]);
    let len = headers.get("content-length").and_then(|v| v.trim().parse::<usize>().ok()).unwrap_or(0);
    (bytes.len() >= head_end + len).then_some(head_end + len)
}

/// Status and headers of a response head.
fn parse_head(head: &[u8]) -> (Option<u16>, BTreeMap<String, String>) {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok());
    let mut headers = BTreeMap::<String, String>::new();
    for line in lines.filter(|l| !l.is_empty()) {
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
            headers.entry(k).and_modify(|e| *e = format!("{e}, {v}")).or_insert(v);
        }
    }
    (status, headers)
}

fn outcome(received: Vec<u8>, closed_after: Option<Duration>, sent: usize) -> RawOutcome {
    let raw = String::from_utf8_lossy(&received).into_owned();
    let (status, headers, body) = match received.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => {
            let (status, headers) = parse_head(&received[..i + 4]);
            let rest = &received[i + 4..];
            let len = headers.get("content-length").and_then(|v| v.trim().parse::<usize>().ok());
            let body = &rest[..len.unwrap_or(rest.len()).min(rest.len())];
            (status, headers, String::from_utf8_lossy(body).into_owned())
        }
        None => (None, BTreeMap::new(), String::new()),
    };
    RawOutcome { status, headers, body, raw, closed: closed_after.is_some(), closed_after, sent }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_response_with_its_body() {
        let raw =
            b"HTTP/1.1 414 URI Too Long\r\nContent-Type: application/problem+json\r\nContent-Length: 2\r\n\r\n{}extra";
        let o = outcome(raw.to_vec(), Some(Duration::from_millis(5)), 10);
        assert_eq!(o.status, Some(414));
        assert_eq!(o.headers["content-type"], "application/problem+json");
        assert_eq!(o.body, "{}");
        assert!(o.closed);
        assert_eq!(complete_response_len(raw), Some(raw.len() - 5));
    }

    #[test]
    fn nothing_received_is_no_response() {
        let o = outcome(Vec::new(), None, 3);
        assert_eq!((o.status, o.closed, o.response()), (None, false, None));
    }
}

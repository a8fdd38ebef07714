//! The admin endpoint: `GET /healthz` (ready, recent sample, recent publish; 200 or 503 with a
//! JSON body), `GET /metrics` (the agent's own figures in Prometheus text format) and
//! `GET /snapshot` (the last tick as JSON, for `top`: see `live`).
//!
//! A small hand-written HTTP/1.1 server over a tokio `TcpListener` rather than hyper (which the
//! front door uses): two fixed GET routes, one response per connection (`Connection: close`), so
//! a full HTTP stack buys nothing here, and a parser this small is easy to bound: the request
//! head has a size limit and a deadline, and anything else is a 4xx, never a panic.

use std::collections::VecDeque;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify, Semaphore};

use crate::clock::system_now_ms;
use crate::live::LiveView;
use crate::self_metrics::{self, Process};
use crate::telemetry::{self, Counter, Gauge};

/// The largest request head (request line and headers) read: 8 KiB, nginx's default
/// `large_client_header_buffers` size. Longer heads get 431.
pub const MAX_REQUEST_HEAD_BYTES: usize = 8 * 1024;

/// A client has this long to send its request head (nginx's `client_header_timeout` is 60 s; a
/// health probe on the same host needs far less).
pub const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections served at once. A scraper and a health probe need two. When all are taken, the
/// one that has waited longest without sending its request is closed to make room, so a few idle
/// clients cannot hold every slot and fail the health probe (16 idle loopback connections did).
pub const MAX_CONNECTIONS: usize = 16;

/// After evicting an idle connection, the new one waits at most this for its slot; busy slots
/// (a response being written) free within it.
pub const SLOT_WAIT: Duration = Duration::from_secs(1);

/// `/healthz` fails when the last sample is older than this many sampling periods...
pub const SAMPLE_STALE_PERIODS: u64 = 3;
/// ...but never sooner than this, so a fast sampling period does not flap on a busy host.
pub const SAMPLE_STALE_MIN_MS: u64 = 10_000;
/// `/healthz` fails when no window was delivered for this many publish periods (the first,
/// partial window and one more that failed), plus [`PUBLISH_STALE_SLACK_MS`].
pub const PUBLISH_STALE_PERIODS: u64 = 2;
/// Slack for encoding and a slow but working destination.
pub const PUBLISH_STALE_SLACK_MS: u64 = 10_000;

/// When the figures in the telemetry gauges count as recent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthLimits {
    pub sample_stale_after_ms: u64,
    pub publish_stale_after_ms: u64,
}

impl HealthLimits {
    pub fn new(sample_interval_ms: u64, publish_frequency_seconds: u64) -> Self {
        HealthLimits {
            sample_stale_after_ms: (SAMPLE_STALE_PERIODS * sample_interval_ms)
                .max(SAMPLE_STALE_MIN_MS),
            publish_stale_after_ms: PUBLISH_STALE_PERIODS * publish_frequency_seconds * 1000
                + PUBLISH_STALE_SLACK_MS,
        }
    }
}

/// The health verdict and the JSON body that explains it.
pub fn health(limits: HealthLimits, now_ms: u64) -> (bool, serde_json::Value) {
    let ready = telemetry::gauge(Gauge::Ready) == 1;
    let started = telemetry::gauge(Gauge::StartedMs);
    let last_sample = telemetry::gauge(Gauge::LastSampleMs);
    let last_publish = telemetry::gauge(Gauge::LastPublishMs);
    // Before the first sample or publish, the age counts from the start.
    let sample_age = now_ms.saturating_sub(last_sample.max(started));
    let publish_age = now_ms.saturating_sub(last_publish.max(started));
    let mut reasons = Vec::new();
    if !ready {
        reasons.push("not ready".to_string());
    }
    if sample_age > limits.sample_stale_after_ms {
        reasons.push(format!(
            "no host sample for {sample_age} ms (limit {} ms)",
            limits.sample_stale_after_ms
        ));
    }
    if publish_age > limits.publish_stale_after_ms {
        reasons.push(format!(
            "no window delivered for {publish_age} ms (limit {} ms)",
            limits.publish_stale_after_ms
        ));
    }
    let healthy = reasons.is_empty();
    let degraded = crate::telemetry::degraded();
    let status = match (healthy, degraded.is_empty()) {
        (false, _) => "unhealthy",
        (true, false) => "degraded",
        (true, true) => "ok",
    };
    let opt = |ms: u64| (ms > 0).then_some(ms);
    let body = serde_json::json!({
        "status": status,
        "degraded": degraded,
        "ready": ready,
        "last_sample_ms": opt(last_sample),
        "last_sample_age_ms": sample_age,
        "last_publish_ms": opt(last_publish),
        "last_publish_age_ms": publish_age,
        "reasons": reasons,
    });
    (healthy, body)
}

/// Binds the admin listener (at start, so a taken port is reported before READY=1).
pub async fn bind(listen: &SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(listen).await
}

/// The last tick's view, as the agent publishes it once a tick.
pub type LiveViews = watch::Receiver<Arc<LiveView>>;

/// Connections that have not sent their request yet, oldest first: whom to evict for a new one.
#[derive(Default)]
struct Waiting {
    next_id: u64,
    queue: VecDeque<(u64, Arc<Notify>)>,
}

impl Waiting {
    fn push(&mut self) -> (u64, Arc<Notify>) {
        self.next_id += 1;
        let evict = Arc::new(Notify::new());
        self.queue.push_back((self.next_id, evict.clone()));
        (self.next_id, evict)
    }

    fn remove(&mut self, id: u64) {
        self.queue.retain(|(i, _)| *i != id);
    }
}

/// Serves the admin endpoint until the task is aborted.
pub async fn serve(listener: TcpListener, limits: HealthLimits, live: LiveViews) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let waiting = Arc::new(Mutex::new(Waiting::default()));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and the like: wait a little instead of spinning; logged at most once
                // per 10 s.
                telemetry::warn_sampled(
                    Counter::AdminAcceptErrors,
                    &format!("admin endpoint: accept failed: {e}"),
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let oldest = lock(&waiting).queue.pop_front();
                let Some((_, evict)) = oldest else {
                    telemetry::warn_sampled(
                        Counter::AdminBadRequests,
                        "admin endpoint busy; connection closed",
                    );
                    continue;
                };
                evict.notify_one();
                telemetry::add(Counter::AdminConnectionsEvicted, 1);
                match tokio::time::timeout(SLOT_WAIT, slots.clone().acquire_owned()).await {
                    Ok(Ok(permit)) => permit,
                    _ => {
                        telemetry::warn_sampled(
                            Counter::AdminBadRequests,
                            "admin endpoint busy; connection closed",
                        );
                        continue;
                    }
                }
            }
        };
        let (id, evict) = lock(&waiting).push();
        let (waiting, live) = (waiting.clone(), live.clone());
        tokio::spawn(async move {
            let ended = tokio::select! {
                ended = handle(stream, limits, &live, || lock(&waiting).remove(id)) => ended,
                () = evict.notified() => Ok(()),
            };
            lock(&waiting).remove(id);
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "admin connection ended early");
            }
            drop(permit);
        });
    }
}

fn lock(waiting: &Mutex<Waiting>) -> std::sync::MutexGuard<'_, Waiting> {
    waiting.lock().unwrap_or_else(|p| p.into_inner())
}

/// A response: status line, content type, body.
#[derive(Debug, PartialEq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    fn text(status: u16, body: &str) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n"),
        }
    }
}

/// Serves one connection; `head_read` runs once its request head is in (it can no longer be
/// evicted).
async fn handle(
    mut stream: tokio::net::TcpStream,
    limits: HealthLimits,
    live: &LiveViews,
    head_read: impl FnOnce(),
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let head = tokio::time::timeout(REQUEST_HEAD_TIMEOUT, read_head(&mut stream, &mut buf)).await;
    head_read();
    let (response, head_only) = match head {
        Err(_) => (
            Response::text(408, "request head not received in time"),
            false,
        ),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(HeadRead::TooLarge)) => (Response::text(431, "request head too large"), false),
        Ok(Ok(HeadRead::Closed)) => return Ok(()),
        Ok(Ok(HeadRead::Complete(n))) => match parse_request(&buf[..n]) {
            Ok(request) => {
                let view = live.borrow().clone();
                (
                    route(&request, limits, &view),
                    request.method == Method::Head,
                )
            }
            Err(reason) => (Response::text(400, reason), false),
        },
    };
    if response.status >= 400 && response.status != 404 && response.status != 503 {
        telemetry::warn(Counter::AdminBadRequests, 1, "admin request refused");
    }
    stream
        .write_all(&encode_response(&response, head_only))
        .await?;
    stream.shutdown().await
}

enum HeadRead {
    Complete(usize),
    TooLarge,
    Closed,
}

async fn read_head(
    stream: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<HeadRead> {
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = find_head_end(buf) {
            return Ok(HeadRead::Complete(end));
        }
        if buf.len() >= MAX_REQUEST_HEAD_BYTES {
            return Ok(HeadRead::TooLarge);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(if buf.is_empty() {
                HeadRead::Closed
            } else {
                HeadRead::Complete(buf.len())
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The end of the head (after the blank line), accepting bare LF line ends as RFC 9112 allows.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let limit = buf.len().min(MAX_REQUEST_HEAD_BYTES);
    let buf = &buf[..limit];
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Other,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: Method,
    pub path: &'a str,
    /// What follows `?` in the target, if anything did.
    pub query: Option<&'a str>,
}

/// Parses a request head. Anything that is not a well-formed HTTP/1.x request is an error with
/// the reason, answered 400.
pub fn parse_request(head: &[u8]) -> Result<Request<'_>, &'static str> {
    let text = std::str::from_utf8(head).map_err(|_| "request head is not UTF-8")?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().ok_or("empty request")?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("request line is not `METHOD /path HTTP/1.1`");
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err("bad method");
    }
    if !target.starts_with('/') || target.bytes().any(|b| b.is_ascii_control()) {
        return Err("request target must be an absolute path");
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err("only HTTP/1.0 and HTTP/1.1 are served");
    }
    for line in lines.take_while(|l| !l.is_empty()) {
        let Some((name, _)) = line.split_once(':') else {
            return Err("header line without ':'");
        };
        if name.is_empty()
            || name
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err("bad header name");
        }
    }
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => Method::Other,
    };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    Ok(Request {
        method,
        path,
        query,
    })
}

fn route(request: &Request<'_>, limits: HealthLimits, live: &LiveView) -> Response {
    if request.method == Method::Other {
        return Response::text(405, "only GET and HEAD are served");
    }
    match request.path {
        "/healthz" => {
            let (healthy, body) = health(limits, system_now_ms());
            Response {
                status: if healthy { 200 } else { 503 },
                content_type: "application/json",
                body: format!("{body}\n"),
            }
        }
        "/metrics" => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: self_metrics::prometheus_text(&Process::read()),
        },
        "/snapshot" => snapshot(request, live),
        _ => Response::text(404, "not found; try /healthz, /metrics or /snapshot"),
    }
}

/// `GET /snapshot`: the last tick as JSON; 503 before the first tick. It takes no parameters:
/// a query is a client's mistake, answered 400 (and counted).
fn snapshot(request: &Request<'_>, live: &LiveView) -> Response {
    if request.query.is_some() {
        return Response::text(400, "/snapshot takes no parameters");
    }
    if live.tick_ms == 0 {
        return Response::text(503, "no tick yet");
    }
    match serde_json::to_string(live) {
        Ok(body) => Response {
            status: 200,
            content_type: "application/json",
            body,
        },
        Err(e) => Response::text(500, &format!("cannot encode the snapshot: {e}")),
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

fn encode_response(response: &Response, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        response.status,
        reason_phrase(response.status),
        response.content_type,
        response.body.len()
    );
    if response.status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(response.body.as_bytes());
    }
    bytes
}

/// How long `healthcheck` waits for the agent, connect and answer together.
pub const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// `GET /healthz` from the agent listening on `listen` (an unspecified address is asked on
/// loopback). Returns the status code and body. For the `healthcheck` subcommand, which Docker's
/// HEALTHCHECK runs inside the image (no curl there).
pub fn get(listen: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let mut stream = TcpStream::connect_timeout(&addr, HEALTHCHECK_TIMEOUT)?;
    stream.set_read_timeout(Some(HEALTHCHECK_TIMEOUT))?;
    stream.set_write_timeout(Some(HEALTHCHECK_TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream
        .take(MAX_RESPONSE_BYTES as u64)
        .read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not HTTP"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// `get` reads at most this much of an answer: /metrics is about 8 KiB, /snapshot at most
/// [`crate::live::MAX_SNAPSHOT_BYTES`].
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
const _: () = assert!(crate::live::MAX_SNAPSHOT_BYTES + 1024 < MAX_RESPONSE_BYTES);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_get_and_head_and_drops_the_query() {
        let r = parse_request(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!((r.method, r.path), (Method::Get, "/metrics"));
        assert_eq!(r.query, Some("x=1"));
        let r = parse_request(b"HEAD /healthz HTTP/1.0\n\n").unwrap();
        assert_eq!((r.method, r.path), (Method::Head, "/healthz"));
        let r = parse_request(b"POST /healthz HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(r.method, Method::Other);
    }

    #[test]
    fn malformed_requests_are_errors_not_panics() {
        let bad: &[&[u8]] = &[
            b"",
            b"\r\n\r\n",
            b"GET\r\n\r\n",
            b"GET /healthz\r\n\r\n",
            b"GET /healthz HTTP/2.0\r\n\r\n",
            b"GET healthz HTTP/1.1\r\n\r\n",
            b"get /healthz HTTP/1.1\r\n\r\n",
            b"GET  /healthz HTTP/1.1\r\n\r\n",
            b"GET /healthz HTTP/1.1 extra\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ];
        for head in bad {
            assert!(
                parse_request(head).is_err(),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn the_snapshot_route_serves_the_last_tick_and_refuses_parameters() {
        let limits = HealthLimits::new(1000, 10);
        let get = |target: &str| format!("GET {target} HTTP/1.1\r\n\r\n");
        let ask = |target: &str, view: &LiveView| {
            let head = get(target);
            route(&parse_request(head.as_bytes()).unwrap(), limits, view)
        };
        let empty = LiveView::default();
        assert_eq!(
            ask("/snapshot", &empty).status,
            503,
            "before the first tick"
        );
        let view = LiveView {
            tick_ms: 1_700_000_000_000,
            endpoint_name: "ep".into(),
            ..LiveView::default()
        };
        let r = ask("/snapshot", &view);
        assert_eq!((r.status, r.content_type), (200, "application/json"));
        let back: LiveView = serde_json::from_str(&r.body).unwrap();
        assert_eq!(back, view);
        assert_eq!(ask("/snapshot?sort=cpu", &view).status, 400);
        assert_eq!(ask("/snapshot/x", &view).status, 404);
        let post = parse_request(b"POST /snapshot HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(route(&post, limits, &view).status, 405);
    }

    #[test]
    fn head_end_is_found_with_crlf_or_lf() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn health_follows_the_gauges() {
        let limits = HealthLimits::new(1000, 10);
        assert_eq!(limits.sample_stale_after_ms, 10_000);
        assert_eq!(limits.publish_stale_after_ms, 30_000);
        let now = 1_700_000_000_000;
        telemetry::set(Gauge::StartedMs, now - 5_000);
        telemetry::set(Gauge::Ready, 0);
        let (ok, body) = health(limits, now);
        assert!(!ok);
        assert_eq!(body["reasons"][0], "not ready");
        telemetry::set(Gauge::Ready, 1);
        telemetry::set(Gauge::LastSampleMs, now - 1_000);
        let (ok, body) = health(limits, now);
        assert!(ok, "{body}");
        assert_eq!(body["last_sample_ms"], now - 1_000);
        assert!(body["last_publish_ms"].is_null());
        // 40 s later without a sample or a publish.
        let (ok, body) = health(limits, now + 40_000);
        assert!(!ok);
        assert_eq!(body["reasons"].as_array().unwrap().len(), 2, "{body}");
    }

    #[test]
    fn responses_carry_length_and_close() {
        let r = Response::text(400, "nope");
        let bytes = encode_response(&r, false);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(text.contains("Content-Length: 5\r\n"));
        assert!(text.ends_with("\r\n\r\nnope\n"));
        let head = String::from_utf8(encode_response(&r, true)).unwrap();
        assert!(head.ends_with("\r\n\r\n"));
    }
}

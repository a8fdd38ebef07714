//! The front door: an HTTP/1.1 and h2c reverse proxy in front of the model containers that
//! routes each request to a copy of its inference component ([`route`]) and measures it
//! ([`account`]).
//!
//! It runs on its own small runtime (`[proxy] worker_threads`), so request traffic and the
//! sampling loop never wait on each other. It owns no publishing loop: the sampling loop in
//! `agent` drains [`FrontDoor::drain`] each tick into the pipeline. Responses stream through
//! unbuffered; a request is in flight until its response body's last frame has been handed to
//! the connection, or the client went away.

pub mod account;
pub mod conn;
pub mod pool;
pub mod route;

use std::convert::Infallible;
use std::error::Error as StdError;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::watch;

use crate::aggregate::Stats;
use crate::catalog::SeriesKey;
use crate::config::{ProxyConfig, StaticUpstream};
use crate::discovery::Inventory;
use crate::telemetry::{self, Counter};
use account::{Accounts, Outcome};
use conn::{Connections, Guarded, Limits};
use pool::{SendError, Sender};
use route::{Table, Upstream, COMPONENT_HEADER};

/// Request head limit (request line and headers). nginx allows 4 x 8 KiB by default; the
/// SageMaker runtime caps custom attributes at 1 KiB. Larger heads get 431 from hyper.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// A client must send its request head within this (slowloris); hyper closes the connection.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Idle keep-alive connections kept to each copy: enough for 64 concurrent clients without
/// reconnecting, small against a container's file limit.
pub const POOL_MAX_IDLE_PER_HOST: usize = 256;

/// Idle upstream connections are closed after this; model servers commonly time out idle
/// keep-alive connections after 60-75 s, so close first.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Hop-by-hop headers (RFC 9110 7.6.1): meaningful for one connection only, never forwarded.
/// `transfer-encoding` too: hyper frames each side itself (and HTTP/2 forbids it).
/// Kept as header names, so removing them parses nothing per request.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// End-to-end headers a `Connection` header may not remove: without `Host` the copy's routing
/// (virtual hosts) changes (`Connection: host` removed it), and the body's length is framing.
const NEVER_HOP_BY_HOP: [HeaderName; 2] = [header::HOST, header::CONTENT_LENGTH];

struct State {
    accounts: Arc<Accounts>,
    table: RwLock<Arc<Table>>,
    connect_timeout: Duration,
    response_timeout: Duration,
    max_request_body_bytes: u64,
    connections: Arc<Connections>,
}

impl State {
    fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The running front door.
pub struct FrontDoor {
    /// Dropping it stops the front door's thread at once; sending a deadline stops it by then.
    stop: Option<tokio::sync::oneshot::Sender<Instant>>,
    /// Says when the thread has dropped every connection (their requests accounted).
    stopped: Option<std::sync::mpsc::Receiver<()>>,
    state: Arc<State>,
    pub local_addr: SocketAddr,
}

impl FrontDoor {
    /// Binds `[proxy] listen` and starts serving on its own runtime. `inventory` is Docker
    /// discovery's (None with `[docker] enabled = false`: static upstreams only).
    pub fn start(
        config: &ProxyConfig,
        inventory: Option<watch::Receiver<Arc<Inventory>>>,
    ) -> anyhow::Result<FrontDoor> {
        // One thread: a current-thread runtime (no work-stealing bookkeeping on every wake-up,
        // measured cheaper per request); more: a multi-thread one with that many workers.
        let runtime = if config.worker_threads == 1 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(config.worker_threads)
                .thread_name("proxy")
                .enable_all()
                .build()
        }
        .context("building the front door's runtime")?;
        let listener = std::net::TcpListener::bind(config.listen)
            .with_context(|| format!("front door: cannot listen on {}", config.listen))?;
        listener
            .set_nonblocking(true)
            .context("front door: non-blocking listener")?;
        let local_addr = listener.local_addr().context("front door: local address")?;

        let limits = connection_limits(config);
        let statics = static_upstreams(&config.upstream);
        let first = match &inventory {
            Some(rx) => Table::build(
                &statics,
                &rx.borrow(),
                config.upstream_port,
                &Table::default(),
            ),
            None => Table::build(
                &statics,
                &Inventory::default(),
                config.upstream_port,
                &Table::default(),
            ),
        };
        let state = Arc::new(State {
            accounts: Arc::new(Accounts::new(config.instance_count)),
            table: RwLock::new(Arc::new(first)),
            connect_timeout: Duration::from_millis(config.connect_timeout_ms),
            response_timeout: Duration::from_millis(config.response_timeout_ms),
            max_request_body_bytes: config.max_request_body_bytes,
            connections: Connections::new(limits),
        });
        let listener = {
            let _enter = runtime.enter();
            tokio::net::TcpListener::from_std(listener).context("front door: listener")?
        };
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<Instant>();
        let (stopped_tx, stopped) = std::sync::mpsc::channel::<()>();
        let served = state.clone();
        let port = config.upstream_port;
        std::thread::Builder::new()
            .name("proxy".into())
            .spawn(move || {
                let stop_by = runtime.block_on(async move {
                    if let Some(rx) = inventory {
                        tokio::spawn(follow_inventory(rx, statics, port, served.clone()));
                    }
                    tokio::select! {
                        () = serve(listener, served) => None,
                        stop_by = stop_rx => stop_by.ok(),
                    }
                });
                // Drops every connection task, so their requests are accounted.
                let left = stop_by.map_or(Duration::ZERO, |at| {
                    at.saturating_duration_since(Instant::now())
                });
                runtime.shutdown_timeout(left);
                let _ = stopped_tx.send(());
            })
            .context("starting the front door's thread")?;
        tracing::info!(address = %local_addr, threads = config.worker_threads, static_upstreams = config.upstream.len(), max_connections = limits.max_connections, "front door listening");
        Ok(FrontDoor {
            stop: Some(stop),
            stopped: Some(stopped),
            state,
            local_addr,
        })
    }

    /// The invocation series since the last call: the sampling loop calls this once a tick.
    /// It also closes upstream connections idle for [`POOL_IDLE_TIMEOUT`], and hands closed
    /// client connections' memory back.
    pub fn drain(&self) -> Vec<(SeriesKey, Stats)> {
        let table = self.state.table();
        let now = Instant::now();
        for upstream in table.upstreams() {
            upstream.pool.reap(now);
        }
        self.state.connections.give_back_memory();
        self.state
            .accounts
            .drain(|component| table.copies(component))
    }

    /// Starts the graceful drain: no new connections (the listener closes), idle ones close
    /// now, busy ones once their requests (streamed answers included) are done.
    pub fn begin_drain(&self) {
        self.state.connections.drain();
    }

    /// Completes when every client connection has closed (after [`FrontDoor::begin_drain`]).
    pub async fn drained(&self) {
        self.state.connections.closed().await;
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.state.connections.in_flight()
    }

    /// Stops serving by `stop_by` (the front door's share of the shutdown deadline): open
    /// connections are dropped, the requests in them accounted and counted as cut. Returns the
    /// series since the last drain.
    pub async fn stop(mut self, stop_by: tokio::time::Instant) -> Vec<(SeriesKey, Stats)> {
        telemetry::warn(
            Counter::ProxyRequestsCut,
            self.in_flight() as u64,
            "front door: requests still in flight at shutdown cut",
        );
        let stop_by = stop_by.into_std();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(stop_by);
        }
        if let Some(stopped) = self.stopped.take() {
            // Waiting blocks; not on the sampling loop's thread.
            let left = stop_by.saturating_duration_since(Instant::now());
            let waited = tokio::task::spawn_blocking(move || stopped.recv_timeout(left)).await;
            if !matches!(waited, Ok(Ok(()))) {
                tracing::warn!("front door: its thread did not stop in time");
            }
        }
        self.drain()
    }
}

/// `proxy.max_connections`, lowered to what the file limit allows (logged), and the timeouts.
fn connection_limits(config: &ProxyConfig) -> Limits {
    let mut max_connections = config.max_connections;
    if let Some(budget) = conn::fd_budget() {
        if budget < max_connections {
            tracing::warn!(
                configured = max_connections,
                allowed = budget,
                "front door: the file limit allows fewer connections than proxy.max_connections; using what it allows"
            );
            max_connections = budget.max(1);
        }
    }
    Limits {
        max_connections,
        idle_timeout: Duration::from_millis(config.idle_timeout_ms),
        stall_timeout: Duration::from_millis(config.response_timeout_ms) + conn::STALL_MARGIN,
    }
}

fn static_upstreams(upstreams: &[StaticUpstream]) -> Vec<(Arc<str>, String)> {
    upstreams
        .iter()
        .map(|u| {
            (
                Arc::from(u.component.as_str()),
                u.url.authority().to_string(),
            )
        })
        .collect()
}

/// Rebuilds the upstream table whenever discovery publishes a new inventory.
async fn follow_inventory(
    mut rx: watch::Receiver<Arc<Inventory>>,
    statics: Vec<(Arc<str>, String)>,
    default_port: u16,
    state: Arc<State>,
) {
    while rx.changed().await.is_ok() {
        let inventory = rx.borrow_and_update().clone();
        let old = state.table();
        let table = Table::build(&statics, &inventory, default_port, &old);
        *state.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
    }
}

async fn serve(listener: tokio::net::TcpListener, state: Arc<State>) {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32);
    let builder = Arc::new(builder);
    let connections = state.connections.clone();
    let mut drain = connections.watch_drain();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = drain.wait_for(|draining| *draining) => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: pause rather than spin.
                telemetry::warn_sampled(
                    Counter::ProxyAcceptErrors,
                    &format!("front door: accept failed: {e}"),
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(conn) = connections.admit() else {
            // Closed at once: no task, no buffer. The client sees the connection end.
            drop(stream);
            telemetry::warn_sampled(
                Counter::ProxyConnectionsRefused,
                "front door: connection refused: proxy.max_connections are open",
            );
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let io = TokioIo::new(conn.watch_io(stream));
            let requests = conn.clone();
            let service = hyper::service::service_fn(move |req| {
                let guard = requests.request();
                let answer = handle(state.clone(), req);
                async move {
                    let response = answer.await?;
                    Ok::<_, Infallible>(response.map(|body| Guarded::new(body, guard)))
                }
            });
            // Errors here are the client's (a malformed request gets 400 from hyper, a reset
            // connection ends its task): nothing to count beyond what `handle` counted.
            conn.run(builder.serve_connection(io, service), |c| {
                c.graceful_shutdown()
            })
            .await;
        });
    }
    // Draining: the listener closes here (new connections are refused by the system); the
    // connections finish on their own tasks until the front door stops.
    drop(listener);
    std::future::pending::<()>().await;
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Metered>, Infallible> {
    let started = Instant::now();
    if let Some((status, message)) = refuse_before_routing(&req) {
        telemetry::warn_sampled(Counter::ProxyBadRequests, message.trim_end());
        let guard = InFlight::new(state.accounts.clone(), None, started);
        return Ok(local(guard, status, message.into()));
    }
    let table = state.table();
    let upstream = match table.choose(req.headers().get(COMPONENT_HEADER).map(|v| v.as_bytes())) {
        Ok(upstream) => upstream,
        Err(e) => {
            telemetry::warn_sampled(Counter::ProxyBadRequests, e.message().trim_end());
            let guard = InFlight::new(state.accounts.clone(), None, started);
            return Ok(local(guard, e.status(), e.message()));
        }
    };
    let mut guard = InFlight::new(state.accounts.clone(), Some(upstream.clone()), started);
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.max_request_body_bytes) {
        telemetry::warn_sampled(Counter::ProxyBadRequests, "request body over the limit");
        return Ok(local(guard, 413, "request body too large\n".into()));
    }
    let (mut parts, body) = req.into_parts();
    // Copies get origin-form (`/path?query`); the request's own authority (h2c, or an HTTP/1
    // absolute-form target) never picks a destination and is not passed on.
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        parts.uri = match parts.uri.path_and_query() {
            Some(pq) => Uri::from(pq.clone()),
            None => Uri::from_static("/"),
        };
    }
    // The client's Host passes through; without one (h2c carries :authority instead), the copy's.
    if !parts.headers.contains_key(header::HOST) {
        match HeaderValue::from_str(&upstream.authority) {
            Ok(host) => {
                parts.headers.insert(header::HOST, host);
            }
            Err(_) => {
                telemetry::warn_sampled(Counter::ProxyBadRequests, "request target not usable");
                return Ok(local(guard, 400, "bad request target\n".into()));
            }
        }
    }
    // h2c requests come in as HTTP/2; copies are spoken to in HTTP/1.1.
    parts.version = http::Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    let body = Limited::new(body, clamp_usize(state.max_request_body_bytes));
    let upstream_req = Request::from_parts(parts, body);

    guard.model_started = Some(Instant::now());
    let answer = tokio::time::timeout(
        state.response_timeout,
        upstream
            .pool
            .send(&upstream.authority, state.connect_timeout, upstream_req),
    )
    .await;
    match answer {
        Ok(Ok((response, sender))) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            guard.status = parts.status.as_u16();
            guard.model_error = !parts.status.is_success();
            guard.connection = Some(sender);
            Ok(Response::from_parts(
                parts,
                Metered {
                    inner: Inner::Upstream(body),
                    guard: Some(guard),
                },
            ))
        }
        Ok(Err(e)) => {
            guard.model_ended = Some(Instant::now());
            let (status, message) = classify(&e);
            // A body over the limit is the client's doing, not the model's.
            guard.model_error = status != 413;
            let counter = if status == 504 {
                Counter::ProxyUpstreamTimeouts
            } else if status == 502 {
                Counter::ProxyUpstreamErrors
            } else {
                Counter::ProxyBadRequests
            };
            telemetry::warn_sampled(
                counter,
                &format!(
                    "front door: {} {}: {}",
                    upstream.key.component,
                    upstream.authority,
                    chain(&e)
                ),
            );
            Ok(local(guard, status, message.into()))
        }
        Err(_elapsed) => {
            guard.model_error = true;
            guard.model_ended = Some(Instant::now());
            telemetry::warn_sampled(
                Counter::ProxyUpstreamTimeouts,
                &format!(
                    "front door: {} {} did not answer within {} ms",
                    upstream.key.component,
                    upstream.authority,
                    state.response_timeout.as_millis()
                ),
            );
            Ok(local(
                guard,
                504,
                "the model did not answer in time\n".into(),
            ))
        }
    }
}

/// Requests the front door answers itself before routing: what a reverse proxy must not pass on.
fn refuse_before_routing(req: &Request<Incoming>) -> Option<(u16, &'static str)> {
    // A gateway, not a forward proxy: CONNECT would be sent on as `CONNECT /`.
    if req.method() == http::Method::CONNECT {
        return Some((405, "CONNECT is not supported by this endpoint\n"));
    }
    // RFC 9112 3.2: a request with more than one Host field line gets 400 (two would both reach
    // the copy, which may read either).
    let mut hosts = req.headers().get_all(header::HOST).iter();
    if hosts.next().is_some() && hosts.next().is_some() {
        return Some((400, "more than one Host header\n"));
    }
    None
}

/// What a failed upstream call means for the client.
fn classify(e: &SendError) -> (u16, &'static str) {
    match e {
        SendError::ConnectTimeout => (504, "the model did not accept the connection in time\n"),
        SendError::Connect(_) => (502, "the model refused the connection\n"),
        SendError::Send(e) => {
            let mut source: Option<&(dyn StdError + 'static)> = e.source();
            while let Some(s) = source {
                if s.is::<LengthLimitError>() {
                    return (413, "request body too large\n");
                }
                source = s.source();
            }
            (502, "the model closed the connection without an answer\n")
        }
    }
}

fn chain(e: &dyn StdError) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn clamp_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers the Connection header names are hop-by-hop too (rare: HTTP/1.1 clients rarely
    // send one, so the common case allocates nothing).
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<String> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
            .filter(|s| !s.is_empty())
            .collect();
        for name in &named {
            if !NEVER_HOP_BY_HOP.iter().any(|n| n.as_str() == name) {
                headers.remove(name.as_str());
            }
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// A response the front door answers itself.
fn local(mut guard: InFlight, status: u16, message: String) -> Response<Metered> {
    guard.status = status;
    let mut response = Response::new(Metered {
        inner: Inner::Local(Some(Bytes::from(message))),
        guard: Some(guard),
    });
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// One request in flight; accounted when dropped (its response body's end, or the client gone).
struct InFlight {
    accounts: Arc<Accounts>,
    upstream: Option<Arc<Upstream>>,
    started: Instant,
    model_started: Option<Instant>,
    model_ended: Option<Instant>,
    status: u16,
    model_error: bool,
    /// The connection the answer came on; back to its copy's pool once the answer's body was
    /// read to the end (`reusable`), else closed.
    connection: Option<Sender>,
    reusable: bool,
}

impl InFlight {
    fn new(accounts: Arc<Accounts>, upstream: Option<Arc<Upstream>>, started: Instant) -> Self {
        accounts.start(upstream.as_ref().map(|u| &u.key));
        InFlight {
            accounts,
            upstream,
            started,
            model_started: None,
            model_ended: None,
            status: 0,
            model_error: false,
            connection: None,
            reusable: false,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = Instant::now();
        let model_us = self.model_started.map(|start| {
            let end = self.model_ended.unwrap_or(now);
            end.saturating_duration_since(start).as_nanos() as f64 / 1000.0
        });
        let outcome = Outcome {
            status: self.status,
            model_error: self.model_error,
            model_us,
            total_us: now.saturating_duration_since(self.started).as_nanos() as f64 / 1000.0,
        };
        self.accounts
            .finish(self.upstream.as_ref().map(|u| &u.key), &outcome);
        if let Some(upstream) = &self.upstream {
            upstream
                .outstanding
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(connection) = self.connection.take() {
                if self.reusable {
                    upstream.pool.put(connection);
                }
            }
        }
    }
}

enum Inner {
    /// The copy's answer, streamed through frame by frame.
    Upstream(Incoming),
    /// The front door's own short answer.
    Local(Option<Bytes>),
}

/// A response body that keeps its request in flight until its end.
pub struct Metered {
    inner: Inner,
    guard: Option<InFlight>,
}

impl Body for Metered {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        match &mut this.inner {
            Inner::Upstream(body) => {
                let polled = Pin::new(body).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => {
                        if let Some(g) = this.guard.as_mut() {
                            g.model_ended = Some(Instant::now());
                            g.reusable = true;
                        }
                    }
                    Poll::Ready(Some(Err(e))) => {
                        if let Some(g) = this.guard.as_mut() {
                            g.model_ended = Some(Instant::now());
                            g.model_error = true;
                            let component = g
                                .upstream
                                .as_ref()
                                .map_or("", |u| &*u.key.component)
                                .to_string();
                            telemetry::warn_sampled(
                                Counter::ProxyUpstreamErrors,
                                &format!("front door: {component}: the answer broke off: {e}"),
                            );
                        }
                    }
                    _ => {}
                }
                polled
            }
            Inner::Local(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(body) => body.is_end_stream(),
            Inner::Local(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(body) => body.size_hint(),
            Inner::Local(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        // An answer with no body (or whose end the server did not poll for) is read to the end
        // too; an answer cut short leaves its connection unusable.
        if let (Inner::Upstream(body), Some(g)) = (&self.inner, self.guard.as_mut()) {
            if body.is_end_stream() {
                g.reusable = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.insert(COMPONENT_HEADER, HeaderValue::from_static("model-a"));
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, vec!["content-type", COMPONENT_HEADER]);
    }

    proptest::proptest! {
        /// Whatever a Connection header names: no hop-by-hop header is forwarded, Host and
        /// Content-Length always are, and an end-to-end header it does not name stays.
        #[test]
        fn stripping_keeps_end_to_end_headers_and_drops_every_hop_by_hop_one(
            named in proptest::collection::vec("[a-zA-Z-]{1,12}|host|content-length|te|x-keep", 0..6),
            present in proptest::collection::vec("[a-z-]{1,12}|host|content-length|keep-alive|upgrade|x-keep", 0..8),
        ) {
            let mut h = HeaderMap::new();
            for name in &present {
                h.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_static("v"));
            }
            h.insert(header::CONNECTION, HeaderValue::from_str(&named.join(", ")).unwrap());
            let before = h.clone();
            strip_hop_by_hop(&mut h);
            let named: Vec<String> = named.iter().map(|n| n.to_ascii_lowercase()).collect();
            for name in before.keys() {
                let hop = HOP_BY_HOP.contains(name);
                let protected = NEVER_HOP_BY_HOP.contains(name);
                let kept = h.contains_key(name);
                if hop {
                    proptest::prop_assert!(!kept, "{name} forwarded");
                } else if protected || !named.iter().any(|n| n == name.as_str()) {
                    proptest::prop_assert!(kept, "{name} dropped");
                    proptest::prop_assert_eq!(h.get_all(name).iter().count(), before.get_all(name).iter().count());
                } else {
                    proptest::prop_assert!(!kept, "{name} named by Connection but forwarded");
                }
            }
        }
    }

    #[test]
    fn connection_cannot_name_host_or_content_length_away() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("Host, content-length, x-hop"),
        );
        h.insert("host", HeaderValue::from_static("model.example"));
        h.insert("content-length", HeaderValue::from_static("2"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, vec!["content-length", "host"]);
    }

    #[test]
    fn local_answers_are_accounted_when_their_body_is_dropped() {
        let accounts = Arc::new(Accounts::new(1));
        let guard = InFlight::new(accounts.clone(), None, Instant::now());
        let response = local(guard, 404, "no\n".into());
        assert_eq!(response.status(), 404);
        assert_eq!(response.body().size_hint().exact(), Some(3));
        drop(response);
        let series = accounts.drain(|_| 1);
        let e4 = series
            .iter()
            .find(|(k, _)| k.metric == crate::catalog::Metric::Invocation4xxErrors)
            .unwrap();
        assert_eq!(e4.1.sum, 1.0);
    }
}

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
pub mod client;
pub mod conn;
pub mod pool;
pub mod route;
pub mod server;
pub mod upload;

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use server::{Client, Protocol};
use tokio::sync::watch;

use crate::aggregate::Stats;
use crate::catalog::SeriesKey;
use crate::config::{ProxyConfig, StaticUpstream};
use crate::discovery::Inventory;
use crate::telemetry::{self, Counter};
use account::{Accounts, FirstChunk, Outcome, StreamOutcome};
use client::{Answer, Answered, Due, SendError};
use route::{RouteError, Table, Upstream, COMPONENT_HEADER};
use upload::{Source, Upload, UploadFault, UploadState};

/// Request head limit (request line and headers). nginx allows 4 x 8 KiB by default; the
/// SageMaker runtime caps custom attributes at 1 KiB. Larger heads get 431.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// An HTTP/1 client must send its request head within this of connecting or of its last answer's
/// end (slowloris); else the connection is closed (`conn::Wake::HeadTimeout`).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Idle keep-alive connections kept to each copy: enough for 64 concurrent clients without
/// reconnecting, small against a container's file limit.
pub const POOL_MAX_IDLE_PER_HOST: usize = 256;

/// Idle upstream connections are closed after this; model servers commonly time out idle
/// keep-alive connections after 60-75 s, so close first.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How many names [`HOP_BY_HOP`] lists.
const HOP_BY_HOP_NAMES: usize = 9;

/// Hop-by-hop headers (RFC 9110 7.6.1): meaningful for one connection only, never forwarded.
/// `transfer-encoding` too: the front door frames each side itself (and HTTP/2 forbids it).
/// Kept as header names, so removing them parses nothing per request.
const HOP_BY_HOP: [HeaderName; HOP_BY_HOP_NAMES] = [
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

/// After a failed accept (out of file descriptors), the accept loop pauses this long.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// An idle connection told to close has this long to do it politely before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// While draining, requests in flight are checked this often.
const DRAIN_POLL: Duration = Duration::from_millis(10);

struct State {
    accounts: Arc<Accounts>,
    connections: conn::Connections,
    /// Stops the accept loop (the drain at SIGTERM): no new connections.
    stop_accepting: tokio::sync::Notify,
    table: RwLock<Arc<Table>>,
    connect_timeout: Duration,
    response_timeout: Duration,
    max_request_body_bytes: u64,
    /// Set when the front door stops: a request cut off then is not the client's fault.
    stopping: AtomicBool,
}

impl State {
    fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn is_draining(&self) -> bool {
        self.connections.is_draining()
    }
}

/// The running front door.
pub struct FrontDoor {
    /// Dropping it stops the front door's thread at once; sending (drain until, stop by) lets
    /// requests in flight finish until the first, then cuts them and stops by the second.
    stop: Option<tokio::sync::oneshot::Sender<(Instant, Instant)>>,
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
            connections: conn::Connections::new(
                conn::capped_by_file_limit(config.max_connections),
                conn::Deadlines {
                    idle: Duration::from_millis(config.idle_timeout_ms),
                    head: HEADER_READ_TIMEOUT,
                    send: Duration::from_millis(config.send_timeout_ms),
                },
            ),
            stop_accepting: tokio::sync::Notify::new(),
            table: RwLock::new(Arc::new(first)),
            connect_timeout: Duration::from_millis(config.connect_timeout_ms),
            response_timeout: Duration::from_millis(config.response_timeout_ms),
            max_request_body_bytes: config.max_request_body_bytes,
            stopping: AtomicBool::new(false),
        });
        let listener = {
            let _enter = runtime.enter();
            tokio::net::TcpListener::from_std(listener).context("front door: listener")?
        };
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<(Instant, Instant)>();
        let (stopped_tx, stopped) = std::sync::mpsc::channel::<()>();
        let served = state.clone();
        let port = config.upstream_port;
        std::thread::Builder::new()
            .name("proxy".into())
            .spawn(move || {
                let drained = served.clone();
                let stop_by = runtime.block_on(async move {
                    if let Some(rx) = inventory {
                        tokio::spawn(follow_inventory(rx, statics, port, served.clone()));
                    }
                    let serving = serve(listener, served);
                    tokio::pin!(serving);
                    let mut stop_rx = stop_rx;
                    let (drain_until, stop_by) = tokio::select! {
                        // The accept loop ended (a drain began): wait for the stop.
                        () = &mut serving => (&mut stop_rx).await.ok()?,
                        stop = &mut stop_rx => stop.ok()?,
                    };
                    // The listener is closed (serve is dropped): no new connections. Requests in
                    // flight, streams included, may finish until `drain_until`.
                    drain(&drained, drain_until).await;
                    Some(stop_by)
                });
                // Drops every connection task, so their requests are accounted.
                let left = stop_by.map_or(Duration::ZERO, |at| {
                    at.saturating_duration_since(Instant::now())
                });
                runtime.shutdown_timeout(left);
                let _ = stopped_tx.send(());
            })
            .context("starting the front door's thread")?;
        tracing::info!(address = %local_addr, threads = config.worker_threads, static_upstreams = config.upstream.len(), "front door listening");
        Ok(FrontDoor {
            stop: Some(stop),
            stopped: Some(stopped),
            state,
            local_addr,
        })
    }

    /// The invocation series since the last call: the sampling loop calls this once a tick,
    /// with the tick's wall-clock time (which closes each 10 s concurrency period, see
    /// [`account::CONCURRENCY_PERIOD_MS`]). It also closes upstream connections idle for
    /// [`POOL_IDLE_TIMEOUT`], and hands memory back after many client connections closed.
    pub fn drain(&self, tick_ms: u64) -> Vec<(SeriesKey, Stats)> {
        self.drain_at(tick_ms, false)
    }

    fn drain_at(&self, tick_ms: u64, last: bool) -> Vec<(SeriesKey, Stats)> {
        // Memory back to the system after many client connections closed (two atomics else).
        self.state.connections.trim_if_many_closed();
        let table = self.state.table();
        let now = Instant::now();
        for upstream in table.upstreams() {
            upstream.pool.reap(now);
        }
        self.state
            .accounts
            .drain(tick_ms, &table.component_copies(), last)
    }

    /// Starts the drain at SIGTERM: no new connections, idle ones close, requests in flight
    /// (streams too) go on; the sampling loop keeps running meanwhile.
    pub fn begin_drain(&self) {
        self.state.stop_accepting.notify_one();
        self.state.connections.drain();
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.state.connections.in_flight()
    }

    /// Completes when no request is in flight any more (checked every [`DRAIN_POLL`]).
    pub async fn drained(&self) {
        while self.state.connections.in_flight() > 0 {
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }

    /// Stops accepting, lets requests in flight finish until `drain_until` (`[proxy]
    /// drain_timeout_ms` from SIGTERM), then cuts what is left (counted) and stops by `stop_by`.
    /// Every request is accounted. Returns the series since the last drain.
    pub async fn stop(
        mut self,
        drain_until: tokio::time::Instant,
        stop_by: tokio::time::Instant,
    ) -> Vec<(SeriesKey, Stats)> {
        let (drain_until, stop_by) = (drain_until.into_std(), stop_by.into_std());
        self.state.stopping.store(true, Ordering::Relaxed);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send((drain_until, stop_by));
        }
        if let Some(stopped) = self.stopped.take() {
            // Waiting blocks; not on the sampling loop's thread.
            let left = stop_by.saturating_duration_since(Instant::now());
            let waited = tokio::task::spawn_blocking(move || stopped.recv_timeout(left)).await;
            if !matches!(waited, Ok(Ok(()))) {
                tracing::warn!("front door: its thread did not stop in time");
            }
        }
        self.drain_at(crate::clock::system_now_ms(), true)
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
    // HTTP/1.1 is the front door's own (`server`); h2c goes to hyper.
    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32);
    let h2 = Arc::new(h2);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // A drain began: no new connections (the listener closes when this returns).
            () = state.stop_accepting.notified() => return,
        };
        let (stream, _) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: pause rather than spin.
                telemetry::warn_sampled(
                    Counter::ProxyAcceptErrors,
                    &format!("front door: accept failed: {e}"),
                );
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        // Past the cap the connection is closed at once (dropped), counted.
        let Some(admitted) = state.connections.admit() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(
            Client::new(stream),
            state.clone(),
            admitted,
            h2.clone(),
        ));
    }
}

/// One client connection, from its first bytes to its close, watched by its deadlines
/// (`conn::Connection::wake`).
async fn serve_connection(
    mut client: Client,
    state: Arc<State>,
    mut admitted: conn::Connection,
    h2: Arc<hyper::server::conn::http2::Builder<TokioExecutor>>,
) {
    let protocol = tokio::select! {
        protocol = client.protocol() => protocol,
        // Nothing (or only the start of a preface) within the head deadline, or a drain.
        _ = admitted.wake() => return,
    };
    match protocol {
        Ok(Some(Protocol::Http1)) => {
            let serving = server::serve(client, state, admitted.tracker());
            tokio::pin!(serving);
            let Some(wake) = admitted.watch(serving.as_mut()).await else {
                return;
            };
            match wake {
                // A drain with an answer in flight: it finishes, then the connection closes
                // (`server::serve` reads the drain after each answer). Idle: closed now.
                conn::Wake::Drain if admitted.busy() => serving.await,
                conn::Wake::NotReading => not_reading(),
                // No complete head in time, idle, or a drain between requests: closed now.
                conn::Wake::Drain | conn::Wake::HeadTimeout | conn::Wake::Idle => {}
            }
        }
        Ok(Some(Protocol::Http2)) => serve_h2(client, state, admitted, &h2).await,
        Ok(None) | Err(_) => {}
    }
}

/// An h2c connection, served by hyper.
async fn serve_h2(
    client: Client,
    state: Arc<State>,
    mut admitted: conn::Connection,
    h2: &hyper::server::conn::http2::Builder<TokioExecutor>,
) {
    let service = {
        let track = admitted.tracker();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let (state, active) = (state.clone(), track.request(true));
            async move {
                let (parts, body) = req.into_parts();
                let upload = Arc::new(UploadState::default());
                let response = handle(state, parts, Source::Hyper(body), upload).await;
                Ok::<_, std::convert::Infallible>(
                    response.map(|body| conn::Guarded::new(body, active)),
                )
            }
        })
    };
    // Errors here are the client's (a protocol error, a reset connection): the connection's
    // task ends (its requests, if any, are counted when their guards drop).
    let connection = h2.serve_connection(TokioIo::new(client.into_h2()), service);
    tokio::pin!(connection);
    let wake = tokio::select! {
        served = connection.as_mut() => {
            if let Err(e) = served {
                count_connection_error(&e);
            }
            return;
        }
        wake = admitted.wake() => wake,
    };
    match wake {
        // Not for h2 (hyper frames its heads itself).
        conn::Wake::HeadTimeout => {}
        conn::Wake::NotReading => not_reading(),
        // No new streams; those in flight finish (the drain's end bounds them).
        conn::Wake::Drain => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
        // Nothing in flight: a polite close (GOAWAY), else dropped.
        conn::Wake::Idle => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(IDLE_CLOSE_GRACE, connection).await;
        }
    }
}

/// The client stopped taking its answer: cut (the request is accounted as its answer stood;
/// the copy's connection closes with it).
fn not_reading() {
    telemetry::warn_sampled(
        Counter::ProxyClientNotReading,
        "front door: a client took none of its answer for proxy.send_timeout_ms: connection cut",
    );
}

/// Waits until no request is in flight or `until`; what is still in flight then is cut when
/// the runtime shuts down, and counted here.
async fn drain(state: &State, until: Instant) {
    let in_flight = state.connections.in_flight();
    if in_flight > 0 {
        tracing::info!(
            in_flight,
            "front door draining: requests in flight may finish"
        );
    }
    state.connections.drain();
    while state.connections.in_flight() > 0 && Instant::now() < until {
        tokio::time::sleep(DRAIN_POLL).await;
    }
    let cut = state.connections.in_flight() as u64;
    telemetry::warn(
        Counter::ProxyRequestsCut,
        cut,
        "front door: requests still in flight at the end of the drain were cut",
    );
}

/// Counts what hyper answered or cut off itself on an h2c connection.
fn count_connection_error(e: &hyper::Error) {
    if e.is_parse_too_large() {
        telemetry::warn_sampled(
            Counter::ProxyBadRequests,
            "front door: request head over the limit (431)",
        );
    } else if e.is_parse() {
        telemetry::warn_sampled(
            Counter::ProxyBadRequests,
            "front door: malformed request (400)",
        );
    }
}

/// The front door's own answer to a request it could not route: not an invocation.
fn reject(state: &State, e: RouteError) -> Response<Metered> {
    let counter = match &e {
        RouteError::NoCapacity(component) => {
            state.accounts.no_capacity(component);
            Counter::ProxyUnavailable
        }
        RouteError::NoUpstream => Counter::ProxyUnavailable,
        RouteError::Ambiguous { .. } | RouteError::Unknown(_) | RouteError::BadHeader => {
            Counter::ProxyBadRequests
        }
    };
    let message = e.message();
    telemetry::warn_sampled(counter, &format!("front door: {}", message.trim_end()));
    local(None, e.status(), message)
}

/// Routes one request (its head `parts`, its body from `source`) to a copy and gives the answer,
/// or the front door's own. `upload` tracks the body (the caller may watch it).
async fn handle(
    state: Arc<State>,
    mut parts: request::Parts,
    source: Source<'_>,
    upload: Arc<UploadState>,
) -> Response<Metered> {
    let started = Instant::now();
    let head = Scan::of(&parts.headers);
    if let Some((status, reason)) = refused_request(&parts.method, &head) {
        telemetry::warn_sampled(Counter::ProxyBadRequests, reason);
        return local(None, status, format!("{reason}\n"));
    }
    let mut body = Upload::new(source, state.max_request_body_bytes, upload.clone());
    if body
        .size_hint()
        .exact()
        .is_some_and(|n| n > state.max_request_body_bytes)
    {
        telemetry::warn_sampled(
            Counter::ProxyBadRequests,
            "front door: request body over the limit (413)",
        );
        return local(None, 413, "request body too large\n".into());
    }
    let table = state.table();
    let upstream = match table.choose(head.component.map(|v| v.as_bytes())) {
        Ok(upstream) => upstream,
        Err(e) => return reject(&state, e),
    };
    let mut guard = InFlight::new(state.clone(), upstream.clone(), started, upload);
    let (has_host, hop_by_hop) = (head.hosts > 0, head.hop_by_hop);
    // Copies get origin-form (`/path?query`); the request's own authority (h2c, or an HTTP/1
    // absolute-form target) never picks a destination and is not passed on.
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        parts.uri = match parts.uri.path_and_query() {
            Some(pq) => Uri::from(pq.clone()),
            None => Uri::from_static("/"),
        };
    }
    // The client's Host passes through; without one (h2c carries :authority instead), the copy's.
    if !has_host {
        match HeaderValue::from_str(&upstream.authority) {
            Ok(host) => {
                parts.headers.insert(header::HOST, host);
            }
            Err(_) => {
                guard.fate = Fate::NotInvocation;
                telemetry::warn_sampled(
                    Counter::ProxyBadRequests,
                    "front door: request target not usable (400)",
                );
                return local(Some(guard), 400, "bad request target\n".into());
            }
        }
    }
    // h2c requests come in as HTTP/2; copies are spoken to in HTTP/1.1.
    parts.version = http::Version::HTTP_11;
    let head_request = parts.method == Method::HEAD;
    if hop_by_hop {
        strip_hop_by_hop(&mut parts.headers);
    }
    let upload = guard.upload.clone();

    let model_started = Instant::now();
    guard.model_started = Some(model_started);
    let answer = upstream
        .pool
        .send(
            &upstream.authority,
            state.connect_timeout,
            Due::after(model_started, state.response_timeout),
            &parts,
            &mut body,
        )
        .await;
    match answer {
        Ok(Answered {
            head: mut parts,
            body,
            said,
        }) => {
            // The client's framing and connection headers are the server's; the copy's were left out
            // as its head was read, but for the ones its Connection header names.
            if said.names_hop_by_hop {
                strip_hop_by_hop(&mut parts.headers);
            }
            guard.fate = Fate::Answered(parts.status.as_u16());
            if is_streamed(said.event_stream, &body, head_request) {
                guard.stream = Some(Stream::default());
            }
            Response::from_parts(
                parts,
                Metered {
                    inner: Inner::Upstream(body),
                    guard: Some(guard),
                },
            )
        }
        // The client left while the copy worked: the request is dropped unsettled (counted as
        // the client's leaving, and the copy's connection closes); nobody reads this.
        Err(SendError::ClientGone) => local(Some(guard), 499, "client closed request\n".into()),
        Err(SendError::Timeout) => {
            guard.model_ended = Some(Instant::now());
            if upload.waiting_on_client() {
                guard.fate = Fate::NotInvocation;
                telemetry::warn_sampled(
                    Counter::ProxyClientStalled,
                    &format!(
                        "front door: {}: the client's upload stalled for {} ms (408)",
                        upstream.key.component,
                        state.response_timeout.as_millis()
                    ),
                );
                return local(
                    Some(guard),
                    408,
                    "the request body did not arrive in time\n".into(),
                );
            }
            guard.fate = Fate::Failed(504);
            telemetry::warn_sampled(
                Counter::ProxyUpstreamTimeouts,
                &format!(
                    "front door: {} {} did not answer within {} ms",
                    upstream.key.component,
                    upstream.authority,
                    state.response_timeout.as_millis()
                ),
            );
            local(
                Some(guard),
                504,
                "the model did not answer in time\n".into(),
            )
        }
        Err(e) => {
            guard.model_ended = Some(Instant::now());
            if let Some(fault) = upload.fault() {
                return client_fault(guard, fault);
            }
            let (status, message) = classify(&e);
            guard.fate = Fate::Failed(status);
            let counter = if status == 504 {
                Counter::ProxyUpstreamTimeouts
            } else {
                Counter::ProxyUpstreamErrors
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
            local(Some(guard), status, message.into())
        }
    }
}

/// Whether the copy's answer streams: a body whose length its head does not declare (HTTP/1.1
/// `Transfer-Encoding: chunked`, or delimited by the connection's close), or Server-Sent Events
/// (`Content-Type: text/event-stream`, read with the head) however it is framed. An answer
/// without a body (HEAD, 204, 304, `Content-Length: 0`) never streams. Copies speak HTTP/1.1, so
/// an h2c client's stream is one of these too.
fn is_streamed(event_stream: bool, body: &Answer, head_request: bool) -> bool {
    if head_request || body.is_end_stream() {
        return false;
    }
    event_stream || body.size_hint().exact().is_none()
}

/// The client broke its request: not an invocation. Counted and answered (if anyone listens).
fn client_fault(mut guard: InFlight, fault: UploadFault) -> Response<Metered> {
    guard.fate = Fate::NotInvocation;
    let component = guard.upstream.key.component.clone();
    let (counter, status, message) = match fault {
        UploadFault::BadFraming => (
            Counter::ProxyClientBadFraming,
            400,
            "the request body is badly framed\n",
        ),
        UploadFault::Left => (
            Counter::ProxyClientLeft,
            400,
            "the request body was cut off\n",
        ),
        UploadFault::OverLimit => (Counter::ProxyBadRequests, 413, "request body too large\n"),
    };
    telemetry::warn_sampled(
        counter,
        &format!("front door: {component}: {} ({status})", message.trim_end()),
    );
    local(Some(guard), status, message.into())
}

/// What a failed upstream call means for the client.
fn classify(e: &SendError) -> (u16, &'static str) {
    match e {
        SendError::ConnectTimeout => (504, "the model did not accept the connection in time\n"),
        SendError::Connect(_) => (502, "the model refused the connection\n"),
        SendError::Closed | SendError::Io(_) => {
            (502, "the model closed the connection without an answer\n")
        }
        SendError::BadAnswer(_) => (502, "the model's answer was malformed\n"),
        // Answered with 504 (or 408, the client's stall) before this is asked.
        SendError::Timeout => (504, "the model did not answer in time\n"),
        // Answered as the client's fault before this is asked (`UploadState::fault`).
        SendError::Upload(_) => (400, "the request body failed\n"),
        // Not answered (`handle`).
        SendError::ClientGone => (499, "client closed request\n"),
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

/// Requests the front door answers itself instead of forwarding: a method a copy cannot serve
/// through it (`CONNECT` would reach the copy as `CONNECT /`), and two `Host` headers (RFC 9112
/// section 3.2: a server must answer 400; forwarding both lets the copy and the front door
/// disagree on the target).
fn refused_request(method: &Method, head: &Scan<'_>) -> Option<(u16, &'static str)> {
    if method == Method::CONNECT {
        return Some((405, "CONNECT is not served by the front door"));
    }
    if head.hosts > 1 {
        return Some((400, "more than one Host header"));
    }
    None
}

/// The component header as a name: comparing it costs no parsing of the string per request.
const COMPONENT: HeaderName = HeaderName::from_static(COMPONENT_HEADER);

/// What the front door reads from a head, found in one pass over its headers instead of a
/// hash lookup each (and nine more to remove hop-by-hop headers that are seldom there).
#[derive(Debug, Default)]
struct Scan<'a> {
    hosts: usize,
    component: Option<&'a HeaderValue>,
    /// A hop-by-hop header is present: [`strip_hop_by_hop`] has work to do.
    hop_by_hop: bool,
}

impl<'a> Scan<'a> {
    fn of(headers: &'a HeaderMap) -> Scan<'a> {
        let mut scan = Scan::default();
        for (name, value) in headers {
            if name == header::HOST {
                scan.hosts += 1;
            } else if name == COMPONENT {
                scan.component.get_or_insert(value);
            } else if HOP_BY_HOP.contains(name) {
                scan.hop_by_hop = true;
            }
        }
        scan
    }
}

/// End-to-end headers a `Connection` header may not remove: the copy needs them to read the
/// request (`Connection: host` once removed the Host header before forwarding).
const NEVER_HOP_BY_HOP: [HeaderName; 3] =
    [header::HOST, header::CONTENT_LENGTH, header::CONTENT_TYPE];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers the Connection header names are hop-by-hop too. Its usual tokens (keep-alive,
    // close, upgrade) are hop-by-hop names already or name no header present, so the common
    // case allocates nothing.
    let mut named: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',').map(str::trim) {
            let listed =
                |names: &[HeaderName]| names.iter().any(|h| h.as_str().eq_ignore_ascii_case(token));
            if token.is_empty() || listed(&HOP_BY_HOP) || listed(&NEVER_HOP_BY_HOP) {
                continue;
            }
            if headers.contains_key(token) {
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    named.push(name);
                }
            }
        }
    }
    for name in &named {
        headers.remove(name);
    }
    // One pass to see which hop-by-hop names are there, then a removal for each of those only.
    let mut present = [false; HOP_BY_HOP_NAMES];
    for key in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == key) {
            present[i] = true;
        }
    }
    for (name, present) in HOP_BY_HOP.iter().zip(present) {
        if present {
            headers.remove(name);
        }
    }
}

/// A response the front door answers itself (its request's guard, if it had been routed).
fn local(guard: Option<InFlight>, status: u16, message: String) -> Response<Metered> {
    let mut response = Response::new(Metered {
        inner: Inner::Local(Some(Bytes::from(message))),
        guard,
    });
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// What became of a routed request, as far as the model's metrics go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// No answer yet. Dropped so: the client went away (or the front door stopped).
    Unsettled,
    /// The copy answered with this status.
    Answered(u16),
    /// The copy failed to answer (refused, reset, timed out); the client got this status.
    Failed(u16),
    /// The front door's own rejection or the client's fault: counted where it was decided.
    NotInvocation,
}

/// A streamed answer's progress.
#[derive(Clone, Copy, Debug, Default)]
struct Stream {
    first_chunk: Option<Instant>,
    broke: bool,
}

/// One routed request in flight; accounted when dropped (its response body's end, or the
/// client gone).
struct InFlight {
    state: Arc<State>,
    upstream: Arc<Upstream>,
    upload: Arc<UploadState>,
    started: Instant,
    model_started: Option<Instant>,
    model_ended: Option<Instant>,
    fate: Fate,
    /// The copy broke its answer off after the head.
    broke_off: bool,
    /// Some when the answer streams (`is_streamed`).
    stream: Option<Stream>,
}

impl InFlight {
    fn new(
        state: Arc<State>,
        upstream: Arc<Upstream>,
        started: Instant,
        upload: Arc<UploadState>,
    ) -> Self {
        state.accounts.start(&upstream.key);
        InFlight {
            state,
            upstream,
            upload,
            started,
            model_started: None,
            model_ended: None,
            fate: Fate::Unsettled,
            broke_off: false,
            stream: None,
        }
    }

    /// The answer's connection back to its copy's pool, if the answer was read to its end and
    /// the connection can serve another request ([`Answer::take_reusable`]); the answer ends
    /// now if its end was not seen before (one without a body the server never polled).
    fn hand_back(&mut self, body: &mut Answer) {
        if let Some(connection) = body.take_reusable() {
            let now = *self.model_ended.get_or_insert_with(Instant::now);
            self.upstream.pool.put(connection, now);
        }
    }

    fn outcome(&self, status: u16, copy_failed: bool, now: Instant) -> Outcome {
        // Through u64 nanoseconds (exact for 584 years), not u128: a u128 to f64 conversion is
        // a library call, three a request.
        let us = |d: Duration| {
            let ns = d
                .as_secs()
                .saturating_mul(1_000_000_000)
                .saturating_add(u64::from(d.subsec_nanos()));
            ns as f64 / 1000.0
        };
        let model_us = self.model_started.map_or(0.0, |start| {
            us(self
                .model_ended
                .unwrap_or(now)
                .saturating_duration_since(start))
        });
        let stream = self.stream.map(|s| StreamOutcome {
            first_chunk: s.first_chunk.map(|at| FirstChunk {
                total_us: us(at.saturating_duration_since(self.started)),
                model_us: self
                    .model_started
                    .map_or(0.0, |start| us(at.saturating_duration_since(start))),
            }),
            broke_mid_stream: s.broke && s.first_chunk.is_some(),
        });
        Outcome {
            status,
            model_error: copy_failed || self.broke_off || !(200..300).contains(&status),
            model_us,
            total_us: us(now.saturating_duration_since(self.started)),
            stream,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // The answer's end, when it came (the same poll that hands its last frame over).
        let now = self.model_ended.unwrap_or_else(Instant::now);
        let outcome = match self.fate {
            Fate::Answered(status) => Some(self.outcome(status, false, now)),
            Fate::Failed(status) => Some(self.outcome(status, true, now)),
            Fate::NotInvocation => None,
            Fate::Unsettled => {
                if !self.state.stopping.load(Ordering::Relaxed) {
                    telemetry::warn_sampled(
                        Counter::ProxyClientLeft,
                        &format!(
                            "front door: {}: the client went away before the answer",
                            self.upstream.key.component
                        ),
                    );
                }
                None
            }
        };
        self.state
            .accounts
            .finish(&self.upstream.key, outcome.as_ref());
        self.upstream
            .outstanding
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

enum Inner {
    /// The copy's answer, streamed through frame by frame.
    Upstream(Answer),
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
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        match &mut this.inner {
            Inner::Upstream(body) => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                if let (Poll::Ready(ready), Some(g)) = (&polled, this.guard.as_mut()) {
                    match ready {
                        Some(Ok(frame)) => {
                            if let Some(stream) = g.stream.as_mut() {
                                let data = frame.data_ref().is_some_and(|d| !d.is_empty());
                                if data && stream.first_chunk.is_none() {
                                    stream.first_chunk = Some(Instant::now());
                                }
                            }
                        }
                        None => {
                            g.model_ended = Some(Instant::now());
                            g.hand_back(body);
                        }
                        Some(Err(e)) => broke_off(g, e),
                    }
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

/// The copy's answer failed after its head: the copy's doing (a model error, and a mid-stream
/// error once a streamed answer's first chunk went out), unless the client's upload broke it.
fn broke_off(g: &mut InFlight, e: &std::io::Error) {
    g.model_ended = Some(Instant::now());
    let component = g.upstream.key.component.clone();
    if let Some(fault) = g.upload.fault() {
        g.fate = Fate::NotInvocation;
        let counter = match fault {
            UploadFault::BadFraming => Counter::ProxyClientBadFraming,
            UploadFault::Left => Counter::ProxyClientLeft,
            UploadFault::OverLimit => Counter::ProxyBadRequests,
        };
        telemetry::warn_sampled(
            counter,
            &format!("front door: {component}: the client's upload failed mid-answer: {e}"),
        );
        return;
    }
    g.broke_off = true;
    if let Some(stream) = g.stream.as_mut() {
        stream.broke = true;
    }
    telemetry::warn_sampled(
        Counter::ProxyUpstreamErrors,
        &format!("front door: {component}: the answer broke off: {e}"),
    );
}

impl Drop for Metered {
    fn drop(&mut self) {
        // An answer with no body (or whose end the server did not poll for) is read to the end
        // too; an answer cut short leaves its connection unusable.
        if let (Inner::Upstream(body), Some(g)) = (&mut self.inner, self.guard.as_mut()) {
            g.hand_back(body);
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

    #[test]
    fn one_pass_over_the_head_finds_hosts_length_component_and_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        h.append(header::HOST, HeaderValue::from_static("a"));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        h.append(COMPONENT_HEADER, HeaderValue::from_static("model-a"));
        h.append(COMPONENT_HEADER, HeaderValue::from_static("model-b"));
        let scan = Scan::of(&h);
        assert_eq!(scan.hosts, 1);
        assert_eq!(
            scan.component,
            h.get(COMPONENT_HEADER),
            "the first, as get() gives"
        );
        assert!(!scan.hop_by_hop);
        h.append(header::HOST, HeaderValue::from_static("b"));
        h.append("keep-alive", HeaderValue::from_static("timeout=5"));
        let scan = Scan::of(&h);
        assert_eq!(scan.hosts, 2);
        assert!(scan.hop_by_hop);
    }

    #[test]
    fn local_answers_without_a_route_are_not_invocations() {
        let response = local(None, 404, "no\n".into());
        assert_eq!(response.status(), 404);
        assert_eq!(response.body().size_hint().exact(), Some(3));
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
            // The front door strips only when the scan saw a hop-by-hop header.
            proptest::prop_assert!(Scan::of(&before).hop_by_hop || h == before);
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
}

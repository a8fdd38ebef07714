//! The front door's client connections: accepted under a cap, closed when idle or stalled,
//! drained on shutdown. What the best proxies promise (nginx's `worker_connections` and
//! `keepalive_timeout`, Envoy's `idle_timeout` and drain), for a front door that sits in every
//! request's path: nothing a client does to its own connections costs other clients theirs.
//!
//! - **Cap.** At most `proxy.max_connections` open; past it a new connection is accepted and
//!   closed at once (cheap: no task, no buffer), counted. The cap is lowered at start to what
//!   the file limit allows ([`fd_budget`]), so the agent never runs out of descriptors (which
//!   starved `/healthz` and every new client).
//! - **Idle.** A connection that has sent no request within [`FIRST_REQUEST_TIMEOUT`] (silent
//!   TCP, an h2 preface and nothing else: hyper has no timeout before the first request), or that
//!   has had no request in flight for `proxy.idle_timeout_ms`, is closed gracefully (h2: GOAWAY).
//!   Bytes alone do not keep a connection open (an h2 PING flood is not a request).
//! - **Stalled.** A connection with a request in flight on which no byte moved for the response
//!   timeout plus [`STALL_MARGIN`] (a client that stopped reading a streamed answer) is closed,
//!   its request cut, counted.
//! - **Drain.** [`Connections::drain`] stops accepting and asks every connection to finish
//!   gracefully: idle ones close at once, busy ones after their requests (streams included).
//! - **Memory.** Closed connections' memory goes back to the system ([`give_back_memory`]).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, Notify};

use crate::telemetry::{self, Counter, Gauge};

/// A connection must start its first request within this (the same bound as the request head:
/// hyper's own timeout does not cover the bytes before HTTP/1 and h2 are told apart).
pub const FIRST_REQUEST_TIMEOUT: Duration = super::HEADER_READ_TIMEOUT;

/// A connection with a request in flight and no byte moving is cut this long after the response
/// timeout would have answered it: the copy's answer had its chance, the client stopped reading.
pub const STALL_MARGIN: Duration = Duration::from_secs(10);

/// Once a graceful close is asked, a connection has this long to finish before it is dropped
/// (outside a drain, whose own time bounds it).
pub const GRACEFUL_CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// File descriptors kept for everything else the agent opens: the admin endpoint and its
/// connections, the Docker socket, cgroup files kept open (four per container), NVML's device
/// nodes, the sinks, the spool.
pub const FD_RESERVE: u64 = 512;

/// Memory of closed connections is handed back to the system once this many closed since the
/// last time: each trim walks the heap, so not once per connection.
pub const TRIM_AFTER_CLOSES: u64 = 1024;

/// Limits of one front door's connections.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub idle_timeout: Duration,
    /// The response timeout plus [`STALL_MARGIN`].
    pub stall_timeout: Duration,
}

/// Every client connection of one front door: the counts the cap, the drain and the memory
/// trim read.
pub struct Connections {
    limits: Limits,
    open: AtomicUsize,
    in_flight: AtomicUsize,
    closed_since_trim: AtomicU64,
    /// Wakes the drain's waiter when the last connection closes.
    all_closed: Notify,
    /// true: stop accepting and close every connection gracefully.
    draining: watch::Sender<bool>,
    epoch: Instant,
}

impl Connections {
    pub fn new(limits: Limits) -> Arc<Connections> {
        Arc::new(Connections {
            limits,
            open: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            closed_since_trim: AtomicU64::new(0),
            all_closed: Notify::new(),
            draining: watch::channel(false).0,
            epoch: Instant::now(),
        })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Client connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Requests in flight now (answers still streaming included).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Takes a slot for a new connection, or None when [`Limits::max_connections`] are open.
    pub fn admit(self: &Arc<Self>) -> Option<Conn> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < self.limits.max_connections).then_some(n + 1)
            })
            .ok()?;
        telemetry::set(Gauge::ProxyConnectionsOpen, taken as u64 + 1);
        Some(Conn {
            shared: Arc::new(ConnShared {
                connections: self.clone(),
                accepted_ms: self.now_ms(),
                last_io_ms: AtomicU64::new(self.now_ms()),
                last_request_ms: AtomicU64::new(0),
                in_flight: AtomicUsize::new(0),
            }),
        })
    }

    /// Stops accepting and asks every connection to close once its requests are done.
    pub fn drain(&self) {
        self.draining.send_replace(true);
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    pub fn watch_drain(&self) -> watch::Receiver<bool> {
        self.draining.subscribe()
    }

    /// Completes when no connection is open.
    pub async fn closed(&self) {
        loop {
            let notified = self.all_closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Hands the memory of closed connections back to the system once enough have closed.
    /// Cheap otherwise; called once a tick.
    pub fn give_back_memory(&self) {
        if self.closed_since_trim.load(Ordering::Relaxed) >= TRIM_AFTER_CLOSES {
            self.closed_since_trim.store(0, Ordering::Relaxed);
            give_back_memory();
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// glibc keeps freed memory in its arenas; 10,000 closed connections left 200 MB resident for
/// good. `malloc_trim` returns the free pages.
fn give_back_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The largest connection cap the file limit allows: each client connection may hold one to a
/// copy too, and [`FD_RESERVE`] stay for the rest. Raises the soft limit to the hard one first
/// (as Go's runtime does): the soft default of 1,024 is a relic of `select()`.
pub fn fd_budget() -> Option<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        }
    }
    let usable = limit.rlim_cur.saturating_sub(FD_RESERVE) / 2;
    Some(usize::try_from(usable).unwrap_or(usize::MAX))
}

/// One client connection's slot; its count goes when the last holder (the connection's task,
/// its requests' guards) is gone.
#[derive(Clone)]
pub struct Conn {
    shared: Arc<ConnShared>,
}

struct ConnShared {
    connections: Arc<Connections>,
    accepted_ms: u64,
    last_io_ms: AtomicU64,
    /// When the last request ended (0: none yet).
    last_request_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Drop for ConnShared {
    fn drop(&mut self) {
        let c = &self.connections;
        let left = c.open.fetch_sub(1, Ordering::AcqRel) - 1;
        telemetry::set(Gauge::ProxyConnectionsOpen, left as u64);
        c.closed_since_trim.fetch_add(1, Ordering::Relaxed);
        if left == 0 {
            c.all_closed.notify_waiters();
        }
    }
}

/// What a connection's watchdog decides.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Look again then (ms on the connections' clock).
    Until(u64),
    Idle,
    Stalled,
}

impl Conn {
    /// The stream, counting its bytes' times.
    pub fn watch_io<S>(&self, stream: S) -> Watched<S> {
        Watched {
            inner: stream,
            shared: self.shared.clone(),
        }
    }

    /// A request started on this connection: in flight until the guard (kept in its response
    /// body) goes.
    pub fn request(&self) -> RequestGuard {
        self.shared.in_flight.fetch_add(1, Ordering::Relaxed);
        self.shared
            .connections
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        RequestGuard {
            shared: self.shared.clone(),
        }
    }

    fn verdict(&self, now_ms: u64) -> Verdict {
        let s = &self.shared;
        let limits = s.connections.limits;
        if s.in_flight.load(Ordering::Relaxed) > 0 {
            let due =
                s.last_io_ms.load(Ordering::Relaxed) + limits.stall_timeout.as_millis() as u64;
            return if now_ms >= due {
                Verdict::Stalled
            } else {
                Verdict::Until(due)
            };
        }
        let last_request = s.last_request_ms.load(Ordering::Relaxed);
        let due = if last_request == 0 {
            // Not even one request: bytes do not count (an h2 preface and SETTINGS trickled).
            s.accepted_ms + limits.idle_timeout.min(FIRST_REQUEST_TIMEOUT).as_millis() as u64
        } else {
            last_request + limits.idle_timeout.as_millis() as u64
        };
        if now_ms >= due {
            Verdict::Idle
        } else {
            // A request starting meanwhile stalls at the earliest a stall timeout from now: look
            // again by then, in case that is before `due`.
            Verdict::Until(due.min(now_ms + limits.stall_timeout.as_millis() as u64))
        }
    }

    /// Drives one connection (`connection`: hyper's, borrowing this slot's IO) until it ends,
    /// closing it when idle, stalled or drained.
    pub async fn run<F, C>(self, connection: F, graceful: C)
    where
        F: std::future::Future,
        C: Fn(Pin<&mut F>),
    {
        let connections = self.shared.connections.clone();
        let mut drain = connections.watch_drain();
        tokio::pin!(connection);
        let mut closing: Option<tokio::time::Instant> = None;
        if *drain.borrow_and_update() {
            graceful(connection.as_mut());
            closing = Some(tokio::time::Instant::now() + GRACEFUL_CLOSE_LIMIT);
        }
        loop {
            let now_ms = connections.now_ms();
            let wake = match (closing, self.verdict(now_ms)) {
                (_, Verdict::Stalled) => {
                    telemetry::warn_sampled(
                        Counter::ProxyConnectionsStalled,
                        "front door: a connection with a request in flight moved no byte; closed, the request cut",
                    );
                    return;
                }
                (None, Verdict::Idle) => {
                    telemetry::add(Counter::ProxyConnectionsIdleClosed, 1);
                    graceful(connection.as_mut());
                    let at = tokio::time::Instant::now() + GRACEFUL_CLOSE_LIMIT;
                    closing = Some(at);
                    at
                }
                // Asked to close, no request left, and still open after its grace: dropped.
                (Some(at), Verdict::Idle) => {
                    if tokio::time::Instant::now() >= at {
                        return;
                    }
                    at
                }
                (_, Verdict::Until(due_ms)) => {
                    let wait = Duration::from_millis(due_ms.saturating_sub(now_ms));
                    tokio::time::Instant::now() + wait
                }
            };
            tokio::select! {
                _ = connection.as_mut() => return,
                () = tokio::time::sleep_until(wake) => {}
                changed = drain.changed(), if closing.is_none() => {
                    if changed.is_ok() && *drain.borrow_and_update() {
                        graceful(connection.as_mut());
                        closing = Some(tokio::time::Instant::now() + GRACEFUL_CLOSE_LIMIT);
                    }
                }
            }
        }
    }
}

/// Keeps its request in flight on its connection while it lives.
pub struct RequestGuard {
    shared: Arc<ConnShared>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let s = &self.shared;
        s.last_request_ms
            .store(s.connections.now_ms().max(1), Ordering::Relaxed);
        s.in_flight.fetch_sub(1, Ordering::Relaxed);
        s.connections.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body holding its request's [`RequestGuard`] until its end.
pub struct Guarded<B> {
    inner: B,
    _guard: RequestGuard,
}

impl<B> Guarded<B> {
    pub fn new(inner: B, guard: RequestGuard) -> Self {
        Guarded {
            inner,
            _guard: guard,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Guarded<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A client stream that notes when bytes last moved (for the stall check).
pub struct Watched<S> {
    inner: S,
    shared: Arc<ConnShared>,
}

impl<S> Watched<S> {
    fn moved(&self) {
        let now = self.shared.connections.now_ms();
        self.shared.last_io_ms.store(now, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.moved();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize) -> Limits {
        Limits {
            max_connections: max,
            idle_timeout: Duration::from_secs(60),
            stall_timeout: Duration::from_secs(70),
        }
    }

    #[test]
    fn the_cap_admits_up_to_its_count_and_a_closed_slot_is_free_again() {
        let c = Connections::new(limits(2));
        let a = c.admit().unwrap();
        let _b = c.admit().unwrap();
        assert!(c.admit().is_none());
        assert_eq!(c.open(), 2);
        drop(a);
        assert_eq!(c.open(), 1);
        assert!(c.admit().is_some());
    }

    #[test]
    fn a_slot_stays_taken_while_a_request_guard_lives() {
        let c = Connections::new(limits(1));
        let conn = c.admit().unwrap();
        let guard = conn.request();
        drop(conn);
        assert_eq!((c.open(), c.in_flight()), (1, 1));
        drop(guard);
        assert_eq!((c.open(), c.in_flight()), (0, 0));
    }

    #[test]
    fn verdicts_idle_before_the_first_request_idle_after_the_last_stalled_in_flight() {
        let c = Connections::new(limits(4));
        let conn = c.admit().unwrap();
        let first = FIRST_REQUEST_TIMEOUT.as_millis() as u64;
        // A stall timeout shorter than the idle ones: looked at again by then.
        let quick = Connections::new(Limits {
            stall_timeout: Duration::from_secs(11),
            ..limits(4)
        });
        let q = quick.admit().unwrap();
        assert_eq!(q.verdict(5_000), Verdict::Until(16_000));
        // Accepted at ~0: bytes alone do not extend the first-request limit.
        conn.shared.last_io_ms.store(first - 1, Ordering::Relaxed);
        assert_eq!(
            conn.verdict(first - 1),
            Verdict::Until(conn.shared.accepted_ms + first)
        );
        assert_eq!(conn.verdict(conn.shared.accepted_ms + first), Verdict::Idle);

        let guard = conn.request();
        conn.shared.last_io_ms.store(1_000, Ordering::Relaxed);
        assert_eq!(conn.verdict(1_000_000), Verdict::Stalled);
        assert_eq!(conn.verdict(1_000 + 69_999), Verdict::Until(71_000));
        drop(guard);
        let ended = conn.shared.last_request_ms.load(Ordering::Relaxed);
        assert_eq!(conn.verdict(ended + 59_999), Verdict::Until(ended + 60_000));
        assert_eq!(conn.verdict(ended + 60_000), Verdict::Idle);
    }

    /// The unit's limits follow from the agent's: the stop timeout covers the default drain and
    /// the shutdown budget; the file limit covers the default cap's two descriptors per
    /// connection and the reserve.
    #[test]
    fn the_unit_file_covers_the_drain_and_the_connection_cap() {
        let unit = include_str!("../../systemd/endpoint-metrics-agent.service");
        let value = |key: &str| {
            unit.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("no {key} in the unit"))
                .trim()
                .to_string()
        };
        let stop_s: u64 = value("TimeoutStopSec")
            .strip_suffix('s')
            .unwrap()
            .parse()
            .unwrap();
        let needed = Duration::from_millis(crate::config::DEFAULT_PROXY_DRAIN_TIMEOUT_MS)
            + crate::shutdown::SHUTDOWN_BUDGET;
        assert!(Duration::from_secs(stop_s) > needed, "{stop_s} s");
        let nofile: u64 = value("LimitNOFILE").parse().unwrap();
        assert!(nofile >= 2 * crate::config::DEFAULT_PROXY_MAX_CONNECTIONS as u64 + FD_RESERVE);
    }

    proptest::proptest! {
        /// The watchdog never spins (a later look is always in the future) nor sleeps past what
        /// it guards (at most the longest limit away), and closes as idle only a connection
        /// with nothing in flight.
        #[test]
        fn verdicts_look_again_in_the_future_and_idle_needs_nothing_in_flight(
            idle_s in 1u64..120,
            stall_s in 1u64..120,
            in_flight in 0usize..3,
            last_request in proptest::option::of(1u64..100_000),
            last_io in 0u64..100_000,
            later in 0u64..200_000,
        ) {
            let c = Connections::new(Limits {
                max_connections: 1,
                idle_timeout: Duration::from_secs(idle_s),
                stall_timeout: Duration::from_secs(stall_s),
            });
            let conn = c.admit().unwrap();
            let s = &conn.shared;
            s.in_flight.store(in_flight, Ordering::Relaxed);
            s.last_request_ms.store(last_request.unwrap_or(0), Ordering::Relaxed);
            s.last_io_ms.store(last_io, Ordering::Relaxed);
            let now = last_io.max(last_request.unwrap_or(0)) + later;
            let longest = (idle_s.max(stall_s) * 1000).max(FIRST_REQUEST_TIMEOUT.as_millis() as u64);
            match conn.verdict(now) {
                Verdict::Until(at) => {
                    proptest::prop_assert!(at > now);
                    proptest::prop_assert!(at <= now + longest);
                }
                Verdict::Idle => proptest::prop_assert_eq!(in_flight, 0),
                Verdict::Stalled => proptest::prop_assert!(in_flight > 0),
            }
        }
    }

    #[tokio::test]
    async fn closed_completes_when_the_last_connection_goes() {
        let c = Connections::new(limits(4));
        let conn = c.admit().unwrap();
        let waiter = tokio::spawn({
            let c = c.clone();
            async move { c.closed().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(conn);
        waiter.await.unwrap();
    }
}

//! Client connections as a resource: a cap on how many are held, an idle timeout for those with
//! nothing in flight, and a drain at shutdown.
//!
//! Every connection holds a permit of [`Connections`] (past `[proxy] max_connections` a new one is
//! closed at once, counted). Each request holds an [`Active`] guard until its response body is
//! done or dropped, so a connection knows when it is idle and the front door knows what is still
//! in flight when it drains. An idle connection (a silent TCP connection, an idle keep-alive, an
//! h2 connection without streams) is shut down gracefully after `[proxy] idle_timeout_ms`.
//!
//! The same per-connection watchdog enforces the request-head deadline (`HEADER_READ_TIMEOUT`,
//! slowloris): an HTTP/1 connection with nothing in flight must have sent its next request's head
//! within it, from its accept or its last answer's end, or it is closed. hyper's own
//! `header_read_timeout` did this with a timer armed and dropped for every request (an allocation
//! and two timer-wheel updates each); here one sleep per connection is re-armed only when it
//! fires, at most once per timeout while the connection is busy.
//!
//! And the send deadline (`[proxy] send_timeout_ms`, nginx's `send_timeout`): a client that takes
//! none of its answer for that long, while the answer has more for it, has its connection cut.
//! Each answer body ([`Guarded`]) counts the frames it hands over and says whether it waits for
//! the connection to take the last one; the watchdog, looking at least every half timeout while
//! busy, cuts a connection on which an answer waited and no frame moved between two looks at
//! least the timeout apart (so a stall is cut after 1 to 1.5 times the timeout). A copy that
//! pauses is not a stall: its answer waits for the copy, not for the client.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::telemetry::{self, Counter, Gauge};

/// After this many client connections closed since the last trim, freed memory is handed back
/// to the system (glibc kept it otherwise: 10,000 idle connections left RSS 27 MB higher after
/// they closed).
pub const TRIM_AFTER_CLOSED: usize = 1024;

/// File descriptors kept for everything else the agent opens: the admin endpoint and its
/// connections, the Docker socket, cgroup files kept open (four per container), NVML's device
/// nodes, the sinks, the spool.
pub const FD_RESERVE: u64 = 512;

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

/// `configured`, lowered to what the file limit allows (logged when it is).
pub fn capped_by_file_limit(configured: usize) -> usize {
    match fd_budget() {
        Some(allowed) if allowed < configured => {
            let allowed = allowed.max(1);
            tracing::warn!(
                configured,
                allowed,
                reserve = FD_RESERVE,
                "front door: the file limit allows fewer connections than max_connections; the cap is lowered"
            );
            allowed
        }
        _ => configured,
    }
}

/// The cap on client connections, and every request in flight on any of them.
#[derive(Debug)]
pub struct Connections {
    max_connections: usize,
    /// The most connections open since the last trim.
    peak_open: AtomicUsize,
    /// Connections open now (for the gauge; kept by each [`Connection`]).
    open_now: Arc<AtomicUsize>,
    permits: Arc<Semaphore>,
    in_flight: Arc<AtomicUsize>,
    /// Set when the front door drains: every connection finishes its requests and closes.
    draining: watch::Sender<bool>,
    /// The same, read by each HTTP/1.1 answer (one load, no lock).
    draining_now: AtomicBool,
    idle_timeout: Duration,
    head_timeout: Duration,
    send_timeout: Duration,
}

/// A connection's three deadlines.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    /// Nothing in flight for this long: the connection is shut down.
    pub idle: Duration,
    /// An HTTP/1 connection with nothing in flight is closed once this has passed since its
    /// accept or its last answer without a complete request head.
    pub head: Duration,
    /// A client that takes none of its waiting answer for this long is cut off.
    pub send: Duration,
}

impl Connections {
    pub fn new(max_connections: usize, deadlines: Deadlines) -> Connections {
        Connections {
            max_connections,
            peak_open: AtomicUsize::new(0),
            open_now: Arc::default(),
            permits: Arc::new(Semaphore::new(max_connections)),
            in_flight: Arc::default(),
            draining: watch::channel(false).0,
            draining_now: AtomicBool::new(false),
            idle_timeout: deadlines.idle,
            head_timeout: deadlines.head,
            send_timeout: deadlines.send,
        }
    }

    /// A slot for a new connection; None past the cap (the caller closes it, counted here).
    pub fn admit(&self) -> Option<Connection> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Some(Connection {
                _permit: permit,
                open: {
                    self.open_now.fetch_add(1, Ordering::AcqRel);
                    telemetry::set(Gauge::ProxyConnectionsOpen, self.open() as u64);
                    self.open_now.clone()
                },
                activity: Arc::new(Activity {
                    active: AtomicUsize::new(0),
                    last_change_ms: AtomicU64::new(now_ms()),
                    h2: AtomicBool::new(false),
                    handed: AtomicU64::new(0),
                    waiting: AtomicUsize::new(0),
                }),
                in_flight: self.in_flight.clone(),
                draining: self.draining.subscribe(),
                idle_timeout: self.idle_timeout,
                head_timeout: self.head_timeout,
                send_timeout: self.send_timeout,
            }),
            Err(_) => {
                telemetry::warn_sampled(
                    Counter::ProxyConnectionsRefused,
                    "front door: connection refused, max_connections reached",
                );
                None
            }
        }
    }

    /// Client connections open now.
    pub fn open(&self) -> usize {
        self.max_connections - self.permits.available_permits()
    }

    /// Hands freed memory back to the system when many connections closed since the last
    /// time; called once a tick (cheap otherwise: two atomics). True when it trimmed.
    pub fn trim_if_many_closed(&self) -> bool {
        let open = self.open();
        let peak = self.peak_open.fetch_max(open, Ordering::AcqRel).max(open);
        if peak - open < TRIM_AFTER_CLOSED {
            return false;
        }
        self.peak_open.store(open, Ordering::Release);
        trim_heap();
        true
    }

    /// Requests in flight on every connection.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Tells every connection to finish what it has and close.
    pub fn drain(&self) {
        self.draining_now.store(true, Ordering::Release);
        self.draining.send_replace(true);
    }

    /// Whether the front door drains: an HTTP/1.1 connection closes after its answer.
    pub fn is_draining(&self) -> bool {
        self.draining_now.load(Ordering::Acquire)
    }
}

/// Hands glibc's freed memory back to the system. (mimalloc was measured about 1.5 % cheaper per
/// front-door request but 1 MiB larger idle and 3.5 MiB larger after 10,000 idle connections:
/// every host pays the memory, only front-door hosts the CPU; not kept.)
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own heap; no pointers are passed.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Milliseconds on the monotonic clock, from a process-wide origin.
fn now_ms() -> u64 {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    ORIGIN
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

#[derive(Debug)]
struct Activity {
    active: AtomicUsize,
    last_change_ms: AtomicU64,
    /// A request came as HTTP/2: the head deadline is HTTP/1's (h2 has its own framing, and
    /// hyper never timed its heads either). Unknown before the first request: HTTP/1's rule.
    h2: AtomicBool,
    /// Frames the answers on this connection handed over.
    handed: AtomicU64,
    /// Answers whose last frame was handed over and that were not asked for the next since:
    /// they wait for the connection to take it.
    waiting: AtomicUsize,
}

/// One admitted client connection.
#[derive(Debug)]
pub struct Connection {
    _permit: OwnedSemaphorePermit,
    open: Arc<AtomicUsize>,
    activity: Arc<Activity>,
    in_flight: Arc<AtomicUsize>,
    draining: watch::Receiver<bool>,
    idle_timeout: Duration,
    head_timeout: Duration,
    send_timeout: Duration,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let open = self.open.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        telemetry::set(Gauge::ProxyConnectionsOpen, open as u64);
    }
}

/// What ended a connection's wait.
pub enum Wake {
    /// Nothing in flight for the idle timeout: shut it down gracefully.
    Idle,
    /// An HTTP/1 connection with nothing in flight sent no complete request head within the
    /// head timeout: close it at once (as hyper's header-read timeout did). Counted as an idle
    /// close too.
    HeadTimeout,
    /// The front door drains: shut it down gracefully.
    Drain,
    /// An answer waited for the client to take its next part for the send timeout: cut the
    /// connection (counted by the caller).
    NotReading,
}

/// Starts request guards for one connection (its service holds it).
#[derive(Clone, Debug)]
pub struct Tracker {
    activity: Arc<Activity>,
    in_flight: Arc<AtomicUsize>,
}

impl Tracker {
    /// A request (`h2`: an HTTP/2 stream) starts on this connection; the guard ends it.
    pub fn request(&self, h2: bool) -> Active {
        if h2 {
            self.activity.h2.store(true, Ordering::Relaxed);
        }
        self.activity.active.fetch_add(1, Ordering::AcqRel);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Active {
            activity: self.activity.clone(),
            in_flight: self.in_flight.clone(),
        }
    }
}

impl Connection {
    /// Whether a request is in flight on this connection.
    pub fn busy(&self) -> bool {
        self.activity.active.load(Ordering::Acquire) > 0
    }

    pub fn tracker(&self) -> Tracker {
        Tracker {
            activity: self.activity.clone(),
            in_flight: self.in_flight.clone(),
        }
    }

    /// Runs `serving` (the connection's protocol) under its watchdog ([`Connection::wake`]):
    /// None when it ends, the wake-up when the watchdog ends the wait first (`serving` is then
    /// left unpolled; the caller decides). The watchdog is polled only when its own timer or
    /// the drain woke it, not at each of the connection's wake-ups as `select!` would (its
    /// timer and drain checks were about 4 % of a request's instructions).
    pub async fn watch<F: Future<Output = ()>>(
        &mut self,
        mut serving: Pin<&mut F>,
    ) -> Option<Wake> {
        let flag = Arc::new(WatchdogWoke::default());
        let waker = Waker::from(flag.clone());
        let watchdog = self.wake();
        tokio::pin!(watchdog);
        std::future::poll_fn(|cx| {
            if serving.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            flag.task.register(cx.waker());
            if flag.woke.swap(false, Ordering::AcqRel) {
                let mut own = Context::from_waker(&waker);
                if let Poll::Ready(wake) = watchdog.as_mut().poll(&mut own) {
                    return Poll::Ready(Some(wake));
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Waits until the connection has been idle for the idle timeout, an HTTP/1 connection
    /// has gone the head timeout without a request, a client has taken none of its answer for
    /// the send timeout, or the front door drains.
    pub async fn wake(&mut self) -> Wake {
        // Frames handed over when an answer was first seen waiting, and when.
        let mut stalled: Option<(u64, u64)> = None;
        loop {
            if *self.draining.borrow() {
                return Wake::Drain;
            }
            let idle_since = self.activity.last_change_ms.load(Ordering::Acquire);
            let active = self.activity.active.load(Ordering::Acquire);
            let h1 = !self.activity.h2.load(Ordering::Relaxed);
            let idle_due_ms = idle_since + self.idle_timeout.as_millis() as u64;
            let head_due_ms = if h1 {
                idle_since + self.head_timeout.as_millis() as u64
            } else {
                u64::MAX
            };
            let now = now_ms();
            if active > 0 && self.activity.waiting.load(Ordering::Acquire) > 0 {
                let handed = self.activity.handed.load(Ordering::Acquire);
                match stalled {
                    Some((seen, since))
                        if seen == handed
                            && now.saturating_sub(since)
                                >= self.send_timeout.as_millis() as u64 =>
                    {
                        return Wake::NotReading;
                    }
                    Some((seen, _)) if seen == handed => {}
                    _ => stalled = Some((handed, now)),
                }
            } else {
                stalled = None;
            }
            if active == 0 && now >= idle_due_ms.min(head_due_ms) {
                telemetry::add(Counter::ProxyConnectionsIdleClosed, 1);
                if idle_due_ms <= head_due_ms {
                    return Wake::Idle;
                }
                return Wake::HeadTimeout;
            }
            // Busy: look again one timeout later (a request that ends meanwhile is due no
            // sooner than that); idle: when it would be due. And at least every half send
            // timeout either way (a request starting does not wake this).
            let wait = if active > 0 {
                if h1 {
                    self.idle_timeout.min(self.head_timeout)
                } else {
                    self.idle_timeout
                }
            } else {
                Duration::from_millis(idle_due_ms.min(head_due_ms).saturating_sub(now))
            };
            let wait = wait
                .min(self.send_timeout / 2)
                .max(Duration::from_millis(1));
            tokio::select! {
                _ = tokio::time::sleep_until(Instant::now() + wait) => {}
                _ = self.draining.changed() => {}
            }
        }
    }
}

/// The watchdog's own waker: says that it was woken, and wakes the connection's task.
#[derive(Debug)]
struct WatchdogWoke {
    /// Set first, so that the watchdog is polled once to arm its timer.
    woke: AtomicBool,
    task: futures_util::task::AtomicWaker,
}

impl Default for WatchdogWoke {
    fn default() -> Self {
        WatchdogWoke {
            woke: AtomicBool::new(true),
            task: futures_util::task::AtomicWaker::new(),
        }
    }
}

impl std::task::Wake for WatchdogWoke {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woke.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// A request in flight; dropped with its response body (sent, or cut).
#[derive(Debug)]
pub struct Active {
    activity: Arc<Activity>,
    in_flight: Arc<AtomicUsize>,
}

impl Drop for Active {
    fn drop(&mut self) {
        self.activity
            .last_change_ms
            .store(now_ms(), Ordering::Release);
        self.activity.active.fetch_sub(1, Ordering::AcqRel);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request's [`Active`] guard until it is done or dropped, and
/// tells the connection's watchdog when it waits for the client to take a frame.
pub struct Guarded<B> {
    body: B,
    active: Active,
    /// Its last frame was handed over and the next was not asked for yet.
    waiting: bool,
}

impl<B> Guarded<B> {
    pub fn new(body: B, active: Active) -> Guarded<B> {
        Guarded {
            body,
            active,
            waiting: false,
        }
    }

    /// The connection could not take all of what this answer handed over: the answer waits
    /// for the client (until its next frame is asked for, or it is dropped).
    pub fn waits_for_client(&mut self) {
        if !self.waiting {
            self.waiting = true;
            self.active.activity.waiting.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The client took some of what waited for it: not a stall.
    pub fn client_took(&self) {
        self.active.activity.handed.fetch_add(1, Ordering::AcqRel);
    }
}

impl<B> Drop for Guarded<B> {
    fn drop(&mut self) {
        if self.waiting {
            self.active.activity.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Guarded<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        let activity = &this.active.activity;
        if let Poll::Ready(Some(Ok(_))) = &polled {
            activity.handed.fetch_add(1, Ordering::AcqRel);
            if !this.waiting {
                this.waiting = true;
                activity.waiting.fetch_add(1, Ordering::AcqRel);
            }
        } else if this.waiting {
            this.waiting = false;
            activity.waiting.fetch_sub(1, Ordering::AcqRel);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Idle and head deadlines as given, a send deadline out of the way.
    fn deadlines(idle: Duration, head: Duration) -> Deadlines {
        Deadlines {
            idle,
            head,
            send: Duration::from_secs(3600),
        }
    }

    #[tokio::test]
    async fn past_the_cap_a_connection_is_refused_and_counted() {
        let _counters = crate::testing::counters().await;
        let before = telemetry::get(Counter::ProxyConnectionsRefused);
        let c = Connections::new(
            2,
            deadlines(Duration::from_secs(60), Duration::from_secs(60)),
        );
        let (a, _b) = (c.admit().unwrap(), c.admit().unwrap());
        assert!(c.admit().is_none());
        assert_eq!(telemetry::get(Counter::ProxyConnectionsRefused), before + 1);
        drop(a);
        assert!(c.admit().is_some(), "a closed connection frees its slot");
    }

    #[tokio::test]
    async fn a_connection_is_idle_only_with_nothing_in_flight() {
        let c = Connections::new(
            4,
            deadlines(Duration::from_millis(50), Duration::from_secs(60)),
        );
        let mut conn = c.admit().unwrap();
        let active = conn.tracker().request(false);
        assert_eq!(c.in_flight(), 1);
        let busy = tokio::time::timeout(Duration::from_millis(200), conn.wake()).await;
        assert!(busy.is_err(), "a request in flight keeps the connection");
        drop(active);
        assert_eq!(c.in_flight(), 0);
        let idle = tokio::time::timeout(Duration::from_secs(2), conn.wake()).await;
        assert!(matches!(idle, Ok(Wake::Idle)));
    }

    #[tokio::test]
    async fn an_http1_connection_without_a_request_head_in_time_is_closed_and_counted() {
        let _counters = crate::testing::counters().await;
        let idle_closed = telemetry::get(Counter::ProxyConnectionsIdleClosed);
        let c = Connections::new(
            4,
            deadlines(Duration::from_secs(60), Duration::from_millis(50)),
        );
        let mut conn = c.admit().unwrap();
        let woke = tokio::time::timeout(Duration::from_secs(2), conn.wake()).await;
        assert!(
            matches!(woke, Ok(Wake::HeadTimeout)),
            "before the first request"
        );
        // After an answer, the next head is due within the head timeout again.
        drop(conn.tracker().request(false));
        let woke = tokio::time::timeout(Duration::from_secs(2), conn.wake()).await;
        assert!(matches!(woke, Ok(Wake::HeadTimeout)), "after an answer");
        assert_eq!(
            telemetry::get(Counter::ProxyConnectionsIdleClosed),
            idle_closed + 2
        );
    }

    #[tokio::test]
    async fn the_head_deadline_spares_a_busy_connection_and_http2() {
        let c = Connections::new(
            4,
            deadlines(Duration::from_secs(60), Duration::from_millis(50)),
        );
        let mut busy = c.admit().unwrap();
        let _active = busy.tracker().request(false);
        let woke = tokio::time::timeout(Duration::from_millis(200), busy.wake()).await;
        assert!(woke.is_err(), "a request in flight keeps the connection");
        let mut h2 = c.admit().unwrap();
        drop(h2.tracker().request(true));
        let woke = tokio::time::timeout(Duration::from_millis(200), h2.wake()).await;
        assert!(
            woke.is_err(),
            "h2 has no head deadline, only the idle timeout"
        );
    }

    #[tokio::test]
    async fn the_shorter_of_the_idle_and_head_timeouts_closes_an_http1_connection() {
        let _counters = crate::testing::counters().await;
        let idle_closed = telemetry::get(Counter::ProxyConnectionsIdleClosed);
        let c = Connections::new(
            4,
            deadlines(Duration::from_millis(50), Duration::from_secs(60)),
        );
        let mut conn = c.admit().unwrap();
        let woke = tokio::time::timeout(Duration::from_secs(2), conn.wake()).await;
        assert!(matches!(woke, Ok(Wake::Idle)));
        assert_eq!(
            telemetry::get(Counter::ProxyConnectionsIdleClosed),
            idle_closed + 1
        );
    }

    #[tokio::test]
    async fn memory_is_trimmed_once_many_connections_closed() {
        let c = Connections::new(
            4 * TRIM_AFTER_CLOSED,
            deadlines(Duration::from_secs(60), Duration::from_secs(60)),
        );
        let open: Vec<Connection> = (0..TRIM_AFTER_CLOSED + 1)
            .map(|_| c.admit().unwrap())
            .collect();
        assert!(!c.trim_if_many_closed(), "nothing closed yet");
        assert_eq!(c.open(), TRIM_AFTER_CLOSED + 1);
        drop(open);
        assert!(c.trim_if_many_closed());
        assert!(!c.trim_if_many_closed(), "once per drop");
    }

    /// Hands over one frame, then is never ready again (a copy that went quiet).
    struct OneFrameThenQuiet(bool);

    impl Body for OneFrameThenQuiet {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            if std::mem::replace(&mut self.0, true) {
                Poll::Pending
            } else {
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
            }
        }
    }

    #[tokio::test]
    async fn an_answer_the_client_does_not_take_cuts_the_connection_and_a_quiet_copy_does_not() {
        let send = Duration::from_millis(50);
        let c = Connections::new(
            4,
            Deadlines {
                send,
                ..deadlines(Duration::from_secs(60), Duration::from_secs(60))
            },
        );
        let mut conn = c.admit().unwrap();
        let mut body = Guarded::new(OneFrameThenQuiet(false), conn.tracker().request(false));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // A frame handed over and never the next asked for: the client is not taking it.
        assert!(matches!(
            Pin::new(&mut body).poll_frame(&mut cx),
            Poll::Ready(Some(Ok(_)))
        ));
        let started = std::time::Instant::now();
        let woke = tokio::time::timeout(Duration::from_secs(2), conn.wake()).await;
        assert!(matches!(woke, Ok(Wake::NotReading)));
        assert!(started.elapsed() >= send, "{:?}", started.elapsed());
        // Asked for the next and waiting for the copy: not the client's stall.
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        let woke = tokio::time::timeout(8 * send, conn.wake()).await;
        assert!(woke.is_err(), "a quiet copy cut its client's connection");
        // A body dropped while waiting leaves nothing waiting behind it.
        let mut other = Guarded::new(OneFrameThenQuiet(false), conn.tracker().request(false));
        assert!(Pin::new(&mut other).poll_frame(&mut cx).is_ready());
        drop(other);
        assert_eq!(conn.activity.waiting.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn a_watched_connection_ends_with_its_protocol_or_its_watchdog() {
        let c = Connections::new(
            4,
            deadlines(Duration::from_millis(50), Duration::from_secs(60)),
        );
        let mut conn = c.admit().unwrap();
        // The protocol ends first: nothing from the watchdog.
        let served = std::pin::pin!(async {});
        assert!(conn.watch(served).await.is_none());
        // A protocol that never ends: the watchdog's idle timeout ends the wait, woken by its own
        // timer (nothing else wakes this task).
        let stuck = std::pin::pin!(std::future::pending::<()>());
        let woke = tokio::time::timeout(Duration::from_secs(2), conn.watch(stuck)).await;
        assert!(matches!(woke, Ok(Some(Wake::Idle))));
        // A drain that begins while it waits wakes it (a busy connection has no idle timeout).
        let mut busy = c.admit().unwrap();
        let _active = busy.tracker().request(false);
        let stuck = std::pin::pin!(std::future::pending::<()>());
        let (woke, ()) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(2), busy.watch(stuck)),
            async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                c.drain();
            }
        );
        assert!(matches!(woke, Ok(Some(Wake::Drain))));
    }

    #[tokio::test]
    async fn a_drain_wakes_every_connection() {
        let c = Connections::new(
            4,
            deadlines(Duration::from_secs(60), Duration::from_secs(60)),
        );
        let mut conn = c.admit().unwrap();
        let _active = conn.tracker().request(false);
        c.drain();
        let woke = tokio::time::timeout(Duration::from_secs(2), conn.wake()).await;
        assert!(matches!(woke, Ok(Wake::Drain)));
    }
}

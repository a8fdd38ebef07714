//! Delivery to CloudWatch (PutMetricData or PutLogEvents) that loses nothing: the one loop both
//! CloudWatch sinks run.
//!
//! Every request of a closed window is written to the spool first (write-ahead) and removed when
//! CloudWatch has taken it, so neither a SIGTERM in the middle of a call nor a SIGKILL loses a
//! closed window. The current window is sent at a random offset inside the window (a fleet spreads
//! its calls over the window instead of hitting the account's quota on the boundary). Throttling,
//! 5xx and network errors pause sending with exponential backoff and jitter; the requests wait on
//! disk and are replayed oldest first with their original timestamps, the current window going
//! ahead of the backlog. Permanent errors are logged with the reason, counted, and that request is
//! dropped. Requests older than CloudWatch accepts are dropped, counted.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::cloudwatch::{MetricsTarget, SendError};
use super::cloudwatch_logs::{self, LogsTarget};
use super::otlp::OtlpTarget;
use super::spool::{Item, Key, LogEvent, Payload, Spool};
use crate::backoff::Backoff;
use crate::clock::system_now_ms;
use crate::encode::limits::MAX_DATA_AGE_MS;
use crate::encode::Encoded;
use crate::shutdown::DeadlineCell;
use crate::telemetry::{self, Counter};

/// First retry delay after a failure; doubles up to `Settings::retry_max`.
const RETRY_BASE: Duration = Duration::from_millis(500);

/// The current window is sent at a random point in the first 1/SEND_OFFSET_DIVISOR of the window
/// after it closes, so the next window never waits behind it.
const SEND_OFFSET_DIVISOR: u32 = 2;

/// Items kept in memory when the spool cannot be written (disk full, read-only): past this the
/// oldest are dropped, counted.
const MAX_MEMORY_ITEMS: usize = 10_000;

/// Where the requests go.
#[derive(Debug, Clone)]
pub enum Target {
    PutMetricData(MetricsTarget),
    CloudWatchLogs(LogsTarget),
    /// Boxed: a client and its connector are larger than the other targets.
    Otlp(Box<OtlpTarget>),
}

impl Target {
    pub fn describe(&self) -> String {
        match self {
            Target::PutMetricData(_) => "put_metric_data".into(),
            Target::CloudWatchLogs(t) => t.describe(),
            Target::Otlp(t) => t.describe(),
        }
    }

    async fn send(&self, payload: &Payload) -> Result<(), SendError> {
        match (self, payload) {
            (Target::PutMetricData(t), Payload::PutMetricData(r)) => t.send(r).await,
            (Target::CloudWatchLogs(t), Payload::PutLogEvents(e)) => t.send(e).await,
            (Target::Otlp(t), Payload::Otlp(r)) => t.send(r).await,
            _ => Err(SendError::Permanent(
                "spooled request of the other format (the output format changed)".into(),
            )),
        }
    }

    /// A closed window as requests for this target.
    pub fn items(&self, encoded: Encoded) -> Vec<Item> {
        match encoded {
            Encoded::PutMetricData {
                window_start_ms,
                requests,
            } => requests
                .into_iter()
                .map(|r| Item {
                    window_start_ms,
                    payload: Payload::PutMetricData(r),
                })
                .collect(),
            Encoded::Emf {
                window_start_ms,
                documents,
            } => {
                let events = documents
                    .into_iter()
                    .map(|message| LogEvent {
                        timestamp_ms: window_start_ms,
                        message,
                    })
                    .collect();
                let (batches, skipped) = cloudwatch_logs::batches(events);
                telemetry::warn(
                    Counter::LogEventsSkipped,
                    skipped,
                    "EMF document larger than a PutLogEvents batch",
                );
                batches
                    .into_iter()
                    .map(|events| Item {
                        window_start_ms,
                        payload: Payload::PutLogEvents(events),
                    })
                    .collect()
            }
            Encoded::Otlp {
                window_start_ms,
                requests,
            } => requests
                .into_iter()
                .map(|r| Item {
                    window_start_ms,
                    payload: Payload::Otlp(r),
                })
                .collect(),
        }
    }
}

/// How the loop paces itself.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The publish window; the send offset is drawn inside it.
    pub period: Duration,
    /// The longest pause between retries.
    pub retry_max: Duration,
}

struct Fresh {
    key: Option<Key>,
    item: Item,
}

/// The loop's state; `run` drives it.
struct Delivery {
    target: Target,
    spool: Spool,
    settings: Settings,
    fresh: VecDeque<Fresh>,
    send_at: Instant,
    retry_at: Option<Instant>,
    backoff: Backoff,
    seed: u64,
}

/// Sends windows from `rx` until it closes, then sends what is pending until the deadline in
/// `stop` (less the drain margin); whatever is left stays in the spool for the next start.
pub async fn run(
    target: Target,
    spool: Spool,
    mut rx: mpsc::Receiver<Encoded>,
    settings: Settings,
    stop: DeadlineCell,
) {
    let mut d = Delivery {
        target,
        spool,
        settings,
        fresh: VecDeque::new(),
        send_at: Instant::now(),
        retry_at: None,
        backoff: Backoff::new(RETRY_BASE, settings.retry_max),
        seed: system_now_ms() ^ u64::from(std::process::id()) << 20 | 1,
    };
    loop {
        let now = Instant::now();
        let paused = d.retry_at.is_some_and(|t| now < t);
        let fresh_due = !paused && !d.fresh.is_empty() && now >= d.send_at;
        let backlog = !paused && d.has_backlog();
        if !fresh_due && !backlog {
            let wake = if paused {
                d.retry_at
            } else if !d.fresh.is_empty() {
                Some(d.send_at)
            } else {
                None
            };
            let received = match wake {
                Some(at) => tokio::select! {
                    r = rx.recv() => Some(r),
                    _ = tokio::time::sleep_until(at) => None,
                },
                None => Some(rx.recv().await),
            };
            match received {
                Some(Some(encoded)) => d.accept(encoded),
                Some(None) => break,
                None => {}
            }
            continue;
        }
        // Take windows that arrived meanwhile, so the newest goes before the backlog.
        loop {
            match rx.try_recv() {
                Ok(encoded) => d.accept(encoded),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    d.drain(stop.get().sinks_stop_sending()).await;
                    return;
                }
            }
        }
        if fresh_due {
            d.send_fresh().await;
        } else {
            d.send_backlog().await;
        }
    }
    d.drain(stop.get().sinks_stop_sending()).await;
}

impl Delivery {
    fn fresh_keys(&self) -> HashSet<Key> {
        self.fresh.iter().filter_map(|f| f.key).collect()
    }

    fn has_backlog(&self) -> bool {
        let fresh = self.fresh_keys();
        self.spool.has_other(|k| fresh.contains(k))
    }

    /// A closed window arrives: write it ahead to the spool, queue it to send at a random offset.
    fn accept(&mut self, encoded: Encoded) {
        let was_empty = self.fresh.is_empty();
        for item in self.target.items(encoded) {
            if expired(&item) {
                telemetry::warn(
                    Counter::SpoolItemsExpired,
                    1,
                    "window older than CloudWatch accepts",
                );
                continue;
            }
            let key = match self.spool.push(&item) {
                Ok(key) => Some(key),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot write the spool; keeping the request in memory");
                    telemetry::add(Counter::SinkWriteErrors, 1);
                    None
                }
            };
            self.fresh.push_back(Fresh { key, item });
        }
        while self.fresh.len() > MAX_MEMORY_ITEMS {
            if let Some(old) = self.fresh.pop_front() {
                if let Some(key) = old.key {
                    self.spool.remove(key);
                }
                telemetry::warn(
                    Counter::PublishRequestsDropped,
                    1,
                    "too many requests waiting in memory; oldest dropped",
                );
            }
        }
        if was_empty {
            self.send_at = Instant::now() + self.offset();
        }
    }

    /// Uniform in [0, period / SEND_OFFSET_DIVISOR).
    fn offset(&mut self) -> Duration {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let span = (self.settings.period / SEND_OFFSET_DIVISOR).as_millis() as u64;
        Duration::from_millis(if span == 0 { 0 } else { self.seed % span })
    }

    async fn send_fresh(&mut self) {
        let Some(front) = self.fresh.front() else {
            return;
        };
        let result = self.target.send(&front.item.payload).await;
        match result {
            Ok(()) => {
                if let Some(f) = self.fresh.pop_front() {
                    if let Some(key) = f.key {
                        self.spool.remove(key);
                    }
                }
                self.succeeded();
            }
            Err(SendError::Permanent(reason)) => {
                if let Some(f) = self.fresh.pop_front() {
                    if let Some(key) = f.key {
                        self.spool.remove(key);
                    }
                }
                dropped(&reason);
            }
            Err(SendError::Retryable(reason)) => {
                // What is on disk waits there and is replayed in order; only what the spool
                // could not take stays in memory.
                self.fresh.retain(|f| f.key.is_none());
                self.failed(&reason);
            }
        }
    }

    async fn send_backlog(&mut self) {
        let fresh = self.fresh_keys();
        let Some((key, item)) = self.spool.oldest(|k| fresh.contains(k)) else {
            return;
        };
        if expired(&item) {
            telemetry::warn(
                Counter::SpoolItemsExpired,
                1,
                "spooled request older than CloudWatch accepts; dropped",
            );
            self.spool.remove(key);
            return;
        }
        match self.target.send(&item.payload).await {
            Ok(()) => {
                self.spool.remove(key);
                telemetry::add(Counter::SpoolItemsReplayed, 1);
                self.succeeded();
            }
            Err(SendError::Permanent(reason)) => {
                self.spool.remove(key);
                dropped(&reason);
            }
            Err(SendError::Retryable(reason)) => self.failed(&reason),
        }
    }

    fn succeeded(&mut self) {
        telemetry::add(Counter::PublishRequestsSent, 1);
        if self.retry_at.take().is_some() {
            telemetry::warn(Counter::SinkReconnects, 1, "CloudWatch reachable again");
        }
        self.backoff.reset();
    }

    fn failed(&mut self, reason: &str) {
        let delay = self.backoff.next_delay();
        telemetry::add(Counter::PublishRetries, 1);
        tracing::warn!(
            target = %self.target.describe(),
            reason,
            retry_in_ms = delay.as_millis() as u64,
            spooled = self.spool.len(),
            "CloudWatch call failed; will retry"
        );
        self.retry_at = Some(Instant::now() + delay);
    }

    /// Shutting down: send the current window(s) now, until `deadline`; the rest stays spooled.
    async fn drain(&mut self, deadline: Instant) {
        while let Some(front) = self.fresh.front() {
            if self.retry_at.is_some_and(|t| Instant::now() < t) {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.target.send(&front.item.payload)).await {
                Ok(Ok(())) => {
                    if let Some(f) = self.fresh.pop_front() {
                        if let Some(key) = f.key {
                            self.spool.remove(key);
                        }
                    }
                    telemetry::add(Counter::PublishRequestsSent, 1);
                }
                Ok(Err(SendError::Permanent(reason))) => {
                    if let Some(f) = self.fresh.pop_front() {
                        if let Some(key) = f.key {
                            self.spool.remove(key);
                        }
                    }
                    dropped(&reason);
                }
                Ok(Err(SendError::Retryable(reason))) => {
                    telemetry::add(Counter::PublishRetries, 1);
                    tracing::warn!(reason, "CloudWatch call failed while stopping");
                    break;
                }
                Err(_) => {
                    tracing::warn!("stopping: the grace period ended during a call");
                    break;
                }
            }
        }
        let mut lost = 0u64;
        for f in self.fresh.drain(..) {
            if f.key.is_none() && self.spool.push(&f.item).is_err() {
                lost += 1;
            }
        }
        telemetry::warn(
            Counter::PublishRequestsDropped,
            lost,
            "stopping with requests neither sent nor spooled",
        );
        tracing::info!(
            spooled = self.spool.len(),
            bytes = self.spool.bytes(),
            "delivery stopped; spooled requests are sent after the next start"
        );
    }
}

fn expired(item: &Item) -> bool {
    item.window_start_ms + MAX_DATA_AGE_MS < system_now_ms()
}

fn dropped(reason: &str) {
    tracing::warn!(
        reason,
        "CloudWatch refused the request; dropped, not retried"
    );
    telemetry::warn(
        Counter::PublishRequestsDropped,
        1,
        "request refused by CloudWatch (permanent error)",
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::put_metric_data::Request;
    use aws_config::{BehaviorVersion, Region, SdkConfig};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A PutMetricData target at a port nothing listens on: every call is a network error.
    fn unreachable_target() -> Target {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        target_at(addr)
    }

    fn target_at(addr: std::net::SocketAddr) -> Target {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let sdk = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(format!("http://{addr}"))
            .http_client(http)
            .credentials_provider(aws_sdk_cloudwatch::config::SharedCredentialsProvider::new(
                aws_sdk_cloudwatch::config::Credentials::new("t", "t", None, None, "t"),
            ))
            .build();
        Target::PutMetricData(MetricsTarget::new(&sdk))
    }

    fn item(window_start_ms: u64) -> Item {
        Item {
            window_start_ms,
            payload: Payload::PutMetricData(Request {
                namespace: "ns".into(),
                data: vec![],
            }),
        }
    }

    fn settings() -> Settings {
        Settings {
            period: Duration::from_secs(10),
            retry_max: Duration::from_secs(1),
        }
    }

    /// Half a second to drain after the close, as a stopping agent's sink has at least.
    fn stop_soon() -> DeadlineCell {
        let cell = DeadlineCell::default();
        let at = Instant::now() + Duration::from_millis(500) + crate::shutdown::DRAIN_MARGIN;
        cell.set(crate::shutdown::Deadline(at));
        cell
    }

    /// An HTTP endpoint that answers every request with `status` and counts the requests.
    async fn answering(status: &'static str) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        crate::testing::http_endpoint(Some(answer.into_bytes())).await
    }

    /// One window sent to a server answering `status`: (calls it got, items left in the spool,
    /// requests dropped, retries). Call it holding [`crate::testing::counters`].
    async fn one_window_against(status: &'static str) -> (usize, usize, u64, u64) {
        let (addr, calls) = answering(status).await;
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let dropped = telemetry::get(Counter::PublishRequestsDropped);
        let retries = telemetry::get(Counter::PublishRetries);
        let (tx, rx) = mpsc::channel(1);
        let mut settings = settings();
        settings.period = Duration::from_millis(1);
        let task = tokio::spawn(run(target_at(addr), spool, rx, settings, stop_soon()));
        tx.send(Encoded::PutMetricData {
            window_start_ms: system_now_ms(),
            requests: vec![Request {
                namespace: "ns".into(),
                data: vec![],
            }],
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        drop(tx);
        task.await.unwrap();
        let left = Spool::open(dir.path(), 1 << 20).unwrap().len();
        (
            calls.load(Ordering::SeqCst),
            left,
            telemetry::get(Counter::PublishRequestsDropped) - dropped,
            telemetry::get(Counter::PublishRetries) - retries,
        )
    }

    #[tokio::test]
    async fn a_permanent_error_drops_the_request_once_counted() {
        let _counters = crate::testing::counters().await;
        let (calls, left, dropped, retries) = one_window_against("400 Bad Request").await;
        assert_eq!(calls, 1, "never retried");
        assert_eq!(left, 0, "not kept");
        assert_eq!(dropped, 1);
        assert_eq!(retries, 0);
    }

    #[tokio::test]
    async fn a_5xx_is_retried_with_backoff_and_kept() {
        let _counters = crate::testing::counters().await;
        let (calls, left, dropped, retries) = one_window_against("503 Service Unavailable").await;
        // Backoff from 0.5 s doubling (capped at 1 s here) with jitter: a few calls in 2.5 s, not a
        // tight loop, and not the SDK's own retries on top (they are off).
        assert!((2..=8).contains(&calls), "{calls} calls");
        assert_eq!(
            retries, calls as u64,
            "every failed call is counted as a retry: {calls} calls, {retries} retries, {left} left"
        );
        assert_eq!(dropped, 0);
        assert_eq!(left, 1, "kept in the spool for the next start");
    }

    #[tokio::test]
    async fn data_older_than_cloudwatch_accepts_is_dropped_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool
            .push(&item(system_now_ms() - MAX_DATA_AGE_MS - 60_000))
            .unwrap();
        let _counters = crate::testing::counters().await;
        let before = telemetry::get(Counter::SpoolItemsExpired);
        let (tx, rx) = mpsc::channel(1);
        let task = tokio::spawn(run(
            unreachable_target(),
            spool,
            rx,
            settings(),
            stop_soon(),
        ));
        // The backlog is replayed while the channel is open; shutdown does not replay it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(tx);
        task.await.unwrap();
        assert_eq!(telemetry::get(Counter::SpoolItemsExpired), before + 1);
        assert_eq!(Spool::open(dir.path(), 1 << 20).unwrap().len(), 0);
    }

    #[tokio::test]
    async fn windows_that_cannot_be_sent_stay_in_the_spool_across_a_stop() {
        // Its failed calls move the retry counter the tests above count.
        let _counters = crate::testing::counters().await;
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let (tx, rx) = mpsc::channel(4);
        let task = tokio::spawn(run(
            unreachable_target(),
            spool,
            rx,
            settings(),
            stop_soon(),
        ));
        let now = system_now_ms();
        tx.send(Encoded::PutMetricData {
            window_start_ms: now - 20_000,
            requests: vec![Request {
                namespace: "a".into(),
                data: vec![],
            }],
        })
        .await
        .unwrap();
        tx.send(Encoded::PutMetricData {
            window_start_ms: now - 10_000,
            requests: vec![
                Request {
                    namespace: "b".into(),
                    data: vec![],
                },
                Request {
                    namespace: "c".into(),
                    data: vec![],
                },
            ],
        })
        .await
        .unwrap();
        drop(tx);
        task.await.unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let mut order = Vec::new();
        while let Some((key, item)) = spool.oldest(|_| false) {
            match item.payload {
                Payload::PutMetricData(r) => order.push(r.namespace),
                other => panic!("{other:?}"),
            }
            spool.remove(key);
        }
        assert_eq!(order, ["a", "b", "c"], "every request kept, oldest first");
    }
}

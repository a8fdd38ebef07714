//! The agent's own counters and gauges, each declared once in a table below. Every notable event
//! is logged and counted here, in one call, so the logs and the self-metrics never disagree.

use std::sync::atomic::{AtomicU64, Ordering};

/// What a counter counts, for the self-metrics that sum them.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Routine work (a sample taken, a request sent).
    Routine,
    /// Something going wrong: summed into the `Errors` self-metric.
    Error,
    /// An error that loses measured values: in `Errors` and in `DroppedPoints`.
    DroppedPoint,
}

/// The counters table: each counter once, with its published name and its [`Kind`]; generates
/// [`Counter`], `Counter::ALL`, `name` and `kind`.
macro_rules! counters {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal, $kind:ident;)*) => {
        /// Something the agent counts about itself.
        #[derive(Copy, Clone, Debug, PartialEq, Eq)]
        pub enum Counter {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Counter {
            /// Every counter, in declaration order (its index in the counters' storage).
            pub const ALL: [Counter; [$($name),*].len()] = [$(Counter::$variant),*];

            /// The counter's name in logs and on `/metrics`.
            pub fn name(self) -> &'static str {
                match self {
                    $(Counter::$variant => $name,)*
                }
            }

            pub fn kind(self) -> Kind {
                match self {
                    $(Counter::$variant => Kind::$kind,)*
                }
            }
        }
    };
}

counters! {
    SamplesTaken = "samples_taken", Routine;
    SamplesMissed = "samples_missed", Routine;
    SampleValuesRejected = "sample_values_rejected", DroppedPoint;
    CollectorErrors = "collector_errors", Error;
    WindowsPublished = "windows_published", Routine;
    WindowsDropped = "windows_dropped", Error;
    EmfDocumentsWritten = "emf_documents_written", Routine;
    EmfDocumentsDropped = "emf_documents_dropped", Error;
    EmfGroupsSkipped = "emf_groups_skipped", Error;
    EmfDimensionSetsDropped = "emf_dimension_sets_dropped", Error;
    EmfMetricsSkipped = "emf_metrics_skipped", DroppedPoint;
    EmfValuesSkipped = "emf_values_skipped", DroppedPoint;
    SinkWriteErrors = "sink_write_errors", Error;
    SinkReconnects = "sink_reconnects", Routine;
    /// No NVML library or driver: the agent runs without GPU metrics (warned once).
    GpuUnavailable = "gpu_unavailable", Routine;
    /// A GPU answered GPU_IS_LOST; its series stop until a re-initialisation finds it again.
    GpuLost = "gpu_lost", Error;
    /// An NVML call failed (other than "not supported", "lost" and "no new samples").
    GpuErrors = "gpu_errors", Error;
    /// A GPU reading did not finish in time (a hanging NVML call): that tick has no GPU data.
    GpuReadsMissed = "gpu_reads_missed", Error;
    /// A process list with an impossible layout, rejected rather than misread.
    GpuProcessListsRejected = "gpu_process_lists_rejected", Error;
    /// A GPU health call the GPU or driver does not support: that series is absent (once per
    /// GPU and call).
    GpuHealthUnsupported = "gpu_health_unsupported", Routine;
    /// XID errors received from NVML events (each also counted per GPU in its series).
    GpuXidErrors = "gpu_xid_errors", Error;
    DockerUnavailable = "docker_unavailable", Routine;
    DockerInspectErrors = "docker_inspect_errors", Error;
    ContainersWithoutComponent = "containers_without_component", Routine;
    GpuProcessesUnattributed = "gpu_processes_unattributed", Routine;
    PmdGroupsSkipped = "pmd_groups_skipped", Error;
    PmdMetricsSkipped = "pmd_metrics_skipped", DroppedPoint;
    PmdValuesSkipped = "pmd_values_skipped", DroppedPoint;
    PmdDatumsSkipped = "pmd_datums_skipped", DroppedPoint;
    PublishRequestsSent = "publish_requests_sent", Routine;
    PublishRetries = "publish_retries", Routine;
    PublishRequestsDropped = "publish_requests_dropped", Error;
    SpoolWrites = "spool_writes", Routine;
    SpoolItemsDropped = "spool_items_dropped", Error;
    SpoolItemsExpired = "spool_items_expired", Error;
    SpoolItemsReplayed = "spool_items_replayed", Routine;
    LogEventsSkipped = "log_events_skipped", Error;
    LogEventsRejected = "log_events_rejected", Error;
    OtlpPointsSkipped = "otlp_points_skipped", DroppedPoint;
    OtlpPointsRejected = "otlp_points_rejected", Error;
    ConfigReloads = "config_reloads", Routine;
    ConfigReloadsRejected = "config_reloads_rejected", Error;
    AdminBadRequests = "admin_bad_requests", Error;
    /// No price for the instance (type unset or not in the table, no override): cost metrics
    /// off (warned once, at start).
    CostUnpriced = "cost_unpriced", Routine;
    /// Copies hold more GPUs than the price is divided by (`cost.gpus_per_instance` or the
    /// table's count disagrees with the host): costs add up to more than the instance's price.
    CostGpusOverallocated = "cost_gpus_overallocated", Routine;
    /// Front door: a request it could not read or route, answered by the front door itself
    /// (400, 404, 405, 413, 431); not an invocation.
    ProxyBadRequests = "proxy_bad_requests", Routine;
    /// Front door: no copy could take the request (none at all, or none of the named component
    /// now), answered 503; not an invocation (a known component's also counts in
    /// `NoCapacityInvocationFailures`).
    ProxyUnavailable = "proxy_unavailable", Routine;
    /// Front door: the client's request body was badly framed (a broken chunked encoding),
    /// answered 400; not an invocation.
    ProxyClientBadFraming = "proxy_client_bad_framing", Routine;
    /// Front door: the client went away before the answer (mid-upload, or while the copy was
    /// working); not an invocation.
    ProxyClientLeft = "proxy_client_left", Routine;
    /// Front door: the client's upload stalled past `proxy.response_timeout_ms` (the front door
    /// was waiting for its bytes, not for the copy), answered 408; not an invocation.
    ProxyClientStalled = "proxy_client_stalled", Routine;
    /// Front door: a client took none of its answer for `proxy.send_timeout_ms` while the answer
    /// had more for it (it stopped reading): its connection was cut. The invocation counts as
    /// its answer stood.
    ProxyClientNotReading = "proxy_client_not_reading", Routine;
    /// Front door: a copy refused or reset the connection, or broke off its answer (502).
    ProxyUpstreamErrors = "proxy_upstream_errors", Routine;
    /// Front door: a copy did not accept or answer in time (504).
    ProxyUpstreamTimeouts = "proxy_upstream_timeouts", Routine;
    /// Front door: a client connection past `[proxy] max_connections`, closed at once.
    ProxyConnectionsRefused = "proxy_connections_refused", Error;
    /// Front door: accepting a connection failed (out of file descriptors and the like).
    ProxyAcceptErrors = "proxy_accept_errors", Error;
    /// Front door: a client connection closed with nothing in flight after `[proxy]
    /// idle_timeout_ms`, or (HTTP/1) after `proxy::HEADER_READ_TIMEOUT` without a request head.
    ProxyConnectionsIdleClosed = "proxy_connections_idle_closed", Routine;
    /// Front door: requests still in flight when the drain at shutdown ended, cut.
    ProxyRequestsCut = "proxy_requests_cut", Error;
    /// A model server's metrics endpoint refused, hung, answered an error, too much, or text
    /// that is not an exposition: that target has no figures for the period.
    ScrapeFailures = "scrape_failures", DroppedPoint;
    /// A series of a scraped body not used: NaN or negative, duplicate, unknown or unexpected
    /// type, malformed histogram.
    ScrapeValuesSkipped = "scrape_values_skipped", DroppedPoint;
    /// A scraped counter went down (the server restarted): a new baseline, no rate that time.
    ScrapeCounterResets = "scrape_counter_resets", Routine;
    /// Docker lifecycle events the tick did not take in time (a full queue).
    LifecycleEventsDropped = "lifecycle_events_dropped", DroppedPoint;
    /// Admin endpoint: accepting a connection failed (out of file descriptors, say).
    AdminAcceptErrors = "admin_accept_errors", Error;
    /// Admin endpoint: a connection that had sent no request closed to make room for a new one.
    AdminConnectionsEvicted = "admin_connections_evicted", Routine;
}

impl Counter {
    /// Counters that count something going wrong, published as errors by kind.
    pub fn is_error(self) -> bool {
        self.kind() != Kind::Routine
    }

    /// Counters of measured values that never reached a document ("dropped points").
    pub fn is_dropped_point(self) -> bool {
        self.kind() == Kind::DroppedPoint
    }
}

/// The gauges table, as [`counters!`] for counters: generates [`Gauge`] and `Gauge::ALL`.
macro_rules! gauges {
    ($($(#[doc = $doc:literal])* $variant:ident;)*) => {
        /// Something the agent reports about its current state (last value wins).
        #[derive(Copy, Clone, Debug, PartialEq, Eq)]
        pub enum Gauge {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Gauge {
            /// Every gauge, in declaration order (its index in the gauges' storage).
            pub const ALL: [Gauge; [$(stringify!($variant)),*].len()] = [$(Gauge::$variant),*];
        }
    };
}

gauges! {
    /// 1 once the pipeline is running (READY=1 sent), 0 before and while stopping.
    Ready;
    /// Wall-clock ms of the last tick whose host reading arrived in time.
    LastSampleMs;
    /// Wall-clock ms of the last window the sink delivered whole.
    LastPublishMs;
    /// How long delivering the last window took, in microseconds.
    PublishLatencyUs;
    /// Windows encoded and waiting in the channel to the sink.
    QueuedWindows;
    /// Windows the sink holds because the destination failed (waiting for a retry).
    SpooledWindows;
    /// Wall-clock ms when the agent started running.
    StartedMs;
    /// Front door: client connections open now.
    ProxyConnectionsOpen;
}

static GAUGES: [AtomicU64; Gauge::ALL.len()] = [const { AtomicU64::new(0) }; Gauge::ALL.len()];

pub fn set(gauge: Gauge, value: u64) {
    GAUGES[gauge as usize].store(value, Ordering::Relaxed);
}

pub fn gauge(gauge: Gauge) -> u64 {
    GAUGES[gauge as usize].load(Ordering::Relaxed)
}

static COUNTERS: [AtomicU64; Counter::ALL.len()] =
    [const { AtomicU64::new(0) }; Counter::ALL.len()];

/// Adds `n` to a counter without logging (for routine events such as a sample taken).
pub fn add(counter: Counter, n: u64) {
    COUNTERS[counter as usize].fetch_add(n, Ordering::Relaxed);
}

/// Counts a problem and logs it as a warning: the message is `event` (what happened), the fields
/// say which counter, by how much, and its total.
pub fn warn(counter: Counter, n: u64, event: &str) {
    if n == 0 {
        return;
    }
    add(counter, n);
    tracing::warn!(counter = counter.name(), n, total = get(counter), "{event}");
}

/// At most one log line per counter per this interval from [`warn_sampled`]: per-request
/// events (the front door at thousands of requests a second) must not flood the log.
pub const SAMPLED_LOG_INTERVAL_MS: u64 = 10_000;

static LAST_LOGGED_MS: [AtomicU64; Counter::ALL.len()] =
    [const { AtomicU64::new(0) }; Counter::ALL.len()];

/// Counts one event and logs it as [`warn`] does, but at most once per
/// [`SAMPLED_LOG_INTERVAL_MS`] per counter; the logged `total` covers the ones not logged.
pub fn warn_sampled(counter: Counter, event: &str) {
    add(counter, 1);
    let now = crate::clock::system_now_ms();
    let last = &LAST_LOGGED_MS[counter as usize];
    let previous = last.load(Ordering::Relaxed);
    if now.saturating_sub(previous) < SAMPLED_LOG_INTERVAL_MS
        || last
            .compare_exchange(previous, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    tracing::warn!(
        counter = counter.name(),
        total = get(counter),
        logged_every_ms = SAMPLED_LOG_INTERVAL_MS,
        "{event}"
    );
}

pub fn get(counter: Counter) -> u64 {
    COUNTERS[counter as usize].load(Ordering::Relaxed)
}

/// Every counter with its current value.
pub fn snapshot() -> Vec<(&'static str, u64)> {
    Counter::ALL.iter().map(|&c| (c.name(), get(c))).collect()
}

/// Faults outside the agent that `/healthz` reports (kept here, beside the counters, so a
/// collector can raise one without reaching up to the admin endpoint) (a GPU's fatal XID), by what they concern:
/// the status becomes "degraded" with these reasons, still 200, since the agent itself works
/// and restarting it mends nothing. They last until the agent restarts (a fatal XID needs a
/// GPU reset, which restarts the workload anyway). At most one per key: a GPU has one entry.
static DEGRADED: std::sync::Mutex<std::collections::BTreeMap<String, String>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Marks `/healthz` degraded: `key` names what is faulty (one entry per key, the latest
/// reason), `reason` says how.
pub fn degrade(key: &str, reason: String) {
    let mut degraded = DEGRADED.lock().unwrap_or_else(|e| e.into_inner());
    degraded.insert(key.to_string(), reason);
}

/// The reasons `/healthz` is degraded, by key order.
pub fn degraded() -> Vec<String> {
    let degraded = DEGRADED.lock().unwrap_or_else(|e| e.into_inner());
    degraded.values().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_indexed_by_their_position_in_all() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{c:?}");
        }
    }

    #[test]
    fn gauges_are_indexed_by_their_position_in_all() {
        for (i, g) in Gauge::ALL.iter().enumerate() {
            assert_eq!(*g as usize, i, "{g:?}");
        }
        set(Gauge::QueuedWindows, 3);
        assert_eq!(gauge(Gauge::QueuedWindows), 3);
    }

    /// A `MakeWriter` into a shared buffer: what the JSON formatter writes, to read back.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    #[test]
    fn a_counted_warning_says_the_event_in_its_message_and_the_counter_in_fields() {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(captured.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            warn(
                Counter::SpoolItemsExpired,
                3,
                "spooled request too old; dropped",
            );
            warn(
                Counter::SpoolItemsExpired,
                0,
                "nothing happened: not logged",
            );
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert_eq!(lines[0]["message"], "spooled request too old; dropped");
        assert_eq!(lines[0]["counter"], "spool_items_expired");
        assert_eq!(lines[0]["n"], 3);
        assert_eq!(lines[0]["level"], "WARN");
    }

    #[test]
    fn warn_counts() {
        let _counters = crate::testing::counters_blocking();
        let before = get(Counter::SinkReconnects);
        warn(Counter::SinkReconnects, 2, "test");
        assert_eq!(get(Counter::SinkReconnects), before + 2);
        assert!(snapshot().iter().any(|(n, _)| *n == "sink_reconnects"));
    }
}

//! The agent's own counters. Every notable event is logged and counted here, in one call, so the
//! logs and the self-metrics never disagree.

use std::sync::atomic::{AtomicU64, Ordering};

/// Something the agent counts about itself.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Counter {
    SamplesTaken,
    SamplesMissed,
    SampleValuesRejected,
    CollectorErrors,
    WindowsPublished,
    WindowsDropped,
    EmfDocumentsWritten,
    EmfDocumentsDropped,
    EmfGroupsSkipped,
    EmfDimensionSetsDropped,
    EmfMetricsSkipped,
    EmfValuesSkipped,
    SinkWriteErrors,
    SinkReconnects,
    /// No NVML library or driver: the agent runs without GPU metrics (warned once).
    GpuUnavailable,
    /// A GPU answered GPU_IS_LOST; its series stop until a re-initialisation finds it again.
    GpuLost,
    /// An NVML call failed (other than "not supported", "lost" and "no new samples").
    GpuErrors,
    /// A GPU reading did not finish in time (a hanging NVML call): that tick has no GPU data.
    GpuReadsMissed,
    /// A process list with an impossible layout, rejected rather than misread.
    GpuProcessListsRejected,
    DockerUnavailable,
    DockerInspectErrors,
    ContainersWithoutComponent,
    GpuProcessesUnattributed,
    PmdGroupsSkipped,
    PmdMetricsSkipped,
    PmdValuesSkipped,
    PmdDatumsSkipped,
    PublishRequestsSent,
    PublishRetries,
    PublishRequestsDropped,
    SpoolWrites,
    SpoolItemsDropped,
    SpoolItemsExpired,
    SpoolItemsReplayed,
    LogEventsSkipped,
    LogEventsRejected,
    ConfigReloads,
    ConfigReloadsRejected,
    AdminBadRequests,
    /// No price for the instance (type unset or not in the table, no override): cost metrics
    /// off (warned once, at start).
    CostUnpriced,
    /// Copies hold more GPUs than the price is divided by (`cost.gpus_per_instance` or the
    /// table's count disagrees with the host): costs add up to more than the instance's price.
    CostGpusOverallocated,
    /// Front door: a request it could not read or route (400, 404, 413, 431).
    ProxyBadRequests,
    /// Front door: a copy refused or reset the connection, or broke off its answer (502).
    ProxyUpstreamErrors,
    /// Front door: a copy did not accept or answer in time (504).
    ProxyUpstreamTimeouts,
    /// A model server's metrics endpoint refused, hung, answered an error, too much, or text
    /// that is not an exposition: that target has no figures for the period.
    ScrapeFailures,
    /// A series of a scraped body not used: NaN or negative, duplicate, unknown or unexpected
    /// type, malformed histogram.
    ScrapeValuesSkipped,
    /// A scraped counter went down (the server restarted): a new baseline, no rate that time.
    ScrapeCounterResets,
    /// Docker lifecycle events the tick did not take in time (a full queue).
    LifecycleEventsDropped,
}

impl Counter {
    pub const ALL: [Counter; 48] = [
        Counter::SamplesTaken,
        Counter::SamplesMissed,
        Counter::SampleValuesRejected,
        Counter::CollectorErrors,
        Counter::WindowsPublished,
        Counter::WindowsDropped,
        Counter::EmfDocumentsWritten,
        Counter::EmfDocumentsDropped,
        Counter::EmfGroupsSkipped,
        Counter::EmfDimensionSetsDropped,
        Counter::EmfMetricsSkipped,
        Counter::EmfValuesSkipped,
        Counter::SinkWriteErrors,
        Counter::SinkReconnects,
        Counter::GpuUnavailable,
        Counter::GpuLost,
        Counter::GpuErrors,
        Counter::GpuReadsMissed,
        Counter::GpuProcessListsRejected,
        Counter::DockerUnavailable,
        Counter::DockerInspectErrors,
        Counter::ContainersWithoutComponent,
        Counter::GpuProcessesUnattributed,
        Counter::PmdGroupsSkipped,
        Counter::PmdMetricsSkipped,
        Counter::PmdValuesSkipped,
        Counter::PmdDatumsSkipped,
        Counter::PublishRequestsSent,
        Counter::PublishRetries,
        Counter::PublishRequestsDropped,
        Counter::SpoolWrites,
        Counter::SpoolItemsDropped,
        Counter::SpoolItemsExpired,
        Counter::SpoolItemsReplayed,
        Counter::LogEventsSkipped,
        Counter::LogEventsRejected,
        Counter::ConfigReloads,
        Counter::ConfigReloadsRejected,
        Counter::AdminBadRequests,
        Counter::CostUnpriced,
        Counter::CostGpusOverallocated,
        Counter::ProxyBadRequests,
        Counter::ProxyUpstreamErrors,
        Counter::ProxyUpstreamTimeouts,
        Counter::ScrapeFailures,
        Counter::ScrapeValuesSkipped,
        Counter::ScrapeCounterResets,
        Counter::LifecycleEventsDropped,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Counter::SamplesTaken => "samples_taken",
            Counter::SamplesMissed => "samples_missed",
            Counter::SampleValuesRejected => "sample_values_rejected",
            Counter::CollectorErrors => "collector_errors",
            Counter::WindowsPublished => "windows_published",
            Counter::WindowsDropped => "windows_dropped",
            Counter::EmfDocumentsWritten => "emf_documents_written",
            Counter::EmfDocumentsDropped => "emf_documents_dropped",
            Counter::EmfGroupsSkipped => "emf_groups_skipped",
            Counter::EmfDimensionSetsDropped => "emf_dimension_sets_dropped",
            Counter::EmfMetricsSkipped => "emf_metrics_skipped",
            Counter::EmfValuesSkipped => "emf_values_skipped",
            Counter::SinkWriteErrors => "sink_write_errors",
            Counter::SinkReconnects => "sink_reconnects",
            Counter::GpuUnavailable => "gpu_unavailable",
            Counter::GpuLost => "gpu_lost",
            Counter::GpuErrors => "gpu_errors",
            Counter::GpuReadsMissed => "gpu_reads_missed",
            Counter::GpuProcessListsRejected => "gpu_process_lists_rejected",
            Counter::DockerUnavailable => "docker_unavailable",
            Counter::DockerInspectErrors => "docker_inspect_errors",
            Counter::ContainersWithoutComponent => "containers_without_component",
            Counter::GpuProcessesUnattributed => "gpu_processes_unattributed",
            Counter::PmdGroupsSkipped => "pmd_groups_skipped",
            Counter::PmdMetricsSkipped => "pmd_metrics_skipped",
            Counter::PmdValuesSkipped => "pmd_values_skipped",
            Counter::PmdDatumsSkipped => "pmd_datums_skipped",
            Counter::PublishRequestsSent => "publish_requests_sent",
            Counter::PublishRetries => "publish_retries",
            Counter::PublishRequestsDropped => "publish_requests_dropped",
            Counter::SpoolWrites => "spool_writes",
            Counter::SpoolItemsDropped => "spool_items_dropped",
            Counter::SpoolItemsExpired => "spool_items_expired",
            Counter::SpoolItemsReplayed => "spool_items_replayed",
            Counter::LogEventsSkipped => "log_events_skipped",
            Counter::LogEventsRejected => "log_events_rejected",
            Counter::ConfigReloads => "config_reloads",
            Counter::ConfigReloadsRejected => "config_reloads_rejected",
            Counter::AdminBadRequests => "admin_bad_requests",
            Counter::CostUnpriced => "cost_unpriced",
            Counter::CostGpusOverallocated => "cost_gpus_overallocated",
            Counter::ProxyBadRequests => "proxy_bad_requests",
            Counter::ProxyUpstreamErrors => "proxy_upstream_errors",
            Counter::ProxyUpstreamTimeouts => "proxy_upstream_timeouts",
            Counter::ScrapeFailures => "scrape_failures",
            Counter::ScrapeValuesSkipped => "scrape_values_skipped",
            Counter::ScrapeCounterResets => "scrape_counter_resets",
            Counter::LifecycleEventsDropped => "lifecycle_events_dropped",
        }
    }

    /// Counters that count something going wrong, published as errors by kind.
    pub fn is_error(self) -> bool {
        matches!(
            self,
            Counter::SampleValuesRejected
                | Counter::CollectorErrors
                | Counter::WindowsDropped
                | Counter::EmfDocumentsDropped
                | Counter::EmfGroupsSkipped
                | Counter::EmfDimensionSetsDropped
                | Counter::EmfMetricsSkipped
                | Counter::EmfValuesSkipped
                | Counter::SinkWriteErrors
                | Counter::GpuLost
                | Counter::GpuErrors
                | Counter::GpuReadsMissed
                | Counter::GpuProcessListsRejected
                | Counter::DockerInspectErrors
                | Counter::PmdGroupsSkipped
                | Counter::PmdMetricsSkipped
                | Counter::PmdValuesSkipped
                | Counter::PmdDatumsSkipped
                | Counter::PublishRequestsDropped
                | Counter::SpoolItemsDropped
                | Counter::SpoolItemsExpired
                | Counter::LogEventsSkipped
                | Counter::LogEventsRejected
                | Counter::ConfigReloadsRejected
                | Counter::AdminBadRequests
                | Counter::ScrapeFailures
                | Counter::ScrapeValuesSkipped
                | Counter::LifecycleEventsDropped
        )
    }

    /// Counters of measured values that never reached a document ("dropped points").
    pub fn is_dropped_point(self) -> bool {
        matches!(
            self,
            Counter::SampleValuesRejected
                | Counter::EmfValuesSkipped
                | Counter::EmfMetricsSkipped
                | Counter::PmdValuesSkipped
                | Counter::PmdMetricsSkipped
                | Counter::PmdDatumsSkipped
        )
    }
}

/// Something the agent reports about its current state (last value wins).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Gauge {
    /// 1 once the pipeline is running (READY=1 sent), 0 before and while stopping.
    Ready,
    /// Wall-clock ms of the last tick whose host reading arrived in time.
    LastSampleMs,
    /// Wall-clock ms of the last window the sink delivered whole.
    LastPublishMs,
    /// How long delivering the last window took, in microseconds.
    PublishLatencyUs,
    /// Windows encoded and waiting in the channel to the sink.
    QueuedWindows,
    /// Windows the sink holds because the destination failed (waiting for a retry).
    SpooledWindows,
    /// Wall-clock ms when the agent started running.
    StartedMs,
}

impl Gauge {
    pub const ALL: [Gauge; 7] = [
        Gauge::Ready,
        Gauge::LastSampleMs,
        Gauge::LastPublishMs,
        Gauge::PublishLatencyUs,
        Gauge::QueuedWindows,
        Gauge::SpooledWindows,
        Gauge::StartedMs,
    ];
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

/// Counts a problem and logs it as a warning, fields first, message last.
pub fn warn(counter: Counter, n: u64, reason: &str) {
    if n == 0 {
        return;
    }
    add(counter, n);
    tracing::warn!(
        counter = counter.name(),
        n,
        total = get(counter),
        reason,
        "counted"
    );
}

/// At most one log line per counter per this interval from [`warn_sampled`]: per-request
/// events (the front door at thousands of requests a second) must not flood the log.
pub const SAMPLED_LOG_INTERVAL_MS: u64 = 10_000;

static LAST_LOGGED_MS: [AtomicU64; Counter::ALL.len()] =
    [const { AtomicU64::new(0) }; Counter::ALL.len()];

/// Counts one event and logs it as [`warn`] does, but at most once per
/// [`SAMPLED_LOG_INTERVAL_MS`] per counter; the logged `total` covers the ones not logged.
pub fn warn_sampled(counter: Counter, reason: &str) {
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
        reason,
        "counted (logged at most every 10 s)"
    );
}

pub fn get(counter: Counter) -> u64 {
    COUNTERS[counter as usize].load(Ordering::Relaxed)
}

/// Every counter with its current value.
pub fn snapshot() -> Vec<(&'static str, u64)> {
    Counter::ALL.iter().map(|&c| (c.name(), get(c))).collect()
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

    #[test]
    fn warn_counts() {
        let _counters = crate::testing::counters_blocking();
        let before = get(Counter::SinkReconnects);
        warn(Counter::SinkReconnects, 2, "test");
        assert_eq!(get(Counter::SinkReconnects), before + 2);
        assert!(snapshot().iter().any(|(n, _)| *n == "sink_reconnects"));
    }
}

//! Wiring: the one pipeline. Collectors -> samples -> aggregator (per publish window) ->
//! encoder -> sink. The sampling loop below is the only loop that schedules anything; collectors
//! and sinks are passive.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;

use crate::aggregate::{Aggregator, RecordError};
use crate::catalog::{storage_resolution, Identity, Sample};
use crate::clock::{system_now_ms, window_start_ms, Ticker};
use crate::collectors::containers::ContainerMetrics;
use crate::collectors::gpu;
use crate::collectors::host::{HostCollector, HostError, HostReading};
use crate::collectors::worker::{Collect, Worker};
use crate::config::Config;
use crate::encode::{emf, groups, put_metric_data_counted, EncodeContext, Encoded, Encoding};
use crate::identity::resolve_instance_id;
use crate::proxy::FrontDoor;
use crate::reload;
use crate::service::{Event, Service};
use crate::sinks::{Output, Sink};
use crate::telemetry::{self, Counter};

/// Windows waiting for the sink; past this the sink is stuck and new windows are dropped, counted.
pub const PUBLISH_QUEUE_WINDOWS: usize = 64;

/// Shutdown must finish within this (SIGTERM to exit), partial window included.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

impl Collect for HostCollector {
    type Reading = (HostReading, Vec<HostError>);
    fn collect(&mut self, _tick_ms: u64) -> Self::Reading {
        let mut errors = Vec::new();
        let reading = self.read(&mut errors);
        (reading, errors)
    }
}

/// The synchronous middle of the pipeline: samples in, encoded windows out.
pub struct Pipeline {
    aggregator: Aggregator,
    window_start_ms: Option<u64>,
    period_seconds: u64,
    ctx: EncodeContext,
    encoding: Encoding,
}

impl Pipeline {
    pub fn new(ctx: EncodeContext, period_seconds: u64, encoding: Encoding) -> Self {
        Pipeline {
            aggregator: Aggregator::new(),
            window_start_ms: None,
            period_seconds,
            ctx,
            encoding,
        }
    }

    /// Records the samples of the tick at `tick_ms`. Returns the previous window's documents
    /// when this tick opens a new window.
    pub fn record(
        &mut self,
        tick_ms: u64,
        samples: impl IntoIterator<Item = Sample>,
    ) -> Option<Encoded> {
        let window = window_start_ms(tick_ms, self.period_seconds);
        let closed = match self.window_start_ms {
            Some(current) if current != window => self.flush(),
            _ => None,
        };
        self.window_start_ms = Some(window);
        let mut rejected = 0;
        for sample in samples {
            if let Err(RecordError::NotFinite) = self.aggregator.record(sample) {
                rejected += 1;
            }
        }
        telemetry::warn(
            Counter::SampleValuesRejected,
            rejected,
            "non-finite sample values not recorded",
        );
        closed
    }

    /// Merges pre-aggregated series (the front door's, one `Stats` per series per tick) into
    /// the current window; call after [`Pipeline::record`] for the same tick.
    pub fn merge(&mut self, series: Vec<(crate::catalog::SeriesKey, crate::aggregate::Stats)>) {
        let mut rejected = 0;
        for (key, stats) in series {
            if self.aggregator.merge(key, &stats).is_err() {
                rejected += 1;
            }
        }
        telemetry::warn(
            Counter::SampleValuesRejected,
            rejected,
            "non-finite invocation statistics not recorded",
        );
    }

    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Changes how windows are encoded from now on, the current one included (reload).
    pub fn set_context(&mut self, ctx: EncodeContext, encoding: Encoding) {
        self.ctx = ctx;
        self.encoding = encoding;
    }

    /// Closes the current window (partial or not) and encodes it. None if it holds nothing.
    pub fn flush(&mut self) -> Option<Encoded> {
        let start = self.window_start_ms.take()?;
        let window = self.aggregator.flush(start, self.period_seconds);
        if window.series.is_empty() {
            return None;
        }
        let max_document_bytes = match self.encoding {
            Encoding::Emf { max_document_bytes } => max_document_bytes,
            Encoding::PutMetricData => {
                return Some(Encoded::PutMetricData {
                    window_start_ms: window.start_ms,
                    requests: put_metric_data_counted(&window, &self.ctx),
                })
            }
        };
        let mut docs = Vec::new();
        let report = emf::encode(
            &groups(&window, &self.ctx),
            window.start_ms,
            self.ctx.storage_resolution,
            self.ctx.log_group.as_deref(),
            max_document_bytes,
            &mut docs,
        );
        telemetry::warn(
            Counter::EmfGroupsSkipped,
            report.groups_skipped,
            "EMF group outside the limits",
        );
        telemetry::warn(
            Counter::EmfDimensionSetsDropped,
            report.dimension_sets_dropped,
            "EMF dimension set outside the limits",
        );
        telemetry::warn(
            Counter::EmfMetricsSkipped,
            report.metrics_skipped,
            "EMF metric outside the limits",
        );
        telemetry::warn(
            Counter::EmfValuesSkipped,
            report.values_skipped,
            "non-finite EMF value",
        );
        Some(Encoded::Emf {
            window_start_ms: window.start_ms,
            documents: docs,
        })
    }
}

/// Runs the agent until `shutdown` completes, then publishes the partial window and drains.
/// SIGHUP reads `config_path` again (see `reload`).
pub async fn run(
    config: Config,
    config_path: PathBuf,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut config = config;
    let identity = Identity {
        endpoint_name: config.endpoint.name.clone(),
        variant_name: config.endpoint.variant.clone(),
        instance_id: resolve_instance_id(&config.endpoint.instance_id).await,
    };
    let m = config.metrics.clone();
    let ctx = encode_context(&config, identity.clone());
    let writer = Sink::open(&config, &ctx.identity.instance_id, SHUTDOWN_GRACE).await?;
    let mut pipeline = Pipeline::new(ctx.clone(), m.publish_frequency_seconds, writer.encoding());
    tracing::info!(
        endpoint = %ctx.identity.endpoint_name,
        instance_id = %ctx.identity.instance_id,
        destination = %writer.describe(),
        publish_frequency_seconds = m.publish_frequency_seconds,
        sample_interval_ms = m.sample_interval_ms,
        enhanced = m.enhanced,
        "agent started"
    );

    let mut output = Output::start(writer, PUBLISH_QUEUE_WINDOWS, SHUTDOWN_GRACE);
    let host = HostCollector::new(&config.host.proc_root, &m.disk_path)
        .context("opening host statistics")?;
    let mut host = Worker::spawn("host", host).context("starting the host collector thread")?;
    let mut gpu = gpu::spawn(&config.gpu, m.sample_interval_ms)
        .context("starting the GPU collector thread")?;
    let mut containers = ContainerMetrics::start(&config)?;
    // Cost per model: off (one warning) without a price.
    let mut cost = crate::cost::CostModel::start(&config);
    let (no_copies, no_use) = (crate::discovery::Inventory::default(), Default::default());
    let mut service = Service::start(&config).await;
    let front_door = if config.proxy.enabled {
        let inventory = containers.as_ref().map(|c| c.inventory_watch());
        Some(FrontDoor::start(&config.proxy, inventory)?)
    } else {
        None
    };
    // Invocation series get their own 60 s window when enhanced metrics are off (the spec).
    let mut invocations: Option<Pipeline> = None;

    let collect_timeout = Duration::from_millis(m.sample_interval_ms / 2);
    let mut ticker = Ticker::new(system_now_ms(), m.sample_interval_ms);
    let mut samples: Vec<Sample> = Vec::with_capacity(64);
    service.ready();
    tokio::pin!(shutdown);
    loop {
        let tick = tokio::select! {
            tick = ticker.tick() => tick,
            _ = &mut shutdown => break,
            event = service.event() => {
                match event {
                    Event::Hangup => reload::apply(&config_path, &mut config, &identity, &mut pipeline, &mut output, &service.notifier).await,
                    Event::WatchdogDue => service.feed_watchdog(),
                    Event::None => {}
                }
                continue;
            }
        };
        telemetry::warn(
            Counter::SamplesMissed,
            tick.missed,
            "sample ticks missed: the agent was late",
        );
        samples.clear();
        let ((), gpu_reading) = tokio::join!(
            read_host(&mut host, tick.wall_ms, collect_timeout, &mut samples),
            gpu::read(gpu.as_mut(), tick.wall_ms, collect_timeout),
        );
        // This tick's GPU reading: its processes (host PID, GPU) feed container attribution.
        // None when the tick has no GPU data, so nothing stale is ever attributed.
        if let Some(reading) = &gpu_reading {
            reading.samples(&mut samples);
        }
        if let Some(containers) = containers.as_mut() {
            containers
                .read(
                    tick.wall_ms,
                    collect_timeout,
                    gpu_reading.as_ref(),
                    &mut samples,
                )
                .await;
        }
        if let Some(cost) = cost.as_mut() {
            let (inventory, gpu_use) = containers
                .as_ref()
                .map_or((&no_copies, &no_use), |c| (c.inventory(), c.gpu_use()));
            let devices = gpu_reading.as_ref().map(|r| r.devices.as_slice());
            cost.tick(tick.wall_ms, devices, inventory, gpu_use, &mut samples);
        }
        service.on_tick(&config, tick.wall_ms, output.queued(), &mut samples);
        if let Some(batch) = pipeline.record(tick.wall_ms, samples.drain(..)) {
            publish(&output.tx, batch);
        }
        if let Some(front_door) = &front_door {
            let series = front_door.drain(tick.wall_ms);
            let (tick_ms, own) = (tick.wall_ms, &mut invocations);
            for batch in record_front_door(&config, &identity, &mut pipeline, own, tick_ms, series)
            {
                publish(&output.tx, batch);
            }
        }
    }

    service.stopping();
    tracing::info!("shutting down: publishing the partial window");
    if let Some(front_door) = front_door {
        // The requests cut off by the shutdown are accounted too.
        let series = front_door.stop().await;
        let (tick_ms, own) = (system_now_ms(), &mut invocations);
        for batch in record_front_door(&config, &identity, &mut pipeline, own, tick_ms, series) {
            publish(&output.tx, batch);
        }
    }
    if let Some(batch) = pipeline.flush() {
        publish(&output.tx, batch);
    }
    if let Some(batch) = invocations.as_mut().and_then(Pipeline::flush) {
        publish(&output.tx, batch);
    }
    output.finish(SHUTDOWN_GRACE).await;
    tracing::info!(counters = ?telemetry::snapshot(), "stopped");
    Ok(())
}

/// Puts the front door's series of the tick at `tick_ms` in the right window: the main
/// pipeline's when invocation series share its period, else their own pipeline's (created,
/// or flushed and dropped, as `enhanced` changes on reload). Returns windows that closed.
pub fn record_invocations(
    pipeline: &mut Pipeline,
    invocations: &mut Option<Pipeline>,
    ctx: EncodeContext,
    period_seconds: u64,
    tick_ms: u64,
    series: Vec<(crate::catalog::SeriesKey, crate::aggregate::Stats)>,
) -> Vec<Encoded> {
    let mut closed = Vec::new();
    let own_window = period_seconds != pipeline.period_seconds;
    let mismatched = invocations
        .as_ref()
        .is_some_and(|p| p.period_seconds != period_seconds);
    if own_window != invocations.is_some() || mismatched {
        closed.extend(invocations.take().and_then(|mut p| p.flush()));
        if own_window {
            *invocations = Some(Pipeline::new(
                ctx.clone(),
                period_seconds,
                pipeline.encoding(),
            ));
        }
    }
    match invocations.as_mut() {
        Some(p) => {
            // A reload may have changed the context: follow the main pipeline's.
            p.set_context(ctx, pipeline.encoding());
            closed.extend(p.record(tick_ms, std::iter::empty()));
            p.merge(series);
        }
        None => {
            // Opens the window when no tick has yet (a stop right after the start).
            closed.extend(pipeline.record(tick_ms, std::iter::empty()));
            pipeline.merge(series);
        }
    }
    closed
}

/// [`record_invocations`] with the context and period the current config gives (a reload may
/// have changed either).
fn record_front_door(
    config: &Config,
    identity: &Identity,
    pipeline: &mut Pipeline,
    own: &mut Option<Pipeline>,
    tick_ms: u64,
    series: Vec<(crate::catalog::SeriesKey, crate::aggregate::Stats)>,
) -> Vec<Encoded> {
    let period_seconds = invocation_period(config);
    let mut ctx = encode_context(config, identity.clone());
    // A 60 s invocation window is standard resolution even when the rest is high resolution.
    ctx.storage_resolution = storage_resolution(period_seconds);
    record_invocations(pipeline, own, ctx, period_seconds, tick_ms, series)
}

/// The publish period of invocation series: the publish frequency with enhanced metrics, else
/// 60 s ("without enhanced metrics the frequency applies to utilization metrics only").
pub fn invocation_period(config: &Config) -> u64 {
    if config.metrics.enhanced {
        config.metrics.publish_frequency_seconds
    } else {
        crate::catalog::PLAIN_INVOCATION_PERIOD_SECONDS
    }
}

pub(crate) fn encode_context(config: &Config, identity: Identity) -> EncodeContext {
    let m = &config.metrics;
    let log_group = match config.emf_destination() {
        crate::config::EmfDestination::Tcp(_) | crate::config::EmfDestination::Udp(_) => {
            config.output.log_group.clone()
        }
        _ => None,
    };
    EncodeContext {
        identity,
        enhanced: m.enhanced,
        endpoints_namespace: m.endpoints_namespace.clone(),
        components_namespace: m.components_namespace.clone(),
        self_metrics_namespace: config.self_metrics.namespace.clone(),
        invocations_namespace: config.proxy.namespace.clone(),
        gpu_dimension_name: config.gpu.dimension_name.clone(),
        storage_resolution: storage_resolution(m.publish_frequency_seconds),
        log_group,
    }
}

async fn read_host(
    host: &mut Worker<(HostReading, Vec<HostError>)>,
    tick_ms: u64,
    timeout: Duration,
    out: &mut Vec<Sample>,
) {
    let Some((reading, errors)) = host
        .read_or_count(tick_ms, timeout, Counter::SamplesMissed)
        .await
    else {
        return;
    };
    telemetry::add(Counter::SamplesTaken, 1);
    telemetry::set(crate::telemetry::Gauge::LastSampleMs, tick_ms);
    for error in &errors {
        telemetry::warn(Counter::CollectorErrors, 1, &error.to_string());
    }
    reading.samples(out);
}

fn publish(tx: &mpsc::Sender<Encoded>, batch: Encoded) {
    match tx.try_send(batch) {
        Ok(()) => telemetry::add(Counter::WindowsPublished, 1),
        Err(_) => telemetry::warn(
            Counter::WindowsDropped,
            1,
            "the sink is not keeping up; window dropped",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Metric, Scope};

    const EMF: Encoding = Encoding::Emf {
        max_document_bytes: 256 * 1024,
    };

    fn docs(encoded: Option<Encoded>) -> Vec<String> {
        match encoded {
            Some(Encoded::Emf { documents, .. }) => documents,
            other => panic!("{other:?}"),
        }
    }

    fn ctx(enhanced: bool) -> EncodeContext {
        crate::encode::test_context(enhanced)
    }

    #[test]
    fn the_boundary_tick_closes_the_window_with_its_samples() {
        let mut p = Pipeline::new(ctx(false), 10, EMF);
        for t in 1..=10u64 {
            let batch = p.record(
                t * 1000,
                [Sample::new(
                    Scope::Instance,
                    Metric::MemoryUtilization,
                    t as f64,
                )],
            );
            assert!(batch.is_none(), "window still open at {t}");
        }
        let batch = docs(p.record(
            11_000,
            [Sample::new(
                Scope::Instance,
                Metric::MemoryUtilization,
                11.0,
            )],
        ));
        assert_eq!(batch.len(), 1);
        let v: serde_json::Value = serde_json::from_str(&batch[0]).unwrap();
        assert_eq!(v["_aws"]["Timestamp"], 0);
        assert_eq!(v["MemoryUtilization"].as_array().unwrap().len(), 10);
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["StorageResolution"],
            1
        );
        let partial = docs(p.flush());
        let v: serde_json::Value = serde_json::from_str(&partial[0]).unwrap();
        assert_eq!(v["_aws"]["Timestamp"], 10_000);
        assert_eq!(v["MemoryUtilization"][0].as_f64(), Some(11.0));
        assert!(p.flush().is_none());
    }

    #[test]
    fn enhanced_adds_the_instance_set_and_per_gpu_documents() {
        let samples = || {
            [
                Sample::new(Scope::Instance, Metric::GpuUtilization, 50.0),
                Sample::new(Scope::Gpu { index: 0 }, Metric::GpuUtilization, 50.0),
            ]
        };
        let mut off = Pipeline::new(ctx(false), 60, EMF);
        off.record(1000, samples());
        let docs = docs(off.flush());
        assert_eq!(
            docs.len(),
            1,
            "per-GPU series are not published without enhanced metrics"
        );
        let mut on = Pipeline::new(ctx(true), 60, EMF);
        on.record(1000, samples());
        let docs = super::tests::docs(on.flush());
        assert_eq!(docs.len(), 2);
        let gpu: serde_json::Value = serde_json::from_str(&docs[1]).unwrap();
        assert_eq!(gpu["GpuId"], "0");
        assert_eq!(gpu["InstanceId"], "i-1");
        assert_eq!(
            gpu["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            serde_json::json!([["EndpointName", "VariantName", "InstanceId", "GpuId"]])
        );
    }

    #[test]
    fn without_enhanced_metrics_invocations_keep_a_60_s_window() {
        use crate::aggregate::Stats;
        use crate::catalog::SeriesKey;
        let invocation = || {
            vec![(
                SeriesKey {
                    scope: Scope::Invocations,
                    metric: Metric::Invocations,
                },
                Stats::new(1.0),
            )]
        };
        let mut p = Pipeline::new(ctx(false), 10, EMF);
        let mut own: Option<Pipeline> = None;
        let mut main_docs = Vec::new();
        let mut invocation_docs = Vec::new();
        // Ticks every second from 0.5 s to 70.5 s: seven 10 s windows, one 60 s one.
        for t in 0..=70u64 {
            let tick = t * 1000 + 500;
            let batch = p.record(
                tick,
                [Sample::new(Scope::Instance, Metric::CpuUtilization, 1.0)],
            );
            if batch.is_some() {
                main_docs.extend(docs(batch));
            }
            for batch in record_invocations(&mut p, &mut own, ctx(false), 60, tick, invocation()) {
                invocation_docs.extend(docs(Some(batch)));
            }
        }
        assert_eq!(main_docs.len(), 7, "10 s windows of host metrics");
        assert!(main_docs.iter().all(|d| !d.contains("Invocations")));
        assert_eq!(invocation_docs.len(), 1, "one 60 s window of invocations");
        let v: serde_json::Value = serde_json::from_str(&invocation_docs[0]).unwrap();
        assert_eq!(v["_aws"]["Timestamp"], 0);
        assert_eq!(v["Invocations"].as_array().unwrap().len(), 60);
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Namespace"],
            "/aws/sagemaker/Invocations"
        );

        // Enhanced: the same 10 s window as the rest; the own window is flushed and dropped.
        let batches = record_invocations(&mut p, &mut own, ctx(true), 10, 71_500, invocation());
        assert_eq!(batches.len(), 1, "the partial 60 s window is published");
        assert!(own.is_none());
        let docs = docs(p.flush());
        assert!(docs.iter().any(|d| d.contains("\"Invocations\"")));
    }

    #[test]
    fn a_60_s_invocation_window_is_standard_resolution() {
        let config = Config::parse(
            "[endpoint]\nname = \"e\"\n[metrics]\npublish_frequency_seconds = 10\n",
            std::path::Path::new("test.toml"),
        )
        .unwrap();
        let identity = ctx(false).identity;
        let mut p = Pipeline::new(encode_context(&config, identity.clone()), 10, EMF);
        let mut own = None;
        let series = || {
            vec![(
                crate::catalog::SeriesKey {
                    scope: Scope::Invocations,
                    metric: Metric::Invocations,
                },
                crate::aggregate::Stats::new(1.0),
            )]
        };
        assert!(
            record_front_door(&config, &identity, &mut p, &mut own, 1_000, series()).is_empty()
        );
        let closed = record_front_door(&config, &identity, &mut p, &mut own, 61_000, series());
        let v: serde_json::Value =
            serde_json::from_str(&docs(closed.into_iter().next())[0]).unwrap();
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["StorageResolution"],
            60
        );
    }

    #[test]
    fn non_finite_samples_are_counted_not_recorded() {
        let mut p = Pipeline::new(ctx(false), 60, EMF);
        p.record(
            1000,
            [Sample::new(
                Scope::Instance,
                Metric::CpuUtilization,
                f64::NAN,
            )],
        );
        assert!(p.flush().is_none());
    }
}

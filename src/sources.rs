//! The sources of one sampling tick, each called with the same shape.
//!
//! A [`Tick`] is what one sample gathers: its time and deadline, the samples, and the readings
//! later sources build on (the GPU reading that container attribution splits, the copies and
//! their GPU use that cost prices, the front door's invocation series). Every source is a
//! [`Source`]: `begin` starts its work (a collector thread reads while the others do), `read`
//! adds its part to the tick by the deadline. The tick in `agent` is the list of sources in order;
//! a new source is its module, its adapter here and one line there.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::aggregate::Stats;
use crate::attribution::{attribute_gpu, gpu_reservation, process_copies, GpuUse, PidContainers};
use crate::catalog::{Metric, Sample, Scope, SeriesKey};
use crate::collectors::cgroup::{CgroupCollector, CgroupError, ContainerReading, HostCapacity};
use crate::collectors::gpu::{GpuDevice, GpuReading, ProcessCopies};
use crate::collectors::host::{HostCollector, HostError, HostReading};
use crate::collectors::worker::Worker;
use crate::config::Config;
use crate::cost::CostModel;
use crate::discovery::Inventory;
use crate::lifecycle::{Lifecycle, LifecycleEvent};
use crate::proxy::FrontDoor;
use crate::scrape::Scraper;
use crate::self_metrics::{Process, WindowFigures};
use crate::telemetry::{self, Counter, Gauge};

/// What one sampling tick gathers, source by source.
#[derive(Debug)]
pub struct Tick {
    /// The tick's wall-clock time, ms since the epoch (aligned to the sampling interval).
    pub wall_ms: u64,
    /// Every source's reading is in by then, or missing for this tick (counted).
    pub deadline: Instant,
    pub samples: Vec<Sample>,
    /// This tick's GPU reading. None: no GPU data this tick, and never an older reading in its
    /// place, so nothing stale is attributed.
    pub gpu: Option<GpuReading>,
    /// The model copies as of the last container reading.
    pub inventory: Arc<Inventory>,
    /// The copies' SM use per GPU from this tick's attribution (empty without a GPU reading).
    pub gpu_use: GpuUse,
    /// The front door's invocation series since the previous tick, pre-aggregated.
    pub invocations: Vec<(SeriesKey, Stats)>,
    /// The model servers' requests since the previous tick (histogram buckets as values with
    /// counts), for the sampling window.
    pub requests: Vec<(SeriesKey, Stats)>,
    /// The copies whose metrics endpoint answered this tick, with when (ms since the epoch).
    pub scraped: Vec<(Arc<str>, u64)>,
}

impl Tick {
    pub fn new(wall_ms: u64, deadline: Instant) -> Tick {
        Tick {
            wall_ms,
            deadline,
            samples: Vec::with_capacity(64),
            gpu: None,
            inventory: Arc::default(),
            gpu_use: GpuUse::new(),
            invocations: Vec::new(),
            requests: Vec::new(),
            scraped: Vec::new(),
        }
    }
}

/// One source of a tick.
pub trait Source {
    /// Starts this tick's work where the source has a thread of its own, so the sources read
    /// at the same time and one stuck read costs only its own data.
    fn begin(&mut self, _tick_ms: u64) {}
    /// Adds this tick's reading to `tick`, waiting no later than `tick.deadline`.
    fn read(&mut self, tick: &mut Tick) -> impl Future<Output = ()>;
}

/// A source the configuration turned off reads nothing.
impl<S: Source> Source for Option<S> {
    fn begin(&mut self, tick_ms: u64) {
        if let Some(source) = self {
            source.begin(tick_ms);
        }
    }
    async fn read(&mut self, tick: &mut Tick) {
        if let Some(source) = self {
            source.read(tick).await;
        }
    }
}

/// Host CPU, memory and disk (`/proc`, `statvfs`) on its worker thread.
pub struct HostSource(Worker<(HostReading, Vec<HostError>)>);

impl HostSource {
    pub fn start(config: &Config) -> anyhow::Result<HostSource> {
        let host = HostCollector::new(&config.host.proc_root, &config.metrics.disk_path)
            .context("opening host statistics")?;
        let worker = Worker::spawn("host", host).context("starting the host collector thread")?;
        Ok(HostSource(worker))
    }
}

impl Source for HostSource {
    fn begin(&mut self, tick_ms: u64) {
        self.0.ask(tick_ms);
    }
    async fn read(&mut self, tick: &mut Tick) {
        let missed = Counter::SamplesMissed;
        let Some((reading, errors)) = self.0.answer_or_count(tick.deadline, missed).await else {
            return;
        };
        telemetry::add(Counter::SamplesTaken, 1);
        telemetry::set(Gauge::LastSampleMs, tick.wall_ms);
        for error in &errors {
            telemetry::warn(Counter::CollectorErrors, 1, &error.to_string());
        }
        reading.samples(&mut tick.samples);
    }
}

/// Per-GPU utilization and memory, and the GPU processes, from NVML on its worker thread.
pub struct GpuSource(Worker<GpuReading>);

impl GpuSource {
    /// None when `[gpu] enabled = false`. `copies`: what the container source's attribution
    /// publishes, so per-process utilization is read only on GPUs that copies share.
    pub fn start(config: &Config, copies: ProcessCopies) -> anyhow::Result<Option<GpuSource>> {
        let interval_ms = config.metrics.sample_interval_ms;
        let worker = crate::collectors::gpu::spawn(&config.gpu, interval_ms, copies)
            .context("starting the GPU collector thread")?;
        Ok(worker.map(GpuSource))
    }
}

impl Source for GpuSource {
    fn begin(&mut self, tick_ms: u64) {
        self.0.ask(tick_ms);
    }
    async fn read(&mut self, tick: &mut Tick) {
        let missed = Counter::GpuReadsMissed;
        tick.gpu = self.0.answer_or_count(tick.deadline, missed).await;
        if let Some(reading) = &tick.gpu {
            reading.samples(&mut tick.samples);
        }
    }
}

/// The model copies: CPU and memory from their cgroups (on the cgroup worker thread, over
/// discovery's inventory), and this tick's GPU reading attributed to them.
pub struct ContainerSource {
    worker: Worker<(ContainerReading, Vec<CgroupError>)>,
    proc_root: PathBuf,
    pids: PidContainers,
    /// Which copy each GPU process belongs to, published for the GPU reader.
    copies: ProcessCopies,
    /// The inventory of the last cgroup reading, which attribution and cost use.
    inventory: Arc<Inventory>,
}

impl ContainerSource {
    /// Starts the cgroup collector over discovery's inventory; None without discovery
    /// (`[docker] enabled = false`). Each attribution publishes into `copies` which copy each
    /// GPU process belongs to.
    pub fn start(
        config: &Config,
        inventory: Option<watch::Receiver<Arc<Inventory>>>,
        copies: ProcessCopies,
    ) -> anyhow::Result<Option<ContainerSource>> {
        let Some(inventory) = inventory else {
            return Ok(None);
        };
        let proc_root = &config.host.proc_root;
        let host = HostCapacity::read(proc_root).context("reading the host's CPUs and memory")?;
        let collector = CgroupCollector::new(proc_root, &config.host.cgroup_root, host, inventory);
        tracing::info!(cgroup = ?collector.version(), "container metrics started");
        let worker =
            Worker::spawn("cgroup", collector).context("starting the cgroup collector thread")?;
        Ok(Some(ContainerSource {
            worker,
            proc_root: proc_root.clone(),
            pids: PidContainers::default(),
            copies,
            inventory: Arc::default(),
        }))
    }

    fn attribute(&mut self, gpu: &GpuReading, tick: &mut Tick) {
        let mut pids: Vec<u32> = gpu.processes.iter().map(|p| p.pid).collect();
        pids.sort_unstable();
        pids.dedup();
        // A handful of small procfs reads, cached per PID: no need for a thread of their own.
        let map = self.pids.resolve(&self.proc_root, &pids);
        let report = attribute_gpu(gpu, &self.inventory, map, &mut tick.samples);
        tick.gpu_use = report.sm_percent;
        // For the GPU reader's next enumeration; replaced only when it changed.
        let copies = process_copies(map, &self.inventory);
        if *self.copies.current() != copies {
            self.copies.publish(copies);
        }
        // Host processes on a GPU are normal: counted, and published as the unattributed share.
        telemetry::add(
            Counter::GpuProcessesUnattributed,
            report.unattributed_processes,
        );
        if let Some(reserved) = gpu_reservation(gpu, &self.inventory) {
            let reservation = Sample::new(Scope::Instance, Metric::GpuReservation, reserved);
            tick.samples.push(reservation);
        }
    }
}

impl Source for ContainerSource {
    fn begin(&mut self, tick_ms: u64) {
        self.worker.ask(tick_ms);
    }
    async fn read(&mut self, tick: &mut Tick) {
        let missed = Counter::SamplesMissed;
        if let Some((reading, errors)) = self.worker.answer_or_count(tick.deadline, missed).await {
            for error in &errors {
                telemetry::warn(Counter::CollectorErrors, 1, &error.to_string());
            }
            reading.samples(&mut tick.samples);
            self.inventory = reading.inventory;
        }
        tick.inventory = self.inventory.clone();
        if let Some(gpu) = tick.gpu.take() {
            self.attribute(&gpu, tick);
            tick.gpu = Some(gpu);
        }
    }
}

/// Cost per model: prices the copies' GPUs over the time since the previous tick.
pub struct CostSource(CostModel);

impl CostSource {
    /// None (one warning, counted) without a price.
    pub fn start(config: &Config) -> Option<CostSource> {
        CostModel::start(config).map(CostSource)
    }
}

impl Source for CostSource {
    async fn read(&mut self, tick: &mut Tick) {
        let devices = tick.gpu.as_ref().map(|r| r.devices.as_slice());
        let (inventory, gpu_use) = (&tick.inventory, &tick.gpu_use);
        self.0
            .tick(tick.wall_ms, devices, inventory, gpu_use, &mut tick.samples);
    }
}

/// The front door's invocation series since the previous tick.
impl Source for FrontDoor {
    async fn read(&mut self, tick: &mut Tick) {
        tick.invocations = self.drain(tick.wall_ms);
    }
}

/// What the model servers know (`scrape`): the reports that arrived since the previous tick, as
/// samples of each copy (`Scope::Container`) and its requests. Never waits: the scrapes run on
/// their own thread.
pub struct ScrapeSource(Scraper);

impl ScrapeSource {
    /// None when `[scrape] enabled = false`.
    pub fn start(
        config: &Config,
        inventory: Option<watch::Receiver<Arc<Inventory>>>,
    ) -> anyhow::Result<Option<ScrapeSource>> {
        if !config.scrape.enabled {
            return Ok(None);
        }
        let scraper =
            Scraper::start(&config.scrape, inventory).context("starting the scrape thread")?;
        tracing::info!(settings = %config.scrape.summary(), "model server scrape started");
        Ok(Some(ScrapeSource(scraper)))
    }
}

impl Source for ScrapeSource {
    async fn read(&mut self, tick: &mut Tick) {
        for report in self.0.drain() {
            let Ok(figures) = report.outcome else {
                continue;
            };
            let scope = Scope::Container {
                component: report.target.component.clone(),
                container_id: report.target.copy_id.clone(),
            };
            for (metric, value) in figures.values {
                tick.samples.push(Sample::new(scope.clone(), metric, value));
            }
            for (metric, stats) in figures.requests {
                let key = SeriesKey {
                    scope: scope.clone(),
                    metric,
                };
                tick.requests.push((key, stats));
            }
            tick.scraped
                .push((report.target.copy_id.clone(), report.at_ms));
        }
    }
}

/// Each copy's lifecycle (`lifecycle`): Docker's events, the first successful scrape and the
/// first 2xx invocation of this tick.
pub struct LifecycleSource(Lifecycle);

impl LifecycleSource {
    /// None without discovery.
    pub fn start(events: Option<mpsc::Receiver<LifecycleEvent>>) -> Option<LifecycleSource> {
        events.map(|rx| LifecycleSource(Lifecycle::new(rx)))
    }
}

impl Source for LifecycleSource {
    async fn read(&mut self, tick: &mut Tick) {
        self.0.tick(
            tick.wall_ms,
            &tick.scraped,
            &tick.invocations,
            &mut tick.samples,
        );
    }
}

/// The agent's own figures, on the last tick of each publish window (`[self_metrics]`).
pub struct SelfMetricsSource {
    enabled: bool,
    period_ms: u64,
    figures: WindowFigures,
}

impl SelfMetricsSource {
    pub fn start(config: &Config) -> SelfMetricsSource {
        SelfMetricsSource {
            enabled: config.self_metrics.enabled,
            period_ms: config.metrics.publish_frequency_seconds * 1000,
            figures: WindowFigures::new(),
        }
    }

    /// `self_metrics.enabled` is live on reload.
    pub fn reconfigure(&mut self, config: &Config) {
        self.enabled = config.self_metrics.enabled;
    }
}

impl Source for SelfMetricsSource {
    async fn read(&mut self, tick: &mut Tick) {
        // The tick on a window boundary is the last one of the window it closes.
        if self.enabled && self.period_ms > 0 && tick.wall_ms % self.period_ms == 0 {
            self.figures.samples(&Process::read(), &mut tick.samples);
        }
    }
}

/// How long a one-shot look at the host (`plan`, `cost`) waits for Docker's first inventory.
pub const SNAPSHOT_DISCOVERY_WAIT: Duration = Duration::from_secs(3);

/// What the agent's own sources find on this host now: the GPUs one NVML reading shows and the
/// model copies discovery lists. A source that is disabled or absent gives nothing.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub devices: Vec<GpuDevice>,
    pub inventory: Inventory,
}

/// Takes a [`Snapshot`] (for the `plan` and `cost` subcommands).
pub async fn snapshot(config: &Config) -> Snapshot {
    let devices = if config.gpu.enabled {
        let options = crate::collectors::gpu::GpuOptions::new(
            &config.gpu.nvml_library,
            config.metrics.sample_interval_ms,
        );
        let mut nvml = crate::collectors::gpu::NvmlCollector::new(options);
        nvml.read(crate::clock::system_now_ms()).devices
    } else {
        Vec::new()
    };
    let mut inventory = Inventory::default();
    if let Some(mut watch) = crate::discovery::start(config) {
        let _ = tokio::time::timeout(SNAPSHOT_DISCOVERY_WAIT, watch.changed()).await;
        inventory = (**watch.borrow()).clone();
    }
    Snapshot { devices, inventory }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Adds(f64);
    impl Source for Adds {
        async fn read(&mut self, tick: &mut Tick) {
            tick.samples
                .push(Sample::new(Scope::Instance, Metric::CpuUtilization, self.0));
        }
    }

    #[tokio::test]
    async fn a_source_turned_off_reads_nothing() {
        let mut tick = Tick::new(1_000, Instant::now());
        let (mut on, mut off) = (Some(Adds(1.0)), None::<Adds>);
        on.begin(1_000);
        off.begin(1_000);
        on.read(&mut tick).await;
        off.read(&mut tick).await;
        assert_eq!(tick.samples.len(), 1);
    }

    #[tokio::test]
    async fn self_samples_come_on_the_last_tick_of_a_window_only_when_enabled() {
        let text = "[endpoint]\nname = \"e\"\ninstance_id = \"i\"\n[metrics]\npublish_frequency_seconds = 10\n\
                    [admin]\nenabled = false\n[self_metrics]\nenabled = true\n";
        let mut config = Config::parse(text, std::path::Path::new("t.toml")).unwrap();
        let mut source = SelfMetricsSource::start(&config);
        let mut tick = Tick::new(1_700_000_009_000, Instant::now());
        source.read(&mut tick).await;
        assert!(tick.samples.is_empty(), "not the window's last tick");
        let mut tick = Tick::new(1_700_000_010_000, Instant::now());
        source.read(&mut tick).await;
        assert_eq!(tick.samples.len(), 9);
        assert!(tick.samples.iter().all(|s| s.key.scope == Scope::Agent));
        config.self_metrics.enabled = false;
        source.reconfigure(&config);
        let mut tick = Tick::new(1_700_000_020_000, Instant::now());
        source.read(&mut tick).await;
        assert!(tick.samples.is_empty(), "disabled");
    }
}

//! Wiring: start the stages, run the sampling loop, shut down in order.
//!
//! Discovery -> sources (one [`Tick`] each sample) -> [`Windows`] (aggregate and encode per
//! publish window) -> the sink. The loop below is the only loop that schedules anything;
//! sources and sinks are passive.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::catalog::Identity;
use crate::clock::{system_now_ms, Ticker};
use crate::collectors::gpu::ProcessCopies;
use crate::config::Config;
use crate::encode::Encoded;
use crate::instance_id::resolve_instance_id;
use crate::live::Live;
use crate::pipeline::Windows;
use crate::proxy::FrontDoor;
use crate::reload;
use crate::shutdown::Deadline;
use crate::sinks::{Output, Sink};
use crate::sources::{
    ContainerSource, CostSource, GpuSource, HostSource, LifecycleSource, ScrapeSource,
    SelfMetricsSource, Source, Tick,
};
use crate::supervisor::{Event, Supervisor};
use crate::telemetry::{self, Counter};

/// Every source of a tick, in the order they read: later ones build on earlier ones' readings
/// (attribution on the GPU reading, cost on the copies and their GPU use).
struct Sources {
    host: HostSource,
    gpu: Option<GpuSource>,
    containers: Option<ContainerSource>,
    cost: Option<CostSource>,
    front_door: Option<FrontDoor>,
    scrape: Option<ScrapeSource>,
    lifecycle: Option<LifecycleSource>,
    self_metrics: SelfMetricsSource,
}

impl Sources {
    async fn read(&mut self, tick: &mut Tick) {
        // Threads first, so they read at the same time; then each adds its part in order.
        self.host.begin(tick.wall_ms);
        self.gpu.begin(tick.wall_ms);
        self.containers.begin(tick.wall_ms);

        self.host.read(tick).await;
        self.gpu.read(tick).await;
        self.containers.read(tick).await;
        self.cost.read(tick).await;
        self.front_door.read(tick).await;
        self.scrape.read(tick).await;
        self.lifecycle.read(tick).await;
        self.self_metrics.read(tick).await;
    }
}

/// Runs the agent until `shutdown` completes, then publishes the partial windows and drains,
/// all within one [`Deadline`]. SIGHUP reads `config_path` again (see `reload`).
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
    let sink = Sink::open(&config, &identity.instance_id).await?;
    let mut windows = Windows::new(&config, identity.clone(), sink.encoding());
    let m = config.metrics.clone();
    tracing::info!(
        endpoint = %identity.endpoint_name,
        instance_id = %identity.instance_id,
        destination = %sink.describe(),
        publish_frequency_seconds = m.publish_frequency_seconds,
        sample_interval_ms = m.sample_interval_ms,
        enhanced = m.enhanced,
        "agent started"
    );
    let mut output = Output::start(sink);

    let (inventory, lifecycle) = match crate::discovery::start_stage(&config) {
        Some(stage) => (Some(stage.inventory), Some(stage.lifecycle)),
        None => (None, None),
    };
    // Attribution tells the GPU reader which copy each GPU process belongs to.
    let copies = ProcessCopies::default();
    let mut sources = Sources {
        host: HostSource::start(&config)?,
        gpu: GpuSource::start(&config, copies.clone())?,
        containers: ContainerSource::start(&config, inventory.clone(), copies)?,
        // Cost per model: off (one warning) without a price.
        cost: CostSource::start(&config),
        front_door: match config.proxy.enabled {
            true => Some(FrontDoor::start(&config.proxy, inventory.clone())?),
            false => None,
        },
        scrape: ScrapeSource::start(&config, inventory)?,
        lifecycle: LifecycleSource::start(lifecycle),
        self_metrics: SelfMetricsSource::start(&config),
    };
    // What `top` shows: the last tick, served on the admin endpoint.
    let mut live = Live::new(identity.clone(), m.sample_interval_ms, config.proxy.enabled);
    let mut supervisor = Supervisor::start(&config, live.subscribe()).await;

    // Every source's reading is in by half a sampling interval after the tick.
    let collect_for = Duration::from_millis(m.sample_interval_ms / 2);
    let mut ticker = Ticker::new(system_now_ms(), m.sample_interval_ms);
    let mut closed: Vec<Encoded> = Vec::new();
    supervisor.ready();
    tokio::pin!(shutdown);
    // Set by SIGTERM while the front door drains: the loop samples and publishes on meanwhile.
    let mut drain_until: Option<Instant> = None;
    loop {
        let due = tokio::select! {
            due = ticker.tick() => due,
            _ = &mut shutdown, if drain_until.is_none() => {
                match begin_drain(sources.front_door.as_ref(), config.proxy.drain_timeout_ms) {
                    Some(until) => {
                        supervisor.draining();
                        drain_until = Some(until);
                        continue;
                    }
                    None => break,
                }
            }
            () = drained(sources.front_door.as_ref()), if drain_until.is_some() => break,
            () = sleep_until_some(drain_until) => break,
            event = supervisor.event() => {
                match event {
                    Event::Hangup => {
                        reload::apply(&config_path, &mut config, &identity, &mut windows, &mut output, &supervisor.notifier).await;
                        sources.self_metrics.reconfigure(&config);
                    }
                    Event::WatchdogDue => supervisor.feed_watchdog(),
                    Event::None => {}
                }
                continue;
            }
        };
        telemetry::warn(
            Counter::SamplesMissed,
            due.missed,
            "sample ticks missed: the agent was late",
        );
        let mut tick = Tick::new(due.wall_ms, Instant::now() + collect_for);
        sources.read(&mut tick).await;
        live.update(&tick);
        supervisor.ticked(output.queued());
        let mut series = tick.invocations;
        series.append(&mut tick.requests);
        windows.record(tick.wall_ms, tick.samples, series, &mut closed);
        publish(&output.tx, &mut closed);
    }

    let deadline = Deadline::start();
    supervisor.stopping();
    tracing::info!(
        budget_ms = deadline.left().as_millis() as u64,
        "shutting down: publishing the partial window"
    );
    if let Some(front_door) = sources.front_door.take() {
        // The drain ran above while sampling went on; what is still in flight now is cut, and
        // accounted too.
        let series = front_door.stop(Instant::now(), deadline.front_door()).await;
        windows.record(system_now_ms(), [], series, &mut closed);
    }
    windows.flush(&mut closed);
    publish(&output.tx, &mut closed);
    output.finish(deadline).await;
    tracing::info!(counters = ?telemetry::snapshot(), "stopped");
    Ok(())
}

/// On SIGTERM with the front door on: stops it accepting and lets the requests in flight finish
/// until the returned time (`proxy.drain_timeout_ms`); idle connections close at once, so with
/// none in flight the drain ends at once. None: no front door, or no drain configured.
fn begin_drain(front_door: Option<&FrontDoor>, drain_timeout_ms: u64) -> Option<Instant> {
    let front_door = front_door?;
    if drain_timeout_ms == 0 {
        return None;
    }
    front_door.begin_drain();
    tracing::info!(
        in_flight = front_door.in_flight(),
        drain_timeout_ms,
        "draining the front door: no new connections, requests in flight may finish"
    );
    Some(Instant::now() + Duration::from_millis(drain_timeout_ms))
}

/// Completes when the front door has no connection left.
async fn drained(front_door: Option<&FrontDoor>) {
    match front_door {
        Some(front_door) => front_door.drained().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Queues the closed windows for the sink; a full queue drops them, counted.
fn publish(tx: &mpsc::Sender<Encoded>, closed: &mut Vec<Encoded>) {
    for batch in closed.drain(..) {
        match tx.try_send(batch) {
            Ok(()) => telemetry::add(Counter::WindowsPublished, 1),
            Err(_) => telemetry::warn(
                Counter::WindowsDropped,
                1,
                "the sink is not keeping up; window dropped",
            ),
        }
    }
}

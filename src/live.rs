//! The live view of the last tick: what `top` shows, served read-only as JSON on the admin
//! endpoint (`GET /snapshot`).
//!
//! The agent hands each finished [`Tick`] to [`Live::update`] before the tick's samples go to the
//! publish windows; the view is built from the figures the sources already produced (no extra
//! reads) and only while someone can ask for it (the admin endpoint holds the receiver). The
//! view is bounded: at most [`MAX_GPUS`] GPU rows and [`MAX_COPIES`] copy rows, the rest counted
//! in `gpus_left_out` / `copies_left_out`, so its JSON stays under [`MAX_SNAPSHOT_BYTES`].

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::aggregate::Stats;
use crate::attribution::allocated_gpus;
use crate::catalog::{Identity, Metric, Scope};
use crate::cost::MS_PER_HOUR;
use crate::sources::Tick;

/// GPU rows kept: NVML's own device limit in the fake and the most `[cost] gpus_per_instance`
/// accepts (64); no instance type has more.
pub const MAX_GPUS: usize = 64;
/// Copy rows kept. A host runs a few dozen model copies at most (one per GPU or a few per GPU);
/// past this the view counts the rest instead of growing.
pub const MAX_COPIES: usize = 128;
/// The view's JSON stays under this: 128 copies with 1024-character component names (the
/// longest dimension value) and 64 GPUs come to about 200 KB; a test checks the worst case.
pub const MAX_SNAPSHOT_BYTES: usize = 256 * 1024;
/// The shape of the JSON; a client that expects another says so instead of misreading it.
pub const SNAPSHOT_VERSION: u32 = 1;

/// One GPU as the last tick read it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuRow {
    pub index: u32,
    /// None: NVML cannot tell (MIG).
    pub utilization_percent: Option<f64>,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    /// Read by the GPU health source when it is on (None until then).
    #[serde(default)]
    pub temperature_c: Option<f64>,
    #[serde(default)]
    pub power_w: Option<f64>,
}

/// One model copy (a container of an inference component) in the last tick.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CopyRow {
    pub component: String,
    /// The short container ID, as published in `ContainerId`.
    pub container_id: String,
    /// NVML indices of the GPUs the copy holds.
    pub gpus: Vec<u32>,
    /// Normalized to the host's CPUs and memory (the published `...Normalized` figures).
    pub cpu_percent: Option<f64>,
    pub memory_percent: Option<f64>,
    pub gpu_percent: Option<f64>,
    pub gpu_memory_percent: Option<f64>,
    /// From the front door, when it is on.
    pub requests_per_second: Option<f64>,
    pub latency_p50_us: Option<f64>,
    pub latency_p99_us: Option<f64>,
    /// The copy's part of its component's `CostPerHour` (by the GPUs it holds), when priced.
    pub cost_per_hour: Option<f64>,
}

/// The last tick, as `GET /snapshot` serves it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LiveView {
    pub version: u32,
    /// The tick's time, ms since the epoch; 0 before the first tick.
    pub tick_ms: u64,
    pub sample_interval_ms: u64,
    pub endpoint_name: String,
    pub instance_id: String,
    pub front_door: bool,
    pub gpus: Vec<GpuRow>,
    pub gpus_left_out: usize,
    pub copies: Vec<CopyRow>,
    pub copies_left_out: usize,
    /// Per hour: the price of the GPUs no copy holds, and of the GPU time no copy used.
    pub unallocated_gpu_cost_per_hour: Option<f64>,
    pub idle_gpu_cost_per_hour: Option<f64>,
}

/// The agent's side: publishes a [`LiveView`] once a tick.
pub struct Live {
    tx: watch::Sender<Arc<LiveView>>,
    identity: Identity,
    sample_interval_ms: u64,
    front_door: bool,
    last_tick_ms: Option<u64>,
}

impl Live {
    pub fn new(identity: Identity, sample_interval_ms: u64, front_door: bool) -> Live {
        let (tx, _) = watch::channel(Arc::new(LiveView::default()));
        Live {
            tx,
            identity,
            sample_interval_ms,
            front_door,
            last_tick_ms: None,
        }
    }

    /// A reader of the views (the admin endpoint).
    pub fn subscribe(&self) -> watch::Receiver<Arc<LiveView>> {
        self.tx.subscribe()
    }

    /// Publishes the view of `tick`; nothing is built while nobody can read it.
    pub fn update(&mut self, tick: &Tick) {
        let elapsed_ms = match self.last_tick_ms {
            Some(last) => tick.wall_ms.saturating_sub(last),
            None => self.sample_interval_ms,
        };
        self.last_tick_ms = Some(tick.wall_ms);
        if self.tx.receiver_count() == 0 {
            return;
        }
        let view = build(
            tick,
            &self.identity,
            self.sample_interval_ms,
            self.front_door,
            elapsed_ms,
        );
        self.tx.send_replace(Arc::new(view));
    }
}

/// The figures of one copy found among the tick's samples, by short container ID.
#[derive(Default)]
struct CopyFigures {
    cpu: Option<f64>,
    memory: Option<f64>,
    gpu: Option<f64>,
    gpu_memory: Option<f64>,
    requests: Option<f64>,
    latency: Option<Stats>,
}

/// Builds the view of one tick. `elapsed_ms`: the time since the previous tick, over which the
/// tick's requests and accrued costs were counted.
pub fn build(
    tick: &Tick,
    identity: &Identity,
    sample_interval_ms: u64,
    front_door: bool,
    elapsed_ms: u64,
) -> LiveView {
    let elapsed_ms = elapsed_ms.max(1);
    let mut copies: BTreeMap<&str, CopyFigures> = BTreeMap::new();
    let mut component_cost: BTreeMap<&str, f64> = BTreeMap::new();
    let (mut unallocated, mut idle) = (None, None);
    for s in &tick.samples {
        match (&s.key.scope, s.key.metric) {
            (Scope::Container { container_id, .. }, metric) => {
                let c = copies.entry(container_id).or_default();
                match metric {
                    Metric::CpuUtilizationNormalized => c.cpu = Some(s.value),
                    Metric::MemoryUtilizationNormalized => c.memory = Some(s.value),
                    Metric::GpuUtilizationNormalized => c.gpu = Some(s.value),
                    Metric::GpuMemoryUtilizationNormalized => c.gpu_memory = Some(s.value),
                    _ => {}
                }
            }
            (Scope::Component { component }, Metric::CostPerHour) => {
                component_cost.insert(component, s.value);
            }
            (Scope::Instance, Metric::UnallocatedGpuCostPerHour) => unallocated = Some(s.value),
            (Scope::Instance, Metric::IdleGpuCostAccrued) => {
                idle = Some(s.value * MS_PER_HOUR / elapsed_ms as f64);
            }
            _ => {}
        }
    }
    for (key, stats) in &tick.invocations {
        let Scope::CopyInvocations { container_id, .. } = &key.scope else {
            continue;
        };
        let c = copies.entry(container_id).or_default();
        match key.metric {
            Metric::Invocations => {
                c.requests = Some(stats.sum * 1000.0 / elapsed_ms as f64);
            }
            Metric::ModelLatency => c.latency = Some(stats.clone()),
            _ => {}
        }
    }
    let devices = tick.gpu.as_ref().map_or(&[][..], |r| r.devices.as_slice());
    let health = tick.gpu.as_ref().map_or(&[][..], |r| r.health.as_slice());
    let gpus: Vec<GpuRow> = devices
        .iter()
        .map(|d| {
            // Read when the temperature and power health groups are on (`[gpu] health`).
            let h = health.iter().find(|h| h.index == d.index);
            GpuRow {
                index: d.index,
                utilization_percent: d.utilization_percent,
                memory_used_bytes: d.memory_used_bytes,
                memory_total_bytes: d.memory_total_bytes,
                temperature_c: h.and_then(|h| h.temperature_c),
                power_w: h.and_then(|h| h.power_watts),
            }
        })
        .collect();
    // A copy's share of its component's cost: the GPUs it holds, each split between the copies
    // holding it (the cost model's rule).
    let held: Vec<(&str, &str, Vec<u32>)> = tick
        .inventory
        .containers
        .values()
        .map(|info| {
            let gpus = allocated_gpus(&info.gpus, devices);
            (&*info.component, &*info.short_id, gpus)
        })
        .collect();
    let mut holders: BTreeMap<u32, usize> = BTreeMap::new();
    for g in held.iter().flat_map(|h| &h.2) {
        *holders.entry(*g).or_default() += 1;
    }
    let equivalents = |gpus: &[u32]| -> f64 {
        gpus.iter()
            .map(|g| 1.0 / holders.get(g).copied().unwrap_or(1) as f64)
            .sum()
    };
    let mut component_equivalents: BTreeMap<&str, f64> = BTreeMap::new();
    for (component, _, gpus) in &held {
        *component_equivalents.entry(component).or_default() += equivalents(gpus);
    }
    let mut rows: Vec<CopyRow> = held
        .iter()
        .map(|(component, id, gpus)| {
            let f = copies.remove(id).unwrap_or_default();
            let total = component_equivalents.get(component).copied().unwrap_or(0.0);
            let cost_per_hour = component_cost.get(component).map(|c| {
                if total > 0.0 {
                    c * equivalents(gpus) / total
                } else {
                    0.0
                }
            });
            CopyRow {
                component: component.to_string(),
                container_id: id.to_string(),
                gpus: gpus.clone(),
                cpu_percent: f.cpu,
                memory_percent: f.memory,
                gpu_percent: f.gpu,
                gpu_memory_percent: f.gpu_memory,
                requests_per_second: f.requests.or(front_door.then_some(0.0)),
                latency_p50_us: f.latency.as_ref().and_then(|s| percentile(s, 0.50)),
                latency_p99_us: f.latency.as_ref().and_then(|s| percentile(s, 0.99)),
                cost_per_hour,
            }
        })
        .collect();
    rows.sort_by(|a, b| (&a.component, &a.container_id).cmp(&(&b.component, &b.container_id)));
    let (gpus, gpus_left_out) = bounded(gpus, MAX_GPUS);
    let (copies, copies_left_out) = bounded(rows, MAX_COPIES);
    LiveView {
        version: SNAPSHOT_VERSION,
        tick_ms: tick.wall_ms,
        sample_interval_ms,
        endpoint_name: identity.endpoint_name.clone(),
        instance_id: identity.instance_id.clone(),
        front_door,
        gpus,
        gpus_left_out,
        copies,
        copies_left_out,
        unallocated_gpu_cost_per_hour: unallocated,
        idle_gpu_cost_per_hour: idle,
    }
}

fn bounded<T>(mut rows: Vec<T>, max: usize) -> (Vec<T>, usize) {
    let left_out = rows.len().saturating_sub(max);
    rows.truncate(max);
    (rows, left_out)
}

/// The `q` quantile (0..1) of a distribution: the smallest value with at least `q` of the
/// requests at or below it (CloudWatch's pNN over the same values). None without requests.
pub fn percentile(stats: &Stats, q: f64) -> Option<f64> {
    // `Stats::distribution` is in ascending order.
    let values = &stats.distribution;
    let total: u64 = values.iter().map(|v| u64::from(v.1)).sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0u64;
    for &(value, n) in values {
        seen += u64::from(n);
        if seen >= rank {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Sample, SeriesKey};
    use crate::collectors::gpu::{GpuDevice, GpuReading};
    use crate::discovery::{ContainerInfo, GpuAllocation, Inventory};
    use tokio::time::Instant;

    fn identity() -> Identity {
        Identity {
            endpoint_name: "ep".into(),
            variant_name: "AllTraffic".into(),
            instance_id: "i-1".into(),
        }
    }

    fn copy(id: &str, component: &str, gpus: GpuAllocation) -> (String, ContainerInfo) {
        let info = ContainerInfo {
            id: id.to_string(),
            short_id: id[..12].into(),
            component: component.into(),
            pid: 0,
            cpu_limit_cores: None,
            memory_reservation_bytes: None,
            memory_limit_bytes: None,
            gpus,
            address: None,
            upstream_port: None,
            scrape: Default::default(),
            health_check: false,
        };
        (id.to_string(), info)
    }

    fn device(index: u32, util: f64) -> GpuDevice {
        GpuDevice {
            index,
            uuid: format!("GPU-{index}"),
            utilization_percent: Some(util),
            memory_used_bytes: u64::from(index + 1) << 30,
            memory_total_bytes: 80 << 30,
            process_utilization: Default::default(),
        }
    }

    fn tick() -> Tick {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let mut tick = Tick::new(10_000, Instant::now());
        tick.inventory = Arc::new(Inventory {
            containers: [
                copy(
                    &a,
                    "model-a",
                    GpuAllocation::Devices(vec!["0".into(), "1".into()]),
                ),
                copy(&b, "model-a", GpuAllocation::Devices(vec!["1".into()])),
            ]
            .into_iter()
            .collect(),
        });
        tick.gpu = Some(GpuReading {
            health: Vec::new(),
            devices: vec![device(0, 60.0), device(1, 30.0)],
            processes: Vec::new(),
        });
        let container = |id: &str| Scope::Container {
            component: "model-a".into(),
            container_id: id[..12].into(),
        };
        tick.samples = vec![
            Sample::new(container(&a), Metric::CpuUtilizationNormalized, 12.5),
            Sample::new(container(&a), Metric::GpuUtilizationNormalized, 40.0),
            Sample::new(
                Scope::Component {
                    component: "model-a".into(),
                },
                Metric::CostPerHour,
                3.0,
            ),
            Sample::new(Scope::Instance, Metric::UnallocatedGpuCostPerHour, 0.0),
            // $0.01 over 2 s: $18 per hour.
            Sample::new(Scope::Instance, Metric::IdleGpuCostAccrued, 0.01),
        ];
        let copy_scope = Scope::CopyInvocations {
            component: "model-a".into(),
            container_id: a[..12].into(),
        };
        let mut latency = Stats::new(1000.0);
        for v in [2000.0, 3000.0, 4000.0] {
            latency.record(v);
        }
        let mut requests = Stats::new(1.0);
        for _ in 0..3 {
            requests.record(1.0);
        }
        tick.invocations = vec![
            (
                SeriesKey {
                    scope: copy_scope.clone(),
                    metric: Metric::Invocations,
                },
                requests,
            ),
            (
                SeriesKey {
                    scope: copy_scope,
                    metric: Metric::ModelLatency,
                },
                latency,
            ),
        ];
        tick
    }

    #[test]
    fn a_tick_becomes_rows_per_gpu_and_per_copy() {
        let view = build(&tick(), &identity(), 1000, true, 2000);
        assert_eq!(view.version, SNAPSHOT_VERSION);
        assert_eq!(view.gpus.len(), 2);
        assert_eq!(view.gpus[1].utilization_percent, Some(30.0));
        assert_eq!(view.copies.len(), 2);
        let a = &view.copies[0];
        assert_eq!(a.container_id, "aaaaaaaaaaaa");
        assert_eq!(a.gpus, [0, 1]);
        assert_eq!(a.cpu_percent, Some(12.5));
        assert_eq!(a.gpu_percent, Some(40.0));
        assert_eq!(a.requests_per_second, Some(2.0), "4 requests over 2 s");
        assert_eq!(a.latency_p50_us, Some(2000.0));
        assert_eq!(a.latency_p99_us, Some(4000.0));
        // GPU 1 is split between the copies: a holds 1.5 GPU-equivalents of 2, b 0.5.
        assert_eq!(a.cost_per_hour, Some(2.25));
        let b = &view.copies[1];
        assert_eq!(b.cost_per_hour, Some(0.75));
        assert_eq!(
            b.requests_per_second,
            Some(0.0),
            "front door on, no request"
        );
        assert_eq!(b.latency_p99_us, None);
        assert_eq!(view.idle_gpu_cost_per_hour, Some(18.0));
        assert_eq!(view.unallocated_gpu_cost_per_hour, Some(0.0));
    }

    #[test]
    fn the_worst_case_view_stays_under_its_byte_bound() {
        let mut tick = tick();
        tick.gpu = Some(GpuReading {
            health: Vec::new(),
            devices: (0..100).map(|i| device(i, 99.123_456_789)).collect(),
            processes: Vec::new(),
        });
        let name = "m".repeat(crate::encode::limits::MAX_DIMENSION_VALUE_CHARS);
        tick.inventory = Arc::new(Inventory {
            containers: (0..500)
                .map(|i| copy(&format!("{i:064x}"), &name, GpuAllocation::All))
                .collect(),
        });
        let mut view = build(&tick, &identity(), 1000, true, 1000);
        assert_eq!((view.gpus.len(), view.gpus_left_out), (MAX_GPUS, 36));
        assert_eq!((view.copies.len(), view.copies_left_out), (MAX_COPIES, 372));
        for c in &mut view.copies {
            c.cpu_percent = Some(99.123_456_789_012);
            c.memory_percent = c.cpu_percent;
            c.gpu_percent = c.cpu_percent;
            c.gpu_memory_percent = c.cpu_percent;
            c.latency_p50_us = Some(123_456.789_012_345);
            c.latency_p99_us = c.latency_p50_us;
        }
        let bytes = serde_json::to_vec(&view).unwrap().len();
        assert!(bytes < MAX_SNAPSHOT_BYTES, "{bytes}");
    }

    #[test]
    fn percentiles_follow_the_rank_of_each_request() {
        let mut s = Stats::new(10.0);
        s.record(20.0);
        assert_eq!(percentile(&s, 0.5), Some(10.0));
        assert_eq!(percentile(&s, 0.99), Some(20.0));
        s.distribution.clear();
        assert_eq!(percentile(&s, 0.5), None);
    }

    #[test]
    fn nothing_is_built_without_a_reader() {
        let mut live = Live::new(identity(), 1000, false);
        live.update(&tick());
        let rx = live.subscribe();
        assert_eq!(rx.borrow().tick_ms, 0);
        live.update(&tick());
        assert_eq!(rx.borrow().tick_ms, 10_000);
    }
}

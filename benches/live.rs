//! What `top`'s view costs the sampling loop once a tick (`live::build`, run while the admin
//! endpoint is on) and what one `GET /snapshot` costs to encode: 8 GPUs, 16 copies of 8
//! components, each copy's four utilization figures, the cost samples, and 100 requests per copy
//! through the front door this tick.
//!
//! cargo bench --bench live
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "benchmark code: a failed step stops it with its message (Cargo.toml [lints] is for the agent)"
)]

use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use endpoint_metrics_agent::aggregate::Stats;
use endpoint_metrics_agent::catalog::{Identity, Metric, Sample, Scope, SeriesKey};
use endpoint_metrics_agent::collectors::gpu::{GpuDevice, GpuReading};
use endpoint_metrics_agent::config::Config;
use endpoint_metrics_agent::cost::{instance_price, CostModel, GpuUse};
use endpoint_metrics_agent::discovery::{ContainerInfo, GpuAllocation, Inventory};
use endpoint_metrics_agent::live;
use endpoint_metrics_agent::sources::Tick;

const GPUS: u32 = 8;
const COPIES: u32 = 16;
const REQUESTS: u32 = 100;

fn tick() -> Tick {
    let config = Config::parse(
        "[endpoint]\nname = \"e\"\ninstance_type = \"ml.g5.48xlarge\"\n",
        Path::new("bench.toml"),
    )
    .unwrap();
    let devices: Vec<GpuDevice> = (0..GPUS)
        .map(|index| GpuDevice {
            index,
            uuid: format!("GPU-{index}"),
            utilization_percent: Some(50.0),
            memory_used_bytes: 1 << 30,
            memory_total_bytes: 24 << 30,
            process_utilization: Default::default(),
        })
        .collect();
    let mut tick = Tick::new(1_700_000_000_000, tokio::time::Instant::now());
    let mut inventory = Inventory::default();
    let mut gpu_use = GpuUse::new();
    for copy in 0..COPIES {
        let id = format!("{copy:02x}{}", "a".repeat(62));
        let gpu = copy % GPUS;
        gpu_use.insert((id.clone(), gpu), 20.0);
        let component: Arc<str> = Arc::from(format!("component-{}", copy / 2).as_str());
        let short: Arc<str> = Arc::from(&id[..12]);
        let scope = Scope::Container {
            component: component.clone(),
            container_id: short.clone(),
        };
        for metric in [
            Metric::CpuUtilizationNormalized,
            Metric::MemoryUtilizationNormalized,
            Metric::GpuUtilizationNormalized,
            Metric::GpuMemoryUtilizationNormalized,
        ] {
            tick.samples.push(Sample::new(scope.clone(), metric, 12.5));
        }
        let copy_scope = Scope::CopyInvocations {
            component: component.clone(),
            container_id: short.clone(),
        };
        let mut latency = Stats::new(1000.0);
        let mut requests = Stats::new(1.0);
        for i in 1..REQUESTS {
            latency.record(1000.0 + f64::from(i) * 37.0);
            requests.record(1.0);
        }
        for (metric, stats) in [
            (Metric::Invocations, requests),
            (Metric::ModelLatency, latency),
        ] {
            let key = SeriesKey {
                scope: copy_scope.clone(),
                metric,
            };
            tick.invocations.push((key, stats));
        }
        inventory.containers.insert(
            id.clone(),
            ContainerInfo {
                short_id: short,
                id,
                component,
                pid: 1,
                cpu_limit_cores: None,
                memory_reservation_bytes: None,
                memory_limit_bytes: None,
                gpus: GpuAllocation::Devices(vec![gpu.to_string()]),
                address: None,
                upstream_port: None,
                scrape: Default::default(),
                health_check: false,
            },
        );
    }
    let mut model = CostModel::new(instance_price(&config).unwrap(), 1000);
    model.tick(
        1000,
        Some(&devices),
        &inventory,
        &gpu_use,
        &mut tick.samples,
    );
    tick.inventory = Arc::new(inventory);
    tick.gpu = Some(GpuReading {
        health: Vec::new(),
        devices,
        processes: Vec::new(),
    });
    tick
}

fn bench(c: &mut Criterion) {
    let tick = tick();
    let identity = Identity {
        endpoint_name: "e".into(),
        variant_name: "AllTraffic".into(),
        instance_id: "i-0123456789abcdef0".into(),
    };
    c.bench_function("live view of a tick: 8 GPUs, 16 copies", |b| {
        b.iter(|| {
            let view = live::build(&tick, &identity, 1000, true, 1000);
            assert_eq!(view.copies.len(), COPIES as usize);
            view
        })
    });
    let view = live::build(&tick, &identity, 1000, true, 1000);
    assert!(
        view.copies.iter().all(|c| c.latency_p99_us.is_some()),
        "{:?}",
        view.copies
    );
    let bytes = serde_json::to_vec(&view).unwrap().len();
    println!("snapshot JSON: {bytes} bytes");
    c.bench_function("GET /snapshot body: 8 GPUs, 16 copies", |b| {
        b.iter(|| serde_json::to_vec(&view).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

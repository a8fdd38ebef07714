//! One cost tick (`CostModel::tick`): 8 GPUs, 16 model copies of 8 components (each GPU shared
//! by two copies, given by index or UUID), measured use on every GPU, samples out.
//!
//! cargo bench --bench cost
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
use endpoint_metrics_agent::collectors::gpu::GpuDevice;
use endpoint_metrics_agent::config::Config;
use endpoint_metrics_agent::cost::{instance_price, CostModel, GpuUse};
use endpoint_metrics_agent::discovery::{ContainerInfo, GpuAllocation, Inventory};

const GPUS: u32 = 8;
const COPIES: u32 = 16;

fn bench(c: &mut Criterion) {
    let config = Config::parse(
        "[endpoint]\nname = \"e\"\ninstance_type = \"ml.g5.48xlarge\"\n",
        Path::new("bench.toml"),
    )
    .unwrap();
    let devices: Vec<GpuDevice> = (0..GPUS)
        .map(|index| GpuDevice {
            index,
            uuid: format!("GPU-{index:08x}-0000-0000-0000-000000000000"),
            utilization_percent: Some(50.0),
            memory_used_bytes: 1 << 30,
            memory_total_bytes: 24 << 30,
            process_utilization: Default::default(),
        })
        .collect();
    let mut inventory = Inventory::default();
    let mut gpu_use = GpuUse::new();
    for copy in 0..COPIES {
        let id = format!("{copy:064x}");
        let gpu = copy % GPUS;
        let gpus = if copy % 2 == 0 {
            GpuAllocation::Devices(vec![gpu.to_string()])
        } else {
            GpuAllocation::Devices(vec![devices[gpu as usize].uuid.clone()])
        };
        gpu_use.insert((id.clone(), gpu), 20.0);
        inventory.containers.insert(
            id.clone(),
            ContainerInfo {
                short_id: Arc::from(&id[..12]),
                id,
                component: Arc::from(format!("component-{}", copy / 2).as_str()),
                pid: 1,
                cpu_limit_cores: None,
                memory_reservation_bytes: None,
                memory_limit_bytes: None,
                gpus,
                address: None,
                upstream_port: None,
                scrape: Default::default(),
                health_check: false,
            },
        );
    }
    let mut model = CostModel::new(instance_price(&config).unwrap(), 1000);
    let mut tick_ms = 0;
    let mut out = Vec::with_capacity(64);
    c.bench_function("cost tick: 8 GPUs, 16 copies, 8 components", |b| {
        b.iter(|| {
            tick_ms += 1000;
            out.clear();
            model.tick(tick_ms, Some(&devices), &inventory, &gpu_use, &mut out);
            assert_eq!(out.len(), 8 * 4 + 3);
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

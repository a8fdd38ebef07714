//! One GPU sample (every device, its processes and their SM utilization) through nvml-wrapper:
//! 8 GPUs with 16 processes over the fake driver library, with and without process enumeration,
//! to decide how often processes are listed; and the same 8 GPUs with every health group on
//! (`[gpu] health`, issue 17), with the slow group read at every sample (its worst case) and on
//! its cadence. With EMA_REAL_NVML=1 the same two are measured over
//! the real driver (EMA_NVML_LIBRARY, default libnvidia-ml.so.1).
//!
//! cargo bench --bench gpu
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "benchmark code: a failed step stops it with its message (Cargo.toml [lints] is for the agent)"
)]

#[path = "../tests/common/fake_nvml.rs"]
mod fake_nvml;

use criterion::{criterion_group, criterion_main, Criterion};
use endpoint_metrics_agent::clock::system_now_ms;
use endpoint_metrics_agent::collectors::gpu::{GpuOptions, NvmlCollector};
use endpoint_metrics_agent::config::GpuHealthGroup;

const GPUS: u32 = 8;
const PROCESSES: u32 = 16;

/// 8 GPUs, 16 compute processes spread over them (2 each) with an SM sample each, and one
/// graphics process on GPU 0.
fn script() -> String {
    let mut s = fake_nvml::devices(GPUS);
    for p in 0..PROCESSES {
        let pid = 10_000 + p;
        s += &format!("process {} compute {pid} {}\n", p % GPUS, 1u64 << 30);
        s += &format!("sample {} {pid} {}\n", p % GPUS, 5 + p);
    }
    s += "process 0 graphics 20000 4096\n";
    s
}

/// Every health figure scripted on every GPU: temperatures, power, energy, clocks, a clock event
/// mask, the memory temperature and ECC fields (row remapping), GPM.
fn health_script() -> String {
    let mut s = script();
    for i in 0..GPUS {
        s += &format!(
            "device {i} uuid=GPU-test-{i} util={} mem_util=30 mem_used={} mem_total={} temp=60 \
             power_mw=400000 limit_mw=700000 energy_mj=1000000 energy_step_mj=400 \
             sm_clock=1980 mem_clock=2619 reasons=0x4\n\
             field {i} 82 70\nfield {i} 3 1\nfield {i} 4 0\nfield {i} 142 0\nfield {i} 143 0\n\
             field {i} 144 0\nfield {i} 145 0\nfield {i} 94 0\ngpm {i} sm=50 dram=30\n",
            10 + i,
            (2u64 << 30) * u64::from(i + 1),
            80u64 << 30
        );
    }
    s
}

fn sample(c: &mut Criterion, name: &str, library: &str, enumerate: bool) {
    let mut options = GpuOptions::new(library, 1000);
    // Every sample lists processes, or only the first one does.
    options.process_min_interval_ms = if enumerate { 0 } else { u64::MAX };
    measure(c, name, options);
}

/// Every health group on, processes listed only once; the slow group at every sample or on
/// its default cadence.
fn health_sample(c: &mut Criterion, name: &str, library: &str, slow_every_sample: bool) {
    let mut options = GpuOptions::new(library, 1000);
    options.process_min_interval_ms = u64::MAX;
    options.health = GpuHealthGroup::ALL.to_vec();
    if slow_every_sample {
        options.health_slow_interval_ms = 0;
    }
    measure(c, name, options);
}

fn measure(c: &mut Criterion, name: &str, options: GpuOptions) {
    let mut collector = NvmlCollector::new(options);
    let first = collector.read(system_now_ms());
    assert!(
        collector.is_initialised(),
        "{name}: NVML did not initialise"
    );
    eprintln!(
        "{name}: {} GPUs, {} processes, {} with health figures",
        first.devices.len(),
        first.processes.len(),
        first.health.len()
    );
    c.bench_function(name, |b| {
        b.iter(|| collector.read(system_now_ms()));
    });
}

fn benches(c: &mut Criterion) {
    let fake = fake_nvml::FakeNvml::new();
    fake.script(&script());
    let library = fake.library_str();
    sample(c, "gpu_sample_8_gpus_16_processes", &library, true);
    sample(c, "gpu_sample_8_gpus_without_processes", &library, false);
    let health = fake_nvml::FakeNvml::new();
    health.script(&health_script());
    let health = health.library_str();
    health_sample(c, "gpu_sample_8_gpus_every_health_group", &health, false);
    health_sample(
        c,
        "gpu_sample_8_gpus_every_health_group_slow_reads_each_sample",
        &health,
        true,
    );
    if std::env::var("EMA_REAL_NVML").as_deref() == Ok("1") {
        let real = std::env::var("EMA_NVML_LIBRARY").unwrap_or_else(|_| "libnvidia-ml.so.1".into());
        sample(c, "real_gpu_sample_with_processes", &real, true);
        sample(c, "real_gpu_sample_without_processes", &real, false);
        health_sample(c, "real_gpu_sample_every_health_group", &real, false);
        health_sample(
            c,
            "real_gpu_sample_every_health_group_slow_reads",
            &real,
            true,
        );
    }
}

criterion_group!(gpu, benches);
criterion_main!(gpu);

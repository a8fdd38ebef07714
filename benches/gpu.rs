//! One GPU sample (every device, its processes and their SM utilization) through nvml-wrapper:
//! 8 GPUs with 16 processes over the fake driver library, with and without process enumeration,
//! to decide how often processes are listed. With EMA_REAL_NVML=1 the same two are measured over
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

fn sample(c: &mut Criterion, name: &str, library: &str, enumerate: bool) {
    let mut options = GpuOptions::new(library, 1000);
    // Every sample lists processes, or only the first one does.
    options.process_min_interval_ms = if enumerate { 0 } else { u64::MAX };
    let mut collector = NvmlCollector::new(options);
    let first = collector.read(system_now_ms());
    assert!(
        collector.is_initialised(),
        "{name}: NVML did not initialise"
    );
    eprintln!(
        "{name}: {} GPUs, {} processes",
        first.devices.len(),
        first.processes.len()
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
    if std::env::var("EMA_REAL_NVML").as_deref() == Ok("1") {
        let real = std::env::var("EMA_NVML_LIBRARY").unwrap_or_else(|_| "libnvidia-ml.so.1".into());
        sample(c, "real_gpu_sample_with_processes", &real, true);
        sample(c, "real_gpu_sample_without_processes", &real, false);
    }
}

criterion_group!(gpu, benches);
criterion_main!(gpu);

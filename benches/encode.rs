//! Encoding a window of 2,000 series to EMF and to OTLP (protobuf + gzip), and recording one
//! sample per series: the aggregator's and encoders' hot paths.
//! Run: cargo bench --bench encode
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "benchmark code: a failed step stops it with its message (Cargo.toml [lints] is for the agent)"
)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use endpoint_metrics_agent::aggregate::{Aggregator, Window};
use endpoint_metrics_agent::catalog::{Identity, Metric, Sample, Scope};
use endpoint_metrics_agent::encode::limits::EMF_MAX_DOCUMENT_BYTES;
use endpoint_metrics_agent::encode::{emf, groups, otlp, EncodeContext};

const SERIES: usize = 2000;
const SAMPLES_PER_WINDOW: usize = 60;
const METRICS: [Metric; 4] = [
    Metric::CpuUtilizationNormalized,
    Metric::MemoryUtilizationNormalized,
    Metric::GpuUtilizationNormalized,
    Metric::GpuMemoryUtilizationNormalized,
];

fn context() -> EncodeContext {
    EncodeContext {
        identity: Identity {
            endpoint_name: "bench".into(),
            variant_name: "AllTraffic".into(),
            instance_id: "i-0123456789abcdef0".into(),
        },
        enhanced: true,
        endpoints_namespace: "/aws/sagemaker/Endpoints".into(),
        components_namespace: "/aws/sagemaker/InferenceComponents".into(),
        self_metrics_namespace: "EndpointMetricsAgent".into(),
        invocations_namespace: "/aws/sagemaker/Invocations".into(),
        gpu_dimension_name: "GpuId".into(),
        storage_resolution: 60,
        log_group: None,
        instance_type: None,
    }
}

/// 500 containers x 4 metrics = 2,000 series, each with a 60-sample window of varied values.
fn samples(tick: usize) -> impl Iterator<Item = Sample> {
    (0..SERIES / METRICS.len()).flat_map(move |c| {
        METRICS.iter().map(move |&metric| {
            let scope = Scope::Container {
                component: format!("model-{}", c % 20).into(),
                container_id: format!("{c:012x}").into(),
            };
            Sample::new(scope, metric, ((c * 7 + tick * 13) % 1000) as f64 / 10.0)
        })
    })
}

fn window() -> Window {
    let mut agg = Aggregator::new(endpoint_metrics_agent::aggregate::DataPoints::EverySample);
    for tick in 0..SAMPLES_PER_WINDOW {
        for s in samples(tick) {
            agg.record(s).unwrap();
        }
    }
    agg.flush(1_700_000_000_000, 60)
}

fn bench(c: &mut Criterion) {
    let ctx = context();
    let w = window();
    c.bench_function("encode_emf_window_2000_series_60_samples", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            let report = emf::encode(
                &groups(black_box(&w), &ctx),
                w.start_ms,
                60,
                None,
                EMF_MAX_DOCUMENT_BYTES,
                &mut out,
            );
            assert!(report.is_clean());
            out
        })
    });
    let resource = otlp::resource(&ctx, Some("ml.g5.48xlarge"));
    c.bench_function("encode_otlp_window_2000_series_60_samples", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            let report = otlp::encode(black_box(&w), &ctx, &resource, &mut out);
            assert_eq!(report.points_skipped, 0);
            out
        })
    });
    let tick: Vec<Sample> = samples(0).collect();
    c.bench_function("record_one_tick_2000_series", |b| {
        let mut agg = Aggregator::new(endpoint_metrics_agent::aggregate::DataPoints::EverySample);
        for t in 0..SAMPLES_PER_WINDOW {
            for s in samples(t) {
                agg.record(s).unwrap();
            }
        }
        b.iter(|| {
            for s in &tick {
                agg.record(black_box(s.clone())).unwrap();
            }
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

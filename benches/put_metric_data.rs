//! PutMetricData encoding of the largest window of an 8-GPU host with 4 model copies
//! (enhanced metrics, 60 s window sampled every second), and the spool write of its requests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "benchmark code: a failed step stops it with its message (Cargo.toml [lints] is for the agent)"
)]

use std::path::Path;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use endpoint_metrics_agent::catalog::{storage_resolution, Identity};
use endpoint_metrics_agent::config::Config;
use endpoint_metrics_agent::encode::{groups, put_metric_data, EncodeContext};
use endpoint_metrics_agent::plan::{full_window, HostShape};

fn bench(c: &mut Criterion) {
    let config = Config::parse(
        "[endpoint]\nname = \"bench\"\ninstance_id = \"i-0123456789abcdef0\"\n[metrics]\nenhanced = true\n",
        Path::new("bench.toml"),
    )
    .expect("valid");
    let shape = HostShape {
        gpus: 8,
        containers: 4,
        components: 2,
    };
    let window = full_window(&config, &shape);
    let ctx = EncodeContext {
        identity: Identity {
            endpoint_name: "bench".into(),
            variant_name: "AllTraffic".into(),
            instance_id: "i-0123456789abcdef0".into(),
        },
        enhanced: true,
        endpoints_namespace: config.metrics.endpoints_namespace.clone(),
        components_namespace: config.metrics.components_namespace.clone(),
        self_metrics_namespace: "EndpointMetricsAgent".into(),
        invocations_namespace: "/aws/sagemaker/Invocations".into(),
        gpu_dimension_name: "GpuId".into(),
        storage_resolution: storage_resolution(60),
        log_group: None,
        instance_type: None,
    };
    c.bench_function("put_metric_data_8gpu_window", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            put_metric_data::encode(
                &groups(black_box(&window), &ctx),
                window.start_ms,
                ctx.storage_resolution,
                &mut out,
            );
            out
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

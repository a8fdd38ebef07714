//! Reading one scrape of a large real-size exposition: vLLM V1 with 8 engines (data parallel),
//! 130 KB and about 1,100 samples, written by `prometheus_client` with vLLM's own definitions
//! (tests/fixtures/scrape/vllm-v1-8-engines.txt, scripts/scrape-fixtures.py).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "benchmark code: a failed step stops it with its message (Cargo.toml [lints] is for the agent)"
)]

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use endpoint_metrics_agent::scrape::parse::parse;
use endpoint_metrics_agent::scrape::Tracker;

fn bench(c: &mut Criterion) {
    let body = include_str!("../tests/fixtures/scrape/vllm-v1-8-engines.txt");
    c.bench_function("parse vllm 8 engines (130 KB)", |b| {
        b.iter(|| parse(black_box(body)).unwrap().0.len())
    });
    let (lines, _) = parse(body).unwrap();
    let mut tracker = Tracker::default();
    let mut at = Instant::now();
    tracker.update(&lines, at);
    c.bench_function("map vllm 8 engines (rates, histogram deltas)", |b| {
        b.iter(|| {
            at += Duration::from_secs(10);
            tracker.update(black_box(&lines), at).values.len()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

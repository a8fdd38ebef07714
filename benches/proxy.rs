//! Run: cargo bench --bench proxy
//! The front door's per-request accounting: one start and one finish (two short lock holds, a
//! few increments, two latency buckets), and a tick's drain after 10,000 requests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "benchmark code: a failed step stops it with its message (Cargo.toml [lints] is for the agent)"
)]

use criterion::{criterion_group, criterion_main, Criterion};
use endpoint_metrics_agent::proxy::account::{Accounts, CopyKey, Outcome};

fn bench(c: &mut Criterion) {
    let accounts = Accounts::new(1);
    let copy = CopyKey {
        component: "model-a".into(),
        container_id: "0123456789ab".into(),
    };
    let mut i = 0u32;
    c.bench_function("account one request (start + finish)", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            accounts.start(Some(&copy));
            accounts.finish(
                Some(&copy),
                &Outcome {
                    status: 200,
                    model_error: false,
                    model_us: Some(100.0 + f64::from(i % 1000)),
                    total_us: 130.0 + f64::from(i % 1000),
                },
            );
        })
    });
    accounts.drain(|_| 1);
    c.bench_function("drain a tick of 10,000 requests", |b| {
        b.iter_batched(
            || {
                for i in 0..10_000u32 {
                    accounts.start(Some(&copy));
                    accounts.finish(
                        Some(&copy),
                        &Outcome {
                            status: 200,
                            model_error: false,
                            model_us: Some(50.0 + f64::from(i % 5000)),
                            total_us: 80.0 + f64::from(i % 5000),
                        },
                    );
                }
            },
            |()| accounts.drain(|_| 1),
            criterion::BatchSize::PerIteration,
        )
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Run: cargo bench --bench proxy
//! The front door's per-request accounting: one start and one finish (two short lock holds, a
//! few increments, two latency buckets), and a tick's drain after 10,000 requests.
//!
//! The copy side's HTTP/1.1 codec (`proxy::client`): a small answer's head and body, as nginx
//! and most model servers send one, and a streamed chunked answer of 64 tokens. The client side's
//! (`proxy::server`): a request head as wrk sends one and as a model's client sends one, and an
//! answer head written for the client.
//!
//! And the EMF a 10 s window of invocation series takes at 1, 1,000 and 50,000 requests/s
//! (printed, and checked against `EMF_MAX_VALUES_PER_SERIES`): the time measured is encoding
//! that window; the bytes are what matters.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "benchmark code: a failed step stops it with its message (Cargo.toml [lints] is for the agent)"
)]

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use endpoint_metrics_agent::aggregate::{Aggregator, Window};
use endpoint_metrics_agent::catalog::Identity;
use endpoint_metrics_agent::encode::limits::{EMF_MAX_DOCUMENT_BYTES, EMF_MAX_VALUES_PER_SERIES};
use endpoint_metrics_agent::encode::{emf, groups, EncodeContext};
use endpoint_metrics_agent::proxy::account::{
    Accounts, CopyKey, FirstChunk, Outcome, StreamOutcome,
};
use endpoint_metrics_agent::proxy::client::{read_whole_answer, NameCache};
use endpoint_metrics_agent::proxy::server::{parse_request, write_answer_head};

fn outcome(i: u32) -> Outcome {
    let model_us = 800.0 + f64::from(i % 997) * 37.0;
    // 1 in 10 streamed; 1 in 100 a 500, 1 in 200 a 404.
    let stream = (i % 10 == 0).then_some(StreamOutcome {
        first_chunk: Some(FirstChunk {
            total_us: model_us / 4.0 + 60.0,
            model_us: model_us / 4.0,
        }),
        broke_mid_stream: i % 1000 == 0,
    });
    let status = if i % 100 == 0 {
        500
    } else if i % 200 == 1 {
        404
    } else {
        200
    };
    Outcome {
        status,
        model_error: status != 200,
        model_us,
        total_us: model_us + 40.0 + f64::from(i % 13),
        stream,
    }
}

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
        storage_resolution: 1,
        log_group: None,
        instance_type: None,
    }
}

/// A 10 s window of `rate` requests/s to one component's two copies, drained every second as
/// the sampling loop does.
fn window(rate: u32) -> Window {
    let accounts = Accounts::new(1);
    let copies = [
        CopyKey {
            component: "model-a".into(),
            container_id: "0123456789ab".into(),
        },
        CopyKey {
            component: "model-a".into(),
            container_id: "ba9876543210".into(),
        },
    ];
    let listed = [(Arc::from("model-a"), 2)];
    let mut aggregator = Aggregator::new(endpoint_metrics_agent::aggregate::DataPoints::Period);
    let mut i = 0u32;
    for second in 1..=10u64 {
        for _ in 0..rate {
            let copy = &copies[(i % 2) as usize];
            accounts.start(copy);
            accounts.finish(copy, Some(&outcome(i)));
            i = i.wrapping_add(1);
        }
        for (key, stats) in accounts.drain(second * 1000, &listed, false) {
            aggregator.merge(key, &stats).unwrap();
        }
    }
    aggregator.flush(0, 10)
}

fn encode(w: &Window, ctx: &EncodeContext) -> Vec<String> {
    let mut out = Vec::new();
    let report = emf::encode(
        &groups(w, ctx),
        w.start_ms,
        1,
        None,
        EMF_MAX_DOCUMENT_BYTES,
        &mut out,
    );
    assert!(report.is_clean());
    out
}

fn codec(c: &mut Criterion) {
    let small: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 01 Dec 2026 02:00:00 GMT\r\n\
        Content-Type: application/octet-stream\r\nContent-Length: 6\r\nConnection: keep-alive\r\n\r\nhello\n";
    let mut streamed =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec();
    for i in 0..64 {
        let data = format!("data: {{\"token\": {i}, \"text\": \"word\"}}\n\n");
        streamed.extend_from_slice(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes());
    }
    streamed.extend_from_slice(b"0\r\n\r\n");
    for (name, wire) in [
        ("read a small answer (6 headers, 6-byte body)", small),
        ("read a streamed answer (64 chunks)", &streamed[..]),
    ] {
        let mut buf = bytes::BytesMut::with_capacity(wire.len());
        // One connection's cache of header names, as the front door keeps it.
        let mut names = NameCache::default();
        c.bench_function(name, |b| {
            b.iter(|| {
                buf.clear();
                buf.extend_from_slice(wire);
                let (head, body) = read_whole_answer(&mut buf, &mut names).unwrap();
                assert!(head.status.is_success() && body > 0);
            })
        });
    }
}

fn server_codec(c: &mut Criterion) {
    let wrk: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:18183\r\n\r\n";
    let model: &[u8] = b"POST /invocations HTTP/1.1\r\nHost: model.local:8080\r\nUser-Agent: python-requests/2.32\r\n\
        Accept: */*\r\nContent-Type: application/json\r\nContent-Length: 42\r\n\
        X-Amzn-SageMaker-Inference-Component: llama-8b\r\n\r\n";
    for (name, wire) in [
        ("read a request head (wrk's GET, 1 header)", wrk),
        ("read a request head (a model's POST, 6 headers)", model),
    ] {
        let mut buf = bytes::BytesMut::with_capacity(wire.len());
        // One connection's cache of header names, as the front door keeps it.
        let mut names = NameCache::default();
        c.bench_function(name, |b| {
            b.iter(|| {
                buf.clear();
                buf.extend_from_slice(wire);
                let head = parse_request(&mut buf, &mut names).unwrap().unwrap();
                assert!(!head.parts.headers.is_empty());
                head
            })
        });
    }
    let mut answer = http::Response::new(());
    for (name, value) in [
        ("server", "nginx/1.22.1"),
        ("date", "Tue, 01 Dec 2026 02:00:00 GMT"),
        ("content-type", "application/octet-stream"),
    ] {
        answer
            .headers_mut()
            .insert(name, http::HeaderValue::from_static(value));
    }
    let (answer, ()) = answer.into_parts();
    let mut out = Vec::with_capacity(256);
    c.bench_function("write an answer head (3 headers, a length)", |b| {
        b.iter(|| {
            out.clear();
            write_answer_head(&mut out, &answer, Some(6));
            assert!(out.ends_with(b"\r\n\r\n"));
        })
    });
}

fn bench(c: &mut Criterion) {
    let accounts = Accounts::new(1);
    let copy = CopyKey {
        component: "model-a".into(),
        container_id: "0123456789ab".into(),
    };
    let listed = [(Arc::from("model-a"), 1)];
    let mut i = 0u32;
    c.bench_function("account one request (start + finish)", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            accounts.start(&copy);
            accounts.finish(&copy, Some(&outcome(i)));
        })
    });
    accounts.drain(1_000, &listed, false);
    c.bench_function("drain a tick of 10,000 requests", |b| {
        b.iter_batched(
            || {
                for i in 0..10_000u32 {
                    accounts.start(&copy);
                    accounts.finish(&copy, Some(&outcome(i)));
                }
            },
            |()| accounts.drain(2_000, &listed, false),
            criterion::BatchSize::PerIteration,
        )
    });

    let ctx = context();
    for rate in [1u32, 1_000, 50_000] {
        let w = window(rate);
        let docs = encode(&w, &ctx);
        let bytes: usize = docs.iter().map(|d| d.len() + 1).sum();
        let most_values = w
            .series
            .iter()
            .map(|(_, s)| {
                emf::window_values(&s.distribution, EMF_MAX_VALUES_PER_SERIES, &mut 0).len()
            })
            .max()
            .unwrap_or(0);
        assert!(most_values <= EMF_MAX_VALUES_PER_SERIES);
        // Every value at most 24 characters and a comma, plus each document's frame.
        let bound = w.series.len() * EMF_MAX_VALUES_PER_SERIES * 25 + docs.len() * 2048;
        assert!(bytes <= bound, "{bytes} > {bound}");
        eprintln!(
            "EMF for a 10 s window at {rate} requests/s: {bytes} bytes in {} documents, {} series, at most {most_values} values per series (budget {EMF_MAX_VALUES_PER_SERIES}, bound {bound} bytes)",
            docs.len(),
            w.series.len(),
        );
        c.bench_function(
            &format!("encode a 10 s invocation window at {rate} requests/s"),
            |b| b.iter(|| encode(&w, &ctx)),
        );
    }
}

criterion_group!(benches, bench, codec, server_codec);
criterion_main!(benches);

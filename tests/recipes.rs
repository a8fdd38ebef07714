//! SageMaker's own recipes on the agent's output. The launch post's companion code
//! (aws-samples `sagemaker-genai-hosting-examples`,
//! `03-features/observability/endpoint_metrics_helper.py`) counts instances and GPUs with the
//! `SampleCount` statistic and prices a component from that count; this replays its queries
//! against LocalStack on what the built agent published with PutMetricData (enhanced, 10 s),
//! over the fake NVML with 4 GPUs and two labelled containers declaring 3 of them.
//!
//! LocalStack matches a metric on a subset of its dimensions (real CloudWatch matches exactly)
//! and has no SEARCH or metric math: exact dimension sets are read through ListMetrics, and each
//! count is taken on a set no other published set contains, or derived as the spec says.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "test code: a failed step stops it with its message (Cargo.toml [lints] is for the agent)"
)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, DimensionFilter, Statistic};

use common::agent::{Agent, Workdir};
use common::aws::{cloudwatch, endpoint_url};
use common::docker::{docker, docker_ready, image, RemoveOnDrop};
use common::fake_nvml;

const PERIOD_S: i64 = 10;
/// ml.g6.12xlarge: $5.752 per hour, 4 GPUs (the launch post's example).
const PRICE_PER_HOUR: f64 = 5.752;
const GPUS_PER_INSTANCE: f64 = 4.0;
/// Full 10 s periods the test checks.
const PERIODS: i64 = 2;

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn dims(pairs: &[(&str, &str)]) -> Vec<Dimension> {
    pairs
        .iter()
        .map(|(n, v)| Dimension::builder().name(*n).value(*v).build())
        .collect()
}

/// Every dimension set (names and values, sorted by name) published for `metric`.
async fn listed(namespace: &str, metric: &str) -> Vec<Vec<(String, String)>> {
    let out = cloudwatch()
        .list_metrics()
        .namespace(namespace)
        .metric_name(metric)
        .send()
        .await
        .expect("ListMetrics");
    let mut sets: Vec<Vec<(String, String)>> = out
        .metrics()
        .iter()
        .map(|m| {
            let mut set: Vec<(String, String)> = m
                .dimensions()
                .iter()
                .map(|d| {
                    let name = d.name().unwrap_or_default().to_string();
                    (name, d.value().unwrap_or_default().to_string())
                })
                .collect();
            set.sort();
            set
        })
        .collect();
    sets.sort();
    sets.dedup();
    sets
}

/// `statistic` of `metric` under `dimensions`, per 10 s period from `start_s` (aligned) for
/// `PERIODS` periods: (period start, value), periods without data left out.
async fn per_period(
    namespace: &str,
    metric: &str,
    dimensions: &[(&str, &str)],
    statistic: Statistic,
    start_s: i64,
) -> Vec<(i64, f64)> {
    let out = cloudwatch()
        .get_metric_statistics()
        .namespace(namespace)
        .metric_name(metric)
        .set_dimensions(Some(dims(dimensions)))
        .start_time(DateTime::from_secs(start_s))
        .end_time(DateTime::from_secs(start_s + PERIODS * PERIOD_S))
        .period(PERIOD_S as i32)
        .statistics(statistic.clone())
        .send()
        .await
        .expect("GetMetricStatistics");
    let mut points: Vec<(i64, f64)> = out
        .datapoints()
        .iter()
        .map(|d| {
            let t = d.timestamp().map_or(0, |t| t.secs());
            let v = match statistic {
                Statistic::SampleCount => d.sample_count(),
                Statistic::Sum => d.sum(),
                _ => d.average(),
            };
            (t, v.unwrap_or(f64::NAN))
        })
        .collect();
    points.sort_by_key(|p| p.0);
    points
}

fn names(set: &[(String, String)]) -> Vec<&str> {
    set.iter().map(|(n, _)| n.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_launch_posts_sample_count_recipes_read_one_instance_three_gpus_and_their_cost() {
    if std::net::TcpStream::connect("127.0.0.1:4566").is_err()
        && std::env::var("AWS_ENDPOINT_URL").is_err()
    {
        assert!(
            std::env::var("EMA_SKIP_LOCALSTACK_TESTS").is_ok(),
            "LocalStack is not reachable: run scripts/setup/localstack.sh"
        );
        return;
    }
    if !docker_ready() {
        return;
    }
    let run = format!("{}-{}", std::process::id(), now_s());
    let label = format!("ema-recipe-{run}");
    let endpoint = format!("recipe-{run}");
    let endpoints_ns = format!("/ema-test/{run}/Endpoints");
    let components_ns = format!("/ema-test/{run}/InferenceComponents");

    // Two copies declaring 3 of the 4 GPUs: ic-a two, ic-b one.
    let mut containers = RemoveOnDrop(Vec::new());
    for (component, visible) in [("ic-a", "0,1"), ("ic-b", "2")] {
        let id = docker(&[
            "run",
            "-d",
            "--label",
            "ema-test=1",
            "--label",
            &format!("{label}={component}"),
            "-e",
            &format!("NVIDIA_VISIBLE_DEVICES={visible}"),
            &image(),
            "sleep",
            "120",
        ])
        .unwrap();
        containers.0.push(id);
    }
    let fake = fake_nvml::FakeNvml::new();
    fake.script(&fake_nvml::devices(4));

    let dir = Workdir::new();
    let config = format!(
        "[endpoint]\nname = \"{endpoint}\"\ninstance_id = \"i-recipe\"\ninstance_type = \"ml.g6.12xlarge\"\n\
         [metrics]\nenhanced = true\npublish_frequency_seconds = {PERIOD_S}\n\
         endpoints_namespace = \"{endpoints_ns}\"\ncomponents_namespace = \"{components_ns}\"\n\
         [output]\nformat = \"put_metric_data\"\nspool_dir = \"{}\"\n\
         [gpu]\nnvml_library = \"{}\"\nprocess_interval_ms = 1000\n\
         [docker]\ncomponent_label = \"{label}\"\n[admin]\nenabled = false\n",
        dir.join("spool").display(),
        fake.library_str()
    );
    let agent = Agent::launch(&dir, &config)
        .env("AWS_ENDPOINT_URL", endpoint_url())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .start();
    // The first whole period after discovery has seen both copies, then PERIODS of them.
    let first = (now_s() / PERIOD_S + 2) * PERIOD_S;
    let end = first + PERIODS * PERIOD_S;
    tokio::time::sleep(Duration::from_secs((end - now_s() + 1).max(0) as u64)).await;
    let text = agent.stop().success().logs.text();

    check_instances(&endpoint, &endpoints_ns, first, &text).await;
    let gpus = check_gpus_in_use(&components_ns, first, &text).await;
    check_cost(&endpoint, &components_ns, first, gpus).await;
    check_component_gpu_view(&components_ns, first).await;
}

/// Instances in service = `SampleCount` of `CPUUtilizationNormalized {EndpointName,
/// VariantName}` per 10 s: 1 for one host.
async fn check_instances(endpoint: &str, ns: &str, first: i64, log: &str) {
    let sets = listed(ns, "CPUUtilizationNormalized").await;
    let set_names: Vec<Vec<&str>> = sets.iter().map(|s| names(s)).collect();
    assert_eq!(
        set_names,
        [
            vec!["EndpointName", "InstanceId", "VariantName"],
            vec!["EndpointName", "VariantName"]
        ],
        "{log}"
    );
    let instance = [
        ("EndpointName", endpoint),
        ("VariantName", "AllTraffic"),
        ("InstanceId", "i-recipe"),
    ];
    let counts = per_period(
        ns,
        "CPUUtilizationNormalized",
        &instance,
        Statistic::SampleCount,
        first,
    )
    .await;
    assert_eq!(
        counts.iter().map(|p| p.1).collect::<Vec<_>>(),
        vec![1.0; PERIODS as usize],
        "one data point per period on the instance set: {counts:?}\n{log}"
    );
    // {EndpointName, VariantName}: LocalStack also counts the InstanceId set, which contains it;
    // CloudWatch matches exactly, so the recipe reads this total less that set's 1.
    let endpoint_set = &instance[..2];
    let counts = per_period(
        ns,
        "CPUUtilizationNormalized",
        endpoint_set,
        Statistic::SampleCount,
        first,
    )
    .await;
    assert_eq!(
        counts.iter().map(|p| p.1 - 1.0).collect::<Vec<_>>(),
        vec![1.0; PERIODS as usize],
        "instances in service: {counts:?}"
    );
}

/// GPUs in use = the sum over the per-copy per-GPU series of their `SampleCount` per 10 s: 3.
async fn check_gpus_in_use(ns: &str, first: i64, log: &str) -> f64 {
    let six = [
        "ContainerId",
        "EndpointName",
        "GpuId",
        "InferenceComponentName",
        "InstanceId",
        "VariantName",
    ];
    let sets: Vec<Vec<(String, String)>> = listed(ns, "GPUUtilizationNormalized")
        .await
        .into_iter()
        .filter(|s| names(s) == six)
        .collect();
    let mut pairs: Vec<(String, String)> = sets
        .iter()
        .map(|s| (s[3].1.clone(), s[2].1.clone()))
        .collect();
    pairs.sort();
    assert_eq!(
        pairs,
        [
            ("ic-a".to_string(), "gpu_0".to_string()),
            ("ic-a".into(), "gpu_1".into()),
            ("ic-b".into(), "gpu_2".into())
        ],
        "a series per copy and allocated GPU, used or not: {sets:?}\n{log}"
    );
    let mut in_use = vec![0.0; PERIODS as usize];
    for set in &sets {
        let d: Vec<(&str, &str)> = set.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let counts = per_period(
            ns,
            "GPUUtilizationNormalized",
            &d,
            Statistic::SampleCount,
            first,
        )
        .await;
        assert_eq!(counts.len(), PERIODS as usize, "{set:?}: {counts:?}");
        for (i, (_, n)) in counts.iter().enumerate() {
            in_use[i] += n;
        }
    }
    assert_eq!(
        in_use,
        vec![3.0; PERIODS as usize],
        "GPUs in use per period"
    );
    in_use[0]
}

/// The recipe's cost per 10 s (GPUs in use x price / GPUs per instance / 360) matches what the
/// agent accrued for the components in each period.
async fn check_cost(endpoint: &str, ns: &str, first: i64, gpus_in_use: f64) {
    let recipe = gpus_in_use * PRICE_PER_HOUR / GPUS_PER_INSTANCE / 360.0;
    let mut accrued = vec![0.0; PERIODS as usize];
    for component in ["ic-a", "ic-b"] {
        let d = [
            ("EndpointName", endpoint),
            ("VariantName", "AllTraffic"),
            ("InstanceId", "i-recipe"),
            ("InferenceComponentName", component),
        ];
        let sums = per_period(ns, "CostAccrued", &d, Statistic::Sum, first).await;
        let counts = per_period(ns, "CostAccrued", &d, Statistic::SampleCount, first).await;
        assert_eq!(
            counts.iter().map(|p| p.1).collect::<Vec<_>>(),
            vec![1.0; PERIODS as usize]
        );
        for (i, (_, usd)) in sums.iter().enumerate() {
            accrued[i] += usd;
        }
    }
    for usd in accrued {
        assert!(
            (usd - recipe).abs() < 1e-9,
            "accrued {usd} per 10 s against the recipe's {recipe}"
        );
    }
    assert!((recipe - 3.0 * 5.752 / 4.0 / 360.0).abs() < 1e-12);
}

/// The per-GPU view of a component: `GetMetricStatistics` on `{InferenceComponentName, GpuId}`
/// with `GpuId = gpu_0` finds a series of its own.
async fn check_component_gpu_view(ns: &str, first: i64) {
    let filter = |n: &str, v: &str| DimensionFilter::builder().name(n).value(v).build();
    let out = cloudwatch()
        .list_metrics()
        .namespace(ns)
        .metric_name("GPUUtilizationNormalized")
        .dimensions(filter("InferenceComponentName", "ic-a"))
        .dimensions(filter("GpuId", "gpu_0"))
        .send()
        .await
        .expect("ListMetrics");
    let exact = out.metrics().iter().any(|m| m.dimensions().len() == 2);
    assert!(
        exact,
        "{{InferenceComponentName, GpuId}} is published: {out:?}"
    );
    let d = [("InferenceComponentName", "ic-a"), ("GpuId", "gpu_0")];
    let points = per_period(
        ns,
        "GPUUtilizationNormalized",
        &d,
        Statistic::Average,
        first,
    )
    .await;
    assert_eq!(points.len(), PERIODS as usize, "{points:?}");
    assert!(
        points.iter().all(|p| p.1 == 0.0),
        "no process, 0: {points:?}"
    );
}

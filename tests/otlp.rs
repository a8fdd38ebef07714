//! `[output] format = "otlp"` end to end: the built agent sends to a local OTLP/HTTP receiver
//! (`scripts/otlp-receiver.py`) that decodes every request with the official definitions
//! (`opentelemetry-proto`, Python) and verifies SigV4 with botocore's signer. Checked: every
//! metric's type, temporality, labels and value against what the agent sampled (the fake NVML's
//! scripted GPUs, requests counted through the front door); an outage with a SIGKILL and a
//! restart in the middle loses and duplicates nothing; signatures verify, and a wrong secret is
//! refused and dropped, counted.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "test code: a failed step stops it with its message (Cargo.toml [lints] is for the agent)"
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

use common::agent::{get, Agent, Workdir};
use common::copies::streaming_copy;
use common::fake_nvml;
use common::otlp::{Credentials, Options, OtlpReceiver};

const PERIOD_NS: u64 = 10 * 1_000_000_000;

/// A configuration publishing OTLP to `rx` every 10 s, enhanced; `extra` adds sections.
fn config(dir: &Workdir, rx: &OtlpReceiver, otlp: &str, extra: &str) -> String {
    format!(
        "[endpoint]\nname = \"otlp-endpoint\"\nvariant = \"v1\"\ninstance_id = \"i-otlp\"\n\
         instance_type = \"ml.g6.12xlarge\"\n\
         [metrics]\nenhanced = true\npublish_frequency_seconds = 10\n\
         [output]\nformat = \"otlp\"\nspool_dir = \"{}\"\nretry_max_seconds = 2\n\
         [output.otlp]\nendpoint = \"{}\"\n{otlp}\n\
         [docker]\nenabled = false\n[admin]\nenabled = false\n{extra}",
        dir.join("spool").display(),
        rx.url()
    )
}

fn string(v: &Value) -> String {
    v.as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
}

/// A point's identity: metric, labels, window end.
fn identity(p: &Value) -> (String, String, u64) {
    (
        string(&p["metric"]),
        p["attributes"].to_string(),
        p["time_unix_nano"].as_u64().unwrap(),
    )
}

fn points_named<'a>(points: &'a [Value], name: &str) -> Vec<&'a Value> {
    points.iter().filter(|p| p["metric"] == name).collect()
}

fn sum_of(points: &[Value], name: &str) -> f64 {
    points_named(points, name)
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .sum()
}

#[test]
fn every_metric_type_temporality_label_and_value_is_what_the_agent_sampled() {
    let rx = OtlpReceiver::start(Options::default());
    let fake = fake_nvml::FakeNvml::new();
    // GPU 0 at 10 %, 2 GiB of 80 used; GPU 1 at 11 %, 4 GiB.
    fake.script(&fake_nvml::devices(2));
    let copy = streaming_copy(1, Duration::from_millis(1));
    let dir = Workdir::new();
    let text = config(
        &dir,
        &rx,
        "auth = \"none\"\nheaders = { \"X-Scope-OrgID\" = \"fleet-a\" }\n",
        &format!(
            "[gpu]\nnvml_library = \"{}\"\n\
             [proxy]\nenabled = true\nlisten = \"127.0.0.1:0\"\n\
             [[proxy.upstream]]\ncomponent = \"model\"\nurl = \"http://{copy}\"\n",
            fake.library_str()
        ),
    );
    let mut agent = Agent::start(&dir, &text);
    let front = agent.front_door_address();
    const REQUESTS: usize = 7;
    for _ in 0..REQUESTS {
        let (status, response) = get(front.port(), "/invocations");
        assert_eq!(status, 200, "{response}");
    }
    rx.wait_for("two windows with GPU utilization", |reqs| {
        let times: BTreeSet<u64> = reqs
            .iter()
            .filter(|r| r["status"] == 200)
            .flat_map(|r| r["points"].as_array().cloned().unwrap_or_default())
            .filter(|p| p["metric"] == "DCGM_FI_DEV_GPU_UTIL")
            .map(|p| p["time_unix_nano"].as_u64().unwrap())
            .collect();
        (times.len() >= 2).then_some(())
    });
    let stopped = agent.stop().success();
    let log = stopped.logs.text();

    let requests = rx.requests();
    assert!(!requests.is_empty());
    for r in &requests {
        assert_eq!(r["status"], 200, "{r}\n{log}");
        assert_eq!(r["error"], Value::Null, "{r}");
        assert_eq!(r["warnings"], serde_json::json!([]), "{r}");
        assert_eq!(r["content_encoding"], "gzip");
        assert_eq!(r["headers"]["content-type"], "application/x-protobuf");
        assert_eq!(r["headers"]["x-scope-orgid"], "fleet-a");
        assert_eq!(r["sigv4"], "unsigned");
    }
    let points = rx.accepted_points();

    // Every point: its resource, its window, and the invariants of its type.
    let mut seen = BTreeSet::new();
    for p in &points {
        assert_eq!(p["resource"]["host.id"], "i-otlp", "{p}");
        assert_eq!(p["resource"]["host.type"], "ml.g6.12xlarge");
        assert_eq!(p["resource"]["service.name"], "endpoint-metrics-agent");
        assert_eq!(p["scope"], "endpoint-metrics-agent");
        let (start, end) = (
            p["start_time_unix_nano"].as_u64().unwrap(),
            p["time_unix_nano"].as_u64().unwrap(),
        );
        assert_eq!(start % PERIOD_NS, 0, "windows start on the period: {p}");
        assert_eq!(end - start, PERIOD_NS, "{p}");
        match p["type"].as_str().unwrap() {
            "gauge" => assert_eq!(p["temporality"], Value::Null, "{p}"),
            "sum" => {
                assert_eq!(p["temporality"], "delta", "{p}");
                assert_eq!(p["monotonic"], true, "{p}");
            }
            "histogram" => {
                assert_eq!(p["temporality"], "delta", "{p}");
                let buckets: u64 = p["bucket_counts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| b.as_u64().unwrap())
                    .sum();
                assert_eq!(buckets, p["count"].as_u64().unwrap(), "{p}");
                assert!(p["min"].as_f64().unwrap() <= p["max"].as_f64().unwrap());
            }
            other => panic!("unexpected type {other}: {p}"),
        }
        for (k, v) in p["attributes"].as_object().unwrap() {
            assert!(v.is_string(), "label {k} is a string: {p}");
        }
        assert!(
            seen.insert(identity(p)),
            "one point per series per window: {p}"
        );
    }

    // The GPUs, exactly as scripted: DCGM's name and `gpu` label per GPU.
    let util = points_named(&points, "DCGM_FI_DEV_GPU_UTIL");
    assert!(util.len() >= 4, "{util:?}");
    for p in &util {
        let gpu = p["attributes"]["gpu"].as_str().unwrap();
        let expected = if gpu == "0" { 10.0 } else { 11.0 };
        assert_eq!(p["value"], expected, "{p}");
        assert_eq!(p["unit"], "%");
        assert_eq!(
            p["attributes"]["aws.sagemaker.endpoint.name"],
            "otlp-endpoint"
        );
        assert_eq!(p["attributes"]["aws.sagemaker.variant.name"], "v1");
    }
    for p in points_named(&points, "GPUMemoryUtilizationByInstanceIdByGpuId") {
        let gpu = p["attributes"]["gpu"].as_str().unwrap();
        let expected = if gpu == "0" { 2.5 } else { 5.0 };
        assert_eq!(p["value"], expected, "{p}");
    }
    for p in points_named(&points, "GPUUtilizationNormalizedByInstanceId") {
        assert_eq!(p["value"], 10.5, "{p}");
    }
    for p in points_named(&points, "CPUUtilization") {
        let v = p["value"].as_f64().unwrap();
        assert!((0.0..=100.0 * 64.0).contains(&v), "{p}");
        assert_eq!(
            p["attributes"].as_object().unwrap().len(),
            2,
            "endpoint level: endpoint and variant: {p}"
        );
    }

    // The front door's requests: counted once per granularity, latencies as histograms.
    for name in [
        "Invocations",
        "InvocationsByInstanceId",
        "InvocationsForIc",
        "InvocationsForIcByInstanceIdByContainerId",
    ] {
        assert_eq!(sum_of(&points, name), REQUESTS as f64, "{name}\n{log}");
    }
    for p in points_named(&points, "InvocationsForIc") {
        assert_eq!(
            p["attributes"]["aws.sagemaker.inference_component.name"],
            "model"
        );
    }
    let latencies = points_named(&points, "ModelLatencyForIc");
    let count: u64 = latencies.iter().map(|p| p["count"].as_u64().unwrap()).sum();
    assert_eq!(count, REQUESTS as u64, "{latencies:?}");
    for p in &latencies {
        assert_eq!(p["type"], "histogram");
        assert_eq!(p["unit"], "us");
        assert!(p["min"].as_f64().unwrap() > 0.0, "{p}");
    }

    // The names the agent published, one kind each.
    let mut kinds: BTreeMap<String, String> = BTreeMap::new();
    for p in &points {
        let kind = string(&p["type"]);
        let before = kinds.insert(string(&p["metric"]), kind.clone());
        assert!(before.is_none_or(|k| k == kind), "{p}");
    }
    for name in [
        "CPUUtilizationByInstanceId",
        "CPUUtilizationNormalized",
        "MemoryUtilization",
        "DiskUtilizationByInstanceId",
        "GPUUtilizationByInstanceId",
        "ConcurrentRequestsPerModel",
        "OverheadLatency",
    ] {
        assert!(kinds.contains_key(name), "{name} missing from {kinds:?}");
    }
}

#[test]
fn an_outage_with_a_kill_and_restart_loses_and_duplicates_nothing() {
    let rx = OtlpReceiver::start(Options::default());
    rx.set_mode("503");
    let dir = Workdir::new();
    let text = config(&dir, &rx, "auth = \"none\"\n", "[gpu]\nenabled = false\n");
    let agent = Agent::start(&dir, &text);
    // Two closed windows refused (and spooled), then the agent dies without a word.
    let refused_windows = |reqs: &[Value]| -> BTreeSet<u64> {
        reqs.iter()
            .filter(|r| r["status"] == 503)
            .flat_map(|r| r["points"].as_array().cloned().unwrap_or_default())
            .filter(|p| p["metric"] == "CPUUtilization")
            .map(|p| p["time_unix_nano"].as_u64().unwrap())
            .collect()
    };
    rx.wait_for_within(Duration::from_secs(60), "two refused windows", |reqs| {
        (refused_windows(reqs).len() >= 2).then_some(())
    });
    agent.kill9();
    let refused = refused_windows(&rx.requests());
    assert!(rx.accepted().is_empty());

    // Back up: the restarted agent replays the spool, then goes on.
    rx.set_mode("ok");
    let agent = Agent::start(&dir, &text);
    rx.wait_for_within(
        Duration::from_secs(60),
        "every refused window and a new one",
        |_| {
            let accepted: BTreeSet<u64> = rx
                .accepted_points()
                .iter()
                .filter(|p| p["metric"] == "CPUUtilization")
                .map(|p| p["time_unix_nano"].as_u64().unwrap())
                .collect();
            (refused.is_subset(&accepted) && accepted.len() > refused.len()).then_some(())
        },
    );
    let stopped = agent.stop().success();

    let points = rx.accepted_points();
    let mut seen = BTreeSet::new();
    for p in &points {
        assert!(
            seen.insert(identity(p)),
            "a point delivered twice: {p}\n{}",
            stopped.logs.text()
        );
    }
    // Each refused request was delivered once, whole: the same points, the same values.
    let refused_points: BTreeMap<(String, String, u64), Value> = rx
        .requests()
        .iter()
        .filter(|r| r["status"] == 503)
        .flat_map(|r| r["points"].as_array().cloned().unwrap_or_default())
        .map(|p| (identity(&p), p["value"].clone()))
        .collect();
    let accepted: BTreeMap<(String, String, u64), Value> = points
        .iter()
        .map(|p| (identity(p), p["value"].clone()))
        .collect();
    for (id, value) in &refused_points {
        assert_eq!(accepted.get(id), Some(value), "{id:?} lost or changed");
    }
    assert!(stopped.logs.final_counter("spool_items_replayed") >= 2);
}

#[test]
fn sigv4_signatures_verify_with_botocores_signer_and_a_wrong_secret_is_dropped_counted() {
    let credentials = Credentials::new("AKIDOTLPTEST", "otlp-secret").with_session_token("tok-1");
    let rx = OtlpReceiver::start(Options {
        sigv4: Some(credentials),
        region: "eu-west-1".into(),
        ..Options::default()
    });
    let dir = Workdir::new();
    let text = config(
        &dir,
        &rx,
        "auth = \"sigv4\"\nregion = \"eu-west-1\"\n",
        "[gpu]\nenabled = false\n",
    );
    let launch = |secret: &str| {
        Agent::launch(&dir, &text)
            .env("AWS_ACCESS_KEY_ID", "AKIDOTLPTEST")
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_SESSION_TOKEN", "tok-1")
            .env_remove("AWS_REGION")
            .env_remove("AWS_PROFILE")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .start()
    };
    let agent = launch("otlp-secret");
    rx.wait_for_within(Duration::from_secs(40), "a signed request", |reqs| {
        reqs.iter().find(|r| r["status"] == 200).cloned()
    });
    let stopped = agent.stop().success();
    let requests = rx.requests();
    for r in &requests {
        assert_eq!(r["sigv4"], "ok", "{r}\n{}", stopped.logs.text());
        assert_eq!(r["status"], 200);
        let auth = r["headers"]["authorization"].as_str().unwrap();
        assert!(
            auth.contains("/eu-west-1/monitoring/aws4_request"),
            "{auth}"
        );
    }

    // The wrong secret: refused (403), not retried, dropped and counted.
    let before = requests.len();
    let agent = launch("not-the-secret");
    rx.wait_for_within(Duration::from_secs(40), "a refused signature", |reqs| {
        reqs[before..].iter().find(|r| r["status"] == 403).cloned()
    });
    let stopped = agent.stop().success();
    let refused: Vec<Value> = rx.requests()[before..].to_vec();
    assert!(refused
        .iter()
        .all(|r| r["status"] == 403 && string(&r["sigv4"]).starts_with("mismatch")));
    assert_eq!(
        stopped.logs.final_counter("publish_requests_dropped"),
        refused.len() as u64,
        "{}",
        stopped.logs.text()
    );
}

//! `dashboard`: the body the built agent prints is checked, from the outside, against the series
//! `plan` lists for the same configuration (every metric row and every SEARCH names a namespace,
//! metric and dimension set the host publishes), and `--put` round-trips through PutDashboard and
//! GetDashboard on LocalStack (127.0.0.1:4566, or `AWS_ENDPOINT_URL`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "test code: a failed step stops it with its message (Cargo.toml [lints] is for the agent)"
)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_cloudwatch::config::{BehaviorVersion, Credentials, Region};
use serde_json::Value;

use common::agent::binary;
use common::fake_nvml;

fn endpoint_url() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:4566".into())
}

fn run_id() -> String {
    let ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}-{ns}", std::process::id())
}

/// Runs a subcommand with the AWS environment pointed at LocalStack; (status, stdout, stderr).
fn agent(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary())
        .args(args)
        .env("AWS_ENDPOINT_URL", endpoint_url())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// (namespace, metric, dimension names sorted).
type Reference = (String, String, Vec<String>);

/// What `plan` says the configuration publishes, by names.
fn planned(plan: &str) -> BTreeSet<Reference> {
    plan.lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.trim().split("  ").collect();
            let [namespace, metric, dims, count] = fields[..] else {
                return None;
            };
            if !count.starts_with('x') {
                return None;
            }
            let dims = dims.strip_prefix('{')?.strip_suffix('}')?;
            let mut names: Vec<String> = dims
                .split(',')
                .filter(|d| !d.is_empty())
                .map(String::from)
                .collect();
            names.sort();
            Some((namespace.to_string(), metric.to_string(), names))
        })
        .collect()
}

/// Every metric a body references, and every `Key="value"` a SEARCH filters on.
fn references(body: &Value) -> (Vec<Reference>, Vec<(String, String)>) {
    let mut refs = Vec::new();
    let mut values = Vec::new();
    for w in body["widgets"].as_array().unwrap() {
        if w["type"] != "metric" {
            continue;
        }
        for row in w["properties"]["metrics"].as_array().unwrap() {
            match row {
                Value::Array(cells) => {
                    let strings: Vec<&str> = cells.iter().filter_map(Value::as_str).collect();
                    let mut names: Vec<String> = strings[2..]
                        .chunks(2)
                        .map(|pair| {
                            values.push((pair[0].to_string(), pair[1].to_string()));
                            pair[0].to_string()
                        })
                        .collect();
                    names.sort();
                    refs.push((strings[0].to_string(), strings[1].to_string(), names));
                }
                Value::Object(o) => {
                    let expression = o["expression"].as_str().unwrap();
                    for search in expression.split("SEARCH('{").skip(1) {
                        let (schema, rest) = search.split_once('}').unwrap();
                        let terms = rest.split_once('\'').unwrap().0;
                        let mut parts = schema.split(',');
                        let namespace = parts.next().unwrap().to_string();
                        let mut names: Vec<String> = parts.map(String::from).collect();
                        names.sort();
                        let mut metric = String::new();
                        for term in terms.split_whitespace() {
                            let (k, v) = term.split_once('=').unwrap();
                            let v = v.trim_matches('"').to_string();
                            if k == "MetricName" {
                                metric = v;
                            } else {
                                values.push((k.to_string(), v));
                            }
                        }
                        refs.push((namespace, metric, names));
                    }
                }
                other => panic!("a metrics row is an array or an expression: {other}"),
            }
        }
    }
    (refs, values)
}

/// The references `planned` does not hold.
fn unpublished(body: &Value, plan: &BTreeSet<Reference>) -> Vec<Reference> {
    let (refs, _) = references(body);
    refs.into_iter().filter(|r| !plan.contains(r)).collect()
}

fn write_config(dir: &Path, extra: &str, nvml: &str) -> String {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "[endpoint]\nname = \"dash-ep\"\ninstance_id = \"i-dash\"\n{extra}\
             [gpu]\nnvml_library = \"{nvml}\"\n\
             [docker]\ncomponent_label = \"ema-dashboard-test-none\"\n"
        ),
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

/// Enhanced, priced, front door on, 10 s: every kind of widget.
const FULL: &str = "instance_type = \"ml.g6.12xlarge\"\n\
                    [metrics]\nenhanced = true\npublish_frequency_seconds = 10\n\
                    [proxy]\nenabled = true\n";

fn body_and_plan(extra: &str) -> (Value, BTreeSet<Reference>) {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_nvml::FakeNvml::new();
    fake.script(&fake_nvml::devices(4));
    let config = write_config(dir.path(), extra, &fake.library_str());
    let (status, out, err) = agent(&[
        "dashboard",
        "--config",
        &config,
        "--component",
        "ic-a",
        "--component",
        "ic-b",
    ]);
    assert_eq!(status, 0, "{err}");
    let body: Value = serde_json::from_str(&out).unwrap();
    let (status, plan, err) = agent(&[
        "plan",
        "--config",
        &config,
        "--containers",
        "2",
        "--components",
        "2",
    ]);
    assert_eq!(status, 0, "{err}");
    assert!(plan.contains("host: 4 GPUs"), "NVML's 4 GPUs: {plan}");
    (body, planned(&plan))
}

#[test]
fn every_widget_names_a_metric_and_dimension_set_the_host_publishes() {
    let (body, plan) = body_and_plan(FULL);
    let (refs, values) = references(&body);
    assert!(refs.len() > 20, "{body:#}");
    assert_eq!(
        unpublished(&body, &plan),
        Vec::<Reference>::new(),
        "{body:#}"
    );
    // The values are this endpoint's and the named components'.
    for (key, value) in &values {
        match key.as_str() {
            "EndpointName" => assert_eq!(value, "dash-ep"),
            "VariantName" => assert_eq!(value, "AllTraffic"),
            "InferenceComponentName" => assert!(["ic-a", "ic-b"].contains(&value.as_str())),
            other => panic!("a widget filters on {other}={value}"),
        }
    }
    let text = body.to_string();
    // The launch post's recipes, as metric math.
    for recipe in [
        "SUM(SEARCH('{/aws/sagemaker/InferenceComponents,EndpointName,VariantName,InstanceId,ContainerId,InferenceComponentName,GpuId} MetricName=\\\"GPUUtilizationNormalized\\\" EndpointName=\\\"dash-ep\\\"', 'SampleCount', 10))",
        "* 5.752 / 4 / (3600 / 10)",
        "RUNNING_SUM(cost0)",
        "RUNNING_SUM(cost1)",
        "instances * 4 - inuse",
    ] {
        assert!(text.contains(recipe), "{recipe} in {body:#}");
    }
    let titles: Vec<&str> = body["widgets"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["properties"]["title"].as_str())
        .collect();
    for title in [
        "Instances in service",
        "GPUs in use and free",
        "GPU utilization per GPU (%)",
        "GPU memory per copy (%)",
        "GPU use by processes in no model copy (instance, %)",
        "Latency p50 and p99 (microseconds)",
        "Concurrent requests per model",
        "Concurrent requests per copy",
    ] {
        assert!(titles.contains(&title), "{title} in {titles:?}");
    }
    // Each widget is placed on the 24-unit grid, inside it.
    for w in body["widgets"].as_array().unwrap() {
        let (x, width) = (w["x"].as_u64().unwrap(), w["width"].as_u64().unwrap());
        assert!(x + width <= 24, "{w}");
    }
}

#[test]
fn the_check_catches_a_widget_naming_what_the_host_does_not_publish() {
    // Without enhanced metrics, price or front door: no per-GPU, per-copy, cost or invocation
    // series, so none of those widgets.
    let (body, plan) = body_and_plan("");
    assert_eq!(
        unpublished(&body, &plan),
        Vec::<Reference>::new(),
        "{body:#}"
    );
    let text = body.to_string();
    for absent in ["Invocations", "CostAccrued", "ContainerId"] {
        assert!(!text.contains(absent), "{absent} in {body:#}");
    }
    // The only per-GPU widgets are GPU health's, published per GPU with or without enhanced
    // metrics.
    for search in text.split("SEARCH(").skip(1) {
        let expression = search.split("',").next().unwrap_or(search);
        assert!(expression.contains("DCGM_"), "{expression}");
    }
    // The full body checked against this host's plan fails: the check can fail.
    let (full, _) = body_and_plan(FULL);
    let extra = unpublished(&full, &plan);
    assert!(
        extra
            .iter()
            .any(|r| r.1 == "GPUUtilizationNormalized" && r.2.len() == 6),
        "{extra:?}"
    );
    assert!(
        extra.iter().any(|r| r.0 == "/aws/sagemaker/Invocations"),
        "{extra:?}"
    );
}

fn cloudwatch() -> aws_sdk_cloudwatch::Client {
    let config = aws_sdk_cloudwatch::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint_url())
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https(),
        )
        .build();
    aws_sdk_cloudwatch::Client::from_conf(config)
}

#[tokio::test]
async fn put_saves_the_body_that_get_dashboard_returns() {
    if std::net::TcpStream::connect("127.0.0.1:4566").is_err()
        && std::env::var("AWS_ENDPOINT_URL").is_err()
    {
        assert!(
            std::env::var("EMA_SKIP_LOCALSTACK_TESTS").is_ok(),
            "LocalStack is not reachable: run scripts/setup/localstack.sh"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_nvml::FakeNvml::new();
    fake.script(&fake_nvml::devices(4));
    let config = write_config(dir.path(), FULL, &fake.library_str());
    let name = format!("ema-test-{}", run_id());
    let args = ["dashboard", "--config", &config, "--component", "ic-a"];
    let (status, printed, err) = agent(&args);
    assert_eq!(status, 0, "{err}");
    let mut put = args.to_vec();
    put.extend(["--put", &name]);
    let (status, out, err) = agent(&put);
    assert_eq!(status, 0, "{err}");
    assert!(out.is_empty(), "--put prints no body: {out}");
    assert!(
        err.contains(&format!("saved dashboard {name} in us-east-1")),
        "{err}"
    );

    let got = cloudwatch()
        .get_dashboard()
        .dashboard_name(&name)
        .send()
        .await
        .expect("GetDashboard");
    assert_eq!(got.dashboard_name(), Some(name.as_str()));
    let saved: Value = serde_json::from_str(got.dashboard_body().unwrap()).unwrap();
    let printed: Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(saved, printed);
    assert_eq!(saved["widgets"][1]["properties"]["region"], "us-east-1");
    let _ = cloudwatch()
        .delete_dashboards()
        .dashboard_names(&name)
        .send()
        .await;
}

#[test]
fn without_a_region_the_dashboard_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", "/nonexistent/libnvidia-ml.so.1");
    let out = Command::new(binary())
        .args([
            "dashboard",
            "--config",
            &config,
            "--component",
            "a",
            "--gpus",
            "0",
        ])
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no AWS Region"), "{err}");
}

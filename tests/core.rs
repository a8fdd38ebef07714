//! The agent core through the built binary: its real EMF output, its exit codes and its logs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "test code: a failed step stops it with its message (Cargo.toml [lints] is for the agent)"
)]

mod common;

use std::time::Duration;

use common::agent::{run_to_exit, Agent, Logs, Stopped, Workdir};
use serde_json::Value;

const HOST_METRICS: [&str; 4] = [
    "CPUUtilization",
    "CPUUtilizationNormalized",
    "MemoryUtilization",
    "DiskUtilization",
];

fn config(enhanced: bool, destination: &str) -> String {
    config_with(enhanced, destination, "")
}

/// [`config`] with extra `[metrics]` keys.
fn config_with(enhanced: bool, destination: &str, metrics: &str) -> String {
    format!(
        "[endpoint]\nname = \"core-test\"\nvariant = \"AllTraffic\"\ninstance_id = \"test-host\"\n\
         [metrics]\nenhanced = {enhanced}\npublish_frequency_seconds = 10\nsample_interval_ms = 500\n{metrics}\
         [output]\nemf_destination = \"{destination}\"\n[gpu]\nenabled = false\n[docker]\nenabled = false\n[admin]\nenabled = false\n"
    )
}

fn timestamps(docs: &[Value]) -> Vec<u64> {
    let mut t: Vec<u64> = docs
        .iter()
        .map(|d| d["_aws"]["Timestamp"].as_u64().unwrap())
        .collect();
    t.dedup();
    t
}

/// Checks one document against the EMF rules and the spec's host metric contract.
fn check_host_document(doc: &Value, enhanced: bool) {
    let aws = &doc["_aws"];
    let ts = aws["Timestamp"].as_u64().expect("integer Timestamp");
    assert_eq!(ts % 10_000, 0, "window aligned to 10 s");
    let directives = aws["CloudWatchMetrics"].as_array().unwrap();
    assert_eq!(directives.len(), 1);
    let d = &directives[0];
    assert_eq!(d["Namespace"], "/aws/sagemaker/Endpoints");
    let expected_sets = if enhanced {
        serde_json::json!([
            ["EndpointName", "VariantName"],
            ["EndpointName", "VariantName", "InstanceId"]
        ])
    } else {
        serde_json::json!([["EndpointName", "VariantName"]])
    };
    assert_eq!(d["Dimensions"], expected_sets);
    assert_eq!(doc["EndpointName"], "core-test");
    assert_eq!(doc["VariantName"], "AllTraffic");
    if enhanced {
        assert_eq!(doc["InstanceId"], "test-host");
    } else {
        assert!(doc.get("InstanceId").is_none());
    }
    for m in d["Metrics"].as_array().unwrap() {
        let name = m["Name"].as_str().unwrap();
        assert!(HOST_METRICS.contains(&name), "unexpected metric {name}");
        assert_eq!(m["Unit"], "Percent");
        assert_eq!(
            m["StorageResolution"], 1,
            "10 s windows are high resolution"
        );
        let values = doc[name]
            .as_array()
            .unwrap_or_else(|| panic!("{name} is an array"));
        assert!(!values.is_empty() && values.len() <= 100);
        let cap = if name == "CPUUtilization" {
            100.0 * num_cpus() as f64
        } else {
            100.0
        };
        for v in values {
            let v = v.as_f64().unwrap();
            assert!((0.0..=cap).contains(&v), "{name} = {v}");
        }
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .max(
            std::fs::read_to_string("/proc/stat")
                .unwrap()
                .lines()
                .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
                .count(),
        )
}

#[test]
fn enhanced_run_to_a_file_publishes_aligned_full_windows_and_flushes_on_sigterm() {
    let dir = Workdir::new();
    // Every sample a data point, so the windows' samples can be counted.
    let every = "data_points = \"every_sample\"\n";
    let agent = Agent::start(&dir, &config_with(true, &dir.emf_destination(), every));
    // Wait for two closed windows: the first is partial (started mid-window), the second full.
    agent.wait_for_within(Duration::from_secs(35), "two windows", |docs| {
        (timestamps(docs).len() >= 2).then_some(())
    });
    std::thread::sleep(Duration::from_millis(1200));
    let stopped = agent.stop();
    assert_eq!(stopped.code(), Some(0));
    assert!(
        stopped.took < Duration::from_secs(5),
        "exit took {:?}",
        stopped.took
    );
    assert!(
        stopped.logs.find_message("SIGTERM").is_some(),
        "{}",
        stopped.logs.text()
    );

    let docs = common::agent::documents_in(&dir.emf_file());
    for doc in &docs {
        check_host_document(doc, true);
    }
    let ts = timestamps(&docs);
    assert!(
        ts.len() >= 3,
        "two closed windows and the partial one flushed at SIGTERM: {ts:?}"
    );
    assert_eq!(ts[1] - ts[0], 10_000);
    // The second window is full: 20 samples at 500 ms, each published.
    let full = docs
        .iter()
        .find(|d| d["_aws"]["Timestamp"] == ts[1])
        .unwrap();
    assert_eq!(full["MemoryUtilization"].as_array().unwrap().len(), 20);
    assert_eq!(full["CPUUtilization"].as_array().unwrap().len(), 20);
    // CPUUtilizationNormalized is CPUUtilization over the CPU count, sample by sample (as a multiset).
    let mut cpu: Vec<f64> = full["CPUUtilization"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let mut norm: Vec<f64> = full["CPUUtilizationNormalized"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    cpu.sort_by(f64::total_cmp);
    norm.sort_by(f64::total_cmp);
    let cpus = num_cpus() as f64;
    for (c, n) in cpu.iter().zip(&norm) {
        assert!((c / cpus - n).abs() < 1e-9, "{c} / {cpus} != {n}");
    }
    // The last window is the partial one flushed at SIGTERM: it has fewer samples.
    let last = docs
        .iter()
        .rev()
        .find(|d| d["_aws"]["Timestamp"] == *ts.last().unwrap())
        .unwrap();
    let n = last["MemoryUtilization"].as_array().unwrap().len();
    assert!((1..20).contains(&n), "partial window holds {n} samples");
}

#[test]
fn by_default_each_window_has_one_data_point_per_series_its_mean() {
    let dir = Workdir::new();
    let agent = Agent::start(&dir, &config(true, &dir.emf_destination()));
    // The first closed window is partial (started mid-window); the second is full.
    let docs = agent.wait_for_within(Duration::from_secs(35), "two windows", |docs| {
        (timestamps(docs).len() >= 2).then(|| docs.to_vec())
    });
    agent.stop();
    let full = &docs[docs.len() - 1];
    check_host_document(full, true);
    let one = |name: &str| -> f64 {
        let values = full[name].as_array().unwrap();
        assert_eq!(
            values.len(),
            1,
            "{name}: one data point for 20 samples: {full}"
        );
        values[0].as_f64().unwrap()
    };
    // Means of the same 20 samples: the normalized one is the other over the CPUs.
    let cpus = num_cpus() as f64;
    let (cpu, normalized) = (one("CPUUtilization"), one("CPUUtilizationNormalized"));
    assert!(
        (cpu / cpus - normalized).abs() < 1e-9,
        "{cpu} / {cpus} != {normalized}"
    );
    for name in ["MemoryUtilization", "DiskUtilization"] {
        one(name);
    }
}

#[test]
fn plain_run_prints_only_emf_on_stdout_and_stops_on_sigint() {
    let dir = Workdir::new();
    let agent = Agent::start(&dir, &config(false, "stdout"));
    std::thread::sleep(Duration::from_secs(2));
    agent.signal(libc::SIGINT);
    let stopped = agent.wait_exit();
    assert_eq!(stopped.code(), Some(0));
    assert!(stopped.took < Duration::from_secs(5));
    let docs = stopped.stdout_documents();
    assert!(!docs.is_empty(), "the partial window is flushed on SIGINT");
    for doc in &docs {
        check_host_document(doc, false);
    }
    assert!(
        stopped.logs.find_message("agent started").is_some(),
        "logs go to stderr: {}",
        stopped.logs.text()
    );
}

#[test]
fn json_logs_are_json_lines_on_stderr() {
    let dir = Workdir::new();
    let body = config(false, &dir.emf_destination()) + "[log]\nformat = \"json\"\n";
    let agent = Agent::start(&dir, &body);
    std::thread::sleep(Duration::from_millis(800));
    let stopped = agent.stop();
    assert_eq!(stopped.code(), Some(0));
    let stderr = stopped.logs.text();
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON log line"))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "agent started" && l["endpoint"] == "core-test"),
        "{stderr}"
    );
}

#[test]
fn bad_configs_stop_the_agent_with_status_78_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = "[endpoint]\nname = \"e\"\n";
    let cases: [(&str, String, &str, &str); 7] = [
        (
            "unknown key",
            format!("{base}[metrics]\nenhancd = true\n"),
            "metrics.enhancd",
            "unknown field",
        ),
        (
            "wrong type",
            format!("{base}[metrics]\nenhanced = \"yes\"\n"),
            "metrics.enhanced",
            "boolean",
        ),
        (
            "frequency 15",
            format!("{base}[metrics]\npublish_frequency_seconds = 15\n"),
            "metrics.publish_frequency_seconds",
            "10, 30, 60, 120, 180, 240, 300",
        ),
        (
            "empty name",
            "[endpoint]\nname = \"\"\n".into(),
            "endpoint.name",
            "empty",
        ),
        (
            "AWS/ namespace",
            format!("{base}[metrics]\ncomponents_namespace = \"AWS/SageMaker\"\n"),
            "metrics.components_namespace",
            "AWS/",
        ),
        (
            "interval over window",
            format!(
                "{base}[metrics]\npublish_frequency_seconds = 10\nsample_interval_ms = 30000\n"
            ),
            "metrics.sample_interval_ms",
            "allowed",
        ),
        (
            "missing endpoint",
            "[metrics]\nenhanced = true\n".into(),
            "endpoint",
            "missing",
        ),
    ];
    for (what, body, key, reason) in cases {
        let path = dir
            .path()
            .join(format!("{}.toml", what.replace(' ', "-").replace('/', "")));
        std::fs::write(&path, body).unwrap();
        for sub in ["run", "check-config"] {
            let (code, stdout, stderr) = run_to_exit(&[sub, "--config", path.to_str().unwrap()]);
            assert_eq!(code, Some(78), "{what} via {sub}: {stderr}");
            assert!(stdout.is_empty(), "{what}: nothing on stdout");
            assert_eq!(stderr.lines().count(), 1, "{what}: one message: {stderr}");
            assert!(
                stderr.contains(path.to_str().unwrap()),
                "{what} names the file: {stderr}"
            );
            assert!(stderr.contains(key), "{what} names `{key}`: {stderr}");
            assert!(stderr.contains(reason), "{what} says `{reason}`: {stderr}");
        }
    }
    let (code, _, stderr) = run_to_exit(&["run", "--config", "/nonexistent/agent.toml"]);
    assert_eq!(code, Some(78));
    assert!(
        stderr.contains("/nonexistent/agent.toml") && stderr.contains("cannot read"),
        "{stderr}"
    );
}

#[test]
fn check_config_accepts_the_example_and_summarizes_it() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/agent.toml.example");
    let (code, stdout, stderr) = run_to_exit(&["check-config", "--config", example]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("is valid")
            && stdout.contains("publish every 60 s")
            && stdout.contains("cost: $5.752 per hour divided by 4 GPUs (AWS price list"),
        "{stdout}"
    );
}

#[test]
fn version_and_help() {
    let (code, stdout, _) = run_to_exit(&["--version"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        stdout.trim(),
        format!("endpoint-metrics-agent {}", env!("CARGO_PKG_VERSION"))
    );
    let (code, stdout, _) = run_to_exit(&["--help"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("check-config") && stdout.contains("run"));
}

/// Runs the agent with `config` for about two seconds and returns its EMF documents and stderr.
fn run_briefly(config: &str) -> (Vec<Value>, Logs) {
    let dir = Workdir::new();
    let agent = Agent::start(&dir, config);
    std::thread::sleep(Duration::from_secs(2));
    let stopped: Stopped = agent.stop().success();
    (stopped.stdout_documents(), stopped.logs)
}

fn with_endpoint_keys(keys: &str) -> String {
    config(false, "stdout").replace(
        "instance_id = \"test-host\"\n",
        &format!("instance_id = \"test-host\"\n{keys}"),
    )
}

/// Issue 7: an instance type the price table lacks, without `[cost] instance_hourly_price_usd`:
/// no cost series, exactly one warning; `cost` refuses with the configuration status.
#[test]
fn an_unpriced_instance_type_turns_cost_off_with_one_warning() {
    let body = with_endpoint_keys("instance_type = \"ml.unknown.large\"\n");
    let (docs, logs) = run_briefly(&body);
    assert!(!docs.is_empty());
    assert!(
        docs.iter()
            .all(|d| d.get("UnallocatedGPUCostPerHour").is_none() && d.get("CostPerHour").is_none()),
        "no cost series"
    );
    let warnings = logs.counted_warnings("cost_unpriced");
    assert_eq!(warnings.len(), 1, "{}", logs.text());
    assert!(warnings[0].contains("ml.unknown.large"), "{}", logs.text());
    assert_eq!(logs.final_counter("cost_unpriced"), 1);

    let dir = Workdir::new();
    let cfg = dir.write("agent.toml", &body);
    let (code, stdout, stderr) = run_to_exit(&["cost", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("\"ml.unknown.large\" is not in the price table"),
        "{stderr}"
    );
}

/// Without NVML and Docker a priced instance's GPUs (from the table) are all unallocated: the
/// whole price, accrued over each 0.5 s tick.
#[test]
fn a_priced_instance_with_no_copies_is_all_unallocated() {
    let (docs, logs) = run_briefly(&with_endpoint_keys("instance_type = \"ml.g6.12xlarge\"\n"));
    let instance: Vec<&Value> = docs
        .iter()
        .filter(|d| d.get("UnallocatedGPUCostPerHour").is_some())
        .collect();
    assert!(!instance.is_empty(), "{}", logs.text());
    for d in instance {
        assert_eq!(
            d["_aws"]["CloudWatchMetrics"][0]["Namespace"],
            "/aws/sagemaker/Endpoints"
        );
        let per_hour: Vec<f64> = d["UnallocatedGPUCostPerHour"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        assert!(per_hour.iter().all(|v| *v == 5.752), "{d}");
        for v in d["UnallocatedGPUCostAccrued"].as_array().unwrap() {
            let half_seconds = v.as_f64().unwrap() / (5.752 * 0.5 / 3600.0);
            assert!(
                half_seconds >= 0.999 && (half_seconds - half_seconds.round()).abs() < 1e-9,
                "{v}"
            );
        }
        assert!(
            d.get("IdleGPUCostAccrued").is_none(),
            "no measured use without NVML"
        );
    }
    assert!(
        logs.counted_warnings("cost_unpriced").is_empty(),
        "{}",
        logs.text()
    );
    assert_eq!(logs.final_counter("cost_unpriced"), 0);
}

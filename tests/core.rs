//! The agent core through the built binary: its real EMF output, its exit codes and its logs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "test code: a failed step stops it with its message (Cargo.toml [lints] is for the agent)"
)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_endpoint-metrics-agent");

const HOST_METRICS: [&str; 4] = [
    "CPUUtilization",
    "CPUUtilizationNormalized",
    "MemoryUtilization",
    "DiskUtilization",
];

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("agent.toml");
    std::fs::write(&path, body).unwrap();
    path
}

fn config(enhanced: bool, destination: &str) -> String {
    format!(
        "[endpoint]\nname = \"core-test\"\nvariant = \"AllTraffic\"\ninstance_id = \"test-host\"\n\
         [metrics]\nenhanced = {enhanced}\npublish_frequency_seconds = 10\nsample_interval_ms = 500\n\
         [output]\nemf_destination = \"{destination}\"\n[gpu]\nenabled = false\n[docker]\nenabled = false\n[admin]\nenabled = false\n"
    )
}

/// A running agent, killed if the test ends early.
struct Agent(Child);

impl Agent {
    fn start(config: &Path, stdout: Stdio) -> Agent {
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Agent(child)
    }

    fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.0.id() as i32, signal) }, 0);
    }

    /// Waits for exit; returns the status code and how long it took.
    fn wait(&mut self, limit: Duration) -> (Option<i32>, Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.0.try_wait().unwrap() {
                return (status.code(), start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("agent did not exit within {limit:?}");
    }

    fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.0.stderr.take() {
            e.read_to_string(&mut s).unwrap();
        }
        s
    }

    /// Everything it wrote on stdout (started with `Stdio::piped()`), once it has exited.
    fn stdout(&mut self) -> String {
        let mut s = String::new();
        self.0
            .stdout
            .take()
            .expect("stdout piped")
            .read_to_string(&mut s)
            .unwrap();
        s
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn documents(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
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
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("emf.log");
    let cfg = write_config(
        dir.path(),
        &config(true, &format!("file:{}", out.display())),
    );
    let mut agent = Agent::start(&cfg, Stdio::null());
    // Wait for two closed windows: the first is partial (started mid-window), the second full.
    let deadline = Instant::now() + Duration::from_secs(35);
    loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if timestamps(&documents(&text)).len() >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "no two windows in time: {text}");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(1200));
    agent.signal(libc::SIGTERM);
    let (code, took) = agent.wait(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(5), "exit took {took:?}");
    let stderr = agent.stderr();
    assert!(stderr.contains("SIGTERM"), "{stderr}");

    let docs = documents(&std::fs::read_to_string(&out).unwrap());
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
fn plain_run_prints_only_emf_on_stdout_and_stops_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &config(false, "stdout"));
    let mut agent = Agent::start(&cfg, Stdio::piped());
    std::thread::sleep(Duration::from_secs(2));
    agent.signal(libc::SIGINT);
    let (code, took) = agent.wait(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(5));
    let docs = documents(&agent.stdout());
    assert!(!docs.is_empty(), "the partial window is flushed on SIGINT");
    for doc in &docs {
        check_host_document(doc, false);
    }
    let stderr = agent.stderr();
    assert!(
        stderr.contains("agent started"),
        "logs go to stderr: {stderr}"
    );
}

#[test]
fn json_logs_are_json_lines_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let body = config(
        false,
        &format!("file:{}", dir.path().join("emf.log").display()),
    ) + "[log]\nformat = \"json\"\n";
    let cfg = write_config(dir.path(), &body);
    let mut agent = Agent::start(&cfg, Stdio::null());
    std::thread::sleep(Duration::from_millis(800));
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait(Duration::from_secs(10)).0, Some(0));
    let stderr = agent.stderr();
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

fn run_to_exit(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
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
fn run_briefly(config: &str) -> (Vec<Value>, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), config);
    let mut agent = Agent::start(&cfg, Stdio::piped());
    std::thread::sleep(Duration::from_secs(2));
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait(Duration::from_secs(10)).0, Some(0));
    (documents(&agent.stdout()), agent.stderr())
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
    let (docs, stderr) = run_briefly(&body);
    assert!(!docs.is_empty());
    assert!(
        docs.iter()
            .all(|d| d.get("UnallocatedGPUCostPerHour").is_none() && d.get("CostPerHour").is_none()),
        "no cost series"
    );
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("cost_unpriced"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains("ml.unknown.large"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &body);
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
    let (docs, stderr) = run_briefly(&with_endpoint_keys("instance_type = \"ml.g6.12xlarge\"\n"));
    let instance: Vec<&Value> = docs
        .iter()
        .filter(|d| d.get("UnallocatedGPUCostPerHour").is_some())
        .collect();
    assert!(!instance.is_empty(), "{stderr}");
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
        !stderr
            .lines()
            .any(|l| l.contains("WARN") && l.contains("cost_unpriced")),
        "{stderr}"
    );
}

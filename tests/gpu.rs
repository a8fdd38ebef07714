//! GPU metrics through the real nvml-wrapper code path over a scripted fake driver library
//! (tests/fixtures/fake_nvml), one copy per test; and, with `--ignored` on a machine with an
//! NVIDIA GPU, the same collector and binary against the real driver (docs/gpu.md).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "test code: a failed step stops it with its message (Cargo.toml [lints] is for the agent)"
)]

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::agent::{namespace, timestamp_ms, Agent, Logs, Workdir, WAIT_LIMIT};
use common::docker::{docker_ok, docker_ready, engine_socket, image, RemoveOnDrop};
use common::fake_nvml::{self, devices, Calls, FakeNvml};
use endpoint_metrics_agent::catalog::Metric;
use endpoint_metrics_agent::clock::system_now_ms;
use endpoint_metrics_agent::collectors::gpu::{
    self, GpuDevice, GpuHealth, GpuOptions, GpuProcess, GpuReading, MigActivity, NvmlCollector,
    ProcessCopies, ProcessUtilization,
};
use endpoint_metrics_agent::collectors::worker::Worker;
use endpoint_metrics_agent::config::GpuHealthGroup;
use endpoint_metrics_agent::telemetry::{self, Counter};
use serde_json::Value;
use tokio::sync::{Mutex, MutexGuard};

const GIB: u64 = 1 << 30;
const INTERVAL_MS: u64 = 500;

fn collector(fake: &FakeNvml) -> NvmlCollector {
    let mut options = GpuOptions::new(&fake.library_str(), INTERVAL_MS);
    options.lost_retry_base = Duration::from_millis(100);
    options.lost_retry_max = Duration::from_millis(100);
    options.init_retry_base = Duration::from_millis(100);
    options.init_retry_max = Duration::from_millis(100);
    options.process_min_interval_ms = 0;
    NvmlCollector::new(options)
}

/// The agent's counters are process-wide, and `cargo test` runs this file's tests as threads of
/// one process: every test that runs an NVML collector here (any of them may count an error)
/// holds this while it runs, so a counter read before a step and after it moved by that step
/// alone. (nextest runs each test in a process of its own; there it costs nothing.)
fn counters() -> MutexGuard<'static, ()> {
    COUNTERS.blocking_lock()
}

static COUNTERS: Mutex<()> = Mutex::const_new(());

fn process(reading: &GpuReading, gpu: u32, pid: u32) -> Option<&GpuProcess> {
    reading
        .processes
        .iter()
        .find(|p| p.gpu_index == gpu && p.pid == pid)
}

#[test]
fn zero_one_four_and_eight_gpus_read_as_scripted() {
    let _counters = counters();
    for n in [0u32, 1, 4, 8] {
        let fake = FakeNvml::new();
        fake.script(&devices(n));
        let mut c = collector(&fake);
        let reading = c.read(system_now_ms());
        assert!(c.is_initialised(), "{n} GPUs");
        let expected: Vec<GpuDevice> = (0..n)
            .map(|i| GpuDevice {
                index: i,
                uuid: format!("GPU-test-{i}"),
                utilization_percent: Some(f64::from(10 + i)),
                memory_used_bytes: 2 * GIB * u64::from(i + 1),
                memory_total_bytes: 80 * GIB,
                process_utilization: Default::default(),
            })
            .collect();
        assert_eq!(reading.devices, expected, "{n} GPUs");
        assert!(reading.processes.is_empty());
    }
}

#[test]
fn the_script_is_re_read_when_it_changes() {
    let _counters = counters();
    let fake = FakeNvml::new();
    fake.script(&devices(1));
    let mut c = collector(&fake);
    assert_eq!(c.read(system_now_ms()).devices.len(), 1);
    fake.script(&format!("{}device 0 util=77\n", devices(2)));
    let reading = c.read(system_now_ms());
    assert_eq!(reading.devices.len(), 2);
    assert_eq!(reading.devices[0].utilization_percent, Some(77.0));
}

#[test]
fn processes_carry_memory_and_sm_utilization_since_the_last_sample() {
    let _counters = counters();
    let fake = FakeNvml::new();
    fake.script(&format!(
        "{}\
         process 0 compute 1001 {}\n\
         process 0 graphics 1002 {}\n\
         process 0 compute 1003 na\n\
         process 0 graphics 1003 na\n\
         process 1 compute 2001 {}\n\
         sample 0 1001 40\n\
         stale_sample 0 1001 99\n\
         sample 1 2001 75\n\
         stale_sample 1 2001 1\n",
        devices(2),
        GIB,
        GIB / 2,
        3 * GIB
    ));
    let mut c = collector(&fake);
    for round in 0..2 {
        let reading = c.read(system_now_ms());
        let p = process(&reading, 0, 1001).expect("compute process");
        assert_eq!(p.used_memory_bytes, Some(GIB));
        assert_eq!(
            p.sm_utilization_percent,
            Some(40.0),
            "round {round}: only samples newer than the last seen, never the stale buffer"
        );
        let g = process(&reading, 0, 1002).expect("graphics process");
        assert_eq!(g.used_memory_bytes, Some(GIB / 2));
        assert_eq!(
            g.sm_utilization_percent,
            Some(0.0),
            "listed without a sample: idle"
        );
        let na = process(&reading, 0, 1003).expect("process without memory");
        assert_eq!(na.used_memory_bytes, None);
        let other = process(&reading, 1, 2001).expect("process on GPU 1");
        assert_eq!(other.used_memory_bytes, Some(3 * GIB));
        assert_eq!(other.sm_utilization_percent, Some(75.0));
        assert_eq!(reading.processes.len(), 4, "PID 1003 in both lists once");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn processes_are_enumerated_at_most_once_per_period() {
    let _counters = counters();
    let fake = FakeNvml::new();
    fake.script(&format!("{}process 0 compute 1001 100\n", devices(1)));
    let mut c = NvmlCollector::new(GpuOptions::new(&fake.library_str(), INTERVAL_MS));
    let t = system_now_ms();
    assert!(process(&c.read(t), 0, 1001).is_some());
    fake.script(&format!("{}process 0 compute 1002 100\n", devices(1)));
    let between = c.read(t + 500);
    assert!(
        process(&between, 0, 1001).is_some() && process(&between, 0, 1002).is_none(),
        "the last enumeration is carried between enumerations: {:?}",
        between.processes
    );
    let after = c.read(t + gpu::PROCESS_ENUMERATION_MIN_INTERVAL_MS);
    assert!(process(&after, 0, 1002).is_some() && process(&after, 0, 1001).is_none());
}

#[test]
fn no_new_utilization_samples_mean_idle_not_an_error() {
    let _counters = counters();
    let fake = FakeNvml::new();
    fake.script(&format!("{}process 0 compute 1001 100\n", devices(1)));
    let mut c = collector(&fake);
    for _ in 0..2 {
        let reading = c.read(system_now_ms());
        let p = process(&reading, 0, 1001).expect("process");
        assert_eq!(p.sm_utilization_percent, Some(0.0), "NOT_FOUND is idle");
        assert_eq!(reading.devices.len(), 1);
    }
}

#[test]
fn mig_reports_memory_and_leaves_utilization_absent() {
    let _counters = counters();
    let fake = FakeNvml::new();
    fake.script(&format!(
        "{}device 1 mig=1 util=55 mem_used={} mem_total={}\n\
         process 1 compute 3001 {} gi=1 ci=0\nsample 1 3001 50\n",
        devices(1),
        8 * GIB,
        80 * GIB,
        GIB
    ));
    let mut c = collector(&fake);
    let reading = c.read(system_now_ms());
    let mig = &reading.devices[1];
    assert_eq!(
        mig.utilization_percent, None,
        "never a false 0 (nor the 55)"
    );
    assert_eq!(mig.memory_used_bytes, 8 * GIB);
    let p = process(&reading, 1, 3001).expect("MIG process listed");
    assert_eq!(p.used_memory_bytes, Some(GIB));
    assert_eq!(p.sm_utilization_percent, None);
    let mut samples = Vec::new();
    reading.samples(&mut samples);
    let instance_util: Vec<f64> = samples
        .iter()
        .filter(|s| s.key.metric.name() == "GPUUtilizationNormalized")
        .map(|s| s.value)
        .collect();
    assert_eq!(instance_util, vec![10.0], "the MIG GPU is not averaged in");
}

#[test]
fn unsupported_calls_leave_their_values_absent() {
    let _counters = counters();
    let fake = FakeNvml::new();
    fake.script(&format!(
        "{}process 0 compute 1001 100\nsample 0 1001 30\n\
         unsupported 0 nvmlDeviceGetUtilizationRates\n\
         unsupported * nvmlDeviceGetProcessUtilization\n\
         unsupported * nvmlDeviceGetMigMode\n",
        devices(2)
    ));
    let mut c = collector(&fake);
    let reading = c.read(system_now_ms());
    assert_eq!(reading.devices[0].utilization_percent, None);
    assert_eq!(reading.devices[0].memory_used_bytes, 2 * GIB);
    assert_eq!(reading.devices[1].utilization_percent, Some(11.0));
    let p = process(&reading, 0, 1001).expect("process");
    assert_eq!(p.sm_utilization_percent, None);
    assert_eq!(p.used_memory_bytes, Some(100));
}

#[test]
fn failing_calls_cost_their_own_data_only() {
    let _counters = counters();
    let fake = FakeNvml::new();
    fake.script(&format!(
        "{}process 0 compute 1001 100\nprocess 1 compute 2001 100\n\
         error 0 nvmlDeviceGetComputeRunningProcesses_v3 999\n\
         error 2 nvmlDeviceGetUtilizationRates 999\n",
        devices(3)
    ));
    let mut c = collector(&fake);
    let before = telemetry::get(Counter::GpuErrors);
    let reading = c.read(system_now_ms());
    let indices: Vec<u32> = reading.devices.iter().map(|d| d.index).collect();
    assert_eq!(indices, vec![0, 1], "GPU 2 has no data this sample");
    assert!(process(&reading, 0, 1001).is_none(), "GPU 0's list failed");
    assert!(process(&reading, 1, 2001).is_some());
    assert_eq!(
        telemetry::get(Counter::GpuErrors),
        before + 2,
        "GPU 0's process list and GPU 2's utilization"
    );
}

#[test]
fn an_old_driver_without_the_v2_memory_call_falls_back_to_v1() {
    let _counters = counters();
    let fake = FakeNvml::with_defines(&["FAKE_NVML_NO_MEMORY_V2"]);
    fake.script(&devices(4));
    let mut c = collector(&fake);
    for _ in 0..2 {
        let reading = c.read(system_now_ms());
        assert_eq!(reading.devices.len(), 4);
        for d in &reading.devices {
            assert_eq!(d.memory_used_bytes, 2 * GIB * u64::from(d.index + 1));
            assert_eq!(d.memory_total_bytes, 80 * GIB);
        }
    }
}

#[test]
fn a_process_list_with_an_impossible_layout_is_rejected() {
    let _counters = counters();
    let fake = FakeNvml::new();
    fake.script(&format!(
        "{}process 0 compute 1001 100\nprocess 0 compute 1002 200\nprocess 0 compute 1003 300\n\
         process_stride 0 32\n\
         process 1 compute 2001 100\nprocess 1 compute 2002 200\n",
        devices(2)
    ));
    let mut c = collector(&fake);
    let before = telemetry::get(Counter::GpuProcessListsRejected);
    let reading = c.read(system_now_ms());
    assert!(
        reading.processes.iter().all(|p| p.gpu_index == 1),
        "GPU 0's scrambled list is not misread: {:?}",
        reading.processes
    );
    assert_eq!(reading.processes.len(), 2);
    assert_eq!(reading.devices.len(), 2, "the GPU itself is still reported");
    assert_eq!(telemetry::get(Counter::GpuProcessListsRejected), before + 1);
}

#[test]
fn a_single_entry_in_the_other_layout_is_still_read_right() {
    let _counters = counters();
    // One 32-byte entry starts like a 24-byte one: nothing to reject.
    let fake = FakeNvml::new();
    fake.script(&format!(
        "{}process 0 compute 1001 100\nprocess_stride 0 32\n",
        devices(1)
    ));
    let reading = collector(&fake).read(system_now_ms());
    assert_eq!(
        process(&reading, 0, 1001).and_then(|p| p.used_memory_bytes),
        Some(100)
    );
}

#[test]
fn init_failure_means_no_gpus_and_retries_until_the_driver_appears() {
    let _counters = counters();
    let fake = FakeNvml::new();
    fake.script("init_error 9\n"); // NVML_ERROR_DRIVER_NOT_LOADED
    let mut c = collector(&fake);
    let before = telemetry::get(Counter::GpuUnavailable);
    let t = system_now_ms();
    assert_eq!(c.read(t), GpuReading::default());
    assert_eq!(c.read(t + 1), GpuReading::default());
    assert!(!c.is_initialised());
    assert_eq!(
        telemetry::get(Counter::GpuUnavailable),
        before + 1,
        "one failed initialisation; the read 1 ms later waits for the retry time"
    );
    fake.script(&devices(1));
    let reading = c.read(t + 10_000);
    assert!(c.is_initialised());
    assert_eq!(reading.devices.len(), 1);
}

#[test]
fn a_missing_library_means_no_gpus() {
    let _counters = counters();
    let mut c = NvmlCollector::new(GpuOptions::new(
        "/nonexistent/libnvidia-ml.so.1",
        INTERVAL_MS,
    ));
    assert_eq!(c.read(system_now_ms()), GpuReading::default());
    assert!(!c.is_initialised());
}

#[test]
fn a_lost_gpu_stops_its_series_and_comes_back_after_re_initialisation() {
    let _counters = counters();
    let fake = FakeNvml::new();
    fake.script(&format!(
        "{}process 1 compute 2001 100\nlost 1\n",
        devices(3)
    ));
    let mut c = collector(&fake);
    let before = telemetry::get(Counter::GpuLost);
    let t = system_now_ms();
    let reading = c.read(t);
    let indices: Vec<u32> = reading.devices.iter().map(|d| d.index).collect();
    assert_eq!(indices, vec![0, 2], "GPU 1's series stop");
    assert!(reading.processes.is_empty());
    assert_eq!(telemetry::get(Counter::GpuLost), before + 1);
    // Still lost at the retry: no new warning is needed, the series stay stopped.
    let reading = c.read(t + 1_000);
    assert_eq!(reading.devices.len(), 2);
    fake.script(&format!("{}process 1 compute 2001 100\n", devices(3)));
    let reading = c.read(t + 2_000);
    let indices: Vec<u32> = reading.devices.iter().map(|d| d.index).collect();
    assert_eq!(indices, vec![0, 1, 2], "re-initialised and back");
    assert!(process(&reading, 1, 2001).is_some());
}

/// Asks the worker as the GPU source does: at the tick, answered by the tick's deadline.
async fn ask(
    worker: &mut Worker<GpuReading>,
    tick_ms: u64,
    timeout: Duration,
) -> Option<GpuReading> {
    worker.ask(tick_ms);
    let deadline = tokio::time::Instant::now() + timeout;
    worker
        .answer_or_count(deadline, Counter::GpuReadsMissed)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_call_costs_its_ticks_and_then_recovers() {
    let _counters = COUNTERS.lock().await;
    let fake = FakeNvml::new();
    fake.script(&format!(
        "{}hang nvmlDeviceGetUtilizationRates 1500 1\n",
        devices(1)
    ));
    let mut worker = Worker::spawn("gpu-test", collector(&fake)).unwrap();
    let missed = telemetry::get(Counter::GpuReadsMissed);
    let timeout = Duration::from_millis(200);
    let t = system_now_ms();
    assert_eq!(ask(&mut worker, t, timeout).await, None);
    assert_eq!(ask(&mut worker, t + 1, timeout).await, None);
    // The first read timed out, the second found the thread still stuck: one each.
    assert_eq!(telemetry::get(Counter::GpuReadsMissed), missed + 2);
    // The hang ends; the next tick reads again (the stale reply is dropped).
    let mut recovered = None;
    for i in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(r) = ask(&mut worker, t + 2 + i, timeout).await {
            recovered = Some(r);
            break;
        }
    }
    let reading = recovered.expect("GPU data again after the hang");
    assert_eq!(reading.devices[0].utilization_percent, Some(10.0));
}

// ---- The built binary: published EMF against the script ----

struct Run {
    docs: Vec<Value>,
    logs: Logs,
}

/// How long [`run_agent`] lets the agent run when `done` never holds (its callers then fail on
/// what the documents lack).
const RUN_LIMIT: Duration = Duration::from_secs(30);

/// Runs the agent with `[gpu]` pointing at `library` until `done(docs)` holds (or
/// [`RUN_LIMIT`]), then SIGTERM, and returns every EMF document it wrote and its logs.
fn run_agent(
    library: &str,
    extra_gpu: &str,
    enhanced: bool,
    done: impl Fn(&[Value]) -> bool,
) -> Run {
    run_agent_with_admin(library, extra_gpu, enhanced, None, |docs| done(docs))
}

/// [`run_agent`] with the admin endpoint on `admin` (an address) when given; `done` may ask it.
fn run_agent_with_admin(
    library: &str,
    extra_gpu: &str,
    enhanced: bool,
    admin: Option<&str>,
    mut done: impl FnMut(&[Value]) -> bool,
) -> Run {
    let admin = match admin {
        Some(listen) => format!(
            "[admin]
enabled = true
listen = \"{listen}\"
"
        ),
        None => "[admin]
enabled = false
"
        .into(),
    };
    let dir = Workdir::new();
    let config = format!(
        "[endpoint]
name = \"ep\"
instance_id = \"test-host\"
\
         [metrics]
enhanced = {enhanced}
publish_frequency_seconds = 10
sample_interval_ms = {INTERVAL_MS}
data_points = \"every_sample\"
\
         [output]
emf_destination = \"{}\"
\
         [log]
level = \"info\"
\
         [docker]
enabled = false
{admin}\
         [gpu]
nvml_library = \"{library}\"
{extra_gpu}
",
        dir.emf_destination()
    );
    let agent = Agent::start(&dir, &config);
    let deadline = std::time::Instant::now() + RUN_LIMIT;
    while std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        if done(&agent.documents()) {
            break;
        }
    }
    let stopped = agent.stop().success();
    Run {
        docs: stopped.documents(),
        logs: stopped.logs,
    }
}

/// Every value of `metric` in documents of the given GPU (dimension `dim` = `gpu`) or, with
/// `gpu` None, in documents without that dimension (the instance series).
fn values(docs: &[Value], metric: &str, dim: &str, gpu: Option<&str>) -> Vec<f64> {
    docs.iter()
        .filter(|d| d.get(dim).and_then(Value::as_str) == gpu)
        .filter_map(|d| d.get(metric))
        .flat_map(|v| match v {
            Value::Array(a) => a.iter().filter_map(Value::as_f64).collect(),
            v => v.as_f64().into_iter().collect::<Vec<_>>(),
        })
        .collect()
}

fn has(metric: &'static str) -> impl Fn(&[Value]) -> bool {
    move |docs| docs.iter().any(|d| d.get(metric).is_some())
}

fn assert_all(values: &[f64], expected: f64, what: &str) {
    assert!(!values.is_empty(), "{what}: no values");
    for v in values {
        assert!(
            (v - expected).abs() < 1e-9,
            "{what}: {v} != {expected} in {values:?}"
        );
    }
}

#[test]
fn the_binary_publishes_per_gpu_and_instance_values_from_the_script() {
    let fake = FakeNvml::new();
    fake.script(&devices(4));
    let run = run_agent(&fake.library_str(), "", true, has("GPUUtilization"));
    let d = &run.docs;
    for i in 0..4u32 {
        let gpu = format!("gpu_{i}");
        assert_all(
            &values(d, "GPUUtilization", "GpuId", Some(&gpu)),
            f64::from(10 + i),
            "per-GPU utilization",
        );
        assert_all(
            &values(d, "GPUMemoryUtilization", "GpuId", Some(&gpu)),
            2.0 * f64::from(i + 1) * 100.0 / 80.0,
            "per-GPU memory",
        );
    }
    // 10 + 11 + 12 + 13; memory 2.5 + 5 + 7.5 + 10 (% of 80 GiB).
    assert_all(
        &values(d, "GPUUtilization", "GpuId", None),
        46.0,
        "instance sum",
    );
    assert_all(
        &values(d, "GPUUtilizationNormalized", "GpuId", None),
        11.5,
        "instance normalized",
    );
    assert_all(
        &values(d, "GPUMemoryUtilization", "GpuId", None),
        25.0,
        "memory sum",
    );
    assert_all(
        &values(d, "GPUMemoryUtilizationNormalized", "GpuId", None),
        6.25,
        "memory normalized",
    );
    let gpu_doc = d
        .iter()
        .find(|doc| doc.get("GpuId") == Some(&Value::from("gpu_3")))
        .unwrap();
    assert_eq!(gpu_doc["InstanceId"], "test-host");
    assert_eq!(
        gpu_doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
        serde_json::json!([["EndpointName", "VariantName", "InstanceId", "GpuId"]])
    );
    assert_eq!(
        gpu_doc["_aws"]["CloudWatchMetrics"][0]["Namespace"],
        "/aws/sagemaker/Endpoints"
    );
}

#[test]
fn without_enhanced_metrics_only_instance_gpu_series_are_published() {
    let fake = FakeNvml::new();
    fake.script(&devices(8));
    let run = run_agent(
        &fake.library_str(),
        "dimension_name = \"AcceleratorId\"",
        false,
        has("GPUUtilization"),
    );
    let d = &run.docs;
    assert!(
        d.iter().all(|doc| doc.get("GpuId").is_none()),
        "the dimension is named AcceleratorId"
    );
    // Per-GPU documents carry only the health series (`[gpu] health`), which are per GPU
    // whatever `enhanced` says; the utilization series are not per GPU without it.
    for doc in d.iter().filter(|doc| doc.get("AcceleratorId").is_some()) {
        let metrics = doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap();
        assert!(
            metrics
                .iter()
                .all(|m| m["Name"].as_str().unwrap().starts_with("DCGM_")),
            "no per-GPU utilization documents without enhanced metrics: {doc}"
        );
    }
    // 10 + 11 + ... + 17 = 108 over 8 GPUs.
    assert_all(
        &values(d, "GPUUtilization", "AcceleratorId", None),
        108.0,
        "sum",
    );
    assert_all(
        &values(d, "GPUUtilizationNormalized", "AcceleratorId", None),
        13.5,
        "normalized",
    );
    for doc in d.iter().filter(|doc| doc.get("GPUUtilization").is_some()) {
        assert_eq!(
            doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            serde_json::json!([["EndpointName", "VariantName"]])
        );
    }
}

#[test]
fn the_binary_runs_on_without_a_library_and_warns_once() {
    let run = run_agent(
        "/nonexistent/libnvidia-ml.so.1",
        "",
        true,
        has("MemoryUtilization"),
    );
    assert!(
        run.docs
            .iter()
            .all(|d| d.get("GPUUtilization").is_none() && d.get("GPUMemoryUtilization").is_none()),
        "no GPU metrics without NVML"
    );
    assert!(!values(&run.docs, "MemoryUtilization", "GpuId", None).is_empty());
    assert_eq!(
        run.logs.count_messages("NVML unavailable"),
        1,
        "one warning: {}",
        run.logs.text()
    );
}

#[test]
fn the_binary_with_zero_gpus_publishes_no_gpu_series() {
    let fake = FakeNvml::new();
    fake.script("");
    let run = run_agent(&fake.library_str(), "", true, has("MemoryUtilization"));
    assert!(run.docs.iter().all(|d| d.get("GPUUtilization").is_none()));
    assert!(
        run.logs.find_message("NVML initialised").is_some(),
        "{}",
        run.logs.text()
    );
}

#[test]
fn a_hanging_nvml_call_never_stalls_host_metrics() {
    let fake = FakeNvml::new();
    fake.script(&format!(
        "{}hang nvmlDeviceGetUtilizationRates 2000 1\n",
        devices(2)
    ));
    let run = run_agent(&fake.library_str(), "", true, |docs| {
        values(docs, "GPUUtilization", "GpuId", None).len() >= 2
    });
    let host = values(&run.docs, "MemoryUtilization", "GpuId", None);
    let gpu = values(&run.docs, "GPUUtilization", "GpuId", None);
    assert!(!gpu.is_empty(), "GPU data recovers after the hang");
    assert_all(&gpu, 21.0, "instance sum after recovery");
    assert!(
        host.len() >= gpu.len() + 3,
        "host samples went on during the 2 s hang: host {} gpu {}",
        host.len(),
        gpu.len()
    );
    // Every tick the hang cost is warned and counted, one line each.
    let warned = run.logs.counted_warnings("gpu_reads_missed").len();
    assert!(warned >= 1, "{}", run.logs.text());
    assert_eq!(run.logs.final_counter("gpu_reads_missed"), warned as u64);
}

// ---- GPU health (issue 17) ----

const ALL_GROUPS: &str = "health = [\"temperature\", \"power\", \"clocks\", \"throttle\", \"memory\", \"ecc\", \"xid\", \"gpm\"]";

/// Two GPUs: GPU 0 with every health figure scripted (row remapping, GPM), GPU 1 with none
/// (every health call NOT_SUPPORTED), as `devices(2)` otherwise.
fn health_script() -> String {
    format!(
        "device 0 uuid=GPU-test-0 util=10 mem_util=37 mem_used={} mem_total={} temp=65 \
         power_mw=350500 limit_mw=700000 energy_mj=1000000 energy_step_mj=5000 sm_clock=1980 \
         mem_clock=2619 reasons=0x24\n\
         device 1 uuid=GPU-test-1 util=11 mem_used={} mem_total={}\n\
         field 0 82 71\n\
         field 0 3 12\nfield 0 4 0\nfield 0 142 2\nfield 0 143 1\nfield 0 144 0\nfield 0 145 0\n\
         field 0 94 5\n\
         gpm 0 sm=62 dram=41\n",
        2 * GIB,
        80 * GIB,
        4 * GIB,
        80 * GIB
    )
}

fn health_collector(fake: &FakeNvml, groups: &[GpuHealthGroup]) -> NvmlCollector {
    let mut options = GpuOptions::new(&fake.library_str(), INTERVAL_MS);
    options.process_min_interval_ms = 0;
    options.health = groups.to_vec();
    NvmlCollector::new(options)
}

/// Every group but XID, whose events are registered by a thread of their own (tested apart).
fn groups_but_xid() -> Vec<GpuHealthGroup> {
    GpuHealthGroup::ALL
        .into_iter()
        .filter(|g| *g != GpuHealthGroup::Xid)
        .collect()
}

fn health_of(reading: &GpuReading, gpu: u32) -> &GpuHealth {
    reading
        .health
        .iter()
        .find(|h| h.index == gpu)
        .unwrap_or_else(|| panic!("no health for GPU {gpu}: {reading:?}"))
}

#[test]
fn every_health_field_reads_as_scripted() {
    let fake = FakeNvml::new();
    fake.script(&health_script());
    let mut c = health_collector(&fake, &groups_but_xid());
    let t = system_now_ms();
    let first = c.read(t);
    let h = health_of(&first, 0);
    assert_eq!(h.energy_joules, None, "no energy before a baseline");
    assert_eq!(h.sm_active, None, "GPM needs two samples");
    let second = c.read(t + INTERVAL_MS);
    let h = health_of(&second, 0);
    let ecc = vec![
        (Metric::GpuEccSbeVolatile, 12.0),
        (Metric::GpuEccDbeVolatile, 0.0),
        (Metric::GpuRemappedRowsCorrectable, 2.0),
        (Metric::GpuRemappedRowsUncorrectable, 1.0),
        (Metric::GpuRowRemapPending, 0.0),
        (Metric::GpuRowRemapFailure, 0.0),
        (Metric::GpuPcieReplays, 5.0),
    ];
    let expected = GpuHealth {
        index: 0,
        temperature_c: Some(65.0),
        memory_temperature_c: Some(71.0),
        power_watts: Some(350.5),
        power_limit_watts: Some(700.0),
        energy_joules: Some(5.0),
        sm_clock_mhz: Some(1980.0),
        memory_clock_mhz: Some(2619.0),
        clock_event_reasons: Some(0x24),
        framebuffer_used_mib: Some(2048.0),
        framebuffer_free_mib: Some(78.0 * 1024.0),
        memory_copy_utilization_percent: Some(37.0),
        ecc,
        xid_errors: None,
        sm_active: Some(0.62),
        dram_active: Some(0.41),
        mig: vec![],
    };
    assert_eq!(h, &expected);
    assert_eq!(second.devices.len(), 2, "the device series are unchanged");
}

#[test]
fn unsupported_health_calls_are_absent_never_zero_and_logged_once() {
    let fake = FakeNvml::new();
    fake.script(&health_script());
    let mut c = health_collector(&fake, &groups_but_xid());
    let before = telemetry::get(Counter::GpuHealthUnsupported);
    let t = system_now_ms();
    c.read(t);
    let after_first = telemetry::get(Counter::GpuHealthUnsupported);
    assert!(after_first > before, "counted");
    let reading = c.read(t + INTERVAL_MS);
    let h = health_of(&reading, 1);
    let mut samples = Vec::new();
    h.samples(&mut samples);
    // Only the figures that need no health call: framebuffer and copy utilization (memory
    // group, from the device reads).
    let names: Vec<&str> = samples.iter().map(|s| s.key.metric.name()).collect();
    assert_eq!(
        names,
        vec![
            "DCGM_FI_DEV_FB_USED",
            "DCGM_FI_DEV_FB_FREE",
            "DCGM_FI_DEV_MEM_COPY_UTIL"
        ],
        "{h:?}"
    );
    assert_eq!(
        telemetry::get(Counter::GpuHealthUnsupported),
        after_first,
        "logged and counted once per GPU and call, not every sample"
    );
}

#[test]
fn a_failing_or_unsupported_health_call_costs_only_its_own_value() {
    let fake = FakeNvml::new();
    fake.script(&format!(
        "{}error 0 nvmlDeviceGetPowerUsage 999\nunsupported 0 nvmlDeviceGetTemperature\n",
        health_script()
    ));
    let mut c = health_collector(&fake, &groups_but_xid());
    let errors = telemetry::get(Counter::GpuErrors);
    let t = system_now_ms();
    c.read(t);
    let reading = c.read(t + INTERVAL_MS);
    let h = health_of(&reading, 0);
    assert_eq!(h.power_watts, None);
    assert_eq!(h.temperature_c, None);
    assert_eq!(
        h.power_limit_watts,
        Some(700.0),
        "the next call still answers"
    );
    assert_eq!(h.memory_temperature_c, Some(71.0));
    assert_eq!(h.energy_joules, Some(5.0));
    assert_eq!(reading.devices.len(), 2, "the GPU itself is still read");
    assert!(telemetry::get(Counter::GpuErrors) > errors);
}

#[test]
fn only_the_configured_groups_are_read() {
    let fake = FakeNvml::new();
    fake.script(&health_script());
    let mut c = health_collector(&fake, &[GpuHealthGroup::Temperature]);
    let reading = c.read(system_now_ms());
    let h = health_of(&reading, 0);
    assert_eq!(h.temperature_c, Some(65.0));
    assert_eq!(
        (
            h.power_watts,
            h.clock_event_reasons,
            h.xid_errors,
            h.ecc.len()
        ),
        (None, None, None, 0)
    );
    let none = health_collector(&fake, &[]).read(system_now_ms());
    assert!(none.health.is_empty(), "no group, no health entries");
}

#[test]
fn the_slow_group_is_read_on_its_cadence_and_carried_between() {
    let fake = FakeNvml::new();
    fake.script(&health_script());
    let mut options = GpuOptions::new(&fake.library_str(), INTERVAL_MS);
    options.health = vec![GpuHealthGroup::Ecc];
    options.health_slow_interval_ms = 10_000;
    let mut c = NvmlCollector::new(options);
    let sbe = |r: &GpuReading| {
        health_of(r, 0)
            .ecc
            .iter()
            .find(|(m, _)| *m == Metric::GpuEccSbeVolatile)
            .map(|&(_, v)| v)
    };
    let t = system_now_ms();
    assert_eq!(sbe(&c.read(t)), Some(12.0));
    fake.script(&health_script().replace("field 0 3 12", "field 0 3 13"));
    assert_eq!(sbe(&c.read(t + 5_000)), Some(12.0), "carried until due");
    assert_eq!(sbe(&c.read(t + 10_000)), Some(13.0), "read again when due");
}

#[test]
fn a_gpu_with_retired_pages_publishes_those_instead_of_remapped_rows() {
    let fake = FakeNvml::new();
    fake.script(&format!(
        "{}field 0 3 4\nfield 0 4 1\nfield 0 29 3\nfield 0 30 1\nfield 0 31 0\n",
        devices(1)
    ));
    let reading = health_collector(&fake, &[GpuHealthGroup::Ecc]).read(system_now_ms());
    let metrics: Vec<Metric> = health_of(&reading, 0).ecc.iter().map(|&(m, _)| m).collect();
    assert_eq!(
        metrics,
        vec![
            Metric::GpuEccSbeVolatile,
            Metric::GpuEccDbeVolatile,
            Metric::GpuRetiredPagesSbe,
            Metric::GpuRetiredPagesDbe,
            Metric::GpuRetiredPagesPending
        ]
    );
}

#[test]
fn gpm_is_read_per_mig_instance_and_absent_where_unsupported() {
    let fake = FakeNvml::new();
    fake.script(&format!(
        "{}device 1 mig=1 mem_used={} mem_total={}\ngpm 1 sm=0 dram=0\n\
         mig_instance 1 3 sm=50 dram=20\nmig_instance 1 3 sm=50 dram=20\nmig_instance 1 5 sm=10 dram=90\n",
        devices(1),
        GIB,
        80 * GIB
    ));
    let mut c = health_collector(&fake, &[GpuHealthGroup::Gpm]);
    let t = system_now_ms();
    c.read(t);
    let reading = c.read(t + INTERVAL_MS);
    let no_gpm = health_of(&reading, 0);
    assert_eq!((no_gpm.sm_active, no_gpm.dram_active), (None, None));
    let mig = health_of(&reading, 1);
    assert_eq!(mig.sm_active, None, "a MIG GPU has no device-wide figures");
    assert_eq!(
        mig.mig,
        vec![
            MigActivity {
                gpu_instance: 3,
                sm_active: Some(0.5),
                dram_active: Some(0.2)
            },
            MigActivity {
                gpu_instance: 5,
                sm_active: Some(0.1),
                dram_active: Some(0.9)
            },
        ],
        "one entry per GPU instance, however many compute instances it has"
    );
    assert_eq!(
        reading.devices[1].utilization_percent, None,
        "MIG as before"
    );
}

/// Reads until `enough` holds for the summed XID counts per GPU (or `within`).
fn read_xids(c: &mut NvmlCollector, within: Duration, enough: impl Fn(&[u64]) -> bool) -> Vec<u64> {
    let mut sums = Vec::new();
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let reading = c.read(system_now_ms());
        sums.resize(reading.health.len(), 0);
        for (sum, h) in sums.iter_mut().zip(&reading.health) {
            *sum += h.xid_errors.unwrap_or(0);
        }
        if enough(&sums) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    sums
}

#[test]
fn xid_events_are_counted_per_gpu_and_drained_into_readings() {
    let fake = FakeNvml::new();
    fake.script(&devices(3));
    let mut c = health_collector(&fake, &[GpuHealthGroup::Xid]);
    let before = telemetry::get(Counter::GpuXidErrors);
    // The thread starts with the first reading and registers every GPU.
    let deadline = Instant::now() + Duration::from_secs(10);
    while c
        .read(system_now_ms())
        .health
        .iter()
        .any(|h| h.xid_errors.is_none())
    {
        assert!(Instant::now() < deadline, "the GPUs were never registered");
        std::thread::sleep(Duration::from_millis(50));
    }
    fake.script(&format!("{}xid 2 13\nxid 2 13\nxid 0 63\n", devices(3)));
    let sums = read_xids(&mut c, Duration::from_secs(10), |s| s == [1, 0, 2]);
    assert_eq!(sums, vec![1, 0, 2]);
    assert_eq!(telemetry::get(Counter::GpuXidErrors), before + 3);
    // Three event waits' time: any event delivered twice would be counted by then.
    let again = read_xids(&mut c, Duration::from_millis(1500), |_| false);
    assert_eq!(again, vec![0, 0, 0], "each event is counted once");
    assert!(
        endpoint_metrics_agent::telemetry::degraded().is_empty(),
        "13 and 63 are not fatal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_health_call_costs_its_ticks_and_then_recovers() {
    let fake = FakeNvml::new();
    fake.script(&format!(
        "{}hang nvmlDeviceGetTemperature 1500 1\n",
        health_script()
    ));
    let c = health_collector(&fake, &[GpuHealthGroup::Temperature]);
    let mut worker = Worker::spawn("gpu-test", c).unwrap();
    let _counters = COUNTERS.lock().await;
    let missed = telemetry::get(Counter::GpuReadsMissed);
    let timeout = Duration::from_millis(200);
    let t = system_now_ms();
    assert_eq!(ask(&mut worker, t, timeout).await, None);
    assert_eq!(telemetry::get(Counter::GpuReadsMissed), missed + 1);
    let mut recovered = None;
    for i in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(r) = ask(&mut worker, t + 1 + i, timeout).await {
            recovered = Some(r);
            break;
        }
    }
    let reading = recovered.expect("GPU data again after the hang");
    assert_eq!(health_of(&reading, 0).temperature_c, Some(65.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_xid_wait_never_stalls_the_gpu_readings() {
    let fake = FakeNvml::new();
    // Every wait hangs 5 s: the event thread is stuck, the sampling thread is not.
    fake.script(&format!(
        "{}hang nvmlEventSetWait_v2 5000\nxid 0 48\n",
        health_script()
    ));
    let c = health_collector(&fake, &[GpuHealthGroup::Xid, GpuHealthGroup::Power]);
    let mut worker = Worker::spawn("gpu-test", c).unwrap();
    let t = system_now_ms();
    for i in 0..5 {
        let reading = ask(&mut worker, t + i, Duration::from_secs(2))
            .await
            .expect("a reading in time while the XID wait hangs");
        assert_eq!(health_of(&reading, 0).power_watts, Some(350.5));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn free_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

#[test]
fn the_binary_publishes_every_health_field_under_dcgm_names() {
    let fake = FakeNvml::new();
    fake.script(&health_script());
    let run = run_agent(&fake.library_str(), ALL_GROUPS, false, |docs| {
        values(
            docs,
            "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
            "GpuId",
            Some("gpu_0"),
        )
        .len()
            >= 3
    });
    let d = &run.docs;
    let gpu0 = |metric: &str| values(d, metric, "GpuId", Some("gpu_0"));
    let expected = [
        ("DCGM_FI_DEV_GPU_TEMP", 65.0, "None"),
        ("DCGM_FI_DEV_MEMORY_TEMP", 71.0, "None"),
        ("DCGM_FI_DEV_POWER_USAGE", 350.5, "None"),
        ("DCGM_FI_DEV_ENFORCED_POWER_LIMIT", 700.0, "None"),
        ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", 5.0, "None"),
        ("DCGM_FI_DEV_SM_CLOCK", 1980.0, "None"),
        ("DCGM_FI_DEV_MEM_CLOCK", 2619.0, "None"),
        ("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", 36.0, "None"),
        ("DCGM_FI_DEV_CLOCKS_EVENT_REASON_SW_POWER_CAP", 1.0, "None"),
        ("DCGM_FI_DEV_CLOCKS_EVENT_REASON_THERMAL", 1.0, "None"),
        ("DCGM_FI_DEV_CLOCKS_EVENT_REASON_HW_SLOWDOWN", 0.0, "None"),
        ("DCGM_FI_DEV_FB_USED", 2048.0, "Megabytes"),
        ("DCGM_FI_DEV_FB_FREE", 78.0 * 1024.0, "Megabytes"),
        ("DCGM_FI_DEV_MEM_COPY_UTIL", 37.0, "Percent"),
        ("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", 12.0, "Count"),
        ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", 0.0, "Count"),
        ("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", 2.0, "Count"),
        ("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", 1.0, "Count"),
        ("DCGM_FI_DEV_ROW_REMAP_PENDING", 0.0, "None"),
        ("DCGM_FI_DEV_ROW_REMAP_FAILURE", 0.0, "None"),
        ("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", 5.0, "Count"),
        ("DCGM_EXP_XID_ERRORS_COUNT", 0.0, "Count"),
        ("DCGM_FI_PROF_SM_ACTIVE", 0.62, "None"),
        ("DCGM_FI_PROF_DRAM_ACTIVE", 0.41, "None"),
    ];
    for (metric, value, unit) in expected {
        assert_all(&gpu0(metric), value, metric);
        let doc = d.iter().find(|doc| doc.get(metric).is_some()).unwrap();
        let directive = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(
            directive["Dimensions"],
            serde_json::json!([["EndpointName", "VariantName", "InstanceId", "GpuId"]]),
            "{metric}: per GPU even without enhanced metrics"
        );
        assert_eq!(directive["Namespace"], "/aws/sagemaker/Endpoints");
        let declared = directive["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["Name"] == metric)
            .unwrap();
        assert_eq!(declared["Unit"], unit, "{metric}");
    }
    // GPU 1 answers NOT_SUPPORTED to every health call: absent, never a false 0.
    for (metric, _, _) in expected {
        let gpu1 = values(d, metric, "GpuId", Some("gpu_1"));
        let needs_no_call = matches!(
            metric,
            "DCGM_FI_DEV_FB_USED"
                | "DCGM_FI_DEV_FB_FREE"
                | "DCGM_FI_DEV_MEM_COPY_UTIL"
                | "DCGM_EXP_XID_ERRORS_COUNT"
        );
        assert_eq!(
            !gpu1.is_empty(),
            needs_no_call,
            "{metric} on GPU 1: {gpu1:?}"
        );
    }
    assert!(
        d.iter()
            .all(|doc| doc.get("GPUUtilization").is_none() || doc.get("GpuId").is_none()),
        "the per-GPU utilization series still follow enhanced metrics"
    );
}

#[test]
fn the_binary_counts_xid_errors_logs_them_and_marks_healthz_degraded() {
    let fake = FakeNvml::new();
    fake.script(&format!("{}xid 1 79\nxid 1 79\nxid 0 94\n", devices(2)));
    let listen = free_port();
    let healthz = std::cell::RefCell::new(None);
    let run = run_agent_with_admin(
        &fake.library_str(),
        "health = [\"xid\"]",
        false,
        Some(&listen),
        |docs| {
            let total: f64 = values(docs, "DCGM_EXP_XID_ERRORS_COUNT", "GpuId", Some("gpu_1"))
                .iter()
                .sum();
            if total < 2.0 {
                return false;
            }
            let admin = listen.parse().unwrap();
            *healthz.borrow_mut() = endpoint_metrics_agent::admin::get(admin, "/healthz").ok();
            true
        },
    );
    let count = |gpu| -> f64 {
        values(&run.docs, "DCGM_EXP_XID_ERRORS_COUNT", "GpuId", Some(gpu))
            .iter()
            .sum()
    };
    let stderr = run.logs.text();
    assert_eq!(count("gpu_1"), 2.0, "{stderr}");
    assert_eq!(count("gpu_0"), 1.0);
    let (status, body) = healthz.into_inner().expect("/healthz answered");
    assert_eq!(status, 200, "the agent works: {body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["status"], "degraded", "{body}");
    let reasons = body["degraded"].as_array().unwrap();
    assert_eq!(reasons.len(), 1, "GPU 1 only: 94 is not fatal: {body}");
    let reason = reasons[0].as_str().unwrap();
    assert!(
        reason.contains("GPU 1") && reason.contains("XID 79"),
        "{reason}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("XID error")).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("xid=79") && l.contains("fallen off the bus")),
        "{stderr}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("xid=94") && l.contains("contained ECC error")),
        "{stderr}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.contains("xid=79")).count(),
        1,
        "a repeat within 10 s is folded into the next line: {stderr}"
    );
}

// ---- Per-process utilization only where copies share a GPU (issue 19, point 3) ----

const PROCESS_UTILIZATION: &str = "nvmlDeviceGetProcessUtilization";

/// For each of `gpus` GPUs, whether a sample's line called nvmlDeviceGetProcessUtilization on it.
fn read_per_process(calls: &Calls, gpus: u32) -> Vec<bool> {
    (0..gpus)
        .map(|g| calls.on(PROCESS_UTILIZATION, g) > 0)
        .collect()
}

#[test]
fn per_process_utilization_is_read_only_on_gpus_that_copies_share() {
    let _counters = counters();
    let fake = FakeNvml::new();
    // GPU 0: copy 1's two processes; GPU 1: copies 2 and 3; GPU 2: copy 4 and a process of no
    // known copy; GPU 3: no process.
    fake.script(&format!(
        "{}{}process 0 compute 1001 {GIB}\nprocess 0 compute 1002 {GIB}\n\
         process 1 compute 2001 {GIB}\nprocess 1 compute 3001 {GIB}\n\
         process 2 compute 4001 {GIB}\nprocess 2 compute 9999 {GIB}\n\
         sample 0 1001 5\nsample 1 2001 30\nsample 1 3001 20\nsample 2 4001 40\nsample 2 9999 7\n",
        devices(4),
        fake.calls_directive()
    ));
    let copies = ProcessCopies::default();
    let mut c = collector_with_copies(&fake, &copies);
    let t = system_now_ms();
    // Nothing attributed yet: every process is unknown, every GPU with processes is read.
    let first = c.read(t);
    copies.publish(HashMap::from([
        (1001, 1),
        (1002, 1),
        (2001, 2),
        (3001, 3),
        (4001, 4),
    ]));
    let second = c.read(t + 1000);
    c.read(t + 2000); // its start writes the second sample's line
    let lines: Vec<Calls> = fake.calls().into_iter().filter(Calls::enumerated).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(read_per_process(&lines[0], 4), [true, true, true, false]);
    assert_eq!(
        read_per_process(&lines[1], 4),
        [false, true, true, false],
        "GPU 0 is one copy's, GPU 3 has no process"
    );
    let sm = |r: &GpuReading, gpu, pid| process(r, gpu, pid).unwrap().sm_utilization_percent;
    assert_eq!(sm(&first, 0, 1001), Some(5.0));
    assert_eq!(sm(&first, 0, 1002), Some(0.0));
    assert!(first
        .devices
        .iter()
        .all(|d| d.process_utilization == ProcessUtilization::PerProcess));
    assert_eq!(
        second.devices[0].process_utilization,
        ProcessUtilization::OneCopy
    );
    assert_eq!(
        sm(&second, 0, 1001),
        None,
        "not read: the device's is the copy's"
    );
    assert_eq!(sm(&second, 0, 1002), None);
    assert_eq!(
        process(&second, 0, 1002).unwrap().used_memory_bytes,
        Some(GIB)
    );
    assert_eq!(sm(&second, 1, 2001), Some(30.0));
    assert_eq!(sm(&second, 1, 3001), Some(20.0));
    assert_eq!(sm(&second, 2, 4001), Some(40.0));
    assert_eq!(sm(&second, 2, 9999), Some(7.0));
    for gpu in 1..4 {
        assert_eq!(
            second.devices[gpu].process_utilization,
            ProcessUtilization::PerProcess
        );
    }
}

#[test]
fn a_gpu_that_copies_come_to_share_reads_only_the_samples_since_its_last_enumeration() {
    let _counters = counters();
    let fake = FakeNvml::new();
    // Ticks a minute back, and samples stamped against them.
    let t = system_now_ms() - 60_000;
    let one_copy = format!(
        "{}process 0 compute 1001 {GIB}\n\
         sample 0 1001 90 at_ms={}\nsample 0 1001 10 at_ms={}\n",
        devices(1),
        t + 500,
        t + 1500
    );
    fake.script(&one_copy);
    let copies = ProcessCopies::default();
    copies.publish(HashMap::from([(1001, 1)]));
    let mut c = collector_with_copies(&fake, &copies);
    for tick in [t, t + 1000] {
        let reading = c.read(tick);
        assert_eq!(
            reading.devices[0].process_utilization,
            ProcessUtilization::OneCopy
        );
    }
    // A second copy arrives: the GPU is read again, over the time since the last enumeration
    // (t + 1000) only; the 90 % at t + 500 is older (a stale stretch of the driver's buffer).
    fake.script(&format!(
        "{one_copy}process 0 compute 1002 {GIB}\nsample 0 1002 20 at_ms={}\n",
        t + 1500
    ));
    copies.publish(HashMap::from([(1001, 1), (1002, 2)]));
    let shared = c.read(t + 2000);
    assert_eq!(
        shared.devices[0].process_utilization,
        ProcessUtilization::PerProcess
    );
    assert_eq!(
        process(&shared, 0, 1001).unwrap().sm_utilization_percent,
        Some(10.0)
    );
    assert_eq!(
        process(&shared, 0, 1002).unwrap().sm_utilization_percent,
        Some(20.0)
    );
}

fn collector_with_copies(fake: &FakeNvml, copies: &ProcessCopies) -> NvmlCollector {
    let mut options = GpuOptions::new(&fake.library_str(), INTERVAL_MS);
    options.process_min_interval_ms = 0;
    options.copies = copies.clone();
    NvmlCollector::new(options)
}

/// What the end-to-end test scripts: per GPU, its device utilization and its processes (host
/// PID, SM %), 1 GiB of memory each.
fn copies_script(fake: &FakeNvml, gpus: &[(u32, Vec<(u32, u32)>)]) -> String {
    let mut script = fake.calls_directive();
    for (index, (util, processes)) in (0u32..).zip(gpus) {
        script.push_str(&format!(
            "device {index} uuid=GPU-copies-{index} util={util} mem_used={} mem_total={}\n",
            8 * GIB,
            80 * GIB
        ));
        for (pid, sm) in processes {
            script.push_str(&format!(
                "process {index} compute {pid} {GIB}\nsample {index} {pid} {sm}\n"
            ));
        }
    }
    script
}

/// Polls the fake library's call lines until `done` holds for the sample lines that listed
/// processes; those lines. Fails after [`WAIT_LIMIT`].
fn wait_for_calls(fake: &FakeNvml, what: &str, done: impl Fn(&[Calls]) -> bool) -> Vec<Calls> {
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        let lines: Vec<Calls> = fake.calls().into_iter().filter(Calls::enumerated).collect();
        if done(&lines) {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {what}: {lines:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The values of `metric` in the window starting at `window`, of the document with these
/// `ContainerId` (None: no container) and `GpuId` dimensions.
fn window_values(
    docs: &[Value],
    window: u64,
    container: Option<&str>,
    gpu: &str,
    metric: &str,
) -> Vec<f64> {
    docs.iter()
        .filter(|d| timestamp_ms(d) == window && d["GpuId"] == gpu)
        .filter(|d| d.get("ContainerId").and_then(Value::as_str) == container)
        .flat_map(|d| common::agent::values(d, metric))
        .collect()
}

/// The first whole window that starts at or after `from_ms` and has per-copy GPU documents.
fn window_from(agent: &Agent, from_ms: u64) -> u64 {
    agent.wait_for("a window of per-copy GPU series", |docs| {
        let mut starts: Vec<u64> = docs
            .iter()
            .filter(|d| namespace(d) == "/aws/sagemaker/InferenceComponents")
            .filter(|d| d.get("GpuId").is_some())
            .map(timestamp_ms)
            .filter(|&t| t >= from_ms)
            .collect();
        starts.sort_unstable();
        starts.first().copied()
    })
}

/// Issue 19, point 3, end to end: real containers (their host PIDs scripted as the fake GPUs'
/// processes) -> the built agent's attribution -> what its GPU reader calls. Four GPUs with one
/// copy each: after the first samples (before discovery and attribution know the PIDs) no
/// per-process utilization call at all, and each copy's utilization is its GPU's. Then a second
/// copy's process on GPU 1 and a host process (this test) on GPU 2: the call is made on those
/// two GPUs only, and the shares are the per-process ones.
#[test]
fn per_process_utilization_is_read_only_where_copies_share_a_gpu_end_to_end() {
    if !docker_ready() {
        return;
    }
    let label = format!("ema-nvml-calls-{}-{}", std::process::id(), system_now_ms());
    let image = image();
    let mut started = RemoveOnDrop(Vec::new());
    let mut run_copy = |component: &str, gpu: u32| -> (String, u32) {
        let id = docker_ok(&[
            "run",
            "-d",
            "--label",
            &format!("{label}={component}"),
            "-e",
            &format!("NVIDIA_VISIBLE_DEVICES={gpu}"),
            &image,
            "sleep",
            "300",
        ]);
        started.0.push(id.clone());
        let pid = docker_ok(&["inspect", "-f", "{{.State.Pid}}", &id]);
        (id[..12].to_string(), pid.parse().unwrap())
    };
    let copies: Vec<(String, u32)> = (0..4u32)
        .map(|g| run_copy(&format!("model-{g}"), g))
        .collect();
    // A second copy allocated GPU 1, with no process on it until the second phase.
    let (extra, extra_pid) = run_copy("model-extra", 1);
    let one_each: Vec<(u32, Vec<(u32, u32)>)> = (0..4u32)
        .map(|g| (20 + g, vec![(copies[g as usize].1, 20 + g)]))
        .collect();
    let fake = FakeNvml::new();
    fake.script(&copies_script(&fake, &one_each));
    let dir = Workdir::new();
    let config = format!(
        "[endpoint]\nname = \"ep\"\ninstance_id = \"test-host\"\n\
         [metrics]\nenhanced = true\npublish_frequency_seconds = 10\n\
         sample_interval_ms = {INTERVAL_MS}\ndata_points = \"every_sample\"\n\
         [output]\nemf_destination = \"{}\"\n[admin]\nenabled = false\n\
         [gpu]\nnvml_library = \"{}\"\nprocess_interval_ms = 1000\nhealth = []\n\
         [docker]\nsocket = \"{}\"\ncomponent_label = \"{label}\"\ncomponent_env = \"EMA_CALLS_{}\"\n",
        dir.emf_destination(),
        fake.library_str(),
        engine_socket(),
        std::process::id()
    );
    // Health off: the XID thread's own nvmlDeviceGetCount_v2 would split a sample's line.
    let agent = Agent::start(&dir, &config);

    // Phase 1: one copy per GPU.
    let lines = wait_for_calls(&fake, "enumerations without per-process reads", |lines| {
        lines.len() >= 4
            && lines[lines.len() - 2..]
                .iter()
                .all(|l| l.all(PROCESS_UTILIZATION) == 0)
    });
    let skipping_since = system_now_ms();
    assert_eq!(
        read_per_process(&lines[0], 4),
        [true; 4],
        "the first sample knows no PID yet: every GPU read"
    );
    let window = window_from(&agent, skipping_since);
    let docs = agent.documents();
    let util = "GPUUtilizationNormalized";
    for (g, (copy, _)) in copies.iter().enumerate() {
        let gpu = format!("gpu_{g}");
        let shares = window_values(&docs, window, Some(copy), &gpu, util);
        assert_all(
            &shares,
            20.0 + g as f64,
            &format!("copy {g}'s share of its GPU"),
        );
        let rest = window_values(&docs, window, None, &gpu, "GPUUtilizationUnattributed");
        assert_all(&rest, 0.0, &format!("GPU {g} unattributed"));
    }
    let idle = window_values(&docs, window, Some(&extra), "gpu_1", util);
    assert_all(&idle, 0.0, "the second copy of GPU 1, no process yet");

    // Phase 2: the second copy's process on GPU 1, this test's (no container's) on GPU 2.
    let mut shared = one_each.clone();
    shared[1] = (46, vec![(copies[1].1, 21), (extra_pid, 25)]);
    shared[2] = (32, vec![(copies[2].1, 22), (std::process::id(), 10)]);
    let before = fake.calls().into_iter().filter(Calls::enumerated).count();
    fake.script(&copies_script(&fake, &shared));
    let changed_at = system_now_ms();
    let lines = wait_for_calls(&fake, "enumerations after the change", |lines| {
        lines.len() >= before + 3
    });
    for line in &lines[lines.len() - 2..] {
        assert_eq!(
            read_per_process(line, 4),
            [false, true, true, false],
            "read where copies share a GPU or a host process is on it: {line:?}"
        );
    }
    // A window from after the first enumeration of the new script.
    let window = window_from(&agent, changed_at + 2 * 1000);
    let docs = agent.documents();
    let expected = [
        (Some(copies[0].0.as_str()), "gpu_0", 20.0),
        (Some(copies[1].0.as_str()), "gpu_1", 21.0),
        (Some(extra.as_str()), "gpu_1", 25.0),
        (Some(copies[2].0.as_str()), "gpu_2", 22.0),
        (Some(copies[3].0.as_str()), "gpu_3", 23.0),
    ];
    for (copy, gpu, share) in expected {
        let values = window_values(&docs, window, copy, gpu, util);
        assert_all(&values, share, &format!("{copy:?} on {gpu}"));
    }
    let host = window_values(&docs, window, None, "gpu_2", "GPUUtilizationUnattributed");
    assert_all(&host, 10.0, "the host process's share of GPU 2");
    agent.stop();
}

// ---- Against a real driver (`--ignored`, on a GPU host) ----

/// The real driver library; these tests are `#[ignore]`d and run with `--ignored` on a GPU host.
fn real_library() -> String {
    std::env::var("EMA_NVML_LIBRARY").unwrap_or_else(|_| "libnvidia-ml.so.1".into())
}

fn check_real_reading(reading: &GpuReading) {
    assert!(
        !reading.devices.is_empty(),
        "a real driver has at least one GPU"
    );
    for (i, d) in reading.devices.iter().enumerate() {
        assert_eq!(d.index as usize, i);
        assert!(
            d.uuid.starts_with("GPU-") || d.uuid.starts_with("MIG-"),
            "{}",
            d.uuid
        );
        assert!(d.memory_total_bytes > 0);
        assert!(d.memory_used_bytes <= d.memory_total_bytes);
        if let Some(u) = d.utilization_percent {
            assert!((0.0..=100.0).contains(&u), "{u}");
        }
    }
    for p in &reading.processes {
        assert!(p.pid > 0);
        assert!((p.gpu_index as usize) < reading.devices.len());
        if let Some(sm) = p.sm_utilization_percent {
            assert!((0.0..=100.0).contains(&sm), "{sm}");
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU and driver: cargo test --test gpu real_driver -- --ignored"]
fn real_driver_readings_are_plausible() {
    let _counters = counters();
    let library = real_library();
    let mut c = NvmlCollector::new(GpuOptions::new(&library, INTERVAL_MS));
    let first = c.read(system_now_ms());
    check_real_reading(&first);
    std::thread::sleep(Duration::from_millis(INTERVAL_MS));
    let second = c.read(system_now_ms());
    check_real_reading(&second);
    assert_eq!(first.devices.len(), second.devices.len());
    eprintln!("real driver: {second:#?}");
}

#[test]
#[ignore = "needs an NVIDIA GPU and driver: cargo test --test gpu real_driver -- --ignored"]
fn real_driver_binary_publishes_every_gpu() {
    let library = real_library();
    let count = NvmlCollector::new(GpuOptions::new(&library, INTERVAL_MS))
        .read(system_now_ms())
        .devices
        .len();
    let run = run_agent(&library, "", true, has("GPUUtilization"));
    for i in 0..count {
        let per_gpu = values(
            &run.docs,
            "GPUMemoryUtilization",
            "GpuId",
            Some(&format!("gpu_{i}")),
        );
        assert!(!per_gpu.is_empty(), "GPU {i}");
        assert!(per_gpu.iter().all(|v| (0.0..=100.0).contains(v)));
    }
    let normalized = values(&run.docs, "GPUMemoryUtilizationNormalized", "GpuId", None);
    assert!(!normalized.is_empty());
    assert!(normalized.iter().all(|v| (0.0..=100.0).contains(v)));
}

#[test]
#[ignore = "needs an NVIDIA GPU and driver: cargo test --test gpu real_driver -- --ignored"]
fn real_driver_lists_a_cuda_process_with_memory_and_sm_utilization() {
    let _counters = counters();
    let library = real_library();
    let dir = tempfile::tempdir().unwrap();
    let load = dir.path().join("cuda_load");
    fake_nvml::compile("tests/fixtures/cuda_load/cuda_load.c", &load, &[], &[]);
    let mut child = Command::new(&load)
        .arg("30")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    {
        use std::io::BufRead as _;
        let stdout = child.stdout.take().unwrap();
        std::io::BufReader::new(stdout)
            .read_line(&mut ready)
            .unwrap();
    }
    assert!(ready.starts_with("ready"), "cuda_load: {ready:?}");
    let pid = child.id();
    let mut c = NvmlCollector::new(GpuOptions::new(&library, INTERVAL_MS));
    let mut found = None;
    for _ in 0..40 {
        let reading = c.read(system_now_ms());
        check_real_reading(&reading);
        eprintln!("processes: {:?}", reading.processes);
        // The driver reports host PIDs: in a PID namespace of its own this test sees another.
        let ours = process(&reading, 0, pid).cloned().or_else(|| {
            reading
                .processes
                .iter()
                .find(|p| p.used_memory_bytes.is_some_and(|m| m >= 256 << 20))
                .cloned()
        });
        if let Some(p) = ours {
            if p.sm_utilization_percent.is_some_and(|sm| sm > 0.0) {
                found = Some(p);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(INTERVAL_MS));
    }
    // SAFETY: kill(2) on the PID of the child this test started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = child.wait();
    let p = found.expect("the CUDA process with memory and SM utilization");
    eprintln!("CUDA load (our PID {pid}) as NVML reports it: {p:?}");
    assert!(p.used_memory_bytes.is_some_and(|m| m >= 256 << 20));
}

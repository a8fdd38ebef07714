//! Running the agent for real (issue 8): the systemd unit verified by systemd-analyze, the admin
//! endpoint read over HTTP while the built binary runs, and SIGHUP reloads with a valid and an
//! invalid file, checked in the EMF the agent writes.
//!
//! The sidecar image test (Dockerfile, real Docker engine) runs with EMA_DOCKER_IMAGE_TEST=1 after
//! scripts/setup/ops.sh; see `sidecar_image_reports_host_metrics_and_is_healthy`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "test code: a failed step stops it with its message (Cargo.toml [lints] is for the agent)"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_endpoint-metrics-agent");

/// How long any wait in these tests may take before the test fails: windows are 10 s, so this is
/// several windows on a slow, shared machine. Not a timing assertion: a deadline for a hang.
const WAIT: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A configuration with 10 s windows sampled every second, EMF into `emf`, no GPU, no IMDS.
fn config_text(emf: &Path, port: u16, endpoints_namespace: &str, extra: &str) -> String {
    format!(
        r#"[endpoint]
name = "ops-test"
instance_id = "i-ops-test"

[metrics]
publish_frequency_seconds = 10
sample_interval_ms = 1000
endpoints_namespace = "{endpoints_namespace}"

[output]
emf_destination = "file:{}"

[gpu]
enabled = false

[docker]
enabled = false

[admin]
listen = "127.0.0.1:{port}"
{extra}
"#,
        emf.display()
    )
}

/// The agent as a child process, its stderr collected line by line.
struct Agent {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    fn start(config: &Path) -> Agent {
        let mut child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the agent starts");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = stderr.clone();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let agent = Agent { child, stderr };
        agent.wait_for_log("admin endpoint");
        agent
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Waits for a stderr line containing `needle`, returns it.
    fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(line) = self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return line.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?}; stderr:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's PID.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the agent did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every EMF document written so far.
fn documents(emf: &Path) -> Vec<Value> {
    std::fs::read_to_string(emf)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn namespace(doc: &Value) -> &str {
    doc["_aws"]["CloudWatchMetrics"][0]["Namespace"]
        .as_str()
        .unwrap_or("")
}

fn timestamp(doc: &Value) -> u64 {
    doc["_aws"]["Timestamp"].as_u64().unwrap()
}

/// How many samples a metric member carries (EMF repeats each sample's value).
fn sample_count(doc: &Value, metric: &str) -> usize {
    match &doc[metric] {
        Value::Array(values) => values.len(),
        Value::Number(_) => 1,
        other => panic!("{metric} is {other}"),
    }
}

/// Waits until `pick` finds a document, returns it.
fn wait_for_document(emf: &Path, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(doc) = documents(emf).into_iter().find(|d| pick(d)) {
            return doc;
        }
        assert!(
            Instant::now() < deadline,
            "no document: {what}; have:\n{:#?}",
            documents(emf)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One HTTP exchange: sends `request` as is, returns (status, headers+body text).
fn http(port: u16, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(request).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    (status, response)
}

fn get(port: u16, path: &str) -> (u16, String) {
    http(
        port,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// utime + stime of a process, from /proc, in seconds.
fn cpu_seconds_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf reads a constant.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").unwrap().1
}

/// The value of one Prometheus sample line (`name value` or `name{labels} value`).
fn prometheus_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

// ---------------------------------------------------------------------------------------------
// systemd unit

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/endpoint-metrics-agent.service")
}

#[test]
fn unit_file_passes_systemd_analyze_verify() {
    if std::env::var("EMA_SKIP_SYSTEMD_VERIFY").as_deref() == Ok("1") {
        eprintln!("EMA_SKIP_SYSTEMD_VERIFY=1: systemd-analyze verify skipped");
        return;
    }
    let analyze = std::env::var("EMA_SYSTEMD_ANALYZE").unwrap_or_else(|_| "systemd-analyze".into());
    // verify checks that ExecStart's program exists: point it at the binary under test; the rest
    // of the unit is checked as shipped.
    let unit = std::fs::read_to_string(unit_path())
        .unwrap()
        .replace("/usr/local/bin/endpoint-metrics-agent", BIN);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("endpoint-metrics-agent.service");
    std::fs::write(&path, unit).unwrap();
    let output = Command::new(&analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{analyze} cannot run ({e}): run scripts/setup/ops.sh (installs the systemd package), \
                 or set EMA_SKIP_SYSTEMD_VERIFY=1 to skip this check knowingly"
            )
        });
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    // Unknown keys and bad values are only warnings (exit 0): any line about our unit fails.
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("endpoint-metrics-agent.service"))
        .collect();
    assert!(complaints.is_empty(), "systemd-analyze verify:\n{stderr}");
}

#[test]
fn unit_file_is_notify_with_watchdog_config_check_and_restart() {
    let unit = std::fs::read_to_string(unit_path()).unwrap();
    let has = |line: &str| unit.lines().any(|l| l.trim() == line);
    for line in [
        "Type=notify",
        "ExecStartPre=/usr/local/bin/endpoint-metrics-agent check-config --config /etc/endpoint-metrics-agent/agent.toml",
        "ExecReload=/bin/sh -c 'kill -HUP ${MAINPID}'",
        "Restart=on-failure",
        "RestartPreventExitStatus=78",
        "WatchdogSec=30s",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=",
        "SupplementaryGroups=docker",
        "DeviceAllow=/dev/nvidiactl rw",
        "ReadOnlyPaths=/proc /sys/fs/cgroup /etc/endpoint-metrics-agent",
    ] {
        assert!(has(line), "missing {line:?}");
    }
    // Hiding other processes' /proc entries would break GPU process attribution.
    assert!(!has("ProtectProc=invisible") && !has("ProcSubset=pid"));
}

#[test]
fn the_agent_tells_a_notify_socket_it_is_ready_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let port = free_port();
    let emf = dir.path().join("emf.log");
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, config_text(&emf, port, "Ops/Notify", "")).unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        // Watchdog every 0.5 s (half of 1 s), so a few arrive between READY and STOPPING.
        .env("WATCHDOG_USEC", "1000000")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // WATCHDOG_PID unset: the watchdog is for whoever reads it (systemd sets it to the main PID).
    let mut buf = [0u8; 512];
    let mut recv = || {
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(recv().starts_with("READY=1"));
    assert_eq!(recv(), "WATCHDOG=1");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGHUP) };
    let mut seen = Vec::new();
    while !seen.iter().any(|m: &String| m.starts_with("READY=1")) {
        seen.push(recv());
    }
    assert!(
        seen.iter()
            .any(|m| m.starts_with("RELOADING=1\nMONOTONIC_USEC=")),
        "{seen:?}"
    );
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    loop {
        let m = recv();
        if m.starts_with("STOPPING=1") {
            break;
        }
        assert_eq!(m, "WATCHDOG=1");
    }
    assert!(child.wait().unwrap().success());
}

// ---------------------------------------------------------------------------------------------
// Admin endpoint

#[test]
fn health_and_metrics_are_served_over_http_while_the_agent_runs() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let emf = dir.path().join("emf.log");
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, config_text(&emf, port, "Ops/Health", "")).unwrap();
    let agent = Agent::start(&config);

    let (status, response) = get(port, "/healthz");
    assert_eq!(status, 200, "{response}");
    assert!(response.contains("Content-Type: application/json"));
    let health: Value = serde_json::from_str(body(&response)).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["ready"], true);

    // After the first window is delivered, health names the sample and the publish.
    wait_for_document(&emf, "the first window", |_| true);
    let deadline = Instant::now() + WAIT;
    let health = loop {
        let (status, response) = get(port, "/healthz");
        assert_eq!(status, 200, "{response}");
        let health: Value = serde_json::from_str(body(&response)).unwrap();
        if health["last_publish_ms"].is_u64() {
            break health;
        }
        assert!(Instant::now() < deadline, "{health}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(health["last_sample_ms"].as_u64().unwrap() <= now_ms());
    assert!(health["last_publish_ms"].as_u64().unwrap() <= now_ms());

    let cpu_before = cpu_seconds_of(agent.child.id());
    let (status, response) = get(port, "/metrics");
    let cpu_after = cpu_seconds_of(agent.child.id());
    assert_eq!(status, 200);
    assert!(response.contains("Content-Type: text/plain; version=0.0.4"));
    let text = body(&response);
    // The agent's own figure lies between what /proc said just before and just after.
    let cpu = prometheus_value(text, "process_cpu_seconds_total");
    assert!(
        cpu_before - 1e-9 <= cpu && cpu <= cpu_after + 1e-9,
        "{cpu_before} <= {cpu} <= {cpu_after}"
    );
    assert!(prometheus_value(text, "process_resident_memory_bytes") > 1_000_000.0);
    assert!(prometheus_value(text, "endpoint_metrics_agent_samples_taken_total") >= 1.0);
    assert!(prometheus_value(text, "endpoint_metrics_agent_emf_documents_written_total") >= 1.0);
    assert_eq!(prometheus_value(text, "endpoint_metrics_agent_ready"), 1.0);
    assert!(
        prometheus_value(
            text,
            "endpoint_metrics_agent_last_publish_timestamp_seconds"
        ) > 1e9
    );
    for series in [
        "endpoint_metrics_agent_samples_missed_total",
        "endpoint_metrics_agent_publish_latency_seconds",
        "endpoint_metrics_agent_queued_windows",
        "endpoint_metrics_agent_spooled_windows",
        "endpoint_metrics_agent_dropped_points_total",
        "endpoint_metrics_agent_errors_total{kind=\"sink_write_errors\"}",
    ] {
        prometheus_value(text, series);
    }
    // HEAD gets the head only.
    let (status, response) = http(port, b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(status, 200);
    assert!(body(&response).is_empty());

    // The healthcheck subcommand (Docker's HEALTHCHECK) agrees.
    let check = Command::new(BIN)
        .args(["healthcheck", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");

    assert!(agent.stop().success());
}

#[test]
fn bad_http_requests_get_4xx_and_the_agent_runs_on() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let emf = dir.path().join("emf.log");
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, config_text(&emf, port, "Ops/Bad", "")).unwrap();
    let agent = Agent::start(&config);

    let bad: [&[u8]; 6] = [
        b"garbage\r\n\r\n",
        b"GET /healthz HTTP/2.0\r\n\r\n",
        b"GET healthz HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nno colon\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
        b"GET /healthz HTTP/1.1 trailing\r\n\r\n",
    ];
    for request in bad {
        let (status, response) = http(port, request);
        assert_eq!(
            status,
            400,
            "{:?}: {response}",
            String::from_utf8_lossy(request)
        );
    }
    // A head larger than the limit, never finished.
    let mut huge = b"GET /healthz HTTP/1.1\r\nX-Filler: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 64 * 1024));
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let _ = stream.write_all(&huge); // the agent may close before reading it all
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    assert!(
        String::from_utf8_lossy(&response).starts_with("HTTP/1.1 431 "),
        "{}",
        String::from_utf8_lossy(&response)
    );
    assert_eq!(http(port, b"POST /healthz HTTP/1.1\r\n\r\n").0, 405);
    assert_eq!(get(port, "/nothing").0, 404);
    // A client that connects and says nothing does not stop others being served.
    let _silent = TcpStream::connect(("127.0.0.1", port)).unwrap();

    let (status, response) = get(port, "/metrics");
    assert_eq!(status, 200);
    assert!(
        prometheus_value(
            body(&response),
            "endpoint_metrics_agent_admin_bad_requests_total"
        ) >= 8.0
    );
    assert_eq!(get(port, "/healthz").0, 200);
    assert!(agent.stop().success());
}

// ---------------------------------------------------------------------------------------------
// SIGHUP reload

#[test]
fn reload_with_a_valid_file_changes_the_next_window_and_keeps_the_current_one() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let emf = dir.path().join("emf.log");
    let config = dir.path().join("agent.toml");
    let self_metrics = |ns: &str| format!("[self_metrics]\nenabled = true\nnamespace = \"{ns}\"\n");
    std::fs::write(
        &config,
        config_text(&emf, port, "Ops/Before", &self_metrics("OpsAgent/Before")),
    )
    .unwrap();
    let agent = Agent::start(&config);
    let first = wait_for_document(&emf, "a first window", |d| namespace(d) == "Ops/Before");

    // New namespaces and log level apply now; a new publish frequency needs a restart.
    let new = config_text(&emf, port, "Ops/After", &self_metrics("OpsAgent/After")).replace(
        "publish_frequency_seconds = 10",
        "publish_frequency_seconds = 30",
    ) + "[log]\nlevel = \"debug\"\n";
    std::fs::write(&config, new).unwrap();
    let hup_ms = now_ms();
    agent.signal(libc::SIGHUP);
    let reloaded = agent.wait_for_log("configuration reloaded");
    assert!(
        reloaded.contains("metrics.endpoints_namespace"),
        "{reloaded}"
    );
    assert!(reloaded.contains("self_metrics.namespace"), "{reloaded}");
    assert!(reloaded.contains("log.level"), "{reloaded}");
    // The new level is in force: the reload's own debug line is there.
    agent.wait_for_log("effective configuration after reload");
    let restart = agent.wait_for_log("need restart");
    assert!(
        restart.contains("metrics.publish_frequency_seconds"),
        "{restart}"
    );

    // The window that was open at SIGHUP (ticks W+1 s ..= W+10 s) is published whole, under the
    // new namespace: every host sample the agent took in it is there.
    let window = (hup_ms - 1) / 10_000 * 10_000;
    assert!(window > timestamp(&first) || hup_ms % 10_000 == 0);
    let host = wait_for_document(&emf, "the reload window, host", |d| {
        timestamp(d) == window && d.get("MemoryUtilization").is_some()
    });
    assert_eq!(namespace(&host), "Ops/After", "{host}");
    let agent_doc = wait_for_document(&emf, "the reload window, agent", |d| {
        timestamp(d) == window && d.get("SamplesTaken").is_some()
    });
    assert_eq!(namespace(&agent_doc), "OpsAgent/After");
    assert_eq!(agent_doc["InstanceId"], "i-ops-test");
    let taken = agent_doc["SamplesTaken"]
        .as_f64()
        .or_else(|| agent_doc["SamplesTaken"][0].as_f64())
        .unwrap();
    assert!(taken >= 1.0);
    assert_eq!(
        sample_count(&host, "MemoryUtilization") as f64,
        taken,
        "the reload window lost samples: {host}"
    );
    // The publish frequency did not change (needs restart): the next window is 10 s later.
    wait_for_document(&emf, "the window after", |d| {
        timestamp(d) == window + 10_000
    });
    assert!(documents(&emf)
        .iter()
        .filter(|d| timestamp(d) < window)
        .all(|d| namespace(d).ends_with("/Before")));
    assert!(agent.stop().success());
}

#[test]
fn reload_with_an_invalid_file_keeps_the_running_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let emf = dir.path().join("emf.log");
    let config = dir.path().join("agent.toml");
    let good = config_text(&emf, port, "Ops/Good", "");
    std::fs::write(&config, &good).unwrap();
    let agent = Agent::start(&config);
    wait_for_document(&emf, "a first window", |d| namespace(d) == "Ops/Good");

    // Valid TOML, invalid value: CloudWatch reserves AWS/ namespaces.
    std::fs::write(&config, good.replace("Ops/Good", "AWS/Bad")).unwrap();
    let hup_ms = now_ms();
    agent.signal(libc::SIGHUP);
    let rejected = agent.wait_for_log("reload rejected");
    assert!(
        rejected.contains("metrics.endpoints_namespace"),
        "{rejected}"
    );
    assert!(rejected.contains("AWS/"), "{rejected}");
    // Not TOML at all.
    std::fs::write(&config, "[endpoint\nname = ").unwrap();
    agent.signal(libc::SIGHUP);
    let deadline = Instant::now() + WAIT;
    while agent.log().matches("reload rejected").count() < 2 {
        assert!(Instant::now() < deadline, "{}", agent.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!agent.log().contains("configuration reloaded"));

    // The windows after the failed reloads are still published, under the old namespace.
    let window = (hup_ms - 1) / 10_000 * 10_000;
    wait_for_document(&emf, "a window after the reloads", |d| {
        timestamp(d) > window
    });
    let docs = documents(&emf);
    assert!(docs.iter().all(|d| namespace(d) == "Ops/Good"), "{docs:#?}");

    let (_, response) = get(port, "/metrics");
    assert_eq!(
        prometheus_value(
            body(&response),
            "endpoint_metrics_agent_config_reloads_rejected_total"
        ),
        2.0
    );
    assert_eq!(get(port, "/healthz").0, 200);
    assert!(agent.stop().success());
}

// ---------------------------------------------------------------------------------------------
// Sidecar image on the real Docker engine

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("docker {args:?}: {e}"))
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Removes the test's containers however the test ends.
struct Containers(Vec<String>);

impl Drop for Containers {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = docker(&["rm", "-f", name]);
        }
    }
}

/// Builds the image (scripts/build-image.sh, from the binary under test, FROM the debootstrapped
/// base), starts a labelled model container and the agent next to it with the `docker run` of
/// docs/ops.md, and checks the EMF on the agent's stdout, the health check and the user.
/// Needs a Docker engine (no registry); EMA_SKIP_IMAGE_TEST=1 skips it knowingly.
#[test]
fn sidecar_image_reports_host_metrics_and_is_healthy() {
    if std::env::var("EMA_SKIP_IMAGE_TEST").as_deref() == Ok("1") {
        eprintln!("EMA_SKIP_IMAGE_TEST=1: sidecar image test skipped");
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    // EMA_SIDECAR_IMAGE: test an image built otherwise (e.g. from source by scripts/build-image.sh).
    let given = std::env::var("EMA_SIDECAR_IMAGE").ok();
    let tag = given
        .clone()
        .unwrap_or_else(|| "endpoint-metrics-agent:ops-test".into());
    let tag = tag.as_str();
    if given.is_none() {
        let build = Command::new(repo.join("scripts/build-image.sh"))
            .args(["--prebuilt", BIN, "--tag", tag])
            .output()
            .unwrap();
        assert!(
            build.status.success(),
            "scripts/build-image.sh failed (is Docker running? run scripts/setup/ops.sh):\n{}\n{}",
            String::from_utf8_lossy(&build.stdout),
            String::from_utf8_lossy(&build.stderr)
        );
    }

    let id = std::process::id();
    let model = format!("ema-ops-model-a-{id}");
    let sidecar = format!("ema-ops-sidecar-{id}");
    let _cleanup = Containers(vec![model.clone(), sidecar.clone()]);
    let base =
        std::env::var("EMA_BASE_IMAGE").unwrap_or_else(|_| "ema-debian-bookworm:local".into());
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &model,
        "--label",
        "sagemaker.inference-component=model-a",
        &base,
        "sleep",
        "600",
    ]);

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        r#"[endpoint]
name = "sidecar-test"
instance_id = "i-sidecar-test"
[metrics]
enhanced = true
publish_frequency_seconds = 10
disk_path = "/host"
[output]
emf_destination = "stdout"
[host]
proc_root = "/proc"
cgroup_root = "/host/sys/fs/cgroup"
[gpu]
enabled = false
[admin]
listen = "127.0.0.1:9464"
"#,
    )
    .unwrap();
    // The container user must be able to read it.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let socket_gid = std::fs::metadata("/var/run/docker.sock")
        .map(|m| std::os::unix::fs::MetadataExt::gid(&m).to_string())
        .expect("/var/run/docker.sock");
    let config_mount = format!(
        "{}:/etc/endpoint-metrics-agent/agent.toml:ro",
        config.display()
    );
    // docs/ops.md, less --gpus all (no GPU here).
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &sidecar,
        "--pid",
        "host",
        "--group-add",
        &socket_gid,
        "-v",
        "/:/host:ro",
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock:ro",
        "-v",
        &config_mount,
        tag,
    ]);

    // Two windows of host metrics on stdout (logs go to stderr).
    let deadline = Instant::now() + WAIT * 2;
    let docs = loop {
        let logs = docker(&["logs", &sidecar]);
        let docs: Vec<Value> = String::from_utf8_lossy(&logs.stdout)
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("stdout is not EMF ({e}): {l}"))
            })
            .collect();
        if docs
            .iter()
            .filter(|d| namespace(d) == "/aws/sagemaker/Endpoints")
            .count()
            >= 2
        {
            break docs;
        }
        assert!(
            Instant::now() < deadline,
            "no host metrics from the sidecar; stderr:\n{}",
            String::from_utf8_lossy(&logs.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    // The last one: the first, partial window may hold a single tick and CPU needs two readings.
    let host = docs
        .iter()
        .rfind(|d| namespace(d) == "/aws/sagemaker/Endpoints")
        .unwrap();
    let value = |metric: &str| {
        host[metric]
            .get(0)
            .or(Some(&host[metric]))
            .and_then(Value::as_f64)
            .unwrap_or_else(|| panic!("{metric} missing: {host}"))
    };
    assert_eq!(host["EndpointName"], "sidecar-test");
    assert_eq!(host["InstanceId"], "i-sidecar-test");
    // CPUUtilization is the sum over cores (up to 100 x cores); the others are 0 to 100.
    assert!(value("CPUUtilization") >= 0.0, "{host}");
    for metric in [
        "CPUUtilizationNormalized",
        "MemoryUtilization",
        "DiskUtilization",
    ] {
        let v = value(metric);
        assert!((0.0..=100.0).contains(&v), "{metric} = {v}");
    }
    if std::env::var("EMA_EXPECT_CONTAINER_METRICS").as_deref() == Ok("1") {
        // With container discovery merged: the labelled container is reported.
        assert!(
            docs.iter()
                .any(|d| d["InferenceComponentName"] == "model-a"),
            "no metrics for the container labelled model-a: {docs:#?}"
        );
    }

    // Non-root, with the socket's group.
    let ids = docker_ok(&["exec", &sidecar, "id"]);
    assert!(ids.starts_with("uid=10001(ema)"), "{ids}");
    assert!(
        ids.contains(&format!(",{socket_gid}")) || ids.contains(&format!("={socket_gid}(")),
        "{ids}"
    );
    // The image's HEALTHCHECK command, run now, and Docker's own verdict once it has run it.
    docker_ok(&[
        "exec",
        &sidecar,
        "endpoint-metrics-agent",
        "healthcheck",
        "--config",
        "/etc/endpoint-metrics-agent/agent.toml",
    ]);
    let deadline = Instant::now() + WAIT;
    loop {
        let status = docker_ok(&["inspect", "-f", "{{.State.Health.Status}}", &sidecar]);
        if status == "healthy" {
            break;
        }
        assert!(
            status == "starting" && Instant::now() < deadline,
            "health: {status}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // docker stop sends SIGTERM: the partial window is published and the agent exits 0.
    docker_ok(&["stop", "-t", "10", &sidecar]);
    assert_eq!(
        docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", &sidecar]),
        "0"
    );
}

// ---------------------------------------------------------------------------------------------
// The unit under a real systemd (PID 1 in a container)

/// Runs `sh -c script` in the container, returns stdout (asserting success when `check`).
fn sd_exec(container: &str, script: &str, check: bool) -> String {
    let out = docker(&["exec", container, "sh", "-c", script]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if check {
        assert!(
            out.status.success(),
            "{script}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stdout
}

fn sd_show(container: &str, property: &str) -> String {
    sd_exec(
        container,
        &format!("systemctl show -p {property} --value endpoint-metrics-agent"),
        true,
    )
    .trim()
    .to_string()
}

fn sd_wait(container: &str, what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what}; journal:\n{}",
            sd_exec(
                container,
                "journalctl -u endpoint-metrics-agent --no-pager | tail -30",
                false
            )
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// systemd 252 as PID 1 in a container (image from `EMA_SYSTEMD_IMAGE=1 scripts/setup/ops.sh`),
/// the shipped unit with its whole sandbox: start (READY=1 -> "sampling"), health, reload with a
/// valid and an invalid file, a stuck process killed by the watchdog and restarted, a clean stop,
/// and a bad configuration stopped by ExecStartPre without endless restarts. The container needs
/// CAP_SYS_ADMIN and the host's cgroup tree writable, which not every CI allows: opt in with
/// EMA_SYSTEMD_CONTAINER_TEST=1 (about 1 minute here).
#[test]
fn unit_runs_under_real_systemd_with_watchdog_reload_and_stop() {
    if std::env::var("EMA_SYSTEMD_CONTAINER_TEST").as_deref() != Ok("1") {
        eprintln!("set EMA_SYSTEMD_CONTAINER_TEST=1 (after EMA_SYSTEMD_IMAGE=1 scripts/setup/ops.sh) to run the unit under systemd");
        return;
    }
    let image =
        std::env::var("EMA_SYSTEMD_IMAGE_TAG").unwrap_or_else(|_| "ema-systemd-test:local".into());
    let name = format!("ema-ops-systemd-{}", std::process::id());
    let _cleanup = Containers(vec![name.clone()]);
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--cap-add",
        "SYS_ADMIN",
        "--security-opt",
        "seccomp=unconfined",
        "--cgroupns",
        "host",
        "-v",
        "/sys/fs/cgroup:/sys/fs/cgroup:rw",
        "--tmpfs",
        "/run",
        "--tmpfs",
        "/run/lock",
        &image,
        "/sbin/init",
    ]);
    sd_wait(&name, "systemd did not come up", || {
        let state = sd_exec(&name, "systemctl is-system-running || true", false);
        state.trim() == "running" || state.trim() == "degraded"
    });

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    let text = |ns: &str| {
        format!(
            "[endpoint]\nname = \"systemd-test\"\ninstance_id = \"i-systemd\"\n\
             [metrics]\npublish_frequency_seconds = 10\nendpoints_namespace = \"{ns}\"\n\
             [output]\nemf_destination = \"file:/var/lib/endpoint-metrics-agent/emf.log\"\n\
             [gpu]\nenabled = false\n"
        )
    };
    std::fs::write(&config, text("Systemd/Before")).unwrap();
    // The shipped unit, with a 4 s watchdog (drop-in) so the stuck-process case is quick.
    let dropin = dir.path().join("watchdog.conf");
    std::fs::write(&dropin, "[Service]\nWatchdogSec=4s\n").unwrap();
    for (from, to) in [
        (PathBuf::from(BIN), "/usr/local/bin/endpoint-metrics-agent"),
        (
            unit_path(),
            "/etc/systemd/system/endpoint-metrics-agent.service",
        ),
    ] {
        docker_ok(&["cp", from.to_str().unwrap(), &format!("{name}:{to}")]);
    }
    sd_exec(
        &name,
        "mkdir -p /etc/endpoint-metrics-agent /etc/systemd/system/endpoint-metrics-agent.service.d && groupadd --system docker",
        true,
    );
    docker_ok(&[
        "cp",
        config.to_str().unwrap(),
        &format!("{name}:/etc/endpoint-metrics-agent/agent.toml"),
    ]);
    docker_ok(&[
        "cp",
        dropin.to_str().unwrap(),
        &format!("{name}:/etc/systemd/system/endpoint-metrics-agent.service.d/watchdog.conf"),
    ]);
    sd_exec(
        &name,
        "chmod 0644 /etc/endpoint-metrics-agent/agent.toml && systemctl daemon-reload && systemctl start endpoint-metrics-agent",
        true,
    );
    // Type=notify: start returned once READY=1 arrived with its STATUS.
    assert_eq!(sd_show(&name, "StatusText"), "sampling");
    assert_eq!(sd_show(&name, "WatchdogUSec"), "4s");
    sd_wait(&name, "no healthy /healthz", || {
        docker(&[
            "exec",
            &name,
            "endpoint-metrics-agent",
            "healthcheck",
            "--config",
            "/etc/endpoint-metrics-agent/agent.toml",
        ])
        .status
        .success()
    });
    // Unprivileged (DynamicUser), no capabilities.
    let pid = sd_show(&name, "MainPID");
    let status = sd_exec(&name, &format!("cat /proc/{pid}/status"), true);
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(!uid_line.split_whitespace().any(|u| u == "0"), "{uid_line}");
    assert!(status.contains("CapEff:\t0000000000000000"), "{status}");
    sd_wait(&name, "no EMF written", || {
        sd_exec(
            &name,
            "cat /var/lib/endpoint-metrics-agent/emf.log 2>/dev/null || true",
            false,
        )
        .contains("Systemd/Before")
    });

    // Reload, valid then invalid.
    std::fs::write(&config, text("Systemd/After")).unwrap();
    docker_ok(&[
        "cp",
        config.to_str().unwrap(),
        &format!("{name}:/etc/endpoint-metrics-agent/agent.toml"),
    ]);
    sd_exec(&name, "chmod 0644 /etc/endpoint-metrics-agent/agent.toml && systemctl reload endpoint-metrics-agent", true);
    sd_wait(&name, "valid reload not applied", || {
        sd_exec(
            &name,
            "journalctl -u endpoint-metrics-agent --no-pager",
            false,
        )
        .contains("applied=[\"metrics.endpoints_namespace\"]")
    });
    std::fs::write(&config, text("AWS/Bad")).unwrap();
    docker_ok(&[
        "cp",
        config.to_str().unwrap(),
        &format!("{name}:/etc/endpoint-metrics-agent/agent.toml"),
    ]);
    sd_exec(&name, "chmod 0644 /etc/endpoint-metrics-agent/agent.toml && systemctl reload endpoint-metrics-agent", true);
    sd_wait(&name, "invalid reload not rejected", || {
        sd_exec(
            &name,
            "journalctl -u endpoint-metrics-agent --no-pager",
            false,
        )
        .contains("reload rejected")
    });
    sd_wait(&name, "no window under the reloaded namespace", || {
        sd_exec(&name, "cat /var/lib/endpoint-metrics-agent/emf.log", false)
            .contains("Systemd/After")
    });
    assert_eq!(sd_show(&name, "ActiveState"), "active");
    let install = |ns: &str| {
        std::fs::write(&config, text(ns)).unwrap();
        docker_ok(&[
            "cp",
            config.to_str().unwrap(),
            &format!("{name}:/etc/endpoint-metrics-agent/agent.toml"),
        ]);
        sd_exec(
            &name,
            "chmod 0644 /etc/endpoint-metrics-agent/agent.toml",
            true,
        );
    };
    // A valid file again, for the restart below (ExecStartPre checks it).
    install("Systemd/After");

    // A stopped process stops feeding the watchdog: killed (SIGABRT) and restarted.
    sd_exec(&name, &format!("kill -STOP {pid}"), true);
    sd_wait(&name, "watchdog did not restart the agent", || {
        sd_show(&name, "NRestarts") == "1" && sd_show(&name, "ActiveState") == "active"
    });
    assert!(sd_exec(
        &name,
        "journalctl -u endpoint-metrics-agent --no-pager",
        false
    )
    .contains("Watchdog timeout"));
    assert_ne!(sd_show(&name, "MainPID"), pid);

    // Clean stop: the partial window, exit 0.
    sd_exec(&name, "systemctl stop endpoint-metrics-agent", true);
    assert_eq!(sd_show(&name, "Result"), "success");
    assert_eq!(sd_show(&name, "ExecMainStatus"), "0");

    // An invalid file: ExecStartPre fails with 78 and the start limit ends the retries.
    install("AWS/Bad");
    sd_exec(&name, "systemctl reset-failed endpoint-metrics-agent; systemctl start endpoint-metrics-agent || true", false);
    sd_wait(&name, "a bad configuration keeps restarting", || {
        sd_show(&name, "ActiveState") == "failed"
    });
    assert!(sd_exec(
        &name,
        "journalctl -u endpoint-metrics-agent --no-pager",
        false
    )
    .contains("status=78/CONFIG"));
}

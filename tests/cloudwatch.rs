//! The built agent against LocalStack (CloudWatch and CloudWatch Logs), started by
//! `scripts/setup/localstack.sh`. LocalStack at `AWS_ENDPOINT_URL` (default
//! http://127.0.0.1:4566); these tests fail when it is unreachable unless
//! `EMA_SKIP_LOCALSTACK_TESTS=1`.
//!
//! The agent reads a fixture `/proc` whose memory is always 25 % used, so every
//! MemoryUtilization sample is 25.0 and a window's Sum must be 25 x its SampleCount; a window
//! published twice shows as a SampleCount over 10 (10 s windows sampled every second), a lost
//! one as a missing or short bucket. Each test has its own namespace or log group: LocalStack has
//! no reset.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "test code: a failed step stops it with its message (Cargo.toml [lints] is for the agent)"
)]

mod common;

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, Statistic};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

use common::agent::{now_ms, Agent, Logs, Workdir};
use common::aws::{cloudwatch, endpoint_url, logs};

const MEMORY_PERCENT: f64 = 25.0;
const PERIOD_S: u64 = 10;
const SAMPLES_PER_WINDOW: f64 = 10.0;

fn localstack_addr() -> SocketAddr {
    let url = endpoint_url();
    let hostport = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .replace("localhost", "127.0.0.1");
    hostport
        .parse()
        .expect("AWS_ENDPOINT_URL is http://ip:port")
}

/// True when the test should run; panics when LocalStack is missing and skipping was not asked.
async fn localstack_up() -> bool {
    if TcpStream::connect(localstack_addr()).await.is_ok() {
        return true;
    }
    if std::env::var("EMA_SKIP_LOCALSTACK_TESTS").as_deref() == Ok("1") {
        eprintln!("SKIPPED: LocalStack unreachable and EMA_SKIP_LOCALSTACK_TESTS=1");
        return false;
    }
    panic!(
        "LocalStack is not reachable at {}: run scripts/setup/localstack.sh \
         (or set EMA_SKIP_LOCALSTACK_TESTS=1 to skip these tests)",
        endpoint_url()
    );
}

fn unique(name: &str) -> String {
    format!("{name}-{}-{}", std::process::id(), now_ms())
}

/// A folder with the fixture /proc and a config with `output` lines added, in its config file.
/// Every sample is a data point here (`data_points = "every_sample"`): counting samples proves
/// that delivery loses and duplicates nothing at the finest grain.
fn setup(output: &str, namespace: &str) -> (Workdir, String) {
    let dir = Workdir::new();
    let proc = dir.join("proc");
    fs::create_dir(&proc).unwrap();
    fs::write(
        proc.join("stat"),
        "cpu  100 0 50 900 50 0 0 0 0 0\ncpu0 1\ncpu1 1\n",
    )
    .unwrap();
    fs::write(
        proc.join("meminfo"),
        "MemTotal: 1000 kB\nMemAvailable: 750 kB\n",
    )
    .unwrap();
    let config = format!(
        "[endpoint]\nname = \"ep\"\ninstance_id = \"test-host\"\n\
         [metrics]\npublish_frequency_seconds = {PERIOD_S}\nendpoints_namespace = \"{namespace}\"\ndata_points = \"every_sample\"\n\
         [output]\nspool_dir = \"{}\"\nretry_max_seconds = 2\n{output}\n\
         [host]\nproc_root = \"{}\"\n[gpu]\nenabled = false\n[docker]\nenabled = false\n[admin]\nenabled = false\n",
        dir.join("spool").display(),
        proc.display()
    );
    (dir, config)
}

/// The agent in `dir` sending to CloudWatch at `endpoint` with test credentials.
fn start(dir: &Workdir, config: &str, endpoint: &str) -> Agent {
    Agent::launch(dir, config)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .start()
}

/// SIGTERM, a clean exit, and its logs (with the final counters).
fn stop(agent: Agent) -> Logs {
    agent.stop().success().logs
}

fn spool_files(dir: &Path) -> usize {
    fs::read_dir(dir.join("spool"))
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".json"))
            })
            .count()
        })
        .unwrap_or(0)
}

/// (bucket start ms, SampleCount, Sum, Maximum) of MemoryUtilization per 10 s window since
/// `from_ms`. LocalStack starts buckets at StartTime, so StartTime is window-aligned.
async fn windows(namespace: &str, from_ms: u64) -> Vec<(u64, f64, f64, f64)> {
    let start = from_ms / 1000 / PERIOD_S * PERIOD_S - PERIOD_S;
    let end = now_ms() / 1000 + PERIOD_S;
    let out = cloudwatch()
        .get_metric_statistics()
        .namespace(namespace)
        .metric_name("MemoryUtilization")
        .dimensions(
            Dimension::builder()
                .name("EndpointName")
                .value("ep")
                .build(),
        )
        .dimensions(
            Dimension::builder()
                .name("VariantName")
                .value("AllTraffic")
                .build(),
        )
        .start_time(DateTime::from_secs(start as i64))
        .end_time(DateTime::from_secs(end as i64))
        .period(PERIOD_S as i32)
        .statistics(Statistic::SampleCount)
        .statistics(Statistic::Sum)
        .statistics(Statistic::Maximum)
        .send()
        .await
        .expect("GetMetricStatistics");
    let mut points: Vec<_> = out
        .datapoints()
        .iter()
        .map(|d| {
            (
                d.timestamp().unwrap().to_millis().unwrap() as u64,
                d.sample_count().unwrap(),
                d.sum().unwrap(),
                d.maximum().unwrap(),
            )
        })
        .collect();
    points.sort_by_key(|p| p.0);
    points
}

fn assert_consistent(points: &[(u64, f64, f64, f64)]) {
    for &(t, count, sum, max) in points {
        assert!(
            count <= SAMPLES_PER_WINDOW,
            "window {t} has {count} samples: published more than once? {points:?}"
        );
        assert_eq!(sum, MEMORY_PERCENT * count, "window {t}: {points:?}");
        assert_eq!(max, MEMORY_PERCENT);
    }
}

/// Cuts the forwarder at a moment no request is in flight: 7 s into a window (closed windows
/// are sent in the first half of the next one, but an answer can be slow under load) with the
/// spool empty (every closed window is written there first and removed once CloudWatch
/// answered), trying window after window.
async fn cut_when_nothing_is_in_flight(proxy: &mut Proxy, dir: &Path) {
    const QUIET_FROM_MS: u64 = 7_000;
    const TRIES: usize = 6;
    for _ in 0..TRIES {
        let into = now_ms() % (PERIOD_S * 1000);
        let wait = (QUIET_FROM_MS + PERIOD_S * 1000 - into) % (PERIOD_S * 1000);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        if spool_files(dir) == 0 {
            proxy.down().await;
            return;
        }
        // Past the quiet moment: wait for the next window's.
        tokio::time::sleep(Duration::from_millis(1_000)).await;
    }
    panic!("a window stayed unanswered in the spool for {TRIES} windows before the outage");
}

fn total(points: &[(u64, f64, f64, f64)], from_ms: u64) -> f64 {
    points.iter().filter(|p| p.0 >= from_ms).map(|p| p.1).sum()
}

async fn sleep_s(s: u64) {
    tokio::time::sleep(Duration::from_secs(s)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_metric_data_round_trips_every_sample() {
    if !localstack_up().await {
        return;
    }
    let namespace = format!("/ema-test/{}", unique("pmd"));
    let (dir, config) = setup("format = \"put_metric_data\"", &namespace);
    let started = now_ms();
    let agent = start(&dir, &config, &endpoint_url());
    sleep_s(24).await;
    let samples = stop(agent).final_counter("samples_taken");
    let points = windows(&namespace, started).await;
    assert_consistent(&points);
    assert!(points.len() >= 3, "{points:?}");
    assert_eq!(
        total(&points, 0),
        samples as f64,
        "every sample taken arrives exactly once, the partial window at SIGTERM included: {points:?}"
    );
    assert!(points[1..points.len() - 1]
        .iter()
        .all(|p| p.1 == SAMPLES_PER_WINDOW));
    assert_eq!(spool_files(dir.path()), 0, "nothing left in the spool");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emf_through_cloudwatch_logs_creates_the_group_and_round_trips() {
    if !localstack_up().await {
        return;
    }
    let group = format!("/ema-test/{}", unique("logs"));
    let (dir, config) = setup(
        &format!("emf_destination = \"cloudwatch_logs\"\nlog_group = \"{group}\""),
        "/ema-test/emf",
    );
    let agent = start(&dir, &config, &endpoint_url());
    sleep_s(22).await;
    let samples = stop(agent).final_counter("samples_taken");
    let out = logs()
        .get_log_events()
        .log_group_name(&group)
        .log_stream_name("test-host")
        .start_from_head(true)
        .send()
        .await
        .expect("the agent created the group and the stream");
    let events = out.events();
    assert!(events.len() >= 2, "{events:?}");
    let mut values = 0u64;
    let mut last_ts = 0;
    for e in events {
        let ts = e.timestamp().unwrap() as u64;
        assert_eq!(ts % (PERIOD_S * 1000), 0, "event time is the window start");
        assert!(ts > last_ts, "one event per window, in order");
        last_ts = ts;
        let doc: serde_json::Value = serde_json::from_str(e.message().unwrap()).unwrap();
        assert_eq!(doc["_aws"]["Timestamp"].as_u64(), Some(ts));
        let directive = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "/ema-test/emf");
        assert_eq!(
            directive["Dimensions"],
            serde_json::json!([["EndpointName", "VariantName"]])
        );
        assert_eq!(doc["EndpointName"], "ep");
        let mem = doc["MemoryUtilization"].as_array().unwrap();
        assert!(mem.iter().all(|v| v.as_f64() == Some(MEMORY_PERCENT)));
        values += mem.len() as u64;
    }
    assert_eq!(values, samples, "every sample arrives exactly once");
}

/// A TCP forwarder to LocalStack that can be cut and restored on the same port: the outage.
struct Proxy {
    addr: SocketAddr,
    stop: Option<watch::Sender<bool>>,
}

impl Proxy {
    async fn new() -> Proxy {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let mut p = Proxy { addr, stop: None };
        p.up();
        p
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn up(&mut self) {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(self.addr).unwrap();
        let listener = socket.listen(128).unwrap();
        let (tx, mut rx) = watch::channel(false);
        self.stop = Some(tx);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { continue };
                        let mut stop = rx.clone();
                        tokio::spawn(async move {
                            let Ok(mut outbound) = TcpStream::connect(localstack_addr()).await else {
                                return;
                            };
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                                _ = stop.changed() => {}
                            }
                        });
                    }
                    _ = rx.changed() => break,
                }
            }
        });
    }

    /// Refuses new connections and cuts open ones.
    async fn down(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(true);
        }
        // Let the tasks drop the listener and the connections.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            TcpStream::connect(self.addr).await.is_err(),
            "proxy is down"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_kill_and_restart_lose_and_duplicate_nothing() {
    if !localstack_up().await {
        return;
    }
    let namespace = format!("/ema-test/{}", unique("outage"));
    let (dir, config) = setup("format = \"put_metric_data\"", &namespace);
    let mut proxy = Proxy::new().await;
    let run1_start = now_ms();

    // Run 1: one window through, then CloudWatch goes away, windows spool, then SIGKILL.
    let agent = start(&dir, &config, &proxy.url());
    sleep_s(12).await;
    // Cut only when no request is in flight. A request CloudWatch stored whose answer the cut
    // loses would be sent again (PutMetricData has no idempotency key; docs/cloudwatch.md),
    // which is not what this tests.
    cut_when_nothing_is_in_flight(&mut proxy, dir.path()).await;
    let outage_start = now_ms();
    sleep_s(14).await;
    assert!(
        spool_files(dir.path()) >= 1,
        "windows closed during the outage wait in the spool"
    );
    let killed_at = now_ms();
    agent.kill9();

    // Run 2: starts with a non-empty spool while CloudWatch is still away; SIGTERM spools the
    // partial window too.
    let run2_start = now_ms();
    let agent = start(&dir, &config, &proxy.url());
    sleep_s(12).await;
    let spooled_before_stop = spool_files(dir.path());
    let samples2 = stop(agent).final_counter("samples_taken");
    assert!(spool_files(dir.path()) > spooled_before_stop || samples2 == 0);

    // Run 3: CloudWatch is back; the backlog drains oldest first next to the current windows.
    proxy.up();
    let backlog = spool_files(dir.path());
    assert!(
        backlog >= 2,
        "run 1's outage windows and run 2's: {backlog}"
    );
    let agent = start(&dir, &config, &proxy.url());
    sleep_s(16).await;
    let run3 = stop(agent);
    let samples3 = run3.final_counter("samples_taken");
    assert_eq!(spool_files(dir.path()), 0, "the whole backlog was sent");
    // Each spooled window was replayed once (run 3's own windows are sent fresh, not replayed).
    assert_eq!(
        run3.final_counter("spool_items_replayed"),
        backlog as u64,
        "{}",
        run3.text()
    );

    let points = windows(&namespace, run1_start).await;
    assert_consistent(&points);
    // Run 1: every window that closed before the kill (a window closes one sample after its
    // end) arrived whole, those of the outage included.
    let period_ms = PERIOD_S * 1000;
    let first_full = run1_start.div_ceil(period_ms) * period_ms;
    let mut expected = first_full;
    while expected + period_ms + 2000 <= killed_at {
        let found = points.iter().find(|p| p.0 == expected);
        assert_eq!(
            found.map(|p| p.1),
            Some(SAMPLES_PER_WINDOW),
            "window {expected} of run 1 (outage from {outage_start}): {points:?}"
        );
        expected += period_ms;
    }
    // Runs 2 and 3 stopped cleanly: their samples all arrived, exactly once.
    let run2_first_window = run2_start / period_ms * period_ms;
    assert_eq!(
        total(&points, run2_first_window),
        (samples2 + samples3) as f64,
        "{points:?}"
    );
}

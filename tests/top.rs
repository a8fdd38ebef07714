//! `top` and the admin endpoint's `GET /snapshot`, against the built agent running over the fake
//! NVML (2 GPUs) with two labelled busybox copies on the real Docker engine: the JSON snapshot
//! and its refusals, `top` piped (one table), and `top` in a real terminal (tmux: capture the
//! pane, check the rows, sort, quit).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "test code: a failed step stops it with its message (Cargo.toml [lints] is for the agent)"
)]

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use common::agent::{binary, Agent, Workdir, WAIT_LIMIT};
use common::docker::{docker, docker_ready, image, RemoveOnDrop};
use common::fake_nvml;
/// $8 an hour for 4 GPUs: a copy holding one GPU costs $2 an hour; the 2 GPUs NVML does not
/// show are unallocated, $4 an hour.
const PRICE: &str = "[cost]\ninstance_hourly_price_usd = 8.0\ngpus_per_instance = 4\n";

fn run_id() -> String {
    let ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}-{ns}", std::process::id())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Two labelled copies (ic-a on GPU 0, ic-b on GPU 1), each a busybox `httpd` behind the
/// agent's front door, the fake NVML and the agent running; all removed however the test ends.
struct Host {
    agent: Agent,
    /// The front door's port.
    proxy_port: u16,
    containers: Vec<String>,
    _removed: RemoveOnDrop,
    _fake: fake_nvml::FakeNvml,
    dir: Workdir,
    config: PathBuf,
    port: u16,
    endpoint: String,
}

impl Host {
    /// None when Docker tests are to be skipped (`EMA_SKIP_DOCKER_TESTS=1`).
    fn start() -> Option<Host> {
        if !docker_ready() {
            return None;
        }
        let run = run_id();
        let label = format!("ema-top-{run}");
        let mut containers = Vec::new();
        for (component, gpu) in [("ic-a", "0"), ("ic-b", "1")] {
            let id = docker(&[
                "run",
                "-d",
                "--label",
                "ema-test=1",
                "--label",
                &format!("{label}={component}"),
                "--label",
                "endpoint-metrics-agent.upstream-port=8081",
                "-e",
                &format!("NVIDIA_VISIBLE_DEVICES={gpu}"),
                &image(),
                "sh",
                "-c",
                "mkdir -p /www && echo ping > /www/ping && exec httpd -f -p 8081 -h /www",
            ])
            .unwrap();
            containers.push(id);
        }
        let removed = RemoveOnDrop(containers.clone());
        let fake = fake_nvml::FakeNvml::new();
        fake.script(&fake_nvml::devices(2));
        let dir = Workdir::new();
        let port = free_port();
        let proxy_port = free_port();
        let endpoint = format!("top-{run}");
        let agent = Agent::start(
            &dir,
            &format!(
                "[endpoint]\nname = \"{endpoint}\"\ninstance_id = \"i-top\"\n\
                 [metrics]\npublish_frequency_seconds = 10\nsample_interval_ms = 1000\n\
                 [output]\nemf_destination = \"{}\"\n\
                 [admin]\nlisten = \"127.0.0.1:{port}\"\n\
                 [proxy]\nenabled = true\nlisten = \"127.0.0.1:{proxy_port}\"\n\
                 [gpu]\nnvml_library = \"{}\"\nprocess_interval_ms = 1000\n\
                 [docker]\ncomponent_label = \"{label}\"\ncomponent_env = \"EMA_TOP_{}\"\n{PRICE}",
                dir.emf_destination(),
                fake.library_str(),
                std::process::id()
            ),
        );
        Some(Host {
            config: agent.config_file().to_path_buf(),
            agent,
            proxy_port,
            containers,
            _removed: removed,
            _fake: fake,
            dir,
            port,
            endpoint,
        })
    }

    fn log(&self) -> String {
        self.agent.logs().text()
    }

    fn short(&self, i: usize) -> &str {
        &self.containers[i][..12]
    }

    /// Sends `request` raw to the admin endpoint; (status, body).
    fn ask(&self, request: &[u8]) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request).unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let status = text.split(' ').nth(1).unwrap().parse().unwrap();
        let body = text.split_once("\r\n\r\n").unwrap().1.to_string();
        (status, body)
    }

    /// Sends requests for `component` through the front door until the returned guard drops
    /// (at most [`WAIT_LIMIT`]; one at a time, 20 ms apart).
    fn load(&self, component: &'static str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, port) = (stop.clone(), self.proxy_port);
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            while !flag.load(Ordering::Relaxed) && started.elapsed() < WAIT_LIMIT {
                if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    let request = format!(
                        "GET /ping HTTP/1.1\r\nHost: t\r\n\
                         X-Amzn-SageMaker-Inference-Component: {component}\r\n\
                         Connection: close\r\n\r\n"
                    );
                    let _ = s.write_all(request.as_bytes());
                    let _ = s.read_to_end(&mut Vec::new());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Load(stop, Some(thread))
    }

    /// The first snapshot `pick` accepts.
    fn snapshot_where(&self, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let (status, body) = self.ask(b"GET /snapshot HTTP/1.1\r\n\r\n");
            if status == 200 {
                let v: Value = serde_json::from_str(&body).unwrap();
                if pick(&v) {
                    return v;
                }
            }
            assert!(
                started.elapsed() < WAIT_LIMIT,
                "{what}:\n{body}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The snapshot, once both copies are in it with their GPUs and cost.
    fn settled_snapshot(&self) -> Value {
        let started = Instant::now();
        loop {
            let ok = TcpStream::connect(("127.0.0.1", self.port)).is_ok();
            if ok {
                let (status, body) = self.ask(b"GET /snapshot HTTP/1.1\r\nHost: t\r\n\r\n");
                if status == 200 {
                    let v: Value = serde_json::from_str(&body).unwrap();
                    let copies = v["copies"].as_array().unwrap();
                    let settled = v["gpus"].as_array().unwrap().len() == 2
                        && copies.len() == 2
                        && copies.iter().all(|c| {
                            c["gpus"].as_array().is_some_and(|g| g.len() == 1)
                                && c["cost_per_hour"].is_number()
                                && c["cpu_percent"].is_number()
                        });
                    if settled {
                        return v;
                    }
                }
            }
            assert!(
                started.elapsed() < WAIT_LIMIT,
                "no settled snapshot:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

fn prometheus_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} in {text}"))
}

#[test]
fn the_snapshot_serves_the_last_tick_and_refuses_bad_requests() {
    let Some(host) = Host::start() else {
        return;
    };
    let v = host.settled_snapshot();
    assert_eq!(v["version"], 1);
    assert_eq!(v["endpoint_name"], host.endpoint.as_str());
    assert_eq!(v["instance_id"], "i-top");
    assert_eq!(v["sample_interval_ms"], 1000);
    // The fake's GPUs: GPU i at 10 + i %, 2 GiB x (i + 1) of 80 GiB.
    for i in 0..2u64 {
        let g = &v["gpus"][i as usize];
        assert_eq!(g["index"], i);
        assert_eq!(g["utilization_percent"], 10.0 + i as f64);
        assert_eq!(g["memory_used_bytes"], (2u64 << 30) * (i + 1));
        assert_eq!(g["memory_total_bytes"], 80u64 << 30);
    }
    for (i, component) in ["ic-a", "ic-b"].into_iter().enumerate() {
        let c = &v["copies"][i];
        assert_eq!(c["component"], component);
        assert_eq!(c["container_id"], host.short(i));
        assert_eq!(c["gpus"], serde_json::json!([i]));
        assert_eq!(c["cost_per_hour"], 2.0);
        let cpu = c["cpu_percent"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&cpu), "{c}");
    }
    assert_eq!(v["unallocated_gpu_cost_per_hour"], 4.0);
    assert_eq!(v["copies_left_out"], 0);
    assert_eq!(v["front_door"], true);

    // Requests to ic-a through the front door: its requests per second and latency; ic-b none.
    let load = host.load("ic-a");
    let v = host.snapshot_where("ic-a's requests in a tick", |v| {
        v["copies"][0]["requests_per_second"]
            .as_f64()
            .is_some_and(|r| r > 0.0)
    });
    drop(load);
    let (a, b) = (&v["copies"][0], &v["copies"][1]);
    let p50 = a["latency_p50_us"].as_f64().unwrap();
    let p99 = a["latency_p99_us"].as_f64().unwrap();
    assert!(p50 > 0.0 && p99 >= p50, "{a}");
    assert_eq!(b["requests_per_second"], 0.0, "{b}");
    assert!(b["latency_p50_us"].is_null(), "{b}");

    // HEAD: the head only.
    let (status, body) = host.ask(b"HEAD /snapshot HTTP/1.1\r\n\r\n");
    assert_eq!((status, body.as_str()), (200, ""));
    // Bad requests: 4xx, and counted.
    let metrics = || host.ask(b"GET /metrics HTTP/1.1\r\n\r\n").1;
    let counter = "endpoint_metrics_agent_admin_bad_requests_total";
    let before = prometheus_value(&metrics(), counter);
    let bad: [(&[u8], u16); 4] = [
        (b"POST /snapshot HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
        (b"GET /snapshot?sort=cpu HTTP/1.1\r\n\r\n", 400),
        (b"GET /snapshot HTTP/9.9\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\r\n\r\n", 400),
    ];
    for (request, expected) in bad {
        let (status, _) = host.ask(request);
        assert_eq!(status, expected, "{}", String::from_utf8_lossy(request));
    }
    let after = prometheus_value(&metrics(), counter);
    assert_eq!(after - before, 4.0);

    // Piped: one snapshot as a table, exit 0.
    let out = Command::new(binary())
        .args(["top", "--config"])
        .arg(&host.config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_rows(&text, &host);
}

/// The rows `top` shows for the host, in a pane or piped.
fn check_rows(text: &str, host: &Host) {
    assert!(
        text.contains(&format!("endpoint {}  instance i-top", host.endpoint)),
        "{text}"
    );
    let line = |start: &str| {
        text.lines()
            .map(|l| l.trim().trim_matches('│').trim())
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("a row starting {start:?} in\n{text}"))
            .split_whitespace()
            .map(String::from)
            .collect::<Vec<String>>()
    };
    let gpu1 = line("gpu_1");
    assert_eq!(gpu1[1..5], ["11.0", "5.0", "4.0", "GiB"], "{text}");
    for (i, component) in ["ic-a", "ic-b"].into_iter().enumerate() {
        let row = line(component);
        assert_eq!(row[1], host.short(i), "{text}");
        assert_eq!(row[2], i.to_string(), "its GPU: {text}");
        assert_eq!(row.last().unwrap(), "2.000", "$ per hour: {text}");
    }
    assert!(text.contains("unallocated $4.000"), "{text}");
}

/// A tmux server of the test's own (its own socket), killed however the test ends.
struct Tmux(String);

impl Tmux {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(["-L", &self.0])
            .args(args)
            .output()
            .expect("tmux (apt-get install tmux; scripts/setup/ops.sh)")
    }

    fn pane(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    }

    fn wait_for(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let pane = self.pane();
            if done(&pane) {
                return pane;
            }
            assert!(started.elapsed() < WAIT_LIMIT, "{what}; the pane:\n{pane}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// Requests running in the background; stopped when dropped.
struct Load(Arc<AtomicBool>, Option<std::thread::JoinHandle<()>>);

impl Drop for Load {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        if let Some(t) = self.1.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

#[test]
fn top_in_a_real_terminal_shows_the_rows_sorts_and_quits() {
    let Some(host) = Host::start() else {
        return;
    };
    host.settled_snapshot();
    let _load = host.load("ic-a");
    let exit_file = host.dir.join("top.exit");
    let command = format!(
        "{} top --config {}; echo $? > {}",
        binary().display(),
        host.config.display(),
        exit_file.display()
    );
    let tmux = Tmux(format!("ema-top-{}", run_id()));
    let started = tmux.cmd(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "110",
        "-y",
        "16",
        &command,
    ]);
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    // ic-a's row with requests per second and its latencies.
    let served = |p: &str| {
        p.lines().any(|l| {
            let cells: Vec<&str> = l.trim_matches(['│', ' ']).split_whitespace().collect();
            cells.first() == Some(&"ic-a")
                && cells.len() == 11
                && cells[7].parse::<f64>().is_ok_and(|r| r > 0.0)
                && cells[8].parse::<f64>().is_ok()
                && cells[9].parse::<f64>().is_ok()
        })
    };
    let pane = tmux.wait_for("both copies, ic-a with requests", |p| {
        p.contains("ic-b") && p.contains("2.000") && p.contains("gpu_1") && served(p)
    });
    check_rows(&pane, &host);
    assert!(pane.contains("sort: COMPONENT"), "{pane}");
    let row_of = |pane: &str, c: &str| pane.lines().position(|l| l.contains(c)).unwrap();
    assert!(row_of(&pane, "ic-a") < row_of(&pane, "ic-b"), "{pane}");

    // `s`: by CPU; `r`: reversed (by name and reversed: ic-b first).
    tmux.cmd(&["send-keys", "-t", "top", "s"]);
    tmux.wait_for("sorted by CPU", |p| p.contains("sort: CPU%"));
    tmux.cmd(&["send-keys", "-t", "top", "s", "s", "s", "s", "s", "s", "s"]);
    tmux.wait_for("back to the component", |p| p.contains("sort: COMPONENT"));
    tmux.cmd(&["send-keys", "-t", "top", "r"]);
    let pane = tmux.wait_for("reversed", |p| p.contains("(reversed)"));
    assert!(row_of(&pane, "ic-b") < row_of(&pane, "ic-a"), "{pane}");
    if std::env::var_os("EMA_TOP_SCREENSHOT").is_some() {
        std::fs::write(std::env::var("EMA_TOP_SCREENSHOT").unwrap(), tmux.pane()).unwrap();
    }

    tmux.cmd(&["send-keys", "-t", "top", "q"]);
    let started = Instant::now();
    let status = loop {
        if let Ok(s) = std::fs::read_to_string(&exit_file) {
            break s;
        }
        assert!(
            started.elapsed() < WAIT_LIMIT,
            "top did not quit on q:\n{}",
            tmux.pane()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status.trim(), "0");
}

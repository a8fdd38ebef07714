//! The admin endpoint read over HTTP while the built binary runs: /healthz, /metrics, the
//! healthcheck subcommand, and bad requests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::agent::{binary, body, free_port, get, http, now_ms, prometheus_value, Workdir};
use crate::{config_text, sample_count, start, WAIT};

/// utime + stime of a process, from /proc, in seconds.
fn cpu_seconds_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf reads a constant.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

#[test]
fn health_and_metrics_are_served_over_http_while_the_agent_runs() {
    let dir = Workdir::new();
    let port = free_port();
    let agent = start(&dir, &config_text(&dir, port, "Ops/Health", ""));

    let (status, response) = get(port, "/healthz");
    assert_eq!(status, 200, "{response}");
    assert!(response.contains("Content-Type: application/json"));
    let health: Value = serde_json::from_str(body(&response)).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["ready"], true);

    // After the first window is delivered, health names the sample and the publish.
    agent.wait_for_document("the first window", |_| true);
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

    let cpu_before = cpu_seconds_of(agent.pid());
    let (status, response) = get(port, "/metrics");
    let cpu_after = cpu_seconds_of(agent.pid());
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
    let check = Command::new(binary())
        .args(["healthcheck", "--config"])
        .arg(agent.config_file())
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");

    // Stopped, the same counters are exact against what it wrote: one per EMF line, and one
    // sample per host MemoryUtilization value.
    let stopped = agent.stop().success();
    let docs = stopped.documents();
    assert_eq!(
        stopped.logs.final_counter("emf_documents_written"),
        docs.len() as u64
    );
    let memory_samples: usize = docs
        .iter()
        .filter(|d| d.get("MemoryUtilization").is_some())
        .map(|d| sample_count(d, "MemoryUtilization"))
        .sum();
    assert_eq!(
        stopped.logs.final_counter("samples_taken"),
        memory_samples as u64,
        "{}",
        stopped.logs.text()
    );
}

#[test]
fn bad_http_requests_get_4xx_and_the_agent_runs_on() {
    let dir = Workdir::new();
    let port = free_port();
    let agent = start(&dir, &config_text(&dir, port, "Ops/Bad", ""));

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

    // Counted: the six 400s, the 431 and the 405 (not the 404; the silent client is not
    // refused before its head timeout of 5 s).
    let (status, response) = get(port, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        prometheus_value(
            body(&response),
            "endpoint_metrics_agent_admin_bad_requests_total"
        ),
        8.0
    );
    assert_eq!(get(port, "/healthz").0, 200);
    agent.stop().success();
}

//! What the model server knows, through the built binary against the real Docker engine:
//! labelled busybox containers whose `httpd` serves an exposition file that the test rewrites
//! between scrapes (the text `prometheus_client` writes with vLLM's and SGLang's own
//! definitions, tests/fixtures/scrape/, made by scripts/scrape-fixtures.py), one that hangs and
//! one that answers garbage; and each copy's lifecycle from Docker's events, checked against the
//! engine's own timestamps. `EMA_SKIP_DOCKER_TESTS=1` skips them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "test code: a failed step stops it with its message (Cargo.toml [lints] is for the agent)"
)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::agent::{documents_in, namespace, now_ms, timestamp_ms, values, Agent, Workdir};
use common::docker::{docker, docker_ready, engine_socket, image, RemoveOnDrop};
use serde_json::Value;

const NS: &str = "/aws/sagemaker/InferenceComponents";
/// Each target is scraped once every 10 s, at its own point between 2.5 s and 7.5 s into each
/// interval (`scrape`'s cadence): files rewritten on the 10 s boundaries change between scrapes.
const INTERVAL_MS: u64 = 10_000;

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/scrape")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Replaces `dir/metrics` in one step, so httpd never serves half a file.
fn serve(dir: &Path, text: &str) {
    std::fs::write(dir.join("metrics.tmp"), text).unwrap();
    std::fs::rename(dir.join("metrics.tmp"), dir.join("metrics")).unwrap();
}

fn sleep_until_ms(at_ms: u64) {
    let now = now_ms();
    if at_ms > now {
        std::thread::sleep(Duration::from_millis(at_ms - now));
    }
}

/// Starts a labelled busybox container running `command`; its full ID.
fn start(component: &str, extra: &[&str], command: &[&str]) -> String {
    let label = format!("sagemaker.inference-component={component}");
    let mut args = vec!["run", "-d", "--label", "ema-test=1", "--label", &label];
    args.extend_from_slice(extra);
    let image = image();
    args.push(&image);
    args.extend_from_slice(command);
    docker(&args).unwrap()
}

/// Waits until the container's httpd answers on 8080.
fn wait_for_httpd(id: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let probe = [
        "exec",
        id,
        "busybox",
        "wget",
        "-q",
        "-O",
        "/dev/null",
        "http://127.0.0.1:8080/metrics",
    ];
    while docker(&probe).is_err() {
        assert!(Instant::now() < deadline, "httpd never answered in {id}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The component documents of one copy (its per-copy dimension set), in window order.
fn copy_docs<'a>(docs: &'a [Value], short_id: &str) -> Vec<&'a Value> {
    let mut out: Vec<&Value> = docs
        .iter()
        .filter(|d| namespace(d) == NS && d["ContainerId"] == short_id)
        .collect();
    out.sort_by_key(|d| timestamp_ms(d));
    out
}

/// `metric`'s values per window (window start, values), windows without it left out.
fn per_window(docs: &[&Value], metric: &str) -> Vec<(u64, Vec<f64>)> {
    docs.iter()
        .map(|d| (timestamp_ms(d), values(d, metric)))
        .filter(|(_, v)| !v.is_empty())
        .collect()
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

#[test]
fn model_servers_are_scraped_and_published_per_copy_value_by_value() {
    if !docker_ready() {
        return;
    }
    let run = std::process::id();
    let dir = Workdir::new();
    let frameworks = ["vllm-v1", "vllm-v0", "sglang"];
    let mut ids = Vec::new();
    for name in frameworks.iter().chain(&["garbage"]) {
        let www = dir.join(name);
        std::fs::create_dir_all(&www).unwrap();
        let text = match *name {
            "garbage" => "<html><body>not metrics</body></html>\n".to_string(),
            fw => fixture(&format!("{fw}-step0.txt")),
        };
        serve(&www, &text);
        let mount = format!("{}:/www:ro", www.display());
        let component = format!("scrape-{name}-{run}");
        ids.push(start(
            &component,
            &["-v", &mount],
            &["busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
        ));
    }
    // Accepts and reads the request, never answers.
    let hang = start(
        &format!("scrape-hang-{run}"),
        &[],
        &[
            "sh",
            "-c",
            "while true; do sleep 3600 | busybox nc -l -p 8080 >/dev/null; done",
        ],
    );
    ids.push(hang.clone());
    let _containers = RemoveOnDrop(ids.clone());
    for id in &ids[..4] {
        wait_for_httpd(id);
    }

    let config = format!(
        "[endpoint]\nname = \"ep\"\ninstance_id = \"test-host\"\n\
         [metrics]\nenhanced = true\npublish_frequency_seconds = 10\nsample_interval_ms = 500\n\
         [output]\nemf_destination = \"{}\"\n\
         [gpu]\nenabled = false\n[admin]\nenabled = false\n\
         [docker]\nsocket = \"{}\"\n\
         [scrape]\nenabled = true\ninterval_seconds = 10\ntimeout_ms = 1000\n",
        dir.emf_destination(),
        engine_socket()
    );
    let agent = Agent::start(&dir, &config);
    let deadline = Instant::now() + Duration::from_secs(30);
    while ids.iter().any(|id| {
        agent
            .logs()
            .lines()
            .all(|l| l.field("copy").as_deref() != Some(&id[..12]))
    }) {
        assert!(
            Instant::now() < deadline,
            "not every copy scraped:\n{}",
            agent.logs().text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // In the window from the next 10 s boundary (`base`) every target's scrape reads step 0, the
    // baseline; in the next it reads step 1, then step 2 twice (the server restarted, then quiet).
    let base = (now_ms() / INTERVAL_MS + 1) * INTERVAL_MS;
    sleep_until_ms(base + INTERVAL_MS);
    for fw in frameworks {
        serve(&dir.join(fw), &fixture(&format!("{fw}-step1.txt")));
    }
    sleep_until_ms(base + 2 * INTERVAL_MS);
    for fw in frameworks {
        serve(&dir.join(fw), &fixture(&format!("{fw}-step2.txt")));
    }
    // The fourth window closes at base + 40 s, with the tick after it.
    sleep_until_ms(base + 4 * INTERVAL_MS + 1_000);
    let stopped = agent.stop().success();
    let docs = documents_in(&dir.emf_file());
    let logs = stopped.logs;

    let expected: Value = serde_json::from_str(&fixture("expected.json")).unwrap();
    // The k-th window from `base`.
    let window = |k: u64| base + k * INTERVAL_MS;
    for (fw, id) in frameworks.iter().zip(&ids) {
        let want = &expected[*fw];
        let docs = copy_docs(&docs, &id[..12]);
        assert!(!docs.is_empty(), "{fw}: no documents\n{}", logs.text());
        let floats = |k: &str| -> Vec<f64> {
            want[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        };
        // Every request since the baseline, one value each at its bucket's midpoint; the
        // restart (step 2) and the quiet scrape after it add none.
        let ttft: Vec<f64> = per_window(&docs, "TTFT")
            .into_iter()
            .flat_map(|(_, v)| v)
            .collect();
        assert_eq!(sorted(ttft), floats("ttft_us"), "{fw} TTFT");
        let itl = per_window(&docs, "InterTokenLatency");
        assert_eq!(itl.len(), 1, "{fw}: {itl:?}");
        assert_eq!(
            itl[0].0,
            window(1),
            "{fw}: in the window of the step 1 scrape"
        );
        assert_eq!(sorted(itl[0].1.clone()), floats("itl_us"), "{fw} ITL");

        let at = |metric: &str, k: u64| -> Option<f64> {
            per_window(&docs, metric)
                .into_iter()
                .find(|(w, _)| *w == window(k))
                .map(|(_, v)| {
                    assert_eq!(v.len(), 1, "{fw} {metric}: one data point per period");
                    v[0]
                })
        };
        assert_eq!(at("BatchSize", 0), Some(2.0), "{fw}");
        assert_eq!(at("BatchSize", 1), want["batch"].as_f64(), "{fw}");
        assert_eq!(at("BatchSize", 2), Some(1.0), "{fw}");
        assert_eq!(at("QueueDepth", 1), want["queue"].as_f64(), "{fw}");
        assert_eq!(at("QueueDepth", 3), Some(0.0), "{fw}");
        assert_eq!(
            at("KVCacheUtilization", 1),
            want["kv_percent"].as_f64(),
            "{fw}"
        );
        assert_eq!(at("KVCacheUtilization", 3), Some(12.5), "{fw}");

        // Rates over the real time between two scrapes (10 s apart, give or take the timer).
        let near = |got: Option<f64>, tokens: f64| {
            let got = got.unwrap_or_else(|| panic!("{fw}: no rate"));
            assert!(
                (got - tokens / 10.0).abs() <= tokens / 10.0 * 0.02,
                "{fw}: {got} vs {tokens}/10 s"
            );
        };
        let input = want["input_tokens"].as_f64().unwrap();
        let output = want["output_tokens"].as_f64().unwrap();
        near(at("InputTokensPerSecond", 1), input);
        near(at("OutputTokensPerSecond", 1), output);
        near(at("TotalTPS", 1), input + output);
        // The restart: a new baseline, no rate (never a negative one); then quiet: 0.
        assert_eq!(at("InputTokensPerSecond", 2), None, "{fw}");
        assert_eq!(at("InputTokensPerSecond", 3), Some(0.0), "{fw}");
        let all_rates = per_window(&docs, "OutputTokensPerSecond");
        assert!(all_rates.iter().flat_map(|(_, v)| v).all(|v| *v >= 0.0));
        // Per component too: the same series under {InferenceComponentName}.
        let directive = &docs[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"];
        assert!(directive
            .as_array()
            .unwrap()
            .iter()
            .any(|set| set == &serde_json::json!(["InferenceComponentName"])));
    }
    // The garbage and the hanging target: nothing published, each scrape counted, one log line
    // per outage; the sampling tick never waited for them.
    for bad in &ids[3..] {
        let docs = copy_docs(&docs, &bad[..12]);
        assert!(docs
            .iter()
            .all(|d| values(d, "BatchSize").is_empty() && values(d, "TTFT").is_empty()));
    }
    // (Other tests' containers on the same engine may be scraped too: only ours are checked.)
    let failures = logs.counted_warnings("scrape_failures");
    let of =
        |id: &str| -> Vec<&String> { failures.iter().filter(|l| l.contains(&id[..12])).collect() };
    let garbage = of(&ids[3]);
    assert_eq!(garbage.len(), 1, "one line per outage: {failures:?}");
    assert!(
        garbage[0].contains("not an exposition: line 1: bad metric name"),
        "{garbage:?}"
    );
    let hung = of(&hang);
    assert_eq!(hung.len(), 1, "one line per outage: {failures:?}");
    assert!(
        hung[0].contains("no complete answer within 1000 ms"),
        "{hung:?}"
    );
    assert!(
        logs.final_counter("scrape_failures") >= 8,
        "four scrapes of two bad targets at least"
    );
    assert_eq!(
        logs.final_counter("scrape_counter_resets"),
        3 * 4,
        "two counters and two histograms per server"
    );
    assert_eq!(logs.final_counter("scrape_values_skipped"), 0);
    assert_eq!(logs.final_counter("samples_missed"), 0);
}

/// Docker's own time of each event of `id`, as (action, ms since the epoch).
fn engine_events(id: &str, since_s: u64) -> Vec<(String, u64)> {
    let until = now_ms() / 1000 + 1;
    let out = docker(&[
        "events",
        "--since",
        &since_s.to_string(),
        "--until",
        &until.to_string(),
        "--filter",
        &format!("container={id}"),
        "--format",
        "{{.TimeNano}} {{.Action}}",
    ])
    .unwrap();
    out.lines()
        .filter_map(|l| {
            let (ns, action) = l.split_once(' ')?;
            Some((action.to_string(), ns.parse::<u64>().ok()? / 1_000_000))
        })
        .collect()
}

fn sum_of(docs: &[&Value], metric: &str) -> f64 {
    docs.iter().flat_map(|d| values(d, metric)).sum()
}

#[test]
fn a_copys_start_restarts_oom_kills_and_exits_match_dockers_own_events() {
    if !docker_ready() {
        return;
    }
    let run = std::process::id();
    let dir = Workdir::new();
    let config = format!(
        "[endpoint]\nname = \"ep\"\ninstance_id = \"test-host\"\n\
         [metrics]\nenhanced = true\npublish_frequency_seconds = 10\nsample_interval_ms = 500\n\
         [output]\nemf_destination = \"{}\"\n\
         [gpu]\nenabled = false\n[admin]\nenabled = false\n\
         [docker]\nsocket = \"{}\"\n",
        dir.emf_destination(),
        engine_socket()
    );
    let mut agent = Agent::start(&dir, &config);
    agent.wait_for_message("container discovery started");
    // Discovery subscribes, then lists: wait for the first list before creating containers.
    std::thread::sleep(Duration::from_secs(2));
    let since = now_ms() / 1000 - 1;
    // Healthy once its check finds the file, 3 s after the start.
    let healthy = start(
        &format!("life-healthy-{run}"),
        &[
            "--health-cmd",
            "test -f /tmp/ready",
            "--health-interval",
            "1s",
            "--health-start-period",
            "30s",
        ],
        &["sh", "-c", "sleep 3; touch /tmp/ready; exec sleep 3600"],
    );
    // Fills a shell variable past its 16 MiB limit after 3 s: the kernel kills it.
    let oom = start(
        &format!("life-oom-{run}"),
        &["--memory", "16m", "--memory-swap", "16m"],
        &[
            "sh",
            "-c",
            "sleep 3; x=$(head -c 268435456 /dev/zero | tr '\\0' a); sleep 3600",
        ],
    );
    // Exits 3 after 3 s, restarted twice by its policy: three exits, two restarts.
    let flaky = start(
        &format!("life-flaky-{run}"),
        &["--restart", "on-failure:2"],
        &["sh", "-c", "sleep 3; exit 3"],
    );
    let _containers = RemoveOnDrop(vec![healthy.clone(), oom.clone(), flaky.clone()]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let state = |id: &str, format: &str| docker(&["inspect", "-f", format, id]).unwrap_or_default();
    while state(&healthy, "{{.State.Health.Status}}") != "healthy"
        || state(&oom, "{{.State.Running}}") != "false"
        || state(&flaky, "{{.State.Running}} {{.RestartCount}}") != "false 2"
    {
        assert!(
            Instant::now() < deadline,
            "containers never reached their end states"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        state(&oom, "{{.State.OOMKilled}}"),
        "true",
        "the engine saw the OOM kill"
    );
    // Let the tick take the last events and the window close.
    std::thread::sleep(Duration::from_secs(2));
    let stopped = agent.stop().success();
    let docs = documents_in(&dir.emf_file());
    let logs = stopped.logs;

    let events = engine_events(&healthy, since);
    let time_of = |action: &str| {
        events
            .iter()
            .find(|(a, _)| a.starts_with(action))
            .map(|(_, t)| *t)
            .unwrap_or_else(|| panic!("{action}: {events:?}"))
    };
    let expected = (time_of("health_status: healthy") - time_of("start")) as f64 / 1000.0;
    let healthy_docs = copy_docs(&docs, &healthy[..12]);
    let durations: Vec<f64> = healthy_docs
        .iter()
        .flat_map(|d| values(d, "ContainerStartDuration"))
        .collect();
    assert_eq!(
        durations,
        vec![expected],
        "start to healthy, from Docker's own timestamps\n{}",
        logs.text()
    );

    let oom_docs = copy_docs(&docs, &oom[..12]);
    assert_eq!(
        sum_of(&oom_docs, "ContainerOOMKills"),
        1.0,
        "{}",
        logs.text()
    );
    assert_eq!(sum_of(&oom_docs, "ContainerNonZeroExits"), 1.0);
    let flaky_docs = copy_docs(&docs, &flaky[..12]);
    let flaky_events = engine_events(&flaky, since);
    let dies = flaky_events.iter().filter(|(a, _)| a == "die").count();
    let starts = flaky_events.iter().filter(|(a, _)| a == "start").count();
    assert_eq!((dies, starts), (3, 3), "{flaky_events:?}");
    assert_eq!(
        sum_of(&flaky_docs, "ContainerRestarts"),
        (starts - 1) as f64
    );
    assert_eq!(sum_of(&flaky_docs, "ContainerNonZeroExits"), dies as f64);
    // Each exit logged with its code.
    let exits: Vec<_> = logs
        .lines()
        .filter(|l| l.message().contains("exited with an error"))
        .map(|l| l.text().to_string())
        .collect();
    assert!(
        exits.iter().filter(|l| l.contains("3")).count() >= 3,
        "{exits:?}"
    );
    assert!(exits.iter().any(|l| l.contains("137")), "{exits:?}");
}

#[test]
fn a_copy_without_a_health_check_starts_at_its_first_scrape_and_cold_starts_at_its_first_2xx() {
    if !docker_ready() {
        return;
    }
    let run = std::process::id();
    let dir = Workdir::new();
    let config = format!(
        "[endpoint]\nname = \"ep\"\ninstance_id = \"test-host\"\n\
         [metrics]\nenhanced = true\npublish_frequency_seconds = 10\nsample_interval_ms = 500\n\
         [output]\nemf_destination = \"{}\"\n\
         [gpu]\nenabled = false\n[admin]\nenabled = false\n\
         [docker]\nsocket = \"{}\"\n\
         [proxy]\nenabled = true\nlisten = \"127.0.0.1:0\"\n\
         [scrape]\nenabled = true\ninterval_seconds = 10\ntimeout_ms = 1000\n",
        dir.emf_destination(),
        engine_socket()
    );
    let mut agent = Agent::start(&dir, &config);
    let port = agent.front_door_address().port();
    agent.wait_for_message("container discovery started");
    std::thread::sleep(Duration::from_secs(2));
    let since = now_ms() / 1000 - 1;
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    serve(&www, &fixture("vllm-v1-step0.txt"));
    let component = format!("cold-{run}");
    let mount = format!("{}:/www:ro", www.display());
    let id = start(
        &component,
        &["-v", &mount],
        &["busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
    );
    let _container = RemoveOnDrop(vec![id.clone()]);
    // Until discovery has seen it the front door answers 404 or 503, and 502 while discovery has
    // seen it but httpd does not listen yet; then the copy's 200.
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: model\r\nX-Amzn-SageMaker-Inference-Component: {component}\r\nConnection: close\r\n\r\n"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let answered_ms = loop {
        let (status, _) = common::agent::http(port, request.as_bytes());
        if status == 200 {
            break now_ms();
        }
        assert!(matches!(status, 404 | 502 | 503), "{status}");
        assert!(Instant::now() < deadline, "the copy never answered");
        std::thread::sleep(Duration::from_millis(100));
    };
    // Its first scrape falls in the middle half of an interval, at most 10 s after the start; one
    // more window closes after it.
    std::thread::sleep(Duration::from_secs(22));
    let stopped = agent.stop().success();
    let docs = documents_in(&dir.emf_file());
    let docs = copy_docs(&docs, &id[..12]);
    let events = engine_events(&id, since);
    let time_of = |action: &str| {
        events
            .iter()
            .find(|(a, _)| a == action)
            .map(|(_, t)| *t)
            .unwrap_or_else(|| panic!("{action}: {events:?}"))
    };
    let (created, started) = (time_of("create"), time_of("start"));
    let logs = stopped.logs.text();

    // Cold start: creation to the tick that saw the first 2xx (within one sampling interval
    // of the answer the test read).
    let cold: Vec<f64> = docs
        .iter()
        .flat_map(|d| values(d, "ColdStartDuration"))
        .collect();
    assert_eq!(cold.len(), 1, "{cold:?}\n{logs}");
    let cold_end = created + (cold[0] * 1000.0).round() as u64;
    assert!(
        cold_end + 1000 >= answered_ms && cold_end <= answered_ms + 1000,
        "created {created}, cold start ends {cold_end}, answered {answered_ms}"
    );
    // Start: Docker's start to the first of the first 2xx and the first successful scrape.
    let start: Vec<f64> = docs
        .iter()
        .flat_map(|d| values(d, "ContainerStartDuration"))
        .collect();
    assert_eq!(start.len(), 1, "{start:?}\n{logs}");
    let start_end = started + (start[0] * 1000.0).round() as u64;
    let scraped_at_mid_interval =
        (INTERVAL_MS / 4..INTERVAL_MS * 3 / 4 + 1000).contains(&(start_end % INTERVAL_MS));
    assert!(
        start_end <= cold_end || scraped_at_mid_interval,
        "started {started}, start ends {start_end}, first 2xx by {cold_end}"
    );
    assert!(start_end <= cold_end + 1000, "the earlier of the two");
}

//! Container metrics against the real Docker engine: labelled busybox containers burn CPU or hold
//! memory, the built agent runs with a temporary configuration, and its EMF output must name
//! them with values that agree with their cgroup files, pick up a container started later, and
//! forget a removed one.
//!
//! Needs a Docker engine at `EMA_DOCKER_SOCKET` (default /var/run/docker.sock; the `docker` CLI
//! the tests drive follows `DOCKER_HOST`). The tiny image is built by
//! `scripts/setup/docker-image.sh` when missing. Without an engine these tests fail, unless
//! `EMA_SKIP_DOCKER_TESTS=1` says to skip them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "test code: a failed step stops it with its message (Cargo.toml [lints] is for the agent)"
)]

mod common;

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::agent::{namespace, now_ms, one_shot, timestamp_ms, values, Agent, Workdir};
use common::docker::{docker, docker_ready, engine_socket, image};
use common::fake_nvml;

const COMPONENTS_NS: &str = "/aws/sagemaker/InferenceComponents";
const ENDPOINTS_NS: &str = "/aws/sagemaker/Endpoints";
const MIB: f64 = 1024.0 * 1024.0;

/// Containers this test started; removed however the test ends.
#[derive(Default)]
struct Containers(Vec<String>);

impl Containers {
    fn run(&mut self, args: &[&str]) -> String {
        let mut all = vec!["run", "-d", "--label", "ema-test=1"];
        all.extend_from_slice(args);
        let id = docker(&all).unwrap();
        assert_eq!(id.len(), 64, "{id}");
        self.0.push(id.clone());
        id
    }

    fn remove(&mut self, id: &str) {
        docker(&["rm", "-f", id]).unwrap();
        self.0.retain(|c| c != id);
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(self.0.iter().map(String::as_str));
            let _ = docker(&args);
        }
    }
}

/// The built agent with host and container metrics (10 s windows) into its EMF file, the
/// engine at `socket`, and a `[gpu]` section of the caller's.
fn start(socket: &str) -> Agent {
    start_with(socket, "[gpu]\nenabled = false\n", "")
}

/// With a `[gpu]` section of the caller's and extra `[docker]` keys.
fn start_with(socket: &str, gpu: &str, docker_extra: &str) -> Agent {
    start_full(socket, "", gpu, docker_extra)
}

/// With extra `[endpoint]` keys, sections of the caller's (after `[admin]`) and extra
/// `[docker]` keys. Every sample is a data point (`data_points = "every_sample"`): these tests
/// check each sample against the cgroup files and wait for full windows by their samples.
fn start_full(socket: &str, endpoint_extra: &str, gpu: &str, docker_extra: &str) -> Agent {
    let dir = Workdir::new();
    let config = format!(
        "[endpoint]\nname = \"ep\"\ninstance_id = \"test-host\"\n{endpoint_extra}\
         [metrics]\nenhanced = true\npublish_frequency_seconds = 10\ndata_points = \"every_sample\"\n\
         [output]\nemf_destination = \"{}\"\n\
         [admin]\nenabled = false\n{gpu}\
         [docker]\nsocket = \"{socket}\"\n{docker_extra}",
        dir.emf_destination()
    );
    Agent::start(&dir, &config)
}

/// The per-container documents of one container.
fn of_container<'a>(docs: &'a [Value], id: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|d| namespace(d) == COMPONENTS_NS && d["ContainerId"] == id[..12])
        .collect()
}

/// The container's cgroup directories for CPU and memory, from its first process's cgroup
/// (v2: one directory; v1: the cpuacct and memory controllers').
fn cgroup_dirs(id: &str) -> (PathBuf, PathBuf) {
    let pid = docker(&["inspect", "-f", "{{.State.Pid}}", id]).unwrap();
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let root = Path::new("/sys/fs/cgroup");
    let path_of = |pred: &dyn Fn(&str) -> bool| {
        text.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            pred(controllers).then(|| {
                (
                    controllers.to_string(),
                    path.trim_start_matches('/').to_string(),
                )
            })
        })
    };
    if root.join("cgroup.controllers").exists() {
        let (_, p) = path_of(&|c| c.is_empty()).unwrap();
        (root.join(&p), root.join(&p))
    } else {
        let (cpu_mount, cpu) = path_of(&|c| c.split(',').any(|x| x == "cpuacct")).unwrap();
        let (_, mem) = path_of(&|c| c.split(',').any(|x| x == "memory")).unwrap();
        (
            root.join(cpu_mount).join(cpu),
            root.join("memory").join(mem),
        )
    }
}

fn cpu_usage_ns(dir: &Path) -> u64 {
    if let Ok(t) = std::fs::read_to_string(dir.join("cpuacct.usage")) {
        return t.trim().parse().unwrap();
    }
    let t = std::fs::read_to_string(dir.join("cpu.stat")).unwrap();
    stat(&t, "usage_usec") * 1000
}

fn memory_used_bytes(dir: &Path) -> u64 {
    let (usage, key) = match std::fs::read_to_string(dir.join("memory.usage_in_bytes")) {
        Ok(t) => (t, "total_inactive_file"),
        Err(_) => (
            std::fs::read_to_string(dir.join("memory.current")).unwrap(),
            "inactive_file",
        ),
    };
    let usage: u64 = usage.trim().parse().unwrap();
    let inactive = stat(
        &std::fs::read_to_string(dir.join("memory.stat")).unwrap(),
        key,
    );
    usage.saturating_sub(inactive)
}

fn stat(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {text}"))
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn labelled_containers_are_measured_named_and_forgotten() {
    if !docker_ready() {
        return;
    }
    let tag = format!("ema-it-{}-{}", std::process::id(), now_ms());
    let image = image();
    let mut containers = Containers::default();
    let burner = containers.run(&[
        "--label",
        &format!("sagemaker.inference-component={tag}-cpu"),
        "--cpus=0.5",
        &image,
        "sh",
        "-c",
        "while :; do :; done",
    ]);
    // Named through the environment fallback; 64 MiB of shared memory held, against a 128 MiB
    // reservation (shmem is charged to the cgroup and is not inactive file).
    let holder = containers.run(&[
        "-e",
        &format!("INFERENCE_COMPONENT_NAME={tag}-mem"),
        "-m",
        "256m",
        "--memory-reservation",
        "128m",
        "--shm-size",
        "128m",
        &image,
        "sh",
        "-c",
        "dd if=/dev/zero of=/dev/shm/fill bs=1048576 count=64 && sleep 3600",
    ]);
    let unlabelled = containers.run(&[&image, "sleep", "3600"]);
    let (burner_cpu_dir, _) = cgroup_dirs(&burner);
    let (_, holder_mem_dir) = cgroup_dirs(&holder);

    let agent = start(&engine_socket());
    let (t0, usage0) = (Instant::now(), cpu_usage_ns(&burner_cpu_dir));

    // A full window of the burner (10 samples at 1 s, the first of a container has no CPU delta).
    let cpu_doc = agent.wait_for("a full window of the CPU burner", |docs| {
        of_container(docs, &burner)
            .into_iter()
            .find(|d| values(d, "CPUUtilizationNormalized").len() >= 9)
            .cloned()
    });
    let (elapsed, usage1) = (t0.elapsed(), cpu_usage_ns(&burner_cpu_dir));
    assert_eq!(cpu_doc["InferenceComponentName"], format!("{tag}-cpu"));
    assert_eq!(cpu_doc["ContainerId"], burner[..12]);
    assert_eq!(cpu_doc["InstanceId"], "test-host");
    assert_eq!(
        cpu_doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
        serde_json::json!([
            ["InferenceComponentName"],
            [
                "EndpointName",
                "VariantName",
                "InstanceId",
                "InferenceComponentName",
                "ContainerId"
            ]
        ])
    );
    // Against its 0.5-CPU limit: near 100 when the host has room, and in agreement with what
    // its cgroup counter says over the same stretch of time.
    let all_cpu: Vec<f64> = of_container(&agent.documents(), &burner)
        .iter()
        .flat_map(|d| values(d, "CPUUtilizationNormalized"))
        .collect();
    for v in &all_cpu {
        assert!((0.0..=115.0).contains(v), "{v} out of range: {all_cpu:?}");
    }
    let from_cgroup = (usage1 - usage0) as f64 / elapsed.as_nanos() as f64 * 100.0 / 0.5;
    assert!(from_cgroup > 30.0, "the burner hardly ran: {from_cgroup}");
    assert!(
        (mean(&all_cpu) - from_cgroup).abs() < 20.0,
        "agent {} vs cgroup {from_cgroup}: {all_cpu:?}",
        mean(&all_cpu)
    );

    // The holder: named by its environment, memory against its reservation as cgroup says.
    let mem_doc = agent.wait_for("the memory holder", |docs| {
        of_container(docs, &holder)
            .into_iter()
            .rev()
            .find(|d| !values(d, "MemoryUtilizationNormalized").is_empty())
            .cloned()
    });
    assert_eq!(mem_doc["InferenceComponentName"], format!("{tag}-mem"));
    let reported = *values(&mem_doc, "MemoryUtilizationNormalized")
        .last()
        .unwrap();
    let expected = memory_used_bytes(&holder_mem_dir) as f64 * 100.0 / (128.0 * MIB);
    assert!(expected > 45.0, "the holder holds {expected}% of 128 MiB");
    assert!(
        (reported - expected).abs() < 5.0,
        "agent {reported} vs cgroup {expected}"
    );

    // The instance reserves at least the burner's 0.5 CPU and the holder's 128 MiB.
    let reservation = agent.wait_for("reservations", |docs| {
        docs.iter()
            .find(|d| namespace(d) == ENDPOINTS_NS && !values(d, "CPUReservation").is_empty())
            .cloned()
    });
    let cpus = std::thread::available_parallelism().unwrap().get() as f64;
    assert!(*values(&reservation, "CPUReservation").last().unwrap() >= 50.0 / cpus - 1e-9);
    assert!(*values(&reservation, "MemoryReservation").last().unwrap() > 0.0);

    // A container started while the agent runs is reported.
    let late = containers.run(&[
        "--label",
        &format!("sagemaker.inference-component={tag}-late"),
        &image,
        "sleep",
        "3600",
    ]);
    let late_doc = agent.wait_for("the container started later", |docs| {
        of_container(docs, &late).first().cloned().cloned()
    });
    assert_eq!(late_doc["InferenceComponentName"], format!("{tag}-late"));

    // A removed container is forgotten: no window starting 2 s after its removal has it, while
    // the holder goes on being reported.
    containers.remove(&burner);
    let removed_ms = now_ms();
    agent.wait_for("a window after the removal", |docs| {
        let after: Vec<&Value> = of_container(docs, &holder)
            .into_iter()
            .filter(|d| timestamp_ms(d) >= removed_ms + 2000)
            .collect();
        (!after.is_empty()).then_some(())
    });
    let docs = agent.documents();
    let late_burner: Vec<&Value> = of_container(&docs, &burner)
        .into_iter()
        .filter(|d| timestamp_ms(d) >= removed_ms + 2000)
        .collect();
    assert!(late_burner.is_empty(), "still reported: {late_burner:?}");

    // The unlabelled container is never reported, and was counted as ignored.
    assert!(of_container(&docs, &unlabelled).is_empty());
    let logs = agent.stop().success().logs;
    // Other tests' unlabelled containers share the engine: only ours is checked by name.
    assert!(
        logs.counted_warnings("containers_without_component")
            .iter()
            .any(|l| l.contains(&unlabelled[..12])),
        "{}",
        logs.text()
    );
}

#[test]
fn without_an_engine_the_agent_warns_once_and_runs_on() {
    let socket = format!("/tmp/ema-no-engine-{}.sock", std::process::id());
    // At debug level each failed try after the first (warned) one is logged too.
    let agent = start_with(
        &socket,
        "[gpu]\nenabled = false\n[log]\nlevel = \"debug\"\n",
        "",
    );
    // Host metrics go on; wait for a window closed on time (not the partial one at shutdown),
    // long enough for several reconnection attempts.
    agent.wait_for("a window of host metrics", |docs| {
        docs.iter()
            .find(|d| namespace(d) == ENDPOINTS_NS && values(d, "CPUUtilization").len() >= 5)
            .map(|_| ())
    });
    let stopped = agent.stop().success();
    let logs = &stopped.logs;
    let warnings = logs.counted_warnings("docker_unavailable").len();
    assert_eq!(warnings, 1, "{}", logs.text());
    let tries = logs.final_counter("docker_unavailable");
    assert!(
        tries >= 2,
        "retried with backoff, counted each time: {tries}"
    );
    assert_eq!(
        tries,
        1 + logs.count_messages("still unavailable") as u64,
        "every try counted: the warned one and each one after it; {}",
        logs.text()
    );
    assert!(
        stopped
            .documents()
            .iter()
            .all(|d| namespace(d) != COMPONENTS_NS),
        "no container series without an engine"
    );
}

/// A Unix-socket relay to the real engine that the test can take away and bring back, so the
/// agent sees the engine vanish mid-stream and return at the same path.
struct EngineRelay {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    clients: Arc<Mutex<Vec<UnixStream>>>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl EngineRelay {
    fn start(path: &Path) -> EngineRelay {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Arc<Mutex<Vec<UnixStream>>> = Arc::default();
        let (stop2, clients2) = (stop.clone(), clients.clone());
        let acceptor = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let engine = UnixStream::connect(engine_socket()).unwrap();
                        clients2.lock().unwrap().push(client.try_clone().unwrap());
                        relay(client, engine);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => panic!("relay accept: {e}"),
                }
            }
        });
        EngineRelay {
            path: path.to_path_buf(),
            stop,
            clients,
            acceptor: Some(acceptor),
        }
    }

    /// Closes every relayed connection (the agent's event stream ends) and the socket.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        for c in self.clients.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for EngineRelay {
    fn drop(&mut self) {
        self.stop();
    }
}

fn relay(client: UnixStream, engine: UnixStream) {
    let pipe = |mut from: UnixStream, mut to: UnixStream| {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Write);
        });
    };
    pipe(client.try_clone().unwrap(), engine.try_clone().unwrap());
    pipe(engine, client);
}

#[test]
fn discovery_resubscribes_when_the_engine_goes_away_and_comes_back() {
    if !docker_ready() {
        return;
    }
    let tag = format!("ema-rs-{}-{}", std::process::id(), now_ms());
    let image = image();
    let socket_dir = tempfile::tempdir().unwrap();
    let socket = socket_dir.path().join("engine.sock");
    let mut containers = Containers::default();
    let label = |name: &str| format!("sagemaker.inference-component={tag}-{name}");
    let sleeper =
        |c: &mut Containers, name: &str| c.run(&["--label", &label(name), &image, "sleep", "3600"]);

    // No engine at start: a model copy started meanwhile is found once the engine appears.
    let agent = start(socket.to_str().unwrap());
    let early = sleeper(&mut containers, "early");
    let mut relay = EngineRelay::start(&socket);
    agent.wait_for(
        "the container started before the engine was reachable",
        |docs| (!of_container(docs, &early).is_empty()).then_some(()),
    );

    // The engine goes away mid-stream; a copy started while it is away is found on return.
    relay.stop();
    let during = sleeper(&mut containers, "during");
    let _relay = EngineRelay::start(&socket);
    agent.wait_for("the container started while the engine was away", |docs| {
        (!of_container(docs, &during).is_empty()).then_some(())
    });

    // The new subscription delivers events: a later start and a removal.
    let after = sleeper(&mut containers, "after");
    agent.wait_for("the container started after re-subscribing", |docs| {
        (!of_container(docs, &after).is_empty()).then_some(())
    });
    containers.remove(&early);
    let removed_ms = now_ms();
    agent.wait_for("a window after the removal", |docs| {
        of_container(docs, &after)
            .iter()
            .any(|d| timestamp_ms(d) >= removed_ms + 2000)
            .then_some(())
    });
    let docs = agent.documents();
    assert!(of_container(&docs, &early)
        .iter()
        .all(|d| timestamp_ms(d) < removed_ms + 2000));

    let logs = agent.stop().success().logs;
    let warnings = logs.counted_warnings("docker_unavailable").len();
    assert_eq!(warnings, 2, "one warning per outage: {}", logs.text());
    assert_eq!(
        logs.count_messages("docker engine reachable again"),
        2,
        "{}",
        logs.text()
    );
}

/// `plan` counts what discovery finds now: model copies and their components, through a label
/// only this test uses (other tests' containers run on the same engine).
#[test]
fn plan_counts_the_model_copies_discovery_finds() {
    if !docker_ready() {
        return;
    }
    let label = format!("ema-plan-{}-{}", std::process::id(), now_ms());
    // Other tests name copies through the default environment variable: use one of our own.
    let env = format!("EMA_PLAN_{}", std::process::id());
    let image = image();
    let mut containers = Containers::default();
    for component in ["a", "a", "b"] {
        containers.run(&[
            "--label",
            &format!("{label}={component}"),
            &image,
            "sleep",
            "120",
        ]);
    }
    containers.run(&[&image, "sleep", "120"]);
    let text = one_shot(
        "plan",
        &format!(
            "[endpoint]\nname = \"plan-test\"\ninstance_id = \"test-host\"\n\
             [metrics]\nenhanced = true\n[gpu]\nenabled = false\n\
             [docker]\nsocket = \"{}\"\ncomponent_label = \"{label}\"\ncomponent_env = \"{env}\"\n",
            engine_socket()
        ),
    );
    assert!(
        text.starts_with("host: 0 GPUs, 3 containers in 2 components;"),
        "three labelled copies of two components, the unlabelled one ignored: {text}"
    );
    // Per copy with enhanced metrics: 2 metrics x {InferenceComponentName} (shared by the copies
    // of a component) and x the per-container set.
    assert!(text.contains("CPUUtilizationNormalized  {EndpointName,VariantName,InstanceId,InferenceComponentName,ContainerId}  x3"), "{text}");
}

/// The whole attribution path: NVML (the fake driver, scripted with the host PIDs of two real
/// containers and of a process in no container) -> `/proc/<pid>/cgroup` -> container ->
/// component, against the GPUs each container declares through `NVIDIA_VISIBLE_DEVICES`.
#[test]
fn gpu_use_is_attributed_to_the_containers_that_run_it() {
    if !docker_ready() {
        return;
    }
    let label = format!("ema-gpu-{}-{}", std::process::id(), now_ms());
    let image = image();
    let mut containers = Containers::default();
    let a = containers.run(&[
        "--label",
        &format!("{label}=model-a"),
        "-e",
        "NVIDIA_VISIBLE_DEVICES=0",
        &image,
        "sleep",
        "300",
    ]);
    let b = containers.run(&[
        "--label",
        &format!("{label}=model-b"),
        "-e",
        "NVIDIA_VISIBLE_DEVICES=1",
        &image,
        "sleep",
        "300",
    ]);
    let pid = |id: &str| docker(&["inspect", "-f", "{{.State.Pid}}", id]).unwrap();
    let (pid_a, pid_b) = (pid(&a), pid(&b));
    const GIB: u64 = 1 << 30;
    let fake = fake_nvml::FakeNvml::new();
    // GPU 0: 20 of 80 GiB used, 16 by model-a and 4 by this test process (in no container);
    // GPU 1: 10 GiB used, 8 by model-b. SM: model-a 50 %, model-b 25 %. GPU 1 is model-b's
    // alone, so once attribution knows its PID its per-process utilization is no longer read and
    // its share is the device's: 25 % too, so every sample of the window agrees.
    fake.script(&format!(
        "device 0 uuid=GPU-a util=60 mem_used={} mem_total={}\n\
         device 1 uuid=GPU-b util=25 mem_used={} mem_total={}\n\
         process 0 compute {pid_a} {}\nprocess 0 compute {} {}\nprocess 1 compute {pid_b} {}\n\
         sample 0 {pid_a} 50\nsample 1 {pid_b} 25\n",
        20 * GIB,
        80 * GIB,
        10 * GIB,
        80 * GIB,
        16 * GIB,
        std::process::id(),
        4 * GIB,
        8 * GIB,
    ));
    let gpu = format!(
        "[gpu]\nnvml_library = \"{}\"\nprocess_interval_ms = 1000\n",
        fake.library_str()
    );
    let agent = start_with(
        &engine_socket(),
        &gpu,
        // Our own label and variable: other tests' copies are not part of this host's picture.
        &format!(
            "component_label = \"{label}\"\ncomponent_env = \"EMA_GPU_{}\"\n",
            std::process::id()
        ),
    );
    let short = |id: &str| id[..12].to_string();
    // A window in which both copies were known from its start: all its GPU values are settled.
    let window = agent.wait_for("a window with both copies' GPU series", |docs| {
        let mut starts: Vec<u64> = docs.iter().map(timestamp_ms).collect();
        starts.dedup();
        starts.into_iter().find(|&t| {
            [&a, &b].iter().all(|id| {
                of_container(docs, &short(id)).iter().any(|d| {
                    timestamp_ms(d) == t && !values(d, "GPUMemoryUtilizationNormalized").is_empty()
                })
            }) && docs.iter().any(|d| timestamp_ms(d) < t)
        })
    });
    let docs = agent.documents();
    let in_window: Vec<&Value> = docs.iter().filter(|d| timestamp_ms(d) == window).collect();
    let container_values = |id: &str, metric: &str, gpu: Option<&str>| -> Vec<f64> {
        in_window
            .iter()
            .filter(|d| d["ContainerId"] == short(id).as_str())
            .filter(|d| match gpu {
                Some(g) => d["GpuId"] == g,
                None => d.get("GpuId").is_none(),
            })
            .flat_map(|d| values(d, metric))
            .collect()
    };
    let all_near =
        |v: &[f64], expected: f64| !v.is_empty() && v.iter().all(|x| (x - expected).abs() < 1e-9);
    // Against the one GPU each copy declares.
    let a_mem = container_values(&a, "GPUMemoryUtilizationNormalized", None);
    assert!(all_near(&a_mem, 20.0), "model-a: 16 of 80 GiB: {a_mem:?}");
    let b_mem = container_values(&b, "GPUMemoryUtilizationNormalized", None);
    assert!(all_near(&b_mem, 10.0), "model-b: 8 of 80 GiB: {b_mem:?}");
    let a_sm = container_values(&a, "GPUUtilizationNormalized", None);
    assert!(all_near(&a_sm, 50.0), "model-a SM: {a_sm:?}");
    let b_sm = container_values(&b, "GPUUtilizationNormalized", None);
    assert!(all_near(&b_sm, 25.0), "model-b SM: {b_sm:?}");
    // Per GPU (enhanced): each copy on its own GPU only.
    assert!(all_near(
        &container_values(&a, "GPUMemoryUtilizationNormalized", Some("gpu_0")),
        20.0
    ));
    assert!(container_values(&a, "GPUMemoryUtilizationNormalized", Some("gpu_1")).is_empty());
    assert!(all_near(
        &container_values(&b, "GPUMemoryUtilizationNormalized", Some("gpu_1")),
        10.0
    ));
    // The rest of GPU 0's memory (this test's 4 GiB and 0 unlisted) is unattributed: the copies'
    // shares and the unattributed share add up to the device figure.
    let gpu0 = in_window
        .iter()
        .find(|d| {
            namespace(d) == ENDPOINTS_NS && d["GpuId"] == "gpu_0" && d.get("ContainerId").is_none()
        })
        .expect("GPU 0's own document");
    assert!(all_near(&values(gpu0, "GPUMemoryUtilization"), 25.0));
    assert!(
        all_near(&values(gpu0, "GPUMemoryUtilizationUnattributed"), 5.0),
        "{gpu0}"
    );
    // Both GPUs are allocated to copies.
    let instance = in_window
        .iter()
        .find(|d| namespace(d) == ENDPOINTS_NS && !values(d, "GPUReservation").is_empty())
        .expect("an instance document with GPUReservation");
    assert!(
        all_near(&values(instance, "GPUReservation"), 100.0),
        "{instance}"
    );
}

/// Cost per model (issue 7) end to end: four copies of three components declare GPUs through
/// `NVIDIA_VISIBLE_DEVICES` (UUIDs, an index shared by two copies, `all`) over four scripted
/// GPUs on an ml.g6.12xlarge ($5.752 per hour, 4 GPUs, from the built-in table). Holders per
/// GPU: 0 and 1: big, all-gpus; 2: shared x2, all-gpus; 3: all-gpus. So big holds 2 x 1/2 GPU
/// = 1/4 of the instance, shared 2 x 1/3 = 1/6, all-gpus 1/2 + 1/2 + 1/3 + 1 = 7/12: the whole
/// price, nothing unallocated. big's process keeps GPU 0 50 % busy: the weighted view charges
/// it 1/8 of the instance and the rest of the GPU time is idle.
#[test]
fn gpu_cost_is_split_by_allocation_and_published_per_component() {
    if !docker_ready() {
        return;
    }
    let label = format!("ema-cost-{}-{}", std::process::id(), now_ms());
    let env = format!("EMA_COST_{}", std::process::id());
    let image = image();
    let mut containers = Containers::default();
    let mut copy = |component: &str, visible: &str| {
        containers.run(&[
            "--label",
            &format!("{label}={component}"),
            "-e",
            &format!("NVIDIA_VISIBLE_DEVICES={visible}"),
            &image,
            "sleep",
            "300",
        ])
    };
    let big = copy("big", "GPU-c-0,GPU-c-1");
    copy("shared", "2");
    copy("shared", "2");
    copy("all-gpus", "all");
    let pid_big = docker(&["inspect", "-f", "{{.State.Pid}}", &big]).unwrap();
    let fake = fake_nvml::FakeNvml::new();
    fake.script(&format!(
        "device 0 uuid=GPU-c-0 util=50\ndevice 1 uuid=GPU-c-1 util=0\n\
         device 2 uuid=GPU-c-2 util=0\ndevice 3 uuid=GPU-c-3 util=0\n\
         process 0 compute {pid_big} 1073741824\nsample 0 {pid_big} 50\n"
    ));
    let gpu = format!(
        "[gpu]\nnvml_library = \"{}\"\nprocess_interval_ms = 1000\n",
        fake.library_str()
    );
    let docker_keys = format!("component_label = \"{label}\"\ncomponent_env = \"{env}\"\n");
    let endpoint = "instance_type = \"ml.g6.12xlarge\"\n";

    // The `cost` subcommand, from what discovery and NVML show now.
    let text = one_shot(
        "cost",
        &format!(
            "[endpoint]\nname = \"cost-test\"\n{endpoint}{gpu}[docker]\nsocket = \"{}\"\n{docker_keys}",
            engine_socket()
        ),
    );
    assert!(
        text.starts_with("instance: ml.g6.12xlarge, $5.752 per hour"),
        "{text}"
    );
    assert!(text.contains("4 GPUs (4 seen by NVML)"), "{text}");
    let row = |name: &str| -> Vec<String> {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} row: {text}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    // copies, GPUs, GPU share, USD per hour, share of the instance.
    assert_eq!(
        row("big")[1..],
        ["1", "2", "1.00", "1.4380", "25.0%"],
        "{text}"
    );
    assert_eq!(
        row("shared")[1..],
        ["2", "1", "0.67", "0.9587", "16.7%"],
        "{text}"
    );
    assert_eq!(
        row("all-gpus")[1..],
        ["1", "4", "2.33", "3.3553", "58.3%"],
        "{text}"
    );
    assert_eq!(
        row("(idle")[3..],
        ["-", "0", "0.00", "0.0000", "0.0%"],
        "{text}"
    );
    assert_eq!(
        row("total")[1..],
        ["4", "4", "4.00", "5.7520", "100.0%"],
        "{text}"
    );

    // The running agent's EMF.
    let agent = start_full(&engine_socket(), endpoint, &gpu, &docker_keys);
    let component_doc = |docs: &[Value], t: u64, name: &str| -> Option<Value> {
        docs.iter()
            .find(|d| {
                timestamp_ms(d) == t
                    && namespace(d) == COMPONENTS_NS
                    && d["InferenceComponentName"] == name
                    && d.get("ContainerId").is_none()
                    && d.get("CostPerHour").is_some()
            })
            .cloned()
    };
    let names = ["big", "shared", "all-gpus"];
    // A window whose previous window already had every component: all its ticks saw all four
    // copies (discovery's first inventory may land mid-window).
    let window = agent.wait_for("a settled window with every component's cost", |docs| {
        let mut starts: Vec<u64> = docs.iter().map(timestamp_ms).collect();
        starts.sort_unstable();
        starts.dedup();
        let complete = |t: u64| names.iter().all(|n| component_doc(docs, t, n).is_some());
        starts
            .windows(2)
            .find(|w| complete(w[0]) && complete(w[1]))
            .map(|w| w[1])
    });
    let docs = agent.documents();
    let price = 5.752;
    for (name, share, gpus) in [
        ("big", 0.25, 2.0),
        ("shared", 1.0 / 6.0, 1.0),
        ("all-gpus", 7.0 / 12.0, 4.0),
    ] {
        let d = component_doc(&docs, window, name).unwrap();
        let sets = &d["_aws"]["CloudWatchMetrics"][0]["Dimensions"];
        assert_eq!(
            sets,
            &serde_json::json!([
                ["InferenceComponentName"],
                [
                    "EndpointName",
                    "VariantName",
                    "InstanceId",
                    "InferenceComponentName"
                ]
            ]),
            "{d}"
        );
        assert_eq!(d["InstanceId"], "test-host");
        let per_hour = values(&d, "CostPerHour");
        assert!(
            !per_hour.is_empty() && per_hour.iter().all(|v| (v - price * share).abs() < 1e-12),
            "{name}: {per_hour:?}"
        );
        assert!(
            values(&d, "GPUsAllocated").iter().all(|v| *v == gpus),
            "{d}"
        );
        // Each tick accrues its price over the seconds since the previous tick (1, or more
        // after a missed tick).
        for v in values(&d, "CostAccrued") {
            let seconds = v / (price * share / 3600.0);
            assert!(
                seconds >= 0.999 && (seconds - seconds.round()).abs() < 1e-9,
                "{name}: {v} is not a whole number of seconds at ${} per hour",
                price * share
            );
        }
    }
    // The weighted view: big used half of one GPU: 1/8 of the instance; the others nothing.
    let weighted = |name: &str| {
        values(
            &component_doc(&docs, window, name).unwrap(),
            "CostAccruedUtilizationWeighted",
        )
    };
    let per_second = |share: f64| price * share / 3600.0;
    let big_weighted = weighted("big");
    let big_accrued = values(&component_doc(&docs, window, "big").unwrap(), "CostAccrued");
    assert_eq!(big_weighted.len(), big_accrued.len());
    for (w, a) in big_weighted.iter().zip(&big_accrued) {
        assert!(
            (w / a - 0.5).abs() < 1e-9,
            "big pays half its allocation: {w} of {a}"
        );
    }
    assert!(
        weighted("shared").iter().all(|v| *v == 0.0),
        "allocated but idle"
    );
    assert!(weighted("all-gpus").iter().all(|v| *v == 0.0));
    let instance = docs
        .iter()
        .find(|d| timestamp_ms(d) == window && d.get("UnallocatedGPUCostPerHour").is_some())
        .expect("the instance's cost values");
    assert_eq!(namespace(instance), ENDPOINTS_NS);
    assert!(values(instance, "UnallocatedGPUCostPerHour")
        .iter()
        .all(|v| *v == 0.0));
    for v in values(instance, "IdleGPUCostAccrued") {
        let seconds = v / per_second(3.5 / 4.0);
        assert!(
            (seconds - seconds.round()).abs() < 1e-9 && seconds >= 0.999,
            "{v}"
        );
    }
}

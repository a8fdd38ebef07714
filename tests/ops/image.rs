//! The sidecar image on the real Docker engine: built from the binary under test, run next to a
//! labelled model container with the `docker run` of docs/ops.md.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::agent::{binary, namespace};
use crate::common::docker::{docker_ok, docker_output as docker, RemoveOnDrop as Containers};
use crate::WAIT;

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
            .arg("--prebuilt")
            .arg(binary())
            .args(["--tag", tag])
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

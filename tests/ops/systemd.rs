//! The systemd unit: as shipped (systemd-analyze verify, the lines it must hold), the agent's
//! sd_notify conversation, and the unit under a real systemd (PID 1 in a container).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::agent::{binary, free_port, Agent, Workdir};
use crate::common::docker::{docker_ok, docker_output as docker, RemoveOnDrop as Containers};
use crate::{config_text, WAIT};

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
    let unit = std::fs::read_to_string(unit_path()).unwrap().replace(
        "/usr/local/bin/endpoint-metrics-agent",
        binary().to_str().unwrap(),
    );
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
    let dir = Workdir::new();
    let socket_path = dir.join("notify");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let port = free_port();
    let agent = Agent::launch(&dir, &config_text(&dir, port, "Ops/Notify", ""))
        .env("NOTIFY_SOCKET", &socket_path)
        // Watchdog every 0.5 s (half of 1 s), so a few arrive between READY and STOPPING.
        .env("WATCHDOG_USEC", "1000000")
        .start();
    // WATCHDOG_PID unset: the watchdog is for whoever reads it (systemd sets it to the main PID).
    let mut buf = [0u8; 512];
    let mut recv = || {
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(recv().starts_with("READY=1"));
    assert_eq!(recv(), "WATCHDOG=1");
    agent.signal(libc::SIGHUP);
    let mut seen = Vec::new();
    while !seen.iter().any(|m: &String| m.starts_with("READY=1")) {
        seen.push(recv());
    }
    assert!(
        seen.iter()
            .any(|m| m.starts_with("RELOADING=1\nMONOTONIC_USEC=")),
        "{seen:?}"
    );
    agent.signal(libc::SIGTERM);
    loop {
        let m = recv();
        if m.starts_with("STOPPING=1") {
            break;
        }
        assert_eq!(m, "WATCHDOG=1");
    }
    agent.wait_exit().success();
}

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
        (binary(), "/usr/local/bin/endpoint-metrics-agent"),
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

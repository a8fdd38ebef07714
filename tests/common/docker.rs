//! The `docker` command line, for tests that start containers on the real engine.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

/// Runs `docker ARGS`; its trimmed stdout, or an error that names the command and says stderr.
pub fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("docker {args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `docker ARGS`; its whole output, whatever the status.
pub fn docker_output(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("docker {args:?}: {e}"))
}

/// Runs `docker ARGS`, asserting success; its trimmed stdout.
pub fn docker_ok(args: &[&str]) -> String {
    docker(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Containers (by name or ID) removed however the test ends.
pub struct RemoveOnDrop(pub Vec<String>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = docker_output(&["rm", "-f", name]);
        }
    }
}

/// The engine's socket, for the agent and the relay (the `docker` CLI follows `DOCKER_HOST`).
pub fn engine_socket() -> String {
    std::env::var("EMA_DOCKER_SOCKET").unwrap_or_else(|_| "/var/run/docker.sock".into())
}

/// The tiny test image (`scripts/setup/docker-image.sh` builds it).
pub fn image() -> String {
    std::env::var("EMA_TEST_IMAGE").unwrap_or_else(|_| "ema-test-busybox:latest".into())
}

/// True when the engine is usable (the image built if missing); false only when skipping is
/// asked for. Otherwise an unreachable engine fails the test.
pub fn docker_ready() -> bool {
    static IMAGE_BUILT: Mutex<bool> = Mutex::new(false);
    if let Err(e) = docker(&["version", "--format", "{{.Server.Version}}"]) {
        if std::env::var("EMA_SKIP_DOCKER_TESTS").as_deref() == Ok("1") {
            eprintln!("SKIPPED (EMA_SKIP_DOCKER_TESTS=1): no Docker engine: {e}");
            return false;
        }
        panic!("no Docker engine ({e}); start one, or set EMA_SKIP_DOCKER_TESTS=1 to skip");
    }
    let mut built = IMAGE_BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !*built && docker(&["image", "inspect", &image()]).is_err() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/setup/docker-image.sh");
        let status = Command::new("sh").arg(script).status().unwrap();
        assert!(status.success(), "scripts/setup/docker-image.sh failed");
    }
    *built = true;
    true
}

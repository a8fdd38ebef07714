//! Running the agent for real (issue 8), by topic: the systemd unit (`systemd`), the admin
//! endpoint (`admin`), SIGHUP reloads (`reload`) and the sidecar image (`image`).
//!
//! The sidecar image test (Dockerfile, real Docker engine) runs after scripts/setup/ops.sh; see
//! `image::sidecar_image_reports_host_metrics_and_is_healthy`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "test code: a failed step stops it with its message (Cargo.toml [lints] is for the agent)"
)]

#[path = "../common/mod.rs"]
mod common;

mod admin;
mod image;
mod reload;
mod systemd;

use std::time::Duration;

use serde_json::Value;

use common::agent::{Agent, Workdir};

/// How long any wait in these tests may take before the test fails: windows are 10 s, so this is
/// several windows on a slow, shared machine. Not a timing assertion: a deadline for a hang.
pub const WAIT: Duration = Duration::from_secs(60);

/// A configuration with 10 s windows sampled every second, EMF into the folder's EMF file, the
/// admin endpoint on `port`, no GPU, no Docker.
pub fn config_text(dir: &Workdir, port: u16, endpoints_namespace: &str, extra: &str) -> String {
    format!(
        r#"[endpoint]
name = "ops-test"
instance_id = "i-ops-test"

[metrics]
publish_frequency_seconds = 10
sample_interval_ms = 1000
endpoints_namespace = "{endpoints_namespace}"
# Every sample a data point: the reload test counts the samples a window kept.
data_points = "every_sample"

[output]
emf_destination = "{}"

[gpu]
enabled = false

[docker]
enabled = false

[admin]
listen = "127.0.0.1:{port}"
{extra}
"#,
        dir.emf_destination()
    )
}

/// Starts the agent in `dir` on `config` and waits until its admin endpoint is up.
pub fn start(dir: &Workdir, config: &str) -> Agent {
    let mut agent = Agent::start(dir, config);
    agent.wait_for_message("admin endpoint");
    agent
}

/// How many samples a metric member carries (EMF repeats each sample's value).
pub fn sample_count(doc: &Value, metric: &str) -> usize {
    match &doc[metric] {
        Value::Array(values) => values.len(),
        Value::Number(_) => 1,
        other => panic!("{metric} is {other}"),
    }
}

//! SIGHUP: read the configuration file again. An invalid file changes nothing (the reason is
//! logged, the old configuration stays in force); a valid one is applied as far as it can be
//! without a restart, and the current window keeps every sample it has.
//!
//! [`plan`] is pure: it says which keys take effect now and which need a restart, and builds the
//! configuration that is in force afterwards (the old one with the live keys of the new one).

use std::path::Path;

use crate::agent::{encode_context, Pipeline, PUBLISH_QUEUE_WINDOWS, SHUTDOWN_GRACE};
use crate::catalog::Identity;
use crate::config::Config;
use crate::logging;
use crate::sd_notify::Notifier;
use crate::sinks::{Output, Sink};
use crate::telemetry::{self, Counter};

/// Keys applied at run time. Everything else (including sections this list does not know)
/// waits for a restart.
pub const LIVE_KEYS: [&str; 9] = [
    "log.level",
    "metrics.enhanced",
    "metrics.endpoints_namespace",
    "metrics.components_namespace",
    "output.emf_destination",
    "output.log_group",
    "gpu.dimension_name",
    "self_metrics.enabled",
    "self_metrics.namespace",
];

/// What a reload does.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The configuration in force after the reload.
    pub effective: Config,
    /// Live keys whose value changed.
    pub applied: Vec<&'static str>,
    /// Keys that changed but only take effect after a restart.
    pub needs_restart: Vec<&'static str>,
}

impl Plan {
    pub fn output_changed(&self) -> bool {
        self.applied
            .iter()
            .any(|k| *k == "output.emf_destination" || *k == "output.log_group")
    }
}

/// Compares the running configuration with a new, valid one.
pub fn plan(old: &Config, new: &Config) -> Plan {
    let mut effective = old.clone();
    let mut applied = Vec::new();
    macro_rules! live {
        ($key:literal, $($field:ident).+) => {
            if effective.$($field).+ != new.$($field).+ {
                effective.$($field).+ = new.$($field).+.clone();
                applied.push($key);
            }
        };
    }
    live!("log.level", log.level);
    live!("metrics.enhanced", metrics.enhanced);
    live!("metrics.endpoints_namespace", metrics.endpoints_namespace);
    live!("metrics.components_namespace", metrics.components_namespace);
    live!("output.emf_destination", output.emf_destination);
    live!("output.log_group", output.log_group);
    live!("gpu.dimension_name", gpu.dimension_name);
    live!("self_metrics.enabled", self_metrics.enabled);
    live!("self_metrics.namespace", self_metrics.namespace);
    live!("proxy.namespace", proxy.namespace);

    let mut needs_restart = Vec::new();
    macro_rules! restart {
        ($key:literal, $($field:ident).+) => {
            if old.$($field).+ != new.$($field).+ {
                needs_restart.push($key);
            }
        };
    }
    restart!("endpoint", endpoint);
    restart!(
        "metrics.publish_frequency_seconds",
        metrics.publish_frequency_seconds
    );
    restart!("metrics.sample_interval_ms", metrics.sample_interval_ms);
    restart!("metrics.disk_path", metrics.disk_path);
    restart!("output.format", output.format);
    restart!("log.format", log.format);
    restart!("host", host);
    restart!("gpu.enabled", gpu.enabled);
    restart!("gpu.nvml_library", gpu.nvml_library);
    restart!("gpu.process_interval_ms", gpu.process_interval_ms);
    restart!("gpu.health", gpu.health);
    restart!("gpu.health_slow_interval_ms", gpu.health_slow_interval_ms);
    restart!("admin", admin);
    restart!("cost", cost);
    // The front door's listener, upstreams and limits are fixed at start; its namespace is live.
    let mut proxy = new.proxy.clone();
    proxy.namespace = old.proxy.namespace.clone();
    if old.proxy != proxy {
        needs_restart.push("proxy");
    }
    // A section added later that nobody taught this module about: say so rather than ignore it.
    let mut known = effective.clone();
    copy_restart_keys(&mut known, new);
    if known != *new {
        needs_restart.push("(other keys)");
    }
    Plan {
        effective,
        applied,
        needs_restart,
    }
}

fn copy_restart_keys(into: &mut Config, new: &Config) {
    into.endpoint = new.endpoint.clone();
    into.metrics.publish_frequency_seconds = new.metrics.publish_frequency_seconds;
    into.metrics.sample_interval_ms = new.metrics.sample_interval_ms;
    into.metrics.disk_path = new.metrics.disk_path.clone();
    into.output.format = new.output.format;
    into.log.format = new.log.format;
    into.host = new.host.clone();
    into.gpu.enabled = new.gpu.enabled;
    into.gpu.nvml_library = new.gpu.nvml_library.clone();
    into.gpu.process_interval_ms = new.gpu.process_interval_ms;
    into.gpu.health = new.gpu.health.clone();
    into.gpu.health_slow_interval_ms = new.gpu.health_slow_interval_ms;
    into.admin = new.admin.clone();
    into.cost = new.cost.clone();
    into.proxy = new.proxy.clone();
}

/// SIGHUP: reads the file again and applies what can change at run time. The current window
/// and its samples stay in the pipeline; only how it is encoded and where it goes change.
pub async fn apply(
    path: &Path,
    config: &mut Config,
    identity: &Identity,
    pipeline: &mut Pipeline,
    output: &mut Output,
    notifier: &Notifier,
) {
    notifier.reloading();
    let new = match Config::load(path) {
        Ok(new) => new,
        Err(e) => {
            telemetry::warn(
                Counter::ConfigReloadsRejected,
                1,
                &format!("reload rejected, the running configuration stays in force: {e}"),
            );
            notifier.reloaded("reload rejected; running on the previous configuration");
            return;
        }
    };
    let mut plan = plan(config, &new);
    let mut encoding = pipeline.encoding();
    if plan.output_changed() && (config.publishes_to_cloudwatch() || new.publishes_to_cloudwatch())
    {
        // A CloudWatch sink owns the spool directory; a second one opened beside the draining
        // old one would share it. Such a change waits for a restart.
        tracing::warn!(
            "output changes that involve CloudWatch need a restart; the current output stays"
        );
        plan.effective.output = config.output.clone();
        plan.applied.retain(|k| !k.starts_with("output."));
        plan.needs_restart.push("output");
    }
    if plan.output_changed() {
        match Sink::open(&plan.effective, &identity.instance_id, SHUTDOWN_GRACE).await {
            Ok(sink) => {
                encoding = sink.encoding();
                tracing::info!(destination = %sink.describe(), "EMF destination changed");
                // The old sink drains what it holds in the background.
                let old = std::mem::replace(
                    output,
                    Output::start(sink, PUBLISH_QUEUE_WINDOWS, SHUTDOWN_GRACE),
                );
                tokio::spawn(old.finish(SHUTDOWN_GRACE));
            }
            Err(e) => {
                tracing::error!(destination = %plan.effective.output.emf_destination, error = format!("{e:#}"), "cannot open the new EMF destination; keeping the old one");
                plan.effective.output = config.output.clone();
                plan.applied.retain(|k| !k.starts_with("output."));
            }
        }
    }
    if plan.applied.contains(&"log.level") {
        if let Err(reason) = logging::set_level(plan.effective.log.level) {
            tracing::warn!(reason, "log.level not applied");
        }
    }
    tracing::debug!(settings = %plan.effective.summary(), "effective configuration after reload");
    pipeline.set_context(encode_context(&plan.effective, identity.clone()), encoding);
    *config = plan.effective;
    telemetry::add(Counter::ConfigReloads, 1);
    tracing::info!(file = %path.display(), applied = ?plan.applied, "configuration reloaded; the current window is kept");
    if !plan.needs_restart.is_empty() {
        tracing::warn!(keys = ?plan.needs_restart, "changed keys need restart to take effect; their old values stay in force");
    }
    notifier.reloaded("sampling");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(extra: &str) -> Config {
        Config::parse(
            &format!("[endpoint]\nname = \"e\"\ninstance_id = \"i-1\"\n{extra}"),
            Path::new("t.toml"),
        )
        .unwrap()
    }

    #[test]
    fn same_file_changes_nothing() {
        let c = config("");
        let p = plan(&c, &c);
        assert!(p.applied.is_empty() && p.needs_restart.is_empty());
        assert_eq!(p.effective, c);
    }

    #[test]
    fn live_keys_apply_and_the_rest_waits_for_a_restart() {
        let old = config("");
        let new = config(
            "[metrics]\nenhanced = true\nendpoints_namespace = \"Custom/E\"\npublish_frequency_seconds = 10\n\
             [log]\nlevel = \"debug\"\n[self_metrics]\nenabled = true\n[admin]\nlisten = \"127.0.0.1:1\"\n",
        );
        let p = plan(&old, &new);
        assert_eq!(
            p.applied,
            vec![
                "log.level",
                "metrics.enhanced",
                "metrics.endpoints_namespace",
                "self_metrics.enabled"
            ]
        );
        assert_eq!(
            p.needs_restart,
            vec!["metrics.publish_frequency_seconds", "admin"]
        );
        assert!(p.effective.metrics.enhanced);
        assert_eq!(p.effective.metrics.endpoints_namespace, "Custom/E");
        assert_eq!(p.effective.metrics.publish_frequency_seconds, 60, "kept");
        assert_eq!(p.effective.admin.listen, old.admin.listen, "kept");
        assert!(!p.output_changed());
    }

    #[test]
    fn a_new_price_waits_for_a_restart() {
        let old = config("");
        let new = config("[cost]\ninstance_hourly_price_usd = 3.5\n");
        let p = plan(&old, &new);
        assert_eq!(p.needs_restart, vec!["cost"]);
        assert_eq!(p.effective.cost, old.cost, "kept");
    }

    #[test]
    fn the_proxy_namespace_is_live_and_the_rest_of_proxy_waits() {
        let old = config("");
        let p = plan(
            &old,
            &config("[proxy]\nnamespace = \"Custom/Invocations\"\n"),
        );
        assert_eq!(p.applied, vec!["proxy.namespace"]);
        assert!(p.needs_restart.is_empty());
        assert_eq!(p.effective.proxy.namespace, "Custom/Invocations");
        let p = plan(&old, &config("[proxy]\nenabled = true\n"));
        assert_eq!(p.needs_restart, vec!["proxy"]);
        assert!(!p.effective.proxy.enabled, "kept until a restart");
    }

    #[test]
    fn a_new_destination_is_an_output_change() {
        let old = config("");
        let new = config("[output]\nemf_destination = \"file:/tmp/x\"\n");
        let p = plan(&old, &new);
        assert!(p.output_changed());
        assert_eq!(p.effective.output.emf_destination, "file:/tmp/x");
    }
}

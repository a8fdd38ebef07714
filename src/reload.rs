//! SIGHUP: read the configuration file again. An invalid file changes nothing (the reason is
//! logged, the old configuration stays in force); a valid one is applied as far as it can be
//! without a restart, and the current window keeps every sample it has.
//!
//! [`changes`] is pure: it says which keys take effect now and which need a restart (one table,
//! [`KEYS`]), and builds the configuration that is in force afterwards (the old one with the live
//! keys of the new one).

use std::path::Path;

use crate::catalog::Identity;
use crate::config::Config;
use crate::logging;
use crate::pipeline::Windows;
use crate::sd_notify::Notifier;
use crate::shutdown::Deadline;
use crate::sinks::{Output, Sink};
use crate::telemetry::{self, Counter};

/// When a changed key takes effect.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Takes {
    /// At the reload: the window in progress is encoded and sent with the new value.
    Live,
    /// At the next start: the old value stays in force until then.
    Restart,
}

/// The reload table: every configuration key (a whole section where all of it waits for a
/// restart) with when a change to it takes effect. Generates [`KEYS`] and [`changes`]; a test
/// walks a serialized `Config` to check that every key is in it exactly once.
macro_rules! reload_table {
    ($($takes:ident $first:ident $(. $rest:ident)*;)*) => {
        /// Every key and when a change to it takes effect.
        pub const KEYS: &[(&str, Takes)] = &[
            $((concat!(stringify!($first) $(, ".", stringify!($rest))*), Takes::$takes),)*
        ];

        /// Compares the running configuration with a new, valid one.
        pub fn changes(old: &Config, new: &Config) -> Changes {
            let mut changes = Changes {
                effective: old.clone(),
                applied: Vec::new(),
                needs_restart: Vec::new(),
            };
            $(
                if old.$first$(.$rest)* != new.$first$(.$rest)* {
                    let key = concat!(stringify!($first) $(, ".", stringify!($rest))*);
                    match Takes::$takes {
                        Takes::Live => {
                            changes.effective.$first$(.$rest)* = new.$first$(.$rest)*.clone();
                            changes.applied.push(key);
                        }
                        Takes::Restart => changes.needs_restart.push(key),
                    }
                }
            )*
            changes
        }
    };
}

reload_table! {
    Restart endpoint;
    Live metrics.enhanced;
    Restart metrics.publish_frequency_seconds;
    Restart metrics.sample_interval_ms;
    Restart metrics.disk_path;
    Live metrics.endpoints_namespace;
    Live metrics.components_namespace;
    Restart metrics.data_points;
    Restart output.format;
    Live output.emf_destination;
    Live output.log_group;
    Restart output.log_stream;
    Restart output.spool_dir;
    Restart output.spool_max_bytes;
    Restart output.retry_max_seconds;
    Restart output.otlp;
    Restart log.format;
    Live log.level;
    Restart host;
    Restart gpu.enabled;
    Restart gpu.nvml_library;
    Live gpu.dimension_name;
    Restart gpu.process_interval_ms;
    Restart gpu.health;
    Restart gpu.health_slow_interval_ms;
    Restart docker;
    Restart admin;
    Live self_metrics.enabled;
    Live self_metrics.namespace;
    Restart cost;
    // The front door's listener, upstreams and limits are fixed at start; its namespace is live.
    Restart proxy.enabled;
    Restart proxy.listen;
    Live proxy.namespace;
    Restart proxy.upstream_port;
    Restart proxy.instance_count;
    Restart proxy.worker_threads;
    Restart proxy.connect_timeout_ms;
    Restart proxy.response_timeout_ms;
    Restart proxy.max_request_body_bytes;
    Restart proxy.idle_timeout_ms;
    Restart proxy.send_timeout_ms;
    Restart proxy.max_connections;
    Restart proxy.drain_timeout_ms;
    Restart proxy.upstream;
    // The scrape thread and its targets' settings are fixed at start.
    Restart scrape;
}

/// What a reload changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Changes {
    /// The configuration in force after the reload.
    pub effective: Config,
    /// Live keys whose value changed.
    pub applied: Vec<&'static str>,
    /// Keys that changed but only take effect after a restart.
    pub needs_restart: Vec<&'static str>,
}

impl Changes {
    pub fn output_changed(&self) -> bool {
        self.applied
            .iter()
            .any(|k| *k == "output.emf_destination" || *k == "output.log_group")
    }
}

/// SIGHUP: reads the file again and applies what can change at run time. The current window
/// and its samples stay in the pipeline; only how it is encoded and where it goes change.
pub async fn apply(
    path: &Path,
    config: &mut Config,
    identity: &Identity,
    windows: &mut Windows,
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
    let mut changes = changes(config, &new);
    let mut encoding = windows.encoding();
    if changes.output_changed()
        && (config.publishes_through_spool() || new.publishes_through_spool())
    {
        // A CloudWatch sink owns the spool directory; a second one opened beside the draining
        // old one would share it. Such a change waits for a restart.
        tracing::warn!(
            "output changes that involve CloudWatch need a restart; the current output stays"
        );
        changes.effective.output = config.output.clone();
        let (output, others) = changes
            .applied
            .iter()
            .partition(|k| k.starts_with("output."));
        changes.applied = others;
        changes.needs_restart.extend::<Vec<_>>(output);
    }
    if changes.output_changed() {
        match Sink::open(&changes.effective, &identity.instance_id).await {
            Ok(sink) => {
                encoding = sink.encoding();
                tracing::info!(destination = %sink.describe(), "EMF destination changed");
                // The old sink drains what it holds in the background.
                let old = std::mem::replace(output, Output::start(sink));
                tokio::spawn(old.finish(Deadline::start()));
            }
            Err(e) => {
                tracing::error!(destination = %changes.effective.output.emf_destination, error = format!("{e:#}"), "cannot open the new EMF destination; keeping the old one");
                changes.effective.output = config.output.clone();
                changes.applied.retain(|k| !k.starts_with("output."));
            }
        }
    }
    if changes.applied.contains(&"log.level") {
        if let Err(reason) = logging::set_level(changes.effective.log.level) {
            tracing::warn!(reason, "log.level not applied");
        }
    }
    tracing::debug!(settings = %changes.effective.summary(), "effective configuration after reload");
    windows.reconfigure(&changes.effective, identity.clone(), encoding);
    *config = changes.effective;
    telemetry::add(Counter::ConfigReloads, 1);
    tracing::info!(file = %path.display(), applied = ?changes.applied, "configuration reloaded; the current window is kept");
    if !changes.needs_restart.is_empty() {
        tracing::warn!(keys = ?changes.needs_restart, "changed keys need restart to take effect; their old values stay in force");
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
        let p = changes(&c, &c);
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
        let p = changes(&old, &new);
        assert_eq!(
            p.applied,
            vec![
                "metrics.enhanced",
                "metrics.endpoints_namespace",
                "log.level",
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
        let p = changes(&old, &new);
        assert_eq!(p.needs_restart, vec!["cost"]);
        assert_eq!(p.effective.cost, old.cost, "kept");
    }

    #[test]
    fn the_proxy_namespace_is_live_and_the_rest_of_proxy_waits() {
        let old = config("");
        let p = changes(
            &old,
            &config("[proxy]\nnamespace = \"Custom/Invocations\"\n"),
        );
        assert_eq!(p.applied, vec!["proxy.namespace"]);
        assert!(p.needs_restart.is_empty());
        assert_eq!(p.effective.proxy.namespace, "Custom/Invocations");
        let p = changes(&old, &config("[proxy]\nenabled = true\n"));
        assert_eq!(p.needs_restart, vec!["proxy.enabled"]);
        assert!(!p.effective.proxy.enabled, "kept until a restart");
    }

    #[test]
    fn a_new_destination_is_an_output_change() {
        let old = config("");
        let new = config("[output]\nemf_destination = \"file:/tmp/x\"\n");
        let p = changes(&old, &new);
        assert!(p.output_changed());
        assert_eq!(
            p.effective.output.emf_destination,
            crate::config::EmfDestination::File("/tmp/x".into())
        );
    }

    #[test]
    fn keys_the_table_did_not_list_before_wait_for_a_restart_by_name() {
        let old = config("");
        let p = changes(
            &old,
            &config(
                "[output]
log_stream = \"s\"\n[docker]\nenabled = false\n",
            ),
        );
        assert_eq!(p.needs_restart, vec!["output.log_stream", "docker"]);
        assert_eq!(p.effective, old, "both kept until a restart");
    }

    /// Every key of the configuration, as the leaves of its serialized form: `a.b.c`.
    fn leaf_keys(prefix: &str, value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (name, value) in map {
                    let key = if prefix.is_empty() {
                        name.clone()
                    } else {
                        format!("{prefix}.{name}")
                    };
                    leaf_keys(&key, value, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }

    /// A key added to `Config` without a row here fails this test instead of being ignored by a
    /// reload; a row whose key is gone fails it too.
    #[test]
    fn every_config_key_is_in_the_reload_table_exactly_once() {
        let config = config("");
        let mut leaves = Vec::new();
        leaf_keys("", &serde_json::to_value(&config).unwrap(), &mut leaves);
        assert!(leaves.len() > 40, "{leaves:?}");
        let covers = |row: &str, leaf: &str| {
            leaf == row || leaf.strip_prefix(row).is_some_and(|r| r.starts_with('.'))
        };
        for leaf in &leaves {
            let rows: Vec<&str> = KEYS
                .iter()
                .map(|(row, _)| *row)
                .filter(|row| covers(row, leaf))
                .collect();
            assert_eq!(rows.len(), 1, "`{leaf}` is in the reload table as {rows:?}");
        }
        for (row, _) in KEYS {
            assert!(
                leaves.iter().any(|leaf| covers(row, leaf)),
                "the reload table's `{row}` is no configuration key"
            );
        }
    }
}

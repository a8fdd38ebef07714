//! The agent's configuration: serde structs with defaults, and validation that reports the file,
//! the key and what is allowed. `agent.toml.example` documents every key.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::catalog::{DEFAULT_COMPONENTS_NAMESPACE, DEFAULT_ENDPOINTS_NAMESPACE};

/// Exit status for a configuration error (`EX_CONFIG` from sysexits.h).
pub const EXIT_CONFIG: i32 = 78;

/// Publish frequencies SageMaker accepts for `MetricPublishFrequencyInSeconds`.
pub const ALLOWED_PUBLISH_FREQUENCIES_SECONDS: [u64; 7] = [10, 30, 60, 120, 180, 240, 300];

/// The shortest sampling period: 10 per second keeps a 300 s window at 3,000 samples per series.
pub const MIN_SAMPLE_INTERVAL_MS: u64 = 100;

/// CloudWatch rejects custom metrics in namespaces starting with this prefix.
pub const RESERVED_NAMESPACE_PREFIX: &str = "AWS/";

/// CloudWatch: a namespace is 1 to 255 characters.
pub const MAX_NAMESPACE_CHARS: usize = 255;

/// CloudWatch: a dimension value is 1 to 1024 characters.
pub const MAX_DIMENSION_VALUE_CHARS: usize = 1024;

/// The default path of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/endpoint-metrics-agent/agent.toml";

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The endpoint and instance this host serves.
    pub endpoint: EndpointConfig,
    /// What is measured and how often it is published.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Where the metrics go.
    #[serde(default)]
    pub output: OutputConfig,
    /// The agent's own logs (stderr).
    #[serde(default)]
    pub log: LogConfig,
    /// Where the host's `/proc` and cgroup tree are mounted (a sidecar sees the host's elsewhere).
    #[serde(default)]
    pub host: HostConfig,
    /// GPU metrics through NVML.
    #[serde(default)]
    pub gpu: GpuConfig,
    /// The admin HTTP endpoint: `/healthz` and `/metrics` (Prometheus text).
    #[serde(default)]
    pub admin: AdminConfig,
    /// The agent's own figures published next to the host's, in their own namespace.
    #[serde(default)]
    pub self_metrics: SelfMetricsConfig,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve `/healthz` and `/metrics`.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Address and port to listen on, e.g. "127.0.0.1:9464" (the host only) or "0.0.0.0:9464".
    #[serde(default = "default_admin_listen")]
    pub listen: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SelfMetricsConfig {
    /// Publish the agent's own figures once per window.
    #[serde(default)]
    pub enabled: bool,
    /// Their namespace; must not start with "AWS/".
    #[serde(default = "default_self_metrics_namespace")]
    pub namespace: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// `EndpointName` dimension; required, non-empty.
    pub name: String,
    /// `VariantName` dimension.
    #[serde(default = "default_variant")]
    pub variant: String,
    /// `InstanceId` dimension: "auto" asks EC2 instance metadata (IMDSv2), else the hostname.
    #[serde(default = "default_instance_id")]
    pub instance_id: String,
    /// The instance type, e.g. "ml.g6.12xlarge"; optional.
    #[serde(default)]
    pub instance_type: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `EnableEnhancedMetrics`: per-instance, per-GPU and per-container dimensions.
    #[serde(default)]
    pub enhanced: bool,
    /// `MetricPublishFrequencyInSeconds`: one of 10, 30, 60, 120, 180, 240, 300.
    #[serde(default = "default_publish_frequency_seconds")]
    pub publish_frequency_seconds: u64,
    /// Sampling period inside a window.
    #[serde(default = "default_sample_interval_ms")]
    pub sample_interval_ms: u64,
    /// The volume behind `DiskUtilization`.
    #[serde(default = "default_disk_path")]
    pub disk_path: PathBuf,
    /// Namespace of the instance-level metrics.
    #[serde(default = "default_endpoints_namespace")]
    pub endpoints_namespace: String,
    /// Namespace of the per-container (model copy) metrics.
    #[serde(default = "default_components_namespace")]
    pub components_namespace: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    Emf,
    PutMetricData,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// "emf" or "put_metric_data".
    #[serde(default = "default_format")]
    pub format: OutputFormat,
    /// For EMF: "stdout", "file:/path", "tcp://host:port", "udp://host:port" or "cloudwatch_logs".
    #[serde(default = "default_emf_destination")]
    pub emf_destination: String,
    /// `_aws.LogGroupName` of EMF documents (routes them at the CloudWatch agent's listener).
    #[serde(default)]
    pub log_group: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// "text" or "json".
    #[serde(default = "default_log_format")]
    pub format: LogFormat,
    /// "error", "warn", "info", "debug" or "trace"; `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub level: LogLevel,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Where the host's `/proc` is mounted.
    #[serde(default = "default_proc_root")]
    pub proc_root: PathBuf,
    /// Where the host's cgroup tree is mounted.
    #[serde(default = "default_cgroup_root")]
    pub cgroup_root: PathBuf,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GpuConfig {
    /// Sample GPUs through NVML. Without a driver the agent warns once and runs on.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The NVML library: a file name looked up by the loader, or a path.
    #[serde(default = "default_nvml_library")]
    pub nvml_library: String,
    /// The per-GPU dimension's name: "GpuId" (launch post) or "AcceleratorId" (official guide).
    #[serde(default = "default_gpu_dimension_name")]
    pub dimension_name: String,
}

fn default_variant() -> String {
    "AllTraffic".into()
}
fn default_instance_id() -> String {
    "auto".into()
}
fn default_publish_frequency_seconds() -> u64 {
    60
}
fn default_sample_interval_ms() -> u64 {
    1000
}
fn default_disk_path() -> PathBuf {
    "/".into()
}
fn default_endpoints_namespace() -> String {
    DEFAULT_ENDPOINTS_NAMESPACE.into()
}
fn default_components_namespace() -> String {
    DEFAULT_COMPONENTS_NAMESPACE.into()
}
fn default_format() -> OutputFormat {
    OutputFormat::Emf
}
fn default_emf_destination() -> String {
    "stdout".into()
}
fn default_log_format() -> LogFormat {
    LogFormat::Text
}
fn default_log_level() -> LogLevel {
    LogLevel::Info
}
fn default_proc_root() -> PathBuf {
    "/proc".into()
}
fn default_cgroup_root() -> PathBuf {
    "/sys/fs/cgroup".into()
}
fn default_true() -> bool {
    true
}
fn default_nvml_library() -> String {
    "libnvidia-ml.so.1".into()
}
fn default_gpu_dimension_name() -> String {
    "GpuId".into()
}
fn default_admin_listen() -> String {
    DEFAULT_ADMIN_LISTEN.into()
}
fn default_self_metrics_namespace() -> String {
    DEFAULT_SELF_METRICS_NAMESPACE.into()
}

/// The admin endpoint's default address: the host only, on 9464, the port OpenTelemetry's
/// Prometheus exporters use by default, so scrapers set up for an on-host collector find it.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9464";

/// The default namespace of the agent's own metrics.
pub const DEFAULT_SELF_METRICS_NAMESPACE: &str = "EndpointMetricsAgent";

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            listen: default_admin_listen(),
        }
    }
}

impl Default for SelfMetricsConfig {
    fn default() -> Self {
        SelfMetricsConfig {
            enabled: false,
            namespace: default_self_metrics_namespace(),
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enhanced: false,
            publish_frequency_seconds: default_publish_frequency_seconds(),
            sample_interval_ms: default_sample_interval_ms(),
            disk_path: default_disk_path(),
            endpoints_namespace: default_endpoints_namespace(),
            components_namespace: default_components_namespace(),
        }
    }
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            format: default_format(),
            emf_destination: default_emf_destination(),
            log_group: None,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: default_log_format(),
            level: default_log_level(),
        }
    }
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            proc_root: default_proc_root(),
            cgroup_root: default_cgroup_root(),
        }
    }
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig {
            enabled: true,
            nvml_library: default_nvml_library(),
            dimension_name: default_gpu_dimension_name(),
        }
    }
}

/// Where EMF documents go, parsed from `output.emf_destination`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmfDestination {
    Stdout,
    File(PathBuf),
    Tcp(String),
    Udp(String),
    CloudWatchLogs,
}

impl EmfDestination {
    pub fn parse(text: &str) -> Result<Self, String> {
        let allowed = "allowed: \"stdout\", \"file:/path\", \"tcp://host:port\", \"udp://host:port\", \"cloudwatch_logs\"";
        if text == "stdout" {
            return Ok(EmfDestination::Stdout);
        }
        if text == "cloudwatch_logs" {
            return Ok(EmfDestination::CloudWatchLogs);
        }
        if let Some(path) = text.strip_prefix("file:") {
            if path.is_empty() {
                return Err(format!("\"{text}\" names no file; {allowed}"));
            }
            return Ok(EmfDestination::File(path.into()));
        }
        for (prefix, udp) in [("tcp://", false), ("udp://", true)] {
            if let Some(addr) = text.strip_prefix(prefix) {
                let valid = addr.rsplit_once(':').is_some_and(|(host, port)| {
                    !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
                });
                if !valid {
                    return Err(format!("\"{text}\" is not host:port; {allowed}"));
                }
                let addr = addr.to_string();
                return Ok(if udp {
                    EmfDestination::Udp(addr)
                } else {
                    EmfDestination::Tcp(addr)
                });
            }
        }
        Err(format!("\"{text}\" is not a destination; {allowed}"))
    }
}

/// A configuration that cannot be used: which file, which key, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "configuration {}: {}", self.file.display(), self.reason)
        } else {
            write!(
                f,
                "configuration {}: key `{}`: {}",
                self.file.display(),
                self.key,
                self.reason
            )
        }
    }
}

impl Config {
    /// Reads, parses and validates a configuration file. Nothing is guessed: any doubt is an error.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            key: String::new(),
            reason: format!("cannot read the file: {e}"),
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates configuration text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let err = |key: String, reason: String| ConfigError {
            file: path.to_path_buf(),
            key,
            reason,
        };
        let deserializer = toml::Deserializer::new(text);
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            err(key, one_line(e.inner().message()))
        })?;
        config
            .validate()
            .map_err(|(key, reason)| err(key.into(), reason))?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.endpoint.name.trim().is_empty() {
            return Err(("endpoint.name", "must not be empty".into()));
        }
        if self.endpoint.name.chars().count() > MAX_DIMENSION_VALUE_CHARS {
            return Err((
                "endpoint.name",
                format!("at most {MAX_DIMENSION_VALUE_CHARS} characters"),
            ));
        }
        if self.endpoint.variant.trim().is_empty() {
            return Err(("endpoint.variant", "must not be empty".into()));
        }
        if self.endpoint.instance_id.trim().is_empty() {
            return Err((
                "endpoint.instance_id",
                "must not be empty; use \"auto\" to look it up".into(),
            ));
        }
        let m = &self.metrics;
        if !ALLOWED_PUBLISH_FREQUENCIES_SECONDS.contains(&m.publish_frequency_seconds) {
            return Err((
                "metrics.publish_frequency_seconds",
                format!(
                    "{} is not allowed; allowed: 10, 30, 60, 120, 180, 240, 300",
                    m.publish_frequency_seconds
                ),
            ));
        }
        let window_ms = m.publish_frequency_seconds * 1000;
        if m.sample_interval_ms < MIN_SAMPLE_INTERVAL_MS || m.sample_interval_ms > window_ms {
            return Err((
                "metrics.sample_interval_ms",
                format!(
                    "{} is not allowed; allowed: {MIN_SAMPLE_INTERVAL_MS} to {window_ms} (the publish window)",
                    m.sample_interval_ms
                ),
            ));
        }
        if window_ms % m.sample_interval_ms != 0 {
            return Err((
                "metrics.sample_interval_ms",
                format!(
                    "{} does not divide the {window_ms} ms publish window; allowed: a divisor of it",
                    m.sample_interval_ms
                ),
            ));
        }
        validate_namespace(&m.endpoints_namespace)
            .map_err(|r| ("metrics.endpoints_namespace", r))?;
        validate_namespace(&m.components_namespace)
            .map_err(|r| ("metrics.components_namespace", r))?;
        let destination = EmfDestination::parse(&self.output.emf_destination)
            .map_err(|r| ("output.emf_destination", r))?;
        if self.output.format == OutputFormat::PutMetricData {
            return Err((
                "output.format",
                "\"put_metric_data\" is not available in this build yet; allowed: \"emf\"".into(),
            ));
        }
        if destination == EmfDestination::CloudWatchLogs {
            return Err((
                "output.emf_destination",
                "\"cloudwatch_logs\" is not available in this build yet; allowed: \"stdout\", \"file:/path\", \"tcp://host:port\", \"udp://host:port\"".into(),
            ));
        }
        if let Some(group) = &self.output.log_group {
            if group.is_empty() || group.len() > 512 {
                return Err(("output.log_group", "must be 1 to 512 characters".into()));
            }
        }
        if self.gpu.dimension_name.is_empty() || self.gpu.dimension_name.len() > 255 {
            return Err((
                "gpu.dimension_name",
                "must be 1 to 255 characters, e.g. \"GpuId\" or \"AcceleratorId\"".into(),
            ));
        }
        if self.admin.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err((
                "admin.listen",
                format!(
                    "\"{}\" is not an address and port; allowed: e.g. \"{DEFAULT_ADMIN_LISTEN}\" or \"0.0.0.0:9464\"",
                    self.admin.listen
                ),
            ));
        }
        validate_namespace(&self.self_metrics.namespace)
            .map_err(|r| ("self_metrics.namespace", r))?;
        if self.gpu.nvml_library.is_empty() {
            return Err((
                "gpu.nvml_library",
                "must name a library, e.g. \"libnvidia-ml.so.1\"".into(),
            ));
        }
        Ok(())
    }

    /// The parsed EMF destination (validated at load).
    pub fn emf_destination(&self) -> EmfDestination {
        EmfDestination::parse(&self.output.emf_destination).unwrap_or(EmfDestination::Stdout)
    }

    /// A short summary of the effective settings, for `check-config`.
    pub fn summary(&self) -> String {
        let m = &self.metrics;
        format!(
            "endpoint: {} / {} (instance {}, type {})\n\
             metrics: enhanced={} publish every {} s, sample every {} ms, disk {}\n\
             namespaces: {} | {}\n\
             output: {:?} to {}\n\
             gpu: {} ({}, dimension {})\n\
             log: {:?} at {}\n\
             admin: {}\n\
             self metrics: {}",
            self.endpoint.name,
            self.endpoint.variant,
            self.endpoint.instance_id,
            self.endpoint.instance_type.as_deref().unwrap_or("unset"),
            m.enhanced,
            m.publish_frequency_seconds,
            m.sample_interval_ms,
            m.disk_path.display(),
            m.endpoints_namespace,
            m.components_namespace,
            self.output.format,
            self.output.emf_destination,
            if self.gpu.enabled {
                "enabled"
            } else {
                "disabled"
            },
            self.gpu.nvml_library,
            self.gpu.dimension_name,
            self.log.format,
            self.log.level.as_str(),
            if self.admin.enabled {
                format!("http://{}/healthz and /metrics", self.admin.listen)
            } else {
                "disabled".into()
            },
            if self.self_metrics.enabled {
                format!("to namespace {}", self.self_metrics.namespace)
            } else {
                "disabled".into()
            },
        )
    }
}

/// A namespace CloudWatch accepts for custom metrics.
pub fn validate_namespace(namespace: &str) -> Result<(), String> {
    if namespace.is_empty() || namespace.chars().count() > MAX_NAMESPACE_CHARS {
        return Err(format!("must be 1 to {MAX_NAMESPACE_CHARS} characters"));
    }
    if namespace.starts_with(RESERVED_NAMESPACE_PREFIX) {
        return Err(format!(
            "\"{namespace}\" starts with \"{RESERVED_NAMESPACE_PREFIX}\", which CloudWatch reserves; allowed: any other namespace, e.g. \"{DEFAULT_ENDPOINTS_NAMESPACE}\""
        ));
    }
    if namespace.starts_with(':')
        || !namespace
            .chars()
            .all(|c| c.is_ascii() && !c.is_ascii_control())
    {
        return Err("allowed: printable ASCII characters, not starting with ':'".into());
    }
    Ok(())
}

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn minimal_config_takes_the_defaults() {
        let c = parse("[endpoint]\nname = \"e\"\n").unwrap();
        assert_eq!(c.endpoint.variant, "AllTraffic");
        assert_eq!(c.endpoint.instance_id, "auto");
        assert!(!c.metrics.enhanced);
        assert_eq!(c.metrics.publish_frequency_seconds, 60);
        assert_eq!(c.metrics.endpoints_namespace, "/aws/sagemaker/Endpoints");
        assert_eq!(c.emf_destination(), EmfDestination::Stdout);
        assert_eq!(c.gpu.dimension_name, "GpuId");
        assert!(c.admin.enabled);
        assert_eq!(c.admin.listen, "127.0.0.1:9464");
        assert!(!c.self_metrics.enabled);
        assert_eq!(c.self_metrics.namespace, "EndpointMetricsAgent");
    }

    #[test]
    fn unknown_key_names_its_path() {
        let e = parse("[endpoint]\nname = \"e\"\n[metrics]\nenhancd = true\n").unwrap_err();
        assert_eq!(e.key, "metrics.enhancd");
        assert!(e.reason.contains("unknown field"), "{e}");
        assert!(e.to_string().contains("test.toml"));
    }

    #[test]
    fn wrong_type_names_its_path() {
        let e = parse("[endpoint]\nname = \"e\"\n[metrics]\npublish_frequency_seconds = \"60\"\n")
            .unwrap_err();
        assert_eq!(e.key, "metrics.publish_frequency_seconds");
    }

    #[test]
    fn bad_values_are_rejected_with_what_is_allowed() {
        let cases = [
            ("[endpoint]\nname = \"\"\n", "endpoint.name"),
            ("[endpoint]\nname = \"e\"\n[metrics]\npublish_frequency_seconds = 15\n", "metrics.publish_frequency_seconds"),
            ("[endpoint]\nname = \"e\"\n[metrics]\npublish_frequency_seconds = 10\nsample_interval_ms = 20000\n", "metrics.sample_interval_ms"),
            ("[endpoint]\nname = \"e\"\n[metrics]\nsample_interval_ms = 50\n", "metrics.sample_interval_ms"),
            ("[endpoint]\nname = \"e\"\n[metrics]\nsample_interval_ms = 7000\n", "metrics.sample_interval_ms"),
            ("[endpoint]\nname = \"e\"\n[metrics]\nendpoints_namespace = \"AWS/SageMaker\"\n", "metrics.endpoints_namespace"),
            ("[endpoint]\nname = \"e\"\n[output]\nemf_destination = \"tcp://nohost\"\n", "output.emf_destination"),
            ("[endpoint]\nname = \"e\"\n[output]\nformat = \"prometheus\"\n", "output.format"),
            ("[endpoint]\nname = \"e\"\n[admin]\nlisten = \"localhost\"\n", "admin.listen"),
            ("[endpoint]\nname = \"e\"\n[self_metrics]\nnamespace = \"AWS/Agent\"\n", "self_metrics.namespace"),
        ];
        for (text, key) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.key, key, "{text}");
            assert!(!e.reason.is_empty());
        }
    }

    #[test]
    fn destinations_parse() {
        assert_eq!(
            EmfDestination::parse("file:/tmp/x").unwrap(),
            EmfDestination::File("/tmp/x".into())
        );
        assert_eq!(
            EmfDestination::parse("tcp://127.0.0.1:25888").unwrap(),
            EmfDestination::Tcp("127.0.0.1:25888".into())
        );
        assert_eq!(
            EmfDestination::parse("udp://localhost:25888").unwrap(),
            EmfDestination::Udp("localhost:25888".into())
        );
        assert!(EmfDestination::parse("udp://localhost:0").is_err());
        assert!(EmfDestination::parse("file:").is_err());
        assert!(EmfDestination::parse("http://x").is_err());
    }

    #[test]
    fn missing_file_is_a_config_error() {
        let e = Config::load(Path::new("/nonexistent/agent.toml")).unwrap_err();
        assert!(e.reason.contains("cannot read"));
    }
}

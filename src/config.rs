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

/// Default spool size: at 100 KB per window (an 8-GPU host with enhanced metrics, 60 s) about
/// 1.8 days of outage.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// The spool must hold at least a few of the largest requests (1 MB of PutMetricData, larger as
/// JSON on disk).
pub const MIN_SPOOL_MAX_BYTES: u64 = 4 * 1024 * 1024;

/// CloudWatch Logs: a log group name is 1 to 512 characters, a log stream name 1 to 512.
pub const MAX_LOG_GROUP_CHARS: usize = 512;
pub const MAX_LOG_STREAM_CHARS: usize = 512;

/// The longest retry pause allowed: past it an outage's end is noticed too late.
pub const MAX_RETRY_MAX_SECONDS: u64 = 300;

/// Default cadence of GPU process reads: at about 2.4 ms per GPU per read (H100), 8 GPUs cost
/// 0.19 % of one core at this cadence against 1.9 % at every 1 s sample.
pub const DEFAULT_GPU_PROCESS_INTERVAL_MS: u64 = 10_000;

/// GPU processes are read at most once a second (see `PROCESS_ENUMERATION_MIN_INTERVAL_MS`).
pub const MIN_GPU_PROCESS_INTERVAL_MS: u64 = 1000;

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
    /// Model copies (containers of inference components) found through the Docker engine.
    #[serde(default)]
    pub docker: DockerConfig,
    /// The admin HTTP endpoint: `/healthz` and `/metrics` (Prometheus text).
    #[serde(default)]
    pub admin: AdminConfig,
    /// The agent's own figures published next to the host's, in their own namespace.
    #[serde(default)]
    pub self_metrics: SelfMetricsConfig,
    /// Cost per model from GPU allocation (`cost`): the instance's price and how it is split.
    #[serde(default)]
    pub cost: CostConfig,
    /// The front door: an HTTP proxy in front of the model containers that measures every
    /// request (invocation metrics).
    #[serde(default)]
    pub proxy: ProxyConfig,
    /// The model servers' own metrics (TTFT, KV cache, queue, tokens per second), scraped from
    /// each copy's metrics endpoint.
    #[serde(default)]
    pub scrape: ScrapeConfig,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CostConfig {
    /// The instance's price in USD per hour; overrides the built-in on-demand table (looked up
    /// by `endpoint.instance_type`). Unset with a type the table lacks: no cost metrics, one
    /// warning.
    #[serde(default)]
    pub instance_hourly_price_usd: Option<f64>,
    /// GPUs the price is divided by; overrides the table's count. Unset and not in the table:
    /// the GPUs NVML sees.
    #[serde(default)]
    pub gpus_per_instance: Option<u32>,
}

/// The most GPUs an instance may be said to have (`cost.gpus_per_instance`): no instance type
/// has more than 16 today (ml.p5.48xlarge and ml.p4d.24xlarge have 8); 64 leaves room.
pub const MAX_GPUS_PER_INSTANCE: u32 = 64;

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
    /// Data points per publish period for utilization, reservation and cost series: `period`
    /// (one, SageMaker's shape) or `every_sample` (one per sample, for percentiles inside a
    /// period). Invocation series always get one per request.
    #[serde(default)]
    pub data_points: crate::aggregate::DataPoints,
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
    /// `_aws.LogGroupName` of EMF documents (routes them at the CloudWatch agent's listener), and
    /// the log group of `emf_destination = "cloudwatch_logs"` (default there:
    /// "/endpoint-metrics-agent/<endpoint.name>"; created when missing).
    #[serde(default)]
    pub log_group: Option<String>,
    /// The log stream of `emf_destination = "cloudwatch_logs"`; default: the instance ID. Created
    /// when missing.
    #[serde(default)]
    pub log_stream: Option<String>,
    /// CloudWatch sinks: requests not yet taken by CloudWatch wait here, across restarts.
    #[serde(default = "default_spool_dir")]
    pub spool_dir: PathBuf,
    /// The spool's size limit; past it the oldest requests are dropped, counted.
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: u64,
    /// CloudWatch sinks: the longest pause between retries while CloudWatch throttles or is down.
    #[serde(default = "default_retry_max_seconds")]
    pub retry_max_seconds: u64,
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
    /// How often running processes and their SM utilization are read (for container
    /// attribution), in ms. `nvmlDeviceGetProcessUtilization` costs about 2.4 ms per GPU on an
    /// H100 (docs/performance.md); NVML returns every sample since the last read, so a longer
    /// interval still averages the whole interval.
    #[serde(default = "default_gpu_process_interval_ms")]
    pub process_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DockerConfig {
    /// Discover model copies and publish their metrics. Without an engine the agent warns once
    /// and runs on.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The engine's Unix socket (a path, or `unix://` followed by one).
    #[serde(default = "default_docker_socket")]
    pub socket: String,
    /// The container label whose value names the inference component.
    #[serde(default = "default_component_label")]
    pub component_label: String,
    /// Fallback: the environment variable whose value names the inference component.
    #[serde(default = "default_component_env")]
    pub component_env: String,
}

fn default_docker_socket() -> String {
    "/var/run/docker.sock".into()
}
fn default_component_label() -> String {
    "sagemaker.inference-component".into()
}
fn default_component_env() -> String {
    "INFERENCE_COMPONENT_NAME".into()
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            enabled: true,
            socket: default_docker_socket(),
            component_label: default_component_label(),
            component_env: default_component_env(),
        }
    }
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
fn default_spool_dir() -> PathBuf {
    "/var/lib/endpoint-metrics-agent/spool".into()
}
fn default_spool_max_bytes() -> u64 {
    DEFAULT_SPOOL_MAX_BYTES
}
fn default_retry_max_seconds() -> u64 {
    30
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
fn default_gpu_process_interval_ms() -> u64 {
    DEFAULT_GPU_PROCESS_INTERVAL_MS
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
            data_points: Default::default(),
        }
    }
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            format: default_format(),
            emf_destination: default_emf_destination(),
            log_group: None,
            log_stream: None,
            spool_dir: default_spool_dir(),
            spool_max_bytes: default_spool_max_bytes(),
            retry_max_seconds: default_retry_max_seconds(),
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
            process_interval_ms: default_gpu_process_interval_ms(),
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
            if key == "." {
                // A syntax error or a missing top-level table: the full text says where.
                err(String::new(), one_line(&e.inner().to_string()))
            } else {
                err(key, one_line(e.inner().message()))
            }
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
        EmfDestination::parse(&self.output.emf_destination)
            .map_err(|r| ("output.emf_destination", r))?;
        let o = &self.output;
        if let Some(group) = &o.log_group {
            validate_log_name(group, MAX_LOG_GROUP_CHARS, true)
                .map_err(|r| ("output.log_group", r))?;
        }
        if let Some(stream) = &o.log_stream {
            validate_log_name(stream, MAX_LOG_STREAM_CHARS, false)
                .map_err(|r| ("output.log_stream", r))?;
        }
        if o.spool_dir.as_os_str().is_empty() {
            return Err(("output.spool_dir", "must name a folder".into()));
        }
        if o.spool_max_bytes < MIN_SPOOL_MAX_BYTES {
            return Err((
                "output.spool_max_bytes",
                format!(
                    "{} is too small; allowed: at least {MIN_SPOOL_MAX_BYTES}",
                    o.spool_max_bytes
                ),
            ));
        }
        if o.retry_max_seconds == 0 || o.retry_max_seconds > MAX_RETRY_MAX_SECONDS {
            return Err((
                "output.retry_max_seconds",
                format!(
                    "{} is not allowed; allowed: 1 to {MAX_RETRY_MAX_SECONDS}",
                    o.retry_max_seconds
                ),
            ));
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
        if self.gpu.process_interval_ms < MIN_GPU_PROCESS_INTERVAL_MS {
            return Err((
                "gpu.process_interval_ms",
                format!(
                    "{} is not allowed; allowed: {MIN_GPU_PROCESS_INTERVAL_MS} or more",
                    self.gpu.process_interval_ms
                ),
            ));
        }
        if self.gpu.nvml_library.is_empty() {
            return Err((
                "gpu.nvml_library",
                "must name a library, e.g. \"libnvidia-ml.so.1\"".into(),
            ));
        }
        self.docker.validate()?;
        self.cost.validate()?;
        self.proxy.validate()?;
        self.scrape.validate(m.publish_frequency_seconds)?;
        Ok(())
    }

    /// Whether the output goes straight to CloudWatch (PutMetricData or CloudWatch Logs), through
    /// the spool.
    pub fn publishes_to_cloudwatch(&self) -> bool {
        self.output.format == OutputFormat::PutMetricData
            || self.emf_destination() == EmfDestination::CloudWatchLogs
    }

    /// The log group of `emf_destination = "cloudwatch_logs"`.
    pub fn cloudwatch_log_group(&self) -> String {
        self.output
            .log_group
            .clone()
            .unwrap_or_else(|| format!("/endpoint-metrics-agent/{}", self.endpoint.name))
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
             metrics: enhanced={} publish every {} s, sample every {} ms, data points {}, disk {}\n\
             namespaces: {} | {}\n\
             output: {:?} to {}\n\
             gpu: {} ({}, dimension {})\n\
             log: {:?} at {}\n\
             admin: {}\n\
             self metrics: {}\n\
             front door: {}\n\
             scrape: {}",
            self.endpoint.name,
            self.endpoint.variant,
            self.endpoint.instance_id,
            self.endpoint.instance_type.as_deref().unwrap_or("unset"),
            m.enhanced,
            m.publish_frequency_seconds,
            m.sample_interval_ms,
            m.data_points.as_str(),
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
            if self.proxy.enabled {
                format!(
                    "http://{} to containers on port {} and {} static upstreams, namespace {}",
                    self.proxy.listen,
                    self.proxy.upstream_port,
                    self.proxy.upstream.len(),
                    self.proxy.namespace
                )
            } else {
                "disabled".into()
            },
            self.scrape.summary(),
        )
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Run the front door.
    #[serde(default)]
    pub enabled: bool,
    /// Address and port it listens on (HTTP/1.1 and h2c).
    #[serde(default = "default_proxy_listen")]
    pub listen: String,
    /// Namespace of the invocation metrics; must not start with "AWS/".
    #[serde(default = "default_invocations_namespace")]
    pub namespace: String,
    /// The port model containers listen on; a container's label
    /// `endpoint-metrics-agent.upstream-port` overrides it.
    #[serde(default = "default_upstream_port")]
    pub upstream_port: u16,
    /// Instances behind the endpoint: `InvocationsPerInstance` counts 1/this per request.
    #[serde(default = "default_instance_count")]
    pub instance_count: u32,
    /// Threads of the front door's own runtime (the sampling loop keeps its thread).
    #[serde(default = "default_proxy_worker_threads")]
    pub worker_threads: usize,
    /// Connecting to a copy may take this long; past it the client gets 504.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// A copy must answer (response headers) within this; past it the client gets 504.
    #[serde(default = "default_response_timeout_ms")]
    pub response_timeout_ms: u64,
    /// Largest request body accepted; larger ones get 413.
    #[serde(default = "default_max_request_body_bytes")]
    pub max_request_body_bytes: u64,
    /// Static upstreams, for hosts without Docker.
    #[serde(default)]
    pub upstream: Vec<StaticUpstream>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StaticUpstream {
    /// The inference component it serves (`X-Amzn-SageMaker-Inference-Component`).
    pub component: String,
    /// Its base URL, "http://host:port" (no path).
    pub url: String,
}

/// The default front door address.
pub const DEFAULT_PROXY_LISTEN: &str = "0.0.0.0:8080";
/// SageMaker's model containers serve on 8080.
pub const DEFAULT_UPSTREAM_PORT: u16 = 8080;
/// One thread: the agent stays small on a host whose cores belong to the models; raise it (and
/// measure) for high request rates.
pub const DEFAULT_PROXY_WORKER_THREADS: usize = 1;
pub const MAX_PROXY_WORKER_THREADS: usize = 64;
/// A local container accepts in well under a second; 2 s covers a loaded host.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 2_000;
/// SageMaker's real-time invocation limit is 60 s for the response to start.
pub const DEFAULT_RESPONSE_TIMEOUT_MS: u64 = 60_000;
/// SageMaker's real-time payload limit is 6 MB (25 MB for some); the larger one.
pub const DEFAULT_MAX_REQUEST_BODY_BYTES: u64 = 25 * 1024 * 1024;

fn default_proxy_listen() -> String {
    DEFAULT_PROXY_LISTEN.into()
}
fn default_invocations_namespace() -> String {
    crate::catalog::DEFAULT_INVOCATIONS_NAMESPACE.into()
}
fn default_upstream_port() -> u16 {
    DEFAULT_UPSTREAM_PORT
}
fn default_instance_count() -> u32 {
    1
}
fn default_proxy_worker_threads() -> usize {
    DEFAULT_PROXY_WORKER_THREADS
}
fn default_connect_timeout_ms() -> u64 {
    DEFAULT_CONNECT_TIMEOUT_MS
}
fn default_response_timeout_ms() -> u64 {
    DEFAULT_RESPONSE_TIMEOUT_MS
}
fn default_max_request_body_bytes() -> u64 {
    DEFAULT_MAX_REQUEST_BODY_BYTES
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            enabled: false,
            listen: default_proxy_listen(),
            namespace: default_invocations_namespace(),
            upstream_port: default_upstream_port(),
            instance_count: default_instance_count(),
            worker_threads: default_proxy_worker_threads(),
            connect_timeout_ms: default_connect_timeout_ms(),
            response_timeout_ms: default_response_timeout_ms(),
            max_request_body_bytes: default_max_request_body_bytes(),
            upstream: Vec::new(),
        }
    }
}

impl ProxyConfig {
    fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err((
                "proxy.listen",
                format!(
                    "\"{}\" is not an address and port; allowed: e.g. \"{DEFAULT_PROXY_LISTEN}\"",
                    self.listen
                ),
            ));
        }
        validate_namespace(&self.namespace).map_err(|r| ("proxy.namespace", r))?;
        if self.upstream_port == 0 {
            return Err(("proxy.upstream_port", "allowed: 1 to 65535".into()));
        }
        if self.instance_count == 0 {
            return Err(("proxy.instance_count", "allowed: 1 or more".into()));
        }
        if self.worker_threads == 0 || self.worker_threads > MAX_PROXY_WORKER_THREADS {
            return Err((
                "proxy.worker_threads",
                format!("allowed: 1 to {MAX_PROXY_WORKER_THREADS}"),
            ));
        }
        if self.connect_timeout_ms == 0 {
            return Err(("proxy.connect_timeout_ms", "allowed: 1 or more".into()));
        }
        if self.response_timeout_ms == 0 {
            return Err(("proxy.response_timeout_ms", "allowed: 1 or more".into()));
        }
        if self.max_request_body_bytes == 0 {
            return Err(("proxy.max_request_body_bytes", "allowed: 1 or more".into()));
        }
        for upstream in &self.upstream {
            if upstream.component.trim().is_empty()
                || upstream.component.chars().count() > MAX_DIMENSION_VALUE_CHARS
            {
                return Err((
                    "proxy.upstream.component",
                    format!("must be 1 to {MAX_DIMENSION_VALUE_CHARS} characters"),
                ));
            }
            crate::proxy::route::parse_static_url(&upstream.url)
                .map_err(|r| ("proxy.upstream.url", r))?;
        }
        Ok(())
    }
}

impl DockerConfig {
    fn validate(&self) -> Result<(), (&'static str, String)> {
        let path = self.socket.strip_prefix("unix://").unwrap_or(&self.socket);
        if !path.starts_with('/') {
            return Err((
                "docker.socket",
                format!("\"{}\" is not an absolute path; allowed: \"/var/run/docker.sock\" or \"unix:///path\"", self.socket),
            ));
        }
        if self.component_label.trim().is_empty() {
            return Err((
                "docker.component_label",
                "must not be empty, e.g. \"sagemaker.inference-component\"".into(),
            ));
        }
        if self.component_env.is_empty() || self.component_env.contains('=') {
            return Err((
                "docker.component_env",
                "must be a variable name without '=', e.g. \"INFERENCE_COMPONENT_NAME\"".into(),
            ));
        }
        Ok(())
    }
}

impl CostConfig {
    fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(price) = self.instance_hourly_price_usd {
            if !price.is_finite() || price <= 0.0 {
                return Err((
                    "cost.instance_hourly_price_usd",
                    format!("{price} is not allowed; allowed: a finite number of USD per hour above 0, e.g. 5.752"),
                ));
            }
        }
        if let Some(gpus) = self.gpus_per_instance {
            if gpus == 0 || gpus > MAX_GPUS_PER_INSTANCE {
                return Err((
                    "cost.gpus_per_instance",
                    format!("{gpus} is not allowed; allowed: 1 to {MAX_GPUS_PER_INSTANCE}"),
                ));
            }
        }
        Ok(())
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

/// A CloudWatch Logs group (`[.-_/#A-Za-z0-9]`) or stream (anything but `:` and `*`) name.
fn validate_log_name(name: &str, max: usize, group: bool) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > max {
        return Err(format!("must be 1 to {max} characters"));
    }
    let ok = if group {
        name.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/#".contains(c))
    } else {
        !name.contains([':', '*'])
    };
    if !ok {
        return Err(if group {
            "allowed characters: letters, digits, '.', '_', '-', '/', '#'".into()
        } else {
            "must not contain ':' or '*'".into()
        });
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
        assert_eq!(c.gpu.process_interval_ms, 10_000);
        assert!(c.docker.enabled);
        assert_eq!(c.docker.socket, "/var/run/docker.sock");
        assert_eq!(c.docker.component_label, "sagemaker.inference-component");
        assert_eq!(c.docker.component_env, "INFERENCE_COMPONENT_NAME");
        assert!(c.admin.enabled);
        assert_eq!(c.admin.listen, "127.0.0.1:9464");
        assert!(!c.self_metrics.enabled);
        assert_eq!(c.self_metrics.namespace, "EndpointMetricsAgent");
        assert!(!c.proxy.enabled);
        assert_eq!(c.proxy.listen, "0.0.0.0:8080");
        assert_eq!(c.proxy.namespace, "/aws/sagemaker/Invocations");
        assert_eq!(c.proxy.upstream_port, 8080);
        assert_eq!(c.proxy.instance_count, 1);
        assert!(c.proxy.upstream.is_empty());
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
            ("[endpoint]\nname = \"e\"\n[docker]\nsocket = \"docker.sock\"\n", "docker.socket"),
            ("[endpoint]\nname = \"e\"\n[docker]\ncomponent_label = \"\"\n", "docker.component_label"),
            ("[endpoint]\nname = \"e\"\n[docker]\ncomponent_env = \"A=B\"\n", "docker.component_env"),
            ("[endpoint]\nname = \"e\"\n[output]\nlog_group = \"a b\"\n", "output.log_group"),
            ("[endpoint]\nname = \"e\"\n[output]\nlog_stream = \"a:b\"\n", "output.log_stream"),
            ("[endpoint]\nname = \"e\"\n[output]\nspool_max_bytes = 4194303\n", "output.spool_max_bytes"),
            ("[endpoint]\nname = \"e\"\n[output]\nretry_max_seconds = 0\n", "output.retry_max_seconds"),
            ("[endpoint]\nname = \"e\"\n[output]\nretry_max_seconds = 301\n", "output.retry_max_seconds"),
            ("[endpoint]\nname = \"e\"\n[admin]\nlisten = \"localhost\"\n", "admin.listen"),
            ("[endpoint]\nname = \"e\"\n[gpu]\nprocess_interval_ms = 999\n", "gpu.process_interval_ms"),
            ("[endpoint]\nname = \"e\"\n[self_metrics]\nnamespace = \"AWS/Agent\"\n", "self_metrics.namespace"),
            ("[endpoint]\nname = \"e\"\n[cost]\ninstance_hourly_price_usd = 0.0\n", "cost.instance_hourly_price_usd"),
            ("[endpoint]\nname = \"e\"\n[cost]\ninstance_hourly_price_usd = -1.5\n", "cost.instance_hourly_price_usd"),
            ("[endpoint]\nname = \"e\"\n[cost]\ninstance_hourly_price_usd = nan\n", "cost.instance_hourly_price_usd"),
            ("[endpoint]\nname = \"e\"\n[cost]\ninstance_hourly_price_usd = inf\n", "cost.instance_hourly_price_usd"),
            ("[endpoint]\nname = \"e\"\n[cost]\ninstance_hourly_price_usd = \"5\"\n", "cost.instance_hourly_price_usd"),
            ("[endpoint]\nname = \"e\"\n[cost]\ngpus_per_instance = 0\n", "cost.gpus_per_instance"),
            ("[endpoint]\nname = \"e\"\n[cost]\ngpus_per_instance = 65\n", "cost.gpus_per_instance"),
            ("[endpoint]\nname = \"e\"\n[cost]\nprice = 1.0\n", "cost.price"),
            ("[endpoint]\nname = \"e\"\n[proxy]\nnamespace = \"AWS/SageMaker\"\n", "proxy.namespace"),
            ("[endpoint]\nname = \"e\"\n[proxy]\nlisten = \"8080\"\n", "proxy.listen"),
            ("[endpoint]\nname = \"e\"\n[proxy]\ninstance_count = 0\n", "proxy.instance_count"),
            ("[endpoint]\nname = \"e\"\n[proxy]\nworker_threads = 0\n", "proxy.worker_threads"),
            ("[endpoint]\nname = \"e\"\n[[proxy.upstream]]\ncomponent = \"a\"\nurl = \"https://x:1\"\n", "proxy.upstream.url"),
            ("[endpoint]\nname = \"e\"\n[[proxy.upstream]]\ncomponent = \"\"\nurl = \"http://x:1\"\n", "proxy.upstream.component"),
            ("[endpoint]\nname = \"e\"\n[scrape]\nport = 0\n", "scrape.port"),
            ("[endpoint]\nname = \"e\"\n[scrape]\npath = \"metrics\"\n", "scrape.path"),
            ("[endpoint]\nname = \"e\"\n[scrape]\ninterval_seconds = 61\n", "scrape.interval_seconds"),
            ("[endpoint]\nname = \"e\"\n[scrape]\ninterval_seconds = 0\n", "scrape.interval_seconds"),
            ("[endpoint]\nname = \"e\"\n[scrape]\ntimeout_ms = 10000\n", "scrape.timeout_ms"),
            ("[endpoint]\nname = \"e\"\n[scrape]\nmax_bytes = 0\n", "scrape.max_bytes"),
            ("[endpoint]\nname = \"e\"\n[scrape]\nevery = 5\n", "scrape.every"),
            ("[endpoint]\nname = \"e\"\n[[scrape.target]]\ncomponent = \"a\"\nurl = \"https://x:1/metrics\"\n", "scrape.target.url"),
            ("[endpoint]\nname = \"e\"\n[[scrape.target]]\ncomponent = \"a\"\nurl = \"http://x/metrics\"\n", "scrape.target.url"),
            ("[endpoint]\nname = \"e\"\n[[scrape.target]]\ncomponent = \" \"\nurl = \"http://x:1\"\n", "scrape.target.component"),
        ];
        for (text, key) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.key, key, "{text}");
            assert!(!e.reason.is_empty());
        }
    }

    #[test]
    fn scrape_settings_default_to_sagemakers_port_and_show_in_the_summary() {
        let c = parse("[endpoint]\nname = \"e\"\n").unwrap();
        assert!(!c.scrape.enabled);
        assert_eq!((c.scrape.port, c.scrape.path.as_str()), (8080, "/metrics"));
        assert!(c.summary().contains("scrape: disabled"));
        let c = parse(
            "[endpoint]\nname = \"e\"\n[scrape]\nenabled = true\ninterval_seconds = 5\n\
                       [[scrape.target]]\ncomponent = \"a\"\nurl = \"http://10.0.0.9:8000\"\n\
                       [[scrape.target]]\ncomponent = \"b\"\nurl = \"http://h:9/stats/prom\"\n",
        )
        .unwrap();
        let t = &c.scrape.target;
        assert_eq!(
            (t[0].authority(), t[0].path()),
            ("10.0.0.9:8000", "/metrics")
        );
        assert_eq!((t[1].authority(), t[1].path()), ("h:9", "/stats/prom"));
        assert!(
            c.summary().contains("scrape: copies on port 8080 path /metrics and 2 static targets, every 5 s, timeout 2000 ms"),
            "{}",
            c.summary()
        );
    }

    #[test]
    fn cloudwatch_outputs_are_accepted_with_defaults() {
        let c =
            parse("[endpoint]\nname = \"e\"\n[output]\nformat = \"put_metric_data\"\n").unwrap();
        assert!(c.publishes_to_cloudwatch());
        assert_eq!(c.output.spool_max_bytes, DEFAULT_SPOOL_MAX_BYTES);
        assert_eq!(c.output.retry_max_seconds, 30);
        let c = parse("[endpoint]\nname = \"e\"\n[output]\nemf_destination = \"cloudwatch_logs\"\nspool_max_bytes = 4194304\n").unwrap();
        assert!(c.publishes_to_cloudwatch());
        assert_eq!(c.cloudwatch_log_group(), "/endpoint-metrics-agent/e");
        assert!(!parse("[endpoint]\nname = \"e\"\n")
            .unwrap()
            .publishes_to_cloudwatch());
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
    fn the_example_file_is_valid() {
        let c = parse(include_str!("../agent.toml.example")).unwrap();
        assert_eq!(c.output.spool_max_bytes, DEFAULT_SPOOL_MAX_BYTES);
    }

    #[test]
    fn missing_file_is_a_config_error() {
        let e = Config::load(Path::new("/nonexistent/agent.toml")).unwrap_err();
        assert!(e.reason.contains("cannot read"));
    }
}

/// `[scrape]`: each model copy's metrics endpoint (see `scrape`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScrapeConfig {
    /// Scrape the discovered copies and the static targets.
    #[serde(default)]
    pub enabled: bool,
    /// The copies' metrics port; a container's label `endpoint-metrics-agent.scrape-port`
    /// overrides it (`endpoint-metrics-agent.scrape = "false"` turns a copy off).
    #[serde(default = "default_scrape_port")]
    pub port: u16,
    /// The metrics path; the label `endpoint-metrics-agent.scrape-path` overrides it.
    #[serde(default = "default_scrape_path")]
    pub path: String,
    /// Seconds between scrapes of one target, at most the publish frequency.
    #[serde(default = "default_scrape_interval_seconds")]
    pub interval_seconds: u64,
    /// The whole answer must arrive within this, else the period has no figures for the target.
    #[serde(default = "default_scrape_timeout_ms")]
    pub timeout_ms: u64,
    /// Answers larger than this are refused (read frame by frame, never buffered past it).
    #[serde(default = "default_scrape_max_bytes")]
    pub max_bytes: u64,
    /// Static targets, for hosts without Docker.
    #[serde(default)]
    pub target: Vec<StaticScrapeTarget>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StaticScrapeTarget {
    /// The inference component it serves.
    pub component: String,
    /// "http://host:port/path" (the path defaults to "/metrics").
    pub url: String,
}

impl StaticScrapeTarget {
    /// `host:port` of a validated URL.
    pub fn authority(&self) -> &str {
        let rest = self.url.strip_prefix("http://").unwrap_or(&self.url);
        rest.split_once('/').map_or(rest, |(a, _)| a)
    }

    /// The path of a validated URL.
    pub fn path(&self) -> &str {
        let rest = self.url.strip_prefix("http://").unwrap_or(&self.url);
        rest.find('/').map_or(DEFAULT_SCRAPE_PATH, |i| &rest[i..])
    }
}

/// SageMaker's bring-your-own containers serve on 8080.
pub const DEFAULT_SCRAPE_PORT: u16 = 8080;
/// Where vLLM, SGLang and `prometheus_client` serve their metrics.
pub const DEFAULT_SCRAPE_PATH: &str = "/metrics";
/// Every 10 s: a 10 s window gets one scrape; see `scrape` for the cost to the server.
pub const DEFAULT_SCRAPE_INTERVAL_SECONDS: u64 = 10;
/// A local server answers in milliseconds; 2 s covers a loaded one and leaves most of the
/// interval.
pub const DEFAULT_SCRAPE_TIMEOUT_MS: u64 = 2_000;
/// vLLM with 8 engines writes about 130 KB (tests/fixtures/scrape/vllm-v1-8-engines.txt);
/// 4 MiB leaves room for LoRA adapters and many label sets.
pub const DEFAULT_SCRAPE_MAX_BYTES: u64 = 4 * 1024 * 1024;

fn default_scrape_port() -> u16 {
    DEFAULT_SCRAPE_PORT
}
fn default_scrape_path() -> String {
    DEFAULT_SCRAPE_PATH.into()
}
fn default_scrape_interval_seconds() -> u64 {
    DEFAULT_SCRAPE_INTERVAL_SECONDS
}
fn default_scrape_timeout_ms() -> u64 {
    DEFAULT_SCRAPE_TIMEOUT_MS
}
fn default_scrape_max_bytes() -> u64 {
    DEFAULT_SCRAPE_MAX_BYTES
}

impl Default for ScrapeConfig {
    fn default() -> Self {
        ScrapeConfig {
            enabled: false,
            port: default_scrape_port(),
            path: default_scrape_path(),
            interval_seconds: default_scrape_interval_seconds(),
            timeout_ms: default_scrape_timeout_ms(),
            max_bytes: default_scrape_max_bytes(),
            target: Vec::new(),
        }
    }
}

impl ScrapeConfig {
    fn validate(&self, publish_frequency_seconds: u64) -> Result<(), (&'static str, String)> {
        if self.port == 0 {
            return Err(("scrape.port", "allowed: 1 to 65535".into()));
        }
        if !self.path.starts_with('/') {
            return Err(("scrape.path", "must start with \"/\"".into()));
        }
        if self.interval_seconds == 0 || self.interval_seconds > publish_frequency_seconds {
            return Err((
                "scrape.interval_seconds",
                format!("allowed: 1 to {publish_frequency_seconds} (the publish frequency)"),
            ));
        }
        if self.timeout_ms == 0 || self.timeout_ms >= self.interval_seconds * 1000 {
            return Err((
                "scrape.timeout_ms",
                format!(
                    "allowed: 1 to {} (under the interval)",
                    self.interval_seconds * 1000 - 1
                ),
            ));
        }
        if self.max_bytes == 0 {
            return Err(("scrape.max_bytes", "allowed: 1 or more".into()));
        }
        for target in &self.target {
            if target.component.trim().is_empty()
                || target.component.chars().count() > MAX_DIMENSION_VALUE_CHARS
            {
                return Err((
                    "scrape.target.component",
                    format!("must be 1 to {MAX_DIMENSION_VALUE_CHARS} characters"),
                ));
            }
            let authority_ok = target.url.strip_prefix("http://").is_some_and(|_| {
                crate::proxy::route::parse_static_url(&format!("http://{}", target.authority()))
                    .is_ok()
            });
            if !authority_ok {
                return Err((
                    "scrape.target.url",
                    format!(
                        "\"{}\" is not allowed; allowed: \"http://host:port/path\"",
                        target.url
                    ),
                ));
            }
        }
        Ok(())
    }

    /// For `check-config`.
    pub fn summary(&self) -> String {
        if !self.enabled {
            return "disabled".into();
        }
        format!(
            "copies on port {} path {} and {} static targets, every {} s, timeout {} ms, at most {} bytes",
            self.port,
            self.path,
            self.target.len(),
            self.interval_seconds,
            self.timeout_ms,
            self.max_bytes
        )
    }
}

//! The agent's configuration, parsed once at load into typed values. Each section below is its
//! struct, its defaults (its `Default`, written once: serde fills missing keys from it) and its
//! validation; a value outside what is allowed is a [`ConfigError`] naming the file, the key and
//! what is allowed. `agent.toml.example` documents every key. Values that are more than a number
//! or a word (destinations, URLs, addresses) are types in [`values`].

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::catalog::{
    DEFAULT_COMPONENTS_NAMESPACE, DEFAULT_ENDPOINTS_NAMESPACE, DEFAULT_INVOCATIONS_NAMESPACE,
};
use crate::encode::limits::{MAX_DIMENSION_NAME_CHARS, MAX_LOG_GROUP_CHARS, MAX_LOG_STREAM_CHARS};

pub mod preflight;
pub mod values;

use values::{
    dimension_value, find_control_character, listen_address, validate_dimension_value,
    validate_log_name,
};
pub use values::{validate_namespace, EmfDestination, InstanceIdSetting, ScrapeUrl, UpstreamUrl};

/// Exit status for a configuration error (`EX_CONFIG` from sysexits.h).
pub const EXIT_CONFIG: u8 = 78;

/// The default path of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/endpoint-metrics-agent/agent.toml";

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
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

/// A value outside what is allowed, found by a section's `validate`: the key and why.
#[derive(Debug)]
struct Invalid {
    key: String,
    reason: String,
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

impl Config {
    /// Reads, parses and validates a configuration file. Nothing is guessed: any doubt is an error.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_config_file(path).map_err(|reason| ConfigError {
            file: path.to_path_buf(),
            key: String::new(),
            reason,
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
        config.validate().map_err(|e| err(e.key, e.reason))?;
        Ok(config)
    }

    /// The rules serde's types cannot say (ranges, one key against another), section by section.
    fn validate(&self) -> Result<(), Invalid> {
        self.validate_text()?;
        self.endpoint.validate()?;
        self.metrics.validate()?;
        self.output.validate()?;
        self.gpu.validate()?;
        self.docker.validate()?;
        self.self_metrics.validate()?;
        self.cost.validate()?;
        self.proxy.validate()?;
        self.scrape
            .validate(self.metrics.publish_frequency_seconds)?;
        Ok(())
    }

    /// No text value holds a control character (CR, LF, ESC...): names reach the logs, and a
    /// raw line break there forges a log line.
    fn validate_text(&self) -> Result<(), Invalid> {
        let value = serde_json::to_value(self)
            .map_err(|e| invalid("", format!("cannot be represented: {e}")))?;
        let mut key = String::new();
        match find_control_character(&value, &mut key) {
            Some(c) => Err(invalid(
                key,
                format!("{c:?} is not allowed; allowed: no control characters"),
            )),
            None => Ok(()),
        }
    }

    /// Whether the output is sent over the network through the spool: PutMetricData, OTLP, or
    /// EMF to CloudWatch Logs.
    pub fn publishes_through_spool(&self) -> bool {
        matches!(
            self.output.format,
            OutputFormat::PutMetricData | OutputFormat::Otlp
        ) || self.output.emf_destination == EmfDestination::CloudWatchLogs
    }

    /// The log group of `emf_destination = "cloudwatch_logs"`.
    pub fn cloudwatch_log_group(&self) -> String {
        self.output
            .log_group
            .clone()
            .unwrap_or_else(|| format!("/endpoint-metrics-agent/{}", self.endpoint.name))
    }

    /// A short summary of the effective settings, for `check-config`.
    pub fn summary(&self) -> String {
        let m = &self.metrics;
        format!(
            "endpoint: {} / {} (instance {}, type {})\n\
             metrics: enhanced={} publish every {} s, sample every {} ms, data points {}, disk {}\n\
             namespaces: {} | {}\n\
             output: {:?} to {}\n\
             gpu: {} ({}, dimension {}, health groups {:?}, slow health reads every {} ms)\n\
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
            match self.output.format {
                OutputFormat::Otlp => format!(
                    "{} ({:?})",
                    self.output
                        .otlp
                        .endpoint
                        .as_deref()
                        .unwrap_or("CloudWatch's OTLP endpoint in the Region"),
                    self.output.otlp.auth
                ),
                _ => self.output.emf_destination.to_string(),
            },
            if self.gpu.enabled {
                "enabled"
            } else {
                "disabled"
            },
            self.gpu.nvml_library,
            self.gpu.dimension_name,
            self.gpu.health,
            self.gpu.health_slow_interval_ms,
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

/// The largest configuration file read: the example, which documents every key, is about 10 KB;
/// a file this size is a mistake (or `/dev/zero`), and reading on would only cost memory.
pub const MAX_CONFIG_FILE_BYTES: u64 = 1024 * 1024;

/// Reads the configuration file: a regular file (a link to one is fine) of at most
/// [`MAX_CONFIG_FILE_BYTES`]. Opened non-blocking, so a FIFO neither blocks the open nor the
/// read; a FIFO, a device or a folder is refused by its type before anything is read.
fn read_config_file(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot read the file: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read the file: {e}"))?;
    if !meta.is_file() {
        return Err(format!(
            "cannot read the file: it is not a regular file (a {}); allowed: a regular file",
            file_kind(&meta.file_type())
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the file: {e}"))?;
    if bytes.len() as u64 > MAX_CONFIG_FILE_BYTES {
        return Err(format!(
            "the file is larger than {MAX_CONFIG_FILE_BYTES} bytes; allowed: up to that"
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "the file is not UTF-8 (byte {}); allowed: UTF-8 text",
            e.utf8_error().valid_up_to()
        )
    })
}

fn file_kind(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    if kind.is_dir() {
        "folder"
    } else if kind.is_fifo() {
        "FIFO"
    } else if kind.is_char_device() {
        "character device"
    } else if kind.is_block_device() {
        "block device"
    } else if kind.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

// ---- [endpoint] ----

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// `EndpointName` dimension; required, non-empty.
    pub name: String,
    /// `VariantName` dimension.
    #[serde(default = "default_variant")]
    pub variant: String,
    /// `InstanceId` dimension: "auto" asks EC2 instance metadata (IMDSv2), else the hostname.
    #[serde(default)]
    pub instance_id: InstanceIdSetting,
    /// The instance type, e.g. "ml.g6.12xlarge"; optional.
    #[serde(default)]
    pub instance_type: Option<String>,
}

// `name` is required, so the section has no `Default`: its optional keys' defaults are here
// (and in their types' `Default`).
fn default_variant() -> String {
    "AllTraffic".into()
}

impl EndpointConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if self.name.trim().is_empty() {
            return Err(invalid("endpoint.name", "must not be empty"));
        }
        if self.variant.trim().is_empty() {
            return Err(invalid("endpoint.variant", "must not be empty"));
        }
        // Both are dimension values of every series.
        validate_dimension_value(&self.name).map_err(|r| invalid("endpoint.name", r))?;
        validate_dimension_value(&self.variant).map_err(|r| invalid("endpoint.variant", r))?;
        Ok(())
    }
}

// ---- [metrics] ----

/// Publish frequencies SageMaker accepts for `MetricPublishFrequencyInSeconds`.
pub const ALLOWED_PUBLISH_FREQUENCIES_SECONDS: [u64; 7] = [10, 30, 60, 120, 180, 240, 300];

/// The shortest sampling period: 10 per second keeps a 300 s window at 3,000 samples per series.
pub const MIN_SAMPLE_INTERVAL_MS: u64 = 100;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `EnableEnhancedMetrics`: per-instance, per-GPU and per-container dimensions.
    pub enhanced: bool,
    /// `MetricPublishFrequencyInSeconds`: one of 10, 30, 60, 120, 180, 240, 300.
    pub publish_frequency_seconds: u64,
    /// Sampling period inside a window.
    pub sample_interval_ms: u64,
    /// The volume behind `DiskUtilization`.
    pub disk_path: PathBuf,
    /// Namespace of the instance-level metrics.
    pub endpoints_namespace: String,
    /// Namespace of the per-container (model copy) metrics.
    pub components_namespace: String,
    /// Data points per publish period for utilization, reservation and cost series: `period`
    /// (one, SageMaker's shape) or `every_sample` (one per sample, for percentiles inside a
    /// period). Invocation series always get one per request.
    pub data_points: crate::aggregate::DataPoints,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enhanced: false,
            publish_frequency_seconds: 60,
            sample_interval_ms: 1000,
            disk_path: "/".into(),
            endpoints_namespace: DEFAULT_ENDPOINTS_NAMESPACE.into(),
            components_namespace: DEFAULT_COMPONENTS_NAMESPACE.into(),
            data_points: crate::aggregate::DataPoints::Period,
        }
    }
}

impl MetricsConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if !ALLOWED_PUBLISH_FREQUENCIES_SECONDS.contains(&self.publish_frequency_seconds) {
            return Err(invalid(
                "metrics.publish_frequency_seconds",
                format!(
                    "{} is not allowed; allowed: 10, 30, 60, 120, 180, 240, 300",
                    self.publish_frequency_seconds
                ),
            ));
        }
        let window_ms = self.publish_frequency_seconds * 1000;
        if self.sample_interval_ms < MIN_SAMPLE_INTERVAL_MS || self.sample_interval_ms > window_ms {
            return Err(invalid(
                "metrics.sample_interval_ms",
                format!(
                    "{} is not allowed; allowed: {MIN_SAMPLE_INTERVAL_MS} to {window_ms} (the publish window)",
                    self.sample_interval_ms
                ),
            ));
        }
        if window_ms % self.sample_interval_ms != 0 {
            return Err(invalid(
                "metrics.sample_interval_ms",
                format!(
                    "{} does not divide the {window_ms} ms publish window; allowed: a divisor of it",
                    self.sample_interval_ms
                ),
            ));
        }
        validate_namespace(&self.endpoints_namespace)
            .map_err(|r| invalid("metrics.endpoints_namespace", r))?;
        validate_namespace(&self.components_namespace)
            .map_err(|r| invalid("metrics.components_namespace", r))?;
        Ok(())
    }
}

// ---- [output] ----

/// Default spool size: at 100 KB per window (an 8-GPU host with enhanced metrics, 60 s) about
/// 1.8 days of outage.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// The spool must hold at least a few of the largest requests (1 MB of PutMetricData, larger as
/// JSON on disk).
pub const MIN_SPOOL_MAX_BYTES: u64 = 4 * 1024 * 1024;

/// The longest retry pause allowed: past it an outage's end is noticed too late.
pub const MAX_RETRY_MAX_SECONDS: u64 = 300;

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    #[default]
    Emf,
    PutMetricData,
    /// OpenTelemetry metrics over OTLP/HTTP (`[output.otlp]`).
    Otlp,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// "emf", "put_metric_data" or "otlp".
    pub format: OutputFormat,
    /// For EMF: "stdout", "file:/path", "tcp://host:port", "udp://host:port" or "cloudwatch_logs".
    pub emf_destination: EmfDestination,
    /// `_aws.LogGroupName` of EMF documents (routes them at the CloudWatch agent's listener), and
    /// the log group of `emf_destination = "cloudwatch_logs"` (default there:
    /// "/endpoint-metrics-agent/<endpoint.name>"; created when missing).
    pub log_group: Option<String>,
    /// The log stream of `emf_destination = "cloudwatch_logs"`; default: the instance ID. Created
    /// when missing.
    pub log_stream: Option<String>,
    /// CloudWatch sinks: requests not yet taken by CloudWatch wait here, across restarts.
    pub spool_dir: PathBuf,
    /// The spool's size limit; past it the oldest requests are dropped, counted.
    pub spool_max_bytes: u64,
    /// CloudWatch sinks: the longest pause between retries while CloudWatch throttles or is down.
    pub retry_max_seconds: u64,
    /// `format = "otlp"`: where and how.
    pub otlp: OtlpConfig,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            format: OutputFormat::default(),
            emf_destination: EmfDestination::Stdout,
            log_group: None,
            log_stream: None,
            spool_dir: "/var/lib/endpoint-metrics-agent/spool".into(),
            spool_max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            retry_max_seconds: 30,
            otlp: OtlpConfig::default(),
        }
    }
}

impl OutputConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if let Some(group) = &self.log_group {
            validate_log_name(group, MAX_LOG_GROUP_CHARS, true)
                .map_err(|r| invalid("output.log_group", r))?;
        }
        if let Some(stream) = &self.log_stream {
            validate_log_name(stream, MAX_LOG_STREAM_CHARS, false)
                .map_err(|r| invalid("output.log_stream", r))?;
        }
        if self.spool_dir.as_os_str().is_empty() {
            return Err(invalid("output.spool_dir", "must name a folder"));
        }
        if self.spool_max_bytes < MIN_SPOOL_MAX_BYTES {
            return Err(invalid(
                "output.spool_max_bytes",
                format!(
                    "{} is too small; allowed: at least {MIN_SPOOL_MAX_BYTES}",
                    self.spool_max_bytes
                ),
            ));
        }
        self.otlp.validate()?;
        if self.retry_max_seconds == 0 || self.retry_max_seconds > MAX_RETRY_MAX_SECONDS {
            return Err(invalid(
                "output.retry_max_seconds",
                format!(
                    "{} is not allowed; allowed: 1 to {MAX_RETRY_MAX_SECONDS}",
                    self.retry_max_seconds
                ),
            ));
        }
        Ok(())
    }
}

// ---- [output.otlp] ----

/// The longest OTLP endpoint URL accepted.
pub const MAX_OTLP_ENDPOINT_CHARS: usize = 2048;
/// Extra headers at most: a tenant, an API key, a few more.
pub const MAX_OTLP_HEADERS: usize = 16;
/// The longest extra header value.
pub const MAX_OTLP_HEADER_VALUE_BYTES: usize = 4096;
/// The longest time one OTLP request may take.
pub const MAX_OTLP_TIMEOUT_SECONDS: u64 = 60;

/// Headers the agent sets itself (or SigV4 signs): an extra header may not replace them.
const RESERVED_OTLP_HEADERS: &[&str] = &[
    "host",
    "content-type",
    "content-encoding",
    "content-length",
    "authorization",
    "connection",
    "transfer-encoding",
    "te",
    "upgrade",
];

/// How OTLP requests are authenticated.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OtlpAuth {
    /// AWS Signature Version 4 for the service `monitoring`, credentials from the standard
    /// chain: CloudWatch's OTLP endpoint.
    #[default]
    Sigv4,
    /// No signature (an OpenTelemetry Collector, Prometheus, Mimir, VictoriaMetrics, ...);
    /// `headers` may carry a token.
    None,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// The OTLP/HTTP metrics URL. Default: CloudWatch's OTLP endpoint in the Region,
    /// `https://monitoring.<region>.amazonaws.com/v1/metrics`.
    pub endpoint: Option<String>,
    /// "sigv4" (default) or "none".
    pub auth: OtlpAuth,
    /// The Region signed for (and of the default endpoint). Default: the AWS SDK's Region chain
    /// (`AWS_REGION`, the profile, instance metadata).
    pub region: Option<String>,
    /// Extra request headers, e.g. `{ "X-Scope-OrgID" = "fleet-a" }`. Not Host, Content-*,
    /// Authorization, X-Amz-* or hop-by-hop headers.
    pub headers: std::collections::BTreeMap<String, String>,
    /// The longest one request may take, connection included (default 10).
    pub timeout_seconds: Option<u64>,
}

/// One OTLP request's time limit when `timeout_seconds` is unset.
pub const DEFAULT_OTLP_TIMEOUT_SECONDS: u64 = 10;

impl OtlpConfig {
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout_seconds.unwrap_or(DEFAULT_OTLP_TIMEOUT_SECONDS))
    }

    fn validate(&self) -> Result<(), Invalid> {
        if let Some(endpoint) = &self.endpoint {
            validate_otlp_endpoint(endpoint).map_err(|r| invalid("output.otlp.endpoint", r))?;
        } else if self.auth == OtlpAuth::None && self.region.is_none() {
            return Err(invalid(
                "output.otlp.endpoint",
                "unset with auth = \"none\": nothing says where to send; allowed: an OTLP/HTTP URL, e.g. \"http://127.0.0.1:4318/v1/metrics\" (or region, for CloudWatch's endpoint)",
            ));
        }
        if let Some(region) = &self.region {
            let ok = !region.is_empty()
                && region.len() <= 64
                && region
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return Err(invalid(
                    "output.otlp.region",
                    format!(
                        "{region:?} is not allowed; allowed: a Region name, e.g. \"us-east-1\""
                    ),
                ));
            }
        }
        if self.headers.len() > MAX_OTLP_HEADERS {
            return Err(invalid(
                "output.otlp.headers",
                format!(
                    "{} headers; allowed: at most {MAX_OTLP_HEADERS}",
                    self.headers.len()
                ),
            ));
        }
        for (name, value) in &self.headers {
            let lower = name.to_ascii_lowercase();
            if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                || RESERVED_OTLP_HEADERS.contains(&lower.as_str())
                || lower.starts_with("x-amz-")
            {
                return Err(invalid(
                    "output.otlp.headers",
                    format!("{name:?} is not allowed; allowed: a header name other than Host, Content-*, Authorization, X-Amz-* and hop-by-hop headers"),
                ));
            }
            if value.len() > MAX_OTLP_HEADER_VALUE_BYTES
                || http::HeaderValue::from_str(value).is_err()
            {
                return Err(invalid(
                    "output.otlp.headers",
                    format!("the value of {name:?} is not allowed; allowed: visible ASCII and spaces, at most {MAX_OTLP_HEADER_VALUE_BYTES} bytes"),
                ));
            }
        }
        if let Some(t) = self.timeout_seconds {
            if t == 0 || t > MAX_OTLP_TIMEOUT_SECONDS {
                return Err(invalid(
                    "output.otlp.timeout_seconds",
                    format!("{t} is not allowed; allowed: 1 to {MAX_OTLP_TIMEOUT_SECONDS}"),
                ));
            }
        }
        Ok(())
    }
}

/// An `http://` or `https://` URL with a host, and a path (`/v1/metrics` unless the backend says
/// otherwise).
fn validate_otlp_endpoint(endpoint: &str) -> Result<(), String> {
    let allowed = "allowed: an http:// or https:// URL, e.g. \"https://monitoring.us-east-1.amazonaws.com/v1/metrics\" or \"http://127.0.0.1:4318/v1/metrics\"";
    if endpoint.len() > MAX_OTLP_ENDPOINT_CHARS {
        return Err(format!(
            "{} characters; {allowed}, at most {MAX_OTLP_ENDPOINT_CHARS} characters",
            endpoint.len()
        ));
    }
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e| format!("{endpoint:?} is not a URL ({e}); {allowed}"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(host)) if !host.is_empty() => Ok(()),
        _ => Err(format!("{endpoint:?} is not allowed; {allowed}")),
    }
}

// ---- [log] ----

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
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

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// "text" or "json".
    pub format: LogFormat,
    /// "error", "warn", "info", "debug" or "trace"; `RUST_LOG` overrides it.
    pub level: LogLevel,
}

// ---- [host] ----

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// Where the host's `/proc` is mounted.
    pub proc_root: PathBuf,
    /// Where the host's cgroup tree is mounted.
    pub cgroup_root: PathBuf,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            proc_root: "/proc".into(),
            cgroup_root: "/sys/fs/cgroup".into(),
        }
    }
}

// ---- [gpu] ----

/// Default cadence of GPU process reads: at about 2.4 ms per GPU per read (H100), 8 GPUs cost
/// 0.19 % of one core at this cadence against 1.9 % at every 1 s sample.
pub const DEFAULT_GPU_PROCESS_INTERVAL_MS: u64 = 10_000;

/// GPU processes are read at most once a second (see `PROCESS_ENUMERATION_MIN_INTERVAL_MS`).
pub const MIN_GPU_PROCESS_INTERVAL_MS: u64 = 1000;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GpuConfig {
    /// Sample GPUs through NVML. Without a driver the agent warns once and runs on.
    pub enabled: bool,
    /// The NVML library: a file name looked up by the loader, or a path.
    pub nvml_library: String,
    /// The per-GPU dimension's name: "GpuId" (launch post) or "AcceleratorId" (official guide).
    pub dimension_name: String,
    /// How often running processes and their SM utilization are read (for container
    /// attribution), in ms. `nvmlDeviceGetProcessUtilization` costs about 2.4 ms per GPU on an
    /// H100 (docs/performance.md); NVML returns every sample since the last read, so a longer
    /// interval still averages the whole interval.
    pub process_interval_ms: u64,
    /// Which GPU health groups are published, per GPU, whether or not enhanced metrics are on:
    /// "temperature", "power", "clocks", "throttle", "memory", "ecc", "xid", "gpm".
    pub health: Vec<GpuHealthGroup>,
    /// How often the slow health reads run (ECC, retired pages or remapped rows, PCIe replays,
    /// the MIG instance list), in ms; the last values are carried in between.
    pub health_slow_interval_ms: u64,
}

/// Default cadence of the slow GPU health reads (ECC counts, retired pages or remapped rows,
/// PCIe replays, the MIG instance list): these change rarely, and the ECC field call is the
/// dearest health read (docs/gpu.md); once a minute is once per default publish period.
pub const DEFAULT_GPU_HEALTH_SLOW_INTERVAL_MS: u64 = 60_000;
/// The slow health reads run at most once a second (the fastest sampling interval is 100 ms).
pub const MIN_GPU_HEALTH_SLOW_INTERVAL_MS: u64 = 1000;
/// ...and at least once an hour, so a new ECC error shows within the hour.
pub const MAX_GPU_HEALTH_SLOW_INTERVAL_MS: u64 = 3_600_000;

/// A group of GPU health series (`[gpu] health`; docs/gpu.md lists each group's series).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum GpuHealthGroup {
    /// GPU and memory temperature.
    Temperature,
    /// Power draw, enforced power limit, energy of the period.
    Power,
    /// SM and memory clocks.
    Clocks,
    /// Clock event (throttle) reasons: power cap, thermal, hardware slowdown, the raw mask.
    Throttle,
    /// Framebuffer used and free, memory copy (bandwidth) utilization.
    Memory,
    /// ECC counts, retired pages or remapped rows, PCIe replays (on the slow cadence).
    Ecc,
    /// XID errors per period, from NVML events on a thread of their own.
    Xid,
    /// SM and DRAM activity through GPU performance monitoring (Hopper and later), also per
    /// MIG instance.
    Gpm,
}

impl GpuHealthGroup {
    /// Every group, in the order docs/gpu.md lists them.
    pub const ALL: [GpuHealthGroup; 8] = [
        GpuHealthGroup::Temperature,
        GpuHealthGroup::Power,
        GpuHealthGroup::Clocks,
        GpuHealthGroup::Throttle,
        GpuHealthGroup::Memory,
        GpuHealthGroup::Ecc,
        GpuHealthGroup::Xid,
        GpuHealthGroup::Gpm,
    ];

    /// On by default: the faults that take a GPU (and the model sharded over it) out, and their
    /// precursors (heat, power cap, throttling), plus SM activity, which is free where GPM is
    /// unsupported. Off: clocks (the detail behind the throttle reasons) and memory (framebuffer
    /// figures repeat GPUMemoryUtilization). Cost: docs/gpu.md and `plan`.
    pub const DEFAULT: [GpuHealthGroup; 6] = [
        GpuHealthGroup::Temperature,
        GpuHealthGroup::Power,
        GpuHealthGroup::Throttle,
        GpuHealthGroup::Ecc,
        GpuHealthGroup::Xid,
        GpuHealthGroup::Gpm,
    ];
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig {
            enabled: true,
            nvml_library: "libnvidia-ml.so.1".into(),
            dimension_name: "GpuId".into(),
            process_interval_ms: DEFAULT_GPU_PROCESS_INTERVAL_MS,
            health: GpuHealthGroup::DEFAULT.to_vec(),
            health_slow_interval_ms: DEFAULT_GPU_HEALTH_SLOW_INTERVAL_MS,
        }
    }
}

impl GpuConfig {
    /// Whether a health group is published.
    pub fn health_on(&self, group: GpuHealthGroup) -> bool {
        self.health.contains(&group)
    }

    fn validate(&self) -> Result<(), Invalid> {
        let slow = self.health_slow_interval_ms;
        if !(MIN_GPU_HEALTH_SLOW_INTERVAL_MS..=MAX_GPU_HEALTH_SLOW_INTERVAL_MS).contains(&slow) {
            return Err(invalid(
                "gpu.health_slow_interval_ms",
                format!(
                    "{slow} is not allowed; allowed: {MIN_GPU_HEALTH_SLOW_INTERVAL_MS} to {MAX_GPU_HEALTH_SLOW_INTERVAL_MS}"
                ),
            ));
        }
        // PutMetricData `Dimension.Name`: ASCII, at least one non-whitespace character, not
        // starting with ':'.
        let name = &self.dimension_name;
        if name.is_empty()
            || name.len() > MAX_DIMENSION_NAME_CHARS
            || name.trim().is_empty()
            || name.starts_with(':')
            || !name.chars().all(|c| (' '..='~').contains(&c))
        {
            return Err(invalid(
                "gpu.dimension_name",
                format!("must be 1 to {MAX_DIMENSION_NAME_CHARS} printable ASCII characters, not starting with ':', e.g. \"GpuId\" or \"AcceleratorId\""),
            ));
        }
        if self.process_interval_ms < MIN_GPU_PROCESS_INTERVAL_MS {
            return Err(invalid(
                "gpu.process_interval_ms",
                format!(
                    "{} is not allowed; allowed: {MIN_GPU_PROCESS_INTERVAL_MS} or more",
                    self.process_interval_ms
                ),
            ));
        }
        if self.nvml_library.is_empty() {
            return Err(invalid(
                "gpu.nvml_library",
                "must name a library, e.g. \"libnvidia-ml.so.1\"",
            ));
        }
        Ok(())
    }
}

// ---- [docker] ----

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DockerConfig {
    /// Discover model copies and publish their metrics. Without an engine the agent warns once
    /// and runs on.
    pub enabled: bool,
    /// The engine's Unix socket (a path, or `unix://` followed by one).
    pub socket: String,
    /// The container label whose value names the inference component.
    pub component_label: String,
    /// Fallback: the environment variable whose value names the inference component.
    pub component_env: String,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            enabled: true,
            socket: "/var/run/docker.sock".into(),
            component_label: "sagemaker.inference-component".into(),
            component_env: "INFERENCE_COMPONENT_NAME".into(),
        }
    }
}

impl DockerConfig {
    fn validate(&self) -> Result<(), Invalid> {
        let path = self.socket.strip_prefix("unix://").unwrap_or(&self.socket);
        if !path.starts_with('/') {
            return Err(invalid(
                "docker.socket",
                format!("\"{}\" is not an absolute path; allowed: \"/var/run/docker.sock\" or \"unix:///path\"", self.socket),
            ));
        }
        if self.component_label.trim().is_empty() {
            return Err(invalid(
                "docker.component_label",
                "must not be empty, e.g. \"sagemaker.inference-component\"",
            ));
        }
        if self.component_env.is_empty() || self.component_env.contains('=') {
            return Err(invalid(
                "docker.component_env",
                "must be a variable name without '=', e.g. \"INFERENCE_COMPONENT_NAME\"",
            ));
        }
        Ok(())
    }
}

// ---- [admin] ----

/// The admin endpoint's default address: the host only, on 9464, the port OpenTelemetry's
/// Prometheus exporters use by default, so scrapers set up for an on-host collector find it.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9464));

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve `/healthz` and `/metrics`.
    pub enabled: bool,
    /// Address and port to listen on, e.g. "127.0.0.1:9464" (the host only) or "0.0.0.0:9464".
    #[serde(deserialize_with = "listen_address")]
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            listen: DEFAULT_ADMIN_LISTEN,
        }
    }
}

// ---- [self_metrics] ----

/// The default namespace of the agent's own metrics.
pub const DEFAULT_SELF_METRICS_NAMESPACE: &str = "EndpointMetricsAgent";

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SelfMetricsConfig {
    /// Publish the agent's own figures once per window.
    pub enabled: bool,
    /// Their namespace; must not start with "AWS/".
    pub namespace: String,
}

impl Default for SelfMetricsConfig {
    fn default() -> Self {
        SelfMetricsConfig {
            enabled: false,
            namespace: DEFAULT_SELF_METRICS_NAMESPACE.into(),
        }
    }
}

impl SelfMetricsConfig {
    fn validate(&self) -> Result<(), Invalid> {
        validate_namespace(&self.namespace).map_err(|r| invalid("self_metrics.namespace", r))
    }
}

// ---- [cost] ----

/// The most GPUs an instance may be said to have (`cost.gpus_per_instance`): no instance type
/// has more than 16 today (ml.p5.48xlarge and ml.p4d.24xlarge have 8); 64 leaves room.
pub const MAX_GPUS_PER_INSTANCE: u32 = 64;

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CostConfig {
    /// The instance's price in USD per hour; overrides the built-in on-demand table (looked up
    /// by `endpoint.instance_type`). Unset with a type the table lacks: no cost metrics, one
    /// warning.
    pub instance_hourly_price_usd: Option<f64>,
    /// GPUs the price is divided by; overrides the table's count. Unset and not in the table:
    /// the GPUs NVML sees.
    pub gpus_per_instance: Option<u32>,
}

impl CostConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if let Some(price) = self.instance_hourly_price_usd {
            if !price.is_finite() || price <= 0.0 {
                return Err(invalid(
                    "cost.instance_hourly_price_usd",
                    format!("{price} is not allowed; allowed: a finite number of USD per hour above 0, e.g. 5.752"),
                ));
            }
        }
        if let Some(gpus) = self.gpus_per_instance {
            if gpus == 0 || gpus > MAX_GPUS_PER_INSTANCE {
                return Err(invalid(
                    "cost.gpus_per_instance",
                    format!("{gpus} is not allowed; allowed: 1 to {MAX_GPUS_PER_INSTANCE}"),
                ));
            }
        }
        Ok(())
    }
}

// ---- [proxy] ----

/// The default front door address.
pub const DEFAULT_PROXY_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8080));
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
/// A client connection with no request in flight is closed after this (silent TCP, idle
/// keep-alive, an h2 preface and nothing else). nginx's keepalive_timeout is 75 s.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
/// A client that takes none of its answer for this long is cut off (nginx's `send_timeout`).
pub const DEFAULT_SEND_TIMEOUT_MS: u64 = 60_000;
/// Client connections held at once; past it new ones are closed at once, counted. A keep-alive
/// connection that has served a request holds about 24 KB (hyper's read and write buffers and
/// its task; docs/reliability.md): 4,096 keep the worst case near 110 MB, inside the unit's
/// `MemoryMax=256M`, and 8,192 descriptors with their copy connections, inside its
/// `LimitNOFILE=65536`. nginx's default is 512 per worker (`worker_connections`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
pub const MAX_MAX_CONNECTIONS: usize = 60_000;
/// On SIGTERM, requests in flight (streams included) may finish for this long before they are
/// cut and counted. The unit's `TimeoutStopSec` is this plus the shutdown budget.
pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 30_000;
/// Longer drains would outlive systemd's stop timeout (`TimeoutStopSec=45`).
pub const MAX_DRAIN_TIMEOUT_MS: u64 = 40_000;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Run the front door.
    pub enabled: bool,
    /// Address and port it listens on (HTTP/1.1 and h2c).
    #[serde(deserialize_with = "listen_address")]
    pub listen: SocketAddr,
    /// Namespace of the invocation metrics; must not start with "AWS/".
    pub namespace: String,
    /// The port model containers listen on; a container's label
    /// `endpoint-metrics-agent.upstream-port` overrides it.
    pub upstream_port: u16,
    /// Instances behind the endpoint: `InvocationsPerInstance` counts 1/this per request.
    pub instance_count: u32,
    /// Threads of the front door's own runtime (the sampling loop keeps its thread).
    pub worker_threads: usize,
    /// Connecting to a copy may take this long; past it the client gets 504.
    pub connect_timeout_ms: u64,
    /// A copy must answer (response headers) within this; past it the client gets 504 (at most
    /// 1/16 of it, and 1 s, later: `proxy::client::Due`).
    pub response_timeout_ms: u64,
    /// Largest request body accepted; larger ones get 413.
    pub max_request_body_bytes: u64,
    /// A client connection with no request in flight is closed after this long.
    pub idle_timeout_ms: u64,
    /// A client that takes none of its answer for this long (while the answer has more for it)
    /// has its connection cut, counted: after 1 to 1.5 times this (`proxy::conn`).
    pub send_timeout_ms: u64,
    /// Client connections held at once; past it new ones are closed at once, counted.
    pub max_connections: usize,
    /// On SIGTERM, requests in flight may finish for this long before they are cut, counted.
    pub drain_timeout_ms: u64,
    /// Static upstreams, for hosts without Docker.
    pub upstream: Vec<StaticUpstream>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StaticUpstream {
    /// The inference component it serves (`X-Amzn-SageMaker-Inference-Component`), trimmed.
    #[serde(deserialize_with = "dimension_value")]
    pub component: String,
    /// Its base URL, "http://host:port" (no path).
    pub url: UpstreamUrl,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            enabled: false,
            listen: DEFAULT_PROXY_LISTEN,
            namespace: DEFAULT_INVOCATIONS_NAMESPACE.into(),
            upstream_port: DEFAULT_UPSTREAM_PORT,
            instance_count: 1,
            worker_threads: DEFAULT_PROXY_WORKER_THREADS,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            response_timeout_ms: DEFAULT_RESPONSE_TIMEOUT_MS,
            max_request_body_bytes: DEFAULT_MAX_REQUEST_BODY_BYTES,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            send_timeout_ms: DEFAULT_SEND_TIMEOUT_MS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            drain_timeout_ms: DEFAULT_DRAIN_TIMEOUT_MS,
            upstream: Vec::new(),
        }
    }
}

impl ProxyConfig {
    fn validate(&self) -> Result<(), Invalid> {
        validate_namespace(&self.namespace).map_err(|r| invalid("proxy.namespace", r))?;
        if self.upstream_port == 0 {
            return Err(invalid("proxy.upstream_port", "allowed: 1 to 65535"));
        }
        if self.instance_count == 0 {
            return Err(invalid("proxy.instance_count", "allowed: 1 or more"));
        }
        if self.worker_threads == 0 || self.worker_threads > MAX_PROXY_WORKER_THREADS {
            return Err(invalid(
                "proxy.worker_threads",
                format!("allowed: 1 to {MAX_PROXY_WORKER_THREADS}"),
            ));
        }
        if self.connect_timeout_ms == 0 {
            return Err(invalid("proxy.connect_timeout_ms", "allowed: 1 or more"));
        }
        if self.response_timeout_ms == 0 {
            return Err(invalid("proxy.response_timeout_ms", "allowed: 1 or more"));
        }
        if self.max_request_body_bytes == 0 {
            return Err(invalid(
                "proxy.max_request_body_bytes",
                "allowed: 1 or more",
            ));
        }
        if self.idle_timeout_ms == 0 {
            return Err(invalid("proxy.idle_timeout_ms", "allowed: 1 or more"));
        }
        if self.send_timeout_ms == 0 {
            return Err(invalid("proxy.send_timeout_ms", "allowed: 1 or more"));
        }
        if self.max_connections == 0 || self.max_connections > MAX_MAX_CONNECTIONS {
            return Err(invalid(
                "proxy.max_connections",
                format!("allowed: 1 to {MAX_MAX_CONNECTIONS} (the unit's LimitNOFILE is 65536)"),
            ));
        }
        if self.drain_timeout_ms > MAX_DRAIN_TIMEOUT_MS {
            return Err(invalid(
                "proxy.drain_timeout_ms",
                format!("allowed: 0 to {MAX_DRAIN_TIMEOUT_MS} (the unit's TimeoutStopSec is 45 s)"),
            ));
        }
        Ok(())
    }
}

// ---- [scrape] ----

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

/// `[scrape]`: each model copy's metrics endpoint (see `scrape`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScrapeConfig {
    /// Scrape the discovered copies and the static targets.
    pub enabled: bool,
    /// The copies' metrics port; a container's label `endpoint-metrics-agent.scrape-port`
    /// overrides it (`endpoint-metrics-agent.scrape = "false"` turns a copy off).
    pub port: u16,
    /// The metrics path; the label `endpoint-metrics-agent.scrape-path` overrides it.
    pub path: String,
    /// Seconds between scrapes of one target, at most the publish frequency.
    pub interval_seconds: u64,
    /// The whole answer must arrive within this, else the period has no figures for the target.
    pub timeout_ms: u64,
    /// Answers larger than this are refused (read frame by frame, never buffered past it).
    pub max_bytes: u64,
    /// Static targets, for hosts without Docker.
    pub target: Vec<StaticScrapeTarget>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StaticScrapeTarget {
    /// The inference component it serves, trimmed.
    #[serde(deserialize_with = "dimension_value")]
    pub component: String,
    /// "http://host:port/path" (the path defaults to "/metrics").
    pub url: ScrapeUrl,
}

impl Default for ScrapeConfig {
    fn default() -> Self {
        ScrapeConfig {
            enabled: false,
            port: DEFAULT_SCRAPE_PORT,
            path: DEFAULT_SCRAPE_PATH.into(),
            interval_seconds: DEFAULT_SCRAPE_INTERVAL_SECONDS,
            timeout_ms: DEFAULT_SCRAPE_TIMEOUT_MS,
            max_bytes: DEFAULT_SCRAPE_MAX_BYTES,
            target: Vec::new(),
        }
    }
}

impl ScrapeConfig {
    fn validate(&self, publish_frequency_seconds: u64) -> Result<(), Invalid> {
        if self.port == 0 {
            return Err(invalid("scrape.port", "allowed: 1 to 65535"));
        }
        if !self.path.starts_with('/') {
            return Err(invalid("scrape.path", "must start with \"/\""));
        }
        if self.interval_seconds == 0 || self.interval_seconds > publish_frequency_seconds {
            return Err(invalid(
                "scrape.interval_seconds",
                format!("allowed: 1 to {publish_frequency_seconds} (the publish frequency)"),
            ));
        }
        if self.timeout_ms == 0 || self.timeout_ms >= self.interval_seconds * 1000 {
            return Err(invalid(
                "scrape.timeout_ms",
                format!(
                    "allowed: 1 to {} (under the interval)",
                    self.interval_seconds * 1000 - 1
                ),
            ));
        }
        if self.max_bytes == 0 {
            return Err(invalid("scrape.max_bytes", "allowed: 1 or more"));
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
        assert_eq!(c.endpoint.instance_id, InstanceIdSetting::Auto);
        assert!(!c.metrics.enhanced);
        assert_eq!(c.metrics.publish_frequency_seconds, 60);
        assert_eq!(c.metrics.endpoints_namespace, "/aws/sagemaker/Endpoints");
        assert_eq!(c.output.emf_destination, EmfDestination::Stdout);
        assert_eq!(c.gpu.dimension_name, "GpuId");
        assert_eq!(c.gpu.process_interval_ms, 10_000);
        assert!(c.docker.enabled);
        assert_eq!(c.docker.socket, "/var/run/docker.sock");
        assert_eq!(c.docker.component_label, "sagemaker.inference-component");
        assert_eq!(c.docker.component_env, "INFERENCE_COMPONENT_NAME");
        assert!(c.admin.enabled);
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9464");
        assert!(!c.self_metrics.enabled);
        assert_eq!(c.self_metrics.namespace, "EndpointMetricsAgent");
        assert!(!c.proxy.enabled);
        assert_eq!(c.proxy.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.proxy.namespace, "/aws/sagemaker/Invocations");
        assert_eq!(c.proxy.upstream_port, 8080);
        assert_eq!(c.proxy.instance_count, 1);
        assert!(c.proxy.upstream.is_empty());
    }

    /// Serde fills a missing key from the section's `Default`, so an empty section and an
    /// absent one are that `Default` exactly.
    #[test]
    fn an_empty_section_is_its_default() {
        let c = parse(
            "[endpoint]\nname = \"e\"\n[metrics]\n[output]\n[log]\n[host]\n[gpu]\n[docker]\n\
             [admin]\n[self_metrics]\n[cost]\n[proxy]\n",
        )
        .unwrap();
        assert_eq!(c.metrics, MetricsConfig::default());
        assert_eq!(c.output, OutputConfig::default());
        assert_eq!(c.log, LogConfig::default());
        assert_eq!(c.host, HostConfig::default());
        assert_eq!(c.gpu, GpuConfig::default());
        assert_eq!(c.docker, DockerConfig::default());
        assert_eq!(c.admin, AdminConfig::default());
        assert_eq!(c.self_metrics, SelfMetricsConfig::default());
        assert_eq!(c.cost, CostConfig::default());
        assert_eq!(c.proxy, ProxyConfig::default());
        assert_eq!(c, parse("[endpoint]\nname = \"e\"\n").unwrap());
    }

    #[test]
    fn strings_become_their_types_at_load() {
        let c = parse(
            "[endpoint]\nname = \"e\"\n[output]\nemf_destination = \"udp://agent:25888\"\n\
             [admin]\nlisten = \"[::1]:9\"\n[proxy]\nlisten = \"127.0.0.1:18080\"\n\
             [[proxy.upstream]]\ncomponent = \" model-a \"\nurl = \"http://127.0.0.1:9001/\"\n",
        )
        .unwrap();
        assert_eq!(
            c.output.emf_destination,
            EmfDestination::Udp("agent:25888".into())
        );
        assert_eq!(c.admin.listen, "[::1]:9".parse::<SocketAddr>().unwrap());
        assert_eq!(c.proxy.listen.port(), 18080);
        assert_eq!(c.proxy.upstream[0].component, "model-a", "trimmed");
        assert_eq!(c.proxy.upstream[0].url.authority(), "127.0.0.1:9001");
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
            ("[endpoint]\nname = \"\"\n", "endpoint.name", "empty"),
            ("[endpoint]\nname = \"e\"\ninstance_id = \" \"\n", "endpoint.instance_id", "use \"auto\""),
            ("[endpoint]\nname = \"e\"\n[metrics]\npublish_frequency_seconds = 15\n", "metrics.publish_frequency_seconds", "allowed"),
            ("[endpoint]\nname = \"e\"\n[metrics]\npublish_frequency_seconds = 10\nsample_interval_ms = 20000\n", "metrics.sample_interval_ms", "allowed"),
            ("[endpoint]\nname = \"e\"\n[metrics]\nsample_interval_ms = 50\n", "metrics.sample_interval_ms", "allowed"),
            ("[endpoint]\nname = \"e\"\n[metrics]\nsample_interval_ms = 7000\n", "metrics.sample_interval_ms", "divide"),
            ("[endpoint]\nname = \"e\"\n[metrics]\nendpoints_namespace = \"AWS/SageMaker\"\n", "metrics.endpoints_namespace", "reserves"),
            ("[endpoint]\nname = \"e\"\n[output]\nemf_destination = \"tcp://nohost\"\n", "output.emf_destination", "is not host:port; allowed"),
            ("[endpoint]\nname = \"e\"\n[output]\nformat = \"prometheus\"\n", "output.format", "unknown variant"),
            ("[endpoint]\nname = \"e\"\n[output.otlp]\nendpoint = \"ftp://x/v1/metrics\"\n", "output.otlp.endpoint", "http:// or https://"),
            ("[endpoint]\nname = \"e\"\n[output.otlp]\nendpoint = \"not a url\"\n", "output.otlp.endpoint", "not a URL"),
            ("[endpoint]\nname = \"e\"\n[output.otlp]\nauth = \"basic\"\n", "output.otlp.auth", "unknown variant"),
            ("[endpoint]\nname = \"e\"\n[output.otlp]\nauth = \"none\"\n", "output.otlp.endpoint", "nothing says where"),
            ("[endpoint]\nname = \"e\"\n[output.otlp]\nregion = \"US East\"\n", "output.otlp.region", "a Region name"),
            ("[endpoint]\nname = \"e\"\n[output.otlp]\nheaders = { Authorization = \"x\" }\n", "output.otlp.headers", "other than Host"),
            ("[endpoint]\nname = \"e\"\n[output.otlp]\nheaders = { X-Amz-Date = \"x\" }\n", "output.otlp.headers", "X-Amz-*"),
            ("[endpoint]\nname = \"e\"\n[output.otlp]\nheaders = { \"bad name\" = \"x\" }\n", "output.otlp.headers", "not allowed"),
            ("[endpoint]\nname = \"e\"\n[output.otlp]\nheaders = { X-Key = \"a\\nb\" }\n", "output.otlp.headers.X-Key", "control characters"),
            ("[endpoint]\nname = \"e\"\n[output.otlp]\ntimeout_seconds = 0\n", "output.otlp.timeout_seconds", "1 to 60"),
            ("[endpoint]\nname = \"e\"\n[docker]\nsocket = \"docker.sock\"\n", "docker.socket", "absolute"),
            ("[endpoint]\nname = \"e\"\n[docker]\ncomponent_label = \"\"\n", "docker.component_label", "empty"),
            ("[endpoint]\nname = \"e\"\n[docker]\ncomponent_env = \"A=B\"\n", "docker.component_env", "'='"),
            ("[endpoint]\nname = \"e\"\n[output]\nlog_group = \"a b\"\n", "output.log_group", "allowed characters"),
            ("[endpoint]\nname = \"e\"\n[output]\nlog_stream = \"a:b\"\n", "output.log_stream", "':'"),
            ("[endpoint]\nname = \"e\"\n[output]\nspool_max_bytes = 4194303\n", "output.spool_max_bytes", "too small"),
            ("[endpoint]\nname = \"e\"\n[output]\nretry_max_seconds = 0\n", "output.retry_max_seconds", "allowed: 1 to 300"),
            ("[endpoint]\nname = \"e\"\n[output]\nretry_max_seconds = 301\n", "output.retry_max_seconds", "allowed: 1 to 300"),
            ("[endpoint]\nname = \"e\"\n[admin]\nlisten = \"localhost\"\n", "admin.listen", "\"localhost\" is not an IP address and port"),
            ("[endpoint]\nname = \"e\"\n[gpu]\nprocess_interval_ms = 999\n", "gpu.process_interval_ms", "allowed: 1000 or more"),
            ("[endpoint]\nname = \"e\"\n[gpu]\ndimension_name = \"\"\n", "gpu.dimension_name", "1 to 255"),
            ("[endpoint]\nname = \"e\"\n[self_metrics]\nnamespace = \"AWS/Agent\"\n", "self_metrics.namespace", "reserves"),
            ("[endpoint]\nname = \"e\"\n[cost]\ninstance_hourly_price_usd = 0.0\n", "cost.instance_hourly_price_usd", "above 0"),
            ("[endpoint]\nname = \"e\"\n[cost]\ninstance_hourly_price_usd = -1.5\n", "cost.instance_hourly_price_usd", "above 0"),
            ("[endpoint]\nname = \"e\"\n[cost]\ninstance_hourly_price_usd = nan\n", "cost.instance_hourly_price_usd", "finite"),
            ("[endpoint]\nname = \"e\"\n[cost]\ninstance_hourly_price_usd = inf\n", "cost.instance_hourly_price_usd", "finite"),
            ("[endpoint]\nname = \"e\"\n[cost]\ninstance_hourly_price_usd = \"5\"\n", "cost.instance_hourly_price_usd", "invalid type"),
            ("[endpoint]\nname = \"e\"\n[cost]\ngpus_per_instance = 0\n", "cost.gpus_per_instance", "allowed: 1 to 64"),
            ("[endpoint]\nname = \"e\"\n[cost]\ngpus_per_instance = 65\n", "cost.gpus_per_instance", "allowed: 1 to 64"),
            ("[endpoint]\nname = \"e\"\n[cost]\nprice = 1.0\n", "cost.price", "unknown field"),
            ("[endpoint]\nname = \"e\"\n[proxy]\nnamespace = \"AWS/SageMaker\"\n", "proxy.namespace", "reserves"),
            ("[endpoint]\nname = \"e\"\n[proxy]\nlisten = \"8080\"\n", "proxy.listen", "not an IP address and port"),
            ("[endpoint]\nname = \"e\"\n[proxy]\ninstance_count = 0\n", "proxy.instance_count", "1 or more"),
            ("[endpoint]\nname = \"e\"\n[proxy]\nworker_threads = 0\n", "proxy.worker_threads", "1 to 64"),
            ("[endpoint]\nname = \"e\"\n[proxy]\nmax_connections = 0\n", "proxy.max_connections", "1 to 60000"),
            ("[endpoint]\nname = \"e\"\n[proxy]\nidle_timeout_ms = 0\n", "proxy.idle_timeout_ms", "1 or more"),
            ("[endpoint]\nname = \"e\"\n[proxy]\nsend_timeout_ms = 0\n", "proxy.send_timeout_ms", "1 or more"),
            ("[endpoint]\nname = \"e\"\n[proxy]\ndrain_timeout_ms = 40001\n", "proxy.drain_timeout_ms", "0 to 40000"),
            ("[endpoint]\nname = \"e\"\n[[proxy.upstream]]\ncomponent = \"a\"\nurl = \"https://x:1\"\n", "proxy.upstream[0].url", "not plain http"),
            ("[endpoint]\nname = \"e\"\n[[proxy.upstream]]\ncomponent = \"a\"\nurl = \"http://x:1\"\n[[proxy.upstream]]\ncomponent = \" \"\nurl = \"http://x:2\"\n", "proxy.upstream[1].component", "1 to 1024 characters"),
            ("[endpoint]\nname = \"e\"\n[scrape]\nport = 0\n", "scrape.port", "1 to 65535"),
            ("[endpoint]\nname = \"e\"\n[scrape]\npath = \"metrics\"\n", "scrape.path", "start with"),
            ("[endpoint]\nname = \"e\"\n[scrape]\ninterval_seconds = 61\n", "scrape.interval_seconds", "allowed: 1 to 60"),
            ("[endpoint]\nname = \"e\"\n[scrape]\ninterval_seconds = 0\n", "scrape.interval_seconds", "allowed: 1 to 60"),
            ("[endpoint]\nname = \"e\"\n[scrape]\ntimeout_ms = 10000\n", "scrape.timeout_ms", "under the interval"),
            ("[endpoint]\nname = \"e\"\n[scrape]\nmax_bytes = 0\n", "scrape.max_bytes", "1 or more"),
            ("[endpoint]\nname = \"e\"\n[scrape]\nevery = 5\n", "scrape.every", "unknown field"),
            ("[endpoint]\nname = \"e\"\n[[scrape.target]]\ncomponent = \"a\"\nurl = \"https://x:1/metrics\"\n", "scrape.target[0].url", "not plain http"),
            ("[endpoint]\nname = \"e\"\n[[scrape.target]]\ncomponent = \"a\"\nurl = \"http://x/metrics\"\n", "scrape.target[0].url", "names no port"),
            ("[endpoint]\nname = \"e\"\n[[scrape.target]]\ncomponent = \" \"\nurl = \"http://x:1\"\n", "scrape.target[0].component", "1 to 1024 characters"),
        ];
        for (text, key, reason) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.key, key, "{text}");
            assert!(e.reason.contains(reason), "{key}: `{reason}` in {e}");
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
            (t[0].url.authority(), t[0].url.path()),
            ("10.0.0.9:8000", "/metrics")
        );
        assert_eq!(
            (t[1].url.authority(), t[1].url.path()),
            ("h:9", "/stats/prom")
        );
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
        assert!(c.publishes_through_spool());
        assert_eq!(c.output.spool_max_bytes, DEFAULT_SPOOL_MAX_BYTES);
        assert_eq!(c.output.retry_max_seconds, 30);
        let c = parse("[endpoint]\nname = \"e\"\n[output]\nemf_destination = \"cloudwatch_logs\"\nspool_max_bytes = 4194304\n").unwrap();
        assert!(c.publishes_through_spool());
        assert_eq!(c.cloudwatch_log_group(), "/endpoint-metrics-agent/e");
        assert!(!parse("[endpoint]\nname = \"e\"\n")
            .unwrap()
            .publishes_through_spool());
    }

    #[test]
    fn the_example_file_is_valid() {
        let c = parse(include_str!("../../agent.toml.example")).unwrap();
        assert_eq!(c.output.spool_max_bytes, DEFAULT_SPOOL_MAX_BYTES);
    }

    #[test]
    fn names_that_cloudwatch_refuses_or_that_could_forge_log_lines_are_refused() {
        let long = "v".repeat(2000);
        let cases = [
            (format!("[endpoint]\nname = \"e\"\nvariant = \"{long}\"\n"), "endpoint.variant", "1 to 1024 characters (it has 2000)"),
            ("[endpoint]\nname = \"e\\u001b[31m\"\n".into(), "endpoint.name", "'\\u{1b}' is not allowed"),
            ("[endpoint]\nname = \"e\\r\\nfake log line\"\n".into(), "endpoint.name", "'\\r' is not allowed"),
            ("[endpoint]\nname = \"e\"\nvariant = \"caf\u{e9}\"\n".into(), "endpoint.variant", "printable ASCII"),
            ("[endpoint]\nname = \"e\"\ninstance_id = \"i-\u{e9}\"\n".into(), "endpoint.instance_id", "printable ASCII"),
            ("[endpoint]\nname = \"e\"\ninstance_type = \"ml.g6\\n\"\n".into(), "endpoint.instance_type", "no control characters"),
            ("[endpoint]\nname = \"e\"\n[docker]\ncomponent_label = \"a\\u001bb\"\n".into(), "docker.component_label", "no control characters"),
            ("[endpoint]\nname = \"e\"\n[[proxy.upstream]]\ncomponent = \"m\u{f6}del\"\nurl = \"http://x:1\"\n".into(), "proxy.upstream[0].component", "printable ASCII"),
            ("[endpoint]\nname = \"e\"\n[gpu]\ndimension_name = \":Gpu\"\n".into(), "gpu.dimension_name", "not starting with ':'"),
        ];
        for (text, key, reason) in cases {
            let e = parse(&text).unwrap_err();
            assert_eq!(e.key, key, "{text}");
            assert!(e.reason.contains(reason), "{key}: `{reason}` in {e}");
        }
        let ok = format!(
            "[endpoint]\nname = \"e\"\nvariant = \"{}\"\n",
            "v".repeat(1024)
        );
        assert_eq!(parse(&ok).unwrap().endpoint.variant.len(), 1024);
    }

    #[test]
    fn a_fifo_a_device_a_folder_or_a_huge_file_as_the_config_is_refused_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("agent.toml");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        // No writer: a blocking open would wait for ever.
        let e = Config::load(&fifo).unwrap_err();
        assert!(e.reason.contains("not a regular file (a FIFO)"), "{e}");
        let e = Config::load(Path::new("/dev/zero")).unwrap_err();
        assert!(e.reason.contains("(a character device)"), "{e}");
        let e = Config::load(dir.path()).unwrap_err();
        assert!(
            e.reason.contains("(a folder)") || e.reason.contains("cannot read"),
            "{e}"
        );

        let big = dir.path().join("big.toml");
        let mut text = "[endpoint]\nname = \"e\"\n".to_string();
        text.push_str(&"# padding\n".repeat((MAX_CONFIG_FILE_BYTES / 10) as usize + 1));
        std::fs::write(&big, &text).unwrap();
        let e = Config::load(&big).unwrap_err();
        assert!(e.reason.contains("larger than 1048576 bytes"), "{e}");

        let binary = dir.path().join("bin.toml");
        std::fs::write(&binary, b"[endpoint]\nname = \"\xff\"\n").unwrap();
        let e = Config::load(&binary).unwrap_err();
        assert!(e.reason.contains("not UTF-8 (byte 19)"), "{e}");

        // A link to a regular file is followed (configuration management links files).
        let real = dir.path().join("real.toml");
        std::fs::write(&real, "[endpoint]\nname = \"e\"\n").unwrap();
        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert_eq!(Config::load(&link).unwrap().endpoint.name, "e");
    }

    #[test]
    fn missing_file_is_a_config_error() {
        let e = Config::load(Path::new("/nonexistent/agent.toml")).unwrap_err();
        assert!(e.reason.contains("cannot read"));
    }
}

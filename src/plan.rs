//! `plan`: what a configuration will publish from a host of a given shape, and what CloudWatch
//! will charge for it per month.
//!
//! Pure: it builds the window the agent would close (every series the collectors emit, each with
//! a full window of distinct samples, the largest case), runs the real encoders over it, and
//! counts series, requests and bytes. Prices are the us-east-1 list prices from
//! `../shared/docs/metrics-spec.md`.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use crate::aggregate::{Aggregator, DataPoints, Window};
use crate::catalog::{Identity, Metric, Sample, Scope};
use crate::config::{Config, EmfDestination, InstanceIdSetting, OutputFormat};
use crate::encode::limits::{EMF_MAX_DOCUMENT_BYTES, LOGS_EVENT_OVERHEAD_BYTES};
use crate::encode::{emf, groups, otlp, put_metric_data, EncodeContext, MetricGroup};
use crate::sinks::cloudwatch_logs;
use crate::sinks::spool::LogEvent;

/// Custom metrics, per metric-month, by tier (spec: "$0.30 per metric-month for the first 10,000
/// (then $0.10, $0.05, $0.02)"); tier bounds from the CloudWatch pricing page: the next 240,000,
/// the next 750,000, then everything over 1,000,000.
pub const METRIC_PRICE_TIERS: [(u64, f64); 4] = [
    (10_000, 0.30),
    (250_000, 0.10),
    (1_000_000, 0.05),
    (u64::MAX, 0.02),
];
/// API requests (PutMetricData): $0.01 per 1,000 (spec).
pub const PRICE_PER_1000_REQUESTS: f64 = 0.01;
/// Log ingestion: about $0.50 per GB (spec). PutLogEvents calls are not billed per call.
pub const PRICE_PER_GB_INGESTED: f64 = 0.50;
/// OpenTelemetry metrics through CloudWatch's OTLP endpoint are billed per GB ingested, "each
/// OTLP data point contributes its serialized size ... metric name, all labels, resource
/// attributes, timestamp and value" (CloudWatch, "OTel metrics pricing and storage"), with no
/// per-metric or per-request charge. The dollar figure per GB was not in any source this project
/// could reach (the pricing page's OTel row): this is an ASSUMPTION, CloudWatch Logs' standard
/// ingestion price, until someone checks <https://aws.amazon.com/cloudwatch/pricing/>.
/// `plan --otlp-price-per-gb` overrides it.
pub const ASSUMED_OTEL_PRICE_PER_GB_INGESTED: f64 = 0.50;
/// A month for billing: 30 days.
pub const SECONDS_PER_MONTH: u64 = 30 * 24 * 3600;
/// An `InstanceId` of the usual length, when the configuration says "auto".
const PLACEHOLDER_INSTANCE_ID: &str = "i-0123456789abcdef0";

/// What the host has: the inputs discovery provides (or `plan --gpus/--containers` overrides).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostShape {
    pub gpus: u32,
    /// Model copies (containers of inference components).
    pub containers: u32,
    /// Inference components; the containers are spread over them.
    pub components: u32,
}

/// Which series the collectors (and the front door) emit for a scope.
fn metrics_of(scope: &Scope) -> &'static [Metric] {
    use Metric::*;
    match scope {
        Scope::Instance => &[
            CpuUtilization,
            CpuUtilizationNormalized,
            MemoryUtilization,
            DiskUtilization,
        ],
        Scope::Gpu { .. } => &[GpuUtilization, GpuMemoryUtilization],
        // Which health series exist is configuration: see `health_metrics`.
        Scope::GpuHealth { .. } => &[],
        Scope::MigInstance { .. } => &[GpuSmActive, GpuDramActive],
        Scope::Container { .. } => &[CpuUtilizationNormalized, MemoryUtilizationNormalized],
        Scope::ContainerGpu { .. } => &[GpuUtilizationNormalized, GpuMemoryUtilizationNormalized],
        Scope::Agent => &Metric::AGENT,
        Scope::Component { .. } => &crate::cost::COMPONENT_METRICS,
        Scope::Invocations => &crate::proxy::account::INSTANCE_METRICS,
        Scope::EndpointInvocations => &crate::proxy::account::ENDPOINT_METRICS,
        Scope::ComponentInvocations { .. } => &crate::proxy::account::COMPONENT_METRICS,
        Scope::CopyInvocations { .. } => &crate::proxy::account::COPY_METRICS,
    }
}

/// The front door's series: the instance, the endpoint-only ones, each component, each copy
/// (static upstreams are not counted). Their window is the same as the rest here, which
/// overstates EMF bytes without enhanced metrics (they then keep 60 s windows); their values
/// grow with traffic up to `EMF_MAX_VALUES_PER_SERIES` per window in EMF (not modelled here).
fn invocation_scopes(shape: &HostShape, components: u32, scopes: &mut Vec<(Scope, Vec<Metric>)>) {
    for s in [Scope::Invocations, Scope::EndpointInvocations] {
        let metrics = metrics_of(&s).to_vec();
        scopes.push((s, metrics));
    }
    for c in 0..components.min(shape.containers) {
        let s = Scope::ComponentInvocations {
            component: format!("component-{c}").into(),
        };
        scopes.push((s.clone(), metrics_of(&s).to_vec()));
    }
    for c in 0..shape.containers {
        let s = Scope::CopyInvocations {
            component: format!("component-{}", c % components).into(),
            container_id: format!("{:012x}", 0xa0000 + c).into(),
        };
        scopes.push((s.clone(), metrics_of(&s).to_vec()));
    }
}

/// GPU use by processes in no known model copy, per GPU and for the instance (`attribution`).
const UNATTRIBUTED_GPU_METRICS: &[Metric] = &[
    Metric::GpuUtilizationUnattributed,
    Metric::GpuMemoryUtilizationUnattributed,
];

const INSTANCE_GPU_METRICS: &[Metric] = &[
    Metric::GpuUtilization,
    Metric::GpuMemoryUtilization,
    Metric::GpuUtilizationNormalized,
    Metric::GpuMemoryUtilizationNormalized,
];
const INSTANCE_RESERVATION_METRICS: &[Metric] = &[
    Metric::CpuReservation,
    Metric::GpuReservation,
    Metric::MemoryReservation,
];
const CONTAINER_GPU_METRICS: &[Metric] = &[
    Metric::GpuUtilizationNormalized,
    Metric::GpuMemoryUtilizationNormalized,
];

/// The health series each GPU publishes with this configuration (`[gpu] health`), whether or
/// not enhanced metrics are on. MIG instances' GPM series are not counted (`plan` has no MIG
/// shape): 2 more per GPU instance.
fn health_metrics(config: &Config) -> Vec<Metric> {
    if !config.gpu.enabled {
        return Vec::new();
    }
    config
        .gpu
        .health
        .iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .flat_map(|&group| {
            crate::collectors::gpu::health_metrics(group)
                .iter()
                .copied()
        })
        .collect()
}

/// One billed metric: namespace, name and dimension values.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Series {
    pub namespace: String,
    pub metric: String,
    pub dimensions: Vec<(String, String)>,
}

/// The estimate.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub shape: HostShape,
    pub output: String,
    pub publish_frequency_seconds: u64,
    pub series: Vec<Series>,
    pub windows_per_month: u64,
    /// PutMetricData requests, or PutLogEvents calls, per window (0 when the agent does not call
    /// CloudWatch itself).
    pub requests_per_window: u64,
    /// EMF bytes per window as CloudWatch Logs counts them (0 for PutMetricData).
    pub log_bytes_per_window: u64,
    /// USD per month for the custom metrics (the series), under the tiered price.
    pub metrics_charge: f64,
    /// USD per month for PutMetricData requests.
    pub requests_charge: f64,
    /// USD per month for CloudWatch Logs ingestion (EMF through `cloudwatch_logs`).
    pub ingestion_charge: f64,
    /// `[metrics] data_points` in force.
    pub data_points: DataPoints,
    /// Data points (values x dimension sets) per window.
    pub points_per_window: u64,
    /// The same host under the other `data_points` setting, for comparison.
    pub other: OtherShape,
    /// The classic output (the configured one, or PutMetricData when OTLP is configured) and
    /// OTLP, side by side.
    pub classic: ClassicBill,
    pub otlp: OtlpBill,
}

/// What the classic CloudWatch output costs per month for this host.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassicBill {
    pub output: String,
    pub metrics_charge: f64,
    pub requests_charge: f64,
    pub ingestion_charge: f64,
}

impl ClassicBill {
    pub fn total(&self) -> f64 {
        self.metrics_charge + self.requests_charge + self.ingestion_charge
    }
}

/// What OTLP to CloudWatch costs per month for this host.
#[derive(Clone, Debug, PartialEq)]
pub struct OtlpBill {
    /// Requests per window (protobuf bodies within `otlp::MAX_REQUEST_BYTES`).
    pub requests_per_window: u64,
    /// Data points per window.
    pub points_per_window: u64,
    /// Bytes sent per window: the protobuf bodies before and after gzip.
    pub body_bytes_per_window: u64,
    pub gzip_bytes_per_window: u64,
    /// Billable bytes per window: each point's serialized size with its metric name and its
    /// resource's attributes.
    pub billable_bytes_per_window: u64,
    pub price_per_gb: f64,
    pub ingestion_charge: f64,
}

/// What the other `[metrics] data_points` setting would send per window (same series).
#[derive(Clone, Debug, PartialEq)]
pub struct OtherShape {
    pub data_points: DataPoints,
    /// Data points (values x dimension sets) per window.
    pub points_per_window: u64,
    pub requests_per_window: u64,
    pub log_bytes_per_window: u64,
}

impl Plan {
    pub fn requests_per_month(&self) -> u64 {
        self.requests_per_window * self.windows_per_month
    }

    /// The estimated CloudWatch bill per month, USD, for the configured output.
    pub fn monthly_bill(&self) -> f64 {
        if self.output == "otlp" {
            self.otlp.ingestion_charge
        } else {
            self.metrics_charge + self.requests_charge + self.ingestion_charge
        }
    }
}

/// The OTLP requests of one window, measured as CloudWatch bills them.
fn otlp_volume(
    window: &Window,
    ctx: &EncodeContext,
    windows_per_month: u64,
    price_per_gb: f64,
) -> OtlpBill {
    use prost::Message as _;
    let mut built = Vec::new();
    let resource = otlp::resource(ctx, ctx.instance_type.as_deref());
    otlp::build(window, ctx, &resource, &mut built);
    let sent: Vec<otlp::Request> = built.iter().filter_map(otlp::compress).collect();
    let mut bill = OtlpBill {
        requests_per_window: sent.len() as u64,
        points_per_window: sent.iter().map(|r| r.points).sum(),
        body_bytes_per_window: built.iter().map(|r| r.encoded_len() as u64).sum(),
        gzip_bytes_per_window: sent.iter().map(|r| r.body.len() as u64).sum(),
        billable_bytes_per_window: built.iter().map(otlp::billable_bytes).sum(),
        price_per_gb,
        ingestion_charge: 0.0,
    };
    bill.ingestion_charge =
        (bill.billable_bytes_per_window * windows_per_month) as f64 / 1e9 * price_per_gb;
    bill
}

/// The window the agent would close on a host of this shape: every series with a full window of
/// distinct values.
pub fn full_window(config: &Config, shape: &HostShape) -> Window {
    let m = &config.metrics;
    let samples = (m.publish_frequency_seconds * 1000 / m.sample_interval_ms).max(1);
    let mut scopes: Vec<(Scope, Vec<Metric>)> =
        vec![(Scope::Instance, metrics_of(&Scope::Instance).to_vec())];
    let unattributed = config.docker.enabled && shape.gpus > 0;
    if shape.gpus > 0 {
        scopes.push((Scope::Instance, INSTANCE_GPU_METRICS.to_vec()));
        if unattributed {
            scopes.push((Scope::Instance, UNATTRIBUTED_GPU_METRICS.to_vec()));
        }
        for index in 0..shape.gpus {
            let s = Scope::Gpu { index };
            let mut metrics = metrics_of(&s).to_vec();
            if unattributed {
                metrics.extend_from_slice(UNATTRIBUTED_GPU_METRICS);
            }
            scopes.push((s, metrics));
        }
        let health = health_metrics(config);
        if !health.is_empty() {
            for index in 0..shape.gpus {
                scopes.push((Scope::GpuHealth { index }, health.clone()));
            }
        }
    }
    if config.self_metrics.enabled {
        scopes.push((Scope::Agent, metrics_of(&Scope::Agent).to_vec()));
    }
    if shape.containers > 0 {
        scopes.push((Scope::Instance, INSTANCE_RESERVATION_METRICS.to_vec()));
    }
    // Cost per model, when the configuration prices the instance: per component and instance.
    let priced =
        crate::cost::instance_price(config).is_ok_and(|p| p.gpus.unwrap_or(shape.gpus) > 0);
    if priced {
        scopes.push((Scope::Instance, crate::cost::INSTANCE_METRICS.to_vec()));
        for c in 0..shape
            .components
            .clamp(1, shape.containers.max(1))
            .min(shape.containers)
        {
            let s = Scope::Component {
                component: format!("component-{c}").into(),
            };
            scopes.push((s.clone(), metrics_of(&s).to_vec()));
        }
    }
    let components = shape.components.clamp(1, shape.containers.max(1));
    let per_container = shape
        .gpus
        .checked_div(shape.containers)
        .map_or(0, |n| n.max(u32::from(shape.gpus > 0)));
    for c in 0..shape.containers {
        let component: Arc<str> = format!("component-{}", c % components).into();
        let container_id: Arc<str> = format!("{:012x}", 0xa0000 + c).into();
        let s = Scope::Container {
            component: component.clone(),
            container_id: container_id.clone(),
        };
        let mut metrics = metrics_of(&s).to_vec();
        if per_container > 0 {
            metrics.extend_from_slice(CONTAINER_GPU_METRICS);
        }
        scopes.push((s, metrics));
        for g in 0..per_container {
            let s = Scope::ContainerGpu {
                component: component.clone(),
                container_id: container_id.clone(),
                gpu_index: (c * per_container + g) % shape.gpus,
            };
            scopes.push((s.clone(), metrics_of(&s).to_vec()));
        }
    }
    if config.proxy.enabled {
        invocation_scopes(shape, components, &mut scopes);
    }
    // What the model servers know, per copy and per static target. (Lifecycle series are
    // published only on a start, restart, exit or OOM kill, and not counted here.)
    if config.scrape.enabled {
        for scope in scopes
            .iter_mut()
            .filter(|(s, _)| matches!(s, Scope::Container { .. }))
        {
            scope.1.extend_from_slice(&Metric::SCRAPED);
        }
        for target in &config.scrape.target {
            let s = Scope::Container {
                component: target.component.as_str().into(),
                container_id: target.url.authority().into(),
            };
            scopes.push((s, Metric::SCRAPED.to_vec()));
        }
    }
    let mut aggregator = Aggregator::new(m.data_points);
    for (scope, metrics) in scopes {
        for metric in metrics {
            for i in 0..samples {
                // Distinct values with many digits: the largest encoding.
                let value = 12.345_678_901_234 + i as f64 * 0.001_234_567;
                let _ = aggregator.record(Sample::new(scope.clone(), metric, value));
            }
        }
    }
    aggregator.flush(0, m.publish_frequency_seconds)
}

fn context(config: &Config) -> EncodeContext {
    let instance_id = match &config.endpoint.instance_id {
        InstanceIdSetting::Auto => PLACEHOLDER_INSTANCE_ID.to_string(),
        InstanceIdSetting::Given(id) => id.clone(),
    };
    let identity = Identity {
        endpoint_name: config.endpoint.name.clone(),
        variant_name: config.endpoint.variant.clone(),
        instance_id,
    };
    crate::pipeline::encode_context(config, identity)
}

/// The monthly charge for `n` custom metrics under the tiered price.
pub fn metrics_charge(n: u64) -> f64 {
    let mut charge = 0.0;
    let mut below = 0u64;
    for (upto, price) in METRIC_PRICE_TIERS {
        let in_tier = n.min(upto).saturating_sub(below);
        charge += in_tier as f64 * price;
        below = upto;
        if n <= upto {
            break;
        }
    }
    charge
}

impl HostShape {
    /// The shape of what the agent's own sources found on this host now.
    pub fn found(snapshot: &crate::sources::Snapshot) -> HostShape {
        let copies = snapshot.inventory.containers.values();
        HostShape {
            gpus: snapshot.devices.len() as u32,
            containers: snapshot.inventory.containers.len() as u32,
            components: copies
                .map(|c| c.component.clone())
                .collect::<BTreeSet<_>>()
                .len() as u32,
        }
    }
}

/// Data points one window of `groups` publishes: each series' values, under each dimension set.
fn data_points(groups: &[MetricGroup<'_>]) -> u64 {
    groups
        .iter()
        .map(|g| {
            let values: u64 = g.metrics.iter().map(|m| m.stats.count).sum();
            values * g.dimension_sets.len() as u64
        })
        .sum()
}

/// What one window of `groups` costs to send under `config`'s output: (a description, requests
/// or PutLogEvents calls per window, EMF bytes per window).
fn volume(config: &Config, groups: &[MetricGroup<'_>], ctx: &EncodeContext) -> (String, u64, u64) {
    match config.output.format {
        // OTLP is measured by `otlp_volume`; its classic counterpart is PutMetricData.
        OutputFormat::PutMetricData | OutputFormat::Otlp => {
            let mut requests = Vec::new();
            put_metric_data::encode(groups, 0, ctx.storage_resolution, &mut requests);
            ("put_metric_data".to_string(), requests.len() as u64, 0)
        }
        OutputFormat::Emf => {
            let mut docs = Vec::new();
            emf::encode(
                groups,
                0,
                ctx.storage_resolution,
                ctx.log_group.as_deref(),
                EMF_MAX_DOCUMENT_BYTES,
                &mut docs,
            );
            let bytes: usize = docs
                .iter()
                .map(|d| d.len() + LOGS_EVENT_OVERHEAD_BYTES)
                .sum();
            let calls = if config.output.emf_destination == EmfDestination::CloudWatchLogs {
                let events = docs
                    .into_iter()
                    .map(|message| LogEvent {
                        timestamp_ms: 0,
                        message,
                    })
                    .collect();
                cloudwatch_logs::batches(events).0.len() as u64
            } else {
                0
            };
            (
                format!("emf to {}", config.output.emf_destination),
                calls,
                bytes as u64,
            )
        }
    }
}

/// What `config` publishes from a host of `shape`, and its monthly cost (OTLP at the assumed
/// price per GB).
pub fn plan(config: &Config, shape: &HostShape) -> Plan {
    plan_priced(config, shape, ASSUMED_OTEL_PRICE_PER_GB_INGESTED)
}

/// [`plan`] with OTLP ingestion at `otel_price_per_gb` USD per GB.
pub fn plan_priced(config: &Config, shape: &HostShape, otel_price_per_gb: f64) -> Plan {
    let ctx = context(config);
    let window = full_window(config, shape);
    let groups = groups(&window, &ctx);
    let mut series = BTreeSet::new();
    for g in &groups {
        for set in &g.dimension_sets {
            let dimensions: Vec<(String, String)> = set
                .iter()
                .filter_map(|n| g.dimensions.iter().find(|(d, _)| d == n))
                .map(|(n, v)| (n.to_string(), v.clone()))
                .collect();
            for metric in &g.metrics {
                series.insert(Series {
                    namespace: g.namespace.to_string(),
                    metric: metric.name.to_string(),
                    dimensions: dimensions.clone(),
                });
            }
        }
    }
    let period = config.metrics.publish_frequency_seconds;
    let windows_per_month = SECONDS_PER_MONTH / period;
    let (output, requests_per_window, log_bytes_per_window) = volume(config, &groups, &ctx);
    let other = {
        let mut other = config.clone();
        other.metrics.data_points = match config.metrics.data_points {
            DataPoints::Period => DataPoints::EverySample,
            DataPoints::EverySample => DataPoints::Period,
        };
        let window = full_window(&other, shape);
        let other_groups = crate::encode::groups(&window, &ctx);
        let (_, requests, bytes) = volume(&other, &other_groups, &ctx);
        OtherShape {
            data_points: other.metrics.data_points,
            points_per_window: data_points(&other_groups),
            requests_per_window: requests,
            log_bytes_per_window: bytes,
        }
    };
    let requests_per_month = requests_per_window * windows_per_month;
    let requests_charge = if matches!(
        config.output.format,
        OutputFormat::PutMetricData | OutputFormat::Otlp
    ) {
        requests_per_month as f64 / 1000.0 * PRICE_PER_1000_REQUESTS
    } else {
        0.0
    };
    let ingestion_charge =
        (log_bytes_per_window * windows_per_month) as f64 / 1e9 * PRICE_PER_GB_INGESTED;
    let otlp = otlp_volume(&window, &ctx, windows_per_month, otel_price_per_gb);
    let metrics_charge = metrics_charge(series.len() as u64);
    let classic = ClassicBill {
        output: output.clone(),
        metrics_charge,
        requests_charge,
        ingestion_charge,
    };
    let output = if config.output.format == OutputFormat::Otlp {
        "otlp".to_string()
    } else {
        output
    };
    Plan {
        shape: *shape,
        output,
        classic,
        otlp,
        publish_frequency_seconds: period,
        metrics_charge,
        series: series.into_iter().collect(),
        windows_per_month,
        requests_per_window,
        log_bytes_per_window,
        requests_charge,
        ingestion_charge,
        data_points: config.metrics.data_points,
        points_per_window: data_points(&groups),
        other,
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.shape;
        writeln!(
            f,
            "host: {} GPUs, {} containers in {} components; output {}; every {} s",
            s.gpus, s.containers, s.components, self.output, self.publish_frequency_seconds
        )?;
        writeln!(f, "\nmetric series ({}):", self.series.len())?;
        // One line per namespace x metric x dimension names, with how many value combinations.
        let mut lines: Vec<(String, String, String, usize)> = Vec::new();
        for series in &self.series {
            let names = series
                .dimensions
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(",");
            match lines
                .iter_mut()
                .find(|l| l.0 == series.namespace && l.1 == series.metric && l.2 == names)
            {
                Some(l) => l.3 += 1,
                None => lines.push((series.namespace.clone(), series.metric.clone(), names, 1)),
            }
        }
        for (namespace, metric, dims, n) in lines {
            writeln!(f, "  {namespace}  {metric}  {{{dims}}}  x{n}")?;
        }
        writeln!(f)?;
        writeln!(f, "windows per month:        {}", self.windows_per_month)?;
        if self.requests_per_window > 0 {
            writeln!(f, "requests per window:      {}", self.requests_per_window)?;
            writeln!(f, "requests per month:       {}", self.requests_per_month())?;
        }
        if self.log_bytes_per_window > 0 {
            writeln!(f, "EMF bytes per window:     {}", self.log_bytes_per_window)?;
            writeln!(
                f,
                "EMF GB per month:         {:.3}",
                (self.log_bytes_per_window * self.windows_per_month) as f64 / 1e9
            )?;
        }
        let o = &self.other;
        writeln!(
            f,
            "data points per window:   {} ({})",
            self.points_per_window,
            describe_data_points(self.data_points)
        )?;
        writeln!(
            f,
            "  with {}: {} data points, {} requests and {} EMF bytes per window",
            o.data_points.as_str(),
            o.points_per_window,
            o.requests_per_window,
            o.log_bytes_per_window
        )?;
        writeln!(
            f,
            "\nestimated CloudWatch bill per month (us-east-1 list prices):"
        )?;
        writeln!(
            f,
            "  custom metrics (tiered from $0.30) ${:>9.2}  ({} series)",
            self.metrics_charge,
            self.series.len()
        )?;
        writeln!(
            f,
            "  API requests ($0.01 per 1,000)     ${:>9.2}",
            self.requests_charge
        )?;
        writeln!(
            f,
            "  log ingestion ($0.50 per GB)       ${:>9.2}",
            self.ingestion_charge
        )?;
        writeln!(
            f,
            "  total                              ${:>9.2}",
            self.classic.total()
        )?;
        let c = &self.classic;
        let o = &self.otlp;
        let gb = |bytes: u64| (bytes * self.windows_per_month) as f64 / 1e9;
        writeln!(
            f,
            "\nthe same host, both outputs per month (us-east-1; OTLP at ${:.2} per GB, ASSUMED: see `plan --help`):",
            o.price_per_gb
        )?;
        writeln!(
            f,
            "  {:<34} {:>22} {:>22}",
            "",
            format!("classic ({})", c.output),
            "otlp"
        )?;
        writeln!(
            f,
            "  {:<34} {:>22} {:>22}",
            "data points per window", self.points_per_window, o.points_per_window
        )?;
        writeln!(
            f,
            "  {:<34} {:>22} {:>22}",
            "requests per window", self.requests_per_window, o.requests_per_window
        )?;
        writeln!(
            f,
            "  {:<34} {:>22} {:>22}",
            "EMF or OTLP bytes per window",
            self.log_bytes_per_window,
            format!(
                "{} ({} gzip)",
                o.body_bytes_per_window, o.gzip_bytes_per_window
            )
        )?;
        writeln!(
            f,
            "  {:<34} {:>22} {:>22}",
            "billed GB per month",
            format!("{:.3}", gb(self.log_bytes_per_window)),
            format!("{:.3}", gb(o.billable_bytes_per_window))
        )?;
        writeln!(
            f,
            "  {:<34} {:>22} {:>22}",
            "custom metrics",
            format!("${:.2}", c.metrics_charge),
            "$0.00"
        )?;
        writeln!(
            f,
            "  {:<34} {:>22} {:>22}",
            "API requests",
            format!("${:.2}", c.requests_charge),
            "$0.00"
        )?;
        writeln!(
            f,
            "  {:<34} {:>22} {:>22}",
            "ingestion",
            format!("${:.2}", c.ingestion_charge),
            format!("${:.2}", o.ingestion_charge)
        )?;
        writeln!(
            f,
            "  {:<34} {:>22} {:>22}",
            "total",
            format!("${:.2}", c.total()),
            format!("${:.2}", o.ingestion_charge)
        )
    }
}

fn describe_data_points(d: DataPoints) -> &'static str {
    match d {
        DataPoints::Period => "period: one per series, SageMaker's shape",
        DataPoints::EverySample => "every_sample: one per sample",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(extra: &str) -> Config {
        Config::parse(
            &format!(
                "[endpoint]\nname = \"my-endpoint\"\ninstance_id = \"i-0123456789abcdef0\"\n{extra}"
            ),
            Path::new("t.toml"),
        )
        .unwrap()
    }

    const EIGHT_GPUS: HostShape = HostShape {
        gpus: 8,
        containers: 4,
        components: 2,
    };

    #[test]
    fn both_outputs_are_priced_side_by_side_from_the_encoded_otlp_requests() {
        let classic = plan(
            &config("[output]\nformat = \"put_metric_data\"\n"),
            &EIGHT_GPUS,
        );
        let otlp = plan_priced(
            &config("[output]\nformat = \"otlp\"\n[output.otlp]\nendpoint = \"http://127.0.0.1:4318/v1/metrics\"\n"),
            &EIGHT_GPUS,
            0.25,
        );
        // The same series either way; OTLP bills bytes, not series or requests.
        assert_eq!(classic.series.len(), otlp.series.len());
        assert_eq!(otlp.output, "otlp");
        let o = &otlp.otlp;
        assert!(
            o.points_per_window > 0 && o.requests_per_window >= 1,
            "{o:?}"
        );
        assert!(o.gzip_bytes_per_window < o.body_bytes_per_window);
        // Each point carries its metric name and its resource's attributes.
        assert!(
            o.billable_bytes_per_window > o.body_bytes_per_window,
            "{o:?}"
        );
        let expected = (o.billable_bytes_per_window * otlp.windows_per_month) as f64 / 1e9 * 0.25;
        assert!((o.ingestion_charge - expected).abs() < 1e-12);
        assert_eq!(otlp.monthly_bill(), o.ingestion_charge);
        // The classic side of an OTLP plan is PutMetricData's bill for the same host.
        assert_eq!(otlp.classic.metrics_charge, classic.metrics_charge);
        assert_eq!(otlp.classic.requests_charge, classic.requests_charge);
        let text = otlp.to_string();
        assert!(text.contains("both outputs per month"), "{text}");
        assert!(text.contains("ASSUMED"), "{text}");
    }

    #[test]
    fn the_front_door_adds_its_invocation_series() {
        let shape = HostShape {
            gpus: 0,
            containers: 2,
            components: 1,
        };
        let without = plan(&config(""), &shape).series.len();
        let with = plan(&config("[proxy]\nenabled = true\n"), &shape).series;
        let invocations: Vec<&Series> = with
            .iter()
            .filter(|s| s.namespace == "/aws/sagemaker/Invocations")
            .collect();
        // Instance: 7 metrics under {EndpointName, VariantName}; 5 more under that set only
        // (concurrency, streaming); the component's 3; and, shared by both copies (same
        // {InferenceComponentName}), the 6 per-copy metrics.
        assert_eq!(invocations.len(), 7 + 5 + 3 + 6, "{invocations:?}");
        assert_eq!(with.len(), without + invocations.len());
    }

    #[test]
    fn gpu_health_series_are_counted_per_gpu_with_or_without_enhanced_metrics() {
        let shape = HostShape {
            gpus: 8,
            containers: 0,
            components: 0,
        };
        let none = plan(&config("[gpu]\nhealth = []\n"), &shape).series.len();
        // Defaults: temperature 2, power 3, throttle 4, ECC 7, XID 1, GPM 2 = 19 per GPU.
        let defaults = plan(&config(""), &shape);
        assert_eq!(defaults.series.len(), none + 19 * 8, "{defaults}");
        let temp: Vec<&Series> = defaults
            .series
            .iter()
            .filter(|s| s.metric == "DCGM_FI_DEV_GPU_TEMP")
            .collect();
        assert_eq!(temp.len(), 8);
        assert!(temp.iter().all(|s| s.dimensions.len() == 4), "{temp:?}");
        let all = "[gpu]\nhealth = [\"temperature\", \"power\", \"clocks\", \"throttle\", \"memory\", \"ecc\", \"xid\", \"gpm\", \"xid\"]\n";
        let every = plan(
            &config(&format!("[metrics]\nenhanced = true\n{all}")),
            &shape,
        );
        let enhanced_none = plan(
            &config("[metrics]\nenhanced = true\n[gpu]\nhealth = []\n"),
            &shape,
        );
        assert_eq!(
            every.series.len(),
            enhanced_none.series.len() + 24 * 8,
            "a group named twice counts once"
        );
        let off = plan(&config("[gpu]\nenabled = false\n"), &shape);
        assert!(off.series.iter().all(|s| !s.metric.starts_with("DCGM_")));
    }

    #[test]
    fn scraping_adds_eight_series_per_copy_and_static_target() {
        let shape = HostShape {
            gpus: 0,
            containers: 2,
            components: 1,
        };
        let base = "[metrics]\nenhanced = true\n";
        let without = plan(&config(base), &shape).series.len();
        let scrape = format!(
            "{base}[scrape]\nenabled = true\n[[scrape.target]]\ncomponent = \"s\"\nurl = \"http://10.0.0.9:8000/metrics\"\n"
        );
        let with = plan(&config(&scrape), &shape).series;
        let ttft = with.iter().filter(|s| s.metric == "TTFT").count();
        // Per copy (2 + the static target) and per component (component-0 and s).
        assert_eq!(ttft, 3 + 2, "{with:?}");
        assert_eq!(with.len(), without + 8 * (3 + 2));
    }

    #[test]
    fn tiers_add_up() {
        assert_eq!(metrics_charge(0), 0.0);
        assert!((metrics_charge(100) - 30.0).abs() < 1e-9);
        assert!((metrics_charge(10_001) - 3000.10).abs() < 1e-6);
    }

    #[test]
    fn bare_host_without_enhanced_metrics_publishes_four_series() {
        let p = plan(
            &config(""),
            &HostShape {
                gpus: 0,
                containers: 0,
                components: 0,
            },
        );
        assert_eq!(p.series.len(), 4);
        assert!(p.series.iter().all(|s| s.dimensions.len() == 2));
        assert!((p.metrics_charge - 1.20).abs() < 1e-9);
        assert_eq!(
            p.requests_per_window, 0,
            "EMF to stdout: the agent calls nothing"
        );
        assert!(p.log_bytes_per_window > 0);
    }

    #[test]
    fn eight_gpus_four_containers_enhanced_put_metric_data_at_10_s() {
        let c = config(
            "[metrics]\nenhanced = true\npublish_frequency_seconds = 10\n[output]\nformat = \"put_metric_data\"\n[gpu]\nhealth = []\n",
        );
        let p = plan(&c, &EIGHT_GPUS);
        // Instance: (4 host + 4 GPU + 3 reservation + 2 unattributed) x 2 sets = 26; per GPU:
        // (2 + 2 unattributed) x 8 = 32; containers: 2 components x 4 metrics
        // ({InferenceComponentName}) + 4 containers x 4 metrics (enhanced set) = 24; per
        // container GPU: 4 x 2 GPUs x 2 = 16, and as many {InferenceComponentName,GpuId} = 16
        // (each GPU is held by one copy).
        assert_eq!(p.series.len(), 26 + 32 + 24 + 16 + 16, "{p}");
        assert_eq!(p.windows_per_month, 259_200);
        assert_eq!(p.requests_per_window, 2, "one per namespace: {p}");
        assert!((p.requests_charge - 5.184).abs() < 1e-9);
        assert!((p.metrics_charge - 114.0 * 0.30).abs() < 1e-9);
        let text = p.to_string();
        assert!(
            text.contains("GPUUtilization  {EndpointName,VariantName,InstanceId,GpuId}  x8"),
            "{text}"
        );
    }

    #[test]
    fn plan_shows_what_every_sample_would_send_beside_the_default_shape() {
        let c = config("[metrics]\nenhanced = true\npublish_frequency_seconds = 60\n");
        let p = plan(&c, &EIGHT_GPUS);
        assert_eq!(p.data_points, DataPoints::Period);
        assert_eq!(p.other.data_points, DataPoints::EverySample);
        // 60 values a series instead of one: several times the bytes (names and dimensions are
        // the same), the same series.
        assert!(
            p.other.log_bytes_per_window > 3 * p.log_bytes_per_window,
            "{p}"
        );
        let text = p.to_string();
        assert!(text.contains("data points per window:   "), "{text}");
        assert!(text.contains("with every_sample: "), "{text}");
        // 114 series and 19 default GPU health series x 8 GPUs, one point each, and the second
        // copy of each component adds a point to its {InferenceComponentName} series (2 x 4
        // metrics); every_sample: 60 times that.
        let points = 114 + 19 * 8 + 8;
        assert_eq!(p.points_per_window, points);
        assert_eq!(p.other.points_per_window, points * 60);
        let every = config("[metrics]\nenhanced = true\ndata_points = \"every_sample\"\n");
        let q = plan(&every, &EIGHT_GPUS);
        assert_eq!(q.log_bytes_per_window, p.other.log_bytes_per_window);
        assert_eq!(q.series.len(), p.series.len());
    }

    #[test]
    fn a_priced_instance_adds_the_cost_series() {
        let c = config(
            "instance_type = \"ml.g5.48xlarge\"\n[metrics]\nenhanced = true\npublish_frequency_seconds = 10\n[output]\nformat = \"put_metric_data\"\n[gpu]\nhealth = []\n",
        );
        let p = plan(&c, &EIGHT_GPUS);
        // 3 instance cost metrics x 2 sets; 2 components x 4 metrics x 2 sets.
        assert_eq!(p.series.len(), 114 + 6 + 16, "{p}");
        let text = p.to_string();
        assert!(
            text.contains(
                "CostAccrued  {EndpointName,VariantName,InstanceId,InferenceComponentName}  x2"
            ),
            "{text}"
        );
    }

    #[test]
    fn emf_through_cloudwatch_logs_is_billed_for_ingestion_not_requests() {
        let c =
            config("[metrics]\nenhanced = true\n[output]\nemf_destination = \"cloudwatch_logs\"\n");
        let p = plan(&c, &EIGHT_GPUS);
        assert_eq!(p.requests_charge, 0.0);
        assert!(p.requests_per_window >= 1);
        assert!(p.ingestion_charge > 0.0);
    }
}

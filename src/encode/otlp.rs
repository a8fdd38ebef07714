//! OTLP: a closed window as OpenTelemetry metrics (an `ExportMetricsServiceRequest` from the
//! official protobuf definitions, `opentelemetry-proto`), named and labelled as SageMaker AI's
//! detailed observability publishes them to CloudWatch.
//!
//! Names: OpenTelemetry has no dimension sets, so each granularity has its own name, as in
//! SageMaker's "Metric name mapping: legacy to OTel": the classic name at endpoint level
//! (`Invocations`), then `ByInstanceId`, `ByContainerId`, `By<GpuId>` for each finer dimension, and
//! `ForIc` for every series of a component (`InvocationsForIc`,
//! `InvocationsForIcByInstanceIdByContainerId`) unless its name already ends in `PerCopy`, so no
//! name holds series of two granularities. DCGM names stay as they are
//! (their labels carry the GPU), the per-GPU `GPUUtilization` is `DCGM_FI_DEV_GPU_UTIL`, the
//! model-server metrics per component end in `PerIC` (`TTFTPerIC`, `KVCachePerIC`), and the
//! agent's own metrics keep their names. See [`otel_name`].
//!
//! Labels: SageMaker's (`aws.sagemaker.endpoint.name`, `aws.sagemaker.variant.name`,
//! `aws.sagemaker.inference_component.name`, `aws.sagemaker.container.id`), dcgm-exporter's `gpu`
//! (the NVML index) and `GPU_I_ID`; the instance is the resource's `host.id`.
//!
//! Types ([`kind`]): utilization, temperatures and other levels are gauges (the period's value);
//! what accrues or is counted per request is a delta, monotonic sum over the window; latencies
//! and durations are explicit-bucket histograms with exact count, sum, min and max. Explicit
//! buckets rather than exponential ones: every OTLP backend takes them (CloudWatch's OTLP
//! endpoint, Prometheus without native histograms, Mimir, VictoriaMetrics), and the agent knows
//! each value exactly, so count, sum, min and max stay exact and only percentiles are bucketed.

use std::collections::BTreeMap;
use std::io::Write as _;

use flate2::write::GzEncoder;
use flate2::Compression;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Gauge, Histogram, HistogramDataPoint,
    Metric as OtelMetric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;
use serde::{Deserialize, Serialize};

use super::EncodeContext;
use crate::aggregate::{Stats, Window};
use crate::catalog::{Dim, Metric, Namespace, PeriodValue, Scope, Unit};

/// The largest request body before gzip. CloudWatch's OTLP endpoints reject requests over 5 MB
/// uncompressed ("OTLP Endpoints", endpoint limits); 1 MiB keeps each retry and spool file small.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// Labels on one data point, its resource's included: CloudWatch's OpenTelemetry metrics take
/// "up to 150 labels per data point" ("CloudWatch OpenTelemetry Metrics"). The agent's points
/// carry at most 5 attributes and 5 resource attributes; a test holds the catalog to it.
pub const MAX_LABELS_PER_POINT: usize = 150;

/// What one request adds around its metrics (resource, scope, field tags), at most.
const REQUEST_OVERHEAD_BYTES: usize = 4 * 1024;

/// The instrumentation scope of every metric.
const SCOPE_NAME: &str = "endpoint-metrics-agent";

/// Histogram bucket bounds (upper, inclusive) for latencies in microseconds: 100 us to 60 s in
/// 1-2.5-5 steps.
const MICROSECOND_BOUNDS: &[f64] = &[
    100.0,
    250.0,
    500.0,
    1_000.0,
    2_500.0,
    5_000.0,
    10_000.0,
    25_000.0,
    50_000.0,
    100_000.0,
    250_000.0,
    500_000.0,
    1_000_000.0,
    2_500_000.0,
    5_000_000.0,
    10_000_000.0,
    30_000_000.0,
    60_000_000.0,
];

/// Histogram bucket bounds for durations in seconds (a copy's start: seconds to an hour).
const SECOND_BOUNDS: &[f64] = &[
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1_200.0, 1_800.0, 3_600.0,
];

/// One OTLP/HTTP request: the gzip-compressed protobuf body, as sent and as spooled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// `ExportMetricsServiceRequest`, protobuf, gzip.
    #[serde(with = "base64_bytes")]
    pub body: Vec<u8>,
    /// Data points in it (for the counters).
    pub points: u64,
}

/// Bytes as base64 in the spool's JSON (a JSON array of numbers would take four times the room).
mod base64_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <&str>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

/// How a metric is published over OTLP.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A level: the period's mean (its one value with `data_points = "period"`).
    Gauge,
    /// A level whose period value is the largest (counters read from the device, the throttle
    /// mask, the most requests in flight).
    GaugeMax,
    /// Counted or accrued over the window: a delta, monotonic sum.
    DeltaSum,
    /// One value per request or start: an explicit-bucket histogram.
    Histogram,
}

/// The OTLP type of each metric. Per-request metrics are decided one by one (a latency is a
/// histogram, a count a sum); the rest follow their period value.
pub fn kind(metric: Metric) -> Kind {
    match metric {
        Metric::ModelLatency
        | Metric::OverheadLatency
        | Metric::FirstChunkLatency
        | Metric::FirstChunkModelLatency
        | Metric::FirstChunkOverheadLatency
        | Metric::Ttft
        | Metric::InterTokenLatency
        | Metric::ContainerStartDuration
        | Metric::ColdStartDuration => Kind::Histogram,
        Metric::ConcurrentRequestsPerModel | Metric::ConcurrentRequestsPerCopy => Kind::GaugeMax,
        Metric::Invocations
        | Metric::Invocation4xxErrors
        | Metric::Invocation5xxErrors
        | Metric::InvocationModelErrors
        | Metric::InvocationsPerInstance
        | Metric::InvocationsPerCopy
        | Metric::NoCapacityInvocationFailures
        | Metric::MidStreamErrors => Kind::DeltaSum,
        other => match other.period_value() {
            PeriodValue::Mean => Kind::Gauge,
            PeriodValue::Max => Kind::GaugeMax,
            PeriodValue::Sum | PeriodValue::Each => Kind::DeltaSum,
        },
    }
}

/// The UCUM unit OpenTelemetry expects.
fn ucum(unit: Unit) -> &'static str {
    match unit {
        Unit::Percent => "%",
        Unit::Count | Unit::None => "1",
        Unit::Microseconds => "us",
        Unit::Bytes => "By",
        Unit::Megabytes => "MiBy",
        Unit::Seconds => "s",
        Unit::CountPerSecond => "1/s",
    }
}

/// The model server's metrics: per component they end in `PerIC`.
fn per_ic_name(metric: Metric) -> Option<&'static str> {
    match metric {
        Metric::Ttft => Some("TTFTPerIC"),
        Metric::InterTokenLatency => Some("InterTokenLatencyPerIC"),
        Metric::KvCacheUtilization => Some("KVCachePerIC"),
        Metric::QueueDepth => Some("QueueDepthPerIC"),
        Metric::BatchSize => Some("BatchSizePerIC"),
        Metric::InputTokensPerSecond => Some("InputTokensPerSecondPerIC"),
        Metric::OutputTokensPerSecond => Some("OutputTokensPerSecondPerIC"),
        Metric::TotalTps => Some("TotalTPSPerIC"),
        _ => None,
    }
}

/// The OpenTelemetry name of `metric` published under `set` (see the module documentation).
pub fn otel_name(metric: Metric, scope: &Scope, set: &[Dim], gpu_dimension_name: &str) -> String {
    let base = metric.name();
    if scope.namespace() == Namespace::Agent || base.starts_with("DCGM_") {
        return base.to_string();
    }
    let has = |d: Dim| set.contains(&d);
    if metric == Metric::GpuUtilization && has(Dim::Gpu) && !has(Dim::InferenceComponentName) {
        return "DCGM_FI_DEV_GPU_UTIL".to_string();
    }
    let mut name = String::with_capacity(base.len() + 40);
    match per_ic_name(metric) {
        Some(per_ic) if has(Dim::InferenceComponentName) => name.push_str(per_ic),
        _ => {
            name.push_str(base);
            // Per component, as SageMaker's `InvocationsForIc`, unless the name already says so
            // (`ConcurrentRequestsPerCopy` keeps its name in SageMaker's table). Without it a
            // component's `CPUUtilizationNormalized` would share its name with the instance's.
            if has(Dim::InferenceComponentName) && !base.ends_with("PerCopy") {
                name.push_str("ForIc");
            }
        }
    }
    if has(Dim::InstanceId) {
        name.push_str("ByInstanceId");
    }
    if has(Dim::ContainerId) {
        name.push_str("ByContainerId");
    }
    if has(Dim::Gpu) {
        name.push_str("By");
        name.push_str(gpu_dimension_name);
    }
    if has(Dim::GpuInstanceId) {
        name.push_str("ByGpuInstanceId");
    }
    name
}

/// The data point label of one dimension; the instance is the resource's `host.id`.
fn label(dim: Dim, scope: &Scope, ctx: &EncodeContext) -> Option<(&'static str, String)> {
    let (key, value) = match dim {
        Dim::EndpointName => (
            "aws.sagemaker.endpoint.name",
            ctx.identity.endpoint_name.clone(),
        ),
        Dim::VariantName => (
            "aws.sagemaker.variant.name",
            ctx.identity.variant_name.clone(),
        ),
        Dim::InstanceId => return None,
        Dim::InferenceComponentName => (
            "aws.sagemaker.inference_component.name",
            scope.dimension_value(dim)?,
        ),
        Dim::ContainerId => ("aws.sagemaker.container.id", scope.dimension_value(dim)?),
        Dim::Gpu => ("gpu", gpu_index(scope)?.to_string()),
        Dim::GpuInstanceId => ("GPU_I_ID", scope.dimension_value(dim)?),
    };
    Some((key, value))
}

fn gpu_index(scope: &Scope) -> Option<u32> {
    match scope {
        Scope::Gpu { index } | Scope::GpuHealth { index } => Some(*index),
        Scope::MigInstance { gpu_index, .. } | Scope::ContainerGpu { gpu_index, .. } => {
            Some(*gpu_index)
        }
        _ => None,
    }
}

fn string_kv(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
        ..Default::default()
    }
}

/// The resource every request describes: this agent on this instance.
pub fn resource(ctx: &EncodeContext, instance_type: Option<&str>) -> Resource {
    let mut attributes = vec![
        string_kv("service.name", SCOPE_NAME.to_string()),
        string_kv("service.version", env!("CARGO_PKG_VERSION").to_string()),
        string_kv("cloud.provider", "aws".to_string()),
        string_kv("host.id", ctx.identity.instance_id.clone()),
    ];
    if let Some(t) = instance_type {
        attributes.push(string_kv("host.type", t.to_string()));
    }
    Resource {
        attributes,
        ..Default::default()
    }
}

/// What the encoder left out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Data points with more labels than [`MAX_LABELS_PER_POINT`] or larger alone than a request.
    pub points_skipped: u64,
}

/// Labels of one data point, in the order of its dimension set.
type Labels = Vec<(&'static str, String)>;

/// Encodes a window as gzip-compressed OTLP requests of at most [`MAX_REQUEST_BYTES`] each
/// (before gzip).
///
/// Series that meet under one name and one set of labels are merged into one point first, as
/// CloudWatch aggregates classic data points of one dimension set: two copies of a component
/// under `{InferenceComponentName}` give one gauge point with their mean, one sum with their
/// total, one histogram with all their requests. OTLP has no statistic sets: two points of one
/// series at one time would be a conflict, not a sample count.
pub fn encode(
    window: &Window,
    ctx: &EncodeContext,
    resource: &Resource,
    out: &mut Vec<Request>,
) -> Report {
    let mut built = Vec::new();
    let mut report = build(window, ctx, resource, &mut built);
    for request in &built {
        match compress(request) {
            Some(r) => out.push(r),
            None => report.points_skipped += request_points(request),
        }
    }
    report
}

/// A built request as sent and spooled: protobuf, gzip. None only if memory ran out.
pub fn compress(request: &ExportMetricsServiceRequest) -> Option<Request> {
    let body = gzip(&request.encode_to_vec()).ok()?;
    Some(Request {
        body,
        points: request_points(request),
    })
}

/// [`encode`] before protobuf and gzip: the requests as messages (`plan` measures them).
pub fn build(
    window: &Window,
    ctx: &EncodeContext,
    resource: &Resource,
    out: &mut Vec<ExportMetricsServiceRequest>,
) -> Report {
    let mut report = Report::default();
    let start_ns = window.start_ms.saturating_mul(1_000_000);
    let end_ns = window
        .start_ms
        .saturating_add(window.period_seconds.saturating_mul(1000))
        .saturating_mul(1_000_000);
    let resource_labels = resource.attributes.len();
    let mut series: BTreeMap<String, (Metric, BTreeMap<Labels, Stats>)> = BTreeMap::new();
    for (key, stats) in &window.series {
        for set in key.scope.dimension_sets(ctx.enhanced) {
            let labels: Labels = set
                .iter()
                .filter_map(|d| label(*d, &key.scope, ctx))
                .collect();
            if labels.len() + resource_labels > MAX_LABELS_PER_POINT {
                report.points_skipped += 1;
                continue;
            }
            let name = otel_name(key.metric, &key.scope, set, &ctx.gpu_dimension_name);
            let (metric, points) = series
                .entry(name)
                .or_insert_with(|| (key.metric, BTreeMap::new()));
            if kind(*metric) != kind(key.metric) {
                // Two metrics of different kinds under one name: `names_have_one_kind` rules it
                // out; counted if it ever happens.
                report.points_skipped += 1;
                continue;
            }
            match points.get_mut(&labels) {
                Some(merged) => merged.merge(stats),
                None => {
                    points.insert(labels, stats.clone());
                }
            }
        }
    }
    let metrics = series.into_iter().map(|(name, (metric, points))| {
        let mut data = empty_data(kind(metric));
        for (labels, stats) in points {
            let attributes = labels.into_iter().map(|(k, v)| string_kv(k, v)).collect();
            add_point(&mut data, metric, &stats, attributes, start_ns, end_ns);
        }
        OtelMetric {
            name,
            unit: ucum(metric.unit()).to_string(),
            data: Some(data),
            ..Default::default()
        }
    });
    pack(metrics, resource, out, &mut report);
    report
}

fn empty_data(kind: Kind) -> metric::Data {
    match kind {
        Kind::Gauge | Kind::GaugeMax => metric::Data::Gauge(Gauge::default()),
        Kind::DeltaSum => metric::Data::Sum(Sum {
            data_points: Vec::new(),
            aggregation_temporality: AggregationTemporality::Delta as i32,
            is_monotonic: true,
        }),
        Kind::Histogram => metric::Data::Histogram(Histogram {
            data_points: Vec::new(),
            aggregation_temporality: AggregationTemporality::Delta as i32,
        }),
    }
}

fn add_point(
    data: &mut metric::Data,
    metric: Metric,
    stats: &Stats,
    attributes: Vec<KeyValue>,
    start_time_unix_nano: u64,
    time_unix_nano: u64,
) {
    let number = |attributes: Vec<KeyValue>, value: f64| NumberDataPoint {
        attributes,
        start_time_unix_nano,
        time_unix_nano,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..Default::default()
    };
    match data {
        metric::Data::Gauge(g) => {
            let value = if kind(metric) == Kind::GaugeMax {
                stats.max
            } else {
                stats.mean()
            };
            g.data_points.push(number(attributes, value));
        }
        metric::Data::Sum(s) => s.data_points.push(number(attributes, stats.sum)),
        metric::Data::Histogram(h) => h.data_points.push(histogram_point(
            metric,
            stats,
            attributes,
            start_time_unix_nano,
            time_unix_nano,
        )),
        // `empty_data` builds only the three kinds above.
        _ => {}
    }
}

fn histogram_point(
    metric: Metric,
    stats: &Stats,
    attributes: Vec<KeyValue>,
    start_time_unix_nano: u64,
    time_unix_nano: u64,
) -> HistogramDataPoint {
    let bounds = match metric.unit() {
        Unit::Seconds => SECOND_BOUNDS,
        _ => MICROSECOND_BOUNDS,
    };
    let mut bucket_counts = vec![0u64; bounds.len() + 1];
    let mut count = 0u64;
    if stats.distribution.is_empty() {
        // Totals only (cannot happen for per-request series, which keep every value): all in
        // the bucket of the mean, so count and sum stay exact.
        bucket_counts[bucket_of(bounds, stats.mean())] = stats.count;
        count = stats.count;
    } else {
        for &(value, n) in &stats.distribution {
            bucket_counts[bucket_of(bounds, value)] += u64::from(n);
            count += u64::from(n);
        }
    }
    HistogramDataPoint {
        attributes,
        start_time_unix_nano,
        time_unix_nano,
        count,
        sum: Some(stats.sum),
        bucket_counts,
        explicit_bounds: bounds.to_vec(),
        min: Some(stats.min),
        max: Some(stats.max),
        ..Default::default()
    }
}

/// The bucket of `value`: the first whose upper bound is at or above it (OTLP's buckets are
/// `(bounds[i-1], bounds[i]]`), the last past every bound.
fn bucket_of(bounds: &[f64], value: f64) -> usize {
    bounds.partition_point(|b| *b < value)
}

/// Packs metrics into requests within [`MAX_REQUEST_BYTES`], splitting a metric's points across
/// requests when it alone is too large.
fn pack(
    metrics: impl Iterator<Item = OtelMetric>,
    resource: &Resource,
    out: &mut Vec<ExportMetricsServiceRequest>,
    report: &mut Report,
) {
    let budget = MAX_REQUEST_BYTES - REQUEST_OVERHEAD_BYTES;
    let mut current: Vec<OtelMetric> = Vec::new();
    let mut current_bytes = 0usize;
    for metric in metrics {
        for part in split(metric, budget, report) {
            let bytes = part.encoded_len() + 8;
            if current_bytes + bytes > budget && !current.is_empty() {
                out.push(request(std::mem::take(&mut current), resource));
                current_bytes = 0;
            }
            current_bytes += bytes;
            current.push(part);
        }
    }
    if !current.is_empty() {
        out.push(request(current, resource));
    }
}

/// A metric as parts of at most `budget` bytes each.
fn split(metric: OtelMetric, budget: usize, report: &mut Report) -> Vec<OtelMetric> {
    if metric.encoded_len() <= budget {
        return vec![metric];
    }
    let header = OtelMetric {
        data: None,
        ..metric.clone()
    };
    let base = header.encoded_len() + 16;
    let mut parts = Vec::new();
    macro_rules! split_points {
        ($points:expr, $wrap:expr) => {{
            let mut chunk = Vec::new();
            let mut bytes = base;
            for p in $points {
                let len = p.encoded_len() + 8;
                if base + len > budget {
                    report.points_skipped += 1;
                    continue;
                }
                if bytes + len > budget && !chunk.is_empty() {
                    parts.push(OtelMetric {
                        data: Some($wrap(std::mem::take(&mut chunk))),
                        ..header.clone()
                    });
                    bytes = base;
                }
                bytes += len;
                chunk.push(p);
            }
            if !chunk.is_empty() {
                parts.push(OtelMetric {
                    data: Some($wrap(chunk)),
                    ..header.clone()
                });
            }
        }};
    }
    match metric.data {
        Some(metric::Data::Gauge(g)) => split_points!(g.data_points, |data_points| {
            metric::Data::Gauge(Gauge { data_points })
        }),
        Some(metric::Data::Sum(s)) => {
            let (temporality, monotonic) = (s.aggregation_temporality, s.is_monotonic);
            split_points!(s.data_points, |data_points| metric::Data::Sum(Sum {
                data_points,
                aggregation_temporality: temporality,
                is_monotonic: monotonic,
            }))
        }
        Some(metric::Data::Histogram(h)) => {
            let temporality = h.aggregation_temporality;
            split_points!(h.data_points, |data_points| metric::Data::Histogram(
                Histogram {
                    data_points,
                    aggregation_temporality: temporality,
                }
            ))
        }
        // The encoder builds only the three kinds above.
        _ => report.points_skipped += 1,
    }
    parts
}

fn request(metrics: Vec<OtelMetric>, resource: &Resource) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource.clone()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: SCOPE_NAME.to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn metrics_of(request: &ExportMetricsServiceRequest) -> impl Iterator<Item = &OtelMetric> {
    request
        .resource_metrics
        .iter()
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
}

fn request_points(request: &ExportMetricsServiceRequest) -> u64 {
    metrics_of(request).map(point_count).sum()
}

/// The bytes CloudWatch bills for a request: "each OTLP data point contributes its serialized
/// size": the point (labels, timestamps, value), its metric's name and its resource's attributes.
pub fn billable_bytes(request: &ExportMetricsServiceRequest) -> u64 {
    let mut bytes = 0u64;
    for rm in &request.resource_metrics {
        let resource = rm.resource.as_ref().map_or(0, |r| r.encoded_len()) as u64;
        for metric in rm.scope_metrics.iter().flat_map(|sm| &sm.metrics) {
            let per_point = metric.name.len() as u64 + resource;
            let points: Vec<usize> = match &metric.data {
                Some(metric::Data::Gauge(g)) => {
                    g.data_points.iter().map(|p| p.encoded_len()).collect()
                }
                Some(metric::Data::Sum(s)) => {
                    s.data_points.iter().map(|p| p.encoded_len()).collect()
                }
                Some(metric::Data::Histogram(h)) => {
                    h.data_points.iter().map(|p| p.encoded_len()).collect()
                }
                _ => Vec::new(),
            };
            bytes += points.iter().map(|&n| n as u64 + per_point).sum::<u64>();
        }
    }
    bytes
}

fn point_count(metric: &OtelMetric) -> u64 {
    let n = match &metric.data {
        Some(metric::Data::Gauge(g)) => g.data_points.len(),
        Some(metric::Data::Sum(s)) => s.data_points.len(),
        Some(metric::Data::Histogram(h)) => h.data_points.len(),
        _ => 0,
    };
    n as u64
}

/// gzip of `bytes` (into memory: only an allocation failure could stop it).
fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(bytes.len() / 4), Compression::fast());
    encoder.write_all(bytes)?;
    encoder.finish()
}

/// The uncompressed protobuf of a request body (tests).
pub fn gunzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(MAX_REQUEST_BYTES as u64 + 1)
        .read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests;

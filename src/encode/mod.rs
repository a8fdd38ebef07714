//! Encoders: a closed window to CloudWatch's wire forms, within every limit (`limits`).

pub mod emf;
pub mod limits;
pub mod otlp;
pub mod put_metric_data;

use crate::aggregate::{Stats, Window};
use crate::catalog::{Identity, Namespace, Scope};

/// What the encoders need besides the window: who is publishing and how.
#[derive(Clone, Debug)]
pub struct EncodeContext {
    pub identity: Identity,
    pub enhanced: bool,
    pub endpoints_namespace: String,
    pub components_namespace: String,
    /// `[self_metrics] namespace`: where `Scope::Agent` series go.
    pub self_metrics_namespace: String,
    /// `[proxy] namespace`: where invocation series go.
    pub invocations_namespace: String,
    pub gpu_dimension_name: String,
    pub storage_resolution: u32,
    /// `_aws.LogGroupName`, for the CloudWatch agent's listener.
    pub log_group: Option<String>,
    /// `[endpoint] instance_type`: the OTLP resource's `host.type`.
    pub instance_type: Option<String>,
}

/// A closed window in the configured wire form: what the pipeline hands the sink.
#[derive(Clone, Debug, PartialEq)]
pub enum Encoded {
    /// EMF documents (one per line / log event), for the EMF writer or CloudWatch Logs.
    Emf {
        window_start_ms: u64,
        documents: Vec<String>,
    },
    /// PutMetricData requests, each within every request limit.
    PutMetricData {
        window_start_ms: u64,
        requests: Vec<put_metric_data::Request>,
    },
    /// OTLP/HTTP requests (protobuf, gzip), each within [`otlp::MAX_REQUEST_BYTES`].
    Otlp {
        window_start_ms: u64,
        requests: Vec<otlp::Request>,
    },
}

/// Which wire form the sink takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Emf { max_document_bytes: usize },
    PutMetricData,
    Otlp,
}

/// Encodes a window as PutMetricData requests, counting (and logging) what the limits left out.
pub fn put_metric_data_counted(
    window: &Window,
    ctx: &EncodeContext,
) -> Vec<put_metric_data::Request> {
    use crate::telemetry::{warn, Counter};
    let mut requests = Vec::new();
    let report = put_metric_data::encode(
        &groups(window, ctx),
        window.start_ms,
        ctx.storage_resolution,
        &mut requests,
    );
    warn(
        Counter::PmdGroupsSkipped,
        report.groups_skipped,
        "PutMetricData dimensions outside the limits",
    );
    warn(
        Counter::PmdMetricsSkipped,
        report.metrics_skipped,
        "PutMetricData metric name outside the limits",
    );
    warn(
        Counter::PmdValuesSkipped,
        report.values_skipped,
        "PutMetricData value outside +-2^360",
    );
    warn(
        Counter::PmdDatumsSkipped,
        report.datums_skipped,
        "PutMetricData statistic set outside +-2^360",
    );
    requests
}

/// [`otlp::encode`] of a whole window, counting and logging what the limits left out.
pub fn otlp_counted(window: &Window, ctx: &EncodeContext) -> Vec<otlp::Request> {
    let mut requests = Vec::new();
    let resource = otlp::resource(ctx, ctx.instance_type.as_deref());
    let report = otlp::encode(window, ctx, &resource, &mut requests);
    crate::telemetry::warn(
        crate::telemetry::Counter::OtlpPointsSkipped,
        report.points_skipped,
        "OTLP data point outside the limits",
    );
    requests
}

/// [`emf::encode`] of a whole window, counting and logging what the EMF limits left out (the
/// twin of [`put_metric_data_counted`]).
pub fn emf_counted(window: &Window, ctx: &EncodeContext, max_document_bytes: usize) -> Vec<String> {
    use crate::telemetry::{warn, Counter};
    let mut documents = Vec::new();
    let report = emf::encode(
        &groups(window, ctx),
        window.start_ms,
        ctx.storage_resolution,
        ctx.log_group.as_deref(),
        max_document_bytes,
        &mut documents,
    );
    warn(
        Counter::EmfGroupsSkipped,
        report.groups_skipped,
        "EMF group outside the limits",
    );
    warn(
        Counter::EmfDimensionSetsDropped,
        report.dimension_sets_dropped,
        "EMF dimension set outside the limits",
    );
    warn(
        Counter::EmfMetricsSkipped,
        report.metrics_skipped,
        "EMF metric outside the limits",
    );
    warn(
        Counter::EmfValuesSkipped,
        report.values_skipped,
        "non-finite EMF value",
    );
    documents
}

/// One namespace and one set of dimension values, with the metrics published under them.
/// The encoders' input: generic over names so limits can be tested with any shape.
#[derive(Clone, Debug)]
pub struct MetricGroup<'a> {
    pub namespace: &'a str,
    /// Dimension name and value, each a root member of an EMF document.
    pub dimensions: Vec<(&'a str, String)>,
    /// The dimension sets (lists of dimension names) to publish under.
    pub dimension_sets: Vec<Vec<&'a str>>,
    pub metrics: Vec<GroupMetric<'a>>,
}

#[derive(Clone, Debug)]
pub struct GroupMetric<'a> {
    pub name: &'a str,
    pub unit: &'a str,
    pub stats: &'a Stats,
}

/// Groups a window's series by scope, resolving namespaces and dimensions through the catalog.
/// Series whose scope is not published with this setting are left out.
pub fn groups<'a>(window: &'a Window, ctx: &'a EncodeContext) -> Vec<MetricGroup<'a>> {
    let mut out: Vec<MetricGroup<'a>> = Vec::new();
    let mut current: Option<&Scope> = None;
    for (key, stats) in &window.series {
        let sets = key.scope.dimension_sets(ctx.enhanced);
        if sets.is_empty() {
            continue;
        }
        if current != Some(&key.scope) {
            current = Some(&key.scope);
            out.push(new_group(&key.scope, sets, ctx));
        }
        if let Some(group) = out.last_mut() {
            group.metrics.push(GroupMetric {
                name: key.metric.name(),
                unit: key.metric.unit().as_str(),
                stats,
            });
        }
    }
    out
}

fn new_group<'a>(
    scope: &Scope,
    sets: &'static [&'static [crate::catalog::Dim]],
    ctx: &'a EncodeContext,
) -> MetricGroup<'a> {
    let namespace = match scope.namespace() {
        Namespace::Endpoints => ctx.endpoints_namespace.as_str(),
        Namespace::InferenceComponents => ctx.components_namespace.as_str(),
        Namespace::Agent => ctx.self_metrics_namespace.as_str(),
        Namespace::Invocations => ctx.invocations_namespace.as_str(),
    };
    let gpu_name = ctx.gpu_dimension_name.as_str();
    let mut dimensions: Vec<(&'a str, String)> = Vec::new();
    for dim in sets.iter().flat_map(|set| set.iter()) {
        let name = dim.name(gpu_name);
        if dimensions.iter().any(|(n, _)| *n == name) {
            continue;
        }
        let value = match ctx.identity.dimension_value(*dim) {
            Some(v) => v.to_string(),
            None => scope.dimension_value(*dim).unwrap_or_default(),
        };
        dimensions.push((name, value));
    }
    let dimension_sets = sets
        .iter()
        .map(|set| set.iter().map(|d| d.name(gpu_name)).collect())
        .collect();
    MetricGroup {
        namespace,
        dimensions,
        dimension_sets,
        metrics: Vec::new(),
    }
}

/// The context unit tests encode with: endpoint "e", variant "v", instance "i-1", the default
/// namespaces, `GpuId`, high resolution.
#[cfg(test)]
pub(crate) fn test_context(enhanced: bool) -> EncodeContext {
    EncodeContext {
        identity: Identity {
            endpoint_name: "e".into(),
            variant_name: "v".into(),
            instance_id: "i-1".into(),
        },
        enhanced,
        endpoints_namespace: "/aws/sagemaker/Endpoints".into(),
        components_namespace: "/aws/sagemaker/InferenceComponents".into(),
        self_metrics_namespace: "EndpointMetricsAgent".into(),
        invocations_namespace: crate::catalog::DEFAULT_INVOCATIONS_NAMESPACE.into(),
        gpu_dimension_name: "GpuId".into(),
        storage_resolution: 1,
        log_group: None,
        instance_type: None,
    }
}

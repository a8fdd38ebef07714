//! CloudWatch and EMF limits, each with where the number comes from
//! (`../shared/docs/metrics-spec.md`, which collects the public documentation).

/// EMF specification: at most 100 metrics in one `CloudWatchMetrics` directive.
pub const EMF_MAX_METRICS_PER_DIRECTIVE: usize = 100;

/// EMF specification: at most 30 keys in one dimension set.
pub const EMF_MAX_KEYS_PER_DIMENSION_SET: usize = 30;

/// EMF specification and PutMetricData: a dimension value is 1 to 1024 characters.
pub const MAX_DIMENSION_VALUE_CHARS: usize = 1024;

/// PutMetricData: a dimension name is 1 to 255 characters (EMF keys follow the same rule).
pub const MAX_DIMENSION_NAME_CHARS: usize = 255;

/// PutMetricData and EMF: a metric name is 1 to 255 characters.
pub const MAX_METRIC_NAME_CHARS: usize = 255;

/// EMF specification: a metric member is a number or an array of at most 100 numbers.
pub const EMF_MAX_VALUES_PER_METRIC: usize = 100;

/// EMF specification: an event is at most 1 MB, older text says 256 KB; we stay under 256 KB.
pub const EMF_MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// The CloudWatch agent's UDP listener receives one document per datagram; an IPv4 UDP payload
/// is at most 65,507 bytes, so UDP documents are capped there.
pub const UDP_MAX_DOCUMENT_BYTES: usize = 65_507;

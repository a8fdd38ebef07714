//! CloudWatch and EMF limits, each with where the number comes from
//! (`../shared/docs/metrics-spec.md`, which collects the public documentation).

/// EMF specification: at most 100 metrics in one `CloudWatchMetrics` directive.
pub const EMF_MAX_METRICS_PER_DIRECTIVE: usize = 100;

/// EMF specification: at most 30 keys in one dimension set.
pub const EMF_MAX_KEYS_PER_DIMENSION_SET: usize = 30;

/// EMF specification and PutMetricData: a dimension value is 1 to 1024 characters.
pub const MAX_DIMENSION_VALUE_CHARS: usize = 1024;

/// CloudWatch (PutMetricData "Namespace"): a namespace is 1 to 255 characters.
pub const MAX_NAMESPACE_CHARS: usize = 255;

/// CloudWatch rejects custom metrics in namespaces starting with this prefix (PutMetricData
/// "Namespace": "cannot begin with AWS/").
pub const RESERVED_NAMESPACE_PREFIX: &str = "AWS/";

/// CloudWatch Logs (CreateLogGroup "logGroupName"): 1 to 512 characters.
pub const MAX_LOG_GROUP_CHARS: usize = 512;

/// CloudWatch Logs (CreateLogStream "logStreamName"): 1 to 512 characters.
pub const MAX_LOG_STREAM_CHARS: usize = 512;

/// PutMetricData: a dimension name is 1 to 255 characters (EMF keys follow the same rule).
pub const MAX_DIMENSION_NAME_CHARS: usize = 255;

/// PutMetricData and EMF: a metric name is 1 to 255 characters.
pub const MAX_METRIC_NAME_CHARS: usize = 255;

/// EMF specification: a metric member is a number or an array of at most 100 numbers.
pub const EMF_MAX_VALUES_PER_METRIC: usize = 100;

/// EMF has no value/count form: a series' samples are written one value each, so without a cap
/// its bytes grow with traffic (a 10 s window at 50,000 requests/s through the front door was
/// 47.7 MB). The agent writes at most this many values per series per window (`emf`): every
/// value up to it, so all statistics are exact; past it a fixed-size summary (see
/// `emf::window_values`). 1,000 is ten full members of [`EMF_MAX_VALUES_PER_METRIC`]; it keeps
/// percentiles to 0.1 % of rank (p99.9 still resolves) and bounds a series' members to about
/// 25 KB per window even at 24 characters a value (quantised latencies print in at most 7, 0/1
/// counts in 1). Every sample stays exact up to 100 requests/s with 10 s windows. The agent's
/// choice, not a CloudWatch limit; PutMetricData, which has counts, is never capped.
pub const EMF_MAX_VALUES_PER_SERIES: usize = 1_000;

/// EMF specification: an event is at most 1 MB, older text says 256 KB; we stay under 256 KB.
pub const EMF_MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// The CloudWatch agent's UDP listener receives one document per datagram; an IPv4 UDP payload
/// is at most 65,507 bytes, so UDP documents are capped there.
pub const UDP_MAX_DOCUMENT_BYTES: usize = 65_507;

/// PutMetricData: at most 1000 metric data in one request (CloudWatch API reference,
/// PutMetricData "MetricData": "Array Members: Maximum number of 1000 items").
pub const PMD_MAX_DATUMS_PER_REQUEST: usize = 1000;

/// PutMetricData: a request payload is at most 1 MB (API reference: "Each PutMetricData request is
/// limited to 1 MB"). Decimal megabyte, the smaller reading; the encoder measures with an
/// estimate that is never below the CBOR size (see `put_metric_data::datum_bytes`).
pub const PMD_MAX_REQUEST_BYTES: usize = 1_000_000;

/// PutMetricData: at most 30 dimensions per datum (API reference, MetricDatum "Dimensions").
pub const PMD_MAX_DIMENSIONS_PER_DATUM: usize = 30;

/// PutMetricData: `Values` and `Counts` hold at most 150 entries each, of equal length
/// (API reference, MetricDatum "Values").
pub const PMD_MAX_VALUES_PER_DATUM: usize = 150;

/// PutMetricData: values must be within -2^360..=2^360 (API reference, MetricDatum "Value").
/// `2f64.powi(360)`, written out because `powi` is not `const`; a test checks the two agree.
pub const PMD_MAX_ABS_VALUE: f64 = 2.348_542_582_773_833_2e108;

/// PutMetricData: magnitudes below 2^-360 are rejected as "too small" (API reference, MetricDatum
/// "Value"); the encoder sends them as 0, which they are for every metric the agent has.
pub const PMD_MIN_ABS_VALUE: f64 = 4.257_959_840_008_151e-109;

/// PutMetricData: timestamps may be at most two weeks old (API reference, MetricDatum
/// "Timestamp"); CloudWatch Logs rejects events older than 14 days too. Kept one hour inside the
/// limit so a batch that waits for a retry does not cross it in flight.
pub const MAX_DATA_AGE_MS: u64 = 14 * 24 * 3600 * 1000 - 3600 * 1000;

/// How many Values/Counts datums one series may take in one window before the encoder sends it as
/// a StatisticSet instead (600 distinct values): keeps a 300 s window sampled every 100 ms from
/// taking 20 datums per series. The agent's choice, not a CloudWatch limit.
pub const PMD_MAX_DISTRIBUTION_DATUMS_PER_SERIES: usize = 4;

/// CloudWatch Logs PutLogEvents: at most 10,000 events per batch (API reference, PutLogEvents).
pub const LOGS_MAX_EVENTS_PER_BATCH: usize = 10_000;

/// CloudWatch Logs PutLogEvents: at most 1,048,576 bytes per batch, counted as the UTF-8 message
/// bytes plus 26 bytes per event (API reference, PutLogEvents).
pub const LOGS_MAX_BATCH_BYTES: usize = 1_048_576;

/// CloudWatch Logs PutLogEvents: bytes counted per event on top of its message.
pub const LOGS_EVENT_OVERHEAD_BYTES: usize = 26;

/// CloudWatch Logs PutLogEvents: the events of one batch span at most 24 hours.
pub const LOGS_MAX_BATCH_SPAN_MS: u64 = 24 * 3600 * 1000;

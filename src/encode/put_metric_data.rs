//! A closed window to PutMetricData requests, within every limit in `limits`.
//!
//! Pure: the output is plain data ([`Request`]) that the CloudWatch sink turns into SDK types at
//! send time and the spool stores as JSON, so a request survives a restart unchanged.
//!
//! Each series becomes one datum per dimension set. Its samples go as `Values`/`Counts` (exact
//! percentiles), split into datums of at most 150 entries with the same timestamp, which
//! CloudWatch aggregates; past [`PMD_MAX_DISTRIBUTION_DATUMS_PER_SERIES`] datums the series goes as
//! one `StatisticValues` (sum, count, min and max stay exact). Data are packed into as few
//! requests per namespace as the datum and byte limits allow.

use serde::{Deserialize, Serialize};

use super::limits::{
    MAX_DIMENSION_NAME_CHARS, MAX_DIMENSION_VALUE_CHARS, MAX_METRIC_NAME_CHARS, PMD_MAX_ABS_VALUE,
    PMD_MAX_DATUMS_PER_REQUEST, PMD_MAX_DIMENSIONS_PER_DATUM,
    PMD_MAX_DISTRIBUTION_DATUMS_PER_SERIES, PMD_MAX_REQUEST_BYTES, PMD_MAX_VALUES_PER_DATUM,
    PMD_MIN_ABS_VALUE,
};
use super::MetricGroup;
use crate::aggregate::Stats;

/// One PutMetricData request: one namespace, at most 1000 data, under 1 MB.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub namespace: String,
    pub data: Vec<Datum>,
}

/// One `MetricDatum`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Datum {
    pub name: String,
    pub unit: String,
    pub dimensions: Vec<(String, String)>,
    /// Milliseconds since the epoch: the window's start.
    pub timestamp_ms: u64,
    pub storage_resolution: u32,
    pub values: DatumValues,
}

/// `Values`/`Counts` or `StatisticValues`; CloudWatch takes one of them per datum.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DatumValues {
    Distribution {
        values: Vec<f64>,
        counts: Vec<f64>,
    },
    Statistics {
        sample_count: f64,
        sum: f64,
        min: f64,
        max: f64,
    },
}

/// What the encoder left out, for the agent's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Groups whose dimensions break a limit (too many, or a name/value of a bad length).
    pub groups_skipped: u64,
    /// Metrics with a bad name length.
    pub metrics_skipped: u64,
    /// Values out of range, left out of a distribution.
    pub values_skipped: u64,
    /// Statistic sets out of range.
    pub datums_skipped: u64,
}

/// Request envelope bytes (protocol headers, the namespace key, map framing) on top of the
/// namespace itself. Generous: the estimate must never be below the real CBOR size.
const REQUEST_OVERHEAD_BYTES: usize = 256;
/// Per datum: map framing and the keys `MetricName`, `Unit`, `Timestamp`, `StorageResolution`,
/// `Dimensions`, `Values`/`Counts` or `StatisticValues` with their values.
const DATUM_OVERHEAD_BYTES: usize = 192;
/// Per dimension: map framing and the keys `Name`, `Value`.
const DIMENSION_OVERHEAD_BYTES: usize = 24;
/// A CBOR double is 9 bytes.
const NUMBER_BYTES: usize = 9;

/// An upper bound of a datum's encoded size.
pub fn datum_bytes(d: &Datum) -> usize {
    let dims: usize = d
        .dimensions
        .iter()
        .map(|(n, v)| DIMENSION_OVERHEAD_BYTES + n.len() + v.len())
        .sum();
    let numbers = match &d.values {
        DatumValues::Distribution { values, counts } => values.len() + counts.len(),
        DatumValues::Statistics { .. } => 4,
    };
    DATUM_OVERHEAD_BYTES + d.name.len() + d.unit.len() + dims + numbers * NUMBER_BYTES
}

/// Encodes groups into requests appended to `out`, at most [`PMD_MAX_DATUMS_PER_REQUEST`] data and
/// [`PMD_MAX_REQUEST_BYTES`] each, one namespace per request.
pub fn encode(
    groups: &[MetricGroup<'_>],
    timestamp_ms: u64,
    storage_resolution: u32,
    out: &mut Vec<Request>,
) -> Report {
    let mut report = Report::default();
    // Open request per namespace, with its estimated size.
    let mut open: Vec<(Request, usize)> = Vec::new();
    for group in groups {
        if !dimensions_valid(group) {
            report.groups_skipped += 1;
            continue;
        }
        for set in &group.dimension_sets {
            let dimensions: Vec<(String, String)> = set
                .iter()
                .filter_map(|name| {
                    group
                        .dimensions
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(n, v)| (n.to_string(), v.clone()))
                })
                .collect();
            for metric in &group.metrics {
                let chars = metric.name.chars().count();
                if chars == 0 || chars > MAX_METRIC_NAME_CHARS {
                    report.metrics_skipped += 1;
                    continue;
                }
                let datum = |values| Datum {
                    name: metric.name.to_string(),
                    unit: metric.unit.to_string(),
                    dimensions: dimensions.clone(),
                    timestamp_ms,
                    storage_resolution,
                    values,
                };
                for values in series_values(metric.stats, &mut report) {
                    push(group.namespace, datum(values), &mut open, out);
                }
            }
        }
    }
    out.extend(open.into_iter().map(|(r, _)| r));
    report
}

fn push(namespace: &str, datum: Datum, open: &mut Vec<(Request, usize)>, out: &mut Vec<Request>) {
    let bytes = datum_bytes(&datum);
    let index = match open.iter().position(|(r, _)| r.namespace == namespace) {
        Some(i) => i,
        None => {
            open.push((
                Request {
                    namespace: namespace.to_string(),
                    data: Vec::new(),
                },
                REQUEST_OVERHEAD_BYTES + namespace.len(),
            ));
            open.len() - 1
        }
    };
    let (request, size) = &mut open[index];
    let full =
        request.data.len() >= PMD_MAX_DATUMS_PER_REQUEST || *size + bytes > PMD_MAX_REQUEST_BYTES;
    if full && !request.data.is_empty() {
        let fresh = Request {
            namespace: namespace.to_string(),
            data: Vec::new(),
        };
        out.push(std::mem::replace(request, fresh));
        *size = REQUEST_OVERHEAD_BYTES + namespace.len();
    }
    *size += bytes;
    request.data.push(datum);
}

fn dimensions_valid(group: &MetricGroup<'_>) -> bool {
    let name_ok = |n: &str| (1..=MAX_DIMENSION_NAME_CHARS).contains(&n.chars().count());
    let value_ok = |v: &str| (1..=MAX_DIMENSION_VALUE_CHARS).contains(&v.chars().count());
    group.dimension_sets.iter().all(|set| {
        set.len() <= PMD_MAX_DIMENSIONS_PER_DATUM
            && set.iter().all(|name| {
                name_ok(name)
                    && group
                        .dimensions
                        .iter()
                        .find(|(n, _)| n == name)
                        .is_some_and(|(_, v)| value_ok(v))
            })
    })
}

/// A value CloudWatch accepts, or None. Magnitudes too small to be accepted are sent as 0.
fn in_range(value: f64) -> Option<f64> {
    if !value.is_finite() || value.abs() > PMD_MAX_ABS_VALUE {
        None
    } else if value.abs() < PMD_MIN_ABS_VALUE {
        Some(0.0)
    } else {
        Some(value)
    }
}

/// The datum payloads of one series: Values/Counts chunks, or one statistic set.
fn series_values(stats: &Stats, report: &mut Report) -> Vec<DatumValues> {
    let chunks = stats.distribution.len().div_ceil(PMD_MAX_VALUES_PER_DATUM);
    if chunks > PMD_MAX_DISTRIBUTION_DATUMS_PER_SERIES {
        let set = (
            in_range(stats.count as f64),
            in_range(stats.sum),
            in_range(stats.min),
            in_range(stats.max),
        );
        return match set {
            (Some(sample_count), Some(sum), Some(min), Some(max)) if sample_count > 0.0 => {
                vec![DatumValues::Statistics {
                    sample_count,
                    sum,
                    min,
                    max,
                }]
            }
            _ => {
                report.datums_skipped += 1;
                Vec::new()
            }
        };
    }
    let mut out = Vec::with_capacity(chunks);
    for chunk in stats.distribution.chunks(PMD_MAX_VALUES_PER_DATUM) {
        let mut values = Vec::with_capacity(chunk.len());
        let mut counts = Vec::with_capacity(chunk.len());
        for &(value, count) in chunk {
            match in_range(value) {
                Some(v) => {
                    values.push(v);
                    counts.push(f64::from(count));
                }
                None => report.values_skipped += u64::from(count),
            }
        }
        if !values.is_empty() {
            out.push(DatumValues::Distribution { values, counts });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::GroupMetric;

    fn stats(values: impl IntoIterator<Item = f64>) -> Stats {
        let mut it = values.into_iter();
        let first = it.next().unwrap();
        let mut s = Stats {
            min: first,
            max: first,
            sum: first,
            count: 1,
            distribution: vec![(first, 1)],
        };
        for v in it {
            s.merge(&Stats {
                min: v,
                max: v,
                sum: v,
                count: 1,
                distribution: vec![(v, 1)],
            });
        }
        s
    }

    fn group<'a>(
        namespace: &'a str,
        dims: &[(&'a str, &str)],
        metrics: Vec<GroupMetric<'a>>,
    ) -> MetricGroup<'a> {
        MetricGroup {
            namespace,
            dimensions: dims.iter().map(|(n, v)| (*n, v.to_string())).collect(),
            dimension_sets: vec![dims.iter().map(|(n, _)| *n).collect()],
            metrics,
        }
    }

    fn metric<'a>(name: &'a str, s: &'a Stats) -> GroupMetric<'a> {
        GroupMetric {
            name,
            unit: "Percent",
            stats: s,
        }
    }

    #[test]
    fn the_value_limit_is_two_to_the_360() {
        assert_eq!(PMD_MAX_ABS_VALUE, 2f64.powi(360));
        assert_eq!(PMD_MIN_ABS_VALUE, 2f64.powi(-360));
    }

    #[test]
    fn a_series_becomes_values_and_counts_per_dimension_set() {
        let s = stats([1.0, 2.0, 2.0]);
        let mut g = group("ns", &[("EndpointName", "e"), ("InstanceId", "i")], vec![]);
        g.dimension_sets = vec![vec!["EndpointName"], vec!["EndpointName", "InstanceId"]];
        g.metrics.push(metric("CPUUtilization", &s));
        let mut out = Vec::new();
        let report = encode(&[g], 60_000, 60, &mut out);
        assert_eq!(report, Report::default());
        assert_eq!(out.len(), 1);
        let data = &out[0].data;
        assert_eq!(data.len(), 2);
        assert_eq!(
            data[0].dimensions,
            vec![("EndpointName".into(), "e".into())]
        );
        assert_eq!(data[1].dimensions.len(), 2);
        assert_eq!(data[0].timestamp_ms, 60_000);
        assert_eq!(data[0].storage_resolution, 60);
        assert_eq!(
            data[0].values,
            DatumValues::Distribution {
                values: vec![1.0, 2.0],
                counts: vec![1.0, 2.0]
            }
        );
    }

    #[test]
    fn one_past_150_values_splits_into_two_datums() {
        let at = stats((0..PMD_MAX_VALUES_PER_DATUM).map(|v| v as f64));
        let past = stats((0..=PMD_MAX_VALUES_PER_DATUM).map(|v| v as f64));
        let mut out = Vec::new();
        encode(
            &[group("ns", &[("d", "v")], vec![metric("at", &at)])],
            0,
            1,
            &mut out,
        );
        assert_eq!(out[0].data.len(), 1);
        let mut out = Vec::new();
        encode(
            &[group("ns", &[("d", "v")], vec![metric("past", &past)])],
            0,
            1,
            &mut out,
        );
        let data = &out[0].data;
        assert_eq!(data.len(), 2);
        let total: f64 = data
            .iter()
            .map(|d| match &d.values {
                DatumValues::Distribution { values, counts } => {
                    assert!(values.len() <= PMD_MAX_VALUES_PER_DATUM);
                    assert_eq!(values.len(), counts.len());
                    counts.iter().sum::<f64>()
                }
                other => panic!("{other:?}"),
            })
            .sum();
        assert_eq!(total, 151.0, "every sample is sent once");
    }

    #[test]
    fn past_the_distribution_budget_a_series_goes_as_a_statistic_set() {
        let n = PMD_MAX_VALUES_PER_DATUM * PMD_MAX_DISTRIBUTION_DATUMS_PER_SERIES;
        let at = stats((0..n).map(|v| v as f64));
        let past = stats((0..=n).map(|v| v as f64));
        let mut out = Vec::new();
        encode(
            &[group("ns", &[("d", "v")], vec![metric("m", &at)])],
            0,
            1,
            &mut out,
        );
        assert_eq!(out[0].data.len(), PMD_MAX_DISTRIBUTION_DATUMS_PER_SERIES);
        let mut out = Vec::new();
        encode(
            &[group("ns", &[("d", "v")], vec![metric("m", &past)])],
            0,
            1,
            &mut out,
        );
        assert_eq!(out[0].data.len(), 1);
        assert_eq!(
            out[0].data[0].values,
            DatumValues::Statistics {
                sample_count: (n + 1) as f64,
                sum: (0..=n).sum::<usize>() as f64,
                min: 0.0,
                max: n as f64,
            }
        );
    }

    #[test]
    fn one_past_1000_datums_opens_a_second_request() {
        let s = stats([1.0]);
        let names: Vec<String> = (0..=PMD_MAX_DATUMS_PER_REQUEST)
            .map(|i| format!("m{i}"))
            .collect();
        let metrics = |n: usize| names[..n].iter().map(|name| metric(name, &s)).collect();
        let mut out = Vec::new();
        encode(
            &[group(
                "ns",
                &[("d", "v")],
                metrics(PMD_MAX_DATUMS_PER_REQUEST),
            )],
            0,
            1,
            &mut out,
        );
        assert_eq!(out.len(), 1);
        let mut out = Vec::new();
        encode(
            &[group(
                "ns",
                &[("d", "v")],
                metrics(PMD_MAX_DATUMS_PER_REQUEST + 1),
            )],
            0,
            1,
            &mut out,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].data.len(), PMD_MAX_DATUMS_PER_REQUEST);
        assert_eq!(out[1].data.len(), 1);
    }

    #[test]
    fn requests_stay_under_one_megabyte() {
        // 150 distinct values per series and long dimension values: bytes fill before datums.
        let s = stats((0..PMD_MAX_VALUES_PER_DATUM).map(|v| v as f64));
        let long = "x".repeat(MAX_DIMENSION_VALUE_CHARS);
        let dims: Vec<(&str, &str)> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|n| (*n, long.as_str()))
            .collect();
        let names: Vec<String> = (0..600).map(|i| format!("m{i}")).collect();
        let metrics = names.iter().map(|n| metric(n, &s)).collect();
        let mut out = Vec::new();
        encode(&[group("ns", &dims, metrics)], 0, 1, &mut out);
        assert!(out.len() >= 2, "{} requests", out.len());
        for r in &out {
            let size: usize = r.data.iter().map(datum_bytes).sum::<usize>()
                + REQUEST_OVERHEAD_BYTES
                + r.namespace.len();
            assert!(size <= PMD_MAX_REQUEST_BYTES, "{size}");
            // The real encoded size is below the estimate: JSON is larger than CBOR, and still fits.
            let json = serde_json::to_vec(r).unwrap();
            assert!(json.len() <= PMD_MAX_REQUEST_BYTES + 200_000);
        }
        assert_eq!(out.iter().map(|r| r.data.len()).sum::<usize>(), 600);
    }

    #[test]
    fn namespaces_never_share_a_request() {
        let s = stats([1.0]);
        let mut out = Vec::new();
        encode(
            &[
                group("a", &[("d", "v")], vec![metric("m", &s)]),
                group("b", &[("d", "v")], vec![metric("m", &s)]),
                group("a", &[("d", "w")], vec![metric("m", &s)]),
            ],
            0,
            1,
            &mut out,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].namespace, "a");
        assert_eq!(out[0].data.len(), 2);
        assert_eq!(out[1].namespace, "b");
    }

    #[test]
    fn one_past_30_dimensions_skips_the_group() {
        let s = stats([1.0]);
        let names: Vec<String> = (0..=PMD_MAX_DIMENSIONS_PER_DATUM)
            .map(|i| format!("d{i}"))
            .collect();
        let dims = |n: usize| -> Vec<(&str, &str)> {
            names[..n].iter().map(|d| (d.as_str(), "v")).collect()
        };
        let mut out = Vec::new();
        let report = encode(
            &[group(
                "ns",
                &dims(PMD_MAX_DIMENSIONS_PER_DATUM),
                vec![metric("m", &s)],
            )],
            0,
            1,
            &mut out,
        );
        assert_eq!(report.groups_skipped, 0);
        assert_eq!(
            out[0].data[0].dimensions.len(),
            PMD_MAX_DIMENSIONS_PER_DATUM
        );
        let mut out = Vec::new();
        let report = encode(
            &[group(
                "ns",
                &dims(PMD_MAX_DIMENSIONS_PER_DATUM + 1),
                vec![metric("m", &s)],
            )],
            0,
            1,
            &mut out,
        );
        assert_eq!(report.groups_skipped, 1);
        assert!(out.is_empty());
    }

    #[test]
    fn names_and_values_one_past_their_length_are_skipped() {
        let s = stats([1.0]);
        let long_metric = "m".repeat(MAX_METRIC_NAME_CHARS + 1);
        let ok_metric = "m".repeat(MAX_METRIC_NAME_CHARS);
        let mut out = Vec::new();
        let report = encode(
            &[group(
                "ns",
                &[("d", "v")],
                vec![metric(&long_metric, &s), metric(&ok_metric, &s)],
            )],
            0,
            1,
            &mut out,
        );
        assert_eq!(report.metrics_skipped, 1);
        assert_eq!(out[0].data.len(), 1);

        let long_dim = "d".repeat(MAX_DIMENSION_NAME_CHARS + 1);
        let long_value = "v".repeat(MAX_DIMENSION_VALUE_CHARS + 1);
        let ok_value = "v".repeat(MAX_DIMENSION_VALUE_CHARS);
        for (dims, skipped) in [
            (vec![(long_dim.as_str(), "v")], 1),
            (vec![("d", long_value.as_str())], 1),
            (vec![("d", "")], 1),
            (vec![("d", ok_value.as_str())], 0),
        ] {
            let mut out = Vec::new();
            let report = encode(&[group("ns", &dims, vec![metric("m", &s)])], 0, 1, &mut out);
            assert_eq!(report.groups_skipped, skipped);
            assert_eq!(out.len(), 1 - skipped as usize);
        }
    }

    #[test]
    fn values_out_of_range_are_never_sent() {
        let s = stats([1.0, PMD_MAX_ABS_VALUE, PMD_MAX_ABS_VALUE * 2.0, 1e-200]);
        let mut out = Vec::new();
        let report = encode(
            &[group("ns", &[("d", "v")], vec![metric("m", &s)])],
            0,
            1,
            &mut out,
        );
        assert_eq!(report.values_skipped, 1);
        match &out[0].data[0].values {
            DatumValues::Distribution { values, .. } => {
                assert_eq!(values, &vec![0.0, 1.0, PMD_MAX_ABS_VALUE]);
            }
            other => panic!("{other:?}"),
        }
        // A statistic set with an out-of-range sum is skipped whole, counted.
        let n = PMD_MAX_VALUES_PER_DATUM * PMD_MAX_DISTRIBUTION_DATUMS_PER_SERIES + 1;
        let mut big = stats((0..n).map(|v| v as f64));
        big.sum = f64::INFINITY;
        let mut out = Vec::new();
        let report = encode(
            &[group("ns", &[("d", "v")], vec![metric("m", &big)])],
            0,
            1,
            &mut out,
        );
        assert_eq!(report.datums_skipped, 1);
        assert!(out.is_empty());
    }

    #[test]
    fn requests_round_trip_through_json_exactly() {
        let s = stats([0.1, 1.0 / 3.0, 99.999_999_7]);
        let mut out = Vec::new();
        encode(
            &[group("ns", &[("d", "v")], vec![metric("m", &s)])],
            0,
            1,
            &mut out,
        );
        let text = serde_json::to_string(&out[0]).unwrap();
        let back: Request = serde_json::from_str(&text).unwrap();
        assert_eq!(back, out[0]);
    }
}

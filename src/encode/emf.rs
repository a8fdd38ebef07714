//! Embedded Metric Format: one JSON object per document, split so every document stays inside the
//! EMF limits (`super::limits`). A series' distribution is written as repeated values, so
//! CloudWatch computes exact statistics and percentiles, up to [`EMF_MAX_VALUES_PER_SERIES`]
//! values per series per window; past it, a fixed-size summary ([`window_values`]).

use std::fmt::Write as _;

use super::limits::*;
use super::MetricGroup;

/// What the encoder had to leave out, for the caller to log and count.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EmfReport {
    /// Groups left out whole: a dimension name or value outside the limits, or no valid set left.
    pub groups_skipped: u64,
    /// Dimension sets over the key limit, dropped from their directive.
    pub dimension_sets_dropped: u64,
    /// Metrics left out: invalid name, or a single value that cannot fit any document.
    pub metrics_skipped: u64,
    /// Non-finite values left out.
    pub values_skipped: u64,
}

impl EmfReport {
    pub fn is_clean(&self) -> bool {
        *self == EmfReport::default()
    }
}

/// One metric's share of one document: its directive entry and its root member.
struct Piece {
    definition: String,
    member: String,
}

/// Encodes groups into EMF documents (no trailing newline), each at most `max_document_bytes`.
pub fn encode(
    groups: &[MetricGroup<'_>],
    timestamp_ms: u64,
    storage_resolution: u32,
    log_group: Option<&str>,
    max_document_bytes: usize,
    out: &mut Vec<String>,
) -> EmfReport {
    let mut report = EmfReport::default();
    for group in groups {
        encode_group(
            group,
            timestamp_ms,
            storage_resolution,
            log_group,
            max_document_bytes,
            out,
            &mut report,
        );
    }
    report
}

fn encode_group(
    group: &MetricGroup<'_>,
    timestamp_ms: u64,
    storage_resolution: u32,
    log_group: Option<&str>,
    max_bytes: usize,
    out: &mut Vec<String>,
    report: &mut EmfReport,
) {
    let dimensions_valid = group.dimensions.iter().all(|(name, value)| {
        valid_name(name, MAX_DIMENSION_NAME_CHARS) && valid_name(value, MAX_DIMENSION_VALUE_CHARS)
    });
    let sets: Vec<&Vec<&str>> = group
        .dimension_sets
        .iter()
        .filter(|set| {
            let ok = set.len() <= EMF_MAX_KEYS_PER_DIMENSION_SET
                && set
                    .iter()
                    .all(|key| group.dimensions.iter().any(|(name, _)| name == key));
            if !ok {
                report.dimension_sets_dropped += 1;
            }
            ok
        })
        .collect();
    if !dimensions_valid || sets.is_empty() || group.metrics.is_empty() {
        report.groups_skipped += 1;
        return;
    }

    let head = head(group.namespace, &sets, timestamp_ms, log_group);
    let mut tail = String::from("]}]}");
    for (name, value) in &group.dimensions {
        tail.push(',');
        push_json_string(&mut tail, name);
        tail.push(':');
        push_json_string(&mut tail, value);
    }
    tail.push('}');
    let base_bytes = head.len() + tail.len();

    // rounds[r] holds every metric's r-th piece: pieces of one metric never share a document.
    let mut rounds: Vec<Vec<Piece>> = Vec::new();
    for metric in &group.metrics {
        if !valid_name(metric.name, MAX_METRIC_NAME_CHARS) {
            report.metrics_skipped += 1;
            continue;
        }
        let definition = definition(metric.name, metric.unit, storage_resolution);
        let values = window_values(
            &metric.stats.distribution,
            EMF_MAX_VALUES_PER_SERIES,
            &mut report.values_skipped,
        );
        let room = max_bytes.saturating_sub(base_bytes + definition.len() + 1);
        let Some(members) = members(metric.name, &values, room) else {
            report.metrics_skipped += 1;
            continue;
        };
        for (r, member) in members.into_iter().enumerate() {
            if rounds.len() <= r {
                rounds.push(Vec::new());
            }
            rounds[r].push(Piece {
                definition: definition.clone(),
                member,
            });
        }
    }

    for round in rounds {
        let mut start = 0;
        let mut bytes = base_bytes;
        for (i, piece) in round.iter().enumerate() {
            // The definition and the member, each preceded by a comma.
            let piece_bytes = piece.definition.len() + piece.member.len() + 2;
            if i > start
                && (i - start == EMF_MAX_METRICS_PER_DIRECTIVE || bytes + piece_bytes > max_bytes)
            {
                out.push(document(&head, &round[start..i], &tail));
                start = i;
                bytes = base_bytes;
            }
            bytes += piece_bytes;
        }
        if start < round.len() {
            out.push(document(&head, &round[start..], &tail));
        }
    }
}

fn valid_name(text: &str, max_chars: usize) -> bool {
    !text.is_empty() && text.chars().count() <= max_chars
}

/// The values written for one series' distribution (ascending values with counts), at most
/// `budget` (at least 2) of them; non-finite values are left out and counted in `skipped`.
///
/// - `n` values, `n <= budget`: every one of them (every statistic exact).
/// - More, all equal to `v` (`Invocations`: 1 per request): `budget` values of `n v / budget`,
///   so Sum stays exact (the request count); Minimum, Maximum and Average read `n v / budget`.
/// - More, not all equal: the values at `budget` evenly spaced ranks from the first to the last,
///   so Minimum and Maximum are exact and every percentile is within `1 / (budget - 1)` of its
///   rank; Average is that of the sampled ranks; SampleCount is `budget` and Sum
///   `budget x Average`, no longer counts of samples.
pub fn window_values(distribution: &[(f64, u32)], budget: usize, skipped: &mut u64) -> Vec<f64> {
    let budget = budget.max(2);
    let finite: Vec<(f64, u64)> = distribution
        .iter()
        .filter_map(|&(v, n)| {
            if v.is_finite() {
                Some((v, u64::from(n)))
            } else {
                *skipped += u64::from(n);
                None
            }
        })
        .filter(|&(_, n)| n > 0)
        .collect();
    let total: u64 = finite.iter().map(|&(_, n)| n).sum();
    if total <= budget as u64 {
        return finite
            .iter()
            .flat_map(|&(v, n)| std::iter::repeat_n(v, n as usize))
            .collect();
    }
    if let [(v, n)] = finite[..] {
        return vec![v * n as f64 / budget as f64; budget];
    }
    // Rank of the i-th value: round(i (total - 1) / (budget - 1)), 0 to total - 1.
    let last = u128::from(total - 1);
    let steps = (budget - 1) as u128;
    let mut out = Vec::with_capacity(budget);
    let mut entries = finite.iter();
    let (mut value, mut through) = match entries.next() {
        Some(&(v, n)) => (v, n),
        None => return out,
    };
    for i in 0..budget as u128 {
        let rank = ((i * last + steps / 2) / steps) as u64;
        while rank >= through {
            match entries.next() {
                Some(&(v, n)) => {
                    value = v;
                    through += n;
                }
                None => break,
            }
        }
        out.push(value);
    }
    out
}

fn head(
    namespace: &str,
    sets: &[&Vec<&str>],
    timestamp_ms: u64,
    log_group: Option<&str>,
) -> String {
    let mut s = String::with_capacity(256);
    let _ = write!(s, "{{\"_aws\":{{\"Timestamp\":{timestamp_ms},");
    if let Some(group) = log_group {
        s.push_str("\"LogGroupName\":");
        push_json_string(&mut s, group);
        s.push(',');
    }
    s.push_str("\"CloudWatchMetrics\":[{\"Namespace\":");
    push_json_string(&mut s, namespace);
    s.push_str(",\"Dimensions\":[");
    for (i, set) in sets.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push('[');
        for (j, key) in set.iter().enumerate() {
            if j > 0 {
                s.push(',');
            }
            push_json_string(&mut s, key);
        }
        s.push(']');
    }
    s.push_str("],\"Metrics\":[");
    s
}

fn definition(name: &str, unit: &str, storage_resolution: u32) -> String {
    let mut s = String::with_capacity(64 + name.len());
    s.push_str("{\"Name\":");
    push_json_string(&mut s, name);
    s.push_str(",\"Unit\":");
    push_json_string(&mut s, unit);
    let _ = write!(s, ",\"StorageResolution\":{storage_resolution}}}");
    s
}

/// Splits values into root members (`"Name":[v,...]`) of at most `EMF_MAX_VALUES_PER_METRIC`
/// values each, each member plus the comma before it at most `room` bytes. None: not even one
/// value fits.
fn members(name: &str, values: &[f64], room: usize) -> Option<Vec<String>> {
    let mut prefix = String::with_capacity(name.len() + 3);
    push_json_string(&mut prefix, name);
    prefix.push_str(":[");
    let mut out = Vec::new();
    let mut current = String::new();
    let mut in_current = 0;
    let mut buffer = ryu::Buffer::new();
    for value in values {
        // Shortest round-trip form; values are finite (filtered above), so always valid JSON.
        let text = buffer.format_finite(*value);
        // Bytes of the finished member, its leading comma and closing ']' included.
        let with_value = |current_len: usize| current_len + 1 + text.len() + 2;
        if in_current > 0
            && (in_current == EMF_MAX_VALUES_PER_METRIC || with_value(current.len()) > room)
        {
            current.push(']');
            out.push(std::mem::take(&mut current));
            in_current = 0;
        }
        if in_current == 0 {
            if prefix.len() + text.len() + 2 > room {
                return None;
            }
            current.push_str(&prefix);
        } else {
            current.push(',');
        }
        current.push_str(text);
        in_current += 1;
    }
    if in_current > 0 {
        current.push(']');
        out.push(current);
    }
    Some(out)
}

fn document(head: &str, pieces: &[Piece], tail: &str) -> String {
    let bytes = head.len()
        + tail.len()
        + pieces
            .iter()
            .map(|p| p.definition.len() + p.member.len() + 2)
            .sum::<usize>();
    let mut s = String::with_capacity(bytes);
    s.push_str(head);
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&piece.definition);
    }
    // The tail closes the directive and carries the dimension members; metric members follow it
    // inside the root object, so splice them in before its closing brace.
    s.push_str(&tail[..tail.len() - 1]);
    for piece in pieces {
        s.push(',');
        s.push_str(&piece.member);
    }
    s.push('}');
    s
}

/// Appends `text` as a JSON string literal.
pub fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Stats;
    use crate::encode::GroupMetric;
    use serde_json::Value;

    fn stats(values: &[f64]) -> Stats {
        let mut distribution: Vec<(f64, u32)> = Vec::new();
        for &v in values {
            match distribution.iter_mut().find(|(x, _)| *x == v) {
                Some(e) => e.1 += 1,
                None => distribution.push((v, 1)),
            }
        }
        distribution.sort_by(|a, b| a.0.total_cmp(&b.0));
        Stats {
            min: values.iter().cloned().fold(f64::INFINITY, f64::min),
            max: values.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
            sum: values.iter().sum(),
            count: values.len() as u64,
            distribution,
        }
    }

    fn group<'a>(names: &'a [String], stats: &'a Stats) -> MetricGroup<'a> {
        MetricGroup {
            namespace: "/aws/sagemaker/Endpoints",
            dimensions: vec![("EndpointName", "e".into()), ("VariantName", "v".into())],
            dimension_sets: vec![vec!["EndpointName", "VariantName"]],
            metrics: names
                .iter()
                .map(|n| GroupMetric {
                    name: n,
                    unit: "Percent",
                    stats,
                })
                .collect(),
        }
    }

    fn parse(doc: &str) -> Value {
        serde_json::from_str(doc).expect("valid JSON")
    }

    /// Every value published for `name` across documents, in order.
    fn values_of(docs: &[String], name: &str) -> Vec<f64> {
        let mut out = Vec::new();
        for doc in docs {
            match &parse(doc)[name] {
                Value::Array(a) => out.extend(a.iter().map(|v| v.as_f64().unwrap())),
                Value::Number(n) => out.push(n.as_f64().unwrap()),
                _ => {}
            }
        }
        out
    }

    fn check_emf_rules(doc: &str, max_bytes: usize) {
        assert!(doc.len() <= max_bytes, "{} > {max_bytes}", doc.len());
        let v = parse(doc);
        let directives = v["_aws"]["CloudWatchMetrics"].as_array().unwrap();
        assert!(v["_aws"]["Timestamp"].is_u64());
        for d in directives {
            let metrics = d["Metrics"].as_array().unwrap();
            assert!(metrics.len() <= EMF_MAX_METRICS_PER_DIRECTIVE);
            for m in metrics {
                let member = &v[m["Name"].as_str().unwrap()];
                match member {
                    Value::Array(a) => {
                        assert!(a.len() <= EMF_MAX_VALUES_PER_METRIC && !a.is_empty())
                    }
                    Value::Number(_) => {}
                    other => panic!("metric member is {other}"),
                }
            }
            for set in d["Dimensions"].as_array().unwrap() {
                let set = set.as_array().unwrap();
                assert!(set.len() <= EMF_MAX_KEYS_PER_DIMENSION_SET);
                for key in set {
                    assert!(
                        v[key.as_str().unwrap()].is_string(),
                        "dimension {key} is a root member"
                    );
                }
            }
        }
    }

    #[test]
    fn one_small_group_is_one_document() {
        let names = vec!["CPUUtilization".to_string()];
        let s = stats(&[1.5, 2.0, 1.5]);
        let mut out = Vec::new();
        let report = encode(
            &[group(&names, &s)],
            1_700_000_000_000,
            60,
            None,
            EMF_MAX_DOCUMENT_BYTES,
            &mut out,
        );
        assert!(report.is_clean());
        assert_eq!(out.len(), 1);
        let v = parse(&out[0]);
        assert_eq!(v["_aws"]["Timestamp"], 1_700_000_000_000u64);
        let d = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(d["Namespace"], "/aws/sagemaker/Endpoints");
        assert_eq!(
            d["Dimensions"],
            serde_json::json!([["EndpointName", "VariantName"]])
        );
        assert_eq!(
            d["Metrics"],
            serde_json::json!([{"Name": "CPUUtilization", "Unit": "Percent", "StorageResolution": 60}])
        );
        assert_eq!(values_of(&out, "CPUUtilization"), vec![1.5, 1.5, 2.0]);
        assert_eq!(v["EndpointName"], "e");
    }

    #[test]
    fn more_than_100_metrics_split_into_documents() {
        let names: Vec<String> = (0..(EMF_MAX_METRICS_PER_DIRECTIVE + 1))
            .map(|i| format!("M{i}"))
            .collect();
        let s = stats(&[1.0]);
        let mut out = Vec::new();
        encode(
            &[group(&names, &s)],
            0,
            60,
            None,
            EMF_MAX_DOCUMENT_BYTES,
            &mut out,
        );
        assert_eq!(out.len(), 2);
        for doc in &out {
            check_emf_rules(doc, EMF_MAX_DOCUMENT_BYTES);
        }
        for name in &names {
            assert_eq!(
                values_of(&out, name),
                vec![1.0],
                "{name} published exactly once"
            );
        }
    }

    #[test]
    fn more_than_100_values_split_into_documents_and_none_is_lost() {
        let names = vec!["CPUUtilization".to_string()];
        let values: Vec<f64> = (0..=EMF_MAX_VALUES_PER_METRIC)
            .map(|i| i as f64 / 4.0)
            .collect();
        let s = stats(&values);
        let mut out = Vec::new();
        encode(
            &[group(&names, &s)],
            0,
            1,
            None,
            EMF_MAX_DOCUMENT_BYTES,
            &mut out,
        );
        assert_eq!(out.len(), 2);
        for doc in &out {
            check_emf_rules(doc, EMF_MAX_DOCUMENT_BYTES);
        }
        assert_eq!(values_of(&out, "CPUUtilization"), values);
    }

    #[test]
    fn documents_stay_under_the_byte_limit() {
        // 100 metrics with 255-character names x 100 values of 24 characters (tiny negative
        // numbers at full precision): over 256 KB in one document.
        let names: Vec<String> = (0..100)
            .map(|i| format!("Metric{i:03}{}", "x".repeat(246)))
            .collect();
        let mut values: Vec<f64> = (0..100u64)
            .map(|k| f64::from_bits(0x8010_0000_0000_0000 + k * 0x0123_4567_89ab))
            .collect();
        values.sort_by(f64::total_cmp);
        let s = stats(&values);
        let mut out = Vec::new();
        let report = encode(
            &[group(&names, &s)],
            0,
            60,
            None,
            EMF_MAX_DOCUMENT_BYTES,
            &mut out,
        );
        assert!(report.is_clean());
        assert!(out.len() > 1);
        for doc in &out {
            check_emf_rules(doc, EMF_MAX_DOCUMENT_BYTES);
        }
        for name in &names {
            assert_eq!(values_of(&out, name).len(), 100);
        }
        // And with the UDP cap, documents are smaller still and nothing is lost.
        let mut udp = Vec::new();
        encode(
            &[group(&names, &s)],
            0,
            60,
            None,
            UDP_MAX_DOCUMENT_BYTES,
            &mut udp,
        );
        assert!(udp.len() > out.len());
        for doc in &udp {
            check_emf_rules(doc, UDP_MAX_DOCUMENT_BYTES);
        }
        assert!(values_of(&udp, &names[0]) == values);
    }

    #[test]
    fn a_metric_with_many_values_splits_within_the_byte_limit() {
        let names = vec!["CPUUtilization".to_string()];
        let values: Vec<f64> = (0..EMF_MAX_VALUES_PER_SERIES)
            .map(|i| 1.0 / 7.0 + i as f64)
            .collect();
        let s = stats(&values);
        let mut out = Vec::new();
        encode(&[group(&names, &s)], 0, 60, None, 1200, &mut out);
        for doc in &out {
            check_emf_rules(doc, 1200);
        }
        let published = values_of(&out, "CPUUtilization");
        assert_eq!(published.len(), values.len());
        assert!(published == values, "values differ or are out of order");
    }

    #[test]
    fn up_to_the_budget_every_value_is_written() {
        let mut skipped = 0;
        let d = [(0.0, 400), (1.0, 600)];
        let v = window_values(&d, EMF_MAX_VALUES_PER_SERIES, &mut skipped);
        assert_eq!(v.len(), 1000);
        assert_eq!(v.iter().sum::<f64>(), 600.0);
        let d = [(f64::NAN, 3), (2.0, 1)];
        assert_eq!(window_values(&d, 10, &mut skipped), vec![2.0]);
        assert_eq!(skipped, 3, "non-finite values are counted, not written");
    }

    #[test]
    fn past_the_budget_a_constant_series_keeps_its_sum() {
        let mut skipped = 0;
        // 500,000 requests in a window: Invocations is 1 each.
        let v = window_values(&[(1.0, 500_000)], EMF_MAX_VALUES_PER_SERIES, &mut skipped);
        assert_eq!(v.len(), EMF_MAX_VALUES_PER_SERIES);
        assert_eq!(v.iter().sum::<f64>(), 500_000.0);
        // InvocationsPerInstance at 3 instances: Sum within float rounding of n / 3.
        let v = window_values(
            &[(1.0 / 3.0, 3001)],
            EMF_MAX_VALUES_PER_SERIES,
            &mut skipped,
        );
        assert!((v.iter().sum::<f64>() - 3001.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn past_the_budget_min_max_and_percentiles_stay_within_its_resolution() {
        let budget = EMF_MAX_VALUES_PER_SERIES;
        // 1..=100,000 once each, and a 0/1 series with 1.7 % ones.
        let spread: Vec<(f64, u32)> = (1..=100_000).map(|i| (f64::from(i), 1)).collect();
        let mut skipped = 0;
        let v = window_values(&spread, budget, &mut skipped);
        assert_eq!(v.len(), budget);
        assert!(v.windows(2).all(|w| w[0] <= w[1]), "ascending");
        assert_eq!((v[0], v[budget - 1]), (1.0, 100_000.0), "min and max exact");
        // Percentile p of the written values vs of the 100,000: within one rank step.
        let step = 100_000.0 / (budget - 1) as f64;
        for p in [0.5, 0.9, 0.99, 0.999] {
            let written = v[((budget - 1) as f64 * p).round() as usize];
            let exact = 1.0 + 99_999.0 * p;
            assert!(
                (written - exact).abs() <= step,
                "p{p}: {written} vs {exact}"
            );
        }
        let mean = v.iter().sum::<f64>() / budget as f64;
        assert!((mean - 50_000.5).abs() / 50_000.5 < 1e-3, "{mean}");
        let errors = [(0.0, 98_300), (1.0, 1_700)];
        let v = window_values(&errors, budget, &mut skipped);
        let rate = v.iter().sum::<f64>() / budget as f64;
        assert!((rate - 0.017).abs() <= 1.0 / budget as f64, "{rate}");
        assert_eq!((v[0], v[budget - 1]), (0.0, 1.0));
        assert_eq!(skipped, 0);
    }

    #[test]
    fn a_busy_series_is_written_in_bounded_bytes() {
        let names = vec!["ModelLatency".to_string()];
        let few = stats(&[1234.5; 10]);
        let mut many = stats(&[1234.5]);
        many.distribution = vec![(1234.5, 2_000_000), (98765.0, 3_000_000)];
        many.count = 5_000_000;
        let bytes = |s: &Stats| {
            let mut out = Vec::new();
            encode(
                &[group(&names, s)],
                0,
                1,
                None,
                EMF_MAX_DOCUMENT_BYTES,
                &mut out,
            );
            for doc in &out {
                check_emf_rules(doc, EMF_MAX_DOCUMENT_BYTES);
            }
            (
                values_of(&out, "ModelLatency").len(),
                out.iter().map(String::len).sum::<usize>(),
            )
        };
        assert_eq!(bytes(&few).0, 10);
        let (n, b) = bytes(&many);
        assert_eq!(n, EMF_MAX_VALUES_PER_SERIES);
        // Five million samples: ten documents of 100 short values, about 10 KB.
        assert!(b < 12 * EMF_MAX_VALUES_PER_SERIES, "{b} bytes");
    }

    #[test]
    fn dimension_set_over_30_keys_is_dropped_and_counted() {
        let keys: Vec<String> = (0..=EMF_MAX_KEYS_PER_DIMENSION_SET)
            .map(|i| format!("D{i}"))
            .collect();
        let names = vec!["CPUUtilization".to_string()];
        let s = stats(&[1.0]);
        let mut g = group(&names, &s);
        for k in &keys {
            g.dimensions.push((k, "x".into()));
        }
        g.dimension_sets
            .push(keys.iter().map(|k| k.as_str()).collect());
        g.dimension_sets.push(
            keys[..EMF_MAX_KEYS_PER_DIMENSION_SET]
                .iter()
                .map(|k| k.as_str())
                .collect(),
        );
        let mut out = Vec::new();
        let report = encode(&[g], 0, 60, None, EMF_MAX_DOCUMENT_BYTES, &mut out);
        assert_eq!(report.dimension_sets_dropped, 1);
        assert_eq!(out.len(), 1);
        check_emf_rules(&out[0], EMF_MAX_DOCUMENT_BYTES);
        let sets = parse(&out[0])["_aws"]["CloudWatchMetrics"][0]["Dimensions"]
            .as_array()
            .unwrap()
            .len();
        assert_eq!(sets, 2, "the 2-key set and the 30-key set remain");
    }

    #[test]
    fn dimension_value_over_1024_characters_skips_the_group() {
        let names = vec!["CPUUtilization".to_string()];
        let s = stats(&[1.0]);
        let mut g = group(&names, &s);
        g.dimensions[0].1 = "x".repeat(MAX_DIMENSION_VALUE_CHARS + 1);
        let mut out = Vec::new();
        let report = encode(&[g.clone()], 0, 60, None, EMF_MAX_DOCUMENT_BYTES, &mut out);
        assert_eq!(report.groups_skipped, 1);
        assert!(out.is_empty());
        g.dimensions[0].1 = "x".repeat(MAX_DIMENSION_VALUE_CHARS);
        let report = encode(&[g], 0, 60, None, EMF_MAX_DOCUMENT_BYTES, &mut out);
        assert!(report.is_clean());
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn metric_name_over_255_characters_is_skipped() {
        let names = vec!["M".repeat(MAX_METRIC_NAME_CHARS + 1), "Ok".to_string()];
        let s = stats(&[1.0]);
        let mut out = Vec::new();
        let report = encode(
            &[group(&names, &s)],
            0,
            60,
            None,
            EMF_MAX_DOCUMENT_BYTES,
            &mut out,
        );
        assert_eq!(report.metrics_skipped, 1);
        assert_eq!(values_of(&out, "Ok"), vec![1.0]);
    }

    #[test]
    fn strings_are_escaped() {
        let names = vec!["CPUUtilization".to_string()];
        let s = stats(&[1.0]);
        let mut g = group(&names, &s);
        g.dimensions[0].1 = "a\"b\\c\nd\u{1}é".into();
        let mut out = Vec::new();
        encode(
            &[g],
            0,
            60,
            Some("group\"x"),
            EMF_MAX_DOCUMENT_BYTES,
            &mut out,
        );
        let v = parse(&out[0]);
        assert_eq!(v["EndpointName"], "a\"b\\c\nd\u{1}é");
        assert_eq!(v["_aws"]["LogGroupName"], "group\"x");
    }
}

//! The model servers' own metric names, mapped to SageMaker's, and what one target's
//! successive scrapes mean: gauges as they are, counters as rates over the real elapsed time,
//! histograms as the requests of each bucket since the previous scrape.
//!
//! [`MAPPINGS`] is the one table (the README repeats it). Names are from each project's source:
//! vLLM V1 `vllm/v1/metrics/loggers.py` and the older engine's `vllm/engine/metrics.py`, SGLang
//! `python/sglang/srt/metrics/collector.py`. Within a row the first name a body has wins, so a
//! server that writes both a new name and its deprecated one (vLLM 0.9 to 0.10 write
//! `kv_cache_usage_perc` and `gpu_cache_usage_perc`) is counted once. TGI and Triton are not
//! mapped: TGI has no KV-cache gauge and counts tokens per request in histograms, Triton has no
//! token figures; a clean mapping needs more than a name.
//!
//! Histograms: each request of a bucket gets the bucket's midpoint (lower bound 0 for the first
//! bucket; the `+Inf` bucket gets its lower bound, the largest finite one). The midpoint is at
//! most half a bucket's width from any request in it, where the upper bound (Prometheus'
//! convention for `le`) can be a whole width off; so `SampleCount` is the number of requests and
//! p50/p99 read within half a bucket. A counter or bucket that goes down means the server
//! restarted: that scrape starts a new baseline and publishes no rate or request for it.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use crate::aggregate::Stats;
use crate::catalog::Metric;

use super::parse::{Kind, Line, RawSample};

/// How a row's samples become one figure.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Shape {
    /// A gauge, added up over the server's series (engines of one copy).
    GaugeSum,
    /// A gauge, averaged over the server's series (a share: KV cache use).
    GaugeMean,
    /// A counter: its increase per second since the previous scrape, added up over series.
    Rate,
    /// A histogram: each request since the previous scrape, at its bucket's midpoint.
    Histogram,
}

/// One row of the table: a SageMaker metric, how it is read, and the servers' names for it in
/// order of preference, and the factor to its unit.
#[derive(Debug)]
pub struct Mapping {
    pub metric: Metric,
    pub shape: Shape,
    pub names: &'static [&'static str],
    /// Seconds to microseconds (latencies), a fraction to percent (KV cache).
    pub scale: f64,
}

/// The one table of the frameworks' names (vLLM V1 names first, then vLLM's older ones, then
/// SGLang's). `TotalTPS` is the sum of the two token rates.
pub const MAPPINGS: &[Mapping] = &[
    Mapping {
        metric: Metric::Ttft,
        shape: Shape::Histogram,
        names: &[
            "vllm:time_to_first_token_seconds",
            "sglang:time_to_first_token_seconds",
        ],
        scale: 1e6,
    },
    Mapping {
        metric: Metric::InterTokenLatency,
        shape: Shape::Histogram,
        names: &[
            "vllm:inter_token_latency_seconds",
            "vllm:time_per_output_token_seconds",
            "sglang:inter_token_latency_seconds",
            "sglang:time_per_output_token_seconds",
        ],
        scale: 1e6,
    },
    Mapping {
        metric: Metric::KvCacheUtilization,
        shape: Shape::GaugeMean,
        names: &[
            "vllm:kv_cache_usage_perc",
            "vllm:gpu_cache_usage_perc",
            "sglang:token_usage",
        ],
        scale: 100.0,
    },
    Mapping {
        metric: Metric::QueueDepth,
        shape: Shape::GaugeSum,
        names: &["vllm:num_requests_waiting", "sglang:num_queue_reqs"],
        scale: 1.0,
    },
    Mapping {
        metric: Metric::BatchSize,
        shape: Shape::GaugeSum,
        names: &["vllm:num_requests_running", "sglang:num_running_reqs"],
        scale: 1.0,
    },
    Mapping {
        metric: Metric::InputTokensPerSecond,
        shape: Shape::Rate,
        names: &["vllm:prompt_tokens_total", "sglang:prompt_tokens_total"],
        scale: 1.0,
    },
    Mapping {
        metric: Metric::OutputTokensPerSecond,
        shape: Shape::Rate,
        names: &[
            "vllm:generation_tokens_total",
            "sglang:generation_tokens_total",
        ],
        scale: 1.0,
    },
];

/// Names compare with `:` and `_` alike: `prometheus_client`'s OpenMetrics output escapes
/// `vllm:x` to `vllm_x` in sample names (its `# TYPE` lines keep the colon).
fn same_name(written: &str, table: &str) -> bool {
    written.len() == table.len()
        && written
            .bytes()
            .zip(table.bytes())
            .all(|(a, b)| a == b || (a == b'_' && b == b':') || (a == b':' && b == b'_'))
}

/// Why part of a body was not used (each counted and logged by the caller, per target).
#[derive(Clone, Debug, PartialEq)]
pub enum Skip {
    /// A value that is NaN, infinite or negative.
    BadValue { name: String },
    /// The same name and labels twice.
    Duplicate { name: String },
    /// `# TYPE` says another kind than the table expects.
    WrongType { name: String, kind: Kind },
    /// Buckets out of order, without `+Inf`, or not whole counts.
    BadHistogram { name: String },
    /// A counter or bucket went down: the server restarted; a new baseline.
    Reset { name: String },
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::BadValue { name } => write!(f, "{name}: NaN, infinite or negative value"),
            Skip::Duplicate { name } => write!(f, "{name}: duplicate series"),
            Skip::WrongType { name, kind } => write!(f, "{name}: declared {kind:?}"),
            Skip::BadHistogram { name } => write!(f, "{name}: malformed histogram buckets"),
            Skip::Reset { name } => write!(f, "{name}: counter went down (server restarted)"),
        }
    }
}

/// What one scrape of one target gives.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Figures {
    /// Gauges and rates: one value each.
    pub values: Vec<(Metric, f64)>,
    /// Histograms: the requests since the previous scrape, values with counts.
    pub requests: Vec<(Metric, Stats)>,
    pub skipped: Vec<Skip>,
}

/// One target's baselines between scrapes.
#[derive(Debug, Default)]
pub struct Tracker {
    last_at: Option<Instant>,
    /// By (row, series labels without `le`).
    counters: HashMap<(usize, String), f64>,
    buckets: HashMap<(usize, String), Vec<(f64, f64)>>,
}

impl Tracker {
    /// Reads one successful scrape taken at `at`.
    pub fn update(&mut self, lines: &[Line<'_>], at: Instant) -> Figures {
        let mut figures = Figures::default();
        let elapsed = self
            .last_at
            .map(|last| at.saturating_duration_since(last).as_secs_f64())
            .filter(|s| *s > 0.0);
        self.last_at = Some(at);
        let chosen = choose(lines, &mut figures.skipped);
        let mut rates = Vec::new();
        for (row, mapping) in MAPPINGS.iter().enumerate() {
            let Some(samples) = chosen.get(&row) else {
                continue;
            };
            match mapping.shape {
                Shape::GaugeSum | Shape::GaugeMean => {
                    let values: Vec<f64> = samples.iter().map(|s| s.value).collect();
                    let mut value = values.iter().sum::<f64>();
                    if mapping.shape == Shape::GaugeMean {
                        value /= values.len() as f64;
                    }
                    figures.values.push((mapping.metric, value * mapping.scale));
                }
                Shape::Rate => {
                    if let Some(rate) = self.rate(row, samples, elapsed, &mut figures.skipped) {
                        rates.push(rate);
                        figures.values.push((mapping.metric, rate * mapping.scale));
                    }
                }
                Shape::Histogram => {
                    if let Some(stats) = self.requests(row, mapping, samples, &mut figures.skipped)
                    {
                        figures.requests.push((mapping.metric, stats));
                    }
                }
            }
        }
        if rates.len() == 2 {
            figures.values.push((Metric::TotalTps, rates[0] + rates[1]));
        }
        figures
    }

    /// The counter's increase per second over `elapsed`, added over its series; None on the
    /// first scrape and when any series went down (new baselines).
    fn rate(
        &mut self,
        row: usize,
        samples: &[&RawSample<'_>],
        elapsed: Option<f64>,
        skipped: &mut Vec<Skip>,
    ) -> Option<f64> {
        let mut increase = 0.0;
        let mut complete = true;
        for sample in samples {
            let key = (row, series_key(sample));
            match self.counters.insert(key, sample.value) {
                Some(before) if sample.value >= before => increase += sample.value - before,
                Some(_) => {
                    skipped.push(Skip::Reset {
                        name: sample.name.into(),
                    });
                    complete = false;
                }
                None => complete = false,
            }
        }
        Some(increase / elapsed?).filter(|_| complete)
    }

    /// The requests since the previous scrape, over every series of the histogram.
    fn requests(
        &mut self,
        row: usize,
        mapping: &Mapping,
        samples: &[&RawSample<'_>],
        skipped: &mut Vec<Skip>,
    ) -> Option<Stats> {
        let mut by_series: HashMap<String, Vec<(f64, f64)>> = HashMap::new();
        for sample in samples {
            let le = sample
                .label("le")
                .and_then(|le| super::parse::parse_value(&le));
            let Some(le) = le else {
                skipped.push(Skip::BadHistogram {
                    name: sample.name.into(),
                });
                return None;
            };
            by_series
                .entry(series_key(sample))
                .or_default()
                .push((le, sample.value));
        }
        let name = mapping.names[0];
        let mut distribution: Vec<(f64, u32)> = Vec::new();
        for (series, mut buckets) in by_series {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            if !well_formed(&buckets) {
                skipped.push(Skip::BadHistogram { name: name.into() });
                self.buckets.remove(&(row, series));
                continue;
            }
            let before = self.buckets.insert((row, series), buckets.clone());
            let Some(before) = before else { continue };
            match bucket_deltas(&before, &buckets) {
                Some(deltas) => {
                    for (value, count) in deltas {
                        // Bounds like 0.025 are not exact in binary: 37500.00000000001 us is
                        // 37500 us; a thousandth of the unit (ns for latencies) is plenty.
                        let value = (value * mapping.scale * 1000.0).round() / 1000.0;
                        add(&mut distribution, value, count);
                    }
                }
                None => skipped.push(Skip::Reset { name: name.into() }),
            }
        }
        stats(distribution)
    }
}

/// Picks, for every row, the samples of the first of its names the body has, checking types,
/// values and duplicates on the way.
fn choose<'l, 'a>(
    lines: &'l [Line<'a>],
    skipped: &mut Vec<Skip>,
) -> HashMap<usize, Vec<&'l RawSample<'a>>> {
    let mut types: HashMap<&str, Kind> = HashMap::new();
    // (row, name index) -> samples
    let mut found: HashMap<(usize, usize), Vec<&RawSample<'_>>> = HashMap::new();
    let mut seen: HashSet<(&str, &str)> = HashSet::new();
    for line in lines {
        let sample = match line {
            Line::Type { family, kind } => {
                types.insert(family, *kind);
                continue;
            }
            Line::Sample(sample) => sample,
        };
        let Some((row, index)) = row_of(sample.name) else {
            continue;
        };
        if !seen.insert((sample.name, sample.label_text)) {
            skipped.push(Skip::Duplicate {
                name: sample.name.into(),
            });
            continue;
        }
        if !sample.value.is_finite() || sample.value < 0.0 {
            // `le="+Inf"` is a label; a value is a count or a reading.
            skipped.push(Skip::BadValue {
                name: sample.name.into(),
            });
            continue;
        }
        found.entry((row, index)).or_default().push(sample);
    }
    let mut chosen = HashMap::new();
    let mut keys: Vec<(usize, usize)> = found.keys().copied().collect();
    keys.sort_unstable();
    for (row, index) in keys {
        if chosen.contains_key(&row) {
            continue;
        }
        let mapping = &MAPPINGS[row];
        let name = mapping.names[index];
        if let Some(kind) = declared(&types, name) {
            let expected = match mapping.shape {
                Shape::GaugeSum | Shape::GaugeMean => Kind::Gauge,
                Shape::Rate => Kind::Counter,
                Shape::Histogram => Kind::Histogram,
            };
            if kind != expected && kind != Kind::Untyped {
                skipped.push(Skip::WrongType {
                    name: name.into(),
                    kind,
                });
                continue;
            }
        }
        if let Some(samples) = found.remove(&(row, index)) {
            chosen.insert(row, samples);
        }
    }
    chosen
}

/// The row and name index a sample name belongs to (a histogram's `_bucket` lines only).
fn row_of(name: &str) -> Option<(usize, usize)> {
    if !(name.starts_with("vllm") || name.starts_with("sglang")) {
        return None;
    }
    MAPPINGS.iter().enumerate().find_map(|(row, m)| {
        let base = match m.shape {
            Shape::Histogram => name.strip_suffix("_bucket")?,
            _ => name,
        };
        let index = m.names.iter().position(|n| same_name(base, n))?;
        Some((row, index))
    })
}

/// The `# TYPE` of a table name: its own family, or without `_total` (OpenMetrics counters).
fn declared(types: &HashMap<&str, Kind>, name: &str) -> Option<Kind> {
    let family = name.strip_suffix("_total");
    types
        .iter()
        .find(|(f, _)| same_name(f, name) || family.is_some_and(|fam| same_name(f, fam)))
        .map(|(_, k)| *k)
}

/// A series' identity: its labels other than `le`, in written order.
fn series_key(sample: &RawSample<'_>) -> String {
    let mut key = String::new();
    for (name, value) in sample.labels().filter(|(n, _)| *n != "le") {
        key.push_str(name);
        key.push('=');
        key.push_str(&value);
        key.push('\u{1f}');
    }
    key
}

/// Cumulative buckets, sorted by bound: whole counts that never go down, ending at `+Inf`.
fn well_formed(buckets: &[(f64, f64)]) -> bool {
    buckets.last().is_some_and(|(le, _)| *le == f64::INFINITY)
        && buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1)
        && buckets.iter().all(|(_, c)| c.fract() == 0.0)
}

/// Each bucket's new requests at its midpoint; None when the layout changed or a count went
/// down (the server restarted).
fn bucket_deltas(before: &[(f64, f64)], now: &[(f64, f64)]) -> Option<Vec<(f64, u32)>> {
    if before.len() != now.len() || before.iter().zip(now).any(|(b, n)| b.0 != n.0) {
        return None;
    }
    let mut out = Vec::new();
    let (mut lower, mut cum_before, mut cum_now) = (0.0_f64, 0.0, 0.0);
    for (b, n) in before.iter().zip(now) {
        let delta = (n.1 - cum_now) - (b.1 - cum_before);
        if delta < 0.0 {
            return None;
        }
        let upper = n.0;
        let value = if upper.is_infinite() {
            lower
        } else if upper <= 0.0 {
            upper
        } else {
            (lower.max(0.0) + upper) / 2.0
        };
        if delta > 0.0 {
            out.push((value, delta.min(u32::MAX as f64) as u32));
        }
        (lower, cum_before, cum_now) = (upper, b.1, n.1);
    }
    Some(out)
}

fn add(distribution: &mut Vec<(f64, u32)>, value: f64, count: u32) {
    match distribution.binary_search_by(|(v, _)| v.total_cmp(&value)) {
        Ok(i) => distribution[i].1 = distribution[i].1.saturating_add(count),
        Err(i) => distribution.insert(i, (value, count)),
    }
}

/// Statistics of values with counts; None without a request.
pub fn stats(distribution: Vec<(f64, u32)>) -> Option<Stats> {
    let count: u64 = distribution.iter().map(|(_, n)| u64::from(*n)).sum();
    if count == 0 {
        return None;
    }
    Some(Stats {
        min: distribution.first()?.0,
        max: distribution.last()?.0,
        sum: distribution.iter().map(|(v, n)| v * f64::from(*n)).sum(),
        count,
        distribution,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scrape::parse::parse;
    use std::time::Duration;

    fn update(tracker: &mut Tracker, body: &str, at: Instant) -> Figures {
        let (lines, soft) = parse(body).unwrap();
        assert!(soft.is_empty());
        tracker.update(&lines, at)
    }

    fn value(f: &Figures, metric: Metric) -> Option<f64> {
        f.values.iter().find(|(m, _)| *m == metric).map(|(_, v)| *v)
    }

    fn values(f: &Figures, metric: Metric) -> Vec<f64> {
        let Some((_, s)) = f.requests.iter().find(|(m, _)| *m == metric) else {
            return Vec::new();
        };
        s.distribution
            .iter()
            .flat_map(|(v, n)| std::iter::repeat_n(*v, *n as usize))
            .collect()
    }

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!(
            "{}/tests/fixtures/scrape/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn every_framework_reads_as_the_generator_expects() {
        let expected: serde_json::Value = serde_json::from_str(&fixture("expected.json")).unwrap();
        for framework in ["vllm-v1", "vllm-v0", "sglang"] {
            let want = &expected[framework];
            let mut tracker = Tracker::default();
            let t0 = Instant::now();
            let first = update(
                &mut tracker,
                &fixture(&format!("{framework}-step0.txt")),
                t0,
            );
            assert!(first.requests.is_empty(), "a baseline has no requests");
            assert_eq!(value(&first, Metric::InputTokensPerSecond), None);
            let t1 = t0 + Duration::from_secs(10);
            let body = fixture(&format!("{framework}-step1.txt"));
            let f = update(&mut tracker, &body, t1);
            assert!(f.skipped.is_empty(), "{framework}: {:?}", f.skipped);
            let nums = |k: &str| -> Vec<f64> {
                want[k]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect()
            };
            let close = |a: Vec<f64>, b: Vec<f64>| {
                a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-6)
            };
            let ttft = values(&f, Metric::Ttft);
            assert!(close(ttft.clone(), nums("ttft_us")), "{framework} {ttft:?}");
            let itl = values(&f, Metric::InterTokenLatency);
            assert!(close(itl.clone(), nums("itl_us")), "{framework} {itl:?}");
            assert_eq!(value(&f, Metric::BatchSize), want["batch"].as_f64());
            assert_eq!(value(&f, Metric::QueueDepth), want["queue"].as_f64());
            assert_eq!(
                value(&f, Metric::KvCacheUtilization),
                want["kv_percent"].as_f64()
            );
            let input = want["input_tokens"].as_f64().unwrap() / 10.0;
            let output = want["output_tokens"].as_f64().unwrap() / 10.0;
            assert_eq!(value(&f, Metric::InputTokensPerSecond), Some(input));
            assert_eq!(value(&f, Metric::OutputTokensPerSecond), Some(output));
            assert_eq!(value(&f, Metric::TotalTps), Some(input + output));

            // The server restarted: every counter went down, a new baseline, no negative rate.
            let t2 = t1 + Duration::from_secs(10);
            let body = fixture(&format!("{framework}-step2.txt"));
            let f = update(&mut tracker, &body, t2);
            assert_eq!(value(&f, Metric::InputTokensPerSecond), None);
            assert!(f.requests.is_empty(), "{:?}", f.requests);
            assert!(f.skipped.iter().all(|s| matches!(s, Skip::Reset { .. })));
            assert_eq!(f.skipped.len(), 4, "{:?}", f.skipped);
            assert_eq!(value(&f, Metric::BatchSize), Some(1.0));
        }
    }

    #[test]
    fn openmetrics_text_reads_like_the_prometheus_text() {
        let mut a = Tracker::default();
        let mut b = Tracker::default();
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(5);
        update(&mut a, &fixture("vllm-v1-step0.txt"), t0);
        update(&mut b, &fixture("vllm-v1-step0.txt"), t0);
        let text = update(&mut a, &fixture("vllm-v1-step1.txt"), t1);
        let om = update(&mut b, &fixture("vllm-v1-step1.openmetrics.txt"), t1);
        assert_eq!(text, om);
        assert_eq!(text.requests.len(), 2);
    }

    #[test]
    fn bad_values_duplicates_and_wrong_types_are_skipped_by_series() {
        let body = "# TYPE vllm:num_requests_waiting counter\n\
                    vllm:num_requests_waiting 3\n\
                    vllm:num_requests_running{engine=\"0\"} 2\n\
                    vllm:num_requests_running{engine=\"0\"} 5\n\
                    vllm:num_requests_running{engine=\"1\"} NaN\n\
                    vllm:kv_cache_usage_perc -0.5\n\
                    vllm:time_to_first_token_seconds_bucket{le=\"0.1\"} 3\n\
                    vllm:time_to_first_token_seconds_bucket{le=\"0.2\"} 2\n\
                    vllm:time_to_first_token_seconds_bucket{le=\"+Inf\"} 3\n";
        let f = update(&mut Tracker::default(), body, Instant::now());
        assert_eq!(f.values, vec![(Metric::BatchSize, 2.0)]);
        assert_eq!(f.skipped.len(), 5, "{:?}", f.skipped);
        assert!(f.skipped.contains(&Skip::WrongType {
            name: "vllm:num_requests_waiting".into(),
            kind: Kind::Counter
        }));
        assert!(f.skipped.contains(&Skip::BadHistogram {
            name: "vllm:time_to_first_token_seconds".into()
        }));
    }

    #[test]
    fn engines_of_one_copy_add_up_and_the_overflow_bucket_reads_at_its_lower_bound() {
        let at = |b: f64, c: f64| {
            format!(
                "vllm:num_requests_running{{engine=\"0\"}} 2\nvllm:num_requests_running{{engine=\"1\"}} 3\n\
                 vllm:kv_cache_usage_perc{{engine=\"0\"}} 0.2\nvllm:kv_cache_usage_perc{{engine=\"1\"}} 0.4\n\
                 vllm:time_to_first_token_seconds_bucket{{engine=\"0\",le=\"1.0\"}} {b}\n\
                 vllm:time_to_first_token_seconds_bucket{{engine=\"0\",le=\"+Inf\"}} {c}\n\
                 vllm:time_to_first_token_seconds_bucket{{engine=\"1\",le=\"1.0\"}} {b}\n\
                 vllm:time_to_first_token_seconds_bucket{{engine=\"1\",le=\"+Inf\"}} {b}\n"
            )
        };
        let mut t = Tracker::default();
        let now = Instant::now();
        update(&mut t, &at(1.0, 1.0), now);
        let f = update(&mut t, &at(3.0, 4.0), now + Duration::from_secs(1));
        assert_eq!(value(&f, Metric::BatchSize), Some(5.0));
        assert!((value(&f, Metric::KvCacheUtilization).unwrap() - 30.0).abs() < 1e-9);
        // engine 0: 2 in (0,1] and 1 over; engine 1: 2 in (0,1].
        assert_eq!(
            values(&f, Metric::Ttft),
            vec![500_000.0, 500_000.0, 500_000.0, 500_000.0, 1_000_000.0]
        );
    }
}

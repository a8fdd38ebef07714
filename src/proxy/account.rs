//! Invocation accounting: what the front door learnt about each request, pre-aggregated per
//! series so the sampling loop merges one `Stats` per series per tick however many requests
//! there were.
//!
//! One short mutex guards the ledger: two lock/unlock pairs per request (start, finish), each a
//! few increments and one map lookup. Latencies keep a bounded distribution: each value is
//! quantised to a log-scale bucket (ratio [`LATENCY_BUCKET_RATIO`]) and published as the
//! bucket's representative, within 1 % of the measured value (or 1 µs below 1 µs). From 1 µs to
//! 10 minutes that is at most about 1,150 distinct values per series, whatever the load.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::aggregate::Stats;
use crate::catalog::{Metric, Scope, SeriesKey};

/// Adjacent latency buckets differ by this ratio. Publishing a bucket as `2 r^i / (r + 1)` is
/// within `(r - 1) / (r + 1)` = 0.99 % of any value in it (the DDSketch bound).
pub const LATENCY_BUCKET_RATIO: f64 = 1.02;

/// The instance (all requests) series.
pub const INSTANCE_METRICS: [Metric; 8] = [
    Metric::Invocations,
    Metric::Invocation4xxErrors,
    Metric::Invocation5xxErrors,
    Metric::InvocationModelErrors,
    Metric::ModelLatency,
    Metric::OverheadLatency,
    Metric::InvocationsPerInstance,
    Metric::ConcurrentRequestsPerModel,
];

/// The component (all copies of one model on this host) series.
pub const COMPONENT_METRICS: [Metric; 1] = [Metric::ConcurrentRequestsPerModel];

/// The per-copy series.
pub const COPY_METRICS: [Metric; 8] = [
    Metric::Invocations,
    Metric::Invocation4xxErrors,
    Metric::Invocation5xxErrors,
    Metric::InvocationModelErrors,
    Metric::ModelLatency,
    Metric::OverheadLatency,
    Metric::InvocationsPerCopy,
    Metric::ConcurrentRequestsPerCopy,
];

/// The bucket of a latency in microseconds: -1 for anything under 1 µs.
fn bucket(us: f64) -> i32 {
    if us.is_nan() || us < 1.0 {
        return -1;
    }
    // ln(10 min in µs) / ln(1.02) is about 1,160: far inside i32.
    (us.ln() / LATENCY_BUCKET_RATIO.ln())
        .ceil()
        .min(i32::MAX as f64) as i32
}

/// What bucket `index` is published as.
fn representative(index: i32) -> f64 {
    if index < 0 {
        return 0.0;
    }
    2.0 * LATENCY_BUCKET_RATIO.powi(index) / (LATENCY_BUCKET_RATIO + 1.0)
}

/// A latency quantised as it is published.
pub fn quantize_us(us: f64) -> f64 {
    representative(bucket(us))
}

/// A bounded latency distribution: exact minimum, maximum and sum, quantised values.
#[derive(Clone, Debug, Default)]
struct Histogram {
    buckets: BTreeMap<i32, u32>,
    min: f64,
    max: f64,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn record(&mut self, us: f64) {
        let us = if us.is_finite() { us.max(0.0) } else { 0.0 };
        if self.count == 0 {
            self.min = us;
            self.max = us;
        } else {
            self.min = self.min.min(us);
            self.max = self.max.max(us);
        }
        self.sum += us;
        self.count += 1;
        let n = self.buckets.entry(bucket(us)).or_insert(0);
        *n = n.saturating_add(1);
    }

    fn take(&mut self) -> Option<Stats> {
        if self.count == 0 {
            return None;
        }
        let h = std::mem::take(self);
        Some(Stats {
            min: h.min,
            max: h.max,
            sum: h.sum,
            count: h.count,
            distribution: h
                .buckets
                .into_iter()
                .map(|(i, n)| (representative(i), n))
                .collect(),
        })
    }
}

/// `n` samples of one value.
fn repeated(value: f64, n: u64) -> Stats {
    Stats {
        min: value,
        max: value,
        sum: value * n as f64,
        count: n,
        distribution: vec![(value, clamp_u32(n))],
    }
}

/// `n` samples of which `ones` are 1 and the rest 0 (Average = rate).
fn zero_one(ones: u64, n: u64) -> Stats {
    let zeros = n - ones.min(n);
    let mut distribution = Vec::with_capacity(2);
    if zeros > 0 {
        distribution.push((0.0, clamp_u32(zeros)));
    }
    if ones > 0 {
        distribution.push((1.0, clamp_u32(ones)));
    }
    Stats {
        min: if zeros > 0 { 0.0 } else { 1.0 },
        max: if ones > 0 { 1.0 } else { 0.0 },
        sum: ones as f64,
        count: n,
        distribution,
    }
}

fn clamp_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The counted figures of one set of requests.
#[derive(Clone, Debug, Default)]
struct Tally {
    invocations: u64,
    errors_4xx: u64,
    errors_5xx: u64,
    model_errors: u64,
    model_latency: Histogram,
    overhead_latency: Histogram,
}

impl Tally {
    fn record(&mut self, outcome: &Outcome) {
        self.invocations += 1;
        if (400..500).contains(&outcome.status) {
            self.errors_4xx += 1;
        }
        if (500..600).contains(&outcome.status) {
            self.errors_5xx += 1;
        }
        if outcome.model_error {
            self.model_errors += 1;
        }
        let model_us = outcome.model_us.unwrap_or(0.0);
        if let Some(us) = outcome.model_us {
            self.model_latency.record(us);
        }
        self.overhead_latency
            .record((outcome.total_us - model_us).max(0.0));
    }

    /// Appends this tally's series (nothing when it saw no request) and starts it again.
    /// `per` is `InvocationsPerInstance` or `InvocationsPerCopy` with its share per request.
    fn drain(&mut self, scope: &Scope, per: (Metric, f64), out: &mut Vec<(SeriesKey, Stats)>) {
        let n = self.invocations;
        if n == 0 {
            return;
        }
        let mut push = |metric, stats| {
            out.push((
                SeriesKey {
                    scope: scope.clone(),
                    metric,
                },
                stats,
            ))
        };
        push(Metric::Invocations, repeated(1.0, n));
        push(Metric::Invocation4xxErrors, zero_one(self.errors_4xx, n));
        push(Metric::Invocation5xxErrors, zero_one(self.errors_5xx, n));
        push(
            Metric::InvocationModelErrors,
            zero_one(self.model_errors, n),
        );
        if let Some(stats) = self.model_latency.take() {
            push(Metric::ModelLatency, stats);
        }
        if let Some(stats) = self.overhead_latency.take() {
            push(Metric::OverheadLatency, stats);
        }
        push(per.0, repeated(per.1, n));
        *self = Tally::default();
    }
}

/// In-flight requests now, and their least and most since the last tick.
#[derive(Clone, Copy, Debug, Default)]
struct Concurrency {
    now: u64,
    min: u64,
    max: u64,
    /// A request started or finished since the last tick.
    touched: bool,
}

impl Concurrency {
    fn start(&mut self) {
        self.now += 1;
        self.max = self.max.max(self.now);
        self.touched = true;
    }

    fn finish(&mut self) {
        self.now = self.now.saturating_sub(1);
        self.min = self.min.min(self.now);
        self.touched = true;
    }

    /// The tick's minimum and maximum as two samples; the next tick starts from `now`.
    fn drain(&mut self, scope: &Scope, metric: Metric, out: &mut Vec<(SeriesKey, Stats)>) {
        let mut stats = Stats::new(self.min as f64);
        stats.record(self.max as f64);
        out.push((
            SeriesKey {
                scope: scope.clone(),
                metric,
            },
            stats,
        ));
        self.min = self.now;
        self.max = self.now;
        self.touched = false;
    }
}

/// How one request ended, as the front door saw it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outcome {
    /// The status the client got.
    pub status: u16,
    /// The request reached a copy and it did not answer 2xx (refused, reset, timed out, or a
    /// non-2xx status).
    pub model_error: bool,
    /// Time spent waiting on the copy (request sent to last response byte); None: not forwarded.
    pub model_us: Option<f64>,
    /// Time in the front door, first byte of the request to last byte of the response.
    pub total_us: f64,
}

/// The model copy a request went to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CopyKey {
    pub component: Arc<str>,
    pub container_id: Arc<str>,
}

#[derive(Default)]
struct Ledger {
    instance: Tally,
    instance_concurrency: Concurrency,
    components: HashMap<Arc<str>, Concurrency>,
    copies: HashMap<CopyKey, (Tally, Concurrency)>,
}

/// The front door's figures since the last tick.
pub struct Accounts {
    ledger: Mutex<Ledger>,
    instance_count: u32,
}

impl Accounts {
    pub fn new(instance_count: u32) -> Self {
        Accounts {
            ledger: Mutex::new(Ledger::default()),
            instance_count: instance_count.max(1),
        }
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // A panic while holding it leaves plain counters behind: still usable.
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request is in flight (to `copy`, when it was routed to one).
    pub fn start(&self, copy: Option<&CopyKey>) {
        let mut ledger = self.ledger();
        ledger.instance_concurrency.start();
        if let Some(copy) = copy {
            ledger
                .components
                .entry(copy.component.clone())
                .or_default()
                .start();
            ledger.copies.entry(copy.clone()).or_default().1.start();
        }
    }

    /// A request started with [`Accounts::start`] has ended.
    pub fn finish(&self, copy: Option<&CopyKey>, outcome: &Outcome) {
        let mut ledger = self.ledger();
        ledger.instance.record(outcome);
        ledger.instance_concurrency.finish();
        if let Some(copy) = copy {
            if let Some(c) = ledger.components.get_mut(&copy.component) {
                c.finish();
            }
            if let Some((tally, c)) = ledger.copies.get_mut(copy) {
                tally.record(outcome);
                c.finish();
            }
        }
    }

    /// The series of the tick that ends now. `copies_of` says how many copies a component has
    /// now (for `InvocationsPerCopy`). Copies and components without a request in flight or
    /// since the last tick are forgotten.
    pub fn drain(&self, copies_of: impl Fn(&str) -> usize) -> Vec<(SeriesKey, Stats)> {
        let mut out = Vec::new();
        let mut ledger = self.ledger();
        let per_instance = 1.0 / f64::from(self.instance_count);
        ledger.instance.drain(
            &Scope::Invocations,
            (Metric::InvocationsPerInstance, per_instance),
            &mut out,
        );
        ledger.instance_concurrency.drain(
            &Scope::Invocations,
            Metric::ConcurrentRequestsPerModel,
            &mut out,
        );
        ledger.components.retain(|component, c| {
            let keep = c.touched || c.now > 0;
            if keep {
                let scope = Scope::ComponentInvocations {
                    component: component.clone(),
                };
                c.drain(&scope, Metric::ConcurrentRequestsPerModel, &mut out);
            }
            keep
        });
        ledger.copies.retain(|key, (tally, c)| {
            let keep = c.touched || c.now > 0;
            if keep {
                let scope = Scope::CopyInvocations {
                    component: key.component.clone(),
                    container_id: key.container_id.clone(),
                };
                let copies = copies_of(&key.component).max(1);
                tally.drain(
                    &scope,
                    (Metric::InvocationsPerCopy, 1.0 / copies as f64),
                    &mut out,
                );
                c.drain(&scope, Metric::ConcurrentRequestsPerCopy, &mut out);
            }
            keep
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(component: &str, id: &str) -> CopyKey {
        CopyKey {
            component: component.into(),
            container_id: id.into(),
        }
    }

    fn outcome(status: u16, model_us: Option<f64>, total_us: f64) -> Outcome {
        Outcome {
            status,
            model_error: model_us.is_some() && !(200..300).contains(&status),
            model_us,
            total_us,
        }
    }

    fn find<'a>(
        series: &'a [(SeriesKey, Stats)],
        scope: &Scope,
        metric: Metric,
    ) -> Option<&'a Stats> {
        series
            .iter()
            .find(|(k, _)| &k.scope == scope && k.metric == metric)
            .map(|(_, s)| s)
    }

    #[test]
    fn quantised_latencies_stay_within_one_percent() {
        let mut us = 1.0;
        while us < 600e6 {
            let q = quantize_us(us);
            assert!((q - us).abs() / us <= 0.0100, "{us} -> {q}");
            us *= 1.0037;
        }
        assert_eq!(quantize_us(0.4), 0.0);
        assert_eq!(quantize_us(f64::NAN), 0.0);
        assert!(bucket(600e6) < 1200, "bounded bucket count");
    }

    #[test]
    fn counts_errors_and_latencies_per_instance_and_copy() {
        let accounts = Accounts::new(4);
        let a = copy("model-a", "c1");
        for (status, model) in [(200, 100.0), (404, 50.0), (500, 70.0), (200, 30.0)] {
            accounts.start(Some(&a));
            accounts.finish(Some(&a), &outcome(status, Some(model), model + 10.0));
        }
        // Not routed: a 400 from the front door itself.
        accounts.start(None);
        accounts.finish(None, &outcome(400, None, 5.0));
        let series = accounts.drain(|_| 2);
        let i = Scope::Invocations;
        assert_eq!(find(&series, &i, Metric::Invocations).unwrap().count, 5);
        let e4 = find(&series, &i, Metric::Invocation4xxErrors).unwrap();
        assert_eq!((e4.sum, e4.count), (2.0, 5));
        let e5 = find(&series, &i, Metric::Invocation5xxErrors).unwrap();
        assert_eq!(e5.sum, 1.0);
        let me = find(&series, &i, Metric::InvocationModelErrors).unwrap();
        assert_eq!(
            me.sum, 2.0,
            "404 and 500 from the model; the front door's 400 is not"
        );
        let per_instance = find(&series, &i, Metric::InvocationsPerInstance).unwrap();
        assert_eq!(per_instance.sum, 1.25);
        let model = find(&series, &i, Metric::ModelLatency).unwrap();
        assert_eq!((model.count, model.min, model.max), (4, 30.0, 100.0));
        let overhead = find(&series, &i, Metric::OverheadLatency).unwrap();
        assert_eq!((overhead.count, overhead.max), (5, 10.0));
        let c = Scope::CopyInvocations {
            component: "model-a".into(),
            container_id: "c1".into(),
        };
        assert_eq!(find(&series, &c, Metric::Invocations).unwrap().count, 4);
        assert_eq!(
            find(&series, &c, Metric::InvocationsPerCopy).unwrap().sum,
            2.0
        );
        let conc = find(&series, &c, Metric::ConcurrentRequestsPerCopy).unwrap();
        assert_eq!((conc.min, conc.max), (0.0, 1.0));
    }

    #[test]
    fn concurrency_is_the_min_and_max_since_the_last_tick() {
        let accounts = Accounts::new(1);
        let a = copy("m", "c1");
        for _ in 0..3 {
            accounts.start(Some(&a));
        }
        accounts.finish(Some(&a), &outcome(200, Some(1.0), 2.0));
        let series = accounts.drain(|_| 1);
        let model = Scope::ComponentInvocations {
            component: "m".into(),
        };
        let c = find(&series, &model, Metric::ConcurrentRequestsPerModel).unwrap();
        assert_eq!((c.min, c.max), (0.0, 3.0));
        // Next tick: two still in flight, nothing new.
        let series = accounts.drain(|_| 1);
        let c = find(&series, &model, Metric::ConcurrentRequestsPerModel).unwrap();
        assert_eq!((c.min, c.max), (2.0, 2.0));
        assert!(find(&series, &model, Metric::Invocations).is_none());
        accounts.finish(Some(&a), &outcome(200, Some(1.0), 2.0));
        accounts.finish(Some(&a), &outcome(200, Some(1.0), 2.0));
        accounts.drain(|_| 1);
        // Idle copies are forgotten; the instance keeps publishing its zero.
        let series = accounts.drain(|_| 1);
        assert!(find(&series, &model, Metric::ConcurrentRequestsPerModel).is_none());
        let i = find(
            &series,
            &Scope::Invocations,
            Metric::ConcurrentRequestsPerModel,
        )
        .unwrap();
        assert_eq!((i.min, i.max), (0.0, 0.0));
    }

    #[test]
    fn many_requests_keep_a_bounded_distribution() {
        let accounts = Accounts::new(1);
        for i in 0..100_000u32 {
            accounts.start(None);
            let us = 1.0 + f64::from(i % 5000);
            accounts.finish(None, &outcome(200, None, us));
        }
        let series = accounts.drain(|_| 1);
        let overhead = find(&series, &Scope::Invocations, Metric::OverheadLatency).unwrap();
        assert_eq!(overhead.count, 100_000);
        assert!(
            overhead.distribution.len() < 500,
            "{}",
            overhead.distribution.len()
        );
        let n: u64 = overhead
            .distribution
            .iter()
            .map(|(_, n)| u64::from(*n))
            .sum();
        assert_eq!(n, 100_000);
    }
}

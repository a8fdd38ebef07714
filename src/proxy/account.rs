//! Invocation accounting: what the front door learnt about each request, pre-aggregated per
//! series so the sampling loop merges one `Stats` per series per tick however many requests
//! there were.
//!
//! Only invocations are accounted here: requests a copy was asked to answer, whose fate was the
//! copy's (an answer, or a refusal, reset or timeout on the copy's side). The front door's own
//! rejections and the client's faults are counted in `telemetry` instead (see `super`).
//!
//! One short mutex guards the ledger: two lock/unlock pairs per request (start, finish), each a
//! few increments and one map lookup. A request is recorded once, in its copy's tally; the
//! instance series are the copies' tallies merged once a tick (the same figures, without a
//! second record per request). Latencies keep a bounded distribution: each value is
//! quantised to a log-scale bucket (ratio [`LATENCY_BUCKET_RATIO`]) and published as the
//! bucket's representative, within 1 % of the measured value (or 1 µs below 1 µs). From 1 µs to
//! 10 minutes that is at most about 1,150 distinct values per series, whatever the load.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::aggregate::Stats;
use crate::catalog::{Metric, Scope, SeriesKey};

/// Adjacent latency buckets differ by this ratio. Publishing a bucket as `2 r^i / (r + 1)` is
/// within `(r - 1) / (r + 1)` = 0.99 % of any value in it (the DDSketch bound).
pub const LATENCY_BUCKET_RATIO: f64 = 1.02;

/// A bucket's representative is rounded to this many significant digits: it moves by at most
/// 0.005 % (so stays within 1 % of every value in its bucket) and its text in EMF shrinks from
/// about 18 characters to at most 7.
pub const LATENCY_SIGNIFICANT_DIGITS: i32 = 5;

/// `ConcurrentRequestsPerModel` and `ConcurrentRequestsPerCopy` get one data point per this
/// (the spec: "high resolution, a data point every 10 s"), whatever the tick or the window.
pub const CONCURRENCY_PERIOD_MS: u64 = 10_000;

/// The instance series (`{EndpointName, VariantName}`, enhanced `+ InstanceId`).
pub const INSTANCE_METRICS: [Metric; 7] = [
    Metric::Invocations,
    Metric::Invocation4xxErrors,
    Metric::Invocation5xxErrors,
    Metric::InvocationModelErrors,
    Metric::ModelLatency,
    Metric::OverheadLatency,
    Metric::InvocationsPerInstance,
];

/// The series published under `{EndpointName, VariantName}` only.
pub const ENDPOINT_METRICS: [Metric; 5] = [
    Metric::ConcurrentRequestsPerModel,
    Metric::FirstChunkLatency,
    Metric::FirstChunkModelLatency,
    Metric::FirstChunkOverheadLatency,
    Metric::MidStreamErrors,
];

/// The component series (`{InferenceComponentName}` only: all its copies here together).
pub const COMPONENT_METRICS: [Metric; 3] = [
    Metric::InvocationsPerCopy,
    Metric::ConcurrentRequestsPerCopy,
    Metric::NoCapacityInvocationFailures,
];

/// The per-copy series (`{InferenceComponentName}`, enhanced `+ {EndpointName, VariantName,
/// InstanceId, InferenceComponentName, ContainerId}`).
pub const COPY_METRICS: [Metric; 6] = [
    Metric::Invocations,
    Metric::Invocation4xxErrors,
    Metric::Invocation5xxErrors,
    Metric::InvocationModelErrors,
    Metric::ModelLatency,
    Metric::OverheadLatency,
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
    round_significant(
        2.0 * LATENCY_BUCKET_RATIO.powi(index) / (LATENCY_BUCKET_RATIO + 1.0),
        LATENCY_SIGNIFICANT_DIGITS,
    )
}

/// `x` (positive, finite) rounded to `digits` significant digits, as the double nearest that
/// decimal (so its shortest text is at most `digits` digits and a point).
fn round_significant(x: f64, digits: i32) -> f64 {
    let shift = digits - 1 - x.log10().floor() as i32;
    if shift >= 0 {
        // Both operands exact (shift is small): the quotient is the double nearest the decimal.
        (x * 10f64.powi(shift)).round() / 10f64.powi(shift)
    } else {
        (x / 10f64.powi(-shift)).round() * 10f64.powi(-shift)
    }
}

/// A latency quantised as it is published.
pub fn quantize_us(us: f64) -> f64 {
    representative(bucket(us))
}

/// A bounded latency distribution: exact minimum, maximum and sum, quantised values.
///
/// The buckets are counted in one array from the lowest bucket seen to the highest (an index
/// instead of a tree search per value): latencies from 1 µs to a day span under 1,300 buckets,
/// at most about 5 KB, and a tick's latencies usually far fewer.
#[derive(Clone, Debug, Default)]
struct Histogram {
    /// Counts of buckets `first ..`.
    buckets: Vec<u32>,
    first: i32,
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
        self.add(bucket(us), 1);
    }

    /// `n` more values in bucket `index`.
    fn add(&mut self, index: i32, n: u32) {
        if self.buckets.is_empty() {
            self.first = index;
        } else if index < self.first {
            let below = (self.first - index) as usize;
            self.buckets.splice(0..0, std::iter::repeat_n(0, below));
            self.first = index;
        }
        let at = (index - self.first) as usize;
        if at >= self.buckets.len() {
            self.buckets.resize(at + 1, 0);
        }
        self.buckets[at] = self.buckets[at].saturating_add(n);
    }

    /// The buckets in use, lowest first, with their counts.
    fn counts(&self) -> impl Iterator<Item = (i32, u32)> + '_ {
        (self.first..)
            .zip(self.buckets.iter().copied())
            .filter(|&(_, n)| n > 0)
    }

    /// Adds `other`'s values, as if each had been recorded here.
    fn merge(&mut self, other: &Histogram) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            self.min = other.min;
            self.max = other.max;
        } else {
            self.min = self.min.min(other.min);
            self.max = self.max.max(other.max);
        }
        self.sum += other.sum;
        self.count += other.count;
        for (index, n) in other.counts() {
            self.add(index, n);
        }
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
            distribution: h.counts().map(|(i, n)| (representative(i), n)).collect(),
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

fn push(out: &mut Vec<(SeriesKey, Stats)>, scope: &Scope, metric: Metric, stats: Stats) {
    out.push((
        SeriesKey {
            scope: scope.clone(),
            metric,
        },
        stats,
    ));
}

/// The counted figures of one set of invocations.
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
        self.model_latency.record(outcome.model_us);
        self.overhead_latency
            .record((outcome.total_us - outcome.model_us).max(0.0));
    }

    /// Adds `other`'s invocations, as if each had been recorded here.
    fn merge(&mut self, other: &Tally) {
        self.invocations += other.invocations;
        self.errors_4xx += other.errors_4xx;
        self.errors_5xx += other.errors_5xx;
        self.model_errors += other.model_errors;
        self.model_latency.merge(&other.model_latency);
        self.overhead_latency.merge(&other.overhead_latency);
    }

    /// Appends this tally's series (nothing when it saw no request) and starts it again.
    fn drain(&mut self, scope: &Scope, out: &mut Vec<(SeriesKey, Stats)>) {
        let n = self.invocations;
        if n == 0 {
            return;
        }
        push(out, scope, Metric::Invocations, repeated(1.0, n));
        push(
            out,
            scope,
            Metric::Invocation4xxErrors,
            zero_one(self.errors_4xx, n),
        );
        push(
            out,
            scope,
            Metric::Invocation5xxErrors,
            zero_one(self.errors_5xx, n),
        );
        push(
            out,
            scope,
            Metric::InvocationModelErrors,
            zero_one(self.model_errors, n),
        );
        if let Some(stats) = self.model_latency.take() {
            push(out, scope, Metric::ModelLatency, stats);
        }
        if let Some(stats) = self.overhead_latency.take() {
            push(out, scope, Metric::OverheadLatency, stats);
        }
        *self = Tally::default();
    }
}

/// The streamed answers' figures.
#[derive(Clone, Debug, Default)]
struct StreamTally {
    streams: u64,
    broke: u64,
    first_chunk: Histogram,
    first_chunk_model: Histogram,
    first_chunk_overhead: Histogram,
}

impl StreamTally {
    fn record(&mut self, stream: &StreamOutcome) {
        self.streams += 1;
        if stream.broke_mid_stream {
            self.broke += 1;
        }
        if let Some(first) = &stream.first_chunk {
            self.first_chunk.record(first.total_us);
            self.first_chunk_model.record(first.model_us);
            self.first_chunk_overhead
                .record((first.total_us - first.model_us).max(0.0));
        }
    }

    fn drain(&mut self, out: &mut Vec<(SeriesKey, Stats)>) {
        let scope = &Scope::EndpointInvocations;
        if self.streams == 0 {
            return;
        }
        for (metric, histogram) in [
            (Metric::FirstChunkLatency, &mut self.first_chunk),
            (Metric::FirstChunkModelLatency, &mut self.first_chunk_model),
            (
                Metric::FirstChunkOverheadLatency,
                &mut self.first_chunk_overhead,
            ),
        ] {
            if let Some(stats) = histogram.take() {
                push(out, scope, metric, stats);
            }
        }
        push(
            out,
            scope,
            Metric::MidStreamErrors,
            zero_one(self.broke, self.streams),
        );
        *self = StreamTally::default();
    }
}

/// Requests in flight now, and the most since the last data point.
#[derive(Clone, Copy, Debug, Default)]
struct Concurrency {
    now: u64,
    max: u64,
}

impl Concurrency {
    fn start(&mut self) {
        self.now += 1;
        self.max = self.max.max(self.now);
    }

    fn finish(&mut self) {
        self.now = self.now.saturating_sub(1);
    }

    /// The most in flight since the last call; the next period starts from `now`.
    fn take_max(&mut self) -> u64 {
        std::mem::replace(&mut self.max, self.now)
    }
}

/// One inference component, all its copies here together.
#[derive(Clone, Debug, Default)]
struct ComponentLedger {
    concurrency: Concurrency,
    /// Invocations since the last tick (`InvocationsPerCopy`).
    invocations: u64,
    /// Requests no copy could take since the last tick.
    no_capacity: u64,
    /// A request started since the last concurrency data point.
    active: bool,
}

/// The first response chunk of a streamed answer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FirstChunk {
    /// From the request's arrival to the first chunk handed to the client's connection.
    pub total_us: f64,
    /// From sending the request to the copy to its first chunk arriving.
    pub model_us: f64,
}

/// What a streamed answer did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StreamOutcome {
    /// None: it ended or failed before its first chunk.
    pub first_chunk: Option<FirstChunk>,
    /// The copy broke it off after its first chunk.
    pub broke_mid_stream: bool,
}

/// How one invocation ended, as the front door saw it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outcome {
    /// The status the client got: the copy's, or 502/504 when the copy failed to answer.
    pub status: u16,
    /// The copy did not answer 2xx (refused, reset, timed out, broke off, or a non-2xx status).
    pub model_error: bool,
    /// Time spent waiting on the copy: request sent to its last response byte (or its failure).
    pub model_us: f64,
    /// Time in the front door, the request's arrival to the last byte of the response.
    pub total_us: f64,
    /// Some for a streamed answer (see `super::is_streamed`).
    pub stream: Option<StreamOutcome>,
}

/// The model copy a request went to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CopyKey {
    pub component: Arc<str>,
    pub container_id: Arc<str>,
}

/// The ledger's maps are looked up three times per request; their keys are component names and
/// container IDs from the upstream table (never a client's bytes), so a fast hash (foldhash,
/// seeded per process) replaces std's SipHash, which was 0.6 % of the front door's CPU.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Default)]
struct Ledger {
    streams: StreamTally,
    concurrency: Concurrency,
    components: FastMap<Arc<str>, ComponentLedger>,
    copies: FastMap<CopyKey, Tally>,
    /// When the current concurrency period ends (wall clock, ms); None before the first tick.
    concurrency_period_end_ms: Option<u64>,
}

impl Ledger {
    /// Applies `f` to `name`'s ledger, made on its first request (one lookup, and the name is
    /// cloned only then).
    fn with_component<R>(
        &mut self,
        name: &Arc<str>,
        f: impl FnOnce(&mut ComponentLedger) -> R,
    ) -> R {
        if let Some(component) = self.components.get_mut(name) {
            return f(component);
        }
        let mut component = ComponentLedger::default();
        let r = f(&mut component);
        self.components.insert(name.clone(), component);
        r
    }
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

    /// A request was routed to `copy`: in flight until [`Accounts::finish`].
    pub fn start(&self, copy: &CopyKey) {
        let mut ledger = self.ledger();
        ledger.concurrency.start();
        ledger.with_component(&copy.component, |component| {
            component.concurrency.start();
            component.active = true;
        });
    }

    /// A request started with [`Accounts::start`] has ended: an invocation with its
    /// `outcome`, or (None) not one: the client's fault, or cut off by the shutdown.
    pub fn finish(&self, copy: &CopyKey, outcome: Option<&Outcome>) {
        let mut ledger = self.ledger();
        ledger.concurrency.finish();
        ledger.with_component(&copy.component, |component| {
            component.concurrency.finish();
            if outcome.is_some() {
                component.invocations += 1;
            }
        });
        let Some(outcome) = outcome else { return };
        if let Some(stream) = &outcome.stream {
            ledger.streams.record(stream);
        }
        match ledger.copies.get_mut(copy) {
            Some(tally) => tally.record(outcome),
            None => {
                let mut tally = Tally::default();
                tally.record(outcome);
                ledger.copies.insert(copy.clone(), tally);
            }
        }
    }

    /// A request named `component`, which has no copy that could take it now.
    pub fn no_capacity(&self, component: &Arc<str>) {
        let mut ledger = self.ledger();
        match ledger.components.get_mut(component) {
            Some(c) => c.no_capacity += 1,
            None => {
                let c = ComponentLedger {
                    no_capacity: 1,
                    ..Default::default()
                };
                ledger.components.insert(component.clone(), c);
            }
        }
    }

    /// The series of the tick at `tick_ms` (wall clock). `copies` lists the components that
    /// have copies now, with how many (`InvocationsPerCopy`, `ConcurrentRequestsPerCopy`).
    /// The tick at or after the end of a [`CONCURRENCY_PERIOD_MS`] period adds that period's
    /// concurrency data points; `last` (the front door stopping) adds them for the partial one.
    pub fn drain(
        &self,
        tick_ms: u64,
        copies: &[(Arc<str>, usize)],
        last: bool,
    ) -> Vec<(SeriesKey, Stats)> {
        let copies_of = |component: &str| {
            copies
                .iter()
                .find(|(c, _)| &**c == component)
                .map_or(0, |(_, n)| *n)
        };
        let mut out = Vec::new();
        let mut guard = self.ledger();
        let ledger = &mut *guard;
        let mut instance = Tally::default();
        for tally in ledger.copies.values() {
            instance.merge(tally);
        }
        let n = instance.invocations;
        instance.drain(&Scope::Invocations, &mut out);
        if n > 0 {
            let share = 1.0 / f64::from(self.instance_count);
            push(
                &mut out,
                &Scope::Invocations,
                Metric::InvocationsPerInstance,
                repeated(share, n),
            );
        }
        ledger.streams.drain(&mut out);
        for (key, mut tally) in ledger.copies.drain() {
            let scope = Scope::CopyInvocations {
                component: key.component,
                container_id: key.container_id,
            };
            tally.drain(&scope, &mut out);
        }
        for (component, c) in ledger.components.iter_mut() {
            let scope = Scope::ComponentInvocations {
                component: component.clone(),
            };
            if c.invocations > 0 {
                let share = 1.0 / copies_of(component).max(1) as f64;
                push(
                    &mut out,
                    &scope,
                    Metric::InvocationsPerCopy,
                    repeated(share, c.invocations),
                );
                c.invocations = 0;
            }
            if c.no_capacity > 0 {
                push(
                    &mut out,
                    &scope,
                    Metric::NoCapacityInvocationFailures,
                    repeated(1.0, c.no_capacity),
                );
                c.no_capacity = 0;
            }
        }
        // The first tick closes the period that holds it when it is on its end.
        let first_end = || {
            crate::clock::window_start_ms(tick_ms, CONCURRENCY_PERIOD_MS / 1000)
                + CONCURRENCY_PERIOD_MS
        };
        let end = *ledger
            .concurrency_period_end_ms
            .get_or_insert_with(first_end);
        if last || tick_ms >= end {
            ledger.concurrency_period_end_ms = Some(period_end(tick_ms));
            self.concurrency_points(ledger, copies, &mut out);
        }
        out
    }

    /// One `ConcurrentRequestsPerModel` point (the most requests in flight at once in the
    /// period) and one `ConcurrentRequestsPerCopy` point per component with copies or requests
    /// (its most in flight at once, divided by its copies now).
    fn concurrency_points(
        &self,
        ledger: &mut Ledger,
        copies: &[(Arc<str>, usize)],
        out: &mut Vec<(SeriesKey, Stats)>,
    ) {
        let most = ledger.concurrency.take_max();
        push(
            out,
            &Scope::EndpointInvocations,
            Metric::ConcurrentRequestsPerModel,
            Stats::new(most as f64),
        );
        for (component, _) in copies {
            ledger.components.entry(component.clone()).or_default();
        }
        ledger.components.retain(|component, c| {
            let n = copies
                .iter()
                .find(|(name, _)| name == component)
                .map_or(0, |(_, n)| *n);
            let publish = n > 0 || c.active || c.concurrency.now > 0;
            if publish {
                let most = c.concurrency.take_max();
                let scope = Scope::ComponentInvocations {
                    component: component.clone(),
                };
                push(
                    out,
                    &scope,
                    Metric::ConcurrentRequestsPerCopy,
                    Stats::new(most as f64 / n.max(1) as f64),
                );
            }
            c.active = false;
            // Gone from the table and idle: forgotten (a later request brings it back).
            n > 0 || c.concurrency.now > 0
        });
    }
}

/// The end of the concurrency period that holds `tick_ms`, or the next one when `tick_ms` is
/// on a boundary (a period is `(end - 10 s, end]`, as windows are).
fn period_end(tick_ms: u64) -> u64 {
    (tick_ms / CONCURRENCY_PERIOD_MS + 1) * CONCURRENCY_PERIOD_MS
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

    fn outcome(status: u16, model_us: f64, total_us: f64) -> Outcome {
        Outcome {
            status,
            model_error: !(200..300).contains(&status),
            model_us,
            total_us,
            stream: None,
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

    fn component(name: &str) -> Scope {
        Scope::ComponentInvocations {
            component: name.into(),
        }
    }

    #[test]
    fn quantised_latencies_stay_within_one_percent_and_are_short() {
        let mut us = 1.0;
        let mut ryu = ryu::Buffer::new();
        while us < 600e6 {
            let q = quantize_us(us);
            assert!((q - us).abs() / us <= 0.0100, "{us} -> {q}");
            let text = ryu.format_finite(q);
            assert!(text.len() <= 12, "{q} prints as {text}");
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
            accounts.start(&a);
            accounts.finish(&a, Some(&outcome(status, model, model + 10.0)));
        }
        // The client's fault: in flight for a while, never an invocation.
        accounts.start(&a);
        accounts.finish(&a, None);
        let series = accounts.drain(1_000, &[("model-a".into(), 2)], false);
        let i = Scope::Invocations;
        assert_eq!(find(&series, &i, Metric::Invocations).unwrap().count, 4);
        let e4 = find(&series, &i, Metric::Invocation4xxErrors).unwrap();
        assert_eq!((e4.sum, e4.count), (1.0, 4));
        let e5 = find(&series, &i, Metric::Invocation5xxErrors).unwrap();
        assert_eq!(e5.sum, 1.0);
        let me = find(&series, &i, Metric::InvocationModelErrors).unwrap();
        assert_eq!(me.sum, 2.0, "the 404 and the 500");
        let per_instance = find(&series, &i, Metric::InvocationsPerInstance).unwrap();
        assert_eq!((per_instance.sum, per_instance.count), (1.0, 4));
        let model = find(&series, &i, Metric::ModelLatency).unwrap();
        assert_eq!((model.count, model.min, model.max), (4, 30.0, 100.0));
        let overhead = find(&series, &i, Metric::OverheadLatency).unwrap();
        assert_eq!((overhead.count, overhead.max), (4, 10.0));
        let c = Scope::CopyInvocations {
            component: "model-a".into(),
            container_id: "c1".into(),
        };
        assert_eq!(find(&series, &c, Metric::Invocations).unwrap().count, 4);
        assert!(find(&series, &c, Metric::InvocationsPerCopy).is_none());
        let per_copy = find(&series, &component("model-a"), Metric::InvocationsPerCopy).unwrap();
        assert_eq!((per_copy.sum, per_copy.count), (2.0, 4), "1/2 per request");
        assert!(
            find(
                &series,
                &Scope::EndpointInvocations,
                Metric::MidStreamErrors
            )
            .is_none(),
            "no stream, no streaming series"
        );
    }

    #[test]
    fn concurrency_is_one_point_per_10_s_the_most_in_flight() {
        let accounts = Accounts::new(1);
        let a = copy("m", "c1");
        let copies = [(Arc::from("m"), 2)];
        // Period (0, 10 s]: three at once at most.
        for _ in 0..3 {
            accounts.start(&a);
        }
        accounts.finish(&a, Some(&outcome(200, 1.0, 2.0)));
        let per_model = |series: &[(SeriesKey, Stats)]| {
            find(
                series,
                &Scope::EndpointInvocations,
                Metric::ConcurrentRequestsPerModel,
            )
            .map(|s| (s.count, s.max))
        };
        let per_copy = |series: &[(SeriesKey, Stats)]| {
            find(series, &component("m"), Metric::ConcurrentRequestsPerCopy)
                .map(|s| (s.count, s.max))
        };
        for tick in [1_000, 5_000, 9_900] {
            let series = accounts.drain(tick, &copies, false);
            assert_eq!(
                per_model(&series),
                None,
                "no point inside the period ({tick})"
            );
        }
        let series = accounts.drain(10_000, &copies, false);
        assert_eq!(per_model(&series), Some((1, 3.0)));
        assert_eq!(per_copy(&series), Some((1, 1.5)), "3 in flight / 2 copies");
        // Next period: two still in flight throughout, then one more briefly.
        accounts.start(&a);
        accounts.finish(&a, Some(&outcome(200, 1.0, 2.0)));
        assert_eq!(per_model(&accounts.drain(15_000, &copies, false)), None);
        let series = accounts.drain(20_000, &copies, false);
        assert_eq!(per_model(&series), Some((1, 3.0)));
        // A late tick (12 s past) still closes the period, once.
        let series = accounts.drain(32_000, &copies, false);
        assert_eq!(per_model(&series), Some((1, 2.0)));
        assert_eq!(per_model(&accounts.drain(33_000, &copies, false)), None);
        accounts.finish(&a, Some(&outcome(200, 1.0, 2.0)));
        accounts.finish(&a, Some(&outcome(200, 1.0, 2.0)));
        // Stopping closes the partial period.
        let series = accounts.drain(35_000, &copies, true);
        assert_eq!(per_model(&series), Some((1, 2.0)));
        // Idle: zeros, for the endpoint and every component with copies.
        let series = accounts.drain(50_000, &copies, false);
        assert_eq!(per_model(&series), Some((1, 0.0)));
        assert_eq!(per_copy(&series), Some((1, 0.0)));
        // A component gone from the table and idle is forgotten.
        let series = accounts.drain(60_000, &[], false);
        assert_eq!(per_copy(&series), None);
        assert_eq!(per_model(&series), Some((1, 0.0)));
    }

    #[test]
    fn streams_give_first_chunk_latencies_and_mid_stream_errors() {
        let accounts = Accounts::new(1);
        let a = copy("m", "c1");
        let streamed = |first: Option<(f64, f64)>, broke| Outcome {
            stream: Some(StreamOutcome {
                first_chunk: first.map(|(total_us, model_us)| FirstChunk { total_us, model_us }),
                broke_mid_stream: broke,
            }),
            ..outcome(200, 500.0, 600.0)
        };
        for o in [
            streamed(Some((120.0, 100.0)), false),
            streamed(Some((230.0, 200.0)), true),
            streamed(None, false),
            outcome(200, 10.0, 20.0),
        ] {
            accounts.start(&a);
            accounts.finish(&a, Some(&o));
        }
        let series = accounts.drain(1_000, &[("m".into(), 1)], false);
        let e = Scope::EndpointInvocations;
        let total = find(&series, &e, Metric::FirstChunkLatency).unwrap();
        assert_eq!((total.count, total.min, total.max), (2, 120.0, 230.0));
        let model = find(&series, &e, Metric::FirstChunkModelLatency).unwrap();
        assert_eq!((model.count, model.sum), (2, 300.0));
        let overhead = find(&series, &e, Metric::FirstChunkOverheadLatency).unwrap();
        assert_eq!(
            (overhead.count, overhead.min, overhead.max),
            (2, 20.0, 30.0)
        );
        let broke = find(&series, &e, Metric::MidStreamErrors).unwrap();
        assert_eq!(
            (broke.count, broke.sum),
            (3, 1.0),
            "one point per streamed answer"
        );
        assert_eq!(
            find(&series, &Scope::Invocations, Metric::Invocations)
                .unwrap()
                .count,
            4
        );
    }

    #[test]
    fn no_capacity_failures_are_counted_per_component_and_are_not_invocations() {
        let accounts = Accounts::new(1);
        let gone: Arc<str> = "scaled-to-zero".into();
        accounts.no_capacity(&gone);
        accounts.no_capacity(&gone);
        let series = accounts.drain(1_000, &[], false);
        let failures = find(
            &series,
            &component("scaled-to-zero"),
            Metric::NoCapacityInvocationFailures,
        )
        .unwrap();
        assert_eq!((failures.count, failures.sum), (2, 2.0));
        assert!(find(&series, &Scope::Invocations, Metric::Invocations).is_none());
        let series = accounts.drain(2_000, &[], false);
        assert!(
            find(
                &series,
                &component("scaled-to-zero"),
                Metric::NoCapacityInvocationFailures
            )
            .is_none(),
            "counted once"
        );
    }

    proptest::proptest! {
        /// Latencies recorded in two tallies and merged give what one tally of them all gives:
        /// how the instance series come from the copies' tallies.
        #[test]
        fn merged_histograms_equal_one_of_every_value(
            first in proptest::collection::vec(0.0f64..1e9, 0..40),
            second in proptest::collection::vec(0.0f64..1e9, 0..40),
        ) {
            let (mut all, mut a, mut b) = (Histogram::default(), Histogram::default(), Histogram::default());
            for &us in &first {
                all.record(us);
                a.record(us);
            }
            for &us in &second {
                all.record(us);
                b.record(us);
            }
            a.merge(&b);
            let (merged, direct) = (a.take(), all.take());
            proptest::prop_assert_eq!(merged.is_some(), direct.is_some());
            if let (Some(m), Some(d)) = (merged, direct) {
                proptest::prop_assert_eq!((m.min, m.max, m.count), (d.min, d.max, d.count));
                proptest::prop_assert_eq!(m.distribution, d.distribution);
                proptest::prop_assert!((m.sum - d.sum).abs() <= 1e-9 * d.sum.max(1.0));
            }
        }
    }

    #[test]
    fn many_requests_keep_a_bounded_distribution() {
        let accounts = Accounts::new(1);
        let a = copy("m", "c1");
        for i in 0..100_000u32 {
            accounts.start(&a);
            let us = 1.0 + f64::from(i % 5000);
            accounts.finish(&a, Some(&outcome(200, us, 2.0 * us)));
        }
        let series = accounts.drain(1_000, &[("m".into(), 1)], false);
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

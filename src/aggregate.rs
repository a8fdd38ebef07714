//! Samples to per-window statistics. Pure and synchronous: `pipeline` feeds it.
//!
//! SageMaker's data shape ([`DataPoints::Period`], the default): a utilization, reservation or
//! cost series gets exactly one data point per publish period, its mean (or, for what accrues,
//! its sum), whatever the sampling interval; per-request series (invocations) keep one data
//! point per request. [`DataPoints::EverySample`] keeps every sample's value for every series
//! (the distribution: distinct values with counts), so percentiles inside a period are exact.
//! Which value a series gets is the catalog's ([`Metric::period_value`]).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::catalog::{Metric, PeriodValue, Sample, SeriesKey};

/// How many data points a utilization, reservation or cost series gets per publish period
/// (`[metrics] data_points`). Per-request series always keep one per request.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DataPoints {
    /// One: the period's mean (sum for accrued cost). SageMaker's shape, which its recipes
    /// (`SampleCount` counts instances and GPUs) rely on.
    #[default]
    Period,
    /// Every sample's value, for percentiles inside a period. Breaks those recipes.
    EverySample,
}

impl DataPoints {
    pub fn as_str(self) -> &'static str {
        match self {
            DataPoints::Period => "period",
            DataPoints::EverySample => "every_sample",
        }
    }

    /// Whether a series of `metric` keeps its distribution under this setting.
    pub fn keeps_every_value(self, metric: Metric) -> bool {
        self == DataPoints::EverySample || metric.period_value() == PeriodValue::Each
    }
}

/// Statistics of one series over one window.
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    pub count: u64,
    /// Distinct values in ascending order, each with how many samples had it.
    pub distribution: Vec<(f64, u32)>,
}

impl Stats {
    pub fn new(value: f64) -> Self {
        Stats {
            min: value,
            max: value,
            sum: value,
            count: 1,
            distribution: vec![(value, 1)],
        }
    }

    pub fn record(&mut self, value: f64) {
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.sum += value;
        self.count += 1;
        match self
            .distribution
            .binary_search_by(|(v, _)| v.total_cmp(&value))
        {
            Ok(i) => self.distribution[i].1 += 1,
            Err(i) => self.distribution.insert(i, (value, 1)),
        }
    }

    /// Merges another window's statistics of the same series into this one.
    pub fn merge(&mut self, other: &Stats) {
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
        self.count += other.count;
        for &(value, n) in &other.distribution {
            match self
                .distribution
                .binary_search_by(|(v, _)| v.total_cmp(&value))
            {
                Ok(i) => self.distribution[i].1 += n,
                Err(i) => self.distribution.insert(i, (value, n)),
            }
        }
    }

    /// Adds a value to the totals only (a series that publishes one data point per period
    /// needs no distribution).
    pub fn record_total(&mut self, value: f64) {
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.sum += value;
        self.count += 1;
    }

    /// Adds another's totals only (see [`Stats::record_total`]).
    pub fn merge_total(&mut self, other: &Stats) {
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
        self.count += other.count;
    }

    pub fn mean(&self) -> f64 {
        self.sum / self.count as f64
    }

    /// The period's one data point: the statistics of the single value `value`.
    fn single(value: f64) -> Stats {
        Stats::new(value)
    }
}

/// One closed publish window: its start (wall clock, ms since the epoch), its length, and the
/// statistics of every series that had at least one sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    pub start_ms: u64,
    pub period_seconds: u64,
    /// Sorted by series key, so output is deterministic.
    pub series: Vec<(SeriesKey, Stats)>,
}

/// Why a sample was not recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("value is not finite")]
    NotFinite,
}

/// Accumulates samples for the current window.
#[derive(Debug, Default)]
pub struct Aggregator {
    series: HashMap<SeriesKey, Stats>,
    data_points: DataPoints,
}

impl Aggregator {
    pub fn new(data_points: DataPoints) -> Self {
        Aggregator {
            series: HashMap::new(),
            data_points,
        }
    }

    /// Records one sample. Non-finite values are refused: CloudWatch rejects them.
    pub fn record(&mut self, sample: Sample) -> Result<(), RecordError> {
        if !sample.value.is_finite() {
            return Err(RecordError::NotFinite);
        }
        let every = self.data_points.keeps_every_value(sample.key.metric);
        match self.series.get_mut(&sample.key) {
            Some(stats) if every => stats.record(sample.value),
            Some(stats) => stats.record_total(sample.value),
            None => {
                self.series.insert(sample.key, Stats::new(sample.value));
            }
        }
        Ok(())
    }

    /// Merges statistics gathered elsewhere (the front door pre-aggregates its requests, one
    /// `Stats` per series per tick) into the current window.
    pub fn merge(&mut self, key: SeriesKey, stats: &Stats) -> Result<(), RecordError> {
        if !(stats.min.is_finite() && stats.max.is_finite() && stats.sum.is_finite()) {
            return Err(RecordError::NotFinite);
        }
        let every = self.data_points.keeps_every_value(key.metric);
        match self.series.get_mut(&key) {
            Some(current) if every => current.merge(stats),
            Some(current) => current.merge_total(stats),
            None => {
                self.series.insert(key, stats.clone());
            }
        }
        Ok(())
    }

    /// How many series the current window holds.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Closes the current window and starts an empty one. A series that publishes one data
    /// point per period gets it here: the mean of its samples, or their sum.
    pub fn flush(&mut self, start_ms: u64, period_seconds: u64) -> Window {
        let data_points = self.data_points;
        let mut series: Vec<(SeriesKey, Stats)> = self
            .series
            .drain()
            .map(|(key, stats)| {
                if data_points.keeps_every_value(key.metric) {
                    return (key, stats);
                }
                let value = match key.metric.period_value() {
                    PeriodValue::Sum => stats.sum,
                    PeriodValue::Max => stats.max,
                    PeriodValue::Mean | PeriodValue::Each => stats.mean(),
                };
                (key, Stats::single(value))
            })
            .collect();
        series.sort_by(|a, b| a.0.cmp(&b.0));
        Window {
            start_ms,
            period_seconds,
            series,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Metric, Scope};

    fn sample(metric: Metric, value: f64) -> Sample {
        Sample::new(Scope::Instance, metric, value)
    }

    #[test]
    fn keeps_min_max_sum_count_and_distribution() {
        let mut agg = Aggregator::new(DataPoints::EverySample);
        for v in [3.0, 1.0, 3.0, 2.5, 1.0, 3.0] {
            agg.record(sample(Metric::CpuUtilization, v)).unwrap();
        }
        let window = agg.flush(60_000, 60);
        assert_eq!(window.series.len(), 1);
        let stats = &window.series[0].1;
        assert_eq!(stats.min, 1.0);
        assert_eq!(stats.max, 3.0);
        assert_eq!(stats.sum, 13.5);
        assert_eq!(stats.count, 6);
        assert_eq!(stats.distribution, vec![(1.0, 2), (2.5, 1), (3.0, 3)]);
        assert!(agg.is_empty(), "flush starts an empty window");
    }

    #[test]
    fn series_are_kept_apart_and_sorted() {
        let mut agg = Aggregator::new(DataPoints::EverySample);
        agg.record(sample(Metric::MemoryUtilization, 5.0)).unwrap();
        agg.record(Sample::new(
            Scope::Gpu { index: 1 },
            Metric::GpuUtilization,
            7.0,
        ))
        .unwrap();
        agg.record(sample(Metric::CpuUtilization, 1.0)).unwrap();
        agg.record(Sample::new(
            Scope::Gpu { index: 0 },
            Metric::GpuUtilization,
            9.0,
        ))
        .unwrap();
        let window = agg.flush(0, 10);
        let keys: Vec<_> = window
            .series
            .iter()
            .map(|(k, _)| (k.scope.clone(), k.metric))
            .collect();
        assert_eq!(
            keys,
            vec![
                (Scope::Instance, Metric::CpuUtilization),
                (Scope::Instance, Metric::MemoryUtilization),
                (Scope::Gpu { index: 0 }, Metric::GpuUtilization),
                (Scope::Gpu { index: 1 }, Metric::GpuUtilization),
            ]
        );
    }

    #[test]
    fn non_finite_values_are_refused() {
        let mut agg = Aggregator::new(DataPoints::EverySample);
        assert_eq!(
            agg.record(sample(Metric::CpuUtilization, f64::NAN)),
            Err(RecordError::NotFinite)
        );
        assert_eq!(
            agg.record(sample(Metric::CpuUtilization, f64::INFINITY)),
            Err(RecordError::NotFinite)
        );
        assert!(agg.is_empty());
    }

    #[test]
    fn negative_zero_and_zero_are_distinct_in_order_but_both_kept() {
        let mut agg = Aggregator::new(DataPoints::EverySample);
        agg.record(sample(Metric::CpuUtilization, 0.0)).unwrap();
        agg.record(sample(Metric::CpuUtilization, 0.0)).unwrap();
        let stats = &agg.flush(0, 10).series[0].1;
        assert_eq!(stats.distribution, vec![(0.0, 2)]);
    }

    #[test]
    fn merged_stats_join_recorded_samples() {
        let mut agg = Aggregator::new(DataPoints::EverySample);
        agg.record(sample(Metric::Invocations, 1.0)).unwrap();
        let mut pre = Stats::new(1.0);
        pre.record(1.0);
        let key = SeriesKey {
            scope: Scope::Instance,
            metric: Metric::Invocations,
        };
        agg.merge(key.clone(), &pre).unwrap();
        let mut bad = Stats::new(1.0);
        bad.sum = f64::NAN;
        assert_eq!(agg.merge(key, &bad), Err(RecordError::NotFinite));
        let stats = &agg.flush(0, 60).series[0].1;
        assert_eq!(stats.count, 3);
        assert_eq!(stats.distribution, vec![(1.0, 3)]);
    }

    #[test]
    fn merge_adds_up() {
        let mut a = Stats::new(1.0);
        a.record(2.0);
        let mut b = Stats::new(2.0);
        b.record(5.0);
        a.merge(&b);
        assert_eq!((a.min, a.max, a.sum, a.count), (1.0, 5.0, 10.0, 4));
        assert_eq!(a.distribution, vec![(1.0, 1), (2.0, 2), (5.0, 1)]);
        assert_eq!(a.mean(), 2.5);
    }
}

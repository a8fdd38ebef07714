//! The synchronous middle of the pipeline: each tick's samples and invocation series in, encoded
//! windows out. Pure bookkeeping of publish windows (aligned to the wall clock by `clock`); the
//! statistics are `aggregate`'s, the documents and requests `encode`'s.
//!
//! Two windows run side by side ([`Windows`]): the sampling window of the publish frequency,
//! and the invocation window, which is the same one with enhanced metrics and 60 s without
//! ("without enhanced metrics the frequency applies to utilization metrics only").

use crate::aggregate::{Aggregator, DataPoints, RecordError, Stats};
use crate::catalog::{storage_resolution, Identity, Sample, SeriesKey};
use crate::clock::window_start_ms;
use crate::config::{Config, EmfDestination};
use crate::encode::{
    emf_counted, otlp_counted, put_metric_data_counted, EncodeContext, Encoded, Encoding,
};
use crate::telemetry::{self, Counter};

/// One sequence of publish windows of one period.
pub struct Pipeline {
    aggregator: Aggregator,
    window_start_ms: Option<u64>,
    period_seconds: u64,
    ctx: EncodeContext,
    encoding: Encoding,
}

impl Pipeline {
    pub fn new(
        ctx: EncodeContext,
        period_seconds: u64,
        encoding: Encoding,
        data_points: DataPoints,
    ) -> Self {
        Pipeline {
            aggregator: Aggregator::new(data_points),
            window_start_ms: None,
            period_seconds,
            ctx,
            encoding,
        }
    }

    /// Records the samples of the tick at `tick_ms`. Returns the previous window's documents
    /// when this tick opens a new window.
    pub fn record(
        &mut self,
        tick_ms: u64,
        samples: impl IntoIterator<Item = Sample>,
    ) -> Option<Encoded> {
        let window = window_start_ms(tick_ms, self.period_seconds);
        let closed = match self.window_start_ms {
            Some(current) if current != window => self.flush(),
            _ => None,
        };
        self.window_start_ms = Some(window);
        let mut rejected = 0;
        for sample in samples {
            if let Err(RecordError::NotFinite) = self.aggregator.record(sample) {
                rejected += 1;
            }
        }
        telemetry::warn(
            Counter::SampleValuesRejected,
            rejected,
            "non-finite sample values not recorded",
        );
        closed
    }

    /// Merges pre-aggregated series (the front door's, one `Stats` per series per tick) into
    /// the current window; call after [`Pipeline::record`] for the same tick.
    pub fn merge(&mut self, series: Vec<(SeriesKey, Stats)>) {
        let mut rejected = 0;
        for (key, stats) in series {
            if self.aggregator.merge(key, &stats).is_err() {
                rejected += 1;
            }
        }
        telemetry::warn(
            Counter::SampleValuesRejected,
            rejected,
            "non-finite invocation statistics not recorded",
        );
    }

    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Changes how windows are encoded from now on, the current one included (reload).
    pub fn set_context(&mut self, ctx: EncodeContext, encoding: Encoding) {
        self.ctx = ctx;
        self.encoding = encoding;
    }

    /// Closes the current window (partial or not) and encodes it. None if it holds nothing.
    pub fn flush(&mut self) -> Option<Encoded> {
        let start = self.window_start_ms.take()?;
        let window = self.aggregator.flush(start, self.period_seconds);
        if window.series.is_empty() {
            return None;
        }
        Some(match self.encoding {
            Encoding::Emf { max_document_bytes } => Encoded::Emf {
                window_start_ms: window.start_ms,
                documents: emf_counted(&window, &self.ctx, max_document_bytes),
            },
            Encoding::PutMetricData => Encoded::PutMetricData {
                window_start_ms: window.start_ms,
                requests: put_metric_data_counted(&window, &self.ctx),
            },
            Encoding::Otlp => Encoded::Otlp {
                window_start_ms: window.start_ms,
                requests: otlp_counted(&window, &self.ctx),
            },
        })
    }
}

/// The sampling window and the invocation window, fed once a tick.
pub struct Windows {
    samples: Pipeline,
    /// The invocation series' own window, when its period is not the sampling window's.
    invocations: Option<Pipeline>,
    invocation_period_seconds: u64,
    invocation_ctx: EncodeContext,
}

impl Windows {
    pub fn new(config: &Config, identity: Identity, encoding: Encoding) -> Windows {
        let ctx = encode_context(config, identity.clone());
        let period = config.metrics.publish_frequency_seconds;
        let mut windows = Windows {
            samples: Pipeline::new(ctx.clone(), period, encoding, config.metrics.data_points),
            invocations: None,
            invocation_period_seconds: period,
            invocation_ctx: ctx,
        };
        windows.reconfigure(config, identity, encoding);
        windows
    }

    /// Follows a reloaded configuration and sink from now on, the current windows included
    /// (their samples are kept).
    pub fn reconfigure(&mut self, config: &Config, identity: Identity, encoding: Encoding) {
        let ctx = encode_context(config, identity);
        let period = invocation_period(config);
        let mut invocation_ctx = ctx.clone();
        // A 60 s invocation window is standard resolution even when the rest is high resolution.
        invocation_ctx.storage_resolution = storage_resolution(period);
        self.samples.set_context(ctx, encoding);
        self.invocation_period_seconds = period;
        self.invocation_ctx = invocation_ctx;
    }

    pub fn encoding(&self) -> Encoding {
        self.samples.encoding()
    }

    /// Records one tick: its samples in the sampling window, its pre-aggregated series each in
    /// its scope's window (invocation series in theirs, the model servers' requests in the
    /// sampling window). Appends the windows that closed to `closed`.
    pub fn record(
        &mut self,
        tick_ms: u64,
        samples: impl IntoIterator<Item = Sample>,
        series: Vec<(SeriesKey, Stats)>,
        closed: &mut Vec<Encoded>,
    ) {
        closed.extend(self.samples.record(tick_ms, samples));
        let (invocations, sampled): (Vec<_>, Vec<_>) = series
            .into_iter()
            .partition(|(key, _)| key.scope.is_invocation());
        self.samples.merge(sampled);
        self.record_invocations(tick_ms, invocations, closed);
    }

    /// Puts the invocation series of the tick at `tick_ms` in the right window: the sampling
    /// window's when they share its period, else their own (created, or flushed and dropped,
    /// as `enhanced` changes on reload).
    fn record_invocations(
        &mut self,
        tick_ms: u64,
        series: Vec<(SeriesKey, Stats)>,
        closed: &mut Vec<Encoded>,
    ) {
        let period = self.invocation_period_seconds;
        let own_window = period != self.samples.period_seconds;
        let mismatched = self
            .invocations
            .as_ref()
            .is_some_and(|p| p.period_seconds != period);
        if own_window != self.invocations.is_some() || mismatched {
            closed.extend(self.invocations.take().and_then(|mut p| p.flush()));
            if own_window {
                let (ctx, encoding) = (self.invocation_ctx.clone(), self.encoding());
                // Invocation series keep every request's value whatever `data_points` says.
                let every = DataPoints::EverySample;
                self.invocations = Some(Pipeline::new(ctx, period, encoding, every));
            }
        }
        match self.invocations.as_mut() {
            Some(p) => {
                // A reload may have changed the context: follow it.
                p.set_context(self.invocation_ctx.clone(), self.samples.encoding());
                closed.extend(p.record(tick_ms, std::iter::empty()));
                p.merge(series);
            }
            None => {
                // Opens the window when no tick has yet (a stop right after the start).
                closed.extend(self.samples.record(tick_ms, std::iter::empty()));
                self.samples.merge(series);
            }
        }
    }

    /// Closes both windows, partial or not (shutdown), appending what they held to `closed`.
    pub fn flush(&mut self, closed: &mut Vec<Encoded>) {
        closed.extend(self.samples.flush());
        closed.extend(self.invocations.as_mut().and_then(Pipeline::flush));
    }
}

/// The publish period of invocation series: the publish frequency with enhanced metrics, else
/// 60 s ("without enhanced metrics the frequency applies to utilization metrics only").
pub fn invocation_period(config: &Config) -> u64 {
    if config.metrics.enhanced {
        config.metrics.publish_frequency_seconds
    } else {
        crate::catalog::PLAIN_INVOCATION_PERIOD_SECONDS
    }
}

/// How windows are encoded under `config` for the host `identity`.
pub fn encode_context(config: &Config, identity: Identity) -> EncodeContext {
    let m = &config.metrics;
    let log_group = match config.output.emf_destination {
        EmfDestination::Tcp(_) | EmfDestination::Udp(_) => config.output.log_group.clone(),
        _ => None,
    };
    EncodeContext {
        identity,
        enhanced: m.enhanced,
        endpoints_namespace: m.endpoints_namespace.clone(),
        components_namespace: m.components_namespace.clone(),
        self_metrics_namespace: config.self_metrics.namespace.clone(),
        invocations_namespace: config.proxy.namespace.clone(),
        gpu_dimension_name: config.gpu.dimension_name.clone(),
        storage_resolution: storage_resolution(m.publish_frequency_seconds),
        log_group,
        instance_type: config.endpoint.instance_type.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Metric, Scope};

    const EMF: Encoding = Encoding::Emf {
        max_document_bytes: 256 * 1024,
    };
    const EVERY: DataPoints = DataPoints::EverySample;

    fn docs(encoded: Option<Encoded>) -> Vec<String> {
        match encoded {
            Some(Encoded::Emf { documents, .. }) => documents,
            other => panic!("{other:?}"),
        }
    }

    fn all_docs(encoded: Vec<Encoded>) -> Vec<String> {
        encoded.into_iter().flat_map(|e| docs(Some(e))).collect()
    }

    fn ctx(enhanced: bool) -> EncodeContext {
        crate::encode::test_context(enhanced)
    }

    fn config(extra: &str) -> Config {
        Config::parse(
            &format!(
                "[endpoint]\nname = \"e\"\n[metrics]\npublish_frequency_seconds = 10\n{extra}"
            ),
            std::path::Path::new("test.toml"),
        )
        .unwrap()
    }

    fn invocation() -> Vec<(SeriesKey, Stats)> {
        vec![(
            SeriesKey {
                scope: Scope::Invocations,
                metric: Metric::Invocations,
            },
            Stats::new(1.0),
        )]
    }

    #[test]
    fn the_boundary_tick_closes_the_window_with_its_samples() {
        let mut p = Pipeline::new(ctx(false), 10, EMF, EVERY);
        for t in 1..=10u64 {
            let batch = p.record(
                t * 1000,
                [Sample::new(
                    Scope::Instance,
                    Metric::MemoryUtilization,
                    t as f64,
                )],
            );
            assert!(batch.is_none(), "window still open at {t}");
        }
        let batch = docs(p.record(
            11_000,
            [Sample::new(
                Scope::Instance,
                Metric::MemoryUtilization,
                11.0,
            )],
        ));
        assert_eq!(batch.len(), 1);
        let v: serde_json::Value = serde_json::from_str(&batch[0]).unwrap();
        assert_eq!(v["_aws"]["Timestamp"], 0);
        assert_eq!(v["MemoryUtilization"].as_array().unwrap().len(), 10);
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["StorageResolution"],
            1
        );
        let partial = docs(p.flush());
        let v: serde_json::Value = serde_json::from_str(&partial[0]).unwrap();
        assert_eq!(v["_aws"]["Timestamp"], 10_000);
        assert_eq!(v["MemoryUtilization"][0].as_f64(), Some(11.0));
        assert!(p.flush().is_none());
    }

    #[test]
    fn enhanced_adds_the_instance_set_and_per_gpu_documents() {
        let samples = || {
            [
                Sample::new(Scope::Instance, Metric::GpuUtilization, 50.0),
                Sample::new(Scope::Gpu { index: 0 }, Metric::GpuUtilization, 50.0),
            ]
        };
        let mut off = Pipeline::new(ctx(false), 60, EMF, EVERY);
        off.record(1000, samples());
        let docs = docs(off.flush());
        assert_eq!(
            docs.len(),
            1,
            "per-GPU series are not published without enhanced metrics"
        );
        let mut on = Pipeline::new(ctx(true), 60, EMF, EVERY);
        on.record(1000, samples());
        let docs = super::tests::docs(on.flush());
        assert_eq!(docs.len(), 2);
        let gpu: serde_json::Value = serde_json::from_str(&docs[1]).unwrap();
        assert_eq!(gpu["GpuId"], "gpu_0");
        assert_eq!(gpu["InstanceId"], "i-1");
        assert_eq!(
            gpu["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            serde_json::json!([["EndpointName", "VariantName", "InstanceId", "GpuId"]])
        );
    }

    #[test]
    fn without_enhanced_metrics_invocations_keep_a_60_s_window() {
        let mut w = Windows::new(&config(""), ctx(false).identity, EMF);
        let (mut main_docs, mut invocation_docs) = (Vec::new(), Vec::new());
        // Ticks every second from 0.5 s to 70.5 s: seven 10 s windows, one 60 s one.
        for t in 0..=70u64 {
            let tick = t * 1000 + 500;
            let mut closed = Vec::new();
            let cpu = Sample::new(Scope::Instance, Metric::CpuUtilization, 1.0);
            w.record(tick, [cpu], invocation(), &mut closed);
            for doc in all_docs(closed) {
                if doc.contains("\"Invocations\"") {
                    invocation_docs.push(doc);
                } else {
                    main_docs.push(doc);
                }
            }
        }
        assert_eq!(main_docs.len(), 7, "10 s windows of host metrics");
        assert_eq!(invocation_docs.len(), 1, "one 60 s window of invocations");
        let v: serde_json::Value = serde_json::from_str(&invocation_docs[0]).unwrap();
        assert_eq!(v["_aws"]["Timestamp"], 0);
        assert_eq!(v["Invocations"].as_array().unwrap().len(), 60);
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Namespace"],
            "/aws/sagemaker/Invocations"
        );

        // Enhanced (a reload): the same 10 s window as the rest; the own window is flushed
        // and dropped.
        let enhanced = config("enhanced = true\n");
        w.reconfigure(&enhanced, ctx(true).identity, EMF);
        let mut closed = Vec::new();
        w.record(71_500, [], invocation(), &mut closed);
        assert_eq!(closed.len(), 1, "the partial 60 s window is published");
        assert!(w.invocations.is_none());
        let mut rest = Vec::new();
        w.flush(&mut rest);
        assert!(all_docs(rest).iter().any(|d| d.contains("\"Invocations\"")));
    }

    #[test]
    fn a_60_s_invocation_window_is_standard_resolution() {
        let mut w = Windows::new(&config(""), ctx(false).identity, EMF);
        let mut closed = Vec::new();
        w.record(1_000, [], invocation(), &mut closed);
        assert!(closed.is_empty());
        w.record(61_000, [], invocation(), &mut closed);
        let v: serde_json::Value = serde_json::from_str(&all_docs(closed)[0]).unwrap();
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["StorageResolution"],
            60
        );
    }

    fn values(doc: &serde_json::Value, metric: &str) -> Vec<f64> {
        match &doc[metric] {
            serde_json::Value::Array(a) => a.iter().filter_map(|v| v.as_f64()).collect(),
            v => v.as_f64().into_iter().collect(),
        }
    }

    #[test]
    fn by_default_a_window_publishes_one_data_point_per_series_its_mean_sum_or_max() {
        let mut p = Pipeline::new(ctx(false), 10, EMF, DataPoints::Period);
        let component = Scope::Component {
            component: "ic".into(),
        };
        for t in 1..=10u64 {
            let samples = [
                Sample::new(Scope::Instance, Metric::CpuUtilization, t as f64),
                Sample::new(component.clone(), Metric::CostAccrued, 0.25),
                Sample::new(component.clone(), Metric::CostPerHour, 9.0),
                // A counter that only grows: the period's last (largest) value.
                Sample::new(
                    Scope::GpuHealth { index: 0 },
                    Metric::GpuPcieReplays,
                    (t * 3) as f64,
                ),
            ];
            assert!(p.record(t * 1000, samples).is_none());
        }
        let docs = docs(p.flush());
        let doc = |metric: &str| {
            docs.iter()
                .map(|d| serde_json::from_str::<serde_json::Value>(d).unwrap())
                .find(|v| !v[metric].is_null())
                .unwrap_or_else(|| panic!("{metric} in {docs:?}"))
        };
        assert_eq!(
            values(&doc("CPUUtilization"), "CPUUtilization"),
            [5.5],
            "the mean"
        );
        assert_eq!(values(&doc("CostAccrued"), "CostAccrued"), [2.5], "the sum");
        assert_eq!(
            values(&doc("CostPerHour"), "CostPerHour"),
            [9.0],
            "the mean"
        );
    }

    #[test]
    fn invocations_keep_a_data_point_per_request_in_the_default_shape() {
        let mut w = Windows::new(&config("enhanced = true\n"), ctx(true).identity, EMF);
        let mut requests = Stats::new(1.0);
        requests.record(1.0);
        requests.record(1.0);
        let key = SeriesKey {
            scope: Scope::Invocations,
            metric: Metric::Invocations,
        };
        let cpu = || [Sample::new(Scope::Instance, Metric::CpuUtilization, 1.0)];
        let mut closed = Vec::new();
        w.record(
            1_000,
            cpu(),
            vec![(key.clone(), requests.clone())],
            &mut closed,
        );
        w.record(2_000, cpu(), vec![(key, requests)], &mut closed);
        w.flush(&mut closed);
        let docs = all_docs(closed);
        let doc = |metric: &str| {
            docs.iter()
                .map(|d| serde_json::from_str::<serde_json::Value>(d).unwrap())
                .find(|v| !v[metric].is_null())
                .unwrap()
        };
        assert_eq!(values(&doc("Invocations"), "Invocations").len(), 6);
        assert_eq!(values(&doc("CPUUtilization"), "CPUUtilization"), [1.0]);
    }

    #[test]
    fn non_finite_samples_are_counted_not_recorded() {
        let before = telemetry::get(Counter::SampleValuesRejected);
        let mut p = Pipeline::new(ctx(false), 60, EMF, EVERY);
        let nan = Sample::new(Scope::Instance, Metric::CpuUtilization, f64::NAN);
        p.record(1000, [nan]);
        assert!(p.flush().is_none());
        assert_eq!(telemetry::get(Counter::SampleValuesRejected), before + 1);
    }
}

//! The EMF and PutMetricData encoders: any window in (any series, any dimension values, any
//! values) gives output within every CloudWatch limit, never a
//! panic. The window is decoded from the fuzzer's bytes.
#![no_main]

use std::sync::Arc;

use endpoint_metrics_agent::aggregate::{Stats, Window};
use endpoint_metrics_agent::catalog::{Identity, Metric, Scope, SeriesKey};
use endpoint_metrics_agent::encode::limits::*;
use endpoint_metrics_agent::encode::put_metric_data::{datum_bytes, DatumValues};
use endpoint_metrics_agent::encode::{emf_counted, put_metric_data_counted, EncodeContext};
use libfuzzer_sys::fuzz_target;

const METRICS: [Metric; 17] = [
    Metric::CpuUtilization,
    Metric::CpuUtilizationNormalized,
    Metric::MemoryUtilization,
    Metric::MemoryUtilizationNormalized,
    Metric::DiskUtilization,
    Metric::GpuUtilization,
    Metric::GpuMemoryUtilization,
    Metric::GpuUtilizationNormalized,
    Metric::GpuMemoryUtilizationNormalized,
    Metric::CpuReservation,
    Metric::GpuReservation,
    Metric::MemoryReservation,
    Metric::GpuUtilizationUnattributed,
    Metric::InvocationsPerInstance,
    Metric::InvocationsPerCopy,
    Metric::ConcurrentRequestsPerModel,
    Metric::ConcurrentRequestsPerCopy,
];

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes([
            self.u8()?,
            self.u8()?,
            self.u8()?,
            self.u8()?,
        ]))
    }
    fn f64(&mut self) -> Option<f64> {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.u8()?;
        }
        Some(f64::from_le_bytes(b))
    }
    /// A string: a length byte (x 8 when its top bit is set, for values past 1024 characters),
    /// then that many bytes, lossily UTF-8.
    fn text(&mut self) -> Option<Arc<str>> {
        let n = self.u8()? as usize;
        let n = if n & 0x80 != 0 { (n & 0x7f) * 16 } else { n };
        let n = n.min(self.0.len());
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(String::from_utf8_lossy(s).into())
    }
}

fn scope(b: &mut Bytes) -> Option<Scope> {
    Some(match b.u8()? % 9 {
        0 => Scope::Instance,
        1 => Scope::Gpu { index: b.u32()? },
        2 => Scope::Container {
            component: b.text()?,
            container_id: b.text()?,
        },
        3 => Scope::ContainerGpu {
            component: b.text()?,
            container_id: b.text()?,
            gpu_index: b.u32()?,
        },
        4 => Scope::Agent,
        5 => Scope::Component {
            component: b.text()?,
        },
        6 => Scope::Invocations,
        7 => Scope::ComponentInvocations {
            component: b.text()?,
        },
        _ => Scope::CopyInvocations {
            component: b.text()?,
            container_id: b.text()?,
        },
    })
}

fn window(data: &[u8]) -> Window {
    let mut b = Bytes(data);
    let mut series = Vec::new();
    while let (Some(scope), Some(m)) = (scope(&mut b), b.u8()) {
        let metric = METRICS[m as usize % METRICS.len()];
        // The aggregator refuses non-finite values (`RecordError::NotFinite`): finite ones only,
        // as large as they come (their sum may still overflow).
        let Some(first) = b.f64().filter(|v| v.is_finite()) else {
            break;
        };
        let mut stats = Stats::new(first);
        let extra = b.u8().unwrap_or(0) as usize * 4;
        for i in 0..extra {
            // Past the input's end, made-up values keep long distributions cheap to build.
            let v = b.f64().unwrap_or(first + i as f64);
            if v.is_finite() {
                stats.record(v);
            }
        }
        series.push((SeriesKey { scope, metric }, stats));
    }
    series.sort_by(|a, b| a.0.cmp(&b.0));
    Window {
        start_ms: 1_800_000_000_000,
        period_seconds: 60,
        series,
    }
}

fn context(enhanced: bool) -> EncodeContext {
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
        invocations_namespace: "/aws/sagemaker/Invocations".into(),
        gpu_dimension_name: "GpuId".into(),
        storage_resolution: 1,
        log_group: None,
    }
}

fn check_emf(doc: &str, max: usize) {
    assert!(doc.len() <= max, "document of {} bytes", doc.len());
    let v: serde_json::Value = serde_json::from_str(doc).expect("valid JSON");
    let directives = v["_aws"]["CloudWatchMetrics"]
        .as_array()
        .expect("directives");
    for d in directives {
        let metrics = d["Metrics"].as_array().expect("metrics");
        assert!(metrics.len() <= EMF_MAX_METRICS_PER_DIRECTIVE);
        for set in d["Dimensions"].as_array().expect("dimension sets") {
            let set = set.as_array().expect("a set");
            assert!(set.len() <= EMF_MAX_KEYS_PER_DIMENSION_SET);
            for key in set {
                let value = v[key.as_str().expect("a key")]
                    .as_str()
                    .expect("a dimension value");
                assert!((1..=MAX_DIMENSION_VALUE_CHARS).contains(&value.chars().count()));
            }
        }
        for m in metrics {
            let name = m["Name"].as_str().expect("a name");
            assert!((1..=MAX_METRIC_NAME_CHARS).contains(&name.chars().count()));
            match &v[name] {
                serde_json::Value::Number(n) => assert!(n.as_f64().is_some_and(f64::is_finite)),
                serde_json::Value::Array(values) => {
                    assert!(values.len() <= EMF_MAX_VALUES_PER_METRIC);
                    assert!(values
                        .iter()
                        .all(|x| x.as_f64().is_some_and(f64::is_finite)));
                }
                other => panic!("metric {name} is {other}"),
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (enhanced, data) = match data.split_first() {
        Some((&flag, rest)) => (flag & 1 == 1, rest),
        None => return,
    };
    let w = window(data);
    let ctx = context(enhanced);
    for max in [EMF_MAX_DOCUMENT_BYTES, UDP_MAX_DOCUMENT_BYTES] {
        for doc in emf_counted(&w, &ctx, max) {
            check_emf(&doc, max);
        }
    }
    for request in put_metric_data_counted(&w, &ctx) {
        assert!(request.data.len() <= PMD_MAX_DATUMS_PER_REQUEST);
        let bytes: usize = request.data.iter().map(datum_bytes).sum();
        assert!(bytes <= PMD_MAX_REQUEST_BYTES, "{bytes} bytes");
        for d in &request.data {
            assert!(d.dimensions.len() <= PMD_MAX_DIMENSIONS_PER_DATUM);
            for (name, value) in &d.dimensions {
                assert!((1..=MAX_DIMENSION_NAME_CHARS).contains(&name.chars().count()));
                assert!((1..=MAX_DIMENSION_VALUE_CHARS).contains(&value.chars().count()));
            }
            let in_range = |x: f64| x.is_finite() && x.abs() <= PMD_MAX_ABS_VALUE;
            match &d.values {
                DatumValues::Distribution { values, counts } => {
                    assert!(values.len() <= PMD_MAX_VALUES_PER_DATUM);
                    assert_eq!(values.len(), counts.len());
                    assert!(values.iter().chain(counts).all(|&x| in_range(x)));
                }
                DatumValues::Statistics {
                    sample_count,
                    sum,
                    min,
                    max,
                } => {
                    assert!([*sample_count, *sum, *min, *max].into_iter().all(in_range));
                }
            }
        }
    }
});

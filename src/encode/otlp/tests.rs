use std::sync::Arc;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use prost::Message as _;

use super::*;
use crate::aggregate::{Aggregator, DataPoints};
use crate::catalog::{Sample, SeriesKey};
use crate::encode::test_context;

fn decode(requests: &[Request]) -> Vec<ExportMetricsServiceRequest> {
    requests
        .iter()
        .map(|r| {
            let body = gunzip(&r.body).unwrap();
            assert!(body.len() <= MAX_REQUEST_BYTES, "{}", body.len());
            ExportMetricsServiceRequest::decode(body.as_slice()).unwrap()
        })
        .collect()
}

fn metrics(requests: &[ExportMetricsServiceRequest]) -> Vec<&OtelMetric> {
    requests
        .iter()
        .flat_map(|r| &r.resource_metrics)
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .collect()
}

fn find<'a>(metrics: &[&'a OtelMetric], name: &str) -> &'a OtelMetric {
    metrics
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("{name} missing"))
}

fn attrs(kvs: &[KeyValue]) -> Vec<(String, String)> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                other => panic!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

fn copy(component: &str, id: &str) -> Scope {
    Scope::Container {
        component: Arc::from(component),
        container_id: Arc::from(id),
    }
}

fn copy_invocations(component: &str, id: &str) -> Scope {
    Scope::CopyInvocations {
        component: Arc::from(component),
        container_id: Arc::from(id),
    }
}

fn window(data_points: DataPoints, samples: Vec<Sample>) -> Window {
    let mut agg = Aggregator::new(data_points);
    for s in samples {
        agg.record(s).unwrap();
    }
    agg.flush(1_700_000_000_000, 60)
}

fn encode_all(window: &Window, enhanced: bool) -> (Vec<ExportMetricsServiceRequest>, Report) {
    let ctx = test_context(enhanced);
    let resource = resource(&ctx, Some("ml.g6.12xlarge"));
    let mut out = Vec::new();
    let report = encode(window, &ctx, &resource, &mut out);
    (decode(&out), report)
}

#[test]
fn names_follow_sagemakers_mapping_one_name_per_granularity() {
    use Dim::*;
    let endpoint = [EndpointName, VariantName];
    let instance = [EndpointName, VariantName, InstanceId];
    let component = [InferenceComponentName];
    let copy_set = [
        EndpointName,
        VariantName,
        InstanceId,
        InferenceComponentName,
        ContainerId,
    ];
    let inv = Scope::Invocations;
    let per_copy = copy_invocations("ic", "c1");
    let name = |m, s: &Scope, set: &[Dim]| otel_name(m, s, set, "GpuId");
    assert_eq!(name(Metric::Invocations, &inv, &endpoint), "Invocations");
    assert_eq!(
        name(Metric::Invocations, &inv, &instance),
        "InvocationsByInstanceId"
    );
    assert_eq!(
        name(Metric::Invocations, &per_copy, &component),
        "InvocationsForIc"
    );
    assert_eq!(
        name(Metric::Invocations, &per_copy, &copy_set),
        "InvocationsForIcByInstanceIdByContainerId"
    );
    assert_eq!(
        name(Metric::ModelLatency, &per_copy, &copy_set),
        "ModelLatencyForIcByInstanceIdByContainerId"
    );
    // Names that only exist per component keep their name there (SageMaker's table).
    let ic = Scope::ComponentInvocations {
        component: Arc::from("ic"),
    };
    assert_eq!(
        name(Metric::ConcurrentRequestsPerCopy, &ic, &component),
        "ConcurrentRequestsPerCopy"
    );
    // DCGM names and the agent's own stay; per-GPU utilization is DCGM's field.
    let gpu = Scope::Gpu { index: 3 };
    let gpu_set = [EndpointName, VariantName, InstanceId, Gpu];
    assert_eq!(
        name(Metric::GpuUtilization, &gpu, &gpu_set),
        "DCGM_FI_DEV_GPU_UTIL"
    );
    assert_eq!(
        name(Metric::GpuMemoryUtilization, &gpu, &gpu_set),
        "GPUMemoryUtilizationByInstanceIdByGpuId"
    );
    let health = Scope::GpuHealth { index: 3 };
    assert_eq!(
        name(Metric::GpuTemperature, &health, &gpu_set),
        "DCGM_FI_DEV_GPU_TEMP"
    );
    assert_eq!(
        name(
            Metric::AgentCpuTime,
            &Scope::Agent,
            &[EndpointName, InstanceId]
        ),
        Metric::AgentCpuTime.name()
    );
    // The model server's per-component names.
    let c = copy("ic", "c1");
    assert_eq!(name(Metric::Ttft, &c, &component), "TTFTPerIC");
    assert_eq!(
        name(Metric::KvCacheUtilization, &c, &component),
        "KVCachePerIC"
    );
    assert_eq!(
        name(Metric::KvCacheUtilization, &c, &copy_set),
        "KVCachePerICByInstanceIdByContainerId"
    );
    assert_eq!(
        name(Metric::CpuUtilizationNormalized, &c, &copy_set),
        "CPUUtilizationNormalizedForIcByInstanceIdByContainerId"
    );
    // A component's series never shares its name with the instance's.
    assert_eq!(
        name(Metric::CpuUtilizationNormalized, &c, &component),
        "CPUUtilizationNormalizedForIc"
    );
    assert_eq!(
        name(
            Metric::CpuUtilizationNormalized,
            &Scope::Instance,
            &endpoint
        ),
        "CPUUtilizationNormalized"
    );
    let cost = Scope::Component {
        component: Arc::from("ic"),
    };
    assert_eq!(
        name(Metric::CostAccrued, &cost, &component),
        "CostAccruedForIc"
    );
}

#[test]
fn gauges_sums_and_histograms_with_exact_values_labels_and_times() {
    let mut samples = vec![
        // Two copies of one component: one point per label set, their mean.
        Sample::new(copy("ic", "c1"), Metric::CpuUtilizationNormalized, 20.0),
        Sample::new(copy("ic", "c2"), Metric::CpuUtilizationNormalized, 40.0),
        Sample::new(Scope::Gpu { index: 1 }, Metric::GpuUtilization, 73.0),
    ];
    for latency in [50.0, 150.0, 150.0, 2_000_000.0, 90_000_000.0] {
        samples.push(Sample::new(
            copy_invocations("ic", "c1"),
            Metric::ModelLatency,
            latency,
        ));
        samples.push(Sample::new(
            copy_invocations("ic", "c1"),
            Metric::Invocations,
            1.0,
        ));
    }
    let w = window(DataPoints::Period, samples);
    let (requests, report) = encode_all(&w, true);
    assert_eq!(report, Report::default());
    assert_eq!(requests.len(), 1);
    let rm = &requests[0].resource_metrics[0];
    let resource = attrs(&rm.resource.as_ref().unwrap().attributes);
    assert!(
        resource.contains(&("host.id".into(), "i-1".into())),
        "{resource:?}"
    );
    assert!(resource.contains(&("host.type".into(), "ml.g6.12xlarge".into())));
    assert_eq!(rm.scope_metrics[0].scope.as_ref().unwrap().name, SCOPE_NAME);
    let all = metrics(&requests);

    let cpu = find(&all, "CPUUtilizationNormalizedForIc");
    assert_eq!(cpu.unit, "%");
    let Some(Data::Gauge(g)) = &cpu.data else {
        panic!("{cpu:?}")
    };
    assert_eq!(g.data_points.len(), 1);
    let p = &g.data_points[0];
    assert_eq!(p.value, Some(number_data_point::Value::AsDouble(30.0)));
    assert_eq!(
        attrs(&p.attributes),
        vec![(
            "aws.sagemaker.inference_component.name".to_string(),
            "ic".to_string()
        )]
    );
    assert_eq!(p.start_time_unix_nano, 1_700_000_000_000_000_000);
    assert_eq!(p.time_unix_nano, 1_700_000_060_000_000_000);
    // Per copy: two points, one per container.
    let per_copy = find(
        &all,
        "CPUUtilizationNormalizedForIcByInstanceIdByContainerId",
    );
    let Some(Data::Gauge(g)) = &per_copy.data else {
        panic!()
    };
    assert_eq!(g.data_points.len(), 2);

    let util = find(&all, "DCGM_FI_DEV_GPU_UTIL");
    let Some(Data::Gauge(g)) = &util.data else {
        panic!()
    };
    assert_eq!(
        g.data_points[0].value,
        Some(number_data_point::Value::AsDouble(73.0))
    );
    assert!(attrs(&g.data_points[0].attributes).contains(&("gpu".into(), "1".into())));

    let inv = find(&all, "InvocationsForIcByInstanceIdByContainerId");
    let Some(Data::Sum(s)) = &inv.data else {
        panic!("{inv:?}")
    };
    assert_eq!(
        s.aggregation_temporality,
        AggregationTemporality::Delta as i32
    );
    assert!(s.is_monotonic);
    assert_eq!(
        s.data_points[0].value,
        Some(number_data_point::Value::AsDouble(5.0))
    );

    let lat = find(&all, "ModelLatencyForIc");
    assert_eq!(lat.unit, "us");
    let Some(Data::Histogram(h)) = &lat.data else {
        panic!("{lat:?}")
    };
    assert_eq!(
        h.aggregation_temporality,
        AggregationTemporality::Delta as i32
    );
    let p = &h.data_points[0];
    assert_eq!(p.count, 5);
    assert_eq!(
        p.sum,
        Some(50.0 + 150.0 + 150.0 + 2_000_000.0 + 90_000_000.0)
    );
    assert_eq!((p.min, p.max), (Some(50.0), Some(90_000_000.0)));
    assert_eq!(p.explicit_bounds, MICROSECOND_BOUNDS);
    assert_eq!(p.bucket_counts.iter().sum::<u64>(), 5);
    assert_eq!(p.bucket_counts[0], 1); // 50 <= 100
    assert_eq!(p.bucket_counts[1], 2); // 150 in (100, 250]
    assert_eq!(p.bucket_counts[13], 1); // 2 s in (1 s, 2.5 s]
    assert_eq!(p.bucket_counts[MICROSECOND_BOUNDS.len()], 1); // past 60 s
}

#[test]
fn a_value_on_a_bound_is_in_that_bucket() {
    assert_eq!(bucket_of(MICROSECOND_BOUNDS, 100.0), 0);
    assert_eq!(bucket_of(MICROSECOND_BOUNDS, 100.5), 1);
    assert_eq!(bucket_of(MICROSECOND_BOUNDS, 0.0), 0);
    assert_eq!(bucket_of(SECOND_BOUNDS, 3_600.0), SECOND_BOUNDS.len() - 1);
    assert_eq!(bucket_of(SECOND_BOUNDS, 3_601.0), SECOND_BOUNDS.len());
}

#[test]
fn every_series_of_a_full_host_has_one_kind_per_name_and_few_labels() {
    for (enhanced, extra) in [
        (true, ""),
        (false, ""),
        (true, "[gpu]\nhealth = [\"temperature\", \"power\", \"clocks\", \"throttle\", \"memory\", \"ecc\", \"xid\", \"gpm\"]\n"),
    ] {
        let config = crate::config::Config::parse(
            &format!(
                "[endpoint]\nname = \"e\"\ninstance_id = \"i-1\"\ninstance_type = \"ml.g5.48xlarge\"\n[metrics]\nenhanced = {enhanced}\n[proxy]\nenabled = true\n{extra}"
            ),
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        let shape = crate::plan::HostShape {
            gpus: 8,
            containers: 6,
            components: 3,
        };
        let w = crate::plan::full_window(&config, &shape);
        let (requests, report) = encode_all(&w, enhanced);
        assert_eq!(report, Report::default(), "enhanced {enhanced} {extra}");
        let all = metrics(&requests);
        let mut names: Vec<&str> = all.iter().map(|m| m.name.as_str()).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "one metric per name in one request");
        // One granularity per name: every point of a name has the same label keys (DCGM's
        // fields per MIG instance add dcgm-exporter's GPU_I_ID, as dcgm-exporter does).
        for m in &all {
            let keys = |kvs: &[KeyValue]| -> Vec<String> {
                kvs.iter()
                    .map(|kv| kv.key.clone())
                    .filter(|k| !(m.name.starts_with("DCGM_") && k == "GPU_I_ID"))
                    .collect()
            };
            let sets: std::collections::BTreeSet<Vec<String>> = match &m.data {
                Some(Data::Gauge(g)) => g.data_points.iter().map(|p| keys(&p.attributes)).collect(),
                Some(Data::Sum(s)) => s.data_points.iter().map(|p| keys(&p.attributes)).collect(),
                Some(Data::Histogram(h)) => {
                    h.data_points.iter().map(|p| keys(&p.attributes)).collect()
                }
                _ => Default::default(),
            };
            assert_eq!(sets.len(), 1, "{} holds two granularities: {sets:?}", m.name);
        }
        for m in &all {
            let labels = match &m.data {
                Some(Data::Gauge(g)) => g.data_points.iter().map(|p| p.attributes.len()).max(),
                Some(Data::Sum(s)) => s.data_points.iter().map(|p| p.attributes.len()).max(),
                Some(Data::Histogram(h)) => {
                    h.data_points.iter().map(|p| p.attributes.len()).max()
                }
                other => panic!("{other:?}"),
            };
            let resource = requests[0].resource_metrics[0]
                .resource
                .as_ref()
                .unwrap()
                .attributes
                .len();
            assert!(labels.unwrap_or(0) + resource <= 10, "{}", m.name);
            assert!(labels.unwrap_or(0) + resource <= MAX_LABELS_PER_POINT);
        }
    }
}

#[test]
fn a_large_window_is_split_within_the_request_limit_and_keeps_every_point() {
    let mut samples = Vec::new();
    for c in 0..3_000 {
        let scope = copy(&format!("component-{}", c % 40), &format!("{c:064x}"));
        samples.push(Sample::new(
            scope.clone(),
            Metric::CpuUtilizationNormalized,
            1.0,
        ));
        samples.push(Sample::new(scope, Metric::MemoryUtilizationNormalized, 2.0));
    }
    let w = window(DataPoints::Period, samples);
    let (requests, report) = encode_all(&w, true);
    assert_eq!(report, Report::default());
    assert!(requests.len() > 1, "{}", requests.len());
    let points: usize = metrics(&requests)
        .iter()
        .map(|m| match &m.data {
            Some(Data::Gauge(g)) => g.data_points.len(),
            _ => 0,
        })
        .sum();
    // Per copy: 2 x 3,000; per component: 2 x 40.
    assert_eq!(points, 2 * 3_000 + 2 * 40);
}

#[test]
fn requests_round_trip_through_the_spools_json() {
    let w = window(
        DataPoints::Period,
        vec![Sample::new(Scope::Instance, Metric::CpuUtilization, 12.5)],
    );
    let ctx = test_context(false);
    let mut out = Vec::new();
    encode(&w, &ctx, &resource(&ctx, None), &mut out);
    let json = serde_json::to_string(&out[0]).unwrap();
    assert!(json.len() < out[0].body.len() * 2 + 64, "{json}");
    let back: Request = serde_json::from_str(&json).unwrap();
    assert_eq!(back, out[0]);
    assert!(serde_json::from_str::<Request>(r#"{"body":"not base64!","points":1}"#).is_err());
}

#[test]
fn every_per_request_latency_is_a_histogram() {
    for m in [
        Metric::ModelLatency,
        Metric::OverheadLatency,
        Metric::FirstChunkLatency,
        Metric::Ttft,
        Metric::ContainerStartDuration,
    ] {
        assert_eq!(kind(m), Kind::Histogram, "{m:?}");
    }
    assert_eq!(kind(Metric::CostAccrued), Kind::DeltaSum);
    assert_eq!(kind(Metric::GpuEccDbeVolatile), Kind::GaugeMax);
    assert_eq!(kind(Metric::CpuUtilization), Kind::Gauge);
    let _ = SeriesKey {
        scope: Scope::Instance,
        metric: Metric::CpuUtilization,
    };
}

use std::path::Path;

use super::*;
use crate::catalog::sample_value;
use crate::discovery::{ContainerInfo, GpuAllocation};

fn gpus(n: u32) -> Vec<GpuDevice> {
    (0..n)
        .map(|index| GpuDevice {
            index,
            uuid: format!("GPU-uuid-{index}"),
            utilization_percent: Some(0.0),
            memory_used_bytes: 0,
            memory_total_bytes: 1,
            process_utilization: Default::default(),
        })
        .collect()
}

fn inventory(copies: &[(&str, &str, GpuAllocation)]) -> Inventory {
    let mut inventory = Inventory::default();
    for (id, component, gpus) in copies {
        let id = id.repeat(64 / id.len());
        inventory.containers.insert(
            id.clone(),
            ContainerInfo {
                short_id: id[..12].into(),
                id,
                component: (*component).into(),
                pid: 1,
                cpu_limit_cores: None,
                memory_reservation_bytes: None,
                memory_limit_bytes: None,
                gpus: gpus.clone(),
                address: None,
                upstream_port: None,
                scrape: Default::default(),
                health_check: false,
            },
        );
    }
    inventory
}

fn config(extra: &str) -> Config {
    Config::parse(
        &format!("[endpoint]\nname = \"e\"\n{extra}"),
        Path::new("t.toml"),
    )
    .unwrap()
}

const G6_12XL: &str = "instance_type = \"ml.g6.12xlarge\"\n";

fn component(name: &str) -> Scope {
    Scope::Component {
        component: name.into(),
    }
}

#[test]
fn prices_come_from_the_override_else_the_table_else_none() {
    let p = instance_price(&config(G6_12XL)).unwrap();
    assert_eq!(p.hourly_usd, 5.752);
    assert_eq!(p.gpus, Some(4));
    assert_eq!(p.source, PriceSource::Table(Basis::HostingPriceList));
    let p = instance_price(&config(&format!(
        "{G6_12XL}[cost]\ninstance_hourly_price_usd = 4.5\n"
    )))
    .unwrap();
    assert_eq!(
        (p.hourly_usd, p.gpus, p.source),
        (4.5, Some(4), PriceSource::Override)
    );
    let p = instance_price(&config(
        "instance_type = \"ml.x9.huge\"\n[cost]\ninstance_hourly_price_usd = 2.0\ngpus_per_instance = 2\n",
    ))
    .unwrap();
    assert_eq!((p.hourly_usd, p.gpus), (2.0, Some(2)));
    assert_eq!(
        instance_price(&config("instance_type = \"ml.x9.huge\"\n")),
        Err(Unpriced::UnknownInstanceType("ml.x9.huge".into()))
    );
    assert_eq!(instance_price(&config("")), Err(Unpriced::NoInstanceType));
    assert!(CostModel::start(&config("")).is_none());
}

/// metrics-spec.md: ml.g6.12xlarge at $5.752/h with 4 GPUs; a component holding all 4 costs
/// $0.016 per 10 s.
#[test]
fn the_spec_example_costs_0_016_per_10_s() {
    let price = instance_price(&config(G6_12XL)).unwrap();
    let inv = inventory(&[("a", "model", GpuAllocation::All)]);
    let mut model = CostModel::new(price, 10_000);
    let mut out = Vec::new();
    model.tick(10_000, Some(&gpus(4)), &inv, &GpuUse::new(), &mut out);
    let s = component("model");
    assert_eq!(sample_value(&out, &s, Metric::GpusAllocated), Some(4.0));
    assert_eq!(sample_value(&out, &s, Metric::CostPerHour), Some(5.752));
    let accrued = sample_value(&out, &s, Metric::CostAccrued).unwrap();
    assert_eq!(accrued, 5.752 * 10_000.0 / 3_600_000.0);
    assert!((accrued - 5.752 * 10.0 / 3600.0).abs() < 1e-15, "{accrued}");
    assert_eq!(format!("{accrued:.3}"), "0.016");
    assert_eq!(
        sample_value(&out, &Scope::Instance, Metric::UnallocatedGpuCostPerHour),
        Some(0.0)
    );
    // Ten ticks of 1 s sum to the same 10 s.
    let mut model = CostModel::new(instance_price(&config(G6_12XL)).unwrap(), 1000);
    let mut out = Vec::new();
    for t in 1..=10 {
        model.tick(t * 1000, Some(&gpus(4)), &inv, &GpuUse::new(), &mut out);
    }
    let sum: f64 = out
        .iter()
        .filter(|x| x.key.metric == Metric::CostAccrued)
        .map(|x| x.value)
        .sum();
    assert!((sum - accrued).abs() < 1e-15, "{sum} vs {accrued}");
}

/// One GPU shared by 3 copies (of 2 components), one exclusive, two unallocated.
#[test]
fn a_shared_gpu_is_split_between_its_copies_and_the_total_is_the_instance_price() {
    let inv = inventory(&[
        ("a", "shared", GpuAllocation::Devices(vec!["0".into()])),
        (
            "b",
            "shared",
            GpuAllocation::Devices(vec!["GPU-uuid-0".into()]),
        ),
        ("c", "other", GpuAllocation::from_visible_devices("0,1")),
    ]);
    let s = split(&inv, &gpus(4), true, 4, &GpuUse::new());
    assert_eq!(s.allocated_gpus, 2);
    let shared = &s
        .components
        .iter()
        .find(|c| &*c.component == "shared")
        .unwrap();
    let other = &s
        .components
        .iter()
        .find(|c| &*c.component == "other")
        .unwrap();
    assert_eq!((shared.copies, shared.gpus), (2, 1));
    assert_eq!((other.copies, other.gpus), (1, 2));
    // shared: 2 x 1/3 of GPU 0; other: 1/3 of GPU 0 + all of GPU 1; of 4 GPUs.
    assert!((shared.share - 2.0 / 12.0).abs() < 1e-15);
    assert!((other.share - (1.0 / 3.0 + 1.0) / 4.0).abs() < 1e-15);
    assert_eq!(s.unallocated_share, 0.5, "two whole GPUs: exact");
    let total = shared.share + other.share + s.unallocated_share;
    assert!((total - 1.0).abs() < 1e-15, "{total}");
    // In dollars per hour and per 10 s, against the instance price.
    let mut out = Vec::new();
    samples(&s, 5.752, 10_000, &mut out);
    let total = |metrics: [Metric; 2]| -> f64 {
        out.iter()
            .filter(|x| metrics.contains(&x.key.metric))
            .map(|x| x.value)
            .sum()
    };
    let per_hour = total([Metric::CostPerHour, Metric::UnallocatedGpuCostPerHour]);
    assert!((per_hour - 5.752).abs() < 1e-12, "{per_hour}");
    assert!(
        (sample_value(&out, &component("shared"), Metric::CostPerHour).unwrap() - 5.752 / 6.0)
            .abs()
            < 1e-12
    );
    let accrued = total([Metric::CostAccrued, Metric::UnallocatedGpuCostAccrued]);
    assert!((accrued - 5.752 * 10.0 / 3600.0).abs() < 1e-15, "{accrued}");
}

#[test]
fn the_weighted_view_charges_measured_use_and_the_rest_is_idle() {
    let inv = inventory(&[
        ("a", "busy", GpuAllocation::Devices(vec!["0".into()])),
        ("b", "lazy", GpuAllocation::Devices(vec!["1".into()])),
        ("c", "pair", GpuAllocation::Devices(vec!["2".into()])),
        ("d", "pair", GpuAllocation::Devices(vec!["2".into()])),
    ]);
    let id = |c: &str| c.repeat(64);
    let mut devices = gpus(4);
    devices[3].utilization_percent = None; // MIG: use unknown, nobody holds it
    let gpu_use = GpuUse::from([
        ((id("a"), 0), 80.0),
        ((id("c"), 2), 90.0),
        ((id("d"), 2), 60.0),        // 150 % on GPU 2: scaled to 100 %
        (("f".repeat(64), 1), 50.0), // not a known copy: idle for the weighted view
    ]);
    let s = split(&inv, &devices, true, 4, &gpu_use);
    let w = |name: &str| {
        s.components
            .iter()
            .find(|c| &*c.component == name)
            .and_then(|c| c.weighted_share)
            .unwrap()
    };
    assert!((w("busy") - 0.8 / 4.0).abs() < 1e-15);
    assert_eq!(w("lazy"), 0.0, "allocated but idle: it stands out");
    assert!((w("pair") - 1.0 / 4.0).abs() < 1e-15);
    // Idle: 0.2 of GPU 0, all of GPU 1, all of GPU 3 (unallocated, use unknown).
    let idle = s.idle_share.unwrap();
    assert!((idle - 2.2 / 4.0).abs() < 1e-15, "{idle}");
    assert!((w("busy") + w("lazy") + w("pair") + idle - 1.0).abs() < 1e-15);
    // Without NVML there is no weighted view.
    let s = split(&inv, &devices, false, 4, &gpu_use);
    assert!(s.idle_share.is_none() && s.components.iter().all(|c| c.weighted_share.is_none()));
}

#[test]
fn accrual_follows_real_elapsed_time_across_missed_ticks() {
    let inv = inventory(&[("a", "m", GpuAllocation::Count(2))]);
    let price = instance_price(&config(G6_12XL)).unwrap();
    let mut model = CostModel::new(price, 1000);
    let mut accrued = Vec::new();
    for t in [1000u64, 2000, 5000, 6000] {
        let mut out = Vec::new();
        model.tick(t, Some(&gpus(4)), &inv, &GpuUse::new(), &mut out);
        accrued.push(sample_value(&out, &component("m"), Metric::CostAccrued).unwrap());
    }
    let per_s = 5.752 * 0.5 / 3600.0;
    for (got, seconds) in accrued.iter().zip([1.0, 1.0, 3.0, 1.0]) {
        assert!((got - per_s * seconds).abs() < 1e-15, "{got}");
    }
}

#[test]
fn without_nvml_the_price_s_gpu_count_stands_for_the_devices() {
    let inv = inventory(&[("a", "m", GpuAllocation::from_visible_devices("1,3"))]);
    let mut model = CostModel::new(instance_price(&config(G6_12XL)).unwrap(), 1000);
    let mut out = Vec::new();
    model.tick(1000, None, &inv, &GpuUse::new(), &mut out);
    assert_eq!(
        sample_value(&out, &component("m"), Metric::CostPerHour),
        Some(5.752 * 0.5)
    );
    assert_eq!(
        sample_value(&out, &Scope::Instance, Metric::IdleGpuCostAccrued),
        None,
        "no measured use"
    );
    // A type the table lacks, priced by override without a GPU count: the GPUs NVML shows.
    let price = instance_price(&config(
        "instance_type = \"ml.x9.huge\"\n[cost]\ninstance_hourly_price_usd = 2.0\n",
    ))
    .unwrap();
    let mut model = CostModel::new(price, 1000);
    let mut out = Vec::new();
    model.tick(1000, None, &inv, &GpuUse::new(), &mut out);
    assert!(out.is_empty(), "nothing to divide the price by yet");
    model.tick(2000, Some(&gpus(2)), &inv, &GpuUse::new(), &mut out);
    assert_eq!(
        sample_value(&out, &component("m"), Metric::CostPerHour),
        Some(1.0)
    );
    assert_eq!(
        sample_value(&out, &Scope::Instance, Metric::UnallocatedGpuCostPerHour),
        Some(1.0)
    );
}

#[test]
fn component_series_publish_under_the_component_sets() {
    use crate::pipeline::Pipeline;
    let inv = inventory(&[("a", "model-a", GpuAllocation::All)]);
    let mut out = Vec::new();
    samples(
        &split(&inv, &gpus(4), true, 4, &GpuUse::new()),
        5.752,
        10_000,
        &mut out,
    );
    for enhanced in [false, true] {
        let mut p = Pipeline::new(
            crate::encode::test_context(enhanced),
            10,
            crate::encode::Encoding::Emf {
                max_document_bytes: 256 * 1024,
            },
            crate::aggregate::DataPoints::EverySample,
        );
        p.record(1000, out.clone());
        let Some(crate::encode::Encoded::Emf { documents, .. }) = p.flush() else {
            panic!("an EMF window");
        };
        let docs: Vec<serde_json::Value> = documents
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        let c = docs
            .iter()
            .find(|d| d["InferenceComponentName"] == "model-a")
            .unwrap();
        assert_eq!(
            c["_aws"]["CloudWatchMetrics"][0]["Namespace"],
            "/aws/sagemaker/InferenceComponents"
        );
        let sets = c["_aws"]["CloudWatchMetrics"][0]["Dimensions"].clone();
        if enhanced {
            assert_eq!(
                sets,
                serde_json::json!([
                    ["InferenceComponentName"],
                    [
                        "EndpointName",
                        "VariantName",
                        "InstanceId",
                        "InferenceComponentName"
                    ]
                ])
            );
        } else {
            assert_eq!(sets, serde_json::json!([["InferenceComponentName"]]));
        }
        assert!(c.get("ContainerId").is_none());
        assert_eq!(c["CostPerHour"][0], 5.752);
        assert_eq!(c["GPUsAllocated"][0], 4.0);
        let units: Vec<_> = c["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["Name"].as_str().unwrap().to_string(),
                    m["Unit"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert!(
            units.contains(&("CostAccrued".into(), "None".into())),
            "{units:?}"
        );
        assert!(
            units.contains(&("GPUsAllocated".into(), "Count".into())),
            "{units:?}"
        );
        let instance = docs
            .iter()
            .find(|d| d.get("UnallocatedGPUCostPerHour").is_some())
            .unwrap();
        assert_eq!(
            instance["_aws"]["CloudWatchMetrics"][0]["Namespace"],
            "/aws/sagemaker/Endpoints"
        );
    }
}

#[test]
fn the_report_prints_each_component_and_the_idle_line() {
    let inv = inventory(&[
        (
            "a",
            "model-a",
            GpuAllocation::Devices(vec!["0".into(), "1".into()]),
        ),
        ("b", "model-b", GpuAllocation::Devices(vec!["2".into()])),
        ("c", "model-b", GpuAllocation::Devices(vec!["2".into()])),
    ]);
    let price = instance_price(&config(G6_12XL)).unwrap();
    let r = report::report(price, &gpus(4), &inv).unwrap();
    let text = r.to_string();
    assert!(
        text.starts_with("instance: ml.g6.12xlarge, $5.752 per hour"),
        "{text}"
    );
    let row = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name}: {text}"))
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        row("model-a")[1..],
        ["1", "2", "2.00", "2.8760", "50.0%"],
        "{text}"
    );
    assert_eq!(
        row("model-b")[1..],
        ["2", "1", "1.00", "1.4380", "25.0%"],
        "{text}"
    );
    assert_eq!(
        row("(idle")[3..],
        ["-", "1", "1.00", "1.4380", "25.0%"],
        "{text}"
    );
    assert_eq!(
        row("total")[1..],
        ["3", "4", "4.00", "5.7520", "100.0%"],
        "{text}"
    );
}

#[test]
fn more_gpus_held_than_priced_is_counted_once_per_episode() {
    // ml.g6.xlarge has 1 GPU; the host shows 2 and a copy holds both.
    let inv = inventory(&[("a", "m", GpuAllocation::All)]);
    let mut model = CostModel::new(
        instance_price(&config("instance_type = \"ml.g6.xlarge\"\n")).unwrap(),
        1000,
    );
    let before = telemetry::get(Counter::CostGpusOverallocated);
    let mut out = Vec::new();
    for t in 1..=3 {
        model.tick(t * 1000, Some(&gpus(2)), &inv, &GpuUse::new(), &mut out);
    }
    assert_eq!(telemetry::get(Counter::CostGpusOverallocated), before + 1);
    assert_eq!(
        sample_value(&out, &component("m"), Metric::CostPerHour),
        Some(1.1267 * 2.0)
    );
    assert_eq!(
        sample_value(&out, &Scope::Instance, Metric::UnallocatedGpuCostPerHour),
        Some(0.0),
        "never negative"
    );
}

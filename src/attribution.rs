//! Attribution: GPU processes -> container -> inference component. NVML reports host PIDs;
//! [`PidContainers`] maps them to containers through `/proc/<pid>/cgroup` (parsed by
//! `cgroup_path`), and [`attribute_gpu`] turns one GPU reading into per-copy samples.
//!
//! GPU use by a process that maps to no known model copy is not dropped: per GPU, what the
//! device reports beyond the model copies' share is published as an unattributed series, so the
//! per-container shares plus the unattributed share add up to the per-GPU total.
//!
//! [`process_copies`] hands the GPU reader which copy each GPU process belongs to, so that it
//! reads per-process utilization only on GPUs that copies share; on a GPU held by one copy
//! ([`ProcessUtilization::OneCopy`]) that copy's share is the device's utilization.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use crate::catalog::{Metric, Sample, Scope};
use crate::cgroup_path::container_id_from_cgroup;
use crate::collectors::gpu::{GpuDevice, GpuReading, ProcessUtilization};
use crate::discovery::{GpuAllocation, Inventory};

/// Each copy's SM utilization (0..100) per GPU: (full container ID, NVML index), as of the last
/// GPU attribution. The utilization-weighted cost view (`cost`) splits GPU time by it.
pub type GpuUse = BTreeMap<(String, u32), f64>;

/// Host PID -> full container ID, for the PIDs NVML reports, cached while a PID stays in the
/// GPU readings (a PID keeps its cgroup for its life; a reused one reappears as new only after
/// it left the readings, when it is read again).
#[derive(Debug, Default)]
pub struct PidContainers {
    map: HashMap<u32, String>,
    /// PIDs in no container (host processes), so they are not re-read each sample.
    outside: HashSet<u32>,
}

impl PidContainers {
    /// Resolves `pids` through `<proc_root>/<pid>/cgroup` and forgets PIDs no longer listed.
    pub fn resolve(&mut self, proc_root: &Path, pids: &[u32]) -> &HashMap<u32, String> {
        self.map.retain(|pid, _| pids.contains(pid));
        self.outside.retain(|pid| pids.contains(pid));
        for &pid in pids {
            if self.map.contains_key(&pid) || self.outside.contains(&pid) {
                continue;
            }
            let path = proc_root.join(pid.to_string()).join("cgroup");
            // A process gone since NVML listed it belongs to nobody now.
            let id = std::fs::read_to_string(path)
                .ok()
                .and_then(|t| container_id_from_cgroup(&t).map(str::to_string));
            match id {
                Some(id) => {
                    self.map.insert(pid, id);
                }
                None => {
                    self.outside.insert(pid);
                }
            }
        }
        &self.map
    }
}

/// The NVML indices of the allocated GPUs present in `devices`, ascending. Identifiers that
/// match no device (a MIG instance ID, a GPU gone) are left out.
pub fn allocated_gpus(allocation: &GpuAllocation, devices: &[GpuDevice]) -> Vec<u32> {
    let mut indices: Vec<u32> = match allocation {
        GpuAllocation::None => Vec::new(),
        GpuAllocation::All => devices.iter().map(|d| d.index).collect(),
        GpuAllocation::Count(n) => {
            let mut all: Vec<u32> = devices.iter().map(|d| d.index).collect();
            all.sort_unstable();
            all.truncate(*n as usize);
            all
        }
        GpuAllocation::Devices(ids) => devices
            .iter()
            .filter(|d| {
                ids.iter()
                    .any(|id| *id == d.uuid || id.parse::<u32>().ok() == Some(d.index))
            })
            .map(|d| d.index)
            .collect(),
    };
    indices.sort_unstable();
    indices.dedup();
    indices
}

/// What the GPU attribution of one reading found, besides the samples.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuAttributionReport {
    /// GPU processes whose PID maps to no model copy (host processes, other containers).
    pub unattributed_processes: u64,
    /// Each copy's SM utilization per GPU (see [`GpuUse`]).
    pub sm_percent: GpuUse,
}

/// Per-container GPU use, and the unattributed remainder, from one GPU reading.
///
/// `pid_containers` maps host PIDs to full container IDs (see [`container_id_from_cgroup`]); a
/// PID missing from it belongs to no container. Per container, `GPUUtilizationNormalized` is the
/// sum of its processes' SM utilization over the GPUs allocated to it, divided by their number;
/// `GPUMemoryUtilizationNormalized` is its processes' memory over the allocated GPUs' memory. On
/// a GPU whose per-process utilization was not read ([`ProcessUtilization::OneCopy`]), the one
/// copy found there has the device's utilization as its SM use (see [`one_copy_gets_the_device`]). A
/// container using GPUs with no allocation known is measured against the GPUs it uses. Per GPU
/// (enhanced), each container's share of that GPU is a `ContainerGpu` series, and
/// `GPU*Unattributed` on the `Gpu` scope is the device figure minus the containers' shares
/// (never below zero), so shares + unattributed = the per-GPU `GPUUtilization` /
/// `GPUMemoryUtilization`. The instance-scope unattributed series are the per-GPU ones averaged
/// over the instance's GPUs, like the other normalized instance series.
pub fn attribute_gpu(
    reading: &GpuReading,
    inventory: &Inventory,
    pid_containers: &HashMap<u32, String>,
    out: &mut Vec<Sample>,
) -> GpuAttributionReport {
    let mut report = GpuAttributionReport::default();
    // (container id, gpu index) -> (sm percent, memory bytes)
    let mut use_by: BTreeMap<(&str, u32), (f64, u64)> = BTreeMap::new();
    // GPUs with a process of no known copy.
    let mut foreign: Vec<u32> = Vec::new();
    for process in &reading.processes {
        let container = pid_containers
            .get(&process.pid)
            .filter(|id| inventory.containers.contains_key(id.as_str()));
        let Some(id) = container else {
            report.unattributed_processes += 1;
            foreign.push(process.gpu_index);
            continue;
        };
        let entry = use_by.entry((id.as_str(), process.gpu_index)).or_default();
        entry.0 += process.sm_utilization_percent.unwrap_or(0.0);
        entry.1 += process.used_memory_bytes.unwrap_or(0);
    }
    one_copy_gets_the_device(reading, &foreign, &mut use_by);
    let total_of = |index: u32| {
        reading
            .devices
            .iter()
            .find(|d| d.index == index)
            .map(|d| d.memory_total_bytes)
    };
    // gpu index -> (attributed sm percent, attributed memory bytes)
    let mut attributed: BTreeMap<u32, (f64, u64)> = BTreeMap::new();
    for (id, info) in &inventory.containers {
        let used: Vec<u32> = use_by
            .keys()
            .filter(|(cid, _)| *cid == id.as_str())
            .map(|(_, i)| *i)
            .collect();
        let allocated = allocated_gpus(&info.gpus, &reading.devices);
        let gpus = if allocated.is_empty() {
            used.clone()
        } else {
            allocated
        };
        if gpus.is_empty() {
            continue;
        }
        // Use of a GPU outside the allocation still counts for the container (it is its use).
        let mut series = gpus.clone();
        series.extend(used.iter().filter(|i| !gpus.contains(i)));
        let (mut sm_sum, mut mem_sum, mut mem_total) = (0.0, 0u64, 0u64);
        for &index in &gpus {
            mem_total += total_of(index).unwrap_or(0);
        }
        for &index in &series {
            let (sm, mem) = use_by
                .get(&(id.as_str(), index))
                .copied()
                .unwrap_or_default();
            let sm = sm.min(100.0);
            report.sm_percent.insert((id.clone(), index), sm);
            sm_sum += sm;
            mem_sum += mem;
            let slot = attributed.entry(index).or_default();
            slot.0 += sm;
            slot.1 += mem;
            let scope = Scope::ContainerGpu {
                component: info.component.clone(),
                container_id: info.short_id.clone(),
                gpu_index: index,
            };
            out.push(Sample::new(
                scope.clone(),
                Metric::GpuUtilizationNormalized,
                sm,
            ));
            if let Some(total) = total_of(index).filter(|t| *t > 0) {
                out.push(Sample::new(
                    scope,
                    Metric::GpuMemoryUtilizationNormalized,
                    percent(mem, total),
                ));
            }
        }
        let scope = container_scope(&info.component, &info.short_id);
        out.push(Sample::new(
            scope.clone(),
            Metric::GpuUtilizationNormalized,
            sm_sum / gpus.len() as f64,
        ));
        if mem_total > 0 {
            out.push(Sample::new(
                scope,
                Metric::GpuMemoryUtilizationNormalized,
                percent(mem_sum, mem_total),
            ));
        }
    }
    unattributed_samples(reading, &attributed, out);
    report
}

/// On each GPU whose per-process utilization was not read because one copy held it
/// ([`ProcessUtilization::OneCopy`]), that copy's SM use is the device's utilization. Should the
/// GPU show anything else by now (a second copy, a process of no known copy: the reader decided
/// on the previous attribution), no copy gets a share this sample, so the device's utilization
/// is unattributed rather than given to the wrong copy; the next enumeration reads it per
/// process.
fn one_copy_gets_the_device(
    reading: &GpuReading,
    foreign: &[u32],
    use_by: &mut BTreeMap<(&str, u32), (f64, u64)>,
) {
    let one_copy = reading
        .devices
        .iter()
        .filter(|d| d.process_utilization == ProcessUtilization::OneCopy);
    for device in one_copy {
        if foreign.contains(&device.index) {
            continue;
        }
        let mut on_gpu = use_by
            .iter_mut()
            .filter(|((_, index), _)| *index == device.index);
        if let (Some((_, (sm, _))), None) = (on_gpu.next(), on_gpu.next()) {
            *sm = device.utilization_percent.unwrap_or(0.0);
        }
    }
}

fn unattributed_samples(
    reading: &GpuReading,
    attributed: &BTreeMap<u32, (f64, u64)>,
    out: &mut Vec<Sample>,
) {
    if reading.devices.is_empty() {
        return;
    }
    let (mut util_sum, mut util_devices, mut mem_sum) = (0.0, 0u32, 0.0);
    for device in &reading.devices {
        let (sm, mem) = attributed.get(&device.index).copied().unwrap_or_default();
        let scope = Scope::Gpu {
            index: device.index,
        };
        if let Some(util) = device.utilization_percent {
            let rest = (util - sm).max(0.0);
            util_sum += rest;
            util_devices += 1;
            out.push(Sample::new(
                scope.clone(),
                Metric::GpuUtilizationUnattributed,
                rest,
            ));
        }
        let rest = if device.memory_total_bytes > 0 {
            percent(
                device.memory_used_bytes.saturating_sub(mem),
                device.memory_total_bytes,
            )
        } else {
            0.0
        };
        mem_sum += rest;
        out.push(Sample::new(
            scope,
            Metric::GpuMemoryUtilizationUnattributed,
            rest,
        ));
    }
    if util_devices > 0 {
        out.push(Sample::new(
            Scope::Instance,
            Metric::GpuUtilizationUnattributed,
            util_sum / util_devices as f64,
        ));
    }
    out.push(Sample::new(
        Scope::Instance,
        Metric::GpuMemoryUtilizationUnattributed,
        mem_sum / reading.devices.len() as f64,
    ));
}

/// Which known copy each GPU process belongs to, for the GPU reader ([`ProcessCopies`]): the
/// PIDs of `pid_containers` whose container is a copy in `inventory`, each container numbered.
///
/// [`ProcessCopies`]: crate::collectors::gpu::ProcessCopies
pub fn process_copies(
    pid_containers: &HashMap<u32, String>,
    inventory: &Inventory,
) -> HashMap<u32, u32> {
    let mut numbers: HashMap<&str, u32> = HashMap::new();
    let mut copies = HashMap::with_capacity(pid_containers.len());
    for (&pid, id) in pid_containers {
        if !inventory.containers.contains_key(id.as_str()) {
            continue;
        }
        let next = u32::try_from(numbers.len()).unwrap_or(u32::MAX);
        copies.insert(pid, *numbers.entry(id.as_str()).or_insert(next));
    }
    copies
}

/// `GPUReservation`: the share of the instance's GPUs allocated to model copies (each GPU counted
/// once, however many copies share it). None without GPUs.
pub fn gpu_reservation(reading: &GpuReading, inventory: &Inventory) -> Option<f64> {
    if reading.devices.is_empty() {
        return None;
    }
    let mut reserved: Vec<u32> = inventory
        .containers
        .values()
        .flat_map(|c| allocated_gpus(&c.gpus, &reading.devices))
        .collect();
    reserved.sort_unstable();
    reserved.dedup();
    Some(percent(reserved.len() as u64, reading.devices.len() as u64))
}

fn container_scope(component: &Arc<str>, short_id: &Arc<str>) -> Scope {
    Scope::Container {
        component: component.clone(),
        container_id: short_id.clone(),
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    part as f64 * 100.0 / whole as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::sample_value;
    use crate::cgroup_path::short_id;
    use crate::collectors::gpu::GpuProcess;
    use crate::discovery::ContainerInfo;

    fn device(index: u32, util: Option<f64>, used: u64, total: u64) -> GpuDevice {
        GpuDevice {
            index,
            uuid: format!("GPU-{index}"),
            utilization_percent: util,
            memory_used_bytes: used,
            memory_total_bytes: total,
            process_utilization: ProcessUtilization::PerProcess,
        }
    }

    fn process(pid: u32, gpu: u32, mem: u64, sm: f64) -> GpuProcess {
        GpuProcess {
            pid,
            gpu_index: gpu,
            used_memory_bytes: Some(mem),
            sm_utilization_percent: Some(sm),
        }
    }

    fn container(id: &str, component: &str, gpus: GpuAllocation) -> ContainerInfo {
        ContainerInfo {
            id: id.into(),
            short_id: short_id(id).into(),
            component: component.into(),
            pid: 1,
            cpu_limit_cores: None,
            memory_reservation_bytes: None,
            memory_limit_bytes: None,
            gpus,
            address: None,
            upstream_port: None,
            scrape: Default::default(),
            health_check: false,
        }
    }

    const GIB: u64 = 1 << 30;

    #[test]
    fn gpu_use_is_attributed_and_the_rest_reconciles_per_gpu() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let mut inventory = Inventory::default();
        inventory.containers.insert(
            a.clone(),
            container(
                &a,
                "model-a",
                GpuAllocation::Devices(vec!["0".into(), "GPU-1".into()]),
            ),
        );
        inventory
            .containers
            .insert(b.clone(), container(&b, "model-b", GpuAllocation::Count(1)));
        let reading = GpuReading {
            devices: vec![
                device(0, Some(90.0), 12 * GIB, 16 * GIB),
                device(1, Some(40.0), 4 * GIB, 16 * GIB),
            ],
            processes: vec![
                process(100, 0, 4 * GIB, 50.0),
                process(101, 1, 2 * GIB, 30.0),
                process(200, 0, 4 * GIB, 20.0),
                process(300, 0, 2 * GIB, 10.0), // a host process
            ],
            ..Default::default()
        };
        let pids = HashMap::from([(100, a.clone()), (101, a.clone()), (200, b.clone())]);
        let mut out = Vec::new();
        let report = attribute_gpu(&reading, &inventory, &pids, &mut out);
        assert_eq!(report.unattributed_processes, 1);

        let sa = container_scope(&"model-a".into(), &"aaaaaaaaaaaa".into());
        assert_eq!(
            sample_value(&out, &sa, Metric::GpuUtilizationNormalized),
            Some(40.0)
        );
        assert_eq!(
            sample_value(&out, &sa, Metric::GpuMemoryUtilizationNormalized),
            Some(6.0 * 100.0 / 32.0)
        );
        let sb = container_scope(&"model-b".into(), &"bbbbbbbbbbbb".into());
        assert_eq!(
            sample_value(&out, &sb, Metric::GpuUtilizationNormalized),
            Some(20.0)
        );
        assert_eq!(
            sample_value(&out, &sb, Metric::GpuMemoryUtilizationNormalized),
            Some(25.0)
        );

        // GPU 0: device 12 GiB used = a 4 + b 4 + unattributed 4 (host process 2 + overhead 2).
        let a0 = Scope::ContainerGpu {
            component: "model-a".into(),
            container_id: "aaaaaaaaaaaa".into(),
            gpu_index: 0,
        };
        let b0 = Scope::ContainerGpu {
            component: "model-b".into(),
            container_id: "bbbbbbbbbbbb".into(),
            gpu_index: 0,
        };
        let g0 = Scope::Gpu { index: 0 };
        let mem = |s: &Scope, m| sample_value(&out, s, m).unwrap();
        let shares = mem(&a0, Metric::GpuMemoryUtilizationNormalized)
            + mem(&b0, Metric::GpuMemoryUtilizationNormalized)
            + mem(&g0, Metric::GpuMemoryUtilizationUnattributed);
        assert_eq!(
            shares,
            12.0 * 100.0 / 16.0,
            "reconciles with GPU 0's memory use"
        );
        let util = mem(&a0, Metric::GpuUtilizationNormalized)
            + mem(&b0, Metric::GpuUtilizationNormalized)
            + mem(&g0, Metric::GpuUtilizationUnattributed);
        assert_eq!(util, 90.0, "reconciles with GPU 0's utilization");
        assert_eq!(
            sample_value(
                &out,
                &Scope::Gpu { index: 1 },
                Metric::GpuMemoryUtilizationUnattributed
            ),
            Some(12.5)
        );
        assert_eq!(
            sample_value(
                &out,
                &Scope::Instance,
                Metric::GpuMemoryUtilizationUnattributed
            ),
            Some((25.0 + 12.5) / 2.0)
        );
        assert_eq!(gpu_reservation(&reading, &inventory), Some(100.0));
    }

    #[test]
    fn per_gpu_container_and_unattributed_series_are_published_with_their_dimensions() {
        use crate::pipeline::Pipeline;
        let a = "a".repeat(64);
        let mut inventory = Inventory::default();
        inventory
            .containers
            .insert(a.clone(), container(&a, "model-a", GpuAllocation::All));
        let reading = GpuReading {
            devices: vec![device(0, Some(60.0), 4 * GIB, 16 * GIB)],
            processes: vec![process(100, 0, 2 * GIB, 50.0)],
            ..Default::default()
        };
        let mut samples = Vec::new();
        attribute_gpu(
            &reading,
            &inventory,
            &HashMap::from([(100, a)]),
            &mut samples,
        );
        let docs = |enhanced| {
            let ctx = crate::encode::test_context(enhanced);
            let mut p = Pipeline::new(
                ctx,
                60,
                crate::encode::Encoding::Emf {
                    max_document_bytes: 256 * 1024,
                },
                crate::aggregate::DataPoints::EverySample,
            );
            p.record(1000, samples.clone());
            let Some(crate::encode::Encoded::Emf { documents, .. }) = p.flush() else {
                panic!("an EMF window");
            };
            documents
                .iter()
                .map(|d| serde_json::from_str::<serde_json::Value>(d).unwrap())
                .collect::<Vec<_>>()
        };
        let dims = |d: &serde_json::Value| d["_aws"]["CloudWatchMetrics"][0]["Dimensions"].clone();
        let on = docs(true);
        let per_gpu = on
            .iter()
            .find(|d| d["ContainerId"] == "aaaaaaaaaaaa" && d["GpuId"] == "gpu_0")
            .expect("a per-container per-GPU document");
        assert_eq!(
            dims(per_gpu),
            serde_json::json!([
                [
                    "EndpointName",
                    "VariantName",
                    "InstanceId",
                    "InferenceComponentName",
                    "ContainerId",
                    "GpuId"
                ],
                ["InferenceComponentName", "GpuId"]
            ])
        );
        assert_eq!(per_gpu["GPUMemoryUtilizationNormalized"][0], 12.5);
        let gpu = on
            .iter()
            .find(|d| d.get("ContainerId").is_none() && d["GpuId"] == "gpu_0")
            .expect("a per-GPU document");
        assert_eq!(gpu["GPUMemoryUtilizationUnattributed"][0], 12.5);
        assert_eq!(gpu["GPUUtilizationUnattributed"][0], 10.0);
        let off = docs(false);
        assert!(off.iter().all(|d| d.get("GpuId").is_none()));
        let container = off
            .iter()
            .find(|d| d["InferenceComponentName"] == "model-a")
            .expect("the per-component document");
        assert_eq!(
            dims(container),
            serde_json::json!([["InferenceComponentName"]])
        );
        assert_eq!(container["GPUUtilizationNormalized"][0], 50.0);
    }

    /// Copy a on GPU 0 alone (two processes, 30 + 40 = the device's 70 %), copies a and b
    /// sharing GPU 1; the same reading with GPU 0 not read per process (`OneCopy`).
    fn one_copy_readings(a: &str, b: &str) -> (Inventory, HashMap<u32, String>, [GpuReading; 2]) {
        let mut inventory = Inventory::default();
        for (id, name) in [(a, "model-a"), (b, "model-b")] {
            inventory
                .containers
                .insert(id.into(), container(id, name, GpuAllocation::All));
        }
        let read = GpuReading {
            devices: vec![
                device(0, Some(70.0), 6 * GIB, 16 * GIB),
                device(1, Some(50.0), 4 * GIB, 16 * GIB),
            ],
            processes: vec![
                process(100, 0, 2 * GIB, 30.0),
                process(101, 0, 3 * GIB, 40.0),
                process(102, 1, GIB, 20.0),
                process(200, 1, 2 * GIB, 25.0),
            ],
            ..Default::default()
        };
        let mut skipped = read.clone();
        skipped.devices[0].process_utilization = ProcessUtilization::OneCopy;
        for p in skipped.processes.iter_mut().filter(|p| p.gpu_index == 0) {
            p.sm_utilization_percent = None;
        }
        let pids = HashMap::from([
            (100, a.to_string()),
            (101, a.to_string()),
            (102, a.to_string()),
            (200, b.to_string()),
        ]);
        (inventory, pids, [read, skipped])
    }

    #[test]
    fn a_gpu_held_by_one_copy_gives_it_the_device_utilization_as_per_process_reads_did() {
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let (inventory, pids, [read, skipped]) = one_copy_readings(&a, &b);
        let (mut before, mut after) = (Vec::new(), Vec::new());
        let report_before = attribute_gpu(&read, &inventory, &pids, &mut before);
        let report_after = attribute_gpu(&skipped, &inventory, &pids, &mut after);
        assert_eq!(before, after, "the same samples, value for value");
        assert_eq!(report_before, report_after);
        assert_eq!(report_after.sm_percent.get(&(a.clone(), 0)), Some(&70.0));
        let a0 = Scope::ContainerGpu {
            component: "model-a".into(),
            container_id: "aaaaaaaaaaaa".into(),
            gpu_index: 0,
        };
        assert_eq!(
            sample_value(&after, &a0, Metric::GpuUtilizationNormalized),
            Some(70.0)
        );
        assert_eq!(
            sample_value(
                &after,
                &Scope::Gpu { index: 0 },
                Metric::GpuUtilizationUnattributed
            ),
            Some(0.0)
        );
        // A copy whose device figure differs from its processes' sum gets the device figure.
        let mut busier = skipped.clone();
        busier.devices[0].utilization_percent = Some(90.0);
        let mut out = Vec::new();
        attribute_gpu(&busier, &inventory, &pids, &mut out);
        assert_eq!(
            sample_value(&out, &a0, Metric::GpuUtilizationNormalized),
            Some(90.0)
        );
    }

    #[test]
    fn a_one_copy_gpu_that_now_shows_another_process_leaves_the_device_unattributed() {
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let (inventory, mut pids, [_, mut skipped]) = one_copy_readings(&a, &b);
        let a0 = Scope::ContainerGpu {
            component: "model-a".into(),
            container_id: "aaaaaaaaaaaa".into(),
            gpu_index: 0,
        };
        let b0 = Scope::ContainerGpu {
            component: "model-b".into(),
            container_id: "bbbbbbbbbbbb".into(),
            gpu_index: 0,
        };
        let unattributed = |out: &[Sample]| {
            sample_value(
                out,
                &Scope::Gpu { index: 0 },
                Metric::GpuUtilizationUnattributed,
            )
        };
        // PID 101 turns out to be copy b's (the reader went by an older picture).
        pids.insert(101, b.clone());
        let mut out = Vec::new();
        attribute_gpu(&skipped, &inventory, &pids, &mut out);
        assert_eq!(
            sample_value(&out, &a0, Metric::GpuUtilizationNormalized),
            Some(0.0)
        );
        assert_eq!(
            sample_value(&out, &b0, Metric::GpuUtilizationNormalized),
            Some(0.0)
        );
        assert_eq!(unattributed(&out), Some(70.0));
        // A process of no known copy on it.
        pids.insert(101, a.clone());
        skipped.processes.push(GpuProcess {
            sm_utilization_percent: None,
            ..process(300, 0, GIB, 0.0)
        });
        let mut out = Vec::new();
        let report = attribute_gpu(&skipped, &inventory, &pids, &mut out);
        assert_eq!(report.unattributed_processes, 1);
        assert_eq!(
            sample_value(&out, &a0, Metric::GpuUtilizationNormalized),
            Some(0.0)
        );
        assert_eq!(unattributed(&out), Some(70.0));
    }

    #[test]
    fn process_copies_number_the_known_copies_only() {
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let (inventory, mut pids, _) = one_copy_readings(&a, &b);
        pids.insert(300, "f".repeat(64)); // a container that is no model copy
        let copies = process_copies(&pids, &inventory);
        assert_eq!(copies.len(), 4, "{copies:?}");
        assert_eq!(copies[&100], copies[&101]);
        assert_eq!(copies[&100], copies[&102]);
        assert_ne!(copies[&100], copies[&200]);
        assert!(!copies.contains_key(&300));
    }

    #[test]
    fn a_container_without_an_allocation_is_measured_against_the_gpus_it_uses() {
        let c = "c".repeat(64);
        let mut inventory = Inventory::default();
        inventory
            .containers
            .insert(c.clone(), container(&c, "model-c", GpuAllocation::None));
        let reading = GpuReading {
            devices: vec![device(0, None, GIB, 8 * GIB), device(1, None, 0, 8 * GIB)],
            processes: vec![process(7, 1, 2 * GIB, 70.0)],
            ..Default::default()
        };
        let mut out = Vec::new();
        attribute_gpu(
            &reading,
            &inventory,
            &HashMap::from([(7, c.clone())]),
            &mut out,
        );
        let s = container_scope(&"model-c".into(), &"cccccccccccc".into());
        assert_eq!(
            sample_value(&out, &s, Metric::GpuUtilizationNormalized),
            Some(70.0)
        );
        assert_eq!(
            sample_value(&out, &s, Metric::GpuMemoryUtilizationNormalized),
            Some(25.0)
        );
        // No device utilization known: no utilization remainder, memory remainder still.
        assert_eq!(
            sample_value(
                &out,
                &Scope::Gpu { index: 0 },
                Metric::GpuUtilizationUnattributed
            ),
            None
        );
        assert_eq!(
            sample_value(
                &out,
                &Scope::Gpu { index: 0 },
                Metric::GpuMemoryUtilizationUnattributed
            ),
            Some(12.5)
        );
        assert_eq!(gpu_reservation(&reading, &inventory), Some(0.0));
        assert_eq!(gpu_reservation(&GpuReading::default(), &inventory), None);
    }

    #[test]
    fn processes_of_unknown_containers_are_unattributed() {
        let inventory = Inventory::default();
        let reading = GpuReading {
            devices: vec![device(0, Some(10.0), GIB, 8 * GIB)],
            processes: vec![process(9, 0, GIB, 10.0)],
            ..Default::default()
        };
        let mut out = Vec::new();
        let pids = HashMap::from([(9, "f".repeat(64))]);
        let report = attribute_gpu(&reading, &inventory, &pids, &mut out);
        assert_eq!(report.unattributed_processes, 1);
        assert_eq!(
            sample_value(
                &out,
                &Scope::Gpu { index: 0 },
                Metric::GpuUtilizationUnattributed
            ),
            Some(10.0)
        );
        assert!(out
            .iter()
            .all(|s| !matches!(s.key.scope, Scope::Container { .. })));
    }

    #[test]
    fn pid_table_maps_gpu_pids_to_containers() {
        let proc_root = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/cgroup/v1/proc"
        ));
        let mut table = PidContainers::default();
        let map = table.resolve(proc_root, &[4242, 4343, 1]);
        assert_eq!(
            map.get(&4242).map(String::as_str),
            Some("b335296f4e067f587ea22d5e8d0533a18ab9898701b6b4ffd2e3a2fdb7e5f6e8")
        );
        assert_eq!(
            map.get(&4343).map(String::as_str),
            Some("4f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8")
        );
        assert_eq!(map.get(&1), None);
        let map = table.resolve(proc_root, &[4343]);
        assert_eq!(map.len(), 1);
    }

    #[test]
    fn allocations_resolve_to_present_gpus() {
        let d: Vec<GpuDevice> = (0..4)
            .map(|index| GpuDevice {
                index,
                uuid: format!("GPU-{index}aa"),
                utilization_percent: None,
                memory_used_bytes: 0,
                memory_total_bytes: 1,
                process_utilization: ProcessUtilization::PerProcess,
            })
            .collect();
        assert_eq!(allocated_gpus(&GpuAllocation::All, &d), vec![0, 1, 2, 3]);
        assert_eq!(allocated_gpus(&GpuAllocation::Count(2), &d), vec![0, 1]);
        assert_eq!(
            allocated_gpus(&GpuAllocation::Count(9), &d),
            vec![0, 1, 2, 3]
        );
        let listed = GpuAllocation::from_visible_devices("3, GPU-1aa,MIG-xyz,7");
        assert_eq!(allocated_gpus(&listed, &d), vec![1, 3]);
        assert!(allocated_gpus(&GpuAllocation::None, &d).is_empty());
    }
}

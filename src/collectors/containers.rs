//! Container metrics, as the sampling loop sees them: Docker discovery keeps the inventory
//! current in the background, the cgroup collector reads it on its own worker thread each tick,
//! and the tick's GPU reading (when there is one) is attributed to the same inventory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::attribution::{attribute_gpu, gpu_reservation};
use crate::catalog::{Metric, Sample, Scope};
use crate::collectors::cgroup::{
    CgroupCollector, CgroupError, ContainerReading, HostCapacity, PidContainers,
};
use crate::collectors::gpu::GpuReading;
use crate::collectors::worker::{Collect, Worker};
use crate::config::Config;
use crate::discovery::{docker, Inventory};
use crate::telemetry::{self, Counter};

impl Collect for CgroupCollector {
    type Reading = (ContainerReading, Vec<CgroupError>);
    fn collect(&mut self, _tick_ms: u64) -> Self::Reading {
        let mut errors = Vec::new();
        let reading = self.read(&mut errors);
        (reading, errors)
    }
}

/// The container side of one sampling tick.
pub struct ContainerMetrics {
    worker: Worker<(ContainerReading, Vec<CgroupError>)>,
    proc_root: PathBuf,
    pids: PidContainers,
    /// The inventory of the last cgroup reading, which GPU attribution uses.
    inventory: Arc<Inventory>,
    /// The copies' SM utilization per GPU from the last GPU attribution (for `cost`).
    gpu_use: crate::cost::GpuUse,
    /// Discovery's latest inventory, for the front door's upstream table.
    inventory_watch: tokio::sync::watch::Receiver<Arc<Inventory>>,
}

impl ContainerMetrics {
    /// Starts discovery and the cgroup collector; None when `[docker] enabled = false`.
    /// Must run inside the runtime (discovery is a task on it).
    pub fn start(config: &Config) -> anyhow::Result<Option<ContainerMetrics>> {
        if !config.docker.enabled {
            return Ok(None);
        }
        let proc_root = &config.host.proc_root;
        let host = HostCapacity::read(proc_root).context("reading the host's CPUs and memory")?;
        let inventory = docker::spawn(config.docker.clone());
        let inventory_watch = inventory.clone();
        let collector = CgroupCollector::new(proc_root, &config.host.cgroup_root, host, inventory);
        tracing::info!(
            socket = %config.docker.socket,
            cgroup = ?collector.version(),
            component_label = %config.docker.component_label,
            component_env = %config.docker.component_env,
            "container metrics started"
        );
        let worker =
            Worker::spawn("cgroup", collector).context("starting the cgroup collector thread")?;
        Ok(Some(ContainerMetrics {
            worker,
            proc_root: proc_root.clone(),
            pids: PidContainers::default(),
            inventory: Arc::default(),
            gpu_use: Default::default(),
            inventory_watch,
        }))
    }

    /// Discovery's inventory as it changes (the front door routes to the containers in it).
    pub fn inventory_watch(&self) -> tokio::sync::watch::Receiver<Arc<Inventory>> {
        self.inventory_watch.clone()
    }

    /// Reads the containers for the tick at `tick_ms`, attributes `gpu` (this tick's GPU reading,
    /// if any) to them, and appends the samples.
    pub async fn read(
        &mut self,
        tick_ms: u64,
        timeout: Duration,
        gpu: Option<&GpuReading>,
        out: &mut Vec<Sample>,
    ) {
        if let Some((reading, errors)) = self
            .worker
            .read_or_count(tick_ms, timeout, Counter::SamplesMissed)
            .await
        {
            for error in &errors {
                telemetry::warn(Counter::CollectorErrors, 1, &error.to_string());
            }
            reading.samples(out);
            self.inventory = reading.inventory;
        }
        if let Some(gpu) = gpu {
            self.attribute(gpu, out);
        }
    }

    /// The model copies as of the last cgroup reading.
    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// The copies' SM utilization per GPU as of the last GPU reading.
    pub fn gpu_use(&self) -> &crate::cost::GpuUse {
        &self.gpu_use
    }

    fn attribute(&mut self, gpu: &GpuReading, out: &mut Vec<Sample>) {
        let mut pids: Vec<u32> = gpu.processes.iter().map(|p| p.pid).collect();
        pids.sort_unstable();
        pids.dedup();
        // A handful of small procfs reads, cached per PID: no need for a thread of their own.
        let map = self.pids.resolve(&self.proc_root, &pids);
        let mut report = attribute_gpu(gpu, &self.inventory, map, out);
        self.gpu_use = std::mem::take(&mut report.sm_percent);
        // Host processes on a GPU are normal: counted, and published as the unattributed share.
        telemetry::add(
            Counter::GpuProcessesUnattributed,
            report.unattributed_processes,
        );
        if let Some(reserved) = gpu_reservation(gpu, &self.inventory) {
            out.push(Sample::new(
                Scope::Instance,
                Metric::GpuReservation,
                reserved,
            ));
        }
    }
}

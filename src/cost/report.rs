//! `cost`: the split of the instance's price between the inference components, from what the
//! agent's own collectors see now (one NVML reading, Docker discovery's inventory).

use std::fmt;

use crate::collectors::gpu::GpuDevice;
use crate::config::Config;
use crate::discovery::Inventory;

use super::{split, GpuUse, InstancePrice, Split};

/// How long `cost` waits for the Docker engine's first inventory (as `plan` does).
const DISCOVERY_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// The report: price, GPUs and the split.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub price: InstancePrice,
    /// GPUs NVML shows (0 without a driver).
    pub gpus_seen: u32,
    pub split: Split,
}

/// The GPUs one NVML reading shows and the model copies discovery lists now. A source that is
/// disabled or absent gives nothing.
pub async fn discover(config: &Config) -> (Vec<GpuDevice>, Inventory) {
    let devices = if config.gpu.enabled {
        let options = crate::collectors::gpu::GpuOptions::new(
            &config.gpu.nvml_library,
            config.metrics.sample_interval_ms,
        );
        let mut nvml = crate::collectors::gpu::NvmlCollector::new(options);
        nvml.read(crate::clock::system_now_ms()).devices
    } else {
        Vec::new()
    };
    let mut inventory = Inventory::default();
    if config.docker.enabled {
        let mut watch = crate::discovery::docker::spawn(config.docker.clone());
        let _ = tokio::time::timeout(DISCOVERY_WAIT, watch.changed()).await;
        inventory = (**watch.borrow()).clone();
    }
    (devices, inventory)
}

/// The split of `price` over `devices` and `inventory` (None: no GPUs to divide the price by).
/// By allocation only: measured use needs readings over time, which the running agent has.
pub fn report(
    price: InstancePrice,
    devices: &[GpuDevice],
    inventory: &Inventory,
) -> Option<Report> {
    let instance_gpus = price.gpus.unwrap_or(devices.len() as u32);
    if instance_gpus == 0 {
        return None;
    }
    let gpus_seen = devices.len() as u32;
    // Without NVML, indices 0..N-1 stand for the instance's GPUs (as the running agent does).
    let fallback: Vec<GpuDevice>;
    let devices = if devices.is_empty() {
        fallback = super::placeholder_devices(instance_gpus);
        &fallback[..]
    } else {
        devices
    };
    let split = split(inventory, devices, false, instance_gpus, &GpuUse::new());
    Some(Report {
        price,
        gpus_seen,
        split,
    })
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.price;
        let s = &self.split;
        writeln!(
            f,
            "instance: {}, ${} per hour ({}), {} GPUs ({} seen by NVML)",
            p.instance_type.as_deref().unwrap_or("type unset"),
            p.hourly_usd,
            p.describe_source(),
            s.instance_gpus,
            self.gpus_seen
        )?;
        writeln!(
            f,
            "\n{:<32} {:>6} {:>5} {:>10} {:>16} {:>7}",
            "component", "copies", "GPUs", "GPU share", "USD per hour", "share"
        )?;
        let per_gpu = f64::from(s.instance_gpus);
        let line = |f: &mut fmt::Formatter<'_>, name: &str, copies: &str, gpus: u32, share: f64| {
            writeln!(
                f,
                "{:<32} {:>6} {:>5} {:>10.2} {:>16.4} {:>6.1}%",
                name,
                copies,
                gpus,
                share * per_gpu,
                p.hourly_usd * share,
                share * 100.0
            )
        };
        let (mut copies, mut share) = (0u32, 0.0);
        for c in &s.components {
            line(f, &c.component, &c.copies.to_string(), c.gpus, c.share)?;
            copies += c.copies;
            share += c.share;
        }
        let unallocated = s.instance_gpus.saturating_sub(s.allocated_gpus);
        line(
            f,
            "(idle: unallocated GPUs)",
            "-",
            unallocated,
            s.unallocated_share,
        )?;
        line(
            f,
            "total",
            &copies.to_string(),
            s.allocated_gpus + unallocated,
            share + s.unallocated_share,
        )?;
        if s.overallocated() {
            writeln!(
                f,
                "\nwarning: copies hold {} GPUs but the price is divided by {}: check endpoint.instance_type or cost.gpus_per_instance",
                s.allocated_gpus, s.instance_gpus
            )?;
        }
        Ok(())
    }
}

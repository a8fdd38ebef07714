//! `cost`: the split of the instance's price between the inference components, from what the
//! agent's own collectors see now (one NVML reading, Docker discovery's inventory).

use std::fmt;

use crate::collectors::gpu::GpuDevice;
use crate::discovery::Inventory;

use super::{split, GpuUse, InstancePrice, Split};

/// The report: price, GPUs and the split.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub price: InstancePrice,
    /// GPUs NVML shows (0 without a driver).
    pub gpus_seen: u32,
    pub split: Split,
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

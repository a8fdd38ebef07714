//! Cost per model from GPU allocation: the launch post's method (metrics-spec.md, "Cost per
//! model"): GPUs allocated to a component x the instance's price per hour / GPUs per instance,
//! accrued over time. Pure: the sampling loop in `agent` hands [`CostModel::tick`] the tick's
//! time, its GPU devices, the discovery inventory and the copies' measured GPU use (from
//! `attribution`), and gets samples back. No I/O here but the one-time warnings.
//!
//! Sharing rules (docs/cost.md):
//! - A GPU allocated to k copies is split 1/k to each; a component's cost is its copies' sum.
//! - GPUs no copy holds, and GPUs the price counts that NVML does not show, are the instance's
//!   unallocated cost.
//! - The utilization-weighted view splits each GPU's cost by measured use: a copy pays the share
//!   of the GPU's time its processes kept the SMs busy (its SM utilization on that GPU / 100,
//!   scaled down when the copies' figures add up to more than 100 %). The rest, the GPU's time
//!   no copy used (idle time, use by processes in no copy, GPUs nobody holds), is the
//!   instance's idle cost. A GPU whose utilization NVML cannot tell (MIG) is split as allocated.
//!   Without NVML there is no measured use and no weighted view.
//! - Each tick accrues the price over the real time since the previous tick (the sampling
//!   period on the first one), so missed ticks are paid by the next tick, and the Sum of the
//!   accrued samples in a window, partial or not, is the window's cost.

pub mod prices;
pub mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::attribution::allocated_gpus;
pub use crate::attribution::GpuUse;
use crate::catalog::{Metric, Sample, Scope};
use crate::collectors::gpu::GpuDevice;
use crate::config::Config;
use crate::discovery::Inventory;
use crate::telemetry::{self, Counter};

pub use prices::{Basis, PRICES_AS_OF};

/// Milliseconds in an hour: prices are per hour, ticks in milliseconds.
pub const MS_PER_HOUR: f64 = 3_600_000.0;

/// Per component (`Scope::Component`).
pub const COMPONENT_METRICS: [Metric; 4] = [
    Metric::GpusAllocated,
    Metric::CostPerHour,
    Metric::CostAccrued,
    Metric::CostAccruedUtilizationWeighted,
];

/// Per instance (`Scope::Instance`).
pub const INSTANCE_METRICS: [Metric; 3] = [
    Metric::UnallocatedGpuCostPerHour,
    Metric::UnallocatedGpuCostAccrued,
    Metric::IdleGpuCostAccrued,
];

/// Where the price came from.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PriceSource {
    /// `[cost] instance_hourly_price_usd`.
    Override,
    /// The built-in table ([`prices::PRICES`]).
    Table(Basis),
}

/// What the instance costs and how many GPUs the price is divided by.
#[derive(Clone, Debug, PartialEq)]
pub struct InstancePrice {
    pub instance_type: Option<String>,
    pub hourly_usd: f64,
    /// None: the GPUs NVML sees.
    pub gpus: Option<u32>,
    pub source: PriceSource,
}

impl InstancePrice {
    pub fn describe_source(&self) -> String {
        match self.source {
            PriceSource::Override => "[cost] instance_hourly_price_usd".into(),
            PriceSource::Table(basis) => format!("{}; {PRICES_AS_OF}", basis.describe()),
        }
    }
}

/// Why there is no price: cost metrics are off.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unpriced {
    #[error("no [endpoint] instance_type and no [cost] instance_hourly_price_usd")]
    NoInstanceType,
    #[error("instance type \"{0}\" is not in the price table ({PRICES_AS_OF}) and [cost] instance_hourly_price_usd is unset")]
    UnknownInstanceType(String),
}

/// The instance's price: the override, else the table's row for `endpoint.instance_type`.
pub fn instance_price(config: &Config) -> Result<InstancePrice, Unpriced> {
    let instance_type = config.endpoint.instance_type.clone();
    let row = instance_type.as_deref().and_then(prices::lookup);
    let gpus = config.cost.gpus_per_instance.or(row.map(|r| r.gpus));
    if let Some(hourly_usd) = config.cost.instance_hourly_price_usd {
        return Ok(InstancePrice {
            instance_type,
            hourly_usd,
            gpus,
            source: PriceSource::Override,
        });
    }
    match (row, instance_type) {
        (Some(row), instance_type) => Ok(InstancePrice {
            instance_type,
            hourly_usd: row.hourly_usd,
            gpus,
            source: PriceSource::Table(row.basis),
        }),
        (None, None) => Err(Unpriced::NoInstanceType),
        (None, Some(t)) => Err(Unpriced::UnknownInstanceType(t)),
    }
}

/// One line for `check-config`: the price in force, or why cost is off.
pub fn describe(config: &Config) -> String {
    match instance_price(config) {
        Ok(p) => format!(
            "cost: ${} per hour divided by {} ({})",
            p.hourly_usd,
            p.gpus
                .map_or("the GPUs NVML shows".to_string(), |n| format!("{n} GPUs")),
            p.describe_source()
        ),
        Err(e) => format!("cost: off ({e})"),
    }
}

/// One inference component's part of the instance at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct ComponentShare {
    pub component: Arc<str>,
    /// Model copies (containers) of the component.
    pub copies: u32,
    /// Distinct GPUs its copies hold.
    pub gpus: u32,
    /// Its fraction of the instance's price by allocation: the sum over its copies' GPUs of
    /// 1 / (copies holding that GPU x GPUs per instance).
    pub share: f64,
    /// Its fraction by measured use; None without measured use (no NVML).
    pub weighted_share: Option<f64>,
}

/// How the instance's price is split at one moment; the shares add up to 1 (up to f64
/// rounding) whenever the copies hold no more GPUs than the price is divided by.
#[derive(Clone, Debug, PartialEq)]
pub struct Split {
    /// By component name.
    pub components: Vec<ComponentShare>,
    /// GPUs the price is divided by.
    pub instance_gpus: u32,
    /// Distinct GPUs held by copies.
    pub allocated_gpus: u32,
    /// Fraction of the price no copy holds.
    pub unallocated_share: f64,
    /// Fraction of the price no copy used (weighted view); None without measured use.
    pub idle_share: Option<f64>,
}

impl Split {
    /// Copies hold more GPUs than the price is divided by.
    pub fn overallocated(&self) -> bool {
        self.allocated_gpus > self.instance_gpus
    }
}

/// Splits the instance between the copies in `inventory`. `devices` are the GPUs (from NVML, or
/// indices 0..N-1 without it: then `measured` is false and there is no weighted view);
/// `instance_gpus` > 0 is what the price is divided by.
pub fn split(
    inventory: &Inventory,
    devices: &[GpuDevice],
    measured: bool,
    instance_gpus: u32,
    gpu_use: &GpuUse,
) -> Split {
    let per_gpu = f64::from(instance_gpus.max(1));
    // GPU index -> the copies (full IDs) allocated it.
    let mut holders: BTreeMap<u32, Vec<&str>> = BTreeMap::new();
    let mut allocations: Vec<(&str, &Arc<str>, Vec<u32>)> = Vec::new();
    for (id, info) in &inventory.containers {
        let gpus = allocated_gpus(&info.gpus, devices);
        for &g in &gpus {
            holders.entry(g).or_default().push(id.as_str());
        }
        allocations.push((id.as_str(), &info.component, gpus));
    }
    // Per GPU: each copy's weighted fraction of that GPU, and the unused rest.
    let mut weighted: BTreeMap<&str, f64> = BTreeMap::new();
    let mut idle_gpus = 0.0;
    if measured {
        for device in devices {
            let held_by = holders.get(&device.index).map_or(&[][..], |h| &h[..]);
            if device.utilization_percent.is_none() {
                // Use unknown (MIG): as allocated.
                for id in held_by {
                    *weighted.entry(id).or_default() += 1.0 / held_by.len() as f64;
                }
                idle_gpus += f64::from(u8::from(held_by.is_empty()));
                continue;
            }
            let uses: Vec<(&str, f64)> = gpu_use
                .iter()
                .filter(|((id, g), _)| *g == device.index && inventory.containers.contains_key(id))
                .map(|((id, _), sm)| (id.as_str(), sm.clamp(0.0, 100.0) / 100.0))
                .collect();
            let total: f64 = uses.iter().map(|(_, u)| u).sum();
            let scale = if total > 1.0 { 1.0 / total } else { 1.0 };
            for (id, u) in &uses {
                *weighted.entry(id).or_default() += u * scale;
            }
            idle_gpus += (1.0 - total * scale).max(0.0);
        }
        // GPUs the price counts that NVML does not show: nobody used them.
        idle_gpus += f64::from(instance_gpus.saturating_sub(devices.len() as u32));
    }
    let mut components: BTreeMap<&Arc<str>, (u32, BTreeSet<u32>, f64, f64)> = BTreeMap::new();
    for (id, component, gpus) in &allocations {
        let entry = components.entry(component).or_default();
        entry.0 += 1;
        // Whole GPUs add up exactly (1/1); one division by the instance's GPUs at the end.
        let mut gpu_equivalents = 0.0;
        for g in gpus {
            entry.1.insert(*g);
            gpu_equivalents += 1.0 / holders.get(g).map_or(1, Vec::len) as f64;
        }
        entry.2 += gpu_equivalents;
        entry.3 += weighted.get(id).copied().unwrap_or(0.0);
    }
    let allocated_gpus = holders.len() as u32;
    Split {
        components: components
            .into_iter()
            .map(|(component, (copies, gpus, held, used))| ComponentShare {
                component: component.clone(),
                copies,
                gpus: gpus.len() as u32,
                share: held / per_gpu,
                weighted_share: measured.then_some(used / per_gpu),
            })
            .collect(),
        instance_gpus,
        allocated_gpus,
        unallocated_share: f64::from(instance_gpus.saturating_sub(allocated_gpus)) / per_gpu,
        idle_share: measured.then_some(idle_gpus / per_gpu),
    }
}

/// USD accrued at `hourly_usd` for `share` of the instance over `elapsed_ms`.
pub fn accrued_usd(hourly_usd: f64, share: f64, elapsed_ms: u64) -> f64 {
    hourly_usd * share * elapsed_ms as f64 / MS_PER_HOUR
}

/// The per-tick state: the price, the previous tick, and the last GPUs seen.
#[derive(Debug)]
pub struct CostModel {
    price: InstancePrice,
    interval_ms: u64,
    last_tick_ms: Option<u64>,
    devices: Vec<GpuDevice>,
    /// `devices` came from NVML (else they are indices 0..N-1 from the price's GPU count).
    measured: bool,
    overallocated: bool,
}

impl CostModel {
    /// The model for this configuration; None (and one warning, counted) when there is no
    /// price. An unverified table price is logged once.
    pub fn start(config: &Config) -> Option<CostModel> {
        match instance_price(config) {
            Ok(price) => {
                if price.source == PriceSource::Table(Basis::Unverified) {
                    tracing::warn!(
                        instance_type = price.instance_type.as_deref().unwrap_or_default(),
                        hourly_usd = price.hourly_usd,
                        "the built-in price of this instance type is unverified (docs/cost.md); set [cost] instance_hourly_price_usd from your bill"
                    );
                }
                tracing::info!(
                    hourly_usd = price.hourly_usd,
                    gpus = ?price.gpus,
                    source = %price.describe_source(),
                    "cost per model on"
                );
                Some(CostModel::new(price, config.metrics.sample_interval_ms))
            }
            // Not asked for: said once, quietly.
            Err(e @ Unpriced::NoInstanceType) => {
                tracing::info!(reason = %e, "cost per model off");
                None
            }
            Err(e) => {
                telemetry::warn(
                    Counter::CostUnpriced,
                    1,
                    &format!("cost metrics off: {e}; set [cost] instance_hourly_price_usd"),
                );
                None
            }
        }
    }

    pub fn new(price: InstancePrice, interval_ms: u64) -> CostModel {
        let devices = placeholder_devices(price.gpus.unwrap_or(0));
        CostModel {
            price,
            interval_ms,
            last_tick_ms: None,
            devices,
            measured: false,
            overallocated: false,
        }
    }

    pub fn price(&self) -> &InstancePrice {
        &self.price
    }

    /// Accrues the time since the previous tick and appends the cost samples. `devices`: this
    /// tick's GPUs from NVML (None or empty: the last ones seen, else indices from the price).
    pub fn tick(
        &mut self,
        tick_ms: u64,
        devices: Option<&[GpuDevice]>,
        inventory: &Inventory,
        gpu_use: &GpuUse,
        out: &mut Vec<Sample>,
    ) {
        let elapsed_ms = match self.last_tick_ms {
            Some(last) => tick_ms.saturating_sub(last),
            None => self.interval_ms,
        };
        self.last_tick_ms = Some(tick_ms.max(self.last_tick_ms.unwrap_or(0)));
        if let Some(seen) = devices.filter(|d| !d.is_empty()) {
            self.devices.clear();
            self.devices.extend_from_slice(seen);
            self.measured = true;
        }
        let instance_gpus = match self.price.gpus {
            Some(n) => n,
            None if self.measured => self.devices.len() as u32,
            None => 0,
        };
        if instance_gpus == 0 || elapsed_ms == 0 {
            return;
        }
        let split = split(
            inventory,
            &self.devices,
            self.measured,
            instance_gpus,
            gpu_use,
        );
        if split.overallocated() && !self.overallocated {
            telemetry::warn(
                Counter::CostGpusOverallocated,
                1,
                &format!(
                    "copies hold {} GPUs but the price is divided by {instance_gpus}: costs add up to more than the instance; check endpoint.instance_type or cost.gpus_per_instance",
                    split.allocated_gpus
                ),
            );
        }
        self.overallocated = split.overallocated();
        samples(&split, self.price.hourly_usd, elapsed_ms, out);
    }
}

/// The samples of one tick's split over `elapsed_ms`.
pub fn samples(split: &Split, hourly_usd: f64, elapsed_ms: u64, out: &mut Vec<Sample>) {
    for c in &split.components {
        let scope = Scope::Component {
            component: c.component.clone(),
        };
        out.push(Sample::new(
            scope.clone(),
            Metric::GpusAllocated,
            f64::from(c.gpus),
        ));
        out.push(Sample::new(
            scope.clone(),
            Metric::CostPerHour,
            hourly_usd * c.share,
        ));
        out.push(Sample::new(
            scope.clone(),
            Metric::CostAccrued,
            accrued_usd(hourly_usd, c.share, elapsed_ms),
        ));
        if let Some(w) = c.weighted_share {
            out.push(Sample::new(
                scope,
                Metric::CostAccruedUtilizationWeighted,
                accrued_usd(hourly_usd, w, elapsed_ms),
            ));
        }
    }
    out.push(Sample::new(
        Scope::Instance,
        Metric::UnallocatedGpuCostPerHour,
        hourly_usd * split.unallocated_share,
    ));
    out.push(Sample::new(
        Scope::Instance,
        Metric::UnallocatedGpuCostAccrued,
        accrued_usd(hourly_usd, split.unallocated_share, elapsed_ms),
    ));
    if let Some(idle) = split.idle_share {
        out.push(Sample::new(
            Scope::Instance,
            Metric::IdleGpuCostAccrued,
            accrued_usd(hourly_usd, idle, elapsed_ms),
        ));
    }
}

/// Without NVML, GPUs 0..n-1 stand in for the instance's GPUs, so `all`, counts and indices still
/// resolve (UUIDs cannot).
pub(crate) fn placeholder_devices(n: u32) -> Vec<GpuDevice> {
    (0..n)
        .map(|index| GpuDevice {
            index,
            uuid: String::new(),
            utilization_percent: None,
            memory_used_bytes: 0,
            memory_total_bytes: 0,
            process_utilization: Default::default(),
        })
        .collect()
}

#[cfg(test)]
mod tests;

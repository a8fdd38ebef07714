//! GPU readings through NVML: per device and per process.
//!
//! The data types below are the contract between the GPU collector and its consumers (the
//! instance GPU metrics, and container attribution, which maps host PIDs to containers).
//! [`ProcessCopies`] goes the other way: what attribution found, so the GPU thread reads
//! per-process utilization only on GPUs that copies share.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// One reading of every GPU and the processes on them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuReading {
    pub devices: Vec<GpuDevice>,
    pub processes: Vec<GpuProcess>,
    /// The health figures of the GPUs read, one per GPU, in `devices`' order; empty when no
    /// `[gpu] health` group is on.
    pub health: Vec<GpuHealth>,
}

/// One GPU's health figures (`[gpu] health`). Every value is None where the group is off, or
/// the GPU or driver does not give it: then its series is absent, never a false 0.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuHealth {
    /// NVML index: the `GpuId` dimension value.
    pub index: u32,
    pub temperature_c: Option<f64>,
    pub memory_temperature_c: Option<f64>,
    pub power_watts: Option<f64>,
    pub power_limit_watts: Option<f64>,
    /// Energy used since this GPU's previous reading, in J (absent at the first reading and
    /// after a counter reset).
    pub energy_joules: Option<f64>,
    pub sm_clock_mhz: Option<f64>,
    pub memory_clock_mhz: Option<f64>,
    /// NVML's clock event (throttle) reason mask (`nvmlClocksEventReason*` bits).
    pub clock_event_reasons: Option<u64>,
    /// Framebuffer used and free, in MiB (DCGM's unit).
    pub framebuffer_used_mib: Option<f64>,
    pub framebuffer_free_mib: Option<f64>,
    pub memory_copy_utilization_percent: Option<f64>,
    /// The slow group (ECC counts, retired pages or remapped rows, PCIe replays): each field
    /// the GPU has, by its metric; read on the slow cadence and carried in between.
    pub ecc: Vec<(Metric, f64)>,
    /// XID errors received since the previous reading; None where events are not registered.
    pub xid_errors: Option<u64>,
    /// GPM: ratio 0..1 of SM active and DRAM bandwidth used since the previous reading.
    pub sm_active: Option<f64>,
    pub dram_active: Option<f64>,
    /// GPM per MIG GPU instance (a MIG-enabled GPU has no device-wide figures).
    pub mig: Vec<MigActivity>,
}

/// GPM figures of one MIG GPU instance.
#[derive(Clone, Debug, PartialEq)]
pub struct MigActivity {
    pub gpu_instance: u32,
    pub sm_active: Option<f64>,
    pub dram_active: Option<f64>,
}

/// Clock event reason bits (nvml.h `nvmlClocksEventReason*`) behind the 0/1 series.
pub mod clock_event {
    /// `nvmlClocksEventReasonSwPowerCap`: clocks held down to stay under the power limit.
    pub const SW_POWER_CAP: u64 = 0x4;
    /// `nvmlClocksEventReasonHwSlowdown`: hardware slowdown (heat, power brake, power draw).
    pub const HW_SLOWDOWN: u64 = 0x8;
    /// `nvmlClocksEventReasonSwThermalSlowdown`.
    pub const SW_THERMAL_SLOWDOWN: u64 = 0x20;
    /// `nvmlClocksEventReasonHwThermalSlowdown`.
    pub const HW_THERMAL_SLOWDOWN: u64 = 0x40;
    /// `nvmlClocksEventReasonHwPowerBrakeSlowdown`.
    pub const HW_POWER_BRAKE_SLOWDOWN: u64 = 0x80;
    /// Thermal: software or hardware.
    pub const THERMAL: u64 = SW_THERMAL_SLOWDOWN | HW_THERMAL_SLOWDOWN;
    /// Any hardware slowdown.
    pub const HARDWARE: u64 = HW_SLOWDOWN | HW_THERMAL_SLOWDOWN | HW_POWER_BRAKE_SLOWDOWN;
}

/// The series a GPU publishes per health group (one list for `plan` and the docs' counts). The
/// ECC group as on a GPU with row remapping (Ampere and later): 7 series; a GPU with retired
/// pages instead publishes 6.
pub fn health_metrics(group: crate::config::GpuHealthGroup) -> &'static [Metric] {
    use crate::config::GpuHealthGroup::*;
    use Metric::*;
    match group {
        Temperature => &[GpuTemperature, GpuMemoryTemperature],
        Power => &[GpuPowerUsage, GpuEnforcedPowerLimit, GpuEnergy],
        Clocks => &[GpuSmClock, GpuMemoryClock],
        Throttle => &[
            GpuClockEventReasons,
            GpuClockEventPowerCap,
            GpuClockEventThermal,
            GpuClockEventHwSlowdown,
        ],
        Memory => &[
            GpuFramebufferUsed,
            GpuFramebufferFree,
            GpuMemoryCopyUtilization,
        ],
        Ecc => &[
            GpuEccSbeVolatile,
            GpuEccDbeVolatile,
            GpuRemappedRowsCorrectable,
            GpuRemappedRowsUncorrectable,
            GpuRowRemapPending,
            GpuRowRemapFailure,
            GpuPcieReplays,
        ],
        Xid => &[GpuXidErrors],
        Gpm => &[GpuSmActive, GpuDramActive],
    }
}

impl GpuHealth {
    /// A GPU's health samples (`Scope::GpuHealth`, and `Scope::MigInstance` per MIG instance).
    pub fn samples(&self, out: &mut Vec<Sample>) {
        let scope = Scope::GpuHealth { index: self.index };
        let reasons = self.clock_event_reasons;
        let flag = |bits: u64| reasons.map(|mask| f64::from(u8::from(mask & bits != 0)));
        let values = [
            (Metric::GpuTemperature, self.temperature_c),
            (Metric::GpuMemoryTemperature, self.memory_temperature_c),
            (Metric::GpuPowerUsage, self.power_watts),
            (Metric::GpuEnforcedPowerLimit, self.power_limit_watts),
            (Metric::GpuEnergy, self.energy_joules),
            (Metric::GpuSmClock, self.sm_clock_mhz),
            (Metric::GpuMemoryClock, self.memory_clock_mhz),
            (Metric::GpuClockEventReasons, reasons.map(|m| m as f64)),
            (
                Metric::GpuClockEventPowerCap,
                flag(clock_event::SW_POWER_CAP),
            ),
            (Metric::GpuClockEventThermal, flag(clock_event::THERMAL)),
            (Metric::GpuClockEventHwSlowdown, flag(clock_event::HARDWARE)),
            (Metric::GpuFramebufferUsed, self.framebuffer_used_mib),
            (Metric::GpuFramebufferFree, self.framebuffer_free_mib),
            (
                Metric::GpuMemoryCopyUtilization,
                self.memory_copy_utilization_percent,
            ),
            (Metric::GpuXidErrors, self.xid_errors.map(|n| n as f64)),
            (Metric::GpuSmActive, self.sm_active),
            (Metric::GpuDramActive, self.dram_active),
        ];
        for (metric, value) in values {
            if let Some(value) = value {
                out.push(Sample::new(scope.clone(), metric, value));
            }
        }
        for &(metric, value) in &self.ecc {
            out.push(Sample::new(scope.clone(), metric, value));
        }
        for mig in &self.mig {
            let scope = Scope::MigInstance {
                gpu_index: self.index,
                gpu_instance: mig.gpu_instance,
            };
            for (metric, value) in [
                (Metric::GpuSmActive, mig.sm_active),
                (Metric::GpuDramActive, mig.dram_active),
            ] {
                if let Some(value) = value {
                    out.push(Sample::new(scope.clone(), metric, value));
                }
            }
        }
    }
}

/// One GPU.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuDevice {
    /// NVML index: the `GpuId` dimension value.
    pub index: u32,
    pub uuid: String,
    /// Device utilization 0..100; None where NVML cannot tell (MIG enabled, unsupported).
    pub utilization_percent: Option<f64>,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    /// Where the SM utilization of this GPU's processes comes from.
    pub process_utilization: ProcessUtilization,
}

/// Where the SM utilization of a GPU's processes comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProcessUtilization {
    /// Each process's own `sm_utilization_percent` (read with `nvmlDeviceGetProcessUtilization`,
    /// or no process listed).
    #[default]
    PerProcess,
    /// Not read: when the processes were listed, all of them belonged to one model copy (as
    /// [`ProcessCopies`] said), so that copy's SM utilization is the device's
    /// `utilization_percent`; the processes' own values are None.
    OneCopy,
}

/// Which model copy each GPU process belongs to, as the last container attribution found it:
/// host PID -> a copy number (equal numbers, same copy; the numbers mean nothing across
/// publications). Only PIDs of known copies are in it; a PID not in it (a host process, a
/// container that is no model copy, a process not yet attributed) is unknown.
///
/// The main thread publishes it after an attribution that changed it; the GPU thread reads it
/// at each process enumeration and skips `nvmlDeviceGetProcessUtilization` (about 1.4 ms per
/// GPU on an H100) on a GPU whose processes are all one copy's. Bounded by the processes NVML
/// listed; one short lock a side, never held across an NVML call.
#[derive(Clone, Debug, Default)]
pub struct ProcessCopies(Arc<Mutex<Arc<HashMap<u32, u32>>>>);

impl ProcessCopies {
    /// Replaces the map.
    pub fn publish(&self, copies: HashMap<u32, u32>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(copies);
    }

    /// The map as last published.
    pub fn current(&self) -> Arc<HashMap<u32, u32>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// One process's use of one GPU, by host PID.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuProcess {
    pub pid: u32,
    pub gpu_index: u32,
    /// None where the driver does not report it (e.g. without permission, or under MIG).
    pub used_memory_bytes: Option<u64>,
    /// SM utilization 0..100 since the last reading; None where NVML has no sample for it.
    pub sm_utilization_percent: Option<f64>,
}

mod health;
mod nvml;
pub mod xid;

pub use health::{ECC_FIELDS, MEMORY_TEMPERATURE_FIELD};
pub use nvml::{GpuOptions, NvmlCollector, PROCESS_ENUMERATION_MIN_INTERVAL_MS};

use crate::catalog::{Metric, Sample, Scope};
use crate::collectors::worker::Worker;

impl GpuDevice {
    /// Memory used / total in percent; None where the total is unknown (0).
    pub fn memory_utilization_percent(&self) -> Option<f64> {
        (self.memory_total_bytes > 0)
            .then(|| self.memory_used_bytes as f64 * 100.0 / self.memory_total_bytes as f64)
    }
}

impl GpuReading {
    /// The published samples (metrics-spec.md): per GPU (`Scope::Gpu`, published with enhanced
    /// metrics only) and instance-wide sums over the GPUs, plus those sums divided by the number
    /// of GPUs that contributed. A GPU without a utilization value (MIG enabled, unsupported)
    /// contributes to neither utilization series, so it never counts as a false 0; with no
    /// contributing GPU at all the instance series are absent for this sample.
    pub fn samples(&self, out: &mut Vec<Sample>) {
        let (mut util_sum, mut util_gpus) = (0.0, 0u32);
        let (mut mem_sum, mut mem_gpus) = (0.0, 0u32);
        for device in &self.devices {
            let scope = Scope::Gpu {
                index: device.index,
            };
            if let Some(util) = device.utilization_percent {
                out.push(Sample::new(scope.clone(), Metric::GpuUtilization, util));
                util_sum += util;
                util_gpus += 1;
            }
            if let Some(mem) = device.memory_utilization_percent() {
                out.push(Sample::new(scope, Metric::GpuMemoryUtilization, mem));
                mem_sum += mem;
                mem_gpus += 1;
            }
        }
        let instance = [
            (
                util_sum,
                util_gpus,
                Metric::GpuUtilization,
                Metric::GpuUtilizationNormalized,
            ),
            (
                mem_sum,
                mem_gpus,
                Metric::GpuMemoryUtilization,
                Metric::GpuMemoryUtilizationNormalized,
            ),
        ];
        for (sum, gpus, metric, normalized) in instance {
            if gpus > 0 {
                out.push(Sample::new(Scope::Instance, metric, sum));
                out.push(Sample::new(
                    Scope::Instance,
                    normalized,
                    sum / f64::from(gpus),
                ));
            }
        }
        for health in &self.health {
            health.samples(out);
        }
    }
}

/// Starts the NVML collector on its own thread, or None when `[gpu] enabled = false`. `copies`
/// is what attribution publishes (see [`ProcessCopies`]).
pub fn spawn(
    config: &crate::config::GpuConfig,
    sample_interval_ms: u64,
    copies: ProcessCopies,
) -> std::io::Result<Option<Worker<GpuReading>>> {
    if !config.enabled {
        tracing::info!("GPU metrics disabled by configuration");
        return Ok(None);
    }
    let mut options = GpuOptions::new(&config.nvml_library, sample_interval_ms);
    options.process_min_interval_ms = config.process_interval_ms;
    options.health = config.health.clone();
    options.health_slow_interval_ms = config.health_slow_interval_ms;
    options.copies = copies;
    let collector = NvmlCollector::new(options);
    Worker::spawn("gpu", collector).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::sample_value;

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

    #[test]
    fn sums_and_normalized_values_over_the_gpus() {
        let reading = GpuReading {
            devices: vec![
                device(0, Some(30.0), 10, 100),
                device(1, Some(50.0), 40, 200),
            ],
            processes: vec![],
            health: vec![],
        };
        let mut out = Vec::new();
        reading.samples(&mut out);
        let gpu1 = Scope::Gpu { index: 1 };
        assert_eq!(
            sample_value(&out, &gpu1, Metric::GpuUtilization),
            Some(50.0)
        );
        assert_eq!(
            sample_value(&out, &gpu1, Metric::GpuMemoryUtilization),
            Some(20.0)
        );
        let i = Scope::Instance;
        assert_eq!(sample_value(&out, &i, Metric::GpuUtilization), Some(80.0));
        assert_eq!(
            sample_value(&out, &i, Metric::GpuUtilizationNormalized),
            Some(40.0)
        );
        assert_eq!(
            sample_value(&out, &i, Metric::GpuMemoryUtilization),
            Some(30.0)
        );
        assert_eq!(
            sample_value(&out, &i, Metric::GpuMemoryUtilizationNormalized),
            Some(15.0)
        );
        assert_eq!(out.len(), 8);
    }

    #[test]
    fn a_gpu_without_utilization_is_not_a_false_zero() {
        let reading = GpuReading {
            devices: vec![device(0, None, 50, 100), device(1, Some(60.0), 0, 100)],
            processes: vec![],
            health: vec![],
        };
        let mut out = Vec::new();
        reading.samples(&mut out);
        assert_eq!(
            sample_value(&out, &Scope::Gpu { index: 0 }, Metric::GpuUtilization),
            None
        );
        assert_eq!(
            sample_value(&out, &Scope::Instance, Metric::GpuUtilizationNormalized),
            Some(60.0),
            "divided by the GPUs that have a value"
        );
        assert_eq!(
            sample_value(
                &out,
                &Scope::Instance,
                Metric::GpuMemoryUtilizationNormalized
            ),
            Some(25.0)
        );
    }

    #[test]
    fn no_gpus_no_samples() {
        let mut out = Vec::new();
        GpuReading::default().samples(&mut out);
        assert!(out.is_empty());
        let only_mig = GpuReading {
            devices: vec![device(0, None, 0, 0)],
            processes: vec![],
            health: vec![],
        };
        only_mig.samples(&mut out);
        assert!(out.is_empty(), "{out:?}");
    }
}

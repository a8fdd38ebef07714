//! GPU readings through NVML: per device and per process.
//!
//! The data types below are the contract between the GPU collector and its consumers (the
//! instance GPU metrics, and container attribution, which maps host PIDs to containers).

/// One reading of every GPU and the processes on them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuReading {
    pub devices: Vec<GpuDevice>,
    pub processes: Vec<GpuProcess>,
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

mod nvml;

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
    }
}

/// Starts the NVML collector on its own thread, or None when `[gpu] enabled = false`.
pub fn spawn(
    config: &crate::config::GpuConfig,
    sample_interval_ms: u64,
) -> std::io::Result<Option<Worker<GpuReading>>> {
    if !config.enabled {
        tracing::info!("GPU metrics disabled by configuration");
        return Ok(None);
    }
    let mut options = GpuOptions::new(&config.nvml_library, sample_interval_ms);
    options.process_min_interval_ms = config.process_interval_ms;
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
        };
        only_mig.samples(&mut out);
        assert!(out.is_empty(), "{out:?}");
    }
}

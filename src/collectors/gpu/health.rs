//! GPU health reads (`[gpu] health`): temperatures, power and energy, clocks, clock event
//! reasons, framebuffer and copy utilization, the slow ECC group, and GPM activity (also per
//! MIG instance). Runs on the GPU worker thread, inside one device read.
//!
//! Each value is read on its own: a call the GPU or driver does not support leaves that value
//! absent (logged once per GPU and call, counted under `gpu_health_unsupported`), a failing call
//! leaves it absent for that sample (counted under `gpu_errors`), and neither stops the other
//! values. GPU_IS_LOST stops the GPU, as for the device reads.

use std::collections::BTreeSet;
use std::ffi::c_void;
use std::ptr::NonNull;

use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::enums::device::SampleValue;
use nvml_wrapper::enums::gpm::GpmMetricId;
use nvml_wrapper::error::{nvml_try, NvmlError};
use nvml_wrapper::gpm::gpm_metrics_get;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::sys_exports::field_id::*;
use nvml_wrapper::{Device, GpmSample, Nvml};

use super::nvml::DeviceError;
use super::{GpuHealth, MigActivity};
use crate::catalog::Metric;
use crate::config::GpuHealthGroup;
use crate::telemetry::{self, Counter};

/// The memory (HBM) temperature: NVML has it only as a field value.
pub const MEMORY_TEMPERATURE_FIELD: u32 = NVML_FI_DEV_MEMORY_TEMP;

/// The slow group, read in one `nvmlDeviceGetFieldValues` call per GPU: each field answers on
/// its own, so a GPU with row remapping (Ampere and later) answers the remapped-row fields and
/// NOT_SUPPORTED for retired pages, and an older one the other way round.
pub const ECC_FIELDS: [(u32, Metric); 10] = [
    (NVML_FI_DEV_ECC_SBE_VOL_TOTAL, Metric::GpuEccSbeVolatile),
    (NVML_FI_DEV_ECC_DBE_VOL_TOTAL, Metric::GpuEccDbeVolatile),
    (NVML_FI_DEV_RETIRED_SBE, Metric::GpuRetiredPagesSbe),
    (NVML_FI_DEV_RETIRED_DBE, Metric::GpuRetiredPagesDbe),
    (NVML_FI_DEV_RETIRED_PENDING, Metric::GpuRetiredPagesPending),
    (NVML_FI_DEV_REMAPPED_COR, Metric::GpuRemappedRowsCorrectable),
    (
        NVML_FI_DEV_REMAPPED_UNC,
        Metric::GpuRemappedRowsUncorrectable,
    ),
    (NVML_FI_DEV_REMAPPED_PENDING, Metric::GpuRowRemapPending),
    (NVML_FI_DEV_REMAPPED_FAILURE, Metric::GpuRowRemapFailure),
    (NVML_FI_DEV_PCIE_REPLAY_COUNTER, Metric::GpuPcieReplays),
];

/// The GPM figures read: SM active ("percentage of time each multiprocessor had at least 1
/// warp assigned", DCGM's SM_ACTIVE) and DRAM bandwidth used (DCGM's DRAM_ACTIVE).
const GPM_METRICS: [GpmMetricId; 2] = [GpmMetricId::SmUtil, GpmMetricId::DramBwUtil];

const MIB: f64 = 1024.0 * 1024.0;

/// What a device read hands the health read, so no call is made twice.
pub(super) struct DeviceFigures {
    pub mig: bool,
    /// `nvmlDeviceGetUtilizationRates`' memory figure (None under MIG or unsupported).
    pub memory_copy_percent: Option<f64>,
    pub memory_used_bytes: u64,
    pub memory_free_bytes: u64,
}

/// Which groups are read, and when the slow ones are due.
pub(super) struct HealthPlan<'a> {
    pub groups: &'a [GpuHealthGroup],
    pub tick_ms: u64,
    pub slow_interval_ms: u64,
}

impl HealthPlan<'_> {
    fn on(&self, group: GpuHealthGroup) -> bool {
        self.groups.contains(&group)
    }
}

/// A GPM sample kept from one reading to the next by its raw handle: `GpmSample` borrows the
/// `Nvml` that the collector owns beside it, so it cannot be stored as is. Freed through
/// [`HealthState::release`] before that `Nvml` goes.
struct KeptSample(NonNull<c_void>);

// SAFETY: a GPM sample handle is a heap object of the driver, used only from the GPU worker
// thread that owns the collector (the collector moves to that thread once, at start).
unsafe impl Send for KeptSample {}

impl KeptSample {
    fn keep(sample: GpmSample<'_>) -> Option<KeptSample> {
        NonNull::new(sample.into_handle().cast()).map(KeptSample)
    }

    /// The sample again, owned (dropping it frees it).
    fn restore(self, nvml: &Nvml) -> GpmSample<'_> {
        // SAFETY: the handle came from `into_handle` of a sample of this same library instance
        // (every kept sample is released before the collector drops or replaces its `Nvml`),
        // and it is restored once: `self` is consumed.
        unsafe { GpmSample::from_handle(nvml, self.0.as_ptr().cast()) }
    }
}

/// Health state of one GPU kept between readings.
#[derive(Default)]
pub(super) struct HealthState {
    /// Calls found unsupported on this GPU (logged once each).
    unsupported: BTreeSet<&'static str>,
    /// The energy counter at the previous reading, in mJ.
    last_energy_mj: Option<u64>,
    /// When the slow group was last read (tick ms), and what it read.
    slow_read_ms: Option<u64>,
    ecc: Vec<(Metric, f64)>,
    /// The MIG GPU instances found by the last slow read.
    gpu_instances: Vec<u32>,
    /// Whether GPM is supported (asked once per initialisation).
    gpm_supported: Option<bool>,
    gpm_previous: Option<KeptSample>,
    gpm_mig_previous: Vec<(u32, KeptSample)>,
}

impl HealthState {
    /// Frees the kept GPM samples; call while `nvml` is still the library they came from.
    pub fn release(&mut self, nvml: &Nvml) {
        if let Some(kept) = self.gpm_previous.take() {
            drop(kept.restore(nvml));
        }
        for (_, kept) in self.gpm_mig_previous.drain(..) {
            drop(kept.restore(nvml));
        }
        self.gpm_supported = None;
    }

    /// Forgets what depends on the GPU staying up (a lost GPU, or NVML re-initialised):
    /// counters restart their baselines, the slow group is read afresh.
    pub fn reset(&mut self, nvml: &Nvml) {
        self.release(nvml);
        self.last_energy_mj = None;
        self.slow_read_ms = None;
        self.ecc.clear();
        self.gpu_instances.clear();
    }

    /// A value, or None where the call is unsupported (logged once, counted) or failed this
    /// sample (counted); GPU_IS_LOST stops the GPU.
    fn value<T>(
        &mut self,
        index: u32,
        call: &'static str,
        result: Result<T, NvmlError>,
    ) -> Result<Option<T>, DeviceError> {
        match result {
            Ok(v) => Ok(Some(v)),
            Err(NvmlError::GpuLost) => Err(DeviceError::Lost),
            // NO_PERMISSION is as lasting (MIG queries that need the root-only
            // /dev/nvidia-caps nodes under the unprivileged unit): once, not every sample.
            Err(
                NvmlError::NotSupported
                | NvmlError::FailedToLoadSymbol(_)
                | NvmlError::FunctionNotFound
                | NvmlError::NoPermission,
            ) => {
                self.note_unsupported(index, call);
                Ok(None)
            }
            Err(e) => {
                telemetry::warn_sampled(
                    Counter::GpuErrors,
                    &format!("GPU {index}: {call} failed: {e}; that value is absent this sample"),
                );
                Ok(None)
            }
        }
    }

    fn note_unsupported(&mut self, index: u32, call: &'static str) {
        if self.unsupported.insert(call) {
            telemetry::add(Counter::GpuHealthUnsupported, 1);
            tracing::info!(
                gpu = index,
                call,
                counter = Counter::GpuHealthUnsupported.name(),
                "not supported (or not permitted) on this GPU or driver: its series is absent"
            );
        }
    }
}

/// One GPU's health figures for this reading.
pub(super) fn read(
    nvml: &Nvml,
    device: &Device,
    index: u32,
    figures: &DeviceFigures,
    plan: &HealthPlan<'_>,
    state: &mut HealthState,
) -> Result<GpuHealth, DeviceError> {
    use GpuHealthGroup::*;
    let mut h = GpuHealth {
        index,
        ..GpuHealth::default()
    };
    if plan.on(Temperature) {
        h.temperature_c = state
            .value(
                index,
                "nvmlDeviceGetTemperature",
                device.temperature(TemperatureSensor::Gpu),
            )?
            .map(f64::from);
        h.memory_temperature_c = field_values(
            device,
            index,
            state,
            &[(MEMORY_TEMPERATURE_FIELD, Metric::GpuMemoryTemperature)],
        )?
        .first()
        .map(|&(_, v)| v);
    }
    if plan.on(Power) {
        let milliwatts = |v: u32| f64::from(v) / 1000.0;
        h.power_watts = state
            .value(index, "nvmlDeviceGetPowerUsage", device.power_usage())?
            .map(milliwatts);
        h.power_limit_watts = state
            .value(
                index,
                "nvmlDeviceGetEnforcedPowerLimit",
                device.enforced_power_limit(),
            )?
            .map(milliwatts);
        let total = state.value(
            index,
            "nvmlDeviceGetTotalEnergyConsumption",
            device.total_energy_consumption(),
        )?;
        h.energy_joules = energy_since(&mut state.last_energy_mj, total);
    }
    if plan.on(Clocks) {
        h.sm_clock_mhz = state
            .value(
                index,
                "nvmlDeviceGetClockInfo(SM)",
                device.clock_info(Clock::SM),
            )?
            .map(f64::from);
        h.memory_clock_mhz = state
            .value(
                index,
                "nvmlDeviceGetClockInfo(MEM)",
                device.clock_info(Clock::Memory),
            )?
            .map(f64::from);
    }
    if plan.on(Throttle) {
        h.clock_event_reasons = state
            .value(
                index,
                "nvmlDeviceGetCurrentClocksThrottleReasons",
                device.current_throttle_reasons(),
            )?
            .map(|r| r.bits());
    }
    if plan.on(Memory) {
        h.framebuffer_used_mib = Some(figures.memory_used_bytes as f64 / MIB);
        h.framebuffer_free_mib = Some(figures.memory_free_bytes as f64 / MIB);
        h.memory_copy_utilization_percent = figures.memory_copy_percent;
    }
    let slow_due = state
        .slow_read_ms
        .is_none_or(|at| plan.tick_ms.saturating_sub(at) >= plan.slow_interval_ms);
    if slow_due && (plan.on(Ecc) || plan.on(Gpm)) {
        state.slow_read_ms = Some(plan.tick_ms);
        if plan.on(Ecc) {
            state.ecc = field_values(device, index, state, &ECC_FIELDS)?;
        }
        if plan.on(Gpm) && figures.mig {
            state.gpu_instances = gpu_instances(nvml, device, index, state)?;
        }
    }
    if plan.on(Ecc) {
        h.ecc = state.ecc.clone();
    }
    if plan.on(Gpm) {
        gpm(nvml, device, index, figures.mig, state, &mut h)?;
    }
    Ok(h)
}

/// The energy used since the previous reading, in J; None at the first reading and when the
/// counter went back (a driver reload), which starts a new baseline.
fn energy_since(last_mj: &mut Option<u64>, total_mj: Option<u64>) -> Option<f64> {
    let previous = std::mem::replace(last_mj, total_mj);
    let (previous, now) = (previous?, total_mj?);
    (now >= previous).then(|| (now - previous) as f64 / 1000.0)
}

/// The named fields the GPU answers, each by its metric; one call.
fn field_values(
    device: &Device,
    index: u32,
    state: &mut HealthState,
    fields: &[(u32, Metric)],
) -> Result<Vec<(Metric, f64)>, DeviceError> {
    let ids: Vec<FieldId> = fields.iter().map(|&(id, _)| FieldId(id)).collect();
    let Some(samples) = state.value(
        index,
        "nvmlDeviceGetFieldValues",
        device.field_values_for(&ids),
    )?
    else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(fields.len());
    for (&(_, metric), sample) in fields.iter().zip(samples) {
        let value = sample.and_then(|s| s.value);
        if let Some(value) = state.value(index, metric.name(), value)? {
            match sample_f64(&value) {
                Some(v) => out.push((metric, v)),
                None => telemetry::warn_sampled(
                    Counter::GpuErrors,
                    &format!(
                        "GPU {index}: {} has an impossible value {value:?}",
                        metric.name()
                    ),
                ),
            }
        }
    }
    Ok(out)
}

/// A field value as a finite, non-negative number.
fn sample_f64(value: &SampleValue) -> Option<f64> {
    let v = match *value {
        SampleValue::F64(v) => v,
        SampleValue::U32(v) => f64::from(v),
        SampleValue::U64(v) => v as f64,
        SampleValue::I64(v) => v as f64,
    };
    (v.is_finite() && v >= 0.0).then_some(v)
}

/// The GPU instance IDs of a MIG-enabled GPU's MIG devices, each once.
fn gpu_instances(
    nvml: &Nvml,
    device: &Device,
    index: u32,
    state: &mut HealthState,
) -> Result<Vec<u32>, DeviceError> {
    let Some(count) = state.value(
        index,
        "nvmlDeviceGetMaxMigDeviceCount",
        device.mig_device_count(),
    )?
    else {
        return Ok(Vec::new());
    };
    let mut ids = BTreeSet::new();
    for slot in 0..count {
        match device.mig_device_by_index(slot) {
            Ok(mig) => {
                let id = gpu_instance_id(nvml, &mig);
                if let Some(id) = state.value(index, "nvmlDeviceGetGpuInstanceId", id)? {
                    ids.insert(id);
                }
            }
            // An empty slot.
            Err(NvmlError::NotFound | NvmlError::InvalidArg) => {}
            Err(e) => {
                state.value::<()>(index, "nvmlDeviceGetMigDeviceHandleByIndex", Err(e))?;
            }
        }
    }
    Ok(ids.into_iter().collect())
}

/// `nvmlDeviceGetGpuInstanceId` of a MIG device, which nvml-wrapper 0.13 does not wrap.
fn gpu_instance_id(nvml: &Nvml, mig: &Device) -> Result<u32, NvmlError> {
    let sym = nvml
        .lib()
        .nvmlDeviceGetGpuInstanceId
        .as_ref()
        .map_err(|e| NvmlError::FailedToLoadSymbol(e.to_string()))?;
    let mut id: u32 = 0;
    // SAFETY: `sym` is nvmlDeviceGetGpuInstanceId(nvmlDevice_t, unsigned int*) of the loaded
    // library, and the MIG device handle comes from that library.
    nvml_try(unsafe { sym(mig.handle(), &mut id) })?;
    Ok(id)
}

/// GPM figures since the previous reading: device-wide, or per GPU instance under MIG.
fn gpm(
    nvml: &Nvml,
    device: &Device,
    index: u32,
    mig: bool,
    state: &mut HealthState,
    h: &mut GpuHealth,
) -> Result<(), DeviceError> {
    let supported = match state.gpm_supported {
        Some(s) => s,
        None => {
            let s = state
                .value(index, "nvmlGpmQueryDeviceSupport", device.gpm_support())?
                .unwrap_or(false);
            if !s {
                state.note_unsupported(index, "GPM (nvmlGpmQueryDeviceSupport)");
            }
            state.gpm_supported = Some(s);
            s
        }
    };
    if !supported {
        return Ok(());
    }
    if !mig {
        let sample = state.value(index, "nvmlGpmSampleGet", device.gpm_sample())?;
        let previous = state.gpm_previous.take();
        if let (Some(now), Some(previous)) = (&sample, previous) {
            let previous = previous.restore(nvml);
            (h.sm_active, h.dram_active) = gpm_figures(nvml, index, state, &previous, now)?;
        }
        state.gpm_previous = sample.and_then(KeptSample::keep);
        return Ok(());
    }
    let mut kept = std::mem::take(&mut state.gpm_mig_previous);
    for gi in state.gpu_instances.clone() {
        let sample = state.value(index, "nvmlGpmMigSampleGet", device.gpm_mig_sample(gi))?;
        let previous = kept
            .iter()
            .position(|(id, _)| *id == gi)
            .map(|at| kept.swap_remove(at).1);
        if let (Some(now), Some(previous)) = (&sample, previous) {
            let previous = previous.restore(nvml);
            let (sm_active, dram_active) = gpm_figures(nvml, index, state, &previous, now)?;
            h.mig.push(MigActivity {
                gpu_instance: gi,
                sm_active,
                dram_active,
            });
        }
        if let Some(now) = sample.and_then(KeptSample::keep) {
            state.gpm_mig_previous.push((gi, now));
        }
    }
    // Instances gone since: free their samples.
    for (_, old) in kept {
        drop(old.restore(nvml));
    }
    Ok(())
}

/// SM active and DRAM active as ratios 0..1 between two samples.
fn gpm_figures(
    nvml: &Nvml,
    index: u32,
    state: &mut HealthState,
    previous: &GpmSample<'_>,
    now: &GpmSample<'_>,
) -> Result<(Option<f64>, Option<f64>), DeviceError> {
    let Some(results) = state.value(
        index,
        "nvmlGpmMetricsGet",
        gpm_metrics_get(nvml, previous, now, &GPM_METRICS),
    )?
    else {
        return Ok((None, None));
    };
    let mut figures = [None, None];
    for (slot, result) in figures.iter_mut().zip(results) {
        let call = "nvmlGpmMetricsGet (a metric)";
        if let Some(r) = state.value(index, call, result)? {
            *slot = (0.0..=100.0).contains(&r.value).then(|| r.value / 100.0);
        }
    }
    Ok((figures[0], figures[1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn energy_is_the_increase_since_the_previous_reading() {
        let mut last = None;
        assert_eq!(
            energy_since(&mut last, Some(10_000)),
            None,
            "no baseline yet"
        );
        assert_eq!(energy_since(&mut last, Some(12_500)), Some(2.5));
        assert_eq!(energy_since(&mut last, Some(100)), None, "counter reset");
        assert_eq!(energy_since(&mut last, Some(1_100)), Some(1.0));
        assert_eq!(energy_since(&mut last, None), None, "unsupported");
        assert_eq!(last, None);
    }

    #[test]
    fn field_values_must_be_finite_and_not_negative() {
        assert_eq!(sample_f64(&SampleValue::U64(7)), Some(7.0));
        assert_eq!(sample_f64(&SampleValue::U32(3)), Some(3.0));
        assert_eq!(sample_f64(&SampleValue::I64(-1)), None);
        assert_eq!(sample_f64(&SampleValue::F64(f64::NAN)), None);
    }
}

//! The NVML collector: every GPU's utilization and memory, and the processes on them, through
//! `nvml-wrapper` over the driver library named by `[gpu] nvml_library`.
//!
//! It runs on a [`Worker`](crate::collectors::worker::Worker) thread, so a call that never returns
//! costs that tick's GPU data and nothing else. Faults:
//! - no library or no driver: one warning; initialisation is retried quietly with backoff;
//! - `GPU_IS_LOST`: that GPU's series stop, logged and counted; NVML is re-initialised with
//!   backoff until the GPU answers again;
//! - MIG enabled: memory is reported, utilization (device and per process) is left absent;
//! - no `nvmlDeviceGetMemoryInfo_v2` (drivers before r510): the v1 call is used;
//! - a process list whose entries cannot be right (a driver writing another entry layout) is
//!   rejected for that sample, logged and counted, never misread.
//!
//! Per-process SM utilization, the dearest call by far, is read only where it is needed: not on
//! a GPU without processes, nor on one whose processes all belong to one model copy (as
//! attribution last published in [`ProcessCopies`]): that copy's utilization is the device's.
//! A GPU that copies share, or with a process of no known copy, is read.
//!
//! With `[gpu] health` groups on, each GPU's health figures are read in the same device read
//! (`health.rs`), and the XID event thread (`xid.rs`) is started at the first initialisation.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::time::Duration;

use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::{nvml_try, NvmlError};
use nvml_wrapper::struct_wrappers::device::{ProcessInfo, ProcessUtilizationSample};
use nvml_wrapper::{Device, Nvml};

use super::health::{self, DeviceFigures, HealthPlan, HealthState};
use super::xid::XidWatch;
use super::{GpuDevice, GpuHealth, GpuProcess, GpuReading, ProcessCopies, ProcessUtilization};
use crate::backoff::Backoff;
use crate::collectors::worker::Collect;
use crate::config::{GpuHealthGroup, DEFAULT_GPU_HEALTH_SLOW_INTERVAL_MS};
use crate::telemetry::{self, Counter};

/// Processes are listed, and their SM utilization read, at most once per this period (every
/// sample at the default 1 s interval, every 10th at 100 ms). Measured on an H100 with driver
/// 580 (docs/gpu.md): listing compute and graphics processes costs about 50 us per GPU, but
/// nvmlDeviceGetProcessUtilization about 1.4 ms per GPU (11 ms a sample for 8 GPUs), too much to
/// run at 10 samples a second (and read only on GPUs that copies share); the device calls
/// themselves cost under 10 us per GPU.
pub const PROCESS_ENUMERATION_MIN_INTERVAL_MS: u64 = 1000;

/// Retry of a lost GPU (re-initialising NVML): from 1 s, doubling, up to 5 min, so a GPU that
/// fell off the bus costs at most one init per 5 min once it is clearly gone.
const LOST_GPU_RETRY_BASE: Duration = Duration::from_secs(1);
const LOST_GPU_RETRY_MAX: Duration = Duration::from_secs(300);

/// Retry of a failed initialisation (driver not loaded yet, library missing): from 10 s up to 5 min.
const INIT_RETRY_BASE: Duration = Duration::from_secs(10);
const INIT_RETRY_MAX: Duration = Duration::from_secs(300);

/// Linux `PID_MAX_LIMIT` on 64-bit (include/linux/threads.h: 4 x 1024 x 1024): no PID is larger.
const PID_MAX_LIMIT: u32 = 4 * 1024 * 1024;

/// `NVML_DEVICE_MIG_ENABLE` (nvml.h).
const MIG_ENABLED: u32 = 1;

/// `NVML_ERROR_ARGUMENT_VERSION_MISMATCH` (nvml.h), which nvml-wrapper 0.13 has no variant for: a
/// driver that knows the call but not version 2 of its struct.
const NVML_ERROR_ARGUMENT_VERSION_MISMATCH: u32 = 25;

/// How the collector is set up: the library, and the retry timings (tests shorten them).
#[derive(Clone, Debug)]
pub struct GpuOptions {
    pub library: String,
    pub sample_interval_ms: u64,
    pub lost_retry_base: Duration,
    pub lost_retry_max: Duration,
    pub init_retry_base: Duration,
    pub init_retry_max: Duration,
    /// Processes are enumerated at most once per this many ms (u64::MAX: only once).
    pub process_min_interval_ms: u64,
    /// The health groups read (none by default; `[gpu] health` through `gpu::spawn`).
    pub health: Vec<GpuHealthGroup>,
    /// The slow health reads (ECC group, MIG instance list) run at most once per this many ms.
    pub health_slow_interval_ms: u64,
    /// Which copy each GPU process belongs to, from attribution (empty: every process unknown,
    /// so every GPU with processes is read per process).
    pub copies: ProcessCopies,
}

impl GpuOptions {
    pub fn new(library: &str, sample_interval_ms: u64) -> Self {
        GpuOptions {
            library: library.to_owned(),
            sample_interval_ms,
            lost_retry_base: LOST_GPU_RETRY_BASE,
            lost_retry_max: LOST_GPU_RETRY_MAX,
            init_retry_base: INIT_RETRY_BASE,
            init_retry_max: INIT_RETRY_MAX,
            process_min_interval_ms: PROCESS_ENUMERATION_MIN_INTERVAL_MS,
            health: Vec::new(),
            health_slow_interval_ms: DEFAULT_GPU_HEALTH_SLOW_INTERVAL_MS,
            copies: ProcessCopies::default(),
        }
    }
}

/// What a failed device read means for the collector.
pub(super) enum DeviceError {
    /// GPU_IS_LOST: the GPU's series stop until it answers again.
    Lost,
    /// Anything else: no data for this GPU this sample.
    Failed(String),
}

impl DeviceError {
    fn from(call: &'static str) -> impl Fn(NvmlError) -> DeviceError {
        move |e| match e {
            NvmlError::GpuLost => DeviceError::Lost,
            e => DeviceError::Failed(format!("{call} failed: {e}")),
        }
    }
}

/// Per-GPU state kept between samples.
#[derive(Default)]
struct DeviceState {
    /// Set while the GPU is lost: when to try again, and the backoff.
    lost: Option<(u64, Backoff)>,
    /// The newest per-process utilization sample seen, in µs (NVML's CPU timestamps).
    last_seen_us: Option<u64>,
    /// The processes of the last enumeration (reused between enumerations).
    processes: Vec<GpuProcess>,
    /// Where their SM utilization comes from, as of the last enumeration.
    process_utilization: ProcessUtilization,
    /// MIG mode, read once per initialisation: it changes only with a GPU reset, and the call
    /// costs about 80 us on an H100 (more than the rest of the device reads together).
    mig: Option<bool>,
    health: HealthState,
}

/// Reads every GPU through NVML. Owns the library handle; meant to run on a collector thread.
pub struct NvmlCollector {
    options: GpuOptions,
    nvml: Option<Nvml>,
    init_backoff: Backoff,
    next_init_ms: u64,
    warned_unavailable: bool,
    memory_v1: bool,
    devices: Vec<DeviceState>,
    /// When processes were last enumerated (tick ms).
    last_enumeration_ms: Option<u64>,
    /// The XID event thread (`[gpu] health` with "xid"), started at the first initialisation.
    xid: Option<XidWatch>,
}

impl Drop for NvmlCollector {
    fn drop(&mut self) {
        self.drop_nvml();
    }
}

impl Collect for NvmlCollector {
    type Reading = GpuReading;
    fn collect(&mut self, tick_ms: u64) -> GpuReading {
        self.read(tick_ms)
    }
}

impl NvmlCollector {
    /// Nothing is loaded until the first reading.
    pub fn new(options: GpuOptions) -> Self {
        NvmlCollector {
            init_backoff: Backoff::new(options.init_retry_base, options.init_retry_max),
            options,
            nvml: None,
            next_init_ms: 0,
            warned_unavailable: false,
            memory_v1: false,
            devices: Vec::new(),
            last_enumeration_ms: None,
            xid: None,
        }
    }

    /// Drops the library handle, freeing first what was kept from it (GPM samples).
    fn drop_nvml(&mut self) {
        if let Some(nvml) = self.nvml.take() {
            for state in &mut self.devices {
                state.health.release(&nvml);
            }
        }
    }

    /// True once NVML is initialised.
    pub fn is_initialised(&self) -> bool {
        self.nvml.is_some()
    }

    /// One reading of every GPU for the tick at `tick_ms` (wall clock).
    pub fn read(&mut self, tick_ms: u64) -> GpuReading {
        let mut reading = GpuReading::default();
        if self
            .devices
            .iter()
            .any(|d| d.lost.as_ref().is_some_and(|(at, _)| *at <= tick_ms))
        {
            // A lost GPU is due for another try: re-initialise NVML to get fresh handles.
            self.drop_nvml();
            self.next_init_ms = 0;
        }
        if !self.ensure_initialised(tick_ms) {
            return reading;
        }
        let Some(nvml) = self.nvml.as_ref() else {
            return reading;
        };
        let count = match nvml.device_count() {
            Ok(count) => count,
            Err(e) => {
                telemetry::warn(
                    Counter::GpuErrors,
                    1,
                    &format!("nvmlDeviceGetCount failed, re-initialising NVML: {e}"),
                );
                self.drop_nvml();
                self.next_init_ms = tick_ms + duration_ms(self.init_backoff.next_delay());
                return reading;
            }
        };
        // GPUs gone since the last reading: free what was kept for them first.
        for state in self.devices.iter_mut().skip(count as usize) {
            state.health.release(nvml);
        }
        self.devices
            .resize_with(count as usize, DeviceState::default);
        let enumerate = self.last_enumeration_ms.is_none_or(|last| {
            tick_ms.saturating_sub(last) >= self.options.process_min_interval_ms
        });
        if enumerate {
            self.last_enumeration_ms = Some(tick_ms);
        }
        let copies = enumerate.then(|| self.options.copies.current());
        let mut reader = Reader {
            nvml,
            tick_ms,
            copies: copies.as_deref(),
            sample_interval_ms: self.options.sample_interval_ms,
            memory_v1: &mut self.memory_v1,
            health: HealthPlan {
                groups: &self.options.health,
                tick_ms,
                slow_interval_ms: self.options.health_slow_interval_ms,
            },
        };
        for (index, state) in (0u32..).zip(self.devices.iter_mut()) {
            if state.lost.as_ref().is_some_and(|(at, _)| *at > tick_ms) {
                continue;
            }
            match reader.device(index, state, enumerate) {
                Ok((device, health)) => {
                    if state.lost.take().is_some() {
                        tracing::info!(gpu = index, uuid = %device.uuid, "lost GPU answers again");
                    }
                    reading.processes.extend(state.processes.iter().cloned());
                    reading.devices.push(device);
                    if let Some(mut health) = health {
                        health.xid_errors = self.xid.as_ref().and_then(|x| x.counts.take(index));
                        reading.health.push(health);
                    }
                }
                Err(DeviceError::Lost) => {
                    if state.lost.is_none() {
                        telemetry::warn(
                            Counter::GpuLost,
                            1,
                            &format!("GPU {index} is lost (GPU_IS_LOST): its series stop; re-initialising with backoff"),
                        );
                        let backoff =
                            Backoff::new(self.options.lost_retry_base, self.options.lost_retry_max);
                        state.lost = Some((0, backoff));
                    }
                    if let Some((retry_at, backoff)) = state.lost.as_mut() {
                        *retry_at = tick_ms + duration_ms(backoff.next_delay());
                    }
                    state.processes.clear();
                    state.process_utilization = ProcessUtilization::PerProcess;
                    state.last_seen_us = None;
                    state.health.reset(nvml);
                }
                Err(DeviceError::Failed(reason)) => telemetry::warn(
                    Counter::GpuErrors,
                    1,
                    &format!("GPU {index}: {reason}; no data for it this sample"),
                ),
            }
        }
        reading
    }

    /// Starts the XID event thread once, when its group is on.
    fn start_xid(&mut self) {
        if self.xid.is_some() || !self.options.health.contains(&GpuHealthGroup::Xid) {
            return;
        }
        match XidWatch::spawn(&self.options.library) {
            Ok(watch) => self.xid = Some(watch),
            Err(e) => telemetry::warn(
                Counter::GpuErrors,
                1,
                &format!("cannot start the XID event thread ({e}): no XID counts"),
            ),
        }
    }

    /// Loads and initialises NVML when due. False: no NVML for this reading.
    fn ensure_initialised(&mut self, tick_ms: u64) -> bool {
        if self.nvml.is_some() {
            return true;
        }
        if tick_ms < self.next_init_ms {
            return false;
        }
        match Nvml::builder()
            .lib_path(OsStr::new(&self.options.library))
            .init()
        {
            Ok(nvml) => {
                tracing::info!(
                    library = %self.options.library,
                    driver = %nvml.sys_driver_version().unwrap_or_default(),
                    gpus = nvml.device_count().unwrap_or(0),
                    "NVML initialised"
                );
                self.nvml = Some(nvml);
                self.init_backoff.reset();
                self.start_xid();
                for state in &mut self.devices {
                    state.mig = None;
                }
                self.warned_unavailable = false;
                true
            }
            Err(e) => {
                let delay = self.init_backoff.next_delay();
                self.next_init_ms = tick_ms + duration_ms(delay);
                if self.warned_unavailable {
                    tracing::debug!(error = %e, retry_in_ms = duration_ms(delay), "NVML still unavailable");
                } else {
                    self.warned_unavailable = true;
                    telemetry::warn(
                        Counter::GpuUnavailable,
                        1,
                        &format!(
                            "NVML unavailable ({}: {e}): running without GPU metrics",
                            self.options.library
                        ),
                    );
                }
                false
            }
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One sample's reads, borrowing the initialised library.
struct Reader<'a> {
    nvml: &'a Nvml,
    tick_ms: u64,
    /// Which copy each process belongs to (`ProcessCopies`), when processes are enumerated.
    copies: Option<&'a HashMap<u32, u32>>,
    sample_interval_ms: u64,
    memory_v1: &'a mut bool,
    health: HealthPlan<'a>,
}

/// One memory reading, in bytes.
struct Memory {
    used: u64,
    free: u64,
    total: u64,
}

impl Reader<'_> {
    fn device(
        &mut self,
        index: u32,
        state: &mut DeviceState,
        enumerate: bool,
    ) -> Result<(GpuDevice, Option<GpuHealth>), DeviceError> {
        let device = self
            .nvml
            .device_by_index(index)
            .map_err(DeviceError::from("nvmlDeviceGetHandleByIndex"))?;
        let uuid = optional(device.uuid(), "nvmlDeviceGetUUID")?.unwrap_or_default();
        let mig = match state.mig {
            Some(mig) => mig,
            None => {
                let mig = optional(device.mig_mode(), "nvmlDeviceGetMigMode")?
                    .is_some_and(|m| m.current == MIG_ENABLED);
                state.mig = Some(mig);
                mig
            }
        };
        let utilization = if mig {
            None
        } else {
            optional(device.utilization_rates(), "nvmlDeviceGetUtilizationRates")?
        };
        let utilization_percent = utilization.as_ref().and_then(|u| percent(u.gpu));
        let Memory { used, free, total } = self.memory(&device)?;
        if used > total {
            return Err(DeviceError::Failed(format!(
                "memory used ({used} bytes) exceeds the total ({total} bytes)"
            )));
        }
        if enumerate {
            // A failed process list costs the processes, not the GPU's own series.
            let gpu = GpuFacts {
                index,
                memory_total: total,
                mig,
                utilization_known: utilization_percent.is_some(),
            };
            match self.processes(&device, &gpu, state) {
                Ok((processes, source)) => {
                    state.processes = processes;
                    state.process_utilization = source;
                }
                Err(DeviceError::Lost) => return Err(DeviceError::Lost),
                Err(DeviceError::Failed(reason)) => {
                    telemetry::warn(
                        Counter::GpuErrors,
                        1,
                        &format!("GPU {index}: {reason}; no processes this sample"),
                    );
                    state.processes.clear();
                    state.process_utilization = ProcessUtilization::PerProcess;
                }
            }
        }
        let health = if self.health.groups.is_empty() {
            None
        } else {
            let figures = DeviceFigures {
                mig,
                memory_copy_percent: utilization.and_then(|u| percent(u.memory)),
                memory_used_bytes: used,
                memory_free_bytes: free,
            };
            let h = health::read(
                self.nvml,
                &device,
                index,
                &figures,
                &self.health,
                &mut state.health,
            )?;
            Some(h)
        };
        let device = GpuDevice {
            index,
            uuid,
            utilization_percent,
            memory_used_bytes: used,
            memory_total_bytes: total,
            process_utilization: state.process_utilization,
        };
        Ok((device, health))
    }

    /// Used, free and total bytes: the v2 call, or v1 where the driver lacks v2.
    fn memory(&mut self, device: &Device) -> Result<Memory, DeviceError> {
        if !*self.memory_v1 {
            match device.memory_info() {
                Ok(m) => {
                    return Ok(Memory {
                        used: m.used,
                        free: m.free,
                        total: m.total,
                    })
                }
                Err(NvmlError::FailedToLoadSymbol(_))
                | Err(NvmlError::FunctionNotFound)
                | Err(NvmlError::UnexpectedVariant(NVML_ERROR_ARGUMENT_VERSION_MISMATCH)) => {
                    tracing::info!(
                        "the driver has no nvmlDeviceGetMemoryInfo_v2: using the v1 memory call"
                    );
                    *self.memory_v1 = true;
                }
                Err(e) => return Err(DeviceError::from("nvmlDeviceGetMemoryInfo_v2")(e)),
            }
        }
        memory_v1(self.nvml, device).map_err(DeviceError::from("nvmlDeviceGetMemoryInfo"))
    }

    /// The compute and graphics processes with their memory and SM utilization, and where that
    /// utilization comes from.
    fn processes(
        &mut self,
        device: &Device,
        gpu: &GpuFacts,
        state: &mut DeviceState,
    ) -> Result<(Vec<GpuProcess>, ProcessUtilization), DeviceError> {
        let GpuFacts {
            index,
            memory_total,
            mig,
            ..
        } = *gpu;
        let mut by_pid: HashMap<u32, Option<u64>> = HashMap::new();
        let lists = [
            (
                "nvmlDeviceGetComputeRunningProcesses_v3",
                device.running_compute_processes(),
            ),
            (
                "nvmlDeviceGetGraphicsRunningProcesses_v3",
                device.running_graphics_processes(),
            ),
        ];
        for (call, list) in lists {
            let Some(list) = optional(list, call)? else {
                continue;
            };
            if let Err(reason) = check_process_list(&list, memory_total, mig) {
                telemetry::warn(
                    Counter::GpuProcessListsRejected,
                    1,
                    &format!(
                        "GPU {index}: {call} returned an impossible list ({reason}): rejected"
                    ),
                );
                continue;
            }
            for p in list {
                let used = match p.used_gpu_memory {
                    UsedGpuMemory::Used(bytes) => Some(bytes),
                    UsedGpuMemory::Unavailable => None,
                };
                // A process in both lists holds one allocation, reported in each.
                let entry = by_pid.entry(p.pid).or_insert(used);
                *entry = (*entry).max(used);
            }
        }
        let single_copy = gpu.utilization_known
            && self
                .copies
                .is_some_and(|copies| one_copy(by_pid.keys().copied(), copies));
        let (sm, source) = if mig {
            // Not supported under MIG: the processes' values stay absent.
            (SmUtilization::Unknown, ProcessUtilization::PerProcess)
        } else if by_pid.is_empty() || single_copy {
            // Not read: the next read covers the time from this enumeration on, never a stale
            // stretch from before it.
            state.last_seen_us = Some(self.tick_ms.saturating_mul(1000));
            let source = match single_copy {
                true => ProcessUtilization::OneCopy,
                false => ProcessUtilization::PerProcess,
            };
            (SmUtilization::Unknown, source)
        } else {
            let sm = self.sm_utilization(device, state)?;
            (sm, ProcessUtilization::PerProcess)
        };
        let mut processes: Vec<GpuProcess> = by_pid
            .into_iter()
            .map(|(pid, used_memory_bytes)| GpuProcess {
                pid,
                gpu_index: index,
                used_memory_bytes,
                sm_utilization_percent: sm.of(pid),
            })
            .collect();
        processes.sort_by_key(|p| p.pid);
        Ok((processes, source))
    }

    /// Per-process SM utilization since the last seen sample of this GPU.
    fn sm_utilization(
        &mut self,
        device: &Device,
        state: &mut DeviceState,
    ) -> Result<SmUtilization, DeviceError> {
        // Never 0 (the driver's whole buffer, a stale average): start one interval back.
        let last_seen = state.last_seen_us.unwrap_or_else(|| {
            self.tick_ms
                .saturating_sub(self.sample_interval_ms)
                .saturating_mul(1000)
        });
        match device.process_utilization_stats(last_seen) {
            Ok(samples) => {
                let (sm, newest) = average_sm(&samples, last_seen);
                state.last_seen_us = Some(newest.max(last_seen));
                Ok(SmUtilization::Busy(sm))
            }
            Err(NvmlError::NotFound) => {
                state.last_seen_us = Some(last_seen);
                Ok(SmUtilization::Idle)
            }
            Err(NvmlError::NotSupported) => Ok(SmUtilization::Unknown),
            Err(e) => match DeviceError::from("nvmlDeviceGetProcessUtilization")(e) {
                DeviceError::Lost => Err(DeviceError::Lost),
                DeviceError::Failed(reason) => {
                    telemetry::warn(Counter::GpuErrors, 1, &reason);
                    Ok(SmUtilization::Unknown)
                }
            },
        }
    }
}

/// What a process enumeration needs to know of its GPU, from the device reads before it.
struct GpuFacts {
    index: u32,
    memory_total: u64,
    mig: bool,
    /// The device utilization was read: it can stand for a single copy's.
    utilization_known: bool,
}

/// True when every PID belongs to one same copy of `copies` (none unknown).
fn one_copy(pids: impl IntoIterator<Item = u32>, copies: &HashMap<u32, u32>) -> bool {
    let mut owner = None;
    for pid in pids {
        let Some(copy) = copies.get(&pid) else {
            return false;
        };
        if *owner.get_or_insert(copy) != copy {
            return false;
        }
    }
    owner.is_some()
}

/// What NVML said about per-process SM utilization on one GPU for one sample.
enum SmUtilization {
    /// Samples for these PIDs; a listed process without one was idle.
    Busy(HashMap<u32, f64>),
    /// NOT_FOUND: no new samples, every process idle.
    Idle,
    /// Not supported (MIG) or failed.
    Unknown,
}

impl SmUtilization {
    fn of(&self, pid: u32) -> Option<f64> {
        match self {
            SmUtilization::Busy(sm) => Some(sm.get(&pid).copied().unwrap_or(0.0)),
            SmUtilization::Idle => Some(0.0),
            SmUtilization::Unknown => None,
        }
    }
}

/// The mean SM utilization per PID over the samples newer than `last_seen`, and the newest
/// timestamp. Samples at or before `last_seen` and values over 100 are not used.
fn average_sm(samples: &[ProcessUtilizationSample], last_seen: u64) -> (HashMap<u32, f64>, u64) {
    let mut sums: HashMap<u32, (f64, u32)> = HashMap::new();
    let mut newest = last_seen;
    for s in samples.iter().filter(|s| s.timestamp > last_seen) {
        newest = newest.max(s.timestamp);
        if let Some(sm) = percent(s.sm_util) {
            let e = sums.entry(s.pid).or_insert((0.0, 0));
            e.0 += sm;
            e.1 += 1;
        }
    }
    let sm = sums
        .into_iter()
        .map(|(pid, (sum, n))| (pid, sum / f64::from(n)))
        .collect();
    (sm, newest)
}

/// A 0..100 value from NVML, or None past 100 (not a percentage NVML can mean).
fn percent(value: u32) -> Option<f64> {
    (value <= 100).then_some(f64::from(value))
}

/// Ok(None) where the call is not supported or not there; lost and other errors pass on.
fn optional<T>(result: Result<T, NvmlError>, call: &'static str) -> Result<Option<T>, DeviceError> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(NvmlError::NotSupported)
        | Err(NvmlError::FailedToLoadSymbol(_))
        | Err(NvmlError::FunctionNotFound) => Ok(None),
        Err(e) => Err(DeviceError::from(call)(e)),
    }
}

/// Checks that a process list can be what the driver meant. A driver writing entries of another
/// size than nvml-wrapper's 24-byte `nvmlProcessInfo_t` shifts every entry after the first: PIDs
/// of 0, PIDs repeated, memory larger than the GPU, instance IDs outside MIG.
pub(crate) fn check_process_list(
    list: &[ProcessInfo],
    memory_total: u64,
    mig: bool,
) -> Result<(), &'static str> {
    let mut seen = std::collections::HashSet::with_capacity(list.len());
    for p in list {
        if p.pid == 0 || p.pid > PID_MAX_LIMIT {
            return Err("a PID outside 1..=PID_MAX_LIMIT");
        }
        if !seen.insert(p.pid) {
            return Err("a PID listed twice");
        }
        if let UsedGpuMemory::Used(bytes) = p.used_gpu_memory {
            if bytes > memory_total {
                return Err("a process using more memory than the GPU has");
            }
        }
        if !mig && (p.gpu_instance_id.is_some() || p.compute_instance_id.is_some()) {
            return Err("a MIG instance ID on a GPU without MIG");
        }
    }
    Ok(())
}

/// `nvmlMemory_t` (v1): total, free, used.
#[repr(C)]
struct MemoryV1 {
    total: u64,
    free: u64,
    used: u64,
}

/// The v1 memory call, which nvml-wrapper 0.13 does not wrap (it calls only `_v2`).
fn memory_v1(nvml: &Nvml, device: &Device) -> Result<Memory, NvmlError> {
    let sym = nvml
        .lib()
        .nvmlDeviceGetMemoryInfo
        .as_ref()
        .map_err(|e| NvmlError::FailedToLoadSymbol(e.to_string()))?;
    let mut memory = MemoryV1 {
        total: 0,
        free: 0,
        used: 0,
    };
    // SAFETY: `sym` is nvmlDeviceGetMemoryInfo(nvmlDevice_t, nvmlMemory_t*) of the loaded library,
    // the handle comes from that library, and MemoryV1 has nvmlMemory_t's layout (three u64).
    nvml_try(unsafe { sym(device.handle(), (&mut memory as *mut MemoryV1).cast()) })?;
    Ok(Memory {
        used: memory.used,
        free: memory.free,
        total: memory.total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: u32, used: u64) -> ProcessInfo {
        ProcessInfo {
            pid,
            used_gpu_memory: UsedGpuMemory::Used(used),
            gpu_instance_id: None,
            compute_instance_id: None,
        }
    }

    #[test]
    fn plausible_process_lists_pass() {
        assert!(check_process_list(&[], 100, false).is_ok());
        assert!(check_process_list(&[p(1, 10), p(4_194_304, 100)], 100, false).is_ok());
        let mut mig = p(7, 1);
        mig.gpu_instance_id = Some(1);
        mig.compute_instance_id = Some(0);
        assert!(check_process_list(&[mig.clone()], 100, true).is_ok());
        assert!(check_process_list(&[mig], 100, false).is_err());
    }

    #[test]
    fn impossible_process_lists_are_rejected() {
        assert!(check_process_list(&[p(1, 10), p(0, 10)], 100, false).is_err());
        assert!(check_process_list(&[p(4_194_305, 10)], 100, false).is_err());
        assert!(check_process_list(&[p(5, 10), p(5, 10)], 100, false).is_err());
        assert!(check_process_list(&[p(5, 101)], 100, false).is_err());
    }

    #[test]
    fn one_copy_means_every_pid_known_and_the_same_copy() {
        let copies = HashMap::from([(10, 1), (11, 1), (20, 2)]);
        assert!(one_copy([10], &copies));
        assert!(one_copy([10, 11], &copies));
        assert!(!one_copy([10, 20], &copies), "two copies share the GPU");
        assert!(!one_copy([10, 99], &copies), "a process of no known copy");
        assert!(!one_copy([99], &copies));
        assert!(!one_copy([], &copies), "no process: no copy");
    }

    #[test]
    fn sm_is_averaged_over_new_samples_only() {
        let s = |pid, timestamp, sm_util| ProcessUtilizationSample {
            pid,
            timestamp,
            sm_util,
            mem_util: 0,
            enc_util: 0,
            dec_util: 0,
        };
        let (sm, newest) = average_sm(
            &[s(1, 5, 99), s(1, 20, 40), s(1, 30, 60), s(2, 25, 101)],
            10,
        );
        assert_eq!(sm.get(&1), Some(&50.0));
        assert_eq!(sm.get(&2), None, "over 100 is not a percentage");
        assert_eq!(newest, 30);
        assert_eq!(SmUtilization::Busy(sm).of(3), Some(0.0), "no sample: idle");
        assert_eq!(SmUtilization::Idle.of(1), Some(0.0));
        assert_eq!(SmUtilization::Unknown.of(1), None);
    }
}

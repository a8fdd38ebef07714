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

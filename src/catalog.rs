//! Every metric the agent publishes: name, unit, namespace and dimension sets.
//!
//! This module is `../shared/docs/metrics-spec.md` in code. A collector says *what* it measured (a
//! [`Metric`] about a [`Scope`]); this module alone decides under which namespace and dimension sets
//! that series is published, for enhanced metrics off and on.

use std::sync::Arc;

/// CloudWatch units the agent uses (a subset of the valid units listed in the spec).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unit {
    Percent,
    Count,
    Microseconds,
    Bytes,
    /// GPU framebuffer figures, in MiB as DCGM publishes them (CloudWatch has no MiB unit).
    Megabytes,
    Seconds,
    /// Token rates (`InputTokensPerSecond`, ...).
    CountPerSecond,
    None,
}

impl Unit {
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Percent => "Percent",
            Unit::Count => "Count",
            Unit::Microseconds => "Microseconds",
            Unit::Bytes => "Bytes",
            Unit::Megabytes => "Megabytes",
            Unit::Seconds => "Seconds",
            Unit::CountPerSecond => "Count/Second",
            Unit::None => "None",
        }
    }
}

/// A published metric name and its unit. The namespace comes from the [`Scope`] of the series.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    CpuUtilization,
    CpuUtilizationNormalized,
    MemoryUtilization,
    MemoryUtilizationNormalized,
    DiskUtilization,
    GpuUtilization,
    GpuMemoryUtilization,
    GpuUtilizationNormalized,
    GpuMemoryUtilizationNormalized,
    CpuReservation,
    GpuReservation,
    MemoryReservation,
    /// GPU use by processes in no known model copy (see `attribution`).
    GpuUtilizationUnattributed,
    GpuMemoryUtilizationUnattributed,
    /// The agent's own figures (`Scope::Agent`), one value per window.
    AgentCpuTime,
    AgentResidentMemory,
    AgentSamplesTaken,
    AgentSamplesMissed,
    AgentPublishLatency,
    AgentErrors,
    AgentQueuedWindows,
    AgentSpooledWindows,
    AgentDroppedPoints,
    /// Cost per model (`cost`), USD (CloudWatch has no currency unit). Per component
    /// (`Scope::Component`): the GPUs its copies hold, their price per hour, what they cost
    /// since the previous tick, and that cost weighted by measured GPU use.
    GpusAllocated,
    CostPerHour,
    CostAccrued,
    CostAccruedUtilizationWeighted,
    /// Per instance: the price of GPUs no copy holds, and (utilization-weighted) of GPU time no
    /// copy used.
    UnallocatedGpuCostPerHour,
    UnallocatedGpuCostAccrued,
    IdleGpuCostAccrued,
    /// Invocation metrics, measured by the front door (`proxy`), in `[proxy] namespace`.
    Invocations,
    Invocation4xxErrors,
    Invocation5xxErrors,
    InvocationModelErrors,
    ModelLatency,
    OverheadLatency,
    InvocationsPerInstance,
    InvocationsPerCopy,
    ConcurrentRequestsPerModel,
    ConcurrentRequestsPerCopy,
    NoCapacityInvocationFailures,
    FirstChunkLatency,
    FirstChunkModelLatency,
    FirstChunkOverheadLatency,
    MidStreamErrors,
    /// GPU health (`Scope::GpuHealth`, `Scope::MigInstance`; docs/gpu.md), under DCGM's field
    /// names. Temperatures in degrees C, power in W, energy in J, clocks in MHz: CloudWatch has
    /// none of these units, so they are `None` and the unit is in the documentation.
    GpuTemperature,
    GpuMemoryTemperature,
    GpuPowerUsage,
    GpuEnforcedPowerLimit,
    /// Energy the GPU used since the previous sample (J), from NVML's mJ counter: a period's
    /// Sum is the energy of the period.
    GpuEnergy,
    GpuSmClock,
    GpuMemoryClock,
    /// The raw NVML clock event (throttle) reason mask, and 0/1 series for the reasons operators
    /// act on (the agent's own names, in DCGM's style: DCGM publishes only the mask).
    GpuClockEventReasons,
    GpuClockEventPowerCap,
    GpuClockEventThermal,
    GpuClockEventHwSlowdown,
    GpuFramebufferUsed,
    GpuFramebufferFree,
    GpuMemoryCopyUtilization,
    GpuEccSbeVolatile,
    GpuEccDbeVolatile,
    GpuRetiredPagesSbe,
    GpuRetiredPagesDbe,
    GpuRetiredPagesPending,
    GpuRemappedRowsCorrectable,
    GpuRemappedRowsUncorrectable,
    GpuRowRemapPending,
    GpuRowRemapFailure,
    GpuPcieReplays,
    /// XID errors received since the previous sample (dcgm-exporter's count, not DCGM's
    /// last-XID-code field): a period's Sum is the period's count.
    GpuXidErrors,
    /// GPU performance monitoring (Hopper and later): ratios 0..1, as DCGM's profiling fields.
    GpuSmActive,
    GpuDramActive,
    /// What the model server knows (`scrape`), per copy (`Scope::Container`): time to first
    /// token and between tokens (one value per request, from the server's histograms), KV cache
    /// use, waiting and running requests, and token rates.
    Ttft,
    InterTokenLatency,
    KvCacheUtilization,
    QueueDepth,
    BatchSize,
    InputTokensPerSecond,
    OutputTokensPerSecond,
    TotalTps,
    /// Each copy's lifecycle (`lifecycle`), from the Docker events: container start to healthy,
    /// creation to the first 2xx invocation, and what went wrong (counted per copy).
    ContainerStartDuration,
    ColdStartDuration,
    ContainerRestarts,
    ContainerOomKills,
    ContainerNonZeroExits,
}

impl Metric {
    /// The agent's own figures (`Scope::Agent`), published once per window with self-metrics on.
    pub const AGENT: [Metric; 9] = [
        Metric::AgentCpuTime,
        Metric::AgentResidentMemory,
        Metric::AgentSamplesTaken,
        Metric::AgentSamplesMissed,
        Metric::AgentPublishLatency,
        Metric::AgentErrors,
        Metric::AgentQueuedWindows,
        Metric::AgentSpooledWindows,
        Metric::AgentDroppedPoints,
    ];

    /// What the model servers know (`scrape`), per copy.
    pub const SCRAPED: [Metric; 8] = [
        Metric::Ttft,
        Metric::InterTokenLatency,
        Metric::KvCacheUtilization,
        Metric::QueueDepth,
        Metric::BatchSize,
        Metric::InputTokensPerSecond,
        Metric::OutputTokensPerSecond,
        Metric::TotalTps,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::CpuUtilization => "CPUUtilization",
            Metric::CpuUtilizationNormalized => "CPUUtilizationNormalized",
            Metric::MemoryUtilization => "MemoryUtilization",
            Metric::MemoryUtilizationNormalized => "MemoryUtilizationNormalized",
            Metric::DiskUtilization => "DiskUtilization",
            Metric::GpuUtilization => "GPUUtilization",
            Metric::GpuMemoryUtilization => "GPUMemoryUtilization",
            Metric::GpuUtilizationNormalized => "GPUUtilizationNormalized",
            Metric::GpuMemoryUtilizationNormalized => "GPUMemoryUtilizationNormalized",
            Metric::CpuReservation => "CPUReservation",
            Metric::GpuReservation => "GPUReservation",
            Metric::MemoryReservation => "MemoryReservation",
            Metric::GpuUtilizationUnattributed => "GPUUtilizationUnattributed",
            Metric::GpuMemoryUtilizationUnattributed => "GPUMemoryUtilizationUnattributed",
            Metric::AgentCpuTime => "CPUTime",
            Metric::AgentResidentMemory => "ResidentMemory",
            Metric::AgentSamplesTaken => "SamplesTaken",
            Metric::AgentSamplesMissed => "SamplesMissed",
            Metric::AgentPublishLatency => "PublishLatency",
            Metric::AgentErrors => "Errors",
            Metric::AgentQueuedWindows => "QueuedWindows",
            Metric::AgentSpooledWindows => "SpooledWindows",
            Metric::AgentDroppedPoints => "DroppedPoints",
            Metric::GpusAllocated => "GPUsAllocated",
            Metric::CostPerHour => "CostPerHour",
            Metric::CostAccrued => "CostAccrued",
            Metric::CostAccruedUtilizationWeighted => "CostAccruedUtilizationWeighted",
            Metric::UnallocatedGpuCostPerHour => "UnallocatedGPUCostPerHour",
            Metric::UnallocatedGpuCostAccrued => "UnallocatedGPUCostAccrued",
            Metric::IdleGpuCostAccrued => "IdleGPUCostAccrued",
            Metric::Invocations => "Invocations",
            Metric::Invocation4xxErrors => "Invocation4XXErrors",
            Metric::Invocation5xxErrors => "Invocation5XXErrors",
            Metric::InvocationModelErrors => "InvocationModelErrors",
            Metric::ModelLatency => "ModelLatency",
            Metric::OverheadLatency => "OverheadLatency",
            Metric::InvocationsPerInstance => "InvocationsPerInstance",
            Metric::InvocationsPerCopy => "InvocationsPerCopy",
            Metric::ConcurrentRequestsPerModel => "ConcurrentRequestsPerModel",
            Metric::ConcurrentRequestsPerCopy => "ConcurrentRequestsPerCopy",
            Metric::NoCapacityInvocationFailures => "NoCapacityInvocationFailures",
            Metric::FirstChunkLatency => "FirstChunkLatency",
            Metric::FirstChunkModelLatency => "FirstChunkModelLatency",
            Metric::FirstChunkOverheadLatency => "FirstChunkOverheadLatency",
            Metric::MidStreamErrors => "MidStreamErrors",
            Metric::GpuTemperature => "DCGM_FI_DEV_GPU_TEMP",
            Metric::GpuMemoryTemperature => "DCGM_FI_DEV_MEMORY_TEMP",
            Metric::GpuPowerUsage => "DCGM_FI_DEV_POWER_USAGE",
            Metric::GpuEnforcedPowerLimit => "DCGM_FI_DEV_ENFORCED_POWER_LIMIT",
            Metric::GpuEnergy => "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
            Metric::GpuSmClock => "DCGM_FI_DEV_SM_CLOCK",
            Metric::GpuMemoryClock => "DCGM_FI_DEV_MEM_CLOCK",
            Metric::GpuClockEventReasons => "DCGM_FI_DEV_CLOCKS_EVENT_REASONS",
            Metric::GpuClockEventPowerCap => "DCGM_FI_DEV_CLOCKS_EVENT_REASON_SW_POWER_CAP",
            Metric::GpuClockEventThermal => "DCGM_FI_DEV_CLOCKS_EVENT_REASON_THERMAL",
            Metric::GpuClockEventHwSlowdown => "DCGM_FI_DEV_CLOCKS_EVENT_REASON_HW_SLOWDOWN",
            Metric::GpuFramebufferUsed => "DCGM_FI_DEV_FB_USED",
            Metric::GpuFramebufferFree => "DCGM_FI_DEV_FB_FREE",
            Metric::GpuMemoryCopyUtilization => "DCGM_FI_DEV_MEM_COPY_UTIL",
            Metric::GpuEccSbeVolatile => "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL",
            Metric::GpuEccDbeVolatile => "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
            Metric::GpuRetiredPagesSbe => "DCGM_FI_DEV_RETIRED_SBE",
            Metric::GpuRetiredPagesDbe => "DCGM_FI_DEV_RETIRED_DBE",
            Metric::GpuRetiredPagesPending => "DCGM_FI_DEV_RETIRED_PENDING",
            Metric::GpuRemappedRowsCorrectable => "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
            Metric::GpuRemappedRowsUncorrectable => "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
            Metric::GpuRowRemapPending => "DCGM_FI_DEV_ROW_REMAP_PENDING",
            Metric::GpuRowRemapFailure => "DCGM_FI_DEV_ROW_REMAP_FAILURE",
            Metric::GpuPcieReplays => "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
            Metric::GpuXidErrors => "DCGM_EXP_XID_ERRORS_COUNT",
            Metric::GpuSmActive => "DCGM_FI_PROF_SM_ACTIVE",
            Metric::GpuDramActive => "DCGM_FI_PROF_DRAM_ACTIVE",
            Metric::Ttft => "TTFT",
            Metric::InterTokenLatency => "InterTokenLatency",
            Metric::KvCacheUtilization => "KVCacheUtilization",
            Metric::QueueDepth => "QueueDepth",
            Metric::BatchSize => "BatchSize",
            Metric::InputTokensPerSecond => "InputTokensPerSecond",
            Metric::OutputTokensPerSecond => "OutputTokensPerSecond",
            Metric::TotalTps => "TotalTPS",
            Metric::ContainerStartDuration => "ContainerStartDuration",
            Metric::ColdStartDuration => "ColdStartDuration",
            Metric::ContainerRestarts => "ContainerRestarts",
            Metric::ContainerOomKills => "ContainerOOMKills",
            Metric::ContainerNonZeroExits => "ContainerNonZeroExits",
        }
    }

    pub fn unit(self) -> Unit {
        match self {
            Metric::CpuUtilization
            | Metric::CpuUtilizationNormalized
            | Metric::MemoryUtilization
            | Metric::MemoryUtilizationNormalized
            | Metric::DiskUtilization
            | Metric::GpuUtilization
            | Metric::GpuMemoryUtilization
            | Metric::GpuUtilizationNormalized
            | Metric::GpuMemoryUtilizationNormalized
            | Metric::CpuReservation
            | Metric::GpuReservation
            | Metric::MemoryReservation
            | Metric::GpuUtilizationUnattributed
            | Metric::GpuMemoryUtilizationUnattributed
            | Metric::GpuMemoryCopyUtilization => Unit::Percent,
            Metric::GpuFramebufferUsed | Metric::GpuFramebufferFree => Unit::Megabytes,
            Metric::GpuEccSbeVolatile
            | Metric::GpuEccDbeVolatile
            | Metric::GpuRetiredPagesSbe
            | Metric::GpuRetiredPagesDbe
            | Metric::GpuRetiredPagesPending
            | Metric::GpuRemappedRowsCorrectable
            | Metric::GpuRemappedRowsUncorrectable
            | Metric::GpuPcieReplays
            | Metric::GpuXidErrors => Unit::Count,
            Metric::GpuTemperature
            | Metric::GpuMemoryTemperature
            | Metric::GpuPowerUsage
            | Metric::GpuEnforcedPowerLimit
            | Metric::GpuEnergy
            | Metric::GpuSmClock
            | Metric::GpuMemoryClock
            | Metric::GpuClockEventReasons
            | Metric::GpuClockEventPowerCap
            | Metric::GpuClockEventThermal
            | Metric::GpuClockEventHwSlowdown
            | Metric::GpuRowRemapPending
            | Metric::GpuRowRemapFailure
            | Metric::GpuSmActive
            | Metric::GpuDramActive => Unit::None,
            Metric::AgentCpuTime => Unit::Seconds,
            Metric::KvCacheUtilization => Unit::Percent,
            Metric::ContainerStartDuration | Metric::ColdStartDuration => Unit::Seconds,
            // Like ModelLatency: the servers' seconds, times 1e6.
            Metric::Ttft | Metric::InterTokenLatency => Unit::Microseconds,
            Metric::QueueDepth
            | Metric::BatchSize
            | Metric::ContainerRestarts
            | Metric::ContainerOomKills
            | Metric::ContainerNonZeroExits => Unit::Count,
            Metric::InputTokensPerSecond | Metric::OutputTokensPerSecond | Metric::TotalTps => {
                Unit::CountPerSecond
            }
            Metric::AgentResidentMemory => Unit::Bytes,
            Metric::AgentPublishLatency
            | Metric::ModelLatency
            | Metric::OverheadLatency
            | Metric::FirstChunkLatency
            | Metric::FirstChunkModelLatency
            | Metric::FirstChunkOverheadLatency => Unit::Microseconds,
            // The SageMaker metrics reference: "Units: None" for these five.
            Metric::Invocations
            | Metric::Invocation4xxErrors
            | Metric::Invocation5xxErrors
            | Metric::InvocationModelErrors
            | Metric::InvocationsPerInstance => Unit::None,
            Metric::InvocationsPerCopy
            | Metric::ConcurrentRequestsPerModel
            | Metric::ConcurrentRequestsPerCopy
            | Metric::NoCapacityInvocationFailures
            | Metric::MidStreamErrors => Unit::Count,
            Metric::AgentSamplesTaken
            | Metric::AgentSamplesMissed
            | Metric::AgentErrors
            | Metric::AgentQueuedWindows
            | Metric::AgentSpooledWindows
            | Metric::AgentDroppedPoints
            | Metric::GpusAllocated => Unit::Count,
            Metric::CostPerHour
            | Metric::CostAccrued
            | Metric::CostAccruedUtilizationWeighted
            | Metric::UnallocatedGpuCostPerHour
            | Metric::UnallocatedGpuCostAccrued
            | Metric::IdleGpuCostAccrued => Unit::None,
        }
    }
}

/// How a series becomes data points in a publish period (the spec's "Data shape").
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PeriodValue {
    /// One data point, the mean of the period's samples: utilization, reservation, prices per
    /// hour, GPUs held, the agent's own figures.
    Mean,
    /// One data point, the sum of the period's samples: what accrues (cost over time, the
    /// energy of each sample, the XID errors since the previous one).
    Sum,
    /// One data point, the largest of the period's samples: counters that only grow (ECC
    /// counts, retired pages, remapped rows, PCIe replays) and the throttle reason mask.
    Max,
    /// Every value: one data point per request, so `SampleCount` and `Sum` count requests and
    /// percentiles work (invocation metrics).
    Each,
}

impl Metric {
    /// How a series of this metric is published per period (see [`PeriodValue`]).
    pub fn period_value(self) -> PeriodValue {
        match self {
            Metric::CostAccrued
            | Metric::CostAccruedUtilizationWeighted
            | Metric::UnallocatedGpuCostAccrued
            | Metric::IdleGpuCostAccrued
            | Metric::GpuEnergy
            | Metric::GpuXidErrors
            | Metric::ContainerRestarts
            | Metric::ContainerOomKills
            | Metric::ContainerNonZeroExits => PeriodValue::Sum,
            Metric::GpuEccSbeVolatile
            | Metric::GpuEccDbeVolatile
            | Metric::GpuRetiredPagesSbe
            | Metric::GpuRetiredPagesDbe
            | Metric::GpuRetiredPagesPending
            | Metric::GpuRemappedRowsCorrectable
            | Metric::GpuRemappedRowsUncorrectable
            | Metric::GpuRowRemapPending
            | Metric::GpuRowRemapFailure
            | Metric::GpuPcieReplays
            | Metric::GpuClockEventReasons => PeriodValue::Max,
            // One value per request (histogram buckets become values with counts), and one per
            // start: each its own data point.
            Metric::Ttft
            | Metric::InterTokenLatency
            | Metric::ContainerStartDuration
            | Metric::ColdStartDuration
            | Metric::Invocations
            | Metric::Invocation4xxErrors
            | Metric::Invocation5xxErrors
            | Metric::InvocationModelErrors
            | Metric::ModelLatency
            | Metric::OverheadLatency
            | Metric::InvocationsPerInstance
            | Metric::InvocationsPerCopy
            | Metric::ConcurrentRequestsPerModel
            | Metric::ConcurrentRequestsPerCopy
            | Metric::NoCapacityInvocationFailures
            | Metric::FirstChunkLatency
            | Metric::FirstChunkModelLatency
            | Metric::FirstChunkOverheadLatency
            | Metric::MidStreamErrors => PeriodValue::Each,
            Metric::CpuUtilization
            | Metric::CpuUtilizationNormalized
            | Metric::MemoryUtilization
            | Metric::MemoryUtilizationNormalized
            | Metric::DiskUtilization
            | Metric::GpuUtilization
            | Metric::GpuMemoryUtilization
            | Metric::GpuUtilizationNormalized
            | Metric::GpuMemoryUtilizationNormalized
            | Metric::CpuReservation
            | Metric::GpuReservation
            | Metric::MemoryReservation
            | Metric::GpuUtilizationUnattributed
            | Metric::GpuMemoryUtilizationUnattributed
            | Metric::AgentCpuTime
            | Metric::AgentResidentMemory
            | Metric::AgentSamplesTaken
            | Metric::AgentSamplesMissed
            | Metric::AgentPublishLatency
            | Metric::AgentErrors
            | Metric::AgentQueuedWindows
            | Metric::AgentSpooledWindows
            | Metric::AgentDroppedPoints
            | Metric::GpusAllocated
            | Metric::CostPerHour
            | Metric::UnallocatedGpuCostPerHour
            | Metric::GpuTemperature
            | Metric::GpuMemoryTemperature
            | Metric::GpuPowerUsage
            | Metric::GpuEnforcedPowerLimit
            | Metric::GpuSmClock
            | Metric::GpuMemoryClock
            | Metric::GpuClockEventPowerCap
            | Metric::GpuClockEventThermal
            | Metric::GpuClockEventHwSlowdown
            | Metric::GpuFramebufferUsed
            | Metric::GpuFramebufferFree
            | Metric::GpuMemoryCopyUtilization
            | Metric::GpuSmActive
            | Metric::GpuDramActive
            | Metric::KvCacheUtilization
            | Metric::QueueDepth
            | Metric::BatchSize
            | Metric::InputTokensPerSecond
            | Metric::OutputTokensPerSecond
            | Metric::TotalTps => PeriodValue::Mean,
        }
    }
}

/// What a series describes. Carries the dimension values that are not the same for the whole host.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// The instance as a whole (`/aws/sagemaker/Endpoints`).
    Instance,
    /// One GPU of the instance, by NVML index (`/aws/sagemaker/Endpoints`, enhanced only).
    Gpu { index: u32 },
    /// One GPU's health series (`/aws/sagemaker/Endpoints`): per GPU whether or not enhanced
    /// metrics are on, since a health figure averaged over GPUs hides the one bad GPU; which
    /// of them exist is `[gpu] health`.
    GpuHealth { index: u32 },
    /// One MIG GPU instance of a GPU, by its GPU instance ID (GPM activity; as `GpuHealth`).
    MigInstance { gpu_index: u32, gpu_instance: u32 },
    /// One model copy: a container of an inference component (`/aws/sagemaker/InferenceComponents`).
    Container {
        component: Arc<str>,
        container_id: Arc<str>,
    },
    /// One GPU as used by one model copy (`/aws/sagemaker/InferenceComponents`, enhanced only).
    ContainerGpu {
        component: Arc<str>,
        container_id: Arc<str>,
        gpu_index: u32,
    },
    /// The agent itself (`[self_metrics] namespace`).
    Agent,
    /// An inference component as a whole on this instance: the sum over its copies
    /// (`/aws/sagemaker/InferenceComponents`; cost metrics). Its own scope, not `Container`, so
    /// its totals never merge with per-copy values under `{InferenceComponentName}`.
    Component { component: Arc<str> },
    /// Requests through the front door, all components together (`[proxy] namespace`).
    Invocations,
    /// Requests through the front door, published under `{EndpointName, VariantName}` only
    /// whatever `enhanced` says (`[proxy] namespace`): the spec's rows for
    /// `ConcurrentRequestsPerModel` and the streaming metrics name that set alone.
    EndpointInvocations,
    /// Requests to one inference component, all its copies on this host together (`[proxy]
    /// namespace`): `InvocationsPerCopy`, `ConcurrentRequestsPerCopy`,
    /// `NoCapacityInvocationFailures`, which the spec publishes under `{InferenceComponentName}`
    /// only.
    ComponentInvocations { component: Arc<str> },
    /// Requests to one model copy: a container of a component, or a static upstream
    /// (`[proxy] namespace`).
    CopyInvocations {
        component: Arc<str>,
        container_id: Arc<str>,
    },
}

/// Which namespace a scope publishes into; the names themselves are configuration.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Namespace {
    Endpoints,
    InferenceComponents,
    /// The agent's own metrics, in the namespace `[self_metrics]` names.
    Agent,
    /// Invocation metrics, in the namespace `[proxy]` names.
    Invocations,
}

pub const DEFAULT_ENDPOINTS_NAMESPACE: &str = "/aws/sagemaker/Endpoints";
pub const DEFAULT_COMPONENTS_NAMESPACE: &str = "/aws/sagemaker/InferenceComponents";

/// Dimension keys. `Gpu` is spelled by configuration (`GpuId` by default, `AcceleratorId` in the
/// official guide), so it is resolved at encode time.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    EndpointName,
    VariantName,
    InstanceId,
    Gpu,
    InferenceComponentName,
    ContainerId,
    /// A MIG GPU instance's ID on its GPU (NVML's GPU instance ID).
    GpuInstanceId,
}

impl Dim {
    pub fn name(self, gpu_dimension_name: &str) -> &str {
        match self {
            Dim::EndpointName => "EndpointName",
            Dim::VariantName => "VariantName",
            Dim::InstanceId => "InstanceId",
            Dim::Gpu => gpu_dimension_name,
            Dim::InferenceComponentName => "InferenceComponentName",
            Dim::ContainerId => "ContainerId",
            Dim::GpuInstanceId => "GpuInstanceId",
        }
    }
}

use Dim::*;

const ENDPOINT: &[Dim] = &[EndpointName, VariantName];
const ENDPOINT_INSTANCE: &[Dim] = &[EndpointName, VariantName, InstanceId];
const ENDPOINT_GPU: &[Dim] = &[EndpointName, VariantName, InstanceId, Gpu];
const MIG_INSTANCE: &[Dim] = &[EndpointName, VariantName, InstanceId, Gpu, GpuInstanceId];
const COMPONENT: &[Dim] = &[InferenceComponentName];
const AGENT: &[Dim] = &[EndpointName, InstanceId];
const COMPONENT_CONTAINER: &[Dim] = &[
    EndpointName,
    VariantName,
    InstanceId,
    InferenceComponentName,
    ContainerId,
];
const COMPONENT_INSTANCE: &[Dim] = &[
    EndpointName,
    VariantName,
    InstanceId,
    InferenceComponentName,
];
/// Per-GPU component series are also published per component and GPU (the recipes'
/// `GetMetricStatistics` on `{InferenceComponentName, GpuId}`).
const COMPONENT_GPU: &[Dim] = &[InferenceComponentName, Gpu];
const COMPONENT_CONTAINER_GPU: &[Dim] = &[
    EndpointName,
    VariantName,
    InstanceId,
    InferenceComponentName,
    ContainerId,
    Gpu,
];

impl Scope {
    pub fn namespace(&self) -> Namespace {
        match self {
            Scope::Instance
            | Scope::Gpu { .. }
            | Scope::GpuHealth { .. }
            | Scope::MigInstance { .. } => Namespace::Endpoints,
            Scope::Container { .. } | Scope::ContainerGpu { .. } | Scope::Component { .. } => {
                Namespace::InferenceComponents
            }
            Scope::Agent => Namespace::Agent,
            Scope::Invocations
            | Scope::EndpointInvocations
            | Scope::ComponentInvocations { .. }
            | Scope::CopyInvocations { .. } => Namespace::Invocations,
        }
    }

    /// The dimension sets a series of this scope is published under. Empty: not published with
    /// this setting (per-GPU and per-container-GPU series exist only with enhanced metrics).
    pub fn dimension_sets(&self, enhanced: bool) -> &'static [&'static [Dim]] {
        match (self, enhanced) {
            (Scope::Instance, false) => &[ENDPOINT],
            (Scope::Instance, true) => &[ENDPOINT, ENDPOINT_INSTANCE],
            (Scope::Gpu { .. }, false) => &[],
            (Scope::Gpu { .. }, true) => &[ENDPOINT_GPU],
            (Scope::GpuHealth { .. }, _) => &[ENDPOINT_GPU],
            (Scope::MigInstance { .. }, _) => &[MIG_INSTANCE],
            (Scope::Container { .. }, false) => &[COMPONENT],
            (Scope::Container { .. }, true) => &[COMPONENT, COMPONENT_CONTAINER],
            (Scope::ContainerGpu { .. }, false) => &[],
            (Scope::ContainerGpu { .. }, true) => &[COMPONENT_CONTAINER_GPU, COMPONENT_GPU],
            // One agent per instance: the instance is always named, enhanced or not.
            (Scope::Agent, _) => &[AGENT],
            // Across instances CloudWatch adds a component's figures up; per instance with
            // enhanced metrics.
            (Scope::Component { .. }, false) => &[COMPONENT],
            (Scope::Component { .. }, true) => &[COMPONENT, COMPONENT_INSTANCE],
            (Scope::Invocations, false) => &[ENDPOINT],
            (Scope::Invocations, true) => &[ENDPOINT, ENDPOINT_INSTANCE],
            (Scope::EndpointInvocations, _) => &[ENDPOINT],
            // The whole component: per-copy dimensions would not describe it.
            (Scope::ComponentInvocations { .. }, _) => &[COMPONENT],
            (Scope::CopyInvocations { .. }, false) => &[COMPONENT],
            (Scope::CopyInvocations { .. }, true) => &[COMPONENT, COMPONENT_CONTAINER],
        }
    }

    /// The value of a dimension that this scope carries (the host-wide ones come from
    /// [`Identity`]).
    pub fn dimension_value(&self, dim: Dim) -> Option<String> {
        match (self, dim) {
            (Scope::Gpu { index }, Gpu)
            | (Scope::GpuHealth { index }, Gpu)
            | (
                Scope::MigInstance {
                    gpu_index: index, ..
                },
                Gpu,
            )
            | (
                Scope::ContainerGpu {
                    gpu_index: index, ..
                },
                Gpu,
            ) => Some(gpu_dimension_value(*index)),
            (Scope::MigInstance { gpu_instance, .. }, GpuInstanceId) => {
                Some(gpu_instance.to_string())
            }
            (Scope::Container { component, .. }, InferenceComponentName)
            | (Scope::ContainerGpu { component, .. }, InferenceComponentName)
            | (Scope::Component { component }, InferenceComponentName)
            | (Scope::ComponentInvocations { component }, InferenceComponentName)
            | (Scope::CopyInvocations { component, .. }, InferenceComponentName) => {
                Some(component.to_string())
            }
            (Scope::Container { container_id, .. }, ContainerId)
            | (Scope::ContainerGpu { container_id, .. }, ContainerId)
            | (Scope::CopyInvocations { container_id, .. }, ContainerId) => {
                Some(container_id.to_string())
            }
            _ => None,
        }
    }
}

/// The per-GPU dimension value: `gpu_<NVML index>`, as the launch post's companion code builds
/// it (`f"gpu_{gpu_id}"`) and its recipes query it.
pub fn gpu_dimension_value(index: u32) -> String {
    format!("gpu_{index}")
}

/// The host-wide dimension values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub endpoint_name: String,
    pub variant_name: String,
    pub instance_id: String,
}

impl Identity {
    pub fn dimension_value(&self, dim: Dim) -> Option<&str> {
        match dim {
            EndpointName => Some(&self.endpoint_name),
            VariantName => Some(&self.variant_name),
            InstanceId => Some(&self.instance_id),
            _ => None,
        }
    }
}

/// One series: a metric about a scope.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub scope: Scope,
    pub metric: Metric,
}

/// One measured value of one series, as collectors hand it to the aggregator.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub key: SeriesKey,
    pub value: f64,
}

impl Sample {
    pub fn new(scope: Scope, metric: Metric, value: f64) -> Self {
        Sample {
            key: SeriesKey { scope, metric },
            value,
        }
    }
}

/// The default `[proxy] namespace`. SageMaker publishes invocation metrics in `AWS/SageMaker`,
/// which CloudWatch reserves; this keeps the path shape of the other two defaults.
pub const DEFAULT_INVOCATIONS_NAMESPACE: &str = "/aws/sagemaker/Invocations";

/// Without enhanced metrics the invocation series stay at this period whatever the publish
/// frequency (the spec: "the frequency applies to utilization metrics only").
pub const PLAIN_INVOCATION_PERIOD_SECONDS: u64 = 60;

impl Scope {
    /// Whether this series is an invocation series (its publish period follows the spec's rule
    /// for invocation metrics).
    pub fn is_invocation(&self) -> bool {
        self.namespace() == Namespace::Invocations
    }
}

/// StorageResolution for a publish frequency: high resolution (1) under 60 s, else 60.
pub fn storage_resolution(publish_frequency_seconds: u64) -> u32 {
    if publish_frequency_seconds < 60 {
        1
    } else {
        60
    }
}

/// The value of the first sample of `metric` about `scope` (tests read collectors' output so).
#[cfg(test)]
pub(crate) fn sample_value(samples: &[Sample], scope: &Scope, metric: Metric) -> Option<f64> {
    samples
        .iter()
        .find(|s| &s.key.scope == scope && s.key.metric == metric)
        .map(|s| s.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_dimension_sets_follow_the_spec() {
        assert_eq!(
            Scope::Instance.dimension_sets(false),
            &[&[EndpointName, VariantName][..]]
        );
        assert_eq!(
            Scope::Instance.dimension_sets(true),
            &[
                &[EndpointName, VariantName][..],
                &[EndpointName, VariantName, InstanceId][..]
            ]
        );
        assert!(Scope::Gpu { index: 0 }.dimension_sets(false).is_empty());
        assert_eq!(
            Scope::Gpu { index: 3 }.dimension_sets(true),
            &[&[EndpointName, VariantName, InstanceId, Gpu][..]]
        );
    }

    #[test]
    fn gpu_health_is_per_gpu_with_or_without_enhanced_metrics() {
        let health = Scope::GpuHealth { index: 2 };
        let mig = Scope::MigInstance {
            gpu_index: 1,
            gpu_instance: 5,
        };
        for enhanced in [false, true] {
            assert_eq!(
                health.dimension_sets(enhanced),
                &[&[EndpointName, VariantName, InstanceId, Gpu][..]]
            );
            assert_eq!(
                mig.dimension_sets(enhanced),
                &[&[EndpointName, VariantName, InstanceId, Gpu, GpuInstanceId][..]]
            );
        }
        assert_eq!(health.namespace(), Namespace::Endpoints);
        assert_eq!(health.dimension_value(Gpu).as_deref(), Some("gpu_2"));
        assert_eq!(mig.dimension_value(Gpu).as_deref(), Some("gpu_1"));
        assert_eq!(mig.dimension_value(GpuInstanceId).as_deref(), Some("5"));
        assert_eq!(Metric::GpuTemperature.name(), "DCGM_FI_DEV_GPU_TEMP");
        assert_eq!(Metric::GpuTemperature.unit(), Unit::None);
        assert_eq!(Metric::GpuFramebufferUsed.unit().as_str(), "Megabytes");
        assert_eq!(Metric::GpuXidErrors.unit(), Unit::Count);
    }

    #[test]
    fn container_scope_carries_its_dimension_values() {
        let scope = Scope::ContainerGpu {
            component: "model-a".into(),
            container_id: "0123456789ab".into(),
            gpu_index: 2,
        };
        assert_eq!(scope.namespace(), Namespace::InferenceComponents);
        assert_eq!(scope.dimension_value(Gpu).as_deref(), Some("gpu_2"));
        assert_eq!(
            scope.dimension_sets(true)[1],
            &[InferenceComponentName, Gpu][..],
            "the recipes' per-component per-GPU set"
        );
        assert_eq!(
            scope.dimension_value(InferenceComponentName).as_deref(),
            Some("model-a")
        );
        assert_eq!(
            scope.dimension_value(ContainerId).as_deref(),
            Some("0123456789ab")
        );
        assert_eq!(scope.dimension_value(EndpointName), None);
        assert_eq!(Dim::Gpu.name("AcceleratorId"), "AcceleratorId");
    }

    #[test]
    fn agent_scope_is_per_instance_in_its_own_namespace() {
        assert_eq!(Scope::Agent.namespace(), Namespace::Agent);
        for enhanced in [false, true] {
            assert_eq!(
                Scope::Agent.dimension_sets(enhanced),
                &[&[EndpointName, InstanceId][..]]
            );
        }
        assert_eq!(Metric::AgentCpuTime.unit(), Unit::Seconds);
        assert_eq!(Metric::AgentPublishLatency.name(), "PublishLatency");
    }

    #[test]
    fn invocation_dimension_sets_follow_the_spec() {
        assert_eq!(Scope::Invocations.namespace(), Namespace::Invocations);
        assert_eq!(
            Scope::Invocations.dimension_sets(false),
            &[&[EndpointName, VariantName][..]]
        );
        assert_eq!(
            Scope::Invocations.dimension_sets(true),
            &[
                &[EndpointName, VariantName][..],
                &[EndpointName, VariantName, InstanceId][..]
            ]
        );
        let copy = Scope::CopyInvocations {
            component: "model-a".into(),
            container_id: "0123456789ab".into(),
        };
        assert!(copy.is_invocation());
        assert_eq!(copy.dimension_sets(false), &[&[InferenceComponentName][..]]);
        assert_eq!(
            copy.dimension_sets(true),
            &[
                &[InferenceComponentName][..],
                &[
                    EndpointName,
                    VariantName,
                    InstanceId,
                    InferenceComponentName,
                    ContainerId
                ][..]
            ]
        );
        assert_eq!(
            copy.dimension_value(ContainerId).as_deref(),
            Some("0123456789ab")
        );
        let component = Scope::ComponentInvocations {
            component: "model-a".into(),
        };
        assert_eq!(
            component.dimension_sets(true),
            &[&[InferenceComponentName][..]]
        );
        assert!(!Scope::Instance.is_invocation());
        assert_eq!(Metric::Invocation4xxErrors.name(), "Invocation4XXErrors");
        assert_eq!(Metric::ModelLatency.unit(), Unit::Microseconds);
        assert_eq!(Metric::ConcurrentRequestsPerCopy.unit(), Unit::Count);
        for enhanced in [false, true] {
            assert_eq!(
                Scope::EndpointInvocations.dimension_sets(enhanced),
                &[&[EndpointName, VariantName][..]],
                "ConcurrentRequestsPerModel and the streaming metrics: that set only"
            );
        }
    }

    #[test]
    fn invocation_units_follow_the_spec() {
        for m in [
            Metric::Invocations,
            Metric::Invocation4xxErrors,
            Metric::Invocation5xxErrors,
            Metric::InvocationModelErrors,
            Metric::InvocationsPerInstance,
        ] {
            assert_eq!(m.unit(), Unit::None, "{m:?}");
        }
        for m in [
            Metric::InvocationsPerCopy,
            Metric::ConcurrentRequestsPerModel,
            Metric::ConcurrentRequestsPerCopy,
            Metric::NoCapacityInvocationFailures,
            Metric::MidStreamErrors,
        ] {
            assert_eq!(m.unit(), Unit::Count, "{m:?}");
        }
        for m in [
            Metric::ModelLatency,
            Metric::OverheadLatency,
            Metric::FirstChunkLatency,
            Metric::FirstChunkModelLatency,
            Metric::FirstChunkOverheadLatency,
        ] {
            assert_eq!(m.unit(), Unit::Microseconds, "{m:?}");
        }
    }

    #[test]
    fn model_server_and_lifecycle_metrics_have_sagemakers_names_units_and_shapes() {
        let names: Vec<&str> = Metric::SCRAPED.iter().map(|m| m.name()).collect();
        assert_eq!(
            names,
            [
                "TTFT",
                "InterTokenLatency",
                "KVCacheUtilization",
                "QueueDepth",
                "BatchSize",
                "InputTokensPerSecond",
                "OutputTokensPerSecond",
                "TotalTPS"
            ]
        );
        assert_eq!(Metric::Ttft.unit(), Unit::Microseconds);
        assert_eq!(Metric::Ttft.period_value(), PeriodValue::Each);
        assert_eq!(Metric::KvCacheUtilization.unit(), Unit::Percent);
        assert_eq!(Metric::TotalTps.unit().as_str(), "Count/Second");
        assert_eq!(Metric::QueueDepth.period_value(), PeriodValue::Mean);
        assert_eq!(Metric::ContainerStartDuration.unit(), Unit::Seconds);
        assert_eq!(
            Metric::ContainerStartDuration.period_value(),
            PeriodValue::Each
        );
        assert_eq!(Metric::ContainerOomKills.name(), "ContainerOOMKills");
        assert_eq!(Metric::ContainerRestarts.period_value(), PeriodValue::Sum);
    }

    #[test]
    fn storage_resolution_is_high_under_a_minute() {
        assert_eq!(storage_resolution(10), 1);
        assert_eq!(storage_resolution(30), 1);
        assert_eq!(storage_resolution(60), 60);
        assert_eq!(storage_resolution(300), 60);
    }
}

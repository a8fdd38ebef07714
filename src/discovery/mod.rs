//! Discovery: which containers on the host are model copies, and what each one reserves.
//!
//! [`docker`] keeps an [`Inventory`] current from the engine's events and publishes each new
//! version through a `tokio::sync::watch` channel; the cgroup collector and GPU attribution read
//! the latest version each sample.

pub mod docker;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::collectors::gpu::GpuDevice;

/// The model copies (containers of inference components) running on the host.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Inventory {
    /// By full container ID.
    pub containers: BTreeMap<String, ContainerInfo>,
}

/// One model copy, as discovery found it.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerInfo {
    /// Full 64-hex container ID.
    pub id: String,
    /// 12-character short ID: the `ContainerId` dimension value.
    pub short_id: Arc<str>,
    /// The inference component: the `InferenceComponentName` dimension value.
    pub component: Arc<str>,
    /// Host PID of the container's first process; 0 when the engine did not say.
    pub pid: u32,
    /// CPU cores it may use: `NanoCpus`, else `CpuQuota / CpuPeriod`. None: no limit.
    pub cpu_limit_cores: Option<f64>,
    /// `MemoryReservation` (soft limit), bytes.
    pub memory_reservation_bytes: Option<u64>,
    /// `Memory` (hard limit), bytes.
    pub memory_limit_bytes: Option<u64>,
    /// The GPUs allocated to it.
    pub gpus: GpuAllocation,
    /// Where the front door reaches it: its address on its network (127.0.0.1 with host
    /// networking). None: no address (no network), not reachable.
    pub address: Option<std::net::IpAddr>,
    /// Its label [`docker::UPSTREAM_PORT_LABEL`], overriding `[proxy] upstream_port`.
    pub upstream_port: Option<u16>,
}

impl ContainerInfo {
    /// Memory the container is sized by: its reservation if set, else its limit.
    pub fn memory_reserved_bytes(&self) -> Option<u64> {
        self.memory_reservation_bytes.or(self.memory_limit_bytes)
    }
}

/// The GPUs allocated to a container: a Docker device request (`--gpus`), else
/// `NVIDIA_VISIBLE_DEVICES` (what the NVIDIA container runtime honours).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum GpuAllocation {
    #[default]
    None,
    /// `--gpus all`, `Count: -1`, `NVIDIA_VISIBLE_DEVICES=all`.
    All,
    /// `--gpus 2`: the runtime hands out the first N GPUs.
    Count(u32),
    /// Device indices or UUIDs (`GPU-...`), as listed.
    Devices(Vec<String>),
}

impl GpuAllocation {
    /// From an `NVIDIA_VISIBLE_DEVICES` value.
    pub fn from_visible_devices(value: &str) -> GpuAllocation {
        let value = value.trim();
        match value {
            "all" => GpuAllocation::All,
            "" | "none" | "void" => GpuAllocation::None,
            list => GpuAllocation::Devices(
                list.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect(),
            ),
        }
    }

    /// The NVML indices of the allocated GPUs present in `devices`, ascending. Identifiers that
    /// match no device (a MIG instance ID, a GPU gone) are left out.
    pub fn resolve(&self, devices: &[GpuDevice]) -> Vec<u32> {
        let mut indices: Vec<u32> = match self {
            GpuAllocation::None => Vec::new(),
            GpuAllocation::All => devices.iter().map(|d| d.index).collect(),
            GpuAllocation::Count(n) => {
                let mut all: Vec<u32> = devices.iter().map(|d| d.index).collect();
                all.sort_unstable();
                all.truncate(*n as usize);
                all
            }
            GpuAllocation::Devices(ids) => devices
                .iter()
                .filter(|d| {
                    ids.iter()
                        .any(|id| *id == d.uuid || id.parse::<u32>().ok() == Some(d.index))
                })
                .map(|d| d.index)
                .collect(),
        };
        indices.sort_unstable();
        indices.dedup();
        indices
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devices(n: u32) -> Vec<GpuDevice> {
        (0..n)
            .map(|index| GpuDevice {
                index,
                uuid: format!("GPU-{index}aa"),
                utilization_percent: None,
                memory_used_bytes: 0,
                memory_total_bytes: 1,
            })
            .collect()
    }

    #[test]
    fn allocations_resolve_to_present_gpus() {
        let d = devices(4);
        assert_eq!(GpuAllocation::All.resolve(&d), vec![0, 1, 2, 3]);
        assert_eq!(GpuAllocation::Count(2).resolve(&d), vec![0, 1]);
        assert_eq!(GpuAllocation::Count(9).resolve(&d), vec![0, 1, 2, 3]);
        assert_eq!(
            GpuAllocation::from_visible_devices("3, GPU-1aa,MIG-xyz,7").resolve(&d),
            vec![1, 3]
        );
        assert_eq!(
            GpuAllocation::from_visible_devices("all"),
            GpuAllocation::All
        );
        for none in ["", "none", "void"] {
            assert_eq!(
                GpuAllocation::from_visible_devices(none),
                GpuAllocation::None
            );
        }
        assert!(GpuAllocation::None.resolve(&d).is_empty());
    }
}

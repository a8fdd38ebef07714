//! Discovery: which containers on the host are model copies, and what each one reserves.
//!
//! A stage of its own: [`start`] runs [`docker`], which keeps an [`Inventory`] current from the
//! engine's events and publishes each new version through a `tokio::sync::watch` channel. The
//! agent hands that receiver to the container source (cgroups and GPU attribution read the
//! latest version each sample, and cost prices the same one through the tick) and to the front
//! door (its upstream table).

pub mod docker;

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::config::Config;

/// Discovery's outputs: the latest inventory, and each copy's lifecycle events as they come.
pub struct Stage {
    pub inventory: watch::Receiver<Arc<Inventory>>,
    pub lifecycle: mpsc::Receiver<LifecycleEvent>,
}

/// Starts discovery with its lifecycle events; None when `[docker] enabled = false`.
pub fn start_stage(config: &Config) -> Option<Stage> {
    let docker = &config.docker;
    if !docker.enabled {
        return None;
    }
    tracing::info!(
        socket = %docker.socket,
        component_label = %docker.component_label,
        component_env = %docker.component_env,
        "container discovery started"
    );
    let (inventory, lifecycle) = docker::spawn_with_lifecycle(docker.clone());
    Some(Stage {
        inventory,
        lifecycle,
    })
}

/// Something that happened to a model copy, with Docker's own time of it.
#[derive(Clone, Debug, PartialEq)]
pub struct LifecycleEvent {
    /// Full container ID.
    pub id: String,
    /// The copy's component and short ID; None for a container not (yet) known as a copy
    /// (a `create` event comes before the container runs).
    pub copy: Option<(Arc<str>, Arc<str>)>,
    /// The engine's `timeNano`, in ms since the epoch.
    pub at_ms: u64,
    pub kind: LifecycleKind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum LifecycleKind {
    Created,
    /// It started running; `health_check`: it has a Docker health check.
    Started {
        health_check: bool,
    },
    /// Docker's health check passed (`health_status: healthy`).
    Healthy,
    /// Its process exited with this code.
    Died {
        exit_code: Option<i64>,
    },
    /// The kernel's OOM killer hit it (`oom`).
    OomKilled,
    /// Removed: nothing more to follow.
    Destroyed,
}

/// Starts discovery; None when `[docker] enabled = false`. Must run inside the runtime
/// (discovery is a task on it).
pub fn start(config: &Config) -> Option<watch::Receiver<Arc<Inventory>>> {
    let docker = &config.docker;
    if !docker.enabled {
        return None;
    }
    tracing::info!(
        socket = %docker.socket,
        component_label = %docker.component_label,
        component_env = %docker.component_env,
        "container discovery started"
    );
    Some(docker::spawn(docker.clone()))
}

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
    /// Its labels that override `[scrape]` for it.
    pub scrape: ScrapeLabels,
    /// Whether it has a Docker health check (its start ends when it turns healthy, else at the
    /// first successful scrape or 2xx invocation).
    pub health_check: bool,
}

/// A copy's labels that override `[scrape]` (see `scrape::SCRAPE_LABEL` and the others).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrapeLabels {
    /// `Some(false)`: not scraped.
    pub enabled: Option<bool>,
    pub port: Option<u16>,
    pub path: Option<String>,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_devices_values_parse_to_allocations() {
        assert_eq!(
            GpuAllocation::from_visible_devices("all"),
            GpuAllocation::All
        );
        assert_eq!(
            GpuAllocation::from_visible_devices("3, GPU-1aa,,7"),
            GpuAllocation::Devices(vec!["3".into(), "GPU-1aa".into(), "7".into()])
        );
        for none in ["", "none", "void"] {
            assert_eq!(
                GpuAllocation::from_visible_devices(none),
                GpuAllocation::None
            );
        }
    }
}

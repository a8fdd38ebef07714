//! Docker discovery through `bollard`: events first, then a full list, then events as they come,
//! with a full reconcile every few minutes and re-subscription with backoff when the stream ends.
//!
//! The subscription asks the engine to replay events since just before it was made (`since`), so
//! a container that starts between the subscription and the list is seen either way; a duplicate
//! is harmless because every event is answered by inspecting the container again. The engine's
//! per-container stats endpoint is never called: usage comes from the cgroup files.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bollard::models::{ContainerInspectResponse, EventMessage};
use bollard::query_parameters::{EventsOptions, ListContainersOptions};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};

use crate::backoff::Backoff;
use crate::cgroup_path::short_id;
use crate::config::DockerConfig;
use crate::discovery::{ContainerInfo, GpuAllocation, Inventory, LifecycleEvent, LifecycleKind};
use crate::telemetry::{self, Counter};

/// A full list every this often catches anything the event stream missed ("every few minutes").
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(180);

/// Replay events from this long before subscribing: `since` has one-second resolution, and the
/// engine and the agent read the same host clock.
const SUBSCRIBE_REPLAY_SECONDS: u64 = 2;

/// Deadline for the head of each engine response (bollard applies it per request; the event
/// stream's body is not limited by it).
const REQUEST_TIMEOUT_SECONDS: u64 = 10;

/// Re-subscription backoff: first retry within a second, then up to 30 s between tries.
const RESUBSCRIBE_BACKOFF_BASE: Duration = Duration::from_secs(1);
const RESUBSCRIBE_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Why a discovery session ended.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("docker engine at {socket}: {source}")]
    Engine {
        socket: String,
        source: bollard::errors::Error,
    },
    #[error("docker event stream ended")]
    StreamEnded,
}

/// What an inspected container is to the agent.
#[derive(Clone, Debug, PartialEq)]
pub enum Classified {
    ModelCopy(ContainerInfo),
    /// Running, but with neither the component label nor the environment variable.
    NoComponent,
    /// Its component's name is not a dimension value CloudWatch accepts (non-ASCII, a control
    /// character that would also reach the logs raw, over 1024 characters): why.
    InvalidComponent(String),
    /// Not running (exited, created, dead): nothing to measure.
    NotRunning,
    /// The engine's answer lacks the container ID.
    Malformed,
}

/// Decides from an inspect answer whether a container is a model copy, and what it reserves.
pub fn classify(inspect: &ContainerInspectResponse, config: &DockerConfig) -> Classified {
    let Some(id) = inspect.id.as_deref().filter(|id| !id.is_empty()) else {
        return Classified::Malformed;
    };
    let state = inspect.state.as_ref();
    if !state.and_then(|s| s.running).unwrap_or(false) {
        return Classified::NotRunning;
    }
    let labels = inspect.config.as_ref().and_then(|c| c.labels.as_ref());
    let env = inspect
        .config
        .as_ref()
        .and_then(|c| c.env.as_deref())
        .unwrap_or_default();
    let from_env = |name: &str| {
        env.iter().find_map(|e| {
            e.split_once('=')
                .filter(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    };
    let component = labels
        .and_then(|l| l.get(&config.component_label))
        .cloned()
        .or_else(|| from_env(&config.component_env))
        .filter(|c| !c.trim().is_empty());
    let Some(component) = component else {
        return Classified::NoComponent;
    };
    if let Err(reason) = crate::config::values::validate_dimension_value(&component) {
        return Classified::InvalidComponent(reason);
    }
    let host = inspect.host_config.as_ref();
    let positive = |v: Option<i64>| v.filter(|v| *v > 0);
    let cpu_limit_cores = match host {
        Some(h) => positive(h.nano_cpus).map(|n| n as f64 / 1e9).or_else(|| {
            let quota = positive(h.cpu_quota)?;
            // The kernel's default CFS period when Docker leaves CpuPeriod at 0.
            let period = positive(h.cpu_period).unwrap_or(100_000);
            Some(quota as f64 / period as f64)
        }),
        None => None,
    };
    let requested = host
        .and_then(|h| h.device_requests.as_deref())
        .and_then(gpu_request);
    let gpus = requested.unwrap_or_else(|| {
        from_env("NVIDIA_VISIBLE_DEVICES")
            .map(|v| GpuAllocation::from_visible_devices(&v))
            .unwrap_or_default()
    });
    Classified::ModelCopy(ContainerInfo {
        id: id.to_string(),
        short_id: short_id(id).into(),
        component: component.into(),
        pid: state
            .and_then(|s| s.pid)
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or(0),
        cpu_limit_cores,
        memory_reservation_bytes: host
            .and_then(|h| positive(h.memory_reservation))
            .map(|v| v as u64),
        memory_limit_bytes: host.and_then(|h| positive(h.memory)).map(|v| v as u64),
        gpus,
        address: address(inspect),
        upstream_port: labels
            .and_then(|l| l.get(UPSTREAM_PORT_LABEL))
            .and_then(|p| p.trim().parse::<u16>().ok())
            .filter(|p| *p != 0),
        scrape: scrape_labels(labels),
        health_check: inspect
            .config
            .as_ref()
            .and_then(|c| c.healthcheck.as_ref())
            .and_then(|h| h.test.as_deref())
            .is_some_and(|test| test.first().is_some_and(|t| t != "NONE")),
    })
}

/// The `[scrape]` overrides among a container's labels; a bad one is ignored (and the default
/// used).
fn scrape_labels(labels: Option<&HashMap<String, String>>) -> crate::discovery::ScrapeLabels {
    let get = |name: &str| labels.and_then(|l| l.get(name)).map(|v| v.trim());
    crate::discovery::ScrapeLabels {
        enabled: get(SCRAPE_LABEL).and_then(|v| v.parse::<bool>().ok()),
        port: get(SCRAPE_PORT_LABEL)
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p != 0),
        path: get(SCRAPE_PATH_LABEL)
            .filter(|p| p.starts_with('/'))
            .map(String::from),
    }
}

/// The container label that overrides `[proxy] upstream_port` for one container.
pub const UPSTREAM_PORT_LABEL: &str = "endpoint-metrics-agent.upstream-port";
/// Container label: "false" turns scraping (`scrape`) off for that copy.
pub const SCRAPE_LABEL: &str = "endpoint-metrics-agent.scrape";
/// Container label: the metrics port, overriding `[scrape] port`.
pub const SCRAPE_PORT_LABEL: &str = "endpoint-metrics-agent.scrape-port";
/// Container label: the metrics path, overriding `[scrape] path`.
pub const SCRAPE_PATH_LABEL: &str = "endpoint-metrics-agent.scrape-path";

/// Lifecycle events waiting for the tick: a burst of 1024 container events between two ticks
/// is far past any host's; past it events are dropped and counted.
const LIFECYCLE_QUEUE: usize = 1024;

/// The container's address for the front door: 127.0.0.1 with host networking, else its
/// address on the first of its networks (by name) that gave it one.
fn address(inspect: &ContainerInspectResponse) -> Option<std::net::IpAddr> {
    let mode = inspect
        .host_config
        .as_ref()
        .and_then(|h| h.network_mode.as_deref());
    if mode == Some("host") {
        return Some(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    }
    let networks = inspect.network_settings.as_ref()?.networks.as_ref()?;
    let mut names: Vec<&String> = networks.keys().collect();
    names.sort();
    names.into_iter().find_map(|name| {
        networks[name]
            .ip_address
            .as_deref()
            .and_then(|ip| ip.parse().ok())
    })
}

/// The GPU device request (`--gpus`), if there is one.
fn gpu_request(requests: &[bollard::models::DeviceRequest]) -> Option<GpuAllocation> {
    let request = requests.iter().find(|r| {
        r.driver.as_deref() == Some("nvidia")
            || r.capabilities
                .iter()
                .flatten()
                .any(|set| set.iter().any(|c| c == "gpu"))
    })?;
    if let Some(ids) = request.device_ids.as_ref().filter(|ids| !ids.is_empty()) {
        return Some(GpuAllocation::Devices(ids.clone()));
    }
    Some(match request.count {
        Some(n) if n < 0 => GpuAllocation::All,
        Some(n) => GpuAllocation::Count(u32::try_from(n).unwrap_or(u32::MAX)),
        None => GpuAllocation::None,
    })
}

/// What an event means for the inventory.
#[derive(Debug, PartialEq, Eq)]
enum EventAction {
    /// Inspect the container again (it started, changed limits, resumed).
    Refresh,
    /// It stopped running.
    Remove,
    Ignore,
}

fn event_action(action: &str) -> EventAction {
    match action {
        "start" | "restart" | "unpause" | "update" | "rename" => EventAction::Refresh,
        "die" | "destroy" | "stop" | "oom" => EventAction::Remove,
        _ => EventAction::Ignore,
    }
}

/// Starts discovery on the current runtime. The receiver always holds the latest inventory
/// (empty until the engine answers); the task ends when every receiver is dropped.
pub fn spawn(config: DockerConfig) -> watch::Receiver<Arc<Inventory>> {
    spawn_with_lifecycle(config).0
}

/// [`spawn`], with each copy's lifecycle events (start, healthy, exit, OOM) on a bounded channel.
pub fn spawn_with_lifecycle(
    config: DockerConfig,
) -> (
    watch::Receiver<Arc<Inventory>>,
    mpsc::Receiver<LifecycleEvent>,
) {
    let (tx, rx) = watch::channel(Arc::new(Inventory::default()));
    let (lifecycle, events) = mpsc::channel(LIFECYCLE_QUEUE);
    let discovery = Discovery {
        config,
        tx,
        inventory: Inventory::default(),
        ignored: HashSet::new(),
        lifecycle,
    };
    tokio::spawn(discovery.run());
    (rx, events)
}

struct Discovery {
    config: DockerConfig,
    tx: watch::Sender<Arc<Inventory>>,
    inventory: Inventory,
    /// Running containers that are not model copies, so each is counted once.
    ignored: HashSet<String>,
    /// Lifecycle events for the tick (a closed receiver: nobody listens).
    lifecycle: mpsc::Sender<LifecycleEvent>,
}

impl Discovery {
    async fn run(mut self) {
        let mut backoff = Backoff::new(RESUBSCRIBE_BACKOFF_BASE, RESUBSCRIBE_BACKOFF_MAX);
        let mut warned = false;
        loop {
            let since =
                (crate::clock::system_now_ms() / 1000).saturating_sub(SUBSCRIBE_REPLAY_SECONDS);
            let tx = self.tx.clone();
            let result = tokio::select! {
                r = self.session(since, &mut backoff, &mut warned) => r,
                _ = tx.closed() => return,
            };
            let error = match result {
                Ok(()) => return,
                Err(e) => e,
            };
            // One warning per outage; every failed try is still counted.
            if warned {
                telemetry::add(Counter::DockerUnavailable, 1);
                tracing::debug!(error = %error, "docker discovery: still unavailable");
            } else {
                telemetry::warn(
                    Counter::DockerUnavailable,
                    1,
                    &format!("{error}; container metrics wait for the engine, the agent runs on"),
                );
                warned = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = self.tx.closed() => return,
            }
        }
    }

    /// One connection: subscribe, list, then follow events until the stream ends.
    async fn session(
        &mut self,
        since_seconds: u64,
        backoff: &mut Backoff,
        warned: &mut bool,
    ) -> Result<(), DiscoveryError> {
        let socket = self.config.socket.clone();
        let engine = |source| DiscoveryError::Engine {
            socket: socket.clone(),
            source,
        };
        let docker = Docker::connect_with_unix(
            &self.config.socket,
            REQUEST_TIMEOUT_SECONDS,
            bollard::API_DEFAULT_VERSION,
        )
        .map_err(engine)?
        .negotiate_version()
        .await
        .map_err(engine)?;
        let filters = HashMap::from([("type".to_string(), vec!["container".to_string()])]);
        let events = docker.events(Some(EventsOptions {
            since: Some(since_seconds.to_string()),
            until: None,
            filters: Some(filters),
        }));
        let mut events = std::pin::pin!(events);
        self.reconcile(&docker).await?;
        if *warned {
            tracing::info!(socket = %self.config.socket, "docker engine reachable again");
        }
        *warned = false;
        backoff.reset();
        let mut reconcile = tokio::time::interval_at(
            tokio::time::Instant::now() + RECONCILE_INTERVAL,
            RECONCILE_INTERVAL,
        );
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(event)) => self.on_event(&docker, event).await,
                    Some(Err(source)) => return Err(engine(source)),
                    None => return Err(DiscoveryError::StreamEnded),
                },
                _ = reconcile.tick() => self.reconcile(&docker).await?,
            }
        }
    }

    async fn on_event(&mut self, docker: &Docker, event: EventMessage) {
        let Some(id) = event.actor.as_ref().and_then(|a| a.id.clone()) else {
            return;
        };
        let action = event.action.as_deref().unwrap_or_default();
        // A copy that dies is still in the inventory before `forget`; one that starts is in it
        // after `refresh`.
        let before = self.copy_of(&id);
        let changed = match event_action(action) {
            EventAction::Refresh => self.refresh(docker, &id).await,
            EventAction::Remove => self.forget(&id),
            EventAction::Ignore => false,
        };
        if changed {
            self.publish();
        }
        let attributes = event.actor.as_ref().and_then(|a| a.attributes.as_ref());
        let attribute = |name: &str| attributes.and_then(|a| a.get(name)).map(String::as_str);
        let health_check = self
            .inventory
            .containers
            .get(&id)
            .is_some_and(|c| c.health_check);
        let kind = match action {
            "create" => LifecycleKind::Created,
            "start" => LifecycleKind::Started { health_check },
            "die" => LifecycleKind::Died {
                exit_code: attribute("exitCode").and_then(|c| c.parse().ok()),
            },
            "oom" => LifecycleKind::OomKilled,
            "destroy" => LifecycleKind::Destroyed,
            "health_status: healthy" => LifecycleKind::Healthy,
            "health_status" if attribute("health_status") == Some("healthy") => {
                LifecycleKind::Healthy
            }
            _ => return,
        };
        let copy = before.or_else(|| self.copy_of(&id));
        let at_ms = event
            .time_nano
            .and_then(|ns| u64::try_from(ns / 1_000_000).ok())
            .or_else(|| {
                event
                    .time
                    .and_then(|s| u64::try_from(s).ok())
                    .map(|s| s * 1000)
            })
            .unwrap_or_else(crate::clock::system_now_ms);
        let event = LifecycleEvent {
            id,
            copy,
            at_ms,
            kind,
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.lifecycle.try_send(event) {
            telemetry::warn(
                Counter::LifecycleEventsDropped,
                1,
                "lifecycle events are not being read; event dropped",
            );
        }
    }

    fn copy_of(&self, id: &str) -> Option<(Arc<str>, Arc<str>)> {
        self.inventory
            .containers
            .get(id)
            .map(|c| (c.component.clone(), c.short_id.clone()))
    }

    /// Lists running containers: inspects the ones not known yet, forgets the ones gone.
    async fn reconcile(&mut self, docker: &Docker) -> Result<(), DiscoveryError> {
        let listed = docker
            .list_containers(Some(ListContainersOptions {
                all: false,
                ..Default::default()
            }))
            .await
            .map_err(|source| DiscoveryError::Engine {
                socket: self.config.socket.clone(),
                source,
            })?;
        let running: HashSet<String> = listed.into_iter().filter_map(|c| c.id).collect();
        let gone: Vec<String> = self
            .inventory
            .containers
            .keys()
            .filter(|id| !running.contains(*id))
            .cloned()
            .collect();
        let mut changed = false;
        for id in gone {
            changed |= self.forget(&id);
        }
        self.ignored.retain(|id| running.contains(id));
        for id in &running {
            if !self.inventory.containers.contains_key(id) && !self.ignored.contains(id) {
                changed |= self.refresh(docker, id).await;
            }
        }
        if changed {
            self.publish();
        }
        Ok(())
    }

    /// Inspects one container and updates the inventory. Returns whether it changed.
    async fn refresh(&mut self, docker: &Docker, id: &str) -> bool {
        let inspect = match docker.inspect_container(id, None).await {
            Ok(i) => i,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => return self.forget(id),
            Err(e) => {
                telemetry::warn(
                    Counter::DockerInspectErrors,
                    1,
                    &format!("inspecting container {}: {e}", short_id(id)),
                );
                return false;
            }
        };
        match classify(&inspect, &self.config) {
            Classified::ModelCopy(info) => {
                self.ignored.remove(id);
                let changed = self.inventory.containers.get(id) != Some(&info);
                if changed {
                    tracing::info!(
                        container_id = %info.short_id,
                        component = %info.component,
                        pid = info.pid,
                        "model copy found"
                    );
                    self.inventory.containers.insert(id.to_string(), info);
                }
                changed
            }
            Classified::NoComponent => {
                let changed = self.inventory.containers.remove(id).is_some();
                if self.ignored.insert(id.to_string()) {
                    telemetry::warn(
                        Counter::ContainersWithoutComponent,
                        1,
                        &format!(
                            "container {} has neither label {} nor env {}: ignored",
                            short_id(id),
                            self.config.component_label,
                            self.config.component_env
                        ),
                    );
                }
                changed
            }
            Classified::InvalidComponent(reason) => {
                let changed = self.inventory.containers.remove(id).is_some();
                if self.ignored.insert(id.to_string()) {
                    telemetry::warn(
                        Counter::ContainersWithoutComponent,
                        1,
                        &format!(
                            "container {}'s component name cannot be a dimension value ({reason}): ignored",
                            short_id(id),
                        ),
                    );
                }
                changed
            }
            Classified::NotRunning => self.forget(id),
            Classified::Malformed => {
                telemetry::warn(
                    Counter::DockerInspectErrors,
                    1,
                    "the engine's inspect answer has no container ID",
                );
                false
            }
        }
    }

    fn forget(&mut self, id: &str) -> bool {
        self.ignored.remove(id);
        match self.inventory.containers.remove(id) {
            Some(info) => {
                tracing::info!(container_id = %info.short_id, component = %info.component, "model copy gone");
                true
            }
            None => false,
        }
    }

    fn publish(&self) {
        self.tx.send_replace(Arc::new(self.inventory.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> DockerConfig {
        DockerConfig::default()
    }

    fn inspect(json: serde_json::Value) -> ContainerInspectResponse {
        serde_json::from_value(json).unwrap()
    }

    const ID: &str = "b335296f4e067f587ea22d5e8d0533a18ab9898701b6b4ffd2e3a2fdb7e5f6e8";

    #[test]
    fn a_labelled_container_is_a_model_copy_with_its_reservations() {
        let c = classify(
            &inspect(serde_json::json!({
                "Id": ID,
                "State": {"Running": true, "Pid": 14849},
                "Config": {"Labels": {"sagemaker.inference-component": "ic-a"}, "Env": ["PATH=/bin"]},
                "HostConfig": {"NanoCpus": 500000000, "Memory": 67108864, "MemoryReservation": 33554432,
                    "DeviceRequests": [{"Driver": "", "Count": 2, "Capabilities": [["gpu"]]}]}
            })),
            &config(),
        );
        let Classified::ModelCopy(info) = c else {
            panic!("{c:?}")
        };
        assert_eq!(&*info.short_id, "b335296f4e06");
        assert_eq!(&*info.component, "ic-a");
        assert_eq!(info.pid, 14849);
        assert_eq!(info.cpu_limit_cores, Some(0.5));
        assert_eq!(info.memory_reserved_bytes(), Some(33554432));
        assert_eq!(info.memory_limit_bytes, Some(67108864));
        assert_eq!(info.gpus, GpuAllocation::Count(2));
    }

    #[test]
    fn the_environment_names_the_component_when_the_label_does_not() {
        let c = classify(
            &inspect(serde_json::json!({
                "Id": ID,
                "State": {"Running": true, "Pid": 7},
                "Config": {"Labels": {}, "Env": ["INFERENCE_COMPONENT_NAME=ic-env", "NVIDIA_VISIBLE_DEVICES=1,GPU-abc"]},
                "HostConfig": {"CpuQuota": 150000, "CpuPeriod": 100000, "NanoCpus": 0}
            })),
            &config(),
        );
        let Classified::ModelCopy(info) = c else {
            panic!("{c:?}")
        };
        assert_eq!(&*info.component, "ic-env");
        assert_eq!(info.cpu_limit_cores, Some(1.5));
        assert_eq!(info.memory_reserved_bytes(), None);
        assert_eq!(
            info.gpus,
            GpuAllocation::Devices(vec!["1".into(), "GPU-abc".into()])
        );
    }

    #[test]
    fn device_requests_win_over_the_environment() {
        let c = classify(
            &inspect(serde_json::json!({
                "Id": ID,
                "State": {"Running": true},
                "Config": {"Labels": {"sagemaker.inference-component": "x"}, "Env": ["NVIDIA_VISIBLE_DEVICES=all"]},
                "HostConfig": {"DeviceRequests": [{"Driver": "nvidia", "DeviceIDs": ["2"]}]}
            })),
            &config(),
        );
        let Classified::ModelCopy(info) = c else {
            panic!("{c:?}")
        };
        assert_eq!(info.gpus, GpuAllocation::Devices(vec!["2".into()]));
        assert_eq!(info.pid, 0);
        assert_eq!(info.cpu_limit_cores, None);
    }

    #[test]
    fn unlabelled_stopped_and_malformed_containers_are_not_model_copies() {
        let none = inspect(serde_json::json!({
            "Id": ID, "State": {"Running": true}, "Config": {"Labels": {"other": "x"}, "Env": ["INFERENCE_COMPONENT_NAME="]}
        }));
        assert_eq!(classify(&none, &config()), Classified::NoComponent);
        let stopped = inspect(serde_json::json!({
            "Id": ID, "State": {"Running": false}, "Config": {"Labels": {"sagemaker.inference-component": "x"}}
        }));
        assert_eq!(classify(&stopped, &config()), Classified::NotRunning);
        for bad in ["ic\u{1b}[2J", "ic\r\nforged", "m\u{f6}del"] {
            let labelled = inspect(serde_json::json!({
                "Id": ID, "State": {"Running": true}, "Config": {"Labels": {"sagemaker.inference-component": bad}}
            }));
            assert!(
                matches!(classify(&labelled, &config()), Classified::InvalidComponent(ref r) if r.contains("is not allowed")),
                "{bad:?}"
            );
        }
        let malformed = inspect(serde_json::json!({"State": {"Running": true}}));
        assert_eq!(classify(&malformed, &config()), Classified::Malformed);
    }

    #[test]
    fn events_map_to_inventory_actions() {
        assert_eq!(event_action("start"), EventAction::Refresh);
        assert_eq!(event_action("update"), EventAction::Refresh);
        assert_eq!(event_action("die"), EventAction::Remove);
        assert_eq!(event_action("destroy"), EventAction::Remove);
        assert_eq!(event_action("exec_start: sh"), EventAction::Ignore);
        assert_eq!(event_action("health_status: healthy"), EventAction::Ignore);
    }
}

//! Each model copy's lifecycle, from Docker's events (with the engine's own timestamps), the
//! scrapes and the front door:
//!
//! - `ContainerStartDuration`: container start to healthy: Docker's `health_status: healthy`
//!   when the container has a health check, else its first successful scrape or first 2xx
//!   invocation, whichever comes first.
//! - `ColdStartDuration`: container creation to its first 2xx invocation through the front door
//!   (known to the tick it falls in: the sampling interval's resolution).
//! - `ContainerRestarts`, `ContainerOOMKills`, `ContainerNonZeroExits`: 1 per event, summed per
//!   period, each also logged (exits with their code). OOM kills count once per run of the
//!   container: the engine sends an `oom` event for every process the kernel kills in its
//!   cgroup (three for one shell pipeline on cgroup v1), one container death.
//!
//! Only what the agent saw: a copy already running when the agent started has no start
//! durations, and one created before it has no cold start.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::aggregate::Stats;
use crate::catalog::{Metric, Sample, Scope, SeriesKey};
pub use crate::discovery::{LifecycleEvent, LifecycleKind};

#[derive(Debug, Default)]
struct Copy {
    copy: Option<(Arc<str>, Arc<str>)>,
    created_ms: Option<u64>,
    started_ms: Option<u64>,
    health_check: bool,
    /// It ran before (a start or an exit seen): the next start is a restart.
    ran: bool,
    start_done: bool,
    cold_done: bool,
    /// This run's OOM kill was counted (further `oom` events of the run are its other
    /// processes).
    oom_counted: bool,
}

/// The lifecycle of every copy the agent has seen.
pub struct Lifecycle {
    events: mpsc::Receiver<LifecycleEvent>,
    copies: HashMap<String, Copy>,
}

impl Lifecycle {
    pub fn new(events: mpsc::Receiver<LifecycleEvent>) -> Lifecycle {
        Lifecycle {
            events,
            copies: HashMap::new(),
        }
    }

    /// Takes the events that arrived, this tick's successful scrapes and invocation series, and
    /// adds the figures they complete to `samples`.
    pub fn tick(
        &mut self,
        wall_ms: u64,
        scraped: &[(Arc<str>, u64)],
        invocations: &[(SeriesKey, Stats)],
        samples: &mut Vec<Sample>,
    ) {
        while let Ok(event) = self.events.try_recv() {
            self.on_event(event, samples);
        }
        for (short_id, at_ms) in scraped {
            if let Some(copy) = self.by_short(short_id) {
                if !copy.health_check {
                    start_done(copy, *at_ms, samples);
                }
            }
        }
        for short_id in answered(invocations) {
            if let Some(copy) = self.by_short(short_id) {
                if !copy.health_check {
                    start_done(copy, wall_ms, samples);
                }
                if let (Some(created), false) = (copy.created_ms, copy.cold_done) {
                    copy.cold_done = true;
                    push(
                        copy,
                        Metric::ColdStartDuration,
                        seconds(created, wall_ms),
                        samples,
                    );
                }
            }
        }
    }

    fn by_short(&mut self, short_id: &str) -> Option<&mut Copy> {
        self.copies
            .values_mut()
            .find(|c| c.copy.as_ref().is_some_and(|(_, s)| &**s == short_id))
    }

    fn on_event(&mut self, event: LifecycleEvent, samples: &mut Vec<Sample>) {
        if event.kind == LifecycleKind::Destroyed {
            self.copies.remove(&event.id);
            return;
        }
        let copy = self.copies.entry(event.id).or_default();
        if event.copy.is_some() {
            copy.copy = event.copy;
        }
        match event.kind {
            LifecycleKind::Created => copy.created_ms = Some(event.at_ms),
            LifecycleKind::Started { health_check } => {
                if copy.ran {
                    tracing::warn!(copy = ?copy.copy, "model copy restarted");
                    push(copy, Metric::ContainerRestarts, 1.0, samples);
                }
                copy.ran = true;
                copy.started_ms = Some(event.at_ms);
                copy.health_check = health_check;
                copy.start_done = false;
                copy.oom_counted = false;
            }
            LifecycleKind::Healthy => start_done(copy, event.at_ms, samples),
            LifecycleKind::Died { exit_code } => {
                copy.ran = true;
                if exit_code != Some(0) {
                    tracing::warn!(copy = ?copy.copy, exit_code = ?exit_code, "model copy exited with an error");
                    push(copy, Metric::ContainerNonZeroExits, 1.0, samples);
                } else {
                    tracing::info!(copy = ?copy.copy, "model copy exited with 0");
                }
            }
            LifecycleKind::OomKilled if copy.oom_counted => {
                tracing::debug!(copy = ?copy.copy, "another process of the copy killed for memory (OOM) in the same run");
            }
            LifecycleKind::OomKilled => {
                copy.oom_counted = true;
                tracing::warn!(copy = ?copy.copy, "model copy killed for memory (OOM)");
                push(copy, Metric::ContainerOomKills, 1.0, samples);
            }
            LifecycleKind::Destroyed => {}
        }
    }
}

fn start_done(copy: &mut Copy, at_ms: u64, samples: &mut Vec<Sample>) {
    if let (Some(started), false) = (copy.started_ms, copy.start_done) {
        copy.start_done = true;
        let duration = seconds(started, at_ms);
        push(copy, Metric::ContainerStartDuration, duration, samples);
    }
}

fn seconds(from_ms: u64, to_ms: u64) -> f64 {
    to_ms.saturating_sub(from_ms) as f64 / 1000.0
}

fn push(copy: &Copy, metric: Metric, value: f64, samples: &mut Vec<Sample>) {
    // A container never known as a copy (no component) publishes nothing.
    if let Some((component, short_id)) = &copy.copy {
        let scope = Scope::Container {
            component: component.clone(),
            container_id: short_id.clone(),
        };
        samples.push(Sample::new(scope, metric, value));
    }
}

/// The copies with at least one 2xx answer among `invocations` (every request counts 1 in
/// `Invocations`, and 1 in `InvocationModelErrors` when it was not a 2xx).
fn answered(invocations: &[(SeriesKey, Stats)]) -> Vec<&Arc<str>> {
    let mut per_copy: HashMap<&Arc<str>, (u64, f64)> = HashMap::new();
    for (key, stats) in invocations {
        let Scope::CopyInvocations { container_id, .. } = &key.scope else {
            continue;
        };
        let entry = per_copy.entry(container_id).or_default();
        match key.metric {
            Metric::Invocations => entry.0 += stats.count,
            Metric::InvocationModelErrors => entry.1 += stats.sum,
            _ => {}
        }
    }
    per_copy
        .into_iter()
        .filter(|(_, (n, errors))| *n as f64 - errors >= 0.5)
        .map(|(id, _)| id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: LifecycleKind, at_ms: u64) -> LifecycleEvent {
        LifecycleEvent {
            id: "f".repeat(64),
            copy: Some(("ic".into(), "ffffffffffff".into())),
            at_ms,
            kind,
        }
    }

    fn figures(samples: &[Sample]) -> Vec<(Metric, f64)> {
        samples.iter().map(|s| (s.key.metric, s.value)).collect()
    }

    #[test]
    fn start_to_healthy_restarts_exits_and_ooms_are_published_per_copy() {
        let (tx, rx) = mpsc::channel(16);
        let mut life = Lifecycle::new(rx);
        let mut created = event(LifecycleKind::Created, 1_000);
        created.copy = None;
        tx.try_send(created).unwrap();
        tx.try_send(event(LifecycleKind::Started { health_check: true }, 1_500))
            .unwrap();
        tx.try_send(event(LifecycleKind::Healthy, 4_750)).unwrap();
        let mut samples = Vec::new();
        life.tick(5_000, &[("ffffffffffff".into(), 4_900)], &[], &mut samples);
        assert_eq!(
            figures(&samples),
            vec![(Metric::ContainerStartDuration, 3.25)]
        );

        // The kernel killed three processes of the copy: one OOM kill of the copy.
        for kind in [
            LifecycleKind::OomKilled,
            LifecycleKind::OomKilled,
            LifecycleKind::OomKilled,
            LifecycleKind::Died {
                exit_code: Some(137),
            },
            LifecycleKind::Started {
                health_check: false,
            },
        ] {
            tx.try_send(event(kind, 6_000)).unwrap();
        }
        let mut samples = Vec::new();
        // No health check now: the first successful scrape ends the start.
        life.tick(7_000, &[("ffffffffffff".into(), 6_400)], &[], &mut samples);
        assert_eq!(
            figures(&samples),
            vec![
                (Metric::ContainerOomKills, 1.0),
                (Metric::ContainerNonZeroExits, 1.0),
                (Metric::ContainerRestarts, 1.0),
                (Metric::ContainerStartDuration, 0.4),
            ]
        );
        // The next run's OOM kill counts again.
        tx.try_send(event(LifecycleKind::OomKilled, 8_000)).unwrap();
        let mut samples = Vec::new();
        life.tick(9_000, &[], &[], &mut samples);
        assert_eq!(figures(&samples), vec![(Metric::ContainerOomKills, 1.0)]);
    }

    #[test]
    fn the_first_2xx_invocation_ends_the_cold_start() {
        let (tx, rx) = mpsc::channel(16);
        let mut life = Lifecycle::new(rx);
        tx.try_send(event(LifecycleKind::Created, 1_000)).unwrap();
        tx.try_send(event(LifecycleKind::Started { health_check: true }, 2_000))
            .unwrap();
        let scope = Scope::CopyInvocations {
            component: "ic".into(),
            container_id: "ffffffffffff".into(),
        };
        let key = |metric| SeriesKey {
            scope: scope.clone(),
            metric,
        };
        let mut failed = Stats::new(1.0);
        failed.record(1.0);
        let only_errors = vec![
            (key(Metric::Invocations), failed.clone()),
            (key(Metric::InvocationModelErrors), failed.clone()),
        ];
        let mut samples = Vec::new();
        life.tick(9_000, &[], &only_errors, &mut samples);
        assert!(samples.is_empty(), "no 2xx yet: {samples:?}");
        let mut errors = Stats::new(1.0);
        errors.record(0.0);
        let one_ok = vec![
            (key(Metric::Invocations), failed),
            (key(Metric::InvocationModelErrors), errors),
        ];
        life.tick(12_000, &[], &one_ok, &mut samples);
        assert_eq!(figures(&samples), vec![(Metric::ColdStartDuration, 11.0)]);
        life.tick(13_000, &[], &one_ok, &mut samples);
        assert_eq!(samples.len(), 1, "once per start");
    }
}

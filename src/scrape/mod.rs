//! What the model server knows: each copy's metrics endpoint (Prometheus text or OpenMetrics),
//! scraped off the sampling thread and mapped to SageMaker's names (`frameworks`).
//!
//! One thread with its own single-threaded runtime runs a task per target (a discovered copy at
//! its address, `[scrape] port` and `path` unless its labels say otherwise, or a
//! `[[scrape.target]]`). Each task keeps one HTTP/1.1 keep-alive connection, asks every
//! `interval_seconds` at its own fixed point of the middle half of each interval on the wall
//! clock ([`scrape_offset_ms`]: the answer lands well inside one publish window, with the default
//! 10 s a 10 s window gets exactly one, and 50 copies are not all asked at the same instant),
//! waits at most `timeout_ms` for the whole answer, and reads at most `max_bytes` of it, frame by
//! frame.
//! Parsing and the baselines (`Tracker`) stay on that thread; the tick takes the finished
//! [`Report`]s from a bounded channel without waiting ([`Scraper::drain`]). A target that hangs,
//! refuses, answers garbage or too much costs only its own figures, counted and logged.
//!
//! The cadence: 10 s by default. vLLM renders its registry on every request (about 1-3 ms of
//! its CPU for a single engine, more with many engines or LoRA adapters); every 10 s that is well
//! under 0.1 % of a core per copy, and a 10 s window still gets its data point.

pub mod frameworks;
mod http;
pub mod parse;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::config::ScrapeConfig;
use crate::discovery::Inventory;
use crate::telemetry::{self, Counter};

pub use frameworks::{Figures, Skip, Tracker, MAPPINGS};

pub use crate::discovery::docker::{SCRAPE_LABEL, SCRAPE_PATH_LABEL, SCRAPE_PORT_LABEL};

/// Reports waiting for the tick: 4 per target for 256 targets; past it reports are dropped and
/// counted (the tick reads every sample, so only a stalled loop fills it).
const REPORT_QUEUE: usize = 1024;

/// One endpoint to scrape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub component: Arc<str>,
    /// The `ContainerId` value: the short container ID, or a static target's `host:port`.
    pub copy_id: Arc<str>,
    /// `host:port`.
    pub authority: String,
    /// Path and query, starting with `/`.
    pub path: String,
}

/// What one scrape of one target came to.
#[derive(Debug)]
pub struct Report {
    pub target: Arc<Target>,
    /// When the answer was read (wall clock, ms since the epoch).
    pub at_ms: u64,
    pub outcome: Result<Figures, ScrapeError>,
}

/// Why a scrape gave nothing.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("no complete answer within {0} ms")]
    Timeout(u64),
    #[error("answered status {0}")]
    Status(u16),
    #[error("answer larger than {0} bytes")]
    TooLarge(u64),
    #[error("answer is not UTF-8 text")]
    NotText,
    #[error("not an exposition: {0}")]
    Parse(#[from] parse::ParseError),
}

/// The targets of an inventory under `config` (labels override port and path, or turn a copy
/// off), plus the static ones. Copies without an address are not reachable and left out.
pub fn targets(config: &ScrapeConfig, inventory: &Inventory) -> Vec<Target> {
    let mut out: Vec<Target> = config
        .target
        .iter()
        .map(|t| Target {
            component: t.component.as_str().into(),
            copy_id: t.url.authority().into(),
            authority: t.url.authority().into(),
            path: t.url.path().into(),
        })
        .collect();
    for info in inventory.containers.values() {
        let labels = &info.scrape;
        if labels.enabled == Some(false) {
            continue;
        }
        let Some(address) = info.address else {
            continue;
        };
        let port = labels.port.unwrap_or(config.port);
        out.push(Target {
            component: info.component.clone(),
            copy_id: info.short_id.clone(),
            authority: std::net::SocketAddr::new(address, port).to_string(),
            path: labels.path.clone().unwrap_or_else(|| config.path.clone()),
        });
    }
    out
}

/// The scrape thread's handle: the tick drains its reports.
pub struct Scraper {
    reports: mpsc::Receiver<Report>,
    /// Dropping it ends the thread's tasks.
    _stop: watch::Sender<()>,
}

impl Scraper {
    /// Starts the scrape thread over discovery's inventory (None: static targets only).
    pub fn start(
        config: &ScrapeConfig,
        inventory: Option<watch::Receiver<Arc<Inventory>>>,
    ) -> std::io::Result<Scraper> {
        let (tx, reports) = mpsc::channel(REPORT_QUEUE);
        let (stop, stopped) = watch::channel(());
        let config = config.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("scrape".into())
            .spawn(move || runtime.block_on(manage(config, inventory, tx, stopped)))?;
        Ok(Scraper {
            reports,
            _stop: stop,
        })
    }

    /// Every report that arrived since the last call; never waits.
    pub fn drain(&mut self) -> Vec<Report> {
        let mut out = Vec::new();
        while let Ok(report) = self.reports.try_recv() {
            out.push(report);
        }
        out
    }
}

/// Keeps one task per target, following the inventory.
async fn manage(
    config: ScrapeConfig,
    mut inventory: Option<watch::Receiver<Arc<Inventory>>>,
    tx: mpsc::Sender<Report>,
    mut stopped: watch::Receiver<()>,
) {
    let mut tasks: HashMap<Target, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        let current = inventory
            .as_mut()
            .map(|rx| rx.borrow_and_update().clone())
            .unwrap_or_default();
        let wanted = targets(&config, &current);
        tasks.retain(|target, task| {
            let keep = wanted.contains(target);
            if !keep {
                task.abort();
            }
            keep
        });
        for target in wanted {
            if let std::collections::hash_map::Entry::Vacant(slot) = tasks.entry(target) {
                let target = Arc::new(slot.key().clone());
                tracing::info!(component = %target.component, copy = %target.copy_id,
                    url = %format!("http://{}{}", target.authority, target.path), "scraping");
                slot.insert(tokio::spawn(scrape_loop(
                    target,
                    config.clone(),
                    tx.clone(),
                )));
            }
        }
        let changed = async {
            match inventory.as_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            alive = changed => if !alive { inventory = None },
            _ = stopped.changed() => break,
        }
    }
    for task in tasks.into_values() {
        task.abort();
    }
}

/// A target's scrape point within each interval: between a quarter and three quarters of it,
/// fixed per target (FNV-1a of its component and copy ID), so targets spread over the middle
/// half and a result never straddles a window boundary.
pub fn scrape_offset_ms(target: &Target, interval_ms: u64) -> u64 {
    let bytes = target
        .component
        .bytes()
        .chain([0])
        .chain(target.copy_id.bytes());
    let hash = bytes.fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    interval_ms / 4 + hash % (interval_ms / 2).max(1)
}

/// The wall-clock instant of the next scrape at `offset_ms` into an interval.
fn next_scrape_ms(now_ms: u64, interval_ms: u64, offset_ms: u64) -> u64 {
    (now_ms + interval_ms - offset_ms) / interval_ms * interval_ms + offset_ms
}

async fn scrape_loop(target: Arc<Target>, config: ScrapeConfig, tx: mpsc::Sender<Report>) {
    let interval_ms = config.interval_seconds * 1000;
    let offset_ms = scrape_offset_ms(&target, interval_ms);
    let mut client = http::Client::new(&target, &config);
    let mut tracker = Tracker::default();
    let mut failing = false;
    loop {
        let now = crate::clock::system_now_ms();
        let at = next_scrape_ms(now, interval_ms, offset_ms);
        tokio::time::sleep(Duration::from_millis(at - now)).await;
        let outcome = client.get().await.and_then(|body| {
            let (lines, soft) = parse::parse(&body)?;
            for e in soft {
                warn_skip(&target, &e.to_string());
            }
            Ok(tracker.update(&lines, Instant::now()))
        });
        match &outcome {
            Ok(figures) => {
                if failing {
                    tracing::info!(copy = %target.copy_id, "scrape answers again");
                }
                failing = false;
                for skip in &figures.skipped {
                    match skip {
                        Skip::Reset { name } => telemetry::warn(
                            Counter::ScrapeCounterResets,
                            1,
                            &format!("scrape {}: {name} went down: new baseline", target.copy_id),
                        ),
                        other => warn_skip(&target, &other.to_string()),
                    }
                }
            }
            Err(e) => {
                // A failing target logs once per outage; every failure is counted.
                if failing {
                    telemetry::add(Counter::ScrapeFailures, 1);
                } else {
                    telemetry::warn(
                        Counter::ScrapeFailures,
                        1,
                        &format!(
                            "scrape {} (http://{}{}): {e}; skipped this period",
                            target.copy_id, target.authority, target.path
                        ),
                    );
                }
                failing = true;
            }
        }
        let report = Report {
            target: target.clone(),
            at_ms: crate::clock::system_now_ms(),
            outcome,
        };
        if tx.try_send(report).is_err() {
            if tx.is_closed() {
                return;
            }
            telemetry::warn(
                Counter::ScrapeFailures,
                1,
                "scrape reports are not being read; report dropped",
            );
        }
    }
}

fn warn_skip(target: &Target, what: &str) {
    telemetry::warn(
        Counter::ScrapeValuesSkipped,
        1,
        &format!("scrape {}: {what}; skipped", target.copy_id),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_target_scrapes_at_its_own_point_of_the_middle_half_of_each_interval() {
        assert_eq!(next_scrape_ms(0, 10_000, 5_000), 5_000);
        assert_eq!(next_scrape_ms(4_999, 10_000, 5_000), 5_000);
        assert_eq!(next_scrape_ms(5_000, 10_000, 5_000), 15_000);
        assert_eq!(next_scrape_ms(12_345, 10_000, 2_500), 12_500);
        assert_eq!(next_scrape_ms(12_600, 10_000, 2_500), 22_500);
        let target = |component: String, copy_id: &str| Target {
            component: component.into(),
            copy_id: copy_id.into(),
            authority: "127.0.0.1:8000".into(),
            path: "/metrics".into(),
        };
        // Copies of one component, and static targets of one address serving many components.
        let offsets: Vec<u64> = (0..50)
            .map(|i| target("c".into(), &format!("{:012x}", 0xa0000 + i)))
            .chain((0..50).map(|i| target(format!("model-{i}"), "127.0.0.1:8000")))
            .map(|t| scrape_offset_ms(&t, 10_000))
            .collect();
        assert!(
            offsets.iter().all(|o| (2_500..7_500).contains(o)),
            "{offsets:?}"
        );
        let mut distinct = offsets.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() > 80, "spread: {offsets:?}");
    }
}

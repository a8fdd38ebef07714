//! What the process supervisor (systemd, Docker's health check) sees of the agent: sd_notify
//! (ready, watchdog, reloading, stopping), the admin endpoint (`/healthz`, `/metrics`) and the
//! SIGHUP stream. The loop in `agent` calls into this at each point of the agent's life.

use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::admin::{self, HealthLimits};
use crate::clock::system_now_ms;
use crate::config::Config;
use crate::sd_notify::Notifier;
use crate::telemetry::{self, Gauge};

/// The watchdog is fed only while the loop has ticked within this many sampling periods (plus
/// a second), so a ticker that stopped firing is caught as well as a loop that stopped turning.
pub const WATCHDOG_TICK_PERIODS: u32 = 2;

/// Something for the loop to do besides sampling.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    Hangup,
    WatchdogDue,
    None,
}

pub struct Supervisor {
    pub notifier: Notifier,
    admin: Option<JoinHandle<()>>,
    watchdog: Option<Interval>,
    hangup: Option<Signal>,
    last_tick: Instant,
    tick_stale_after: Duration,
}

impl Supervisor {
    /// Binds the admin endpoint and installs the SIGHUP handler. Neither failing stops the
    /// agent: both are logged and counted, the metrics keep flowing.
    /// `live`: the last tick's view, served on `/snapshot`.
    pub async fn start(config: &Config, live: admin::LiveViews) -> Supervisor {
        telemetry::set(Gauge::StartedMs, system_now_ms());
        telemetry::set(Gauge::Ready, 0);
        let m = &config.metrics;
        let admin = if config.admin.enabled {
            match admin::bind(&config.admin.listen).await {
                Ok(listener) => {
                    tracing::info!(listen = %config.admin.listen, "admin endpoint: /healthz /metrics /snapshot");
                    let limits =
                        HealthLimits::new(m.sample_interval_ms, m.publish_frequency_seconds);
                    Some(tokio::spawn(admin::serve(listener, limits, live)))
                }
                Err(e) => {
                    tracing::error!(listen = %config.admin.listen, error = %e, "cannot listen for the admin endpoint; running without it");
                    None
                }
            }
        } else {
            None
        };
        let hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot install the SIGHUP handler; reload needs a restart");
                None
            }
        };
        let notifier = Notifier::from_env();
        let watchdog = notifier.watchdog_every().map(|every| {
            let mut i = tokio::time::interval(every);
            i.set_missed_tick_behavior(MissedTickBehavior::Delay);
            i
        });
        Supervisor {
            notifier,
            admin,
            watchdog,
            hangup,
            last_tick: Instant::now(),
            tick_stale_after: Duration::from_millis(m.sample_interval_ms) * WATCHDOG_TICK_PERIODS
                + Duration::from_secs(1),
        }
    }

    /// The pipeline runs: `/healthz` may say ok, systemd may start what depends on the agent.
    pub fn ready(&self) {
        telemetry::set(Gauge::Ready, 1);
        self.notifier.ready();
    }

    /// Waits for SIGHUP or the watchdog being due (each never, when not set up).
    pub async fn event(&mut self) -> Event {
        let hangup = async {
            match self.hangup.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        let watchdog = async {
            match self.watchdog.as_mut() {
                Some(i) => i.tick().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            received = hangup => match received {
                Some(()) => Event::Hangup,
                None => {
                    self.hangup = None;
                    Event::None
                }
            },
            _ = watchdog => Event::WatchdogDue,
        }
    }

    /// Feeds systemd's watchdog if the loop ticked recently.
    pub fn feed_watchdog(&self) {
        let since = self.last_tick.elapsed();
        if since <= self.tick_stale_after {
            self.notifier.watchdog();
        } else {
            tracing::error!(
                since_last_tick_ms = since.as_millis() as u64,
                "the sampling loop has not ticked; not feeding the watchdog"
            );
        }
    }

    /// Called once per tick: notes that the loop turned (for the watchdog) and the depth of
    /// the queue to the sink.
    pub fn ticked(&mut self, queued_windows: usize) {
        self.last_tick = Instant::now();
        telemetry::set(Gauge::QueuedWindows, queued_windows as u64);
    }

    /// The front door drains before the stop: not ready (`/healthz` says so, systemd hears
    /// STOPPING=1), but the admin endpoint answers on.
    pub fn draining(&mut self) {
        telemetry::set(Gauge::Ready, 0);
        self.notifier.stopping();
    }

    pub fn stopping(&mut self) {
        telemetry::set(Gauge::Ready, 0);
        self.notifier.stopping();
        if let Some(admin) = self.admin.take() {
            admin.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[tokio::test]
    async fn a_tick_sets_the_queue_gauge() {
        let text = "[endpoint]\nname = \"e\"\ninstance_id = \"i\"\n[admin]\nenabled = false\n";
        let config = Config::parse(text, Path::new("t.toml")).unwrap();
        let live = crate::live::Live::new(
            crate::catalog::Identity {
                endpoint_name: "e".into(),
                variant_name: "v".into(),
                instance_id: "i".into(),
            },
            1000,
            false,
        );
        let mut supervisor = Supervisor::start(&config, live.subscribe()).await;
        supervisor.ticked(3);
        assert_eq!(telemetry::gauge(Gauge::QueuedWindows), 3);
        supervisor.ticked(0);
        assert_eq!(telemetry::gauge(Gauge::QueuedWindows), 0);
    }
}

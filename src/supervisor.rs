//! Running as a service: what the sampling loop tells the outside world. systemd notifications
//! (ready, watchdog, reloading, stopping), the admin endpoint, the self-metrics samples and the
//! SIGHUP stream. The loop in `agent` calls into this with a few lines at each point.

use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::admin::{self, HealthLimits};
use crate::catalog::Sample;
use crate::clock::system_now_ms;
use crate::config::Config;
use crate::sd_notify::Notifier;
use crate::self_metrics::{Process, WindowFigures};
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

pub struct Service {
    pub notifier: Notifier,
    admin: Option<JoinHandle<()>>,
    watchdog: Option<Interval>,
    hangup: Option<Signal>,
    figures: WindowFigures,
    last_tick: Instant,
    tick_stale_after: Duration,
}

impl Service {
    /// Binds the admin endpoint and installs the SIGHUP handler. Neither failing stops the
    /// agent: both are logged and counted, the metrics keep flowing.
    pub async fn start(config: &Config) -> Service {
        telemetry::set(Gauge::StartedMs, system_now_ms());
        telemetry::set(Gauge::Ready, 0);
        let m = &config.metrics;
        let admin = if config.admin.enabled {
            match admin::bind(&config.admin.listen).await {
                Ok(listener) => {
                    tracing::info!(listen = %config.admin.listen, "admin endpoint: /healthz /metrics");
                    let limits =
                        HealthLimits::new(m.sample_interval_ms, m.publish_frequency_seconds);
                    Some(tokio::spawn(admin::serve(listener, limits)))
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
        Service {
            notifier,
            admin,
            watchdog,
            hangup,
            figures: WindowFigures::new(),
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

    /// Called once per tick: notes the tick and the depth of the queue to the sink, and on the
    /// last tick of a window adds the agent's own samples (with `[self_metrics] enabled`).
    pub fn on_tick(
        &mut self,
        config: &Config,
        tick_ms: u64,
        queued_windows: usize,
        out: &mut Vec<Sample>,
    ) {
        self.last_tick = Instant::now();
        telemetry::set(Gauge::QueuedWindows, queued_windows as u64);
        let period_ms = config.metrics.publish_frequency_seconds * 1000;
        // The tick on a window boundary is the last one of the window it closes.
        if config.self_metrics.enabled && period_ms > 0 && tick_ms % period_ms == 0 {
            self.figures.samples(&Process::read(), out);
        }
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
    async fn self_samples_come_on_the_last_tick_of_a_window_only_when_enabled() {
        let text = "[endpoint]\nname = \"e\"\ninstance_id = \"i\"\n[metrics]\npublish_frequency_seconds = 10\n\
                    [admin]\nenabled = false\n[self_metrics]\nenabled = true\n";
        let mut config = Config::parse(text, Path::new("t.toml")).unwrap();
        let mut service = Service::start(&config).await;
        let mut out = Vec::new();
        service.on_tick(&config, 1_700_000_009_000, 3, &mut out);
        assert!(out.is_empty(), "not the window's last tick");
        assert_eq!(telemetry::gauge(Gauge::QueuedWindows), 3);
        service.on_tick(&config, 1_700_000_010_000, 0, &mut out);
        assert_eq!(out.len(), 9);
        assert!(out
            .iter()
            .all(|s| s.key.scope == crate::catalog::Scope::Agent));
        config.self_metrics.enabled = false;
        out.clear();
        service.on_tick(&config, 1_700_000_020_000, 0, &mut out);
        assert!(out.is_empty(), "disabled");
    }
}

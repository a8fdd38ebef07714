//! The one clock: sample ticks aligned to wall-clock multiples of the sampling period, and publish
//! windows aligned to multiples of the publish frequency (a 60 s window starts on the minute).
//!
//! Wall time is read once, at start, and carried forward on tokio's monotonic clock: every tick
//! deadline is computed from that anchor and the tick's number, never as "a period after the
//! work", so ticks do not drift however long the agent runs. Tests pause tokio's time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Milliseconds since the Unix epoch now, from the system clock.
pub fn system_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One sample tick.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Tick {
    /// The tick's wall-clock time, a multiple of the sampling period.
    pub wall_ms: u64,
    /// Ticks skipped since the previous one because the agent was late (a stalled host, a
    /// suspended VM): each is a sample not taken.
    pub missed: u64,
}

/// Produces aligned ticks.
#[derive(Debug)]
pub struct Ticker {
    anchor: Instant,
    anchor_wall_ms: u64,
    interval_ms: u64,
    next_wall_ms: u64,
}

impl Ticker {
    /// A ticker whose wall clock reads `wall_ms` at tokio's `Instant::now()`.
    pub fn new(wall_ms: u64, interval_ms: u64) -> Self {
        let interval_ms = interval_ms.max(1);
        Ticker {
            anchor: Instant::now(),
            anchor_wall_ms: wall_ms,
            interval_ms,
            next_wall_ms: (wall_ms / interval_ms + 1) * interval_ms,
        }
    }

    /// The monotonic instant at which the wall clock reads `wall_ms`.
    pub fn instant_of(&self, wall_ms: u64) -> Instant {
        self.anchor + Duration::from_millis(wall_ms.saturating_sub(self.anchor_wall_ms))
    }

    /// The wall-clock time of a monotonic instant.
    pub fn wall_of(&self, instant: Instant) -> u64 {
        self.anchor_wall_ms + instant.saturating_duration_since(self.anchor).as_millis() as u64
    }

    /// Waits for the next tick. If the caller was so late that later ticks are already past,
    /// those are skipped and counted in `missed`, and the latest one due is returned.
    pub async fn tick(&mut self) -> Tick {
        tokio::time::sleep_until(self.instant_of(self.next_wall_ms)).await;
        let now_ms = self.wall_of(Instant::now());
        let due = self.next_wall_ms;
        let latest = now_ms / self.interval_ms * self.interval_ms;
        let (wall_ms, missed) = if latest > due {
            (latest, (latest - due) / self.interval_ms)
        } else {
            (due, 0)
        };
        self.next_wall_ms = wall_ms + self.interval_ms;
        Tick { wall_ms, missed }
    }
}

/// The publish window a sample taken at `tick_ms` belongs to, as its start. A sample describes
/// the period that ends at its tick, so the tick on a window boundary closes the window before
/// it: with 60 s windows, ticks at 0:01 .. 1:00 make the window that starts at 0:00.
pub fn window_start_ms(tick_ms: u64, period_seconds: u64) -> u64 {
    let period_ms = period_seconds * 1000;
    tick_ms.saturating_sub(1) / period_ms * period_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_aligned_and_the_boundary_tick_closes_the_previous_one() {
        assert_eq!(window_start_ms(60_000, 60), 0);
        assert_eq!(window_start_ms(60_001, 60), 60_000);
        assert_eq!(window_start_ms(119_000, 60), 60_000);
        assert_eq!(window_start_ms(1_700_000_010_000, 10), 1_700_000_000_000);
        assert_eq!(window_start_ms(1_700_000_000_500, 300), 1_699_999_800_000);
    }

    #[tokio::test(start_paused = true)]
    async fn ticks_are_aligned_to_the_wall_clock() {
        let mut t = Ticker::new(1_700_000_000_123, 1000);
        let first = t.tick().await;
        assert_eq!(
            first,
            Tick {
                wall_ms: 1_700_000_001_000,
                missed: 0
            }
        );
        let second = t.tick().await;
        assert_eq!(second.wall_ms, 1_700_000_002_000);
    }

    #[tokio::test(start_paused = true)]
    async fn no_drift_over_hours_even_when_work_takes_time() {
        let start = Instant::now();
        let mut t = Ticker::new(1_000_000_250, 1000);
        let mut last = 0;
        for i in 0..(6 * 3600) {
            let tick = t.tick().await;
            assert_eq!(tick.missed, 0);
            assert_eq!(tick.wall_ms % 1000, 0);
            if last != 0 {
                assert_eq!(tick.wall_ms - last, 1000);
            }
            last = tick.wall_ms;
            // Work that takes a varying part of the period must not push later ticks.
            tokio::time::advance(Duration::from_millis((i % 7) * 100)).await;
        }
        // Six hours of ticks end exactly six hours (less the first partial second) after start.
        let elapsed = t.wall_of(Instant::now()) - 1_000_000_250;
        assert!(
            (6 * 3600 * 1000 - 250..6 * 3600 * 1000 + 750).contains(&elapsed),
            "{elapsed}"
        );
        assert!(Instant::now() - start >= Duration::from_secs(6 * 3600 - 1));
    }

    #[tokio::test(start_paused = true)]
    async fn late_ticks_are_skipped_and_counted() {
        let mut t = Ticker::new(10_000, 1000);
        assert_eq!(t.tick().await.wall_ms, 11_000);
        // The work after this tick took 3.5 s: ticks at 12 and 13 s are gone, 14 s is the latest.
        tokio::time::advance(Duration::from_millis(3_500)).await;
        let tick = t.tick().await;
        assert_eq!(
            tick,
            Tick {
                wall_ms: 14_000,
                missed: 2
            }
        );
        assert_eq!(
            t.tick().await,
            Tick {
                wall_ms: 15_000,
                missed: 0
            }
        );
    }
}

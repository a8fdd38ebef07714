//! One shutdown deadline. SIGTERM starts it; the front door, the last window and the sinks all
//! finish by it, so the agent exits within the README's promise whatever is slow.
//!
//! The order: the front door first stops accepting and drains the requests in flight for up to
//! `[proxy] drain_timeout_ms` while sampling goes on (`agent`); then this deadline starts, the
//! front door cuts what is left and stops (its share ends [`SINK_SHARE`] before the deadline),
//! the partial windows are encoded and queued, then the sinks send what they can and spool the
//! rest by [`DRAIN_MARGIN`] before the deadline.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

/// SIGTERM to exit: the README promises 5 s; the last half second is the process's own exit
/// (threads joined, runtime dropped) and scheduling slack on a loaded host.
pub const SHUTDOWN_BUDGET: Duration = Duration::from_millis(4_500);

/// The sinks' part at the end of the budget: the last windows sent, or spooled.
pub const SINK_SHARE: Duration = Duration::from_millis(3_000);

/// The sinks stop sending this long before the deadline, so what is still in memory is on disk
/// (or written) in time.
pub const DRAIN_MARGIN: Duration = Duration::from_millis(500);

/// When everything must be done.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(pub Instant);

impl Deadline {
    /// A deadline [`SHUTDOWN_BUDGET`] from now.
    pub fn start() -> Deadline {
        Deadline(Instant::now() + SHUTDOWN_BUDGET)
    }

    /// The front door's part: done by [`SINK_SHARE`] before the deadline.
    pub fn front_door(self) -> Instant {
        self.0.checked_sub(SINK_SHARE).unwrap_or(self.0)
    }

    /// When the sinks stop sending and keep the rest for the next start.
    pub fn sinks_stop_sending(self) -> Instant {
        self.0.checked_sub(DRAIN_MARGIN).unwrap_or(self.0)
    }

    pub fn left(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }
}

/// The deadline, handed to a task before its input closes: the task reads it when it sees the
/// close. Unset means "no hurry" (a test, or a sink dropped without `finish`).
#[derive(Clone, Debug, Default)]
pub struct DeadlineCell(Arc<OnceLock<Deadline>>);

impl DeadlineCell {
    pub fn set(&self, deadline: Deadline) {
        let _ = self.0.set(deadline);
    }

    /// The deadline set, else one [`SHUTDOWN_BUDGET`] from now.
    pub fn get(&self) -> Deadline {
        self.0.get().copied().unwrap_or_else(Deadline::start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_shares_fit_inside_the_budget_in_order() {
        let d = Deadline::start();
        let now = Instant::now();
        assert!(now < d.front_door());
        assert!(d.front_door() < d.sinks_stop_sending());
        assert!(d.sinks_stop_sending() < d.0);
        assert_eq!(d.0 - now, SHUTDOWN_BUDGET);
        assert!(
            SHUTDOWN_BUDGET < Duration::from_secs(5),
            "the README's promise"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_unset_cell_gives_a_full_budget_and_a_set_one_its_deadline() {
        let cell = DeadlineCell::default();
        assert_eq!(cell.get().left(), SHUTDOWN_BUDGET);
        let soon = Deadline(Instant::now() + Duration::from_millis(10));
        cell.clone().set(soon);
        assert_eq!(cell.get(), soon);
    }
}

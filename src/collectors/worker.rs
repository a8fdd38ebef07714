//! A collector on its own thread, asked for a reading with a deadline.
//!
//! Reads that can block forever (statvfs on a hung mount, an NVML call that never returns) run
//! here, so one stuck source costs its own data for that tick and never stalls the others or the
//! clock. While a read is still stuck, further ticks are answered "stalled" without queueing more
//! work behind it; when it finally returns, the worker is used again.

use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::telemetry::{self, Counter};

/// A collector that a [`Worker`] runs on its thread.
pub trait Collect: Send + 'static {
    type Reading: Send + 'static;
    /// Takes one reading for the tick at `tick_ms`.
    fn collect(&mut self, tick_ms: u64) -> Self::Reading;
}

/// What came of asking a worker for a reading.
#[derive(Debug, PartialEq)]
pub enum Outcome<R> {
    Reading(R),
    /// The read did not finish in time; it goes on in the background.
    TimedOut,
    /// An earlier read is still stuck; no new one was started.
    Stalled,
    /// The worker thread is gone (the collector panicked).
    Gone,
}

pub struct Worker<R> {
    name: &'static str,
    requests: std_mpsc::SyncSender<u64>,
    replies: mpsc::UnboundedReceiver<(u64, R)>,
    /// A request is on the thread and its reply not yet taken.
    busy: bool,
    /// What [`Worker::ask`] did for the tick being answered.
    asked: Asked,
}

/// What asking a worker for a tick's reading did.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Asked {
    Nothing,
    Tick(u64),
    Stalled,
    Gone,
}

impl<R: Send + 'static> Worker<R> {
    /// Starts `collector` on a thread of its own.
    pub fn spawn<C: Collect<Reading = R>>(
        name: &'static str,
        mut collector: C,
    ) -> std::io::Result<Self> {
        let (requests, request_rx) = std_mpsc::sync_channel::<u64>(1);
        let (reply_tx, replies) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name(format!("collect-{name}"))
            .spawn(move || {
                while let Ok(tick_ms) = request_rx.recv() {
                    if reply_tx
                        .send((tick_ms, collector.collect(tick_ms)))
                        .is_err()
                    {
                        break;
                    }
                }
            })?;
        Ok(Worker {
            name,
            requests,
            replies,
            busy: false,
            asked: Asked::Nothing,
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Starts the reading of tick `tick_ms` on the worker's thread and returns at once, so
    /// every source of a tick reads at the same time; [`Worker::answer`] collects it.
    pub fn ask(&mut self, tick_ms: u64) {
        if self.busy {
            // The stuck read may have finished since; its result is stale, drop it.
            match self.replies.try_recv() {
                Ok(_) => self.busy = false,
                Err(mpsc::error::TryRecvError::Empty) => {
                    self.asked = Asked::Stalled;
                    return;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.asked = Asked::Gone;
                    return;
                }
            }
        }
        if self.requests.try_send(tick_ms).is_err() {
            self.asked = Asked::Gone;
            return;
        }
        self.busy = true;
        self.asked = Asked::Tick(tick_ms);
    }

    /// Waits until `deadline` at the latest for the reading [`Worker::ask`] started.
    pub async fn answer(&mut self, deadline: Instant) -> Outcome<R> {
        let tick_ms = match std::mem::replace(&mut self.asked, Asked::Nothing) {
            Asked::Tick(tick_ms) => tick_ms,
            Asked::Stalled => return Outcome::Stalled,
            Asked::Gone | Asked::Nothing => return Outcome::Gone,
        };
        let wait = async {
            loop {
                match self.replies.recv().await {
                    Some((t, reading)) if t == tick_ms => return Some(reading),
                    Some(_) => continue,
                    None => return None,
                }
            }
        };
        match tokio::time::timeout_at(deadline, wait).await {
            Ok(Some(reading)) => {
                self.busy = false;
                Outcome::Reading(reading)
            }
            Ok(None) => Outcome::Gone,
            Err(_) => Outcome::TimedOut,
        }
    }

    /// [`Worker::answer`] for the sampling loop: the reading, or None with the reason logged
    /// and counted under `missed`, so every source accounts for a missing tick the same way.
    pub async fn answer_or_count(&mut self, deadline: Instant, missed: Counter) -> Option<R> {
        let reason = match self.answer(deadline).await {
            Outcome::Reading(reading) => return Some(reading),
            Outcome::TimedOut => "did not finish in time",
            Outcome::Stalled => "is still stuck from an earlier tick",
            Outcome::Gone => "thread is gone",
        };
        telemetry::warn(
            missed,
            1,
            &format!("{} collector {reason}: no data for this tick", self.name),
        );
        None
    }

    /// Asks for the reading of tick `tick_ms` and waits at most `timeout` for it.
    pub async fn read(&mut self, tick_ms: u64, timeout: Duration) -> Outcome<R> {
        self.ask(tick_ms);
        self.answer(Instant::now() + timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Sleeps as long as the shared setting says, then returns the tick.
    struct Slow(Arc<Mutex<Duration>>);

    impl Collect for Slow {
        type Reading = u64;
        fn collect(&mut self, tick_ms: u64) -> u64 {
            let delay = *self.0.lock().unwrap();
            std::thread::sleep(delay);
            tick_ms
        }
    }

    #[tokio::test]
    async fn a_hung_read_times_out_then_stalls_then_recovers() {
        let delay = Arc::new(Mutex::new(Duration::ZERO));
        let mut w = Worker::spawn("slow", Slow(delay.clone())).unwrap();
        assert_eq!(w.read(1, Duration::from_secs(5)).await, Outcome::Reading(1));
        *delay.lock().unwrap() = Duration::from_millis(300);
        assert_eq!(
            w.read(2, Duration::from_millis(20)).await,
            Outcome::TimedOut
        );
        assert_eq!(w.read(3, Duration::from_millis(20)).await, Outcome::Stalled);
        *delay.lock().unwrap() = Duration::ZERO;
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            w.read(4, Duration::from_secs(5)).await,
            Outcome::Reading(4),
            "stale reply dropped"
        );
    }

    #[tokio::test]
    async fn a_missing_answer_is_counted_under_the_given_counter() {
        let delay = Arc::new(Mutex::new(Duration::ZERO));
        let mut w = Worker::spawn("slow", Slow(delay.clone())).unwrap();
        let missed = Counter::GpuReadsMissed;
        let _counters = crate::testing::counters().await;
        let before = telemetry::get(missed);
        w.ask(1);
        let soon = || Instant::now() + Duration::from_secs(5);
        assert_eq!(w.answer_or_count(soon(), missed).await, Some(1));
        assert_eq!(telemetry::get(missed), before, "a reading counts nothing");
        *delay.lock().unwrap() = Duration::from_millis(300);
        w.ask(2);
        let short = Instant::now() + Duration::from_millis(20);
        assert_eq!(w.answer_or_count(short, missed).await, None);
        assert_eq!(telemetry::get(missed), before + 1);
    }

    struct Panics;
    impl Collect for Panics {
        type Reading = ();
        fn collect(&mut self, _: u64) {
            panic!("collector bug");
        }
    }

    #[tokio::test]
    async fn a_panicking_collector_is_gone_not_fatal() {
        let mut w = Worker::spawn("panics", Panics).unwrap();
        assert_eq!(w.read(1, Duration::from_secs(5)).await, Outcome::Gone);
        assert_eq!(w.read(2, Duration::from_secs(5)).await, Outcome::Gone);
    }
}

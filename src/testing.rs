//! Test support for exact counter assertions. The agent's counters are process-wide and
//! `cargo test` runs a binary's tests as threads of one process, so a test that asserts how much a
//! counter moved holds [`counters`] while it runs, and so does every other test that moves the
//! same counter: no one else's events land between its baseline and its assertion. (nextest runs
//! each test in a process of its own; there the lock costs nothing.)

use tokio::sync::{Mutex, MutexGuard};

static COUNTERS: Mutex<()> = Mutex::const_new(());

/// Waits for the other counting tests of this process to finish; theirs is the counters' turn
/// until the guard drops.
pub(crate) async fn counters() -> MutexGuard<'static, ()> {
    COUNTERS.lock().await
}

/// [`counters`] for a test outside a runtime.
pub(crate) fn counters_blocking() -> MutexGuard<'static, ()> {
    COUNTERS.blocking_lock()
}

//! XID errors: NVML critical-XID events, received on a thread of their own that waits on an
//! event set with a timeout, counted per GPU until the GPU worker drains the counts into its
//! next reading (`DCGM_EXP_XID_ERRORS_COUNT`, a count per sample, so a period's Sum is the
//! period's count). Each XID is logged with its code and meaning (repeats of one code on one
//! GPU at most once per [`SAMPLED_LOG_INTERVAL_MS`], with how many were folded in); a fatal one
//! marks `/healthz` degraded with the GPU and the code (`telemetry::degrade`).
//!
//! The thread has its own NVML handle (NVML counts initialisations), so it needs nothing the
//! GPU worker does not: the same library and device nodes. It stops within one wait timeout of
//! its [`XidWatch`] being dropped.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;

use crate::backoff::Backoff;
use crate::telemetry::{self, Counter, SAMPLED_LOG_INTERVAL_MS};

/// How long one wait on the event set lasts: the longest the thread takes to notice it should
/// stop, and the latest an XID reaches the GPU worker's count after arriving.
pub const XID_WAIT_TIMEOUT_MS: u32 = 500;

/// Retry of a failed NVML start or event set (no driver yet, a GPU lost): 10 s up to 5 min,
/// as the GPU worker's initialisation.
const RETRY_BASE: Duration = Duration::from_secs(10);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// `nvmlEventData_t.eventData` when the driver does not know the XID (nvml-wrapper's
/// `XidError::Unknown`).
const UNKNOWN_XID: u64 = 999;

/// What an XID code means, from NVIDIA's XID catalogue (docs.nvidia.com/deploy/xid-errors),
/// and whether it leaves the GPU needing a reset or replacement (fatal: `/healthz` degraded).
pub fn meaning(xid: u64) -> (&'static str, bool) {
    match xid {
        13 => (
            "graphics engine exception (usually an application error)",
            false,
        ),
        31 => (
            "GPU memory page fault (usually an application error)",
            false,
        ),
        32 => ("invalid or corrupted push buffer stream", false),
        43 => (
            "GPU stopped processing (usually an application error)",
            false,
        ),
        45 => ("preemptive cleanup after earlier errors", false),
        48 => ("double-bit ECC error", true),
        61 => ("internal micro-controller breakpoint or warning", false),
        62 => ("internal micro-controller halt", true),
        63 => (
            "ECC page retirement or row remapping recorded (reset to apply)",
            false,
        ),
        64 => (
            "ECC page retirement or row remapping recording failed",
            true,
        ),
        74 => ("NVLink error", true),
        79 => ("GPU has fallen off the bus", true),
        92 => ("high single-bit ECC error rate", false),
        94 => (
            "contained ECC error (the affected application stopped)",
            false,
        ),
        95 => ("uncontained ECC error (GPU reset needed)", true),
        119 => ("GSP RPC timeout", true),
        120 => ("GSP error", true),
        UNKNOWN_XID => ("an XID the driver did not name", false),
        _ => ("see NVIDIA's XID catalogue", false),
    }
}

/// XID counts per GPU, shared between the event thread and the GPU worker.
#[derive(Default)]
pub struct XidCounts {
    inner: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    /// GPUs registered for XID events: only they have a count (0 included).
    registered: BTreeSet<u32>,
    pending: HashMap<u32, u64>,
}

impl XidCounts {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The XIDs of GPU `index` since the last take; None where the GPU is not registered.
    pub fn take(&self, index: u32) -> Option<u64> {
        let mut counts = self.lock();
        let n = counts.pending.remove(&index).unwrap_or(0);
        counts.registered.contains(&index).then_some(n)
    }

    fn set_registered(&self, registered: BTreeSet<u32>) {
        self.lock().registered = registered;
    }

    fn add(&self, index: u32) {
        *self.lock().pending.entry(index).or_insert(0) += 1;
    }
}

/// The running event thread; dropping it stops the thread.
pub struct XidWatch {
    pub counts: Arc<XidCounts>,
    stop: Arc<AtomicBool>,
}

impl Drop for XidWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl XidWatch {
    /// Starts the event thread over the NVML library at `library`.
    pub fn spawn(library: &str) -> std::io::Result<XidWatch> {
        let counts = Arc::new(XidCounts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut thread = EventThread {
            library: library.to_owned(),
            counts: counts.clone(),
            stop: stop.clone(),
            skip: BTreeSet::new(),
            logged: HashMap::new(),
        };
        std::thread::Builder::new()
            .name("gpu-xid".into())
            .spawn(move || thread.run())?;
        Ok(XidWatch { counts, stop })
    }
}

struct EventThread {
    library: String,
    counts: Arc<XidCounts>,
    stop: Arc<AtomicBool>,
    /// GPUs whose registration failed: left out of later attempts (logged once).
    skip: BTreeSet<u32>,
    /// Per (GPU, XID): when it was last logged, and how many arrived since without a line.
    logged: HashMap<(u32, u64), (u64, u64)>,
}

impl EventThread {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn run(&mut self) {
        let mut backoff = Backoff::new(RETRY_BASE, RETRY_MAX);
        while !self.stopped() {
            let outcome = Nvml::builder()
                .lib_path(OsStr::new(&self.library))
                .init()
                .map_err(|e| format!("NVML: {e}"))
                .and_then(|nvml| self.watch(&nvml));
            self.counts.set_registered(BTreeSet::new());
            match outcome {
                Ok(()) => return,
                Err(reason) => {
                    let delay = backoff.next_delay();
                    // The GPU worker warns about a missing driver; this thread only retries.
                    tracing::debug!(%reason, retry_in_ms = delay.as_millis() as u64, "XID events: retrying");
                    self.sleep(delay);
                }
            }
        }
    }

    /// Sleeps `delay`, waking early when stopped.
    fn sleep(&self, delay: Duration) {
        let step = Duration::from_millis(u64::from(XID_WAIT_TIMEOUT_MS));
        let mut left = delay;
        while !self.stopped() && !left.is_zero() {
            let nap = left.min(step);
            std::thread::sleep(nap);
            left -= nap;
        }
    }

    /// Registers every GPU for critical-XID events and handles them until stopped (Ok) or the
    /// event set fails (Err: start again after a pause).
    fn watch(&mut self, nvml: &Nvml) -> Result<(), String> {
        let count = nvml
            .device_count()
            .map_err(|e| format!("nvmlDeviceGetCount: {e}"))?;
        let mut set = nvml
            .create_event_set()
            .map_err(|e| format!("nvmlEventSetCreate: {e}"))?;
        let mut registered = BTreeSet::new();
        for index in 0..count {
            if self.skip.contains(&index) {
                continue;
            }
            let device = match nvml.device_by_index(index) {
                Ok(d) => d,
                Err(e) => {
                    tracing::debug!(gpu = index, error = %e, "XID events: no handle for this GPU now");
                    continue;
                }
            };
            let supported = device
                .supported_event_types()
                .is_ok_and(|t| t.contains(EventTypes::CRITICAL_XID_ERROR));
            if !supported {
                self.skip.insert(index);
                telemetry::add(Counter::GpuHealthUnsupported, 1);
                tracing::info!(gpu = index, "XID events not supported on this GPU: DCGM_EXP_XID_ERRORS_COUNT is absent for it");
                continue;
            }
            set = match device.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
                Ok(set) => set,
                Err(e) => {
                    // nvml-wrapper frees the set on failure: start over without this GPU.
                    self.skip.insert(index);
                    telemetry::warn(
                        Counter::GpuErrors,
                        1,
                        &format!("GPU {index}: nvmlDeviceRegisterEvents failed ({}): no XID count for it", e.error),
                    );
                    return Err("event registration failed".into());
                }
            };
            registered.insert(index);
        }
        tracing::info!(gpus = ?registered, "XID events: watching");
        self.counts.set_registered(registered);
        while !self.stopped() {
            match set.wait(XID_WAIT_TIMEOUT_MS) {
                Ok(event) => {
                    let Some(xid) = event.event_data else {
                        continue;
                    };
                    let xid = match xid {
                        XidError::Value(v) => v,
                        XidError::Unknown => UNKNOWN_XID,
                    };
                    match event.device.index() {
                        Ok(index) => self.record(index, xid),
                        Err(e) => telemetry::warn(
                            Counter::GpuErrors,
                            1,
                            &format!("XID {xid} on a GPU whose index NVML did not give ({e}): not counted"),
                        ),
                    }
                }
                Err(NvmlError::Timeout) => {}
                Err(e) => return Err(format!("nvmlEventSetWait: {e}")),
            }
        }
        Ok(())
    }

    fn record(&mut self, gpu: u32, xid: u64) {
        self.counts.add(gpu);
        telemetry::add(Counter::GpuXidErrors, 1);
        let (meaning, fatal) = meaning(xid);
        if fatal {
            crate::telemetry::degrade(
                &format!("gpu {gpu}"),
                format!("GPU {gpu}: XID {xid} ({meaning})"),
            );
        }
        let now = crate::clock::system_now_ms();
        let (last, folded) = self.logged.entry((gpu, xid)).or_insert((0, 0));
        if *last != 0 && now.saturating_sub(*last) < SAMPLED_LOG_INTERVAL_MS {
            *folded += 1;
            return;
        }
        let repeats = std::mem::take(folded);
        *last = now;
        tracing::error!(
            gpu,
            xid,
            meaning,
            fatal,
            repeats_not_logged = repeats,
            counter = Counter::GpuXidErrors.name(),
            "XID error"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_exist_only_for_registered_gpus_and_are_drained() {
        let counts = XidCounts::default();
        counts.add(1);
        assert_eq!(counts.take(1), None, "not registered");
        counts.set_registered([0, 1].into());
        counts.add(1);
        counts.add(1);
        assert_eq!(counts.take(0), Some(0));
        assert_eq!(counts.take(1), Some(2));
        assert_eq!(counts.take(1), Some(0), "drained");
    }

    #[test]
    fn the_examples_of_the_issue_have_meanings_and_fatality() {
        assert!(meaning(48).1 && meaning(79).1 && meaning(95).1 && meaning(64).1);
        assert!(!meaning(94).1 && !meaning(63).1 && !meaning(13).1);
        assert!(meaning(79).0.contains("fallen off the bus"));
        assert!(!meaning(12345).1);
    }
}

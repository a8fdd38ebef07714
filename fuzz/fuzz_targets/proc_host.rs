//! `/proc/stat` and `/proc/meminfo` parsers: any bytes are a reading or None, never a panic;
//! what they read is possible (CPU utilization within 0..=100 per core, memory within 0..=100).
#![no_main]

use endpoint_metrics_agent::collectors::host::{cpu_utilization, parse_meminfo, parse_proc_stat};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Two readings of /proc/stat one after the other, split at the first 0xff byte.
    let (first, second) = match data.iter().position(|&b| b == 0xff) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, data),
    };
    if let (Some((a, cpus)), Some((b, _))) = (parse_proc_stat(first), parse_proc_stat(second)) {
        // The reader refuses a reading without cpuN lines (no CPU count, never a false 0).
        if cpus > 0 {
            if let Some(u) = cpu_utilization(a, b, cpus) {
                // The sum of per-core percent.
                assert!(
                    u.is_finite() && (0.0..=100.0 * f64::from(cpus)).contains(&u),
                    "{u}"
                );
            }
        }
    }
    if let Some(m) = parse_meminfo(data) {
        assert!(m.is_finite() && (0.0..=100.0).contains(&m), "{m}");
    }
});

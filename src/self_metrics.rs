//! The agent's own figures: process CPU time and resident memory (from `/proc/self`), the
//! telemetry counters and gauges. One reading feeds both the admin endpoint's `/metrics`
//! (Prometheus text) and, with `[self_metrics] enabled`, samples of `Scope::Agent` once per window.

use std::fmt::Write as _;
use std::path::Path;

use crate::catalog::{Metric, Sample, Scope};
use crate::telemetry::{self, Counter, Gauge};

/// Prefix of every Prometheus series the agent exports about itself (besides the standard
/// `process_*` ones).
pub const PROMETHEUS_PREFIX: &str = "endpoint_metrics_agent";

/// The process figures, read from `/proc/self`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Process {
    /// User + system CPU time since the process started.
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
}

impl Process {
    /// Reads `/proc/self/stat` and `/proc/self/status`. A field that cannot be read is 0: this
    /// is the agent describing itself, and a missing figure must not stop the rest.
    pub fn read() -> Process {
        Self::read_from(Path::new("/proc/self"))
    }

    pub fn read_from(dir: &Path) -> Process {
        let cpu_seconds = std::fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|s| cpu_ticks(&s))
            .map(|ticks| ticks as f64 / clock_ticks_per_second())
            .unwrap_or(0.0);
        let resident_bytes = std::fs::read_to_string(dir.join("status"))
            .ok()
            .and_then(|s| vm_rss_bytes(&s))
            .unwrap_or(0);
        Process {
            cpu_seconds,
            resident_bytes,
        }
    }
}

/// utime + stime (fields 14 and 15 of proc_pid_stat(5)), counted after the `)` that ends the
/// command name, which may itself hold spaces and parentheses.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ")": field 3 (state) is the first; utime is field 14, i.e. the 12th from here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn vm_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        // USER_HZ is 100 on every Linux architecture the agent runs on.
        100.0
    }
}

fn errors_total() -> u64 {
    Counter::ALL
        .iter()
        .filter(|c| c.is_error())
        .map(|&c| telemetry::get(c))
        .sum()
}

fn dropped_points_total() -> u64 {
    Counter::ALL
        .iter()
        .filter(|c| c.is_dropped_point())
        .map(|&c| telemetry::get(c))
        .sum()
}

/// The Prometheus text exposition (format 0.0.4) of everything the agent knows about itself.
pub fn prometheus_text(process: &Process) -> String {
    let mut out = String::with_capacity(4096);
    let p = PROMETHEUS_PREFIX;
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        format!("{}", process.cpu_seconds),
    );
    metric(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        process.resident_bytes.to_string(),
    );
    for c in Counter::ALL {
        metric(
            &format!("{p}_{}_total", c.name()),
            "counter",
            &format!("Events counted as {}.", c.name()),
            telemetry::get(c).to_string(),
        );
    }
    let gauges: [(&str, &str, String); 8] = [
        (
            "ready",
            "1 when the pipeline runs.",
            telemetry::gauge(Gauge::Ready).to_string(),
        ),
        (
            "last_sample_timestamp_seconds",
            "Wall-clock time of the last host sample, 0 if none yet.",
            ms_as_seconds(telemetry::gauge(Gauge::LastSampleMs)),
        ),
        (
            "last_publish_timestamp_seconds",
            "Wall-clock time the last window was delivered, 0 if none yet.",
            ms_as_seconds(telemetry::gauge(Gauge::LastPublishMs)),
        ),
        (
            "publish_latency_seconds",
            "How long delivering the last window took.",
            format!(
                "{}",
                telemetry::gauge(Gauge::PublishLatencyUs) as f64 / 1_000_000.0
            ),
        ),
        (
            "queued_windows",
            "Windows encoded and waiting for the sink.",
            telemetry::gauge(Gauge::QueuedWindows).to_string(),
        ),
        (
            "spooled_windows",
            "Windows held by the sink until the destination takes them.",
            telemetry::gauge(Gauge::SpooledWindows).to_string(),
        ),
        (
            "proxy_connections_open",
            "Front door client connections open now.",
            telemetry::gauge(Gauge::ProxyConnectionsOpen).to_string(),
        ),
        (
            "dropped_points_total",
            "Measured values that reached no document.",
            dropped_points_total().to_string(),
        ),
    ];
    for (name, help, value) in gauges {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        metric(&format!("{p}_{name}"), kind, help, value);
    }
    let name = format!("{p}_errors_total");
    let _ = writeln!(out, "# HELP {name} Errors by kind.\n# TYPE {name} counter");
    for c in Counter::ALL.iter().filter(|c| c.is_error()) {
        let _ = writeln!(
            out,
            "{name}{{kind=\"{}\"}} {}",
            c.name(),
            telemetry::get(*c)
        );
    }
    out
}

fn ms_as_seconds(ms: u64) -> String {
    format!("{}", ms as f64 / 1000.0)
}

/// Turns the running totals into one value per window: counters as the change since the last
/// window, gauges as they are now.
#[derive(Debug, Default)]
pub struct WindowFigures {
    last: Option<Totals>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Totals {
    cpu_seconds: f64,
    samples_taken: u64,
    samples_missed: u64,
    errors: u64,
    dropped_points: u64,
}

impl WindowFigures {
    pub fn new() -> Self {
        Self::default()
    }

    /// The samples of `Scope::Agent` for the window that is closing. The first call measures
    /// from the start of the process.
    pub fn samples(&mut self, process: &Process, out: &mut Vec<Sample>) {
        let now = Totals {
            cpu_seconds: process.cpu_seconds,
            samples_taken: telemetry::get(Counter::SamplesTaken),
            samples_missed: telemetry::get(Counter::SamplesMissed),
            errors: errors_total(),
            dropped_points: dropped_points_total(),
        };
        let before = self.last.replace(now).unwrap_or_default();
        let delta = |a: u64, b: u64| a.saturating_sub(b) as f64;
        let values = [
            (
                Metric::AgentCpuTime,
                (now.cpu_seconds - before.cpu_seconds).max(0.0),
            ),
            (Metric::AgentResidentMemory, process.resident_bytes as f64),
            (
                Metric::AgentSamplesTaken,
                delta(now.samples_taken, before.samples_taken),
            ),
            (
                Metric::AgentSamplesMissed,
                delta(now.samples_missed, before.samples_missed),
            ),
            (
                Metric::AgentPublishLatency,
                telemetry::gauge(Gauge::PublishLatencyUs) as f64,
            ),
            (Metric::AgentErrors, delta(now.errors, before.errors)),
            (
                Metric::AgentQueuedWindows,
                telemetry::gauge(Gauge::QueuedWindows) as f64,
            ),
            (
                Metric::AgentSpooledWindows,
                telemetry::gauge(Gauge::SpooledWindows) as f64,
            ),
            (
                Metric::AgentDroppedPoints,
                delta(now.dropped_points, before.dropped_points),
            ),
        ];
        out.extend(
            values
                .into_iter()
                .map(|(metric, value)| Sample::new(Scope::Agent, metric, value)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_skip_a_command_name_with_spaces_and_parentheses() {
        let stat =
            "1234 (a b) c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 5 1000 200";
        assert_eq!(cpu_ticks(stat), Some(300));
        assert_eq!(cpu_ticks("garbage"), None);
        assert_eq!(cpu_ticks("1 (x) S 1"), None);
    }

    #[test]
    fn resident_memory_comes_from_vmrss() {
        let status = "Name:\tagent\nVmHWM:\t  9000 kB\nVmRSS:\t  8192 kB\n";
        assert_eq!(vm_rss_bytes(status), Some(8192 * 1024));
        assert_eq!(vm_rss_bytes("Name:\tx\n"), None);
    }

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let p = Process::read();
        assert!(p.resident_bytes > 0);
        assert!(p.cpu_seconds >= 0.0);
        let missing = Process::read_from(Path::new("/nonexistent"));
        assert_eq!(missing, Process::default());
    }

    #[test]
    fn prometheus_text_has_help_type_and_every_counter() {
        let text = prometheus_text(&Process {
            cpu_seconds: 1.5,
            resident_bytes: 4096,
        });
        assert!(text
            .contains("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.5\n"));
        assert!(text.contains("process_resident_memory_bytes 4096\n"));
        for c in Counter::ALL {
            assert!(
                text.contains(&format!("endpoint_metrics_agent_{}_total ", c.name())),
                "{c:?}"
            );
        }
        assert!(text.contains("endpoint_metrics_agent_errors_total{kind=\"sink_write_errors\"} "));
        // Every sample line is `name{labels} value` with a number.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn window_figures_are_deltas_for_counters() {
        let mut w = WindowFigures::new();
        let mut out = Vec::new();
        let p = Process {
            cpu_seconds: 2.0,
            resident_bytes: 100,
        };
        w.samples(&p, &mut out);
        assert_eq!(out.len(), 9);
        out.clear();
        telemetry::add(Counter::SamplesTaken, 5);
        w.samples(
            &Process {
                cpu_seconds: 2.5,
                resident_bytes: 200,
            },
            &mut out,
        );
        let value = |m: Metric| out.iter().find(|s| s.key.metric == m).unwrap().value;
        assert_eq!(value(Metric::AgentCpuTime), 0.5);
        assert_eq!(value(Metric::AgentResidentMemory), 200.0);
        // Other tests in this process may count too; at least our five are there.
        assert!(value(Metric::AgentSamplesTaken) >= 5.0);
        assert!(out.iter().all(|s| s.key.scope == Scope::Agent));
    }
}

//! Host CPU, memory and disk, from `/proc/stat`, `/proc/meminfo` and `statvfs`.
//!
//! The two proc files are opened once and re-read from offset 0 each sample (cheaper than opening
//! them again), into a buffer that is reused, and opened again when the path names another file
//! (checked every [`REOPEN_CHECK_EVERY`] reads: a `proc_root` whose files were replaced never
//! leaves a stale value). Every read is bounded. No process table is scanned.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::catalog::{Metric, Sample, Scope};

/// `/proc/stat` is read in chunks of this size until the per-CPU lines end; the interrupt lines
/// after them can be long on big hosts and are not needed.
const PROC_STAT_CHUNK_BYTES: usize = 16 * 1024;

/// `/proc/stat` is read at most this far (its cpu lines: about 100 bytes per CPU, 1 MiB is over
/// 8,000 CPUs); a file that goes on without an `intr` line is cut there and its cpu lines used.
pub const MAX_PROC_STAT_BYTES: usize = 1024 * 1024;

/// `/proc/meminfo` is about 1.5 KB; it is read at most this far.
pub const MAX_MEMINFO_BYTES: u64 = 64 * 1024;

/// Every this many reads, a kept-open file is checked against its path (one `stat`).
pub const REOPEN_CHECK_EVERY: u32 = 10;

/// A file kept open and re-read from the start; opened again when its path names another file.
struct KeptOpen {
    path: PathBuf,
    file: File,
    reads: u32,
}

impl KeptOpen {
    fn open(path: PathBuf) -> Result<KeptOpen, HostError> {
        match File::open(&path) {
            Ok(file) => Ok(KeptOpen {
                path,
                file,
                reads: 0,
            }),
            Err(source) => Err(HostError::Io { path, source }),
        }
    }

    /// The file, at offset 0: the same one, or the one its path names now.
    fn rewound(&mut self) -> Result<&mut File, HostError> {
        self.reads = self.reads.wrapping_add(1);
        if self.reads % REOPEN_CHECK_EVERY == 0 {
            let now = std::fs::metadata(&self.path).map_err(|source| self.io(source))?;
            let open = self.file.metadata().map_err(|source| self.io(source))?;
            if (now.dev(), now.ino()) != (open.dev(), open.ino()) {
                tracing::info!(path = %self.path.display(), "file replaced; opened again");
                self.file = File::open(&self.path).map_err(|source| self.io(source))?;
            }
        }
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(|source| self.io(source))?;
        Ok(&mut self.file)
    }

    fn io(&self, source: io::Error) -> HostError {
        HostError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

/// A host collector error: which file, and why.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {reason}")]
    Parse { path: PathBuf, reason: &'static str },
}

/// CPU time counters of the aggregate `cpu` line, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub busy: u64,
    pub total: u64,
}

/// One reading of the host.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostReading {
    /// Sum of per-core busy percent (0..100 x CPUs); None on the first reading or a counter reset.
    pub cpu_utilization: Option<f64>,
    pub cpus: u32,
    pub memory_utilization: Option<f64>,
    pub disk_utilization: Option<f64>,
}

impl HostReading {
    /// The published samples, as the spec defines them.
    pub fn samples(&self, out: &mut Vec<Sample>) {
        if let Some(cpu) = self.cpu_utilization {
            out.push(Sample::new(Scope::Instance, Metric::CpuUtilization, cpu));
            if self.cpus > 0 {
                out.push(Sample::new(
                    Scope::Instance,
                    Metric::CpuUtilizationNormalized,
                    cpu / self.cpus as f64,
                ));
            }
        }
        if let Some(mem) = self.memory_utilization {
            out.push(Sample::new(Scope::Instance, Metric::MemoryUtilization, mem));
        }
        if let Some(disk) = self.disk_utilization {
            out.push(Sample::new(Scope::Instance, Metric::DiskUtilization, disk));
        }
    }
}

/// Reads the host. Owns its open files; meant to run on a collector thread.
pub struct HostCollector {
    stat: KeptOpen,
    meminfo: KeptOpen,
    disk_path: CString,
    disk_path_display: PathBuf,
    buffer: Vec<u8>,
    previous: Option<CpuTimes>,
}

impl HostCollector {
    pub fn new(proc_root: &Path, disk_path: &Path) -> Result<Self, HostError> {
        let stat = KeptOpen::open(proc_root.join("stat"))?;
        let meminfo = KeptOpen::open(proc_root.join("meminfo"))?;
        let disk_path_c =
            CString::new(disk_path.as_os_str().as_bytes()).map_err(|_| HostError::Parse {
                path: disk_path.to_path_buf(),
                reason: "path contains a NUL byte",
            })?;
        Ok(HostCollector {
            stat,
            meminfo,
            disk_path: disk_path_c,
            disk_path_display: disk_path.to_path_buf(),
            buffer: Vec::with_capacity(PROC_STAT_CHUNK_BYTES),
            previous: None,
        })
    }

    /// Takes one reading. A part that fails is left out of the reading and reported in `errors`.
    pub fn read(&mut self, errors: &mut Vec<HostError>) -> HostReading {
        let mut reading = HostReading::default();
        match self.read_cpu() {
            Ok((times, cpus)) => {
                reading.cpus = cpus;
                reading.cpu_utilization = self
                    .previous
                    .and_then(|prev| cpu_utilization(prev, times, cpus));
                self.previous = Some(times);
            }
            Err(e) => errors.push(e),
        }
        match self.read_memory() {
            Ok(m) => reading.memory_utilization = Some(m),
            Err(e) => errors.push(e),
        }
        match disk_utilization(&self.disk_path) {
            Ok(d) => reading.disk_utilization = d,
            Err(source) => errors.push(HostError::Io {
                path: self.disk_path_display.clone(),
                source,
            }),
        }
        reading
    }

    fn read_cpu(&mut self) -> Result<(CpuTimes, u32), HostError> {
        let file = self.stat.rewound()?;
        self.buffer.clear();
        loop {
            let len = self.buffer.len();
            let want = PROC_STAT_CHUNK_BYTES.min(MAX_PROC_STAT_BYTES - len);
            if want == 0 {
                break;
            }
            self.buffer.resize(len + want, 0);
            let n = match file.read(&mut self.buffer[len..]) {
                Ok(n) => n,
                Err(source) => return Err(self.stat.io(source)),
            };
            self.buffer.truncate(len + n);
            // The cpu lines come first; once a later line has started, the rest is not needed.
            if n == 0 || self.buffer.windows(6).any(|w| w == b"\nintr ") {
                break;
            }
        }
        let parse_error = |reason| HostError::Parse {
            path: self.stat.path.clone(),
            reason,
        };
        match parse_proc_stat(&self.buffer) {
            None => Err(parse_error(
                "no aggregate cpu line with at least 4 counters",
            )),
            // Without cpuN lines the CPU count is unknown: no value, never a false 0.
            Some((_, 0)) => Err(parse_error("no cpuN lines")),
            Some(found) => Ok(found),
        }
    }

    fn read_memory(&mut self) -> Result<f64, HostError> {
        let file = self.meminfo.rewound()?;
        self.buffer.clear();
        if let Err(source) = file.take(MAX_MEMINFO_BYTES).read_to_end(&mut self.buffer) {
            return Err(self.meminfo.io(source));
        }
        parse_meminfo(&self.buffer).ok_or(HostError::Parse {
            path: self.meminfo.path.clone(),
            reason: "no MemTotal, or neither MemAvailable nor MemFree",
        })
    }
}

/// Parses `/proc/stat`: the aggregate line's busy and total ticks, and the number of `cpuN` lines.
pub fn parse_proc_stat(text: &[u8]) -> Option<(CpuTimes, u32)> {
    let mut times = None;
    let mut cpus = 0u32;
    for line in text.split(|&b| b == b'\n') {
        if let Some(rest) = line.strip_prefix(b"cpu ") {
            times = parse_cpu_line(rest);
        } else if line.starts_with(b"cpu") {
            cpus += 1;
        } else if !line.is_empty() && times.is_some() {
            break;
        }
    }
    times.map(|t| (t, cpus))
}

fn parse_cpu_line(rest: &[u8]) -> Option<CpuTimes> {
    // user nice system idle iowait irq softirq steal guest guest_nice; guest time is already
    // counted in user and nice, so only the first eight add up to the total.
    let mut fields = [0u64; 8];
    let mut n = 0;
    for field in rest.split(|&b| b == b' ').filter(|f| !f.is_empty()).take(8) {
        fields[n] = std::str::from_utf8(field).ok()?.parse().ok()?;
        n += 1;
    }
    if n < 4 {
        return None;
    }
    let total: u64 = fields[..n]
        .iter()
        .try_fold(0u64, |acc, &v| acc.checked_add(v))?;
    let idle = fields[3] + fields[4];
    Some(CpuTimes {
        busy: total.saturating_sub(idle),
        total,
    })
}

/// Busy share between two readings as the sum of per-core percent (0..100 x CPUs).
pub fn cpu_utilization(prev: CpuTimes, now: CpuTimes, cpus: u32) -> Option<f64> {
    let total = now.total.checked_sub(prev.total)?;
    let busy = now.busy.checked_sub(prev.busy)?;
    if total == 0 || busy > total {
        return None;
    }
    Some(busy as f64 / total as f64 * 100.0 * cpus as f64)
}

/// Parses `/proc/meminfo` into the used share of memory, in percent.
pub fn parse_meminfo(text: &[u8]) -> Option<f64> {
    let (mut total, mut available, mut free, mut buffers, mut cached) =
        (None, None, None, 0u64, 0u64);
    for line in text.split(|&b| b == b'\n') {
        let mut parts = line.split(|&b| b == b' ').filter(|p| !p.is_empty());
        let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Some(value) = std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        else {
            continue;
        };
        match key {
            b"MemTotal:" => total = Some(value),
            b"MemAvailable:" => available = Some(value),
            b"MemFree:" => free = Some(value),
            b"Buffers:" => buffers = value,
            b"Cached:" => cached = value,
            _ => {}
        }
    }
    let total = total.filter(|&t| t > 0)?;
    // Kernels before 3.14 have no MemAvailable; free + buffers + page cache approximates it.
    // Saturating: a garbled file's huge values must not overflow.
    let available =
        available.or_else(|| free.map(|f| f.saturating_add(buffers).saturating_add(cached)))?;
    Some(total.saturating_sub(available) as f64 / total as f64 * 100.0)
}

/// Used share of the file system at `path`, as `df` computes it: used / (used + available to
/// unprivileged users). None for a file system that reports no blocks.
fn disk_utilization(path: &CString) -> io::Result<Option<f64>> {
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid NUL-terminated string and `st` a valid out-pointer.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let used = (st.f_blocks as u64).saturating_sub(st.f_bfree as u64);
    let denominator = used + st.f_bavail as u64;
    if denominator == 0 {
        return Ok(None);
    }
    Ok(Some(used as f64 / denominator as f64 * 100.0))
}

impl crate::collectors::worker::Collect for HostCollector {
    type Reading = (HostReading, Vec<HostError>);
    fn collect(&mut self, _tick_ms: u64) -> Self::Reading {
        let mut errors = Vec::new();
        let reading = self.read(&mut errors);
        (reading, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &[u8] = b"cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\ncpu1 50 0 25 400 25 0 0 0 0 0\nintr 1 2 3\nctxt 5\n";

    #[test]
    fn proc_stat_gives_busy_total_and_cpu_count() {
        let (times, cpus) = parse_proc_stat(STAT).unwrap();
        assert_eq!(
            times,
            CpuTimes {
                busy: 150,
                total: 1000
            }
        );
        assert_eq!(cpus, 2);
    }

    #[test]
    fn cpu_utilization_is_the_sum_over_cores() {
        let prev = CpuTimes {
            busy: 150,
            total: 1000,
        };
        let now = CpuTimes {
            busy: 250,
            total: 1200,
        };
        // 100 busy of 200 ticks on 2 CPUs: 50 % per core, 100 summed.
        assert_eq!(cpu_utilization(prev, now, 2), Some(100.0));
        assert_eq!(
            cpu_utilization(now, prev, 2),
            None,
            "counters going back are refused"
        );
        assert_eq!(cpu_utilization(now, now, 2), None, "no time passed");
    }

    #[test]
    fn garbage_proc_stat_is_refused() {
        assert!(parse_proc_stat(b"").is_none());
        assert!(parse_proc_stat(b"cpu  1 2\n").is_none());
        assert!(parse_proc_stat(b"cpu  a b c d\n").is_none());
        assert!(
            parse_proc_stat(b"cpu  18446744073709551615 1 0 0\n").is_none(),
            "overflow"
        );
    }

    #[test]
    fn meminfo_with_huge_counters_is_a_bounded_value_not_an_overflow() {
        let max = u64::MAX;
        let text =
            format!("MemTotal: 1000 kB\nMemFree: {max} kB\nBuffers: {max} kB\nCached: 1 kB\n");
        assert_eq!(parse_meminfo(text.as_bytes()), Some(0.0));
    }

    #[test]
    fn meminfo_uses_available_or_falls_back() {
        let text = b"MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    250 kB\n";
        assert_eq!(parse_meminfo(text), Some(75.0));
        let old = b"MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 350 kB\n";
        assert_eq!(parse_meminfo(old), Some(50.0));
        assert_eq!(parse_meminfo(b"MemTotal: 0 kB\nMemAvailable: 0 kB\n"), None);
        assert_eq!(parse_meminfo(b"garbage"), None);
    }

    #[test]
    fn fixture_tree_reads_and_reports_deltas() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("stat"), STAT).unwrap();
        std::fs::write(
            dir.path().join("meminfo"),
            b"MemTotal: 1000 kB\nMemAvailable: 400 kB\n",
        )
        .unwrap();
        let mut c = HostCollector::new(dir.path(), dir.path()).unwrap();
        let mut errors = Vec::new();
        let first = c.read(&mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(first.cpu_utilization, None, "no delta on the first reading");
        assert_eq!(first.memory_utilization, Some(60.0));
        assert!(first.disk_utilization.is_some());
        // Rewrite in place: the open file sees the new content.
        std::fs::write(
            dir.path().join("stat"),
            b"cpu  200 0 50 900 50 0 0 0 0 0\ncpu0 1\ncpu1 1\n",
        )
        .unwrap();
        let second = c.read(&mut errors);
        assert_eq!(second.cpu_utilization, Some(100.0));
        let mut samples = Vec::new();
        second.samples(&mut samples);
        let normalized = samples
            .iter()
            .find(|s| s.key.metric == Metric::CpuUtilizationNormalized)
            .unwrap();
        assert_eq!(normalized.value, 50.0);
    }

    fn tree(stat: &[u8]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("stat"), stat).unwrap();
        std::fs::write(
            dir.path().join("meminfo"),
            b"MemTotal: 1000 kB\nMemAvailable: 400 kB\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn proc_stat_without_cpu_lines_is_an_error_not_a_false_zero() {
        let dir = tree(b"cpu  100 0 50 800 50 0 0 0 0 0\nintr 1\n");
        let mut c = HostCollector::new(dir.path(), dir.path()).unwrap();
        let mut errors = Vec::new();
        for _ in 0..2 {
            let r = c.read(&mut errors);
            assert_eq!(r.cpu_utilization, None);
        }
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].to_string().contains("no cpuN lines"));
    }

    #[test]
    fn a_huge_proc_stat_is_read_only_up_to_its_cap() {
        // An aggregate line, two CPUs, then 4 MiB without an intr line.
        let mut stat = b"cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1\ncpu1 1\n".to_vec();
        stat.extend(std::iter::repeat_n(b'x', 4 * MAX_PROC_STAT_BYTES));
        let dir = tree(&stat);
        let mut c = HostCollector::new(dir.path(), dir.path()).unwrap();
        let mut errors = Vec::new();
        let r = c.read(&mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(r.cpus, 2);
        assert!(c.buffer.len() <= MAX_PROC_STAT_BYTES);
    }

    #[test]
    fn a_replaced_file_is_opened_again_within_the_check_interval() {
        let dir = tree(STAT);
        let mut c = HostCollector::new(dir.path(), dir.path()).unwrap();
        let mut errors = Vec::new();
        assert_eq!(c.read(&mut errors).memory_utilization, Some(60.0));
        // Deleted and written anew: a new inode, which the open file never sees.
        std::fs::remove_file(dir.path().join("meminfo")).unwrap();
        std::fs::write(
            dir.path().join("meminfo"),
            b"MemTotal: 1000 kB\nMemAvailable: 900 kB\n",
        )
        .unwrap();
        let seen: Vec<Option<f64>> = (0..REOPEN_CHECK_EVERY)
            .map(|_| c.read(&mut errors).memory_utilization)
            .collect();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(seen.last(), Some(&Some(10.0)), "{seen:?}");
    }

    #[test]
    fn missing_proc_is_an_error_naming_the_file() {
        let err = HostCollector::new(Path::new("/nonexistent-proc"), Path::new("/"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent-proc/stat"));
    }

    #[test]
    fn real_host_reads() {
        let mut c = HostCollector::new(Path::new("/proc"), Path::new("/")).unwrap();
        let mut errors = Vec::new();
        c.read(&mut errors);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let r = c.read(&mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(r.cpus >= 1);
        let cpu = r.cpu_utilization.unwrap();
        assert!((0.0..=100.0 * r.cpus as f64).contains(&cpu), "{cpu}");
        assert!((0.0..=100.0).contains(&r.memory_utilization.unwrap()));
        assert!((0.0..=100.0).contains(&r.disk_utilization.unwrap()));
    }
}

//! Per-container CPU and memory from the containers' cgroup files (v2 and v1; systemd and
//! cgroupfs drivers), for the model copies in the discovery [`Inventory`].
//!
//! Each container's files are opened once, when it appears, and re-read from offset 0 each
//! sample (2-10x cheaper than opening them again); they are closed when it disappears. The
//! container's cgroup is found from its first process's `/proc/<pid>/cgroup`, so the cgroup
//! driver and runtime layout do not matter; without a PID the two Docker layouts are tried.
//!
//! Memory is counted as `docker stats` counts it: usage minus inactive file pages (v2
//! `memory.current - inactive_file`, v1 `memory.usage_in_bytes - total_inactive_file`).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use crate::catalog::{Metric, Sample, Scope};
use crate::cgroup_path::{cgroup_paths, container_id_from_cgroup, CgroupPaths};
use crate::discovery::{ContainerInfo, Inventory};

/// A cgroup file is read at most this far: the largest, `memory.stat`, is about 2 KB; anything
/// much bigger is not a cgroup file.
pub const MAX_CGROUP_FILE_BYTES: u64 = 64 * 1024;

/// `memory.stat` is re-read when the container's memory usage changed since it was last read,
/// and at least every this many samples (10 s at the default 1 s sampling) when it did not.
/// It is the dearest cgroup file by far: the kernel formats 40-70 counters for each read (on
/// v1 it also sums the hierarchy for the `total_*` lines), which made it about 30 % of the whole
/// agent's CPU with 50 copies (perf, docs/performance.md), where `memory.current` and the CPU
/// counter are one number each. A copy whose usage moves every second still gets it every
/// second; an idle one's `inactive_file` is then at most this many samples old.
pub const MEMORY_STAT_MAX_AGE_SAMPLES: u32 = 10;

/// A container's CPU use may exceed the host's CPUs by this factor before the reading counts as
/// impossible: the counter and the clock are read a few microseconds apart.
pub const CPU_OVERSHOOT_ALLOWED: f64 = 1.1;

/// A cgroup collector error: which file, and why.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {reason}")]
    Parse { path: PathBuf, reason: &'static str },
    #[error("container {short_id}: no cgroup found (tried {tried})")]
    NotFound { short_id: Arc<str>, tried: String },
}

/// The cgroup hierarchy the host runs.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

impl CgroupVersion {
    /// v2 (unified) if the root has `cgroup.controllers`; v1 otherwise (a hybrid host's
    /// controllers, which the agent reads, are v1).
    pub fn detect(cgroup_root: &Path) -> CgroupVersion {
        if cgroup_root.join("cgroup.controllers").exists() {
            CgroupVersion::V2
        } else {
            CgroupVersion::V1
        }
    }
}

/// What the host has, to normalize against when a container has no limit of its own.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct HostCapacity {
    pub cpus: u32,
    pub memory_bytes: u64,
}

impl HostCapacity {
    /// Counts the `cpuN` lines of `/proc/stat` and reads `MemTotal` from `/proc/meminfo`, each
    /// read no further than the host collector reads them (the cpu lines come first).
    pub fn read(proc_root: &Path) -> Result<HostCapacity, CgroupError> {
        use std::io::Read as _;
        let read = |name: &str, limit: u64| {
            let path = proc_root.join(name);
            let mut bytes = Vec::new();
            File::open(&path)
                .and_then(|f| f.take(limit).read_to_end(&mut bytes))
                .map(|_| (path.clone(), String::from_utf8_lossy(&bytes).into_owned()))
                .map_err(|source| CgroupError::Io { path, source })
        };
        let stat_limit = crate::collectors::host::MAX_PROC_STAT_BYTES as u64;
        let (stat_path, stat) = read("stat", stat_limit)?;
        let cpus = stat
            .lines()
            .filter(|l| {
                l.strip_prefix("cpu")
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
            })
            .count();
        let (meminfo_path, meminfo) = read("meminfo", crate::collectors::host::MAX_MEMINFO_BYTES)?;
        let memory_kib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
        // A MemTotal past u64 bytes is no host's: refused, never an overflow.
        let memory_bytes = memory_kib.and_then(|kib| kib.checked_mul(1024));
        match (u32::try_from(cpus).ok().filter(|c| *c > 0), memory_bytes) {
            (Some(cpus), Some(memory_bytes)) if memory_bytes > 0 => {
                Ok(HostCapacity { cpus, memory_bytes })
            }
            (None, _) => Err(CgroupError::Parse {
                path: stat_path,
                reason: "no cpuN lines",
            }),
            _ => Err(CgroupError::Parse {
                path: meminfo_path,
                reason: "no MemTotal",
            }),
        }
    }
}

/// One container's usage in one sample.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerUsage {
    pub component: Arc<str>,
    pub short_id: Arc<str>,
    /// CPU used over the CPUs it may use (its limit, else the host's), 0..100. None on its first
    /// sample or after a counter reset.
    pub cpu_utilization_normalized: Option<f64>,
    /// Memory used (usage minus inactive file) over its reservation, else limit, else host memory.
    pub memory_utilization_normalized: Option<f64>,
    pub memory_used_bytes: Option<u64>,
}

/// One reading of every model copy, with the instance's reservations.
#[derive(Clone, Debug, Default)]
pub struct ContainerReading {
    pub containers: Vec<ContainerUsage>,
    /// `CPUReservation`: the copies' CPU limits over the host's CPUs, percent.
    pub cpu_reservation_percent: f64,
    /// `MemoryReservation`: the copies' memory reservations (else limits) over host memory.
    pub memory_reservation_percent: f64,
    /// The inventory this reading measured (for GPU attribution in the same tick).
    pub inventory: Arc<Inventory>,
}

impl ContainerReading {
    /// The published samples.
    pub fn samples(&self, out: &mut Vec<Sample>) {
        out.push(Sample::new(
            Scope::Instance,
            Metric::CpuReservation,
            self.cpu_reservation_percent,
        ));
        out.push(Sample::new(
            Scope::Instance,
            Metric::MemoryReservation,
            self.memory_reservation_percent,
        ));
        for c in &self.containers {
            let scope = Scope::Container {
                component: c.component.clone(),
                container_id: c.short_id.clone(),
            };
            if let Some(cpu) = c.cpu_utilization_normalized {
                out.push(Sample::new(
                    scope.clone(),
                    Metric::CpuUtilizationNormalized,
                    cpu,
                ));
            }
            if let Some(mem) = c.memory_utilization_normalized {
                out.push(Sample::new(scope, Metric::MemoryUtilizationNormalized, mem));
            }
        }
    }
}

/// Where a container's CPU counter lives and its unit.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum CpuCounter {
    /// v2 `cpu.stat`, line `usage_usec`.
    CpuStatUsec,
    /// v1 `cpuacct.usage`, nanoseconds.
    CpuacctNanos,
}

/// A file kept open and re-read from the start.
struct OpenFile {
    path: PathBuf,
    file: File,
}

impl OpenFile {
    fn open(path: PathBuf) -> Result<OpenFile, CgroupError> {
        match File::open(&path) {
            Ok(file) => Ok(OpenFile { path, file }),
            Err(source) => Err(CgroupError::Io { path, source }),
        }
    }

    /// Reads the whole file into `buffer` with one `pread` at offset 0: one system call where
    /// seek + read + read-to-EOF took three. A cgroup file is one seq_file record, produced
    /// whole by one `show` call, so a read into a buffer larger than the file returns all of
    /// it; a read that fills the buffer (`MAX_CGROUP_FILE_BYTES + 1`) is not a cgroup file. A
    /// `pread` at offset 0 also restarts the seq_file without generating the text twice.
    fn read_into<'b>(&self, buffer: &'b mut Vec<u8>) -> Result<&'b str, CgroupError> {
        buffer.resize(READ_BUFFER_BYTES, 0);
        let n = loop {
            match self.file.read_at(buffer, 0) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(CgroupError::Io {
                        path: self.path.clone(),
                        source,
                    })
                }
            }
        };
        if n as u64 > MAX_CGROUP_FILE_BYTES {
            return Err(self.parse_error("larger than any cgroup file"));
        }
        std::str::from_utf8(&buffer[..n]).map_err(|_| self.parse_error("not UTF-8 text"))
    }

    fn parse_error(&self, reason: &'static str) -> CgroupError {
        CgroupError::Parse {
            path: self.path.clone(),
            reason,
        }
    }
}

/// The read buffer: one byte past the largest cgroup file, so a larger one shows as full.
const READ_BUFFER_BYTES: usize = MAX_CGROUP_FILE_BYTES as usize + 1;

struct CgroupFiles {
    cpu: OpenFile,
    cpu_counter: CpuCounter,
    memory_usage: OpenFile,
    memory_stat: OpenFile,
    /// `inactive_file` (v2) or `total_inactive_file` (v1, hierarchical like the usage).
    inactive_key: &'static str,
    /// The last `memory.stat` reading, reused while the usage stays the same (see
    /// [`MEMORY_STAT_MAX_AGE_SAMPLES`]).
    inactive: Option<InactiveFile>,
}

/// `inactive_file` as last read from `memory.stat`, with the usage it was read alongside.
#[derive(Copy, Clone, Debug)]
struct InactiveFile {
    bytes: u64,
    usage: u64,
    /// Samples since it was read.
    age: u32,
}

struct Tracked {
    info: ContainerInfo,
    /// None while its cgroup cannot be found; retried each sample, reported once.
    files: Option<CgroupFiles>,
    reported_missing: bool,
    /// CPU time (ns) and monotonic time (ns) of the previous sample.
    previous: Option<(u64, u64)>,
}

/// Reads the model copies' cgroups. Owns their open files; meant to run on a collector thread.
pub struct CgroupCollector {
    proc_root: PathBuf,
    cgroup_root: PathBuf,
    version: CgroupVersion,
    host: HostCapacity,
    inventory_rx: watch::Receiver<Arc<Inventory>>,
    inventory: Arc<Inventory>,
    /// `tracked` follows `inventory` (false until the first reading, and after each change).
    synced: bool,
    tracked: HashMap<String, Tracked>,
    buffer: Vec<u8>,
    epoch: Instant,
}

impl CgroupCollector {
    pub fn new(
        proc_root: &Path,
        cgroup_root: &Path,
        host: HostCapacity,
        mut inventory_rx: watch::Receiver<Arc<Inventory>>,
    ) -> CgroupCollector {
        let inventory = inventory_rx.borrow_and_update().clone();
        CgroupCollector {
            proc_root: proc_root.to_path_buf(),
            cgroup_root: cgroup_root.to_path_buf(),
            version: CgroupVersion::detect(cgroup_root),
            host,
            inventory_rx,
            inventory,
            synced: false,
            tracked: HashMap::new(),
            buffer: Vec::with_capacity(READ_BUFFER_BYTES),
            epoch: Instant::now(),
        }
    }

    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// Takes one reading now.
    pub fn read(&mut self, errors: &mut Vec<CgroupError>) -> ContainerReading {
        let now_ns = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.read_at(now_ns, errors)
    }

    /// Takes one reading at monotonic time `now_ns` (the clock is a parameter so tests and
    /// benchmarks can drive it).
    pub fn read_at(&mut self, now_ns: u64, errors: &mut Vec<CgroupError>) -> ContainerReading {
        if self.inventory_rx.has_changed().unwrap_or(false) {
            self.inventory = self.inventory_rx.borrow_and_update().clone();
            self.synced = false;
        }
        // Only a new inventory changes what is tracked: no per-tick comparison of every record.
        if !self.synced {
            self.sync_tracked();
            self.synced = true;
        }
        let mut reading = ContainerReading {
            containers: Vec::with_capacity(self.tracked.len()),
            inventory: self.inventory.clone(),
            ..Default::default()
        };
        let (mut cpu_cores, mut memory_bytes) = (0.0, 0u64);
        for info in self.inventory.containers.values() {
            cpu_cores += info.cpu_limit_cores.unwrap_or(0.0);
            memory_bytes = memory_bytes.saturating_add(info.memory_reserved_bytes().unwrap_or(0));
        }
        reading.cpu_reservation_percent = cpu_cores * 100.0 / f64::from(self.host.cpus);
        reading.memory_reservation_percent =
            memory_bytes as f64 * 100.0 / self.host.memory_bytes as f64;

        for tracked in self.tracked.values_mut() {
            if tracked.files.is_none() {
                match locate(
                    &self.proc_root,
                    &self.cgroup_root,
                    self.version,
                    &tracked.info,
                ) {
                    Ok(files) => tracked.files = Some(files),
                    Err(e) => {
                        if !tracked.reported_missing {
                            tracked.reported_missing = true;
                            errors.push(e);
                        }
                        continue;
                    }
                }
            }
            if let Some(usage) = sample(tracked, self.host, now_ns, &mut self.buffer, errors) {
                reading.containers.push(usage);
            }
        }
        reading
            .containers
            .sort_by(|a, b| a.short_id.cmp(&b.short_id));
        reading
    }

    /// Starts tracking new copies and closes the files of the ones gone.
    fn sync_tracked(&mut self) {
        let containers = &self.inventory.containers;
        self.tracked.retain(|id, t| {
            // A changed record (new limits, a restart with a new PID) is tracked afresh.
            containers.get(id) == Some(&t.info)
        });
        for (id, info) in containers {
            if !self.tracked.contains_key(id) {
                let tracked = Tracked {
                    info: info.clone(),
                    files: None,
                    reported_missing: false,
                    previous: None,
                };
                self.tracked.insert(id.clone(), tracked);
            }
        }
    }
}

/// Reads one container's files. Errors leave its values out of this sample.
fn sample(
    tracked: &mut Tracked,
    host: HostCapacity,
    now_ns: u64,
    buffer: &mut Vec<u8>,
    errors: &mut Vec<CgroupError>,
) -> Option<ContainerUsage> {
    let files = tracked.files.as_mut()?;
    let info = &tracked.info;
    let mut usage = ContainerUsage {
        component: info.component.clone(),
        short_id: info.short_id.clone(),
        cpu_utilization_normalized: None,
        memory_utilization_normalized: None,
        memory_used_bytes: None,
    };
    match read_cpu_ns(files, buffer) {
        Ok(cpu_ns) => {
            let cores = info
                .cpu_limit_cores
                .filter(|c| *c > 0.0)
                .unwrap_or(f64::from(host.cpus));
            if let Some((prev_cpu, prev_now)) = tracked.previous {
                if cpu_ns >= prev_cpu && now_ns > prev_now {
                    let busy = (cpu_ns - prev_cpu) as f64 / (now_ns - prev_now) as f64;
                    if busy <= f64::from(host.cpus.max(1)) * CPU_OVERSHOOT_ALLOWED {
                        usage.cpu_utilization_normalized = Some(busy * 100.0 / cores);
                    } else {
                        // A counter jump: more CPUs busy than the host has.
                        errors.push(
                            files
                                .cpu
                                .parse_error("CPU counter jumped past the host's CPUs"),
                        );
                    }
                }
            }
            tracked.previous = Some((cpu_ns, now_ns));
        }
        Err(e) => {
            tracked.previous = None;
            errors.push(e);
        }
    }
    match read_memory_bytes(files, buffer) {
        Ok(used) if used > host.memory_bytes => {
            errors.push(
                files
                    .memory_usage
                    .parse_error("more memory than the host has"),
            );
        }
        Ok(used) => {
            let whole = info.memory_reserved_bytes().unwrap_or(host.memory_bytes);
            usage.memory_used_bytes = Some(used);
            usage.memory_utilization_normalized = Some(used as f64 * 100.0 / whole as f64);
        }
        Err(e) => errors.push(e),
    }
    // A container whose files vanished (it exited before discovery said so) is looked up again.
    if usage.memory_used_bytes.is_none() && usage.cpu_utilization_normalized.is_none() {
        tracked.files = None;
    }
    Some(usage)
}

fn read_cpu_ns(files: &mut CgroupFiles, buffer: &mut Vec<u8>) -> Result<u64, CgroupError> {
    let text = files.cpu.read_into(buffer)?;
    match files.cpu_counter {
        CpuCounter::CpuStatUsec => stat_value(text, "usage_usec")
            .map(|usec| usec.saturating_mul(1000))
            .ok_or_else(|| files.cpu.parse_error("no usage_usec line")),
        CpuCounter::CpuacctNanos => text
            .trim()
            .parse::<u64>()
            .map_err(|_| files.cpu.parse_error("not a number")),
    }
}

fn read_memory_bytes(files: &mut CgroupFiles, buffer: &mut Vec<u8>) -> Result<u64, CgroupError> {
    let usage = files
        .memory_usage
        .read_into(buffer)?
        .trim()
        .parse::<u64>()
        .map_err(|_| files.memory_usage.parse_error("not a number"))?;
    let inactive = match files.inactive {
        // The usage has not moved by a page since memory.stat was read, and that read is recent.
        Some(last) if last.usage == usage && last.age + 1 < MEMORY_STAT_MAX_AGE_SAMPLES => {
            files.inactive = Some(InactiveFile {
                age: last.age + 1,
                ..last
            });
            last.bytes
        }
        _ => {
            files.inactive = None;
            let text = files.memory_stat.read_into(buffer)?;
            let bytes = stat_value(text, files.inactive_key)
                .ok_or_else(|| files.memory_stat.parse_error("no inactive_file line"))?;
            files.inactive = Some(InactiveFile {
                bytes,
                usage,
                age: 0,
            });
            bytes
        }
    };
    // As docker stats: subtract only when it is smaller than the usage.
    Ok(if inactive < usage {
        usage - inactive
    } else {
        usage
    })
}

/// The value of `key` in a flat-keyed file (`key value` per line).
/// Searches for the key itself rather than splitting every line (memory.stat has 40-70).
fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.match_indices(key).find_map(|(at, _)| {
        let line_start = at == 0 || text.as_bytes()[at - 1] == b'\n';
        let rest = text[at + key.len()..].strip_prefix(' ')?;
        let value = rest.split('\n').next().unwrap_or_default();
        line_start.then(|| value.trim().parse().ok()).flatten()
    })
}

/// Finds and opens a container's cgroup files.
fn locate(
    proc_root: &Path,
    cgroup_root: &Path,
    version: CgroupVersion,
    info: &ContainerInfo,
) -> Result<CgroupFiles, CgroupError> {
    let proc_text = if info.pid > 0 {
        std::fs::read_to_string(proc_root.join(info.pid.to_string()).join("cgroup")).ok()
    } else {
        None
    };
    // The PID's cgroup is used only if it still names this container (PIDs are reused).
    let proc_text = proc_text.filter(|t| container_id_from_cgroup(t) == Some(info.id.as_str()));
    let mut paths = proc_text.as_deref().map(cgroup_paths).unwrap_or_default();
    // Seen from another cgroup namespace the paths are relative (`/../..`) to the reader's own
    // root and cannot be joined to the cgroup root: the layout guesses below apply instead.
    let outside = |p: Option<&str>| p.is_some_and(|p| p.split('/').any(|c| c == ".."));
    if outside(paths.unified) || outside(paths.memory) || outside(paths.cpuacct.map(|c| c.1)) {
        paths = CgroupPaths::default();
    }
    let relative = |p: &str| p.trim_start_matches('/').to_string();
    // The Docker layouts: cgroupfs driver, then systemd driver.
    let guesses = [
        format!("docker/{}", info.id),
        format!("system.slice/docker-{}.scope", info.id),
    ];
    let mut tried = Vec::new();
    match version {
        CgroupVersion::V2 => {
            let candidates = paths.unified.map(relative).into_iter().chain(guesses);
            for rel in candidates {
                let dir = cgroup_root.join(&rel);
                if dir.join("memory.current").exists() {
                    return open_v2(&dir);
                }
                tried.push(dir.display().to_string());
            }
        }
        CgroupVersion::V1 => {
            // (memory path, cpuacct path)
            let from_pid = paths.memory.map(|m| {
                let cpu = paths.cpuacct.map_or(m, |c| c.1);
                (relative(m), relative(cpu))
            });
            let candidates = from_pid
                .into_iter()
                .chain(guesses.into_iter().map(|g| (g.clone(), g)));
            for (memory_rel, cpu_rel) in candidates {
                let memory_dir = cgroup_root.join("memory").join(&memory_rel);
                // The mount's name is the controller list: `cpuacct`, or `cpu,cpuacct` when
                // mounted together.
                let mounts = paths.cpuacct.map(|c| c.0).into_iter();
                let cpu_dir = mounts
                    .chain(["cpuacct", "cpu,cpuacct"])
                    .map(|m| cgroup_root.join(m).join(&cpu_rel))
                    .find(|d| d.join("cpuacct.usage").exists());
                match cpu_dir {
                    Some(cpu_dir) if memory_dir.join("memory.usage_in_bytes").exists() => {
                        return open_v1(&cpu_dir, &memory_dir);
                    }
                    _ => tried.push(memory_dir.display().to_string()),
                }
            }
        }
    }
    Err(CgroupError::NotFound {
        short_id: info.short_id.clone(),
        tried: tried.join(", "),
    })
}

fn open_v2(dir: &Path) -> Result<CgroupFiles, CgroupError> {
    Ok(CgroupFiles {
        cpu: OpenFile::open(dir.join("cpu.stat"))?,
        cpu_counter: CpuCounter::CpuStatUsec,
        memory_usage: OpenFile::open(dir.join("memory.current"))?,
        memory_stat: OpenFile::open(dir.join("memory.stat"))?,
        inactive_key: "inactive_file",
        inactive: None,
    })
}

fn open_v1(cpu_dir: &Path, memory_dir: &Path) -> Result<CgroupFiles, CgroupError> {
    Ok(CgroupFiles {
        cpu: OpenFile::open(cpu_dir.join("cpuacct.usage"))?,
        cpu_counter: CpuCounter::CpuacctNanos,
        memory_usage: OpenFile::open(memory_dir.join("memory.usage_in_bytes"))?,
        memory_stat: OpenFile::open(memory_dir.join("memory.stat"))?,
        inactive_key: "total_inactive_file",
        inactive: None,
    })
}

impl crate::collectors::worker::Collect for CgroupCollector {
    type Reading = (ContainerReading, Vec<CgroupError>);
    fn collect(&mut self, _tick_ms: u64) -> Self::Reading {
        let mut errors = Vec::new();
        let reading = self.read(&mut errors);
        (reading, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::GpuAllocation;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cgroup");
    const A: &str = "b335296f4e067f587ea22d5e8d0533a18ab9898701b6b4ffd2e3a2fdb7e5f6e8";
    const B: &str = "4f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
    const C: &str = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00";
    const D: &str = "deadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeef";
    const MIB: u64 = 1 << 20;

    /// Copies a fixture tree so the test can advance its counters.
    fn tree(name: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("cp")
            .arg("-r")
            .arg(format!("{FIXTURES}/{name}/."))
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        dir
    }

    fn info(id: &str, component: &str, pid: u32) -> ContainerInfo {
        ContainerInfo {
            id: id.into(),
            short_id: id[..12].into(),
            component: component.into(),
            pid,
            cpu_limit_cores: None,
            memory_reservation_bytes: None,
            memory_limit_bytes: None,
            gpus: GpuAllocation::None,
            address: None,
            upstream_port: None,
            scrape: Default::default(),
            health_check: false,
        }
    }

    fn collector(
        root: &Path,
        containers: Vec<ContainerInfo>,
    ) -> (CgroupCollector, watch::Sender<Arc<Inventory>>) {
        let inventory = Inventory {
            containers: containers.into_iter().map(|c| (c.id.clone(), c)).collect(),
        };
        let (tx, rx) = watch::channel(Arc::new(inventory));
        let proc_root = root.join("proc");
        let host = HostCapacity::read(&proc_root).unwrap();
        assert_eq!(
            host,
            HostCapacity {
                cpus: 2,
                memory_bytes: 4 << 30
            }
        );
        let c = CgroupCollector::new(&proc_root, &root.join("sys/fs/cgroup"), host, rx);
        (c, tx)
    }

    fn usage<'a>(r: &'a ContainerReading, id: &str) -> &'a ContainerUsage {
        r.containers
            .iter()
            .find(|c| *c.short_id == id[..12])
            .unwrap_or_else(|| panic!("{id} missing from {r:?}"))
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn v1_cgroupfs_and_systemd_layouts() {
        let dir = tree("v1");
        let root = dir.path();
        let mut a = info(A, "ic-a", 4242);
        a.cpu_limit_cores = Some(0.5);
        a.memory_limit_bytes = Some(200 * MIB);
        let b = info(B, "ic-b", 4343);
        let (mut c, _tx) = collector(root, vec![a, b]);
        assert_eq!(c.version(), CgroupVersion::V1);
        let mut errors = Vec::new();
        let first = c.read_at(0, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(usage(&first, A).cpu_utilization_normalized, None);
        // usage_in_bytes 100 MiB - total_inactive_file 20 MiB, against the 200 MiB limit.
        assert_eq!(usage(&first, A).memory_used_bytes, Some(80 * MIB));
        assert!(close(
            usage(&first, A).memory_utilization_normalized.unwrap(),
            40.0
        ));
        // No limits: against the host's 4 GiB.
        assert!(close(
            usage(&first, B).memory_utilization_normalized.unwrap(),
            50.0 * 100.0 / 4096.0
        ));
        assert!(close(first.cpu_reservation_percent, 25.0));
        assert!(close(
            first.memory_reservation_percent,
            200.0 * 100.0 / 4096.0
        ));

        let cg = root.join("sys/fs/cgroup");
        std::fs::write(
            cg.join(format!("cpuacct/docker/{A}/cpuacct.usage")),
            "1250000000\n",
        )
        .unwrap();
        std::fs::write(
            cg.join(format!(
                "cpu,cpuacct/system.slice/docker-{B}.scope/cpuacct.usage"
            )),
            "6000000000\n",
        )
        .unwrap();
        let second = c.read_at(1_000_000_000, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        // A: 0.25 s of CPU in 1 s against its 0.5-core limit; B: 1 core of the host's 2.
        assert!(close(
            usage(&second, A).cpu_utilization_normalized.unwrap(),
            50.0
        ));
        assert!(close(
            usage(&second, B).cpu_utilization_normalized.unwrap(),
            50.0
        ));
        let mut samples = Vec::new();
        second.samples(&mut samples);
        assert_eq!(samples.len(), 2 + 2 * 2);
    }

    #[test]
    fn host_capacity_reads_are_bounded_and_refuse_an_impossible_memtotal() {
        let dir = tempfile::tempdir().unwrap();
        // The cpu lines, then 4 MiB of something else: read up to the cap, counted all the same.
        let mut stat = b"cpu  1 0 1 1 0 0 0 0 0 0\ncpu0 1\ncpu1 1\n".to_vec();
        stat.extend(std::iter::repeat_n(
            b'x',
            4 * crate::collectors::host::MAX_PROC_STAT_BYTES,
        ));
        std::fs::write(dir.path().join("stat"), stat).unwrap();
        std::fs::write(dir.path().join("meminfo"), "MemTotal: 2048 kB\n").unwrap();
        let host = HostCapacity::read(dir.path()).unwrap();
        assert_eq!((host.cpus, host.memory_bytes), (2, 2048 * 1024));
        std::fs::write(
            dir.path().join("meminfo"),
            format!("MemTotal: {} kB\n", u64::MAX / 2),
        )
        .unwrap();
        let err = HostCapacity::read(dir.path()).unwrap_err();
        assert!(err.to_string().contains("no MemTotal"), "{err}");
    }

    #[test]
    fn impossible_readings_are_errors_not_huge_percentages() {
        let dir = tree("v2");
        let root = dir.path();
        let (mut c, _tx) = collector(root, vec![info(C, "ic-c", 5151)]);
        let cg = root.join(format!("sys/fs/cgroup/system.slice/docker-{C}.scope"));
        let mut errors = Vec::new();
        c.read_at(0, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        // u64::MAX bytes of memory, and 30 s of CPU in 1 s on a 2-CPU host.
        std::fs::write(cg.join("memory.current"), format!("{}\n", u64::MAX)).unwrap();
        std::fs::write(cg.join("cpu.stat"), "usage_usec 30000000\n").unwrap();
        let r = c.read_at(1_000_000_000, &mut errors);
        assert_eq!(usage(&r, C).memory_utilization_normalized, None);
        assert_eq!(usage(&r, C).cpu_utilization_normalized, None);
        let reasons: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(reasons
            .iter()
            .any(|r| r.contains("more memory than the host has")));
        assert!(reasons.iter().any(|r| r.contains("CPU counter jumped")));
        // Back to sane: the next interval is measured again.
        std::fs::write(cg.join("memory.current"), "209715200\n").unwrap();
        std::fs::write(cg.join("cpu.stat"), "usage_usec 30500000\n").unwrap();
        errors.clear();
        let r = c.read_at(2_000_000_000, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(close(
            usage(&r, C).cpu_utilization_normalized.unwrap(),
            25.0
        ));
    }

    #[test]
    fn a_cgroup_file_past_its_size_cap_is_an_error_not_a_read_of_it_all() {
        let dir = tree("v2");
        let root = dir.path();
        let (mut c, _tx) = collector(root, vec![info(C, "ic-c", 5151)]);
        let cg = root.join(format!("sys/fs/cgroup/system.slice/docker-{C}.scope"));
        let mut errors = Vec::new();
        c.read_at(0, &mut errors);
        let big = "inactive_file 1\n".repeat((MAX_CGROUP_FILE_BYTES / 16 + 1) as usize);
        std::fs::write(cg.join("memory.stat"), big).unwrap();
        // A changed usage, so memory.stat is read again at once.
        std::fs::write(cg.join("memory.current"), format!("{}\n", 300 * MIB)).unwrap();
        c.read_at(1_000_000_000, &mut errors);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0]
            .to_string()
            .contains("larger than any cgroup file"));
    }

    #[test]
    fn memory_stat_is_read_again_when_the_usage_moves_or_the_reading_is_old() {
        let dir = tree("v2");
        let root = dir.path();
        let (mut c, _tx) = collector(root, vec![info(C, "ic-c", 5151)]);
        let cg = root.join(format!("sys/fs/cgroup/system.slice/docker-{C}.scope"));
        let set = |usage_mib: u64, inactive_mib: u64| {
            std::fs::write(cg.join("memory.current"), format!("{}\n", usage_mib * MIB)).unwrap();
            std::fs::write(
                cg.join("memory.stat"),
                format!(
                    "anon 1\nfile 2\ninactive_file {}\nactive_file 3\n",
                    inactive_mib * MIB
                ),
            )
            .unwrap();
        };
        let mut errors = Vec::new();
        let mut used = |t: u64| {
            let r = c.read_at(t * 1_000_000_000, &mut errors);
            usage(&r, C).memory_used_bytes.map(|b| b / MIB)
        };
        set(200, 100);
        assert_eq!(used(0), Some(100));
        // Only the page cache moved: the last memory.stat stands until it is
        // MEMORY_STAT_MAX_AGE_SAMPLES samples old, then it is read again.
        set(200, 50);
        let ages = u64::from(MEMORY_STAT_MAX_AGE_SAMPLES);
        for t in 1..ages {
            assert_eq!(
                used(t),
                Some(100),
                "sample {t}: the reading is {t} samples old"
            );
        }
        assert_eq!(used(ages), Some(150), "read again after {ages} samples");
        // The usage moved: memory.stat is read again at once.
        set(300, 20);
        assert_eq!(used(ages + 1), Some(280));
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn stat_values_are_found_by_whole_key_at_a_line_start() {
        let text = "total_inactive_file 7\ninactive_file_x 8\ninactive_file 9\nusage_usec  12 \n";
        assert_eq!(stat_value(text, "inactive_file"), Some(9));
        assert_eq!(stat_value(text, "total_inactive_file"), Some(7));
        assert_eq!(stat_value(text, "usage_usec"), Some(12));
        assert_eq!(stat_value(text, "active_file"), None);
        assert_eq!(stat_value("inactive_file x\n", "inactive_file"), None);
        assert_eq!(stat_value("", "inactive_file"), None);
    }

    #[test]
    fn v2_systemd_by_pid_and_cgroupfs_by_guess() {
        let dir = tree("v2");
        let root = dir.path();
        let mut cinfo = info(C, "ic-c", 5151);
        cinfo.cpu_limit_cores = Some(2.0);
        cinfo.memory_reservation_bytes = Some(400 * MIB);
        cinfo.memory_limit_bytes = Some(800 * MIB);
        let dinfo = info(D, "ic-d", 0);
        let lost = info(&"e".repeat(64), "ic-e", 999);
        let (mut c, tx) = collector(root, vec![cinfo.clone(), dinfo, lost]);
        assert_eq!(c.version(), CgroupVersion::V2);
        let mut errors = Vec::new();
        let first = c.read_at(0, &mut errors);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(matches!(errors[0], CgroupError::NotFound { .. }));
        assert_eq!(first.containers.len(), 2);
        // memory.current 200 MiB - inactive_file 100 MiB, against the 400 MiB reservation.
        assert!(close(
            usage(&first, C).memory_utilization_normalized.unwrap(),
            25.0
        ));
        assert_eq!(usage(&first, D).memory_used_bytes, Some(MIB));

        let cg = root.join("sys/fs/cgroup");
        std::fs::write(
            cg.join(format!("system.slice/docker-{C}.scope/cpu.stat")),
            "usage_usec 3000000\nuser_usec 2000000\n",
        )
        .unwrap();
        errors.clear();
        let second = c.read_at(1_000_000_000, &mut errors);
        assert!(
            errors.is_empty(),
            "a missing cgroup is reported once: {errors:?}"
        );
        assert!(close(
            usage(&second, C).cpu_utilization_normalized.unwrap(),
            50.0
        ));
        assert!(close(
            usage(&second, D).cpu_utilization_normalized.unwrap(),
            0.0
        ));

        // C leaves the inventory: its files are closed and it is no longer reported.
        tx.send_replace(Arc::new(Inventory {
            containers: [(C.to_string(), cinfo)].into_iter().collect(),
        }));
        let third = c.read_at(2_000_000_000, &mut errors);
        assert_eq!(third.containers.len(), 1);
        assert_eq!(&*third.containers[0].short_id, &C[..12]);
        assert!(close(third.cpu_reservation_percent, 100.0));
    }

    #[test]
    fn a_counter_going_backwards_or_garbage_gives_no_cpu_value() {
        let dir = tree("v2");
        let root = dir.path();
        let (mut c, _tx) = collector(root, vec![info(C, "ic-c", 5151)]);
        let mut errors = Vec::new();
        c.read_at(0, &mut errors);
        let stat = root.join(format!(
            "sys/fs/cgroup/system.slice/docker-{C}.scope/cpu.stat"
        ));
        std::fs::write(&stat, "usage_usec 1\n").unwrap();
        let r = c.read_at(1_000_000_000, &mut errors);
        assert_eq!(usage(&r, C).cpu_utilization_normalized, None);
        std::fs::write(&stat, "nonsense\n").unwrap();
        let r = c.read_at(2_000_000_000, &mut errors);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(matches!(errors[0], CgroupError::Parse { .. }));
        assert!(usage(&r, C).memory_utilization_normalized.is_some());
    }

    #[test]
    fn paths_seen_from_another_cgroup_namespace_fall_back_to_the_docker_layouts() {
        let dir = tree("v2");
        let root = dir.path();
        std::fs::create_dir_all(root.join("proc/6000")).unwrap();
        std::fs::write(
            root.join("proc/6000/cgroup"),
            format!("0::/../../system.slice/docker-{C}.scope\n"),
        )
        .unwrap();
        let (mut c, _tx) = collector(root, vec![info(C, "ic-c", 6000)]);
        let mut errors = Vec::new();
        let r = c.read_at(0, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(usage(&r, C).memory_used_bytes, Some(100 * MIB));
    }
}

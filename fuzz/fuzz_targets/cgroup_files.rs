//! The cgroup reader over a real file tree: a container's `cpu.stat`, `memory.current` and
//! `memory.stat` hold the fuzzer's bytes (two readings of `cpu.stat`); the reading is a value
//! within 0..=110 % CPU (timing slack) and 0..=100 % memory, or a counted error, never a panic.
#![no_main]

use std::path::Path;
use std::sync::Arc;

use endpoint_metrics_agent::collectors::cgroup::{CgroupCollector, HostCapacity};
use endpoint_metrics_agent::discovery::{ContainerInfo, GpuAllocation, Inventory};
use libfuzzer_sys::fuzz_target;

const ID: &str = "deadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeef";

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0xff);
    let cpu_first = parts.next().unwrap_or_default();
    let cpu_second = parts.next().unwrap_or(cpu_first);
    let memory_current = parts.next().unwrap_or(b"1048576\n");
    let memory_stat = parts.next().unwrap_or(b"inactive_file 0\n");

    let root = tempfile::tempdir().unwrap();
    let cg = root.path().join("sys/fs/cgroup");
    write(&cg.join("cgroup.controllers"), b"cpu memory\n");
    let dir = cg.join("docker").join(ID);
    write(&dir.join("cpu.stat"), cpu_first);
    write(&dir.join("memory.current"), memory_current);
    write(&dir.join("memory.stat"), memory_stat);
    let info = ContainerInfo {
        id: ID.into(),
        short_id: ID[..12].into(),
        component: "ic".into(),
        pid: 0,
        cpu_limit_cores: None,
        memory_reservation_bytes: None,
        memory_limit_bytes: None,
        gpus: GpuAllocation::None,
        address: None,
        upstream_port: None,
    };
    let inventory = Inventory {
        containers: [(ID.to_string(), info)].into_iter().collect(),
    };
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(inventory));
    let host = HostCapacity {
        cpus: 2,
        memory_bytes: 4 << 30,
    };
    let mut collector = CgroupCollector::new(&root.path().join("proc"), &cg, host, rx);
    let mut errors = Vec::new();
    for (now_ns, cpu) in [(0, cpu_first), (1_000_000_000, cpu_second)] {
        write(&dir.join("cpu.stat"), cpu);
        let reading = collector.read_at(now_ns, &mut errors);
        for usage in &reading.containers {
            if let Some(u) = usage.cpu_utilization_normalized {
                assert!(u.is_finite() && (0.0..=110.0).contains(&u), "cpu {u}");
            }
            if let Some(m) = usage.memory_utilization_normalized {
                assert!(m.is_finite() && (0.0..=100.0).contains(&m), "memory {m}");
            }
        }
    }
});

//! One sample of 50 model copies: the cgroup collector re-reading each container's kept-open
//! files (CPU counter, memory usage, memory.stat) from a fixture tree in a temporary directory,
//! for cgroup v2 (systemd layout, found through each container's PID) and v1 (cgroupfs layout);
//! idle copies (memory.stat read every tenth sample) and busy ones (read every sample).
//!
//! cargo bench --bench containers
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "benchmark code: a failed step stops it with its message (Cargo.toml [lints] is for the agent)"
)]

use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use endpoint_metrics_agent::collectors::cgroup::{CgroupCollector, HostCapacity};
use endpoint_metrics_agent::discovery::{ContainerInfo, GpuAllocation, Inventory};
use tokio::sync::watch;

const CONTAINERS: usize = 50;

/// A memory.stat as large as a real one (v2 has about 40 keys; inactive_file is in the middle).
const MEMORY_STAT_V2: &str = "anon 104857600\nfile 52428800\nkernel 4194304\nkernel_stack 65536\n\
pagetables 262144\nsec_pagetables 0\npercpu 1024\nsock 0\nvmalloc 0\nshmem 0\nzswap 0\nzswapped 0\n\
file_mapped 1048576\nfile_dirty 0\nfile_writeback 0\nswapcached 0\nanon_thp 0\nfile_thp 0\nshmem_thp 0\n\
inactive_anon 104857600\nactive_anon 0\ninactive_file 41943040\nactive_file 10485760\nunevictable 0\n\
slab_reclaimable 1048576\nslab_unreclaimable 524288\nslab 1572864\nworkingset_refault_anon 0\n\
workingset_refault_file 0\nworkingset_activate_anon 0\nworkingset_activate_file 0\n\
workingset_restore_anon 0\nworkingset_restore_file 0\nworkingset_nodereclaim 0\npgscan 0\npgsteal 0\n\
pgfault 123456\npgmajfault 12\npgrefill 0\npgactivate 0\npgdeactivate 0\npglazyfree 0\npglazyfreed 0\n";

const MEMORY_STAT_V1: &str = "cache 52428800\nrss 104857600\nrss_huge 0\nshmem 0\nmapped_file 1048576\n\
dirty 0\nwriteback 0\npgpgin 1000\npgpgout 500\npgfault 123456\npgmajfault 12\ninactive_anon 104857600\n\
active_anon 0\ninactive_file 41943040\nactive_file 10485760\nunevictable 0\nhierarchical_memory_limit 268435456\n\
total_cache 52428800\ntotal_rss 104857600\ntotal_rss_huge 0\ntotal_shmem 0\ntotal_mapped_file 1048576\n\
total_dirty 0\ntotal_writeback 0\ntotal_pgpgin 1000\ntotal_pgpgout 500\ntotal_pgfault 123456\n\
total_pgmajfault 12\ntotal_inactive_anon 104857600\ntotal_active_anon 0\ntotal_inactive_file 41943040\n\
total_active_file 10485760\ntotal_unevictable 0\n";

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Builds the tree and the inventory; returns the collector's roots.
fn fixture(root: &Path, v2: bool) -> Inventory {
    write(
        &root.join("proc/stat"),
        "cpu  1 0 1 1 0 0 0 0 0 0\ncpu0 1 0 1 1 0 0 0 0 0 0\ncpu1 1 0 1 1 0 0 0 0 0 0\n",
    );
    write(&root.join("proc/meminfo"), "MemTotal: 16777216 kB\n");
    let cg = root.join("sys/fs/cgroup");
    if v2 {
        write(&cg.join("cgroup.controllers"), "cpu memory\n");
    }
    let mut inventory = Inventory::default();
    for i in 0..CONTAINERS {
        let id = format!("{i:064x}");
        let pid = 10_000 + i as u32;
        if v2 {
            let rel = format!("system.slice/docker-{id}.scope");
            write(
                &root.join(format!("proc/{pid}/cgroup")),
                &format!("0::/{rel}\n"),
            );
            let dir = cg.join(&rel);
            write(&dir.join("cpu.stat"), "usage_usec 123456789\nuser_usec 100000000\nsystem_usec 23456789\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n");
            write(&dir.join("memory.current"), "157286400\n");
            write(&dir.join("memory.stat"), MEMORY_STAT_V2);
        } else {
            let rel = format!("docker/{id}");
            write(
                &root.join(format!("proc/{pid}/cgroup")),
                &format!("4:memory:/{rel}\n2:cpu,cpuacct:/{rel}\n0::/\n"),
            );
            write(
                &cg.join(format!("cpu,cpuacct/{rel}/cpuacct.usage")),
                "123456789000\n",
            );
            write(
                &cg.join(format!("memory/{rel}/memory.usage_in_bytes")),
                "157286400\n",
            );
            write(
                &cg.join(format!("memory/{rel}/memory.stat")),
                MEMORY_STAT_V1,
            );
        }
        inventory.containers.insert(
            id.clone(),
            ContainerInfo {
                short_id: id[..12].into(),
                component: format!("component-{i}").into(),
                id,
                pid,
                cpu_limit_cores: Some(1.0),
                memory_reservation_bytes: None,
                memory_limit_bytes: Some(1 << 30),
                gpus: GpuAllocation::None,
                address: None,
                upstream_port: None,
                scrape: Default::default(),
                health_check: false,
            },
        );
    }
    inventory
}

fn bench(c: &mut Criterion) {
    for (name, v2) in [("cgroup_v2", true), ("cgroup_v1", false)] {
        let dir = tempfile::tempdir().unwrap();
        let inventory = fixture(dir.path(), v2);
        let (_tx, rx) = watch::channel(Arc::new(inventory));
        let proc_root = dir.path().join("proc");
        let host = HostCapacity::read(&proc_root).unwrap();
        let mut collector =
            CgroupCollector::new(&proc_root, &dir.path().join("sys/fs/cgroup"), host, rx);
        let mut errors = Vec::new();
        let mut now_ns = 0u64;
        // The first sample finds and opens the files; the measured ones re-read them.
        let first = collector.read_at(now_ns, &mut errors);
        assert_eq!(first.containers.len(), CONTAINERS, "{errors:?}");
        assert!(errors.is_empty(), "{errors:?}");
        // Idle copies: their memory usage stays put, so memory.stat is read every
        // MEMORY_STAT_MAX_AGE_SAMPLES-th sample.
        c.bench_function(
            &format!("{name}_one_sample_of_{CONTAINERS}_containers"),
            |b| {
                b.iter(|| {
                    now_ns += 1_000_000_000;
                    let reading = collector.read_at(now_ns, &mut errors);
                    assert_eq!(reading.containers.len(), CONTAINERS);
                    reading
                })
            },
        );
        // Busy copies: every usage moves between samples, so every memory.stat is read. The
        // files are rewritten in the (unmeasured) setup of each iteration.
        let usage_files = usage_files(dir.path(), v2);
        let mut moved = 0u64;
        c.bench_function(
            &format!("{name}_one_sample_of_{CONTAINERS}_containers_whose_memory_moved"),
            |b| {
                b.iter_batched(
                    || {
                        moved += 4096;
                        for path in &usage_files {
                            std::fs::write(path, format!("{}\n", 157_286_400 + moved)).unwrap();
                        }
                    },
                    |()| {
                        now_ns += 1_000_000_000;
                        let reading = collector.read_at(now_ns, &mut errors);
                        assert_eq!(reading.containers.len(), CONTAINERS);
                        reading
                    },
                    BatchSize::PerIteration,
                )
            },
        );
        assert!(errors.is_empty(), "{errors:?}");
    }
}

/// Every copy's memory usage file in the fixture tree.
fn usage_files(root: &Path, v2: bool) -> Vec<std::path::PathBuf> {
    let cg = root.join("sys/fs/cgroup");
    (0..CONTAINERS)
        .map(|i| {
            let id = format!("{i:064x}");
            match v2 {
                true => cg.join(format!("system.slice/docker-{id}.scope/memory.current")),
                false => cg.join(format!("memory/docker/{id}/memory.usage_in_bytes")),
            }
        })
        .collect()
}

criterion_group!(benches, bench);
criterion_main!(benches);

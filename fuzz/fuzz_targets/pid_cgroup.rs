//! `/proc/<pid>/cgroup` attribution: any text names a container (64 hex characters) or none,
//! never a panic.
#![no_main]

use endpoint_metrics_agent::cgroup_path::{
    cgroup_paths, container_id_from_cgroup, container_id_from_path,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = cgroup_paths(text);
    for id in [container_id_from_cgroup(text), container_id_from_path(text)]
        .into_iter()
        .flatten()
    {
        assert_eq!(id.len(), 64, "{id:?}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id:?}");
    }
});

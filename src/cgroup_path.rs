//! Pure: `/proc/<pid>/cgroup` text -> cgroup paths and the container a process belongs to.
//!
//! NVML reports host PIDs. A PID's cgroup names its container in every runtime the agent knows:
//! the ID is a 64-hex path component, bare (`/docker/<id>`, containerd's `/default/<id>`,
//! Kubernetes cgroupfs `/kubepods/burstable/pod<uid>/<id>`) or inside a systemd scope
//! (`docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`, `libpod-<id>.scope`).
//! A leaf: discovery, the cgroup collector and GPU attribution all read it.

/// Length of a full container ID (hex of a SHA-256).
pub const CONTAINER_ID_HEX_CHARS: usize = 64;

/// Length of the short ID that `ContainerId` carries (Docker's `stringid.TruncateID`).
pub const SHORT_ID_CHARS: usize = 12;

/// Prefixes systemd-driven runtimes put before the ID in a scope unit name.
const SCOPE_PREFIXES: [&str; 4] = ["docker-", "cri-containerd-", "crio-", "libpod-"];

/// The 12-character short form of a container ID.
pub fn short_id(id: &str) -> &str {
    id.get(..SHORT_ID_CHARS).unwrap_or(id)
}

/// The cgroup paths of one process, from its `/proc/<pid>/cgroup`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupPaths<'a> {
    /// The cgroup v2 (unified) path: the `0::` line.
    pub unified: Option<&'a str>,
    /// The v1 memory controller's path.
    pub memory: Option<&'a str>,
    /// The v1 line carrying `cpuacct`: its controller list (the mount's directory name, e.g.
    /// `cpu,cpuacct`) and path.
    pub cpuacct: Option<(&'a str, &'a str)>,
}

/// Splits `/proc/<pid>/cgroup` text into the paths the agent uses. Malformed lines are skipped.
pub fn cgroup_paths(text: &str) -> CgroupPaths<'_> {
    let mut paths = CgroupPaths::default();
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(hierarchy), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if hierarchy == "0" && controllers.is_empty() {
            paths.unified = Some(path);
            continue;
        }
        for controller in controllers.split(',') {
            match controller {
                "memory" => paths.memory = Some(path),
                "cpuacct" => paths.cpuacct = Some((controllers, path)),
                _ => {}
            }
        }
    }
    paths
}

/// The container a process belongs to, from its `/proc/<pid>/cgroup` text: the v2 line first,
/// then the v1 memory controller (a hybrid host's `0::` line may be `/`), then any line.
pub fn container_id_from_cgroup(text: &str) -> Option<&str> {
    let paths = cgroup_paths(text);
    paths
        .unified
        .and_then(container_id_from_path)
        .or_else(|| paths.memory.and_then(container_id_from_path))
        .or_else(|| {
            text.lines()
                .filter_map(|l| l.splitn(3, ':').nth(2))
                .find_map(container_id_from_path)
        })
}

/// The innermost container ID in a cgroup path (nested runtimes: the last one is the process's).
pub fn container_id_from_path(path: &str) -> Option<&str> {
    path.rsplit('/').find_map(container_id_from_component)
}

fn container_id_from_component(component: &str) -> Option<&str> {
    let unit = component.strip_suffix(".scope").unwrap_or(component);
    // conmon (podman's monitor) lives in `libpod-conmon-<id>.scope`: not the container itself.
    if unit.contains("conmon") {
        return None;
    }
    let id = SCOPE_PREFIXES
        .iter()
        .find_map(|p| unit.strip_prefix(p))
        .unwrap_or(unit);
    is_container_id(id).then_some(id)
}

fn is_container_id(s: &str) -> bool {
    s.len() == CONTAINER_ID_HEX_CHARS && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cgroup/proc");

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{FIXTURES}/{name}/cgroup")).unwrap()
    }

    #[test]
    fn every_runtime_layout_names_its_container() {
        let cases = [
            (
                "docker-cgroupfs-v1",
                "b335296f4e067f587ea22d5e8d0533a18ab9898701b6b4ffd2e3a2fdb7e5f6e8",
            ),
            (
                "docker-systemd-v2",
                "4f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8",
            ),
            (
                "containerd-v2",
                "9a8b7c6d5e4f30211223344556677889900aabbccddeeff00112233445566778",
            ),
            (
                "crio-v2",
                "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00",
            ),
            (
                "podman-v2",
                "deadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeef",
            ),
            (
                "kubepods-cgroupfs-v1",
                "1234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdef",
            ),
            (
                "kubepods-systemd-v2",
                "abcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcd",
            ),
            (
                "hybrid-root-unified",
                "0123456789012345678901234567890123456789012345678901234567890123",
            ),
        ];
        for (name, id) in cases {
            assert_eq!(container_id_from_cgroup(&fixture(name)), Some(id), "{name}");
        }
    }

    #[test]
    fn host_processes_and_monitors_are_in_no_container() {
        assert_eq!(container_id_from_cgroup(&fixture("host-v1")), None);
        assert_eq!(container_id_from_cgroup(&fixture("host-v2")), None);
        assert_eq!(container_id_from_cgroup(&fixture("podman-conmon-v2")), None);
        assert_eq!(container_id_from_cgroup(""), None);
        assert_eq!(container_id_from_cgroup("garbage\n::\n0::"), None);
        // 63 and 65 hex characters are not IDs.
        assert_eq!(
            container_id_from_path(&format!("/docker/{}", "a".repeat(63))),
            None
        );
        assert_eq!(
            container_id_from_path(&format!("/docker/{}", "a".repeat(65))),
            None
        );
    }

    #[test]
    fn v1_paths_name_the_cpuacct_mount() {
        let text = fixture("kubepods-cgroupfs-v1");
        let p = cgroup_paths(&text);
        assert_eq!(p.cpuacct.map(|c| c.0), Some("cpu,cpuacct"));
        assert!(p.memory.unwrap().starts_with("/kubepods/"));
    }
}

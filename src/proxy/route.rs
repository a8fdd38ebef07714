//! The upstream table: which model copies the front door may reach, and which copy a request
//! goes to (least outstanding requests). Only discovered containers and configured static
//! upstreams are in it, so the front door is not an open proxy.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::discovery::Inventory;
use crate::proxy::account::CopyKey;

/// The request header that names the inference component (SageMaker's).
pub const COMPONENT_HEADER: &str = "x-amzn-sagemaker-inference-component";

/// Components remembered after their last copy left, so a request for one gets 503 and counts
/// in `NoCapacityInvocationFailures` (scaled to zero) rather than 404 (never here). Bounds the
/// memory a host that cycles through many component names can take; the agent's choice, far
/// above the components one instance hosts.
pub const MAX_REMEMBERED_COMPONENTS: usize = 1_000;

/// One model copy the front door can reach.
#[derive(Debug)]
pub struct Upstream {
    pub key: CopyKey,
    /// "ip:port", as the request URI's authority.
    pub authority: String,
    /// Requests sent to it and not yet finished.
    pub outstanding: AtomicUsize,
    /// Its idle keep-alive connections.
    pub pool: crate::proxy::pool::Pool,
}

/// Why a request has no upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// No header, and not exactly one component: 400.
    Ambiguous { components: Vec<String> },
    /// The header names a component that has never had a copy here: 404.
    Unknown(String),
    /// The header names a component known here (discovered, or had copies before) that has no
    /// copy that could take the request now: 503, `NoCapacityInvocationFailures`.
    NoCapacity(Arc<str>),
    /// The header is not valid text: 400.
    BadHeader,
    /// No component at all is reachable: 503.
    NoUpstream,
}

impl RouteError {
    pub fn status(&self) -> u16 {
        match self {
            RouteError::Ambiguous { .. } | RouteError::BadHeader => 400,
            RouteError::Unknown(_) => 404,
            RouteError::NoUpstream | RouteError::NoCapacity(_) => 503,
        }
    }

    pub fn message(&self) -> String {
        match self {
            RouteError::Ambiguous { components } => format!(
                "this endpoint serves {} inference components ({}); name one in the X-Amzn-SageMaker-Inference-Component header\n",
                components.len(),
                components.join(", ")
            ),
            RouteError::Unknown(name) => {
                format!("no inference component named \"{name}\" runs on this instance\n")
            }
            RouteError::BadHeader => {
                "the X-Amzn-SageMaker-Inference-Component header is not valid text\n".into()
            }
            RouteError::NoUpstream => "no model copy is running on this instance yet\n".into(),
            RouteError::NoCapacity(name) => {
                format!("inference component \"{name}\" has no copy running on this instance now\n")
            }
        }
    }
}

/// The copies of every component, as of the last inventory.
#[derive(Debug, Default)]
pub struct Table {
    components: BTreeMap<Arc<str>, Vec<Arc<Upstream>>>,
    /// Components seen here, with or without a reachable copy, least recently seen first (at
    /// most [`MAX_REMEMBERED_COMPONENTS`]).
    known: Vec<Arc<str>>,
    /// Spreads ties between idle copies.
    rotation: AtomicUsize,
}

impl Table {
    /// Builds the table from the static upstreams and the inventory; a copy already in `old`
    /// keeps its outstanding count. Containers without an address are left out.
    pub fn build(
        statics: &[(Arc<str>, String)],
        inventory: &Inventory,
        default_port: u16,
        old: &Table,
    ) -> Table {
        let mut components: BTreeMap<Arc<str>, Vec<Arc<Upstream>>> = BTreeMap::new();
        let mut add = |component: Arc<str>, container_id: Arc<str>, authority: String| {
            let key = CopyKey {
                component: component.clone(),
                container_id,
            };
            let upstream = old
                .components
                .get(&component)
                .and_then(|v| {
                    v.iter()
                        .find(|u| u.key == key && u.authority == authority)
                        .cloned()
                })
                .unwrap_or_else(|| {
                    Arc::new(Upstream {
                        key,
                        authority,
                        outstanding: AtomicUsize::new(0),
                        pool: Default::default(),
                    })
                });
            components.entry(component).or_default().push(upstream);
        };
        for (component, authority) in statics {
            // A static upstream has no container: its address names the copy.
            add(
                component.clone(),
                authority.as_str().into(),
                authority.clone(),
            );
        }
        for c in inventory.containers.values() {
            let Some(address) = c.address else { continue };
            let port = c.upstream_port.unwrap_or(default_port);
            // "a.b.c.d:port" or "[v6]:port", as a URI authority wants it.
            let authority = SocketAddr::new(address, port).to_string();
            add(c.component.clone(), c.short_id.clone(), authority);
        }
        let mut known = old.known.clone();
        let present = components
            .keys()
            .cloned()
            .chain(inventory.containers.values().map(|c| c.component.clone()));
        for component in present {
            known.retain(|k| *k != component);
            known.push(component);
        }
        let over = known.len().saturating_sub(MAX_REMEMBERED_COMPONENTS);
        known.drain(..over);
        Table {
            components,
            known,
            rotation: AtomicUsize::new(0),
        }
    }

    /// Every component with copies, and how many.
    pub fn component_copies(&self) -> Vec<(Arc<str>, usize)> {
        self.components
            .iter()
            .map(|(name, copies)| (name.clone(), copies.len()))
            .collect()
    }

    /// How many copies `component` has.
    pub fn copies(&self, component: &str) -> usize {
        self.components.get(component).map_or(0, Vec::len)
    }

    /// Every copy of every component.
    pub fn upstreams(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.components.values().flatten()
    }

    /// The copy a request goes to, given its component header, with its outstanding count
    /// already raised (the caller lowers it when the request ends).
    pub fn choose(&self, header: Option<&[u8]>) -> Result<Arc<Upstream>, RouteError> {
        let copies = match header {
            Some(raw) => {
                let name = std::str::from_utf8(raw).map_err(|_| RouteError::BadHeader)?;
                let name = name.trim();
                match self.components.get(name) {
                    Some(copies) => copies,
                    None => {
                        if let Some(known) = self.known.iter().find(|k| &***k == name) {
                            return Err(RouteError::NoCapacity(known.clone()));
                        }
                        if self.components.is_empty() {
                            return Err(RouteError::NoUpstream);
                        }
                        return Err(RouteError::Unknown(name.into()));
                    }
                }
            }
            None => {
                let mut all = self.components.values();
                match (all.next(), all.next()) {
                    (Some(only), None) => only,
                    (None, _) => return Err(RouteError::NoUpstream),
                    (Some(_), Some(_)) => {
                        return Err(RouteError::Ambiguous {
                            components: self.components.keys().map(|k| k.to_string()).collect(),
                        })
                    }
                }
            }
        };
        let start = self.rotation.fetch_add(1, Ordering::Relaxed);
        let n = copies.len();
        let mut best: Option<&Arc<Upstream>> = None;
        for i in 0..n {
            let candidate = &copies[(start + i) % n];
            if best.is_none_or(|b| {
                candidate.outstanding.load(Ordering::Relaxed)
                    < b.outstanding.load(Ordering::Relaxed)
            }) {
                best = Some(candidate);
            }
        }
        let best = best.ok_or(RouteError::NoUpstream)?;
        best.outstanding.fetch_add(1, Ordering::Relaxed);
        Ok(best.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::{ContainerInfo, GpuAllocation};

    fn container(id: &str, component: &str, ip: Option<&str>, port: Option<u16>) -> ContainerInfo {
        ContainerInfo {
            id: id.into(),
            short_id: id[..12].into(),
            component: component.into(),
            pid: 1,
            cpu_limit_cores: None,
            memory_reservation_bytes: None,
            memory_limit_bytes: None,
            gpus: GpuAllocation::None,
            address: ip.map(|ip| ip.parse().unwrap()),
            upstream_port: port,
            scrape: Default::default(),
            health_check: false,
        }
    }

    fn inventory(containers: Vec<ContainerInfo>) -> Inventory {
        Inventory {
            containers: containers.into_iter().map(|c| (c.id.clone(), c)).collect(),
        }
    }

    #[test]
    fn containers_become_copies_at_their_address_and_port() {
        let inv = inventory(vec![
            container("aaaaaaaaaaaa0000", "a", Some("172.17.0.2"), None),
            container("bbbbbbbbbbbb0000", "a", Some("172.17.0.3"), Some(9000)),
            container("cccccccccccc0000", "b", None, None),
        ]);
        let statics = vec![(Arc::from("s"), "127.0.0.1:9001".to_string())];
        let t = Table::build(&statics, &inv, 8080, &Table::default());
        assert_eq!(t.copies("a"), 2);
        assert_eq!(t.copies("b"), 0, "no address: not reachable");
        assert_eq!(t.copies("s"), 1);
        let mut seen: Vec<String> = (0..2)
            .map(|_| t.choose(Some(b"a")).unwrap().authority.clone())
            .collect();
        seen.sort();
        assert_eq!(seen, vec!["172.17.0.2:8080", "172.17.0.3:9000"]);
        // An IPv6 address is bracketed, as a URI authority needs.
        let v6 = inventory(vec![container(
            "dddddddddddd0000",
            "c",
            Some("fd00::2"),
            None,
        )]);
        let t = Table::build(&[], &v6, 8080, &Table::default());
        assert_eq!(t.choose(Some(b"c")).unwrap().authority, "[fd00::2]:8080");
    }

    #[test]
    fn least_outstanding_wins_and_survives_a_rebuild() {
        let inv = inventory(vec![
            container("aaaaaaaaaaaa0000", "a", Some("10.0.0.1"), None),
            container("bbbbbbbbbbbb0000", "a", Some("10.0.0.2"), None),
        ]);
        let t = Table::build(&[], &inv, 8080, &Table::default());
        let first = t.choose(None).unwrap();
        // The busy copy is avoided until the other one is as busy.
        let second = t.choose(None).unwrap();
        assert_ne!(first.authority, second.authority);
        second.outstanding.fetch_sub(1, Ordering::Relaxed);
        for _ in 0..5 {
            let u = t.choose(None).unwrap();
            assert_eq!(u.authority, second.authority);
            u.outstanding.fetch_sub(1, Ordering::Relaxed);
        }
        let rebuilt = Table::build(&[], &inv, 8080, &t);
        let kept = rebuilt
            .components
            .get("a")
            .unwrap()
            .iter()
            .find(|u| u.authority == first.authority)
            .unwrap();
        assert_eq!(kept.outstanding.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn routing_errors_say_what_to_do() {
        let empty = Table::default();
        assert_eq!(empty.choose(None).unwrap_err(), RouteError::NoUpstream);
        let inv = inventory(vec![
            container("aaaaaaaaaaaa0000", "a", Some("10.0.0.1"), None),
            container("bbbbbbbbbbbb0000", "b", Some("10.0.0.2"), None),
        ]);
        let t = Table::build(&[], &inv, 8080, &Table::default());
        let e = t.choose(None).unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(e.message().contains("X-Amzn-SageMaker-Inference-Component"));
        assert!(e.message().contains("a, b"));
        let e = t.choose(Some(b"zzz")).unwrap_err();
        assert_eq!((e.status(), e), (404, RouteError::Unknown("zzz".into())));
        assert_eq!(t.choose(Some(b"\xff")).unwrap_err(), RouteError::BadHeader);
        assert_eq!(t.choose(Some(b"b")).unwrap().authority, "10.0.0.2:8080");
    }

    #[test]
    fn a_component_whose_copies_left_has_no_capacity_one_never_seen_is_unknown() {
        let inv = inventory(vec![
            container("aaaaaaaaaaaa0000", "a", Some("10.0.0.1"), None),
            container("bbbbbbbbbbbb0000", "b", Some("10.0.0.2"), None),
            // Discovered, but not reachable: known, no capacity.
            container("cccccccccccc0000", "c", None, None),
        ]);
        let t = Table::build(&[], &inv, 8080, &Table::default());
        assert_eq!(
            t.choose(Some(b"c")).unwrap_err(),
            RouteError::NoCapacity("c".into())
        );
        // "a" scales to zero: its copy leaves the inventory.
        let only_b = inventory(vec![container(
            "bbbbbbbbbbbb0000",
            "b",
            Some("10.0.0.2"),
            None,
        )]);
        let t = Table::build(&[], &only_b, 8080, &t);
        let e = t.choose(Some(b"a")).unwrap_err();
        assert_eq!(e, RouteError::NoCapacity("a".into()));
        assert_eq!(e.status(), 503);
        assert!(e.message().contains("no copy"), "{}", e.message());
        assert_eq!(
            t.choose(Some(b"zzz")).unwrap_err(),
            RouteError::Unknown("zzz".into())
        );
        // Even with no copy at all, a known component is told apart.
        let t = Table::build(&[], &Inventory::default(), 8080, &t);
        assert_eq!(
            t.choose(Some(b"b")).unwrap_err(),
            RouteError::NoCapacity("b".into())
        );
        assert_eq!(t.choose(None).unwrap_err(), RouteError::NoUpstream);
        assert_eq!(t.component_copies(), vec![]);
    }

    #[test]
    fn remembered_components_are_bounded() {
        let mut t = Table::default();
        for i in 0..MAX_REMEMBERED_COMPONENTS + 5 {
            let inv = inventory(vec![container(
                "aaaaaaaaaaaa0000",
                &format!("m{i}"),
                Some("10.0.0.1"),
                None,
            )]);
            t = Table::build(&[], &inv, 8080, &t);
        }
        assert_eq!(t.known.len(), MAX_REMEMBERED_COMPONENTS);
        assert_eq!(
            t.choose(Some(b"m0")).unwrap_err(),
            RouteError::Unknown("m0".into()),
            "the least recently seen is forgotten"
        );
        assert!(matches!(
            t.choose(Some(b"m10")).unwrap_err(),
            RouteError::NoCapacity(_)
        ));
    }
}

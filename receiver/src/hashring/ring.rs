//! The two placement algorithms, with Thanos's exact arithmetic (`pkg/receive/hashring.go`),
//! so that Orrery and Thanos routers sharing a hashring file place every series alike.

use std::collections::{BTreeMap, HashSet};

use thiserror::Error;
use xxhash_rust::xxh64::{Xxh64, xxh64};

use super::config::{Algorithm, Endpoint};

/// Sections per endpoint on a ketama ring (Thanos's `SectionsPerNode`).
pub const SECTIONS_PER_NODE: usize = 1000;

const SEP: u8 = 0xff;

/// The hash Thanos routes by: `xxhash64(tenant ‖ 0xFF ‖ name₁ ‖ 0xFF ‖ value₁ ‖ 0xFF ‖ …)` over the
/// labels in the order received (Thanos's `labelpb.HashWithPrefix`).
pub fn series_hash<'a>(tenant: &str, labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> u64 {
    let mut h = Xxh64::new(0);
    h.update(tenant.as_bytes());
    h.update(&[SEP]);
    for (name, value) in labels {
        h.update(name.as_bytes());
        h.update(&[SEP]);
        h.update(value.as_bytes());
        h.update(&[SEP]);
    }
    h.digest()
}

/// Why a ring could not be built or asked.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RingError {
    #[error("insufficient endpoints: have {have}, want {want}")]
    InsufficientEndpoints { have: u64, want: u64 },
    #[error("hashmod does not support availability zones: use ketama or remove \"az\"")]
    HashmodWithAz,
    #[error("empty ring")]
    Empty,
}

/// One ring: a fixed set of endpoints and the algorithm placing series on them.
#[derive(Debug, Clone)]
pub enum Ring {
    Hashmod(Hashmod),
    Ketama(Ketama),
}

impl Ring {
    /// Builds a ring; ketama pre-computes `replication_factor` replicas per section.
    pub fn new(
        algorithm: Algorithm,
        endpoints: Vec<Endpoint>,
        replication_factor: u64,
    ) -> Result<Self, RingError> {
        match algorithm {
            Algorithm::Hashmod => Hashmod::new(endpoints).map(Ring::Hashmod),
            Algorithm::Ketama => {
                Ketama::new(endpoints, SECTIONS_PER_NODE, replication_factor).map(Ring::Ketama)
            }
        }
    }

    /// The endpoint holding replica `n` (0-based) of the series with hash `hash`.
    pub fn get_n(&self, hash: u64, n: u64) -> Result<&Endpoint, RingError> {
        match self {
            Ring::Hashmod(r) => r.get_n(hash, n),
            Ring::Ketama(r) => r.get_n(hash, n),
        }
    }

    /// The ring's endpoints (hashmod: sorted by address; ketama: file order).
    pub fn endpoints(&self) -> &[Endpoint] {
        match self {
            Ring::Hashmod(r) => &r.endpoints,
            Ring::Ketama(r) => &r.endpoints,
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            Ring::Hashmod(_) => Algorithm::Hashmod,
            Ring::Ketama(_) => Algorithm::Ketama,
        }
    }
}

/// `endpoints[(hash + n) mod len]` over endpoints sorted by address.
#[derive(Debug, Clone)]
pub struct Hashmod {
    endpoints: Vec<Endpoint>,
}

impl Hashmod {
    pub fn new(mut endpoints: Vec<Endpoint>) -> Result<Self, RingError> {
        if endpoints.iter().any(|e| !e.az.is_empty()) {
            return Err(RingError::HashmodWithAz);
        }
        if endpoints.is_empty() {
            return Err(RingError::Empty);
        }
        endpoints.sort_by(|a, b| a.address.cmp(&b.address));
        Ok(Hashmod { endpoints })
    }

    pub fn get_n(&self, hash: u64, n: u64) -> Result<&Endpoint, RingError> {
        let len = self.endpoints.len() as u64;
        if n >= len {
            return Err(RingError::InsufficientEndpoints {
                have: len,
                want: n + 1,
            });
        }
        // Go's uint64 addition wraps.
        Ok(&self.endpoints[(hash.wrapping_add(n) % len) as usize])
    }
}

#[derive(Debug, Clone)]
struct Section {
    hash: u64,
    endpoint: usize,
    /// Indices into `endpoints` of replicas 0..RF for series landing on this section.
    replicas: Vec<usize>,
}

/// Consistent hashing: `sections_per_node` points per endpoint at
/// `xxhash64("<address>:<i>")`, i = 1..=sections_per_node. A series belongs to the first
/// section whose hash is ≥ the series hash (wrapping), and its replicas are the section's
/// pre-computed distinct endpoints found walking clockwise, spreading across AZs.
#[derive(Debug, Clone)]
pub struct Ketama {
    endpoints: Vec<Endpoint>,
    sections: Vec<Section>,
    replication_factor: u64,
}

impl Ketama {
    pub fn new(
        endpoints: Vec<Endpoint>,
        sections_per_node: usize,
        replication_factor: u64,
    ) -> Result<Self, RingError> {
        if endpoints.is_empty() || sections_per_node == 0 {
            return Err(RingError::Empty);
        }
        if (endpoints.len() as u64) < replication_factor {
            return Err(RingError::InsufficientEndpoints {
                have: endpoints.len() as u64,
                want: replication_factor,
            });
        }
        let mut sections = Vec::with_capacity(endpoints.len() * sections_per_node);
        for (idx, ep) in endpoints.iter().enumerate() {
            for i in 1..=sections_per_node {
                sections.push(Section {
                    hash: xxh64(format!("{}:{i}", ep.address).as_bytes(), 0),
                    endpoint: idx,
                    replicas: Vec::new(),
                });
            }
        }
        // Equal hashes are vanishingly rare; break ties by endpoint for determinism.
        sections.sort_by_key(|s| (s.hash, s.endpoint));
        let rf = replication_factor as usize;
        let zones: Vec<&str> = {
            let mut z: Vec<&str> = endpoints.iter().map(|e| e.az.as_str()).collect();
            z.sort_unstable();
            z.dedup();
            z
        };
        let owners: Vec<usize> = sections.iter().map(|s| s.endpoint).collect();
        for (i, section) in sections.iter_mut().enumerate() {
            section.replicas = section_replicas(&owners, i, rf, &endpoints, &zones);
        }
        Ok(Ketama {
            endpoints,
            sections,
            replication_factor,
        })
    }

    pub fn get_n(&self, hash: u64, n: u64) -> Result<&Endpoint, RingError> {
        let have = self.endpoints.len() as u64;
        if n >= have || n >= self.replication_factor {
            return Err(RingError::InsufficientEndpoints {
                have: have.min(self.replication_factor),
                want: n + 1,
            });
        }
        let mut i = self.sections.partition_point(|s| s.hash < hash);
        if i == self.sections.len() {
            i = 0;
        }
        Ok(&self.endpoints[self.sections[i].replicas[n as usize]])
    }
}

/// Thanos's `calculateSectionReplicas` for one section: walk clockwise from the section
/// itself, take endpoints not yet taken, and while several AZs exist skip an endpoint whose
/// AZ already holds more replicas than the least-used AZ. Where Thanos would loop forever
/// (every remaining endpoint is in an over-used AZ) the AZ rule is dropped for the rest.
fn section_replicas(
    owners: &[usize],
    start: usize,
    rf: usize,
    endpoints: &[Endpoint],
    zones: &[&str],
) -> Vec<usize> {
    let mut taken: Vec<usize> = Vec::with_capacity(rf);
    let mut taken_set: HashSet<usize> = HashSet::with_capacity(rf);
    let mut spread: BTreeMap<&str, u64> = zones.iter().map(|z| (*z, 0)).collect();
    let mut j = start;
    let mut since_pick = 0usize;
    let mut az_rule = zones.len() > 1;
    while taken.len() < rf {
        let ep = owners[j];
        j = (j + 1) % owners.len();
        since_pick += 1;
        if since_pick > owners.len() {
            az_rule = false;
        }
        if taken_set.contains(&ep) {
            continue;
        }
        let az = endpoints[ep].az.as_str();
        let count = spread.get(az).copied().unwrap_or(0);
        let least = spread.values().copied().min().unwrap_or(0);
        if az_rule && count > 0 && count > least {
            continue;
        }
        taken.push(ep);
        taken_set.insert(ep);
        *spread.entry(az).or_insert(0) += 1;
        since_pick = 0;
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(addrs: &[&str]) -> Vec<Endpoint> {
        addrs.iter().map(|a| Endpoint::new(*a)).collect()
    }

    fn h(tenant: &str, labels: &[(&str, &str)]) -> u64 {
        series_hash(tenant, labels.iter().copied())
    }

    #[test]
    fn series_hash_byte_layout() {
        // The hash must equal one-shot xxhash64 over the documented byte layout.
        let mut bytes = b"tenant".to_vec();
        bytes.push(0xff);
        for (n, v) in [("foo", "bar"), ("baz", "qux")] {
            bytes.extend_from_slice(n.as_bytes());
            bytes.push(0xff);
            bytes.extend_from_slice(v.as_bytes());
            bytes.push(0xff);
        }
        assert_eq!(
            h("tenant", &[("foo", "bar"), ("baz", "qux")]),
            xxh64(&bytes, 0)
        );
        // xxhash64 of the empty input with seed 0 (the published XXH64 test value).
        assert_eq!(xxh64(b"", 0), 0xef46_db37_51d8_e999);
        // Order matters: labels are hashed as received.
        assert_ne!(
            h("t", &[("a", "1"), ("b", "2")]),
            h("t", &[("b", "2"), ("a", "1")])
        );
        // The separator keeps boundaries: ("ab","c") differs from ("a","bc").
        assert_ne!(h("t", &[("ab", "c")]), h("t", &[("a", "bc")]));
        assert_ne!(h("t1", &[("a", "b")]), h("t", &[("1a", "b")]));
    }

    #[test]
    fn hashmod_sorts_and_steps_by_replica() {
        let ring = Hashmod::new(eps(&["c:1", "a:1", "b:1"])).unwrap();
        for labels in [[("pod", "nginx")], [("pod", "thanos")], [("x", "y")]] {
            let hash = h("tenant", &labels);
            for n in 0..3u64 {
                let want = ["a:1", "b:1", "c:1"][((hash % 3 + n) % 3) as usize];
                assert_eq!(ring.get_n(hash, n).unwrap().address, want);
            }
        }
        // Wrapping addition like Go's uint64.
        let ring = Hashmod::new(eps(&["a", "b", "c"])).unwrap();
        assert_eq!(
            ring.get_n(u64::MAX, 1).unwrap().address,
            ["a", "b", "c"][(u64::MAX.wrapping_add(1) % 3) as usize]
        );
        assert_eq!(
            ring.get_n(0, 3).unwrap_err(),
            RingError::InsufficientEndpoints { have: 3, want: 4 }
        );
        assert_eq!(
            Hashmod::new(vec![Endpoint::with_az("a", "z")]).unwrap_err(),
            RingError::HashmodWithAz
        );
    }

    /// Thanos's `TestKetamaHashringGet` vectors (10 sections per node, tenant "tenant").
    #[test]
    fn ketama_matches_thanos_test_vectors() {
        let nginx = [("pod", "nginx")];
        #[allow(clippy::type_complexity)]
        let cases: &[(&[&str], &[(&str, &str)], u64, &str)] = &[
            (&["node-1", "node-2", "node-3"], &nginx, 0, "node-2"),
            (&["node-1", "node-2", "node-3"], &nginx, 1, "node-1"),
            (&["node-1", "node-2", "node-3"], &nginx, 2, "node-3"),
            (&["node-1", "node-3", "node-2"], &nginx, 2, "node-3"),
            (
                &["node-0", "node-1", "node-2", "node-3"],
                &nginx,
                0,
                "node-2",
            ),
            (
                &["node-1", "node-2", "node-3", "node-4"],
                &nginx,
                0,
                "node-2",
            ),
            (
                &["node-1", "node-2", "node-3"],
                &[("pod", "thanos")],
                0,
                "node-3",
            ),
        ];
        for (nodes, labels, n, want) in cases {
            let ring = Ketama::new(eps(nodes), 10, n + 1).unwrap();
            let got = ring.get_n(h("tenant", labels), *n).unwrap();
            assert_eq!(
                got.address, *want,
                "nodes {nodes:?} labels {labels:?} replica {n}"
            );
        }
    }

    #[test]
    fn ketama_rejects_too_few_endpoints() {
        assert!(Ketama::new(eps(&["node-1"]), 1, 2).is_err());
        let ring = Ketama::new(eps(&["a", "b", "c"]), 10, 2).unwrap();
        assert!(ring.get_n(0, 2).is_err());
    }

    #[test]
    fn ketama_replicas_are_distinct_and_lookup_wraps() {
        let ring = Ketama::new(eps(&["a:1", "b:1", "c:1", "d:1"]), SECTIONS_PER_NODE, 3).unwrap();
        for s in &ring.sections {
            let set: HashSet<_> = s.replicas.iter().collect();
            assert_eq!(set.len(), 3);
            assert_eq!(s.replicas[0], s.endpoint, "replica 0 is the section owner");
        }
        let last = ring.sections.last().unwrap();
        let first = &ring.sections[0];
        // A hash above the last section wraps to the first; exactly a section hash maps to it.
        if last.hash < u64::MAX {
            assert_eq!(
                ring.get_n(last.hash + 1, 0).unwrap().address,
                ring.endpoints[first.endpoint].address
            );
        }
        assert_eq!(
            ring.get_n(last.hash, 0).unwrap().address,
            ring.endpoints[last.endpoint].address
        );
        assert_eq!(
            ring.get_n(0, 0).unwrap().address,
            ring.endpoints[first.endpoint].address
        );
    }

    fn assign(ring: &Ketama, n_series: usize, rf: u64) -> Vec<Vec<String>> {
        (0..n_series)
            .map(|i| {
                let v = format!("nginx-{i}");
                let hash = h("tenant", &[("pod", &v)]);
                (0..rf)
                    .map(|n| ring.get_n(hash, n).unwrap().address.clone())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn ketama_adding_a_fourth_endpoint_moves_only_its_share() {
        let before =
            Ketama::new(eps(&["node-1", "node-2", "node-3"]), SECTIONS_PER_NODE, 1).unwrap();
        let after = Ketama::new(
            eps(&["node-1", "node-2", "node-3", "node-4"]),
            SECTIONS_PER_NODE,
            1,
        )
        .unwrap();
        let (a, b) = (assign(&before, 10_000, 1), assign(&after, 10_000, 1));
        let mut moved = 0;
        for (x, y) in a.iter().zip(&b) {
            if x != y {
                moved += 1;
                assert_eq!(
                    y[0], "node-4",
                    "a series moved between old endpoints: {x:?} -> {y:?}"
                );
            }
        }
        let share = moved as f64 / 10_000.0;
        assert!(
            (0.18..0.32).contains(&share),
            "moved share {share}, want about 1/4"
        );
    }

    #[test]
    fn ketama_replicated_growth_never_gives_old_nodes_new_series() {
        // Thanos's TestKetamaHashringReplicationConsistency(WithAZs) property.
        let cases: Vec<(Vec<Endpoint>, Vec<Endpoint>, u64)> = vec![
            (
                eps(&["node-1", "node-4", "node-5"]),
                eps(&["node-4", "node-3", "node-1", "node-2", "node-5"]),
                2,
            ),
            (
                vec![
                    Endpoint::with_az("a", "1"),
                    Endpoint::with_az("b", "2"),
                    Endpoint::with_az("c", "3"),
                ],
                vec![
                    Endpoint::with_az("b", "2"),
                    Endpoint::with_az("c", "3"),
                    Endpoint::with_az("a", "1"),
                    Endpoint::with_az("d", "2"),
                    Endpoint::with_az("e", "4"),
                ],
                3,
            ),
        ];
        for (initial, resized, rf) in cases {
            let a = assign(
                &Ketama::new(initial.clone(), SECTIONS_PER_NODE, rf).unwrap(),
                3000,
                rf,
            );
            let b = assign(
                &Ketama::new(resized, SECTIONS_PER_NODE, rf).unwrap(),
                3000,
                rf,
            );
            for (x, y) in a.iter().zip(&b) {
                for node in y {
                    if initial.iter().any(|e| &e.address == node) {
                        assert!(x.contains(node), "{node} got a new series: {x:?} -> {y:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn ketama_spreads_replicas_across_azs() {
        let nodes = vec![
            Endpoint::with_az("a", "1"),
            Endpoint::with_az("b", "2"),
            Endpoint::with_az("c", "3"),
            Endpoint::with_az("d", "1"),
            Endpoint::with_az("e", "2"),
            Endpoint::with_az("f", "3"),
        ];
        let ring = Ketama::new(nodes.clone(), SECTIONS_PER_NODE, 3).unwrap();
        for s in &ring.sections {
            let azs: HashSet<&str> = s.replicas.iter().map(|&i| nodes[i].az.as_str()).collect();
            assert_eq!(azs.len(), 3, "each series gets one replica per AZ");
        }
    }

    #[test]
    fn ketama_spreads_load_evenly() {
        let ring = Ketama::new(eps(&["a", "b", "c", "d"]), SECTIONS_PER_NODE, 2).unwrap();
        let mut counts = BTreeMap::new();
        for i in 0..10_000 {
            let v = i.to_string();
            let hash = h("default-tenant", &[("foo", &v)]);
            for n in 0..2 {
                *counts
                    .entry(ring.get_n(hash, n).unwrap().address.clone())
                    .or_insert(0) += 1;
            }
        }
        for (node, c) in counts {
            let dev = (c as f64 - 5000.0).abs() / 5000.0;
            assert!(dev < 0.1, "{node} holds {c}, optimum 5000");
        }
    }

    #[test]
    fn ketama_does_not_hang_when_azs_cannot_balance() {
        // One endpoint in each of two zones, three in a third, RF 5: Thanos loops forever here.
        let nodes = vec![
            Endpoint::with_az("a", "1"),
            Endpoint::with_az("b", "2"),
            Endpoint::with_az("c", "3"),
            Endpoint::with_az("d", "3"),
            Endpoint::with_az("e", "3"),
        ];
        let ring = Ketama::new(nodes, 50, 5).unwrap();
        for s in &ring.sections {
            assert_eq!(s.replicas.iter().collect::<HashSet<_>>().len(), 5);
        }
    }
}

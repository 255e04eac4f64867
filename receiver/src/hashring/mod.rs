//! Hashrings: which receivers hold which series of which tenant.
//!
//! - [`config`]: the Thanos hashring file (JSON), parsed and validated.
//! - [`ring`]: the `hashmod` and `ketama` placement algorithms, bit-compatible with Thanos.
//! - [`glob`]: Go `filepath.Match` tenant patterns.
//! - [`watch`]: re-reading the file on change, without restart.
//! - [`args`]: the `--receive.hashrings-*` command-line flags.
//!
//! [`MultiHashring`] picks a tenant's ring (file order, first match, a ring without tenants
//! matches every tenant) and places a series' replicas on it.

pub mod args;
pub mod config;
pub mod glob;
pub mod ring;
pub mod watch;

use std::collections::BTreeMap;

use thiserror::Error;

pub use args::{HashringArgs, Mode};
pub use config::{
    Algorithm, ConfigError, Endpoint, HashringConfig, TenantMatcherType, parse_config,
};
pub use ring::{Ring, RingError, SECTIONS_PER_NODE, series_hash};

use glob::Glob;

/// Errors placing a series.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HashringError {
    #[error("no matching hashring to handle tenant {0:?}")]
    NoMatchingRing(String),
    #[error("hashring {ring:?}: {source}")]
    Ring {
        ring: String,
        #[source]
        source: RingError,
    },
}

#[derive(Debug, Clone)]
enum TenantSet {
    /// A ring without tenants: the default, matches every tenant.
    Any,
    Exact(Vec<String>),
    Glob(Vec<Glob>),
}

impl TenantSet {
    fn len(&self) -> usize {
        match self {
            TenantSet::Any => 0,
            TenantSet::Exact(ts) => ts.len(),
            TenantSet::Glob(gs) => gs.len(),
        }
    }

    fn matches(&self, tenant: &str) -> bool {
        match self {
            TenantSet::Any => true,
            TenantSet::Exact(ts) => ts.iter().any(|t| t == tenant),
            TenantSet::Glob(gs) => gs.iter().any(|g| g.matches(tenant)),
        }
    }
}

/// One ring of the file, built.
#[derive(Debug, Clone)]
pub struct RingEntry {
    pub name: String,
    pub external_labels: BTreeMap<String, String>,
    pub ring: Ring,
    tenants: TenantSet,
}

impl RingEntry {
    /// Number of tenants (or patterns) listed; 0 for a default ring.
    pub fn tenant_count(&self) -> usize {
        self.tenants.len()
    }
}

/// Every ring of a hashring file, ready to place series.
#[derive(Debug, Clone)]
pub struct MultiHashring {
    rings: Vec<RingEntry>,
    replication_factor: u64,
}

impl MultiHashring {
    /// Builds the rings. `default_algorithm` applies to rings without `"algorithm"`.
    pub fn new(
        default_algorithm: Algorithm,
        replication_factor: u64,
        configs: &[HashringConfig],
    ) -> Result<Self, HashringError> {
        let mut rings = Vec::with_capacity(configs.len());
        for c in configs {
            let algorithm = c.algorithm.unwrap_or(default_algorithm);
            let ring = Ring::new(algorithm, c.endpoints.clone(), replication_factor).map_err(
                |source| HashringError::Ring {
                    ring: c.name.clone(),
                    source,
                },
            )?;
            let tenants = if c.tenants.is_empty() {
                TenantSet::Any
            } else {
                match c.tenant_matcher_type {
                    TenantMatcherType::Exact => TenantSet::Exact(c.tenants.clone()),
                    TenantMatcherType::Glob => TenantSet::Glob(
                        c.tenants
                            .iter()
                            // Patterns were validated by parse_config; a bad one here cannot match.
                            .filter_map(|t| Glob::new(t).ok())
                            .collect(),
                    ),
                }
            };
            rings.push(RingEntry {
                name: c.name.clone(),
                external_labels: c.external_labels.clone(),
                ring,
                tenants,
            });
        }
        Ok(MultiHashring {
            rings,
            replication_factor,
        })
    }

    /// The ring serving `tenant`: the first in file order whose tenants match.
    pub fn ring_for(&self, tenant: &str) -> Result<&RingEntry, HashringError> {
        self.rings
            .iter()
            .find(|r| r.tenants.matches(tenant))
            .ok_or_else(|| HashringError::NoMatchingRing(tenant.to_string()))
    }

    /// The endpoint holding replica `n` of the series.
    pub fn get_n<'a>(
        &self,
        tenant: &str,
        labels: impl IntoIterator<Item = (&'a str, &'a str)>,
        n: u64,
    ) -> Result<&Endpoint, HashringError> {
        let entry = self.ring_for(tenant)?;
        entry
            .ring
            .get_n(series_hash(tenant, labels), n)
            .map_err(|source| HashringError::Ring {
                ring: entry.name.clone(),
                source,
            })
    }

    pub fn replication_factor(&self) -> u64 {
        self.replication_factor
    }

    pub fn rings(&self) -> &[RingEntry] {
        &self.rings
    }

    /// Every endpoint of every ring, sorted and deduplicated.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let mut all: Vec<Endpoint> = self
            .rings
            .iter()
            .flat_map(|r| r.ring.endpoints().iter().cloned())
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> Vec<HashringConfig> {
        parse_config(json.as_bytes(), 1).unwrap()
    }

    fn node(h: &MultiHashring, tenant: &str) -> Result<String, HashringError> {
        h.get_n(tenant, [("foo", "bar"), ("baz", "qux")], 0)
            .map(|e| e.address.clone())
    }

    /// Thanos's `TestHashringGet` cases (hashmod, RF 3 is not required by one-node rings here).
    #[test]
    fn tenant_selection_like_thanos() {
        let cases: &[(&str, &str, &[&str])] = &[
            (r#"[{"endpoints":["node1"]}]"#, "", &["node1"]),
            (
                r#"[{"endpoints":["node2"],"tenants":["tenant2"]},{"endpoints":["node1"]}]"#,
                "tenant2",
                &["node2"],
            ),
            (
                r#"[{"endpoints":["node1"],"tenants":["tenant1"]},{"endpoints":["node2"],"tenants":["tenant2"]},{"endpoints":["node3"],"tenants":["tenant3"]}]"#,
                "tenant1",
                &["node1"],
            ),
            (
                r#"[{"endpoints":["node1","node2","node3"],"tenants":["tenant1"]},{"endpoints":["node4","node5","node6"]}]"#,
                "tenant1",
                &["node1", "node2", "node3"],
            ),
            (
                r#"[{"endpoints":["node1","node2","node3"],"tenants":["tenant1"]},{"endpoints":["node4","node5","node6"]}]"#,
                "",
                &["node4", "node5", "node6"],
            ),
            (
                r#"[{"endpoints":["node1","node2","node3"],"tenants":["prefix*"],"tenant_matcher_type":"glob"},{"endpoints":["node4","node5","node6"]}]"#,
                "prefix-1",
                &["node1", "node2", "node3"],
            ),
            (
                r#"[{"endpoints":["node1","node2","node3"],"tenants":["prefix*"],"tenant_matcher_type":"glob"},{"endpoints":["node4","node5","node6"]}]"#,
                "suffix-1",
                &["node4", "node5", "node6"],
            ),
            (
                r#"[{"endpoints":["node1","node2","node3"],"tenants":["t1-*","t2","t3-*"],"tenant_matcher_type":"glob"},{"endpoints":["node4","node5","node6"]}]"#,
                "t2",
                &["node1", "node2", "node3"],
            ),
        ];
        for (json, tenant, allowed) in cases {
            let h = MultiHashring::new(Algorithm::Hashmod, 1, &cfg(json)).unwrap();
            let got = node(&h, tenant).unwrap();
            assert!(
                allowed.contains(&got.as_str()),
                "{json} tenant {tenant:?}: got {got}"
            );
        }
    }

    #[test]
    fn no_matching_ring_is_an_error() {
        let h = MultiHashring::new(
            Algorithm::Hashmod,
            1,
            &cfg(r#"[{"endpoints":["node1"],"tenants":["tenant1"]},{"endpoints":["node2"],"tenants":["tenant2"]}]"#),
        )
        .unwrap();
        assert_eq!(
            node(&h, "tenant4"),
            Err(HashringError::NoMatchingRing("tenant4".into()))
        );
    }

    #[test]
    fn exact_matching_does_not_glob() {
        let h = MultiHashring::new(
            Algorithm::Ketama,
            1,
            &cfg(r#"[{"endpoints":["a"],"tenants":["t*"]},{"endpoints":["b"]}]"#),
        )
        .unwrap();
        assert_eq!(node(&h, "t1").unwrap(), "b");
        assert_eq!(node(&h, "t*").unwrap(), "a");
    }

    #[test]
    fn per_ring_algorithm_overrides_default_and_hashmod_az_is_rejected() {
        let h = MultiHashring::new(
            Algorithm::Ketama,
            1,
            &cfg(r#"[{"hashring":"x","algorithm":"hashmod","endpoints":["a","b"]}]"#),
        )
        .unwrap();
        assert_eq!(h.rings()[0].ring.algorithm(), Algorithm::Hashmod);
        let err = MultiHashring::new(
            Algorithm::Hashmod,
            1,
            &cfg(r#"[{"hashring":"z","endpoints":[{"address":"a","az":"1"}]}]"#),
        )
        .unwrap_err();
        assert!(err.to_string().contains("hashring \"z\""), "{err}");
    }

    #[test]
    fn endpoints_are_deduplicated_across_rings() {
        let h = MultiHashring::new(
            Algorithm::Ketama,
            1,
            &cfg(r#"[{"endpoints":["b","a"],"tenants":["x"]},{"endpoints":["a","c"]}]"#),
        )
        .unwrap();
        let addrs: Vec<String> = h.endpoints().into_iter().map(|e| e.address).collect();
        assert_eq!(addrs, vec!["a", "b", "c"]);
    }
}

//! The hashring file: Thanos's JSON (`pkg/receive/config.go`), parsed and validated.
//!
//! ```json
//! [{"hashring": "a", "tenants": ["t1", "p-*"], "tenant_matcher_type": "glob",
//!   "algorithm": "ketama", "external_labels": {"region": "eu1"},
//!   "endpoints": ["127.0.0.1:10901", {"address": "node-2:10901", "az": "zone-a"}]}]
//! ```
//!
//! Unknown fields are ignored as Go's `encoding/json` does (e.g. `capnproto_address`, which
//! Orrery does not use). Differences from Thanos, all of which reject files Thanos would
//! accept but mis-handle: an unknown `algorithm` or `tenant_matcher_type`, an empty ring, a
//! duplicate endpoint in one ring, a malformed glob, fewer endpoints than the replication
//! factor, and `shuffle_sharding_config` with a non-zero `shard_size` (not implemented) are
//! errors, with the ring's position and name in the message.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use thiserror::Error;

use super::glob::{Glob, GlobError};

/// The series placement algorithm of a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, clap::ValueEnum)]
pub enum Algorithm {
    /// `hash(series) + replica mod #endpoints` over endpoints sorted by address.
    Hashmod,
    /// Consistent hashing with 1000 sections per endpoint.
    #[default]
    Ketama,
}

impl Algorithm {
    /// The name used in the file and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Hashmod => "hashmod",
            Algorithm::Ketama => "ketama",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "hashmod" => Some(Algorithm::Hashmod),
            "ketama" => Some(Algorithm::Ketama),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a ring's `tenants` are compared with a request's tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TenantMatcherType {
    #[default]
    Exact,
    /// Go `filepath.Match` patterns.
    Glob,
}

/// One receiver in a ring.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// gRPC `host:port` of the receiver's `WriteableStore`; also its identity in the ring.
    pub address: String,
    /// Availability zone; empty when not set. Only ketama uses it.
    pub az: String,
}

impl Endpoint {
    pub fn new(address: impl Into<String>) -> Self {
        Endpoint {
            address: address.into(),
            az: String::new(),
        }
    }

    pub fn with_az(address: impl Into<String>, az: impl Into<String>) -> Self {
        Endpoint {
            address: address.into(),
            az: az.into(),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.address)
    }
}

/// One validated entry of the hashring file.
#[derive(Debug, Clone, PartialEq)]
pub struct HashringConfig {
    /// Name (may be empty).
    pub name: String,
    /// Tenants served; empty = default ring that matches every tenant.
    pub tenants: Vec<String>,
    pub tenant_matcher_type: TenantMatcherType,
    /// Overrides the `--receive.hashrings-algorithm` default when set.
    pub algorithm: Option<Algorithm>,
    /// Extra external labels for the tenants of this ring.
    pub external_labels: BTreeMap<String, String>,
    pub endpoints: Vec<Endpoint>,
}

/// Why a hashring file was rejected.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("hashring configuration is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("hashring configuration is empty: at least one hashring is required")]
    Empty,
    #[error("hashring #{index} ({name:?}): {reason}")]
    Invalid {
        index: usize,
        name: String,
        reason: String,
    },
}

// Raw JSON shapes.

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    hashring: String,
    #[serde(default)]
    tenants: Option<Vec<String>>,
    #[serde(default)]
    tenant_matcher_type: String,
    #[serde(default)]
    algorithm: String,
    #[serde(default)]
    external_labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    endpoints: Option<Vec<RawEndpoint>>,
    #[serde(default)]
    shuffle_sharding_config: Option<RawShuffleSharding>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawEndpoint {
    Address(String),
    Object {
        #[serde(default)]
        address: String,
        #[serde(default)]
        az: String,
    },
}

#[derive(Deserialize)]
struct RawShuffleSharding {
    #[serde(default)]
    shard_size: i64,
}

/// Parses and validates a hashring file. `replication_factor` is checked against each
/// ring's endpoint count.
pub fn parse_config(
    content: &[u8],
    replication_factor: u64,
) -> Result<Vec<HashringConfig>, ConfigError> {
    let raw: Vec<RawConfig> = serde_json::from_slice(content)?;
    if raw.is_empty() {
        return Err(ConfigError::Empty);
    }
    raw.into_iter()
        .enumerate()
        .map(|(index, r)| validate(index, r, replication_factor))
        .collect()
}

fn validate(
    index: usize,
    r: RawConfig,
    replication_factor: u64,
) -> Result<HashringConfig, ConfigError> {
    let name = r.hashring;
    let invalid = |reason: String| ConfigError::Invalid {
        index,
        name: name.clone(),
        reason,
    };
    let tenant_matcher_type = match r.tenant_matcher_type.as_str() {
        "" | "exact" => TenantMatcherType::Exact,
        "glob" => TenantMatcherType::Glob,
        other => {
            return Err(invalid(format!(
                "unknown tenant_matcher_type {other:?} (want \"exact\" or \"glob\")"
            )));
        }
    };
    let algorithm = match r.algorithm.as_str() {
        "" => None,
        s => Some(Algorithm::parse(s).ok_or_else(|| {
            invalid(format!(
                "unknown algorithm {s:?} (want \"hashmod\" or \"ketama\")"
            ))
        })?),
    };
    if let Some(ss) = &r.shuffle_sharding_config
        && ss.shard_size > 0
    {
        return Err(invalid(
            "shuffle_sharding_config.shard_size > 0: shuffle sharding is not supported".into(),
        ));
    }
    let tenants = r.tenants.unwrap_or_default();
    if tenant_matcher_type == TenantMatcherType::Glob {
        for t in &tenants {
            Glob::new(t).map_err(|e: GlobError| invalid(e.to_string()))?;
        }
    }
    let mut endpoints = Vec::new();
    for (i, e) in r.endpoints.unwrap_or_default().into_iter().enumerate() {
        let ep = match e {
            RawEndpoint::Address(a) => Endpoint::new(a),
            RawEndpoint::Object { address, az } => Endpoint::with_az(address, az),
        };
        if ep.address.is_empty() {
            return Err(invalid(format!("endpoint #{i}: address must be set")));
        }
        if endpoints.iter().any(|o: &Endpoint| o.address == ep.address) {
            return Err(invalid(format!("endpoint {:?} listed twice", ep.address)));
        }
        endpoints.push(ep);
    }
    if endpoints.is_empty() {
        return Err(invalid("no endpoints".into()));
    }
    if (endpoints.len() as u64) < replication_factor {
        return Err(invalid(format!(
            "{} endpoints cannot hold replication factor {replication_factor}",
            endpoints.len()
        )));
    }
    if algorithm == Some(Algorithm::Hashmod) && endpoints.iter().any(|e| !e.az.is_empty()) {
        return Err(invalid(
            "hashmod does not support availability zones (\"az\"): use ketama or remove them"
                .into(),
        ));
    }
    Ok(HashringConfig {
        name,
        tenants,
        tenant_matcher_type,
        algorithm,
        external_labels: r.external_labels.unwrap_or_default(),
        endpoints,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_thanos_example() {
        let json = br#"[
          {"hashring": "tenant-a-ring", "tenants": ["foo", "prefix-*"], "tenant_matcher_type": "glob",
           "algorithm": "ketama", "external_labels": {"region": "eu1"},
           "endpoints": ["127.0.0.1:10907",
                         {"address": "node-2:10901", "capnproto_address": "node-2:19391", "az": "zone-a"}]},
          {"endpoints": ["a:1", "b:1"]}
        ]"#;
        let cfg = parse_config(json, 1).unwrap();
        assert_eq!(cfg.len(), 2);
        assert_eq!(cfg[0].name, "tenant-a-ring");
        assert_eq!(cfg[0].tenants, vec!["foo", "prefix-*"]);
        assert_eq!(cfg[0].tenant_matcher_type, TenantMatcherType::Glob);
        assert_eq!(cfg[0].algorithm, Some(Algorithm::Ketama));
        assert_eq!(
            cfg[0].external_labels.get("region").map(String::as_str),
            Some("eu1")
        );
        assert_eq!(
            cfg[0].endpoints,
            vec![
                Endpoint::new("127.0.0.1:10907"),
                Endpoint::with_az("node-2:10901", "zone-a")
            ]
        );
        assert_eq!(cfg[1].name, "");
        assert!(cfg[1].tenants.is_empty());
        assert_eq!(cfg[1].tenant_matcher_type, TenantMatcherType::Exact);
        assert_eq!(cfg[1].algorithm, None);
    }

    #[test]
    fn null_fields_are_defaults() {
        let cfg = parse_config(
            br#"[{"hashring":"x","tenants":null,"endpoints":["a:1"],"external_labels":null}]"#,
            1,
        )
        .unwrap();
        assert!(cfg[0].tenants.is_empty());
    }

    #[test]
    fn zero_shard_size_is_accepted() {
        parse_config(
            br#"[{"endpoints":["a:1"],"shuffle_sharding_config":{"shard_size":0}}]"#,
            1,
        )
        .unwrap();
    }

    #[test]
    fn rejections_name_the_ring_and_the_problem() {
        let cases: &[(&[u8], u64, &str)] = &[
            (b"[]", 1, "empty"),
            (b"{}", 1, "not valid JSON"),
            (
                b"[{\"hashring\":\"r\",\"endpoints\":[]}]",
                1,
                "hashring #0 (\"r\"): no endpoints",
            ),
            (
                b"[{\"endpoints\":[\"a:1\"]},{\"hashring\":\"two\"}]",
                1,
                "hashring #1 (\"two\"): no endpoints",
            ),
            (b"[{\"endpoints\":[\"a:1\",\"a:1\"]}]", 1, "listed twice"),
            (
                b"[{\"endpoints\":[{\"az\":\"x\"}]}]",
                1,
                "address must be set",
            ),
            (b"[{\"endpoints\":[\"\"]}]", 1, "address must be set"),
            (
                b"[{\"endpoints\":[\"a:1\"],\"algorithm\":\"md5\"}]",
                1,
                "unknown algorithm \"md5\"",
            ),
            (
                b"[{\"endpoints\":[\"a:1\"],\"tenant_matcher_type\":\"regex\"}]",
                1,
                "unknown tenant_matcher_type",
            ),
            (
                b"[{\"endpoints\":[\"a:1\"],\"tenants\":[\"[\"],\"tenant_matcher_type\":\"glob\"}]",
                1,
                "bad glob",
            ),
            (
                b"[{\"endpoints\":[\"a:1\",\"b:1\"]}]",
                3,
                "2 endpoints cannot hold replication factor 3",
            ),
            (
                b"[{\"endpoints\":[{\"address\":\"a:1\",\"az\":\"z\"}],\"algorithm\":\"hashmod\"}]",
                1,
                "hashmod does not support availability zones",
            ),
            (
                b"[{\"endpoints\":[\"a:1\"],\"shuffle_sharding_config\":{\"shard_size\":2}}]",
                1,
                "shuffle sharding",
            ),
        ];
        for (json, rf, want) in cases {
            let err = parse_config(json, *rf).unwrap_err().to_string();
            assert!(
                err.contains(want),
                "{}: got {err:?}, want it to contain {want:?}",
                String::from_utf8_lossy(json)
            );
        }
    }

    #[test]
    fn exact_tenants_are_not_glob_checked() {
        // With exact matching "[" is just a tenant name.
        parse_config(br#"[{"endpoints":["a:1"],"tenants":["["]}]"#, 1).unwrap();
    }
}

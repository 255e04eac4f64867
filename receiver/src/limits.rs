//! Thanos's receive limits file (`--receive.limits-config-file`):
//!
//! ```yaml
//! write:
//!   global:
//!     max_concurrency: 30          # optional
//!   default:
//!     request: {size_bytes_limit: 0, series_limit: 0, samples_limit: 0}
//!     head_series_limit: 0
//!   tenants:
//!     tenant-a:
//!       request: {series_limit: 100}
//!       head_series_limit: 1000
//! ```
//! `0` or absent means no limit. A tenant's own values override the defaults field by field.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    #[serde(default)]
    pub write: WriteLimits,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WriteLimits {
    #[serde(default)]
    pub global: GlobalLimits,
    #[serde(default)]
    pub default: TenantLimits,
    #[serde(default)]
    pub tenants: HashMap<String, TenantLimits>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct GlobalLimits {
    #[serde(default)]
    pub max_concurrency: Option<u64>,
    #[serde(default)]
    pub meta_monitoring_url: Option<String>,
    #[serde(default)]
    pub meta_monitoring_limit_query: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TenantLimits {
    #[serde(default)]
    pub request: RequestLimits,
    #[serde(default)]
    pub head_series_limit: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RequestLimits {
    #[serde(default)]
    pub size_bytes_limit: Option<u64>,
    #[serde(default)]
    pub series_limit: Option<u64>,
    #[serde(default)]
    pub samples_limit: Option<u64>,
}

/// Effective limits of one tenant (`None` = unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Effective {
    pub size_bytes: Option<u64>,
    pub series: Option<u64>,
    pub samples: Option<u64>,
    pub head_series: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error("reading limits file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing limits file {path}: {message}")]
    Parse { path: String, message: String },
}

fn nonzero(v: Option<u64>) -> Option<u64> {
    v.filter(|&x| x > 0)
}

impl LimitsConfig {
    pub fn parse(text: &str, path: &str) -> Result<Self, LimitsError> {
        if text.trim().is_empty() {
            return Ok(LimitsConfig::default());
        }
        serde_saphyr::from_str(text).map_err(|e| LimitsError::Parse {
            path: path.to_string(),
            message: e.to_string(),
        })
    }

    pub fn load(path: &Path) -> Result<Self, LimitsError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| LimitsError::Read {
            path: p.clone(),
            source,
        })?;
        Self::parse(&text, &p)
    }

    /// The limits that apply to `tenant`.
    pub fn for_tenant(&self, tenant: &str) -> Effective {
        let d = &self.write.default;
        let t = self.write.tenants.get(tenant);
        let pick = |own: Option<u64>, def: Option<u64>| match own {
            Some(v) => nonzero(Some(v)),
            None => nonzero(def),
        };
        Effective {
            size_bytes: pick(
                t.and_then(|t| t.request.size_bytes_limit),
                d.request.size_bytes_limit,
            ),
            series: pick(
                t.and_then(|t| t.request.series_limit),
                d.request.series_limit,
            ),
            samples: pick(
                t.and_then(|t| t.request.samples_limit),
                d.request.samples_limit,
            ),
            head_series: pick(t.and_then(|t| t.head_series_limit), d.head_series_limit),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_thanos_example_and_overrides() {
        let y = r#"
write:
  global:
    max_concurrency: 30
  default:
    request:
      size_bytes_limit: 1024
      series_limit: 1000
      samples_limit: 10
    head_series_limit: 5000
  tenants:
    acme:
      request:
        size_bytes_limit: 0
        series_limit: 5
      head_series_limit: 3
"#;
        let c = LimitsConfig::parse(y, "x").unwrap();
        let d = c.for_tenant("other");
        assert_eq!(
            d,
            Effective {
                size_bytes: Some(1024),
                series: Some(1000),
                samples: Some(10),
                head_series: Some(5000)
            }
        );
        let a = c.for_tenant("acme");
        assert_eq!(a.size_bytes, None);
        assert_eq!(a.series, Some(5));
        assert_eq!(a.samples, Some(10));
        assert_eq!(a.head_series, Some(3));
        assert!(LimitsConfig::parse("write: {bogus: 1}", "x").is_err());
        assert_eq!(
            LimitsConfig::parse("", "x").unwrap(),
            LimitsConfig::default()
        );
    }
}

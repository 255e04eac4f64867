//! Thanos's endpoint SD config (`--endpoint.sd-config[-file]`): endpoint addresses and the
//! TLS each is dialled with.
//!
//! ```yaml
//! default_client_config:        # replaces the --grpc-client-tls-* flags when it sets any TLS field
//!   tls_config: {enabled: true, ca_file: ca.pem, cert_file: c.pem, key_file: c.key, insecure_skip_verify: false, min_version: "1.3"}
//!   server_name: store.example
//!   compression: none           # none | snappy
//! endpoints:
//!   - address: store-1:10901
//!     client_config: {…}        # per-endpoint override
//! ```
//!
//! The resolution is Thanos's (v0.42 `cmd/thanos/endpointset.go`), so a file written for
//! Thanos dials the same way here:
//! - a client config that sets no TLS field and no server name uses the global one: the
//!   default client config if it sets any, else the flags;
//! - a per-endpoint config without `enabled` inherits each unset TLS field from the
//!   default client config (not from the flags), and setting a certificate, key, CA or
//!   `insecure_skip_verify` implies `enabled: true`; an explicit `""` unsets an inherited
//!   file;
//! - `enabled: true` without inheritance takes the unset fields' defaults; `enabled: false`
//!   is plaintext.
//!
//! One difference: Thanos applies per-endpoint TLS only to static addresses; here it also
//! applies to the addresses a `dns+` entry resolves to (the config is written on that
//! entry, and silently dialling it with other credentials would be a surprise).

use netsec::ClientOptions;

/// An endpoint address and the TLS options to dial it with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdTarget {
    pub address: String,
    pub tls: ClientOptions,
}

/// The parsed file: the options for addresses not listed in it (the `--endpoint` flags)
/// and its own endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdFile {
    pub global: ClientOptions,
    pub targets: Vec<SdTarget>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct RawConfig {
    #[serde(default)]
    default_client_config: RawClientConfig,
    #[serde(default)]
    endpoints: Vec<RawEndpoint>,
}

#[derive(Debug, serde::Deserialize)]
struct RawEndpoint {
    address: String,
    #[serde(default)]
    strict: bool,
    #[serde(default)]
    group: bool,
    #[serde(default)]
    client_config: RawClientConfig,
}

#[derive(Debug, Default, Clone, serde::Deserialize)]
struct RawClientConfig {
    #[serde(default)]
    tls_config: RawTls,
    #[serde(default)]
    server_name: String,
    #[serde(default)]
    compression: String,
}

/// Every field optional: "unset" and "set to the default" differ in the inheritance.
#[derive(Debug, Default, Clone, serde::Deserialize)]
struct RawTls {
    enabled: Option<bool>,
    insecure_skip_verify: Option<bool>,
    cert_file: Option<String>,
    key_file: Option<String>,
    ca_file: Option<String>,
    min_version: Option<String>,
}

impl RawClientConfig {
    /// Thanos's `UseGlobalTLSOpts`: nothing TLS-related set.
    fn uses_global(&self) -> bool {
        let t = &self.tls_config;
        t.enabled.is_none()
            && t.insecure_skip_verify.is_none()
            && t.cert_file.is_none()
            && t.key_file.is_none()
            && t.ca_file.is_none()
            && t.min_version.is_none()
            && self.server_name.is_empty()
    }

    fn check_compression(&self) -> Result<(), String> {
        match self.compression.as_str() {
            "" | "none" => Ok(()),
            "snappy" => {
                // gRPC compression only trades CPU for bytes on the wire; answers are
                // the same. Said once per load, so a Thanos file keeps working.
                tracing::warn!(
                    "endpoint SD config asks for snappy gRPC compression: not supported by this querier, using none"
                );
                Ok(())
            }
            other => Err(format!(
                "invalid compression: {other}, must be 'none' or 'snappy'"
            )),
        }
    }
}

impl RawTls {
    /// Thanos's `hasTLSConfig`: a field that only makes sense with TLS.
    fn implies_tls(&self) -> bool {
        self.cert_file.is_some()
            || self.key_file.is_some()
            || self.ca_file.is_some()
            || self.insecure_skip_verify.is_some()
    }

    /// Thanos's `applyDefaults`: unset fields from `fallback`, else the defaults.
    fn resolve(&self, fallback: Option<&RawTls>, server_name: &str) -> ClientOptions {
        fn pick<T: Clone>(own: &Option<T>, fb: Option<&Option<T>>, default: T) -> T {
            own.clone()
                .or_else(|| fb.and_then(|f| f.clone()))
                .unwrap_or(default)
        }
        let enabled = match self.enabled {
            Some(e) => e,
            None if self.implies_tls() => true,
            None => pick(&None, fallback.map(|f| &f.enabled), false),
        };
        let file = |own: &Option<String>, fb: Option<&Option<String>>| {
            Some(pick(own, fb, String::new()))
                .filter(|p| !p.is_empty())
                .map(std::path::PathBuf::from)
        };
        ClientOptions {
            secure: enabled,
            skip_verify: pick(
                &self.insecure_skip_verify,
                fallback.map(|f| &f.insecure_skip_verify),
                false,
            ),
            cert: file(&self.cert_file, fallback.map(|f| &f.cert_file)),
            key: file(&self.key_file, fallback.map(|f| &f.key_file)),
            ca: file(&self.ca_file, fallback.map(|f| &f.ca_file)),
            server_name: server_name.to_string(),
            min_version: pick(
                &self.min_version,
                fallback.map(|f| &f.min_version),
                "1.3".to_string(),
            ),
        }
    }
}

/// Parses the file's YAML and resolves every endpoint's TLS options against the flags'.
pub fn parse(text: &str, flags: &ClientOptions) -> Result<SdFile, String> {
    let raw: RawConfig = if text.trim().is_empty() {
        RawConfig::default()
    } else {
        serde_saphyr::from_str(text).map_err(|e| e.to_string())?
    };
    let default = &raw.default_client_config;
    default
        .check_compression()
        .map_err(|e| format!("default_client_config: {e}"))?;
    let (global, global_tls) = if default.uses_global() {
        (flags.clone(), None)
    } else {
        (
            default.tls_config.resolve(None, &default.server_name),
            Some(&default.tls_config),
        )
    };
    let mut targets = Vec::with_capacity(raw.endpoints.len());
    for e in &raw.endpoints {
        if e.address.is_empty() {
            return Err("endpoint with an empty address".into());
        }
        if e.strict && e.address.starts_with("dns") {
            return Err(format!(
                "{} is a dynamically specified endpoint i.e. it uses SD and that is not permitted under strict mode.",
                e.address
            ));
        }
        if e.group {
            tracing::warn!(address = %e.address, "endpoint groups are not supported: the group's addresses are queried as separate endpoints");
        }
        let cc = &e.client_config;
        cc.check_compression()
            .map_err(|err| format!("endpoint {}: {err}", e.address))?;
        let tls = if cc.uses_global() {
            global.clone()
        } else if cc.tls_config.enabled.is_none() {
            cc.tls_config.resolve(global_tls, &cc.server_name)
        } else {
            cc.tls_config.resolve(None, &cc.server_name)
        };
        targets.push(SdTarget {
            address: e.address.clone(),
            tls,
        });
    }
    Ok(SdFile { global, targets })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn flags() -> ClientOptions {
        ClientOptions {
            secure: true,
            ca: Some("flag-ca.pem".into()),
            ..ClientOptions::default()
        }
    }

    fn target<'a>(f: &'a SdFile, addr: &str) -> &'a ClientOptions {
        &f.targets.iter().find(|t| t.address == addr).unwrap().tls
    }

    #[test]
    fn without_client_configs_everything_uses_the_flags() {
        let f = parse("endpoints:\n  - address: a:1\n", &flags()).unwrap();
        assert_eq!(f.global, flags());
        assert_eq!(target(&f, "a:1"), &flags());
        let empty = parse("", &flags()).unwrap();
        assert_eq!(empty.global, flags());
        assert!(empty.targets.is_empty());
    }

    #[test]
    fn default_client_config_replaces_the_flags_and_endpoints_override_it() {
        let text = r#"
default_client_config:
  tls_config:
    enabled: true
    ca_file: default-ca.pem
    cert_file: default.crt
    key_file: default.key
  server_name: default.example
endpoints:
  - address: plain:1
  - address: own-cert:1
    client_config:
      tls_config:
        cert_file: own.crt
        key_file: own.key
  - address: unset-cert:1
    client_config:
      tls_config:
        cert_file: ""
        key_file: ""
  - address: off:1
    client_config:
      tls_config:
        enabled: false
  - address: fresh:1
    client_config:
      tls_config:
        enabled: true
        min_version: "1.2"
      server_name: fresh.example
"#;
        let f = parse(text, &flags()).unwrap();
        let default = ClientOptions {
            secure: true,
            ca: Some(PathBuf::from("default-ca.pem")),
            cert: Some(PathBuf::from("default.crt")),
            key: Some(PathBuf::from("default.key")),
            server_name: "default.example".into(),
            ..ClientOptions::default()
        };
        assert_eq!(f.global, default, "the flags' CA is not inherited");
        assert_eq!(target(&f, "plain:1"), &default);
        // Inherits the CA from the default, not its server name (Thanos: per endpoint).
        assert_eq!(
            target(&f, "own-cert:1"),
            &ClientOptions {
                secure: true,
                ca: Some(PathBuf::from("default-ca.pem")),
                cert: Some(PathBuf::from("own.crt")),
                key: Some(PathBuf::from("own.key")),
                ..ClientOptions::default()
            }
        );
        let unset = target(&f, "unset-cert:1");
        assert!(unset.secure && unset.cert.is_none() && unset.key.is_none());
        assert_eq!(unset.ca, Some(PathBuf::from("default-ca.pem")));
        assert!(!target(&f, "off:1").secure);
        assert_eq!(
            target(&f, "fresh:1"),
            &ClientOptions {
                secure: true,
                server_name: "fresh.example".into(),
                min_version: "1.2".into(),
                ..ClientOptions::default()
            },
            "explicit enabled: nothing inherited"
        );
    }

    #[test]
    fn a_tls_field_implies_enabled_even_over_plaintext_flags() {
        let text = "endpoints:\n  - address: a:1\n    client_config:\n      tls_config:\n        insecure_skip_verify: true\n";
        let f = parse(text, &ClientOptions::default()).unwrap();
        assert!(!f.global.secure);
        let t = target(&f, "a:1");
        assert!(t.secure && t.skip_verify);
    }

    #[test]
    fn invalid_files_are_errors() {
        let e = parse(
            "endpoints:\n  - address: a:1\n    client_config:\n      compression: gzip\n",
            &flags(),
        )
        .unwrap_err();
        assert!(e.contains("endpoint a:1: invalid compression: gzip"), "{e}");
        let e = parse(
            "endpoints:\n  - address: dns+x:1\n    strict: true\n",
            &flags(),
        )
        .unwrap_err();
        assert!(e.contains("not permitted under strict mode"), "{e}");
        assert!(parse("endpoints: 3", &flags()).is_err());
        assert!(parse("endpoints:\n  - address: \"\"\n", &flags()).is_err());
        assert!(
            parse(
                "endpoints:\n  - address: a:1\n    client_config:\n      compression: snappy\n",
                &flags()
            )
            .is_ok()
        );
    }
}

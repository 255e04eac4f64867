//! Bearer JWTs, as OIDC providers issue them and Prometheus's `authorization` /
//! `oauth2` clients and Grafana's "Forward OAuth identity" send them
//! (`Authorization: Bearer <JWT>`), verified offline against keys from files.
//!
//! An Orrery extension of the web config (the `jwt` key; exporter-toolkit has none):
//!
//! ```yaml
//! jwt:
//!   jwks_file: jwks.json          # the provider's JWKS (RS256 / ES256 public keys)
//!   hmac_secret_file: hs256.key   # or/and a shared secret (HS256 only)
//!   issuer: https://idp.example   # required `iss`
//!   audiences: [orrery]           # required `aud` (one of them)
//!   clock_skew: 30s               # leeway on exp/nbf (default 60s, at most 5m)
//!   tenant_claim: tenant          # optional: the claim naming the caller's tenant
//! ```
//!
//! Keys are files (a JWKS fetched and mounted by whoever runs Orrery), never fetched
//! here: a listener that authenticates must not depend on reaching the provider, and
//! the files reload like certificates when they change. The algorithm is the key's,
//! never the token's choice: an RSA key verifies RS256 only, a P-256 key ES256 only,
//! the secret HS256 only, so `alg: none` and key-confusion tokens find no key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::identity::{FailureReason, Principal, anchored};
use crate::pem::read_bounded;

/// Longest token verified. An OIDC access or ID token is 0.5–2 KiB; the bound keeps
/// base64 and JSON decoding of hostile input cheap (the header itself is bounded too).
pub const MAX_JWT_BYTES: usize = 4000;
/// A JWKS larger than this is refused at load (a provider's holds a few keys).
const MAX_JWKS_BYTES: u64 = 1 << 20;
/// An HMAC secret file larger than this is refused.
const MAX_SECRET_BYTES: u64 = 64 * 1024;
/// Shorter HMAC secrets are refused: RFC 7518 §3.2 asks for at least the hash size.
pub const MIN_HMAC_SECRET: usize = 32;
/// Leeway on `exp` / `nbf` when `clock_skew` is not set.
const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// More leeway than this would keep expired tokens usable for too long.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// The `jwt` section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJwt {
    #[serde(default)]
    jwks_file: Option<String>,
    #[serde(default)]
    hmac_secret_file: Option<String>,
    #[serde(default)]
    issuer: String,
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default)]
    clock_skew: Option<String>,
    #[serde(default)]
    tenant_claim: Option<String>,
}

/// One verification key and the only algorithm it verifies.
#[derive(Clone)]
struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// A loaded `jwt` section: keys, required claims and the tenant mapping.
#[derive(Debug, Clone)]
pub struct JwtVerifier {
    keys: Vec<Key>,
    issuer: String,
    audiences: Vec<String>,
    leeway: Duration,
    tenant_claim: Option<String>,
    files: Vec<PathBuf>,
}

/// Why a token was refused (all 401; the reason is counted and logged, never sent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("token larger than {MAX_JWT_BYTES} bytes")]
    TooLarge,
    #[error("not a JWT: {0}")]
    Malformed(String),
    #[error("no configured key verifies {alg:?} tokens with kid {kid:?}")]
    NoKey { alg: String, kid: Option<String> },
    #[error("signature does not verify")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet (nbf)")]
    NotYetValid,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
    #[error("claim {0:?} is missing")]
    MissingClaim(String),
    #[error("claim {0:?} is not a non-empty string")]
    BadTenantClaim(String),
}

impl JwtError {
    pub fn reason(&self) -> FailureReason {
        match self {
            JwtError::Expired => FailureReason::expired_jwt,
            JwtError::TooLarge | JwtError::Malformed(_) => FailureReason::malformed,
            _ => FailureReason::bad_jwt,
        }
    }
}

/// Whether a bearer credential has a JWT's shape (three base64url parts), so a
/// listener with both static tokens and JWTs knows which check applies.
pub fn looks_like_jwt(token: &[u8]) -> bool {
    token.iter().filter(|&&b| b == b'.').count() == 2
        && token
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='))
}

impl JwtVerifier {
    /// Validates the section and reads its key files (relative to the web config's
    /// directory `dir`); every problem is a load error naming the key.
    pub(crate) fn load(raw: RawJwt, dir: &Path) -> Result<JwtVerifier, String> {
        if raw.issuer.is_empty() {
            return Err("jwt.issuer is required (the `iss` every token must carry)".into());
        }
        if raw.audiences.is_empty() || raw.audiences.iter().any(String::is_empty) {
            return Err(
                "jwt.audiences is required: one or more non-empty `aud` values to accept".into(),
            );
        }
        let leeway = match raw.clock_skew.as_deref() {
            None | Some("") => DEFAULT_CLOCK_SKEW,
            Some(s) => crate::webconfig::parse_duration(s)
                .map_err(|e| format!("jwt.clock_skew {s:?}: {e}"))?,
        };
        if leeway > MAX_CLOCK_SKEW {
            return Err(format!(
                "jwt.clock_skew {leeway:?} is above the maximum {MAX_CLOCK_SKEW:?}"
            ));
        }
        if raw.tenant_claim.as_deref() == Some("") {
            return Err("jwt.tenant_claim is empty".into());
        }
        let mut keys = Vec::new();
        let mut files = Vec::new();
        if let Some(f) = raw.jwks_file.filter(|f| !f.is_empty()) {
            let path = anchored(dir, &f);
            keys.extend(jwks_keys(&path).map_err(|e| format!("jwt.jwks_file: {e}"))?);
            files.push(path);
        }
        if let Some(f) = raw.hmac_secret_file.filter(|f| !f.is_empty()) {
            let path = anchored(dir, &f);
            let bytes = read_bounded(&path, MAX_SECRET_BYTES)
                .map_err(|e| format!("jwt.hmac_secret_file: {e}"))?;
            let secret = bytes.trim_ascii();
            if secret.len() < MIN_HMAC_SECRET {
                return Err(format!(
                    "jwt.hmac_secret_file {}: {} bytes, an HS256 secret needs at least {MIN_HMAC_SECRET}",
                    path.display(),
                    secret.len()
                ));
            }
            let key = DecodingKey::from_secret(secret)
                .map_err(|e| format!("jwt.hmac_secret_file: {e}"))?;
            keys.push(Key {
                kid: None,
                alg: Algorithm::HS256,
                key,
            });
            files.push(path);
        }
        if keys.is_empty() {
            return Err("jwt needs jwks_file or hmac_secret_file".into());
        }
        Ok(JwtVerifier {
            keys,
            issuer: raw.issuer,
            audiences: raw.audiences,
            leeway,
            tenant_claim: raw.tenant_claim,
            files,
        })
    }

    /// The key files, watched for changes with the web config.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Verifies signature, `exp`, `nbf`, `iss` and `aud`; the principal is `sub` (or
    /// `jwt`), bound to the tenant claim's value when `tenant_claim` is set.
    pub fn verify(&self, token: &[u8]) -> Result<Principal, JwtError> {
        if token.len() > MAX_JWT_BYTES {
            return Err(JwtError::TooLarge);
        }
        let text =
            std::str::from_utf8(token).map_err(|_| JwtError::Malformed("not text".into()))?;
        let header =
            jsonwebtoken::decode_header(text).map_err(|e| JwtError::Malformed(e.to_string()))?;
        let usable = |k: &&Key| k.alg == header.alg;
        let by_kid: Vec<&Key> = match &header.kid {
            Some(kid) => {
                let named: Vec<&Key> = self
                    .keys
                    .iter()
                    .filter(usable)
                    .filter(|k| k.kid.as_deref() == Some(kid.as_str()))
                    .collect();
                if named.is_empty() {
                    // A provider may leave kid out of its JWKS; such keys still apply.
                    self.keys
                        .iter()
                        .filter(usable)
                        .filter(|k| k.kid.is_none())
                        .collect()
                } else {
                    named
                }
            }
            None => self.keys.iter().filter(usable).collect(),
        };
        if by_kid.is_empty() {
            return Err(JwtError::NoKey {
                alg: format!("{:?}", header.alg),
                kid: header.kid,
            });
        }
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&self.audiences);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.validate_exp = true;
        v.validate_nbf = true;
        v.leeway = self.leeway.as_secs();
        let mut last = JwtError::BadSignature;
        for k in by_kid {
            match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                text, &k.key, &v,
            ) {
                Ok(data) => return self.principal(&data.claims),
                Err(e) => {
                    last = map_error(e.kind());
                    // Only a signature mismatch means another key might fit; a claim
                    // error is the token's, whichever key signed it.
                    if last != JwtError::BadSignature {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    fn principal(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Principal, JwtError> {
        let name = claims
            .get("sub")
            .and_then(|s| s.as_str())
            .filter(|s| !s.is_empty())
            .unwrap_or("jwt")
            .to_string();
        let tenant = match &self.tenant_claim {
            None => None,
            Some(c) => match claims.get(c) {
                None => return Err(JwtError::MissingClaim(c.clone())),
                Some(serde_json::Value::String(t)) if !t.is_empty() => Some(t.clone()),
                Some(_) => return Err(JwtError::BadTenantClaim(c.clone())),
            },
        };
        Ok(Principal { name, tenant })
    }
}

fn map_error(kind: &jsonwebtoken::errors::ErrorKind) -> JwtError {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::InvalidSignature => JwtError::BadSignature,
        K::ExpiredSignature => JwtError::Expired,
        K::ImmatureSignature => JwtError::NotYetValid,
        K::InvalidIssuer => JwtError::WrongIssuer,
        K::InvalidAudience => JwtError::WrongAudience,
        K::MissingRequiredClaim(c) => JwtError::MissingClaim(c.clone()),
        other => JwtError::Malformed(format!("{other:?}")),
    }
}

/// The RS256 / ES256 signing keys of a JWKS file. Encryption keys (`use: enc`) are
/// skipped; a symmetric (`oct`) key or another algorithm is an error naming it, so a
/// JWKS never silently verifies less (or more) than its author meant.
fn jwks_keys(path: &Path) -> Result<Vec<Key>, String> {
    let bytes = read_bounded(path, MAX_JWKS_BYTES).map_err(|e| e.to_string())?;
    let set: JwkSet = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: not a JWKS: {e}", path.display()))?;
    let mut keys = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let name = jwk.common.key_id.clone().unwrap_or_else(|| format!("#{i}"));
        if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
            continue;
        }
        let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
            (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
            (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
                if ec.curve == EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            (AlgorithmParameters::OctetKey(_), _) => {
                return Err(format!(
                    "key {name}: symmetric keys do not belong in a JWKS file (use hmac_secret_file)"
                ));
            }
            (_, alg) => {
                return Err(format!(
                    "key {name}: only RS256 (RSA) and ES256 (P-256) keys are supported, not {alg:?}"
                ));
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {name}: {e}"))?;
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
        });
    }
    if keys.is_empty() {
        return Err(format!("{}: no signing key", path.display()));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::JwtSigner;
    use serde_json::json;

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }

    fn claims(extra: serde_json::Value) -> serde_json::Value {
        let mut c = json!({
            "iss": "https://idp.example",
            "aud": "orrery",
            "sub": "prometheus-a",
            "exp": now() + 300,
            "tenant": "team-a",
        });
        if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                if v.is_null() {
                    c.remove(k);
                } else {
                    c.insert(k.clone(), v.clone());
                }
            }
        }
        c
    }

    struct Setup {
        _dir: tempfile::TempDir,
        verifier: JwtVerifier,
        es: JwtSigner,
        rs: JwtSigner,
        hs: JwtSigner,
    }

    fn setup(tenant_claim: Option<&str>) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let es = JwtSigner::es256("es-1");
        let rs = JwtSigner::rs256("rs-1");
        let hs = JwtSigner::hs256(&[7u8; 40]);
        std::fs::write(dir.path().join("jwks.json"), JwtSigner::jwks(&[&es, &rs])).unwrap();
        std::fs::write(dir.path().join("hs.key"), [7u8; 40]).unwrap();
        let raw = RawJwt {
            jwks_file: Some("jwks.json".into()),
            hmac_secret_file: Some("hs.key".into()),
            issuer: "https://idp.example".into(),
            audiences: vec!["orrery".into(), "grafana".into()],
            clock_skew: Some("10s".into()),
            tenant_claim: tenant_claim.map(str::to_string),
        };
        let verifier = JwtVerifier::load(raw, dir.path()).unwrap();
        Setup {
            _dir: dir,
            verifier,
            es,
            rs,
            hs,
        }
    }

    #[test]
    fn good_tokens_of_each_algorithm_carry_subject_and_tenant() {
        let s = setup(Some("tenant"));
        for signer in [&s.es, &s.rs, &s.hs] {
            let t = signer.sign(&claims(json!({})));
            assert_eq!(
                s.verifier.verify(t.as_bytes()),
                Ok(Principal {
                    name: "prometheus-a".into(),
                    tenant: Some("team-a".into())
                }),
                "{:?}",
                signer.alg()
            );
        }
        // `aud` may be a list; one accepted audience is enough.
        let t =
            s.es.sign(&claims(json!({"aud": ["other", "grafana"], "sub": null})));
        assert_eq!(
            s.verifier.verify(t.as_bytes()).map(|p| p.name),
            Ok("jwt".to_string())
        );
    }

    #[test]
    fn expired_wrong_audience_issuer_and_missing_claims_are_refused() {
        let s = setup(Some("tenant"));
        let v = |c: serde_json::Value| s.verifier.verify(s.es.sign(&c).as_bytes());
        assert_eq!(
            v(claims(json!({"exp": now() - 60}))),
            Err(JwtError::Expired)
        );
        // Within the 10 s clock skew: still good.
        assert!(v(claims(json!({"exp": now() - 5}))).is_ok());
        assert_eq!(
            v(claims(json!({"nbf": now() + 120}))),
            Err(JwtError::NotYetValid)
        );
        assert_eq!(
            v(claims(json!({"aud": "someone-else"}))),
            Err(JwtError::WrongAudience)
        );
        assert_eq!(
            v(claims(json!({"iss": "https://evil.example"}))),
            Err(JwtError::WrongIssuer)
        );
        assert_eq!(
            v(claims(json!({"exp": null}))),
            Err(JwtError::MissingClaim("exp".into()))
        );
        assert_eq!(
            v(claims(json!({"aud": null}))),
            Err(JwtError::MissingClaim("aud".into()))
        );
        assert_eq!(
            v(claims(json!({"tenant": null}))),
            Err(JwtError::MissingClaim("tenant".into()))
        );
        assert_eq!(
            v(claims(json!({"tenant": 7}))),
            Err(JwtError::BadTenantClaim("tenant".into()))
        );
        assert_eq!(
            JwtError::Expired.reason(),
            FailureReason::expired_jwt,
            "expiry is counted apart"
        );
    }

    #[test]
    fn wrong_keys_alg_none_and_key_confusion_are_refused() {
        let s = setup(None);
        let c = claims(json!({}));
        // A key the JWKS does not hold, with a kid it does hold and with an unknown kid.
        let stranger = JwtSigner::es256("es-1");
        assert_eq!(
            s.verifier.verify(stranger.sign(&c).as_bytes()),
            Err(JwtError::BadSignature)
        );
        let unknown = JwtSigner::es256("es-9");
        assert!(matches!(
            s.verifier.verify(unknown.sign(&c).as_bytes()),
            Err(JwtError::NoKey { .. })
        ));
        // Another HMAC secret.
        let other_hs = JwtSigner::hs256(&[8u8; 40]);
        assert_eq!(
            s.verifier.verify(other_hs.sign(&c).as_bytes()),
            Err(JwtError::BadSignature)
        );
        // alg none: an unsigned token.
        use base64::Engine;
        let b64 = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let none = format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            b64(&c)
        );
        assert!(matches!(
            s.verifier.verify(none.as_bytes()),
            Err(JwtError::Malformed(_))
        ));
        // Key confusion: HS256 "signed" with the RSA public key's JWK text as secret, and
        // an RS256 header on an ES256 signature: no key takes that algorithm from them.
        let rsa_pub = JwtSigner::jwks(&[&s.rs]);
        let confused = JwtSigner::hs256_with_kid(rsa_pub.as_bytes(), "rs-1");
        assert_eq!(
            s.verifier.verify(confused.sign(&c).as_bytes()),
            Err(JwtError::BadSignature)
        );
        let es_sig = s.es.sign(&c);
        let parts: Vec<&str> = es_sig.split('.').collect();
        let swapped = format!(
            "{}.{}.{}",
            b64(&json!({"alg": "RS256", "kid": "es-1"})),
            parts[1],
            parts[2]
        );
        assert!(s.verifier.verify(swapped.as_bytes()).is_err());
        // Tampered payload.
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            b64(&claims(json!({"sub": "admin"}))),
            parts[2]
        );
        assert_eq!(
            s.verifier.verify(tampered.as_bytes()),
            Err(JwtError::BadSignature)
        );
    }

    #[test]
    fn oversized_and_malformed_tokens_are_refused_cheaply() {
        let s = setup(None);
        let big =
            s.es.sign(&claims(json!({"padding": "x".repeat(MAX_JWT_BYTES)})));
        assert_eq!(s.verifier.verify(big.as_bytes()), Err(JwtError::TooLarge));
        for bad in [
            "",
            "a.b",
            "a.b.c",
            "....",
            "\u{ff}.x.y",
            "eyJhbGciOiJIUzI1NiJ9.e30",
        ] {
            assert!(s.verifier.verify(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert!(looks_like_jwt(s.es.sign(&claims(json!({}))).as_bytes()));
        assert!(!looks_like_jwt(b"static-token-0123456789"));
        assert!(!looks_like_jwt(b"a.b.c d"));
    }

    #[test]
    fn config_errors_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let es = JwtSigner::es256("k");
        std::fs::write(dir.path().join("jwks.json"), JwtSigner::jwks(&[&es])).unwrap();
        std::fs::write(dir.path().join("short.key"), "too-short").unwrap();
        std::fs::write(
            dir.path().join("oct.json"),
            r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"o"}]}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("junk.json"), "{").unwrap();
        let raw =
            |jwks: Option<&str>, hs: Option<&str>, iss: &str, aud: &[&str], skew: &str| RawJwt {
                jwks_file: jwks.map(str::to_string),
                hmac_secret_file: hs.map(str::to_string),
                issuer: iss.into(),
                audiences: aud.iter().map(|s| s.to_string()).collect(),
                clock_skew: Some(skew.into()),
                tenant_claim: None,
            };
        let err = |r: RawJwt| JwtVerifier::load(r, dir.path()).unwrap_err();
        assert!(err(raw(Some("jwks.json"), None, "", &["a"], "1s")).contains("jwt.issuer"));
        assert!(err(raw(Some("jwks.json"), None, "i", &[], "1s")).contains("jwt.audiences"));
        assert!(err(raw(Some("jwks.json"), None, "i", &["a"], "1h")).contains("clock_skew"));
        assert!(err(raw(None, None, "i", &["a"], "1s")).contains("jwks_file or hmac_secret_file"));
        assert!(err(raw(None, Some("short.key"), "i", &["a"], "1s")).contains("at least 32"));
        assert!(err(raw(Some("oct.json"), None, "i", &["a"], "1s")).contains("symmetric"));
        assert!(err(raw(Some("junk.json"), None, "i", &["a"], "1s")).contains("not a JWKS"));
        assert!(err(raw(Some("nope.json"), None, "i", &["a"], "1s")).contains("nope.json"));
        assert!(
            JwtVerifier::load(raw(Some("jwks.json"), None, "i", &["a"], "1s"), dir.path()).is_ok()
        );
    }
}

//! Who is calling and which tenant that binds them to: bearer tokens (static, from files),
//! tenants bound to basic-auth users and tokens, the tenant named by a verified client
//! certificate, and the one rule both the receiver and the querier apply to pick the
//! request's tenant (see [`TenantPolicy::resolve`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use http::{HeaderMap, HeaderName, StatusCode};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rustls::pki_types::CertificateDer;

use crate::pem::read_bounded;

/// A token file larger than this is refused (a token is a few dozen bytes).
const MAX_TOKEN_FILE: u64 = 64 * 1024;
/// Shorter tokens are refused at load: they could be guessed.
pub const MIN_TOKEN_LEN: usize = 16;

/// The caller an authenticated request came from, put into the request's extensions by
/// the web-config guard. `tenant` is set when the credential is bound to one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The basic-auth user or the token's `name`.
    pub name: String,
    pub tenant: Option<String>,
}

/// One static bearer token: its SHA-256 (the token itself is not kept), a name for logs
/// and the tenant it writes to or reads from.
#[derive(Debug, Clone)]
pub struct BearerToken {
    pub name: String,
    pub tenant: Option<String>,
    pub file: PathBuf,
    digest: [u8; 32],
}

impl BearerToken {
    /// Reads the token from `file` (surrounding whitespace and a trailing newline, as
    /// `echo` or a Secret leaves them, are trimmed).
    pub fn load(
        name: String,
        tenant: Option<String>,
        file: PathBuf,
    ) -> Result<BearerToken, String> {
        let bytes = read_bounded(&file, MAX_TOKEN_FILE).map_err(|e| e.to_string())?;
        let token = bytes.trim_ascii();
        if token.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "token file {} holds {} bytes: a token needs at least {MIN_TOKEN_LEN}",
                file.display(),
                token.len()
            ));
        }
        if token.iter().any(|b| !b.is_ascii_graphic()) {
            return Err(format!(
                "token file {} holds a token with spaces or non-printable bytes (it could never be sent in a header)",
                file.display()
            ));
        }
        Ok(BearerToken {
            name,
            tenant,
            file,
            digest: sha256(token),
        })
    }
}

impl BearerToken {
    /// Whether two entries hold the same token (a config error: whose tenant would win?).
    pub fn same_token(&self, other: &BearerToken) -> bool {
        self.digest == other.digest
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Finds the token a client presented. Every configured token is compared, each in
/// constant time over equal-length digests, so the answer's timing says nothing about
/// which token (or how much of one) matched.
pub fn match_token<'a>(tokens: &'a [BearerToken], presented: &[u8]) -> Option<&'a BearerToken> {
    let d = sha256(presented);
    let mut found = None;
    for t in tokens {
        let mut diff = 0u8;
        for (a, b) in t.digest.iter().zip(d.iter()) {
            diff |= a ^ b;
        }
        if std::hint::black_box(diff) == 0 && found.is_none() {
            found = Some(t);
        }
    }
    found
}

/// `Authorization: Bearer <token>` → the token; `None` for any other shape.
pub fn parse_bearer(value: &[u8]) -> Option<&[u8]> {
    if value.len() < 7 || !value[..7].eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let t = value[7..].trim_ascii();
    (!t.is_empty()).then_some(t)
}

/// Why a request was refused before reaching its handler, as counted in the
/// `..._auth_failures_total{reason}` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum FailureReason {
    /// No `Authorization` header.
    missing,
    /// Over the header size bound, bad base64, no colon, empty token.
    malformed,
    /// A scheme other than the configured ones (e.g. Bearer when only basic auth is set).
    unsupported_scheme,
    /// Basic auth with a wrong user or password.
    bad_password,
    /// A bearer token that is not configured.
    bad_token,
    /// A bearer JWT that does not verify: signature, unknown key, issuer, audience,
    /// missing claims.
    bad_jwt,
    /// A bearer JWT past its `exp` (plus the clock skew).
    expired_jwt,
    /// The tenant comes from the client certificate but there is none.
    no_client_certificate,
    /// The client certificate lacks the configured tenant field.
    certificate_field_missing,
    /// A tenant header named another tenant than the credential's (403).
    tenant_mismatch,
    /// Over the web config's `rate_limit` (429).
    rate_limited,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct FailureLabels {
    pub reason: FailureReason,
}

/// Refused requests by reason; the service registers it under its own name.
pub type FailureCounter = Family<FailureLabels, Counter>;

/// Counts one refusal.
pub fn count(c: &FailureCounter, reason: FailureReason) {
    c.get_or_create(&FailureLabels { reason }).inc();
}

/// Thanos's `--receive.tenant-certificate-field` / `--query.tenant-certificate-field`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertField {
    Organization,
    OrganizationalUnit,
    CommonName,
}

impl CertField {
    /// `""` → none; otherwise one of Thanos's three names.
    pub fn parse(s: &str) -> Result<Option<CertField>, String> {
        match s {
            "" => Ok(None),
            "organization" => Ok(Some(CertField::Organization)),
            "organizationalUnit" => Ok(Some(CertField::OrganizationalUnit)),
            "commonName" => Ok(Some(CertField::CommonName)),
            o => Err(format!(
                "unknown certificate field {o:?}: expected organization, organizationalUnit or commonName"
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            CertField::Organization => "organization",
            CertField::OrganizationalUnit => "organizationalUnit",
            CertField::CommonName => "commonName",
        }
    }

    /// The field's first value in the leaf certificate's subject (Thanos takes the first
    /// O/OU; a subject has one CN).
    pub fn value(self, leaf: &CertificateDer<'_>) -> Option<String> {
        let (_, c) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
        let subject = c.subject();
        let first = match self {
            CertField::Organization => subject.iter_organization().next(),
            CertField::OrganizationalUnit => subject.iter_organizational_unit().next(),
            CertField::CommonName => subject.iter_common_name().next(),
        };
        first
            .and_then(|a| a.as_str().ok())
            .map(str::to_string)
            .filter(|s| !s.is_empty())
    }
}

/// Why no tenant could be picked for a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    #[error(
        "the tenant comes from the client certificate's {0} but the client sent no certificate"
    )]
    NoCertificate(&'static str),
    #[error("the client certificate has no {0} to take the tenant from")]
    FieldMissing(&'static str),
    #[error(
        "the credentials are bound to tenant {bound:?} but the {header} header asks for {asked:?}"
    )]
    Mismatch {
        header: String,
        asked: String,
        bound: String,
    },
    #[error(
        "the client certificate names tenant {cert:?} but the credentials are bound to {user:?}"
    )]
    CredentialsDisagree { cert: String, user: String },
    #[error("the {0} header is not valid text")]
    BadHeader(String),
}

impl TenantError {
    /// 401 when the client did not prove a tenant, 403 when it proved one and asked for
    /// another, 400 for a header that is not text.
    pub fn status(&self) -> StatusCode {
        match self {
            TenantError::NoCertificate(_) | TenantError::FieldMissing(_) => {
                StatusCode::UNAUTHORIZED
            }
            TenantError::Mismatch { .. } | TenantError::CredentialsDisagree { .. } => {
                StatusCode::FORBIDDEN
            }
            TenantError::BadHeader(_) => StatusCode::BAD_REQUEST,
        }
    }

    pub fn reason(&self) -> FailureReason {
        match self {
            TenantError::NoCertificate(_) => FailureReason::no_client_certificate,
            TenantError::FieldMissing(_) => FailureReason::certificate_field_missing,
            TenantError::Mismatch { .. } | TenantError::CredentialsDisagree { .. } => {
                FailureReason::tenant_mismatch
            }
            TenantError::BadHeader(_) => FailureReason::malformed,
        }
    }
}

/// How a service picks a request's tenant: the header, the default, and optionally a
/// client-certificate field.
#[derive(Debug, Clone)]
pub struct TenantPolicy {
    pub header: HeaderName,
    pub default: String,
    pub cert_field: Option<CertField>,
}

impl TenantPolicy {
    pub fn new(header: &str, default: &str, cert_field: &str) -> Result<TenantPolicy, String> {
        Ok(TenantPolicy {
            header: HeaderName::from_bytes(header.as_bytes())
                .map_err(|e| format!("tenant header {header:?}: {e}"))?,
            default: default.to_string(),
            cert_field: CertField::parse(cert_field)?,
        })
    }

    /// The request's tenant. A tenant proved by credentials (the certificate field when
    /// configured, else a tenant bound to the basic-auth user or token) wins; a tenant
    /// header may repeat it but never name another one (403, not silently overridden —
    /// the header is what an attacker controls). Without such a credential: the header,
    /// else the default. The result still needs the service's tenant-name validation.
    pub fn resolve(
        &self,
        headers: &HeaderMap,
        principal: Option<&Principal>,
        peer_certificates: Option<&[CertificateDer<'static>]>,
    ) -> Result<String, TenantError> {
        let from_cert = match self.cert_field {
            None => None,
            Some(f) => {
                let leaf = peer_certificates
                    .and_then(|c| c.first())
                    .ok_or(TenantError::NoCertificate(f.name()))?;
                Some(f.value(leaf).ok_or(TenantError::FieldMissing(f.name()))?)
            }
        };
        let from_user = principal.and_then(|p| p.tenant.clone());
        let bound = match (from_cert, from_user) {
            (Some(c), Some(u)) if c != u => {
                return Err(TenantError::CredentialsDisagree { cert: c, user: u });
            }
            (Some(c), _) => Some(c),
            (None, u) => u,
        };
        let asked = match headers.get(&self.header) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| TenantError::BadHeader(self.header.to_string()))?
                    .to_string(),
            ),
        }
        .filter(|s| !s.is_empty());
        match (bound, asked) {
            (Some(b), Some(a)) if a != b => Err(TenantError::Mismatch {
                header: self.header.to_string(),
                asked: a,
                bound: b,
            }),
            (Some(b), _) => Ok(b),
            (None, Some(a)) => Ok(a),
            (None, None) => Ok(self.default.clone()),
        }
    }
}

/// The longest tenant name accepted (Mimir's limit).
pub const MAX_TENANT_LEN: usize = 150;

/// Why a tenant name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantNameError {
    #[error("tenant name is empty")]
    Empty,
    #[error("tenant name {0:?}… is longer than {MAX_TENANT_LEN} bytes")]
    TooLong(String),
    #[error(
        "invalid tenant {0:?}: allowed are letters, digits and ! - _ . * ' ( ), and not '.' or '..'"
    )]
    Unsafe(String),
}

/// Tenant names as Mimir accepts them: at most 150 bytes of ASCII letters, digits and
/// `! - _ . * ' ( )`, never `.` or `..`. A tenant becomes a directory under the
/// receiver's `--tsdb.path`, so nothing that could leave it (separators, `..`) or confuse
/// a shell or log (spaces, control characters) gets through; the querier refuses the
/// same names (they can own no data). Thanos accepts any name without `/`
/// (`tenant == path.Base(tenant)`), which lets `..` through.
pub fn validate_tenant_name(t: &str) -> Result<(), TenantNameError> {
    if t.is_empty() {
        return Err(TenantNameError::Empty);
    }
    if t.len() > MAX_TENANT_LEN {
        return Err(TenantNameError::TooLong(t.chars().take(64).collect()));
    }
    let safe = |c: char| c.is_ascii_alphanumeric() || "!-_.*'()".contains(c);
    if t == "." || t == ".." || !t.chars().all(safe) {
        return Err(TenantNameError::Unsafe(t.to_string()));
    }
    Ok(())
}

/// Resolves a relative token file against the web config's directory.
pub(crate) fn anchored(dir: &Path, p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() { p } else { dir.join(p) }
}

/// Checks that every user named in `user_tenants` exists in `basic_auth_users`.
pub(crate) fn check_user_tenants(
    users: &BTreeMap<String, String>,
    user_tenants: &BTreeMap<String, String>,
) -> Result<(), String> {
    for u in user_tenants.keys() {
        if !users.contains_key(u) {
            return Err(format!(
                "user_tenants.{u}: no such user in basic_auth_users"
            ));
        }
    }
    Ok(())
}

//! The exporter-toolkit web config file (`--http.config`, Prometheus's `--web.config.file`):
//! parsed strictly (an unknown key is an error naming it), reloaded when it or a file it
//! names changes, as exporter-toolkit re-reads it per connection and request.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ServerConfig;
use serde::Deserialize;

use crate::Error;
use crate::auth::{Authenticator, GuardState, RateLimiter};
use crate::identity::{BearerToken, FailureCounter, anchored, check_user_tenants};
use crate::jwt::{JwtVerifier, RawJwt};
use crate::listener::Listener;
use crate::pem::{Fingerprint, PemSource, read_bounded};
use crate::server::{ClientAuth, ServerConfigSource, ServerTlsSettings, TlsVersion, alpn_http};

/// A web config larger than this is refused (it holds a few paths and hashes).
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// bcrypt cost above which a hash is refused at load: each check of a wrong password costs
/// 2^cost rounds (cost 10 ≈ 70 ms, 14 ≈ 1 s, 18 ≈ 20 s), so a huge cost is a CPU bomb.
pub const MAX_BCRYPT_COST: u32 = 14;

/// Response headers exporter-toolkit lets a user set, with their allowed values (an empty
/// list: any value).
const ALLOWED_HEADERS: &[(&str, &[&str])] = &[
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    tls_server_config: Option<RawTls>,
    #[serde(default)]
    http_server_config: Option<RawHttp>,
    #[serde(default)]
    rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    basic_auth_users: Option<BTreeMap<String, String>>,
    /// Orrery: static bearer tokens (`Authorization: Bearer`), each from a file.
    #[serde(default)]
    bearer_tokens: Vec<RawToken>,
    /// Orrery: the tenant each `basic_auth_users` user is bound to.
    #[serde(default)]
    user_tenants: BTreeMap<String, String>,
    /// Orrery: bearer JWTs verified against a JWKS / HMAC secret file (see [`crate::jwt`]).
    #[serde(default)]
    jwt: Option<RawJwt>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    token_file: String,
    #[serde(default)]
    tenant: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<String>,
    #[serde(default)]
    cipher_suites: Vec<String>,
    #[serde(default)]
    curve_preferences: Vec<String>,
    min_version: Option<String>,
    max_version: Option<String>,
    /// Accepted for compatibility; rustls always follows the server's order.
    prefer_server_cipher_suites: Option<bool>,
    client_allowed_sans: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    http2: Option<bool>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    burst: Option<u32>,
    interval: Option<String>,
}

/// A parsed and validated web config.
#[derive(Debug, Clone)]
pub struct WebConfig {
    pub tls: Option<ServerTlsSettings>,
    pub http2: bool,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// user → bcrypt hash; empty = no authentication.
    pub users: BTreeMap<String, String>,
    /// Token bucket: `burst` requests, one more every `interval`.
    pub rate_limit: Option<(u32, Duration)>,
    /// Static bearer tokens (read from their files at load).
    pub tokens: Vec<BearerToken>,
    /// user → the tenant its requests are bound to.
    pub user_tenants: BTreeMap<String, String>,
    /// Bearer JWT verification (the `jwt` extension), with its keys read at load.
    pub jwt: Option<Arc<JwtVerifier>>,
}

impl WebConfig {
    /// Reads and validates the file (relative paths in it are relative to its directory).
    pub fn load(path: &Path) -> Result<WebConfig, Error> {
        let bytes = read_bounded(path, MAX_CONFIG_BYTES)?;
        let text = String::from_utf8(bytes).map_err(|_| Error::WebConfig {
            path: path.to_path_buf(),
            reason: "not UTF-8".into(),
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        WebConfig::parse(&text, dir).map_err(|reason| Error::WebConfig {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Parses YAML text; `dir` anchors relative file paths.
    pub fn parse(text: &str, dir: &Path) -> Result<WebConfig, String> {
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| e.to_string())?
        };
        let http = raw.http_server_config.unwrap_or_default();
        let http2 = http.http2.unwrap_or(true);
        let mut headers = Vec::new();
        for (k, v) in &http.headers {
            let Some((_, allowed)) = ALLOWED_HEADERS.iter().find(|(name, _)| *name == k.as_str())
            else {
                return Err(format!(
                    "http_server_config.headers: HTTP header {k:?} can not be configured (allowed: {})",
                    ALLOWED_HEADERS
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            };
            if !allowed.is_empty() && !allowed.contains(&v.as_str()) {
                return Err(format!(
                    "http_server_config.headers: invalid value for {k}: expected one of {allowed:?}, got {v:?}"
                ));
            }
            let name = http::HeaderName::from_bytes(k.as_bytes()).map_err(|e| e.to_string())?;
            let value = http::HeaderValue::from_str(v)
                .map_err(|e| format!("http_server_config.headers.{k}: {e}"))?;
            headers.push((name, value));
        }
        let users = raw.basic_auth_users.unwrap_or_default();
        for (user, hash) in &users {
            check_hash(user, hash)?;
        }
        check_user_tenants(&users, &raw.user_tenants)?;
        let mut tokens = Vec::with_capacity(raw.bearer_tokens.len());
        for t in raw.bearer_tokens {
            if t.name.is_empty() {
                return Err("bearer_tokens: a token needs a name (for logs)".into());
            }
            if tokens.iter().any(|o: &BearerToken| o.name == t.name) {
                return Err(format!("bearer_tokens: name {:?} is used twice", t.name));
            }
            if t.tenant.as_deref() == Some("") {
                return Err(format!("bearer_tokens.{}: empty tenant", t.name));
            }
            let tok = BearerToken::load(t.name.clone(), t.tenant, anchored(dir, &t.token_file))
                .map_err(|e| format!("bearer_tokens.{}: {e}", t.name))?;
            if let Some(o) = tokens.iter().find(|o: &&BearerToken| o.same_token(&tok)) {
                return Err(format!(
                    "bearer_tokens.{}: same token as {:?}",
                    t.name, o.name
                ));
            }
            tokens.push(tok);
        }
        for (u, t) in &raw.user_tenants {
            if t.is_empty() {
                return Err(format!("user_tenants.{u}: empty tenant"));
            }
        }
        let rate_limit = match raw.rate_limit {
            None => None,
            Some(r) => {
                let interval = match r.interval.as_deref() {
                    None | Some("") => Duration::ZERO,
                    Some(s) => {
                        parse_duration(s).map_err(|e| format!("rate_limit.interval {s:?}: {e}"))?
                    }
                };
                let burst = r.burst.unwrap_or(0);
                // As in exporter-toolkit: a zero interval disables the limiter.
                (!interval.is_zero()).then_some((burst.max(1), interval))
            }
        };
        let tls = match raw.tls_server_config {
            None => None,
            Some(t) => tls_settings(t, dir, http2)?,
        };
        let jwt = match raw.jwt {
            None => None,
            Some(j) => Some(Arc::new(JwtVerifier::load(j, dir)?)),
        };
        Ok(WebConfig {
            tls,
            http2,
            headers,
            users,
            rate_limit,
            tokens,
            user_tenants: raw.user_tenants,
            jwt,
        })
    }

    /// Every tenant a credential is bound to (for the service to validate at startup).
    pub fn bound_tenants(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .user_tenants
            .values()
            .cloned()
            .chain(self.tokens.iter().filter_map(|t| t.tenant.clone()))
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// A bcrypt hash must parse and have a cost we are willing to pay per login.
fn check_hash(user: &str, hash: &str) -> Result<(), String> {
    let parts: bcrypt::HashParts = hash
        .parse()
        .map_err(|e| format!("basic_auth_users.{user}: not a bcrypt hash: {e}"))?;
    if parts.get_cost() > MAX_BCRYPT_COST {
        return Err(format!(
            "basic_auth_users.{user}: bcrypt cost {} is above the maximum {MAX_BCRYPT_COST} \
             (each login attempt would cost 2^{} rounds)",
            parts.get_cost(),
            parts.get_cost()
        ));
    }
    Ok(())
}

fn tls_settings(t: RawTls, dir: &Path, http2: bool) -> Result<Option<ServerTlsSettings>, String> {
    let nonempty = |o: Option<String>| o.filter(|s| !s.is_empty());
    let file = |p: String| {
        let p = PathBuf::from(p);
        PemSource::File(if p.is_absolute() { p } else { dir.join(p) })
    };
    let (cert_text, key_text, ca_text) = (nonempty(t.cert), nonempty(t.key), nonempty(t.client_ca));
    let (cert_file, key_file, ca_file) = (
        nonempty(t.cert_file),
        nonempty(t.key_file),
        nonempty(t.client_ca_file),
    );
    let auth_text = t.client_auth_type.unwrap_or_default();
    let enabled = cert_text.is_some()
        || key_text.is_some()
        || ca_text.is_some()
        || cert_file.is_some()
        || key_file.is_some()
        || ca_file.is_some()
        || !auth_text.is_empty();
    if !enabled {
        return Ok(None);
    }
    let client_auth =
        ClientAuth::parse(&auth_text).map_err(|e| format!("tls_server_config: {e}"))?;
    let both = |a: &Option<String>, b: &Option<String>, what: &str| {
        if a.is_some() && b.is_some() {
            Err(format!("tls_server_config: set only one of {what}"))
        } else {
            Ok(())
        }
    };
    both(&cert_text, &cert_file, "cert and cert_file")?;
    both(&key_text, &key_file, "key and key_file")?;
    both(&ca_text, &ca_file, "client_ca and client_ca_file")?;
    let cert = cert_text
        .map(PemSource::Inline)
        .or(cert_file.map(file))
        .ok_or("tls_server_config: missing one of cert or cert_file")?;
    let key = key_text
        .map(PemSource::Inline)
        .or(key_file.map(file))
        .ok_or("tls_server_config: missing one of key or key_file")?;
    let client_ca = ca_text.map(PemSource::Inline).or(ca_file.map(file));
    let version = |v: Option<String>, default| match v.filter(|s| !s.is_empty()) {
        None => Ok(default),
        Some(s) => TlsVersion::parse_web(&s).map_err(|e| format!("tls_server_config: {e}")),
    };
    let _ = t.prefer_server_cipher_suites;
    let s = ServerTlsSettings {
        cert,
        key,
        client_auth,
        client_ca,
        client_allowed_sans: t.client_allowed_sans,
        min_version: version(t.min_version, TlsVersion::Tls12)?,
        max_version: version(t.max_version, TlsVersion::Tls13)?,
        cipher_suites: t.cipher_suites,
        curves: t.curve_preferences,
        alpn: alpn_http(http2),
    };
    // Reads the files: a missing or mismatched cert is a load error, not a handshake error.
    s.build().map_err(|e| format!("tls_server_config: {e}"))?;
    Ok(Some(s))
}

/// Go duration syntax as Prometheus configs use it: `500ms`, `1s`, `1m30s`, `2h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err("expected a number".into());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| "number too large")?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => Duration::from_nanos(1),
            "us" | "µs" => Duration::from_micros(1),
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "" => return Err("missing unit".into()),
            u => return Err(format!("unknown unit {u:?}")),
        };
        rest = &rest[unit_len..];
        let part = unit
            .checked_mul(u32::try_from(n).map_err(|_| "number too large")?)
            .ok_or("duration too large")?;
        total = total.checked_add(part).ok_or("duration too large")?;
    }
    Ok(total)
}

/// The current config of one `--http.config` file and what was built from it.
#[derive(Debug)]
pub struct Loaded {
    pub config: WebConfig,
    pub tls: Option<Arc<ServerConfig>>,
    pub auth: Arc<Authenticator>,
    pub limiter: Option<Arc<RateLimiter>>,
}

impl Loaded {
    fn build(config: WebConfig) -> Result<Loaded, Error> {
        let tls = match &config.tls {
            Some(s) => Some(s.build()?),
            None => None,
        };
        let auth = Arc::new(Authenticator::new(config.users.clone()));
        let limiter = config
            .rate_limit
            .map(|(burst, every)| Arc::new(RateLimiter::new(burst, every)));
        Ok(Loaded {
            config,
            tls,
            auth,
            limiter,
        })
    }

    fn files(&self, path: &Path) -> Vec<PathBuf> {
        let mut f = vec![path.to_path_buf()];
        f.extend(self.config.tokens.iter().map(|t| t.file.clone()));
        if let Some(j) = &self.config.jwt {
            f.extend(j.files().iter().cloned());
        }
        if let Some(t) = &self.config.tls {
            f.extend(t.watched_files());
        }
        f
    }
}

/// A web config file watched for changes: checked (a few `stat`s) per new connection and
/// per request; a change is re-parsed, and a broken file keeps the previous config.
#[derive(Debug)]
pub struct WebConfigSource {
    path: PathBuf,
    state: Mutex<(Fingerprint, Arc<Loaded>)>,
}

impl WebConfigSource {
    pub fn load(path: &Path) -> Result<WebConfigSource, Error> {
        let loaded = Loaded::build(WebConfig::load(path)?)?;
        let stamp = Fingerprint::of(loaded.files(path).iter().map(PathBuf::as_path));
        Ok(WebConfigSource {
            path: path.to_path_buf(),
            state: Mutex::new((stamp, Arc::new(loaded))),
        })
    }

    /// The config to apply now.
    pub fn current(&self) -> Arc<Loaded> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let files = st.1.files(&self.path);
        let stamp = Fingerprint::of(files.iter().map(PathBuf::as_path));
        if stamp != st.0 {
            st.0 = stamp;
            let had_tls = st.1.tls.is_some();
            match WebConfig::load(&self.path).and_then(Loaded::build) {
                Ok(l) if l.tls.is_some() != had_tls => tracing::error!(path = %self.path.display(),
                    "--http.config changed between TLS and plaintext: that needs a restart; keeping the previous config"),
                Ok(l) => {
                    tracing::info!(path = %self.path.display(), "--http.config reloaded");
                    // The stamp must cover files the new config names.
                    st.0 = Fingerprint::of(l.files(&self.path).iter().map(PathBuf::as_path));
                    st.1 = Arc::new(l);
                }
                Err(e) => tracing::error!(error = %e,
                    "--http.config changed but is invalid: keeping the previous config"),
            }
        }
        st.1.clone()
    }
}

/// The TLS side of a web config, for a listener that started with TLS.
#[derive(Debug)]
struct WebTls {
    src: Arc<WebConfigSource>,
    /// What the listener started with; a reload never drops TLS, so this is only a
    /// fallback the types ask for.
    initial: Arc<ServerConfig>,
}

impl ServerConfigSource for WebTls {
    fn current(&self) -> Arc<ServerConfig> {
        self.src
            .current()
            .tls
            .clone()
            .unwrap_or_else(|| self.initial.clone())
    }
}

/// An HTTP listener's security from `--http.config`: TLS for the listener, basic auth,
/// rate limit and headers for the router. Without the flag both pass through unchanged.
#[derive(Debug, Clone, Default)]
pub struct HttpServer {
    source: Option<Arc<WebConfigSource>>,
    /// TLS from flags (`--remote-write.server-tls-*`) instead of the file.
    tls_from_flags: Option<Arc<dyn ServerConfigSource>>,
    /// Requests refused by the guard (and by the service's tenant checks), by reason.
    failures: FailureCounter,
}

impl HttpServer {
    /// Loads and validates the file; any problem is a startup error naming it.
    pub fn load(path: Option<&Path>) -> Result<HttpServer, Error> {
        Ok(HttpServer {
            source: match path {
                Some(p) if !p.as_os_str().is_empty() => Some(Arc::new(WebConfigSource::load(p)?)),
                _ => None,
            },
            tls_from_flags: None,
            failures: FailureCounter::default(),
        })
    }

    /// Refusals by reason, for the service to register as a metric and to count its own
    /// tenant refusals in.
    pub fn failures(&self) -> FailureCounter {
        self.failures.clone()
    }

    /// Counts refusals in `c` (a counter the service registered before loading this).
    pub fn with_failure_counter(mut self, c: FailureCounter) -> HttpServer {
        self.failures = c;
        self
    }

    /// Tenants bound to credentials in the file as loaded at startup.
    pub fn bound_tenants(&self) -> Vec<String> {
        self.source
            .as_ref()
            .map(|s| s.current().config.bound_tenants())
            .unwrap_or_default()
    }

    /// Combines TLS from flags with the file's authentication; TLS in both places is an
    /// error (which one would win is not obvious to a reader of either).
    pub fn with_tls_flags(
        mut self,
        tls: Option<Arc<dyn ServerConfigSource>>,
    ) -> Result<HttpServer, Error> {
        if tls.is_some()
            && let Some(s) = &self.source
            && s.current().tls.is_some()
        {
            return Err(Error::WebConfig {
                path: s.path.clone(),
                reason: "tls_server_config is set and so are the listener's TLS flags: use one"
                    .into(),
            });
        }
        self.tls_from_flags = tls;
        Ok(self)
    }

    pub fn is_tls(&self) -> bool {
        self.tls_from_flags.is_some()
            || self
                .source
                .as_ref()
                .is_some_and(|s| s.current().tls.is_some())
    }

    /// The listener for this server: TLS when the web config has `tls_server_config`.
    pub fn listener(&self, tcp: tokio::net::TcpListener) -> Listener {
        if let Some(t) = &self.tls_from_flags {
            return Listener::new(tcp, Some(t.clone()));
        }
        let tls = self.source.as_ref().and_then(|s| {
            let initial = s.current().tls.clone()?;
            Some(Arc::new(WebTls {
                src: s.clone(),
                initial,
            }) as Arc<dyn ServerConfigSource>)
        });
        Listener::new(tcp, tls)
    }

    /// The router with basic auth, rate limit and headers in front of every route.
    pub fn router(&self, router: axum::Router) -> axum::Router {
        match &self.source {
            None => router,
            Some(s) => router.layer(axum::middleware::from_fn_with_state(
                Arc::new(GuardState {
                    src: s.clone(),
                    failures: self.failures.clone(),
                }),
                crate::auth::guard,
            )),
        }
    }
}

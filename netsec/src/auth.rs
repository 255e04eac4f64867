//! Basic auth with bcrypt hashes, a request rate limit and fixed response headers: the
//! request side of the web config.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use http::{HeaderMap, HeaderValue, StatusCode, header};

use crate::identity::{FailureCounter, FailureReason, Principal, count, match_token, parse_bearer};
use crate::jwt::looks_like_jwt;
use crate::webconfig::{Loaded, WebConfigSource};

/// An `Authorization` header longer than this is refused without decoding it.
const MAX_AUTH_HEADER: usize = 4096;
/// Verification results remembered (user, hash, password digest → ok). Past it, entries
/// are dropped arbitrarily: a cache miss only costs one more bcrypt.
const CACHE_ENTRIES: usize = 1024;

/// Checks credentials against bcrypt hashes. bcrypt is slow on purpose, so results are
/// cached (keyed by a SHA-256 of user, hash and password: no password is kept) and the
/// uncached checks run one at a time on a blocking thread, so a flood of wrong passwords
/// costs at most one core and never stalls the async workers.
#[derive(Debug)]
pub struct Authenticator {
    users: BTreeMap<String, String>,
    /// Checked for unknown users, so their answer takes as long as a known user's.
    dummy_hash: Option<String>,
    cache: Mutex<HashMap<[u8; 32], bool>>,
    bcrypt_turn: tokio::sync::Mutex<()>,
}

impl Authenticator {
    pub fn new(users: BTreeMap<String, String>) -> Authenticator {
        // Same cost as the first configured user: an unknown name costs the same time.
        let dummy_hash = users.values().next().and_then(|h| {
            let cost = h.parse::<bcrypt::HashParts>().ok()?.get_cost();
            bcrypt::hash("orrery-no-such-user", cost).ok()
        });
        Authenticator {
            users,
            dummy_hash,
            cache: Mutex::new(HashMap::new()),
            bcrypt_turn: tokio::sync::Mutex::new(()),
        }
    }

    /// No users configured: every request passes.
    pub fn is_open(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `user`/`password` match a configured user.
    pub async fn check(&self, user: &str, password: &[u8]) -> bool {
        let (hash, known) = match self.users.get(user) {
            Some(h) => (h.clone(), true),
            None => match &self.dummy_hash {
                Some(h) => (h.clone(), false),
                None => return false,
            },
        };
        let key = cache_key(user, &hash, password);
        if let Some(ok) = self.cached(&key) {
            return ok && known;
        }
        let _turn = self.bcrypt_turn.lock().await;
        // Another request may have computed it while this one waited.
        if let Some(ok) = self.cached(&key) {
            return ok && known;
        }
        let pw = password.to_vec();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(pw, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
        let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if c.len() >= CACHE_ENTRIES
            && let Some(k) = c.keys().next().copied()
        {
            c.remove(&k);
        }
        c.insert(key, ok);
        ok && known
    }

    fn cached(&self, key: &[u8; 32]) -> Option<bool> {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
    }
}

fn cache_key(user: &str, hash: &str, password: &[u8]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in [user.as_bytes(), hash.as_bytes(), password] {
        ctx.update(&(part.len() as u64).to_le_bytes());
        ctx.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// `Authorization: Basic base64(user:password)` → (user, password); `None` for anything
/// else (absent, other scheme, oversized, bad base64, no colon, non-UTF-8 user).
pub fn parse_basic(value: &HeaderValue) -> Option<(String, Vec<u8>)> {
    let v = value.as_bytes();
    if v.len() > MAX_AUTH_HEADER || v.len() < 6 || !v[..6].eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(v[6..].trim_ascii())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

/// A token bucket: `burst` requests at once, refilled by one every `every`.
#[derive(Debug)]
pub struct RateLimiter {
    burst: f64,
    every: Duration,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(burst: u32, every: Duration) -> RateLimiter {
        RateLimiter {
            burst: f64::from(burst),
            every,
            state: Mutex::new((f64::from(burst), Instant::now())),
        }
    }

    pub fn allow(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(s.1).as_secs_f64() / self.every.as_secs_f64();
        s.0 = (s.0 + refill).min(self.burst);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

fn unauthorized(cfg: &Loaded) -> Response {
    let mut resp = (StatusCode::UNAUTHORIZED, "Unauthorized\n").into_response();
    // One challenge per scheme the listener accepts (RFC 9110 §11.6.1).
    if !cfg.auth.is_open() {
        resp.headers_mut().append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"orrery\""),
        );
    }
    if !cfg.config.tokens.is_empty() || cfg.config.jwt.is_some() {
        resp.headers_mut().append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"orrery\""),
        );
    }
    resp
}

/// What the guard middleware works with: the (reloading) web config and the refusal
/// counter the service registers.
#[derive(Debug)]
pub struct GuardState {
    pub src: Arc<WebConfigSource>,
    pub failures: FailureCounter,
}

/// Checks the request's `Authorization` header against the configured users and tokens.
/// The header is bounded before any decoding; a scheme the listener has no credentials
/// for is refused without work.
pub async fn authenticate(cfg: &Loaded, headers: &HeaderMap) -> Result<Principal, FailureReason> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(FailureReason::missing)?;
    let v = value.as_bytes();
    if v.len() > MAX_AUTH_HEADER {
        return Err(FailureReason::malformed);
    }
    let scheme = |s: &[u8]| v.len() > s.len() && v[..s.len()].eq_ignore_ascii_case(s);
    if scheme(b"basic ") {
        if cfg.auth.is_open() {
            return Err(FailureReason::unsupported_scheme);
        }
        let (user, pw) = parse_basic(value).ok_or(FailureReason::malformed)?;
        if !cfg.auth.check(&user, &pw).await {
            return Err(FailureReason::bad_password);
        }
        let tenant = cfg.config.user_tenants.get(&user).cloned();
        Ok(Principal { name: user, tenant })
    } else if scheme(b"bearer ") {
        let jwt = cfg.config.jwt.as_deref();
        if cfg.config.tokens.is_empty() && jwt.is_none() {
            return Err(FailureReason::unsupported_scheme);
        }
        let token = parse_bearer(v).ok_or(FailureReason::malformed)?;
        if let Some(j) = jwt
            && (cfg.config.tokens.is_empty() || looks_like_jwt(token))
        {
            return j.verify(token).map_err(|e| {
                tracing::debug!(error = %e, "bearer JWT refused");
                e.reason()
            });
        }
        let t = match_token(&cfg.config.tokens, token).ok_or(FailureReason::bad_token)?;
        Ok(Principal {
            name: t.name.clone(),
            tenant: t.tenant.clone(),
        })
    } else {
        Err(FailureReason::unsupported_scheme)
    }
}

/// The axum middleware in front of every route of a web-config listener. An
/// authenticated request carries its [`Principal`] in its extensions.
pub async fn guard(State(g): State<Arc<GuardState>>, mut req: Request, next: Next) -> Response {
    let cfg = g.src.current();
    if let Some(l) = &cfg.limiter
        && !l.allow()
    {
        count(&g.failures, FailureReason::rate_limited);
        return (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests\n").into_response();
    }
    let open = cfg.auth.is_open() && cfg.config.tokens.is_empty() && cfg.config.jwt.is_none();
    let mut resp = if open {
        next.run(req).await
    } else {
        match authenticate(&cfg, req.headers()).await {
            Ok(p) => {
                req.extensions_mut().insert(p);
                next.run(req).await
            }
            Err(reason) => {
                tracing::debug!(?reason, "request refused: authentication failed");
                count(&g.failures, reason);
                unauthorized(&cfg)
            }
        }
    };
    for (k, v) in &cfg.config.headers {
        resp.headers_mut().insert(k.clone(), v.clone());
    }
    resp
}

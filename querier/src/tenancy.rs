//! Read-path tenancy (Thanos's `--query.enforce-tenancy` and friends).
//!
//! Each API request gets a [`Scope`]: its tenant (client certificate field, a tenant
//! bound to the `--http.config` user or token, the tenant header, or the default — the
//! rule in [`netsec::TenantPolicy`]) and, with enforcement on, the matcher
//! `<tenant label>="<tenant>"`.
//!
//! Enforcement is applied where data is read, not by rewriting query text: the matcher
//! rides in [`crate::proxy::FanoutOptions::enforce`] and the fan-out appends it to the
//! matchers of every `Series`, `LabelNames` and `LabelValues` call it sends. Every
//! selector of a PromQL expression (inside aggregations, binary operations, subqueries,
//! `@` and offsets alike), every `match[]` set and the no-`match[]` label calls go
//! through that fan-out, so none can leave the tenant; `vector(1)` and other literals
//! read nothing. What the text does say is checked here: a matcher on the tenant label
//! that cannot match the caller's tenant (`tenant_id="other"`, `tenant_id!~"me"`) is a
//! 400 naming it, not silently rewritten as Thanos does.
//!
//! Routes fail closed: [`access`] lists every API handler; a handler missing from it is
//! refused (403) while enforcement is on.

use axum::http::{self, HeaderMap};
use netsec::tokio_rustls::rustls::pki_types::CertificateDer;
use promql_parser::label::MatchOp as P;
use promql_parser::parser::Expr;
use storeapi::Matcher;

/// What an API handler reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Series data or labels through the fan-out: confined to the tenant.
    TenantData,
    /// Nothing tenant-specific (build info, flags): served as is.
    Global,
    /// Lists of endpoints and their label sets: label sets of other tenants are hidden.
    Endpoints,
    /// Rule groups and alerts. Empty until a ruler exists; one must answer only the
    /// groups and alerts whose labels carry the caller's tenant (Thanos leaks all,
    /// thanos-io/thanos#8140).
    TenantRules,
}

/// The tenancy policy of each API handler (the names `api::api` dispatches on). A handler
/// not listed gets `None` and is refused while enforcement is on: adding a read route
/// means deciding its tenancy here.
pub fn access(handler: &str) -> Option<Access> {
    match handler {
        "query" | "query_range" | "series" | "labels" | "label_values" | "query_exemplars"
        | "metadata" => Some(Access::TenantData),
        "buildinfo" | "flags" => Some(Access::Global),
        "rules" | "alerts" => Some(Access::TenantRules),
        "stores" => Some(Access::Endpoints),
        _ => None,
    }
}

/// Why a request got no scope.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TenancyError {
    #[error(transparent)]
    Tenant(#[from] netsec::identity::TenantError),
    #[error("{1}")]
    Invalid(String, String),
    #[error("endpoint {0:?} has no tenancy policy and --query.enforce-tenancy is on")]
    NoPolicy(String),
    #[error("conflicting label matcher {matcher}: this request is confined to {label}={tenant:?}")]
    Conflict {
        matcher: String,
        label: String,
        tenant: String,
    },
}

impl TenancyError {
    pub fn status(&self) -> http::StatusCode {
        match self {
            TenancyError::Tenant(e) => e.status(),
            TenancyError::Invalid(..) | TenancyError::Conflict { .. } => {
                http::StatusCode::BAD_REQUEST
            }
            TenancyError::NoPolicy(_) => http::StatusCode::FORBIDDEN,
        }
    }
}

/// `--query.tenant-matcher-conflict`: what a user's tenant matcher that cannot match
/// the caller's tenant does under enforcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ConflictMode {
    /// 400 `conflicting label matcher`: the caller learns the query was not what it
    /// asked for.
    #[default]
    Error,
    /// Thanos's (prom-label-proxy's) behaviour: the user's tenant matchers are dropped
    /// and the caller's put in their place, so the query silently reads its own tenant.
    Replace,
}

/// The querier's tenancy flags, resolved.
#[derive(Debug, Clone)]
pub struct Tenancy {
    pub policy: netsec::TenantPolicy,
    pub enforce: bool,
    pub conflict: ConflictMode,
    pub label: String,
}

/// One request's tenant and, when enforcing, the matcher that confines it.
#[derive(Debug, Clone)]
pub struct Scope {
    pub tenant: String,
    /// Sent to stores as `thanos-tenant`: always when enforcing; otherwise only a tenant
    /// the request named (header, credential, certificate), since a receiver reads the
    /// metadata as "this tenant only" and a default would hide the others.
    pub forward: Option<String>,
    pub enforced: Option<Matcher>,
    pub label: String,
    pub conflict: ConflictMode,
}

impl Scope {
    /// A `match[]` set or selector's matchers: an error when one on the tenant label can
    /// never match this scope's tenant.
    pub fn check_matchers(&self, ms: &[Matcher]) -> Result<(), TenancyError> {
        if self.enforced.is_none() || self.conflict == ConflictMode::Replace {
            return Ok(());
        }
        for m in ms {
            if m.name == self.label && !m.matches(&self.tenant) {
                return Err(TenancyError::Conflict {
                    matcher: m.to_string(),
                    label: self.label.clone(),
                    tenant: self.tenant.clone(),
                });
            }
        }
        Ok(())
    }

    /// Every selector of a parsed expression, as [`Scope::check_matchers`]. Runs where
    /// the query was parsed (a blocking thread, with stack for deep trees).
    pub fn check_expr(&self, e: &Expr) -> Result<(), TenancyError> {
        if self.enforced.is_none() || self.conflict == ConflictMode::Replace {
            return Ok(());
        }
        promql::limits::grow(|| match e {
            Expr::Aggregate(a) => {
                self.check_expr(&a.expr)?;
                a.param.as_deref().map_or(Ok(()), |p| self.check_expr(p))
            }
            Expr::Unary(u) => self.check_expr(&u.expr),
            Expr::Binary(b) => {
                self.check_expr(&b.lhs)?;
                self.check_expr(&b.rhs)
            }
            Expr::Paren(p) => self.check_expr(&p.expr),
            Expr::Subquery(s) => self.check_expr(&s.expr),
            Expr::VectorSelector(vs) => self.check_selector(vs),
            Expr::MatrixSelector(ms) => self.check_selector(&ms.vs),
            Expr::Call(c) => c.args.args.iter().try_for_each(|a| self.check_expr(a)),
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) => Ok(()),
            // The parser never makes these; refuse rather than skip an unknown subtree.
            Expr::Extension(_) => Err(TenancyError::Conflict {
                matcher: "<extension>".into(),
                label: self.label.clone(),
                tenant: self.tenant.clone(),
            }),
        })
    }

    fn check_selector(
        &self,
        vs: &promql_parser::parser::VectorSelector,
    ) -> Result<(), TenancyError> {
        let all = vs
            .matchers
            .matchers
            .iter()
            .chain(vs.matchers.or_matchers.iter().flatten());
        for m in all {
            if m.name != self.label {
                continue;
            }
            let op = match m.op {
                P::Equal => storeapi::MatchOp::Equal,
                P::NotEqual => storeapi::MatchOp::NotEqual,
                P::Re(_) => storeapi::MatchOp::RegexMatch,
                P::NotRe(_) => storeapi::MatchOp::RegexNoMatch,
            };
            let m = Matcher::new(op, m.name.clone(), m.value.clone()).map_err(|e| {
                TenancyError::Conflict {
                    matcher: e.to_string(),
                    label: self.label.clone(),
                    tenant: self.tenant.clone(),
                }
            })?;
            self.check_matchers(std::slice::from_ref(&m))?;
        }
        Ok(())
    }

    /// Whether an endpoint label set may be shown: it names no tenant or this one.
    pub fn shows_label_set(&self, ls: &storeapi::Labels) -> bool {
        self.enforced.is_none() || ls.get(&self.label).is_none_or(|t| t == self.tenant)
    }
}

impl Tenancy {
    /// The request's scope for `handler`. Without enforcement the tenant is only
    /// forwarded (as `thanos-tenant`), never used to filter.
    pub fn scope(
        &self,
        handler: &str,
        headers: &HeaderMap,
        principal: Option<&netsec::Principal>,
        peer_certificates: Option<&[CertificateDer<'static>]>,
    ) -> Result<Scope, TenancyError> {
        let tenant = self.policy.resolve(headers, principal, peer_certificates)?;
        if !self.enforce {
            let named = self.policy.cert_field.is_some()
                || principal.is_some_and(|p| p.tenant.is_some())
                || headers
                    .get(&self.policy.header)
                    .is_some_and(|v| !v.is_empty());
            return Ok(Scope {
                forward: named.then(|| tenant.clone()),
                tenant,
                enforced: None,
                label: self.label.clone(),
                conflict: self.conflict,
            });
        }
        if access(handler).is_none() {
            return Err(TenancyError::NoPolicy(handler.to_string()));
        }
        // Names a receiver refuses can own no data: refuse them before any fan-out.
        netsec::identity::validate_tenant_name(&tenant)
            .map_err(|e| TenancyError::Invalid(tenant.clone(), e.to_string()))?;
        Ok(Scope {
            enforced: Some(Matcher::equal(self.label.clone(), tenant.clone())),
            forward: Some(tenant.clone()),
            tenant,
            label: self.label.clone(),
            conflict: self.conflict,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn tenancy(enforce: bool) -> Tenancy {
        Tenancy {
            policy: netsec::TenantPolicy::new("THANOS-TENANT", "default-tenant", "").unwrap(),
            enforce,
            conflict: ConflictMode::Error,
            label: "tenant_id".into(),
        }
    }

    fn scope_for(tenant: &str) -> Scope {
        let mut h = HeaderMap::new();
        h.insert("thanos-tenant", HeaderValue::from_str(tenant).unwrap());
        tenancy(true).scope("query", &h, None, None).unwrap()
    }

    fn check(s: &Scope, q: &str) -> Result<(), TenancyError> {
        let e = promql::parse_checked(q, &promql::QueryLimits::default()).unwrap();
        s.check_expr(&e)
    }

    #[test]
    fn conflicting_tenant_matchers_are_errors_everywhere_in_the_tree() {
        let s = scope_for("team-a");
        for ok in [
            "up",
            "up{tenant_id=\"team-a\"}",
            "up{tenant_id=~\"team-.*\"}",
            "up{tenant_id!=\"team-b\"}",
            "up or on() vector(1)",
            "sum(rate(x[5m] @ 100)) / on() group_left count(y offset 1h)",
            "max_over_time(up[1h:1m])",
            "{__name__=\"up\", job=\"x\"}",
        ] {
            assert!(check(&s, ok).is_ok(), "{ok}");
        }
        for bad in [
            "up{tenant_id=\"team-b\"}",
            "up{tenant_id=~\"team-b|team-c\"}",
            "up{tenant_id!=\"team-a\"}",
            "up{tenant_id!~\"team-a\"}",
            "sum(up) + on() max(x{tenant_id=\"team-b\"})",
            "max_over_time(x{tenant_id=\"team-b\"}[1h:1m])",
            "rate(x{tenant_id=\"team-b\"}[5m] @ end())",
            "-x{tenant_id=\"team-b\"}",
            "topk(scalar(x{tenant_id=\"team-b\"}), up)",
            "label_replace(x{tenant_id=\"team-b\"}, \"a\", \"b\", \"c\", \"d\")",
            "(x{tenant_id=\"\"})",
        ] {
            let e = check(&s, bad).unwrap_err();
            assert_eq!(e.status(), http::StatusCode::BAD_REQUEST, "{bad}");
            assert!(
                e.to_string().contains("conflicting label matcher"),
                "{bad}: {e}"
            );
        }
        // Not enforcing: nothing is checked.
        let open = tenancy(false)
            .scope("query", &HeaderMap::new(), None, None)
            .unwrap();
        assert!(open.enforced.is_none());
        assert_eq!(open.forward, None, "the default tenant is not forwarded");
        assert_eq!(s.forward.as_deref(), Some("team-a"));
        assert!(check(&open, "up{tenant_id=\"team-b\"}").is_ok());
    }

    #[test]
    fn match_sets_and_label_sets() {
        let s = scope_for("team-a");
        assert_eq!(s.enforced, Some(Matcher::equal("tenant_id", "team-a")));
        assert!(s.check_matchers(&[Matcher::equal("job", "x")]).is_ok());
        assert!(
            s.check_matchers(&[Matcher::equal("tenant_id", "team-b")])
                .is_err()
        );
        let ls = |t: &str| storeapi::Labels::from_pairs([("tenant_id", t)]).unwrap();
        assert!(s.shows_label_set(&ls("team-a")));
        assert!(!s.shows_label_set(&ls("team-b")));
        assert!(s.shows_label_set(&storeapi::Labels::from_pairs([("replica", "0")]).unwrap()));
    }

    #[test]
    fn unknown_routes_fail_closed_and_bad_tenants_are_refused() {
        let t = tenancy(true);
        let e = t
            .scope("rules_v2", &HeaderMap::new(), None, None)
            .unwrap_err();
        assert_eq!(e.status(), http::StatusCode::FORBIDDEN);
        assert!(
            tenancy(false)
                .scope("rules_v2", &HeaderMap::new(), None, None)
                .is_ok()
        );
        for bad in ["..", "a/b", "a b", &"x".repeat(151)] {
            let mut h = HeaderMap::new();
            h.insert("thanos-tenant", HeaderValue::from_str(bad).unwrap());
            let e = t.scope("query", &h, None, None).unwrap_err();
            assert_eq!(e.status(), http::StatusCode::BAD_REQUEST, "{bad}");
        }
        // The default tenant when no header is given.
        assert_eq!(
            t.scope("labels", &HeaderMap::new(), None, None)
                .unwrap()
                .tenant,
            "default-tenant"
        );
        // A user bound to a tenant cannot ask for another one.
        let p = netsec::Principal {
            name: "grafana-a".into(),
            tenant: Some("team-a".into()),
        };
        let mut h = HeaderMap::new();
        h.insert("thanos-tenant", HeaderValue::from_static("team-b"));
        let e = t.scope("query", &h, Some(&p), None).unwrap_err();
        assert_eq!(e.status(), http::StatusCode::FORBIDDEN);
        assert_eq!(
            t.scope("query", &HeaderMap::new(), Some(&p), None)
                .unwrap()
                .tenant,
            "team-a"
        );
    }
}

//! `--store.enforce-tenancy`: a store gateway that answers each call for one tenant only,
//! the one named by `thanos-tenant` gRPC metadata (the querier forwards it), or the
//! default tenant without it — defence in depth below the querier, as the receiver's
//! flag of the same name.
//!
//! A block belongs to the tenant in its external labels (`tenant_id` by default, what the
//! receivers' shipper writes). Confinement is one more matcher on that label added to
//! the request: the gateway's own external-label matching then skips other tenants'
//! blocks before any index is read, and a block without the label matches no series
//! (fail closed).

use storeapi::wire::thanos::LabelMatcher;
use storeapi::{Labels, MatchOp, Matcher};
use tonic::Request;

/// gRPC metadata key selecting a tenant.
pub const TENANT_METADATA: &str = "thanos-tenant";

/// Who a call may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantScope {
    /// The external label carrying the tenant.
    pub label: String,
    /// The tenant of a call without `thanos-tenant`.
    pub default_tenant: String,
}

impl TenantScope {
    /// The tenant named by the call's metadata, if any.
    pub fn caller<T>(req: &Request<T>) -> Option<String> {
        req.metadata()
            .get(TENANT_METADATA)
            .and_then(|v| v.to_str().ok())
            .filter(|t| !t.is_empty())
            .map(str::to_string)
    }

    /// The tenant a call reads: its metadata's, or the default.
    pub fn tenant<T>(&self, req: &Request<T>) -> String {
        Self::caller(req).unwrap_or_else(|| self.default_tenant.clone())
    }

    /// Adds the tenant matcher to a request's matchers.
    pub fn confine(&self, tenant: &str, matchers: &mut Vec<LabelMatcher>) {
        let m = Matcher::new(MatchOp::Equal, &self.label, tenant)
            .map(|m| storeapi::wire::matcher_to_wire(&m));
        match m {
            Ok(m) => matchers.push(m),
            // An equality matcher cannot fail to build; if it ever did, read nothing.
            Err(_) => matchers.push(LabelMatcher {
                r#type: 0,
                name: "__name__".into(),
                value: String::new(),
            }),
        }
    }

    /// The label sets `Info` may show: for a caller with a tenant, that tenant's; for a
    /// caller without one (a querier's discovery), every set with the tenant label
    /// removed, so no tenant is named and a querier never prunes a tenant's query away.
    pub fn visible(&self, caller: Option<&str>, sets: &[Labels]) -> Vec<(Labels, Labels)> {
        sets.iter()
            .filter_map(|ls| match caller {
                Some(t) => (ls.get(&self.label) == Some(t)).then(|| (ls.clone(), ls.clone())),
                None => {
                    let mut shown = ls.clone();
                    shown.remove(&self.label);
                    Some((ls.clone(), shown))
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> TenantScope {
        TenantScope {
            label: "tenant_id".into(),
            default_tenant: "default-tenant".into(),
        }
    }

    #[test]
    fn tenant_from_metadata_or_default() {
        let mut r = Request::new(());
        assert_eq!(scope().tenant(&r), "default-tenant");
        r.metadata_mut()
            .insert(TENANT_METADATA, "team-a".parse().unwrap());
        assert_eq!(scope().tenant(&r), "team-a");
        let mut ms = Vec::new();
        scope().confine("team-a", &mut ms);
        assert_eq!(ms.len(), 1);
        assert_eq!(
            (ms[0].name.as_str(), ms[0].value.as_str()),
            ("tenant_id", "team-a")
        );
    }

    #[test]
    fn info_shows_own_sets_or_none_named() {
        let a = Labels::from_pairs([("tenant_id", "a"), ("cluster", "x")]).unwrap();
        let b = Labels::from_pairs([("tenant_id", "b"), ("cluster", "x")]).unwrap();
        let sets = [a.clone(), b];
        let own = scope().visible(Some("a"), &sets);
        assert_eq!(own, vec![(a.clone(), a)]);
        let anon = scope().visible(None, &sets);
        assert_eq!(anon.len(), 2);
        assert!(anon.iter().all(
            |(_, shown)| shown.get("tenant_id").is_none() && shown.get("cluster") == Some("x")
        ));
    }
}

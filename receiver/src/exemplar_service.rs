//! `thanos.Exemplars/Exemplars` over the tenants' exemplar storage.
//!
//! The request's query is PromQL; its selectors pick series (Thanos Query sends the
//! selectors that fit this store as `{..}+{..}`). Matchers on external labels (the
//! `--label`s and the tenant label) are checked against each tenant's external labels
//! and removed, as for `Series`; the answer's series labels carry the external labels.
//! Tenancy as for the StoreAPI: `thanos-tenant` picks the tenant, and with
//! `--store.enforce-tenancy` a call without it sees only the default tenant.

use std::collections::HashSet;
use std::pin::Pin;

use storeapi::wire::labels_to_wire;
use storeapi::wire::thanos::{
    self, ExemplarData, ExemplarsRequest, ExemplarsResponse, ZLabelSet, exemplars_response,
};
use storeapi::{Labels, Matcher};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::multitsdb::Tenant;
use crate::store::StoreState;

/// Longest query text accepted (the querier sends the selectors only).
pub const MAX_QUERY_BYTES: usize = 64 << 10;

/// Deepest bracket nesting accepted (a query is parsed recursively; Thanos Query sends
/// flat `{..}+{..}` selector lists).
pub const MAX_QUERY_NESTING: usize = 256;

/// The deepest nesting of `(`, `[` and `{` in `q` (brackets inside strings count too,
/// which only makes the bound stricter).
fn nesting(q: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    for b in q.bytes() {
        match b {
            b'(' | b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

type ExemplarStream = Pin<Box<dyn Stream<Item = Result<ExemplarsResponse, Status>> + Send>>;

/// The matcher sets that apply to one tenant: sets whose external-label matchers match
/// its external labels, with those matchers removed.
fn sets_for(sets: &[Vec<Matcher>], ext_names: &HashSet<String>, ext: &Labels) -> Vec<Vec<Matcher>> {
    sets.iter()
        .filter_map(|set| {
            let (on_ext, own): (Vec<&Matcher>, Vec<&Matcher>) =
                set.iter().partition(|m| ext_names.contains(&m.name));
            on_ext
                .iter()
                .all(|m| m.matches(ext.get(&m.name).unwrap_or("")))
                .then(|| own.into_iter().cloned().collect())
        })
        .collect()
}

/// The answer of `tenants` for a query's matcher sets, sorted by series labels.
pub fn select(
    tenants: &[std::sync::Arc<Tenant>],
    ext_names: &HashSet<String>,
    sets: &[Vec<Matcher>],
    start: i64,
    end: i64,
) -> Vec<ExemplarData> {
    let mut out: Vec<(Labels, ExemplarData)> = Vec::new();
    for t in tenants {
        let mine = sets_for(sets, ext_names, &t.external_labels);
        if mine.is_empty() {
            continue;
        }
        for s in t.exemplars().select(start, end, &mine) {
            let mut series = s.series;
            series.extend_external(&t.external_labels);
            let exemplars = s
                .exemplars
                .into_iter()
                .map(|e| thanos::Exemplar {
                    labels: Some(ZLabelSet {
                        labels: labels_to_wire(&e.labels),
                    }),
                    value: e.value,
                    ts: e.t,
                })
                .collect();
            out.push((
                series.clone(),
                ExemplarData {
                    series_labels: Some(ZLabelSet {
                        labels: labels_to_wire(&series),
                    }),
                    exemplars,
                },
            ));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.into_iter().map(|(_, d)| d).collect()
}

#[tonic::async_trait]
impl thanos::exemplars_server::Exemplars for StoreState {
    type ExemplarsStream = ExemplarStream;

    async fn exemplars(
        &self,
        request: Request<ExemplarsRequest>,
    ) -> Result<Response<ExemplarStream>, Status> {
        self.check_ready()?;
        let tenants = self.tenants(&request);
        let ext_names = self.external_names();
        let r = request.into_inner();
        if r.query.len() > MAX_QUERY_BYTES {
            return Err(Status::invalid_argument(format!(
                "query of {} bytes is over the limit of {MAX_QUERY_BYTES}",
                r.query.len()
            )));
        }
        let depth = nesting(&r.query);
        if depth > MAX_QUERY_NESTING {
            return Err(Status::invalid_argument(format!(
                "query nests {depth} levels deep, over the limit of {MAX_QUERY_NESTING}"
            )));
        }
        let (start, end) = (r.start, r.end);
        // Parsing and the selection run off the async workers (a blocking thread's stack
        // holds the bounded nesting).
        let data = tokio::task::spawn_blocking(move || {
            let sets = storeapi::selectors::extract_from_query(&r.query)
                .map_err(|e| Status::invalid_argument(format!("invalid query: {e}")))?;
            if sets.is_empty() {
                return Err(Status::invalid_argument(
                    "no matchers specified (the query has no series selector)",
                ));
            }
            Ok(select(&tenants, &ext_names, &sets, start, end))
        })
        .await
        .map_err(|e| Status::internal(format!("exemplar selection failed: {e}")))??;
        let stream = tokio_stream::iter(data.into_iter().map(|d| {
            Ok(ExemplarsResponse {
                result: Some(exemplars_response::Result::Data(d)),
            })
        }));
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use storeapi::MatchOp;

    #[test]
    fn external_label_matchers_pick_and_are_removed() {
        let ext = Labels::from_pairs([("replica", "r1"), ("tenant_id", "a")]).unwrap();
        let names: HashSet<String> = ["replica".to_string(), "tenant_id".to_string()].into();
        let sets = vec![
            vec![
                Matcher::equal("__name__", "x"),
                Matcher::equal("tenant_id", "a"),
            ],
            vec![
                Matcher::equal("__name__", "y"),
                Matcher::equal("tenant_id", "b"),
            ],
            vec![Matcher::new(MatchOp::RegexMatch, "replica", "r.*").unwrap()],
        ];
        let got = sets_for(&sets, &names, &ext);
        assert_eq!(got, vec![vec![Matcher::equal("__name__", "x")], vec![]]);
    }

    fn open_mt(dir: &std::path::Path) -> std::sync::Arc<crate::multitsdb::MultiTsdb> {
        use crate::multitsdb::{MultiTsdb, MultiTsdbConfig};
        std::sync::Arc::new(
            MultiTsdb::open(
                MultiTsdbConfig {
                    dir: dir.to_path_buf(),
                    external_labels: Labels::from_pairs([("replica", "r1")]).unwrap(),
                    tenant_label_name: "tenant_id".into(),
                    block_duration: std::time::Duration::from_secs(7200),
                    retention: std::time::Duration::from_secs(86400),
                    wal_sync: tsdb::SyncPolicy::Never,
                    wal_compression: true,
                    max_tenants: 10,
                    too_far_in_future: None,
                    bucket: None,
                    hash_func: objstore::HashFunc::None,
                    max_exemplars: 100,
                    ooo_time_window: std::time::Duration::ZERO,
                    ooo_cap_max: tsdb::db::DEFAULT_OOO_CAP_MAX,
                    wire_key_cache_bytes: tsdb::DEFAULT_WIRE_KEY_CACHE_BYTES,
                },
                std::sync::Arc::new(std::sync::Mutex::new(
                    prometheus_client::registry::Registry::default(),
                )),
            )
            .unwrap(),
        )
    }

    /// Each tenant's exemplars and metadata, served over the Thanos services with the
    /// StoreAPI's tenancy: `thanos-tenant` picks one tenant, enforcement confines a
    /// call without it to the default tenant, series carry the external labels.
    #[tokio::test]
    async fn served_per_tenant_with_external_labels() {
        use storeapi::wire::thanos::exemplars_server::Exemplars;
        use storeapi::wire::thanos::metadata_server::Metadata;
        use tokio_stream::StreamExt;
        let dir = tempfile::tempdir().unwrap();
        let mt = open_mt(dir.path());
        let metrics = crate::metrics::ReceiveMetrics::new();
        for tenant in ["a", "b"] {
            let series = Labels::from_pairs([("__name__", "req_total"), ("job", tenant)]).unwrap();
            let t = mt.get_or_create(tenant).unwrap();
            t.exemplars()
                .add(
                    &series,
                    tsdb::exemplars::Exemplar {
                        labels: Labels::from_pairs([("trace_id", tenant)]).unwrap(),
                        value: 1.0,
                        t: 1000,
                    },
                )
                .unwrap();
            t.metadata
                .update(
                    "req_total",
                    tsdb::metadata::Meta {
                        kind: "counter".into(),
                        help: format!("help {tenant}"),
                        unit: String::new(),
                    },
                )
                .unwrap()
                .unwrap();
        }
        let _ = metrics;
        let state = |enforce: Option<&str>| StoreState {
            mt: mt.clone(),
            ready: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
            enforce_default_tenant: enforce.map(str::to_string),
        };
        let ask = |tenant: Option<&str>, query: &str| {
            let mut r = Request::new(ExemplarsRequest {
                query: query.into(),
                start: 0,
                end: 2000,
                partial_response_strategy: 0,
            });
            if let Some(t) = tenant {
                r.metadata_mut().insert("thanos-tenant", t.parse().unwrap());
            }
            r
        };
        let jobs = |items: Vec<ExemplarsResponse>| -> Vec<String> {
            items
                .into_iter()
                .filter_map(|r| match r.result {
                    Some(exemplars_response::Result::Data(d)) => {
                        let l = storeapi::wire::labels_from_wire(d.series_labels.unwrap().labels)
                            .unwrap();
                        Some(format!(
                            "{}/{}/{}",
                            l.get("job").unwrap_or(""),
                            l.get("tenant_id").unwrap_or(""),
                            l.get("replica").unwrap_or("")
                        ))
                    }
                    _ => None,
                })
                .collect()
        };
        let run = |s: StoreState, req| async move {
            let resp = s.exemplars(req).await.unwrap().into_inner();
            resp.map(|r| r.unwrap()).collect::<Vec<_>>().await
        };
        // No enforcement, no tenant: both, sorted; a tenant matcher picks one.
        let all = run(state(None), ask(None, "req_total")).await;
        assert_eq!(jobs(all), vec!["a/a/r1", "b/b/r1"]);
        let only_b = run(state(None), ask(None, r#"req_total{tenant_id="b"}"#)).await;
        assert_eq!(jobs(only_b), vec!["b/b/r1"]);
        // thanos-tenant: that tenant only, even when the query names another.
        let a = run(state(Some("b")), ask(Some("a"), "rate(req_total[5m])")).await;
        assert_eq!(jobs(a), vec!["a/a/r1"]);
        let none = run(state(None), ask(Some("a"), r#"req_total{tenant_id="b"}"#)).await;
        assert!(jobs(none).is_empty());
        // Enforcement without the header: the default tenant only.
        let def = run(state(Some("b")), ask(None, "req_total")).await;
        assert_eq!(jobs(def), vec!["b/b/r1"]);
        // Bad and hostile queries are InvalidArgument.
        let deep = format!("{}up{}", "(".repeat(20_000), ")".repeat(20_000));
        for q in ["sum(", "1 + 1", deep.as_str()] {
            let e = state(None).exemplars(ask(None, q)).await.err().unwrap();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{q}");
        }

        // Metadata: the same tenancy.
        let md = |s: StoreState, tenant: Option<&'static str>| async move {
            let mut r = Request::new(storeapi::wire::thanos::MetricMetadataRequest {
                metric: String::new(),
                limit: -1,
                partial_response_strategy: 0,
            });
            if let Some(t) = tenant {
                r.metadata_mut().insert("thanos-tenant", t.parse().unwrap());
            }
            let items: Vec<_> = s
                .metric_metadata(r)
                .await
                .unwrap()
                .into_inner()
                .map(|r| r.unwrap())
                .collect()
                .await;
            let mut helps = Vec::new();
            for i in items {
                if let Some(storeapi::wire::thanos::metric_metadata_response::Result::Metadata(m)) =
                    i.result
                {
                    for e in m.metadata.values() {
                        helps.extend(e.metas.iter().map(|m| m.help.clone()));
                    }
                }
            }
            helps.sort();
            helps
        };
        assert_eq!(md(state(None), None).await, vec!["help a", "help b"]);
        assert_eq!(md(state(None), Some("a")).await, vec!["help a"]);
        assert_eq!(md(state(Some("b")), None).await, vec!["help b"]);
    }
}

//! The exemplar and metric-metadata fan-out: `thanos.Exemplars/Exemplars` and
//! `thanos.Metadata/MetricMetadata` sent to every healthy endpoint whose Info says it
//! serves them, answers merged.
//!
//! Exemplars: each endpoint gets the query's selectors that fit its external label sets
//! (with the tenant matcher when enforcing) as `{..}+{..}`, as Thanos Query sends them;
//! replica labels are removed from series labels (with dedup on), equal series merged
//! and their exemplars deduplicated and sorted (by time, value, labels); series sorted by
//! labels, as Prometheus answers.

use std::collections::{BTreeMap, BTreeSet};

use storeapi::wire::labels_from_wire;
use storeapi::wire::thanos::{
    ExemplarsRequest, MetricMetadataRequest, exemplars_client::ExemplarsClient, exemplars_response,
    metadata_client::MetadataClient, metric_metadata_response,
};
use storeapi::{Labels, Matcher};
use tokio_stream::StreamExt;

use crate::endpoints::{Endpoint, EndpointSet, join_all, label_sets_match};
use crate::proxy::{FanoutError, FanoutOptions};

/// One exemplar of a merged answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Exemplar {
    pub labels: Labels,
    pub value: f64,
    pub t: i64,
}

/// A series and its exemplars, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesExemplars {
    pub series: Labels,
    pub exemplars: Vec<Exemplar>,
}

/// One metadata entry (`type`, `help`, `unit`).
pub type Meta = (String, String, String);

/// Most exemplars one answer may gather (all endpoints): a bound on querier memory.
pub const MAX_EXEMPLARS: usize = 5_000_000;

fn store_error(e: &Endpoint, what: &str, err: impl std::fmt::Display) -> String {
    format!("{what} from store {}: {err}", e.addr)
}

/// Keeps a store failure as a warning (partial response) or fails the whole answer.
fn tolerate(
    opts: &FanoutOptions,
    warnings: &mut Vec<String>,
    msg: String,
) -> Result<(), FanoutError> {
    if opts.partial_response {
        warnings.push(msg);
        Ok(())
    } else {
        Err(FanoutError::Store(msg))
    }
}

/// Merges per-store answers: replica labels removed, series joined, exemplars sorted and
/// deduplicated, series sorted by labels.
pub fn merge(answers: Vec<SeriesExemplars>, replica_labels: &[String]) -> Vec<SeriesExemplars> {
    let mut by_series: BTreeMap<Labels, Vec<Exemplar>> = BTreeMap::new();
    for mut a in answers {
        if !replica_labels.is_empty() {
            a.series
                .retain(|l| !replica_labels.iter().any(|r| *r == *l.name));
        }
        by_series.entry(a.series).or_default().extend(a.exemplars);
    }
    by_series
        .into_iter()
        .map(|(series, mut exemplars)| {
            exemplars.sort_by(|a, b| {
                a.t.cmp(&b.t)
                    .then(a.value.total_cmp(&b.value))
                    .then_with(|| a.labels.cmp(&b.labels))
            });
            exemplars.dedup_by(|a, b| {
                a.t == b.t && a.value.to_bits() == b.value.to_bits() && a.labels == b.labels
            });
            SeriesExemplars { series, exemplars }
        })
        .collect()
}

/// Asks every exemplar endpoint for `sets` in `[start, end]` and merges the answers.
pub async fn exemplars(
    endpoints: &EndpointSet,
    sets: &[Vec<Matcher>],
    start: i64,
    end: i64,
    opts: &FanoutOptions,
) -> Result<(Vec<SeriesExemplars>, Vec<String>), FanoutError> {
    let sets: Vec<Vec<Matcher>> = sets
        .iter()
        .map(|s| {
            let mut s = s.clone();
            s.extend(opts.enforce.iter().cloned());
            s
        })
        .collect();
    let calls = endpoints.all().into_iter().filter_map(|e| {
        let st = e.status();
        if !st.healthy || !st.has_exemplars {
            return None;
        }
        let mine: Vec<Vec<Matcher>> = sets
            .iter()
            .filter(|s| label_sets_match(&st.label_sets, s))
            .cloned()
            .collect();
        if mine.is_empty() {
            return None;
        }
        let query = storeapi::selectors::to_query(&mine);
        let req = opts.request(ExemplarsRequest {
            query,
            start,
            end,
            partial_response_strategy: opts.strategy(),
        });
        Some(async move {
            let mut client =
                ExemplarsClient::new(e.channel.clone()).max_decoding_message_size(64 << 20);
            let mut out = Vec::new();
            let mut warnings = Vec::new();
            let mut count = 0usize;
            let mut stream = match client.exemplars(req).await {
                Ok(s) => s.into_inner(),
                Err(s) => return (e, Err(s.message().to_string()), warnings),
            };
            while let Some(item) = stream.next().await {
                match item.map(|r| r.result) {
                    Ok(Some(exemplars_response::Result::Data(d))) => {
                        let series = match labels_from_wire(
                            d.series_labels.map(|l| l.labels).unwrap_or_default(),
                        ) {
                            Ok(l) => l,
                            Err(err) => {
                                return (e, Err(format!("invalid series labels: {err}")), warnings);
                            }
                        };
                        let mut exemplars = Vec::with_capacity(d.exemplars.len());
                        for x in d.exemplars {
                            let labels = labels_from_wire(
                                x.labels.map(|l| l.labels).unwrap_or_default(),
                            )
                            .unwrap_or_default();
                            exemplars.push(Exemplar {
                                labels,
                                value: x.value,
                                t: x.ts,
                            });
                        }
                        count += exemplars.len();
                        if count > MAX_EXEMPLARS {
                            return (
                                e,
                                Err(format!(
                                    "more than {MAX_EXEMPLARS} exemplars: narrow the query or time range"
                                )),
                                warnings,
                            );
                        }
                        out.push(SeriesExemplars { series, exemplars });
                    }
                    Ok(Some(exemplars_response::Result::Warning(w))) => warnings.push(w),
                    Ok(None) => {}
                    Err(s) => return (e, Err(s.message().to_string()), warnings),
                }
            }
            (e, Ok(out), warnings)
        })
    });
    let results = tokio::time::timeout(opts.timeout, join_all(calls))
        .await
        .map_err(|_| {
            FanoutError::Store(format!(
                "exemplar fan-out timed out after {:?}",
                opts.timeout
            ))
        })?;
    let mut all = Vec::new();
    let mut warnings = Vec::new();
    for (e, r, w) in results {
        warnings.extend(w);
        match r {
            Ok(series) => all.extend(series),
            Err(msg) => tolerate(opts, &mut warnings, store_error(&e, "exemplars", msg))?,
        }
    }
    Ok((merge(all, opts.dedup_labels()), warnings))
}

/// Asks every metadata endpoint (for one `metric`, or all) and merges: per family, the
/// distinct entries.
pub async fn metadata(
    endpoints: &EndpointSet,
    metric: Option<&str>,
    opts: &FanoutOptions,
) -> Result<(BTreeMap<String, BTreeSet<Meta>>, Vec<String>), FanoutError> {
    let calls = endpoints.all().into_iter().filter_map(|e| {
        let st = e.status();
        if !st.healthy || !st.has_metadata {
            return None;
        }
        let req = opts.request(MetricMetadataRequest {
            metric: metric.unwrap_or("").to_string(),
            limit: -1,
            partial_response_strategy: opts.strategy(),
        });
        Some(async move {
            let mut client =
                MetadataClient::new(e.channel.clone()).max_decoding_message_size(64 << 20);
            let mut out: Vec<(String, Meta)> = Vec::new();
            let mut warnings = Vec::new();
            let mut stream = match client.metric_metadata(req).await {
                Ok(s) => s.into_inner(),
                Err(s) => return (e, Err(s.message().to_string()), warnings),
            };
            while let Some(item) = stream.next().await {
                match item.map(|r| r.result) {
                    Ok(Some(metric_metadata_response::Result::Metadata(m))) => {
                        for (family, entry) in m.metadata {
                            for meta in entry.metas {
                                out.push((family.clone(), (meta.r#type, meta.help, meta.unit)));
                            }
                        }
                    }
                    Ok(Some(metric_metadata_response::Result::Warning(w))) => warnings.push(w),
                    Ok(None) => {}
                    Err(s) => return (e, Err(s.message().to_string()), warnings),
                }
            }
            (e, Ok(out), warnings)
        })
    });
    let results = tokio::time::timeout(opts.timeout, join_all(calls))
        .await
        .map_err(|_| {
            FanoutError::Store(format!(
                "metadata fan-out timed out after {:?}",
                opts.timeout
            ))
        })?;
    let mut all: BTreeMap<String, BTreeSet<Meta>> = BTreeMap::new();
    let mut warnings = Vec::new();
    for (e, r, w) in results {
        warnings.extend(w);
        match r {
            Ok(entries) => {
                for (family, meta) in entries {
                    if metric.is_none_or(|m| m == family) {
                        all.entry(family).or_default().insert(meta);
                    }
                }
            }
            Err(msg) => tolerate(opts, &mut warnings, store_error(&e, "metadata", msg))?,
        }
    }
    Ok((all, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ls(p: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(p.iter().copied()).unwrap()
    }

    fn ex(trace: &str, v: f64, t: i64) -> Exemplar {
        Exemplar {
            labels: ls(&[("trace_id", trace)]),
            value: v,
            t,
        }
    }

    #[test]
    fn replicas_merged_exemplars_deduplicated_and_sorted() {
        let a = ls(&[("__name__", "x"), ("replica", "a")]);
        let b = ls(&[("__name__", "x"), ("replica", "b")]);
        let other = ls(&[("__name__", "w"), ("replica", "a")]);
        let answers = vec![
            SeriesExemplars {
                series: a,
                exemplars: vec![ex("1", 1.0, 10), ex("2", 2.0, 20)],
            },
            SeriesExemplars {
                series: b,
                exemplars: vec![ex("2", 2.0, 20), ex("3", 3.0, 15)],
            },
            SeriesExemplars {
                series: other,
                exemplars: vec![ex("9", 9.0, 5)],
            },
        ];
        let got = merge(answers.clone(), &["replica".to_string()]);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].series, ls(&[("__name__", "w")]));
        assert_eq!(got[1].series, ls(&[("__name__", "x")]));
        assert_eq!(
            got[1].exemplars,
            vec![ex("1", 1.0, 10), ex("3", 3.0, 15), ex("2", 2.0, 20)]
        );
        // Without dedup the replicas stay apart.
        assert_eq!(merge(answers, &[]).len(), 3);
    }
}

//! Splitting a write into per-peer batches (pure).

use std::collections::BTreeMap;

use super::RawSeries;
use crate::hashring::{HashringError, MultiHashring};

/// Where one batch goes: an endpoint and the replica number (0-based) it holds the batch as.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Destination {
    pub address: String,
    pub replica: u64,
}

/// Batches: destination → indices of the series (in request order) it receives.
pub type Plan = BTreeMap<Destination, Vec<usize>>;

/// Places replicas `replicas` of every series of `tenant` on `ring`. A peer gets at most one
/// batch per replica number, as Thanos's router sends (the wire request carries one replica).
pub fn plan(
    ring: &MultiHashring,
    tenant: &str,
    series: &[RawSeries],
    replicas: &[u64],
) -> Result<Plan, HashringError> {
    let mut out: Plan = BTreeMap::new();
    let entry = ring.ring_for(tenant)?;
    for (i, s) in series.iter().enumerate() {
        for &n in replicas {
            let ep = entry
                .ring
                .get_n(s.hash, n)
                .map_err(|source| HashringError::Ring {
                    ring: entry.name.clone(),
                    source,
                })?;
            out.entry(Destination {
                address: ep.address.clone(),
                replica: n,
            })
            .or_default()
            .push(i);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hashring::{Algorithm, parse_config};
    use storeapi::wire::prompb::TimeSeries;
    use storeapi::wire::thanos::Label;

    pub(crate) fn series(name: &str, v: &str) -> TimeSeries {
        TimeSeries {
            labels: vec![
                Label {
                    name: "__name__".into(),
                    value: name.into(),
                },
                Label {
                    name: "i".into(),
                    value: v.into(),
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn every_series_gets_rf_distinct_destinations() {
        let cfg = parse_config(br#"[{"endpoints":["a:1","b:1","c:1","d:1"]}]"#, 3).unwrap();
        let ring = MultiHashring::new(Algorithm::Ketama, 3, &cfg).unwrap();
        let ss: Vec<TimeSeries> = (0..200).map(|i| series("m", &i.to_string())).collect();
        let raw: Vec<RawSeries> = ss.iter().map(|s| RawSeries::from_prost("t", s)).collect();
        let p = plan(&ring, "t", &raw, &[0, 1, 2]).unwrap();
        let mut per_series: Vec<Vec<&Destination>> = vec![Vec::new(); ss.len()];
        for (d, ids) in &p {
            assert!(
                ids.windows(2).all(|w| w[0] < w[1]),
                "ids keep request order"
            );
            for &i in ids {
                per_series[i].push(d);
            }
        }
        for (i, ds) in per_series.iter().enumerate() {
            assert_eq!(ds.len(), 3);
            let mut addrs: Vec<&str> = ds.iter().map(|d| d.address.as_str()).collect();
            addrs.sort();
            addrs.dedup();
            assert_eq!(addrs.len(), 3, "series {i} replicas on distinct peers");
            let mut reps: Vec<u64> = ds.iter().map(|d| d.replica).collect();
            reps.sort();
            assert_eq!(reps, vec![0, 1, 2]);
            // Same placement as asking the ring directly.
            for d in ds {
                let want = ring
                    .get_n(
                        "t",
                        ss[i]
                            .labels
                            .iter()
                            .map(|l| (l.name.as_str(), l.value.as_str())),
                        d.replica,
                    )
                    .unwrap();
                assert_eq!(want.address, d.address);
            }
        }
    }

    #[test]
    fn unknown_tenant_fails_the_plan() {
        let cfg = parse_config(br#"[{"tenants":["x"],"endpoints":["a:1"]}]"#, 1).unwrap();
        let ring = MultiHashring::new(Algorithm::Ketama, 1, &cfg).unwrap();
        assert!(
            plan(
                &ring,
                "y",
                &[RawSeries::from_prost("y", &series("m", "1"))],
                &[0]
            )
            .is_err()
        );
        // No series: still needs a ring (Thanos too), but an empty plan is fine for a known tenant.
        assert!(plan(&ring, "x", &[], &[0]).unwrap().is_empty());
    }
}

//! Shipping Prometheus's blocks with the receiver's shipper (`objstore::Shipper`), meta
//! `thanos.source: sidecar` and the external labels as `thanos.labels`.
//!
//! Prometheus must not compact its own blocks: a 2h block compacted away before it was
//! shipped would never reach the bucket, and a compacted block overlaps the 2h blocks
//! already there. So, as Thanos, the sidecar refuses to ship unless Prometheus runs with
//! `--storage.tsdb.min-block-duration` equal to `--storage.tsdb.max-block-duration`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::registry::Registry;
use storeapi::Labels;
use tokio::sync::watch;

use crate::meta::PromMeta;

pub(crate) const MIN_FLAG: &str = "storage.tsdb.min-block-duration";
const MAX_FLAG: &str = "storage.tsdb.max-block-duration";

/// How often the TSDB directory is checked for new blocks (Thanos: 30s).
pub const SHIP_INTERVAL: Duration = Duration::from_secs(30);

/// Checks Prometheus's block duration flags (`/api/v1/status/flags`).
pub fn check_block_durations(flags: &HashMap<String, String>) -> Result<(), String> {
    let get = |name: &str| -> Result<Duration, String> {
        let v = flags.get(name).ok_or_else(|| {
            format!("Prometheus's /api/v1/status/flags has no --{name}: cannot check that it does not compact blocks (is it an agent?)")
        })?;
        objstore::config::parse_model_duration(v)
            .map_err(|e| format!("Prometheus's --{name}={v:?}: {e}"))
    };
    let (min, max) = (get(MIN_FLAG)?, get(MAX_FLAG)?);
    if min != max {
        return Err(format!(
            "found that TSDB Max time is {} and Min time is {}. Compaction needs to be disabled (--{MIN_FLAG} = --{MAX_FLAG}) on the Prometheus this sidecar ships blocks from",
            flags.get(MAX_FLAG).map_or("", String::as_str),
            flags.get(MIN_FLAG).map_or("", String::as_str),
        ));
    }
    if min != Duration::from_secs(2 * 3600) {
        tracing::warn!(block_duration = ?min, "Prometheus's TSDB block duration is not 2h; only 2h is recommended");
    }
    Ok(())
}

fn label_map(l: &Labels) -> BTreeMap<String, String> {
    l.iter()
        .map(|x| (x.name.to_string(), x.value.to_string()))
        .collect()
}

/// Ships every [`SHIP_INTERVAL`] (and once at start) until `stop`. The shipper is made
/// again when the external labels change, so new blocks carry the labels Prometheus has
/// now (its state file keeps what was shipped already).
pub async fn ship_loop(
    bucket: objstore::Bucket,
    dir: PathBuf,
    meta: Arc<PromMeta>,
    registry: Arc<Mutex<Registry>>,
    every: Duration,
    upload_compacted: bool,
    mut stop: watch::Receiver<bool>,
) {
    let mut current: Option<(Labels, objstore::Shipper)> = None;
    let mut registered = false;
    loop {
        let labels = meta.labels();
        if labels.is_empty() {
            tracing::warn!("not uploading: no external labels loaded from Prometheus yet");
        } else {
            if current.as_ref().is_none_or(|(l, _)| *l != labels) {
                // Metrics are registered once (a registry refuses nothing but would
                // list them twice); a later shipper keeps its own.
                let mut reg = registry.lock().unwrap_or_else(|e| e.into_inner());
                let r = (!registered).then_some(&mut *reg);
                registered = true;
                let s =
                    objstore::Shipper::new(bucket.clone(), &dir, label_map(&labels), "sidecar", r)
                        .with_upload_compacted(upload_compacted);
                current = Some((labels, s));
            }
            if let Some((_, s)) = &current {
                match s.sync().await {
                    Ok(r) if !r.uploaded.is_empty() => {
                        tracing::info!(uploaded = r.uploaded.len(), "shipped blocks")
                    }
                    Ok(_) => {}
                    // Logged by the shipper; retried next pass.
                    Err(_) => {}
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(min: &str, max: &str) -> HashMap<String, String> {
        HashMap::from([
            (MIN_FLAG.to_string(), min.to_string()),
            (MAX_FLAG.to_string(), max.to_string()),
        ])
    }

    #[test]
    fn block_durations_must_be_equal() {
        assert_eq!(check_block_durations(&flags("2h", "2h")), Ok(()));
        let e = check_block_durations(&flags("2h", "1d12h")).unwrap_err();
        assert!(e.contains("Compaction needs to be disabled"), "{e}");
        assert!(e.contains("1d12h"), "{e}");
        assert!(check_block_durations(&HashMap::new()).is_err());
        assert!(check_block_durations(&flags("2h", "soon")).is_err());
    }
}

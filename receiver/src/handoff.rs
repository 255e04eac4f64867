//! Hashring hand-off: when a reloaded hashring file moves tenants away from this
//! receiver, their heads are cut into blocks and shipped, so the data they hold is in the
//! bucket (and a scale-down loses nothing) instead of waiting hours for the next block.
//!
//! Thanos Receive (`cmd/thanos/receive.go`, `startTSDBAndUpload`) flushes every tenant's
//! head and uploads on each hashring change unless the algorithm is ketama, turning
//! `/-/ready` false until done (`thanos_receive_multi_db_updates_{attempted,completed}_total`
//! count the rounds). Orrery narrows "every tenant" to the tenants whose placement on this
//! node changed, and flushes on a leave whatever the algorithm:
//!
//! - **left**: no ring matches the tenant any more, or its ring no longer lists this
//!   receiver's `--receive.local-endpoint`: no new data will come; cut and ship it all.
//! - **reshuffled**: its ring is `hashmod` and its endpoints changed: nearly every series
//!   moves to another node (Thanos's reason to flush).
//!
//! A ketama ring that keeps this node moves only a few series (Thanos does not flush
//! then either). Writes are never refused for the hand-off: the flush runs beside them
//! (a sample appended meanwhile lands in the block or stays in the head; see
//! `tsdb::Db::flush`), and the shipper's retention hold keeps every block on disk until
//! it is uploaded, so no acknowledged sample is lost even when the bucket is down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use crate::hashring::watch::HashringHandle;
use crate::hashring::{Algorithm, MultiHashring, RingEntry};
use crate::multitsdb::MultiTsdb;

/// Why a tenant is handed off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// This receiver no longer holds the tenant.
    Left,
    /// Its hashmod ring changed: its series are placed anew.
    Reshuffled,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Left => "left this receiver",
            Reason::Reshuffled => "hashmod ring changed",
        }
    }
}

/// The tenants among `tenants` whose placement on `local` changed from `old` to `new`
/// (see the module doc). Pure.
pub fn affected_tenants(
    old: &MultiHashring,
    new: &MultiHashring,
    local: &str,
    tenants: &[String],
) -> Vec<(String, Reason)> {
    fn holds<'a>(h: &'a MultiHashring, t: &str, local: &str) -> Option<&'a RingEntry> {
        h.ring_for(t)
            .ok()
            .filter(|r| r.ring.endpoints().iter().any(|e| e.address == local))
    }
    let mut out = Vec::new();
    for t in tenants {
        let (Some(before), after) = (holds(old, t, local), holds(new, t, local)) else {
            // Not ours before (a forwarded write of a foreign tenant, or a stale router):
            // nothing of it was placed here by the old ring.
            continue;
        };
        match after {
            None => out.push((t.clone(), Reason::Left)),
            Some(after)
                if after.ring.algorithm() == Algorithm::Hashmod
                    && (before.ring.algorithm() != Algorithm::Hashmod
                        || before.ring.endpoints() != after.ring.endpoints()) =>
            {
                out.push((t.clone(), Reason::Reshuffled))
            }
            Some(_) => {}
        }
    }
    out
}

/// Thanos's counters of hand-off rounds.
#[derive(Debug, Clone, Default)]
pub struct HandoffMetrics {
    pub attempted: Counter,
    pub completed: Counter,
}

impl HandoffMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "thanos_receive_multi_db_updates_attempted",
            "Number of Multi DB attempted reloads with flush and potential upload due to hashring changes",
            self.attempted.clone(),
        );
        r.register(
            "thanos_receive_multi_db_updates_completed",
            "Number of Multi DB completed reloads with flush and potential upload due to hashring changes",
            self.completed.clone(),
        );
    }
}

/// Watches the hashring and hands tenants off (see the module doc).
pub struct Handoff {
    pub mt: Arc<MultiTsdb>,
    pub hashring: HashringHandle,
    /// `--receive.local-endpoint`.
    pub local_endpoint: String,
    /// True while a hand-off runs: `/-/ready` answers 503 meanwhile (as Thanos's).
    pub in_progress: Arc<AtomicBool>,
    /// Bounds the upload of the flushed blocks (`--shipper.shutdown-timeout`); what is
    /// not uploaded by then ships on the shipper's next passes.
    pub ship_timeout: Duration,
    pub metrics: HandoffMetrics,
}

impl Handoff {
    /// Runs until `shutdown` resolves or the hashring watcher stops. A hand-off in
    /// progress at shutdown is finished by the shutdown path (flush all, ship).
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut previous = self.hashring.current();
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                changed = self.hashring.changed() => if !changed { return },
            }
            let current = self.hashring.current();
            match (&previous, &current) {
                // The same file content (e.g. the first notification of the ring already
                // in force at start): nothing moved.
                (Some(old), Some(new)) if old.config_hash == new.config_hash => {}
                (Some(old), Some(new)) => {
                    self.hand_off(&old.hashring, &new.hashring).await;
                }
                _ => {}
            }
            previous = current;
        }
    }

    /// One round: flushes and ships the affected tenants. Returns the tenants handed off.
    pub async fn hand_off(&self, old: &MultiHashring, new: &MultiHashring) -> Vec<String> {
        let names: Vec<String> = self.mt.tenants().iter().map(|t| t.name.clone()).collect();
        let affected = affected_tenants(old, new, &self.local_endpoint, &names);
        if affected.is_empty() {
            tracing::info!(
                "hashring changed; no tenant of this receiver moved, heads kept as they are"
            );
            return Vec::new();
        }
        self.metrics.attempted.inc();
        self.in_progress.store(true, Ordering::Release);
        let names: Vec<String> = affected.iter().map(|(t, _)| t.clone()).collect();
        for (t, why) in &affected {
            tracing::info!(tenant = %t, reason = why.as_str(),
                "hashring has changed; flushing the tenant's head into blocks and shipping them (not ready meanwhile)");
        }
        let mt = self.mt.clone();
        let to_flush = names.clone();
        let flushed = tokio::task::spawn_blocking(move || {
            to_flush
                .iter()
                .map(|t| mt.flush_tenant(t, "hashring hand-off"))
                .sum::<usize>()
        })
        .await
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "flushing tenants for the hand-off failed");
            0
        });
        if self.mt.config().bucket.is_some() {
            match tokio::time::timeout(self.ship_timeout, self.mt.ship_tenants(&names)).await {
                Ok(true) => {}
                Ok(false) => tracing::warn!(
                    "hand-off upload incomplete: the blocks stay on disk (held from retention) and ship on the next passes"
                ),
                Err(_) => tracing::warn!(
                    timeout_s = self.ship_timeout.as_secs(),
                    "hand-off upload did not finish within --shipper.shutdown-timeout; the rest ships on the next passes"
                ),
            }
        }
        self.in_progress.store(false, Ordering::Release);
        self.metrics.completed.inc();
        tracing::info!(
            tenants = names.len(),
            blocks = flushed,
            "hand-off done; ready to receive requests"
        );
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hashring::parse_config;

    fn ring(json: &str) -> MultiHashring {
        MultiHashring::new(
            Algorithm::Ketama,
            1,
            &parse_config(json.as_bytes(), 1).unwrap(),
        )
        .unwrap()
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_tenants_whose_placement_here_changed_are_affected() {
        let old = ring(
            r#"[{"hashring":"a","tenants":["t1","t2"],"endpoints":["me:1","x:1"]},
               {"hashring":"h","algorithm":"hashmod","tenants":["t3"],"endpoints":["me:1","x:1"]},
               {"hashring":"d","endpoints":["me:1"]}]"#,
        );
        // t1 moves to a ring without me; t2 stays on ketama ring a (one endpoint more:
        // few series move, no flush); t3's hashmod ring grows (reshuffle); t4 (default
        // ring) is unchanged; t5 moves from the default ring to ring f (without me).
        let new = ring(
            r#"[{"hashring":"a","tenants":["t2"],"endpoints":["me:1","x:1","y:1"]},
               {"hashring":"b","tenants":["t1"],"endpoints":["x:1"]},
               {"hashring":"h","algorithm":"hashmod","tenants":["t3"],"endpoints":["me:1","x:1","y:1"]},
               {"hashring":"f","tenants":["t5"],"endpoints":["x:1"]},
               {"hashring":"d","endpoints":["me:1"]}]"#,
        );
        let got = affected_tenants(&old, &new, "me:1", &names(&["t1", "t2", "t3", "t4", "t5"]));
        assert_eq!(
            got,
            vec![
                ("t1".to_string(), Reason::Left),
                ("t3".to_string(), Reason::Reshuffled),
                ("t5".to_string(), Reason::Left)
            ]
        );
        // The same file again: nothing.
        assert!(affected_tenants(&new, &new, "me:1", &names(&["t2", "t3"])).is_empty());
        // The node leaves every ring; no ring matches t4 any more either.
        let gone = ring(r#"[{"hashring":"a","tenants":["t2","t3"],"endpoints":["x:1"]}]"#);
        let got = affected_tenants(&new, &gone, "me:1", &names(&["t2", "t3", "t4"]));
        assert_eq!(
            got.iter()
                .map(|(t, r)| (t.as_str(), *r))
                .collect::<Vec<_>>(),
            vec![
                ("t2", Reason::Left),
                ("t3", Reason::Left),
                ("t4", Reason::Left)
            ]
        );
    }

    /// A round on a real tenant with a FILESYSTEM bucket: the moved tenant's head is cut
    /// and its block uploaded with its labels; the tenant that stays keeps its head;
    /// `/-/ready`'s flag is down again afterwards and the round is counted.
    #[tokio::test]
    async fn a_moved_tenant_is_flushed_and_shipped_the_others_kept() {
        use crate::multitsdb::MultiTsdbConfig;
        use std::sync::Mutex;
        let dir = tempfile::tempdir().unwrap();
        let bdir = tempfile::tempdir().unwrap();
        let bucket =
            objstore::Bucket::new(&objstore::BucketConfig::filesystem(bdir.path()), None).unwrap();
        let cfg = MultiTsdbConfig {
            dir: dir.path().to_path_buf(),
            external_labels: storeapi::Labels::from_pairs([("replica", "0")]).unwrap(),
            tenant_label_name: "tenant_id".into(),
            block_duration: Duration::from_secs(7200),
            retention: Duration::from_secs(86400),
            wal_sync: tsdb::SyncPolicy::Never,
            wal_compression: true,
            max_tenants: 10,
            too_far_in_future: None,
            bucket: Some(bucket),
            hash_func: objstore::HashFunc::None,
            max_exemplars: 16,
            ooo_time_window: Duration::ZERO,
            ooo_cap_max: tsdb::db::DEFAULT_OOO_CAP_MAX,
            wire_key_cache_bytes: tsdb::DEFAULT_WIRE_KEY_CACHE_BYTES,
        };
        let mt = Arc::new(MultiTsdb::open(cfg, Arc::new(Mutex::new(Registry::default()))).unwrap());
        let l = storeapi::Labels::from_pairs([("__name__", "up")]).unwrap();
        for t in ["moves", "stays"] {
            let tenant = mt.get_or_create(t).unwrap();
            let mut a = tenant.db.appender();
            for i in 0..10 {
                a.append_one(&l, 1_000_000 + i * 15_000, i as f64);
            }
            a.commit().unwrap();
        }
        let old = ring(
            r#"[{"hashring":"m","tenants":["moves"],"endpoints":["me:1"]},{"hashring":"d","endpoints":["me:1"]}]"#,
        );
        let new = ring(
            r#"[{"hashring":"m","tenants":["moves"],"endpoints":["x:1"]},{"hashring":"d","endpoints":["me:1"]}]"#,
        );
        let loaded = crate::hashring::watch::build(
            br#"[{"endpoints":["me:1"]}]"#,
            std::path::Path::new("-"),
            Algorithm::Ketama,
            1,
        )
        .unwrap();
        let h = Handoff {
            mt: mt.clone(),
            hashring: HashringHandle::fixed(loaded),
            local_endpoint: "me:1".into(),
            in_progress: Arc::new(AtomicBool::new(false)),
            ship_timeout: Duration::from_secs(30),
            metrics: HandoffMetrics::default(),
        };
        assert_eq!(h.hand_off(&old, &new).await, vec!["moves".to_string()]);
        assert!(!h.in_progress.load(Ordering::Acquire));
        assert_eq!(h.metrics.attempted.get(), 1);
        assert_eq!(h.metrics.completed.get(), 1);
        assert_eq!(mt.get("moves").unwrap().db.head_series(), 0);
        assert_eq!(mt.get("stays").unwrap().db.head_series(), 1);
        let shipped: Vec<serde_json::Value> = std::fs::read_dir(bdir.path())
            .unwrap()
            .flatten()
            .map(|e| {
                serde_json::from_slice(&std::fs::read(e.path().join("meta.json")).unwrap()).unwrap()
            })
            .collect();
        assert_eq!(shipped.len(), 1);
        assert_eq!(shipped[0]["thanos"]["labels"]["tenant_id"], "moves");
        assert_eq!(shipped[0]["stats"]["numSamples"], 10);
        // The same ring again: no round.
        assert!(h.hand_off(&new, &new).await.is_empty());
        assert_eq!(h.metrics.attempted.get(), 1);
    }
}

//! What the sidecar knows about its Prometheus: external labels and lowest timestamp,
//! refreshed periodically. A failed refresh makes the sidecar unready (Thanos uses the
//! config read as the heartbeat), so queriers stop asking a Prometheus that is gone.

use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use storeapi::Labels;

use crate::prom::{PromClient, PromError};

/// The error text when a Prometheus has no external labels (Thanos requires them: they
/// tell one Prometheus's data from another's in the global view).
pub const NO_EXTERNAL_LABELS: &str = "no external labels configured on Prometheus server, uniquely identifying external labels must be configured (global.external_labels in prometheus.yml); see https://thanos.io/tip/thanos/storage.md#external-labels";

/// Why a refresh failed.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Prom(#[from] PromError),
    #[error("{NO_EXTERNAL_LABELS}")]
    NoExternalLabels,
    #[error("Prometheus did not answer within {0:?}")]
    Timeout(Duration),
}

#[derive(Debug)]
struct State {
    labels: Labels,
    min_time: i64,
    /// Why the sidecar is not ready (empty when it is).
    reason: String,
}

/// Shared, refreshed Prometheus metadata.
#[derive(Debug)]
pub struct PromMeta {
    state: RwLock<State>,
    ready: AtomicBool,
}

impl Default for PromMeta {
    fn default() -> Self {
        PromMeta {
            state: RwLock::new(State {
                labels: Labels::empty(),
                min_time: i64::MIN,
                reason: "external labels not loaded from Prometheus yet".into(),
            }),
            ready: AtomicBool::new(false),
        }
    }
}

impl PromMeta {
    pub fn labels(&self) -> Labels {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .labels
            .clone()
    }

    /// Lowest timestamp Prometheus holds (ms), `i64::MIN` when unknown or empty.
    pub fn min_time(&self) -> i64 {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .min_time
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Why not ready ("" when ready).
    pub fn reason(&self) -> String {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .reason
            .clone()
    }

    /// Sets the values read from Prometheus (tests and [`PromMeta::refresh`]).
    pub fn set(&self, labels: Labels, min_time: i64) {
        {
            let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
            s.labels = labels;
            s.min_time = min_time;
            s.reason.clear();
        }
        self.ready.store(true, Ordering::Release);
    }

    fn set_unready(&self, reason: String) {
        self.ready.store(false, Ordering::Release);
        self.state.write().unwrap_or_else(|e| e.into_inner()).reason = reason;
    }

    /// Reads lowest timestamp and external labels once. On failure the old labels stay
    /// (a blip must not change the series' identity) but the sidecar turns unready.
    pub async fn refresh(
        &self,
        client: &PromClient,
        timeout: Duration,
    ) -> Result<(), RefreshError> {
        let r = tokio::time::timeout(timeout, async {
            let min_time = client.lowest_timestamp().await?;
            let labels = client.external_labels().await?;
            Ok::<_, PromError>((labels, min_time))
        })
        .await;
        let r = match r {
            Err(_) => Err(RefreshError::Timeout(timeout)),
            Ok(Err(e)) => Err(e.into()),
            Ok(Ok((labels, _))) if labels.is_empty() => Err(RefreshError::NoExternalLabels),
            Ok(Ok(v)) => Ok(v),
        };
        match r {
            Ok((labels, min_time)) => {
                let old = self.labels();
                if old != labels {
                    tracing::info!(external_labels = %labels, "loaded Prometheus external labels");
                }
                self.set(labels, min_time);
                Ok(())
            }
            Err(e) => {
                self.set_unready(e.to_string());
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_last_refresh() {
        let m = PromMeta::default();
        assert!(!m.is_ready());
        assert!(m.reason().contains("not loaded"));
        m.set(Labels::from_pairs([("cluster", "a")]).unwrap(), 5);
        assert!(m.is_ready());
        assert_eq!(m.min_time(), 5);
        m.set_unready("gone".into());
        assert!(!m.is_ready());
        // Labels survive a failed refresh.
        assert_eq!(m.labels().get("cluster"), Some("a"));
    }
}

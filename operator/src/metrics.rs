//! The operator's own metrics (`/metrics`) and health (`/healthz`).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    pub controller: String,
}

/// Reconcile counters and durations per controller.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ControllerLabel, Counter>,
    errors: Family<ControllerLabel, Counter>,
    durations: Family<ControllerLabel, Histogram>,
    /// Remote-write entries written into Prometheus configurations.
    pub remote_write_patches: Counter,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("orrery_operator");
        let reconciles = Family::<ControllerLabel, Counter>::default();
        let errors = Family::<ControllerLabel, Counter>::default();
        let durations: Family<ControllerLabel, Histogram> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.005, 2.0, 14)));
        let remote_write_patches = Counter::default();
        let leader = Gauge::default();
        registry.register("reconcile", "Reconciliations run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciliations that failed",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconciliation",
            durations.clone(),
        );
        registry.register(
            "remote_write_patches",
            "Prometheus configurations edited (remote_write upserts and removals)",
            remote_write_patches.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica is the leader",
            leader.clone(),
        );
        Metrics {
            registry,
            reconciles,
            errors,
            durations,
            remote_write_patches,
            leader,
        }
    }

    /// Records one reconciliation.
    pub fn observe(&self, controller: &str, took: Duration, failed: bool) {
        let l = ControllerLabel {
            controller: controller.to_string(),
        };
        self.reconciles.get_or_create(&l).inc();
        if failed {
            self.errors.get_or_create(&l).inc();
        }
        self.durations.get_or_create(&l).observe(took.as_secs_f64());
    }

    /// Text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The HTTP router serving `/metrics` and `/healthz`.
pub fn router(metrics: Arc<Metrics>) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.render(),
                    )
                }
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_reconciles_and_errors() {
        let m = Metrics::new();
        m.observe("receivecluster", Duration::from_millis(3), false);
        m.observe("receivecluster", Duration::from_millis(3), true);
        let text = m.render();
        assert!(
            text.contains("orrery_operator_reconcile_total{controller=\"receivecluster\"} 2"),
            "{text}"
        );
        assert!(
            text.contains(
                "orrery_operator_reconcile_errors_total{controller=\"receivecluster\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "orrery_operator_reconcile_duration_seconds_count{controller=\"receivecluster\"} 2"
            ),
            "{text}"
        );
    }
}

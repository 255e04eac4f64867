//! The receiver's own metrics (TSDB metrics are registered per tenant by `tsdb`).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ProtocolLabels {
    pub protocol: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: String,
}

/// Why samples or series were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Reason {
    out_of_order,
    duplicate_timestamp,
    out_of_bounds,
    too_far_in_future,
    invalid_labels,
    invalid_histogram,
    request_limit,
    head_series_limit,
    tsdb_error,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TenantReason {
    pub tenant: String,
    pub reason: Reason,
}

/// Why exemplars were dropped (`label_length`, `out_of_order`, `invalid_labels`, `disabled`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TenantExemplarReason {
    pub tenant: String,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct ReceiveMetrics {
    pub requests: Family<CodeLabels, Counter>,
    pub samples_received: Family<TenantLabels, Counter>,
    pub series_received: Family<TenantLabels, Counter>,
    pub samples_rejected: Family<TenantReason, Counter>,
    pub series_rejected: Family<TenantReason, Counter>,
    pub histograms_received: Family<TenantLabels, Counter>,
    pub histograms_rejected: Family<TenantLabels, Counter>,
    pub exemplars_received: Family<TenantLabels, Counter>,
    pub metadata_received: Family<TenantLabels, Counter>,
    pub exemplars_stored: Family<TenantLabels, Counter>,
    pub exemplars_rejected: Family<TenantExemplarReason, Counter>,
    pub metadata_rejected: Family<TenantLabels, Counter>,
    pub requests_by_protocol: Family<ProtocolLabels, Counter>,
    pub head_series: Family<TenantLabels, Gauge>,
    pub in_flight: Gauge,
    pub request_duration: Histogram,
    pub tenants: Gauge,
}

impl Default for ReceiveMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ReceiveMetrics {
    pub fn new() -> Self {
        ReceiveMetrics {
            requests: Family::default(),
            samples_received: Family::default(),
            series_received: Family::default(),
            samples_rejected: Family::default(),
            series_rejected: Family::default(),
            histograms_received: Family::default(),
            histograms_rejected: Family::default(),
            exemplars_received: Family::default(),
            metadata_received: Family::default(),
            exemplars_stored: Family::default(),
            exemplars_rejected: Family::default(),
            metadata_rejected: Family::default(),
            requests_by_protocol: Family::default(),
            head_series: Family::default(),
            in_flight: Gauge::default(),
            request_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            tenants: Gauge::default(),
        }
    }

    pub fn register(&self, r: &mut Registry) {
        r.register(
            "orrery_receive_http_requests",
            "Remote-write requests by HTTP status code",
            self.requests.clone(),
        );
        r.register(
            "orrery_receive_samples_received",
            "Float samples received in decodable requests",
            self.samples_received.clone(),
        );
        r.register(
            "orrery_receive_series_received",
            "Series received in decodable requests",
            self.series_received.clone(),
        );
        r.register(
            "orrery_receive_samples_rejected",
            "Samples refused, by reason",
            self.samples_rejected.clone(),
        );
        r.register(
            "orrery_receive_series_rejected",
            "Series refused as a whole, by reason",
            self.series_rejected.clone(),
        );
        r.register(
            "orrery_receive_native_histograms_rejected",
            "Native histogram samples refused as invalid (schema, spans, buckets)",
            self.histograms_rejected.clone(),
        );
        r.register(
            "orrery_receive_native_histograms_received",
            "Native histogram samples received",
            self.histograms_received.clone(),
        );
        r.register(
            "orrery_receive_exemplars_received",
            "Exemplars received in decodable requests",
            self.exemplars_received.clone(),
        );
        r.register(
            "orrery_receive_metadata_received",
            "Metric metadata entries received in decodable requests",
            self.metadata_received.clone(),
        );
        r.register(
            "orrery_receive_exemplars_stored",
            "Exemplars stored in a tenant's exemplar storage (duplicates of the newest not counted)",
            self.exemplars_stored.clone(),
        );
        r.register(
            "orrery_receive_exemplars_rejected",
            "Exemplars dropped, by reason (the request still succeeds, as in Prometheus)",
            self.exemplars_rejected.clone(),
        );
        r.register(
            "orrery_receive_metadata_rejected",
            "Metric metadata entries dropped (over a bound, or no family name)",
            self.metadata_rejected.clone(),
        );
        r.register(
            "orrery_receive_requests_by_protocol",
            "Remote-write requests by negotiated protocol (v1 = prometheus.WriteRequest, v2 = io.prometheus.write.v2.Request)",
            self.requests_by_protocol.clone(),
        );
        r.register(
            "orrery_receive_head_series",
            "Series in each tenant's head",
            self.head_series.clone(),
        );
        r.register(
            "orrery_receive_requests_in_flight",
            "Remote-write requests being processed",
            self.in_flight.clone(),
        );
        r.register(
            "orrery_receive_request_duration_seconds",
            "Remote-write request handling time",
            self.request_duration.clone(),
        );
        r.register(
            "orrery_receive_tenants",
            "Tenant TSDBs open",
            self.tenants.clone(),
        );
    }

    pub fn reject_samples(&self, tenant: &str, reason: Reason, n: u64) {
        if n > 0 {
            self.samples_rejected
                .get_or_create(&TenantReason {
                    tenant: tenant.to_string(),
                    reason,
                })
                .inc_by(n);
        }
    }

    pub fn reject_series(&self, tenant: &str, reason: Reason, n: u64) {
        if n > 0 {
            self.series_rejected
                .get_or_create(&TenantReason {
                    tenant: tenant.to_string(),
                    reason,
                })
                .inc_by(n);
        }
    }

    pub fn reject_exemplars(&self, tenant: &str, reason: &str, n: u64) {
        if n > 0 {
            self.exemplars_rejected
                .get_or_create(&TenantExemplarReason {
                    tenant: tenant.to_string(),
                    reason: reason.to_string(),
                })
                .inc_by(n);
        }
    }

    pub fn store_exemplars(&self, tenant: &str, n: u64) {
        if n > 0 {
            self.exemplars_stored
                .get_or_create(&TenantLabels {
                    tenant: tenant.to_string(),
                })
                .inc_by(n);
        }
    }

    pub fn reject_metadata(&self, tenant: &str, n: u64) {
        if n > 0 {
            self.metadata_rejected
                .get_or_create(&TenantLabels {
                    tenant: tenant.to_string(),
                })
                .inc_by(n);
        }
    }
}

//! The querier's own metrics, served on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandlerLabels {
    pub handler: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandlerOnly {
    pub handler: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 4.0, 10))
}

/// Counters and histograms of the HTTP API, gauges of the endpoint set.
pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<HandlerLabels, Counter>,
    pub duration: Family<HandlerOnly, Histogram, fn() -> Histogram>,
    pub endpoints: Family<StateLabel, Gauge>,
    pub concurrent_queries: Gauge,
    /// Requests refused by `--http.config` authentication or the tenant rule.
    pub auth_failures: netsec::identity::FailureCounter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<HandlerLabels, Counter>::default();
        registry.register(
            "orrery_query_http_requests",
            "HTTP requests by handler and status code",
            requests.clone(),
        );
        let duration: Family<HandlerOnly, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "orrery_query_http_request_duration_seconds",
            "HTTP request latency by handler",
            duration.clone(),
        );
        let endpoints = Family::<StateLabel, Gauge>::default();
        registry.register(
            "orrery_query_endpoints",
            "StoreAPI endpoints by health state",
            endpoints.clone(),
        );
        let concurrent_queries = Gauge::default();
        registry.register(
            "orrery_query_concurrent_queries",
            "Queries being evaluated right now",
            concurrent_queries.clone(),
        );
        let auth_failures = netsec::identity::FailureCounter::default();
        registry.register(
            "orrery_query_http_auth_failures",
            "HTTP requests refused before any read, by reason: missing or wrong credentials (401), a tenant header naming another tenant than the credential's (403), no client certificate for the tenant field, rate limit (429)",
            auth_failures.clone(),
        );
        Metrics {
            registry,
            requests,
            duration,
            endpoints,
            concurrent_queries,
            auth_failures,
        }
    }

    pub fn observe(&self, handler: &str, code: u16, secs: f64) {
        self.requests
            .get_or_create(&HandlerLabels {
                handler: handler.to_string(),
                code: code.to_string(),
            })
            .inc();
        self.duration
            .get_or_create(&HandlerOnly {
                handler: handler.to_string(),
            })
            .observe(secs);
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

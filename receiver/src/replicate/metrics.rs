//! Replication metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::quorum::FailureKind;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
    /// `success`, `conflict`, `not_ready`, `unavailable`, `other`.
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabels {
    pub cause: String,
}

/// Counters of forwarding and quorum.
#[derive(Debug, Clone, Default)]
pub struct ReplicationMetrics {
    /// Batches sent to peers (or written locally as part of a fan-out), by peer and result.
    pub forward_requests: Family<PeerLabels, Counter>,
    /// Fan-outs of client writes, by whether every series reached quorum.
    pub replications: Family<ResultLabels, Counter>,
    /// Series that missed write quorum, by cause.
    pub quorum_failures: Family<CauseLabels, Counter>,
}

impl ReplicationMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "thanos_receive_forward_requests",
            "The number of batches forwarded to peers (peer=\"local\" for this receiver's own share), by result",
            self.forward_requests.clone(),
        );
        registry.register(
            "thanos_receive_replications",
            "The number of replicated write requests, by whether every series reached write quorum",
            self.replications.clone(),
        );
        registry.register(
            "orrery_receive_quorum_failures",
            "The number of series that missed write quorum, by cause",
            self.quorum_failures.clone(),
        );
    }

    pub(crate) fn forwarded(&self, peer: &str, result: Result<(), FailureKind>) {
        let result = match result {
            Ok(()) => "success".to_string(),
            Err(k) => k.as_str().to_string(),
        };
        self.forward_requests
            .get_or_create(&PeerLabels {
                peer: peer.to_string(),
                result,
            })
            .inc();
    }
}

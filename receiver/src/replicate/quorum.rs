//! Write quorum and the status of a replicated write (pure).
//!
//! Every series is written to `replicas` receivers; it succeeds once `success_threshold` of
//! them accepted it (the write quorum). Its outcome is decided as soon as it can no longer
//! change:
//!
//! - **succeeded**: successes ≥ quorum;
//! - **failed by conflict**: conflicts ≥ `replicas − quorum + 1`. Conflicts (out of order,
//!   duplicate, out of bounds) are permanent, so quorum is out of reach whatever the
//!   outstanding replicas answer and however often the client retries;
//! - **failed otherwise**: quorum is out of reach and the outstanding replicas cannot make it
//!   a conflict any more. The cause is transient (unavailable / not ready: a retry can
//!   succeed once the peers are back) if any failure was transient, else `Other`.
//!
//! The request's status follows from its failed series. Thanos lets any transient failure
//! win (503, "retry"), even when another series of the same request failed by conflict and
//! so can never succeed: Prometheus then retries the batch forever (thanos-io/thanos#8727).
//! Here a conflict-decided series makes the request 409 (non-retryable), then 503 for
//! transient failures, then 500.

use std::collections::BTreeSet;
use std::fmt;

/// Why one replica write of a series failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureKind {
    /// Permanent rejection of the data: out of order, duplicate, out of bounds, bad labels
    /// (HTTP 409, gRPC `AlreadyExists`).
    Conflict,
    /// The receiver is starting or reloading (HTTP 503, gRPC `Unavailable`).
    NotReady,
    /// The peer is unreachable, backing off or timed out (HTTP 503, gRPC `Unavailable`).
    Unavailable,
    /// Anything else (HTTP 500, gRPC `Internal`).
    Other,
}

impl FailureKind {
    pub fn is_transient(self) -> bool {
        matches!(self, FailureKind::NotReady | FailureKind::Unavailable)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Conflict => "conflict",
            FailureKind::NotReady => "not_ready",
            FailureKind::Unavailable => "unavailable",
            FailureKind::Other => "other",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Thanos's write quorum: RF 2 → 1 (so two replicas behave like a Prometheus HA pair),
/// otherwise a strict majority ⌊RF/2⌋+1.
pub fn write_quorum(replication_factor: u64) -> usize {
    if replication_factor == 2 {
        1
    } else {
        (replication_factor / 2 + 1) as usize
    }
}

/// Replica answers for one series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub successes: u32,
    pub conflicts: u32,
    pub not_ready: u32,
    pub unavailable: u32,
    pub other: u32,
}

impl Tally {
    pub fn record(&mut self, result: Result<(), FailureKind>) {
        match result {
            Ok(()) => self.successes += 1,
            Err(FailureKind::Conflict) => self.conflicts += 1,
            Err(FailureKind::NotReady) => self.not_ready += 1,
            Err(FailureKind::Unavailable) => self.unavailable += 1,
            Err(FailureKind::Other) => self.other += 1,
        }
    }

    pub fn failures(&self) -> u32 {
        self.conflicts + self.not_ready + self.unavailable + self.other
    }

    pub fn reported(&self) -> u32 {
        self.successes + self.failures()
    }
}

/// The outcome of one series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Replicas are outstanding and could still change the outcome.
    Pending,
    Succeeded,
    Failed(FailureKind),
}

/// Thresholds for one fan-out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quorum {
    /// Replica writes per series.
    pub replicas: u32,
    /// Successes needed.
    pub success_threshold: u32,
}

impl Quorum {
    /// A fresh write from a client: `replication_factor` replicas, write quorum.
    pub fn for_replication_factor(replication_factor: u64) -> Self {
        Quorum {
            replicas: replication_factor as u32,
            success_threshold: write_quorum(replication_factor) as u32,
        }
    }

    /// Failures after which success is impossible.
    pub fn failure_threshold(&self) -> u32 {
        self.replicas.saturating_sub(self.success_threshold) + 1
    }

    /// The series' outcome given the answers so far.
    pub fn decide(&self, t: &Tally) -> Outcome {
        if t.successes >= self.success_threshold {
            return Outcome::Succeeded;
        }
        let ft = self.failure_threshold();
        if t.conflicts >= ft {
            return Outcome::Failed(FailureKind::Conflict);
        }
        let outstanding = self.replicas.saturating_sub(t.reported());
        // Quorum still reachable, or the outstanding replicas could still make it a conflict.
        if t.failures() < ft || t.conflicts + outstanding >= ft {
            return Outcome::Pending;
        }
        Outcome::Failed(failed_cause(t))
    }

    /// The outcome once no more answers will come (deadline): missing answers count as
    /// unavailable (a timed-out peer is transient).
    pub fn decide_final(&self, t: &Tally) -> Outcome {
        let mut t = *t;
        t.unavailable += self.replicas.saturating_sub(t.reported());
        match self.decide(&t) {
            Outcome::Pending => Outcome::Failed(failed_cause(&t)),
            o => o,
        }
    }
}

fn failed_cause(t: &Tally) -> FailureKind {
    if t.unavailable > 0 && t.unavailable >= t.not_ready {
        FailureKind::Unavailable
    } else if t.not_ready > 0 {
        FailureKind::NotReady
    } else {
        FailureKind::Other
    }
}

/// The request-level cause from its failed series: conflict > unavailable > not ready >
/// other; `None` when every series succeeded.
pub fn request_cause(outcomes: impl IntoIterator<Item = Outcome>) -> Option<FailureKind> {
    let causes: BTreeSet<FailureKind> = outcomes
        .into_iter()
        .filter_map(|o| match o {
            Outcome::Failed(k) => Some(k),
            _ => None,
        })
        .collect();
    [
        FailureKind::Conflict,
        FailureKind::Unavailable,
        FailureKind::NotReady,
        FailureKind::Other,
    ]
    .into_iter()
    .find(|k| causes.contains(k))
}

/// HTTP status for a request-level cause.
pub fn http_status(cause: FailureKind) -> u16 {
    match cause {
        FailureKind::Conflict => 409,
        FailureKind::NotReady | FailureKind::Unavailable => 503,
        FailureKind::Other => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use FailureKind::*;

    #[test]
    fn quorum_sizes() {
        let want = [(1, 1), (2, 1), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4)];
        for (rf, q) in want {
            assert_eq!(write_quorum(rf), q, "rf {rf}");
        }
        assert_eq!(Quorum::for_replication_factor(3).failure_threshold(), 2);
        assert_eq!(Quorum::for_replication_factor(2).failure_threshold(), 2);
        assert_eq!(Quorum::for_replication_factor(4).failure_threshold(), 2);
        assert_eq!(Quorum::for_replication_factor(1).failure_threshold(), 1);
    }

    fn tally(results: &[Result<(), FailureKind>]) -> Tally {
        let mut t = Tally::default();
        for r in results {
            t.record(*r);
        }
        t
    }

    #[test]
    fn series_outcomes() {
        use Outcome::*;
        let ok = Ok(());
        #[allow(clippy::type_complexity)]
        let cases: &[(u64, &[Result<(), FailureKind>], Outcome)] = &[
            // RF 1
            (1, &[], Pending),
            (1, &[ok], Succeeded),
            (1, &[Err(Conflict)], Failed(Conflict)),
            (1, &[Err(Unavailable)], Failed(Unavailable)),
            (1, &[Err(NotReady)], Failed(NotReady)),
            (1, &[Err(Other)], Failed(Other)),
            // RF 2: quorum 1
            (2, &[ok], Succeeded),
            (2, &[Err(Unavailable)], Pending),
            (2, &[Err(Unavailable), ok], Succeeded),
            (2, &[Err(Conflict), Err(Conflict)], Failed(Conflict)),
            (2, &[Err(Conflict), Err(Unavailable)], Failed(Unavailable)),
            // RF 3: quorum 2, failure threshold 2
            (3, &[ok], Pending),
            (3, &[ok, ok], Succeeded),
            (3, &[ok, Err(Unavailable), ok], Succeeded),
            (3, &[Err(Conflict)], Pending),
            // #8727: two conflicts decide, the third replica (down) need not answer.
            (3, &[Err(Conflict), Err(Conflict)], Failed(Conflict)),
            (
                3,
                &[Err(Conflict), Err(Unavailable), Err(Conflict)],
                Failed(Conflict),
            ),
            // Unavailable + conflict: the outstanding replica could still make it a conflict.
            (3, &[Err(Conflict), Err(Unavailable)], Pending),
            (
                3,
                &[Err(Conflict), Err(Unavailable), ok],
                Failed(Unavailable),
            ),
            // Two transient failures: nothing outstanding can make it a conflict.
            (3, &[Err(Unavailable), Err(NotReady)], Failed(Unavailable)),
            (3, &[Err(NotReady), Err(NotReady)], Failed(NotReady)),
            (
                3,
                &[Err(Unavailable), Err(Unavailable), Err(Conflict)],
                Failed(Unavailable),
            ),
            (3, &[Err(Conflict), Err(Other), ok], Failed(Other)),
            (3, &[Err(Other), Err(Other)], Failed(Other)),
            // RF 4: quorum 3, failure threshold 2
            (4, &[Err(Conflict), Err(Conflict)], Failed(Conflict)),
            (4, &[ok, ok, ok], Succeeded),
            // RF 5: quorum 3, failure threshold 3
            (
                5,
                &[Err(Conflict), Err(Conflict), Err(Unavailable)],
                Pending,
            ),
            (
                5,
                &[
                    Err(Conflict),
                    Err(Conflict),
                    Err(Unavailable),
                    Err(Conflict),
                ],
                Failed(Conflict),
            ),
            (
                5,
                &[Err(Conflict), Err(Conflict), Err(Unavailable), ok, ok],
                Failed(Unavailable),
            ),
        ];
        for (rf, results, want) in cases {
            let q = Quorum::for_replication_factor(*rf);
            assert_eq!(
                q.decide(&tally(results)),
                *want,
                "rf {rf} results {results:?}"
            );
        }
    }

    #[test]
    fn deadline_counts_missing_answers_as_unavailable() {
        let q = Quorum::for_replication_factor(3);
        assert_eq!(
            q.decide_final(&tally(&[Ok(())])),
            Outcome::Failed(Unavailable)
        );
        assert_eq!(
            q.decide_final(&tally(&[Ok(()), Ok(())])),
            Outcome::Succeeded
        );
        assert_eq!(
            q.decide_final(&tally(&[Err(Conflict)])),
            Outcome::Failed(Unavailable)
        );
        assert_eq!(
            q.decide_final(&tally(&[Err(Conflict), Err(Conflict)])),
            Outcome::Failed(Conflict)
        );
        assert_eq!(q.decide_final(&tally(&[])), Outcome::Failed(Unavailable));
    }

    #[test]
    fn request_status_prefers_conflict_over_retry() {
        use Outcome::*;
        let cases: &[(&[Outcome], Option<u16>)] = &[
            (&[], None),
            (&[Succeeded, Succeeded], None),
            (&[Succeeded, Failed(Unavailable)], Some(503)),
            (&[Failed(NotReady)], Some(503)),
            (&[Failed(Other), Succeeded], Some(500)),
            (&[Failed(Other), Failed(NotReady)], Some(503)),
            (&[Failed(Conflict), Succeeded], Some(409)),
            // Thanos answers 503 here and Prometheus retries a batch that can never succeed.
            (&[Failed(Conflict), Failed(Unavailable)], Some(409)),
            (
                &[Failed(Other), Failed(Conflict), Failed(NotReady)],
                Some(409),
            ),
        ];
        for (outcomes, want) in cases {
            assert_eq!(
                request_cause(outcomes.iter().copied()).map(http_status),
                *want,
                "{outcomes:?}"
            );
        }
    }
}

//! Leader election with a `coordination.k8s.io/v1` Lease: one operator replica
//! reconciles at a time; the others wait until the holder stops renewing.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::PostParams;

/// Whether `identity` may take or keep the lease described by `spec` at `now`:
/// it already holds it, nobody does, or the holder's renewal has expired.
pub fn may_hold(
    spec: &LeaseSpec,
    identity: &str,
    now: Timestamp,
    default_duration: Duration,
) -> bool {
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() || holder == identity {
        return true;
    }
    let secs = spec
        .lease_duration_seconds
        .map(i64::from)
        .unwrap_or(default_duration.as_secs() as i64);
    match &spec.renew_time {
        Some(t) => now > t.0 + SignedDuration::from_secs(secs),
        None => true,
    }
}

/// The lease spec after `identity` takes or renews it at `now`.
pub fn taken(spec: &LeaseSpec, identity: &str, now: Timestamp, duration: Duration) -> LeaseSpec {
    let ours = spec.holder_identity.as_deref() == Some(identity);
    LeaseSpec {
        holder_identity: Some(identity.to_string()),
        lease_duration_seconds: Some(i32::try_from(duration.as_secs()).unwrap_or(15)),
        acquire_time: if ours {
            spec.acquire_time.clone()
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: if ours {
            spec.lease_transitions
        } else {
            Some(spec.lease_transitions.unwrap_or(0) + 1)
        },
        ..spec.clone()
    }
}

/// Holds (or tries to hold) one named Lease.
pub struct LeaderElector {
    pub api: Api<Lease>,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
}

impl LeaderElector {
    /// One attempt to acquire or renew. `Ok(true)` while we are the leader.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        match self.api.get_opt(&self.name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(taken(
                        &LeaseSpec::default(),
                        &self.identity,
                        now,
                        self.duration,
                    )),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.is_already_exists() || s.is_conflict() => {
                        Ok(false)
                    }
                    Err(e) => Err(e),
                }
            }
            Some(mut lease) => {
                let spec = lease.spec.clone().unwrap_or_default();
                if !may_hold(&spec, &self.identity, now, self.duration) {
                    return Ok(false);
                }
                lease.spec = Some(taken(&spec, &self.identity, now, self.duration));
                match self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.is_conflict() => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return,
                Ok(false) => tracing::debug!(lease = %self.name, "another replica leads"),
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "lease acquisition failed")
                }
            }
            tokio::time::sleep(self.duration / 3).await;
        }
    }

    /// Renews the lease every third of its duration; returns when leadership is lost
    /// (renewals failing for longer than the lease lasts, or another holder).
    pub async fn hold(&self) {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.duration / 3).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "lease renewal failed");
                    if last_ok.elapsed() > self.duration {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_rules() {
        let d = Duration::from_secs(15);
        let t0 = Timestamp::from_second(1_000_000).unwrap();
        let empty = LeaseSpec::default();
        assert!(may_hold(&empty, "a", t0, d));
        let a = taken(&empty, "a", t0, d);
        assert_eq!(a.holder_identity.as_deref(), Some("a"));
        assert_eq!(a.lease_transitions, Some(1));
        assert!(may_hold(&a, "a", t0, d));
        assert!(!may_hold(&a, "b", t0 + SignedDuration::from_secs(10), d));
        assert!(may_hold(&a, "b", t0 + SignedDuration::from_secs(16), d));
        let renewed = taken(&a, "a", t0 + SignedDuration::from_secs(5), d);
        assert_eq!(renewed.acquire_time, a.acquire_time);
        assert_eq!(renewed.lease_transitions, Some(1));
        let b = taken(&a, "b", t0 + SignedDuration::from_secs(20), d);
        assert_eq!(b.lease_transitions, Some(2));
        assert_ne!(b.acquire_time, a.acquire_time);
    }
}

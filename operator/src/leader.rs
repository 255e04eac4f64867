//! Leader election with a `coordination.k8s.io/v1` Lease: one operator replica
//! reconciles at a time; the others wait until the holder stops renewing.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;

/// What a candidate last saw of another holder's lease record, and when (on its own
/// monotonic clock). Expiry is judged from that instant, never by comparing the holder's
/// `renewTime` (written with another node's clock) with ours, so clock skew between
/// nodes neither shortens nor lengthens a lease (as client-go's leaderelection does).
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    holder: String,
    renew_time: Option<MicroTime>,
    at: std::time::Instant,
}

/// Whether `identity` may take or keep the lease described by `spec`: it already holds
/// it, nobody does, or the record has not changed for longer than its duration since
/// this candidate first saw it. Updates `observed` with what was seen at `now`.
pub fn may_hold(
    spec: &LeaseSpec,
    identity: &str,
    observed: &mut Option<Observed>,
    now: std::time::Instant,
    default_duration: Duration,
) -> bool {
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() || holder == identity {
        *observed = None;
        return true;
    }
    let changed = observed
        .as_ref()
        .is_none_or(|o| o.holder != holder || o.renew_time != spec.renew_time);
    if changed {
        *observed = Some(Observed {
            holder: holder.to_string(),
            renew_time: spec.renew_time.clone(),
            at: now,
        });
        return false;
    }
    let secs = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .unwrap_or(default_duration.as_secs());
    observed
        .as_ref()
        .is_some_and(|o| now.saturating_duration_since(o.at) > Duration::from_secs(secs))
}

/// The identity of this replica: `--identity`/`POD_NAME`, else `HOSTNAME` (the pod
/// name in a container), else the pid plus a per-start suffix. Never the bare pid: in
/// containers it is usually 1 everywhere, and equal identities would all "hold" the lease.
pub fn default_identity(hostname: Option<String>, pid: u32, start_nanos: u32) -> String {
    match hostname.filter(|h| !h.trim().is_empty()) {
        Some(h) => format!("orrery-operator-{}", h.trim()),
        None => format!("orrery-operator-{pid}-{start_nanos:08x}"),
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
    /// The holder gives up leadership when it could not renew for this long; shorter
    /// than `duration`, so it stops before any candidate may take over (client-go's
    /// RenewDeadline, 10 s against a 15 s lease).
    pub renew_deadline: Duration,
    observed: std::sync::Mutex<Option<Observed>>,
}

impl LeaderElector {
    /// An elector with the renew deadline at two thirds of the lease duration.
    pub fn new(api: Api<Lease>, name: String, identity: String, duration: Duration) -> Self {
        LeaderElector {
            api,
            name,
            identity,
            renew_deadline: duration * 2 / 3,
            duration,
            observed: Default::default(),
        }
    }

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
                let allowed = match self.observed.lock() {
                    Ok(mut o) => may_hold(
                        &spec,
                        &self.identity,
                        &mut o,
                        std::time::Instant::now(),
                        self.duration,
                    ),
                    Err(_) => false,
                };
                if !allowed {
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

    /// Waits until this replica holds the lease or `shutdown` completes, whichever
    /// comes first; `true` when leading. A waiting replica must not sit out SIGTERM
    /// until the pod's grace period kills it: that slows every rollout.
    pub async fn acquire_or_shutdown(
        &self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> bool {
        tokio::select! {
            _ = self.acquire() => true,
            _ = shutdown => false,
        }
    }

    /// Gives the lease up on shutdown (holder cleared, duration 1 s) so another replica
    /// takes over at once instead of after the lease duration. Only our own record is
    /// touched; a conflict or a record held by someone else is left alone.
    pub async fn release(&self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(false);
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(false);
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        lease.spec = Some(spec);
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

    /// Renews the lease every third of its duration; returns when leadership is lost:
    /// another holder, or no successful renewal within `renew_deadline` of the last one
    /// (each attempt is cut off at that deadline too), which is before the lease
    /// expires for the other candidates.
    pub async fn hold(&self) {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            let deadline = last_ok + self.renew_deadline;
            let next = (tokio::time::Instant::now() + self.duration / 3).min(deadline);
            tokio::time::sleep_until(next).await;
            let Some(left) = deadline
                .checked_duration_since(tokio::time::Instant::now())
                .filter(|d| !d.is_zero())
            else {
                tracing::warn!(lease = %self.name, "no renewal within the renew deadline; stepping down");
                return;
            };
            match tokio::time::timeout(left, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => last_ok = tokio::time::Instant::now(),
                Ok(Ok(false)) => return,
                Ok(Err(e)) => {
                    tracing::warn!(lease = %self.name, error = %e, "lease renewal failed")
                }
                Err(_) => tracing::warn!(lease = %self.name, "lease renewal timed out"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::SignedDuration;

    #[test]
    fn lease_rules() {
        let d = Duration::from_secs(15);
        let t0 = Timestamp::from_second(1_000_000).unwrap();
        let i0 = std::time::Instant::now();
        let mut seen = None;
        let empty = LeaseSpec::default();
        assert!(may_hold(&empty, "a", &mut seen, i0, d));
        let a = taken(&empty, "a", t0, d);
        assert_eq!(a.holder_identity.as_deref(), Some("a"));
        assert_eq!(a.lease_transitions, Some(1));
        assert!(may_hold(&a, "a", &mut seen, i0, d));
        // b first sees a's record at i0; the lease runs from then, on b's own clock.
        assert!(!may_hold(&a, "b", &mut seen, i0, d));
        assert!(!may_hold(
            &a,
            "b",
            &mut seen,
            i0 + Duration::from_secs(10),
            d
        ));
        assert!(may_hold(
            &a,
            "b",
            &mut seen,
            i0 + Duration::from_secs(16),
            d
        ));
        let renewed = taken(&a, "a", t0 + SignedDuration::from_secs(5), d);
        assert_eq!(renewed.acquire_time, a.acquire_time);
        assert_eq!(renewed.lease_transitions, Some(1));
        let b = taken(&a, "b", t0 + SignedDuration::from_secs(20), d);
        assert_eq!(b.lease_transitions, Some(2));
        assert_ne!(b.acquire_time, a.acquire_time);
    }

    /// D14 (a): skew between the holder's clock and ours does not matter: a renewTime an
    /// hour "in the future" or "in the past" expires 15 s after we last saw it change.
    #[test]
    fn expiry_ignores_clock_skew() {
        let d = Duration::from_secs(15);
        let i0 = std::time::Instant::now();
        for skew in [-3600, 3600] {
            let mut seen = None;
            let held = taken(
                &LeaseSpec::default(),
                "a",
                Timestamp::now() + SignedDuration::from_secs(skew),
                d,
            );
            assert!(!may_hold(&held, "b", &mut seen, i0, d), "skew {skew}");
            assert!(!may_hold(
                &held,
                "b",
                &mut seen,
                i0 + Duration::from_secs(14),
                d
            ));
            // A renewal resets the clock.
            let renewed = taken(
                &held,
                "a",
                Timestamp::now() + SignedDuration::from_secs(skew + 5),
                d,
            );
            assert!(!may_hold(
                &renewed,
                "b",
                &mut seen,
                i0 + Duration::from_secs(14),
                d
            ));
            assert!(!may_hold(
                &renewed,
                "b",
                &mut seen,
                i0 + Duration::from_secs(28),
                d
            ));
            assert!(may_hold(
                &renewed,
                "b",
                &mut seen,
                i0 + Duration::from_secs(30),
                d
            ));
        }
    }

    /// D14 (c): the fallback identity is never the bare pid.
    #[test]
    fn identity_is_never_the_bare_pid() {
        assert_eq!(
            default_identity(Some("orrery-7d9f-abc".into()), 1, 5),
            "orrery-operator-orrery-7d9f-abc"
        );
        let id = default_identity(None, 1, 0xdead);
        assert_ne!(id, "orrery-operator-1");
        assert_ne!(default_identity(None, 1, 1), default_identity(None, 1, 2));
        assert_ne!(
            default_identity(Some(" ".into()), 1, 3),
            "orrery-operator-1"
        );
    }

    /// D14 (b): with renewals failing, the holder steps down before the lease could
    /// expire for anyone else.
    #[tokio::test(start_paused = true)]
    async fn hold_steps_down_before_the_lease_expires() {
        use http::{Request, Response};
        use kube::client::Body;
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(svc, "orrery-system");
        let d = Duration::from_secs(15);
        let e = LeaderElector::new(
            Api::namespaced(client, "orrery-system"),
            "orrery-operator".into(),
            "a".into(),
            d,
        );
        let start = tokio::time::Instant::now();
        let server = tokio::spawn(async move {
            while let Some((_, send)) = handle.next_request().await {
                let body = serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                    "status": "Failure", "message": "etcd down", "reason": "InternalError", "code": 500});
                send.send_response(
                    Response::builder()
                        .status(500)
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(&body).unwrap()))
                        .unwrap(),
                );
            }
        });
        e.hold().await;
        let took = start.elapsed();
        assert!(took <= e.renew_deadline, "{took:?}");
        assert!(took < d);
        drop(e);
        server.abort();
    }

    fn json_response(status: u16, body: &serde_json::Value) -> http::Response<kube::client::Body> {
        http::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(kube::client::Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap()
    }

    fn held_by(holder: &str) -> serde_json::Value {
        serde_json::json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "orrery-operator", "namespace": "orrery-system", "resourceVersion": "7"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                     "renewTime": "2026-01-01T00:00:00.000000Z"}})
    }

    /// D22: a replica waiting for the lease returns on shutdown instead of waiting for
    /// the grace period to kill it.
    #[tokio::test(start_paused = true)]
    async fn waiting_replica_returns_on_shutdown() {
        use http::{Request, Response};
        use kube::client::Body;
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(svc, "orrery-system");
        let e = LeaderElector::new(
            Api::namespaced(client, "orrery-system"),
            "orrery-operator".into(),
            "b".into(),
            Duration::from_secs(15),
        );
        let server = tokio::spawn(async move {
            let mut n = 0;
            while let Some((_, send)) = handle.next_request().await {
                n += 1;
                // The other holder keeps renewing: never expires for us.
                let mut l = held_by("a");
                l["spec"]["renewTime"] =
                    serde_json::json!(format!("2026-01-01T00:00:{n:02}.000000Z"));
                send.send_response(json_response(200, &l));
            }
            n
        });
        let start = tokio::time::Instant::now();
        let leading = e
            .acquire_or_shutdown(tokio::time::sleep(Duration::from_secs(32)))
            .await;
        assert!(!leading);
        assert_eq!(start.elapsed(), Duration::from_secs(32));
        drop(e);
        assert!(server.await.unwrap() >= 3);
    }

    /// D22: the leader clears its holder on shutdown; someone else's lease is untouched.
    #[tokio::test]
    async fn release_clears_only_our_own_lease() {
        use http::{Method, Request, Response};
        use kube::client::Body;
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(svc, "orrery-system");
        let e = LeaderElector::new(
            Api::namespaced(client, "orrery-system"),
            "orrery-operator".into(),
            "a".into(),
            Duration::from_secs(15),
        );
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.method(), Method::GET);
            send.send_response(json_response(200, &held_by("a")));
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.method(), Method::PUT);
            let body = req.into_body().collect_bytes().await.unwrap();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert!(
                v["spec"].get("holderIdentity").is_none_or(|h| h.is_null()),
                "{v}"
            );
            assert_eq!(v["spec"]["leaseDurationSeconds"], 1);
            assert_eq!(v["metadata"]["resourceVersion"], "7");
            send.send_response(json_response(200, &v));
            // Second call: the lease is someone else's now; no PUT follows.
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.method(), Method::GET);
            send.send_response(json_response(200, &held_by("c")));
            assert!(handle.next_request().await.is_none());
        });
        assert!(e.release().await.unwrap());
        assert!(!e.release().await.unwrap());
        drop(e);
        server.await.unwrap();
    }
}

//! Distributor tests over real gRPC on loopback, with in-memory local storage.

use std::collections::HashMap;
use std::sync::Mutex;

use prost::Message;
use storeapi::wire::prompb::Sample;
use storeapi::wire::thanos::Label;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::{Service, ServiceExt};

use super::*;
use crate::hashring::watch::build;
use crate::hashring::{Algorithm, HashringArgs};

/// In-memory storage with Prometheus's append rules for one series: a sample older than the
/// newest is out of order, the same timestamp with another value is a duplicate (conflicts);
/// the same timestamp and value is accepted silently.
#[derive(Default)]
struct MemWriter {
    #[allow(clippy::type_complexity)]
    series: Mutex<HashMap<(String, String), Vec<(i64, f64)>>>,
    /// Metric family names of the metadata stored, per tenant.
    metadata: Mutex<Vec<(String, String)>>,
    not_ready: Mutex<bool>,
}

fn key(ts: &TimeSeries) -> String {
    ts.labels
        .iter()
        .map(|l| format!("{}={}", l.name, l.value))
        .collect::<Vec<_>>()
        .join(",")
}

impl MemWriter {
    fn has(&self, tenant: &str, name: &str) -> bool {
        let k = (tenant.to_string(), format!("__name__={name}"));
        self.series.lock().unwrap().contains_key(&k)
    }

    fn samples(&self, tenant: &str, name: &str) -> Vec<(i64, f64)> {
        let k = (tenant.to_string(), format!("__name__={name}"));
        self.series
            .lock()
            .unwrap()
            .get(&k)
            .cloned()
            .unwrap_or_default()
    }

    fn count(&self) -> usize {
        self.series.lock().unwrap().len()
    }

    fn has_metadata(&self, tenant: &str, family: &str) -> bool {
        self.metadata
            .lock()
            .unwrap()
            .iter()
            .any(|(t, f)| t == tenant && f == family)
    }
}

impl LocalWriter for MemWriter {
    fn write<'a>(
        &'a self,
        tenant: &'a str,
        series: &'a [Bytes],
        metadata: &'a [Bytes],
    ) -> BoxFuture<'a, LocalWriteResult> {
        Box::pin(async move {
            if *self.not_ready.lock().unwrap() {
                return LocalWriteResult::Failed(Failure::new(
                    FailureKind::NotReady,
                    "tsdb not ready",
                ));
            }
            for m in metadata {
                let Ok(m) = storeapi::wire::prompb::MetricMetadata::decode(&m[..]) else {
                    return LocalWriteResult::Failed(Failure::new(
                        FailureKind::Other,
                        "undecodable metadata",
                    ));
                };
                self.metadata
                    .lock()
                    .unwrap()
                    .push((tenant.to_string(), m.metric_family_name));
            }
            let mut db = self.series.lock().unwrap();
            let mut fails = Vec::new();
            for (i, raw) in series.iter().enumerate() {
                let Ok(ts) = TimeSeries::decode(&raw[..]) else {
                    fails.push((i, Failure::new(FailureKind::Other, "undecodable series")));
                    continue;
                };
                let samples = db.entry((tenant.to_string(), key(&ts))).or_default();
                let mut conflict = None;
                for s in &ts.samples {
                    match samples.last() {
                        Some(&(t, _)) if s.timestamp < t => conflict = Some("out of order sample"),
                        Some(&(t, v)) if s.timestamp == t && v.to_bits() != s.value.to_bits() => {
                            conflict = Some("duplicate sample for timestamp")
                        }
                        Some(&(t, _)) if s.timestamp == t => {}
                        _ => samples.push((s.timestamp, s.value)),
                    }
                }
                if let Some(c) = conflict {
                    fails.push((i, Failure::new(FailureKind::Conflict, c)));
                }
            }
            if fails.is_empty() {
                LocalWriteResult::Ok
            } else {
                LocalWriteResult::Partial(fails)
            }
        })
    }
}

fn ts(name: &str, t: i64, v: f64) -> TimeSeries {
    TimeSeries {
        labels: vec![Label {
            name: "__name__".into(),
            value: name.into(),
        }],
        samples: vec![Sample {
            value: v,
            timestamp: t,
        }],
        ..Default::default()
    }
}

/// Waits up to 5s for `cond` (writes return at quorum; stragglers finish shortly after).
async fn eventually(cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached within 5s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

struct Node {
    addr: String,
    store: Arc<MemWriter>,
    dist: Arc<Distributor>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Node {
    async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

fn config(mode: Mode, local: Option<String>, rf: u64) -> DistributorConfig {
    DistributorConfig {
        mode,
        local_endpoint: local,
        replication_factor: rf,
        forward_timeout: Duration::from_secs(3),
        forward_max_backoff: Duration::from_millis(200),
        default_tenant: "default-tenant".into(),
    }
}

fn ring_json(addrs: &[String]) -> String {
    let eps: Vec<String> = addrs.iter().map(|a| format!("{a:?}")).collect();
    format!(
        r#"[{{"hashring":"default","endpoints":[{}]}}]"#,
        eps.join(",")
    )
}

async fn serve(
    listener: TcpListener,
    dist: Arc<Distributor>,
) -> (oneshot::Sender<()>, JoinHandle<()>) {
    let (tx, rx) = oneshot::channel::<()>();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(server::writeable_store_service(dist))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = rx.await;
            })
            .await;
    });
    (tx, task)
}

/// `n` loopback listeners, their addresses and a hashring of them.
async fn bound_ring(n: usize) -> (Vec<TcpListener>, Vec<String>, String) {
    let mut listeners = Vec::new();
    for _ in 0..n {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let addrs: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    let ring = ring_json(&addrs);
    (listeners, addrs, ring)
}

/// Three ingestors (no hashring, any replica number) behind a router-only node with a
/// ring of them at replication factor `rf`: `(router, ingestors)`.
async fn router_with_ingestors(rf: u64) -> (Node, Vec<Node>) {
    let (listeners, _, ring) = bound_ring(3).await;
    let mut ingestors = Vec::new();
    for l in listeners {
        ingestors.push(
            start_node(
                l,
                config(Mode::IngestorOnly, None, 1),
                None,
                Arc::new(MemWriter::default()),
            )
            .await,
        );
    }
    let router = start_node(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        config(Mode::RouterOnly, None, rf),
        Some(&ring),
        Arc::new(MemWriter::default()),
    )
    .await;
    (router, ingestors)
}

async fn start_node(
    listener: TcpListener,
    cfg: DistributorConfig,
    ring: Option<&str>,
    store: Arc<MemWriter>,
) -> Node {
    let addr = listener.local_addr().unwrap().to_string();
    let handle = ring.map(|r| {
        HashringHandle::fixed(
            build(
                r.as_bytes(),
                std::path::Path::new("test"),
                Algorithm::Ketama,
                cfg.replication_factor,
            )
            .unwrap(),
        )
    });
    let local: Arc<dyn LocalWriter> = store.clone();
    let dist = Arc::new(Distributor::new(
        cfg,
        handle,
        Some(local),
        ReplicationMetrics::default(),
    ));
    let (stop, task) = serve(listener, Arc::clone(&dist)).await;
    Node {
        addr,
        store,
        dist,
        stop: Some(stop),
        task: Some(task),
    }
}

/// `n` router+ingestor nodes sharing one ketama ring.
async fn cluster(n: usize, rf: u64) -> (Vec<Node>, String) {
    let (listeners, addrs, ring) = bound_ring(n).await;
    let mut nodes = Vec::new();
    for (l, a) in listeners.into_iter().zip(&addrs) {
        let cfg = config(Mode::RouterIngestor, Some(a.clone()), rf);
        nodes.push(start_node(l, cfg, Some(&ring), Arc::new(MemWriter::default())).await);
    }
    (nodes, ring)
}

async fn restart(node: &mut Node, ring: &str, rf: u64) {
    let listener = TcpListener::bind(node.addr.as_str()).await.unwrap();
    let cfg = config(Mode::RouterIngestor, Some(node.addr.clone()), rf);
    let store = Arc::clone(&node.store);
    *node = start_node(listener, cfg, Some(ring), store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rf3_places_every_series_on_its_three_ring_endpoints() {
    let (mut nodes, ring) = cluster(4, 3).await;
    let series: Vec<TimeSeries> = (0..100)
        .map(|i| ts(&format!("m{i}"), 1000, i as f64))
        .collect();
    nodes[0]
        .dist
        .write("tenant-a", series.clone())
        .await
        .unwrap();
    // The write returns at quorum; wait for the stragglers (300 replicas in all).
    eventually(|| nodes.iter().map(|n| n.store.count()).sum::<usize>() == 300).await;
    let loaded = build(
        ring.as_bytes(),
        std::path::Path::new("t"),
        Algorithm::Ketama,
        3,
    )
    .unwrap();
    for (i, s) in series.iter().enumerate() {
        let name = format!("m{i}");
        let mut holders: Vec<&str> = nodes
            .iter()
            .filter(|n| n.store.has("tenant-a", &name))
            .map(|n| n.addr.as_str())
            .collect();
        holders.sort();
        let mut want: Vec<String> = (0..3)
            .map(|r| {
                loaded
                    .hashring
                    .get_n(
                        "tenant-a",
                        s.labels.iter().map(|l| (l.name.as_str(), l.value.as_str())),
                        r,
                    )
                    .unwrap()
                    .address
                    .clone()
            })
            .collect();
        want.sort();
        assert_eq!(holders, want, "series {name}");
    }
    for n in &mut nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_survives_one_loss_and_fails_retryably_on_two() {
    let (mut nodes, ring) = cluster(3, 3).await;
    let batch =
        |t: i64| -> Vec<TimeSeries> { (0..20).map(|i| ts(&format!("s{i}"), t, 1.0)).collect() };
    nodes[0].dist.write("t", batch(1)).await.unwrap();
    // The write returns at quorum; the last replica lands moments later.
    for n in &nodes {
        eventually(|| n.store.count() == 20).await;
    }

    nodes[2].stop().await;
    nodes[0]
        .dist
        .write("t", batch(2))
        .await
        .expect("quorum 2 of 3 reached");
    nodes[1]
        .dist
        .write("t", batch(3))
        .await
        .expect("via another router too");

    nodes[1].stop().await;
    let err = nodes[0].dist.write("t", batch(4)).await.unwrap_err();
    assert_eq!(err.http_status(), 503, "{err}");
    assert!(
        matches!(
            err,
            WriteError::Failed {
                cause: FailureKind::Unavailable,
                failed: 20,
                total: 20,
                ..
            }
        ),
        "{err}"
    );

    // Bring both back: the retried batch and new ones succeed, and land everywhere.
    restart(&mut nodes[1], &ring, 3).await;
    restart(&mut nodes[2], &ring, 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // past the max backoff
    nodes[0].dist.write("t", batch(4)).await.unwrap();
    nodes[0].dist.write("t", batch(5)).await.unwrap();
    for n in &nodes {
        eventually(|| n.store.samples("t", "s0").contains(&(5, 1.0))).await;
        let s = n.store.samples("t", "s0");
        assert!(
            s.contains(&(4, 1.0)) && s.contains(&(5, 1.0)),
            "{}: {s:?}",
            n.addr
        );
    }
    // Node 2 missed 2 and 3 while down; node 0 has everything.
    assert_eq!(nodes[0].store.samples("t", "s0").len(), 5);
    for n in &mut nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_that_decide_quorum_answer_409_even_with_a_peer_down() {
    let (mut nodes, _ring) = cluster(3, 3).await;
    nodes[0]
        .dist
        .write("t", vec![ts("a", 10, 1.0)])
        .await
        .unwrap();
    // All three replicas reject an older sample.
    let err = nodes[0]
        .dist
        .write("t", vec![ts("a", 5, 1.0)])
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), 409, "{err}");

    // thanos-io/thanos#8727: one peer down, the two others conflict → 409, not 503;
    // and a new series in the same request does not turn it into a retry.
    nodes[2].stop().await;
    let err = nodes[0]
        .dist
        .write("t", vec![ts("a", 6, 1.0), ts("fresh", 1, 1.0)])
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), 409, "{err}");
    assert!(
        matches!(
            err,
            WriteError::Failed {
                // A peer's gRPC answer covers its whole batch (as in Thanos): "fresh" fails too
                // when it shared a batch with the conflicting series, which depends on where
                // the ring (built from random test ports) places it.
                failed: 1..=2,
                total: 2,
                ..
            }
        ),
        "{err}"
    );
    // The valid series was still appended where it could be.
    eventually(|| nodes[0].store.has("t", "fresh") && nodes[1].store.has("t", "fresh")).await;

    // Same timestamp and value is an idempotent retry, not a conflict.
    nodes[0]
        .dist
        .write("t", vec![ts("a", 10, 1.0)])
        .await
        .unwrap();
    for n in &mut nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_local_storage_is_retryable() {
    let (mut nodes, _ring) = cluster(3, 3).await;
    *nodes[1].store.not_ready.lock().unwrap() = true;
    *nodes[2].store.not_ready.lock().unwrap() = true;
    let err = nodes[0]
        .dist
        .write("t", vec![ts("x", 1, 1.0)])
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), 503, "{err}");
    *nodes[2].store.not_ready.lock().unwrap() = false;
    // A peer answering Unavailable is backed off (100ms at first), as in Thanos.
    tokio::time::sleep(Duration::from_millis(300)).await;
    nodes[0]
        .dist
        .write("t", vec![ts("x", 1, 1.0)])
        .await
        .unwrap();
    for n in &mut nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_replicas_are_written_locally_only() {
    let (mut nodes, _ring) = cluster(3, 3).await;
    let req = WriteRequest {
        timeseries: vec![ts("only-here", 1, 1.0)],
        tenant: "t".into(),
        replica: 2,
    };
    nodes[1].dist.remote_write(req).await.unwrap();
    assert!(nodes[1].store.has("t", "only-here"));
    assert!(!nodes[0].store.has("t", "only-here") && !nodes[2].store.has("t", "only-here"));

    let bad = WriteRequest {
        timeseries: vec![ts("x", 1, 1.0)],
        tenant: "t".into(),
        replica: 4,
    };
    let err = nodes[1].dist.remote_write(bad).await.unwrap_err();
    assert_eq!(err.http_status(), 400);
    assert_eq!(err.grpc_status().code(), tonic::Code::InvalidArgument);

    // An empty tenant is the default tenant.
    let req = WriteRequest {
        timeseries: vec![ts("d", 1, 1.0)],
        tenant: String::new(),
        replica: 1,
    };
    nodes[1].dist.remote_write(req).await.unwrap();
    assert!(nodes[1].store.has("default-tenant", "d"));
    for n in &mut nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_only_in_front_of_ingestors() {
    let (mut router, mut ingestors) = router_with_ingestors(3).await;
    let series: Vec<TimeSeries> = (0..30).map(|i| ts(&format!("r{i}"), 1, 1.0)).collect();
    router.dist.write("t", series).await.unwrap();
    assert_eq!(router.store.count(), 0, "a router stores nothing");
    // RF 3 of 3: every ingestor holds every series (the last replica may land after quorum).
    for i in &ingestors {
        eventually(|| i.store.count() == 30).await;
    }
    ingestors[0].stop().await;
    router
        .dist
        .write("t", vec![ts("r0", 2, 1.0)])
        .await
        .unwrap();
    ingestors[1].stop().await;
    assert_eq!(
        router
            .dist
            .write("t", vec![ts("r0", 3, 1.0)])
            .await
            .unwrap_err()
            .http_status(),
        503
    );
    router.stop().await;
    for i in &mut ingestors {
        i.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingestor_only_writes_locally_and_router_without_ring_is_unready() {
    let store = Arc::new(MemWriter::default());
    let local: Arc<dyn LocalWriter> = store.clone();
    let d = Distributor::new(
        config(Mode::IngestorOnly, None, 1),
        None,
        Some(local),
        ReplicationMetrics::default(),
    );
    d.write("t", vec![ts("x", 1, 1.0)]).await.unwrap();
    assert!(store.has("t", "x"));
    assert_eq!(
        d.write("t", vec![ts("x", 0, 1.0)])
            .await
            .unwrap_err()
            .http_status(),
        409
    );
    d.write("t", Vec::new()).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let args = HashringArgs {
        hashrings_file: Some(dir.path().join("missing.json")),
        ..Default::default()
    };
    let mut reg = prometheus_client::registry::Registry::default();
    assert!(matches!(
        Distributor::from_args(&args, "default-tenant".into(), None, &mut reg),
        Err(SetupError::Load(_))
    ));
    let args = HashringArgs {
        hashrings: Some(r#"[{"endpoints":["127.0.0.1:1"]}]"#.into()),
        ..Default::default()
    };
    let setup = Distributor::from_args(&args, "default-tenant".into(), None, &mut reg).unwrap();
    assert_eq!(setup.distributor.mode(), Mode::RouterOnly);
    assert!(setup.distributor.is_ready());
    let args = HashringArgs {
        local_endpoint: Some("127.0.0.1:1".into()),
        ..Default::default()
    };
    assert!(matches!(
        Distributor::from_args(&args, "default-tenant".into(), None, &mut reg),
        Err(SetupError::MissingLocalWriter)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_matching_ring_is_500() {
    let store = Arc::new(MemWriter::default());
    let local: Arc<dyn LocalWriter> = store.clone();
    let ring = r#"[{"tenants":["a"],"endpoints":["127.0.0.1:1"]}]"#;
    let h = HashringHandle::fixed(
        build(
            ring.as_bytes(),
            std::path::Path::new("t"),
            Algorithm::Ketama,
            1,
        )
        .unwrap(),
    );
    let d = Distributor::new(
        config(Mode::RouterIngestor, Some("127.0.0.1:1".into()), 1),
        Some(h),
        Some(local),
        ReplicationMetrics::default(),
    );
    d.write("a", vec![ts("x", 1, 1.0)]).await.unwrap();
    let err = d.write("b", vec![ts("x", 1, 1.0)]).await.unwrap_err();
    assert_eq!(err.http_status(), 500, "{err}");
    assert!(err.to_string().contains("no matching hashring"), "{err}");
}

/// A Thanos router compresses forwarded writes with framed snappy (`grpc-encoding: snappy`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepts_thanos_snappy_grpc_compression() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut node = start_node(
        listener,
        config(Mode::IngestorOnly, None, 1),
        None,
        Arc::new(MemWriter::default()),
    )
    .await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", node.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let send = |encoding: Option<&'static str>, body: Vec<u8>| {
        let mut channel = channel.clone();
        async move {
            let mut req = http::Request::builder()
                .method("POST")
                .uri("http://x/thanos.WriteableStore/RemoteWrite".to_string())
                .header("content-type", "application/grpc")
                .header("te", "trailers");
            if let Some(e) = encoding {
                req = req.header("grpc-encoding", e);
            }
            let req = req
                .body(tonic::body::Body::new(http_body_util::Full::new(
                    bytes::Bytes::from(body),
                )))
                .unwrap();
            let resp = channel.ready().await.unwrap().call(req).await.unwrap();
            let header_status = resp
                .headers()
                .get("grpc-status")
                .map(|v| v.to_str().unwrap().to_string());
            let collected = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap();
            let trailer_status = collected
                .trailers()
                .and_then(|t| t.get("grpc-status"))
                .map(|v| v.to_str().unwrap().to_string());
            trailer_status.or(header_status).unwrap_or_default()
        }
    };
    let msg = WriteRequest {
        timeseries: vec![ts("snappy_metric", 1, 2.0)],
        tenant: "t".into(),
        replica: 1,
    }
    .encode_to_vec();
    let frame = |flag: u8, payload: &[u8]| {
        let mut v = vec![flag];
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        v
    };
    assert_eq!(
        send(Some("snappy"), frame(1, &snappy::compress_framed(&msg))).await,
        "0"
    );
    assert!(node.store.has("t", "snappy_metric"));

    let msg2 = WriteRequest {
        timeseries: vec![ts("plain_metric", 1, 2.0)],
        tenant: "t".into(),
        replica: 1,
    }
    .encode_to_vec();
    assert_eq!(send(None, frame(0, &msg2)).await, "0");
    assert!(node.store.has("t", "plain_metric"));
    // Corrupt snappy data is an error, not a crash.
    assert_ne!(send(Some("snappy"), frame(1, b"garbage")).await, "0");
    // Conflicts come back as AlreadyExists (6).
    let old = WriteRequest {
        timeseries: vec![ts("plain_metric", 0, 2.0)],
        tenant: "t".into(),
        replica: 1,
    }
    .encode_to_vec();
    assert_eq!(
        send(Some("snappy"), frame(1, &snappy::compress_framed(&old))).await,
        "6"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_forwards_and_quorum_failures() {
    let (mut nodes, _ring) = cluster(3, 3).await;
    let mut reg = prometheus_client::registry::Registry::default();
    nodes[0].dist.metrics.register(&mut reg);
    nodes[0]
        .dist
        .write("t", vec![ts("m", 5, 1.0)])
        .await
        .unwrap();
    let _ = nodes[0].dist.write("t", vec![ts("m", 1, 1.0)]).await;
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
    assert!(
        out.contains(r#"thanos_receive_forward_requests_total{peer="local",result="success"} 1"#),
        "{out}"
    );
    assert!(
        out.contains(r#"orrery_receive_quorum_failures_total{cause="conflict"} 1"#),
        "{out}"
    );
    assert!(
        out.contains(r#"thanos_receive_replications_total{result="error"} 1"#),
        "{out}"
    );
    for n in &mut nodes {
        n.stop().await;
    }
}

fn metadata(family: &str) -> storeapi::wire::prompb::MetricMetadata {
    storeapi::wire::prompb::MetricMetadata {
        r#type: 1,
        metric_family_name: family.into(),
        help: format!("{family} help"),
        unit: String::new(),
    }
}

/// Metadata written to a router reaches the ingestors: with the series it arrived with
/// (every batch carries the request's metadata), and on its own (a metadata-only
/// request is placed RF times on the ring, and fails like series when quorum fails).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_forwards_metadata_with_series_and_alone() {
    let (mut router, mut ingestors) = router_with_ingestors(2).await;
    let body = |series: Vec<TimeSeries>, families: &[&str]| {
        storeapi::wire::prometheus::WriteRequest {
            timeseries: series,
            metadata: families.iter().map(|f| metadata(f)).collect(),
        }
        .encode_to_vec()
    };

    // With series: every ingestor holding one of them also holds the metadata.
    let series: Vec<TimeSeries> = (0..30).map(|i| ts(&format!("w{i}"), 1, 1.0)).collect();
    router
        .dist
        .write_raw("t", &body(series, &["with_series"]))
        .await
        .unwrap();
    for i in &ingestors {
        eventually(|| i.store.count() > 0).await;
        eventually(|| i.store.has_metadata("t", "with_series")).await;
    }

    // Alone: on RF (2) ingestors.
    router
        .dist
        .write_raw("t", &body(Vec::new(), &["alone"]))
        .await
        .unwrap();
    eventually(|| {
        ingestors
            .iter()
            .filter(|i| i.store.has_metadata("t", "alone"))
            .count()
            == 2
    })
    .await;
    assert_eq!(router.store.count(), 0, "a router stores nothing");
    assert!(!router.store.has_metadata("t", "alone"));

    // Alone with every ingestor down: a retryable error, not a silent 200.
    for i in &mut ingestors {
        i.stop().await;
    }
    let err = router
        .dist
        .write_raw("t", &body(Vec::new(), &["lost"]))
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), 503, "{err}");
    router.stop().await;
}

#[tokio::test]
async fn write_raw_decodes_remote_write_bodies() {
    let store = Arc::new(MemWriter::default());
    let local: Arc<dyn LocalWriter> = store.clone();
    let d = Distributor::new(
        config(Mode::IngestorOnly, None, 1),
        None,
        Some(local),
        ReplicationMetrics::default(),
    );
    let body = storeapi::wire::prometheus::WriteRequest {
        timeseries: vec![ts("raw", 1, 1.0)],
        metadata: Vec::new(),
    }
    .encode_to_vec();
    d.write_raw("t", &body).await.unwrap();
    assert!(store.has("t", "raw"));
    let err = d.write_raw("t", b"\xff\xff\xff").await.unwrap_err();
    assert_eq!(err.http_status(), 400, "{err}");
}

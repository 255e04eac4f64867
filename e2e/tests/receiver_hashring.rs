//! Hashring routing and replication end to end, with the real reference Prometheus 3.5.3
//! remote-writing into a ring of `orrery receive` processes on loopback:
//!
//! - three router+ingestors with RF=3: every series lands on all three, the querier's
//!   deduplicated answers equal Prometheus's own; one SIGKILL → writes keep succeeding
//!   (quorum 2), queries stay complete; a second → Prometheus gets 503s and retries; both
//!   back → the backlog drains and no acknowledged sample is missing;
//! - a router-only receiver in front of three ingestor-only receivers, same assertions;
//! - a fourth receiver added to the hashring file while writing: no request fails and
//!   series move only to the new receiver (ketama).

mod querier_common;
mod receiver_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::{Proc, free_port, http_get, orrery_bin, wait_for};
use querier_common::{Querier, diff, get_json, now_secs, prometheus, range};

/// One `orrery receive` on fixed ports and a fixed data dir, so it can be killed and
/// started again as the same ring member.
struct Node {
    name: String,
    grpc: String,
    rw: String,
    http: String,
    data: PathBuf,
    log_dir: PathBuf,
    args: Vec<String>,
    proc: Option<Proc>,
    starts: usize,
}

impl Node {
    fn new(name: &str, dir: &Path) -> Node {
        Node {
            name: name.to_string(),
            grpc: format!("127.0.0.1:{}", free_port()),
            rw: format!("127.0.0.1:{}", free_port()),
            http: format!("127.0.0.1:{}", free_port()),
            data: dir.join(name).join("data"),
            log_dir: dir.join(name),
            args: Vec::new(),
            proc: None,
            starts: 0,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/api/v1/receive", self.rw)
    }

    /// Router+ingestor (`local`) or router-only member of the ring in `ring_file`.
    fn routing(mut self, ring_file: &Path, rf: u64, local: bool) -> Node {
        self.args
            .push(format!("--receive.hashrings-file={}", ring_file.display()));
        self.args
            .push("--receive.hashrings-file-refresh-interval=500ms".to_string());
        self.args.push(format!("--receive.replication-factor={rf}"));
        self.args.push("--receive-forward-timeout=3s".to_string());
        self.args
            .push("--receive-forward-max-backoff=1s".to_string());
        if local {
            self.args
                .push(format!("--receive.local-endpoint={}", self.grpc));
        }
        self
    }

    fn label(mut self, name: &str, value: &str) -> Node {
        self.args.push(format!("--label={name}=\"{value}\""));
        self
    }

    fn start(&mut self) {
        std::fs::create_dir_all(&self.log_dir).expect("node dir");
        self.starts += 1;
        let mut cmd = Command::new(orrery_bin());
        cmd.arg("receive")
            .arg(format!("--tsdb.path={}", self.data.display()))
            .arg(format!("--remote-write.address={}", self.rw))
            .arg(format!("--grpc-address={}", self.grpc))
            .arg(format!("--http-address={}", self.http))
            .args(&self.args)
            .env("RUST_LOG", "info");
        let log = self.log_dir.join(format!("receive-{}.log", self.starts));
        let proc = Proc::spawn(&self.name, cmd, log);
        self.proc = Some(proc);
        let ready = wait_for(Duration::from_secs(60), || {
            matches!(http_get(&self.http, "/-/ready"), Ok((200, _))).then_some(())
        });
        assert!(
            ready.is_some(),
            "{} did not become ready; log:\n{}",
            self.name,
            self.log()
        );
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    fn log(&self) -> String {
        self.proc.as_ref().map(|p| p.log_text()).unwrap_or_default()
    }

    /// Remote-writes model series (one snappy request), returning status and body.
    fn write(&self, series: &[(storeapi::Labels, Vec<storeapi::Sample>)]) -> (u16, String) {
        let body = storeapi::wire::remote_write::encode_write_request_snappy(
            series.iter().map(|(l, s)| (l, s.as_slice())),
        );
        let headers = [
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "snappy"),
            ("X-Prometheus-Remote-Write-Version", "0.1.0"),
        ];
        e2e::http_request(&self.rw, "POST", "/api/v1/receive", &headers, &body)
            .unwrap_or_else(|e| panic!("remote write to {} failed: {e}", self.name))
    }

    /// A counter or gauge from /metrics (summed over label sets), 0 when absent.
    fn metric(&self, name_and_labels: &str) -> f64 {
        let text = http_get(&self.http, "/metrics")
            .map(|r| r.1)
            .unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with(name_and_labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

fn write_ring(path: &Path, endpoints: &[&str]) {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
    let json = format!(
        r#"[{{"hashring":"default","endpoints":[{}]}}]"#,
        eps.join(",")
    );
    // Write then rename, as a ConfigMap update lands: watchers never see half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json).expect("write hashring file");
    std::fs::rename(&tmp, path).expect("rename hashring file");
}

/// A value of Prometheus's own metric, from its API (sum over series).
fn prom_value(prom: &str, q: &str) -> f64 {
    let (_, v) = get_json(
        prom,
        &format!(
            "/api/v1/query?query={}&time={:.3}",
            querier_common::enc(&format!("sum({q})")),
            now_secs()
        ),
    );
    v["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0)
}

fn failed_samples(prom: &str) -> f64 {
    prom_value(prom, "prometheus_remote_storage_samples_failed_total")
}

/// Deduplicated range answers of the querier equal Prometheus's own over `[start, end]`,
/// with a point at every 1s step for `up`.
fn assert_equal_to_prometheus(q: &str, prom: &str, start: f64, end: f64, when: &str) {
    for query in [
        "up",
        "prometheus_tsdb_head_series",
        "rate(prometheus_tsdb_head_samples_appended_total[5s])",
        "scrape_samples_scraped",
    ] {
        let (code, ours) = range(q, query, start, end, 1.0);
        assert_eq!(code, 200, "{when}: {query}: {ours}");
        let (_, theirs) = range(prom, query, start, end, 1.0);
        if let Some(d) = diff(&ours["data"], &theirs["data"]) {
            panic!(
                "{when}: {query}: querier differs from Prometheus: {d}\nours: {ours}\ntheirs: {theirs}"
            );
        }
    }
    // Equal answers could hide a gap both share; Prometheus scraped every second, so from
    // its first sample in the window there is a point at every step.
    let (_, ours) = range(q, "up", start, end, 1.0);
    let values = ours["data"]["result"][0]["values"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let first = values
        .first()
        .and_then(|p| p[0].as_f64())
        .unwrap_or_else(|| panic!("{when}: no `up` points in {ours}"));
    assert!(
        first < end,
        "{when}: `up` starts only at {first} (window {start}..{end})"
    );
    assert_eq!(
        values.len() as f64,
        end - first + 1.0,
        "{when}: gap in {ours}"
    );
}

/// Series count per `receive_replica` at `t` (querier, dedup off).
fn counts_per_replica(q: &str, t: f64) -> Vec<(String, f64)> {
    let (_, v) = get_json(
        q,
        &format!(
            "/api/v1/query?dedup=false&query={}&time={t:.3}",
            querier_common::enc(r#"count by (receive_replica) ({job="prometheus"})"#)
        ),
    );
    let mut out: Vec<(String, f64)> = v["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|s| {
            (
                s["metric"]["receive_replica"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                s["value"][1]
                    .as_str()
                    .and_then(|x| x.parse().ok())
                    .unwrap_or(0.0),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The shared scenario: Prometheus writes to `router` (or, without one, to `stores[0]`);
/// `stores` are the three replicas the querier reads; `stores[1]` and `stores[2]` are
/// killed one after the other, then restarted.
fn replication_scenario(router: Option<&Node>, stores: &mut [Node; 3]) {
    let (first, rest) = stores.split_at_mut(1);
    let entry = router.unwrap_or(&first[0]);
    let endpoints: Vec<&str> = std::iter::once(&first[0])
        .chain(rest.iter())
        .map(|n| n.grpc.as_str())
        .collect();
    let q = Querier::start(&endpoints, &["--query.replica-label=receive_replica"]);
    let prom = prometheus(&[("cluster", "batcave")], &[entry.url()]);
    let paddr = prom.addr();
    let t_start = now_secs();

    // Every series lands on all three replicas: the same series count on each as
    // Prometheus holds, at a time all have received.
    std::thread::sleep(Duration::from_secs(8));
    let mut last = Vec::new();
    let mut want = -1.0;
    let placed = wait_for(Duration::from_secs(30), || {
        let t0 = (now_secs() - 3.0).floor();
        want = {
            let (_, v) = get_json(
                &paddr,
                &format!(
                    "/api/v1/query?query={}&time={t0:.3}",
                    querier_common::enc(r#"count({job="prometheus"})"#)
                ),
            );
            v["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or(-1.0)
        };
        last = counts_per_replica(&q.http, t0);
        let ok = last.len() == 3 && want > 10.0 && last.iter().all(|(_, n)| *n == want);
        ok.then_some(())
    });
    assert!(
        placed.is_some(),
        "series not on all three replicas: {last:?}, Prometheus holds {want}\nentry log:\n{}\nquerier log:\n{}",
        entry.log(),
        q.proc.log_text()
    );
    // A few seconds of steady writing to compare.
    std::thread::sleep(Duration::from_secs(6));
    let end = (now_secs() - 3.0).floor();
    assert_equal_to_prometheus(&q.http, &paddr, (t_start + 3.0).floor(), end, "all up");
    assert_eq!(failed_samples(&paddr), 0.0);

    // Metric metadata crosses the ring too (Prometheus sends it every 2 s in requests
    // of its own): the querier's answer equals Prometheus's, family by family.
    for metric in [
        "prometheus_tsdb_head_series",
        "prometheus_http_requests_total",
        "go_gc_duration_seconds",
    ] {
        let path = format!("/api/v1/metadata?metric={metric}");
        let want = get_json(&paddr, &path).1["data"].clone();
        assert!(
            want[metric].is_array(),
            "Prometheus has no metadata for {metric}: {want}"
        );
        let mut got = serde_json::Value::Null;
        let same = wait_for(Duration::from_secs(15), || {
            got = get_json(&q.http, &path).1["data"].clone();
            (got == want).then_some(())
        });
        assert!(
            same.is_some(),
            "metadata of {metric} through the ring: {got} vs Prometheus's {want}\nentry log:\n{}",
            entry.log()
        );
    }
    assert_eq!(
        prom_value(&paddr, "prometheus_remote_storage_metadata_failed_total"),
        0.0
    );

    // One replica lost: quorum (2 of 3) still holds, nothing fails, nothing is missing.
    let kill1 = now_secs();
    rest[0].kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let (code, v) = get_json(
            &q.http,
            &format!("/api/v1/query?query=up&time={:.3}", now_secs()),
        );
        assert_eq!(code, 200, "query failed with one replica down: {v}");
        assert_eq!(
            v["data"]["result"].as_array().map(|a| a.len()),
            Some(1),
            "{v}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let end = (now_secs() - 3.0).floor();
    assert_equal_to_prometheus(&q.http, &paddr, (kill1 - 8.0).floor(), end, "one down");
    assert_eq!(
        failed_samples(&paddr),
        0.0,
        "Prometheus dropped samples with one replica down"
    );
    let ok_before = entry.metric(r#"orrery_receive_http_requests_total{code="200"}"#);
    assert!(ok_before > 0.0, "no successful remote write recorded");

    // Two lost: no quorum, Prometheus gets 503 (retryable) and retries.
    rest[1].kill();
    let refused = wait_for(Duration::from_secs(20), || {
        (entry.metric(r#"orrery_receive_http_requests_total{code="503"}"#) > 0.0).then_some(())
    });
    assert!(
        refused.is_some(),
        "no 503 with two of three replicas down; entry log:\n{}",
        entry.log()
    );
    let retried = wait_for(Duration::from_secs(20), || {
        (prom_value(&paddr, "prometheus_remote_storage_samples_retried_total") > 0.0).then_some(())
    });
    assert!(
        retried.is_some(),
        "Prometheus did not retry the refused writes"
    );
    std::thread::sleep(Duration::from_secs(3));

    // Both back: the backlog drains, every replica gets fresh samples again.
    rest[0].start();
    rest[1].start();
    let drained = wait_for(Duration::from_secs(60), || {
        let (_, v) = get_json(
            &paddr,
            &format!(
                "/api/v1/query?query={}&time={:.3}",
                querier_common::enc("prometheus_remote_storage_samples_pending"),
                now_secs()
            ),
        );
        let pending: f64 = v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(f64::MAX);
        let fresh = counts_per_replica(&q.http, now_secs() - 2.0);
        (pending < 1000.0 && fresh.len() == 3).then_some(())
    });
    assert!(
        drained.is_some(),
        "backlog did not drain after the replicas came back; entry log:\n{}",
        entry.log()
    );
    std::thread::sleep(Duration::from_secs(4));
    let end = (now_secs() - 3.0).floor();
    assert_equal_to_prometheus(
        &q.http,
        &paddr,
        (t_start + 3.0).floor(),
        end,
        "after two losses and recovery",
    );
    assert_eq!(
        failed_samples(&paddr),
        0.0,
        "Prometheus dropped samples during the outage"
    );
}

#[test]
fn rf3_router_ingestors_survive_losses() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ring = dir.path().join("hashring.json");
    let nodes: Vec<Node> = (0..3)
        .map(|i| Node::new(&format!("receive-{i}"), dir.path()))
        .collect();
    let eps: Vec<&str> = nodes.iter().map(|n| n.grpc.as_str()).collect();
    write_ring(&ring, &eps);
    let mut stores: [Node; 3] = nodes
        .into_iter()
        .enumerate()
        .map(|(i, n)| {
            n.routing(&ring, 3, true)
                .label("receive_replica", &i.to_string())
                .label("receive_cluster", "wayne-enterprises")
        })
        .collect::<Vec<_>>()
        .try_into()
        .unwrap_or_else(|_| unreachable!());
    for n in stores.iter_mut() {
        n.start();
    }
    // Prometheus writes to receive-0, which routes and is never killed.
    replication_scenario(None, &mut stores);
}

#[test]
fn router_only_in_front_of_ingestors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ring = dir.path().join("hashring.json");
    let mut ingestors: [Node; 3] = (0..3)
        .map(|i| {
            Node::new(&format!("ingestor-{i}"), dir.path()).label("receive_replica", &i.to_string())
        })
        .collect::<Vec<_>>()
        .try_into()
        .unwrap_or_else(|_| unreachable!());
    let eps: Vec<&str> = ingestors.iter().map(|n| n.grpc.as_str()).collect();
    write_ring(&ring, &eps);
    for n in ingestors.iter_mut() {
        n.start();
    }
    let mut router = Node::new("router", dir.path()).routing(&ring, 3, false);
    router.start();
    replication_scenario(Some(&router), &mut ingestors);
}

/// A fourth receiver joins the ring file while a client writes: every request succeeds and
/// series move only from their old owner to the new receiver (ketama moves ~1/4).
#[test]
fn ring_change_moves_only_the_new_share() {
    use receiver_common::{eq, series};
    use storeapi::{Labels, Sample};

    let dir = tempfile::tempdir().expect("temp dir");
    let ring = dir.path().join("hashring.json");
    let mut nodes: Vec<Node> = (0..4)
        .map(|i| Node::new(&format!("receive-{i}"), dir.path()))
        .collect();
    let first3: Vec<&str> = nodes[..3].iter().map(|n| n.grpc.as_str()).collect();
    write_ring(&ring, &first3);
    let mut nodes: Vec<Node> = nodes
        .drain(..)
        .enumerate()
        .map(|(i, n)| {
            n.routing(&ring, 1, true)
                .label("receive_replica", &i.to_string())
        })
        .collect();
    for n in nodes.iter_mut() {
        n.start();
    }
    const SERIES: usize = 400;
    let labels: Vec<Labels> = (0..SERIES)
        .map(|i| {
            Labels::from_pairs([
                ("__name__", "ring_test".to_string()),
                ("series", i.to_string()),
            ])
            .expect("labels")
        })
        .collect();
    let now_ms = || (now_secs() * 1000.0) as i64;
    let mut batches = 0;
    let write_batch = |batches: &mut usize| {
        let t = now_ms();
        let body: Vec<(Labels, Vec<Sample>)> = labels
            .iter()
            .map(|l| (l.clone(), vec![Sample { t, v: t as f64 }]))
            .collect();
        let (code, text) = nodes[0].write(&body);
        assert_eq!(code, 200, "write {batches} failed: {text}");
        *batches += 1;
        std::thread::sleep(Duration::from_millis(100));
    };
    for _ in 0..10 {
        write_batch(&mut batches);
    }
    // Placement before the change: every series on exactly one of the first three.
    let owners = |from: i64| -> Vec<Vec<usize>> {
        let mut owners = vec![Vec::new(); SERIES];
        for (i, n) in nodes.iter().enumerate() {
            let got = series(&n.grpc, vec![eq("__name__", "ring_test")], from, i64::MAX)
                .unwrap_or_else(|e| panic!("Series on {}: {e}", n.name));
            for (l, samples) in got {
                if samples.is_empty() {
                    continue;
                }
                let id: usize = l.get("series").and_then(|s| s.parse().ok()).expect("id");
                owners[id].push(i);
            }
        }
        owners
    };
    let before = owners(0);
    for (id, o) in before.iter().enumerate() {
        assert_eq!(o.len(), 1, "series {id} on {o:?} before the change (RF=1)");
        assert!(o[0] < 3, "series {id} on the new node before it joined");
    }

    // Join: the router (receive-0) reloads the file; writes never fail meanwhile.
    let changes = nodes[0].metric("thanos_receive_hashrings_file_changes_total");
    let all4: Vec<&str> = nodes.iter().map(|n| n.grpc.as_str()).collect();
    write_ring(&ring, &all4);
    let deadline = Instant::now() + Duration::from_secs(20);
    while nodes[0].metric("thanos_receive_hashrings_file_changes_total") <= changes {
        assert!(
            Instant::now() < deadline,
            "receive-0 did not reload the hashring; log:\n{}",
            nodes[0].log()
        );
        write_batch(&mut batches);
    }
    let switched = now_ms() + 1;
    std::thread::sleep(Duration::from_millis(5));
    for _ in 0..10 {
        write_batch(&mut batches);
    }
    let after = owners(switched);
    let mut moved = 0;
    for (id, (b, a)) in before.iter().zip(&after).enumerate() {
        assert_eq!(a.len(), 1, "series {id} on {a:?} after the change (RF=1)");
        if a[0] != b[0] {
            assert_eq!(
                a[0], 3,
                "series {id} moved between old receivers ({} → {})",
                b[0], a[0]
            );
            moved += 1;
        }
    }
    let share = moved as f64 / SERIES as f64;
    assert!(
        (0.10..=0.45).contains(&share),
        "ketama should move about a quarter of the series to the new receiver, moved {moved}/{SERIES}"
    );
    assert!(batches >= 20);
}

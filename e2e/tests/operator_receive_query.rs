//! The operator's plain-Prometheus path (a prometheus.yml in a ConfigMap) end to end
//! through the real system: a real `orrery receive`, a real `orrery query --endpoint
//! <receiver gRPC>` and the real reference Prometheus 3.5.3, started with a
//! prometheus.yml that has no remote_write and scrapes itself every second.
//!
//! The operator's own logic (the prometheus.yml upsert and the `/-/reload` POST) adds our
//! remote_write entry; samples then arrive at the receiver (its samples counter and the
//! StoreAPI), `orrery query` answers `up{cluster="batcave"}` with the cluster label the
//! operator's write relabel rule sets, and the operator's freshness probe
//! (`last_sample_age` against the querier) sees fresh data. The operator's removal logic
//! and another reload then stop the writes: the receiver's samples counter and newest
//! timestamp stand still while Prometheus keeps scraping, and the freshness probe sees
//! the data age.

mod querier_common;
mod receiver_common;

use std::time::Duration;

use e2e::{Prometheus, http_get, wait_for};
use operator::probe::{HttpProbe, Probe};
use operator::remote_write::{RemoteWriteEntry, remove_from_file, upsert_file};
use querier_common::{Querier, get_json, instant, now_secs};
use receiver_common::{Receiver, eq, runtime, series};

/// Sum of `orrery_receive_samples_received_total` over all its label sets.
fn samples_received(recv: &Receiver) -> f64 {
    recv.metrics()
        .lines()
        .filter(|l| l.starts_with("orrery_receive_samples_received_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Newest timestamp (ms) of `up{cluster="batcave"}` at the receiver, over the StoreAPI.
fn newest_at_receiver(recv: &Receiver) -> Option<i64> {
    let s = series(
        &recv.grpc,
        vec![eq("__name__", "up"), eq("cluster", "batcave")],
        0,
        i64::MAX,
    )
    .ok()?;
    s.iter()
        .filter_map(|(_, samples)| samples.last())
        .map(|x| x.0)
        .max()
}

/// Newest timestamp (s) of Prometheus's own `up{job="self"}`, from Prometheus itself.
fn newest_at_prometheus(prom: &Prometheus) -> Option<f64> {
    let (_, v) = instant(&prom.addr(), "timestamp(up{job=\"self\"})", now_secs());
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

fn loaded_config(prom: &Prometheus) -> String {
    let (status, body) = http_get(&prom.addr(), "/api/v1/status/config")
        .unwrap_or_else(|e| panic!("GET config from prometheus: {e}"));
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("config answer is JSON");
    v["data"]["yaml"]
        .as_str()
        .expect("data.yaml in config answer")
        .to_string()
}

fn reload(prom: &Prometheus) {
    let url = format!("http://{}/-/reload", prom.addr());
    runtime()
        .block_on(HttpProbe::default().reload(&url))
        .unwrap_or_else(|e| panic!("reload failed: {e}; log:\n{}", prom.proc.log_text()));
}

/// The operator's freshness probe against the querier: seconds since the newest sample
/// of `cluster` (None when the querier has no such series).
fn probe_age(q: &Querier, cluster: &str) -> Option<f64> {
    let base = format!("http://{}", q.http);
    runtime()
        .block_on(HttpProbe::default().last_sample_age(&base, cluster))
        .unwrap_or_else(|e| panic!("freshness probe against orrery query failed: {e}"))
}

#[test]
fn configmap_path_end_to_end_through_orrery_receive_and_query() {
    let dir = tempfile::tempdir().expect("temp dir");
    let recv = Receiver::start(
        &dir.path().join("data"),
        &dir.path().join("receive.log"),
        &[
            "--label=receive_replica=\"0\"",
            "--label=receive_cluster=\"wayne-enterprises\"",
        ],
    );
    let q = Querier::start(&[&recv.grpc], &["--query.replica-label=receive_replica"]);
    let config = "# user's own prometheus.yml, no remote_write yet\n\
         global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n  external_labels:\n    region: gotham\n\
         scrape_configs:\n  - job_name: self\n    static_configs:\n      - targets: ['127.0.0.1:{{PORT}}']\n";
    let prom = Prometheus::start(config, &["--web.enable-lifecycle"]);
    let file = prom.dir.path().join("prometheus.yml");
    let logs = |what: &str| {
        format!(
            "{what}\nreceiver log:\n{}\nquerier log:\n{}\nprometheus log:\n{}",
            recv.proc.log_text(),
            q.proc.log_text(),
            prom.proc.log_text()
        )
    };

    // Prometheus scrapes, but nothing reaches the receiver before the operator acts.
    let scraping = wait_for(Duration::from_secs(30), || newest_at_prometheus(&prom));
    assert!(
        scraping.is_some(),
        "{}",
        logs("prometheus does not scrape itself")
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        samples_received(&recv),
        0.0,
        "{}",
        logs("the receiver got samples before the remote_write entry was added")
    );
    assert_eq!(
        probe_age(&q, "batcave"),
        None,
        "querier has batcave data too early"
    );

    // The operator's upsert (idempotent) and reload.
    let url = format!("http://{}/api/v1/receive", recv.rw);
    let entry = RemoteWriteEntry::new("orrery", "global", "batcave", &url, None);
    assert!(upsert_file(&file, &entry).expect("upsert our remote_write entry"));
    assert!(
        !upsert_file(&file, &entry).expect("second upsert"),
        "second upsert must be a no-op"
    );
    reload(&prom);
    let cfg = loaded_config(&prom);
    assert!(cfg.contains(&format!("name: {}", entry.name)), "{cfg}");
    assert!(cfg.contains(&url), "{cfg}");

    // Samples arrive at orrery receive: its counter grows and the StoreAPI serves `up`
    // with the operator's cluster label, Prometheus's external label and the receiver's.
    let arrived = wait_for(Duration::from_secs(60), || {
        (samples_received(&recv) > 0.0).then_some(())?;
        let s = series(
            &recv.grpc,
            vec![eq("__name__", "up"), eq("cluster", "batcave")],
            0,
            i64::MAX,
        )
        .ok()?;
        (s.len() == 1 && !s[0].1.is_empty()).then_some(s)
    })
    .unwrap_or_else(|| panic!("{}", logs("no up{cluster=\"batcave\"} at the receiver")));
    let l = &arrived[0].0;
    assert_eq!(l.get("region"), Some("gotham"), "{l}");
    assert_eq!(l.get("job"), Some("self"), "{l}");
    assert_eq!(l.get("receive_cluster"), Some("wayne-enterprises"), "{l}");
    assert_eq!(l.get("receive_replica"), Some("0"), "{l}");

    // `orrery query` answers `up` for the cluster through its Prometheus API.
    let answer = wait_for(Duration::from_secs(30), || {
        let (code, v) = instant(&q.http, "up{cluster=\"batcave\"}", now_secs());
        (code == 200 && v["data"]["result"].as_array().is_some_and(|r| r.len() == 1)).then_some(v)
    })
    .unwrap_or_else(|| panic!("{}", logs("orrery query has no up{cluster=\"batcave\"}")));
    assert_eq!(answer["status"], "success", "{answer}");
    let r = &answer["data"]["result"][0];
    assert_eq!(r["metric"]["__name__"], "up", "{answer}");
    assert_eq!(r["metric"]["cluster"], "batcave", "{answer}");
    assert_eq!(r["metric"]["region"], "gotham", "{answer}");
    assert_eq!(r["metric"]["job"], "self", "{answer}");
    assert!(
        r["metric"].get("receive_replica").is_none(),
        "the replica label is deduplicated away: {answer}"
    );
    assert_eq!(r["value"][1], "1", "{answer}");
    // Other clusters are not there.
    let (_, other) = instant(&q.http, "up{cluster=\"batcomputer\"}", now_secs());
    assert_eq!(other["data"]["result"], serde_json::json!([]), "{other}");
    // The querier lists the receiver as a store.
    let (code, stores) = get_json(&q.http, "/api/v1/stores");
    assert_eq!(code, 200, "{stores}");
    assert!(stores.to_string().contains(&recv.grpc), "{stores}");

    // The operator's freshness probe sees fresh data.
    let age = wait_for(Duration::from_secs(20), || {
        probe_age(&q, "batcave").filter(|a| *a < 10.0)
    });
    assert!(
        age.is_some(),
        "{}",
        logs("freshness probe did not see batcave data younger than 10s")
    );

    // Data keeps flowing while the entry is there.
    let t_before = newest_at_receiver(&recv).expect("newest timestamp at receiver");
    let advanced = wait_for(Duration::from_secs(20), || {
        newest_at_receiver(&recv).filter(|t| *t >= t_before + 2000)
    });
    assert!(
        advanced.is_some(),
        "{}",
        logs("receiver data stopped advancing")
    );

    // The operator's removal and reload: our writes stop.
    assert!(remove_from_file(&file, &entry.id()).expect("remove our entry"));
    assert!(
        !remove_from_file(&file, &entry.id()).expect("second removal"),
        "second removal must be a no-op"
    );
    reload(&prom);
    let cfg = loaded_config(&prom);
    assert!(!cfg.contains(&entry.name), "{cfg}");
    assert!(!cfg.contains("remote_write"), "{cfg}");
    // Let in-flight sends drain, then watch for silence while Prometheus keeps scraping.
    std::thread::sleep(Duration::from_secs(3));
    let count_stopped = samples_received(&recv);
    let newest_stopped = newest_at_receiver(&recv).expect("newest timestamp at receiver");
    let prom_stopped = newest_at_prometheus(&prom).expect("prometheus newest timestamp");
    std::thread::sleep(Duration::from_secs(6));
    let prom_later = newest_at_prometheus(&prom).expect("prometheus newest timestamp");
    assert!(
        prom_later >= prom_stopped + 3.0,
        "prometheus stopped scraping ({prom_stopped} -> {prom_later}), the silence proves nothing"
    );
    assert_eq!(
        samples_received(&recv),
        count_stopped,
        "{}",
        logs("the receiver still gets samples after removal")
    );
    assert_eq!(
        newest_at_receiver(&recv),
        Some(newest_stopped),
        "the receiver's newest sample still advances after removal"
    );
    let age = probe_age(&q, "batcave").expect("querier still has the old batcave data");
    assert!(
        age >= 5.0,
        "freshness probe should see batcave data aging after removal, got {age}s"
    );
}

//! The real reference Prometheus 3.5.3 scrapes itself every 1s and remote-writes to
//! `orrery receive`; the StoreAPI serves its `up` series with both sets of external labels,
//! no sample fails, and the samples equal what Prometheus stored locally.

mod receiver_common;

use std::time::Duration;

use e2e::{Prometheus, wait_for};
use receiver_common::{Receiver, eq, prom_query, prom_value, series};

fn failed_samples(addr: &str) -> f64 {
    prom_value(addr, "sum(prometheus_remote_storage_samples_failed_total)").unwrap_or(0.0)
}

#[test]
fn receiver_prometheus_remote_write_served_over_storeapi() {
    let dir = tempfile::tempdir().unwrap();
    let recv = Receiver::start(
        &dir.path().join("data"),
        &dir.path().join("receive.log"),
        &[
            "--label=receive_replica=\"0\"",
            "--label=receive_cluster=\"wayne-enterprises\"",
        ],
    );
    let config = format!(
        r#"
global:
  scrape_interval: 1s
  evaluation_interval: 1s
  external_labels:
    cluster: batcave
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ['127.0.0.1:{{{{PORT}}}}']
remote_write:
  - url: http://{}/api/v1/receive
    queue_config:
      batch_send_deadline: 1s
      max_shards: 2
"#,
        recv.rw
    );
    let prom = Prometheus::start(&config, &[]);

    // Within 30s the StoreAPI returns Prometheus's `up` with both sets of external labels.
    let found = wait_for(Duration::from_secs(30), || {
        let s = series(&recv.grpc, vec![eq("__name__", "up")], 0, i64::MAX).ok()?;
        (s.len() == 1 && s[0].1.len() >= 3).then_some(s)
    });
    let found = found.unwrap_or_else(|| {
        panic!(
            "no `up` series over the StoreAPI within 30s; receiver log:\n{}\nprometheus log:\n{}",
            recv.proc.log_text(),
            prom.proc.log_text()
        )
    });
    let l = &found[0].0;
    assert_eq!(l.get("cluster"), Some("batcave"), "{l}");
    assert_eq!(l.get("receive_replica"), Some("0"), "{l}");
    assert_eq!(l.get("receive_cluster"), Some("wayne-enterprises"), "{l}");
    assert_eq!(l.get("tenant_id"), Some("default-tenant"), "{l}");
    assert_eq!(l.get("job"), Some("prometheus"), "{l}");

    // Let a few more seconds of samples flow, then compare one by one over a window
    // both hold: Prometheus's own `up[…]` at a fixed time vs the receiver's samples.
    std::thread::sleep(Duration::from_secs(8));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let at = (now - 3000) as f64 / 1000.0;
    let local = prom_query(&prom.addr(), "up{job=\"prometheus\"}[1m]", Some(at));
    let values = local["data"]["result"][0]["values"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let want: Vec<(i64, f64)> = values
        .iter()
        .map(|p| {
            let t = (p[0].as_f64().unwrap() * 1000.0).round() as i64;
            let v: f64 = p[1].as_str().unwrap().parse().unwrap();
            (t, v)
        })
        .collect();
    assert!(want.len() >= 5, "prometheus holds too few samples: {local}");
    let (mint, maxt) = (want[0].0, want[want.len() - 1].0);
    // Wait until the receiver has caught up with the window's end.
    let got = wait_for(Duration::from_secs(20), || {
        let s = series(&recv.grpc, vec![eq("__name__", "up")], mint, maxt).ok()?;
        let samples = s.into_iter().next()?.1;
        (samples.last().map(|x| x.0) == Some(maxt)).then_some(samples)
    })
    .unwrap_or_else(|| panic!("receiver did not catch up to t={maxt}"));
    assert_eq!(
        got.len(),
        want.len(),
        "sample counts differ: receiver {got:?} vs prometheus {want:?}"
    );
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.0, w.0, "timestamps differ");
        assert_eq!(g.1.to_bits(), w.1.to_bits(), "values differ at t={}", g.0);
    }

    // A bigger metric too: every series of prometheus_http_requests_total at one instant.
    let failed = failed_samples(&prom.addr());
    assert_eq!(
        failed, 0.0,
        "prometheus_remote_storage_samples_failed_total must stay 0"
    );
    let m = recv.metrics();
    assert!(
        m.contains("orrery_receive_http_requests_total{code=\"200\"}"),
        "{m}"
    );
}

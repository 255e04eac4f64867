//! An older remote-write client: Debian 12 (bookworm)'s own Prometheus 2.42 scrapes itself
//! every 1s with external labels and remote-writes to `orrery receive`. Within 30s the
//! StoreAPI serves its `up` series with the external labels of both Prometheus and the
//! receiver, the samples equal what Prometheus stored locally, and
//! `prometheus_remote_storage_samples_failed_total` stays 0 while samples were sent.

mod receiver_common;

use std::process::Command;
use std::time::Duration;

use e2e::{Prometheus, prometheus_242_bin, wait_for};
use receiver_common::{Receiver, eq, prom_query, prom_value, series};

#[test]
fn receiver_prometheus_242_remote_write_served_over_storeapi() {
    let bin = prometheus_242_bin();
    let version = Command::new(&bin)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("run {} --version: {e}", bin.display()));
    let version = String::from_utf8_lossy(&version.stdout).to_string()
        + &String::from_utf8_lossy(&version.stderr);
    assert!(
        version.contains("version 2.42."),
        "{} is not Prometheus 2.42: {version}",
        bin.display()
    );

    let dir = tempfile::tempdir().expect("temp dir");
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
    region: gotham
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
    let prom = Prometheus::start_bin(&bin, &config, &[]);
    let logs = || {
        format!(
            "receiver log:\n{}\nprometheus 2.42 log:\n{}",
            recv.proc.log_text(),
            prom.proc.log_text()
        )
    };

    // Within 30s the StoreAPI returns 2.42's `up` with both sets of external labels.
    let found = wait_for(Duration::from_secs(30), || {
        let s = series(&recv.grpc, vec![eq("__name__", "up")], 0, i64::MAX).ok()?;
        (s.len() == 1 && s[0].1.len() >= 3).then_some(s)
    })
    .unwrap_or_else(|| panic!("no `up` series over the StoreAPI within 30s\n{}", logs()));
    let l = &found[0].0;
    assert_eq!(l.get("__name__"), Some("up"), "{l}");
    assert_eq!(l.get("job"), Some("prometheus"), "{l}");
    assert_eq!(l.get("cluster"), Some("batcave"), "{l}");
    assert_eq!(l.get("region"), Some("gotham"), "{l}");
    assert_eq!(l.get("receive_replica"), Some("0"), "{l}");
    assert_eq!(l.get("receive_cluster"), Some("wayne-enterprises"), "{l}");
    assert_eq!(l.get("tenant_id"), Some("default-tenant"), "{l}");
    assert!(found[0].1.iter().all(|s| s.1 == 1.0), "up is 1: {found:?}");

    // Sample by sample over a window both hold: Prometheus's own `up[1m]` vs the receiver.
    std::thread::sleep(Duration::from_secs(6));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    let at = (now - 3000) as f64 / 1000.0;
    let local = prom_query(&prom.addr(), "up{job=\"prometheus\"}[1m]", Some(at));
    let want: Vec<(i64, f64)> = local["data"]["result"][0]["values"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|p| {
            let t = (p[0].as_f64()? * 1000.0).round() as i64;
            let v: f64 = p[1].as_str()?.parse().ok()?;
            Some((t, v))
        })
        .collect();
    assert!(want.len() >= 5, "prometheus holds too few samples: {local}");
    let (mint, maxt) = (want[0].0, want[want.len() - 1].0);
    let got = wait_for(Duration::from_secs(20), || {
        let s = series(&recv.grpc, vec![eq("__name__", "up")], mint, maxt).ok()?;
        let samples = s.into_iter().next()?.1;
        (samples.last().map(|x| x.0) == Some(maxt)).then_some(samples)
    })
    .unwrap_or_else(|| panic!("receiver did not catch up to t={maxt}\n{}", logs()));
    assert_eq!(
        got, want,
        "receiver samples differ from prometheus 2.42's own"
    );

    // Nothing failed, and something was sent (so the zero means something).
    let sent =
        prom_value(&prom.addr(), "sum(prometheus_remote_storage_samples_total)").unwrap_or(0.0);
    assert!(
        sent > 0.0,
        "prometheus 2.42 reports no samples sent\n{}",
        logs()
    );
    let failed = prom_value(
        &prom.addr(),
        "sum(prometheus_remote_storage_samples_failed_total)",
    )
    .unwrap_or(0.0);
    assert_eq!(
        failed,
        0.0,
        "prometheus_remote_storage_samples_failed_total must stay 0\n{}",
        logs()
    );
    // The receiver answered every request with a 2xx.
    let m = recv.metrics();
    let non_2xx: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("orrery_receive_http_requests_total{"))
        .filter(|l| !l.contains("code=\"2"))
        .filter(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) != Some(0.0))
        .collect();
    assert!(non_2xx.is_empty(), "non-2xx answers to 2.42: {non_2xx:?}");
    assert!(
        m.lines()
            .any(|l| l.starts_with("orrery_receive_http_requests_total{code=\"2")),
        "{m}"
    );
}

//! A real Prometheus 3.5.3 producing every kind of native histogram, for tests that need
//! Prometheus-written histogram data: it scrapes its own metrics over protobuf (integer
//! exponential histograms such as `prometheus_http_request_duration_seconds`), a classic
//! histogram served here converted to custom buckets (NHCB, schema -53,
//! `golden_latency_seconds`), and records `rate()` of a native histogram (float
//! histograms, `job:http_request_duration_seconds:rate1m`).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::{Prometheus, http_get, http_request};

/// Serves a classic histogram whose observations grow with every scrape; some buckets
/// stay empty for a while so the converted NHCB layout changes mid-chunk. Returns the
/// port and the scrape count.
pub fn serve_classic_histogram() -> (u16, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind classic target");
    let port = listener.local_addr().expect("local addr").port();
    let scrapes = Arc::new(AtomicU64::new(0));
    let n = scrapes.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let k = n.fetch_add(1, Ordering::Relaxed);
            // Cumulative bucket counts: le=0.1 grows every scrape, 0.5 from scrape 8,
            // 2.5 from scrape 15, +Inf adds one every third scrape.
            let b1 = k;
            let b2 = b1 + k.saturating_sub(8);
            let b3 = b2 + 2 * k.saturating_sub(15);
            let inf = b3 + k / 3;
            let sum = b1 as f64 * 0.05
                + (b2 - b1) as f64 * 0.3
                + (b3 - b2) as f64 * 1.7
                + (inf - b3) as f64 * 4.0;
            let body = format!(
                "# HELP golden_latency_seconds A classic histogram.\n\
                 # TYPE golden_latency_seconds histogram\n\
                 golden_latency_seconds_bucket{{le=\"0.1\"}} {b1}\n\
                 golden_latency_seconds_bucket{{le=\"0.5\"}} {b2}\n\
                 golden_latency_seconds_bucket{{le=\"2.5\"}} {b3}\n\
                 golden_latency_seconds_bucket{{le=\"+Inf\"}} {inf}\n\
                 golden_latency_seconds_sum {sum}\n\
                 golden_latency_seconds_count {inf}\n"
            );
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes());
        }
    });
    (port, scrapes)
}

/// Prometheus with native histograms on, its admin API enabled, scraping itself and
/// the classic target every second and recording float histograms every second; with
/// `extra_config` appended to prometheus.yml (e.g. a `remote_write` section).
pub fn start_native_histogram_prometheus(
    classic_port: u16,
    extra_config: &str,
    extra_args: &[&str],
) -> (Prometheus, tempfile::TempDir) {
    let rules_dir = tempfile::tempdir().expect("rules dir");
    let rules = rules_dir.path().join("rules.yml");
    std::fs::write(
        &rules,
        "groups:\n- name: golden\n  interval: 1s\n  rules:\n  - record: job:http_request_duration_seconds:rate1m\n    expr: sum by (job) (rate(prometheus_http_request_duration_seconds[1m]))\n",
    )
    .expect("write rules");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: self\n    scrape_protocols: [PrometheusProto]\n    static_configs:\n      - targets: ['127.0.0.1:{{{{PORT}}}}']\n  - job_name: classic\n    scrape_protocols: [PrometheusText0.0.4]\n    convert_classic_histograms_to_nhcb: true\n    static_configs:\n      - targets: ['127.0.0.1:{classic_port}']\n{extra_config}",
        rules.display()
    );
    let mut args = vec![
        "--enable-feature=native-histograms",
        "--web.enable-admin-api",
    ];
    args.extend_from_slice(extra_args);
    (Prometheus::start(&config, &args), rules_dir)
}

/// Sends HTTP requests to Prometheus's API for `secs` seconds at an uneven pace, so its
/// request-duration histograms gain observations in changing buckets.
pub fn generate_traffic(addr: &str, secs: u64) {
    let paths = [
        "/api/v1/query?query=up",
        "/api/v1/labels",
        "/api/v1/query?query=sum(rate(prometheus_http_requests_total[1m]))",
        "/api/v1/status/buildinfo",
    ];
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    let mut i = 0u64;
    while std::time::Instant::now() < end {
        let _ = http_get(addr, paths[(i % paths.len() as u64) as usize]);
        std::thread::sleep(Duration::from_millis(20 + (i % 7) * 15));
        i += 1;
    }
}

/// Takes a TSDB snapshot (head included) and returns its directory.
pub fn snapshot(prom: &Prometheus) -> std::path::PathBuf {
    let (code, body) = http_request(
        &prom.addr(),
        "POST",
        "/api/v1/admin/tsdb/snapshot",
        &[],
        &[],
    )
    .expect("snapshot request");
    assert_eq!(code, 200, "snapshot: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("snapshot JSON");
    let name = v["data"]["name"].as_str().expect("snapshot name");
    prom.dir.path().join("data").join("snapshots").join(name)
}

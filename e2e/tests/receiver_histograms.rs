//! Native histograms remote-written by the real Prometheus 3.5.3 to `orrery receive`
//! (issue #20), once with Remote Write 1.0 and once with 2.0: Prometheus scrapes its own
//! exponential histograms (protobuf), a classic histogram converted to custom buckets
//! (NHCB) and records `rate()` as float histograms, with `send_native_histograms` on.
//! Prometheus 3.5.3 sends custom-bucket histograms over 1.0 without their bounds
//! (`prompb.FromIntHistogram` drops `custom_values`), which any receiver must refuse as
//! invalid, so the 1.0 queue drops them by relabelling and the NHCB queries are compared
//! over 2.0 only. No sample, histogram or exemplar fails to send, and histogram queries through
//! `orrery query` over each receiver equal Prometheus's own answers over its local data,
//! instant and range. Then each receiver is SIGKILLed: Prometheus 3.5.3 opened on its
//! tenant directory (Orrery's WAL and histogram records) answers alike and promtool
//! dumps it (issue #18); restarted, the receiver replays the histogram records and the
//! answers are still equal.

mod querier_common;

use std::time::Duration;

use e2e::histograms::{
    compare_histogram_queries, generate_traffic, serve_classic_histogram,
    start_native_histogram_prometheus,
};
use e2e::promqlcmp::urlencode;
use e2e::{Prometheus, http_get, wait_for};
use querier_common::{EXTERNAL_LABELS, Querier, Receiver};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// Prometheus's own counter `name` summed over its label sets (0 when absent).
fn prom_counter(prom: &Prometheus, name: &str) -> f64 {
    let (_, body) = http_get(&prom.addr(), "/metrics").expect("prometheus metrics");
    body.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The newest timestamp of `up` the querier at `addr` returns, in ms.
fn newest_up(addr: &str) -> Option<i64> {
    let path = format!(
        "/api/v1/query?query={}",
        urlencode("max(timestamp(prometheus_http_request_duration_seconds))")
    );
    let (code, body) = http_get(addr, &path).ok()?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let s = v["data"]["result"][0]["value"][1].as_str()?;
    Some((s.parse::<f64>().ok()? * 1000.0) as i64)
}

#[test]
fn prometheus_remote_writes_native_histograms_rw1_and_rw2_answers_alike() {
    let rw1 = Receiver::start("receiver-rw1", &[("receive_replica", "0")]);
    let rw2 = Receiver::start("receiver-rw2", &[("receive_replica", "0")]);
    let (classic_port, _) = serve_classic_histogram();
    let remote_write = format!(
        "remote_write:\n  - url: {}\n    send_native_histograms: true\n    write_relabel_configs:\n      - source_labels: [__name__]\n        regex: golden_latency_seconds\n        action: drop\n    send_exemplars: true\n    queue_config:\n      batch_send_deadline: 1s\n      max_shards: 2\n  - url: {}\n    protobuf_message: io.prometheus.write.v2.Request\n    send_native_histograms: true\n    send_exemplars: true\n    queue_config:\n      batch_send_deadline: 1s\n      max_shards: 2\n",
        rw1.remote_write_url(),
        rw2.remote_write_url()
    );
    let (prom, _rules) = start_native_histogram_prometheus(
        classic_port,
        &remote_write,
        &["--enable-feature=exemplar-storage"],
    );
    let q1 = Querier::start(&[&rw1.grpc], &[]);
    let q2 = Querier::start(&[&rw2.grpc], &[]);
    let start = now_ms() + 15_000;
    generate_traffic(&prom.addr(), 50);
    let end = now_ms() - 3_000;

    for (name, q, recv) in [("RW 1.0", &q1, &rw1), ("RW 2.0", &q2, &rw2)] {
        let caught_up = wait_for(Duration::from_secs(30), || {
            (newest_up(&q.http)? >= end).then_some(())
        });
        assert!(
            caught_up.is_some(),
            "{name}: the receiver never caught up to {end}; receiver log:\n{}\nprometheus log:\n{}",
            recv.proc.log_text(),
            prom.proc.log_text()
        );
    }
    for counter in [
        "prometheus_remote_storage_samples_failed_total",
        "prometheus_remote_storage_histograms_failed_total",
        "prometheus_remote_storage_exemplars_failed_total",
    ] {
        assert_eq!(
            prom_counter(&prom, counter),
            0.0,
            "{counter}; prometheus log:\n{}",
            prom.proc.log_text()
        );
    }
    assert!(
        prom_counter(&prom, "prometheus_remote_storage_histograms_total") > 0.0,
        "Prometheus sent no histograms"
    );

    for (name, q, skip) in [("RW 1.0", &q1, Some("golden")), ("RW 2.0", &q2, None)] {
        println!("--- {name}");
        compare_histogram_queries(&prom.addr(), &q.http, start, end, EXTERNAL_LABELS, skip)
            .assert_clean();
    }

    // SIGKILL each receiver (its head is only in the WAL) and restart it on the same
    // directory: the histogram records replay.
    for (name, recv, skip) in [("RW 1.0", rw1, Some("golden")), ("RW 2.0", rw2, None)] {
        let Receiver { mut proc, dir, .. } = recv;
        let data = dir.path().join("data");
        proc.kill();
        // Prometheus 3.5.3 opened on a copy of the tenant directory (Orrery's WAL, with
        // the histogram records Orrery wrote) answers as the source Prometheus does, and
        // promtool reads it.
        let tenant = data.join("default-tenant");
        let dump = std::process::Command::new(e2e::promtool_bin())
            .args(["tsdb", "dump"])
            .arg(&tenant)
            .output()
            .expect("run promtool");
        let text = String::from_utf8_lossy(&dump.stdout);
        assert!(
            dump.status.success() && text.contains("prometheus_http_request_duration_seconds"),
            "{name}: promtool tsdb dump: {}",
            String::from_utf8_lossy(&dump.stderr)
        );
        let reader = Prometheus::start_prepared("global:\n  scrape_interval: 1h\n", &[], |d| {
            e2e::copy_dir(&tenant, d)
        });
        println!("--- {name}: Prometheus 3.5.3 on Orrery's tenant directory");
        compare_histogram_queries(&prom.addr(), &reader.addr(), start, end, &[], skip)
            .assert_clean();
        drop(reader);
        let again = Receiver::start_on(
            &format!("{name} restarted"),
            &data,
            &[("receive_replica", "0")],
        );
        let q = Querier::start(&[&again.grpc], &[]);
        let back = wait_for(Duration::from_secs(60), || {
            (newest_up(&q.http)? >= end).then_some(())
        });
        assert!(
            back.is_some(),
            "{name}: no data after the restart; log:\n{}",
            again.proc.log_text()
        );
        println!("--- {name} after SIGKILL and restart");
        compare_histogram_queries(&prom.addr(), &q.http, start, end, EXTERNAL_LABELS, skip)
            .assert_clean();
    }
}

/// The other direction of issue #18 with native histograms: the reference Prometheus
/// 3.5.3 scrapes every histogram kind and is SIGKILLed with its head only in its WAL
/// (records 7-10, `chunks_head/`); `orrery receive` started on that data directory as
/// tenant `default-tenant` (Thanos Receive's layout) answers the histogram queries as
/// Prometheus restarted on a copy of the same directory does.
#[test]
fn orrery_replays_a_prometheus_wal_with_native_histograms() {
    let (classic_port, _) = serve_classic_histogram();
    let (mut prom, _rules) = start_native_histogram_prometheus(classic_port, "", &[]);
    let start = now_ms() + 15_000;
    generate_traffic(&prom.addr(), 45);
    let end = now_ms() - 2_000;
    prom.proc.kill();
    let data = prom.dir.path().join("data");

    let reference = Prometheus::start_prepared("global:\n  scrape_interval: 1h\n", &[], |d| {
        e2e::copy_dir(&data, d)
    });
    let work = tempfile::tempdir().expect("work dir");
    let tsdb_path = work.path().join("receive");
    e2e::copy_dir(&data, &tsdb_path.join("default-tenant"));
    let recv = Receiver::start_on("receiver-on-prometheus-wal", &tsdb_path, &[]);
    let q = Querier::start(&[&recv.grpc], &[]);
    let seen = wait_for(Duration::from_secs(60), || {
        (newest_up(&q.http)? >= end).then_some(())
    });
    assert!(
        seen.is_some(),
        "orrery serves no histograms from Prometheus's WAL; log:\n{}",
        recv.proc.log_text()
    );
    compare_histogram_queries(
        &reference.addr(),
        &q.http,
        start,
        end,
        EXTERNAL_LABELS,
        None,
    )
    .assert_clean();
}

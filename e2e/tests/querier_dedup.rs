//! HA deduplication end to end: one Prometheus remote-writes to two receivers
//! (receive_replica 0 and 1); the querier with `--query.replica-label receive_replica`
//! shows one series per target with Prometheus's own values, and keeps answering without a
//! gap when one receiver is killed.

mod querier_common;

use querier_common::*;
use std::time::Duration;

#[test]
fn ha_receivers_deduplicate_and_survive_a_kill() {
    let mut r0 = Receiver::start("receiver-0", &[("receive_replica", "0")]);
    let r1 = Receiver::start("receiver-1", &[("receive_replica", "1")]);
    let q = Querier::start(
        &[r0.grpc.as_str(), r1.grpc.as_str()],
        &["--query.replica-label=receive_replica"],
    );
    let prom = prometheus(
        &[("cluster", "batcave")],
        &[r0.remote_write_url(), r1.remote_write_url()],
    );
    let paddr = prom.addr();
    let t_start = now_secs();

    // Wait until both receivers have data (the non-deduplicated view shows two series).
    let both = e2e::wait_for(Duration::from_secs(40), || {
        let (_, v) = get_json(
            &q.http,
            &format!("/api/v1/query?query=up&dedup=false&time={:.3}", now_secs()),
        );
        (v["data"]["result"].as_array().map(|a| a.len()) == Some(2)).then_some(())
    });
    assert!(
        both.is_some(),
        "both receivers never had `up`; r0 log:\n{}\nquerier log:\n{}",
        r0.proc.log_text(),
        q.proc.log_text()
    );
    std::thread::sleep(Duration::from_secs(12));

    // Deduplicated: one series per target, no replica label.
    let (code, v) = instant(&q.http, "up", now_secs());
    assert_eq!(code, 200, "{v}");
    let res = v["data"]["result"].as_array().unwrap();
    assert_eq!(res.len(), 1, "{v}");
    assert!(res[0]["metric"]["receive_replica"].is_null(), "{v}");

    // Values equal Prometheus's own over a window both hold.
    let end = (now_secs() - 4.0).floor();
    let start = end - 8.0;
    for query in [
        "up",
        "prometheus_tsdb_head_series",
        "rate(prometheus_tsdb_head_samples_appended_total[5s])",
        "scrape_samples_scraped",
    ] {
        let (_, ours) = range(&q.http, query, start, end, 1.0);
        let (_, theirs) = range(&paddr, query, start, end, 1.0);
        assert_eq!(ours["status"], "success", "{query}: {ours}");
        if let Some(d) = diff(&ours["data"], &theirs["data"]) {
            panic!("{query}: querier differs from Prometheus: {d}\nours: {ours}\ntheirs: {theirs}");
        }
    }

    // Kill one receiver mid-way: queries keep succeeding (a warning at most), no gap.
    let kill_at = now_secs();
    r0.proc.kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(12);
    while std::time::Instant::now() < deadline {
        let (code, v) = instant(&q.http, "up", now_secs());
        assert_eq!(code, 200, "query failed after killing a receiver: {v}");
        assert_eq!(v["status"], "success", "{v}");
        assert_eq!(
            v["data"]["result"].as_array().map(|a| a.len()),
            Some(1),
            "{v}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // A range across the kill: a point at every step, equal to Prometheus's.
    let end = (now_secs() - 3.0).floor();
    // The window starts at Prometheus's own first `up` point (its first scrape can come
    // seconds after start on a loaded machine), at most 15 s before the kill.
    let (_, since_start) = range(&paddr, "up", t_start.floor(), end, 1.0);
    let first = since_start["data"]["result"][0]["values"][0][0]
        .as_f64()
        .unwrap_or_else(|| panic!("Prometheus has no `up` since the start: {since_start}"));
    let start = first.max(kill_at - 15.0).ceil();
    assert!(
        start < kill_at - 2.0,
        "Prometheus's first `up` ({first}) is too late to span the kill at {kill_at}"
    );
    let (code, ours) = range(&q.http, "up", start, end, 1.0);
    assert_eq!(code, 200, "{ours}");
    let (_, theirs) = range(&paddr, "up", start, end, 1.0);
    let pts = ours["data"]["result"][0]["values"]
        .as_array()
        .map(|a| a.len())
        .unwrap_or(0);
    assert_eq!(
        pts as f64,
        end - start + 1.0,
        "gap in {ours}\nPrometheus: {theirs}"
    );
    if let Some(d) = diff(&ours["data"], &theirs["data"]) {
        panic!(
            "after the kill the querier differs from Prometheus: {d}\nours: {ours}\ntheirs: {theirs}"
        );
    }
    drop(r1);
}

//! The seed tutorial end to end: two Prometheus servers (batcave, batcomputer) remote-write
//! to one `orrery receive`; `orrery query` answers `up` for both and lists the receiver.

mod querier_common;

use querier_common::*;
use std::time::{Duration, Instant};

#[test]
fn seed_tutorial_up_for_both_clusters() {
    let recv = Receiver::start(
        "receiver",
        &[
            ("receive_replica", "0"),
            ("receive_cluster", "wayne-enterprises"),
        ],
    );
    let q = Querier::start(&[recv.grpc.as_str()], &[]);
    let started = Instant::now();
    let _batcave = prometheus(&[("cluster", "batcave")], &[recv.remote_write_url()]);
    let _batcomputer = prometheus(&[("cluster", "batcomputer")], &[recv.remote_write_url()]);

    let mut last = serde_json::Value::Null;
    let found = e2e::wait_for(Duration::from_secs(30), || {
        let (code, v) = instant(&q.http, "up", now_secs());
        last = v.clone();
        if code != 200 || v["status"] != "success" {
            return None;
        }
        let clusters: std::collections::BTreeSet<String> = v["data"]["result"]
            .as_array()?
            .iter()
            .filter(|s| s["value"][1] == "1")
            .filter_map(|s| s["metric"]["cluster"].as_str().map(str::to_string))
            .collect();
        (clusters.contains("batcave") && clusters.contains("batcomputer")).then_some(v)
    });
    let v = found.unwrap_or_else(|| {
        panic!(
            "`up` did not show both clusters within 30s; last answer: {last}\nreceiver log:\n{}\nquerier log:\n{}",
            recv.proc.log_text(),
            q.proc.log_text()
        )
    });
    eprintln!("both clusters visible after {:?}", started.elapsed());
    for s in v["data"]["result"].as_array().unwrap() {
        assert_eq!(s["metric"]["__name__"], "up");
        assert_eq!(s["metric"]["job"], "prometheus");
        assert_eq!(s["metric"]["receive_cluster"], "wayne-enterprises", "{s}");
        assert_eq!(s["metric"]["receive_replica"], "0", "{s}");
    }

    // /api/v1/stores lists the receiver with its external labels.
    let (code, stores) = get_json(&q.http, "/api/v1/stores");
    assert_eq!(code, 200, "{stores}");
    assert_eq!(stores["status"], "success");
    let receivers = stores["data"]["receive"]
        .as_array()
        .unwrap_or_else(|| panic!("no receive group in {stores}"));
    assert_eq!(receivers.len(), 1, "{stores}");
    let r = &receivers[0];
    assert_eq!(r["name"], recv.grpc.as_str());
    assert!(r["lastError"].is_null(), "{r}");
    assert!(
        r["lastCheck"].as_str().is_some_and(|s| s.contains('T')),
        "{r}"
    );
    assert!(r["minTime"].is_i64() && r["maxTime"].is_i64(), "{r}");
    let sets = r["labelSets"].as_array().expect("labelSets");
    assert!(
        sets.iter()
            .any(|ls| ls["receive_cluster"] == "wayne-enterprises" && ls["receive_replica"] == "0"),
        "{r}"
    );

    // Labels and series APIs see both clusters too.
    let (_, vals) = get_json(&q.http, "/api/v1/label/cluster/values");
    assert_eq!(
        vals["data"],
        serde_json::json!(["batcave", "batcomputer"]),
        "{vals}"
    );
    let (_, series) = get_json(&q.http, &format!("/api/v1/series?match[]={}", enc("up")));
    assert_eq!(
        series["data"].as_array().map(|a| a.len()),
        Some(2),
        "{series}"
    );
    let (code, bad) = instant(&q.http, "sum(", now_secs());
    assert_eq!(code, 400);
    assert_eq!(bad["errorType"], "bad_data");

    // Graceful shutdown on SIGTERM.
    let mut q = q;
    let st = q.proc.terminate(Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| s.success()),
        "querier did not exit cleanly: {st:?}"
    );
}

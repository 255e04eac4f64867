//! The calls a Grafana Prometheus data source makes (its health check, panels over POST
//! forms with float-second times, the editor's start-up calls: rules, exemplar probe with
//! millisecond times, buildinfo and flags for flavour detection, label and series
//! lookups with `limit`), made against `orrery query` and the real Prometheus 3.5.3 over
//! the same samples: the same status codes, the same data, the same error texts.

mod querier_common;

use querier_common::*;
use serde_json::Value;
use std::time::Duration;
use storeapi::{Labels, Sample};

/// One request as Grafana sends it.
struct Call {
    what: &'static str,
    method: &'static str,
    path: String,
    form: Vec<(&'static str, String)>,
    /// How the two answers must agree.
    check: Check,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Check {
    /// Same status; the same query result (series, points, warnings); for `stats`, the
    /// same sample counts.
    QueryData,
    /// Same status; the same list (external labels of the receiver left out).
    List,
    /// Same status and identical `data`.
    Data,
    /// Same status, `errorType` and `error`.
    Error,
    /// Same status only (shapes checked separately).
    Status,
}

fn call(addr: &str, c: &Call) -> (u16, Value) {
    let (code, body) = if c.method == "POST" {
        let body = c
            .form
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        e2e::http_request(
            addr,
            "POST",
            &c.path,
            &[("Content-Type", "application/x-www-form-urlencoded")],
            body.as_bytes(),
        )
    } else {
        e2e::http_get(addr, &c.path)
    }
    .unwrap_or_else(|e| panic!("{} {addr}{}: {e}", c.method, c.path));
    let v = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (code, v)
}

fn list(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v["data"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|x| match x {
            Value::String(s) => s.clone(),
            other => metric_key(other),
        })
        .filter(|s| !EXTERNAL_LABELS.contains(&s.as_str()))
        .collect();
    out.sort();
    out
}

fn warnings(v: &Value) -> Vec<String> {
    v["warnings"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|w| w.as_str().map(str::to_string))
        .collect()
}

/// Why the two answers disagree, if they do.
fn compare(check: Check, (oc, ov): &(u16, Value), (pc, pv): &(u16, Value)) -> Option<String> {
    if oc != pc {
        return Some(format!("status {oc} vs Prometheus {pc}: {ov} / {pv}"));
    }
    match check {
        Check::Status => None,
        Check::Error => (ov["errorType"] != pv["errorType"] || ov["error"] != pv["error"])
            .then(|| format!("error {ov} vs {pv}")),
        Check::Data => (ov["data"] != pv["data"]).then(|| format!("data {ov} vs {pv}")),
        Check::List => (list(ov) != list(pv) || warnings(ov) != warnings(pv)).then(|| {
            format!(
                "list {:?} {:?} vs {:?} {:?}",
                list(ov),
                warnings(ov),
                list(pv),
                warnings(pv)
            )
        }),
        Check::QueryData => {
            if let Some(d) = diff(&ov["data"], &pv["data"]) {
                return Some(d);
            }
            if warnings(ov) != warnings(pv) {
                return Some(format!("warnings {:?} vs {:?}", warnings(ov), warnings(pv)));
            }
            let (os, ps) = (&ov["data"]["stats"], &pv["data"]["stats"]);
            if os.is_null() != ps.is_null() {
                return Some(format!("stats {os} vs {ps}"));
            }
            if !ps.is_null() {
                let keys = |v: &Value| -> Vec<String> {
                    v["timings"]
                        .as_object()
                        .map(|o| o.keys().cloned().collect())
                        .unwrap_or_default()
                };
                if keys(os) != keys(ps) || os["timings"].as_object().is_none() {
                    return Some(format!("timings keys {os} vs {ps}"));
                }
                if os["samples"]["totalQueryableSamples"] != ps["samples"]["totalQueryableSamples"]
                {
                    return Some(format!("samples {} vs {}", os["samples"], ps["samples"]));
                }
                let peak = |v: &Value| v["samples"]["peakSamples"].as_u64();
                if peak(os).is_none_or(|p| p == 0) {
                    return Some(format!("no peakSamples in {os}"));
                }
            }
            None
        }
    }
}

#[test]
fn grafana_calls_answer_as_prometheus_does() {
    let prom = e2e::Prometheus::start(
        "global:\n  scrape_interval: 1h\n",
        &["--web.enable-remote-write-receiver"],
    );
    let recv = Receiver::start("receiver", &[]);
    let q = Querier::start(&[recv.grpc.as_str()], &[]);

    // 12 counters and 12 gauges over the last 20 minutes at 15 s.
    let now_ms = (now_secs() * 1000.0) as i64 / 15_000 * 15_000;
    let start_ms = now_ms - 20 * 60_000;
    let mut series = Vec::new();
    for i in 0..12 {
        let inst = format!("i{i:02}");
        let pts = |f: &dyn Fn(i64) -> f64| -> Vec<Sample> {
            (0..=80)
                .map(|k| Sample {
                    t: start_ms + k * 15_000,
                    v: f(k),
                })
                .collect()
        };
        let l = |name: &str| {
            Labels::from_pairs([
                ("__name__", name),
                ("job", if i % 2 == 0 { "api" } else { "db" }),
                ("instance", inst.as_str()),
            ])
            .expect("labels")
        };
        series.push((l("grafana_requests_total"), pts(&|k| (k * (i + 1)) as f64)));
        series.push((
            l("grafana_temperature"),
            pts(&|k| ((k + i) % 7) as f64 * 1.5),
        ));
    }
    for (addr, path) in [
        (prom.addr(), "/api/v1/write"),
        (recv.remote_write.clone(), "/api/v1/receive"),
    ] {
        let (code, body) = e2e::remote_write(&addr, path, &series, &[]).expect("remote write");
        assert!((200..300).contains(&code), "write to {addr}: {code} {body}");
    }
    let visible = e2e::wait_for(Duration::from_secs(30), || {
        let (c, v) = instant(
            &q.http,
            "count(grafana_temperature)",
            now_ms as f64 / 1000.0,
        );
        (c == 200 && v["data"]["result"][0]["value"][1] == "12").then_some(())
    });
    assert!(visible.is_some(), "querier log:\n{}", q.proc.log_text());

    let s = |ms: i64| format!("{:.3}", ms as f64 / 1000.0);
    let (t0, t1) = (start_ms + 5 * 60_000, now_ms);
    let form = |pairs: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
        pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
    };
    let get = |what, path: String, check| Call {
        what,
        method: "GET",
        path,
        form: Vec::new(),
        check,
    };
    let post = |what, path: &str, f: Vec<(&'static str, String)>, check| Call {
        what,
        method: "POST",
        path: path.to_string(),
        form: f,
        check,
    };
    let rate = "sum by (job) (rate(grafana_requests_total[1m]))";
    let calls = vec![
        post(
            "health check 1+1 at time=4",
            "/api/v1/query",
            form(&[("query", "1+1"), ("time", "4")]),
            Check::QueryData,
        ),
        post(
            "panel range query, POST, float seconds",
            "/api/v1/query_range",
            form(&[
                ("query", rate),
                ("start", &s(t0)),
                ("end", &s(t1)),
                ("step", "15"),
            ]),
            Check::QueryData,
        ),
        post(
            "range query with stats=all",
            "/api/v1/query_range",
            form(&[
                ("query", "rate(grafana_requests_total[1m])"),
                ("start", &s(t0)),
                ("end", &s(t1)),
                ("step", "30"),
                ("stats", "all"),
            ]),
            Check::QueryData,
        ),
        post(
            "instant selector with stats=true",
            "/api/v1/query",
            form(&[
                ("query", "grafana_temperature"),
                ("time", &s(t1)),
                ("stats", "true"),
            ]),
            Check::QueryData,
        ),
        post(
            "instant range function with stats",
            "/api/v1/query",
            form(&[
                ("query", "max_over_time(grafana_temperature[5m])"),
                ("time", &s(t1)),
                ("stats", "all"),
            ]),
            Check::QueryData,
        ),
        post(
            "instant query limit=5",
            "/api/v1/query",
            form(&[
                ("query", "grafana_temperature"),
                ("time", &s(t1)),
                ("limit", "5"),
            ]),
            Check::QueryData,
        ),
        post(
            "range query limit=1",
            "/api/v1/query_range",
            form(&[
                ("query", rate),
                ("start", &s(t0)),
                ("end", &s(t1)),
                ("step", "60"),
                ("limit", "1"),
            ]),
            Check::QueryData,
        ),
        post(
            "limit larger than the result",
            "/api/v1/query",
            form(&[
                ("query", "grafana_temperature"),
                ("time", &s(t1)),
                ("limit", "100"),
            ]),
            Check::QueryData,
        ),
        post(
            "limit=-1",
            "/api/v1/query",
            form(&[("query", "up"), ("limit", "-1")]),
            Check::Error,
        ),
        post(
            "limit=abc",
            "/api/v1/query_range",
            form(&[
                ("query", "up"),
                ("start", &s(t0)),
                ("end", &s(t1)),
                ("step", "60"),
                ("limit", "abc"),
            ]),
            Check::Error,
        ),
        get(
            "instant query, RFC3339 time",
            format!(
                "/api/v1/query?query=grafana_temperature&time={}",
                enc(&rfc3339(t1))
            ),
            Check::QueryData,
        ),
        post(
            "execution error is 422",
            "/api/v1/query",
            form(&[
                ("query", "grafana_temperature + on(job) grafana_temperature"),
                ("time", &s(t1)),
            ]),
            Check::Status,
        ),
        // Same status and error type; the parser's message lacks Prometheus's `1:5: parse
        // error:` position prefix (checked below).
        post(
            "parse error is 400",
            "/api/v1/query",
            form(&[("query", "sum(")]),
            Check::Status,
        ),
        get(
            "exemplar probe, millisecond times",
            format!("/api/v1/query_exemplars?query=test&start={}&end={}", t0, t1),
            Check::Data,
        ),
        get(
            "labels, millisecond times",
            format!("/api/v1/labels?start={t0}&end={t1}"),
            Check::List,
        ),
        post(
            "labels with match[] (POST)",
            "/api/v1/labels",
            form(&[
                ("match[]", "grafana_temperature"),
                ("start", &s(t0)),
                ("end", &s(t1)),
            ]),
            Check::List,
        ),
        get(
            "label values with match[] (variable)",
            format!(
                "/api/v1/label/instance/values?match[]={}&start={}&end={}",
                enc("grafana_temperature{job=\"api\"}"),
                s(t0),
                s(t1)
            ),
            Check::List,
        ),
        get(
            "metric names",
            format!(
                "/api/v1/label/__name__/values?start={}&end={}",
                s(t0),
                s(t1)
            ),
            Check::List,
        ),
        get(
            "label values with limit=3",
            format!(
                "/api/v1/label/instance/values?limit=3&match[]=grafana_temperature&start={}&end={}",
                s(t0),
                s(t1)
            ),
            Check::Status,
        ),
        post(
            "series with limit (POST)",
            "/api/v1/series",
            form(&[
                ("match[]", "grafana_requests_total"),
                ("start", &s(t0)),
                ("end", &s(t1)),
                ("limit", "4"),
            ]),
            Check::Status,
        ),
        post(
            "series",
            "/api/v1/series",
            form(&[
                ("match[]", "{job=\"db\"}"),
                ("start", &s(t0)),
                ("end", &s(t1)),
            ]),
            Check::List,
        ),
        get(
            "series limit=abc",
            "/api/v1/series?match[]=up&limit=abc".into(),
            Check::Error,
        ),
        get(
            "rules (editor start-up)",
            "/api/v1/rules".into(),
            Check::Data,
        ),
        get(
            "rules type=alert",
            "/api/v1/rules?type=alert&group_limit=2".into(),
            Check::Data,
        ),
        get(
            "rules type=foo",
            "/api/v1/rules?type=foo".into(),
            Check::Error,
        ),
        get(
            "rules group_limit=0",
            "/api/v1/rules?group_limit=0".into(),
            Check::Error,
        ),
        get(
            "rules group_limit=abc",
            "/api/v1/rules?group_limit=abc".into(),
            Check::Error,
        ),
        get(
            "rules exclude_alerts=xx",
            "/api/v1/rules?exclude_alerts=xx".into(),
            Check::Error,
        ),
        get("alerts", "/api/v1/alerts".into(), Check::Data),
        get("metadata", "/api/v1/metadata".into(), Check::Data),
        get(
            "buildinfo",
            "/api/v1/status/buildinfo".into(),
            Check::Status,
        ),
        get("flags", "/api/v1/status/flags".into(), Check::Status),
        post(
            "label values refuse POST",
            "/api/v1/label/job/values",
            form(&[("match[]", "up")]),
            Check::Status,
        ),
    ];

    let mut table = String::from("\nGrafana call | Orrery | Prometheus 3.5.3 | agree\n");
    let mut failures = Vec::new();
    for c in &calls {
        let ours = call(&q.http, c);
        let theirs = call(&prom.addr(), c);
        let verdict = compare(c.check, &ours, &theirs);
        table.push_str(&format!(
            "{} | {} | {} | {}\n",
            c.what,
            ours.0,
            theirs.0,
            if verdict.is_none() { "yes" } else { "NO" }
        ));
        if let Some(v) = verdict {
            failures.push(format!("{} ({} {}): {v}", c.what, c.method, c.path));
        }
    }
    eprintln!("{table}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Limits on label APIs: at most `limit` values, with Prometheus's warning.
    let c = &calls
        .iter()
        .find(|c| c.what == "label values with limit=3")
        .expect("call");
    let (_, v) = call(&q.http, c);
    assert_eq!(v["data"].as_array().map(Vec::len), Some(3), "{v}");
    assert_eq!(warnings(&v), vec!["results truncated due to limit"], "{v}");
    let c = &calls
        .iter()
        .find(|c| c.what == "series with limit (POST)")
        .expect("call");
    let (_, v) = call(&q.http, c);
    assert_eq!(v["data"].as_array().map(Vec::len), Some(4), "{v}");

    // An execution error is 422 with Prometheus's error type.
    let c = &calls
        .iter()
        .find(|c| c.what == "execution error is 422")
        .expect("call");
    let (code, v) = call(&q.http, c);
    assert_eq!(
        (code, v["errorType"].as_str()),
        (422, Some("execution")),
        "{v}"
    );

    let c = &calls
        .iter()
        .find(|c| c.what == "parse error is 400")
        .expect("call");
    let (code, v) = call(&q.http, c);
    assert_eq!(
        (code, v["errorType"].as_str()),
        (400, Some("bad_data")),
        "{v}"
    );
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("invalid parameter \"query\": ")
                && e.contains("unclosed left parenthesis")),
        "{v}"
    );

    // buildinfo: the keys Prometheus and Thanos send and no `features` (which would make
    // Grafana treat the source as Mimir with a ruler).
    let (_, ours) = get_json(&q.http, "/api/v1/status/buildinfo");
    let (_, theirs) = get_json(&prom.addr(), "/api/v1/status/buildinfo");
    let keys = |v: &Value| -> Vec<String> {
        v["data"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    assert_eq!(keys(&ours), keys(&theirs), "{ours} vs {theirs}");
    assert!(ours["data"].get("features").is_none(), "{ours}");

    // flags: a success with every flag as a string (Grafana's alerting then detects
    // Thanos), the querier's own flags among them.
    let (code, flags) = get_json(&q.http, "/api/v1/status/flags");
    assert_eq!(code, 200, "{flags}");
    let f = flags["data"]
        .as_object()
        .unwrap_or_else(|| panic!("{flags}"));
    assert!(f.values().all(Value::is_string), "{flags}");
    assert_eq!(
        f.get("query.timeout").and_then(Value::as_str),
        Some("2m"),
        "{flags}"
    );
    assert_eq!(
        f.get("endpoint").and_then(Value::as_str),
        Some(recv.grpc.as_str()),
        "{flags}"
    );
}

/// `t` (ms) as RFC 3339 with milliseconds, UTC.
fn rfc3339(t: i64) -> String {
    let secs = t.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        t.rem_euclid(1000)
    )
}

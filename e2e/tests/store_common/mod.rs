//! Shared helpers of the store gateway tests: start `orrery store` and `orrery query`,
//! read their metrics and query answers.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use e2e::{Proc, free_port, http_get, orrery_bin, promtool_bin, wait_for};

/// A running `orrery store`.
pub struct Store {
    pub proc: Proc,
    pub grpc: String,
    pub http: String,
}

impl Store {
    /// Starts the gateway over `objstore` and waits for `/-/ready` (first sync done).
    pub fn start(objstore: &str, data: &Path, log: &Path, extra: &[&str]) -> Store {
        let (grpc, http) = (
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
        );
        let mut cmd = Command::new(orrery_bin());
        cmd.arg("store")
            .arg(format!("--objstore.config={objstore}"))
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--grpc-address={grpc}"))
            .arg(format!("--http-address={http}"))
            .args(extra)
            .env("RUST_LOG", "info");
        let proc = Proc::spawn("orrery-store", cmd, log.to_path_buf());
        let s = Store { proc, grpc, http };
        let ok = wait_for(Duration::from_secs(60), || {
            matches!(http_get(&s.http, "/-/ready"), Ok((200, _))).then_some(())
        });
        assert!(
            ok.is_some(),
            "orrery store did not become ready; log:\n{}",
            s.proc.log_text()
        );
        s
    }

    pub fn metrics(&self) -> String {
        http_get(&self.http, "/metrics")
            .map(|r| r.1)
            .unwrap_or_default()
    }
}

/// A running `orrery query` over `endpoints`.
pub struct Query {
    pub proc: Proc,
    pub http: String,
}

impl Query {
    /// Starts the querier with the receiver's tenant label as its replica label (removed
    /// from answers, so series equal Prometheus's) plus `extra`; waits for `/-/ready`.
    pub fn start(endpoints: &[&str], log: &Path, extra: &[&str]) -> Query {
        let http = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(orrery_bin());
        cmd.arg("query")
            .arg(format!("--http-address={http}"))
            .arg(format!("--grpc-address=127.0.0.1:{}", free_port()))
            .arg("--query.replica-label=tenant_id")
            .args(extra);
        for e in endpoints {
            cmd.arg(format!("--endpoint={e}"));
        }
        let proc = Proc::spawn("orrery-query", cmd, log.to_path_buf());
        let q = Query { proc, http };
        let ok = wait_for(Duration::from_secs(30), || {
            matches!(http_get(&q.http, "/-/ready"), Ok((200, _))).then_some(())
        });
        assert!(
            ok.is_some(),
            "querier not ready; log:\n{}",
            q.proc.log_text()
        );
        q
    }

    /// `/api/v1/stores` entries of one component type: (address, minTime, maxTime).
    pub fn stores(&self, component: &str) -> Vec<(String, i64, i64)> {
        let (_, body) = http_get(&self.http, "/api/v1/stores").unwrap_or_default();
        let j: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        j["data"][component]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| {
                        (
                            s["name"].as_str().unwrap_or("").to_string(),
                            s["minTime"].as_i64().unwrap_or(0),
                            s["maxTime"].as_i64().unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A metric's value summed over its series (`name` is the full sample name, optionally
/// with a label selector prefix such as `foo{state="x"}`).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A metric summed over every sample whose name ends with `suffix` (a registry prefix
/// such as the receiver's `prometheus_tsdb_` does not matter).
pub fn metric_suffix(text: &str, suffix: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let name = l.split(['{', ' ']).next().unwrap_or("");
            name.ends_with(suffix)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A query answer as JSON: (HTTP status, body).
pub fn api_json(addr: &str, path: &str) -> (u16, serde_json::Value) {
    let (code, body) = http_get(addr, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let j = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"));
    (code, j)
}

/// The warnings of an API answer.
pub fn warnings(j: &serde_json::Value) -> Vec<String> {
    j["warnings"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|w| w.as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The single scalar of an instant query whose result is a one-element vector.
pub fn single_value(j: &serde_json::Value) -> Option<f64> {
    j["data"]["result"]
        .as_array()?
        .first()?
        .get("value")?
        .get(1)?
        .as_str()?
        .parse()
        .ok()
}

/// Turns the OpenMetrics file `openmetrics` into blocks under `blocks` with the reference
/// `promtool tsdb create-blocks-from openmetrics`, then ships them into the bucket with
/// `orrery tools bucket upload-blocks` and the external label `label` (`k="v"`).
pub fn promtool_blocks_uploaded(openmetrics: &Path, blocks: &Path, objstore: &str, label: &str) {
    let out = Command::new(promtool_bin())
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(openmetrics)
        .arg(blocks)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(orrery_bin())
        .args(["tools", "bucket", &format!("--objstore.config={objstore}")])
        .args(["upload-blocks", "--path"])
        .arg(blocks)
        .arg(format!("--label={label}"))
        .output()
        .expect("run orrery tools bucket upload-blocks");
    assert!(
        out.status.success(),
        "upload-blocks: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

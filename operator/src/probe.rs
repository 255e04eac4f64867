//! Plain-HTTP calls the operator makes to workloads: asking a querier for the age of
//! a cluster's newest sample, and asking a Prometheus to reload its configuration.
//! Behind a trait so controller tests can answer them without a network.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A boxed future (object-safe async trait methods without extra crates).
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// At most this much of an error answer's body is kept: it ends up in a condition
/// message, and a large error page must not push the status past etcd's limits.
pub const MAX_ERROR_BODY: usize = 256;

/// The first [`MAX_ERROR_BODY`] bytes of `body` (on a char boundary), marked when cut.
pub fn truncate_body(body: &str) -> String {
    if body.len() <= MAX_ERROR_BODY {
        return body.to_string();
    }
    let mut end = MAX_ERROR_BODY;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &body[..end], body.len())
}

/// Errors of a probe call.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("unsupported URL {0:?} (only http://host:port/path)")]
    Url(String),
    #[error("{url}: {source}")]
    Io { url: String, source: std::io::Error },
    #[error("{url}: timed out after {secs}s")]
    Timeout { url: String, secs: u64 },
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url}: unexpected answer: {detail}")]
    Answer { url: String, detail: String },
}

/// What the GlobalView controller asks of workloads over HTTP.
pub trait Probe: Send + Sync {
    /// Seconds since the newest sample of `cluster`, from a querier at `base_url`
    /// (`Ok(None)` when the querier has no such series).
    fn last_sample_age<'a>(
        &'a self,
        base_url: &'a str,
        cluster: &'a str,
    ) -> BoxFut<'a, Result<Option<f64>, ProbeError>>;
    /// POSTs a Prometheus `/-/reload` URL.
    fn reload<'a>(&'a self, url: &'a str) -> BoxFut<'a, Result<(), ProbeError>>;
    /// The configuration a Prometheus has loaded (`data.yaml` of
    /// `/api/v1/status/config`), addressed by its `/-/reload` URL.
    fn loaded_config<'a>(&'a self, reload_url: &'a str) -> BoxFut<'a, Result<String, ProbeError>>;
}

/// The `/api/v1/status/config` URL of the Prometheus whose reload URL is `reload_url`.
pub fn config_url(reload_url: &str) -> String {
    let base = reload_url
        .strip_suffix("/-/reload")
        .unwrap_or(reload_url)
        .trim_end_matches('/');
    format!("{base}/api/v1/status/config")
}

/// Reloads after this long again when the loaded configuration does not show the edit.
pub const RELOAD_FOLLOW_INTERVAL: Duration = Duration::from_secs(10);
/// Gives up after this many reloads: 18 × 10 s = 3 min, past the kubelet's sync period
/// plus its ConfigMap cache delay (about 60–90 s with defaults).
pub const RELOAD_FOLLOW_ATTEMPTS: u32 = 18;

/// Whether the remote_write list of a loaded Prometheus configuration names any of
/// `names`.
pub fn config_names_any(yaml_text: &str, names: &[String]) -> Result<bool, String> {
    let doc = crate::yaml::parse(yaml_text).map_err(|e| e.to_string())?;
    Ok(match doc.get("remote_write") {
        Some(crate::yaml::Yaml::Seq(list)) => list.iter().any(|e| {
            e.get("name")
                .and_then(crate::yaml::Yaml::as_str)
                .is_some_and(|n| names.iter().any(|x| x == n))
        }),
        _ => false,
    })
}

/// Reloads a Prometheus until the configuration it has loaded shows our edit (our entry
/// present, or none of `names` present after a removal), at most `attempts` times
/// `interval` apart. A mounted ConfigMap reaches the pod only after the kubelet's sync
/// (a minute or more), so a single reload right after the edit usually reloads the old
/// file. Returns whether the change was seen, and how many reloads it took. A
/// Prometheus whose status API does not answer is reloaded `attempts` times.
pub async fn reload_until_loaded(
    probe: &dyn Probe,
    reload_url: &str,
    names: &[String],
    want_present: bool,
    attempts: u32,
    interval: Duration,
) -> (bool, u32) {
    for n in 1..=attempts {
        if n > 1 {
            tokio::time::sleep(interval).await;
        }
        if let Err(e) = probe.reload(reload_url).await {
            tracing::debug!(url = reload_url, error = %e, "reload failed");
            continue;
        }
        match probe.loaded_config(reload_url).await {
            Ok(text) => match config_names_any(&text, names) {
                Ok(present) if present == want_present => return (true, n),
                Ok(_) => {}
                Err(e) => tracing::debug!(url = reload_url, error = %e, "loaded config unreadable"),
            },
            Err(e) => tracing::debug!(url = reload_url, error = %e, "loaded config not available"),
        }
    }
    (false, attempts)
}

/// The real implementation: HTTP/1.1 over TCP.
#[derive(Debug, Clone)]
pub struct HttpProbe {
    pub timeout: Duration,
}

impl Default for HttpProbe {
    fn default() -> Self {
        HttpProbe {
            timeout: Duration::from_secs(10),
        }
    }
}

impl Probe for HttpProbe {
    fn last_sample_age<'a>(
        &'a self,
        base_url: &'a str,
        cluster: &'a str,
    ) -> BoxFut<'a, Result<Option<f64>, ProbeError>> {
        Box::pin(async move {
            let q = crate::query::last_sample_age_query(cluster);
            let url = format!(
                "{}/api/v1/query?query={}",
                base_url.trim_end_matches('/'),
                percent_encode(&q)
            );
            let (status, body) = request(&url, "GET", self.timeout).await?;
            if status != 200 {
                return Err(ProbeError::Status {
                    url,
                    status,
                    body: truncate_body(&body),
                });
            }
            parse_scalar_result(&body).map_err(|detail| ProbeError::Answer { url, detail })
        })
    }

    fn reload<'a>(&'a self, url: &'a str) -> BoxFut<'a, Result<(), ProbeError>> {
        Box::pin(async move {
            let (status, body) = request(url, "POST", self.timeout).await?;
            if status / 100 != 2 {
                return Err(ProbeError::Status {
                    url: url.to_string(),
                    status,
                    body: truncate_body(&body),
                });
            }
            Ok(())
        })
    }

    fn loaded_config<'a>(&'a self, reload_url: &'a str) -> BoxFut<'a, Result<String, ProbeError>> {
        Box::pin(async move {
            let url = config_url(reload_url);
            let (status, body) = request(&url, "GET", self.timeout).await?;
            if status != 200 {
                return Err(ProbeError::Status {
                    url,
                    status,
                    body: truncate_body(&body),
                });
            }
            parse_config_answer(&body).map_err(|detail| ProbeError::Answer { url, detail })
        })
    }
}

/// `data.yaml` of a Prometheus `/api/v1/status/config` answer.
pub fn parse_config_answer(body: &str) -> Result<String, String> {
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    v.pointer("/data/yaml")
        .and_then(|y| y.as_str())
        .map(str::to_string)
        .ok_or_else(|| "no data.yaml in the answer".to_string())
}

/// Extracts the single value of a Prometheus instant-query answer
/// (`resultType` vector or scalar); `None` for an empty vector.
pub fn parse_scalar_result(body: &str) -> Result<Option<f64>, String> {
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    if v.get("status").and_then(|s| s.as_str()) != Some("success") {
        return Err(format!("status is not success: {body}"));
    }
    let data = v.get("data").ok_or("no data")?;
    let pair = match data.get("resultType").and_then(|t| t.as_str()) {
        Some("vector") => match data.get("result").and_then(|r| r.as_array()) {
            Some(r) if r.is_empty() => return Ok(None),
            Some(r) => r[0].get("value").cloned(),
            None => None,
        },
        Some("scalar") => data.get("result").cloned(),
        other => return Err(format!("unexpected resultType {other:?}")),
    };
    let s = pair
        .as_ref()
        .and_then(|p| p.get(1))
        .and_then(|x| x.as_str())
        .ok_or("no [time, value] pair")?;
    s.parse::<f64>()
        .map(Some)
        .map_err(|e| format!("bad value {s:?}: {e}"))
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Splits `http://host:port/path?q` into (`host:port`, `/path?q`).
pub fn split_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return None;
    }
    let authority = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Some((authority, path.to_string()))
}

/// Maximum response body read.
const MAX_BODY: usize = 1 << 20;

async fn request(url: &str, method: &str, timeout: Duration) -> Result<(u16, String), ProbeError> {
    let (authority, path) = split_url(url).ok_or_else(|| ProbeError::Url(url.to_string()))?;
    let io = |source| ProbeError::Io {
        url: url.to_string(),
        source,
    };
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(&authority)
            .await
            .map_err(io)?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: 0\r\nUser-Agent: orrery-operator\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.map_err(io)?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            let n = s.read(&mut chunk).await.map_err(io)?;
            if n == 0 || buf.len() > MAX_BODY {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, ProbeError>(buf)
    };
    let buf = tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ProbeError::Timeout {
            url: url.to_string(),
            secs: timeout.as_secs(),
        })??;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| ProbeError::Answer {
            url: url.to_string(),
            detail: "no HTTP status line".to_string(),
        })?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_answers() {
        assert_eq!(
            parse_scalar_result(
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000.1,"4.5"]}]}}"#
            ),
            Ok(Some(4.5))
        );
        assert_eq!(
            parse_scalar_result(
                r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#
            ),
            Ok(None)
        );
        assert_eq!(
            parse_scalar_result(
                r#"{"status":"success","data":{"resultType":"scalar","result":[1,"2"]}}"#
            ),
            Ok(Some(2.0))
        );
        assert!(parse_scalar_result(r#"{"status":"error"}"#).is_err());
        assert!(parse_scalar_result("nope").is_err());
    }

    #[test]
    fn urls() {
        assert_eq!(
            split_url("http://a.b.svc:9090/-/reload"),
            Some(("a.b.svc:9090".into(), "/-/reload".into()))
        );
        assert_eq!(
            split_url("http://host"),
            Some(("host:80".into(), "/".into()))
        );
        assert_eq!(split_url("https://x/"), None);
        assert_eq!(percent_encode("a b{\"}"), "a%20b%7B%22%7D");
    }

    #[tokio::test]
    async fn real_http_round_trip() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"status\":\"success\",\"data\":{\"resultType\":\"vector\",\"result\":[{\"metric\":{},\"value\":[1,\"7\"]}]}}").await.unwrap();
            req
        });
        let age = HttpProbe::default()
            .last_sample_age(&format!("http://{addr}"), "batcave")
            .await
            .unwrap();
        assert_eq!(age, Some(7.0));
        let req = server.await.unwrap();
        assert!(req.starts_with("GET /api/v1/query?query=time%28%29%20-%20max%28timestamp%28up%7Bcluster%3D%22batcave%22%7D%29%29 HTTP/1.1"), "{req}");
    }

    /// D20: a huge error page does not end up whole in a condition message.
    #[test]
    fn error_bodies_are_truncated() {
        let page = "é".repeat(300_000);
        let e = ProbeError::Status {
            url: "http://p/-/reload".into(),
            status: 500,
            body: truncate_body(&page),
        };
        assert!(
            e.to_string().len() < MAX_ERROR_BODY + 100,
            "{}",
            e.to_string().len()
        );
        assert_eq!(truncate_body("short"), "short");
    }

    /// A Prometheus that reloads the file the kubelet has synced so far: the first
    /// `stale` reloads still load the old configuration.
    struct SlowSync {
        stale: u32,
        reloads: std::sync::Mutex<u32>,
    }

    impl Probe for SlowSync {
        fn last_sample_age<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
        ) -> BoxFut<'a, Result<Option<f64>, ProbeError>> {
            Box::pin(async { Ok(None) })
        }
        fn reload<'a>(&'a self, _: &'a str) -> BoxFut<'a, Result<(), ProbeError>> {
            *self.reloads.lock().unwrap() += 1;
            Box::pin(async { Ok(()) })
        }
        fn loaded_config<'a>(&'a self, _: &'a str) -> BoxFut<'a, Result<String, ProbeError>> {
            let n = *self.reloads.lock().unwrap();
            let text = if n <= self.stale {
                "global: {}\nremote_write:\n- name: orrery-ns.gv.c\n  url: http://r/w\n"
            } else {
                "global: {}\n"
            };
            Box::pin(async move { Ok(text.to_string()) })
        }
    }

    /// D9: reloads repeat across the kubelet's sync delay until the loaded
    /// configuration shows the removal, and stop there; a change that never shows
    /// stops at the bound.
    #[tokio::test(start_paused = true)]
    async fn reloads_until_the_mounted_file_shows_the_change() {
        let names = ["orrery-ns.gv.c".to_string()];
        let p = SlowSync {
            stale: 4,
            reloads: Default::default(),
        };
        let start = tokio::time::Instant::now();
        let (seen, n) = reload_until_loaded(
            &p,
            "http://p/-/reload",
            &names,
            false,
            18,
            RELOAD_FOLLOW_INTERVAL,
        )
        .await;
        assert!(seen);
        assert_eq!(n, 5);
        assert_eq!(*p.reloads.lock().unwrap(), 5);
        assert_eq!(start.elapsed(), RELOAD_FOLLOW_INTERVAL * 4);
        let never = SlowSync {
            stale: u32::MAX,
            reloads: Default::default(),
        };
        let (seen, n) = reload_until_loaded(
            &never,
            "http://p/-/reload",
            &names,
            false,
            3,
            RELOAD_FOLLOW_INTERVAL,
        )
        .await;
        assert!(!seen);
        assert_eq!((n, *never.reloads.lock().unwrap()), (3, 3));
        // Present on the first look: one reload.
        let now = SlowSync {
            stale: u32::MAX,
            reloads: Default::default(),
        };
        assert_eq!(
            reload_until_loaded(
                &now,
                "http://p/-/reload",
                &names,
                true,
                3,
                RELOAD_FOLLOW_INTERVAL
            )
            .await,
            (true, 1)
        );
    }

    #[test]
    fn config_answers() {
        assert_eq!(
            config_url("http://p.ns.svc:9090/-/reload"),
            "http://p.ns.svc:9090/api/v1/status/config"
        );
        let body =
            r#"{"status":"success","data":{"yaml":"remote_write:\n- name: a\n  url: http://x\n"}}"#;
        let y = parse_config_answer(body).unwrap();
        assert_eq!(config_names_any(&y, &["a".into()]), Ok(true));
        assert_eq!(config_names_any(&y, &["b".into()]), Ok(false));
        assert_eq!(config_names_any("global: {}\n", &["a".into()]), Ok(false));
        assert!(parse_config_answer("{}").is_err());
    }
}

//! The HTTP client of the Prometheus the sidecar stands next to: its config (external
//! labels), flags, lowest timestamp, label and series APIs, and remote read.
//!
//! Every answer is read with a byte bound, and every failure names the API asked and what
//! Prometheus said, so a gRPC client of the sidecar sees why, not a bare "internal".

use std::collections::{BTreeMap, HashMap};

use bytes::{Bytes, BytesMut};
use prost::Message;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use storeapi::wire::prometheus::{LabelMatcher, Query, ReadRequest, label_matcher, read_request};
use storeapi::{Label, Labels, MatchOp, Matcher};

/// Largest JSON (or `/metrics` text) answer read from Prometheus.
pub const MAX_JSON_BODY: usize = 256 << 20;

/// Prometheus's content type for a streamed remote-read answer.
pub const STREAMED_CONTENT_TYPE: &str =
    "application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse";

/// Earliest / latest times passed on to Prometheus's HTTP APIs as `start`/`end`; outside
/// them the parameter is left out (Prometheus then uses its own ends of time, which a
/// seconds value this large would overflow).
const MIN_API_MS: i64 = -62_135_596_800_000; // 0001-01-01
const MAX_API_MS: i64 = 253_402_300_799_000; // 9999-12-31

/// Why a request to Prometheus failed.
#[derive(Debug, thiserror::Error)]
pub enum PromError {
    #[error("invalid --prometheus.url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("requesting {what} from Prometheus at {url}: {reason}")]
    Transport {
        what: &'static str,
        url: String,
        reason: String,
    },
    #[error("Prometheus answered {what} with HTTP {status}: {body}")]
    Status {
        what: &'static str,
        status: u16,
        body: String,
    },
    #[error("Prometheus's answer to {what} exceeds the {limit}-byte limit")]
    TooLarge { what: &'static str, limit: usize },
    #[error("Prometheus's answer to {what} is malformed: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("Prometheus refused {what}: {error_type}: {error}")]
    Api {
        what: &'static str,
        error_type: String,
        error: String,
    },
}

impl PromError {
    /// The gRPC status a StoreAPI client gets for this failure.
    pub fn to_status(&self) -> tonic::Status {
        match self {
            PromError::Transport { .. } => tonic::Status::unavailable(self.to_string()),
            PromError::Status { status, .. } if *status == 400 || *status == 422 => {
                tonic::Status::invalid_argument(self.to_string())
            }
            PromError::Status { status, .. } if *status == 429 || *status == 503 => {
                tonic::Status::unavailable(self.to_string())
            }
            PromError::Api { error_type, .. } if error_type == "bad_data" => {
                tonic::Status::invalid_argument(self.to_string())
            }
            PromError::TooLarge { .. } => tonic::Status::resource_exhausted(self.to_string()),
            _ => tonic::Status::internal(self.to_string()),
        }
    }
}

/// Prometheus's API envelope.
#[derive(Deserialize)]
struct Envelope<T> {
    status: String,
    data: Option<T>,
    #[serde(rename = "errorType", default)]
    error_type: String,
    #[serde(default)]
    error: String,
}

#[derive(Deserialize)]
struct ConfigData {
    yaml: String,
}

#[derive(Deserialize, Default)]
struct PromConfig {
    #[serde(default)]
    global: Option<GlobalConfig>,
}

#[derive(Deserialize, Default)]
struct GlobalConfig {
    #[serde(default)]
    external_labels: Option<BTreeMap<String, String>>,
}

/// External labels from Prometheus's config YAML (`global.external_labels`), sorted;
/// empty values are left out, as Prometheus does.
pub fn parse_external_labels(yaml: &str) -> Result<Labels, String> {
    let cfg: PromConfig = serde_saphyr::from_str(yaml).map_err(|e| e.to_string())?;
    let labels: Vec<Label> = cfg
        .global
        .and_then(|g| g.external_labels)
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(n, v)| Label::new(n, v))
        .collect();
    Labels::from_unsorted(labels).map_err(|e| e.to_string())
}

/// `prometheus_tsdb_lowest_timestamp_seconds` from a `/metrics` text page, in ms;
/// `i64::MIN` while the TSDB holds nothing (Prometheus reports `MaxInt64` then), so a
/// querier never prunes this Prometheus away on time.
pub fn parse_lowest_timestamp(text: &str) -> Result<i64, String> {
    const NAME: &str = "prometheus_tsdb_lowest_timestamp_seconds";
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(NAME) else {
            continue;
        };
        // The name must end here: not a longer metric name sharing the prefix.
        let rest = match rest.strip_prefix("{}") {
            Some(r) => r,
            None => rest,
        };
        if !rest.starts_with(' ') {
            continue;
        }
        let v: f64 = rest
            .split_whitespace()
            .next()
            .ok_or_else(|| format!("{NAME} has no value"))?
            .parse()
            .map_err(|e| format!("{NAME}: {e}"))?;
        let ms = v * 1000.0;
        if !ms.is_finite() || ms >= i64::MAX as f64 || ms <= i64::MIN as f64 {
            return Ok(i64::MIN);
        }
        return Ok(ms as i64);
    }
    Err(format!("{NAME} not found in Prometheus's /metrics"))
}

/// A PromQL selector for `match[]`: `{name="value",…}`, names quoted when they are not
/// legacy names (Prometheus 3 syntax), values escaped as PromQL (JSON) strings.
pub fn selector(matchers: &[Matcher]) -> String {
    let mut s = String::from("{");
    for (i, m) in matchers.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        if storeapi::labels::is_valid_label_name(&m.name) {
            s.push_str(&m.name);
        } else {
            s.push_str(&json_string(&m.name));
        }
        s.push_str(m.op.as_str());
        s.push_str(&json_string(&m.value));
    }
    s.push('}');
    s
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

/// A time in ms as the seconds value Prometheus's APIs take (`1700000000.123`); `None`
/// outside the range Prometheus can represent.
pub fn api_time(ms: i64) -> Option<String> {
    if !(MIN_API_MS..=MAX_API_MS).contains(&ms) {
        return None;
    }
    let sign = if ms < 0 { "-" } else { "" };
    let a = ms.unsigned_abs();
    Some(format!("{sign}{}.{:03}", a / 1000, a % 1000))
}

/// The remote-read request for one query, accepting only streamed XOR chunks.
pub fn read_request(matchers: &[Matcher], start_ms: i64, end_ms: i64) -> ReadRequest {
    ReadRequest {
        queries: vec![Query {
            start_timestamp_ms: start_ms,
            end_timestamp_ms: end_ms,
            matchers: matchers
                .iter()
                .map(|m| LabelMatcher {
                    r#type: match m.op {
                        MatchOp::Equal => label_matcher::Type::Eq,
                        MatchOp::NotEqual => label_matcher::Type::Neq,
                        MatchOp::RegexMatch => label_matcher::Type::Re,
                        MatchOp::RegexNoMatch => label_matcher::Type::Nre,
                    } as i32,
                    name: m.name.clone(),
                    value: m.value.clone(),
                })
                .collect(),
            hints: None,
        }],
        accepted_response_types: vec![read_request::ResponseType::StreamedXorChunks as i32],
    }
}

/// Client of one Prometheus.
#[derive(Clone, Debug)]
pub struct PromClient {
    http: reqwest::Client,
    base: reqwest::Url,
}

impl PromClient {
    pub fn new(url: &str) -> Result<PromClient, PromError> {
        let bad = |reason: String| PromError::Url {
            url: url.to_string(),
            reason,
        };
        let mut base = reqwest::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(bad("scheme must be http or https".into()));
        }
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let http = reqwest::Client::builder()
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Ok(PromClient { http, base })
    }

    pub fn base(&self) -> &reqwest::Url {
        &self.base
    }

    fn url(&self, path: &str) -> Result<reqwest::Url, PromError> {
        self.base.join(path).map_err(|e| PromError::Url {
            url: self.base.to_string(),
            reason: e.to_string(),
        })
    }

    fn transport(&self, what: &'static str, e: reqwest::Error) -> PromError {
        PromError::Transport {
            what,
            url: self.base.to_string(),
            reason: error_chain(&e),
        }
    }

    /// Sends `req`, refusing a non-2xx answer with its (bounded) body as the reason.
    async fn send(
        &self,
        what: &'static str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, PromError> {
        let resp = req.send().await.map_err(|e| self.transport(what, e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = read_bounded(resp, what, 4096, true)
            .await
            .unwrap_or_default();
        // A JSON API error carries its reason in `error`.
        let text = serde_json::from_slice::<Envelope<serde_json::Value>>(&body)
            .ok()
            .filter(|e| !e.error.is_empty())
            .map(|e| format!("{}: {}", e.error_type, e.error))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        Err(PromError::Status {
            what,
            status: status.as_u16(),
            body: text,
        })
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        what: &'static str,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, PromError> {
        let mut url = self.url(path)?;
        with_query(&mut url, query);
        let resp = self.send(what, self.http.get(url)).await?;
        let body = read_bounded(resp, what, MAX_JSON_BODY, false).await?;
        let env: Envelope<T> = serde_json::from_slice(&body).map_err(|e| PromError::Malformed {
            what,
            reason: e.to_string(),
        })?;
        if env.status != "success" {
            return Err(PromError::Api {
                what,
                error_type: env.error_type,
                error: env.error,
            });
        }
        env.data.ok_or_else(|| PromError::Malformed {
            what,
            reason: "no data".into(),
        })
    }

    /// `global.external_labels` of the running config.
    pub async fn external_labels(&self) -> Result<Labels, PromError> {
        const WHAT: &str = "/api/v1/status/config";
        let d: ConfigData = self.get_json(WHAT, "api/v1/status/config", &[]).await?;
        parse_external_labels(&d.yaml).map_err(|reason| PromError::Malformed { what: WHAT, reason })
    }

    /// The command-line flags Prometheus runs with.
    pub async fn flags(&self) -> Result<HashMap<String, String>, PromError> {
        self.get_json("/api/v1/status/flags", "api/v1/status/flags", &[])
            .await
    }

    /// The oldest sample time Prometheus holds (ms), `i64::MIN` when it holds none.
    pub async fn lowest_timestamp(&self) -> Result<i64, PromError> {
        const WHAT: &str = "/metrics";
        let url = self.url("metrics")?;
        let resp = self
            .send(
                WHAT,
                self.http
                    .get(url)
                    .header(reqwest::header::ACCEPT, "text/plain;version=0.0.4"),
            )
            .await?;
        let body = read_bounded(resp, WHAT, MAX_JSON_BODY, false).await?;
        parse_lowest_timestamp(&String::from_utf8_lossy(&body))
            .map_err(|reason| PromError::Malformed { what: WHAT, reason })
    }

    fn api_params(matchers: &[Matcher], start: i64, end: i64, limit: i64) -> Vec<(&str, String)> {
        let mut q = Vec::new();
        if !matchers.is_empty() {
            q.push(("match[]", selector(matchers)));
        }
        if let Some(s) = api_time(start) {
            q.push(("start", s));
        }
        if let Some(e) = api_time(end) {
            q.push(("end", e));
        }
        if limit > 0 {
            q.push(("limit", limit.to_string()));
        }
        q
    }

    /// `/api/v1/labels`.
    pub async fn label_names(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        limit: i64,
    ) -> Result<Vec<String>, PromError> {
        let q = Self::api_params(matchers, start, end, limit);
        let v: Option<Vec<String>> = self.get_json("/api/v1/labels", "api/v1/labels", &q).await?;
        Ok(v.unwrap_or_default())
    }

    /// `/api/v1/label/<name>/values`.
    pub async fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        limit: i64,
    ) -> Result<Vec<String>, PromError> {
        const WHAT: &str = "/api/v1/label/<name>/values";
        let q = Self::api_params(matchers, start, end, limit);
        let mut url = self.url("api/v1/label/")?;
        url.path_segments_mut()
            .map_err(|_| PromError::Url {
                url: self.base.to_string(),
                reason: "cannot be a base".into(),
            })?
            .pop_if_empty()
            .push(name)
            .push("values");
        with_query(&mut url, &q);
        let resp = self.send(WHAT, self.http.get(url)).await?;
        let body = read_bounded(resp, WHAT, MAX_JSON_BODY, false).await?;
        let env: Envelope<Option<Vec<String>>> =
            serde_json::from_slice(&body).map_err(|e| PromError::Malformed {
                what: WHAT,
                reason: e.to_string(),
            })?;
        if env.status != "success" {
            return Err(PromError::Api {
                what: WHAT,
                error_type: env.error_type,
                error: env.error,
            });
        }
        Ok(env.data.flatten().unwrap_or_default())
    }

    /// `/api/v1/series`: label sets only.
    pub async fn series(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        limit: i64,
    ) -> Result<Vec<BTreeMap<String, String>>, PromError> {
        let q = Self::api_params(matchers, start, end, limit);
        let v: Option<Vec<BTreeMap<String, String>>> =
            self.get_json("/api/v1/series", "api/v1/series", &q).await?;
        Ok(v.unwrap_or_default())
    }

    /// Starts a streamed remote read; the answer's body is a sequence of
    /// `ChunkedReadResponse` frames (see [`crate::chunked`]).
    pub async fn remote_read(&self, req: &ReadRequest) -> Result<reqwest::Response, PromError> {
        const WHAT: &str = "/api/v1/read";
        let body = storeapi::wire::remote_write::snappy_compress(&req.encode_to_vec());
        let url = self.url("api/v1/read")?;
        let resp = self
            .send(
                WHAT,
                self.http
                    .post(url)
                    .header(reqwest::header::CONTENT_ENCODING, "snappy")
                    .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
                    .header("X-Prometheus-Remote-Read-Version", "0.1.0")
                    .body(body),
            )
            .await?;
        let ct = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct.starts_with(STREAMED_CONTENT_TYPE) {
            return Err(PromError::Malformed {
                what: WHAT,
                reason: format!(
                    "content type {ct:?}, want {STREAMED_CONTENT_TYPE:?} (a Prometheus older than 2.13 cannot stream chunks)"
                ),
            });
        }
        Ok(resp)
    }
}

fn with_query(url: &mut reqwest::Url, query: &[(&str, String)]) {
    if query.is_empty() {
        return;
    }
    let mut q = url.query_pairs_mut();
    for (k, v) in query {
        q.append_pair(k, v);
    }
}

/// A reqwest error with its causes (reqwest's own text is often just "error sending
/// request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Reads a whole body, at most `limit` bytes (`truncate`: keep the first `limit` bytes
/// instead of failing; for error texts).
async fn read_bounded(
    mut resp: reqwest::Response,
    what: &'static str,
    limit: usize,
    truncate: bool,
) -> Result<Bytes, PromError> {
    let mut buf = BytesMut::new();
    loop {
        let chunk = resp.chunk().await.map_err(|e| PromError::Transport {
            what,
            url: resp.url().to_string(),
            reason: error_chain(&e),
        })?;
        let Some(chunk) = chunk else { break };
        if buf.len() + chunk.len() > limit {
            if truncate {
                let room = limit - buf.len();
                buf.extend_from_slice(&chunk[..room]);
                break;
            }
            return Err(PromError::TooLarge { what, limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_labels_from_config_yaml() {
        let yaml = "global:\n  scrape_interval: 1m\n  external_labels:\n    replica: b\n    cluster: eu\n    empty: \"\"\nscrape_configs:\n- job_name: x\n  static_configs:\n  - targets: [a:1]\n";
        let l = parse_external_labels(yaml).unwrap();
        assert_eq!(
            l,
            Labels::from_pairs([("cluster", "eu"), ("replica", "b")]).unwrap()
        );
        assert!(
            parse_external_labels("global:\n  scrape_interval: 1m\n")
                .unwrap()
                .is_empty()
        );
        assert!(parse_external_labels("global: [").is_err());
    }

    #[test]
    fn lowest_timestamp_from_metrics_text() {
        let t = "# HELP prometheus_tsdb_lowest_timestamp_seconds Lowest\n\
                 prometheus_tsdb_lowest_timestamp_seconds_other 5\n\
                 prometheus_tsdb_lowest_timestamp_seconds 1.7000000001e+09\n";
        assert_eq!(parse_lowest_timestamp(t), Ok(1_700_000_000_100));
        let empty = "prometheus_tsdb_lowest_timestamp_seconds 9.223372036854776e+15\n";
        // MaxInt64 ms as seconds: nothing stored yet.
        assert_eq!(parse_lowest_timestamp(empty), Ok(i64::MIN));
        assert!(parse_lowest_timestamp("up 1\n").is_err());
    }

    #[test]
    fn selectors_quote_and_escape() {
        let ms = vec![
            Matcher::new(MatchOp::Equal, "__name__", "up").unwrap(),
            Matcher::new(MatchOp::RegexMatch, "job", "a\"b|c\\d").unwrap(),
            Matcher::new(MatchOp::NotEqual, "service.name", "x\ny").unwrap(),
        ];
        assert_eq!(
            selector(&ms),
            r#"{__name__="up",job=~"a\"b|c\\d","service.name"!="x\ny"}"#
        );
    }

    #[test]
    fn api_times() {
        assert_eq!(
            api_time(1_700_000_000_123).as_deref(),
            Some("1700000000.123")
        );
        assert_eq!(api_time(-1_500).as_deref(), Some("-1.500"));
        assert_eq!(api_time(i64::MIN), None);
        assert_eq!(api_time(i64::MAX), None);
    }

    #[test]
    fn status_codes_map_to_grpc_codes() {
        let st = |status| PromError::Status {
            what: "x",
            status,
            body: "b".into(),
        };
        assert_eq!(st(400).to_status().code(), tonic::Code::InvalidArgument);
        assert_eq!(st(503).to_status().code(), tonic::Code::Unavailable);
        assert_eq!(st(500).to_status().code(), tonic::Code::Internal);
        assert!(st(500).to_status().message().contains("HTTP 500"));
    }
}

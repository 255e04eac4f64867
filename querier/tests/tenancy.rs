//! In-process: `--query.enforce-tenancy` against a store that ignores `thanos-tenant`
//! (as Thanos's stores do) and holds two tenants' series: the querier alone must keep
//! tenant B's data from tenant A, and every call it sends carries the tenant matcher.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use storeapi::wire::info::{
    InfoRequest, InfoResponse, StoreInfo,
    info_server::{Info, InfoServer},
};
use storeapi::wire::thanos::{
    self, LabelMatcher, LabelNamesRequest, LabelNamesResponse, LabelValuesRequest,
    LabelValuesResponse, SeriesRequest, SeriesResponse, series_response,
    store_server::{Store, StoreServer},
};
use storeapi::{Labels, Sample};
use tonic::{Request, Response, Status};

/// Two tenants' series in one store; answers by matchers only. Records every call's
/// matchers.
#[derive(Clone)]
struct Leaky {
    seen: Arc<Mutex<Vec<Vec<LabelMatcher>>>>,
}

fn all_series() -> Vec<Labels> {
    [
        [("__name__", "up"), ("tenant_id", "team-a"), ("job", "a")],
        [("__name__", "up"), ("tenant_id", "team-b"), ("job", "b")],
        [
            ("__name__", "only_b"),
            ("tenant_id", "team-b"),
            ("b_label", "x"),
        ],
    ]
    .iter()
    .map(|p| Labels::from_pairs(p.iter().copied()).unwrap())
    .collect()
}

impl Leaky {
    fn matching(&self, ms: &[LabelMatcher]) -> Vec<Labels> {
        self.seen.lock().unwrap().push(ms.to_vec());
        let ms = storeapi::wire::matchers_from_wire(ms).unwrap();
        all_series()
            .into_iter()
            .filter(|l| ms.iter().all(|m| m.matches(l.get(&m.name).unwrap_or(""))))
            .collect()
    }
}

type S = Pin<Box<dyn tokio_stream::Stream<Item = Result<SeriesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Store for Leaky {
    type SeriesStream = S;
    async fn series(&self, r: Request<SeriesRequest>) -> Result<Response<S>, Status> {
        let r = r.into_inner();
        let samples: Vec<Sample> = (0..60)
            .map(|i| Sample {
                t: 1_000_000 + i * 1000,
                v: 1.0,
            })
            .collect();
        let series = self
            .matching(&r.matchers)
            .iter()
            .map(|l| thanos::Series {
                labels: storeapi::wire::labels_to_wire(l),
                chunks: querier::grpc::encode_chunks(&samples).unwrap(),
            })
            .collect();
        let frame = SeriesResponse {
            result: Some(series_response::Result::Batch(thanos::SeriesBatch {
                series,
            })),
        };
        Ok(Response::new(Box::pin(tokio_stream::iter(vec![Ok(frame)]))))
    }
    async fn label_names(
        &self,
        r: Request<LabelNamesRequest>,
    ) -> Result<Response<LabelNamesResponse>, Status> {
        let mut names: Vec<String> = self
            .matching(&r.into_inner().matchers)
            .iter()
            .flat_map(|l| l.iter().map(|l| l.name.to_string()).collect::<Vec<_>>())
            .collect();
        names.sort();
        names.dedup();
        Ok(Response::new(LabelNamesResponse {
            names,
            ..Default::default()
        }))
    }
    async fn label_values(
        &self,
        r: Request<LabelValuesRequest>,
    ) -> Result<Response<LabelValuesResponse>, Status> {
        let r = r.into_inner();
        let mut values: Vec<String> = self
            .matching(&r.matchers)
            .iter()
            .filter_map(|l| l.get(&r.label).map(str::to_string))
            .collect();
        values.sort();
        values.dedup();
        Ok(Response::new(LabelValuesResponse {
            values,
            ..Default::default()
        }))
    }
}

#[tonic::async_trait]
impl Info for Leaky {
    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Ok(Response::new(InfoResponse {
            component_type: "store".into(),
            store: Some(StoreInfo {
                min_time: 0,
                max_time: i64::MAX,
                ..Default::default()
            }),
            ..Default::default()
        }))
    }
}

async fn get(addr: &str, path: &str, tenant: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nTHANOS-TENANT: {tenant}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let t = String::from_utf8_lossy(&buf).to_string();
    let code = t.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = t.split_once("\r\n\r\n").unwrap().1.to_string();
    (code, body)
}

/// The leaky store and a querier over it with `--query.enforce-tenancy` and `conflict`:
/// (querier HTTP address, the store).
async fn start(conflict: querier::tenancy::ConflictMode) -> (String, Leaky) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let store = l.local_addr().unwrap().to_string();
    let leaky = Leaky {
        seen: Arc::default(),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(StoreServer::new(leaky.clone()))
            .add_service(InfoServer::new(leaky.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    let args = querier::QueryArgs {
        enforce_tenancy: true,
        tenant_matcher_conflict: conflict,
        ..querier::QueryArgs::with_endpoints("127.0.0.1:0", vec![store])
    };
    let state = querier::build_state(&args).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = l.local_addr().unwrap().to_string();
    tokio::spawn(querier::serve(state, l, args, std::future::pending()));
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(&http).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (http, leaky)
}

fn q(e: &str) -> String {
    format!(
        "/api/v1/query?time=1030&query={}",
        e.replace('{', "%7B")
            .replace('}', "%7D")
            .replace('"', "%22")
            .replace(' ', "%20")
            .replace('+', "%2B")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforcement_confines_a_store_that_ignores_the_tenant() {
    let (http, leaky) = start(querier::tenancy::ConflictMode::Error).await;
    let paths = [
        q("{__name__=~\".+\"}"),
        q("count({job=\"b\"})"),
        q("only_b or on() vector(1)"),
        q("max_over_time(only_b[1m:10s])"),
        q("only_b @ 1030"),
        "/api/v1/series?match[]=%7B__name__%3D~%22.%2B%22%7D".into(),
        "/api/v1/labels".into(),
        "/api/v1/label/__name__/values".into(),
        "/api/v1/label/tenant_id/values".into(),
        "/api/v1/label/job/values".into(),
    ];
    for p in &paths {
        let (code, body) = get(&http, p, "team-a").await;
        assert_eq!(code, 200, "{p}: {body}");
        for leak in ["team-b", "only_b", "b_label", "\"b\""] {
            assert!(!body.contains(leak), "{p}: {leak} in {body}");
        }
    }
    let (_, body) = get(&http, &q("up"), "team-a").await;
    assert!(body.contains("\"job\":\"a\""), "A's own data: {body}");
    // The same store gives B its data: the confinement came from the querier.
    let (_, body) = get(&http, "/api/v1/label/__name__/values", "team-b").await;
    assert!(body.contains("only_b"), "{body}");
    let seen = leaky.seen.lock().unwrap();
    assert!(seen.len() >= paths.len(), "{} calls", seen.len());
    for ms in seen.iter() {
        assert!(
            ms.iter().any(|m| m.name == "tenant_id"
                && (m.value == "team-a" || m.value == "team-b")
                && m.r#type == thanos::label_matcher::Type::Eq as i32),
            "a store call without the tenant matcher: {ms:?}"
        );
    }
}

/// `--query.tenant-matcher-conflict`: `error` refuses a matcher naming another tenant
/// (400); `replace` (Thanos's behaviour) answers with the caller's own data instead.
/// Either way, nothing of the other tenant comes back and every store call carries only
/// the caller's tenant matcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_tenant_matchers_error_or_are_replaced() {
    use querier::tenancy::ConflictMode;
    let asks_b = [
        q("up{tenant_id=\"team-b\"}"),
        q("up{tenant_id!=\"team-a\"}"),
        "/api/v1/series?match[]=up%7Btenant_id%3D%22team-b%22%7D".into(),
    ];
    let (http, _) = start(ConflictMode::Error).await;
    for p in &asks_b {
        let (code, body) = get(&http, p, "team-a").await;
        assert_eq!(code, 400, "{p}: {body}");
        assert!(body.contains("conflicting label matcher"), "{p}: {body}");
    }
    let (http, leaky) = start(ConflictMode::Replace).await;
    for p in &asks_b {
        let (code, body) = get(&http, p, "team-a").await;
        assert_eq!(code, 200, "{p}: {body}");
        assert!(
            !body.contains("team-b") && !body.contains("\"b\""),
            "{p}: {body}"
        );
        assert!(
            body.contains("\"job\":\"a\""),
            "{p}: the caller's own data: {body}"
        );
    }
    for ms in leaky.seen.lock().unwrap().iter() {
        let tenant: Vec<_> = ms.iter().filter(|m| m.name == "tenant_id").collect();
        assert!(
            tenant.len() == 1
                && tenant[0].value == "team-a"
                && tenant[0].r#type == thanos::label_matcher::Type::Eq as i32,
            "the store saw other tenant matchers than the caller's: {ms:?}"
        );
    }
}

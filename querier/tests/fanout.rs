//! In-process: two fake StoreAPI replicas (Info + Series) behind the querier's HTTP API.

use std::pin::Pin;
use std::time::Duration;

use storeapi::wire::info::{
    InfoRequest, InfoResponse, StoreInfo,
    info_server::{Info, InfoServer},
};
use storeapi::wire::thanos::{
    self, AggrChunk, LabelNamesRequest, LabelNamesResponse, LabelValuesRequest,
    LabelValuesResponse, SeriesRequest, SeriesResponse, series_response,
    store_server::{Store, StoreServer},
};
use storeapi::{Labels, Sample};
use tonic::{Request, Response, Status};

#[derive(Clone)]
struct Fake {
    replica: String,
    offset: i64,
}

type S = Pin<Box<dyn tokio_stream::Stream<Item = Result<SeriesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Store for Fake {
    type SeriesStream = S;
    async fn series(&self, r: Request<SeriesRequest>) -> Result<Response<S>, Status> {
        let r = r.into_inner();
        let mut labels = Labels::from_pairs([
            ("__name__", "up"),
            ("job", "p"),
            ("replica", self.replica.as_str()),
        ])
        .unwrap();
        for l in &r.without_replica_labels {
            labels.remove(l);
        }
        let samples: Vec<Sample> = (0..60)
            .map(|i| Sample {
                t: 1_000_000 + i * 1000 + self.offset,
                v: 1.0,
            })
            .collect();
        let chunks: Vec<AggrChunk> = querier::grpc::encode_chunks(&samples).unwrap();
        let frame = SeriesResponse {
            result: Some(series_response::Result::Batch(thanos::SeriesBatch {
                series: vec![thanos::Series {
                    labels: storeapi::wire::labels_to_wire(&labels),
                    chunks,
                }],
            })),
        };
        Ok(Response::new(Box::pin(tokio_stream::iter(vec![Ok(frame)]))))
    }
    async fn label_names(
        &self,
        _: Request<LabelNamesRequest>,
    ) -> Result<Response<LabelNamesResponse>, Status> {
        Ok(Response::new(LabelNamesResponse {
            names: vec!["__name__".into(), "job".into(), "replica".into()],
            ..Default::default()
        }))
    }
    async fn label_values(
        &self,
        _: Request<LabelValuesRequest>,
    ) -> Result<Response<LabelValuesResponse>, Status> {
        Ok(Response::new(LabelValuesResponse {
            values: vec!["up".into()],
            ..Default::default()
        }))
    }
}

#[tonic::async_trait]
impl Info for Fake {
    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Ok(Response::new(InfoResponse {
            label_sets: vec![thanos::ZLabelSet {
                labels: storeapi::wire::labels_to_wire(
                    &Labels::from_pairs([("replica", self.replica.as_str())]).unwrap(),
                ),
            }],
            component_type: "receive".into(),
            store: Some(StoreInfo {
                min_time: 0,
                max_time: i64::MAX,
                supports_without_replica_labels: true,
                ..Default::default()
            }),
            ..Default::default()
        }))
    }
}

async fn fake_store(replica: &str, offset: i64) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let f = Fake {
        replica: replica.into(),
        offset,
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(StoreServer::new(f.clone()))
            .add_service(InfoServer::new(f))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    addr
}

async fn get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let t = String::from_utf8_lossy(&buf).to_string();
    let code = t.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = t.split_once("\r\n\r\n").unwrap().1.to_string();
    (code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_deduplicate_through_http() {
    let a = fake_store("0", 0).await;
    let b = fake_store("1", 300).await;
    let args = querier::QueryArgs {
        replica_labels: vec!["replica".into()],
        grpc_address: String::new(),
        ..querier::QueryArgs::with_endpoints("127.0.0.1:0", vec![a.clone(), b.clone()])
    };
    let state = querier::build_state(&args).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = l.local_addr().unwrap().to_string();
    tokio::spawn(querier::serve(state, l, args, std::future::pending()));
    let mut ready = false;
    for _ in 0..100 {
        if let Ok(s) = tokio::net::TcpStream::connect(&http).await {
            drop(s);
            if get(&http, "/-/ready").await.0 == 200 {
                ready = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready);

    let (code, body) = get(&http, "/api/v1/query?query=up&time=1030").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body,
        r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"up","job":"p"},"value":[1030,"1"]}]}}"#
    );
    let (_, body) = get(&http, "/api/v1/query?query=up&time=1030&dedup=false").await;
    assert!(
        body.contains(r#""replica":"0""#) && body.contains(r#""replica":"1""#),
        "{body}"
    );
    let (_, body) = get(
        &http,
        "/api/v1/query_range?query=count_over_time(up[10s])&start=1020&end=1050&step=10",
    )
    .await;
    // Deduplicated: one sample per second (10 per 10s window), not 20.
    assert!(body.contains(r#"[1030,"10"]"#), "{body}");
    let (_, body) = get(&http, "/api/v1/stores").await;
    assert!(
        body.starts_with(r#"{"status":"success","data":{"receive":[{"name":""#),
        "{body}"
    );
    assert!(body.contains(r#""labelSets":[{"replica":"0"}]"#), "{body}");
    let (code, body) = get(
        &http,
        "/api/v1/query_range?query=up&start=0&end=100000&step=1",
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("exceeded maximum resolution of 11,000 points"),
        "{body}"
    );
    let (_, body) = get(&http, "/api/v1/labels").await;
    assert_eq!(body, r#"{"status":"success","data":["__name__","job"]}"#);
}

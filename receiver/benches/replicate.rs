//! Ingest throughput through a router-only receiver in front of three ingestors over loopback
//! gRPC, RF 1 vs RF 3. Ingestors store nothing (a counting local writer) so the figure is the
//! cost of splitting the remote-write body, placement, batching and gRPC forwarding.
//!
//! `cargo bench -p receiver --bench replicate`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use receiver::hashring::Algorithm;
use receiver::hashring::Mode;
use receiver::hashring::watch::{HashringHandle, build};
use receiver::replicate::server::writeable_store_service;
use receiver::replicate::{
    BoxFuture, Distributor, DistributorConfig, LocalWriteResult, LocalWriter, ReplicationMetrics,
};
use storeapi::wire::prompb::{Sample, TimeSeries};
use storeapi::wire::thanos::Label;

#[derive(Default)]
struct Counting(AtomicU64);

impl LocalWriter for Counting {
    fn write<'a>(
        &'a self,
        _tenant: &'a str,
        series: &'a [bytes::Bytes],
        _metadata: &'a [bytes::Bytes],
    ) -> BoxFuture<'a, LocalWriteResult> {
        self.0.fetch_add(series.len() as u64, Ordering::Relaxed);
        Box::pin(async { LocalWriteResult::Ok })
    }
}

fn cfg(mode: Mode, rf: u64) -> DistributorConfig {
    DistributorConfig {
        mode,
        local_endpoint: None,
        replication_factor: rf,
        forward_timeout: Duration::from_secs(10),
        forward_max_backoff: Duration::from_secs(1),
        default_tenant: "default-tenant".into(),
    }
}

fn batch(n: usize, t: i64) -> Vec<TimeSeries> {
    (0..n)
        .map(|i| TimeSeries {
            labels: vec![
                Label {
                    name: "__name__".into(),
                    value: "bench_metric".into(),
                },
                Label {
                    name: "instance".into(),
                    value: format!("host-{}", i % 50).into(),
                },
                Label {
                    name: "series".into(),
                    value: i.to_string().into(),
                },
            ],
            samples: vec![Sample {
                value: i as f64,
                timestamp: t,
            }],
            ..Default::default()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addrs: Vec<String> = rt.block_on(async {
        let mut addrs = Vec::new();
        for _ in 0..3 {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.push(listener.local_addr().unwrap().to_string());
            let local: Arc<dyn LocalWriter> = Arc::new(Counting::default());
            let d = Arc::new(Distributor::new(
                cfg(Mode::IngestorOnly, 1),
                None,
                Some(local),
                ReplicationMetrics::default(),
            ));
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(writeable_store_service(d))
                    .serve_with_incoming(incoming),
            );
        }
        addrs
    });
    let ring = format!(
        r#"[{{"endpoints":[{}]}}]"#,
        addrs
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    const SERIES: usize = 2000;
    let mut group = c.benchmark_group("router_forward");
    group.throughput(Throughput::Elements(SERIES as u64));
    group.sample_size(20);
    for rf in [1u64, 3] {
        let handle = HashringHandle::fixed(
            build(
                ring.as_bytes(),
                std::path::Path::new("bench"),
                Algorithm::Ketama,
                rf,
            )
            .unwrap(),
        );
        let router = Distributor::new(
            cfg(Mode::RouterOnly, rf),
            Some(handle),
            None,
            ReplicationMetrics::default(),
        );
        let body = prost::Message::encode_to_vec(&storeapi::wire::prometheus::WriteRequest {
            timeseries: batch(SERIES, 1),
            metadata: Vec::new(),
        });
        group.bench_function(format!("rf{rf}_{SERIES}_series_per_request"), |b| {
            b.iter(|| rt.block_on(router.write_raw("bench", &body)).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

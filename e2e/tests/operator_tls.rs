//! The operator's TLS wiring run by the real binaries: a receiver started with the flags
//! `ReceiveCluster.spec.grpcTls` gives it and a querier started with the arguments
//! `GlobalView.spec.grpcClientTls` gives it (the `dns+` endpoint verified by its name
//! through the generated `--endpoint.sd-config`). The Secret's mount point is replaced
//! by a directory laid out like a mounted Secret. The TLS querier reads the receiver's
//! data; the same GlobalView without TLS reads nothing from the mTLS receiver.

mod receiver_common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use e2e::{Proc, free_port, orrery_bin, wait_for};
use netsec::testing::{Ca, SecretDir};
use operator::crd::{GlobalView, GlobalViewSpec, ReceiveClusterSelector, TlsSecretRef};
use operator::tls::GRPC_TLS_DIR;
use receiver_common::{Receiver, labels};

/// The operator's arguments with the Secret's mount point moved to `dir`.
fn relocated(args: &[String], dir: &Path) -> Vec<String> {
    args.iter()
        .map(|a| a.replace(GRPC_TLS_DIR, &dir.display().to_string()))
        .collect()
}

fn global_view(endpoint: &str, tls: bool) -> GlobalView {
    let mut gv = GlobalView::new(
        "global",
        GlobalViewSpec {
            receive_clusters: ReceiveClusterSelector::default(),
            endpoints: vec![endpoint.to_string()],
            replica_labels: vec![],
            image: None,
            replicas: 1,
            resources: None,
            clusters: vec![],
            grpc_client_tls: tls.then(|| TlsSecretRef {
                secret_name: "querier-tls".into(),
            }),
            paused: false,
        },
    );
    gv.metadata.namespace = Some("orrery".into());
    gv
}

/// `orrery query` with the operator's arguments for `gv`, listening on a free port
/// instead of the pod's.
fn start_querier(gv: &GlobalView, secret: &Path, dir: &Path, name: &str) -> (Proc, String) {
    let args = relocated(
        &operator::query::querier_args(gv, &gv.spec.endpoints),
        secret,
    );
    let http = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(orrery_bin());
    cmd.args(
        args.iter()
            .filter(|a| !a.starts_with("--http-address=") && !a.starts_with("--grpc-address=")),
    )
    .arg(format!("--http-address={http}"))
    .arg("--grpc-address=")
    .env("RUST_LOG", "info");
    let proc = Proc::spawn(name, cmd, dir.join(format!("{name}.log")));
    let up = wait_for(Duration::from_secs(30), || {
        matches!(e2e::http_get(&http, "/-/ready"), Ok((200, _))).then_some(())
    });
    assert!(
        up.is_some(),
        "{name} not ready with the operator's args {args:?}; log:\n{}",
        proc.log_text()
    );
    (proc, http)
}

fn probe_count(http: &str) -> Option<usize> {
    let (_, body) = e2e::http_get(http, "/api/v1/query?query=operator_tls_probe").ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some(v["data"]["result"].as_array()?.len())
}

#[test]
fn operator_tls_flags_give_mtls_between_querier_and_receiver() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let ca = Ca::new("orrery operator e2e CA");
    // What cert-manager would issue for the receivers (the Service name the querier
    // verifies; here `localhost`) and for the querier.
    let receiver = ca.leaf("receive", &["localhost", "127.0.0.1"], 0x90);
    let querier = ca.leaf("query", &["query"], 0x91);
    let mut rsecret = SecretDir::new(&dir.join("receive-tls"));
    rsecret.publish(&[
        ("tls.crt", &receiver.cert_pem),
        ("tls.key", &receiver.key_pem),
        ("ca.crt", &ca.pem()),
    ]);
    let mut qsecret = SecretDir::new(&dir.join("query-tls"));
    qsecret.publish(&[
        ("tls.crt", &querier.cert_pem),
        ("tls.key", &querier.key_pem),
        ("ca.crt", &ca.pem()),
    ]);
    let rargs = relocated(&operator::tls::receiver_args(), &rsecret.path(""));
    let rargs: Vec<&str> = rargs.iter().map(String::as_str).collect();
    let recv = Receiver::start(&dir.join("data"), &dir.join("receive.log"), &rargs);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let (code, body) = recv.write(&[(
        labels(&[("__name__", "operator_tls_probe"), ("job", "e2e")]),
        (0..10)
            .map(|i| storeapi::Sample {
                t: now - 60_000 + i * 5_000,
                v: i as f64,
            })
            .collect(),
    )]);
    assert_eq!(code, 200, "{body}");

    // The GlobalView names the receiver by a dns+ name, as it names a ReceiveCluster's
    // headless Service.
    let port = recv.grpc.rsplit_once(':').map(|(_, p)| p).expect("port");
    let endpoint = format!("dns+localhost:{port}");
    let (tls_q, tls_http) = start_querier(
        &global_view(&endpoint, true),
        &qsecret.path(""),
        dir,
        "querier-tls",
    );
    let (_plain_q, plain_http) = start_querier(
        &global_view(&endpoint, false),
        &qsecret.path(""),
        dir,
        "querier-plain",
    );
    let seen = wait_for(Duration::from_secs(30), || {
        (probe_count(&tls_http)? == 1).then_some(())
    });
    assert!(
        seen.is_some(),
        "the querier with the operator's TLS args read nothing; its log:\n{}\nreceiver log:\n{}",
        tls_q.log_text(),
        recv.proc.log_text()
    );
    assert_eq!(
        probe_count(&plain_http),
        Some(0),
        "a querier without the client certificate read the mTLS receiver"
    );
}

//! Transport security end to end, with certificates made by the test:
//! - mTLS between the querier and the receiver's StoreAPI: a querier without a client
//!   certificate (or without TLS) reads nothing; the real Prometheus 3.5.3 remote-writes
//!   over mTLS (`remote_write.tls_config`) and its samples are queryable.
//! - certificate rotation by a Kubernetes-Secret-style `..data` symlink swap: new
//!   connections get the new certificate (serial checked), an open connection keeps
//!   working, and samples keep flowing.
//! - `--http.config` (TLS + basic auth) on the querier and `--remote-write.http-config` on
//!   the receiver: 401 without or with a wrong password, 200 with the right one, and
//!   Prometheus's `remote_write.basic_auth` lands while a wrong password is refused.

mod receiver_common;
mod security_common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::{Proc, Prometheus, free_port, orrery_bin, wait_for};
use netsec::ClientTls;
use netsec::testing::{Ca, Leaf, SecretDir, serial_hex};
use receiver_common::{Receiver, prom_value};
use security_common::{b64, tls_client, write};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type TlsStream = netsec::tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A parsed HTTP/1.1 response: status, lower-cased head, body.
struct Resp {
    status: u16,
    head: String,
    body: String,
}

/// One HTTP/1.1 request on an open TLS connection (keep-alive); the response must carry a
/// Content-Length (axum sets it on every small answer used here).
async fn request(
    s: &mut TlsStream,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Resp> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::other("read timeout"))??;
        if n == 0 {
            return Err(std::io::Error::other("connection closed"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no content-length in {head}")))?;
    while buf.len() < head_end + 4 + len {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other("connection closed in body"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = String::from_utf8_lossy(&buf[head_end + 4..head_end + 4 + len]).to_string();
    Ok(Resp { status, head, body })
}

/// A fresh HTTPS connection and one request on it.
fn https(
    rt: &tokio::runtime::Runtime,
    c: &ClientTls,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Resp, String> {
    rt.block_on(async {
        let mut s = c
            .connect(addr, &[b"http/1.1"])
            .await
            .map_err(|e| e.to_string())?;
        request(&mut s, "GET", path, headers)
            .await
            .map_err(|e| e.to_string())
    })
}

/// The serial of the certificate a server presents to a new connection.
fn served_serial(rt: &tokio::runtime::Runtime, c: &ClientTls, addr: &str) -> String {
    rt.block_on(async {
        let s = c.connect(addr, &[b"h2"]).await.expect("TLS handshake");
        serial_hex(
            &s.get_ref()
                .1
                .peer_certificates()
                .expect("server certificate")[0],
        )
    })
}

/// `orrery query` with these flags; `ready` decides when it is up (it may serve HTTPS).
fn start_querier(name: &str, dir: &Path, extra: &[String]) -> (Proc, String) {
    let http = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(orrery_bin());
    cmd.arg("query")
        .arg(format!("--http-address={http}"))
        .arg("--grpc-address=")
        .args(extra)
        .env("RUST_LOG", "info");
    let proc = Proc::spawn(name, cmd, dir.join(format!("{name}.log")));
    let up = wait_for(Duration::from_secs(30), || {
        std::net::TcpStream::connect(&http).ok()
    });
    assert!(
        up.is_some(),
        "{name} did not listen; log:\n{}",
        proc.log_text()
    );
    (proc, http)
}

fn result_count(body: &str) -> Option<usize> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    Some(v["data"]["result"].as_array()?.len())
}

#[test]
fn mtls_storeapi_prometheus_remote_write_and_rotation() {
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let ca = Ca::new("orrery e2e CA");
    let server_v1 = ca.leaf("receiver", &["127.0.0.1", "localhost"], 0x100);
    let server_v2 = ca.leaf("receiver", &["127.0.0.1", "localhost"], 0x101);
    let querier_cert = ca.leaf("querier", &["querier"], 0x200);
    let prom_cert = ca.leaf("prometheus", &["prometheus"], 0x300);
    let mut secret = SecretDir::new(&dir.join("receiver-tls"));
    let publish = |s: &mut SecretDir, leaf: &Leaf| {
        s.publish(&[
            ("tls.crt", &leaf.cert_pem),
            ("tls.key", &leaf.key_pem),
            ("ca.crt", &ca.pem()),
        ])
    };
    publish(&mut secret, &server_v1);
    let (crt, key, cacrt) = (
        secret.path("tls.crt").display().to_string(),
        secret.path("tls.key").display().to_string(),
        secret.path("ca.crt").display().to_string(),
    );
    let ca_file = write(dir, "ca.pem", &ca.pem());
    let q_crt = write(dir, "querier.crt", &querier_cert.cert_pem);
    let q_key = write(dir, "querier.key", &querier_cert.key_pem);
    let p_crt = write(dir, "prometheus.crt", &prom_cert.cert_pem);
    let p_key = write(dir, "prometheus.key", &prom_cert.key_pem);

    let recv = Receiver::start(
        &dir.join("data"),
        &dir.join("receive.log"),
        &[
            &format!("--grpc-server-tls-cert={crt}"),
            &format!("--grpc-server-tls-key={key}"),
            &format!("--grpc-server-tls-client-ca={cacrt}"),
            &format!("--remote-write.server-tls-cert={crt}"),
            &format!("--remote-write.server-tls-key={key}"),
            &format!("--remote-write.server-tls-client-ca={cacrt}"),
            "--label=replica=\"r0\"",
        ],
    );
    let prom = Prometheus::start(
        &format!(
            r#"
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ['127.0.0.1:{{{{PORT}}}}']
remote_write:
  - url: https://{rw}/api/v1/receive
    tls_config:
      ca_file: {ca_file}
      cert_file: {p_crt}
      key_file: {p_key}
    queue_config:
      batch_send_deadline: 1s
      min_backoff: 100ms
      max_backoff: 1s
"#,
            rw = recv.rw
        ),
        &[],
    );
    let endpoint = format!("--endpoint={}", recv.grpc);
    let (q_ok, q_ok_http) = start_querier(
        "querier-mtls",
        dir,
        &[
            endpoint.clone(),
            "--grpc-client-tls-secure".into(),
            format!("--grpc-client-tls-ca={ca_file}"),
            format!("--grpc-client-tls-cert={q_crt}"),
            format!("--grpc-client-tls-key={q_key}"),
        ],
    );
    let (_q_nocert, q_nocert_http) = start_querier(
        "querier-no-client-cert",
        dir,
        &[
            endpoint.clone(),
            "--grpc-client-tls-secure".into(),
            format!("--grpc-client-tls-ca={ca_file}"),
        ],
    );
    let (_q_plain, q_plain_http) = start_querier("querier-plaintext", dir, &[endpoint]);
    // The same credentials given per endpoint in Thanos's endpoint SD file, with
    // plaintext flags: that endpoint is dialled with its own client_config.
    let sd_file = write(
        dir,
        "sd.yaml",
        &format!(
            "endpoints:\n  - address: {grpc}\n    client_config:\n      tls_config:\n        ca_file: {ca_file}\n        cert_file: {q_crt}\n        key_file: {q_key}\n",
            grpc = recv.grpc
        ),
    );
    let (q_sd, q_sd_http) = start_querier(
        "querier-sd-client-config",
        dir,
        &[format!("--endpoint.sd-config-file={sd_file}")],
    );
    // A default_client_config without a client certificate replaces the flags' one.
    let sd_nocert = format!(
        "default_client_config:\n  tls_config:\n    ca_file: {ca_file}\nendpoints:\n  - address: {grpc}\n",
        grpc = recv.grpc
    );
    let (_q_sd_nocert, q_sd_nocert_http) = start_querier(
        "querier-sd-default-no-cert",
        dir,
        &[
            format!("--endpoint.sd-config={sd_nocert}"),
            "--grpc-client-tls-secure".into(),
            format!("--grpc-client-tls-ca={ca_file}"),
            format!("--grpc-client-tls-cert={q_crt}"),
            format!("--grpc-client-tls-key={q_key}"),
        ],
    );

    // Prometheus's samples arrive over mTLS and the mTLS querier reads them.
    let up = wait_for(Duration::from_secs(30), || {
        let (code, body) = e2e::http_get(&q_ok_http, "/api/v1/query?query=up").ok()?;
        (code == 200 && result_count(&body) == Some(1)).then_some(body)
    });
    assert!(
        up.is_some(),
        "no `up` through the mTLS querier; querier log:\n{}\nreceiver log:\n{}\nprometheus log:\n{}",
        q_ok.log_text(),
        recv.proc.log_text(),
        prom.proc.log_text()
    );
    let sd_up = wait_for(Duration::from_secs(20), || {
        let (code, body) = e2e::http_get(&q_sd_http, "/api/v1/query?query=up").ok()?;
        (code == 200 && result_count(&body) == Some(1)).then_some(body)
    });
    assert!(
        sd_up.is_some(),
        "no `up` through the querier with a per-endpoint client_config; its log:\n{}",
        q_sd.log_text()
    );
    // Without a client certificate, or without TLS, the receiver's StoreAPI refuses.
    for (name, http) in [
        ("no client cert", &q_nocert_http),
        ("plaintext", &q_plain_http),
        ("SD default_client_config without a cert", &q_sd_nocert_http),
    ] {
        let (code, body) = e2e::http_get(http, "/api/v1/query?query=up").expect("query");
        assert_eq!(
            (code, result_count(&body)),
            (200, Some(0)),
            "querier with {name} read data: {body}"
        );
    }
    assert!(
        recv.proc.log_text().contains("TLS handshake failed"),
        "refused handshakes are logged"
    );

    // Rotation. A keep-alive HTTPS connection to the remote-write listener is opened with
    // the old certificate and must survive the swap.
    let rt = rt();
    let as_prom = tls_client(&ca, Some(&prom_cert));
    let as_querier = tls_client(&ca, Some(&querier_cert));
    let mut open: TlsStream = rt
        .block_on(as_prom.connect(&recv.rw, &[b"http/1.1"]))
        .expect("HTTPS connection");
    let before = rt
        .block_on(request(&mut open, "GET", "/api/v1/receive", &[]))
        .expect("request before rotation");
    assert_eq!(before.status, 405, "GET on the write path: {}", before.head);
    assert_eq!(served_serial(&rt, &as_prom, &recv.rw), "100");
    assert_eq!(served_serial(&rt, &as_querier, &recv.grpc), "100");

    publish(&mut secret, &server_v2);
    let rotated_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert_eq!(
        served_serial(&rt, &as_prom, &recv.rw),
        "101",
        "remote-write listener"
    );
    assert_eq!(
        served_serial(&rt, &as_querier, &recv.grpc),
        "101",
        "gRPC listener"
    );
    let after = rt
        .block_on(request(&mut open, "GET", "/api/v1/receive", &[]))
        .expect("the connection opened before the rotation keeps working");
    assert_eq!(after.status, 405);

    // Samples keep flowing after the rotation, read through the same mTLS querier.
    let fresh = wait_for(Duration::from_secs(20), || {
        let (_, body) = e2e::http_get(&q_ok_http, "/api/v1/query?query=timestamp(up)").ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let ts: f64 = v["data"]["result"][0]["value"][1].as_str()?.parse().ok()?;
        (ts > rotated_at + 1.0).then_some(ts)
    });
    assert!(
        fresh.is_some(),
        "no sample newer than the rotation; receiver log:\n{}\nprometheus log:\n{}",
        recv.proc.log_text(),
        prom.proc.log_text()
    );
    let failed = prom_value(
        &prom.addr(),
        "sum(prometheus_remote_storage_samples_failed_total)",
    );
    assert_eq!(failed, Some(0.0), "Prometheus failed samples");
    eprintln!("mTLS + rotation test took {:?}", t0.elapsed());
}

#[test]
fn http_config_basic_auth_on_querier_and_remote_write() {
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let ca = Ca::new("orrery e2e web CA");
    let server = ca.leaf("orrery", &["127.0.0.1"], 0x42);
    let ca_file = write(dir, "ca.pem", &ca.pem());
    write(dir, "tls.crt", &server.cert_pem);
    write(dir, "tls.key", &server.key_pem);
    let hash = bcrypt::hash("wonderland", 6).expect("bcrypt");
    // Paths relative to the web config file, as exporter-toolkit resolves them.
    let q_web = write(
        dir,
        "query-web.yml",
        &format!(
            "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n\
             basic_auth_users:\n  alice: {hash}\n\
             http_server_config:\n  headers:\n    X-Frame-Options: deny\n"
        ),
    );
    let rw_web = write(
        dir,
        "rw-web.yml",
        &format!("basic_auth_users:\n  alice: {hash}\n"),
    );
    let recv = Receiver::start(
        &dir.join("data"),
        &dir.join("receive.log"),
        &[
            &format!(
                "--remote-write.server-tls-cert={}",
                dir.join("tls.crt").display()
            ),
            &format!(
                "--remote-write.server-tls-key={}",
                dir.join("tls.key").display()
            ),
            &format!("--remote-write.http-config={rw_web}"),
        ],
    );
    let remote = |name: &str, pw: &str| {
        format!(
            "  - url: https://{rw}/api/v1/receive\n    name: {name}\n    basic_auth:\n      username: alice\n      password: {pw}\n    tls_config:\n      ca_file: {ca_file}\n    queue_config:\n      batch_send_deadline: 1s\n      min_backoff: 100ms\n      max_backoff: 1s\n",
            rw = recv.rw
        )
    };
    let prom = Prometheus::start(
        &format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: prometheus\n    static_configs:\n      - targets: ['127.0.0.1:{{{{PORT}}}}']\nremote_write:\n{}{}",
            remote("good", "wonderland"),
            remote("bad", "looking-glass")
        ),
        &[],
    );
    let (q, q_http) = start_querier(
        "querier-web",
        dir,
        &[
            format!("--endpoint={}", recv.grpc),
            format!("--http.config={q_web}"),
        ],
    );
    let rt = rt();
    let client = tls_client(&ca, None);
    let good = format!("Basic {}", b64("alice:wonderland"));
    let wrong = format!("Basic {}", b64("alice:looking-glass"));
    let nobody = format!("Basic {}", b64("mallory:wonderland"));

    // The querier serves HTTPS only, with basic auth in front of every path.
    let ready = wait_for(Duration::from_secs(20), || {
        let r = https(
            &rt,
            &client,
            &q_http,
            "/-/ready",
            &[("Authorization", &good)],
        )
        .ok()?;
        (r.status == 200).then_some(r)
    });
    let ready =
        ready.unwrap_or_else(|| panic!("querier not ready over HTTPS; log:\n{}", q.log_text()));
    assert!(
        ready.head.contains("x-frame-options: deny"),
        "{}",
        ready.head
    );
    for (what, headers) in [
        ("no credentials", vec![]),
        ("wrong password", vec![("Authorization", wrong.as_str())]),
        ("unknown user", vec![("Authorization", nobody.as_str())]),
        ("bearer token", vec![("Authorization", "Bearer wonderland")]),
    ] {
        let r = https(&rt, &client, &q_http, "/api/v1/query?query=1", &headers).expect("HTTPS");
        assert_eq!(r.status, 401, "{what}: {}", r.body);
        assert!(
            r.head.contains("www-authenticate: basic"),
            "{what}: {}",
            r.head
        );
    }
    assert!(
        !matches!(e2e::http_get(&q_http, "/-/ready"), Ok((200, _))),
        "plaintext HTTP must not be served on the TLS port"
    );

    // Remote write: Prometheus with the right password lands, the wrong one gets 401s.
    let up = wait_for(Duration::from_secs(30), || {
        let r = https(
            &rt,
            &client,
            &q_http,
            "/api/v1/query?query=up",
            &[("Authorization", &good)],
        )
        .ok()?;
        (r.status == 200 && result_count(&r.body) == Some(1)).then_some(r.body)
    });
    assert!(
        up.is_some(),
        "no `up` from the basic-auth remote write; receiver log:\n{}\nprometheus log:\n{}",
        recv.proc.log_text(),
        prom.proc.log_text()
    );
    let failed = |name: &str| {
        prom_value(
            &prom.addr(),
            &format!(
                "sum(prometheus_remote_storage_samples_failed_total{{remote_name=\"{name}\"}})"
            ),
        )
    };
    let refused = wait_for(Duration::from_secs(20), || {
        failed("bad").filter(|&v| v > 0.0)
    });
    assert!(refused.is_some(), "the wrong password was not refused");
    assert_eq!(failed("good"), Some(0.0), "the right password lost samples");
    for (what, headers, want) in [
        ("no credentials", vec![], 401),
        (
            "wrong password",
            vec![("Authorization", wrong.as_str())],
            401,
        ),
        // Authenticated: reaches the handler, which only allows POST.
        (
            "right password",
            vec![("Authorization", good.as_str())],
            405,
        ),
    ] {
        let r = https(&rt, &client, &recv.rw, "/api/v1/receive", &headers).expect("HTTPS");
        assert_eq!(r.status, want, "remote write, {what}: {}", r.body);
    }
    eprintln!("basic-auth test took {:?}", t0.elapsed());
}

/// `Series` over mTLS against `grpc`: how many series named `name`.
fn tls_series_count(
    rt: &tokio::runtime::Runtime,
    tls: &ClientTls,
    grpc: &str,
    name: &str,
) -> Result<usize, String> {
    use storeapi::wire::thanos::{SeriesRequest, series_response, store_client::StoreClient};
    rt.block_on(async {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
            .map_err(|e| e.to_string())?;
        let mut c = StoreClient::new(tls.channel(endpoint));
        let req = SeriesRequest {
            min_time: 0,
            max_time: i64::MAX,
            matchers: vec![receiver_common::eq("__name__", name)],
            ..Default::default()
        };
        let mut stream = c.series(req).await.map_err(|e| e.to_string())?.into_inner();
        let mut n = 0;
        while let Some(frame) = stream.message().await.map_err(|e| e.to_string())? {
            match frame.result {
                Some(series_response::Result::Series(_)) => n += 1,
                Some(series_response::Result::Batch(b)) => n += b.series.len(),
                _ => {}
            }
        }
        Ok(n)
    })
}

/// A router forwards to an ingestor whose gRPC port requires client certificates: with
/// `--remote-write.client-tls-*` the write lands; a router without a client certificate,
/// or without TLS, cannot write into the ingestor.
#[test]
fn router_forwards_to_ingestor_over_mtls() {
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let ca = Ca::new("orrery e2e ring CA");
    let ingestor_cert = ca.leaf("ingestor", &["127.0.0.1"], 0x500);
    let router_cert = ca.leaf("router", &["router"], 0x501);
    let ca_file = write(dir, "ca.pem", &ca.pem());
    let i_crt = write(dir, "ingestor.crt", &ingestor_cert.cert_pem);
    let i_key = write(dir, "ingestor.key", &ingestor_cert.key_pem);
    let r_crt = write(dir, "router.crt", &router_cert.cert_pem);
    let r_key = write(dir, "router.key", &router_cert.key_pem);
    let ingestor = Receiver::start(
        &dir.join("ingestor"),
        &dir.join("ingestor.log"),
        &[
            &format!("--grpc-server-tls-cert={i_crt}"),
            &format!("--grpc-server-tls-key={i_key}"),
            &format!("--grpc-server-tls-client-ca={ca_file}"),
        ],
    );
    let ring = format!(
        r#"--receive.hashrings=[{{"endpoints":["{}"]}}]"#,
        ingestor.grpc
    );
    let router = |name: &str, tls: &[String]| {
        let mut args: Vec<&str> = vec![&ring];
        args.extend(tls.iter().map(String::as_str));
        Receiver::start(&dir.join(name), &dir.join(format!("{name}.log")), &args)
    };
    let good = router(
        "router-mtls",
        &[
            "--remote-write.client-tls-secure".into(),
            format!("--remote-write.client-tls-ca={ca_file}"),
            format!("--remote-write.client-tls-cert={r_crt}"),
            format!("--remote-write.client-tls-key={r_key}"),
        ],
    );
    let no_cert = router(
        "router-no-cert",
        &[
            "--remote-write.client-tls-secure".into(),
            format!("--remote-write.client-tls-ca={ca_file}"),
        ],
    );
    let plain = router("router-plaintext", &[]);
    let series = |name: &str| {
        vec![(
            receiver_common::labels(&[("__name__", name), ("job", "ring")]),
            vec![storeapi::Sample { t: 1_000, v: 1.0 }],
        )]
    };
    let (code, body) = good.write(&series("forwarded_mtls"));
    assert_eq!(
        code,
        200,
        "{body}; router log:\n{}\ningestor log:\n{}",
        good.proc.log_text(),
        ingestor.proc.log_text()
    );
    for (what, r, name) in [
        ("no client certificate", &no_cert, "forwarded_no_cert"),
        ("plaintext", &plain, "forwarded_plain"),
    ] {
        let (code, body) = r.write(&series(name));
        assert!(code >= 500, "router with {what} wrote: {code} {body}");
    }
    let rt = rt();
    let reader = tls_client(&ca, Some(&router_cert));
    assert_eq!(
        tls_series_count(&rt, &reader, &ingestor.grpc, "forwarded_mtls"),
        Ok(1)
    );
    assert_eq!(
        tls_series_count(&rt, &reader, &ingestor.grpc, "forwarded_no_cert"),
        Ok(0)
    );
    assert_eq!(
        tls_series_count(&rt, &reader, &ingestor.grpc, "forwarded_plain"),
        Ok(0)
    );
    // And the StoreAPI itself refuses a reader without a certificate.
    let anonymous = tls_client(&ca, None);
    assert!(tls_series_count(&rt, &anonymous, &ingestor.grpc, "forwarded_mtls").is_err());
    eprintln!("forwarding test took {:?}", t0.elapsed());
}

/// `orrery standalone` exposes two listeners: remote write and the querier's HTTP. Both
/// take the components' security flags: Prometheus writes over TLS with basic auth, the
/// querier answers over HTTPS behind basic auth, and without credentials both say 401.
#[test]
fn standalone_exposed_listeners_take_tls_and_auth() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let ca = Ca::new("orrery standalone CA");
    let server = ca.leaf("orrery", &["127.0.0.1"], 0x51);
    let ca_file = write(dir, "ca.pem", &ca.pem());
    let crt = write(dir, "tls.crt", &server.cert_pem);
    let key = write(dir, "tls.key", &server.key_pem);
    let hash = bcrypt::hash("wonderland", 6).expect("bcrypt");
    let web = write(
        dir,
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\nbasic_auth_users:\n  alice: {hash}\n"
        ),
    );
    let rw_web = write(
        dir,
        "rw-web.yml",
        &format!("basic_auth_users:\n  alice: {hash}\n"),
    );
    let http = format!("127.0.0.1:{}", free_port());
    let rw = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(orrery_bin());
    cmd.arg("standalone")
        .arg(format!("--tsdb.path={}", dir.join("data").display()))
        .arg(format!("--http-address={http}"))
        .arg(format!("--grpc-address=127.0.0.1:{}", free_port()))
        .arg(format!("--remote-write.address={rw}"))
        .arg(format!("--receive.http-address=127.0.0.1:{}", free_port()))
        .arg(format!("--store.grpc-address=127.0.0.1:{}", free_port()))
        .arg(format!("--store.http-address=127.0.0.1:{}", free_port()))
        .arg(format!("--compact.http-address=127.0.0.1:{}", free_port()))
        .arg(format!("--remote-write.server-tls-cert={crt}"))
        .arg(format!("--remote-write.server-tls-key={key}"))
        .arg(format!("--remote-write.http-config={rw_web}"))
        .arg(format!("--http.config={web}"));
    let proc = Proc::spawn("standalone", cmd, dir.join("standalone.log"));
    let prom = Prometheus::start(
        &format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: prometheus\n    static_configs:\n      - targets: ['127.0.0.1:{{{{PORT}}}}']\nremote_write:\n  - url: https://{rw}/api/v1/receive\n    basic_auth:\n      username: alice\n      password: wonderland\n    tls_config:\n      ca_file: {ca_file}\n    queue_config:\n      batch_send_deadline: 1s\n      min_backoff: 100ms\n      max_backoff: 1s\n"
        ),
        &[],
    );
    let rt = rt();
    let client = tls_client(&ca, None);
    let good = format!("Basic {}", b64("alice:wonderland"));
    let up = wait_for(Duration::from_secs(40), || {
        let r = https(
            &rt,
            &client,
            &http,
            "/api/v1/query?query=up",
            &[("Authorization", &good)],
        )
        .ok()?;
        (r.status == 200 && result_count(&r.body) == Some(1)).then_some(r.body)
    });
    assert!(
        up.is_some(),
        "no `up` through the standalone over HTTPS; its log:\n{}\nprometheus log:\n{}",
        proc.log_text(),
        prom.proc.log_text()
    );
    assert_eq!(
        prom_value(
            &prom.addr(),
            "sum(prometheus_remote_storage_samples_failed_total)"
        ),
        Some(0.0),
        "Prometheus failed samples"
    );
    for (what, addr, path) in [
        ("querier", &http, "/api/v1/query?query=up"),
        ("remote write", &rw, "/api/v1/receive"),
    ] {
        let r = https(&rt, &client, addr, path, &[]).expect("HTTPS");
        assert_eq!(r.status, 401, "{what} without credentials: {}", r.body);
        assert!(
            !matches!(e2e::http_get(addr, path), Ok((200 | 405, _))),
            "{what}: plaintext must not be served on the TLS port"
        );
    }
}

/// `Info` over TLS with this client: `Ok(component type)` when the server accepted it.
fn tls_info(rt: &tokio::runtime::Runtime, tls: &ClientTls, grpc: &str) -> Result<String, String> {
    use storeapi::wire::info::{InfoRequest, info_client::InfoClient};
    rt.block_on(async {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
            .map_err(|e| e.to_string())?;
        let mut c = InfoClient::new(tls.channel(endpoint));
        let r = c
            .info(InfoRequest {})
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        Ok(r.component_type)
    })
}

/// `orrery store` takes the same `--grpc-server-tls-*` flags: with a client CA, a
/// StoreAPI client needs a certificate from it; a rotated certificate (Secret swap) is
/// served to the next connection without a restart.
#[test]
fn store_gateway_grpc_requires_client_certificates() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let ca = Ca::new("orrery e2e store CA");
    let (v1, v2) = (
        ca.leaf("store", &["127.0.0.1"], 0x600),
        ca.leaf("store", &["127.0.0.1"], 0x601),
    );
    let mut secret = SecretDir::new(&dir.join("store-tls"));
    let publish = |s: &mut SecretDir, leaf: &Leaf| {
        s.publish(&[
            ("tls.crt", &leaf.cert_pem),
            ("tls.key", &leaf.key_pem),
            ("ca.crt", &ca.pem()),
        ])
    };
    publish(&mut secret, &v1);
    std::fs::create_dir_all(dir.join("bucket")).expect("bucket dir");
    let (grpc, http) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let mut cmd = Command::new(orrery_bin());
    cmd.arg("store")
        .arg(format!(
            "--objstore.config=type: FILESYSTEM\nconfig:\n  directory: {}\n",
            dir.join("bucket").display()
        ))
        .arg(format!("--data-dir={}", dir.join("cache").display()))
        .arg(format!("--grpc-address={grpc}"))
        .arg(format!("--http-address={http}"))
        .arg(format!(
            "--grpc-server-tls-cert={}",
            secret.path("tls.crt").display()
        ))
        .arg(format!(
            "--grpc-server-tls-key={}",
            secret.path("tls.key").display()
        ))
        .arg(format!(
            "--grpc-server-tls-client-ca={}",
            secret.path("ca.crt").display()
        ))
        .env("RUST_LOG", "info");
    let store = Proc::spawn("orrery-store", cmd, dir.join("store.log"));
    let ready = wait_for(Duration::from_secs(60), || {
        matches!(e2e::http_get(&http, "/-/ready"), Ok((200, _))).then_some(())
    });
    assert!(
        ready.is_some(),
        "store not ready; log:\n{}",
        store.log_text()
    );
    let rt = rt();
    let with_cert = tls_client(&ca, Some(&ca.leaf("querier", &["querier"], 0x602)));
    let without = tls_client(&ca, None);
    let other_ca = Ca::new("stranger CA");
    let stranger = tls_client(&ca, Some(&other_ca.leaf("querier", &["querier"], 0x603)));
    assert!(
        tls_info(&rt, &with_cert, &grpc).is_ok(),
        "a client with a certificate from the CA: {:?}; log:\n{}",
        tls_info(&rt, &with_cert, &grpc),
        store.log_text()
    );
    assert!(
        tls_info(&rt, &without, &grpc).is_err(),
        "no client certificate"
    );
    assert!(
        tls_info(&rt, &stranger, &grpc).is_err(),
        "certificate of another CA"
    );
    assert_eq!(served_serial(&rt, &with_cert, &grpc), "600");
    publish(&mut secret, &v2);
    assert_eq!(
        served_serial(&rt, &with_cert, &grpc),
        "601",
        "rotated without a restart"
    );
    assert!(tls_info(&rt, &with_cert, &grpc).is_ok());
}

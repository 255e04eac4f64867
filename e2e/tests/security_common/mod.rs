//! Helpers the security e2e tests share: TLS clients from a test CA, files for configs,
//! base64 for `Authorization: Basic` headers, and one remote write over HTTPS.

use std::path::Path;

use netsec::ClientTls;
use netsec::client::ClientTlsSettings;
use netsec::pem::PemSource;
use netsec::testing::{Ca, Leaf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub fn tls_client(ca: &Ca, leaf: Option<&Leaf>) -> ClientTls {
    ClientTls::new(ClientTlsSettings {
        ca: Some(PemSource::Inline(ca.pem())),
        cert: leaf.map(|l| PemSource::Inline(l.cert_pem.clone())),
        key: leaf.map(|l| PemSource::Inline(l.key_pem.clone())),
        skip_verify: false,
        server_name: None,
        min_version: netsec::TlsVersion::Tls13,
    })
    .expect("TLS client")
}

pub fn write(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write file");
    p.display().to_string()
}

#[allow(dead_code)] // not every test file sends basic auth
pub fn b64(s: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One remote-write request (a single sample of `probe{n="..."}`) over a fresh HTTPS
/// connection: `Ok((status, body))`, or `Err` when no TLS session could be made.
#[allow(dead_code)] // not every test file writes over HTTPS
pub fn https_write(
    rt: &tokio::runtime::Runtime,
    c: &ClientTls,
    addr: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String), String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let series = [(
        storeapi::Labels::from_pairs([("__name__", "probe"), ("n", "manual")]).expect("labels"),
        vec![storeapi::Sample { t: now, v: 1.0 }],
    )];
    let body = storeapi::wire::remote_write::encode_write_request_snappy(
        series.iter().map(|(l, s)| (l, s.as_slice())),
    );
    rt.block_on(async {
        let mut s = c
            .connect(addr, &[b"http/1.1"])
            .await
            .map_err(|e| e.to_string())?;
        let mut req = format!(
            "POST /api/v1/receive HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
             Content-Type: application/x-protobuf\r\nContent-Encoding: snappy\r\n\
             X-Prometheus-Remote-Write-Version: 0.1.0\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(&body).await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        // A peer that closes without close_notify still gave us the answer.
        let r =
            tokio::time::timeout(std::time::Duration::from_secs(20), s.read_to_end(&mut buf)).await;
        if buf.is_empty() {
            return Err(format!("no answer: {r:?}"));
        }
        let text = String::from_utf8_lossy(&buf).to_string();
        let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Ok((
            status,
            format!("{}\n{}", head.to_ascii_lowercase(), rest.trim()),
        ))
    })
}

/// One GET over a fresh HTTPS connection (`Connection: close`): `Ok((status, body))`,
/// or `Err` when no TLS session could be made or nothing came back.
#[allow(dead_code)] // not every test file reads over HTTPS
pub fn https_get(
    rt: &tokio::runtime::Runtime,
    c: &ClientTls,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String), String> {
    rt.block_on(async {
        let mut s = c
            .connect(addr, &[b"http/1.1"])
            .await
            .map_err(|e| e.to_string())?;
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let r =
            tokio::time::timeout(std::time::Duration::from_secs(20), s.read_to_end(&mut buf)).await;
        if buf.is_empty() {
            return Err(format!("no answer: {r:?}"));
        }
        let text = String::from_utf8_lossy(&buf).to_string();
        let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        Ok((
            status,
            if chunked {
                dechunk(rest)
            } else {
                rest.to_string()
            },
        ))
    })
}

/// The body of a chunked HTTP/1.1 answer.
#[allow(dead_code)]
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

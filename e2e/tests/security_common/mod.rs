//! Helpers the security e2e tests share: TLS clients from a test CA, files for configs,
//! and base64 for `Authorization: Basic` headers.

use std::path::Path;

use netsec::ClientTls;
use netsec::client::ClientTlsSettings;
use netsec::pem::PemSource;
use netsec::testing::{Ca, Leaf};

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

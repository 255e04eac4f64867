//! The remote-write load the ingest and soak benchmarks share: snappy request templates
//! patched in place per round (see `ingest_bench`'s header for why that is cheap and
//! valid), the series set, a blocking HTTP/1.1 keep-alive client (plaintext or TLS) and
//! process CPU/memory from `/proc`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::free_port;

// ---------------------------------------------------------------------------------------
// Snappy templates

/// A snappy block-format writer whose copies only ever reference "label" bytes; bytes
/// added with [`SnappyTemplate::literal`] are emitted as literals and never matched, so
/// they can be overwritten in the compressed output later.
pub struct SnappyTemplate {
    out: Vec<u8>,
    /// The uncompressed stream so far.
    raw: Vec<u8>,
    /// Whether a raw byte may be the source of a copy.
    matchable: Vec<bool>,
    table: HashMap<u32, usize>,
}

impl Default for SnappyTemplate {
    fn default() -> Self {
        Self::new()
    }
}

impl SnappyTemplate {
    pub fn new() -> Self {
        SnappyTemplate {
            out: Vec::new(),
            raw: Vec::new(),
            matchable: Vec::new(),
            table: HashMap::new(),
        }
    }

    fn emit_literal(&mut self, from: usize, to: usize) -> usize {
        let mut at = from;
        let mut data_pos = 0;
        while at < to {
            let n = (to - at).min(65536);
            let l = n - 1;
            if l < 60 {
                self.out.push((l as u8) << 2);
            } else if l < 256 {
                self.out.push(60 << 2);
                self.out.push(l as u8);
            } else {
                self.out.push(61 << 2);
                self.out.extend_from_slice(&(l as u16).to_le_bytes());
            }
            if at == from {
                data_pos = self.out.len();
            }
            self.out.extend_from_slice(&self.raw[at..at + n]);
            at += n;
        }
        data_pos
    }

    fn key(&self, i: usize) -> u32 {
        u32::from_le_bytes([
            self.raw[i],
            self.raw[i + 1],
            self.raw[i + 2],
            self.raw[i + 3],
        ])
    }

    /// Adds compressible bytes.
    pub fn label(&mut self, bytes: &[u8]) {
        let start = self.raw.len();
        self.raw.extend_from_slice(bytes);
        self.matchable.resize(self.raw.len(), true);
        let end = self.raw.len();
        let mut lit = start;
        let mut i = start;
        while i + 4 <= end {
            let k = self.key(i);
            let cand = self.table.insert(k, i);
            let Some(c) = cand.filter(|&c| i - c <= 65535 && self.key(c) == k) else {
                i += 1;
                continue;
            };
            let mut len = 4;
            while len < 64
                && i + len < end
                && self.matchable[c + len]
                && self.raw[c + len] == self.raw[i + len]
            {
                len += 1;
            }
            if lit < i {
                self.emit_literal(lit, i);
            }
            self.out.push((((len - 1) as u8) << 2) | 2);
            self.out.extend_from_slice(&((i - c) as u16).to_le_bytes());
            for j in i + 1..(i + len).min(end.saturating_sub(3)) {
                let k = self.key(j);
                self.table.insert(k, j);
            }
            i += len;
            lit = i;
        }
        if lit < end {
            self.emit_literal(lit, end);
        }
    }

    /// Adds bytes that will be patched; returns their offset in the compressed output.
    pub fn literal(&mut self, bytes: &[u8]) -> usize {
        let start = self.raw.len();
        self.raw.extend_from_slice(bytes);
        self.matchable.resize(self.raw.len(), false);
        self.emit_literal(start, self.raw.len())
    }

    /// The compressed stream (length preamble + elements) and the offset shift that the
    /// preamble adds to every offset returned by [`SnappyTemplate::literal`].
    pub fn finish(self) -> (Vec<u8>, usize) {
        let mut body = Vec::with_capacity(self.out.len() + 10);
        put_varint(&mut body, self.raw.len() as u64);
        let shift = body.len();
        body.extend_from_slice(&self.out);
        (body, shift)
    }
}

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn put_field(out: &mut Vec<u8>, field: u32, data: &[u8]) {
    put_varint(out, u64::from(field << 3 | 2));
    put_varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

/// Sample field: tag, len 16, value tag, 8 value bytes, timestamp tag, 6-byte varint.
pub const SAMPLE_FIELD: [u8; 18] = [
    0x12, 16, 0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0,
];
/// Offset of the value bytes in [`SAMPLE_FIELD`]; the timestamp follows 9 bytes later.
pub const VALUE_AT: usize = 3;

/// Writes `t` as a 6-byte varint (valid for 2^35 ≤ t < 2^42 ms: 1971..2109).
pub fn put_ts6(out: &mut [u8], t: i64) {
    let mut v = t as u64;
    for (i, b) in out.iter_mut().enumerate().take(6) {
        *b = (v as u8 & 0x7f) | if i < 5 { 0x80 } else { 0 };
        v >>= 7;
    }
}

// ---------------------------------------------------------------------------------------
// Load

/// The label pairs of series `i` (sorted by name; 9 labels).
pub fn series_labels(i: usize) -> Vec<(&'static str, String)> {
    let target = i / 500;
    let m = i % 500;
    let kind = (m / 10) % 4;
    let name = match kind {
        0 => format!("app_requests_{}_total", m / 10),
        1 => format!("app_errors_{}_total", m / 10),
        2 => format!("app_latency_{}_seconds", m / 10),
        _ => format!("app_build_{}_info", m / 10),
    };
    vec![
        ("__name__", name),
        ("cluster", format!("eu-{}", target % 4)),
        ("env", "production".into()),
        ("handler", format!("/api/v1/endpoint{}", m % 10)),
        (
            "instance",
            format!(
                "10.{}.{}.{}:9100",
                (target >> 16) & 255,
                (target >> 8) & 255,
                target & 255
            ),
        ),
        ("job", format!("service-{}", target % 20)),
        ("namespace", format!("team-{}", target % 12)),
        ("pod", format!("service-{}-7c9f{:05x}", target % 20, target)),
        ("region", "europe-west4".into()),
    ]
}

pub fn kind_of(i: usize) -> usize {
    ((i % 500) / 10) % 4
}

pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Next value of series `i` at round `r` (counters, slow counters, random gauges, constants).
pub fn next_value(i: usize, r: u64, prev: f64) -> f64 {
    let h = mix((i as u64) << 32 ^ r);
    match kind_of(i) {
        0 => prev + (h % 1000) as f64,
        1 => prev + if h.is_multiple_of(10) { 1.0 } else { 0.0 },
        2 => ((h >> 11) as f64 / (1u64 << 53) as f64) * 2.5 + 1e-6,
        _ => 1.0,
    }
}

/// One request's template: the body plus where each series' sample bytes are.
pub struct Batch {
    pub body: Vec<u8>,
    pub series: Vec<usize>,
    /// Offset of each series' value bytes in `body`.
    pub at: Vec<usize>,
    pub values: Vec<f64>,
    /// A remote-write 2.0 body (`io.prometheus.write.v2.Request`).
    pub v2: bool,
}

/// Whether 2.0 templates carry per-series metadata (`ingest_bench --v2-metadata`).
pub static V2_METADATA: AtomicBool = AtomicBool::new(false);

impl Batch {
    pub fn build(series: std::ops::Range<usize>, v2: bool) -> Batch {
        if v2 {
            return Self::build_v2(series);
        }
        let mut z = SnappyTemplate::new();
        let mut at = Vec::with_capacity(series.len());
        let mut ts = Vec::new();
        for i in series.clone() {
            ts.clear();
            for (n, v) in series_labels(i) {
                let mut l = Vec::with_capacity(n.len() + v.len() + 4);
                put_field(&mut l, 1, n.as_bytes());
                put_field(&mut l, 2, v.as_bytes());
                put_field(&mut ts, 1, &l);
            }
            let mut head = Vec::with_capacity(ts.len() + 8);
            put_varint(&mut head, 1 << 3 | 2);
            put_varint(&mut head, (ts.len() + SAMPLE_FIELD.len()) as u64);
            head.extend_from_slice(&ts);
            z.label(&head);
            at.push(z.literal(&SAMPLE_FIELD) + VALUE_AT);
        }
        let (body, shift) = z.finish();
        for a in &mut at {
            *a += shift;
        }
        Batch {
            body,
            values: series.clone().map(|i| 1.0 + (i % 1000) as f64).collect(),
            series: series.collect(),
            at,
            v2: false,
        }
    }

    /// The same series as a 2.0 request: the batch's strings once in `symbols`, each
    /// series as packed `labels_refs` plus the same patchable sample field (a 2.0
    /// `Sample` has the same numbers as a 1.0 one).
    pub fn build_v2(series: std::ops::Range<usize>) -> Batch {
        let mut symbols: Vec<String> = vec![String::new()];
        let mut index: HashMap<String, u64> = HashMap::new();
        let mut refs: Vec<Vec<u64>> = Vec::with_capacity(series.len());
        let mut metas: Vec<Vec<u8>> = Vec::with_capacity(series.len());
        let mut intern = |s: String| {
            let next = symbols.len() as u64;
            *index.entry(s.clone()).or_insert_with(|| {
                symbols.push(s);
                next
            })
        };
        for i in series.clone() {
            let mut r = Vec::with_capacity(18);
            let labels = series_labels(i);
            for (n, v) in &labels {
                r.push(intern(n.to_string()));
                r.push(intern(v.clone()));
            }
            refs.push(r);
            // Per-series metadata, as Prometheus 3.5.3 with `metadata-wal-records` sends
            // it: type, help and unit of the series' family.
            let mut meta = Vec::new();
            if V2_METADATA.load(Ordering::Relaxed) {
                let name = &labels[0].1;
                let (kind, unit) = if name.ends_with("_total") {
                    (1, "")
                } else if name.ends_with("_seconds") {
                    (2, "seconds")
                } else {
                    (2, "")
                };
                put_varint(&mut meta, 1 << 3);
                put_varint(&mut meta, kind);
                put_varint(&mut meta, 3 << 3);
                put_varint(&mut meta, intern(format!("The {name} of the application.")));
                if !unit.is_empty() {
                    put_varint(&mut meta, 4 << 3);
                    put_varint(&mut meta, intern(unit.to_string()));
                }
            }
            metas.push(meta);
        }
        let mut z = SnappyTemplate::new();
        let mut table = Vec::new();
        for s in &symbols {
            put_field(&mut table, 4, s.as_bytes());
        }
        z.label(&table);
        let mut at = Vec::with_capacity(series.len());
        for (r, meta) in refs.iter().zip(&metas) {
            let mut packed = Vec::with_capacity(r.len() * 2);
            for &x in r {
                put_varint(&mut packed, x);
            }
            let mut ts = Vec::with_capacity(packed.len() + meta.len() + 8);
            put_field(&mut ts, 1, &packed);
            if !meta.is_empty() {
                put_field(&mut ts, 5, meta);
            }
            let mut head = Vec::with_capacity(ts.len() + 8);
            put_varint(&mut head, 5 << 3 | 2);
            put_varint(&mut head, (ts.len() + SAMPLE_FIELD.len()) as u64);
            head.extend_from_slice(&ts);
            z.label(&head);
            at.push(z.literal(&SAMPLE_FIELD) + VALUE_AT);
        }
        let (body, shift) = z.finish();
        for a in &mut at {
            *a += shift;
        }
        Batch {
            body,
            values: series.clone().map(|i| 1.0 + (i % 1000) as f64).collect(),
            series: series.collect(),
            at,
            v2: true,
        }
    }

    /// Writes round `r`'s samples (timestamp `t`) into the body.
    pub fn patch(&mut self, r: u64, t: i64) {
        for k in 0..self.series.len() {
            let v = next_value(self.series[k], r, self.values[k]);
            self.values[k] = v;
            let a = self.at[k];
            self.body[a..a + 8].copy_from_slice(&v.to_bits().to_le_bytes());
            put_ts6(&mut self.body[a + 9..a + 15], t);
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP/1.1 keep-alive client

pub type TlsStream = netsec::tokio_rustls::rustls::StreamOwned<
    netsec::tokio_rustls::rustls::ClientConnection,
    TcpStream,
>;

/// A connection to the server: plaintext or TLS (blocking rustls).
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// One keep-alive connection that posts remote-write bodies, reconnecting after an error.
pub struct Conn {
    addr: String,
    path: String,
    /// `Content-Type` and `X-Prometheus-Remote-Write-Version` headers of the protocol.
    proto_headers: &'static str,
    tls: Option<Arc<netsec::tokio_rustls::rustls::ClientConfig>>,
    stream: Option<Stream>,
    buf: Vec<u8>,
}

impl Conn {
    /// A connection to `addr` posting to `path` (`v2`: remote write 2.0 headers), over TLS
    /// when `tls` is given.
    pub fn new(
        addr: &str,
        path: &str,
        v2: bool,
        tls: Option<Arc<netsec::tokio_rustls::rustls::ClientConfig>>,
    ) -> Conn {
        Conn {
            addr: addr.into(),
            path: path.into(),
            proto_headers: if v2 {
                "Content-Type: application/x-protobuf;proto=io.prometheus.write.v2.Request\r\n\
                 X-Prometheus-Remote-Write-Version: 2.0.0\r\n"
            } else {
                "Content-Type: application/x-protobuf\r\nX-Prometheus-Remote-Write-Version: 0.1.0\r\n"
            },
            tls,
            stream: None,
            buf: Vec::with_capacity(4096),
        }
    }

    /// POSTs a remote-write body; returns (status, body text for non-2xx).
    pub fn post(&mut self, body: &[u8]) -> std::io::Result<(u16, String)> {
        if self.stream.is_none() {
            let s = TcpStream::connect(&self.addr)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(120)))?;
            self.stream = Some(match &self.tls {
                None => Stream::Plain(s),
                Some(cfg) => {
                    use netsec::tokio_rustls::rustls;
                    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")
                        .map_err(|e| std::io::Error::other(e.to_string()))?;
                    let c = rustls::ClientConnection::new(cfg.clone(), name)
                        .map_err(std::io::Error::other)?;
                    Stream::Tls(Box::new(rustls::StreamOwned::new(c, s)))
                }
            });
            self.buf.clear();
        }
        let r = self.exchange(body);
        if r.is_err() {
            self.stream = None;
        }
        r
    }

    fn exchange(&mut self, body: &[u8]) -> std::io::Result<(u16, String)> {
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
        let Some(s) = self.stream.as_mut() else {
            return Err(bad("not connected"));
        };
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\n{}Content-Encoding: snappy\r\n\
             Content-Length: {}\r\n\r\n",
            self.path,
            self.addr,
            self.proto_headers,
            body.len()
        );
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        // Response head.
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let n = read_some(s, &mut chunk)?;
            if n == 0 {
                return Err(bad("connection closed"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let text = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        let status: u16 = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| bad("bad status line"))?;
        let header = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        };
        let close = header("connection:").is_some_and(|v| v == "close");
        let mut body_out = Vec::new();
        self.buf.drain(..head_end);
        if status == 204 || status == 304 || status < 200 {
        } else if let Some(len) = header("content-length:").and_then(|v| v.parse::<usize>().ok()) {
            while self.buf.len() < len {
                let n = read_some(s, &mut chunk)?;
                if n == 0 {
                    return Err(bad("connection closed in body"));
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
            body_out.extend(self.buf.drain(..len));
        } else if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
            loop {
                let line_end = loop {
                    if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break p;
                    }
                    let n = read_some(s, &mut chunk)?;
                    if n == 0 {
                        return Err(bad("connection closed in chunk"));
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                };
                let size = usize::from_str_radix(
                    String::from_utf8_lossy(&self.buf[..line_end])
                        .split(';')
                        .next()
                        .unwrap_or("")
                        .trim(),
                    16,
                )
                .map_err(|_| bad("bad chunk size"))?;
                let need = line_end + 2 + size + 2;
                while self.buf.len() < need {
                    let n = read_some(s, &mut chunk)?;
                    if n == 0 {
                        return Err(bad("connection closed in chunk"));
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                body_out.extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
                self.buf.drain(..need);
                if size == 0 {
                    break;
                }
            }
        } else {
            s.read_to_end(&mut body_out)?;
            self.stream = None;
        }
        if close {
            self.stream = None;
        }
        let text = if (200..300).contains(&status) {
            String::new()
        } else {
            String::from_utf8_lossy(&body_out).into_owned()
        };
        Ok((status, text))
    }
}

// ---------------------------------------------------------------------------------------
// /proc

pub fn clk_tck() -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// `read` that retries when interrupted by a signal.
pub fn read_some(s: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match s.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// utime + stime of a process in seconds.
pub fn cpu_secs(pid: &str) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / clk_tck()
}

/// A `/proc/PID/status` field in kB.
pub fn status_kb(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Free ports that are also distinct from each other (a port released by one probe can be
/// handed out again by the next before anything binds it).
pub fn distinct_ports(n: usize) -> Vec<u16> {
    let mut out: Vec<u16> = Vec::new();
    while out.len() < n {
        let p = free_port();
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// Series `0..series` cut into requests of `per_request` series, dealt round-robin to
/// `conns` connections (each connection owns its series, so a series' samples arrive in
/// order). Returns the requests per connection and how many requests there are.
pub fn split_load(
    series: usize,
    per_request: usize,
    conns: usize,
    v2: bool,
) -> (Vec<Vec<Batch>>, usize) {
    let mut per_conn: Vec<Vec<Batch>> = (0..conns).map(|_| Vec::new()).collect();
    let mut k = 0;
    let mut s = 0;
    while s < series {
        let e = (s + per_request.max(1)).min(series);
        per_conn[k % conns.max(1)].push(Batch::build(s..e, v2));
        k += 1;
        s = e;
    }
    (per_conn, k)
}

/// Decodes a template body (1.0 or 2.0): per series its label pairs and its one sample.
#[allow(clippy::type_complexity)]
pub fn decode_template(
    raw: &[u8],
    v2: bool,
) -> Vec<(Vec<(String, String)>, Vec<storeapi::Sample>)> {
    use storeapi::wire::remote_write::{SeriesView, WriteRequestReader};
    let mut out = Vec::new();
    let mut v = SeriesView::default();
    let mut push = |v: &SeriesView<'_>| {
        out.push((
            v.labels
                .iter()
                .map(|l| (l.name.to_string(), l.value.to_string()))
                .collect(),
            v.samples.clone(),
        ))
    };
    if v2 {
        let mut r = storeapi::wire::remote_write_v2::RequestReader::new(raw)
            .expect("template has a valid symbol table");
        while r.next_series(&mut v).expect("template decodes") {
            push(&v);
        }
    } else {
        let mut r = WriteRequestReader::new(raw);
        while r.next_series(&mut v).expect("template decodes") {
            push(&v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_roundtrip_after_patches() {
        let mut b = Batch::build(0..300, false);
        for r in 0..3 {
            let t = 1_700_000_000_000 + r as i64 * 15_000;
            b.patch(r, t);
            let raw = storeapi::wire::remote_write::snappy_decompress(&b.body, 1 << 30).unwrap();
            let mut rd = storeapi::wire::remote_write::WriteRequestReader::new(&raw);
            let mut v = storeapi::wire::remote_write::SeriesView::default();
            let mut n = 0;
            while rd.next_series(&mut v).unwrap() {
                let want = series_labels(n);
                assert_eq!(v.labels.len(), want.len());
                for (l, (wn, wv)) in v.labels.iter().zip(&want) {
                    assert_eq!((l.name, l.value), (*wn, wv.as_str()));
                }
                assert_eq!(v.samples[0].t, t);
                assert_eq!(v.samples[0].v.to_bits(), b.values[n].to_bits());
                n += 1;
            }
            assert_eq!(n, 300);
        }
        // Compresses well (labels repeat across series).
        assert!(b.body.len() * 3 < 300 * 200, "body {} bytes", b.body.len());
    }

    #[test]
    fn v2_template_carries_the_same_series_after_patches() {
        let mut b1 = Batch::build(0..300, false);
        let mut b2 = Batch::build(0..300, true);
        for r in 0..3 {
            let t = 1_700_000_000_000 + r as i64 * 15_000;
            b1.patch(r, t);
            b2.patch(r, t);
            let d = |b: &Batch| {
                let raw =
                    storeapi::wire::remote_write::snappy_decompress(&b.body, 1 << 30).unwrap();
                decode_template(&raw, b.v2)
            };
            let (s1, s2) = (d(&b1), d(&b2));
            assert_eq!(s1.len(), 300);
            assert_eq!(s1.len(), s2.len());
            for (x, y) in s1.iter().zip(&s2) {
                assert_eq!(x.0, y.0);
                assert_eq!(x.1[0].t, y.1[0].t);
                assert_eq!(x.1[0].v.to_bits(), y.1[0].v.to_bits());
            }
        }
    }
}

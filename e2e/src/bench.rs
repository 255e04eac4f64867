//! Helpers the benchmark binaries share (`compact_bench`, `query_bench`, `store_bench`):
//! command-line numbers, the `orrery` binary to measure, process CPU and memory from
//! `/proc`, timed HTTP queries with answers to compare, XOR chunks for generated blocks
//! and `/metrics` text read into sums per metric name.

pub mod rwload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use promql::Value;
use storeapi::Labels;
use tsdb::chunk::{Chunk, Encoding, XorChunk};

use crate::promqlcmp::{Answer, parse_api_answer};

/// The value after `name` on the command line (`--series 500`), or `default`; anything
/// that is not a number stops the benchmark with a message naming the flag.
pub fn arg_num(name: &str, default: i64) -> i64 {
    arg_str(name)
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} wants a number, got {v:?}"))
        })
        .unwrap_or(default)
}

/// The value after `name` on the command line, if given.
pub fn arg_str(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// The `orrery` binary a benchmark measures: `--orrery PATH`, else `ORRERY_BIN`, else the
/// one beside the benchmark executable (same profile: `cargo build --release --bin orrery
/// --bin <bench>` puts both in `target/release/`).
pub fn orrery_for_bench() -> PathBuf {
    if let Some(p) = arg_str("--orrery") {
        return PathBuf::from(p);
    }
    if let Ok(p) = std::env::var("ORRERY_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current executable");
    let p = exe.with_file_name("orrery");
    assert!(
        p.is_file(),
        "orrery binary not found at {}: run `cargo build --release --bin orrery` (or give \
         --orrery PATH / set ORRERY_BIN)",
        p.display()
    );
    p
}

/// Peak RSS (KiB, `VmHWM`) and user+system CPU ticks (1/100 s) of a running process.
pub fn proc_stats(pid: u32) -> Option<(u64, u64)> {
    let hwm = status_kib(pid, "VmHWM:")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((hwm, ticks))
}

/// Current resident set (KiB, `VmRSS`) of a running process.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// Anonymous resident memory (KiB, `RssAnon`): the heap, without mapped files such as a
/// memory-mapped index the kernel may drop at any time.
pub fn rss_anon_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "RssAnon:")
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `samples` cut into XOR chunks of 120 samples, as a head cuts them at 15 s scrapes.
pub fn xor_chunks(samples: &[(i64, f64)]) -> Vec<Chunk> {
    samples
        .chunks(120)
        .map(|p| {
            let mut c = XorChunk::new();
            for &(t, v) in p {
                c.append(t, v).expect("append in time order");
            }
            Chunk {
                min_time: p[0].0,
                max_time: p[p.len() - 1].0,
                encoding: Encoding::Xor,
                data: Bytes::from(c.into_bytes()),
            }
        })
        .collect()
}

/// A GET on loopback that waits up to ten minutes for the answer (long-range queries):
/// (status, body).
pub fn get(addr: &str, path: &str) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(600)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok((code, body))
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

/// One timed request: wall time until the whole body is read; panics unless 200 (a
/// benchmark of failed queries is void).
pub fn timed(addr: &str, path: &str) -> Duration {
    let t = Instant::now();
    let r = get(addr, path);
    let d = t.elapsed();
    match r {
        Ok((200, _)) => d,
        Ok((code, body)) => panic!("GET {addr}{path}: {code}: {}", truncate(&body)),
        Err(e) => panic!("GET {addr}{path}: {e}"),
    }
}

/// At most the first 500 bytes of `s` (for messages).
pub fn truncate(s: &str) -> &str {
    let mut end = s.len().min(500);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The parsed answer of a query, with the labels in `strip` removed from every series
/// (a receiver's or gateway's external labels, which the reference does not have).
pub fn answer(addr: &str, path: &str, strip: &[&str]) -> Answer {
    let a = match get(addr, path) {
        Ok((_, body)) => parse_api_answer(&body).unwrap_or_else(|e| Answer::Error {
            kind: "client".into(),
            msg: e,
        }),
        Err(e) => Answer::Error {
            kind: "client".into(),
            msg: e,
        },
    };
    let fix = |l: &mut Labels| {
        for n in strip {
            l.remove(n);
        }
    };
    match a {
        Answer::Value(Value::Vector(mut v)) => {
            v.iter_mut().for_each(|(l, _)| fix(l));
            Answer::Value(Value::Vector(v))
        }
        Answer::Value(Value::Matrix(mut m)) => {
            m.iter_mut().for_each(|(l, _)| fix(l));
            Answer::Value(Value::Matrix(m))
        }
        other => other,
    }
}

/// Number of series of an answer, or the error.
pub fn series_count(a: &Answer) -> String {
    match a {
        Answer::Value(Value::Vector(v)) => v.len().to_string(),
        Answer::Value(Value::Matrix(m)) => m.len().to_string(),
        Answer::Value(_) => "1".into(),
        Answer::Error { msg, .. } => format!("error: {msg}"),
    }
}

/// The median (sorts `v`).
pub fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Milliseconds as a float.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A `/metrics` text read as name → value summed over the name's series. Histogram and
/// summary families appear under their sample names (`_sum`, `_count`; `_bucket` lines
/// are left out), so a benchmark can diff any counter it finds without knowing the set.
pub fn metric_sums(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let name = l.split(['{', ' ']).next().unwrap_or("");
        if name.is_empty() || name.ends_with("_bucket") {
            continue;
        }
        if let Some(v) = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *out.entry(name.to_string()).or_insert(0.0) += v;
        }
    }
    out
}

/// The metrics that grew from `before` to `after` and whose names contain one of
/// `words`: (name, growth).
pub fn metric_growth(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    words: &[&str],
) -> Vec<(String, f64)> {
    after
        .iter()
        .filter(|(n, _)| words.iter().any(|w| n.contains(w)))
        .filter_map(|(n, v)| {
            let d = v - before.get(n).copied().unwrap_or(0.0);
            (d > 0.0).then(|| (n.clone(), d))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_add_series_and_skip_buckets() {
        let text = "# HELP x y\nfoo_total{a=\"1\"} 2\nfoo_total{a=\"2\"} 3.5\n\
                    h_bucket{le=\"1\"} 9\nh_sum 4\nh_count 2\nbare 7\n";
        let m = metric_sums(text);
        assert_eq!(m.get("foo_total"), Some(&5.5));
        assert_eq!(m.get("h_sum"), Some(&4.0));
        assert_eq!(m.get("bare"), Some(&7.0));
        assert!(!m.contains_key("h_bucket"));
        let later = metric_sums("foo_total 9\nh_sum 4\nbare 8\n");
        let g = metric_growth(&m, &later, &["foo", "h_"]);
        assert_eq!(g, vec![("foo_total".to_string(), 3.5)]);
    }

    #[test]
    fn xor_chunks_cut_every_120_samples() {
        let s: Vec<(i64, f64)> = (0..250).map(|i| (i * 15_000, i as f64)).collect();
        let c = xor_chunks(&s);
        assert_eq!(c.len(), 3);
        assert_eq!((c[0].min_time, c[0].max_time), (0, 119 * 15_000));
        assert_eq!((c[2].min_time, c[2].max_time), (240 * 15_000, 249 * 15_000));
    }
}

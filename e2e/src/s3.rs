//! A real S3 server for the object-storage tests: moto's `moto_server` (PyPI
//! `moto[server]`, installed into the cache by `scripts/install-s3-server.sh`), plus
//! [`S3Gate`], a TCP relay in front of it that records every request in arrival order
//! and can be closed (connections refused, open ones cut) and opened again without
//! losing the server's in-memory objects.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{Proc, free_port, http_request, wait_for, workspace_root};

/// moto checks no signatures but treats a request without credentials as anonymous
/// (private objects: 403), so the helpers send a well-formed, unchecked one.
const AUTH: (&str, &str) = (
    "Authorization",
    "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00",
);

/// Path of `moto_server` in the cache (`ORRERY_MOTO_SERVER` overrides it).
pub fn moto_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("ORRERY_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    let cache = std::env::var("ORRERY_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join(".cache"));
    let p = cache.join("moto/bin/moto_server");
    assert!(
        p.is_file(),
        "moto_server (the S3 server these tests need) not found at {}: run \
         scripts/install-s3-server.sh (scripts/test.sh does) or set ORRERY_MOTO_SERVER",
        p.display()
    );
    p
}

/// A running `moto_server` on 127.0.0.1 (objects in its memory; gone when it stops).
pub struct MotoServer {
    pub proc: Proc,
    pub port: u16,
}

impl MotoServer {
    /// Starts the server (log in `dir/moto.log`) and waits until it answers.
    pub fn start(dir: &Path) -> MotoServer {
        let port = free_port();
        let mut cmd = Command::new(moto_server_bin());
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let proc = Proc::spawn("moto_server", cmd, dir.join("moto.log"));
        let m = MotoServer { proc, port };
        let up = wait_for(Duration::from_secs(60), || {
            http_request(&m.addr(), "GET", "/", &[], &[])
                .ok()
                .filter(|(code, _)| *code == 200)
        });
        assert!(
            up.is_some(),
            "moto_server did not answer on {}; log:\n{}",
            m.addr(),
            m.proc.log_text()
        );
        m
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (path-style `PUT /<name>`).
    pub fn create_bucket(&self, name: &str) {
        let (code, body) = http_request(&self.addr(), "PUT", &format!("/{name}"), &[AUTH], &[])
            .unwrap_or_else(|e| panic!("create bucket {name}: {e}"));
        assert_eq!(code, 200, "create bucket {name}: {body}");
    }

    /// Every object in the bucket: (key, size), sorted by key.
    pub fn list(&self, bucket: &str) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut path = format!("/{bucket}?list-type=2&max-keys=1000");
            if let Some(t) = &token {
                path.push_str(&format!("&continuation-token={}", url_encode(t)));
            }
            let (code, body) = http_request(&self.addr(), "GET", &path, &[AUTH], &[])
                .unwrap_or_else(|e| panic!("list {bucket}: {e}"));
            assert_eq!(code, 200, "list {bucket}: {body}");
            for c in body.split("<Contents>").skip(1) {
                let key = xml_field(c, "Key").unwrap_or_default();
                let size = xml_field(c, "Size")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                out.push((key, size));
            }
            token = xml_field(&body, "NextContinuationToken");
            if token.is_none() {
                break;
            }
        }
        out.sort();
        out
    }

    /// Writes an object (a single PUT), for tests that damage a bucket.
    pub fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        let (code, text) = http_request(
            &self.addr(),
            "PUT",
            &format!("/{bucket}/{key}"),
            &[AUTH],
            body,
        )
        .unwrap_or_else(|e| panic!("PUT {key}: {e}"));
        assert_eq!(code, 200, "PUT {key}: {text}");
    }

    /// Deletes an object.
    pub fn delete(&self, bucket: &str, key: &str) {
        let (code, text) = http_request(
            &self.addr(),
            "DELETE",
            &format!("/{bucket}/{key}"),
            &[AUTH],
            &[],
        )
        .unwrap_or_else(|e| panic!("DELETE {key}: {e}"));
        assert!(code == 204 || code == 200, "DELETE {key}: {code} {text}");
    }

    /// An object's bytes.
    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let mut s = TcpStream::connect(self.addr()).expect("connect moto");
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        let req = format!(
            "GET /{bucket}/{key} HTTP/1.1\r\nHost: {}\r\n{}: {}\r\nConnection: close\r\n\r\n",
            self.addr(),
            AUTH.0,
            AUTH.1
        );
        s.write_all(req.as_bytes()).expect("send GET");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).expect("read GET");
        let split = find(&buf, b"\r\n\r\n").expect("HTTP response head");
        let head = String::from_utf8_lossy(&buf[..split]).to_string();
        assert!(head.starts_with("HTTP/1.1 200"), "GET {key}: {head}");
        let body = buf[split + 4..].to_vec();
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk_bytes(&body)
        } else {
            body
        }
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn xml_field(s: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = s.find(&open)? + open.len();
    let end = s[start..].find(&close)? + start;
    Some(s[start..end].to_string())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn dechunk_bytes(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = find(b, b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..i]).trim(), 16).unwrap_or(0);
        b = &b[i + 2..];
        if n == 0 || b.len() < n {
            break;
        }
        out.extend_from_slice(&b[..n]);
        b = &b[n..];
        if b.starts_with(b"\r\n") {
            b = &b[2..];
        }
    }
    out
}

/// One request seen by the gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Path without the query string, e.g. `/bucket/<ULID>/meta.json`.
    pub path: String,
}

#[derive(Default)]
struct GateState {
    log: Mutex<Vec<Request>>,
    open: AtomicBool,
    stop: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
    /// Requests whose path contains this wait (not forwarded) until it is cleared.
    stall: Mutex<Option<String>>,
}

/// A recording relay to an upstream server on loopback. Dropping it stops it.
pub struct S3Gate {
    pub port: u16,
    state: Arc<GateState>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl S3Gate {
    /// Relays 127.0.0.1:<new port> to `upstream` (open).
    pub fn start(upstream: &str) -> S3Gate {
        let port = free_port();
        let state = Arc::new(GateState::default());
        state.open.store(true, Ordering::SeqCst);
        let st = state.clone();
        let upstream = upstream.to_string();
        let thread = std::thread::spawn(move || accept_loop(port, &upstream, &st));
        let g = S3Gate {
            port,
            state,
            thread: Some(thread),
        };
        let ok = wait_for(Duration::from_secs(10), || {
            TcpStream::connect(g.addr()).ok().map(|_| ())
        });
        assert!(ok.is_some(), "S3 gate did not start on {}", g.addr());
        g
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Refuses new connections and cuts the open ones (the bucket is "down").
    pub fn close(&self) {
        self.state.open.store(false, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(100));
        for c in self.state.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Accepts connections again.
    pub fn open(&self) {
        self.state.open.store(true, Ordering::SeqCst);
        let ok = wait_for(Duration::from_secs(10), || {
            TcpStream::connect(self.addr()).ok().map(|_| ())
        });
        assert!(ok.is_some(), "S3 gate did not reopen on {}", self.addr());
    }

    /// Holds every request whose path contains `pattern` until [`S3Gate::release`].
    pub fn stall(&self, pattern: &str) {
        *self.state.stall.lock().unwrap() = Some(pattern.to_string());
    }

    pub fn release(&self) {
        *self.state.stall.lock().unwrap() = None;
    }

    /// The requests so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.state.log.lock().unwrap().clone()
    }

    /// Forgets the recorded requests.
    pub fn clear(&self) {
        self.state.log.lock().unwrap().clear();
    }
}

impl Drop for S3Gate {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(port: u16, upstream: &str, st: &Arc<GateState>) {
    let mut listener: Option<TcpListener> = None;
    while !st.stop.load(Ordering::SeqCst) {
        let open = st.open.load(Ordering::SeqCst);
        if open && listener.is_none() {
            if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
                let _ = l.set_nonblocking(true);
                listener = Some(l);
            }
        } else if !open && listener.is_some() {
            listener = None;
        }
        let Some(l) = &listener else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        match l.accept() {
            Ok((client, _)) => {
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(upstream) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                {
                    let mut conns = st.conns.lock().unwrap();
                    for s in [&client, &server] {
                        if let Ok(c) = s.try_clone() {
                            conns.push(c);
                        }
                    }
                }
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                let st2 = st.clone();
                std::thread::spawn(move || relay_requests(client, server, &st2));
                std::thread::spawn(move || {
                    let (mut from, mut to) = (s2, c2);
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(Shutdown::Both);
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Client → server: parses each HTTP/1.1 request head (logs it), forwards it and its
/// `Content-Length` body. Anything it cannot frame is forwarded raw.
fn relay_requests(mut client: TcpStream, mut server: TcpStream, st: &GateState) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        // Read until a full request head is buffered.
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            match client.read(&mut chunk) {
                Ok(0) | Err(_) => {
                    let _ = server.shutdown(Shutdown::Both);
                    return;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut first = head.lines().next().unwrap_or("").split_whitespace();
        let method = first.next().unwrap_or("").to_string();
        let target = first.next().unwrap_or("").to_string();
        let path = target.split('?').next().unwrap_or("").to_string();
        let lower = head.to_ascii_lowercase();
        let len: Option<usize> = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok());
        let chunked = lower.contains("transfer-encoding: chunked");
        loop {
            let stalled = st
                .stall
                .lock()
                .unwrap()
                .as_ref()
                .is_some_and(|p| path.contains(p.as_str()));
            if !stalled || st.stop.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        st.log.lock().unwrap().push(Request { method, path });
        if chunked {
            // Not framed here: relay the rest of the connection as is.
            if server.write_all(&buf).is_err() {
                return;
            }
            let _ = std::io::copy(&mut client, &mut server);
            let _ = server.shutdown(Shutdown::Both);
            return;
        }
        let total = head_end + len.unwrap_or(0);
        while buf.len() < total {
            match client.read(&mut chunk) {
                Ok(0) | Err(_) => {
                    let _ = server.shutdown(Shutdown::Both);
                    return;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        if server.write_all(&buf[..total]).is_err() {
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
        buf.drain(..total);
    }
}

//! Helpers for end-to-end tests: the reference Prometheus and promtool, the `orrery`
//! binary, free loopback ports and child processes that are stopped by PID on drop.
//!
//! A test that cannot find a real part it needs panics with a message saying how to get
//! it; it never passes by skipping.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod bench;
pub mod histograms;
pub mod promqlcmp;
pub mod s3;

/// The workspace root (where the README's commands run).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e crate lives in the workspace")
        .to_path_buf()
}

fn reference_bin(name: &str, env: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return PathBuf::from(p);
    }
    let cache = std::env::var("ORRERY_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join(".cache"));
    let p = cache.join("prometheus/usr/bin").join(name);
    assert!(
        p.is_file(),
        "reference {name} 3.5.3 not found at {}: run scripts/install-prometheus.sh \
         (the README's test command does this) or set {env}",
        p.display()
    );
    p
}

/// Path of the reference Prometheus 3.5.3 server binary.
pub fn prometheus_bin() -> PathBuf {
    reference_bin("prometheus", "ORRERY_PROMETHEUS")
}

/// Path of the reference promtool 3.5.3 binary.
pub fn promtool_bin() -> PathBuf {
    reference_bin("promtool", "ORRERY_PROMTOOL")
}

/// Path of Debian 12 (bookworm)'s own Prometheus 2.42 server, an older remote-write
/// client (`scripts/install-prometheus.sh` puts it in `.cache/prometheus-bookworm/`).
pub fn prometheus_242_bin() -> PathBuf {
    if let Ok(p) = std::env::var("ORRERY_PROMETHEUS_242") {
        return PathBuf::from(p);
    }
    let cache = std::env::var("ORRERY_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join(".cache"));
    let p = cache.join("prometheus-bookworm/usr/bin/prometheus");
    assert!(
        p.is_file(),
        "Debian 12's prometheus 2.42 not found at {}: run scripts/install-prometheus.sh \
         (the README's test command does this) or set ORRERY_PROMETHEUS_242",
        p.display()
    );
    p
}

/// Path of the `orrery` binary built from this workspace (the test command builds it first).
pub fn orrery_bin() -> PathBuf {
    if let Ok(p) = std::env::var("ORRERY_BIN") {
        return PathBuf::from(p);
    }
    // Test executables live in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("current test executable");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable under target/<profile>/deps");
    let p = profile_dir.join("orrery");
    assert!(
        p.is_file(),
        "orrery binary not found at {}: run `cargo build --workspace --all-targets` (or `cargo build --bin orrery`) first (the README's test command does)",
        p.display()
    );
    p
}

/// Path of the release `orrery` binary (`cargo build --release --bin orrery`), for
/// benchmarks; `ORRERY_BIN` overrides it.
pub fn orrery_release_bin() -> PathBuf {
    if let Ok(p) = std::env::var("ORRERY_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target"));
    let p = target.join("release").join("orrery");
    assert!(
        p.is_file(),
        "release orrery binary not found at {}: run `cargo build --release --bin orrery` first",
        p.display()
    );
    p
}

/// A loopback port nobody listens on right now, below the kernel's ephemeral range when
/// there is room: a test that kills a server and starts it again on the same port must not
/// find the port taken by some client's outgoing connection in between.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(0);
    const LOW: u32 = 10_000;
    if ephemeral_low > LOW + 1000 {
        let span = ephemeral_low - LOW;
        // Test binaries run one after another; the pid spreads them over the range anyway.
        let start = std::process::id().wrapping_mul(7919) % span;
        for _ in 0..span {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = LOW + (start + n.wrapping_mul(13)) % span;
            if let Ok(port) = u16::try_from(port)
                && TcpListener::bind(("127.0.0.1", port)).is_ok()
            {
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}

/// A child process that is killed (SIGKILL by PID) and reaped when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr sent to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).expect("create process log");
        let err = out.try_clone().expect("clone log handle");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("failed to start {name}: {e}"));
        Proc {
            name: name.to_string(),
            child,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by PID (e.g. "TERM", "KILL").
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Kills with SIGKILL and waits for the process to be gone.
    pub fn kill(&mut self) {
        self.signal("KILL");
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits up to `timeout` for a clean exit; returns the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.signal("TERM");
        self.wait_exit(timeout)
    }

    /// Waits up to `timeout` for the process to exit by itself; its exit status, `None`
    /// when it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The process's output so far (for assertion messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// A minimal HTTP/1.1 GET against loopback, returning (status, body). Enough for
/// readiness probes and JSON APIs without pulling an HTTP client into every test.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path, &[], &[])
}

/// A minimal HTTP/1.1 request against loopback with `Connection: close`.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    http_exchange(addr, method, path, headers, body).map(|r| (r.status, r.body))
}

/// An HTTP answer with its headers (names lower-cased).
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// [`http_request`] returning the response headers too.
pub fn http_exchange(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    // Head and body in one write, as HTTP clients buffer them: written apart, the body
    // can reach a server that already answered (e.g. 405 before reading it) and closed,
    // and the reset that draws can discard the answer before it is read.
    let mut whole = req.into_bytes();
    whole.extend_from_slice(body);
    s.write_all(&whole)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// POSTs `series` as a snappy-compressed remote-write 1.0 request to `path` on `addr`
/// (`/api/v1/write` for Prometheus, `/api/v1/receive` for a receiver), with
/// `extra_headers` (a tenant header, say) after the protocol's own.
pub fn remote_write(
    addr: &str,
    path: &str,
    series: &[(storeapi::Labels, Vec<storeapi::Sample>)],
    extra_headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    let body = storeapi::wire::remote_write::encode_write_request_snappy(
        series.iter().map(|(l, s)| (l, s.as_slice())),
    );
    let mut h = vec![
        ("Content-Type", "application/x-protobuf"),
        ("Content-Encoding", "snappy"),
        ("X-Prometheus-Remote-Write-Version", "0.1.0"),
    ];
    h.extend_from_slice(extra_headers);
    http_request(addr, "POST", path, &h, &body)
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

/// Polls `f` every 200ms until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A running reference Prometheus on 127.0.0.1 with its own data dir.
pub struct Prometheus {
    pub proc: Proc,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus with `config` (prometheus.yml text; `{{PORT}}` is replaced by
    /// its own web port) plus `extra_args`, and waits until `/-/ready` answers 200.
    pub fn start(config: &str, extra_args: &[&str]) -> Prometheus {
        Self::start_bin(&prometheus_bin(), config, extra_args)
    }

    /// As [`Prometheus::start`] with a given server binary (e.g. Debian 12's 2.42).
    pub fn start_bin(bin: &Path, config: &str, extra_args: &[&str]) -> Prometheus {
        Self::start_bin_prepared(bin, config, extra_args, |_| {})
    }

    /// As [`Prometheus::start`], but first calls `prepare` with the (not yet existing)
    /// data dir path, e.g. to backfill blocks with promtool before the server opens it.
    pub fn start_prepared(
        config: &str,
        extra_args: &[&str],
        prepare: impl FnOnce(&Path),
    ) -> Prometheus {
        Self::start_bin_prepared(&prometheus_bin(), config, extra_args, prepare)
    }

    fn start_bin_prepared(
        bin: &Path,
        config: &str,
        extra_args: &[&str],
        prepare: impl FnOnce(&Path),
    ) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir for prometheus");
        prepare(&dir.path().join("data"));
        let port = free_port();
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(&cfg, config.replace("{{PORT}}", &port.to_string()))
            .expect("write prometheus.yml");
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(extra_args);
        let proc = Proc::spawn("prometheus", cmd, dir.path().join("prometheus.log"));
        let p = Prometheus { proc, port, dir };
        let addr = p.addr();
        let ready = wait_for(Duration::from_secs(60), || {
            matches!(http_get(&addr, "/-/ready"), Ok((200, _))).then_some(())
        });
        assert!(
            ready.is_some(),
            "prometheus did not become ready on {addr}; log:\n{}",
            p.proc.log_text()
        );
        p
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Parses `promtool tsdb dump` output, `{a="b", c="d"} <value %g> <timestamp>` per line:
/// series (as printed) → `(timestamp ms, value)` in the order printed.
pub fn parse_promtool_dump(out: &str) -> std::collections::BTreeMap<String, Vec<(i64, f64)>> {
    let mut m: std::collections::BTreeMap<String, Vec<(i64, f64)>> = Default::default();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let (rest, ts) = line.rsplit_once(' ').expect("dump line has a timestamp");
        let (labels, v) = rest.rsplit_once(' ').expect("dump line has a value");
        let t: i64 = ts
            .parse()
            .unwrap_or_else(|e| panic!("timestamp in {line:?}: {e}"));
        let v: f64 = v
            .parse()
            .unwrap_or_else(|e| panic!("value in {line:?}: {e}"));
        m.entry(labels.to_string()).or_default().push((t, v));
    }
    m
}

/// Copies the directory tree `from` to `to` (regular files and directories; created as
/// needed). Panics naming the path on an I/O error.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
    let entries =
        std::fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
    for e in entries {
        let e = e.unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
        let ty = e
            .file_type()
            .unwrap_or_else(|err| panic!("stat {:?}: {err}", e.path()));
        let dst = to.join(e.file_name());
        if ty.is_dir() {
            copy_dir(&e.path(), &dst);
        } else if ty.is_file() {
            std::fs::copy(e.path(), &dst)
                .unwrap_or_else(|err| panic!("copy {:?}: {err}", e.path()));
        }
    }
}

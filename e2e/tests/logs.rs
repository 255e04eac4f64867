//! Logs written to a pipe or a file: no terminal escape codes, logfmt by default,
//! one JSON object per line with `--log.format=json`, and `--log.level` filters.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{free_port, http_get, orrery_bin, wait_for};

/// Starts `orrery receive` with stderr on a pipe, waits until it is ready, stops it with
/// SIGTERM and returns everything it wrote to stderr.
fn receive_stderr(extra: &[&str], rust_log: Option<&str>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (rw, grpc, http) = (free_port(), free_port(), free_port());
    let mut cmd = Command::new(orrery_bin());
    cmd.arg("receive")
        .arg(format!("--tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--remote-write.address=127.0.0.1:{rw}"))
        .arg(format!("--grpc-address=127.0.0.1:{grpc}"))
        .arg(format!("--http-address=127.0.0.1:{http}"))
        .args(extra)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(l) = rust_log {
        cmd.env("RUST_LOG", l);
    }
    let mut child = cmd.spawn().expect("start orrery receive");
    let addr = format!("127.0.0.1:{http}");
    let ready = wait_for(Duration::from_secs(60), || {
        matches!(http_get(&addr, "/-/ready"), Ok((200, _))).then_some(())
    });
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if child.try_wait().ok().flatten().is_none() {
        let _ = child.kill();
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut err).unwrap();
    }
    let _ = child.wait();
    assert!(ready.is_some(), "receiver did not become ready:\n{err}");
    err
}

#[test]
fn logs_on_a_pipe_are_logfmt_without_escape_codes() {
    let err = receive_stderr(&[], None);
    assert!(
        !err.contains('\u{1b}'),
        "escape codes in piped logs:\n{err}"
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.is_empty()).collect();
    assert!(lines.len() >= 3, "{err}");
    for l in &lines {
        assert!(l.starts_with("ts=20"), "not logfmt: {l}");
        assert!(
            l.contains(" level=info ") || l.contains(" level=warn "),
            "{l}"
        );
        assert!(l.contains(" caller="), "{l}");
        assert!(l.contains(" msg="), "{l}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("msg=\"receiver ready\"") && l.contains(" tenants=0")),
        "{err}"
    );
}

#[test]
fn json_log_lines_parse_and_log_level_filters() {
    let err = receive_stderr(&["--log.format=json"], None);
    assert!(!err.contains('\u{1b}'), "{err}");
    let mut msgs = Vec::new();
    for l in err.lines().filter(|l| !l.is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["ts"].as_str().is_some_and(|t| t.ends_with('Z')), "{l}");
        assert!(v["level"].is_string() && v["caller"].is_string(), "{l}");
        msgs.push(v["msg"].as_str().unwrap_or_default().to_string());
    }
    assert!(msgs.iter().any(|m| m == "receiver ready"), "{err}");

    // --log.level=warn drops the info lines; it beats RUST_LOG.
    let err = receive_stderr(&["--log.level=warn"], Some("debug"));
    assert!(!err.contains("level=info"), "{err}");
    assert!(!err.contains("level=debug"), "{err}");
    // RUST_LOG still works when --log.level is not given.
    let err = receive_stderr(&[], Some("warn"));
    assert!(!err.contains("level=info"), "{err}");
}

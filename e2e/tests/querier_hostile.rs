//! Hostile queries against `orrery query` and `orrery standalone` (issue #22): deeply
//! nested expressions, megabyte-long expressions and matchers, pathological regexes and
//! huge `match[]` lists. Each must be answered as the reference Prometheus 3.5.3 answers it
//! (compared side by side where Prometheus answers in reasonable time) or refused with a
//! 4xx naming the limit, within the timeout; after every case both processes are alive
//! and answer a normal query.
//!
//! Data: Prometheus scrapes itself every second and remote-writes into the standalone's
//! receiver; `orrery query` reads the standalone's StoreAPI.

mod querier_common;

use e2e::{Proc, free_port, http_get, orrery_bin, wait_for};
use querier_common::{Querier, diff, enc, instant, now_secs, post_form, prometheus};
use std::process::Command;
use std::time::Duration;

/// `--query.timeout` of both orrery frontends.
const TIMEOUT_S: u64 = 20;
/// The default `--query.max-nesting-depth`.
const MAX_DEPTH: usize = 10_000;
/// The default `--query.max-length`.
const MAX_LENGTH: usize = 1 << 20;

struct Standalone {
    proc: Proc,
    http: String,
    grpc: String,
    remote_write: String,
    _dir: tempfile::TempDir,
}

fn standalone() -> Standalone {
    let dir = tempfile::tempdir().expect("standalone dir");
    let http = format!("127.0.0.1:{}", free_port());
    let grpc = format!("127.0.0.1:{}", free_port());
    let rw = format!("127.0.0.1:{}", free_port());
    let rhttp = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(orrery_bin());
    cmd.arg("standalone")
        .arg(format!("--tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--http-address={http}"))
        .arg(format!("--grpc-address={grpc}"))
        .arg(format!("--remote-write.address={rw}"))
        .arg(format!("--receive.http-address={rhttp}"))
        .arg(format!("--store.grpc-address=127.0.0.1:{}", free_port()))
        .arg(format!("--store.http-address=127.0.0.1:{}", free_port()))
        .arg(format!("--compact.http-address=127.0.0.1:{}", free_port()));
    let proc = Proc::spawn("standalone", cmd, dir.path().join("standalone.log"));
    let ready = wait_for(Duration::from_secs(30), || {
        matches!(http_get(&http, "/-/ready"), Ok((200, _))).then_some(())
    });
    assert!(
        ready.is_some(),
        "standalone not ready on {http}; log:\n{}",
        proc.log_text()
    );
    Standalone {
        proc,
        http,
        grpc,
        remote_write: format!("http://{rw}/api/v1/receive"),
        _dir: dir,
    }
}

/// The process is running and answers a normal query.
fn assert_alive(name: &str, proc: &mut Proc, addr: &str, after: &str) {
    assert!(
        matches!(proc.child.try_wait(), Ok(None)),
        "{name} exited after {after}; log tail:\n{}",
        tail(&proc.log_text())
    );
    let (code, v) = instant(addr, "1 + 1", now_secs());
    assert_eq!(
        (code, v["data"]["result"][1].as_str()),
        (200, Some("2")),
        "{name} does not answer after {after}: {v}"
    );
}

fn tail(s: &str) -> &str {
    let start = s.len().saturating_sub(3000);
    let mut i = start;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

fn nested(open: &str, leaf: &str, close: &str, n: usize) -> String {
    let mut q = String::with_capacity((open.len() + close.len()) * n + leaf.len());
    for _ in 0..n {
        q.push_str(open);
    }
    q.push_str(leaf);
    for _ in 0..n {
        q.push_str(close);
    }
    q
}

/// The nested shapes of the issue at depth `n`.
fn deep_cases(n: usize) -> Vec<(String, String)> {
    vec![
        (format!("parens x{n}"), nested("(", "vector(1)", ")", n)),
        (format!("calls x{n}"), nested("abs(", "vector(1)", ")", n)),
        (format!("unary minus x{n}"), format!("{}1", "-".repeat(n))),
        (
            format!("unary on parens x{n}"),
            nested("-(", "vector(1)", ")", n),
        ),
        (
            format!("binary chain x{n}"),
            format!("vector(1){}", " + 1".repeat(n - 1)),
        ),
        (
            format!("subqueries x{n}"),
            nested("max_over_time(", "vector(1)", "[1m:1m])", n),
        ),
        (
            format!("aggregations x{n}"),
            nested("sum(", "vector(1)", ")", n),
        ),
    ]
}

/// What a case may answer.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// The same answer as Prometheus (both 200 and equal data, or both 4xx), or a 400
    /// naming the nesting or length limit.
    AsPrometheus,
    /// 200, or a 4xx.
    AnswerOr4xx,
}

struct Target<'a> {
    name: &'static str,
    addr: String,
    proc: &'a mut Proc,
}

#[allow(clippy::too_many_arguments)]
fn run_case(
    targets: &mut [Target<'_>],
    prom: Option<&str>,
    expect: Expect,
    case: &str,
    path: &str,
    form: &[(&str, &str)],
    report: &mut Vec<String>,
) {
    let theirs = prom.map(|p| post_form(p, path, form));
    for t in targets.iter_mut() {
        let (code, v, took) = post_form(&t.addr, path, form);
        let error = v["error"].as_str().unwrap_or("");
        report.push(format!(
            "{:<10} {case:<40} {code} in {:>6.0} ms {}",
            t.name,
            took.as_secs_f64() * 1e3,
            error.chars().take(100).collect::<String>()
        ));
        assert!(
            took < Duration::from_secs(TIMEOUT_S + 5),
            "{}: {case} took {took:?}",
            t.name
        );
        assert!(
            code == 200 || (400..500).contains(&code),
            "{}: {case}: status {code}: {v}",
            t.name
        );
        if code == 400 && (error.contains("nested") || error.contains("too long")) {
            assert!(
                error.contains("--query.max-nesting-depth") || error.contains("--query.max-length"),
                "{}: {case}: a limit error must name its flag: {error}",
                t.name
            );
        }
        if let (Expect::AsPrometheus, Some((pcode, pv, _))) = (expect, &theirs) {
            if *pcode == 200 && code == 400 {
                // Refusing what Prometheus answers is allowed only by a named limit.
                assert!(
                    error.contains("(--query.max-nesting-depth)")
                        || error.contains("(--query.max-length)"),
                    "{}: {case}: Prometheus answers, we refuse: {v}",
                    t.name
                );
            } else if *pcode == 200 {
                assert_eq!(code, 200, "{}: {case}: Prometheus answers: {v}", t.name);
                if path.ends_with("/query") {
                    assert_eq!(
                        diff(&v["data"], &pv["data"]),
                        None,
                        "{}: {case}: answers differ",
                        t.name
                    );
                }
            } else {
                assert!(
                    (400..500).contains(&code),
                    "{}: {case}: Prometheus refuses ({pcode}), we answer {code}",
                    t.name
                );
            }
        }
        assert_alive(t.name, t.proc, &t.addr, case);
    }
    if let Some((pcode, _, took)) = theirs {
        report.push(format!(
            "{:<10} {case:<40} {pcode} in {:>6.0} ms",
            "prometheus",
            took.as_secs_f64() * 1e3
        ));
    }
}

#[test]
fn hostile_queries_are_answered_or_refused_and_never_crash() {
    let mut sa = standalone();
    let prom = prometheus(&[], std::slice::from_ref(&sa.remote_write));
    let timeout = format!("--query.timeout={TIMEOUT_S}s");
    let mut q = Querier::start(&[&sa.grpc], &[&timeout]);
    // Wait until Prometheus's own series reach the store.
    let seen = wait_for(Duration::from_secs(60), || {
        let (code, v) = instant(&q.http, "up", now_secs());
        (code == 200
            && v["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty()))
        .then_some(())
    });
    assert!(seen.is_some(), "no data reached the querier");
    let paddr = prom.addr();
    let t = format!("{:.3}", now_secs() - 10.0);
    let mut report = Vec::new();
    let mut targets = [
        Target {
            name: "query",
            addr: q.http.clone(),
            proc: &mut q.proc,
        },
        Target {
            name: "standalone",
            addr: sa.http.clone(),
            proc: &mut sa.proc,
        },
    ];

    // Deep nesting: answered as Prometheus at 1k and 5k; deeper, answered or refused
    // (Prometheus itself takes long at 100k, so it is not asked).
    for n in [1_000, 5_000, 20_000, 100_000] {
        for (name, query) in deep_cases(n) {
            let (prom_addr, expect) = if n <= 5_000 {
                (Some(paddr.as_str()), Expect::AsPrometheus)
            } else {
                (None, Expect::AnswerOr4xx)
            };
            run_case(
                &mut targets,
                prom_addr,
                expect,
                &name,
                "/api/v1/query",
                &[("query", &query), ("time", &t)],
                &mut report,
            );
        }
    }
    // The limit itself and one past it.
    let at = nested("(", "vector(1)", ")", MAX_DEPTH - 2);
    let past = nested("(", "vector(1)", ")", MAX_DEPTH - 1);
    for tg in targets.iter_mut() {
        let (code, v, _) = post_form(&tg.addr, "/api/v1/query", &[("query", &at), ("time", &t)]);
        assert_eq!(code, 200, "{}: at the depth limit: {v}", tg.name);
        let (code, v, _) = post_form(&tg.addr, "/api/v1/query", &[("query", &past), ("time", &t)]);
        assert_eq!(code, 400, "{}: past the depth limit: {v}", tg.name);
        assert_eq!(
            v["error"].as_str(),
            Some(
                format!(
                    "invalid parameter \"query\": query too deeply nested: depth {} exceeds the limit of {MAX_DEPTH} (--query.max-nesting-depth)",
                    MAX_DEPTH + 1
                )
                .as_str()
            ),
            "{}",
            tg.name
        );
        assert_eq!(v["errorType"].as_str(), Some("bad_data"));
    }
    // Range queries walk the same trees.
    for (name, query) in deep_cases(5_000) {
        let start = format!("{:.3}", now_secs() - 60.0);
        run_case(
            &mut targets,
            Some(&paddr),
            Expect::AsPrometheus,
            &format!("range {name}"),
            "/api/v1/query_range",
            &[
                ("query", &query),
                ("start", &start),
                ("end", &t),
                ("step", "15"),
            ],
            &mut report,
        );
    }

    // Megabyte-long expressions and matchers.
    let mb = "x".repeat(1_000_000);
    let long_string = format!("label_replace(vector(1), \"a\", \"{mb}\", \"\", \"\")");
    let long_matcher = format!("up{{job=\"{mb}\"}}");
    let alternation = (0..90_000)
        .map(|i| format!("v{i}"))
        .collect::<Vec<_>>()
        .join("|");
    let long_regex = format!("up{{job=~\"{alternation}\"}}");
    let too_long = format!("vector(1){}", " ".repeat(MAX_LENGTH));
    for (name, query, expect) in [
        ("1 MB string literal", &long_string, Expect::AsPrometheus),
        ("1 MB equality matcher", &long_matcher, Expect::AsPrometheus),
        ("700 KB regex alternation", &long_regex, Expect::AnswerOr4xx),
        (
            "query over --query.max-length",
            &too_long,
            Expect::AnswerOr4xx,
        ),
    ] {
        run_case(
            &mut targets,
            Some(&paddr),
            expect,
            name,
            "/api/v1/query",
            &[("query", query), ("time", &t)],
            &mut report,
        );
    }
    for tg in targets.iter_mut() {
        let (code, v, _) = post_form(&tg.addr, "/api/v1/query", &[("query", &too_long)]);
        assert_eq!(code, 400, "{}: {v}", tg.name);
        assert!(
            v["error"].as_str().is_some_and(
                |e| e.contains("exceed the limit of 1048576 bytes (--query.max-length)")
            ),
            "{}: {v}",
            tg.name
        );
    }

    // Pathological regexes: linear-time matching, bounded compilation.
    let deep_regex = format!("up{{job=~\"{}a{}\"}}", "(".repeat(300), ")".repeat(300));
    let huge_repeat = "up{job=~\"(a{1000}){1000}\"}".to_string();
    let backtracking = "up{job=~\"(a*)*(b+)+$\", instance=~\"(.*.*.*.*.*.*)*x\"}".to_string();
    for (name, query) in [
        ("regex nested 300 deep", &deep_regex),
        ("regex repetition of 1M", &huge_repeat),
        ("backtracking-prone regexes", &backtracking),
    ] {
        run_case(
            &mut targets,
            Some(&paddr),
            Expect::AnswerOr4xx,
            name,
            "/api/v1/query",
            &[("query", query), ("time", &t)],
            &mut report,
        );
    }

    // Huge and deep match[] lists on every selector endpoint.
    let deep_selector = nested("(", "up", ")", 5_000);
    let deeper_selector = nested("(", "up", ")", 20_000);
    let many: Vec<String> = (0..1_000).map(|i| format!("up{{x=\"{i}\"}}")).collect();
    let too_many: Vec<String> = (0..5_000).map(|i| format!("up{{x=\"{i}\"}}")).collect();
    for path in [
        "/api/v1/series",
        "/api/v1/labels",
        "/api/v1/label/job/values",
    ] {
        for (name, sels, expect) in [
            (
                "match[] nested 5k",
                vec![deep_selector.clone()],
                Expect::AsPrometheus,
            ),
            (
                "match[] nested 20k",
                vec![deeper_selector.clone()],
                Expect::AnswerOr4xx,
            ),
            ("1000 match[]", many.clone(), Expect::AsPrometheus),
            ("5000 match[]", too_many.clone(), Expect::AnswerOr4xx),
            (
                "match[] 1 MB matcher",
                vec![long_matcher.clone()],
                Expect::AsPrometheus,
            ),
        ] {
            let form: Vec<(&str, &str)> = sels.iter().map(|s| ("match[]", s.as_str())).collect();
            if path.contains("/label/") {
                // GET only: the selectors go in the URL, so keep them small there.
                if sels.len() > 1 || sels[0].len() > 100_000 {
                    continue;
                }
                for tg in targets.iter_mut() {
                    let (code, _) =
                        http_get(&tg.addr, &format!("{path}?match[]={}", enc(&sels[0])))
                            .unwrap_or((0, String::new()));
                    assert!(
                        (400..500).contains(&code) || code == 200,
                        "{}: {name}: {code}",
                        tg.name
                    );
                    assert_alive(tg.name, tg.proc, &tg.addr, name);
                }
                continue;
            }
            run_case(
                &mut targets,
                Some(&paddr),
                expect,
                &format!("{path} {name}"),
                path,
                &form,
                &mut report,
            );
        }
    }
    // Exemplar queries parse the expression too.
    for n in [5_000, 20_000] {
        run_case(
            &mut targets,
            Some(&paddr),
            if n <= 5_000 {
                Expect::AsPrometheus
            } else {
                Expect::AnswerOr4xx
            },
            &format!("query_exemplars nested {n}"),
            "/api/v1/query_exemplars",
            &[("query", &nested("(", "up", ")", n))],
            &mut report,
        );
    }
    println!("{}", report.join("\n"));
}

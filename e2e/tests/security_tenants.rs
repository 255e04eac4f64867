//! Writers bound to tenants, end to end with the real Prometheus 3.5.3 over HTTPS:
//! - receiver A (`--remote-write.http-config` with bearer tokens from files and basic-auth
//!   users, each bound to a tenant): `remote_write.authorization` lands in the token's
//!   tenant, basic auth in the user's; a wrong token gets 401, a tenant header naming
//!   another tenant than the credential's gets 403; nothing of theirs is written.
//! - receiver B (`--receive.tenant-certificate-field=organization` with a client CA):
//!   the tenant is the client certificate's O; a header for another tenant gets 403, a
//!   certificate without O 401, no certificate no connection.
//! - hostile input: huge and malformed `Authorization` headers, path-traversal tenants,
//!   a burst of distinct wrong passwords: each a 4xx, and the receiver keeps serving.
//!
//! Prints a table of every attempt and its outcome.

mod receiver_common;
mod security_common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use e2e::{Prometheus, wait_for};
use netsec::ClientTls;
use netsec::testing::Ca;
use receiver_common::{Receiver, labels, prom_value};
use security_common::{b64, https_get, https_write, tls_client, write};
use storeapi::Sample;

const TOKEN_A: &str = "team-a-token-4f9c2e7b1d8a";
const TOKEN_OPS: &str = "ops-token-unbound-77e1c0ffee";

/// The distinct `tenant_id`s of `up` series seen through a querier over both receivers.
fn tenants_with_up(querier: &str) -> BTreeSet<String> {
    let Ok((200, body)) = e2e::http_get(querier, "/api/v1/series?match[]=up") else {
        return BTreeSet::new();
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["tenant_id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name_and_labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// (what, receiver, client, headers, expected status; 0 = no TLS session)
type Attempt<'a> = (&'a str, &'a str, &'a ClientTls, Vec<(&'a str, String)>, u16);

#[test]
fn prometheus_writers_bound_to_tenants_by_token_user_and_certificate() {
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let ca = Ca::new("orrery e2e tenants CA");
    let server = ca.leaf("orrery", &["127.0.0.1"], 0x10);
    let cert_c = ca.leaf_with_subject("prometheus-c", "team-c", "", 0x11);
    let cert_bare = ca.leaf_with_subject("prometheus-bare", "", "", 0x12);
    let ca_file = write(dir, "ca.pem", &ca.pem());
    let tls_crt = write(dir, "tls.crt", &server.cert_pem);
    let tls_key = write(dir, "tls.key", &server.key_pem);
    let c_crt = write(dir, "c.crt", &cert_c.cert_pem);
    let c_key = write(dir, "c.key", &cert_c.key_pem);
    // As a mounted Secret would hold them: one token per file, trailing newline.
    let token_a_file = write(dir, "team-a.token", &format!("{TOKEN_A}\n"));
    write(dir, "ops.token", TOKEN_OPS);
    let wrong_token_file = write(dir, "wrong.token", "team-a-token-but-not-really");
    let hash = bcrypt::hash("bob-secret", 6).expect("bcrypt");
    let writers = write(
        dir,
        "writers.yml",
        &format!(
            "basic_auth_users:\n  bob: {hash}\n\
             user_tenants:\n  bob: team-b\n\
             bearer_tokens:\n\
             \x20 - name: prometheus-a\n    token_file: team-a.token\n    tenant: team-a\n\
             \x20 - name: ops\n    token_file: ops.token\n"
        ),
    );
    let recv_a = Receiver::start(
        &dir.join("data-a"),
        &dir.join("receive-a.log"),
        &[
            &format!("--remote-write.server-tls-cert={tls_crt}"),
            &format!("--remote-write.server-tls-key={tls_key}"),
            &format!("--remote-write.http-config={writers}"),
        ],
    );
    let recv_b = Receiver::start(
        &dir.join("data-b"),
        &dir.join("receive-b.log"),
        &[
            &format!("--remote-write.server-tls-cert={tls_crt}"),
            &format!("--remote-write.server-tls-key={tls_key}"),
            &format!("--remote-write.server-tls-client-ca={ca_file}"),
            "--receive.tenant-certificate-field=organization",
        ],
    );
    let queue = "    queue_config:\n      batch_send_deadline: 1s\n      min_backoff: 100ms\n      max_backoff: 1s\n";
    let remote = |name: &str, rw: &str, auth: &str, tls_extra: &str, headers: &str| {
        format!(
            "  - url: https://{rw}/api/v1/receive\n    name: {name}\n{auth}{headers}    tls_config:\n      ca_file: {ca_file}\n{tls_extra}{queue}"
        )
    };
    let token = |file: &str| format!("    authorization:\n      credentials_file: {file}\n");
    let bob = "    basic_auth:\n      username: bob\n      password: bob-secret\n";
    let client_cert = format!("      cert_file: {c_crt}\n      key_file: {c_key}\n");
    let header = |t: &str| format!("    headers:\n      THANOS-TENANT: {t}\n");
    let remotes = [
        remote("token-a", &recv_a.rw, &token(&token_a_file), "", ""),
        remote("basic-b", &recv_a.rw, bob, "", ""),
        remote("cert-c", &recv_b.rw, "", &client_cert, ""),
        remote("wrong-token", &recv_a.rw, &token(&wrong_token_file), "", ""),
        remote("basic-b-asks-a", &recv_a.rw, bob, "", &header("team-a")),
        remote(
            "cert-c-asks-d",
            &recv_b.rw,
            "",
            &client_cert,
            &header("team-d"),
        ),
    ]
    .concat();
    let prom = Prometheus::start(
        &format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: prometheus\n    static_configs:\n      - targets: ['127.0.0.1:{{{{PORT}}}}']\nremote_write:\n{remotes}"
        ),
        &[],
    );
    let (_q, querier) = start_querier(dir, &[&recv_a.grpc, &recv_b.grpc]);

    let want: BTreeSet<String> = ["team-a", "team-b", "team-c"].map(String::from).into();
    let seen = wait_for(Duration::from_secs(40), || {
        let s = tenants_with_up(&querier);
        (s == want).then_some(s)
    });
    assert!(
        seen.is_some(),
        "tenants with `up`: {:?}, want {want:?}; receiver A log:\n{}\nreceiver B log:\n{}\nprometheus log:\n{}",
        tenants_with_up(&querier),
        recv_a.proc.log_text(),
        recv_b.proc.log_text(),
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
    for bad in ["wrong-token", "basic-b-asks-a", "cert-c-asks-d"] {
        let refused = wait_for(Duration::from_secs(20), || failed(bad).filter(|&v| v > 0.0));
        assert!(refused.is_some(), "{bad}: nothing refused");
    }

    let rt = receiver_common::runtime();
    let anon = tls_client(&ca, None);
    let with_c = tls_client(&ca, Some(&cert_c));
    let with_bare = tls_client(&ca, Some(&cert_bare));
    let bearer = |t: &str| format!("Bearer {t}");
    let huge = format!("Bearer {}", "A".repeat(64 * 1024));
    let (ra, rb) = (recv_a.rw.as_str(), recv_b.rw.as_str());
    let attempts: Vec<Attempt> = vec![
        ("A: no credentials", ra, &anon, vec![], 401),
        (
            "A: team-a token",
            ra,
            &anon,
            vec![("Authorization", bearer(TOKEN_A))],
            200,
        ),
        (
            "A: team-a token, header team-a",
            ra,
            &anon,
            vec![
                ("Authorization", bearer(TOKEN_A)),
                ("THANOS-TENANT", "team-a".into()),
            ],
            200,
        ),
        (
            "A: team-a token, header team-b",
            ra,
            &anon,
            vec![
                ("Authorization", bearer(TOKEN_A)),
                ("THANOS-TENANT", "team-b".into()),
            ],
            403,
        ),
        (
            "A: token with one byte changed",
            ra,
            &anon,
            vec![("Authorization", bearer(&TOKEN_A.replace('4', "5")))],
            401,
        ),
        (
            "A: 64 KiB Authorization header",
            ra,
            &anon,
            vec![("Authorization", huge.clone())],
            401,
        ),
        (
            "A: Basic with bad base64",
            ra,
            &anon,
            vec![("Authorization", "Basic %%%".into())],
            401,
        ),
        (
            "A: unknown scheme",
            ra,
            &anon,
            vec![("Authorization", "Negotiate abc".into())],
            401,
        ),
        (
            "A: unbound ops token, header ops-z",
            ra,
            &anon,
            vec![
                ("Authorization", bearer(TOKEN_OPS)),
                ("THANOS-TENANT", "ops-z".into()),
            ],
            200,
        ),
        (
            "A: ops token, tenant ..",
            ra,
            &anon,
            vec![
                ("Authorization", bearer(TOKEN_OPS)),
                ("THANOS-TENANT", "..".into()),
            ],
            400,
        ),
        (
            "A: ops token, tenant ../etc",
            ra,
            &anon,
            vec![
                ("Authorization", bearer(TOKEN_OPS)),
                ("THANOS-TENANT", "../etc".into()),
            ],
            400,
        ),
        (
            "A: ops token, tenant with space",
            ra,
            &anon,
            vec![
                ("Authorization", bearer(TOKEN_OPS)),
                ("THANOS-TENANT", "a b".into()),
            ],
            400,
        ),
        (
            "A: ops token, 151-char tenant",
            ra,
            &anon,
            vec![
                ("Authorization", bearer(TOKEN_OPS)),
                ("THANOS-TENANT", "x".repeat(151)),
            ],
            400,
        ),
        ("B: no client certificate", rb, &anon, vec![], 0),
        ("B: certificate without O", rb, &with_bare, vec![], 401),
        ("B: O=team-c", rb, &with_c, vec![], 200),
        (
            "B: O=team-c, header team-d",
            rb,
            &with_c,
            vec![("THANOS-TENANT", "team-d".into())],
            403,
        ),
    ];
    eprintln!("\n{:<40} {:>8} {:>8}", "attempt", "expected", "got");
    let mut wrong = Vec::new();
    for (what, addr, client, headers, want) in &attempts {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let got = https_write(&rt, client, addr, &h);
        let code = got.as_ref().map(|r| r.0).unwrap_or(0);
        eprintln!("{what:<40} {want:>8} {code:>8}");
        if code != *want {
            wrong.push(format!("{what}: want {want}, got {got:?}"));
        }
        if code == 401 {
            let head = &got.as_ref().map(|r| r.1.clone()).unwrap_or_default();
            if !head.contains("www-authenticate:") {
                wrong.push(format!("{what}: 401 without WWW-Authenticate: {head}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "unexpected outcomes:\n{}",
        wrong.join("\n")
    );
    let r = https_write(&rt, &anon, ra, &[]).expect("answer");
    assert!(
        r.1.contains("www-authenticate: basic realm=\"orrery\"")
            && r.1.contains("www-authenticate: bearer realm=\"orrery\""),
        "both challenges: {}",
        r.1
    );

    // A burst of distinct wrong passwords (each a real bcrypt check): all 401, bounded
    // time (checks run one at a time off the async workers), and writes still land.
    let started = Instant::now();
    let attempts_n = 100;
    for i in 0..attempts_n {
        let h = format!("Basic {}", b64(&format!("bob:guess-{i}")));
        let r = https_write(&rt, &anon, ra, &[("Authorization", &h)]).expect("answer");
        assert_eq!(r.0, 401, "guess {i}: {}", r.1);
    }
    let burst = started.elapsed();
    eprintln!("{attempts_n} distinct wrong passwords: all 401 in {burst:?}");
    let r = https_write(&rt, &anon, ra, &[("Authorization", &bearer(TOKEN_A))]).expect("answer");
    assert_eq!(r.0, 200, "good writer after the burst: {}", r.1);
    assert_eq!(recv_a.ready().0, 200, "receiver A still ready");

    // Nothing was written for a refused request: only the tenants that were allowed
    // exist on disk.
    let dirs = |p: &Path| -> BTreeSet<String> {
        std::fs::read_dir(p)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        dirs(&recv_a.data),
        ["ops-z", "team-a", "team-b"].map(String::from).into(),
        "tenant directories of receiver A"
    );
    assert_eq!(
        dirs(&recv_b.data),
        ["team-c"].map(String::from).into(),
        "tenant directories of receiver B"
    );
    assert!(
        !dir.join("etc").exists(),
        "a path-traversal tenant created a directory"
    );

    // Good writers lost nothing; refusals are counted by reason.
    for good in ["token-a", "basic-b", "cert-c"] {
        assert_eq!(failed(good), Some(0.0), "{good} lost samples");
    }
    let ma = recv_a.metrics();
    let mb = recv_b.metrics();
    let reason = |m: &str, r: &str| {
        metric(
            m,
            &format!("orrery_receive_remote_write_auth_failures_total{{reason=\"{r}\"}}"),
        )
    };
    assert!(reason(&ma, "bad_token") >= 2.0, "{ma}");
    assert!(reason(&ma, "bad_password") >= attempts_n as f64, "{ma}");
    assert!(reason(&ma, "tenant_mismatch") >= 2.0, "{ma}");
    assert!(reason(&ma, "missing") >= 2.0, "{ma}");
    assert!(reason(&ma, "malformed") >= 2.0, "{ma}");
    assert!(reason(&mb, "tenant_mismatch") >= 2.0, "{mb}");
    assert!(reason(&mb, "certificate_field_missing") >= 1.0, "{mb}");
    assert_eq!(
        metric(&ma, "orrery_receive_http_requests_total{code=\"5"),
        0.0,
        "no 5xx on receiver A"
    );
    eprintln!("tenant-binding test took {:?}", t0.elapsed());
}

/// `orrery query` over these StoreAPI endpoints (plaintext), waiting until it listens.
fn start_querier(dir: &Path, endpoints: &[&str]) -> (e2e::Proc, String) {
    let http = format!("127.0.0.1:{}", e2e::free_port());
    let mut cmd = std::process::Command::new(e2e::orrery_bin());
    cmd.arg("query")
        .arg(format!("--http-address={http}"))
        .arg("--grpc-address=")
        .args(endpoints.iter().map(|e| format!("--endpoint={e}")))
        .env("RUST_LOG", "info");
    let proc = e2e::Proc::spawn("querier", cmd, dir.join("querier.log"));
    let up = wait_for(Duration::from_secs(30), || {
        matches!(e2e::http_get(&http, "/-/ready"), Ok((200, _))).then_some(())
    });
    assert!(up.is_some(), "querier not ready; log:\n{}", proc.log_text());
    (proc, http)
}

/// A `Series` call straight to a StoreAPI, with `thanos-tenant` metadata when given:
/// the Debug text of every series returned (enough to look for another tenant's data).
fn store_series_text(grpc: &str, tenant: Option<&str>) -> Result<Vec<String>, String> {
    use storeapi::wire::thanos::{SeriesRequest, series_response, store_client::StoreClient};
    receiver_common::runtime().block_on(async {
        let mut c = StoreClient::connect(format!("http://{grpc}"))
            .await
            .map_err(|e| e.to_string())?;
        let mut req = tonic::Request::new(SeriesRequest {
            min_time: 0,
            max_time: i64::MAX,
            matchers: vec![receiver_common::re("__name__", ".+")],
            ..Default::default()
        });
        if let Some(t) = tenant {
            req.metadata_mut()
                .insert("thanos-tenant", t.parse().map_err(|_| "bad tenant")?);
        }
        let mut stream = c.series(req).await.map_err(|e| e.to_string())?.into_inner();
        let mut out = Vec::new();
        while let Some(frame) = stream.message().await.map_err(|e| e.to_string())? {
            match frame.result {
                Some(series_response::Result::Series(s)) => out.push(format!("{:?}", s.labels)),
                Some(series_response::Result::Batch(b)) => {
                    out.extend(b.series.iter().map(|s| format!("{:?}", s.labels)))
                }
                _ => {}
            }
        }
        Ok(out)
    })
}

/// The label sets a StoreAPI's `Info` advertises, with `thanos-tenant` metadata when
/// given, as Debug text.
fn store_info_text(grpc: &str, tenant: Option<&str>) -> Result<String, String> {
    use storeapi::wire::info::{InfoRequest, info_client::InfoClient};
    receiver_common::runtime().block_on(async {
        let mut c = InfoClient::connect(format!("http://{grpc}"))
            .await
            .map_err(|e| e.to_string())?;
        let mut req = tonic::Request::new(InfoRequest {});
        if let Some(t) = tenant {
            req.metadata_mut()
                .insert("thanos-tenant", t.parse().map_err(|_| "bad tenant")?);
        }
        let r = c.info(req).await.map_err(|e| e.to_string())?.into_inner();
        Ok(format!("{:?} {:?}", r.label_sets, r.store))
    })
}

/// Two tenants with different data; with `--query.enforce-tenancy` tenant A (bound to
/// basic-auth user alice) gets none of tenant B's series through any read endpoint, and
/// a direct StoreAPI call to a `--store.enforce-tenancy` receiver is confined by its
/// metadata. B's data is really there: bob (unbound) asking for team-b sees it.
#[test]
fn read_path_confined_to_the_callers_tenant() {
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let recv = Receiver::start(
        &dir.join("data"),
        &dir.join("receive.log"),
        &["--store.enforce-tenancy"],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let samples = |v: f64| -> Vec<Sample> {
        (0..30)
            .map(|i| Sample {
                t: now - 300_000 + i * 10_000,
                v,
            })
            .collect()
    };
    let a = [(
        labels(&[("__name__", "secret_metric"), ("team", "a")]),
        samples(1.0),
    )];
    let b = [
        (
            labels(&[("__name__", "secret_metric"), ("team", "b")]),
            samples(666.125),
        ),
        (
            labels(&[("__name__", "only_b_metric"), ("b_only_label", "x")]),
            samples(666.125),
        ),
    ];
    for (tenant, series) in [("team-a", &a[..]), ("team-b", &b[..])] {
        let (code, body) = e2e::remote_write(
            &recv.rw,
            "/api/v1/receive",
            series,
            &[("THANOS-TENANT", tenant)],
        )
        .expect("remote write");
        assert_eq!(code, 200, "{tenant}: {body}");
    }
    let hash = bcrypt::hash("pw", 4).expect("bcrypt");
    let web = write(
        dir,
        "query-web.yml",
        &format!(
            "basic_auth_users:\n  alice: {hash}\n  bob: {hash}\nuser_tenants:\n  alice: team-a\n"
        ),
    );
    let http = format!("127.0.0.1:{}", e2e::free_port());
    let mut cmd = std::process::Command::new(e2e::orrery_bin());
    cmd.arg("query")
        .arg(format!("--http-address={http}"))
        .arg("--grpc-address=")
        .arg(format!("--endpoint={}", recv.grpc))
        .arg(format!("--http.config={web}"))
        .arg("--query.enforce-tenancy")
        .env("RUST_LOG", "info");
    let q = e2e::Proc::spawn("querier", cmd, dir.join("querier.log"));
    let alice = format!("Basic {}", b64("alice:pw"));
    let bob = format!("Basic {}", b64("bob:pw"));
    let get = |path: &str, auth: &str, tenant: Option<&str>| -> (u16, String) {
        let mut h = vec![("Authorization", auth)];
        if let Some(t) = tenant {
            h.push(("THANOS-TENANT", t));
        }
        e2e::http_request(&http, "GET", path, &h, &[]).unwrap_or((0, String::new()))
    };
    let up = wait_for(Duration::from_secs(30), || {
        let (c, body) = get("/api/v1/query?query=secret_metric", &alice, None);
        (c == 200 && body.contains("\"team\":\"a\"")).then_some(())
    });
    assert!(
        up.is_some(),
        "querier never served tenant A; log:\n{}",
        q.log_text()
    );

    let enc = e2e::promqlcmp::urlencode;
    let t = (now / 1000).to_string();
    let range = format!("&start={}&end={t}&step=15", now / 1000 - 600);
    let leaks = |body: &str| {
        [
            "team-b",
            "only_b_metric",
            "b_only_label",
            // B's sample value: specific enough that no port or size in an
            // answer contains it (a bare "666" matched a random port).
            "666.125",
            "\"team\":\"b\"",
        ]
        .iter()
        .any(|s| body.contains(s))
    };
    // (what, path, who, tenant header, expected status)
    let q_ = |expr: &str| format!("/api/v1/query?query={}&time={t}", enc(expr));
    let cases: Vec<(&str, String, &str, Option<&str>, u16)> = vec![
        (
            "query: plain selector",
            q_("secret_metric"),
            &alice,
            None,
            200,
        ),
        (
            "query: regex on __name__",
            q_("{__name__=~\".+\"}"),
            &alice,
            None,
            200,
        ),
        (
            "query: != on another label",
            q_("{__name__!=\"secret_metric\", __name__=~\".+\"}"),
            &alice,
            None,
            200,
        ),
        (
            "query: tenant regex team-.*",
            q_("secret_metric{tenant_id=~\"team-.*\"}"),
            &alice,
            None,
            200,
        ),
        (
            "query: tenant_id=\"team-b\"",
            q_("secret_metric{tenant_id=\"team-b\"}"),
            &alice,
            None,
            400,
        ),
        (
            "query: tenant_id!=\"team-a\"",
            q_("secret_metric{tenant_id!=\"team-a\"}"),
            &alice,
            None,
            400,
        ),
        (
            "query: team=\"b\"",
            q_("count({team=\"b\"})"),
            &alice,
            None,
            200,
        ),
        (
            "query: or on() vector(1)",
            q_("only_b_metric or on() vector(1)"),
            &alice,
            None,
            200,
        ),
        (
            "query: subquery",
            q_("max_over_time(only_b_metric[10m:1m])"),
            &alice,
            None,
            200,
        ),
        (
            "query: @ modifier",
            q_(&format!("only_b_metric @ {t}")),
            &alice,
            None,
            200,
        ),
        (
            "query: binary op",
            q_("secret_metric + on() group_left sum(only_b_metric)"),
            &alice,
            None,
            200,
        ),
        (
            "query: absent()",
            q_("absent(only_b_metric)"),
            &alice,
            None,
            200,
        ),
        (
            "query_range: regex",
            format!(
                "/api/v1/query_range?query={}{range}",
                enc("{__name__=~\".+\"}")
            ),
            &alice,
            None,
            200,
        ),
        (
            "series: match all",
            format!("/api/v1/series?match[]={}", enc("{__name__=~\".+\"}")),
            &alice,
            None,
            200,
        ),
        (
            "series: match tenant b",
            format!("/api/v1/series?match[]={}", enc("{tenant_id=\"team-b\"}")),
            &alice,
            None,
            400,
        ),
        (
            "labels: no match[]",
            "/api/v1/labels".into(),
            &alice,
            None,
            200,
        ),
        (
            "label values __name__: no match[]",
            "/api/v1/label/__name__/values".into(),
            &alice,
            None,
            200,
        ),
        (
            "label values tenant_id",
            "/api/v1/label/tenant_id/values".into(),
            &alice,
            None,
            200,
        ),
        (
            "label values team",
            "/api/v1/label/team/values".into(),
            &alice,
            None,
            200,
        ),
        (
            "exemplars",
            format!("/api/v1/query_exemplars?query={}", enc("only_b_metric")),
            &alice,
            None,
            200,
        ),
        (
            "exemplars: tenant b",
            format!(
                "/api/v1/query_exemplars?query={}",
                enc("x{tenant_id=\"team-b\"}")
            ),
            &alice,
            None,
            400,
        ),
        ("metadata", "/api/v1/metadata".into(), &alice, None, 200),
        ("stores", "/api/v1/stores".into(), &alice, None, 200),
        ("rules", "/api/v1/rules".into(), &alice, None, 200),
        ("alerts", "/api/v1/alerts".into(), &alice, None, 200),
        (
            "status/flags",
            "/api/v1/status/flags".into(),
            &alice,
            None,
            200,
        ),
        (
            "alice asks for team-b",
            q_("secret_metric"),
            &alice,
            Some("team-b"),
            403,
        ),
        (
            "bob, path-traversal tenant",
            q_("secret_metric"),
            &bob,
            Some(".."),
            400,
        ),
        (
            "bob, default tenant",
            q_("{__name__=~\".+\"}"),
            &bob,
            None,
            200,
        ),
    ];
    eprintln!(
        "\n{:<36} {:>8} {:>5} {:>6}",
        "attempt", "expected", "got", "leak"
    );
    let mut wrong = Vec::new();
    for (what, path, who, tenant, want) in &cases {
        let (code, body) = get(path, who, *tenant);
        // Errors quote the request (`tenant_id="team-b"`): only answers can leak data.
        let leaked = code == 200 && leaks(&body);
        eprintln!(
            "{what:<36} {want:>8} {code:>5} {:>6}",
            if leaked { "LEAK" } else { "none" }
        );
        if code != *want {
            wrong.push(format!("{what}: want {want}, got {code}: {body}"));
        }
        if leaked {
            wrong.push(format!("{what}: tenant B data in the answer: {body}"));
        }
    }
    // Positive controls: A's own data is there, and B's is there for B.
    let (_, body) = get(&q_("secret_metric"), &alice, None);
    assert!(
        body.contains("\"team\":\"a\""),
        "alice sees her data: {body}"
    );
    let (_, body) = get("/api/v1/label/tenant_id/values", &alice, None);
    assert!(body.contains("team-a"), "{body}");
    let (code, body) = get(&q_("{__name__=~\".+\"}"), &bob, Some("team-b"));
    eprintln!(
        "{:<36} {:>8} {code:>5} {:>6}",
        "bob asks for team-b (control)",
        200,
        if leaks(&body) { "B data" } else { "none" }
    );
    assert!(
        code == 200 && leaks(&body) && !body.contains("\"team\":\"a\""),
        "bob as team-b sees B only: {body}"
    );

    // Straight to the receiver's StoreAPI: the metadata confines the call; without it
    // only the default tenant (which has no data here) is read.
    for (what, tenant, must_have, must_not) in [
        (
            "StoreAPI thanos-tenant=team-a",
            Some("team-a"),
            Some("team-a"),
            "team-b",
        ),
        (
            "StoreAPI thanos-tenant=team-b",
            Some("team-b"),
            Some("team-b"),
            "team-a",
        ),
        ("StoreAPI without metadata", None, None, "team-"),
    ] {
        let got = store_series_text(&recv.grpc, tenant).expect("StoreAPI call");
        let text = got.join("\n");
        eprintln!(
            "{what:<36} {:>8} {:>5} {:>6}",
            "ok",
            got.len(),
            if text.contains(must_not) {
                "LEAK"
            } else {
                "none"
            }
        );
        if text.contains(must_not) {
            wrong.push(format!("{what}: {must_not} data returned: {text}"));
        }
        if let Some(m) = must_have
            && !text.contains(m)
        {
            wrong.push(format!("{what}: own data missing: {text}"));
        }
    }
    // Info names no other tenant: with metadata only the caller's, without none.
    for (what, tenant, must_have, must_not) in [
        (
            "StoreAPI Info thanos-tenant=team-a",
            Some("team-a"),
            Some("team-a"),
            "team-b",
        ),
        ("StoreAPI Info without metadata", None, None, "team-"),
    ] {
        let text = store_info_text(&recv.grpc, tenant).expect("Info call");
        let leak = text.contains(must_not);
        eprintln!(
            "{what:<36} {:>8} {:>5} {:>6}",
            "ok",
            "-",
            if leak { "LEAK" } else { "none" }
        );
        if leak {
            wrong.push(format!("{what}: names {must_not}: {text}"));
        }
        if let Some(m) = must_have
            && !text.contains(m)
        {
            wrong.push(format!("{what}: own tenant missing: {text}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "tenancy violations:\n{}",
        wrong.join("\n")
    );
    eprintln!("read-path tenancy test took {:?}", t0.elapsed());
}

/// (what, client, expression, headers, expected status, text the answer must hold)
type ReaderCase<'a> = (
    &'a str,
    &'a ClientTls,
    &'a str,
    Vec<(&'a str, &'a str)>,
    u16,
    &'a str,
);

/// `--query.tenant-certificate-field`: the querier's HTTPS listener (web config
/// requiring client certificates) takes the reader's tenant from its certificate's O.
/// Each certificate reads only its tenant; a header naming another is 403; a
/// certificate without O is 401; no certificate gets no TLS session.
#[test]
fn querier_takes_the_readers_tenant_from_its_client_certificate() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let recv = Receiver::start(&dir.join("data"), &dir.join("receive.log"), &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    for (tenant, team, v) in [("team-a", "a", 1.0), ("team-b", "b", 666.125)] {
        let series = [(
            labels(&[("__name__", "secret_metric"), ("team", team)]),
            (0..10)
                .map(|i| Sample {
                    t: now - 100_000 + i * 10_000,
                    v,
                })
                .collect::<Vec<_>>(),
        )];
        let (code, body) = e2e::remote_write(
            &recv.rw,
            "/api/v1/receive",
            &series,
            &[("THANOS-TENANT", tenant)],
        )
        .expect("remote write");
        assert_eq!(code, 200, "{tenant}: {body}");
    }
    let ca = Ca::new("orrery e2e readers CA");
    let server = ca.leaf("querier", &["127.0.0.1"], 0x80);
    write(dir, "tls.crt", &server.cert_pem);
    write(dir, "tls.key", &server.key_pem);
    write(dir, "ca.crt", &ca.pem());
    let web = write(
        dir,
        "query-web.yml",
        "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n  client_ca_file: ca.crt\n  client_auth_type: RequireAndVerifyClientCert\n",
    );
    let http = format!("127.0.0.1:{}", e2e::free_port());
    let mut cmd = std::process::Command::new(e2e::orrery_bin());
    cmd.arg("query")
        .arg(format!("--http-address={http}"))
        .arg("--grpc-address=")
        .arg(format!("--endpoint={}", recv.grpc))
        .arg(format!("--http.config={web}"))
        .arg("--query.enforce-tenancy")
        .arg("--query.tenant-certificate-field=organization")
        .env("RUST_LOG", "info");
    let q = e2e::Proc::spawn("querier", cmd, dir.join("querier.log"));
    let rt = receiver_common::runtime();
    let as_a = tls_client(
        &ca,
        Some(&ca.leaf_with_subject("grafana-a", "team-a", "", 0x81)),
    );
    let as_b = tls_client(
        &ca,
        Some(&ca.leaf_with_subject("grafana-b", "team-b", "", 0x82)),
    );
    let bare = tls_client(&ca, Some(&ca.leaf_with_subject("grafana-x", "", "", 0x83)));
    let anon = tls_client(&ca, None);
    let enc = e2e::promqlcmp::urlencode;
    let query = |c: &ClientTls, expr: &str, headers: &[(&str, &str)]| {
        let path = format!("/api/v1/query?query={}", enc(expr));
        https_get(&rt, c, &http, &path, headers)
    };
    let up = wait_for(Duration::from_secs(30), || {
        let (c, body) = query(&as_a, "secret_metric", &[]).ok()?;
        (c == 200 && body.contains("\"team\":\"a\"")).then_some(())
    });
    assert!(
        up.is_some(),
        "querier never served the team-a certificate; log:\n{}",
        q.log_text()
    );
    let cases: Vec<ReaderCase> = vec![
        (
            "O=team-a",
            &as_a,
            "secret_metric",
            vec![],
            200,
            "\"team\":\"a\"",
        ),
        (
            "O=team-a, regex",
            &as_a,
            "{__name__=~\".+\"}",
            vec![],
            200,
            "\"team\":\"a\"",
        ),
        (
            "O=team-b",
            &as_b,
            "secret_metric",
            vec![],
            200,
            "\"team\":\"b\"",
        ),
        (
            "O=team-a, header team-b",
            &as_a,
            "secret_metric",
            vec![("THANOS-TENANT", "team-b")],
            403,
            "",
        ),
        (
            "certificate without O",
            &bare,
            "secret_metric",
            vec![],
            401,
            "",
        ),
        ("no certificate", &anon, "secret_metric", vec![], 0, ""),
    ];
    eprintln!("\n{:<28} {:>8} {:>5}", "reader", "expected", "got");
    let mut wrong = Vec::new();
    for (what, c, expr, headers, want, must) in &cases {
        let got = query(c, expr, headers);
        let code = got.as_ref().map(|r| r.0).unwrap_or(0);
        eprintln!("{what:<28} {want:>8} {code:>5}");
        let body = got.map(|r| r.1).unwrap_or_default();
        let other = if what.contains("team-b") && !what.contains("header") {
            "\"team\":\"a\""
        } else {
            "\"team\":\"b\""
        };
        if code != *want || !body.contains(must) || (code == 200 && body.contains(other)) {
            wrong.push(format!(
                "{what}: want {want} with {must}, got {code}: {body}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "unexpected outcomes:\n{}",
        wrong.join("\n")
    );
}

//! Bearer JWTs end to end: the real Prometheus 3.5.3 remote-writes over HTTPS with
//! `remote_write.authorization.credentials_file` holding a JWT the test minted (ES256,
//! with a key the test made and published as a JWKS file). The receiver's
//! `--remote-write.http-config` verifies it (`jwt:` section) and takes the tenant from
//! the token's `org` claim: samples land in that tenant; a token signed by another key,
//! an expired token, and a good token with a tenant header naming another tenant are
//! refused (401 / 401 / 403) and write nothing. The querier's `--http.config` takes the
//! same tokens (Grafana's "Forward OAuth identity") and, with `--query.enforce-tenancy`,
//! each token reads only its own tenant. Prints a table of the attempts.

mod receiver_common;
mod security_common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use e2e::{Prometheus, wait_for};
use netsec::testing::{Ca, JwtSigner};
use receiver_common::{Receiver, prom_value};
use security_common::{https_write, tls_client, write};
use serde_json::json;

const ISSUER: &str = "https://idp.orrery.test";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// Claims as an OIDC provider issues them for a machine client of `org`.
fn claims(org: &str, exp: i64) -> serde_json::Value {
    json!({
        "iss": ISSUER,
        "aud": "orrery",
        "sub": format!("prometheus@{org}"),
        "org": org,
        "iat": now() - 10,
        "exp": exp,
    })
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name_and_labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn tenant_dirs(p: &Path) -> BTreeSet<String> {
    std::fs::read_dir(p)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `/api/v1/series?match[]=up` through the querier with this bearer token: the
/// `tenant_id`s seen, or the status when not 200.
fn tenants_seen(querier: &str, token: &str) -> Result<BTreeSet<String>, u16> {
    let auth = format!("Bearer {token}");
    let (code, body) = e2e::http_request(
        querier,
        "GET",
        "/api/v1/series?match[]=up",
        &[("Authorization", &auth)],
        &[],
    )
    .map_err(|_| 0u16)?;
    if code != 200 {
        return Err(code);
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    Ok(v["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["tenant_id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

/// (what, headers, expected status)
type Attempt<'a> = (&'a str, Vec<(&'a str, String)>, u16);

#[test]
fn prometheus_remote_writes_with_a_jwt_into_the_tokens_tenant() {
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let ca = Ca::new("orrery e2e JWT CA");
    let server = ca.leaf("orrery", &["127.0.0.1"], 0x70);
    let ca_file = write(dir, "ca.pem", &ca.pem());
    let tls_crt = write(dir, "tls.crt", &server.cert_pem);
    let tls_key = write(dir, "tls.key", &server.key_pem);

    // The identity provider's key (published as a JWKS file) and a stranger's.
    let idp = JwtSigner::es256("idp-2026-12");
    let stranger = JwtSigner::es256("idp-2026-12");
    write(dir, "jwks.json", &JwtSigner::jwks(&[&idp]));
    let exp = now() + 3600;
    let good_j = idp.sign(&claims("team-j", exp));
    let good_k = idp.sign(&claims("team-k", exp));
    let forged = stranger.sign(&claims("team-x", exp));
    let expired = idp.sign(&claims("team-e", now() - 3600));
    // As Prometheus reads them: one token per file, trailing newline.
    let good_file = write(dir, "team-j.jwt", &format!("{good_j}\n"));
    let k_file = write(dir, "team-k.jwt", &format!("{good_k}\n"));
    let forged_file = write(dir, "forged.jwt", &forged);
    let expired_file = write(dir, "expired.jwt", &expired);
    let jwt_section = format!(
        "jwt:\n  jwks_file: jwks.json\n  issuer: {ISSUER}\n  audiences: [orrery]\n  clock_skew: 30s\n  tenant_claim: org\n"
    );
    let rw_web = write(dir, "rw-web.yml", &jwt_section);
    let q_web = write(dir, "q-web.yml", &jwt_section);

    let recv = Receiver::start(
        &dir.join("data"),
        &dir.join("receive.log"),
        &[
            &format!("--remote-write.server-tls-cert={tls_crt}"),
            &format!("--remote-write.server-tls-key={tls_key}"),
            &format!("--remote-write.http-config={rw_web}"),
        ],
    );
    let queue = "    queue_config:\n      batch_send_deadline: 1s\n      min_backoff: 100ms\n      max_backoff: 1s\n";
    let remote = |name: &str, file: &str, headers: &str| {
        format!(
            "  - url: https://{rw}/api/v1/receive\n    name: {name}\n    authorization:\n      credentials_file: {file}\n{headers}    tls_config:\n      ca_file: {ca_file}\n{queue}",
            rw = recv.rw
        )
    };
    let remotes = [
        remote("jwt-team-j", &good_file, ""),
        remote("jwt-team-k", &k_file, ""),
        remote("jwt-forged", &forged_file, ""),
        remote("jwt-expired", &expired_file, ""),
        remote(
            "jwt-j-asks-k",
            &good_file,
            "    headers:\n      THANOS-TENANT: team-k\n",
        ),
    ]
    .concat();
    let prom = Prometheus::start(
        &format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: prometheus\n    static_configs:\n      - targets: ['127.0.0.1:{{{{PORT}}}}']\nremote_write:\n{remotes}"
        ),
        &[],
    );
    let http = format!("127.0.0.1:{}", e2e::free_port());
    let mut cmd = std::process::Command::new(e2e::orrery_bin());
    cmd.arg("query")
        .arg(format!("--http-address={http}"))
        .arg("--grpc-address=")
        .arg(format!("--endpoint={}", recv.grpc))
        .arg(format!("--http.config={q_web}"))
        .arg("--query.enforce-tenancy")
        .env("RUST_LOG", "info");
    let querier = e2e::Proc::spawn("querier", cmd, dir.join("querier.log"));

    // Prometheus's samples land in the tenants its tokens name, read back through the
    // querier with the same tokens.
    let want_j: BTreeSet<String> = ["team-j".to_string()].into();
    let seen = wait_for(Duration::from_secs(40), || {
        (tenants_seen(&http, &good_j).ok()? == want_j).then_some(())
    });
    assert!(
        seen.is_some(),
        "team-j's token reads {:?}; receiver log:\n{}\nquerier log:\n{}\nprometheus log:\n{}",
        tenants_seen(&http, &good_j),
        recv.proc.log_text(),
        querier.log_text(),
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
    for bad in ["jwt-forged", "jwt-expired", "jwt-j-asks-k"] {
        let refused = wait_for(Duration::from_secs(20), || failed(bad).filter(|&v| v > 0.0));
        assert!(
            refused.is_some(),
            "{bad}: Prometheus saw no refusal; receiver log:\n{}",
            recv.proc.log_text()
        );
    }
    assert_eq!(
        tenants_seen(&http, &good_k),
        Ok(["team-k".to_string()].into()),
        "team-k's token reads only team-k"
    );

    // Direct attempts, each a fresh HTTPS connection.
    let rt = receiver_common::runtime();
    let anon = tls_client(&ca, None);
    let bearer = |t: &str| format!("Bearer {t}");
    let oversized = idp.sign(&json!({
        "iss": ISSUER, "aud": "orrery", "org": "team-j", "exp": exp,
        "padding": "x".repeat(5000),
    }));
    let unsigned = {
        let parts: Vec<&str> = good_j.split('.').collect();
        // {"alg":"none","typ":"JWT"}
        format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1])
    };
    let wrong_aud =
        idp.sign(&json!({"iss": ISSUER, "aud": "grafana", "org": "team-j", "exp": exp}));
    let attempts: Vec<Attempt> = vec![
        ("no credentials", vec![], 401),
        (
            "team-j token",
            vec![("Authorization", bearer(&good_j))],
            200,
        ),
        (
            "team-j token, header team-j",
            vec![
                ("Authorization", bearer(&good_j)),
                ("THANOS-TENANT", "team-j".into()),
            ],
            200,
        ),
        (
            "team-j token, header team-k",
            vec![
                ("Authorization", bearer(&good_j)),
                ("THANOS-TENANT", "team-k".into()),
            ],
            403,
        ),
        (
            "forged (other key)",
            vec![("Authorization", bearer(&forged))],
            401,
        ),
        ("expired", vec![("Authorization", bearer(&expired))], 401),
        (
            "wrong audience",
            vec![("Authorization", bearer(&wrong_aud))],
            401,
        ),
        ("alg none", vec![("Authorization", bearer(&unsigned))], 401),
        (
            "5 KiB token",
            vec![("Authorization", bearer(&oversized))],
            401,
        ),
        (
            "garbage",
            vec![("Authorization", "Bearer a.b.c".into())],
            401,
        ),
    ];
    eprintln!("\n{:<34} {:>8} {:>8}", "attempt", "expected", "got");
    let mut wrong = Vec::new();
    for (what, headers, want) in &attempts {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let got = https_write(&rt, &anon, &recv.rw, &h);
        let code = got.as_ref().map(|r| r.0).unwrap_or(0);
        eprintln!("{what:<34} {want:>8} {code:>8}");
        if code != *want {
            wrong.push(format!("{what}: want {want}, got {got:?}"));
        }
        if code == 401
            && !got
                .as_ref()
                .is_ok_and(|r| r.1.contains("www-authenticate: bearer"))
        {
            wrong.push(format!("{what}: 401 without a Bearer challenge: {got:?}"));
        }
    }
    // The querier: a forged or expired token reads nothing.
    for (what, token, want) in [
        ("querier, forged", &forged, Err(401)),
        ("querier, expired", &expired, Err(401)),
    ] {
        let got = tenants_seen(&http, token);
        eprintln!(
            "{what:<34} {:>8} {:>8}",
            401,
            got.clone().err().unwrap_or(200)
        );
        if got != want {
            wrong.push(format!("{what}: want {want:?}, got {got:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "unexpected outcomes:\n{}",
        wrong.join("\n")
    );

    // Nothing of the refused writers reached the disk; the good ones lost nothing.
    assert_eq!(
        tenant_dirs(&recv.data),
        ["team-j", "team-k"].map(String::from).into(),
        "tenant directories"
    );
    for good in ["jwt-team-j", "jwt-team-k"] {
        assert_eq!(failed(good), Some(0.0), "{good} lost samples");
    }
    let m = recv.metrics();
    let reason = |r: &str| {
        metric(
            &m,
            &format!("orrery_receive_remote_write_auth_failures_total{{reason=\"{r}\"}}"),
        )
    };
    assert!(reason("bad_jwt") >= 2.0, "{m}");
    assert!(reason("expired_jwt") >= 2.0, "{m}");
    assert!(reason("tenant_mismatch") >= 2.0, "{m}");
    assert_eq!(
        metric(&m, "orrery_receive_http_requests_total{code=\"5"),
        0.0,
        "no 5xx"
    );
    eprintln!("JWT test took {:?}", t0.elapsed());
}

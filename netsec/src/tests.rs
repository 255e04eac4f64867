//! Handshakes over loopback with certificates made here: reloads, client-auth policies,
//! web config parsing and basic auth.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{ClientTls, ClientTlsSettings};
use crate::pem::PemSource;
use crate::server::{
    ClientAuth, ReloadingServerConfig, ServerConfigSource, ServerTlsSettings, TlsVersion, alpn_grpc,
};
use crate::testing::{Ca, Leaf, SecretDir, serial_hex};
use crate::webconfig::{WebConfig, parse_duration};
use crate::{Listener, auth};

/// Starts an echo server on loopback with this config source; returns its address.
async fn echo_server(src: Arc<dyn ServerConfigSource>) -> String {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap().to_string();
    let mut l = Listener::new(tcp, Some(src));
    tokio::spawn(async move {
        loop {
            let mut s = l.next().await;
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn client(ca: Option<&str>, leaf: Option<&Leaf>) -> ClientTls {
    ClientTls::new(ClientTlsSettings {
        ca: ca.map(|c| PemSource::Inline(c.to_string())),
        cert: leaf.map(|l| PemSource::Inline(l.cert_pem.clone())),
        key: leaf.map(|l| PemSource::Inline(l.key_pem.clone())),
        skip_verify: false,
        server_name: None,
        min_version: TlsVersion::Tls13,
    })
    .unwrap()
}

type Conn = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Connects, sends a ping and reads the echo: `Ok(server serial)` only if the server
/// accepted us (TLS 1.3 reports a refused client certificate on the first read).
async fn roundtrip(c: &ClientTls, addr: &str) -> Result<(String, Conn), String> {
    let mut s = c.connect(addr, &[]).await.map_err(|e| e.to_string())?;
    ping(&mut s).await?;
    let serial = serial_hex(&s.get_ref().1.peer_certificates().unwrap()[0]);
    Ok((serial, s))
}

async fn ping(s: &mut Conn) -> Result<(), String> {
    s.write_all(b"ping").await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    (&buf == b"ping")
        .then_some(())
        .ok_or_else(|| "bad echo".to_string())
}

fn settings(dir: &Path, client_auth: ClientAuth, ca: bool) -> ServerTlsSettings {
    ServerTlsSettings {
        cert: PemSource::File(dir.join("tls.crt")),
        key: PemSource::File(dir.join("tls.key")),
        client_auth,
        client_ca: ca.then(|| PemSource::File(dir.join("ca.crt"))),
        client_allowed_sans: None,
        min_version: TlsVersion::Tls13,
        max_version: TlsVersion::Tls13,
        cipher_suites: vec![],
        curves: vec![],
        alpn: alpn_grpc(),
    }
}

#[tokio::test]
async fn secret_symlink_swap_rotates_cert_without_dropping_connections() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new("rotation CA");
    let (one, two) = (
        ca.leaf("server", &["127.0.0.1"], 1),
        ca.leaf("server", &["127.0.0.1"], 2),
    );
    let mut secret = SecretDir::new(&tmp.path().join("secret"));
    secret.publish(&[("tls.crt", &one.cert_pem), ("tls.key", &one.key_pem)]);
    let reloading = Arc::new(
        ReloadingServerConfig::new(settings(&secret.path(""), ClientAuth::NoClientCert, false))
            .unwrap(),
    );
    let addr = echo_server(reloading.clone()).await;
    let c = client(Some(&ca.pem()), None);
    let (serial, mut old) = roundtrip(&c, &addr).await.unwrap();
    assert_eq!(serial, "1");

    secret.publish(&[("tls.crt", &two.cert_pem), ("tls.key", &two.key_pem)]);
    let (serial, _) = roundtrip(&c, &addr).await.unwrap();
    assert_eq!(serial, "2", "a new connection sees the new certificate");
    ping(&mut old)
        .await
        .expect("the connection made before the swap keeps working");
    assert_eq!(reloading.reloads(), 1);

    // A half-written update (key of one pair, cert of another) is refused; the last good
    // pair keeps serving, and the next good update is picked up.
    secret.publish(&[("tls.crt", &one.cert_pem), ("tls.key", &two.key_pem)]);
    let (serial, _) = roundtrip(&c, &addr).await.unwrap();
    assert_eq!(serial, "2");
    secret.publish(&[("tls.crt", &one.cert_pem), ("tls.key", &one.key_pem)]);
    let (serial, _) = roundtrip(&c, &addr).await.unwrap();
    assert_eq!(serial, "1");
}

#[tokio::test]
async fn client_ca_is_required_and_reloaded() {
    let tmp = tempfile::tempdir().unwrap();
    let (server_ca, ca1, ca2) = (
        Ca::new("server CA"),
        Ca::new("clients 1"),
        Ca::new("clients 2"),
    );
    let srv = server_ca.leaf("server", &["127.0.0.1"], 7);
    let mut secret = SecretDir::new(&tmp.path().join("secret"));
    secret.publish(&[
        ("tls.crt", &srv.cert_pem),
        ("tls.key", &srv.key_pem),
        ("ca.crt", &ca1.pem()),
    ]);
    let dir = secret.path("");
    // Thanos's flags: a client CA means RequireAndVerifyClientCert.
    let s = ServerTlsSettings::from_flags(
        "grpc-server-tls",
        Some(&dir.join("tls.crt")),
        Some(&dir.join("tls.key")),
        Some(&dir.join("ca.crt")),
        "1.3",
        alpn_grpc(),
    )
    .unwrap()
    .unwrap();
    assert_eq!(s.client_auth, ClientAuth::RequireAndVerifyClientCert);
    let addr = echo_server(Arc::new(ReloadingServerConfig::new(s).unwrap())).await;

    let from1 = ca1.leaf("querier", &["querier.example"], 11);
    let from2 = ca2.leaf("querier", &["querier.example"], 12);
    let no_cert = client(Some(&server_ca.pem()), None);
    let with1 = client(Some(&server_ca.pem()), Some(&from1));
    let with2 = client(Some(&server_ca.pem()), Some(&from2));
    assert!(
        roundtrip(&no_cert, &addr).await.is_err(),
        "no client certificate"
    );
    assert!(
        roundtrip(&with2, &addr).await.is_err(),
        "certificate from another CA"
    );
    let (_, mut kept) = roundtrip(&with1, &addr).await.unwrap();

    // The CA bundle is rotated: CA 2 now, CA 1 no longer.
    secret.publish(&[
        ("tls.crt", &srv.cert_pem),
        ("tls.key", &srv.key_pem),
        ("ca.crt", &ca2.pem()),
    ]);
    assert!(roundtrip(&with2, &addr).await.is_ok(), "the new CA applies");
    assert!(
        roundtrip(&with1, &addr).await.is_err(),
        "the old CA is gone"
    );
    ping(&mut kept).await.expect("existing session unaffected");
}

#[tokio::test]
async fn web_config_client_auth_policies_and_allowed_sans() {
    let tmp = tempfile::tempdir().unwrap();
    let (server_ca, clients, other) = (Ca::new("s"), Ca::new("c"), Ca::new("o"));
    let srv = server_ca.leaf("server", &["127.0.0.1"], 1);
    let dir = tmp.path();
    std::fs::write(dir.join("tls.crt"), &srv.cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), &srv.key_pem).unwrap();
    std::fs::write(dir.join("ca.crt"), clients.pem()).unwrap();
    let good = clients.leaf("a", &["client.a"], 2);
    let good_b = clients.leaf("b", &["client.b"], 3);
    let stranger = other.leaf("x", &["client.a"], 4);
    let none = client(Some(&server_ca.pem()), None);
    let c_good = client(Some(&server_ca.pem()), Some(&good));
    let c_b = client(Some(&server_ca.pem()), Some(&good_b));
    let c_stranger = client(Some(&server_ca.pem()), Some(&stranger));

    // (policy, CA?, allowed SANs) → whether none / good / stranger / b get through.
    let cases: &[(ClientAuth, bool, Option<&[&str]>, [bool; 4])] = &[
        (
            ClientAuth::NoClientCert,
            false,
            None,
            [true, true, true, true],
        ),
        (
            ClientAuth::RequestClientCert,
            false,
            None,
            [true, true, true, true],
        ),
        (
            ClientAuth::RequireAnyClientCert,
            false,
            None,
            [false, true, true, true],
        ),
        (
            ClientAuth::VerifyClientCertIfGiven,
            true,
            None,
            [true, true, false, true],
        ),
        (
            ClientAuth::RequireAndVerifyClientCert,
            true,
            None,
            [false, true, false, true],
        ),
        (
            ClientAuth::RequireAndVerifyClientCert,
            true,
            Some(&["client.a"]),
            [false, true, false, false],
        ),
    ];
    for (policy, ca, sans, want) in cases {
        let mut s = settings(dir, *policy, *ca);
        s.client_allowed_sans = sans.map(|s| s.iter().map(|x| x.to_string()).collect());
        s.alpn = alpn_grpc();
        let addr = echo_server(Arc::new(ReloadingServerConfig::new(s).unwrap())).await;
        let got = [
            roundtrip(&none, &addr).await.is_ok(),
            roundtrip(&c_good, &addr).await.is_ok(),
            roundtrip(&c_stranger, &addr).await.is_ok(),
            roundtrip(&c_b, &addr).await.is_ok(),
        ];
        assert_eq!(&got, want, "{policy:?} ca={ca} sans={sans:?}");
    }
    // A verifying policy without a CA, or a CA without a policy, is a load error.
    assert!(
        settings(dir, ClientAuth::RequireAndVerifyClientCert, false)
            .build()
            .is_err()
    );
    assert!(
        settings(dir, ClientAuth::NoClientCert, true)
            .build()
            .is_err()
    );
}

#[tokio::test]
async fn client_server_name_and_skip_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new("names");
    let srv = ca.leaf("server", &["store.internal"], 5);
    std::fs::write(tmp.path().join("tls.crt"), &srv.cert_pem).unwrap();
    std::fs::write(tmp.path().join("tls.key"), &srv.key_pem).unwrap();
    let s = settings(tmp.path(), ClientAuth::NoClientCert, false);
    let addr = echo_server(Arc::new(ReloadingServerConfig::new(s).unwrap())).await;
    let mk = |name: Option<&str>, skip: bool, ca_pem: Option<String>| {
        ClientTls::new(ClientTlsSettings {
            ca: ca_pem.map(PemSource::Inline),
            cert: None,
            key: None,
            skip_verify: skip,
            server_name: name.map(str::to_string),
            min_version: TlsVersion::Tls13,
        })
        .unwrap()
    };
    // The certificate names store.internal, not 127.0.0.1.
    assert!(
        roundtrip(&mk(None, false, Some(ca.pem())), &addr)
            .await
            .is_err()
    );
    assert!(
        roundtrip(&mk(Some("store.internal"), false, Some(ca.pem())), &addr)
            .await
            .is_ok()
    );
    // Another CA: refused unless verification is skipped.
    let other = Ca::new("other").pem();
    assert!(
        roundtrip(
            &mk(Some("store.internal"), false, Some(other.clone())),
            &addr
        )
        .await
        .is_err()
    );
    assert!(roundtrip(&mk(None, true, Some(other)), &addr).await.is_ok());
}

#[test]
fn thanos_flag_combinations() {
    let p = Path::new("/nonexistent");
    let e = |r: Result<_, crate::Error>| {
        r.map(|_: Option<ServerTlsSettings>| ())
            .unwrap_err()
            .to_string()
    };
    assert!(
        e(ServerTlsSettings::from_flags(
            "grpc-server-tls",
            Some(p),
            None,
            None,
            "1.3",
            vec![]
        ))
        .contains("must be set together")
    );
    assert!(
        e(ServerTlsSettings::from_flags(
            "grpc-server-tls",
            None,
            None,
            Some(p),
            "1.3",
            vec![]
        ))
        .contains("--grpc-server-tls-client-ca needs")
    );
    assert!(
        e(ServerTlsSettings::from_flags(
            "grpc-server-tls",
            None,
            None,
            None,
            "1.4",
            vec![]
        ))
        .contains("--grpc-server-tls-min-version")
    );
    assert!(
        ServerTlsSettings::from_flags("x", None, None, None, "1.3", vec![])
            .unwrap()
            .is_none()
    );
    // A missing file is an error naming it.
    let err = e(ServerTlsSettings::from_flags(
        "x",
        Some(p),
        Some(p),
        None,
        "1.2",
        vec![],
    ));
    assert!(err.contains("/nonexistent"), "{err}");
}

fn hash(pw: &str, cost: u32) -> String {
    bcrypt::hash(pw, cost).unwrap()
}

#[test]
fn web_config_parsing_errors_name_the_problem() {
    let dir = Path::new("/etc/orrery");
    let hash_pw = hash("pw", 4);
    let err = |text: &str| WebConfig::parse(text, dir).unwrap_err();
    assert!(err("tls_server_confg: {}\n").contains("tls_server_confg"));
    assert!(err("tls_server_config:\n  cert_fil: x\n").contains("cert_fil"));
    assert!(
        err("http_server_config:\n  headers:\n    X-Powered-By: me\n").contains("X-Powered-By")
    );
    assert!(
        err("http_server_config:\n  headers:\n    X-Frame-Options: allow\n")
            .contains("X-Frame-Options")
    );
    assert!(err("basic_auth_users:\n  alice: plaintext\n").contains("alice"));
    let bomb = format!(
        "basic_auth_users:\n  alice: '{}'\n",
        hash_pw.replacen("$04$", "$31$", 1)
    );
    assert!(err(&bomb).contains("cost 31"), "{}", err(&bomb));
    assert!(err("tls_server_config:\n  client_auth_type: Sometimes\n").contains("Sometimes"));
    assert!(
        err("tls_server_config:\n  key_file: k\n").contains("missing one of cert or cert_file")
    );
    assert!(err("rate_limit:\n  interval: 5 parsecs\n").contains("rate_limit.interval"));

    let ok = WebConfig::parse(
        &format!(
            "basic_auth_users:\n  alice: '{hash_pw}'\nhttp_server_config:\n  http2: false\n  headers:\n    \
             X-Frame-Options: deny\n    Strict-Transport-Security: max-age=31536000\nrate_limit:\n  burst: 5\n  interval: 1s\n"
        ),
        dir,
    )
    .unwrap();
    assert!(ok.tls.is_none());
    assert!(!ok.http2);
    assert_eq!(ok.headers.len(), 2);
    assert_eq!(ok.rate_limit, Some((5, Duration::from_secs(1))));
    assert_eq!(ok.users.len(), 1);
    assert!(WebConfig::parse("", dir).unwrap().users.is_empty());
}

#[test]
fn web_config_tls_paths_are_relative_to_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new("web");
    let srv = ca.leaf("web", &["127.0.0.1"], 3);
    std::fs::write(tmp.path().join("tls.crt"), &srv.cert_pem).unwrap();
    std::fs::write(tmp.path().join("tls.key"), &srv.key_pem).unwrap();
    std::fs::write(tmp.path().join("ca.crt"), ca.pem()).unwrap();
    let cfg = tmp.path().join("web.yml");
    std::fs::write(
        &cfg,
        "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n  client_ca_file: ca.crt\n  \
         client_auth_type: VerifyClientCertIfGiven\n  min_version: TLS13\n  \
         cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]\n  curve_preferences: [X25519, CurveP256]\n",
    )
    .unwrap();
    let w = WebConfig::load(&cfg).unwrap();
    let t = w.tls.unwrap();
    assert_eq!(t.cert, PemSource::File(tmp.path().join("tls.crt")));
    assert_eq!(t.client_auth, ClientAuth::VerifyClientCertIfGiven);
    assert_eq!(t.min_version, TlsVersion::Tls13);
    // No client CA policy with a CA, unsupported curves and unknown suites are refused.
    for bad in [
        "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n  client_ca_file: ca.crt\n",
        "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n  curve_preferences: [CurveP521]\n",
        "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n",
        "tls_server_config:\n  cert_file: tls.crt\n  key_file: missing.key\n",
        "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n  max_version: TLS11\n",
    ] {
        std::fs::write(&cfg, bad).unwrap();
        assert!(WebConfig::load(&cfg).is_err(), "accepted: {bad}");
    }
}

#[tokio::test]
async fn bcrypt_checks_are_cached_and_unknown_users_refused() {
    let users = [("alice".to_string(), hash("s3cret", 4))]
        .into_iter()
        .collect();
    let a = auth::Authenticator::new(users);
    assert!(a.check("alice", b"s3cret").await);
    assert!(!a.check("alice", b"wrong").await);
    assert!(!a.check("mallory", b"s3cret").await);
    // Cached: the same answers again, many times, fast (no bcrypt at cost 4 × 10k would
    // still pass, so count the cache instead of timing it).
    for _ in 0..1000 {
        assert!(a.check("alice", b"s3cret").await);
        assert!(!a.check("alice", b"wrong").await);
    }
    assert!(
        !auth::Authenticator::new(Default::default())
            .check("x", b"y")
            .await
    );
}

#[test]
fn basic_auth_header_parsing() {
    use http::HeaderValue;
    let p = |s: &str| auth::parse_basic(&HeaderValue::from_str(s).unwrap());
    assert_eq!(
        p("Basic YWxpY2U6czNjcmV0"),
        Some(("alice".into(), b"s3cret".to_vec()))
    );
    assert_eq!(
        p("basic YWxpY2U6czNjcmV0"),
        Some(("alice".into(), b"s3cret".to_vec()))
    );
    // "a:b:c": the password keeps its colon.
    assert_eq!(p("Basic YTpiOmM="), Some(("a".into(), b"b:c".to_vec())));
    assert_eq!(p("Bearer abc"), None);
    assert_eq!(p("Basic !!!"), None);
    assert_eq!(p("Basic YWxpY2U="), None, "no colon");
    assert_eq!(p(&format!("Basic {}", "A".repeat(5000))), None, "oversized");
}

#[test]
fn go_durations() {
    assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert!(parse_duration("10").is_err());
    assert!(parse_duration("1y").is_err());
}

#[test]
fn rate_limiter_refills() {
    let l = auth::RateLimiter::new(2, Duration::from_millis(50));
    assert!(l.allow() && l.allow());
    assert!(!l.allow());
    std::thread::sleep(Duration::from_millis(60));
    assert!(l.allow());
}

mod writers {
    //! Bearer tokens, tenants bound to credentials and the tenant rule.
    use super::*;
    use crate::HttpServer;
    use crate::identity::{
        CertField, FailureLabels, FailureReason, Principal, TenantError, TenantPolicy,
    };
    use axum::body::Body;
    use http::{HeaderMap, HeaderValue, Request, StatusCode, header};
    use rustls::pki_types::CertificateDer;
    use tower::ServiceExt;

    const TOKEN_A: &str = "tok-a-0123456789abcdef";
    const TOKEN_B: &str = "tok-b-0123456789abcdef";

    fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
        std::fs::write(dir.join("a.token"), format!("{TOKEN_A}\n")).unwrap();
        std::fs::write(dir.join("b.token"), TOKEN_B).unwrap();
        let cfg = dir.join("writers.yml");
        std::fs::write(
            &cfg,
            format!(
                "basic_auth_users:\n  alice: {}\n  bob: {}\n\
                 user_tenants:\n  alice: team-a\n\
                 bearer_tokens:\n  - name: prom-a\n    token_file: a.token\n    tenant: team-a\n  \
                 - name: unbound\n    token_file: {}\n{extra}",
                hash("pw-a", 4),
                hash("pw-b", 4),
                dir.join("b.token").display()
            ),
        )
        .unwrap();
        cfg
    }

    /// A router answering with the principal the guard attached.
    fn app(sec: &HttpServer) -> axum::Router {
        sec.router(axum::Router::new().route(
            "/",
            axum::routing::get(|req: axum::extract::Request| async move {
                match req.extensions().get::<Principal>() {
                    Some(p) => format!("{}/{}", p.name, p.tenant.as_deref().unwrap_or("-")),
                    None => "anonymous".into(),
                }
            }),
        ))
    }

    async fn call(router: &axum::Router, auth: Option<&str>) -> (StatusCode, Vec<String>, String) {
        let mut b = Request::builder().uri("/");
        if let Some(a) = auth {
            b = b.header(header::AUTHORIZATION, a);
        }
        let resp = router
            .clone()
            .oneshot(b.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let challenges = resp
            .headers()
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            challenges,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    fn basic(user: &str, pw: &str) -> String {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
        )
    }

    #[tokio::test]
    async fn tokens_and_users_carry_their_tenant_and_failures_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let sec = HttpServer::load(Some(&write_config(dir.path(), ""))).unwrap();
        assert_eq!(sec.bound_tenants(), vec!["team-a".to_string()]);
        let r = app(&sec);
        let ok = |s: &str| (StatusCode::OK, vec![], s.to_string());
        assert_eq!(
            call(&r, Some(&format!("Bearer {TOKEN_A}"))).await,
            ok("prom-a/team-a")
        );
        assert_eq!(
            call(&r, Some(&format!("bearer  {TOKEN_B} "))).await,
            ok("unbound/-")
        );
        assert_eq!(
            call(&r, Some(&basic("alice", "pw-a"))).await,
            ok("alice/team-a")
        );
        assert_eq!(call(&r, Some(&basic("bob", "pw-b"))).await, ok("bob/-"));

        let refused: &[(Option<String>, FailureReason)] = &[
            (None, FailureReason::missing),
            (Some(format!("Bearer {TOKEN_A}x")), FailureReason::bad_token),
            (
                Some(TOKEN_A[..TOKEN_A.len() - 1].to_string()),
                FailureReason::unsupported_scheme,
            ),
            (Some(basic("alice", "pw-b")), FailureReason::bad_password),
            (Some(basic("mallory", "pw-a")), FailureReason::bad_password),
            (Some("Basic !!!".into()), FailureReason::malformed),
            (Some("Bearer ".into()), FailureReason::unsupported_scheme),
            (
                Some(format!("Bearer {}", "A".repeat(100_000))),
                FailureReason::malformed,
            ),
            (
                Some("Digest username=x".into()),
                FailureReason::unsupported_scheme,
            ),
        ];
        let f = sec.failures();
        let n = |reason| f.get_or_create(&FailureLabels { reason }).get();
        for (h, reason) in refused {
            let before = n(*reason);
            let (status, challenges, _) = call(&r, h.as_deref()).await;
            assert_eq!(n(*reason), before + 1, "{h:?} counted as {reason:?}");
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{h:?}");
            assert_eq!(
                challenges,
                vec!["Basic realm=\"orrery\"", "Bearer realm=\"orrery\""],
                "{h:?}"
            );
        }
        assert_eq!(n(FailureReason::missing), 1);
        assert_eq!(n(FailureReason::bad_token), 1);
        assert_eq!(n(FailureReason::bad_password), 2);
        assert_eq!(n(FailureReason::malformed), 2);
        assert_eq!(n(FailureReason::unsupported_scheme), 3);
    }

    #[tokio::test]
    async fn a_rewritten_token_file_replaces_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let sec = HttpServer::load(Some(&write_config(dir.path(), ""))).unwrap();
        let r = app(&sec);
        let new = "tok-a-rotated-9876543210";
        // A different length changes the file's size, so the stamp differs even within
        // one mtime tick.
        std::fs::write(dir.path().join("a.token"), new).unwrap();
        assert_eq!(
            call(&r, Some(&format!("Bearer {new}"))).await.0,
            StatusCode::OK
        );
        assert_eq!(
            call(&r, Some(&format!("Bearer {TOKEN_A}"))).await.0,
            StatusCode::UNAUTHORIZED
        );
    }

    #[tokio::test]
    async fn rate_limit_answers_429_before_checking_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(dir.path(), "rate_limit:\n  burst: 3\n  interval: 1h\n");
        let sec = HttpServer::load(Some(&cfg)).unwrap();
        let r = app(&sec);
        let f = sec.failures();
        let n = |reason| f.get_or_create(&FailureLabels { reason }).get();
        // The burst is shared by good and bad requests alike: a flood of wrong passwords
        // uses it up, and then nothing reaches bcrypt.
        assert_eq!(
            call(&r, Some(&format!("Bearer {TOKEN_A}"))).await.0,
            StatusCode::OK
        );
        assert_eq!(
            call(&r, Some(&basic("alice", "guess-1"))).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            call(&r, Some(&basic("alice", "guess-2"))).await.0,
            StatusCode::UNAUTHORIZED
        );
        for i in 3..20 {
            let (status, _, body) = call(&r, Some(&basic("alice", &format!("guess-{i}")))).await;
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "attempt {i}: {body}");
        }
        assert_eq!(
            call(&r, Some(&format!("Bearer {TOKEN_A}"))).await.0,
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(n(FailureReason::rate_limited), 18);
        assert_eq!(
            n(FailureReason::bad_password),
            2,
            "no bcrypt past the limit"
        );
    }

    #[tokio::test]
    async fn jwt_bearer_next_to_static_tokens_with_tenant_claim_and_key_rotation() {
        use crate::testing::JwtSigner;
        use serde_json::json;
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (JwtSigner::es256("2026-11"), JwtSigner::rs256("2026-12"));
        std::fs::write(dir.path().join("jwks.json"), JwtSigner::jwks(&[&old])).unwrap();
        let cfg = write_config(
            dir.path(),
            "jwt:\n  jwks_file: jwks.json\n  issuer: https://idp.example\n  \
             audiences: [orrery]\n  tenant_claim: org\n",
        );
        let sec = HttpServer::load(Some(&cfg)).unwrap();
        let r = app(&sec);
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            + 300;
        let claims = |org: &str, exp: i64| json!({"iss": "https://idp.example", "aud": "orrery", "sub": "prom-1", "org": org, "exp": exp});
        let bearer = |t: String| format!("Bearer {t}");
        assert_eq!(
            call(&r, Some(&bearer(old.sign(&claims("team-j", exp))))).await,
            (StatusCode::OK, vec![], "prom-1/team-j".to_string())
        );
        // Static tokens keep working next to JWTs.
        assert_eq!(
            call(&r, Some(&format!("Bearer {TOKEN_A}"))).await.2,
            "prom-a/team-a"
        );
        let f = sec.failures();
        let n = |reason| f.get_or_create(&FailureLabels { reason }).get();
        let (status, challenges, _) =
            call(&r, Some(&bearer(old.sign(&claims("team-j", exp - 3600))))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(
            challenges.iter().any(|c| c.starts_with("Bearer")),
            "{challenges:?}"
        );
        assert_eq!(n(FailureReason::expired_jwt), 1);
        // A key the JWKS does not (yet) hold.
        assert_eq!(
            call(&r, Some(&bearer(new.sign(&claims("team-j", exp)))))
                .await
                .0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(n(FailureReason::bad_jwt), 1);

        // The provider rotates its keys: the new JWKS file applies to the next request,
        // and tokens of the retired key are refused.
        std::fs::write(dir.path().join("jwks.json"), JwtSigner::jwks(&[&new])).unwrap();
        assert_eq!(
            call(&r, Some(&bearer(new.sign(&claims("team-k", exp)))))
                .await
                .2,
            "prom-1/team-k"
        );
        assert_eq!(
            call(&r, Some(&bearer(old.sign(&claims("team-j", exp)))))
                .await
                .0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(n(FailureReason::bad_jwt), 2);
    }

    #[test]
    fn token_config_errors_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("short.token"), "abc").unwrap();
        std::fs::write(dir.path().join("space.token"), "abc def ghi jkl mno").unwrap();
        std::fs::write(dir.path().join("a2.token"), TOKEN_A).unwrap();
        for (extra, want) in [
            ("  - name: s\n    token_file: short.token\n", "at least 16"),
            (
                "  - name: s\n    token_file: space.token\n",
                "non-printable",
            ),
            ("  - name: s\n    token_file: nope.token\n", "nope.token"),
            ("  - name: prom-a\n    token_file: a2.token\n", "used twice"),
            (
                "  - name: copy\n    token_file: a2.token\n",
                "same token as \"prom-a\"",
            ),
            (
                "  - name: t\n    token_file: a2.token\n    tenant: \"\"\n",
                "empty tenant",
            ),
            ("  - name: t\n    token: abc\n", "token"),
        ] {
            let cfg = write_config(dir.path(), extra);
            let err = WebConfig::load(&cfg).map(|_| ()).unwrap_err().to_string();
            assert!(err.contains(want), "{extra:?}: {err}");
        }
        let cfg = dir.path().join("users.yml");
        std::fs::write(
            &cfg,
            format!(
                "basic_auth_users:\n  alice: {}\nuser_tenants:\n  carol: team-c\n",
                hash("pw", 4)
            ),
        )
        .unwrap();
        let err = WebConfig::load(&cfg).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("user_tenants.carol: no such user"), "{err}");
    }

    #[test]
    fn bearer_parsing_and_constant_time_match() {
        use crate::identity::parse_bearer;
        assert_eq!(parse_bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(parse_bearer(b"BEARER  abc "), Some(&b"abc"[..]));
        assert_eq!(parse_bearer(b"Bearer "), None);
        assert_eq!(parse_bearer(b"Basic abc"), None);
    }

    fn der(leaf: &Leaf) -> Vec<CertificateDer<'static>> {
        PemSource::Inline(leaf.cert_pem.clone()).certs().unwrap()
    }

    #[test]
    fn tenant_from_certificate_fields() {
        let ca = Ca::new("ca");
        let full = der(&ca.leaf_with_subject("prom-1", "team-o", "team-ou", 1));
        let bare = der(&ca.leaf_with_subject("prom-2", "", "", 2));
        assert_eq!(
            CertField::Organization.value(&full[0]).as_deref(),
            Some("team-o")
        );
        assert_eq!(
            CertField::OrganizationalUnit.value(&full[0]).as_deref(),
            Some("team-ou")
        );
        assert_eq!(
            CertField::CommonName.value(&full[0]).as_deref(),
            Some("prom-1")
        );
        assert_eq!(CertField::Organization.value(&bare[0]), None);
        assert!(CertField::parse("Organization").is_err());
        assert_eq!(CertField::parse("").unwrap(), None);
    }

    #[test]
    fn tenant_rule_credentials_win_and_a_conflicting_header_is_refused() {
        let ca = Ca::new("ca");
        let cert = der(&ca.leaf_with_subject("prom-1", "team-o", "", 1));
        let bare = der(&ca.leaf_with_subject("prom-2", "", "", 2));
        let by_header = TenantPolicy::new("THANOS-TENANT", "default-tenant", "").unwrap();
        let by_cert = TenantPolicy::new("THANOS-TENANT", "default-tenant", "organization").unwrap();
        let headers = |t: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(t) = t {
                h.insert("thanos-tenant", HeaderValue::from_str(t).unwrap());
            }
            h
        };
        let user = |t: Option<&str>| Principal {
            name: "u".into(),
            tenant: t.map(str::to_string),
        };
        // Nothing bound: header, else default (Thanos's behaviour).
        assert_eq!(
            by_header.resolve(&headers(None), None, None).unwrap(),
            "default-tenant"
        );
        assert_eq!(
            by_header.resolve(&headers(Some("x")), None, None).unwrap(),
            "x"
        );
        assert_eq!(
            by_header.resolve(&headers(Some("")), None, None).unwrap(),
            "default-tenant"
        );
        assert_eq!(
            by_header
                .resolve(&headers(Some("x")), Some(&user(None)), None)
                .unwrap(),
            "x"
        );
        // Bound to a user: no header → bound; same header → fine; other → 403.
        let bound = user(Some("team-a"));
        assert_eq!(
            by_header
                .resolve(&headers(None), Some(&bound), None)
                .unwrap(),
            "team-a"
        );
        assert_eq!(
            by_header
                .resolve(&headers(Some("team-a")), Some(&bound), None)
                .unwrap(),
            "team-a"
        );
        let e = by_header
            .resolve(&headers(Some("team-b")), Some(&bound), None)
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        assert_eq!(e.reason(), FailureReason::tenant_mismatch);
        assert!(e.to_string().contains("\"team-b\""), "{e}");
        // Certificate field: the cert's tenant; header for another → 403; no cert or no
        // field → 401; a user bound elsewhere → 403.
        assert_eq!(
            by_cert.resolve(&headers(None), None, Some(&cert)).unwrap(),
            "team-o"
        );
        assert_eq!(
            by_cert
                .resolve(&headers(Some("team-x")), None, Some(&cert))
                .unwrap_err()
                .status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            by_cert.resolve(&headers(None), None, None).unwrap_err(),
            TenantError::NoCertificate("organization")
        );
        assert_eq!(
            by_cert
                .resolve(&headers(None), None, Some(&bare))
                .unwrap_err()
                .status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            by_cert
                .resolve(&headers(None), Some(&bound), Some(&cert))
                .unwrap_err()
                .status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            by_cert
                .resolve(&headers(None), Some(&user(Some("team-o"))), Some(&cert))
                .unwrap(),
            "team-o"
        );
        let mut bad = HeaderMap::new();
        bad.insert(
            "thanos-tenant",
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        assert_eq!(
            by_header.resolve(&bad, None, None).unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
    }
}

mod rotation {
    //! Certificates, keys and CA bundles swapped on disk as a Kubernetes Secret update
    //! does, on the two paths not covered above: the `--http.config` listener and the
    //! TLS client (querier → store, receiver → peer).
    use super::*;
    use crate::HttpServer;
    use crate::client::ClientFlags;

    /// An echo server on a listener built by `HttpServer::listener`.
    async fn echo_on(sec: &HttpServer) -> String {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap().to_string();
        let mut l = sec.listener(tcp);
        assert!(l.is_tls(), "the web config has tls_server_config");
        tokio::spawn(async move {
            loop {
                let mut s = l.next().await;
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn web_config_certificate_and_client_ca_reload_on_secret_swap() {
        let tmp = tempfile::tempdir().unwrap();
        let (server_ca, clients1, clients2) = (Ca::new("s"), Ca::new("c1"), Ca::new("c2"));
        let (srv1, srv2) = (
            server_ca.leaf("web", &["127.0.0.1"], 0x31),
            server_ca.leaf("web", &["127.0.0.1"], 0x32),
        );
        let mut secret = SecretDir::new(&tmp.path().join("secret"));
        secret.publish(&[
            ("tls.crt", &srv1.cert_pem),
            ("tls.key", &srv1.key_pem),
            ("ca.crt", &clients1.pem()),
        ]);
        let cfg = tmp.path().join("web.yml");
        std::fs::write(
            &cfg,
            "tls_server_config:\n  cert_file: secret/tls.crt\n  key_file: secret/tls.key\n  \
             client_ca_file: secret/ca.crt\n  client_auth_type: RequireAndVerifyClientCert\n",
        )
        .unwrap();
        let sec = HttpServer::load(Some(&cfg)).unwrap();
        let addr = echo_on(&sec).await;
        let c1 = client(Some(&server_ca.pem()), Some(&clients1.leaf("a", &["a"], 1)));
        let c2 = client(Some(&server_ca.pem()), Some(&clients2.leaf("b", &["b"], 2)));
        let (serial, mut kept) = roundtrip(&c1, &addr).await.unwrap();
        assert_eq!(serial, "31");
        assert!(roundtrip(&c2, &addr).await.is_err(), "CA 2 not trusted yet");

        // New certificate and a new client CA in one swap.
        secret.publish(&[
            ("tls.crt", &srv2.cert_pem),
            ("tls.key", &srv2.key_pem),
            ("ca.crt", &clients2.pem()),
        ]);
        let (serial, _) = roundtrip(&c2, &addr)
            .await
            .expect("the new client CA applies");
        assert_eq!(serial, "32", "the new certificate is served");
        assert!(
            roundtrip(&c1, &addr).await.is_err(),
            "the old client CA is gone"
        );
        ping(&mut kept)
            .await
            .expect("a connection made before the swap keeps working");

        // A broken update (key of another pair) keeps the last good config.
        secret.publish(&[
            ("tls.crt", &srv1.cert_pem),
            ("tls.key", &srv2.key_pem),
            ("ca.crt", &clients2.pem()),
        ]);
        let (serial, _) = roundtrip(&c2, &addr).await.unwrap();
        assert_eq!(serial, "32");
    }

    #[tokio::test]
    async fn client_certificate_and_ca_reload_on_secret_swap() {
        let tmp = tempfile::tempdir().unwrap();
        // Old and new server CA, old and new client CA: a full rotation of both sides.
        let (s1, s2, c1, c2) = (Ca::new("s1"), Ca::new("s2"), Ca::new("c1"), Ca::new("c2"));
        let mut server = SecretDir::new(&tmp.path().join("server"));
        let mut client_dir = SecretDir::new(&tmp.path().join("client"));
        let srv1 = s1.leaf("store", &["127.0.0.1"], 0x41);
        let srv2 = s2.leaf("store", &["127.0.0.1"], 0x42);
        let (me1, me2) = (c1.leaf("querier", &["q"], 5), c2.leaf("querier", &["q"], 6));
        server.publish(&[
            ("tls.crt", &srv1.cert_pem),
            ("tls.key", &srv1.key_pem),
            ("ca.crt", &c1.pem()),
        ]);
        client_dir.publish(&[
            ("ca.crt", &s1.pem()),
            ("tls.crt", &me1.cert_pem),
            ("tls.key", &me1.key_pem),
        ]);
        let s = settings(
            &server.path(""),
            ClientAuth::RequireAndVerifyClientCert,
            true,
        );
        let addr = echo_server(Arc::new(ReloadingServerConfig::new(s).unwrap())).await;
        // As `--grpc-client-tls-*` build it: files, reloaded per new connection.
        let c = ClientTls::from_flags(ClientFlags {
            prefix: "grpc-client-tls",
            secure: true,
            cert: Some(&client_dir.path("tls.crt")),
            key: Some(&client_dir.path("tls.key")),
            ca: Some(&client_dir.path("ca.crt")),
            skip_verify: false,
            server_name: None,
            min_version: "1.3",
        })
        .unwrap();
        let (serial, mut kept) = roundtrip(&c, &addr).await.unwrap();
        assert_eq!(serial, "41");

        // The server side rotates first: the client's old files no longer fit.
        server.publish(&[
            ("tls.crt", &srv2.cert_pem),
            ("tls.key", &srv2.key_pem),
            ("ca.crt", &c2.pem()),
        ]);
        assert!(
            roundtrip(&c, &addr).await.is_err(),
            "old client files against the rotated server"
        );
        // Then the client's Secret: the same client object picks the new files up.
        client_dir.publish(&[
            ("ca.crt", &s2.pem()),
            ("tls.crt", &me2.cert_pem),
            ("tls.key", &me2.key_pem),
        ]);
        let (serial, _) = roundtrip(&c, &addr)
            .await
            .expect("the client reloaded its CA, certificate and key");
        assert_eq!(serial, "42");
        ping(&mut kept)
            .await
            .expect("the connection made before both swaps keeps working");

        // A half-written client update (key of another certificate) keeps the last good
        // files instead of failing every new connection.
        client_dir.publish(&[
            ("ca.crt", &s2.pem()),
            ("tls.crt", &me2.cert_pem),
            ("tls.key", &me1.key_pem),
        ]);
        assert!(
            roundtrip(&c, &addr).await.is_ok(),
            "last good client config"
        );
    }
}

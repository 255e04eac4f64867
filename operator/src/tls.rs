//! TLS wiring of the pods the operator builds: a Secret holding `tls.crt`, `tls.key`
//! and `ca.crt` mounted as a directory (so renewals reach the running pods, which
//! reload the files on change), and the Thanos-named flags pointing at it.

use k8s_openapi::api::core::v1::{SecretVolumeSource, Volume, VolumeMount};

use crate::crd::TlsSecretRef;

/// Where the gRPC TLS Secret is mounted in receiver and querier pods.
pub const GRPC_TLS_DIR: &str = "/etc/orrery/grpc-tls";
const VOLUME: &str = "grpc-tls";

fn file(name: &str) -> String {
    format!("{GRPC_TLS_DIR}/{name}")
}

/// The Secret as a pod volume (every key, a directory mount).
pub fn volume(r: &TlsSecretRef) -> Volume {
    Volume {
        name: VOLUME.to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(r.secret_name.clone()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The container's read-only mount of [`volume`] (no subPath: subPath mounts never see
/// an updated Secret).
pub fn mount() -> VolumeMount {
    VolumeMount {
        name: VOLUME.to_string(),
        mount_path: GRPC_TLS_DIR.to_string(),
        read_only: Some(true),
        ..Default::default()
    }
}

/// Receiver flags: the gRPC listener requires and verifies client certificates from
/// the Secret's CA (StoreAPI readers and replicating peers alike), and forwarding to
/// peers presents the Secret's certificate and verifies theirs.
pub fn receiver_args() -> Vec<String> {
    vec![
        format!("--grpc-server-tls-cert={}", file("tls.crt")),
        format!("--grpc-server-tls-key={}", file("tls.key")),
        format!("--grpc-server-tls-client-ca={}", file("ca.crt")),
        "--remote-write.client-tls-secure".to_string(),
        format!("--remote-write.client-tls-cert={}", file("tls.crt")),
        format!("--remote-write.client-tls-key={}", file("tls.key")),
        format!("--remote-write.client-tls-ca={}", file("ca.crt")),
    ]
}

/// Querier flags for endpoints dialled by the name they give (static `host:port`).
pub fn querier_client_args() -> Vec<String> {
    vec![
        "--grpc-client-tls-secure".to_string(),
        format!("--grpc-client-tls-cert={}", file("tls.crt")),
        format!("--grpc-client-tls-key={}", file("tls.key")),
        format!("--grpc-client-tls-ca={}", file("ca.crt")),
    ]
}

/// The `--endpoint.sd-config` for `dns+` endpoints over TLS. Such a name resolves to pod
/// IPs that no certificate names, so each entry is verified as the DNS name itself (a
/// ReceiveCluster's headless Service), as Thanos's per-endpoint `server_name` allows.
/// JSON text: YAML 1.2 reads it, and quoting is never a question.
pub fn querier_sd_config(dns_endpoints: &[String]) -> String {
    let endpoints: Vec<serde_json::Value> = dns_endpoints
        .iter()
        .map(|e| {
            let host = e
                .strip_prefix("dns+")
                .unwrap_or(e)
                .rsplit_once(':')
                .map(|(h, _)| h)
                .unwrap_or(e);
            serde_json::json!({
                "address": e,
                "client_config": {
                    "server_name": host,
                    "tls_config": {
                        "ca_file": file("ca.crt"),
                        "cert_file": file("tls.crt"),
                        "key_file": file("tls.key"),
                    }
                }
            })
        })
        .collect();
    serde_json::json!({ "endpoints": endpoints }).to_string()
}

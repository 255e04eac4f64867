//! Thanos's TLS flags as clap argument groups: a service adds
//! `#[command(flatten)] pub grpc_tls: netsec::flags::GrpcServerTls` and calls one method
//! where it builds the listener or the client.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::Error;
use crate::client::{ClientFlags, ClientTls};
use crate::server::{
    ReloadingServerConfig, ServerConfigSource, ServerTlsSettings, alpn_grpc, alpn_http,
};

/// Paths as given, including `""` (clap's path parser refuses it; Thanos's deployments
/// pass `--flag=""` for "unset").
pub fn any_path() -> impl clap::builder::TypedValueParser<Value = PathBuf> {
    use clap::builder::TypedValueParser;
    clap::builder::OsStringValueParser::new().map(PathBuf::from)
}

/// Thanos passes `""` for "unset"; so do we.
fn path(p: &Option<PathBuf>) -> Option<&Path> {
    p.as_deref().filter(|p| !p.as_os_str().is_empty())
}

fn server(
    prefix: &str,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
    ca: &Option<PathBuf>,
    min: &str,
    alpn: Vec<Vec<u8>>,
) -> Result<Option<Arc<dyn ServerConfigSource>>, Error> {
    match ServerTlsSettings::from_flags(prefix, path(cert), path(key), path(ca), min, alpn)? {
        None => Ok(None),
        Some(s) => Ok(Some(Arc::new(ReloadingServerConfig::new(s)?))),
    }
}

/// `--grpc-server-tls-*`: TLS for the gRPC (StoreAPI, replication) listener.
#[derive(clap::Args, Debug, Clone)]
pub struct GrpcServerTls {
    /// TLS certificate for the gRPC server; empty: no TLS. Reloaded when the file changes.
    #[arg(id = "grpc_server_tls_cert", long = "grpc-server-tls-cert", value_name = "FILE", value_parser = any_path())]
    pub cert: Option<PathBuf>,
    /// TLS key for the gRPC server.
    #[arg(id = "grpc_server_tls_key", long = "grpc-server-tls-key", value_name = "FILE", value_parser = any_path())]
    pub key: Option<PathBuf>,
    /// CA to verify gRPC clients against; set: client certificates are required and
    /// verified (mTLS). Reloaded when the file changes.
    #[arg(id = "grpc_server_tls_client_ca", long = "grpc-server-tls-client-ca", value_name = "FILE", value_parser = any_path())]
    pub client_ca: Option<PathBuf>,
    /// Lowest TLS version accepted: 1.2 or 1.3 (1.0 and 1.1 mean 1.2).
    #[arg(
        id = "grpc_server_tls_min_version",
        long = "grpc-server-tls-min-version",
        value_name = "VERSION",
        default_value = "1.3"
    )]
    pub min_version: String,
}

impl GrpcServerTls {
    /// `None`: plaintext. Errors name the flag (startup errors).
    pub fn server_config(&self) -> Result<Option<Arc<dyn ServerConfigSource>>, Error> {
        server(
            "grpc-server-tls",
            &self.cert,
            &self.key,
            &self.client_ca,
            &self.min_version,
            alpn_grpc(),
        )
    }
}

/// `--remote-write.server-tls-*`: TLS for the receiver's remote-write listener.
#[derive(clap::Args, Debug, Clone)]
pub struct RemoteWriteServerTls {
    /// TLS certificate for the remote-write server; empty: no TLS.
    #[arg(id = "remote_write_server_tls_cert", long = "remote-write.server-tls-cert", value_name = "FILE", value_parser = any_path())]
    pub cert: Option<PathBuf>,
    /// TLS key for the remote-write server.
    #[arg(id = "remote_write_server_tls_key", long = "remote-write.server-tls-key", value_name = "FILE", value_parser = any_path())]
    pub key: Option<PathBuf>,
    /// CA to verify remote-write clients against; set: client certificates are required.
    #[arg(id = "remote_write_server_tls_client_ca", long = "remote-write.server-tls-client-ca", value_name = "FILE", value_parser = any_path())]
    pub client_ca: Option<PathBuf>,
    /// Lowest TLS version accepted on the remote-write listener.
    #[arg(
        id = "remote_write_server_tls_min_version",
        long = "remote-write.server-tls-min-version",
        value_name = "VERSION",
        default_value = "1.3"
    )]
    pub min_version: String,
}

impl RemoteWriteServerTls {
    pub fn server_config(&self) -> Result<Option<Arc<dyn ServerConfigSource>>, Error> {
        server(
            "remote-write.server-tls",
            &self.cert,
            &self.key,
            &self.client_ca,
            &self.min_version,
            alpn_http(true),
        )
    }
}

/// `--grpc-client-tls-*`: how the querier dials StoreAPI endpoints.
#[derive(clap::Args, Debug, Clone)]
pub struct GrpcClientTls {
    /// Use TLS when talking to the gRPC server.
    #[arg(
        id = "grpc_client_tls_secure",
        long = "grpc-client-tls-secure",
        overrides_with = "no_grpc_client_tls_secure"
    )]
    pub secure: bool,
    #[arg(
        id = "no_grpc_client_tls_secure",
        long = "no-grpc-client-tls-secure",
        hide = true
    )]
    pub no_secure: bool,
    /// Disable TLS certificate verification (self-signed certificates, fake CAs).
    #[arg(
        id = "grpc_client_tls_skip_verify",
        long = "grpc-client-tls-skip-verify",
        overrides_with = "no_grpc_client_tls_skip_verify"
    )]
    pub skip_verify: bool,
    #[arg(
        id = "no_grpc_client_tls_skip_verify",
        long = "no-grpc-client-tls-skip-verify",
        hide = true
    )]
    pub no_skip_verify: bool,
    /// TLS certificate identifying this client to the server.
    #[arg(id = "grpc_client_tls_cert", long = "grpc-client-tls-cert", value_name = "FILE", value_parser = any_path())]
    pub cert: Option<PathBuf>,
    /// TLS key for the client's certificate.
    #[arg(id = "grpc_client_tls_key", long = "grpc-client-tls-key", value_name = "FILE", value_parser = any_path())]
    pub key: Option<PathBuf>,
    /// CA certificates to verify servers with (default: the system's).
    #[arg(id = "grpc_client_tls_ca", long = "grpc-client-tls-ca", value_name = "FILE", value_parser = any_path())]
    pub ca: Option<PathBuf>,
    /// Server name to verify the certificates against (default: the dialled host).
    #[arg(
        id = "grpc_client_server_name",
        long = "grpc-client-server-name",
        value_name = "NAME",
        default_value = ""
    )]
    pub server_name: String,
    /// Lowest TLS version offered.
    #[arg(
        id = "grpc_client_tls_min_version",
        long = "grpc-client-tls-min-version",
        value_name = "VERSION",
        default_value = "1.3"
    )]
    pub min_version: String,
}

impl GrpcClientTls {
    pub fn client(&self) -> Result<ClientTls, Error> {
        ClientTls::from_flags(ClientFlags {
            prefix: "grpc-client-tls",
            secure: self.secure && !self.no_secure,
            cert: path(&self.cert),
            key: path(&self.key),
            ca: path(&self.ca),
            skip_verify: self.skip_verify && !self.no_skip_verify,
            server_name: Some(self.server_name.as_str()),
            min_version: &self.min_version,
        })
    }
}

/// `--remote-write.client-tls-*`: how a receiver forwards and replicates to its peers.
#[derive(clap::Args, Debug, Clone)]
pub struct RemoteWriteClientTls {
    /// Use TLS when forwarding to other receivers.
    #[arg(
        id = "remote_write_client_tls_secure",
        long = "remote-write.client-tls-secure",
        overrides_with = "no_remote_write_client_tls_secure"
    )]
    pub secure: bool,
    #[arg(
        id = "no_remote_write_client_tls_secure",
        long = "no-remote-write.client-tls-secure",
        hide = true
    )]
    pub no_secure: bool,
    /// Disable TLS certificate verification towards other receivers.
    #[arg(
        id = "remote_write_client_tls_skip_verify",
        long = "remote-write.client-tls-skip-verify",
        overrides_with = "no_remote_write_client_tls_skip_verify"
    )]
    pub skip_verify: bool,
    #[arg(
        id = "no_remote_write_client_tls_skip_verify",
        long = "no-remote-write.client-tls-skip-verify",
        hide = true
    )]
    pub no_skip_verify: bool,
    /// TLS certificate identifying this receiver to its peers.
    #[arg(id = "remote_write_client_tls_cert", long = "remote-write.client-tls-cert", value_name = "FILE", value_parser = any_path())]
    pub cert: Option<PathBuf>,
    /// TLS key for the client's certificate.
    #[arg(id = "remote_write_client_tls_key", long = "remote-write.client-tls-key", value_name = "FILE", value_parser = any_path())]
    pub key: Option<PathBuf>,
    /// CA certificates to verify peers with (default: the system's).
    #[arg(id = "remote_write_client_tls_ca", long = "remote-write.client-tls-ca", value_name = "FILE", value_parser = any_path())]
    pub ca: Option<PathBuf>,
    /// Server name to verify the peers' certificates against (default: the peer's host).
    #[arg(
        id = "remote_write_client_server_name",
        long = "remote-write.client-server-name",
        value_name = "NAME",
        default_value = ""
    )]
    pub server_name: String,
    /// Lowest TLS version offered to peers.
    #[arg(
        id = "remote_write_client_tls_min_version",
        long = "remote-write.client-tls-min-version",
        value_name = "VERSION",
        default_value = "1.3"
    )]
    pub min_version: String,
}

impl RemoteWriteClientTls {
    pub fn client(&self) -> Result<ClientTls, Error> {
        ClientTls::from_flags(ClientFlags {
            prefix: "remote-write.client-tls",
            secure: self.secure && !self.no_secure,
            cert: path(&self.cert),
            key: path(&self.key),
            ca: path(&self.ca),
            skip_verify: self.skip_verify && !self.no_skip_verify,
            server_name: Some(self.server_name.as_str()),
            min_version: &self.min_version,
        })
    }
}

/// `--http.config`: the exporter-toolkit web config for the HTTP listener.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct HttpConfig {
    /// [EXPERIMENTAL] Path to a web config file (exporter-toolkit format) enabling TLS,
    /// client-certificate checks and basic auth on the HTTP listener.
    #[arg(
        id = "http_config_file",
        long = "http.config",
        value_name = "FILE",
        default_value = ""
    )]
    pub http_config: String,
}

impl HttpConfig {
    pub fn server(&self) -> Result<crate::HttpServer, Error> {
        crate::HttpServer::load(
            (!self.http_config.is_empty()).then(|| Path::new(self.http_config.as_str())),
        )
    }
}

// Defaults equal to the flags' defaults (for struct literals in tests and `standalone`).
impl Default for GrpcServerTls {
    fn default() -> Self {
        GrpcServerTls {
            cert: None,
            key: None,
            client_ca: None,
            min_version: "1.3".into(),
        }
    }
}

impl Default for RemoteWriteServerTls {
    fn default() -> Self {
        RemoteWriteServerTls {
            cert: None,
            key: None,
            client_ca: None,
            min_version: "1.3".into(),
        }
    }
}

impl Default for GrpcClientTls {
    fn default() -> Self {
        GrpcClientTls {
            secure: false,
            no_secure: false,
            skip_verify: false,
            no_skip_verify: false,
            cert: None,
            key: None,
            ca: None,
            server_name: String::new(),
            min_version: "1.3".into(),
        }
    }
}

impl Default for RemoteWriteClientTls {
    fn default() -> Self {
        RemoteWriteClientTls {
            secure: false,
            no_secure: false,
            skip_verify: false,
            no_skip_verify: false,
            cert: None,
            key: None,
            ca: None,
            server_name: String::new(),
            min_version: "1.3".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        grpc: GrpcServerTls,
        #[command(flatten)]
        rw: RemoteWriteServerTls,
        #[command(flatten)]
        client: GrpcClientTls,
        #[command(flatten)]
        rw_client: RemoteWriteClientTls,
        #[command(flatten)]
        http: HttpConfig,
    }

    #[test]
    fn defaults_match_thanos_and_struct_defaults() {
        let c = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(c.grpc.min_version, GrpcServerTls::default().min_version);
        assert_eq!(c.client.min_version, "1.3");
        assert!(!c.client.client().unwrap().is_tls());
        assert!(!c.rw_client.client().unwrap().is_tls());
        assert!(c.grpc.server_config().unwrap().is_none());
        assert!(c.rw.server_config().unwrap().is_none());
        assert!(c.http.http_config.is_empty());
    }

    #[test]
    fn kingpin_style_negations_parse() {
        let c = Cli::try_parse_from([
            "x",
            "--grpc-client-tls-secure",
            "--no-grpc-client-tls-secure",
            "--remote-write.client-tls-skip-verify",
            "--grpc-server-tls-cert=",
            "--remote-write.client-server-name=peer.internal",
        ])
        .unwrap();
        assert!(!c.client.client().unwrap().is_tls());
        assert!(c.rw_client.skip_verify);
        assert_eq!(c.rw_client.server_name, "peer.internal");
        assert!(c.grpc.server_config().unwrap().is_none(), "empty = unset");
        let c = Cli::try_parse_from([
            "x",
            "--remote-write.client-tls-secure",
            "--remote-write.client-tls-cert=/x",
        ])
        .unwrap();
        assert!(
            c.rw_client
                .client()
                .unwrap_err()
                .to_string()
                .contains("together")
        );
    }
}

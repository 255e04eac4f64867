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

/// A server-TLS flag group: `--<prefix>-cert`, `-key`, `-client-ca`, `-min-version`
/// (`$id` is the same prefix with `_`, for clap's argument ids), for the listener `$what`.
macro_rules! server_tls_flags {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $id:literal, $what:literal, $alpn:expr) => {
        $(#[$doc])*
        #[derive(clap::Args, Debug, Clone)]
        pub struct $name {
            #[arg(
                help = concat!("TLS certificate for ", $what, "; empty: no TLS. Reloaded when the file changes."),
                id = concat!($id, "_cert"), long = concat!($prefix, "-cert"), value_name = "FILE", value_parser = any_path())]
            pub cert: Option<PathBuf>,
            #[arg(
                help = concat!("TLS key for ", $what, "."),
                id = concat!($id, "_key"), long = concat!($prefix, "-key"), value_name = "FILE", value_parser = any_path())]
            pub key: Option<PathBuf>,
            #[arg(
                help = concat!("CA to verify the clients of ", $what, " against; set: client certificates are required and verified (mTLS). Reloaded when the file changes."),
                id = concat!($id, "_client_ca"), long = concat!($prefix, "-client-ca"), value_name = "FILE", value_parser = any_path())]
            pub client_ca: Option<PathBuf>,
            /// Lowest TLS version accepted: 1.2 or 1.3 (1.0 and 1.1 mean 1.2).
            #[arg(id = concat!($id, "_min_version"), long = concat!($prefix, "-min-version"), value_name = "VERSION", default_value = "1.3")]
            pub min_version: String,
        }

        impl $name {
            /// `None`: plaintext. Errors name the flag (startup errors).
            pub fn server_config(&self) -> Result<Option<Arc<dyn ServerConfigSource>>, Error> {
                server($prefix, &self.cert, &self.key, &self.client_ca, &self.min_version, $alpn)
            }
        }

        /// Equal to the flags' defaults (for struct literals in tests and `standalone`).
        impl Default for $name {
            fn default() -> Self {
                $name { cert: None, key: None, client_ca: None, min_version: "1.3".into() }
            }
        }
    };
}

/// A client-TLS flag group as Thanos names it: `--<prefix>-secure` (and kingpin's
/// hidden `--no-` negation), `-skip-verify`, `-cert`, `-key`, `-ca`, `-min-version`, and
/// the server-name flag `$sni` (Thanos spells it without `-tls`), for dialling `$peer`.
macro_rules! client_tls_flags {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $id:literal, $sni:literal, $sni_id:literal, $peer:literal) => {
        $(#[$doc])*
        #[derive(clap::Args, Debug, Clone)]
        pub struct $name {
            #[arg(
                help = concat!("Use TLS when talking to ", $peer, "."),
                id = concat!($id, "_secure"), long = concat!($prefix, "-secure"), overrides_with = concat!("no_", $id, "_secure"))]
            pub secure: bool,
            #[arg(id = concat!("no_", $id, "_secure"), long = concat!("no-", $prefix, "-secure"), hide = true)]
            pub no_secure: bool,
            #[arg(
                help = concat!("Disable TLS certificate verification of ", $peer, " (self-signed certificates, fake CAs)."),
                id = concat!($id, "_skip_verify"), long = concat!($prefix, "-skip-verify"), overrides_with = concat!("no_", $id, "_skip_verify"))]
            pub skip_verify: bool,
            #[arg(id = concat!("no_", $id, "_skip_verify"), long = concat!("no-", $prefix, "-skip-verify"), hide = true)]
            pub no_skip_verify: bool,
            #[arg(
                help = concat!("TLS certificate identifying this client to ", $peer, "."),
                id = concat!($id, "_cert"), long = concat!($prefix, "-cert"), value_name = "FILE", value_parser = any_path())]
            pub cert: Option<PathBuf>,
            /// TLS key for the client's certificate.
            #[arg(id = concat!($id, "_key"), long = concat!($prefix, "-key"), value_name = "FILE", value_parser = any_path())]
            pub key: Option<PathBuf>,
            #[arg(
                help = concat!("CA certificates to verify ", $peer, " with (default: the system's)."),
                id = concat!($id, "_ca"), long = concat!($prefix, "-ca"), value_name = "FILE", value_parser = any_path())]
            pub ca: Option<PathBuf>,
            #[arg(
                help = concat!("Server name to verify the certificates of ", $peer, " against (default: the dialled host)."),
                id = $sni_id, long = $sni, value_name = "NAME", default_value = "")]
            pub server_name: String,
            /// Lowest TLS version offered.
            #[arg(id = concat!($id, "_min_version"), long = concat!($prefix, "-min-version"), value_name = "VERSION", default_value = "1.3")]
            pub min_version: String,
        }

        impl $name {
            pub fn client(&self) -> Result<ClientTls, Error> {
                ClientTls::from_flags(ClientFlags {
                    prefix: $prefix,
                    secure: self.secure && !self.no_secure,
                    cert: path(&self.cert),
                    key: path(&self.key),
                    ca: path(&self.ca),
                    skip_verify: self.skip_verify && !self.no_skip_verify,
                    server_name: Some(self.server_name.as_str()),
                    min_version: &self.min_version,
                })
            }

            /// The flag values as owned options (for merging with an SD file's
            /// `client_config`).
            pub fn options(&self) -> $crate::client::ClientOptions {
                $crate::client::ClientOptions {
                    secure: self.secure && !self.no_secure,
                    skip_verify: self.skip_verify && !self.no_skip_verify,
                    cert: path(&self.cert).map(Path::to_path_buf),
                    key: path(&self.key).map(Path::to_path_buf),
                    ca: path(&self.ca).map(Path::to_path_buf),
                    server_name: self.server_name.clone(),
                    min_version: self.min_version.clone(),
                }
            }
        }

        /// Equal to the flags' defaults (for struct literals in tests and `standalone`).
        impl Default for $name {
            fn default() -> Self {
                $name {
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
    };
}

server_tls_flags!(
    /// `--grpc-server-tls-*`: TLS for the gRPC (StoreAPI, replication) listener.
    GrpcServerTls,
    "grpc-server-tls",
    "grpc_server_tls",
    "the gRPC server",
    alpn_grpc()
);

server_tls_flags!(
    /// `--remote-write.server-tls-*`: TLS for the receiver's remote-write listener.
    RemoteWriteServerTls,
    "remote-write.server-tls",
    "remote_write_server_tls",
    "the remote-write server",
    alpn_http(true)
);

client_tls_flags!(
    /// `--grpc-client-tls-*`: how the querier dials StoreAPI endpoints.
    GrpcClientTls,
    "grpc-client-tls",
    "grpc_client_tls",
    "grpc-client-server-name",
    "grpc_client_server_name",
    "the gRPC server"
);

client_tls_flags!(
    /// `--remote-write.client-tls-*`: how a receiver forwards and replicates to its peers.
    RemoteWriteClientTls,
    "remote-write.client-tls",
    "remote_write_client_tls",
    "remote-write.client-server-name",
    "remote_write_client_server_name",
    "other receivers"
);

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
    fn every_visible_flag_has_help() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        for a in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            assert!(
                a.get_help()
                    .is_some_and(|h| !h.to_string().trim().is_empty()),
                "--{} has no help text",
                a.get_long().unwrap_or_default()
            );
        }
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

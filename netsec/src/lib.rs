//! Transport security for every Orrery listener and client.
//!
//! - [`server`]: rustls server configs from cert/key/client-CA files, rebuilt when a file
//!   changes (cert-manager rewrites, Kubernetes Secret `..data` symlink swaps) on the next
//!   handshake, so no restart is needed and open connections keep their session.
//! - [`client`]: rustls client configs (CA, client certificate, server name, skip-verify)
//!   and a tonic connector, reloaded the same way.
//! - [`listener`]: a TCP listener that hands out plaintext or TLS streams to axum and
//!   tonic; handshakes run in their own tasks so a slow client never stalls `accept`.
//! - [`webconfig`] + [`auth`]: the exporter-toolkit web config file (`--http.config`):
//!   TLS, client-certificate policy, bcrypt basic auth and fixed response headers.
//! - [`jwt`]: bearer JWTs (OIDC) verified against JWKS / HMAC secret files, with an
//!   optional claim naming the caller's tenant (a web-config extension).
//! - [`identity`]: bearer tokens, tenants bound to credentials or named by a client
//!   certificate, and the tenant-resolution rule the receiver and querier share.
//! - [`flags`]: Thanos's flag names, as clap argument groups the services flatten.
//! - [`ops`]: `/metrics`, `/-/healthy`, `/-/ready`, served the same way by every component.
//!
//! One crypto provider (aws-lc-rs, the one kube and object_store already use) is passed
//! explicitly everywhere, so no process-wide default provider has to be installed.

pub mod auth;
pub mod client;
pub mod flags;
pub mod identity;
pub mod jwt;
pub mod listener;
pub mod ops;
pub mod pem;
pub mod server;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod webconfig;

use std::path::PathBuf;
use std::sync::Arc;

pub use client::{ClientOptions, ClientTls};
pub use identity::{Principal, TenantPolicy};
pub use listener::{ConnInfo, Listener, Stream};
pub use server::{ClientAuth, ReloadingServerConfig, ServerTlsSettings, TlsVersion};
/// Re-exported for callers that hold a raw TLS stream from [`ClientTls::connect`].
pub use tokio_rustls;
pub use webconfig::{HttpServer, WebConfig};

/// Everything that can go wrong while loading TLS material or a web config.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {reason}")]
    Pem { what: String, reason: String },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("invalid flag: {0}")]
    Flag(String),
    #[error("web config {path}: {reason}")]
    WebConfig { path: PathBuf, reason: String },
}

impl From<rustls::Error> for Error {
    fn from(e: rustls::Error) -> Self {
        Error::Tls(e.to_string())
    }
}

/// The crypto provider behind every config built here.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

#[cfg(test)]
mod tests;

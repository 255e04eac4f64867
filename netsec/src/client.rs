//! rustls client configs for the querier's store connections and the receiver's
//! forwarding to peers: Thanos's `--grpc-client-tls-*` / `--remote-write.client-tls-*`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

use crate::Error;
use crate::pem::{Fingerprint, PemSource};
use crate::server::TlsVersion;

/// What a TLS client needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTlsSettings {
    /// Roots to verify the server with; `None` = the system's roots.
    pub ca: Option<PemSource>,
    pub cert: Option<PemSource>,
    pub key: Option<PemSource>,
    /// Thanos's `--*-tls-skip-verify`: no certificate or name check at all.
    pub skip_verify: bool,
    /// Name to verify the server's certificate against (and send as SNI); default: the
    /// host of the address dialled.
    pub server_name: Option<String>,
    pub min_version: TlsVersion,
}

impl ClientTlsSettings {
    fn files(&self) -> Vec<PathBuf> {
        [self.ca.as_ref(), self.cert.as_ref(), self.key.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|s| s.path().map(Path::to_path_buf))
            .collect()
    }

    /// Builds the rustls config from the current file contents.
    pub fn build(&self) -> Result<Arc<ClientConfig>, Error> {
        let provider = crate::provider();
        let versions: Vec<&'static rustls::SupportedProtocolVersion> =
            if self.min_version >= TlsVersion::Tls13 {
                vec![&rustls::version::TLS13]
            } else {
                vec![&rustls::version::TLS13, &rustls::version::TLS12]
            };
        let b = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)?;
        let b = if self.skip_verify {
            b.dangerous()
                .with_custom_certificate_verifier(Arc::new(NoServerVerification(provider)))
        } else {
            let roots = match &self.ca {
                Some(ca) => ca.roots()?,
                None => {
                    let found = rustls_native_certs::load_native_certs();
                    let mut roots = rustls::RootCertStore::empty();
                    let (added, _) = roots.add_parsable_certificates(found.certs);
                    if added == 0 {
                        return Err(Error::Tls(
                            "no CA given and no system CA certificates found".into(),
                        ));
                    }
                    roots
                }
            };
            b.with_root_certificates(roots)
        };
        let mut cfg = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => b
                .with_client_auth_cert(c.certs()?, k.key()?)
                .map_err(|e| Error::Tls(format!("client certificate and key: {e}")))?,
            (None, None) => b.with_no_client_auth(),
            _ => {
                return Err(Error::Tls(
                    "client certificate and key must be given together".into(),
                ));
            }
        };
        // gRPC runs over HTTP/2; servers such as grpc-go refuse TLS without ALPN h2.
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// A client config rebuilt when its CA, cert or key file changes (checked per new
/// connection).
#[derive(Debug)]
struct Reloading {
    settings: ClientTlsSettings,
    files: Vec<PathBuf>,
    state: Mutex<(Fingerprint, Arc<ClientConfig>)>,
}

impl Reloading {
    fn current(&self) -> Arc<ClientConfig> {
        let stamp = Fingerprint::of(self.files.iter().map(PathBuf::as_path));
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if stamp != st.0 {
            st.0 = stamp;
            match self.settings.build() {
                Ok(c) => {
                    st.1 = c;
                    tracing::info!(files = ?self.files, "TLS client files changed: reloaded");
                }
                Err(e) => tracing::error!(error = %e, files = ?self.files,
                    "TLS client files changed but cannot be loaded: keeping the previous ones"),
            }
        }
        st.1.clone()
    }
}

/// Plaintext or TLS for outgoing gRPC connections. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    tls: Option<Arc<Reloading>>,
}

/// The flag values of one client (Thanos's names differ by component, not by meaning).
#[derive(Debug, Clone, Default)]
pub struct ClientFlags<'a> {
    /// Prefix for error messages, e.g. `grpc-client-tls`.
    pub prefix: &'a str,
    pub secure: bool,
    pub cert: Option<&'a Path>,
    pub key: Option<&'a Path>,
    pub ca: Option<&'a Path>,
    pub skip_verify: bool,
    pub server_name: Option<&'a str>,
    pub min_version: &'a str,
}

/// Owned client-TLS options with the flags' meaning: what `--grpc-client-tls-*` give, or
/// what an endpoint SD file's `client_config` resolves to. Comparable and hashable, so
/// endpoints with equal options share one reloading [`ClientTls`] and an endpoint whose
/// options change is dialled again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientOptions {
    pub secure: bool,
    pub skip_verify: bool,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    /// Empty: verify the dialled host.
    pub server_name: String,
    pub min_version: String,
}

impl Default for ClientOptions {
    /// Plaintext, TLS 1.3 when enabled: the flags' defaults.
    fn default() -> Self {
        ClientOptions {
            secure: false,
            skip_verify: false,
            cert: None,
            key: None,
            ca: None,
            server_name: String::new(),
            min_version: "1.3".into(),
        }
    }
}

impl ClientOptions {
    /// Builds the client (reads the files now); `prefix` names the flags in errors.
    pub fn client(&self, prefix: &str) -> Result<ClientTls, Error> {
        fn path(p: &Option<PathBuf>) -> Option<&Path> {
            p.as_deref().filter(|p| !p.as_os_str().is_empty())
        }
        ClientTls::from_flags(ClientFlags {
            prefix,
            secure: self.secure,
            cert: path(&self.cert),
            key: path(&self.key),
            ca: path(&self.ca),
            skip_verify: self.skip_verify,
            server_name: Some(self.server_name.as_str()),
            min_version: &self.min_version,
        })
    }
}

impl ClientTls {
    /// No TLS.
    pub fn plaintext() -> ClientTls {
        ClientTls { tls: None }
    }

    /// A TLS client from settings; the files are read now, an error is a startup error.
    pub fn new(settings: ClientTlsSettings) -> Result<ClientTls, Error> {
        let files = settings.files();
        let stamp = Fingerprint::of(files.iter().map(PathBuf::as_path));
        let cfg = settings.build()?;
        Ok(ClientTls {
            tls: Some(Arc::new(Reloading {
                settings,
                files,
                state: Mutex::new((stamp, cfg)),
            })),
        })
    }

    /// Thanos's semantics: TLS only with `--…-secure`; without it the other TLS flags
    /// are ignored (as in Thanos), which is logged since it is rarely meant.
    pub fn from_flags(f: ClientFlags<'_>) -> Result<ClientTls, Error> {
        let min_version = TlsVersion::parse_flag(f.min_version)
            .map_err(|e| Error::Flag(format!("--{}-min-version: {e}", f.prefix)))?;
        if !f.secure {
            if f.cert.is_some() || f.key.is_some() || f.ca.is_some() || f.skip_verify {
                tracing::warn!(
                    "--{}-* flags are set without --{}-secure: connections stay plaintext",
                    f.prefix,
                    f.prefix
                );
            }
            return Ok(ClientTls::plaintext());
        }
        if f.cert.is_some() != f.key.is_some() {
            return Err(Error::Flag(format!(
                "--{p}-cert and --{p}-key must be set together",
                p = f.prefix
            )));
        }
        let file = |p: Option<&Path>| p.map(|p| PemSource::File(p.to_path_buf()));
        ClientTls::new(ClientTlsSettings {
            ca: file(f.ca),
            cert: file(f.cert),
            key: file(f.key),
            skip_verify: f.skip_verify,
            server_name: f.server_name.filter(|s| !s.is_empty()).map(str::to_string),
            min_version,
        })
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The config the next connection uses (after checking the files).
    pub fn current_config(&self) -> Option<Arc<ClientConfig>> {
        self.tls.as_ref().map(|t| t.current())
    }

    /// A lazily connecting channel to `endpoint`, over TLS when configured. The
    /// endpoint's own settings (timeouts, windows, keep-alive) still apply; TCP_NODELAY is
    /// set by the connector.
    pub fn channel(&self, endpoint: tonic::transport::Endpoint) -> tonic::transport::Channel {
        match &self.tls {
            None => endpoint.connect_lazy(),
            Some(t) => endpoint.connect_with_connector_lazy(TlsConnector { tls: t.clone() }),
        }
    }

    /// Connects to `addr` (`host:port`) and completes a TLS handshake offering `alpn`
    /// (e.g. `http/1.1`; empty: none); `host` is the name verified unless a server name
    /// is configured. For tools and tests speaking raw TLS.
    pub async fn connect(
        &self,
        addr: &str,
        alpn: &[&[u8]],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let t = self.tls.as_ref().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "TLS is not configured")
        })?;
        let host = addr
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(addr)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let mut cfg = (*t.current()).clone();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        handshake(t, Arc::new(cfg), addr, host).await
    }
}

async fn handshake(
    t: &Reloading,
    cfg: Arc<ClientConfig>,
    addr: &str,
    host: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = t
        .settings
        .server_name
        .as_deref()
        .unwrap_or(host)
        .to_string();
    let name = ServerName::try_from(name).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("invalid TLS server name: {e}"),
        )
    })?;
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
}

/// The tonic connector: TCP + TLS per new connection, with the current config.
#[derive(Debug, Clone)]
struct TlsConnector {
    tls: Arc<Reloading>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower::Service<http::Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = BoxFuture<Result<Self::Response, std::io::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let host = uri.host().ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "address without host")
            })?;
            let port = uri.port_u16().unwrap_or(443);
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let addr = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            let s = handshake(&tls, tls.current(), &addr, &host).await?;
            Ok(TokioIo::new(s))
        })
    }
}

/// `--*-tls-skip-verify`: accepts any server certificate (the handshake signature is
/// still checked, so the peer holds the key of the certificate it sent).
#[derive(Debug)]
struct NoServerVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoServerVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

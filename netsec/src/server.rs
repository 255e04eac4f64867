//! rustls server configs: Thanos's `--*-server-tls-*` semantics and the web config's
//! `tls_server_config`, rebuilt from disk when a file changes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};

use crate::Error;
use crate::pem::{Fingerprint, PemSource};

/// A TLS protocol version as Thanos (`1.2`) or the web config (`TLS12`) spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls10,
    Tls11,
    Tls12,
    Tls13,
}

impl TlsVersion {
    /// Thanos's `--*-tls-min-version` values.
    pub fn parse_flag(s: &str) -> Result<TlsVersion, Error> {
        match s {
            "1.0" => Ok(TlsVersion::Tls10),
            "1.1" => Ok(TlsVersion::Tls11),
            "1.2" => Ok(TlsVersion::Tls12),
            "1.3" => Ok(TlsVersion::Tls13),
            _ => Err(Error::Flag(format!(
                "TLS version {s:?}: expected one of 1.0, 1.1, 1.2, 1.3"
            ))),
        }
    }

    /// The web config's `min_version` / `max_version` values.
    pub fn parse_web(s: &str) -> Result<TlsVersion, String> {
        match s {
            "TLS10" => Ok(TlsVersion::Tls10),
            "TLS11" => Ok(TlsVersion::Tls11),
            "TLS12" => Ok(TlsVersion::Tls12),
            "TLS13" => Ok(TlsVersion::Tls13),
            _ => Err(format!(
                "unknown TLS version {s:?}: expected TLS10, TLS11, TLS12 or TLS13"
            )),
        }
    }
}

/// The five client-certificate policies of Go's `tls.ClientAuthType`, by the web config's
/// names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    #[default]
    NoClientCert,
    /// Asks for a certificate; accepts none, accepts any (unverified).
    RequestClientCert,
    /// Requires a certificate, does not verify it against a CA.
    RequireAnyClientCert,
    /// Verifies a certificate if one is sent; accepts none.
    VerifyClientCertIfGiven,
    /// Requires a certificate signed by the client CA (Thanos's `--*-tls-client-ca`).
    RequireAndVerifyClientCert,
}

impl ClientAuth {
    pub fn parse(s: &str) -> Result<ClientAuth, String> {
        match s {
            "" | "NoClientCert" => Ok(ClientAuth::NoClientCert),
            "RequestClientCert" => Ok(ClientAuth::RequestClientCert),
            // RequireClientCert: exporter-toolkit's older name, kept there for compatibility.
            "RequireAnyClientCert" | "RequireClientCert" => Ok(ClientAuth::RequireAnyClientCert),
            "VerifyClientCertIfGiven" => Ok(ClientAuth::VerifyClientCertIfGiven),
            "RequireAndVerifyClientCert" => Ok(ClientAuth::RequireAndVerifyClientCert),
            _ => Err(format!(
                "invalid client_auth_type {s:?}: expected NoClientCert, RequestClientCert, \
                 RequireAnyClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert"
            )),
        }
    }
}

/// Everything a TLS server listener needs, from flags or a web config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsSettings {
    pub cert: PemSource,
    pub key: PemSource,
    pub client_auth: ClientAuth,
    pub client_ca: Option<PemSource>,
    /// exporter-toolkit's `client_allowed_sans`: some SAN of the client's leaf
    /// certificate (DNS, e-mail, IP or URI) must equal one of these.
    pub client_allowed_sans: Option<Vec<String>>,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// Go names of TLS 1.2 suites (TLS 1.3 suites are not configurable, as in Go).
    pub cipher_suites: Vec<String>,
    /// Go names: `CurveP256`, `CurveP384`, `X25519`, `X25519MLKEM768`.
    pub curves: Vec<String>,
    /// ALPN protocols offered: `h2` for gRPC, `h2` + `http/1.1` for HTTP.
    pub alpn: Vec<Vec<u8>>,
}

/// ALPN for gRPC listeners.
pub fn alpn_grpc() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec()]
}

/// ALPN for HTTP listeners (HTTP/2 preferred, HTTP/1.1 for curl and Prometheus).
pub fn alpn_http(http2: bool) -> Vec<Vec<u8>> {
    if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    }
}

impl ServerTlsSettings {
    /// Thanos's server flags: cert and key together; a client CA means client
    /// certificates are required and verified (there is no optional mode in Thanos).
    /// `Ok(None)` when no flag is set: the listener stays plaintext.
    pub fn from_flags(
        flag_prefix: &str,
        cert: Option<&Path>,
        key: Option<&Path>,
        client_ca: Option<&Path>,
        min_version: &str,
        alpn: Vec<Vec<u8>>,
    ) -> Result<Option<ServerTlsSettings>, Error> {
        let min = TlsVersion::parse_flag(min_version)
            .map_err(|e| Error::Flag(format!("--{flag_prefix}-min-version: {e}")))?;
        let (cert, key) = match (cert, key) {
            (None, None) => {
                if client_ca.is_some() {
                    return Err(Error::Flag(format!(
                        "--{flag_prefix}-client-ca needs --{flag_prefix}-cert and --{flag_prefix}-key"
                    )));
                }
                return Ok(None);
            }
            (Some(c), Some(k)) => (c, k),
            _ => {
                return Err(Error::Flag(format!(
                    "--{flag_prefix}-cert and --{flag_prefix}-key must be set together"
                )));
            }
        };
        let s = ServerTlsSettings {
            cert: PemSource::File(cert.to_path_buf()),
            key: PemSource::File(key.to_path_buf()),
            client_auth: if client_ca.is_some() {
                ClientAuth::RequireAndVerifyClientCert
            } else {
                ClientAuth::NoClientCert
            },
            client_ca: client_ca.map(|p| PemSource::File(p.to_path_buf())),
            client_allowed_sans: None,
            min_version: min,
            max_version: TlsVersion::Tls13,
            cipher_suites: Vec::new(),
            curves: Vec::new(),
            alpn,
        };
        s.build()?;
        Ok(Some(s))
    }

    /// Files whose change triggers a rebuild.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|s| s.path().map(Path::to_path_buf))
            .collect()
    }

    /// Builds the rustls config from the current file contents.
    pub fn build(&self) -> Result<Arc<ServerConfig>, Error> {
        let provider = Arc::new(restricted_provider(&self.cipher_suites, &self.curves)?);
        let versions = protocol_versions(self.min_version, self.max_version)?;
        let verifier = self.client_verifier(&provider)?;
        let certs = self.cert.certs()?;
        let key = self.key.key()?;
        let mut cfg = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| Error::Tls(format!("certificate and key: {e}")))?;
        cfg.alpn_protocols = self.alpn.clone();
        Ok(Arc::new(cfg))
    }

    fn client_verifier(
        &self,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Arc<dyn ClientCertVerifier>, Error> {
        let verifier: Arc<dyn ClientCertVerifier> = match self.client_auth {
            ClientAuth::NoClientCert => {
                if self.client_ca.is_some() {
                    return Err(Error::Tls(
                        "a client CA is configured without a client auth policy \
                         (client_auth_type is NoClientCert)"
                            .into(),
                    ));
                }
                return Ok(WebPkiClientVerifier::no_client_auth());
            }
            ClientAuth::RequestClientCert | ClientAuth::RequireAnyClientCert => {
                Arc::new(AnyClientCert {
                    mandatory: self.client_auth == ClientAuth::RequireAnyClientCert,
                    provider: provider.clone(),
                })
            }
            ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert => {
                let ca = self.client_ca.as_ref().ok_or_else(|| {
                    Error::Tls(format!(
                        "client_auth_type {:?} needs a client CA (client_ca_file)",
                        self.client_auth
                    ))
                })?;
                let roots = Arc::new(ca.roots()?);
                let b = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
                let b = if self.client_auth == ClientAuth::VerifyClientCertIfGiven {
                    b.allow_unauthenticated()
                } else {
                    b
                };
                b.build()
                    .map_err(|e| Error::Tls(format!("client CA: {e}")))?
            }
        };
        Ok(match &self.client_allowed_sans {
            Some(sans) => Arc::new(AllowedSans {
                inner: verifier,
                allowed: sans.clone(),
            }),
            None => verifier,
        })
    }
}

fn protocol_versions(
    min: TlsVersion,
    max: TlsVersion,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, Error> {
    if max < TlsVersion::Tls12 {
        return Err(Error::Tls(
            "max TLS version below 1.2: only TLS 1.2 and 1.3 are supported".into(),
        ));
    }
    if min > max {
        return Err(Error::Tls(format!(
            "min TLS version {min:?} is above max {max:?}"
        )));
    }
    if min < TlsVersion::Tls12 {
        tracing::warn!(
            min = ?min,
            "TLS 1.0 and 1.1 are not supported; TLS 1.2 is the lowest version offered"
        );
    }
    let mut v = Vec::new();
    if max >= TlsVersion::Tls13 {
        v.push(&rustls::version::TLS13);
    }
    if min <= TlsVersion::Tls12 {
        v.push(&rustls::version::TLS12);
    }
    Ok(v)
}

/// The aws-lc-rs provider restricted to the configured TLS 1.2 cipher suites and curves
/// (Go names). Unknown or unsupported names are an error naming them.
pub fn restricted_provider(suites: &[String], curves: &[String]) -> Result<CryptoProvider, Error> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    if !suites.is_empty() {
        let all = p.cipher_suites.clone();
        let mut chosen: Vec<_> = all
            .iter()
            .filter(|s| s.tls13().is_some())
            .copied()
            .collect();
        for name in suites {
            let found = all
                .iter()
                .find(|s| format!("{:?}", s.suite()) == *name)
                .ok_or_else(|| {
                    Error::Tls(format!(
                        "cipher suite {name:?} is unknown or not supported (supported TLS 1.2 suites: {})",
                        all.iter()
                            .filter(|s| s.tls13().is_none())
                            .map(|s| format!("{:?}", s.suite()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?;
            // TLS 1.3 suites are always on and not configurable (Go ignores them too).
            if found.tls13().is_none() && !chosen.contains(found) {
                chosen.push(*found);
            }
        }
        p.cipher_suites = chosen;
    }
    if !curves.is_empty() {
        use rustls::crypto::aws_lc_rs::kx_group;
        let mut groups = Vec::new();
        for c in curves {
            let g = match c.as_str() {
                "CurveP256" => kx_group::SECP256R1,
                "CurveP384" => kx_group::SECP384R1,
                "X25519" => kx_group::X25519,
                "X25519MLKEM768" => kx_group::X25519MLKEM768,
                "CurveP521" => {
                    return Err(Error::Tls(
                        "curve CurveP521 is not supported (use CurveP256, CurveP384, X25519 or X25519MLKEM768)"
                            .into(),
                    ));
                }
                other => {
                    return Err(Error::Tls(format!(
                        "unknown curve {other:?}: expected CurveP256, CurveP384, X25519 or X25519MLKEM768"
                    )));
                }
            };
            groups.push(g);
        }
        p.kx_groups = groups;
    }
    Ok(p)
}

/// RequestClientCert / RequireAnyClientCert: the certificate is not checked against a CA,
/// but the handshake signature still proves the client holds its key.
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `client_allowed_sans`: after the inner policy accepted the chain, the leaf must carry
/// one of the allowed SANs.
#[derive(Debug)]
struct AllowedSans {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<String>,
}

/// Every SAN of a certificate as exporter-toolkit spells them (DNS names, e-mail
/// addresses, IP addresses, URIs).
pub fn subject_alt_names(cert: &[u8]) -> Result<Vec<String>, String> {
    use x509_parser::extensions::GeneralName;
    let (_, c) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| format!("error parsing client certificate: {e}"))?;
    let mut out = Vec::new();
    if let Ok(Some(san)) = c.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                    out.push(s.to_string())
                }
                GeneralName::IPAddress(b) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*b) {
                        out.push(std::net::Ipv4Addr::from(a).to_string());
                    } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                        out.push(std::net::Ipv6Addr::from(a).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

impl ClientCertVerifier for AllowedSans {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let sans = subject_alt_names(end_entity).map_err(rustls::Error::General)?;
        if sans.iter().any(|s| self.allowed.contains(s)) {
            Ok(ok)
        } else {
            tracing::info!(found = ?sans, "client certificate refused: no allowed SAN");
            Err(rustls::Error::General(format!(
                "could not find allowed SANs in client cert, found: {sans:?}"
            )))
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Something that hands out the server config for the next handshake.
pub trait ServerConfigSource: std::fmt::Debug + Send + Sync + 'static {
    fn current(&self) -> Arc<ServerConfig>;
}

/// A server config rebuilt when its cert, key or CA file changes. Checked on every
/// handshake with three `stat` calls (as Thanos does for cert and key); the CA is
/// included, which Thanos does not do. A rebuild that fails (say the key was written
/// before the cert) keeps the previous config and is retried when the files change again.
#[derive(Debug)]
pub struct ReloadingServerConfig {
    settings: ServerTlsSettings,
    files: Vec<PathBuf>,
    state: Mutex<ReloadState>,
}

#[derive(Debug)]
struct ReloadState {
    stamp: Fingerprint,
    config: Arc<ServerConfig>,
    reloads: u64,
}

impl ReloadingServerConfig {
    /// Builds the first config; an error here is a startup error.
    pub fn new(settings: ServerTlsSettings) -> Result<ReloadingServerConfig, Error> {
        let files = settings.watched_files();
        let stamp = Fingerprint::of(files.iter().map(PathBuf::as_path));
        let config = settings.build()?;
        Ok(ReloadingServerConfig {
            settings,
            files,
            state: Mutex::new(ReloadState {
                stamp,
                config,
                reloads: 0,
            }),
        })
    }

    /// How many times the files changed and the config was rebuilt successfully.
    pub fn reloads(&self) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).reloads
    }

    pub fn settings(&self) -> &ServerTlsSettings {
        &self.settings
    }
}

impl ServerConfigSource for ReloadingServerConfig {
    fn current(&self) -> Arc<ServerConfig> {
        let stamp = Fingerprint::of(self.files.iter().map(PathBuf::as_path));
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if stamp != st.stamp {
            // Remember the stamp either way: a broken pair is reported once, not per handshake.
            st.stamp = stamp;
            match self.settings.build() {
                Ok(c) => {
                    st.config = c;
                    st.reloads += 1;
                    tracing::info!(files = ?self.files, "TLS certificate files changed: reloaded");
                }
                Err(e) => tracing::error!(error = %e, files = ?self.files,
                    "TLS certificate files changed but cannot be loaded: keeping the previous ones"),
            }
        }
        st.config.clone()
    }
}

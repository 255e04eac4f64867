//! Certificates and Kubernetes-Secret-style directories for tests (feature `testing`).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SerialNumber,
};

/// A throwaway certificate authority.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate and its key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("self-signed CA"),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf for `sans` (IP strings become IP SANs), with this serial and common name.
    pub fn leaf(&self, common_name: &str, sans: &[&str], serial: u64) -> Leaf {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.serial_number = Some(SerialNumber::from(serial));
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

impl Ca {
    /// A client leaf whose subject carries `organization` and `organizational_unit`
    /// (empty: left out) next to `common_name`: the fields a tenant is taken from.
    pub fn leaf_with_subject(
        &self,
        common_name: &str,
        organization: &str,
        organizational_unit: &str,
        serial: u64,
    ) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        if !organization.is_empty() {
            params
                .distinguished_name
                .push(DnType::OrganizationName, organization);
        }
        if !organizational_unit.is_empty() {
            params
                .distinguished_name
                .push(DnType::OrganizationalUnitName, organizational_unit);
        }
        params.serial_number = Some(SerialNumber::from(serial));
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// The serial number of a DER certificate, as a lowercase hex string without leading
/// zeros (`42` → `"2a"`).
pub fn serial_hex(der: &[u8]) -> String {
    let (_, c) = x509_parser::parse_x509_certificate(der).expect("parse certificate");
    format!("{:x}", c.serial)
}

/// A directory laid out like a mounted Kubernetes Secret: the files live in
/// `..<version>/`, `..data` points at the current version, and each visible name is a
/// symlink `name -> ..data/name`. [`SecretDir::publish`] swaps `..data` atomically, as
/// kubelet does.
pub struct SecretDir {
    root: PathBuf,
    version: u32,
}

impl SecretDir {
    pub fn new(root: &Path) -> SecretDir {
        std::fs::create_dir_all(root).expect("secret dir");
        SecretDir {
            root: root.to_path_buf(),
            version: 0,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Writes a new version holding `files` and points `..data` at it.
    pub fn publish(&mut self, files: &[(&str, &str)]) {
        self.version += 1;
        let dir_name = format!("..v{}", self.version);
        let dir = self.root.join(&dir_name);
        std::fs::create_dir_all(&dir).expect("version dir");
        for (name, body) in files {
            std::fs::write(dir.join(name), body).expect("write secret file");
            let link = self.root.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(Path::new("..data").join(name), &link)
                    .expect("file symlink");
            }
        }
        let tmp = self.root.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&dir_name, &tmp).expect("..data_tmp symlink");
        std::fs::rename(&tmp, self.root.join("..data")).expect("swap ..data");
    }
}

/// Signs JWTs for tests, with a key made here: ES256 (P-256), RS256 (RSA 2048) or
/// HS256 (a given secret). [`JwtSigner::jwks`] publishes the public keys as a provider's
/// JWKS endpoint would.
pub struct JwtSigner {
    alg: jsonwebtoken::Algorithm,
    kid: Option<String>,
    key: jsonwebtoken::EncodingKey,
}

impl JwtSigner {
    pub fn es256(kid: &str) -> JwtSigner {
        let kp = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
        JwtSigner {
            alg: jsonwebtoken::Algorithm::ES256,
            kid: Some(kid.to_string()),
            key: jsonwebtoken::EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes())
                .expect("EC signing key"),
        }
    }

    pub fn rs256(kid: &str) -> JwtSigner {
        let kp = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            .expect("RSA key");
        JwtSigner {
            alg: jsonwebtoken::Algorithm::RS256,
            kid: Some(kid.to_string()),
            key: jsonwebtoken::EncodingKey::from_rsa_pem(kp.serialize_pem().as_bytes())
                .expect("RSA signing key"),
        }
    }

    pub fn hs256(secret: &[u8]) -> JwtSigner {
        JwtSigner {
            alg: jsonwebtoken::Algorithm::HS256,
            kid: None,
            key: jsonwebtoken::EncodingKey::from_secret(secret).expect("HMAC key"),
        }
    }

    /// HS256 with a `kid` header (for key-confusion tests).
    pub fn hs256_with_kid(secret: &[u8], kid: &str) -> JwtSigner {
        JwtSigner {
            kid: Some(kid.to_string()),
            ..JwtSigner::hs256(secret)
        }
    }

    pub fn alg(&self) -> jsonwebtoken::Algorithm {
        self.alg
    }

    /// A compact JWT over `claims`, with this signer's `alg` and `kid`.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let mut h = jsonwebtoken::Header::new(self.alg);
        h.kid = self.kid.clone();
        jsonwebtoken::encode(&h, claims, &self.key).expect("sign JWT")
    }

    /// The public keys of `signers` (asymmetric ones) as a JWKS document.
    pub fn jwks(signers: &[&JwtSigner]) -> String {
        let keys: Vec<jsonwebtoken::jwk::Jwk> = signers
            .iter()
            .map(|s| {
                let mut k =
                    jsonwebtoken::jwk::Jwk::from_encoding_key(&s.key, s.alg).expect("JWK from key");
                k.common.key_id = s.kid.clone();
                k
            })
            .collect();
        serde_json::to_string(&jsonwebtoken::jwk::JwkSet { keys }).expect("JWKS JSON")
    }
}

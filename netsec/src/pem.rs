//! PEM material from files or inline text, and the file fingerprints that drive reloads.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::Error;

/// Largest PEM file read: a certificate chain or CA bundle is a few KiB to a few hundred
/// KiB (the Mozilla bundle is ~220 KiB); anything larger is not TLS material.
pub const MAX_PEM_BYTES: u64 = 4 << 20;

/// Where a certificate, key or CA bundle comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PemSource {
    File(PathBuf),
    /// Inline PEM (the web config's `cert`, `key`, `client_ca`).
    Inline(String),
}

impl PemSource {
    /// The file to watch, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            PemSource::File(p) => Some(p),
            PemSource::Inline(_) => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            PemSource::File(p) => p.display().to_string(),
            PemSource::Inline(_) => "inline PEM".to_string(),
        }
    }

    /// The raw bytes (a file is read whole, bounded by [`MAX_PEM_BYTES`]).
    pub fn bytes(&self) -> Result<Vec<u8>, Error> {
        match self {
            PemSource::Inline(s) => Ok(s.as_bytes().to_vec()),
            PemSource::File(p) => read_bounded(p, MAX_PEM_BYTES),
        }
    }

    /// All certificates in the source; at least one.
    pub fn certs(&self) -> Result<Vec<CertificateDer<'static>>, Error> {
        let bytes = self.bytes()?;
        let certs = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Pem {
                what: self.describe(),
                reason: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(Error::Pem {
                what: self.describe(),
                reason: "no PEM CERTIFICATE block".into(),
            });
        }
        Ok(certs)
    }

    /// The first private key (PKCS#8, PKCS#1 or SEC1).
    pub fn key(&self) -> Result<PrivateKeyDer<'static>, Error> {
        let bytes = self.bytes()?;
        PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| Error::Pem {
            what: self.describe(),
            reason: format!("no usable private key: {e}"),
        })
    }

    /// A root store holding every certificate of the bundle.
    pub fn roots(&self) -> Result<rustls::RootCertStore, Error> {
        let mut roots = rustls::RootCertStore::empty();
        for c in self.certs()? {
            roots.add(c).map_err(|e| Error::Pem {
                what: self.describe(),
                reason: format!("unusable CA certificate: {e}"),
            })?;
        }
        Ok(roots)
    }
}

/// Reads a whole file, refusing files larger than `limit`.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, Error> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut buf = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if buf.len() as u64 > limit {
        return Err(Error::Pem {
            what: path.display().to_string(),
            reason: format!("larger than {limit} bytes"),
        });
    }
    Ok(buf)
}

/// What identifies one version of a file: a Secret symlink swap changes the inode, an
/// in-place rewrite the mtime or length. `None` when the file cannot be stat'ed (it may be
/// mid-swap; the next look sees it again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp(Option<(SystemTime, u64, u64, u64)>);

impl FileStamp {
    pub fn of(path: &Path) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        // metadata() follows symlinks, so `tls.crt -> ..data/tls.crt` shows the target.
        FileStamp(std::fs::metadata(path).ok().and_then(|m| {
            let mtime = m.modified().ok()?;
            Some((mtime, m.len(), m.ino(), m.dev()))
        }))
    }
}

/// The stamps of a set of files, compared as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fingerprint(Vec<FileStamp>);

impl Fingerprint {
    pub fn of<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Fingerprint {
        Fingerprint(paths.into_iter().map(FileStamp::of).collect())
    }
}

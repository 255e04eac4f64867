//! File hashes in `meta.json`'s `thanos.files`, as Thanos writes them with
//! `--hash-func=SHA256` (`pkg/block/metadata/hash.go`):
//!
//! ```json
//! {"rel_path": "chunks/000001", "size_bytes": 1234,
//!  "hash": {"hashFunc": "SHA256", "value": "<lowercase hex>"}}
//! ```
//!
//! Only chunk segments and `index` get one; `meta.json` never does. Readers use them to
//! skip downloading files they already hold and to check what they downloaded;
//! `tools bucket verify` checks them against the objects.

use std::io::Read;
use std::path::Path;

use aws_lc_rs::digest;

/// Thanos's `--hash-func`: `""` (no hashes, the default) or `SHA256`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HashFunc {
    #[default]
    None,
    Sha256,
}

/// A `--hash-func` value that is neither `""` nor `SHA256`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("hash function {0:?} is not supported (want \"\" or \"SHA256\")")]
pub struct UnknownHashFunc(pub String);

impl HashFunc {
    /// Thanos's spelling (`""`, `"SHA256"`).
    pub fn as_str(self) -> &'static str {
        match self {
            HashFunc::None => "",
            HashFunc::Sha256 => "SHA256",
        }
    }

    /// Parses a flag value; exactly Thanos's enum values (case-sensitive, as kingpin's
    /// `Enum` is).
    pub fn parse(s: &str) -> Result<HashFunc, UnknownHashFunc> {
        match s {
            "" => Ok(HashFunc::None),
            "SHA256" => Ok(HashFunc::Sha256),
            other => Err(UnknownHashFunc(other.to_string())),
        }
    }
}

impl std::str::FromStr for HashFunc {
    type Err = UnknownHashFunc;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HashFunc::parse(s)
    }
}

impl std::fmt::Display for HashFunc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One file's hash (Thanos's `metadata.ObjectHash`; note the key `hashFunc`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObjectHash {
    #[serde(rename = "hashFunc")]
    pub func: String,
    pub value: String,
}

/// An incremental hash of `func`; `None` for [`HashFunc::None`].
pub struct Hasher(digest::Context);

impl Hasher {
    pub fn new(func: HashFunc) -> Option<Hasher> {
        match func {
            HashFunc::None => None,
            HashFunc::Sha256 => Some(Hasher(digest::Context::new(&digest::SHA256))),
        }
    }

    /// For a hash found in a `meta.json`: `None` when its function is not one Orrery
    /// knows (the caller reports it).
    pub fn for_name(name: &str) -> Option<Hasher> {
        HashFunc::parse(name).ok().and_then(Hasher::new)
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// Lowercase hex, as Go's `hex.EncodeToString`.
    pub fn finish(self) -> String {
        hex(self.0.finish().as_ref())
    }
}

fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(D[(x >> 4) as usize] as char);
        s.push(D[(x & 15) as usize] as char);
    }
    s
}

/// The hash of a local file (blocking I/O; call from a blocking thread). `Ok(None)` for
/// [`HashFunc::None`].
pub fn hash_file(path: &Path, func: HashFunc) -> std::io::Result<Option<ObjectHash>> {
    let Some(mut h) = Hasher::new(func) else {
        return Ok(None);
    };
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(Some(ObjectHash {
        func: func.as_str().to_string(),
        value: h.finish(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_known_vectors_in_lowercase_hex() {
        let mut h = Hasher::new(HashFunc::Sha256).unwrap();
        h.update(b"ab");
        h.update(b"c");
        assert_eq!(
            h.finish(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("empty");
        std::fs::write(&p, b"").unwrap();
        let got = hash_file(&p, HashFunc::Sha256).unwrap().unwrap();
        assert_eq!(got.func, "SHA256");
        assert_eq!(
            got.value,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(hash_file(&p, HashFunc::None).unwrap(), None);
        assert!(Hasher::new(HashFunc::None).is_none());
    }

    #[test]
    fn flag_values_and_json_shape_are_thanos_s() {
        assert_eq!(HashFunc::parse("").unwrap(), HashFunc::None);
        assert_eq!(HashFunc::parse("SHA256").unwrap(), HashFunc::Sha256);
        assert!(HashFunc::parse("sha256").is_err());
        assert!(HashFunc::parse("MD5").is_err());
        let j = serde_json::to_value(ObjectHash {
            func: "SHA256".into(),
            value: "ab".into(),
        })
        .unwrap();
        assert_eq!(j, serde_json::json!({"hashFunc": "SHA256", "value": "ab"}));
    }
}

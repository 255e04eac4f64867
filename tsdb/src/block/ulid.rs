//! ULIDs (block identifiers): 48 bits of Unix milliseconds then 80 random bits, written
//! as 26 characters of Crockford base32 — the form Prometheus and Thanos use for block
//! directory names.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A 128-bit ULID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ulid(pub u128);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid ULID {0:?}")]
pub struct UlidError(pub String);

impl Ulid {
    /// A new ULID for the current time.
    pub fn new() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self::with_time(ms)
    }

    /// A new ULID with the given millisecond timestamp and fresh randomness.
    pub fn with_time(ms: u64) -> Self {
        let r = random_u128() & ((1u128 << 80) - 1);
        Ulid((u128::from(ms & ((1 << 48) - 1)) << 80) | r)
    }

    /// The millisecond timestamp part.
    pub fn timestamp_ms(&self) -> u64 {
        (self.0 >> 80) as u64
    }
}

impl Default for Ulid {
    fn default() -> Self {
        Self::new()
    }
}

/// 128 random bits from the standard library's per-process random hash keys, mixed
/// with a counter and the clock (good enough for unique identifiers; not for secrets).
fn random_u128() -> u128 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let c = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut out = 0u128;
    for i in 0..2u64 {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(c);
        h.write_u64(i);
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        out = (out << 64) | u128::from(h.finish());
    }
    out
}

impl fmt::Display for Ulid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = [0u8; 26];
        for (i, c) in s.iter_mut().enumerate() {
            let shift = 125 - 5 * i as i32;
            let idx = if shift >= 0 {
                (self.0 >> shift) & 0x1f
            } else {
                (self.0 << (-shift)) & 0x1f
            };
            *c = ALPHABET[idx as usize];
        }
        // 26 chars × 5 bits = 130 bits: the first char carries only 3 bits.
        f.write_str(std::str::from_utf8(&s).map_err(|_| fmt::Error)?)
    }
}

impl FromStr for Ulid {
    type Err = UlidError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        if b.len() != 26 {
            return Err(UlidError(s.to_string()));
        }
        let mut v: u128 = 0;
        for (i, &c) in b.iter().enumerate() {
            let d = decode_char(c).ok_or_else(|| UlidError(s.to_string()))?;
            if i == 0 && d > 7 {
                return Err(UlidError(s.to_string()));
            }
            v = (v << 5) | u128::from(d);
        }
        Ok(Ulid(v))
    }
}

fn decode_char(c: u8) -> Option<u8> {
    let c = c.to_ascii_uppercase();
    ALPHABET.iter().position(|&a| a == c).map(|p| p as u8)
}

impl serde::Serialize for Ulid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Ulid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_sorts_by_time() {
        let a = Ulid::with_time(1_700_000_000_000);
        let s = a.to_string();
        assert_eq!(s.len(), 26);
        assert_eq!(s.parse::<Ulid>().unwrap(), a);
        assert_eq!(a.timestamp_ms(), 1_700_000_000_000);
        let b = Ulid::with_time(1_700_000_000_001);
        assert!(b.to_string() > s);
        assert_ne!(Ulid::new(), Ulid::new());
    }

    #[test]
    fn known_value() {
        // From the ULID spec's examples: time 1469918176385 encodes as 01ARYZ6S41.
        let u = Ulid(u128::from(1_469_918_176_385u64) << 80);
        assert!(u.to_string().starts_with("01ARYZ6S41"));
        assert!("81ARYZ6S41TSV4RRFFQ69G5FAV".parse::<Ulid>().is_err());
        assert!("01ARYZ6S41TSV4RRFFQ69G5FA".parse::<Ulid>().is_err());
        assert!("01ARYZ6S41TSV4RRFFQ69G5FAU".parse::<Ulid>().is_err());
    }
}

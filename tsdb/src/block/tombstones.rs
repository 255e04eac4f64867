//! The `tombstones` file: magic `0x0130BA30` <4b> | version 1 <1b> | tombstones
//! (`uvarint series ID | varint mint | varint maxt`)... | CRC32C of the tombstones
//! (without the version byte) <4b>. We write empty files; we read non-empty ones (made
//! by `promtool tsdb delete-series` or Prometheus's delete API) and hide the deleted
//! samples at query time.

use std::collections::HashMap;
use std::path::Path;

use super::BlockError;
use super::encoding::{Decoder, crc32c, put_uvarint, put_varint};

pub const MAGIC_TOMBSTONES: u32 = 0x0130_BA30;
pub const TOMBSTONES_FORMAT_V1: u8 = 1;

/// Deleted time ranges (inclusive) per series ID.
pub type Tombstones = HashMap<u32, Vec<(i64, i64)>>;

/// Encodes a tombstones file (pass an empty map for a fresh block).
pub fn encode(stones: &Tombstones) -> Vec<u8> {
    let mut body = vec![TOMBSTONES_FORMAT_V1];
    let mut ids: Vec<_> = stones.keys().copied().collect();
    ids.sort_unstable();
    for id in ids {
        for &(mint, maxt) in &stones[&id] {
            put_uvarint(&mut body, u64::from(id));
            put_varint(&mut body, mint);
            put_varint(&mut body, maxt);
        }
    }
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&MAGIC_TOMBSTONES.to_be_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32c(&body[1..]).to_be_bytes());
    out
}

/// Decodes a tombstones file, verifying magic, version and checksum.
pub fn decode(b: &[u8]) -> Result<Tombstones, BlockError> {
    if b.len() < 9 {
        return Err(BlockError::Corrupt("tombstones: file too short".into()));
    }
    let magic = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    if magic != MAGIC_TOMBSTONES {
        return Err(BlockError::Corrupt(format!(
            "tombstones: bad magic {magic:#x}"
        )));
    }
    if b[4] != TOMBSTONES_FORMAT_V1 {
        return Err(BlockError::Unsupported(format!(
            "tombstones format {}",
            b[4]
        )));
    }
    let body = &b[5..b.len() - 4];
    let crc = &b[b.len() - 4..];
    if crc32c(body) != u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return Err(BlockError::Checksum("tombstones"));
    }
    let mut d = Decoder::new(body, "tombstones");
    let mut out: Tombstones = HashMap::new();
    while d.remaining() > 0 {
        let id = u32::try_from(d.uvarint()?)
            .map_err(|_| BlockError::Corrupt("tombstones: series ID exceeds 32 bits".into()))?;
        let mint = d.varint()?;
        let maxt = d.varint()?;
        out.entry(id).or_default().push((mint, maxt));
    }
    for ivs in out.values_mut() {
        ivs.sort_unstable();
    }
    Ok(out)
}

/// Reads `dir/tombstones`; a missing file means no tombstones.
pub fn read(dir: &Path) -> Result<Tombstones, BlockError> {
    let p = dir.join("tombstones");
    match std::fs::read(&p) {
        Ok(b) => decode(&b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashMap::new()),
        Err(e) => Err(BlockError::io(&p, e)),
    }
}

/// Whether `t` falls in one of the deleted intervals.
pub fn is_deleted(ivs: &[(i64, i64)], t: i64) -> bool {
    ivs.iter().any(|&(a, b)| a <= t && t <= b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_prometheus_bytes() {
        // magic, version 1, CRC32C of nothing (0).
        assert_eq!(
            encode(&HashMap::new()),
            vec![0x01, 0x30, 0xBA, 0x30, 0x01, 0, 0, 0, 0]
        );
        assert!(decode(&encode(&HashMap::new())).unwrap().is_empty());
    }

    #[test]
    fn round_trip_and_corruption() {
        let mut t = HashMap::new();
        t.insert(5u32, vec![(10i64, 20i64), (-5, 0)]);
        t.insert(1u32, vec![(i64::MIN, i64::MAX)]);
        let b = encode(&t);
        let mut back = decode(&b).unwrap();
        for v in t.values_mut() {
            v.sort_unstable();
        }
        back.values_mut().for_each(|v| v.sort_unstable());
        assert_eq!(back, t);
        let mut bad = b.clone();
        bad[6] ^= 1;
        assert!(matches!(decode(&bad), Err(BlockError::Checksum(_))));
        assert!(decode(&b[..5]).is_err());
    }
}

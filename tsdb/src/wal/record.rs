//! WAL record payloads. Every payload starts with a type byte:
//!
//! - `1` series: repeated `uvarint ref, uvarint n, n × (uvarint len, name, uvarint len, value)`;
//! - `2` samples: repeated `uvarint ref, uvarint n, n × (varint t, 8-byte LE value bits)`
//!   where the first `t` of a group is absolute and the others are deltas to the previous.
//!
//! - `3` chunks (checkpoints): see [`TYPE_CHUNKS`].
//!
//! Decoding checks every length against the payload and never panics on garbage.

use storeapi::{Label, Labels};

pub const TYPE_SERIES: u8 = 1;
pub const TYPE_SAMPLES: u8 = 2;
/// Checkpoint only: `uvarint ref, uvarint n, n × (varint min_t, varint max_t, uvarint len,
/// XOR chunk bytes)`; compact (≈1.3 bytes/sample) and replayed by re-appending samples.
pub const TYPE_CHUNKS: u8 = 3;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("truncated record")]
    Truncated,
    #[error("unknown record type {0}")]
    UnknownType(u8),
    #[error("invalid record: {0}")]
    Invalid(String),
}

#[inline]
pub fn put_uvarint(buf: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        buf.push((x as u8) | 0x80);
        x >>= 7;
    }
    buf.push(x as u8);
}

#[inline]
pub fn put_varint(buf: &mut Vec<u8>, x: i64) {
    put_uvarint(buf, ((x as u64) << 1) ^ ((x >> 63) as u64));
}

/// Appends one series entry to a series record body.
pub fn put_series(buf: &mut Vec<u8>, r: u64, labels: &Labels) {
    put_uvarint(buf, r);
    put_uvarint(buf, labels.len() as u64);
    for l in labels.iter() {
        put_uvarint(buf, l.name.len() as u64);
        buf.extend_from_slice(l.name.as_bytes());
        put_uvarint(buf, l.value.len() as u64);
        buf.extend_from_slice(l.value.as_bytes());
    }
}

/// Appends one series' XOR chunks to a chunks record body.
pub fn put_chunks(buf: &mut Vec<u8>, r: u64, chunks: &[crate::chunk::Chunk]) {
    put_uvarint(buf, r);
    put_uvarint(buf, chunks.len() as u64);
    for c in chunks {
        put_varint(buf, c.min_time);
        put_varint(buf, c.max_time);
        put_uvarint(buf, c.data.len() as u64);
        buf.extend_from_slice(&c.data);
    }
}

/// Callbacks for [`decode`].
pub trait Visitor {
    fn series(&mut self, r: u64, labels: Labels);
    fn sample(&mut self, r: u64, t: i64, v: f64);
    /// One XOR chunk (checkpoints).
    fn chunk(&mut self, r: u64, min_t: i64, max_t: i64, data: &[u8]);
}

/// Encodes a group of samples of one series into a samples record body; the count is
/// written by [`SamplesGroup::finish`].
pub struct SamplesGroup {
    count_at: usize,
    n: u32,
    prev_t: i64,
}

impl SamplesGroup {
    /// Starts a group: writes the ref and a fixed 5-byte count placeholder.
    #[inline]
    pub fn start(buf: &mut Vec<u8>, r: u64) -> Self {
        put_uvarint(buf, r);
        let count_at = buf.len();
        buf.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x00]);
        SamplesGroup {
            count_at,
            n: 0,
            prev_t: 0,
        }
    }

    #[inline]
    pub fn push(&mut self, buf: &mut Vec<u8>, t: i64, v: f64) {
        put_varint(buf, t.wrapping_sub(self.prev_t));
        buf.extend_from_slice(&v.to_bits().to_le_bytes());
        self.prev_t = t;
        self.n += 1;
    }

    /// Writes the count (as a padded 5-byte uvarint); returns it.
    #[inline]
    pub fn finish(self, buf: &mut [u8]) -> u32 {
        let n = self.n;
        let b = &mut buf[self.count_at..self.count_at + 5];
        b[0] = (n as u8 & 0x7f) | 0x80;
        b[1] = ((n >> 7) as u8 & 0x7f) | 0x80;
        b[2] = ((n >> 14) as u8 & 0x7f) | 0x80;
        b[3] = ((n >> 21) as u8 & 0x7f) | 0x80;
        b[4] = (n >> 28) as u8 & 0x0f;
        n
    }
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn uvarint(&mut self) -> Result<u64, RecordError> {
        let mut x = 0u64;
        let mut s = 0u32;
        for k in 0..10 {
            let &b = self.b.get(self.i).ok_or(RecordError::Truncated)?;
            self.i += 1;
            if b < 0x80 {
                if k == 9 && b > 1 {
                    return Err(RecordError::Invalid("varint overflow".into()));
                }
                return Ok(x | ((b as u64) << s));
            }
            x |= ((b & 0x7f) as u64) << s;
            s += 7;
        }
        Err(RecordError::Invalid("varint overflow".into()))
    }

    fn varint(&mut self) -> Result<i64, RecordError> {
        let ux = self.uvarint()?;
        Ok(((ux >> 1) as i64) ^ -((ux & 1) as i64))
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let end = self.i.checked_add(n).ok_or(RecordError::Truncated)?;
        let s = self.b.get(self.i..end).ok_or(RecordError::Truncated)?;
        self.i = end;
        Ok(s)
    }

    fn string(&mut self) -> Result<storeapi::CompactString, RecordError> {
        let n = self.uvarint()?;
        let n = usize::try_from(n).map_err(|_| RecordError::Truncated)?;
        let s = self.bytes(n)?;
        std::str::from_utf8(s)
            .map(storeapi::CompactString::new)
            .map_err(|_| RecordError::Invalid("label not UTF-8".into()))
    }

    fn done(&self) -> bool {
        self.i >= self.b.len()
    }
}

/// Decodes one payload into `v`'s callbacks.
pub fn decode(payload: &[u8], v: &mut impl Visitor) -> Result<(), RecordError> {
    let (&typ, body) = payload.split_first().ok_or(RecordError::Truncated)?;
    let mut r = Reader { b: body, i: 0 };
    match typ {
        TYPE_SERIES => {
            while !r.done() {
                let sref = r.uvarint()?;
                let n = r.uvarint()?;
                if n > body.len() as u64 {
                    return Err(RecordError::Truncated);
                }
                let mut ls = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let name = r.string()?;
                    let value = r.string()?;
                    ls.push(Label { name, value });
                }
                let labels = Labels::from_sorted_checked(ls)
                    .map_err(|e| RecordError::Invalid(e.to_string()))?;
                v.series(sref, labels);
            }
            Ok(())
        }
        TYPE_SAMPLES => {
            while !r.done() {
                let sref = r.uvarint()?;
                let n = r.uvarint()?;
                if n > body.len() as u64 {
                    return Err(RecordError::Truncated);
                }
                let mut t = 0i64;
                for _ in 0..n {
                    t = t.wrapping_add(r.varint()?);
                    let vb = r.bytes(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(vb);
                    v.sample(sref, t, f64::from_bits(u64::from_le_bytes(a)));
                }
            }
            Ok(())
        }
        TYPE_CHUNKS => {
            while !r.done() {
                let sref = r.uvarint()?;
                let n = r.uvarint()?;
                if n > body.len() as u64 {
                    return Err(RecordError::Truncated);
                }
                for _ in 0..n {
                    let min_t = r.varint()?;
                    let max_t = r.varint()?;
                    let len = usize::try_from(r.uvarint()?).map_err(|_| RecordError::Truncated)?;
                    let data = r.bytes(len)?;
                    v.chunk(sref, min_t, max_t, data);
                }
            }
            Ok(())
        }
        t => Err(RecordError::UnknownType(t)),
    }
}

/// A visitor that collects everything (tests, tools).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Collect {
    pub series: Vec<(u64, Labels)>,
    /// `(ref, t, value bits)`.
    pub samples: Vec<(u64, i64, u64)>,
    pub chunks: Vec<(u64, i64, i64, Vec<u8>)>,
}

impl Visitor for Collect {
    fn series(&mut self, r: u64, labels: Labels) {
        self.series.push((r, labels));
    }
    fn sample(&mut self, r: u64, t: i64, v: f64) {
        self.samples.push((r, t, v.to_bits()));
    }
    fn chunk(&mut self, r: u64, min_t: i64, max_t: i64, data: &[u8]) {
        self.chunks.push((r, min_t, max_t, data.to_vec()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_and_samples_round_trip() {
        let l = Labels::from_pairs([("__name__", "up"), ("job", "x")]).unwrap();
        let mut buf = vec![TYPE_SERIES];
        put_series(&mut buf, 7, &l);
        put_series(&mut buf, 300, &l);
        let mut c = Collect::default();
        decode(&buf, &mut c).unwrap();
        assert_eq!(c.series, vec![(7, l.clone()), (300, l)]);

        let mut buf = vec![TYPE_SAMPLES];
        let mut g = SamplesGroup::start(&mut buf, 5);
        for (t, v) in [(-5i64, 1.0), (100, f64::NAN), (i64::MAX, -0.0)] {
            g.push(&mut buf, t, v);
        }
        assert_eq!(g.finish(&mut buf), 3);
        let g = SamplesGroup::start(&mut buf, 1 << 40);
        g.finish(&mut buf);
        let mut c = Collect::default();
        decode(&buf, &mut c).unwrap();
        assert_eq!(
            c.samples,
            vec![
                (5, -5, 1.0f64.to_bits()),
                (5, 100, f64::NAN.to_bits()),
                (5, i64::MAX, (-0.0f64).to_bits())
            ]
        );
    }

    proptest::proptest! {
        /// Any series and samples records decode to exactly what was encoded.
        #[test]
        fn records_round_trip(
            series in proptest::collection::vec(
                (proptest::prelude::any::<u64>(),
                 proptest::collection::btree_map("[a-z_][a-z0-9_]{0,8}", "\\PC{1,12}", 1..6)),
                0..20),
            groups in proptest::collection::vec(
                (proptest::prelude::any::<u64>(),
                 proptest::collection::vec((proptest::prelude::any::<i64>(), proptest::prelude::any::<u64>()), 0..30)),
                0..20),
        ) {
            let mut buf = vec![TYPE_SERIES];
            let mut want_series = vec![];
            for (r, m) in &series {
                let l = Labels::from_pairs(m.iter().map(|(k, v)| (k.clone(), v.clone()))).unwrap();
                put_series(&mut buf, *r, &l);
                want_series.push((*r, l));
            }
            let mut c = Collect::default();
            decode(&buf, &mut c).unwrap();
            proptest::prop_assert_eq!(c.series, want_series);

            let mut buf = vec![TYPE_SAMPLES];
            let mut want = vec![];
            for (r, samples) in &groups {
                let mut g = SamplesGroup::start(&mut buf, *r);
                for &(t, v) in samples {
                    g.push(&mut buf, t, f64::from_bits(v));
                    want.push((*r, t, v));
                }
                g.finish(&mut buf);
            }
            let mut c = Collect::default();
            decode(&buf, &mut c).unwrap();
            proptest::prop_assert_eq!(c.samples, want);
        }

        /// Truncated or bit-flipped records never panic.
        #[test]
        fn damaged_records_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = decode(&data, &mut Collect::default());
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for p in [
            &[][..],
            &[9],
            &[1, 5, 200],
            &[2, 1, 0xff, 0xff, 0xff],
            &[1, 1, 1, 50, 1],
            &[3, 1, 1, 0, 0, 200],
        ] {
            assert!(decode(p, &mut Collect::default()).is_err(), "{p:?}");
        }
    }
}

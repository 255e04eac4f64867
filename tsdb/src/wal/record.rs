//! WAL record payloads, encoded as Prometheus's `tsdb/record` encodes them. Every
//! payload starts with a type byte; integers are big-endian (`be64`) or varints
//! (`uvarint`, zig-zag `varint`) as noted, strings are `uvarint length, bytes`.
//!
//! - `1` series: repeated `be64 ref, uvarint n, n × (name, value)`;
//! - `2` samples: `be64 first ref, be64 first t`, then repeated
//!   `varint (ref - first ref), varint (t - first t), be64 value bits`;
//! - `3` tombstones: repeated `be64 ref, varint mint, varint maxt`;
//! - `4` exemplars: as samples, each followed by its labels (`uvarint n, n × (name, value)`);
//! - `5` mmap markers: repeated `be64 ref, be64 chunk ref`;
//! - `6` metadata: repeated `uvarint ref, byte type, uvarint n, n × (name, value)`;
//! - `7`-`10` integer / float histogram samples (standard and custom buckets).
//!
//! Orrery's head stores float samples only: series and samples are applied; tombstones,
//! exemplars, metadata and mmap markers are decoded (so damage is found) and ignored;
//! histogram records are skipped and counted (see [`Skipped`]). Orrery writes series and
//! samples records only. Decoding checks every length and never panics on garbage.
//! Orrery's first format is decoded by [`legacy`].

use storeapi::{Label, Labels};

pub const TYPE_SERIES: u8 = 1;
pub const TYPE_SAMPLES: u8 = 2;
pub const TYPE_TOMBSTONES: u8 = 3;
pub const TYPE_EXEMPLARS: u8 = 4;
pub const TYPE_MMAP_MARKERS: u8 = 5;
pub const TYPE_METADATA: u8 = 6;
pub const TYPE_HISTOGRAMS: u8 = 7;
pub const TYPE_FLOAT_HISTOGRAMS: u8 = 8;
pub const TYPE_CUSTOM_HISTOGRAMS: u8 = 9;
pub const TYPE_CUSTOM_FLOAT_HISTOGRAMS: u8 = 10;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("truncated record")]
    Truncated,
    #[error("unknown record type {0}")]
    UnknownType(u8),
    #[error("invalid record: {0}")]
    Invalid(String),
}

/// Records Orrery's head cannot use, counted by [`Visitor::skipped`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    /// Native histogram samples (types 7-10): Orrery's head has no histograms yet.
    Histograms,
    /// Tombstones (deletions through Prometheus's admin API): Orrery has no deletion.
    Tombstones,
    /// Exemplars, metadata and mmap markers: nothing in Orrery's head uses them.
    Other,
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
    buf.extend_from_slice(&r.to_be_bytes());
    put_uvarint(buf, labels.len() as u64);
    for l in labels.iter() {
        put_uvarint(buf, l.name.len() as u64);
        buf.extend_from_slice(l.name.as_bytes());
        put_uvarint(buf, l.value.len() as u64);
        buf.extend_from_slice(l.value.as_bytes());
    }
}

/// Encodes samples into a samples record body (after its type byte): the first sample
/// sets the base ref and timestamp the others are stored relative to.
#[derive(Debug, Default, Clone, Copy)]
pub struct SamplesRecord {
    base: Option<(u64, i64)>,
}

impl SamplesRecord {
    #[inline]
    pub fn push(&mut self, buf: &mut Vec<u8>, r: u64, t: i64, v: f64) {
        let (br, bt) = *self.base.get_or_insert_with(|| {
            buf.extend_from_slice(&r.to_be_bytes());
            buf.extend_from_slice(&t.to_be_bytes());
            (r, t)
        });
        put_varint(buf, (r as i64).wrapping_sub(br as i64));
        put_varint(buf, t.wrapping_sub(bt));
        buf.extend_from_slice(&v.to_bits().to_be_bytes());
    }

    pub fn is_empty(&self) -> bool {
        self.base.is_none()
    }
}

/// Callbacks for [`decode`] and [`legacy::decode`].
pub trait Visitor {
    fn series(&mut self, r: u64, labels: Labels);
    fn sample(&mut self, r: u64, t: i64, v: f64);
    /// One XOR chunk (checkpoints of Orrery's first format).
    fn chunk(&mut self, r: u64, min_t: i64, max_t: i64, data: &[u8]);
    /// A record whose contents Orrery does not keep.
    fn skipped(&mut self, _what: Skipped) {}
}

pub(crate) struct Reader<'a> {
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

impl Reader<'_> {
    fn be64(&mut self) -> Result<u64, RecordError> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn labels(&mut self, max: usize) -> Result<Labels, RecordError> {
        let n = self.uvarint()?;
        if n > max as u64 {
            return Err(RecordError::Truncated);
        }
        let mut ls = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let name = self.string()?;
            let value = self.string()?;
            ls.push(Label { name, value });
        }
        Labels::from_sorted_checked(ls).map_err(|e| RecordError::Invalid(e.to_string()))
    }

    fn skip_string(&mut self) -> Result<(), RecordError> {
        let n = usize::try_from(self.uvarint()?).map_err(|_| RecordError::Truncated)?;
        self.bytes(n).map(|_| ())
    }
}

/// Decodes one Prometheus record payload into `v`'s callbacks.
pub fn decode(payload: &[u8], v: &mut impl Visitor) -> Result<(), RecordError> {
    let (&typ, body) = payload.split_first().ok_or(RecordError::Truncated)?;
    let mut r = Reader { b: body, i: 0 };
    match typ {
        TYPE_SERIES => {
            while !r.done() {
                let sref = r.be64()?;
                let labels = r.labels(body.len())?;
                v.series(sref, labels);
            }
        }
        TYPE_SAMPLES => {
            if r.done() {
                return Ok(());
            }
            let bref = r.be64()?;
            let bt = r.be64()? as i64;
            while !r.done() {
                let dref = r.varint()?;
                let dt = r.varint()?;
                let val = f64::from_bits(r.be64()?);
                v.sample(
                    (bref as i64).wrapping_add(dref) as u64,
                    bt.wrapping_add(dt),
                    val,
                );
            }
        }
        TYPE_TOMBSTONES => {
            while !r.done() {
                r.be64()?;
                r.varint()?;
                r.varint()?;
            }
            v.skipped(Skipped::Tombstones);
        }
        TYPE_EXEMPLARS => {
            if !r.done() {
                r.be64()?;
                r.be64()?;
            }
            while !r.done() {
                r.varint()?;
                r.varint()?;
                r.be64()?;
                r.labels(body.len())?;
            }
            v.skipped(Skipped::Other);
        }
        TYPE_MMAP_MARKERS => {
            while !r.done() {
                r.be64()?;
                r.be64()?;
            }
            v.skipped(Skipped::Other);
        }
        TYPE_METADATA => {
            while !r.done() {
                r.uvarint()?;
                r.bytes(1)?;
                let n = r.uvarint()?;
                if n > body.len() as u64 {
                    return Err(RecordError::Truncated);
                }
                for _ in 0..n {
                    r.skip_string()?;
                    r.skip_string()?;
                }
            }
            v.skipped(Skipped::Other);
        }
        TYPE_HISTOGRAMS
        | TYPE_FLOAT_HISTOGRAMS
        | TYPE_CUSTOM_HISTOGRAMS
        | TYPE_CUSTOM_FLOAT_HISTOGRAMS => v.skipped(Skipped::Histograms),
        t => return Err(RecordError::UnknownType(t)),
    }
    Ok(())
}

/// A visitor that collects everything (tests, tools).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Collect {
    pub series: Vec<(u64, Labels)>,
    /// `(ref, t, value bits)`.
    pub samples: Vec<(u64, i64, u64)>,
    pub chunks: Vec<(u64, i64, i64, Vec<u8>)>,
    pub skipped: Vec<Skipped>,
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
    fn skipped(&mut self, what: Skipped) {
        self.skipped.push(what);
    }
}

/// Orrery's first record format (read once, to migrate): like Prometheus's types 1 and 2
/// but with uvarint refs, per-series sample groups and little-endian values, plus
/// whole-chunk checkpoint records under type 3.
pub mod legacy {
    use super::{Label, Labels, Reader, RecordError, Visitor};

    pub const TYPE_SERIES: u8 = 1;
    pub const TYPE_SAMPLES: u8 = 2;
    pub const TYPE_CHUNKS: u8 = 3;

    /// Decodes one payload of the first format into `v`'s callbacks.
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
                        let len =
                            usize::try_from(r.uvarint()?).map_err(|_| RecordError::Truncated)?;
                        let data = r.bytes(len)?;
                        v.chunk(sref, min_t, max_t, data);
                    }
                }
                Ok(())
            }
            t => Err(RecordError::UnknownType(t)),
        }
    }

    /// A series record of the first format (tests of the migration).
    #[cfg(test)]
    pub fn series_record(entries: &[(u64, &Labels)]) -> Vec<u8> {
        let mut b = vec![TYPE_SERIES];
        for (r, l) in entries {
            super::put_uvarint(&mut b, *r);
            super::put_uvarint(&mut b, l.len() as u64);
            for x in l.iter() {
                super::put_uvarint(&mut b, x.name.len() as u64);
                b.extend_from_slice(x.name.as_bytes());
                super::put_uvarint(&mut b, x.value.len() as u64);
                b.extend_from_slice(x.value.as_bytes());
            }
        }
        b
    }

    /// A samples record of the first format with one group (tests of the migration).
    #[cfg(test)]
    pub fn samples_record(r: u64, samples: &[(i64, f64)]) -> Vec<u8> {
        let mut b = vec![TYPE_SAMPLES];
        super::put_uvarint(&mut b, r);
        super::put_uvarint(&mut b, samples.len() as u64);
        let mut prev = 0i64;
        for &(t, v) in samples {
            super::put_varint(&mut b, t.wrapping_sub(prev));
            b.extend_from_slice(&v.to_bits().to_le_bytes());
            prev = t;
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples_record(samples: &[(u64, i64, f64)]) -> Vec<u8> {
        let mut buf = vec![TYPE_SAMPLES];
        let mut rec = SamplesRecord::default();
        for &(r, t, v) in samples {
            rec.push(&mut buf, r, t, v);
        }
        buf
    }

    #[test]
    fn series_and_samples_round_trip() {
        let l = Labels::from_pairs([("__name__", "up"), ("job", "x")]).unwrap();
        let mut buf = vec![TYPE_SERIES];
        put_series(&mut buf, 7, &l);
        put_series(&mut buf, 300, &l);
        let mut c = Collect::default();
        decode(&buf, &mut c).unwrap();
        assert_eq!(c.series, vec![(7, l.clone()), (300, l)]);

        let buf = samples_record(&[(5, -5, 1.0), (5, 100, f64::NAN), (1 << 40, i64::MAX, -0.0)]);
        let mut c = Collect::default();
        decode(&buf, &mut c).unwrap();
        assert_eq!(
            c.samples,
            vec![
                (5, -5, 1.0f64.to_bits()),
                (5, 100, f64::NAN.to_bits()),
                (1 << 40, i64::MAX, (-0.0f64).to_bits())
            ]
        );
    }

    /// Bytes as Prometheus's encoder writes them (`record.Encoder.Samples` for refs 10
    /// and 12 at t=1000 and 1015): base ref and time big-endian, zig-zag deltas, BE bits.
    #[test]
    fn samples_bytes_are_prometheus_layout() {
        let buf = samples_record(&[(10, 1000, 1.5), (12, 1015, 2.0)]);
        let mut want = vec![2u8];
        want.extend_from_slice(&10u64.to_be_bytes());
        want.extend_from_slice(&1000i64.to_be_bytes());
        want.extend_from_slice(&[0, 0]);
        want.extend_from_slice(&1.5f64.to_bits().to_be_bytes());
        want.extend_from_slice(&[4, 30]);
        want.extend_from_slice(&2.0f64.to_bits().to_be_bytes());
        assert_eq!(buf, want);
    }

    #[test]
    fn other_prometheus_records_are_decoded_and_counted() {
        let mut tomb = vec![TYPE_TOMBSTONES];
        tomb.extend_from_slice(&3u64.to_be_bytes());
        put_varint(&mut tomb, -5);
        put_varint(&mut tomb, 50);
        let mut meta = vec![TYPE_METADATA];
        put_uvarint(&mut meta, 3);
        meta.push(1);
        put_uvarint(&mut meta, 2);
        for s in ["UNIT", "seconds", "HELP", "h"] {
            put_uvarint(&mut meta, s.len() as u64);
            meta.extend_from_slice(s.as_bytes());
        }
        let mut mm = vec![TYPE_MMAP_MARKERS];
        mm.extend_from_slice(&[0; 16]);
        let hist = vec![TYPE_HISTOGRAMS, 1, 2, 3];
        let mut c = Collect::default();
        for r in [&tomb, &meta, &mm, &hist, &vec![TYPE_FLOAT_HISTOGRAMS]] {
            decode(r, &mut c).unwrap();
        }
        assert_eq!(
            c.skipped,
            vec![
                Skipped::Tombstones,
                Skipped::Other,
                Skipped::Other,
                Skipped::Histograms,
                Skipped::Histograms
            ]
        );
        assert!(decode(&tomb[..tomb.len() - 1], &mut c).is_err());
    }

    proptest::proptest! {
        /// Any series and samples records decode to exactly what was encoded.
        #[test]
        fn records_round_trip(
            series in proptest::collection::vec(
                (proptest::prelude::any::<u64>(),
                 proptest::collection::btree_map("[a-z_][a-z0-9_]{0,8}", "\\PC{1,12}", 1..6)),
                0..20),
            samples in proptest::collection::vec(
                (proptest::prelude::any::<u64>(), proptest::prelude::any::<i64>(), proptest::prelude::any::<u64>()),
                0..60),
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

            let s: Vec<(u64, i64, f64)> = samples.iter().map(|&(r, t, v)| (r, t, f64::from_bits(v))).collect();
            let buf = samples_record(&s);
            let mut c = Collect::default();
            decode(&buf, &mut c).unwrap();
            proptest::prop_assert_eq!(c.samples, samples);
        }

        /// Truncated or bit-flipped records never panic.
        #[test]
        fn damaged_records_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = decode(&data, &mut Collect::default());
            let _ = legacy::decode(&data, &mut Collect::default());
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for p in [
            &[][..],
            &[99],
            &[1, 0, 0, 0, 0, 0, 0, 0, 1, 5, 200],
            &[2, 1, 0xff, 0xff, 0xff],
            &[2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        ] {
            assert!(decode(p, &mut Collect::default()).is_err(), "{p:?}");
        }
        for p in [
            &[][..],
            &[9],
            &[1, 5, 200],
            &[2, 1, 0xff, 0xff, 0xff],
            &[3, 1, 1, 0, 0, 200],
        ] {
            assert!(legacy::decode(p, &mut Collect::default()).is_err(), "{p:?}");
        }
    }
}

//! `thanos.SeriesResponse` frames read in place: label names and values and chunk bytes
//! are borrowed from the frame, so a querier reading 100k series allocates nothing per
//! label or chunk before it decodes samples.
//!
//! Semantics follow protobuf merging as prost applies it: of the `result` oneof, the last
//! variant sent wins, and repeated occurrences of that variant merge (a `Series` sent in
//! two parts is one series with the labels and chunks of both; batches concatenate).
//! Every read is bounds-checked; malformed input is an error, never a panic.

use super::proto_reader::{Cursor, DecodeError, WT_LEN, WT_VARINT};
use super::remote_write::{LabelRef, decode_label};

/// The raw chunk of an `AggrChunk`, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawChunkRef<'a> {
    /// `thanos.Chunk.Encoding` as sent (unknown values kept).
    pub encoding: i32,
    pub data: &'a [u8],
}

/// One `AggrChunk`, borrowed. `raw` is `None` when the store sent only aggregates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChunkRef<'a> {
    pub min_time: i64,
    pub max_time: i64,
    pub raw: Option<RawChunkRef<'a>>,
    /// Downsampled aggregates in field order: count, sum, min, max, counter.
    pub aggrs: [Option<RawChunkRef<'a>>; 5],
}

impl ChunkRef<'_> {
    /// Whether the store sent any aggregate (a chunk of a downsampled block).
    pub fn has_aggregates(&self) -> bool {
        self.aggrs.iter().any(Option::is_some)
    }
}

/// One `thanos.Series`, borrowed; labels in the order sent (not validated).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SeriesRef<'a> {
    pub labels: Vec<LabelRef<'a>>,
    pub chunks: Vec<ChunkRef<'a>>,
}

/// What a `SeriesResponse` frame holds.
#[derive(Debug)]
pub enum Frame<'a> {
    /// One series (`series`) or a batch: read them with [`SeriesReader::next_series`].
    Series(SeriesReader<'a>),
    Warning(&'a str),
    /// Hints or nothing: no series.
    Other,
}

const SERIES: u32 = 1;
const WARNING: u32 = 2;
const HINTS: u32 = 3;
const BATCH: u32 = 4;

/// Reads every occurrence of a oneof variant, for its errors only.
fn validate(kind: u32, parts: &[&[u8]]) -> Result<(), DecodeError> {
    for p in parts {
        match kind {
            SERIES => decode_series(p, &mut SeriesRef::default())?,
            BATCH => {
                let mut r = SeriesReader {
                    parts: vec![p],
                    batch: true,
                    next_part: 0,
                    cur: Cursor::new(&[]),
                    single_done: false,
                };
                while r.next_series(&mut SeriesRef::default())? {}
            }
            WARNING => {
                std::str::from_utf8(p).map_err(|_| DecodeError::Utf8("warning"))?;
            }
            _ => {
                <prost_types::Any as prost::Message>::decode(*p)
                    .map_err(|_| DecodeError::Truncated("hints"))?;
            }
        }
    }
    Ok(())
}

/// Reads the top level of one `SeriesResponse` frame.
pub fn read_frame(buf: &[u8]) -> Result<Frame<'_>, DecodeError> {
    let mut c = Cursor::new(buf);
    // The oneof variant seen last and its occurrences since it became the variant.
    let mut kind = 0u32;
    let mut parts: Vec<&[u8]> = Vec::new();
    while !c.done() {
        let (field, wt) = c.tag()?;
        match field {
            SERIES | WARNING | HINTS | BATCH => {
                c.expect(field, wt, WT_LEN)?;
                let b = c.bytes("series response field")?;
                if field != kind {
                    // Replaced variants are still read (and must be valid), as prost does.
                    validate(kind, &parts)?;
                    kind = field;
                    parts.clear();
                }
                parts.push(b);
            }
            _ => c.skip(field, wt)?,
        }
    }
    if kind == WARNING || kind == HINTS {
        validate(kind, &parts)?;
    }
    Ok(match kind {
        SERIES | BATCH => Frame::Series(SeriesReader {
            parts,
            batch: kind == BATCH,
            next_part: 0,
            cur: Cursor::new(&[]),
            single_done: false,
        }),
        WARNING => {
            let w = parts.last().copied().unwrap_or_default();
            Frame::Warning(std::str::from_utf8(w).map_err(|_| DecodeError::Utf8("warning"))?)
        }
        _ => Frame::Other,
    })
}

/// The series of one frame, decoded one at a time into a caller-owned [`SeriesRef`].
#[derive(Debug)]
pub struct SeriesReader<'a> {
    parts: Vec<&'a [u8]>,
    batch: bool,
    next_part: usize,
    /// Position in the batch being read.
    cur: Cursor<'a>,
    single_done: bool,
}

impl std::fmt::Debug for Cursor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cursor({}/{})", self.pos, self.buf.len())
    }
}

impl<'a> SeriesReader<'a> {
    /// Decodes the next series into `out` (cleared first). `Ok(false)` at the end.
    pub fn next_series(&mut self, out: &mut SeriesRef<'a>) -> Result<bool, DecodeError> {
        out.labels.clear();
        out.chunks.clear();
        if !self.batch {
            if self.single_done {
                return Ok(false);
            }
            self.single_done = true;
            for p in &self.parts {
                decode_series(p, out)?;
            }
            return Ok(true);
        }
        loop {
            while !self.cur.done() {
                let (field, wt) = self.cur.tag()?;
                if field == 1 {
                    self.cur.expect(field, wt, WT_LEN)?;
                    let s = self.cur.bytes("series")?;
                    decode_series(s, out)?;
                    return Ok(true);
                }
                self.cur.skip(field, wt)?;
            }
            let Some(p) = self.parts.get(self.next_part) else {
                return Ok(false);
            };
            self.cur = Cursor::new(p);
            self.next_part += 1;
        }
    }
}

/// Merges one `thanos.Series` message into `out`.
fn decode_series<'a>(buf: &'a [u8], out: &mut SeriesRef<'a>) -> Result<(), DecodeError> {
    let mut c = Cursor::new(buf);
    while !c.done() {
        let (field, wt) = c.tag()?;
        match field {
            1 => {
                c.expect(field, wt, WT_LEN)?;
                out.labels.push(decode_label(c.bytes("label")?)?);
            }
            2 => {
                c.expect(field, wt, WT_LEN)?;
                out.chunks.push(decode_aggr_chunk(c.bytes("chunk")?)?);
            }
            _ => c.skip(field, wt)?,
        }
    }
    Ok(())
}

fn decode_aggr_chunk(buf: &[u8]) -> Result<ChunkRef<'_>, DecodeError> {
    let mut c = Cursor::new(buf);
    let mut out = ChunkRef::default();
    while !c.done() {
        let (field, wt) = c.tag()?;
        match field {
            1 | 2 => {
                c.expect(field, wt, WT_VARINT)?;
                let t = c.varint()? as i64;
                if field == 1 {
                    out.min_time = t;
                } else {
                    out.max_time = t;
                }
            }
            3 => {
                c.expect(field, wt, WT_LEN)?;
                // A repeated message field merges: fields it sets replace earlier ones.
                let raw = out.raw.get_or_insert_default();
                merge_chunk(c.bytes("raw chunk")?, raw)?;
            }
            4..=8 => {
                c.expect(field, wt, WT_LEN)?;
                let a = out.aggrs[(field - 4) as usize].get_or_insert_default();
                merge_chunk(c.bytes("aggregate chunk")?, a)?;
            }
            _ => c.skip(field, wt)?,
        }
    }
    Ok(out)
}

fn merge_chunk<'a>(buf: &'a [u8], out: &mut RawChunkRef<'a>) -> Result<(), DecodeError> {
    let mut c = Cursor::new(buf);
    while !c.done() {
        let (field, wt) = c.tag()?;
        match field {
            1 => {
                c.expect(field, wt, WT_VARINT)?;
                out.encoding = c.varint()? as i32;
            }
            2 => {
                c.expect(field, wt, WT_LEN)?;
                out.data = c.bytes("chunk data")?;
            }
            3 => {
                c.expect(field, wt, WT_VARINT)?;
                c.varint()?;
            }
            _ => c.skip(field, wt)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::thanos::{
        AggrChunk, Chunk, Series, SeriesBatch, SeriesResponse, series_response::Result as R,
    };
    use crate::{Label, Labels};
    use proptest::prelude::*;
    use prost::Message;

    /// What prost makes of a frame, in the reader's terms: the series (labels as pairs,
    /// chunks as times + raw), or a warning.
    type Decoded = (
        Vec<(Vec<(String, String)>, Vec<ChunkOwned>)>,
        Option<String>,
    );
    type ChunkOwned = (
        i64,
        i64,
        Option<(i32, Vec<u8>)>,
        Vec<Option<(i32, Vec<u8>)>>,
    );

    fn via_prost(buf: &[u8]) -> Option<Decoded> {
        let r = SeriesResponse::decode(buf).ok()?;
        let conv = |s: Series| {
            let labels = s
                .labels
                .into_iter()
                .map(|l| (l.name.to_string(), l.value.to_string()))
                .collect();
            let chunks = s
                .chunks
                .into_iter()
                .map(|c| {
                    let own = |r: Option<Chunk>| r.map(|r| (r.r#type, r.data.to_vec()));
                    (
                        c.min_time,
                        c.max_time,
                        own(c.raw),
                        vec![
                            own(c.count),
                            own(c.sum),
                            own(c.min),
                            own(c.max),
                            own(c.counter),
                        ],
                    )
                })
                .collect();
            (labels, chunks)
        };
        Some(match r.result {
            Some(R::Series(s)) => (vec![conv(s)], None),
            Some(R::Batch(b)) => (b.series.into_iter().map(conv).collect(), None),
            Some(R::Warning(w)) => (Vec::new(), Some(w)),
            Some(R::Hints(_)) | None => (Vec::new(), None),
        })
    }

    fn via_reader(buf: &[u8]) -> Option<Decoded> {
        match read_frame(buf).ok()? {
            Frame::Warning(w) => Some((Vec::new(), Some(w.to_string()))),
            Frame::Other => Some((Vec::new(), None)),
            Frame::Series(mut r) => {
                let mut out = Vec::new();
                let mut s = SeriesRef::default();
                while r.next_series(&mut s).ok()? {
                    let labels = s
                        .labels
                        .iter()
                        .map(|l| (l.name.to_string(), l.value.to_string()))
                        .collect();
                    let chunks = s
                        .chunks
                        .iter()
                        .map(|c| {
                            let own = |r: Option<RawChunkRef<'_>>| {
                                r.map(|r| (r.encoding, r.data.to_vec()))
                            };
                            (
                                c.min_time,
                                c.max_time,
                                own(c.raw),
                                c.aggrs.iter().map(|a| own(*a)).collect(),
                            )
                        })
                        .collect();
                    out.push((labels, chunks));
                }
                Some((out, None))
            }
        }
    }

    fn series(n: usize, seed: i64) -> Series {
        Series {
            labels: vec![
                Label::new("__name__", "up"),
                Label::new("instance", format!("host-{n}")),
            ],
            chunks: (0..2)
                .map(|i| AggrChunk {
                    min_time: seed + i * 1000,
                    max_time: seed + i * 1000 + 999,
                    raw: (i % 2 == 0 || n % 3 != 0).then(|| Chunk {
                        r#type: (n % 3) as i32,
                        data: vec![n as u8; n % 7].into(),
                        hash: n as u64,
                    }),
                    counter: (n % 3 == 0).then(|| Chunk {
                        r#type: 0,
                        data: vec![7; n % 5].into(),
                        hash: 1,
                    }),
                    ..Default::default()
                })
                .collect(),
        }
    }

    fn frame(result: R) -> Vec<u8> {
        SeriesResponse {
            result: Some(result),
        }
        .encode_to_vec()
    }

    #[test]
    fn reads_single_series_batches_and_warnings_as_prost() {
        for buf in [
            frame(R::Series(series(4, -5))),
            frame(R::Batch(SeriesBatch {
                series: (0..10).map(|n| series(n, n as i64 * 7)).collect(),
            })),
            frame(R::Warning("store x: partial".into())),
            SeriesResponse { result: None }.encode_to_vec(),
        ] {
            let got = via_reader(&buf).expect("reader decodes");
            assert_eq!(Some(got), via_prost(&buf));
        }
    }

    #[test]
    fn repeated_oneof_fields_merge_as_prost_does() {
        // Two Series parts, then a batch replacing them, then two batch parts.
        let a = frame(R::Series(series(1, 0)));
        let b = frame(R::Series(series(2, 10)));
        let mut buf = [a.clone(), b.clone()].concat();
        assert_eq!(via_reader(&buf), via_prost(&buf));
        assert_eq!(via_reader(&buf).map(|d| d.0[0].0.len()), Some(4));
        let batch = |n| {
            frame(R::Batch(SeriesBatch {
                series: vec![series(n, 1)],
            }))
        };
        buf.extend(batch(5));
        buf.extend(batch(6));
        let got = via_reader(&buf);
        assert_eq!(got, via_prost(&buf));
        assert_eq!(got.map(|d| d.0.len()), Some(2));
        buf.extend(frame(R::Warning("last".into())));
        assert_eq!(via_reader(&buf), via_prost(&buf));
    }

    #[test]
    fn errors_not_panics_on_garbage() {
        assert!(read_frame(&[0x0a, 0xff]).is_err());
        let mut buf = frame(R::Batch(SeriesBatch {
            series: vec![series(3, 0)],
        }));
        // Cut inside the batch: the top level still parses, reading the series fails.
        let len = buf.len();
        buf.truncate(len - 3);
        assert!(via_reader(&buf).is_none());
        assert!(via_prost(&buf).is_none());
    }

    fn arb_frame() -> impl Strategy<Value = Vec<u8>> {
        let label = ("[a-z_]{1,8}", "\\PC{0,12}").prop_map(|(n, v)| Label::new(n, v));
        let chunk = (
            any::<i64>(),
            any::<i64>(),
            prop::option::of((0i32..4, prop::collection::vec(any::<u8>(), 0..40))),
            prop::option::of(prop::collection::vec(any::<u8>(), 0..20)),
            prop::option::of(prop::collection::vec(any::<u8>(), 0..20)),
        )
            .prop_map(|(a, b, raw, sum, counter)| {
                let sub = |d: Option<Vec<u8>>| {
                    d.map(|d| Chunk {
                        r#type: 0,
                        data: d.into(),
                        hash: 3,
                    })
                };
                AggrChunk {
                    min_time: a,
                    max_time: b,
                    raw: raw.map(|(t, d)| Chunk {
                        r#type: t,
                        data: d.into(),
                        hash: 7,
                    }),
                    sum: sub(sum),
                    counter: sub(counter),
                    ..Default::default()
                }
            });
        let series = (
            prop::collection::vec(label, 0..6),
            prop::collection::vec(chunk, 0..4),
        )
            .prop_map(|(labels, chunks)| Series { labels, chunks });
        prop_oneof![
            series.clone().prop_map(|s| frame(R::Series(s))),
            prop::collection::vec(series, 0..5)
                .prop_map(|series| frame(R::Batch(SeriesBatch { series }))),
            "\\PC{0,20}".prop_map(|w| frame(R::Warning(w))),
        ]
    }

    proptest! {
        #[test]
        fn agrees_with_prost(parts in prop::collection::vec(arb_frame(), 1..3)) {
            let buf = parts.concat();
            prop_assert_eq!(via_reader(&buf), via_prost(&buf));
        }

        /// On damaged frames the reader may refuse what prost accepts (it knows no
        /// groups), but whatever it accepts, prost reads the same way.
        #[test]
        fn accepts_only_what_prost_reads_alike(buf in arb_frame(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4), cut in any::<prop::sample::Index>()) {
            let mut buf = buf;
            for (i, x) in flips {
                if !buf.is_empty() {
                    let i = i.index(buf.len());
                    buf[i] ^= x;
                }
            }
            let c = cut.index(buf.len() + 1);
            let buf = &buf[..c];
            if let Some(got) = via_reader(buf) {
                prop_assert_eq!(Some(got), via_prost(buf));
            }
        }
    }

    #[test]
    fn labels_reach_the_model_unchanged() {
        let buf = frame(R::Series(series(9, 0)));
        let Ok(Frame::Series(mut r)) = read_frame(&buf) else {
            panic!("a series frame");
        };
        let mut s = SeriesRef::default();
        assert!(r.next_series(&mut s).unwrap());
        let labels = Labels::from_unsorted(
            s.labels
                .iter()
                .map(|l| Label::new(l.name, l.value))
                .collect(),
        )
        .unwrap();
        assert_eq!(labels.get("instance"), Some("host-9"));
        assert!(!r.next_series(&mut s).unwrap());
    }
}

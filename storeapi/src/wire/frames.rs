//! `thanos.SeriesResponse` frames written as protobuf bytes straight from stored data
//! (a receiver's head, a store gateway's fetched chunks).
//!
//! Building prost structs per series (a label vector, chunk structs, copies of the open
//! chunk) and encoding them again cost more than the rest of a `Series` call. The writer
//! here takes label names/values and chunk bytes as borrowed slices and writes the wire
//! form once, byte-identical to what prost would encode for the same message.

use bytes::Bytes;

/// Byte budget of one `SeriesResponse` frame (Thanos's `RemoteReadFrameLimit`).
pub const FRAME_LIMIT: usize = 1 << 20;

/// A chunk to send: times, `thanos.Chunk.Encoding` number (XOR is 0) and raw bytes, or
/// (downsampled data) the sub-chunks of the aggregates in `aggrs`.
#[derive(Debug, Clone, Copy)]
pub struct WireChunk<'a> {
    pub min_time: i64,
    pub max_time: i64,
    pub encoding: i32,
    pub data: &'a [u8],
    /// Sub-chunks with their `thanos.Chunk.Encoding` (XOR for floats and counts,
    /// FLOAT_HISTOGRAM for a histogram chunk's sum and counter) in `AggrChunk` field
    /// order: count, sum, min, max, counter (fields 4..=8). When any is set the chunk is
    /// an aggregate chunk: `raw` is not sent.
    pub aggrs: [Option<(i32, &'a [u8])>; 5],
}

impl<'a> WireChunk<'a> {
    /// A chunk stored with Prometheus's chunk encoding byte (`chunkenc`: XOR = 1,
    /// histogram = 2, float histogram = 3): the StoreAPI numbers them from 0.
    pub fn from_prometheus(min_time: i64, max_time: i64, encoding: u8, data: &'a [u8]) -> Self {
        WireChunk {
            min_time,
            max_time,
            encoding: i32::from(encoding) - 1,
            data,
            aggrs: [None; 5],
        }
    }

    /// A downsampled chunk: the given aggregates' sub-chunks with their StoreAPI
    /// encodings (count, sum, min, max, counter order; `None` = not sent).
    pub fn aggregates(min_time: i64, max_time: i64, aggrs: [Option<(i32, &'a [u8])>; 5]) -> Self {
        WireChunk {
            min_time,
            max_time,
            encoding: 0,
            data: &[],
            aggrs,
        }
    }

    fn is_aggregate(&self) -> bool {
        self.aggrs.iter().any(Option::is_some)
    }

    /// The hash the raw chunk is sent with (0 for an aggregate chunk: each of its
    /// sub-chunks carries its own hash).
    fn hash(&self) -> u64 {
        if self.is_aggregate() {
            0
        } else {
            xxhash_rust::xxh64::xxh64(self.data, 0)
        }
    }
}

fn varint_len(v: u64) -> usize {
    // 1 byte per 7 bits, at least one.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Length-delimited field: tag, length, then the caller writes `len` bytes.
fn put_len_field(buf: &mut Vec<u8>, field: u32, len: usize) {
    buf.push(((field << 3) | 2) as u8);
    put_varint(buf, len as u64);
}

fn len_field_size(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// Encoded size of a `thanos.Chunk` message.
fn chunk_msg_len(encoding: i32, data: &[u8], hash: u64) -> usize {
    let mut n = 0;
    if encoding != 0 {
        n += 1 + varint_len(encoding as i64 as u64);
    }
    if !data.is_empty() {
        n += len_field_size(data.len());
    }
    if hash != 0 {
        n += 1 + varint_len(hash);
    }
    n
}

fn put_chunk_msg(buf: &mut Vec<u8>, field: u32, encoding: i32, data: &[u8], hash: u64) {
    put_len_field(buf, field, chunk_msg_len(encoding, data, hash));
    if encoding != 0 {
        buf.push(1 << 3);
        put_varint(buf, encoding as i64 as u64);
    }
    if !data.is_empty() {
        put_len_field(buf, 2, data.len());
        buf.extend_from_slice(data);
    }
    if hash != 0 {
        buf.push(3 << 3);
        put_varint(buf, hash);
    }
}

/// Encoded size of a `thanos.AggrChunk` message: `raw`, or the aggregate sub-chunks
/// (each with its own hash, as Thanos's store sends them).
fn aggr_chunk_len(c: &WireChunk<'_>, hash: u64) -> usize {
    let mut n = 0;
    if c.min_time != 0 {
        n += 1 + varint_len(c.min_time as u64);
    }
    if c.max_time != 0 {
        n += 1 + varint_len(c.max_time as u64);
    }
    if c.is_aggregate() {
        for (e, a) in c.aggrs.iter().flatten() {
            n += len_field_size(chunk_msg_len(*e, a, xxhash_rust::xxh64::xxh64(a, 0)));
        }
        return n;
    }
    n + len_field_size(chunk_msg_len(c.encoding, c.data, hash))
}

fn put_aggr_chunk(buf: &mut Vec<u8>, c: &WireChunk<'_>, hash: u64) {
    if c.min_time != 0 {
        buf.push(1 << 3);
        put_varint(buf, c.min_time as u64);
    }
    if c.max_time != 0 {
        buf.push(2 << 3);
        put_varint(buf, c.max_time as u64);
    }
    if c.is_aggregate() {
        for (i, a) in c.aggrs.iter().enumerate() {
            if let Some((e, a)) = a {
                let h = xxhash_rust::xxh64::xxh64(a, 0);
                put_chunk_msg(buf, 4 + i as u32, *e, a, h);
            }
        }
        return;
    }
    put_chunk_msg(buf, 3, c.encoding, c.data, hash);
}

/// Appends one `thanos.Series` entry (field 1 of `SeriesResponse` and of `SeriesBatch`)
/// of encoded size `size`: the label entries, then the chunks with their hashes.
fn put_series<'a>(
    buf: &mut Vec<u8>,
    size: usize,
    labels: &[u8],
    chunks: &mut dyn Iterator<Item = (WireChunk<'a>, u64)>,
) {
    put_len_field(buf, 1, size);
    buf.extend_from_slice(labels);
    for (c, hash) in chunks {
        put_len_field(buf, 2, aggr_chunk_len(&c, hash));
        put_aggr_chunk(buf, &c, hash);
    }
}

/// Appends one `labels` entry (a `thanos.Label`) of a `thanos.Series` to `buf`.
pub fn put_label(buf: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    let mut n = 0;
    if !name.is_empty() {
        n += len_field_size(name.len());
    }
    if !value.is_empty() {
        n += len_field_size(value.len());
    }
    put_len_field(buf, 1, n);
    if !name.is_empty() {
        put_len_field(buf, 1, name.len());
        buf.extend_from_slice(name);
    }
    if !value.is_empty() {
        put_len_field(buf, 2, value.len());
        buf.extend_from_slice(value);
    }
}

/// Writes the label entries of a head series key (`name 0xff value 0xff …`) with the
/// external labels merged in by name and the `without` names left out.
pub fn put_key_labels(buf: &mut Vec<u8>, key: &[u8], external: &crate::Labels, without: &[String]) {
    let keep = |name: &[u8]| !without.iter().any(|w| w.as_bytes() == name);
    let mut ext = external.iter().peekable();
    let mut parts = key.split(|&b| b == 0xff);
    while let (Some(name), Some(value)) = (parts.next(), parts.next()) {
        if name.is_empty() && value.is_empty() {
            // The empty piece after the key's final 0xff.
            break;
        }
        while let Some(e) = ext.next_if(|e| e.name.as_bytes() < name) {
            if keep(e.name.as_bytes()) {
                put_label(buf, e.name.as_bytes(), e.value.as_bytes());
            }
        }
        if keep(name) {
            put_label(buf, name, value);
        }
    }
    for e in ext {
        if keep(e.name.as_bytes()) {
            put_label(buf, e.name.as_bytes(), e.value.as_bytes());
        }
    }
}

/// Packs series into `SeriesResponse` frames: a series is split at [`FRAME_LIMIT`], and
/// series are packed into `batch` frames of up to `batch_size` series when
/// `batch_size > 1`. Each frame is handed out as soon as it is complete.
pub struct FrameWriter {
    skip_chunks: bool,
    batch_size: usize,
    /// The current batch: `SeriesBatch.series` entries.
    batch: Vec<u8>,
    batch_len: usize,
    /// The current series' label entries (filled through [`FrameWriter::labels`]).
    labels: Vec<u8>,
    /// Per chunk of the current series: (hash, encoded `chunks` entry size).
    sizes: Vec<(u64, usize)>,
}

impl FrameWriter {
    pub fn new(skip_chunks: bool, batch_size: i64) -> Self {
        FrameWriter {
            skip_chunks,
            batch_size: usize::try_from(batch_size).unwrap_or(0).max(1),
            batch: Vec::new(),
            batch_len: 0,
            labels: Vec::new(),
            sizes: Vec::new(),
        }
    }

    /// The label buffer of the next series, cleared: fill it with [`put_label`] or
    /// [`put_key_labels`], then call [`FrameWriter::push`].
    pub fn labels(&mut self) -> &mut Vec<u8> {
        self.labels.clear();
        &mut self.labels
    }

    /// Adds one series (labels from [`FrameWriter::labels`]); calls `emit` with every
    /// frame completed by it.
    pub fn push<'a>(
        &mut self,
        chunks: impl Iterator<Item = WireChunk<'a>> + Clone,
        emit: &mut impl FnMut(Bytes),
    ) {
        let lsize = self.labels.len();
        if self.skip_chunks {
            self.add_series(lsize, &mut std::iter::empty(), emit);
            return;
        }
        self.sizes.clear();
        for c in chunks.clone() {
            let hash = c.hash();
            self.sizes
                .push((hash, len_field_size(aggr_chunk_len(&c, hash))));
        }
        if self.sizes.is_empty() {
            self.add_series(lsize, &mut std::iter::empty(), emit);
            return;
        }
        // Split into series messages of at most FRAME_LIMIT bytes (at least one chunk).
        let sizes = std::mem::take(&mut self.sizes);
        let mut chunks = chunks.zip(sizes.iter().map(|&(hash, _)| hash));
        let mut start = 0;
        while start < sizes.len() {
            let mut size = lsize + sizes[start].1;
            let mut end = start + 1;
            while end < sizes.len() && size + sizes[end].1 <= FRAME_LIMIT {
                size += sizes[end].1;
                end += 1;
            }
            self.add_series(size, &mut chunks.by_ref().take(end - start), emit);
            start = end;
        }
        self.sizes = sizes;
    }

    /// Writes one `thanos.Series` of encoded size `size` (labels + the given chunks).
    fn add_series<'a>(
        &mut self,
        size: usize,
        chunks: &mut dyn Iterator<Item = (WireChunk<'a>, u64)>,
        emit: &mut impl FnMut(Bytes),
    ) {
        if self.batch_size <= 1 {
            let mut frame = Vec::with_capacity(len_field_size(size));
            put_series(&mut frame, size, &self.labels, chunks);
            emit(Bytes::from(frame));
            return;
        }
        let entry = len_field_size(size);
        if self.batch_len > 0
            && (self.batch_len >= self.batch_size || self.batch.len() + entry > FRAME_LIMIT)
        {
            self.flush(emit);
        }
        if self.batch.is_empty() {
            // Room for the frame's own tag and length, written at flush.
            self.batch.resize(HEADER_ROOM, 0);
        }
        put_series(&mut self.batch, size, &self.labels, chunks);
        self.batch_len += 1;
    }

    fn flush(&mut self, emit: &mut impl FnMut(Bytes)) {
        if self.batch_len == 0 {
            return;
        }
        let mut batch = std::mem::take(&mut self.batch);
        let body = batch.len() - HEADER_ROOM;
        // `SeriesResponse.batch` (field 4): tag + length right before the body.
        let mut head = Vec::with_capacity(HEADER_ROOM);
        put_len_field(&mut head, 4, body);
        let off = HEADER_ROOM - head.len();
        batch[off..HEADER_ROOM].copy_from_slice(&head);
        self.batch_len = 0;
        emit(Bytes::from(batch).slice(off..));
    }

    /// Emits the last, partly filled batch.
    pub fn finish(mut self, emit: &mut impl FnMut(Bytes)) {
        self.flush(emit);
    }
}

/// Bytes reserved at the start of a batch for its tag and length (a 1-byte tag and a
/// varint of up to 10 bytes).
const HEADER_ROOM: usize = 11;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::thanos::{self, AggrChunk, SeriesResponse, series_response::Result as Frame};
    use prost::Message;

    fn label(n: &str, v: &str) -> crate::Label {
        crate::Label::new(n, v)
    }

    fn decode(frames: &[Bytes]) -> Vec<Frame> {
        frames
            .iter()
            .map(|b| {
                SeriesResponse::decode(b.clone())
                    .expect("valid frame")
                    .result
                    .expect("a result")
            })
            .collect()
    }

    /// What prost encodes for the same series.
    fn prost_series(labels: &[(&str, &str)], chunks: &[WireChunk<'_>]) -> thanos::Series {
        thanos::Series {
            labels: labels.iter().map(|(n, v)| label(n, v)).collect(),
            chunks: chunks
                .iter()
                .map(|c| {
                    let sub = |d: Option<(i32, &[u8])>| {
                        d.map(|(e, d)| thanos::Chunk {
                            r#type: e,
                            data: Bytes::copy_from_slice(d),
                            hash: xxhash_rust::xxh64::xxh64(d, 0),
                        })
                    };
                    if c.aggrs.iter().any(Option::is_some) {
                        return AggrChunk {
                            min_time: c.min_time,
                            max_time: c.max_time,
                            raw: None,
                            count: sub(c.aggrs[0]),
                            sum: sub(c.aggrs[1]),
                            min: sub(c.aggrs[2]),
                            max: sub(c.aggrs[3]),
                            counter: sub(c.aggrs[4]),
                        };
                    }
                    AggrChunk {
                        min_time: c.min_time,
                        max_time: c.max_time,
                        raw: Some(thanos::Chunk {
                            r#type: c.encoding,
                            data: Bytes::copy_from_slice(c.data),
                            hash: xxhash_rust::xxh64::xxh64(c.data, 0),
                        }),
                        ..Default::default()
                    }
                })
                .collect(),
        }
    }

    #[test]
    fn one_series_frames_equal_prost_bytes() {
        let data = vec![7u8; 300];
        let chunks = [
            WireChunk {
                min_time: -5,
                max_time: 0,
                encoding: 0,
                data: &data[..10],
                aggrs: [None; 5],
            },
            WireChunk {
                min_time: 1_700_000_000_000,
                max_time: 1_700_000_015_000,
                encoding: 1,
                data: &data,
                aggrs: [None; 5],
            },
        ];
        let labels = [("__name__", "up"), ("empty", ""), ("job", "x")];
        let mut w = FrameWriter::new(false, 1);
        let buf = w.labels();
        for (n, v) in labels {
            put_label(buf, n.as_bytes(), v.as_bytes());
        }
        let mut out = Vec::new();
        w.push(chunks.iter().copied(), &mut |b| out.push(b));
        w.finish(&mut |b| out.push(b));
        let want = SeriesResponse {
            result: Some(Frame::Series(prost_series(&labels, &chunks))),
        }
        .encode_to_vec();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].as_ref(), want.as_slice());
    }

    #[test]
    fn aggregate_chunks_equal_prost_bytes() {
        let (a, b) = (vec![1u8, 2, 3], vec![9u8; 200]);
        let chunks = [
            WireChunk::aggregates(
                299_999,
                3_599_999,
                [Some((0, &a[..])), Some((0, &b[..])), None, None, None],
            ),
            // A histogram chunk's aggregates: FLOAT_HISTOGRAM sum and counter.
            WireChunk::aggregates(
                3_899_999,
                3_899_999,
                [
                    Some((0, &a[..])),
                    Some((2, &b[..])),
                    None,
                    None,
                    Some((2, &b[..])),
                ],
            ),
            WireChunk::from_prometheus(4_000_000, 4_100_000, 1, &a),
        ];
        let labels = [("__name__", "x")];
        for batch in [1, 8] {
            let mut w = FrameWriter::new(false, batch);
            put_label(w.labels(), b"__name__", b"x");
            let mut out = Vec::new();
            w.push(chunks.iter().copied(), &mut |b| out.push(b));
            w.finish(&mut |b| out.push(b));
            let s = prost_series(&labels, &chunks);
            let want = SeriesResponse {
                result: Some(if batch == 1 {
                    Frame::Series(s)
                } else {
                    Frame::Batch(thanos::SeriesBatch { series: vec![s] })
                }),
            }
            .encode_to_vec();
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].as_ref(), want.as_slice());
        }
    }

    #[test]
    fn batches_equal_prost_bytes_and_respect_batch_size() {
        let data = [1u8, 2, 3];
        let mut w = FrameWriter::new(false, 2);
        let mut out = Vec::new();
        let mut want = Vec::new();
        for i in 0..5 {
            let v = i.to_string();
            put_label(w.labels(), b"i", v.as_bytes());
            let c = [WireChunk {
                min_time: i,
                max_time: i + 1,
                encoding: 0,
                data: &data,
                aggrs: [None; 5],
            }];
            w.push(c.iter().copied(), &mut |b| out.push(b));
            want.push(prost_series(&[("i", &v)], &c));
        }
        w.finish(&mut |b| out.push(b));
        assert_eq!(out.len(), 3);
        let mut it = want.into_iter();
        for (frame, n) in out.iter().zip([2, 2, 1]) {
            let batch = thanos::SeriesBatch {
                series: it.by_ref().take(n).collect(),
            };
            let want = SeriesResponse {
                result: Some(Frame::Batch(batch)),
            }
            .encode_to_vec();
            assert_eq!(frame.as_ref(), want.as_slice());
        }
    }

    #[test]
    fn large_series_split_at_frame_limit_and_skip_chunks_has_labels_only() {
        let data = vec![9u8; 400 << 10];
        let chunks: Vec<WireChunk<'_>> = (0..5)
            .map(|i| WireChunk {
                min_time: i * 10,
                max_time: i * 10 + 9,
                encoding: 0,
                data: &data,
                aggrs: [None; 5],
            })
            .collect();
        let mut w = FrameWriter::new(false, 64);
        let mut out = Vec::new();
        put_label(w.labels(), b"__name__", b"big");
        w.push(chunks.iter().copied(), &mut |b| out.push(b));
        w.finish(&mut |b| out.push(b));
        let mut seen = Vec::new();
        for (b, f) in out.iter().zip(decode(&out)) {
            assert!(b.len() <= FRAME_LIMIT + 16, "{}", b.len());
            let Frame::Batch(batch) = f else {
                panic!("batch expected")
            };
            for s in batch.series {
                assert_eq!(s.labels, vec![label("__name__", "big")]);
                seen.extend(s.chunks.iter().map(|c| c.min_time));
            }
        }
        assert!(out.len() >= 2, "400 KiB x 5 needs several frames");
        assert_eq!(seen, vec![0, 10, 20, 30, 40]);

        let mut w = FrameWriter::new(true, 1);
        let mut out = Vec::new();
        put_label(w.labels(), b"__name__", b"big");
        w.push(chunks.iter().copied(), &mut |b| out.push(b));
        let frames = decode(&out);
        let [Frame::Series(s)] = frames.as_slice() else {
            panic!("one series frame expected: {frames:?}")
        };
        assert!(s.chunks.is_empty());
        assert_eq!(s.labels, vec![label("__name__", "big")]);
    }

    #[test]
    fn key_labels_merge_external_and_drop_without() {
        let mut series =
            crate::Labels::from_pairs([("__name__", "up"), ("instance", "a:1"), ("zone", "z")])
                .unwrap();
        // The head's key layout: `name 0xff value 0xff` per label.
        let mut key = Vec::new();
        for l in series.iter() {
            key.extend_from_slice(l.name.as_bytes());
            key.push(0xff);
            key.extend_from_slice(l.value.as_bytes());
            key.push(0xff);
        }
        let external = crate::Labels::from_pairs([
            ("cluster", "c1"),
            ("receive_replica", "0"),
            ("zzz", "last"),
        ])
        .unwrap();
        let mut buf = Vec::new();
        put_key_labels(&mut buf, &key, &external, &["receive_replica".to_string()]);
        let got = thanos::Series::decode(buf.as_slice()).expect("labels decode");
        series.extend_external(&external);
        series.retain(|l| l.name != "receive_replica");
        assert_eq!(got.labels, series.into_vec());
    }
}

//! Re-encoding a merged stream of samples of one series into chunks, as Prometheus's
//! compactor does for overlapping chunks (`storage.seriesToChunkEncoder`): a new chunk
//! when the sample type changes (float, histogram, float histogram), after
//! [`SAMPLES_PER_CHUNK`] samples, and where a histogram appender asks for one (a counter
//! reset or a bucket layout it cannot recode to). Chunks after a cut start without a
//! previous appender, so their counter-reset header comes from the first sample's hint
//! alone (`CounterReset`, `Gauge`, else unknown), as in Prometheus.
//!
//! Not the head's cutting (`tsdb::head`), which cuts histogram chunks by size and
//! predicted end time: a compacted block holds what Prometheus's compactor writes.

use bytes::Bytes;
use storeapi::histogram::{FloatHistogram, Histogram};

use crate::{
    Appended, Chunk, ChunkError, Encoding, FloatHistogramAppender, HistogramAppender, XorChunk,
};

/// Samples per re-encoded chunk, whatever the type (`seriesToChunkEncoderSplit`).
pub const SAMPLES_PER_CHUNK: usize = 120;

#[derive(Debug)]
enum Open {
    Xor(XorChunk),
    Int(HistogramAppender),
    Float(FloatHistogramAppender),
}

impl Open {
    fn encoding(&self) -> Encoding {
        match self {
            Open::Xor(_) => Encoding::Xor,
            Open::Int(_) => Encoding::Histogram,
            Open::Float(_) => Encoding::FloatHistogram,
        }
    }

    fn last_t(&self) -> i64 {
        match self {
            Open::Xor(x) => x.last_t(),
            Open::Int(a) => a.last_t(),
            Open::Float(a) => a.last_t(),
        }
    }

    fn num_samples(&self) -> u16 {
        match self {
            Open::Xor(x) => x.num_samples(),
            Open::Int(a) => a.num_samples(),
            Open::Float(a) => a.num_samples(),
        }
    }

    fn into_bytes(self) -> Vec<u8> {
        match self {
            Open::Xor(x) => x.into_bytes(),
            Open::Int(a) => a.into_bytes(),
            Open::Float(a) => a.into_bytes(),
        }
    }
}

/// Builds the chunks of one series from samples appended in time order (unique
/// timestamps; the caller merges and deduplicates).
#[derive(Debug, Default)]
pub struct SeriesEncoder {
    open: Option<Open>,
    /// Samples appended to the open chunk since it was started by a cut of ours (a
    /// chunk an appender started counts from its first sample).
    n: usize,
    min_t: i64,
    out: Vec<Chunk>,
}

impl SeriesEncoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Closes the open chunk when the next sample is of `enc` and must start a new one.
    fn cut_if_needed(&mut self, enc: Encoding, t: i64) {
        let cut = match &self.open {
            None => true,
            Some(o) => o.encoding() != enc || self.n >= SAMPLES_PER_CHUNK,
        };
        if cut {
            self.close();
            self.open = Some(match enc {
                Encoding::Histogram => Open::Int(HistogramAppender::new()),
                Encoding::FloatHistogram => Open::Float(FloatHistogramAppender::new()),
                _ => Open::Xor(XorChunk::new()),
            });
            self.n = 0;
            self.min_t = t;
        }
    }

    fn close(&mut self) {
        if let Some(o) = self.open.take()
            && o.num_samples() > 0
        {
            let max_time = o.last_t();
            let encoding = o.encoding();
            self.out.push(Chunk {
                min_time: self.min_t,
                max_time,
                encoding,
                data: Bytes::from(o.into_bytes()),
            });
        }
    }

    /// Appends a float sample.
    pub fn append_float(&mut self, t: i64, v: f64) -> Result<(), ChunkError> {
        self.cut_if_needed(Encoding::Xor, t);
        if let Some(Open::Xor(x)) = &mut self.open {
            x.append(t, v)?;
        }
        self.n += 1;
        Ok(())
    }

    /// Appends an integer histogram sample (a HISTOGRAM chunk).
    pub fn append_histogram(&mut self, t: i64, h: &Histogram) -> Result<(), ChunkError> {
        self.cut_if_needed(Encoding::Histogram, t);
        let next = match &mut self.open {
            Some(Open::Int(a)) => match a.append(None, t, h)? {
                Appended::InPlace | Appended::Recoded => None,
                Appended::NewChunk(n) => Some(Open::Int(n)),
            },
            _ => None,
        };
        self.started(next, t);
        Ok(())
    }

    /// Appends a float histogram sample (a FLOAT_HISTOGRAM chunk).
    pub fn append_float_histogram(&mut self, t: i64, h: &FloatHistogram) -> Result<(), ChunkError> {
        self.cut_if_needed(Encoding::FloatHistogram, t);
        let next = match &mut self.open {
            Some(Open::Float(a)) => match a.append(None, t, h)? {
                Appended::InPlace | Appended::Recoded => None,
                Appended::NewChunk(n) => Some(Open::Float(n)),
            },
            _ => None,
        };
        self.started(next, t);
        Ok(())
    }

    /// Counts the appended sample; `next` is the chunk the appender started with it.
    fn started(&mut self, next: Option<Open>, t: i64) {
        if let Some(n) = next {
            self.close();
            self.open = Some(n);
            self.n = 0;
            self.min_t = t;
        }
        self.n += 1;
    }

    /// The chunks, in time order.
    pub fn finish(mut self) -> Vec<Chunk> {
        self.close();
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CounterResetHeader;
    use storeapi::histogram::{CounterResetHint, HistogramValue, Span};

    fn hist(count: u64) -> Histogram {
        Histogram {
            schema: 0,
            zero_threshold: 1e-128,
            count,
            sum: count as f64,
            positive_spans: vec![Span {
                offset: 0,
                length: 1,
            }],
            positive_buckets: vec![count as i64],
            ..Default::default()
        }
    }

    #[test]
    fn cuts_on_type_change_size_and_reset() {
        let mut e = SeriesEncoder::new();
        for t in 0..130 {
            e.append_float(t, t as f64).unwrap();
        }
        // A counter: 0..5 growing, then a reset at 135, then a gauge-free float histogram.
        for (k, t) in (130..135).enumerate() {
            e.append_histogram(t, &hist(k as u64 + 10)).unwrap();
        }
        e.append_histogram(135, &hist(1)).unwrap();
        e.append_float_histogram(136, &hist(2).to_float()).unwrap();
        e.append_float(137, 1.0).unwrap();
        let cs = e.finish();
        let got: Vec<(Encoding, i64, i64, usize)> = cs
            .iter()
            .map(|c| (c.encoding, c.min_time, c.max_time, c.num_samples()))
            .collect();
        assert_eq!(
            got,
            [
                (Encoding::Xor, 0, 119, 120),
                (Encoding::Xor, 120, 129, 10),
                (Encoding::Histogram, 130, 134, 5),
                (Encoding::Histogram, 135, 135, 1),
                (Encoding::FloatHistogram, 136, 136, 1),
                (Encoding::Xor, 137, 137, 1),
            ]
        );
        let header = |c: &Chunk| HistogramAppender::from_bytes(&c.data).unwrap().header();
        assert_eq!(header(&cs[2]), CounterResetHeader::Unknown);
        assert_eq!(header(&cs[3]), CounterResetHeader::CounterReset);
        // The samples read back.
        let back: Vec<_> = cs[2]
            .iter_histograms()
            .unwrap()
            .map(|s| match s.unwrap().h {
                HistogramValue::Int(h) => h.count,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(back, [10, 11, 12, 13, 14]);
    }

    #[test]
    fn histograms_cut_every_120_samples_with_hint_headers() {
        let mut e = SeriesEncoder::new();
        for t in 0..250 {
            let mut h = hist(t as u64);
            if t == 120 {
                h.hint = CounterResetHint::Gauge;
            }
            e.append_histogram(t, &h).unwrap();
        }
        let cs = e.finish();
        assert_eq!(
            cs.iter().map(Chunk::num_samples).collect::<Vec<_>>(),
            [120, 1, 120, 9],
            "a cut at 120; the gauge sample starts a gauge chunk the next counter sample leaves"
        );
    }

    #[test]
    fn bad_histogram_is_an_error() {
        let mut e = SeriesEncoder::new();
        let mut h = hist(1);
        h.positive_buckets.push(3);
        assert!(e.append_histogram(0, &h).is_err());
    }

    #[test]
    fn chunk_times_equal_the_decoded_samples_and_damage_is_an_error() {
        let mut e = SeriesEncoder::new();
        for t in 0..50 {
            e.append_float(t * 10, t as f64).unwrap();
        }
        for t in 50..90 {
            e.append_histogram(t * 10, &hist(t as u64)).unwrap();
        }
        for t in 90..130 {
            e.append_float_histogram(t * 10, &hist(t as u64).to_float())
                .unwrap();
        }
        let chunks = e.finish();
        assert_eq!(chunks.len(), 3);
        let mut all = Vec::new();
        for c in &chunks {
            let mut times = Vec::new();
            c.times(&mut times).unwrap();
            let want: Vec<i64> = match c.encoding {
                Encoding::Xor => c.iter().unwrap().map(|s| s.unwrap().0).collect(),
                _ => c.iter_histograms().unwrap().map(|s| s.unwrap().t).collect(),
            };
            assert_eq!(times, want, "{:?}", c.encoding);
            all.extend(times);
            // A chunk cut short is an error, not fewer samples.
            let mut cut = c.clone();
            cut.data = cut.data.slice(..cut.data.len() / 2);
            assert!(cut.times(&mut Vec::new()).is_err(), "{:?}", c.encoding);
        }
        assert_eq!(all, (0..130).map(|t| t * 10).collect::<Vec<_>>());
    }
}

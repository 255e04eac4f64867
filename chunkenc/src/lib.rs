//! Chunks: compressed runs of samples of one series, as Prometheus stores them, and
//! Thanos's downsampled aggregate chunks.
//!
//! A crate of its own, below the storage engine: the TSDB writes and reads these
//! encodings, and the querier and store gateway decode them, without the querier
//! depending on a storage engine (`tsdb::chunk` re-exports this crate).

use bytes::Bytes;
use storeapi::histogram::{HistogramSample, HistogramValue};

/// Chunk encodings with Prometheus `chunkenc` numbering (the byte stored before chunk
/// data in `chunks/` segment files). The StoreAPI numbers them one lower.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Encoding {
    Xor = 1,
    Histogram = 2,
    FloatHistogram = 3,
    /// Thanos's downsampled aggregate chunk (`downsample.ChunkEncAggr`): five optional
    /// sub-chunks (count, sum, min, max, counter), see [`aggr`].
    Aggr = 0xff,
}

impl Encoding {
    pub fn from_byte(b: u8) -> Option<Encoding> {
        match b {
            1 => Some(Encoding::Xor),
            2 => Some(Encoding::Histogram),
            3 => Some(Encoding::FloatHistogram),
            0xff => Some(Encoding::Aggr),
            _ => None,
        }
    }
}

/// One encoded chunk with the time range it covers (both ends inclusive, milliseconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub min_time: i64,
    pub max_time: i64,
    pub encoding: Encoding,
    /// The raw chunk bytes; for XOR: 2-byte big-endian sample count + Gorilla bitstream.
    pub data: Bytes,
}

pub mod aggr;
pub mod aggr_histogram;
mod bstream;
pub mod encode;
pub mod float_histogram;
pub mod histogram;
pub mod histogram_cut;
pub mod histogram_layout;
#[cfg(test)]
mod histogram_testutil;
mod varbit;
pub mod xor;

pub use encode::SeriesEncoder;
pub use float_histogram::{FloatHistogramAppender, FloatHistogramIterator};
pub use histogram::{Appended, HistogramAppender, HistogramIterator};
pub use histogram_layout::CounterResetHeader;
pub use xor::{XorChunk, XorIterator};

/// Why a chunk could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("corrupt chunk: {0}")]
    Corrupt(&'static str),
    #[error("chunk is full (65535 samples)")]
    Full,
    #[error("unsupported chunk encoding {0:?}")]
    UnsupportedEncoding(Encoding),
    /// A histogram given to an appender whose buckets do not match its spans.
    #[error("histogram does not fit the chunk: {0}")]
    BadHistogram(&'static str),
}

/// A chunk read in place (a head's chunk under its series lock, a chunk lent to a
/// block writer): [`Chunk`] with borrowed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkView<'a> {
    pub min_time: i64,
    pub max_time: i64,
    pub encoding: Encoding,
    pub data: &'a [u8],
}

impl ChunkView<'_> {
    /// See [`Chunk::num_samples`].
    pub fn num_samples(&self) -> usize {
        if self.encoding == Encoding::Aggr {
            return aggr::aggr_num_samples(self.data);
        }
        if self.data.len() < 2 {
            return 0;
        }
        u16::from_be_bytes([self.data[0], self.data[1]]) as usize
    }

    /// An owned copy.
    pub fn to_chunk(&self) -> Chunk {
        Chunk {
            min_time: self.min_time,
            max_time: self.max_time,
            encoding: self.encoding,
            data: Bytes::copy_from_slice(self.data),
        }
    }
}

impl Chunk {
    /// Number of samples, from the chunk header (XOR: the first two bytes; Aggr: the
    /// windows of its count aggregate, as Thanos counts them in block stats).
    pub fn num_samples(&self) -> usize {
        self.view().num_samples()
    }

    /// The chunk, borrowed.
    pub fn view(&self) -> ChunkView<'_> {
        ChunkView {
            min_time: self.min_time,
            max_time: self.max_time,
            encoding: self.encoding,
            data: &self.data,
        }
    }

    /// Iterates the samples of a histogram chunk (either flavour); XOR and aggregate
    /// chunks are [`ChunkError::UnsupportedEncoding`].
    pub fn iter_histograms(&self) -> Result<HistogramSamples<'_>, ChunkError> {
        match self.encoding {
            Encoding::Histogram => Ok(HistogramSamples::Int(HistogramIterator::new(&self.data)?)),
            Encoding::FloatHistogram => Ok(HistogramSamples::Float(FloatHistogramIterator::new(
                &self.data,
            )?)),
            e => Err(ChunkError::UnsupportedEncoding(e)),
        }
    }

    /// Appends the timestamps of the chunk's samples to `out`, every field decoded (so a
    /// damaged chunk is an error) but no sample built. XOR and both histogram
    /// encodings; aggregate chunks are [`ChunkError::UnsupportedEncoding`].
    pub fn times(&self, out: &mut Vec<i64>) -> Result<(), ChunkError> {
        match self.encoding {
            Encoding::Xor => {
                for s in XorIterator::new(&self.data)? {
                    out.push(s?.0);
                }
            }
            Encoding::Histogram => {
                let mut it = HistogramIterator::new(&self.data)?;
                while let Some(t) = it.next_time() {
                    out.push(t?);
                }
            }
            Encoding::FloatHistogram => {
                let mut it = FloatHistogramIterator::new(&self.data)?;
                while let Some(t) = it.next_time() {
                    out.push(t?);
                }
            }
            e => return Err(ChunkError::UnsupportedEncoding(e)),
        }
        Ok(())
    }

    /// Iterates the float samples of an XOR chunk.
    pub fn iter(&self) -> Result<XorIterator<'_>, ChunkError> {
        match self.encoding {
            Encoding::Xor => XorIterator::new(&self.data),
            e => Err(ChunkError::UnsupportedEncoding(e)),
        }
    }
}

/// The samples of a histogram chunk of either encoding.
#[derive(Debug, Clone)]
pub enum HistogramSamples<'a> {
    Int(HistogramIterator<'a>),
    Float(FloatHistogramIterator<'a>),
}

impl Iterator for HistogramSamples<'_> {
    type Item = Result<HistogramSample, ChunkError>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(match self {
            HistogramSamples::Int(it) => it.next()?.map(|(t, h)| HistogramSample {
                t,
                h: HistogramValue::Int(Box::new(h)),
            }),
            HistogramSamples::Float(it) => it.next()?.map(|(t, h)| HistogramSample {
                t,
                h: HistogramValue::Float(Box::new(h)),
            }),
        })
    }
}

//! Chunks: compressed runs of samples of one series, as Prometheus stores them.

use bytes::Bytes;

/// Chunk encodings with Prometheus `chunkenc` numbering (the byte stored before chunk
/// data in `chunks/` segment files). The StoreAPI numbers them one lower.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Encoding {
    Xor = 1,
    Histogram = 2,
    FloatHistogram = 3,
}

impl Encoding {
    pub fn from_byte(b: u8) -> Option<Encoding> {
        match b {
            1 => Some(Encoding::Xor),
            2 => Some(Encoding::Histogram),
            3 => Some(Encoding::FloatHistogram),
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

//! Prometheus's streamed remote-read framing (`storage/remote/chunked.go`): each frame is
//! a uvarint length, the CRC32-Castagnoli of the message (4 bytes, big-endian), then the
//! message. Bytes arrive in arbitrary pieces; frames come out whole, checked, and bounded.

use bytes::{Buf, Bytes, BytesMut};

/// Largest frame accepted (Prometheus's `DefaultChunkedReadLimit`, 50 MB).
pub const FRAME_LIMIT: u64 = 50 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("remote-read frame of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge { size: u64, limit: u64 },
    #[error("remote-read frame length is not a valid uvarint")]
    BadLength,
    #[error("corrupted remote-read frame: checksum mismatch")]
    Checksum,
    #[error("remote-read stream ended inside a frame ({0} bytes left over)")]
    Truncated(usize),
}

/// Splits a byte stream into checked frames.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    limit: u64,
}

impl FrameDecoder {
    pub fn new(limit: u64) -> Self {
        FrameDecoder {
            buf: BytesMut::new(),
            limit,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole frame's message, `None` until enough bytes arrived.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        let Some((size, n)) = uvarint(&self.buf)? else {
            return Ok(None);
        };
        if size > self.limit {
            return Err(FrameError::TooLarge {
                size,
                limit: self.limit,
            });
        }
        // `size` <= limit, which fits in usize.
        let size = size as usize;
        if self.buf.len() < n + 4 + size {
            // Reserve once so a big frame is not re-copied piece by piece.
            self.buf.reserve(n + 4 + size - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(n);
        let crc = self.buf.get_u32();
        let msg = self.buf.split_to(size).freeze();
        if crc32c::crc32c(&msg) != crc {
            return Err(FrameError::Checksum);
        }
        Ok(Some(msg))
    }

    /// Called at the end of the stream: bytes left over are a cut-off frame.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated(self.buf.len()))
        }
    }
}

/// A uvarint at the start of `b`: (value, bytes used), `None` when incomplete.
fn uvarint(b: &[u8]) -> Result<Option<(u64, usize)>, FrameError> {
    let mut v: u64 = 0;
    for (i, &byte) in b.iter().enumerate().take(10) {
        if i == 9 && byte > 1 {
            return Err(FrameError::BadLength);
        }
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Ok(Some((v, i + 1)));
        }
    }
    if b.len() >= 10 {
        return Err(FrameError::BadLength);
    }
    Ok(None)
}

/// Encodes one frame (for tests and tools).
pub fn encode_frame(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 14);
    let mut v = msg.len() as u64;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out.extend_from_slice(&crc32c::crc32c(msg).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_any_split() {
        let msgs: Vec<Vec<u8>> = vec![b"a".to_vec(), vec![7u8; 300], Vec::new(), vec![1, 2, 3]];
        let stream: Vec<u8> = msgs.iter().flat_map(|m| encode_frame(m)).collect();
        for piece in [1, 2, 3, 7, 64, stream.len()] {
            let mut d = FrameDecoder::new(FRAME_LIMIT);
            let mut got = Vec::new();
            for p in stream.chunks(piece) {
                d.push(p);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f.to_vec());
                }
            }
            d.finish().unwrap();
            assert_eq!(got, msgs, "piece size {piece}");
        }
    }

    #[test]
    fn bad_frames_are_refused() {
        let mut f = encode_frame(b"hello");
        let last = f.len() - 1;
        f[last] ^= 1;
        let mut d = FrameDecoder::new(FRAME_LIMIT);
        d.push(&f);
        assert_eq!(d.next_frame(), Err(FrameError::Checksum));

        let mut d = FrameDecoder::new(4);
        d.push(&encode_frame(b"hello"));
        assert_eq!(
            d.next_frame(),
            Err(FrameError::TooLarge { size: 5, limit: 4 })
        );

        let mut d = FrameDecoder::new(FRAME_LIMIT);
        d.push(&[0xff; 11]);
        assert_eq!(d.next_frame(), Err(FrameError::BadLength));

        let mut d = FrameDecoder::new(FRAME_LIMIT);
        let f = encode_frame(b"hello");
        d.push(&f[..f.len() - 1]);
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.finish(), Err(FrameError::Truncated(f.len() - 1)));
    }
}

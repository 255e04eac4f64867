//! Snappy-decompressed remote-write bodies, bounded before a byte is produced.
//!
//! The local write path decompresses into a buffer its thread keeps between requests:
//! a fresh zeroed allocation per request (hundreds of kilobytes, cleared by `memset`
//! and faulted in page by page) was ~2% of the receiver's CPU (issue #26). A router
//! needs an owned body to forward, so it gets one.

use std::cell::RefCell;

use crate::write::WriteError;

/// A thread keeps a buffer up to this size after a request; a larger one (a rare large
/// request) is freed again, so idle threads hold little.
const KEEP_BYTES: usize = 8 << 20;

thread_local! {
    static BODY: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The length `compressed` decompresses to, refused over `limit` (named `which` in
/// the error) before anything is decompressed.
fn decompressed_len(compressed: &[u8], limit: usize, which: &str) -> Result<usize, WriteError> {
    match snap::raw::decompress_len(compressed) {
        Err(e) => Err(snappy_error(e)),
        Ok(n) if n > limit => Err(WriteError::TooLarge(format!(
            "decompressed body would be {n} bytes, over the {which} of {limit} bytes"
        ))),
        Ok(n) => Ok(n),
    }
}

fn snappy_error(e: snap::Error) -> WriteError {
    WriteError::BadRequest(format!(
        "snappy decode error (expected the snappy block format): {e}"
    ))
}

/// Decompresses a body into a new vector.
pub(crate) fn decompress(
    compressed: &[u8],
    limit: usize,
    which: &str,
) -> Result<Vec<u8>, WriteError> {
    let n = decompressed_len(compressed, limit, which)?;
    let mut out = vec![0; n];
    let got = snap::raw::Decoder::new()
        .decompress(compressed, &mut out)
        .map_err(snappy_error)?;
    out.truncate(got);
    Ok(out)
}

/// Calls `f` with the decompressed body, held in this thread's buffer.
pub(crate) fn with_decompressed<R>(
    compressed: &[u8],
    limit: usize,
    which: &str,
    f: impl FnOnce(&[u8]) -> Result<R, WriteError>,
) -> Result<R, WriteError> {
    let n = decompressed_len(compressed, limit, which)?;
    BODY.with(|cell| {
        let Ok(mut buf) = cell.try_borrow_mut() else {
            // Called from inside `f`: this thread's buffer is in use.
            return f(&decompress(compressed, limit, which)?);
        };
        if buf.len() < n {
            buf.resize(n, 0);
        }
        let got = snap::raw::Decoder::new().decompress(compressed, &mut buf[..n]);
        let r = match got {
            Ok(got) => f(&buf[..got]),
            Err(e) => Err(snappy_error(e)),
        };
        if buf.capacity() > KEEP_BYTES {
            *buf = Vec::new();
        }
        r
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) % 17)
            .collect()
    }

    #[test]
    fn bodies_decompressed_in_a_kept_buffer_equal_fresh_ones() {
        // Growing, shrinking and large (past what a thread keeps) in turn, on one
        // thread: each call sees exactly its own body, never a previous one's tail.
        for (k, n) in [1000usize, 50, 0, 300_000, 10, KEEP_BYTES + 1, 64, 200_000]
            .into_iter()
            .enumerate()
        {
            let plain = body(n, k as u8);
            let c = snap::raw::Encoder::new().compress_vec(&plain).unwrap();
            let got = with_decompressed(&c, usize::MAX, "limit", |b| Ok(b.to_vec())).unwrap();
            assert_eq!(got, plain, "body {k} of {n} bytes");
            assert_eq!(decompress(&c, usize::MAX, "limit").unwrap(), plain);
            // Nested use gets its own buffer.
            let nested = with_decompressed(&c, usize::MAX, "limit", |outer| {
                let inner = with_decompressed(&c, usize::MAX, "limit", |b| Ok(b.to_vec()))?;
                Ok((outer.to_vec(), inner))
            })
            .unwrap();
            assert_eq!(nested, (plain.clone(), plain));
        }
        assert!(BODY.with(|b| b.borrow().capacity()) <= KEEP_BYTES);
    }

    #[test]
    fn over_the_limit_and_corrupt_bodies_are_refused() {
        let plain = body(5000, 1);
        let c = snap::raw::Encoder::new().compress_vec(&plain).unwrap();
        let e = with_decompressed(&c, 4999, "size_bytes_limit", |_| Ok(())).unwrap_err();
        assert!(
            matches!(&e, WriteError::TooLarge(m) if m.contains("5000 bytes, over the size_bytes_limit of 4999")),
            "{e}"
        );
        assert!(matches!(
            decompress(&c, 4999, "x"),
            Err(WriteError::TooLarge(_))
        ));
        let mut bad = c.clone();
        let last = bad.len() - 1;
        bad.truncate(last);
        for r in [
            with_decompressed(&bad, usize::MAX, "x", |_| Ok(())).err(),
            decompress(&bad, usize::MAX, "x").err(),
            with_decompressed(b"\xff\xff\xff", usize::MAX, "x", |_| Ok(())).err(),
        ] {
            assert!(
                matches!(&r, Some(WriteError::BadRequest(m)) if m.contains("snappy")),
                "{r:?}"
            );
        }
    }
}

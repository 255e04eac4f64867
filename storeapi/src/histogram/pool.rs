//! Reused integer histograms for the ingest path.
//!
//! A remote-write request of native histograms decodes each one into a `Box<Histogram>`
//! with its own span and bucket vectors, and the head frees them all after the commit:
//! a profile of the receiver put a fifth of its time in malloc and free for them. The
//! decoder takes its boxes from here and the appender gives them back, so in the steady
//! state a request allocates nothing per histogram. The pool is per thread (decode and
//! commit run on the same thread), bounded in count and in the vector sizes it keeps.

use std::cell::RefCell;

use super::Histogram;
use crate::prefetch::{prefetch_bytes, prefetch_value};

/// Boxes kept per thread: one default Prometheus batch (`max_samples_per_send`).
const MAX_POOLED: usize = 2048;
/// A box whose vectors grew beyond this many elements is dropped, not kept.
const MAX_KEPT_LEN: usize = 512;

thread_local! {
    static POOL: RefCell<Vec<Box<Histogram>>> = const { RefCell::new(Vec::new()) };
}

/// How many takes ahead a pooled box is prefetched, and (about half as far, once its
/// box is in the cache) its vectors. A request's histograms are given back after its
/// commit has walked every series: by the next request, the boxes are out of the
/// cache, and the decoder's stores into them were a tenth of its time (issue #20).
const BOX_AHEAD: usize = 8;
const VECTORS_AHEAD: usize = 4;
/// At most this much of a pooled vector's room is prefetched.
const VECTOR_PREFETCH_BYTES: usize = 256;

/// An empty histogram (vectors empty, perhaps with capacity).
pub fn take() -> Box<Histogram> {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let h = p.pop();
        let n = p.len();
        if let Some(b) = n.checked_sub(BOX_AHEAD).and_then(|i| p.get(i)) {
            prefetch_value::<Histogram>(b);
        }
        if let Some(b) = n.checked_sub(VECTORS_AHEAD).and_then(|i| p.get(i)) {
            prefetch_room(&b.positive_spans);
            prefetch_room(&b.positive_buckets);
            prefetch_room(&b.negative_spans);
            prefetch_room(&b.negative_buckets);
        }
        h
    })
    .unwrap_or_default()
}

/// Prefetches the start of an empty vector's room, where the decoder writes next.
#[inline(always)]
fn prefetch_room<T>(v: &Vec<T>) {
    let room = (v.capacity() * std::mem::size_of::<T>()).min(VECTOR_PREFETCH_BYTES);
    if room > 0 {
        prefetch_bytes(v.as_ptr().cast(), room);
    }
}

/// Gives `h` back for a later [`take`] on this thread.
pub fn give(mut h: Box<Histogram>) {
    let too_big = h.positive_spans.capacity() > MAX_KEPT_LEN
        || h.negative_spans.capacity() > MAX_KEPT_LEN
        || h.positive_buckets.capacity() > MAX_KEPT_LEN
        || h.negative_buckets.capacity() > MAX_KEPT_LEN
        || h.custom_values.capacity() > MAX_KEPT_LEN;
    if too_big {
        return;
    }
    h.positive_spans.clear();
    h.negative_spans.clear();
    h.positive_buckets.clear();
    h.negative_buckets.clear();
    h.custom_values.clear();
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < MAX_POOLED {
            p.push(h);
        }
    });
}

/// Boxes pooled on this thread (tests).
pub fn pooled() -> usize {
    POOL.with(|p| p.borrow().len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram::Span;

    #[test]
    fn boxes_come_back_empty_with_their_room_and_the_pool_is_bounded() {
        let mut h = take();
        h.positive_spans.push(Span {
            offset: 1,
            length: 3,
        });
        h.positive_buckets.extend([1, 2, 3]);
        h.count = 7;
        let room = h.positive_buckets.capacity();
        give(h);
        let before = pooled();
        let h = take();
        assert_eq!(pooled(), before - 1);
        assert!(h.positive_spans.is_empty() && h.positive_buckets.is_empty());
        assert_eq!(h.positive_buckets.capacity(), room);
        // Huge vectors are not hoarded.
        let mut big = take();
        big.positive_buckets.reserve(MAX_KEPT_LEN + 1);
        let n = pooled();
        give(big);
        assert_eq!(pooled(), n);
        for _ in 0..MAX_POOLED + 10 {
            give(Box::default());
        }
        assert_eq!(pooled(), MAX_POOLED);
        give(h);
    }
}

//! Cache prefetch hints, for loops that walk many cold, scattered objects (a remote
//! write's series in the head, the decoder's pooled histograms): asked for a few items
//! ahead, their lines arrive while the current item is worked on.
//!
//! They live here, at the bottom of the crate graph, because both the storage engine
//! and the wire decoders use them.

/// Prefetches every cache line of `*v`.
#[inline(always)]
pub fn prefetch_value<T>(v: &T) {
    prefetch_bytes((v as *const T).cast(), std::mem::size_of::<T>());
}

/// Prefetches every cache line the `len` bytes at `p` touch.
#[inline(always)]
pub fn prefetch_bytes(p: *const u8, len: usize) {
    let skew = p as usize & 63;
    for off in (0..skew + len).step_by(64) {
        prefetch(p.wrapping_sub(skew).wrapping_add(off));
    }
}

/// A read-prefetch hint for the cache line holding `p`. It never faults, so any
/// address (even a stale one) is allowed; a no-op where the target has no stable hint.
#[inline(always)]
pub fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 only hints the cache; it never dereferences `p` architecturally
    // and never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

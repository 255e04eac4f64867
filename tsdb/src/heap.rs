//! glibc heap policy for long-running servers that hold a TSDB head (the receiver).
//!
//! glibc's malloc gives each thread that allocates under contention its own arena (up to
//! 8 per core) and keeps freed memory in them for reuse. A receiver appends samples on
//! the blocking threads that serve remote-write requests, so a head's chunks are spread
//! over many arenas; when the head is truncated after a block is cut, the freed chunks
//! leave holes in every arena, and the RSS stays at the high-water mark although the
//! data is gone (issue #26: 50k series at 100k samples/s, 2 min blocks, 110 MB in use of
//! 176 MB held over 12 arenas; `malloc_trim(0)` gave 39 MB back).
//!
//! So a server limits glibc to a few arenas ([`limit_arenas`], unless `MALLOC_ARENA_MAX`
//! is set) and calls [`trim`] after it released a large part of its heap (a head
//! truncation) to hand whole free pages back to the kernel. With another allocator, or
//! off glibc, both do nothing.
//!
//! `orrery store` has the same policy in `store::heap` (arenas + trim after large
//! requests); it predates this module.

/// Arenas a receiver lets glibc create: two keep concurrent appends from serialising on
/// one arena lock, without spreading the head over 8 per core.
pub const RECEIVE_ARENAS: i32 = 2;

/// Limits glibc's malloc to `n` arenas, unless `MALLOC_ARENA_MAX` is set (the operator's
/// setting wins). Call before threads are started: it applies to arenas created later.
pub fn limit_arenas(n: i32) {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    set_arena_max(n);
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_arena_max(n: i32) {
    // SAFETY: mallopt only changes glibc's tuning; M_ARENA_MAX takes effect for arenas
    // created afterwards.
    if unsafe { libc::mallopt(libc::M_ARENA_MAX, n) } == 0 {
        tracing::warn!(arenas = n, "mallopt(M_ARENA_MAX) refused");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_n: i32) {}

/// Gives free heap pages back to the kernel (`malloc_trim(0)`: whole free pages inside
/// every arena, not only at its top). It walks every arena under its lock, a few ms for
/// a few hundred MB, so call it on a blocking thread after a large release, not per
/// request. Returns whether glibc released anything.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim() -> bool {
    // SAFETY: malloc_trim only walks glibc's own arenas under their locks; with another
    // global allocator it finds (next to) nothing to free.
    unsafe { libc::malloc_trim(0) != 0 }
}

/// Without glibc there is nothing to trim.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Freed memory in the middle of the heap (a live allocation after it keeps the top
    /// from shrinking) is returned by `trim`: the process's anonymous RSS drops.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn trim_returns_freed_pages_in_the_middle_of_the_heap() {
        fn rss_anon_kib() -> u64 {
            std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("RssAnon:"))
                        .and_then(|v| v.split_whitespace().next()?.parse().ok())
                })
                .unwrap_or(0)
        }
        // 64 MiB in 16 KiB pieces (below the mmap threshold: they come from an arena),
        // touched so they are resident, then a live piece after them.
        let mut pieces: Vec<Vec<u8>> = (0..4096).map(|i| vec![i as u8 | 1; 16 << 10]).collect();
        let keep = vec![7u8; 16 << 10];
        let before_free = rss_anon_kib();
        // Free all but every 64th piece: the holes are far bigger than a page.
        let mut i = 0;
        pieces.retain(|_| {
            i += 1;
            i % 64 == 0
        });
        let after_free = rss_anon_kib();
        trim();
        let after_trim = rss_anon_kib();
        assert!(
            after_trim + 32 * 1024 < after_free.max(before_free),
            "RssAnon {before_free} KiB with the pieces, {after_free} KiB after free, \
             {after_trim} KiB after trim: expected trim to return most of 63 MiB"
        );
        assert_eq!(keep[0], 7);
        assert_eq!(pieces.len(), 64);
    }
}

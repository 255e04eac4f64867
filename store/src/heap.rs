//! glibc heap settings for the gateway. glibc's malloc gives each thread that
//! allocates under contention its own arena (up to 8 per core) and keeps freed memory
//! in them for reuse; the gateway's range buffers are filled on the blocking threads
//! of the bucket client and freed elsewhere, so after a large `Series` response the
//! freed memory stays spread over many arenas and the RSS stays at the response's
//! high-water mark although the data is gone (issue #16, `store_bench` broad queries
//! with 16 MiB caches: 295 MiB resident afterwards with glibc's default arenas, 95 MiB
//! with two; with the default caches two glibc arenas left less than jemalloc and
//! mimalloc did, see the README's Performance section).
//!
//! So `orrery store` limits glibc to [`STORE_ARENAS`] arenas (unless `MALLOC_ARENA_MAX`
//! is set), and after a request that fetched at least [`TRIM_AFTER_BYTES`] calls
//! `malloc_trim(0)` on a blocking thread (at most once per [`TRIM_EVERY`]) to give
//! whole free pages back. Other subcommands (the receiver) keep glibc's defaults.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Bucket bytes a request must have fetched before its memory is worth trimming.
pub const TRIM_AFTER_BYTES: u64 = 8 << 20;
/// Least time between two trims (a trim walks the heap).
pub const TRIM_EVERY: Duration = Duration::from_secs(1);

static LAST_TRIM_MS: AtomicU64 = AtomicU64::new(0);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether a request that fetched `fetched` bytes at `now` (ms) should trim, given
/// the last trim at `last` (ms).
fn due(fetched: u64, now: u64, last: u64) -> bool {
    fetched >= TRIM_AFTER_BYTES && now.saturating_sub(last) >= TRIM_EVERY.as_millis() as u64
}

/// Called when a request is over; trims in the background when it was large.
pub fn after_request(fetched: u64) {
    let now = now_ms();
    let last = LAST_TRIM_MS.load(Ordering::Relaxed);
    if !due(fetched, now, last)
        || LAST_TRIM_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn_blocking(trim);
    }
}

/// Arenas `orrery store` lets glibc create.
pub const STORE_ARENAS: i32 = 2;

/// Limits glibc's malloc to [`STORE_ARENAS`] arenas, unless `MALLOC_ARENA_MAX` is set.
/// Call before threads are started.
pub fn limit_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    set_arena_max(STORE_ARENAS);
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

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only walks glibc's own arenas under their locks; with another
    // global allocator it finds (next to) nothing to free.
    let released = unsafe { libc::malloc_trim(0) };
    tracing::debug!(
        released = released != 0,
        "malloc_trim after a large request"
    );
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_large_requests_and_not_too_often() {
        assert!(!due(TRIM_AFTER_BYTES - 1, 10_000, 0));
        assert!(due(TRIM_AFTER_BYTES, 10_000, 0));
        assert!(!due(TRIM_AFTER_BYTES, 10_000, 9_500));
        assert!(due(TRIM_AFTER_BYTES, 10_000, 9_000));
    }
}

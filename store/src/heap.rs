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
//! So `orrery store` ([`tune`]) limits glibc to [`STORE_ARENAS`] arenas and fixes its
//! mmap and trim thresholds ([`MMAP_THRESHOLD`], [`TRIM_THRESHOLD`]), each unless the
//! environment sets it. Left dynamic, glibc raises both after the first large buffer
//! is freed (the mmap threshold to that buffer's size, up to 32 MiB; the trim
//! threshold to twice it), so later multi-MiB range buffers come from the arenas, and
//! the free top of a thread arena is never returned: `malloc_trim` gives back free
//! chunks in the bins but not an arena's top. `store_bench` (16 MiB caches) measured
//! 62 MiB anonymous after the workload with 24 MiB in use and a trim returning
//! nothing; with fixed thresholds 30 MiB.
//!
//! And after a request that fetched at least [`TRIM_AFTER_BYTES`] it calls
//! `malloc_trim(0)` on a blocking thread to give whole free pages back. The trim runs
//! [`TRIM_DELAY`] after the request's last frame was queued: the frames still queued
//! for the client and the transport's buffers are freed by then (a trim at once left
//! them resident), and requests ending within that delay share one trim. Other
//! subcommands (the receiver) keep glibc's defaults.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Bucket bytes a request must have fetched before its memory is worth trimming.
pub const TRIM_AFTER_BYTES: u64 = 8 << 20;
/// How long after a large request its trim runs.
pub const TRIM_DELAY: Duration = Duration::from_millis(250);

/// A trim is scheduled and has not started.
static PENDING: AtomicBool = AtomicBool::new(false);

/// Whether a request that fetched `fetched` bytes schedules a trim, claiming the
/// pending flag (false: too small, or one is already scheduled).
fn schedule(fetched: u64, pending: &AtomicBool) -> bool {
    fetched >= TRIM_AFTER_BYTES
        && pending
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
}

/// Called when a request is over; trims in the background when it was large.
pub fn after_request(fetched: u64) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if !schedule(fetched, &PENDING) {
        return;
    }
    rt.spawn(async {
        tokio::time::sleep(TRIM_DELAY).await;
        PENDING.store(false, Ordering::Release);
        let _ = tokio::task::spawn_blocking(trim).await;
    });
}

/// Arenas `orrery store` lets glibc create.
pub const STORE_ARENAS: i32 = 2;

/// Allocations from this size up are mapped on their own and unmapped when freed.
pub const MMAP_THRESHOLD: i32 = 256 << 10;
/// Free memory at an arena's top beyond this is returned at once.
pub const TRIM_THRESHOLD: i32 = 1 << 20;

/// Limits glibc's malloc to [`STORE_ARENAS`] arenas and fixes its mmap and trim
/// thresholds, each unless the environment sets it (`MALLOC_ARENA_MAX`,
/// `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`, or any `GLIBC_TUNABLES`).
/// Call before threads are started.
pub fn tune() {
    let set = |name: &str| std::env::var_os(name).is_some();
    let tunables = set("GLIBC_TUNABLES");
    if !set("MALLOC_ARENA_MAX") && !tunables {
        mallopt("M_ARENA_MAX", M_ARENA_MAX, STORE_ARENAS);
    }
    if !set("MALLOC_MMAP_THRESHOLD_") && !tunables {
        mallopt("M_MMAP_THRESHOLD", M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
    if !set("MALLOC_TRIM_THRESHOLD_") && !tunables {
        mallopt("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
use libc::{M_ARENA_MAX, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD};
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
const M_ARENA_MAX: i32 = 0;
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
const M_MMAP_THRESHOLD: i32 = 0;
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
const M_TRIM_THRESHOLD: i32 = 0;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn mallopt(name: &str, param: i32, value: i32) {
    // SAFETY: mallopt only changes glibc's tuning; M_ARENA_MAX takes effect for arenas
    // created afterwards, the thresholds for later allocations and frees.
    if unsafe { libc::mallopt(param, value) } == 0 {
        tracing::warn!(param = name, value, "mallopt refused");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn mallopt(_name: &str, _param: i32, _value: i32) {}

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
    fn trims_only_large_requests_and_one_at_a_time() {
        let pending = AtomicBool::new(false);
        assert!(!schedule(TRIM_AFTER_BYTES - 1, &pending));
        assert!(schedule(TRIM_AFTER_BYTES, &pending));
        // Scheduled and not started: later requests share it.
        assert!(!schedule(TRIM_AFTER_BYTES, &pending));
        pending.store(false, Ordering::Release);
        assert!(schedule(TRIM_AFTER_BYTES, &pending));
    }
}

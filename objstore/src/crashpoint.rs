//! Deterministic crash injection for crash-safety tests.
//!
//! A test that SIGKILLs a process after a random delay only proves something when the
//! kill lands mid-run, and whether it does depends on the machine's speed. Instead, with
//! `ORRERY_CRASH_AFTER_BUCKET_WRITES=N` in its environment a process sends itself
//! SIGKILL right after its N-th successful bucket write (object upload, multipart
//! completion or delete), so a test can stop a compactor or shipper between any two of
//! its bucket writes, on any machine, and then check what readers see. Unset (always,
//! outside tests) it costs one relaxed atomic load per write.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable naming the write after which the process kills itself.
pub const ENV: &str = "ORRERY_CRASH_AFTER_BUCKET_WRITES";

static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
static WRITES: AtomicU64 = AtomicU64::new(0);

fn limit() -> Option<u64> {
    *LIMIT.get_or_init(|| {
        let v = std::env::var(ENV).ok()?;
        match v.trim().parse::<u64>() {
            Ok(n) if n > 0 => {
                tracing::warn!(
                    "{ENV}={n}: this process will SIGKILL itself after its {n}th bucket write (crash test)"
                );
                Some(n)
            }
            _ => {
                tracing::warn!("{ENV}={v:?} is not a positive integer; ignored");
                None
            }
        }
    })
}

/// Counts one successful bucket write; at the configured count the process dies by
/// SIGKILL (no destructors, no flushing: the same as an OOM kill or power loss for
/// everything outside the process).
pub(crate) fn bucket_write_done() {
    let Some(n) = limit() else { return };
    if WRITES.fetch_add(1, Ordering::SeqCst) + 1 >= n {
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        // SIGKILL cannot be caught; should delivery be delayed, never continue.
        loop {
            std::thread::park();
        }
    }
}

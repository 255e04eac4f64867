//! The remote-write listener's own tokio runtime, whose threads run each request to
//! completion: decode, append, WAL write and fsync on the thread that read the body.
//!
//! Handing a request's work to the blocking pool and its answer back costs a wake-up
//! and a context switch each way, and parks and unparks the pool's threads: at 50
//! requests/s of 2,000 samples, 10.7 context switches per request against 6.8 here (the
//! fsync's own included), and 7% of the receiver's CPU (issue #26, 5-minute soaks, 542
//! against 581 ns per sample). Blocking a runtime's workers is
//! only harmless where nothing else runs, so the remote-write listener, and only it, runs
//! here; `/metrics`, `/-/ready`, the StoreAPI and replication stay on the main runtime
//! and never wait behind a write. While every worker here waits on a slow disk, further
//! requests wait in their connections, as they would for a concurrency permit.

use std::io;

/// Threads of the write runtime: one per core (a request's work is CPU-bound but for
/// its fsync), at least two so that one request's fsync does not stop the listener.
fn workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .max(2)
}

/// Owns the write runtime; shuts it down without waiting when dropped, which an async
/// caller needs (dropping a runtime from async code panics).
pub(crate) struct WriteRuntime(Option<tokio::runtime::Runtime>);

impl WriteRuntime {
    pub(crate) fn new() -> io::Result<WriteRuntime> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers())
            .thread_name("orrery-write")
            .enable_all()
            .build()?;
        Ok(WriteRuntime(Some(rt)))
    }

    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        match &self.0 {
            Some(rt) => rt.handle(),
            // Only `drop` takes the runtime.
            None => unreachable!("the write runtime is only taken when dropped"),
        }
    }
}

impl Drop for WriteRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Its tasks run on its own threads, and dropping it from async code is allowed.
    #[tokio::test]
    async fn runs_on_its_own_threads_and_drops_in_async_code() {
        let rt = WriteRuntime::new().unwrap();
        let name = rt
            .handle()
            .spawn(async { std::thread::current().name().map(str::to_string) })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("orrery-write"));
        drop(rt);
    }
}

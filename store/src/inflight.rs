//! A gateway-wide bound on the bucket bytes being fetched and decoded at once
//! (`--store.max-inflight-fetch-bytes`). Every ranged GET of postings, series or chunks
//! takes its length from this budget before it starts and gives it back once its
//! buffer has been decoded, so N concurrent large queries wait for each other instead
//! of holding N times the range buffers. What one query may fetch in total is a
//! different limit (`--store.grpc.downloaded-bytes-limit`).

use tokio::sync::{Semaphore, SemaphorePermit};

/// Bytes of ranges in flight across all requests.
pub struct InflightBytes {
    /// `None`: unbounded.
    sem: Option<Semaphore>,
    /// Permits the semaphore was created with (what one range may take at most).
    limit: u32,
}

/// A share of the budget, given back when dropped.
pub struct Reservation<'a> {
    _permit: Option<SemaphorePermit<'a>>,
}

impl InflightBytes {
    /// A budget of `limit` bytes; 0 means unbounded. Limits past `u32::MAX` (4 GiB)
    /// are that (tokio counts permits in `u32` per acquisition).
    pub fn new(limit: u64) -> InflightBytes {
        if limit == 0 {
            return InflightBytes {
                sem: None,
                limit: 0,
            };
        }
        let limit = u32::try_from(limit).unwrap_or(u32::MAX);
        InflightBytes {
            sem: Some(Semaphore::new(limit as usize)),
            limit,
        }
    }

    /// Unbounded (tests, tools).
    pub fn unbounded() -> InflightBytes {
        InflightBytes::new(0)
    }

    /// Waits until `bytes` may be fetched. A range larger than the whole budget takes
    /// all of it (so it runs alone rather than never).
    pub async fn reserve(&self, bytes: u64) -> Reservation<'_> {
        let Some(sem) = &self.sem else {
            return Reservation { _permit: None };
        };
        let n = u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .clamp(1, self.limit);
        // The semaphore is never closed, so acquisition cannot fail; if it did, the
        // range goes ahead unbounded rather than failing the query.
        Reservation {
            _permit: sem.acquire_many(n).await.ok(),
        }
    }

    /// Bytes currently reserved (for metrics and tests).
    pub fn in_use(&self) -> u64 {
        match &self.sem {
            Some(sem) => u64::from(self.limit) - sem.available_permits() as u64,
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn waits_until_bytes_are_given_back() {
        let b = InflightBytes::new(100);
        let first = b.reserve(60).await;
        assert_eq!(b.in_use(), 60);
        // 60 + 60 > 100: the second waits for the first.
        let blocked = tokio::time::timeout(Duration::from_millis(50), b.reserve(60)).await;
        assert!(blocked.is_err(), "a second 60-byte range must wait");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), b.reserve(60))
            .await
            .expect("released bytes let the next range go");
        assert_eq!(b.in_use(), 60);
        drop(second);
        // Larger than the whole budget: takes all of it, not forever.
        let big = tokio::time::timeout(Duration::from_secs(5), b.reserve(1 << 30))
            .await
            .expect("an oversized range runs alone");
        assert_eq!(b.in_use(), 100);
        drop(big);
        assert_eq!(b.in_use(), 0);
    }

    #[tokio::test]
    async fn zero_is_unbounded() {
        let b = InflightBytes::new(0);
        let _a = b.reserve(u64::MAX).await;
        let _b = b.reserve(u64::MAX).await;
        assert_eq!(b.in_use(), 0);
    }
}

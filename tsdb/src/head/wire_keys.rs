//! A client's own encoding of a label set, byte for byte, mapped to the head series it
//! names: a remote-write sender encodes a series' labels the same way in every request,
//! so a receiver that has seen those bytes once can find the series without parsing,
//! validating, re-encoding and hashing its labels and comparing them through the symbol
//! table (together about a quarter of the receiver's CPU at 50k series, issue #26).
//! VictoriaMetrics keeps the same kind of cache from raw metric names to series ids.
//!
//! Exact: a hit compares the whole key, never a hash alone. Bounded: entries are added
//! until they hold `limit` bytes, then the cache only answers (a head with more series
//! than fit gains less, and pays a hash and a probe per miss).
//!
//! Entries hold the series themselves, so they are only valid while the head has
//! removed no series: each cache remembers the head's epoch ([`super::Head::epoch`]),
//! answers nothing for another one, and is emptied when the head truncates. A batch that
//! found series here and meets a new epoch at commit looks them up again by their labels
//! (see `Head::resolve`).
//!
//! A key is only put here after the caller accepted its labels under its own rules; the
//! caller's `tag` (e.g. a digest of its label limits) is part of every entry's validity,
//! so a change of rules empties the cache instead of letting an old verdict stand.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use hashbrown::HashTable;

use super::MemSeries;

/// Batches a full cache that found fewer than half of a batch's keys sits out before it
/// is asked again.
const SIT_OUT: u32 = 64;

/// Bytes an entry costs beyond its key: the slot (hash, boxed key, series pointer) and
/// the key's allocation header.
pub(crate) const ENTRY_OVERHEAD: usize = 48;

/// The head's cache of wire keys (see the module docs).
#[derive(Debug)]
pub(crate) struct WireKeys {
    inner: RwLock<Inner>,
    limit: usize,
    /// The byte limit was reached (until the next [`WireKeys::clear`]): inserts stop
    /// without taking the lock.
    full: AtomicBool,
    /// Lookups to skip (see [`WireKeys::worth_asking`]).
    sit_out: AtomicU32,
}

#[derive(Debug, Default)]
struct Inner {
    epoch: u64,
    tag: u64,
    table: HashTable<Slot>,
    bytes: usize,
}

#[derive(Debug)]
struct Slot {
    hash: u64,
    key: Box<[u8]>,
    series: Arc<MemSeries>,
}

/// The hash a wire key is looked up by (computed once per key by the caller: a miss
/// inserts under the same hash).
#[inline]
pub(crate) fn wire_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

impl WireKeys {
    /// A cache holding at most about `limit` bytes (0: off).
    pub(crate) fn new(limit: usize) -> WireKeys {
        WireKeys {
            inner: RwLock::new(Inner::default()),
            limit,
            full: AtomicBool::new(false),
            sit_out: AtomicU32::new(0),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.limit > 0
    }

    /// Whether a batch should be looked up here at all. A key not found costs its hash
    /// and a probe, and the caller's deferred work; a cache that is full and finds fewer
    /// than half of the keys asked (a head with many more series than it holds) costs
    /// more than it saves, so it sits out [`SIT_OUT`] batches before it is tried again.
    pub(crate) fn worth_asking(&self) -> bool {
        if !self.enabled() {
            return false;
        }
        self.sit_out
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_err()
    }

    /// Notes how a batch fared (see [`WireKeys::worth_asking`]).
    fn note_batch(&self, asked: usize, found: usize) {
        if self.full.load(Ordering::Relaxed) && found * 2 < asked {
            self.sit_out.store(SIT_OUT, Ordering::Relaxed);
        }
    }

    /// The series each key names, if it was put here under the same `epoch` and `tag`,
    /// appended to `out` in order. Two passes,
    /// as `Head::resolve`: the first finds each key's slot by hash and touches its key,
    /// so the cache misses of the batch overlap; the second compares the keys.
    pub(crate) fn get_many<'k>(
        &self,
        keys: impl ExactSizeIterator<Item = (u64, &'k [u8])> + Clone,
        epoch: u64,
        tag: u64,
        out: &mut Vec<Option<Arc<MemSeries>>>,
    ) {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        if inner.epoch != epoch || inner.tag != tag || inner.table.is_empty() {
            out.extend(std::iter::repeat_n(None, keys.len()));
            return;
        }
        let asked = keys.len();
        let start = out.len();
        let mut found: Vec<Option<&Slot>> = Vec::with_capacity(keys.len());
        found.extend(keys.clone().map(|(hash, key)| {
            inner
                .table
                .find(hash, |s| s.hash == hash && s.key.len() == key.len())
                .inspect(|s| {
                    // Every cache line of the key (a key is a few hundred bytes).
                    for b in s.key.iter().step_by(64) {
                        std::hint::black_box(b);
                    }
                })
        }));
        out.extend(keys.zip(found).map(|((hash, key), slot)| {
            match slot {
                Some(s) if *s.key == *key => Some(s.series.clone()),
                Some(_) => inner
                    .table
                    .find(hash, |s| s.hash == hash && *s.key == *key)
                    .map(|s| s.series.clone()),
                None => None,
            }
        }));
        self.note_batch(asked, out[start..].iter().flatten().count());
    }

    /// Remembers that `key` names `series` (valid for `epoch` and `tag`; entries of an
    /// earlier epoch or another tag are dropped first). Stops adding at the byte limit.
    pub(crate) fn insert_all<'k>(
        &self,
        epoch: u64,
        tag: u64,
        entries: impl IntoIterator<Item = (u64, &'k [u8], &'k Arc<MemSeries>)>,
    ) {
        if !self.enabled() {
            return;
        }
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if inner.epoch != epoch || inner.tag != tag {
            *inner = Inner {
                epoch,
                tag,
                ..Inner::default()
            };
            self.full.store(false, Ordering::Relaxed);
        } else if self.full.load(Ordering::Relaxed) {
            return;
        }
        for (hash, key, series) in entries {
            let cost = key.len() + ENTRY_OVERHEAD;
            if inner.bytes + cost > self.limit {
                self.full.store(true, Ordering::Relaxed);
                return;
            }
            if inner
                .table
                .find(hash, |s| s.hash == hash && *s.key == *key)
                .is_some()
            {
                continue;
            }
            inner.table.insert_unique(
                hash,
                Slot {
                    hash,
                    key: key.into(),
                    series: series.clone(),
                },
                |s| s.hash,
            );
            inner.bytes += cost;
        }
    }

    /// Forgets every entry (the head removed series), giving their memory back.
    pub(crate) fn clear(&self) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let (epoch, tag) = (inner.epoch, inner.tag);
        *inner = Inner {
            epoch,
            tag,
            ..Inner::default()
        };
        self.full.store(false, Ordering::Relaxed);
        self.sit_out.store(0, Ordering::Relaxed);
    }

    /// Entries and the bytes they are counted as.
    pub(crate) fn usage(&self) -> (usize, usize) {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        (inner.table.len(), inner.bytes)
    }
}

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

use super::{ARC_COUNTS, MemSeries, prefetch, prefetch_bytes};

/// Batches a full cache that found fewer than half of a batch's keys sits out before it
/// is asked again.
const SIT_OUT: u32 = 64;

/// Bytes an entry is counted as beyond its key: the key's allocation header (16) and its
/// share of the table, whose 32-byte slots are between 3/8 and 3/4 full (43 to 85 bytes
/// per entry).
pub(crate) const ENTRY_OVERHEAD: usize = 80;

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
    table: Table,
    bytes: usize,
}

#[derive(Debug)]
struct Slot {
    hash: u64,
    key: Box<[u8]>,
    series: Arc<MemSeries>,
}

/// An open-addressing table with linear probing, at most 3/4 full, that only grows (the
/// cache never removes one entry, it empties). Its own rather than a general hash map's
/// because a batch lookup must know where a key's slot is before it reads it: every key
/// of a 2,000-series request misses the CPU caches at its slot, its key bytes and its
/// series, and those misses only overlap when each is prefetched a pass ahead.
#[derive(Debug, Default)]
struct Table {
    /// Empty, or a power of two of slots.
    slots: Box<[Option<Slot>]>,
    len: usize,
}

impl Table {
    fn home(&self, hash: u64) -> usize {
        // xxh3's low bits are as good as its high ones.
        (hash as usize) & (self.slots.len() - 1)
    }

    /// Starts loading the slot a lookup of `hash` reads first.
    fn prefetch_home(&self, hash: u64) {
        if !self.slots.is_empty() {
            prefetch((&self.slots[self.home(hash)] as *const Option<Slot>).cast());
        }
    }

    /// The first slot from `hash`'s home on for which `eq` holds.
    fn find(&self, hash: u64, mut eq: impl FnMut(&Slot) -> bool) -> Option<&Slot> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(hash);
        // Terminates: the table is never full, so an empty slot ends every probe.
        loop {
            match &self.slots[i] {
                None => return None,
                Some(s) if s.hash == hash && eq(s) => return Some(s),
                Some(_) => i = (i + 1) & mask,
            }
        }
    }

    /// Slots to have after one more entry (the current count when no growth is due).
    fn capacity_for_one_more(&self) -> usize {
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            (self.slots.len() * 2).max(16)
        } else {
            self.slots.len()
        }
    }

    /// Adds a slot whose key is not in the table, growing it first when due.
    fn insert(&mut self, slot: Slot) {
        let cap = self.capacity_for_one_more();
        if cap != self.slots.len() {
            let old = std::mem::replace(
                &mut self.slots,
                std::iter::repeat_with(|| None).take(cap).collect(),
            );
            for s in old.into_vec().into_iter().flatten() {
                self.place(s);
            }
        }
        self.place(slot);
        self.len += 1;
    }

    fn place(&mut self, slot: Slot) {
        let mask = self.slots.len() - 1;
        let mut i = self.home(slot.hash);
        while self.slots[i].is_some() {
            i = (i + 1) & mask;
        }
        self.slots[i] = Some(slot);
    }
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
    /// appended to `out` in order. Three passes over the batch, so that its cache misses
    /// overlap instead of each waiting on the one before: the first prefetches every
    /// key's home slot; the second finds each key's slot by hash and length and
    /// prefetches its key bytes and the first line of its series; the third compares the
    /// keys and clones the series.
    pub(crate) fn get_many<'k>(
        &self,
        keys: impl ExactSizeIterator<Item = (u64, &'k [u8])> + Clone,
        epoch: u64,
        tag: u64,
        out: &mut Vec<Option<Arc<MemSeries>>>,
    ) {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        if inner.epoch != epoch || inner.tag != tag || inner.table.len == 0 {
            out.extend(std::iter::repeat_n(None, keys.len()));
            return;
        }
        let asked = keys.len();
        let start = out.len();
        for (hash, _) in keys.clone() {
            inner.table.prefetch_home(hash);
        }
        let mut found: Vec<Option<&Slot>> = Vec::with_capacity(keys.len());
        found.extend(keys.clone().map(|(hash, key)| {
            inner
                .table
                .find(hash, |s| s.key.len() == key.len())
                .inspect(|s| {
                    prefetch_bytes(s.key.as_ptr(), s.key.len());
                    // The line the third pass's clone writes (the commit prefetches the
                    // rest of the series as it gets to it).
                    prefetch(Arc::as_ptr(&s.series).cast::<u8>().wrapping_sub(ARC_COUNTS));
                })
        }));
        out.extend(keys.zip(found).map(|((hash, key), slot)| {
            match slot {
                Some(s) if *s.key == *key => Some(s.series.clone()),
                // Another key of the same hash and length before this one (or none).
                Some(_) => inner
                    .table
                    .find(hash, |s| *s.key == *key)
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
            if inner.table.find(hash, |s| *s.key == *key).is_some() {
                continue;
            }
            inner.table.insert(Slot {
                hash,
                key: key.into(),
                series: series.clone(),
            });
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
        (inner.table.len, inner.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(sref: u64) -> Arc<MemSeries> {
        MemSeries::bare(sref)
    }

    fn lookup(c: &WireKeys, keys: &[(u64, Vec<u8>)]) -> Vec<Option<u64>> {
        let mut out = Vec::new();
        c.get_many(keys.iter().map(|(h, k)| (*h, &k[..])), 1, 7, &mut out);
        out.iter().map(|s| s.as_ref().map(|s| s.sref)).collect()
    }

    /// Keys that share hashes and lengths (so every probe walks past other keys), across
    /// the table's growths: each finds its own series, and keys never put in find none.
    #[test]
    fn colliding_keys_find_their_own_series_across_growth() {
        let c = WireKeys::new(1 << 20);
        let key = |i: u64| (i % 5, format!("key-{i:04}").into_bytes());
        let keys: Vec<(u64, Vec<u8>)> = (0..300).map(key).collect();
        let all: Vec<Arc<MemSeries>> = (0..300).map(series).collect();
        for (i, chunk) in keys.chunks(37).enumerate() {
            c.insert_all(
                1,
                7,
                chunk
                    .iter()
                    .zip(&all[i * 37..])
                    .map(|((h, k), s)| (*h, &k[..], s)),
            );
        }
        assert_eq!(c.usage().0, 300);
        let inner = c.inner.read().unwrap();
        assert!(inner.table.len * 4 <= inner.table.slots.len() * 3);
        drop(inner);
        let want: Vec<Option<u64>> = (0..300).map(Some).collect();
        assert_eq!(lookup(&c, &keys), want);
        let mut reversed = keys.clone();
        reversed.reverse();
        let mut want_rev = want.clone();
        want_rev.reverse();
        assert_eq!(lookup(&c, &reversed), want_rev);
        let absent: Vec<(u64, Vec<u8>)> = (300..310).map(key).collect();
        assert_eq!(lookup(&c, &absent), vec![None; 10]);
        // A key equal but for its hash is another key.
        assert_eq!(lookup(&c, &[(9, keys[3].1.clone())]), vec![None]);
        // Putting a key again keeps its first series.
        c.insert_all(1, 7, [(keys[3].0, &keys[3].1[..], &all[0])]);
        assert_eq!(c.usage().0, 300);
        assert_eq!(lookup(&c, &keys[3..4]), vec![Some(3)]);
        // Another epoch or tag finds nothing.
        let mut out = Vec::new();
        c.get_many(keys.iter().map(|(h, k)| (*h, &k[..])), 2, 7, &mut out);
        assert!(out.iter().all(Option::is_none));
        c.clear();
        assert_eq!(c.usage(), (0, 0));
        assert_eq!(lookup(&c, &keys[..3]), vec![None; 3]);
    }
}

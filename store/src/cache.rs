//! Byte-bounded in-memory caches: chunks (`--store.chunk-cache-size`) and index
//! items — postings lists and series entries — (`--index-cache-size`). Entries are
//! evicted oldest-first once the bytes held would pass the limit, so memory stays
//! bounded whatever the bucket holds.
//!
//! Values are not kept as one heap allocation each: their bytes are appended to
//! segments of [`segment_size`] bytes and evicted a whole segment at a time (oldest
//! first, which is insertion order anyway). A cache of many small allocations pins
//! every heap page one of them landed on; after a large query the gateway's
//! transient range buffers had filled those pages, so glibc could not give them back
//! and the process stayed tens of MiB above its caches (issue #16, `store_bench`).
//! The limit also counts the hash table, so it bounds what the cache costs, not only
//! the payload.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::watch;
use tsdb::Chunk;
use tsdb::block::Ulid;
use tsdb::chunk::Encoding;

/// A value a [`ByteCache`] keeps as bytes in its segments plus a small fixed part
/// (`Meta`) in its table.
pub trait Cached: Sized {
    /// What is kept beside the bytes.
    type Meta: Copy;
    /// How many bytes [`Cached::write`] appends.
    fn byte_len(&self) -> usize;
    /// Appends the value's bytes to `out`; returns the fixed part.
    fn write(&self, out: &mut Vec<u8>) -> Self::Meta;
    /// The value back from its fixed part and its bytes.
    fn read(meta: Self::Meta, bytes: &[u8]) -> Self;
}

/// A chunk's time range is not kept: every reader knows it from the index (see
/// [`ChunkCache::get`]), and 16 bytes less per entry is 5–10% more chunks held.
impl Cached for Chunk {
    type Meta = Encoding;
    fn byte_len(&self) -> usize {
        self.data.len()
    }
    fn write(&self, out: &mut Vec<u8>) -> Encoding {
        out.extend_from_slice(&self.data);
        self.encoding
    }
    fn read(encoding: Encoding, bytes: &[u8]) -> Self {
        Chunk {
            min_time: 0,
            max_time: 0,
            encoding,
            data: Bytes::copy_from_slice(bytes),
        }
    }
}

/// Bytes of one segment for a cache of `limit` bytes: a sixteenth of it, so one
/// eviction frees little of the cache, within [64 KiB, 4 MiB], and at most half the
/// limit (tiny caches in tests).
pub fn segment_size(limit: usize) -> usize {
    (limit / 16).clamp(64 << 10, 4 << 20).min(limit / 2).max(1)
}

/// Where an entry's bytes are: segment number (wrapping), offset and length in it.
#[derive(Clone, Copy)]
struct Slot<M> {
    seg: u32,
    off: u32,
    len: u32,
    meta: M,
}

/// A map from keys to values holding at most `limit` bytes — its segments plus its
/// hash table — evicting the oldest insertions first. A limit of 0 caches nothing.
pub struct ByteCache<K, V: Cached> {
    limit: usize,
    segment: usize,
    inner: Mutex<Inner<K, V::Meta>>,
}

struct Inner<K, M> {
    map: HashMap<K, Slot<M>>,
    /// Values appended in insertion order.
    segs: VecDeque<Vec<u8>>,
    /// Number of `segs[0]`; segment numbers grow by one per new segment.
    first: u32,
    /// Capacity of the segments.
    seg_bytes: usize,
}

/// Buckets of a hash table with room for `cap` items without growing (hashbrown's
/// rule: fewer than 8 buckets keep one free, more are filled to 7/8; a power of two).
fn buckets_for(cap: usize) -> usize {
    match cap {
        0 => 0,
        1..=3 => 4,
        4..=7 => 8,
        _ => (cap.saturating_mul(8) / 7).next_power_of_two(),
    }
}

/// Items a table of `buckets` buckets holds before it grows.
fn capacity_of(buckets: usize) -> usize {
    if buckets < 8 {
        buckets.saturating_sub(1)
    } else {
        buckets / 8 * 7
    }
}

impl<K: Hash + Eq + Clone, V: Cached> ByteCache<K, V> {
    pub fn new(limit: usize) -> Self {
        ByteCache {
            limit,
            segment: segment_size(limit),
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                segs: VecDeque::new(),
                first: 0,
                seg_bytes: 0,
            }),
        }
    }

    /// Bytes of a table of `buckets` buckets: a slot and a control byte each.
    const fn table_bytes(buckets: usize) -> usize {
        buckets * (std::mem::size_of::<(K, Slot<V::Meta>)>() + 1)
    }

    /// Bytes of the table after one more insertion (it doubles when full).
    fn table_after_insert(map: &HashMap<K, Slot<V::Meta>>) -> usize {
        let cap = map.capacity();
        let buckets = if map.len() < cap {
            buckets_for(cap)
        } else {
            buckets_for(cap + 1).max(2 * buckets_for(cap))
        };
        debug_assert!(capacity_of(buckets) > map.len());
        Self::table_bytes(buckets)
    }

    pub fn get(&self, k: &K) -> Option<V> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let slot = g.map.get(k)?;
        let seg = g.segs.get(slot.seg.wrapping_sub(g.first) as usize)?;
        let bytes = seg.get(slot.off as usize..slot.off as usize + slot.len as usize)?;
        Some(V::read(slot.meta, bytes))
    }

    pub fn put(&self, k: K, v: V) {
        let n = v.byte_len();
        if n > u32::MAX as usize || n >= self.limit {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.map.contains_key(&k) {
            return;
        }
        // A value longer than a segment gets a segment of its own length.
        let cap = n.max(self.segment);
        loop {
            let room = g.segs.back().is_some_and(|s| s.capacity() - s.len() >= n);
            let total = g.seg_bytes + if room { 0 } else { cap } + Self::table_after_insert(&g.map);
            if total <= self.limit {
                if !room {
                    let seg = Vec::with_capacity(cap);
                    g.seg_bytes += seg.capacity();
                    g.segs.push_back(seg);
                }
                break;
            }
            if g.segs.is_empty() {
                return; // the value and a table for it do not fit
            }
            g.evict_oldest();
        }
        let seg = g.first.wrapping_add(g.segs.len() as u32 - 1);
        let Some(back) = g.segs.back_mut() else {
            return;
        };
        let off = back.len();
        let meta = v.write(back);
        debug_assert_eq!(back.len() - off, n);
        g.map.insert(
            k,
            Slot {
                seg,
                off: off as u32,
                len: n as u32,
                meta,
            },
        );
    }

    /// Bytes held: the segments' capacity and the table.
    pub fn bytes(&self) -> usize {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.seg_bytes + Self::table_bytes(buckets_for(g.map.capacity()))
    }

    /// Entries held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .len()
    }
}

impl<K: Hash + Eq, M> Inner<K, M> {
    /// Drops the oldest segment and its entries. The table is walked once per
    /// segment (a sixteenth of the cache), instead of keeping each key twice.
    fn evict_oldest(&mut self) {
        let Some(old) = self.segs.pop_front() else {
            return;
        };
        let seg = self.first;
        self.map.retain(|_, s| s.seg != seg);
        self.first = self.first.wrapping_add(1);
        self.seg_bytes -= old.capacity();
        // The table keeps its size after a burst of small entries; give it back once
        // it is mostly empty.
        if self.map.capacity() > 4 * self.map.len() + 1024 {
            self.map.shrink_to(2 * self.map.len());
        }
    }
}

/// Which keys some request is fetching right now, so that a concurrent request
/// wanting the same item waits for that fetch (and then takes the item from the cache)
/// instead of repeating it.
pub struct InFlight<K> {
    /// Keys being fetched; the receiver turns `true` (or its sender goes away) when
    /// the fetch is over.
    map: Mutex<HashMap<K, watch::Receiver<bool>>>,
}

impl<K> Default for InFlight<K> {
    fn default() -> Self {
        InFlight {
            map: Mutex::new(HashMap::new()),
        }
    }
}

/// Items a caller has undertaken to fetch (see [`InFlight::claim`]); dropping it —
/// after the items were put in the cache, or on failure — releases the waiters.
pub struct Claim<'a, K: Hash + Eq> {
    in_flight: &'a InFlight<K>,
    keys: Vec<K>,
    done: watch::Sender<bool>,
    /// Positions (in the caller's key list) this caller fetches.
    pub mine: Vec<usize>,
}

impl<K: Hash + Eq> Drop for Claim<'_, K> {
    fn drop(&mut self) {
        let mut g = self.in_flight.map.lock().unwrap_or_else(|e| e.into_inner());
        for k in &self.keys {
            g.remove(k);
        }
        // One large request grows the map to its key count (50,000 chunks a batch);
        // it would keep that size for the life of the process.
        let len = g.len();
        if g.capacity() > 4 * len + 1024 {
            g.shrink_to(2 * len);
        }
        drop(g);
        let _ = self.done.send(true);
    }
}

/// A request waits for the fetch of the item at this position of its key list.
pub type Wait = (usize, watch::Receiver<bool>);

impl<K: Hash + Eq + Clone> InFlight<K> {
    /// Splits the positions `missing` of `keys` into those the caller fetches (the
    /// claim) and those another request is already fetching (with a receiver that
    /// says when it is done; the item is then in the cache, unless that fetch failed
    /// or the cache dropped it). Without sharing (`share` false: no cache to hand the
    /// items over) the caller fetches everything.
    pub fn claim(&self, keys: &[K], missing: Vec<usize>, share: bool) -> (Claim<'_, K>, Vec<Wait>) {
        let (done, rx) = watch::channel(false);
        let mut claim = Claim {
            in_flight: self,
            keys: Vec::new(),
            done,
            mine: Vec::new(),
        };
        let mut waits = Vec::new();
        if !share {
            claim.mine = missing;
            return (claim, waits);
        }
        let mut g = self.map.lock().unwrap_or_else(|e| e.into_inner());
        for i in missing {
            let Some(k) = keys.get(i) else { continue };
            match g.get(k) {
                Some(other) => waits.push((i, other.clone())),
                None => {
                    g.insert(k.clone(), rx.clone());
                    claim.keys.push(k.clone());
                    claim.mine.push(i);
                }
            }
        }
        drop(g);
        (claim, waits)
    }
}

/// Chunks of all blocks by (block, chunk reference) (`--store.chunk-cache-size`),
/// and which of them some request is fetching, so concurrent queries over the same
/// data fetch each chunk once.
pub struct ChunkCache {
    items: ByteCache<(Ulid, u64), Chunk>,
    in_flight: InFlight<(Ulid, u64)>,
}

impl ChunkCache {
    pub fn new(limit: usize) -> ChunkCache {
        ChunkCache {
            items: ByteCache::new(limit),
            in_flight: InFlight::default(),
        }
    }

    /// The chunk at `k`, with the time range its index entry gives (`mint`, `maxt`).
    pub fn get(&self, k: &(Ulid, u64), mint: i64, maxt: i64) -> Option<Chunk> {
        let mut c = self.items.get(k)?;
        c.min_time = mint;
        c.max_time = maxt;
        Some(c)
    }

    pub fn put(&self, k: (Ulid, u64), v: Chunk) {
        self.items.put(k, v)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.items.bytes()
    }

    /// See [`InFlight::claim`].
    pub fn claim(
        &self,
        keys: &[(Ulid, u64)],
        missing: Vec<usize>,
    ) -> (Claim<'_, (Ulid, u64)>, Vec<Wait>) {
        self.in_flight.claim(keys, missing, self.items.limit > 0)
    }
}

/// An index item of one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IndexKey {
    /// The postings list starting at this offset of the index.
    Postings(Ulid, u64),
    /// The series entry with this ID.
    Series(Ulid, u32),
}

/// A cached index item: a decoded postings list, or a series entry's bytes (decoded
/// against the block's symbols when used; the bytes are the compact form).
#[derive(Debug, Clone)]
pub enum IndexValue {
    Postings(Arc<Vec<u32>>),
    Series(Bytes),
}

impl Cached for IndexValue {
    /// Whether the bytes are a postings list.
    type Meta = bool;
    fn byte_len(&self) -> usize {
        match self {
            IndexValue::Postings(p) => 4 * p.len(),
            IndexValue::Series(b) => b.len(),
        }
    }
    fn write(&self, out: &mut Vec<u8>) -> bool {
        match self {
            IndexValue::Postings(p) => {
                for x in p.iter() {
                    out.extend_from_slice(&x.to_le_bytes());
                }
                true
            }
            IndexValue::Series(b) => {
                out.extend_from_slice(b);
                false
            }
        }
    }
    fn read(postings: bool, bytes: &[u8]) -> Self {
        if postings {
            IndexValue::Postings(Arc::new(
                bytes
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ))
        } else {
            IndexValue::Series(Bytes::copy_from_slice(bytes))
        }
    }
}

/// Postings lists and series entries of all blocks (Thanos's in-memory index cache),
/// and which of them some request is fetching right now.
pub struct IndexCache {
    items: ByteCache<IndexKey, IndexValue>,
    in_flight: InFlight<IndexKey>,
}

impl IndexCache {
    pub fn new(limit: usize) -> IndexCache {
        IndexCache {
            items: ByteCache::new(limit),
            in_flight: InFlight::default(),
        }
    }

    pub fn get(&self, k: &IndexKey) -> Option<IndexValue> {
        self.items.get(k)
    }

    pub fn put(&self, k: IndexKey, v: IndexValue) {
        self.items.put(k, v)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.items.bytes()
    }

    /// See [`InFlight::claim`].
    pub fn claim(
        &self,
        keys: &[IndexKey],
        missing: Vec<usize>,
    ) -> (Claim<'_, IndexKey>, Vec<Wait>) {
        self.in_flight.claim(keys, missing, self.items.limit > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Series = ByteCache<IndexKey, IndexValue>;

    #[test]
    fn evicts_oldest_beyond_the_limit() {
        // Room for three 40-byte entries in one segment, and their table.
        let limit = 3 * 40 + Series::table_bytes(4);
        let c = IndexCache::new(2 * limit);
        let id = Ulid::default();
        for i in 0..5u32 {
            c.put(
                IndexKey::Series(id, i),
                IndexValue::Series(Bytes::from(vec![i as u8; 40])),
            );
        }
        assert!(c.bytes() <= 2 * limit);
        assert!(c.get(&IndexKey::Series(id, 0)).is_none());
        match c.get(&IndexKey::Series(id, 4)) {
            Some(IndexValue::Series(b)) => assert_eq!(&b[..], &[4u8; 40][..]),
            other => panic!("series 4: {other:?}"),
        }
        // Too big for the whole cache: not kept.
        c.put(
            IndexKey::Postings(id, 1),
            IndexValue::Postings(Arc::new(vec![0; 1000])),
        );
        assert!(c.get(&IndexKey::Postings(id, 1)).is_none());
        let none = IndexCache::new(0);
        none.put(
            IndexKey::Series(id, 0),
            IndexValue::Series(Bytes::from_static(b"x")),
        );
        assert_eq!(none.bytes(), 0);
        assert!(none.get(&IndexKey::Series(id, 0)).is_none());
    }

    /// Random values of random sizes (some longer than a segment) through a cache
    /// several times smaller than all of them: every value read back is the one put,
    /// what is held never passes the limit, the newest entries are the ones kept, and
    /// the segments' memory is within the accounted bytes.
    #[test]
    fn reads_back_what_was_put_within_the_limit() {
        let limit = 2 << 20;
        let c: Series = ByteCache::new(limit);
        let id = Ulid::default();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let value = |i: u32, len: usize| -> Vec<u8> {
            (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
        };
        let mut lens = Vec::new();
        for i in 0..20_000u32 {
            let len = match next() % 500 {
                0 => 200_000 + (next() % 300_000) as usize, // longer than a segment
                _ => (next() % 600) as usize,
            };
            lens.push(len);
            if i % 3 == 0 {
                let p: Vec<u32> = (0..len as u32 / 4).map(|x| x * 7 + i).collect();
                c.put(
                    IndexKey::Postings(id, i as u64),
                    IndexValue::Postings(Arc::new(p)),
                );
            } else {
                c.put(
                    IndexKey::Series(id, i),
                    IndexValue::Series(Bytes::from(value(i, len))),
                );
            }
            assert!(c.bytes() <= limit, "{} > {limit} after {i}", c.bytes());
        }
        let segs: usize = {
            let g = c.inner.lock().unwrap();
            g.segs.iter().map(|s| s.capacity()).sum()
        };
        assert!(segs <= c.bytes());
        let mut held = 0;
        let mut newest_missing = None;
        for i in (0..20_000u32).rev() {
            let got = if i % 3 == 0 {
                c.get(&IndexKey::Postings(id, i as u64))
            } else {
                c.get(&IndexKey::Series(id, i))
            };
            match got {
                Some(IndexValue::Postings(p)) => {
                    assert_eq!(i % 3, 0);
                    let want: Vec<u32> = (0..lens[i as usize] as u32 / 4)
                        .map(|x| x * 7 + i)
                        .collect();
                    assert_eq!(*p, want, "postings {i}");
                    held += 1;
                }
                Some(IndexValue::Series(b)) => {
                    assert_ne!(i % 3, 0);
                    assert_eq!(&b[..], &value(i, lens[i as usize])[..], "series {i}");
                    held += 1;
                }
                None => {
                    newest_missing.get_or_insert(i);
                }
            }
        }
        assert_eq!(held, c.len());
        assert!(held > 500, "only {held} entries held");
        // FIFO: after the first gap (the newest evicted entry) only a few entries of
        // the same segment as the newest kept ones could be present; none are older.
        let gap = newest_missing.expect("some entries were evicted");
        let older_held = (0..gap)
            .filter(|&i| {
                if i % 3 == 0 {
                    c.get(&IndexKey::Postings(id, i as u64)).is_some()
                } else {
                    c.get(&IndexKey::Series(id, i)).is_some()
                }
            })
            .count();
        assert_eq!(older_held, 0, "entries older than an evicted one are held");
    }

    /// The table model matches the standard hash map: the buckets it derives from a
    /// capacity give that capacity back, and an insertion into a full map gives the
    /// capacity of the doubled table.
    #[test]
    fn the_table_model_matches_the_hash_map() {
        let mut m: HashMap<u64, u64> = HashMap::new();
        for i in 0..100_000u64 {
            let cap = m.capacity();
            let full = m.len() == cap;
            m.insert(i, i);
            assert_eq!(
                capacity_of(buckets_for(m.capacity())),
                m.capacity(),
                "at {i}"
            );
            if full {
                let predicted = buckets_for(cap + 1).max(2 * buckets_for(cap));
                assert_eq!(buckets_for(m.capacity()), predicted, "growth at {i}");
            }
        }
    }

    #[test]
    fn chunks_keep_their_times_and_encoding() {
        let c = ChunkCache::new(1 << 20);
        let id = Ulid::default();
        let chunk = Chunk {
            min_time: -5,
            max_time: 1_700_000_000_000,
            encoding: Encoding::Xor,
            data: Bytes::from_static(b"\x00\x02abc"),
        };
        c.put((id, 42), chunk.clone());
        let got = c.get(&(id, 42), -5, 1_700_000_000_000).expect("cached");
        assert_eq!(got, chunk);
        assert!(c.get(&(id, 43), 0, 1).is_none());
    }

    #[test]
    fn the_in_flight_map_gives_back_its_room() {
        let c = ChunkCache::new(1 << 20);
        let id = Ulid::default();
        let keys: Vec<(Ulid, u64)> = (0..100_000u64).map(|r| (id, r)).collect();
        let (claim, _) = c.claim(&keys, (0..keys.len()).collect());
        assert!(c.in_flight.map.lock().unwrap().capacity() >= 100_000);
        drop(claim);
        assert!(c.in_flight.map.lock().unwrap().capacity() < 2048);
    }

    #[tokio::test]
    async fn a_second_claim_waits_for_the_first() {
        let c = IndexCache::new(1 << 20);
        let id = Ulid::default();
        let keys = [IndexKey::Series(id, 1), IndexKey::Series(id, 2)];
        let (first, waits) = c.claim(&keys, vec![0]);
        assert_eq!((first.mine.clone(), waits.len()), (vec![0], 0));
        let (second, mut waits) = c.claim(&keys, vec![0, 1]);
        assert_eq!(second.mine, vec![1]);
        assert_eq!(waits.len(), 1);
        let (i, rx) = &mut waits[0];
        assert_eq!(*i, 0);
        assert!(!*rx.borrow());
        c.put(keys[0], IndexValue::Series(Bytes::from_static(b"entry")));
        drop(first);
        rx.wait_for(|d| *d).await.unwrap();
        assert!(c.get(&keys[0]).is_some());
        // Released: the next caller claims the key itself.
        drop(second);
        let (third, waits) = c.claim(&keys, vec![0, 1]);
        assert_eq!((third.mine.clone(), waits.len()), (vec![0, 1], 0));
    }
}

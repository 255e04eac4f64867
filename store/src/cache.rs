//! Byte-bounded in-memory caches: chunks (`--store.chunk-cache-size`) and index
//! items — postings lists and series entries — (`--index-cache-size`). Entries are
//! evicted oldest-first once the bytes held would pass the limit, so memory stays
//! bounded whatever the bucket holds.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::watch;
use tsdb::Chunk;
use tsdb::block::Ulid;

/// What a cache entry costs besides its payload (key, map slot, queue slot).
const ENTRY_OVERHEAD: usize = 64;

/// A value that knows how many bytes it holds.
pub trait Weigh {
    fn weight(&self) -> usize;
}

impl Weigh for Chunk {
    fn weight(&self) -> usize {
        self.data.len() + ENTRY_OVERHEAD
    }
}

/// A map from keys to values holding at most `limit` bytes (by [`Weigh`]), evicting
/// the oldest insertions first. A limit of 0 caches nothing.
pub struct ByteCache<K, V> {
    limit: usize,
    inner: Mutex<Inner<K, V>>,
}

struct Inner<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
    bytes: usize,
}

impl<K: Hash + Eq + Clone, V: Weigh + Clone> ByteCache<K, V> {
    pub fn new(limit: usize) -> Self {
        ByteCache {
            limit,
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                order: VecDeque::new(),
                bytes: 0,
            }),
        }
    }

    pub fn get(&self, k: &K) -> Option<V> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.map.get(k).cloned()
    }

    pub fn put(&self, k: K, v: V) {
        let size = v.weight();
        if size > self.limit {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.map.contains_key(&k) {
            return;
        }
        while g.bytes + size > self.limit {
            let Some(old) = g.order.pop_front() else {
                break;
            };
            if let Some(v) = g.map.remove(&old) {
                g.bytes -= v.weight();
            }
        }
        g.map.insert(k.clone(), v);
        g.order.push_back(k);
        g.bytes += size;
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).bytes
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

    pub fn get(&self, k: &(Ulid, u64)) -> Option<Chunk> {
        self.items.get(k)
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

impl Weigh for IndexValue {
    fn weight(&self) -> usize {
        ENTRY_OVERHEAD
            + match self {
                IndexValue::Postings(p) => 4 * p.len(),
                IndexValue::Series(b) => b.len(),
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

    #[test]
    fn evicts_oldest_beyond_the_limit() {
        let c = IndexCache::new(3 * (ENTRY_OVERHEAD + 40));
        let id = Ulid::default();
        for i in 0..5u32 {
            c.put(
                IndexKey::Series(id, i),
                IndexValue::Series(Bytes::from(vec![0u8; 40])),
            );
        }
        assert!(c.bytes() <= 3 * (ENTRY_OVERHEAD + 40));
        assert!(c.get(&IndexKey::Series(id, 0)).is_none());
        assert!(c.get(&IndexKey::Series(id, 4)).is_some());
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

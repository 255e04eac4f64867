//! Byte-bounded in-memory caches: chunks (`--store.chunk-cache-size`) and index
//! items — postings lists and series entries — (`--index-cache-size`). Entries are
//! evicted oldest-first once the bytes held would pass the limit, so memory stays
//! bounded whatever the bucket holds.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
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

/// Chunks by (block, chunk reference).
pub type ChunkCache = ByteCache<(Ulid, u64), Chunk>;

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

/// Postings lists and series entries of all blocks (Thanos's in-memory index cache).
pub type IndexCache = ByteCache<IndexKey, IndexValue>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_oldest_beyond_the_limit() {
        let c: IndexCache = ByteCache::new(3 * (ENTRY_OVERHEAD + 40));
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
        let none: IndexCache = ByteCache::new(0);
        none.put(
            IndexKey::Series(id, 0),
            IndexValue::Series(Bytes::from_static(b"x")),
        );
        assert_eq!(none.bytes(), 0);
    }
}

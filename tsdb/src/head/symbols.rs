//! The head's label strings, each held once and named by a `u32` id: a series stores its
//! labels as ids (its *key*, [`encode_key`]), not as text.
//!
//! At a million series the label text was the largest single cost of a head series
//! (~184 bytes of `name\xffvalue\xff` per series for the benchmark's 9 labels, against
//! ~30 bytes of ids), while a fleet's label values repeat across many series (issue #26).
//! Prometheus's `dedupelabels` build makes the same trade.
//!
//! Ids are varints in a key, so a key is a prefix-free byte string: two keys are equal
//! exactly when their label sets are, and one key is a byte prefix of another exactly
//! when its label set is a prefix of the other's.
//!
//! A string lives while a series refers to it: each id counts the series keys holding
//! it. A series gives its references back when it is dropped (not when the head removes
//! it: a reader may still hold it and read its labels), so an id is never reused while a
//! live series names it. The drop never waits for the table: when the table is busy the
//! ids are queued and released at the next write.

use std::cmp::Ordering;
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use hashbrown::HashTable;

use storeapi::labels::short_eq;

use crate::block::encoding::put_uvarint;

/// The string table. Read through [`Symbols::read`].
#[derive(Debug, Default)]
pub(crate) struct Table {
    /// By id; a free slot holds an empty string and no references.
    entries: Vec<Entry>,
    /// Ids by the hash of their string.
    by_str: HashTable<u32>,
    /// Free ids, reused first (keeps ids, and so keys, short).
    free: Vec<u32>,
}

#[derive(Debug)]
struct Entry {
    s: Box<str>,
    refs: u32,
}

/// XXH3: for strings of a few to a few hundred bytes it takes about half of XXH64's
/// time, and every label string of every request is hashed (issue #26). In memory only.
#[inline]
fn str_hash(s: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(s)
}

impl Table {
    /// The string of `id` (empty for an id the table does not hold, which no live key
    /// names).
    #[inline]
    pub(crate) fn get(&self, id: u32) -> &str {
        self.entries.get(id as usize).map_or("", |e| &e.s)
    }

    /// Strings held (with at least one reference).
    pub(crate) fn len(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    /// The id of `s`, taking one reference to it (created when missing).
    fn acquire(&mut self, s: &[u8]) -> u32 {
        let h = str_hash(s);
        let entries = &mut self.entries;
        if let Some(&id) = self
            .by_str
            .find(h, |&id| entries[id as usize].s.as_bytes() == s)
        {
            entries[id as usize].refs += 1;
            return id;
        }
        // Callers pass parts of a validated key: UTF-8 by construction. Anything else
        // is stored lossily rather than trusted.
        let owned: Box<str> = String::from_utf8_lossy(s).into();
        let e = Entry { s: owned, refs: 1 };
        let id = match self.free.pop() {
            Some(id) => {
                self.entries[id as usize] = e;
                id
            }
            None => {
                self.entries.push(e);
                (self.entries.len() - 1) as u32
            }
        };
        let entries = &self.entries;
        self.by_str
            .insert_unique(h, id, |&i| str_hash(entries[i as usize].s.as_bytes()));
        id
    }

    /// Gives back one reference to `id`; the string is freed with its last one.
    fn release(&mut self, id: u32) {
        let Some(e) = self.entries.get_mut(id as usize) else {
            return;
        };
        if e.refs == 0 {
            return;
        }
        e.refs -= 1;
        if e.refs > 0 {
            return;
        }
        let s = std::mem::take(&mut e.s);
        if let Ok(slot) = self.by_str.find_entry(str_hash(s.as_bytes()), |&i| i == id) {
            slot.remove();
        }
        self.free.push(id);
    }
}

/// A head's symbol table (see the module doc).
#[derive(Default)]
pub(crate) struct Symbols {
    table: RwLock<Table>,
    /// Ids given back by series dropped while the table was busy.
    released: Mutex<Vec<u32>>,
}

/// Counts only: every series points at the table, so printing a series must not print
/// every string of the head.
impl std::fmt::Debug for Symbols {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `try_read`: a caller may already hold the table.
        let len = self.table.try_read().map(|t| t.len()).ok();
        f.debug_struct("Symbols")
            .field("len", &len)
            .finish_non_exhaustive()
    }
}

impl Symbols {
    /// Shared access for decoding and comparing keys. Never hold it while taking the
    /// head's index lock (the index lock comes first), nor while waiting on another
    /// thread that reads the table.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Table> {
        let mut t = self.table.write().unwrap_or_else(|e| e.into_inner());
        self.apply_released(&mut t);
        t
    }

    fn apply_released(&self, t: &mut Table) {
        let ids = std::mem::take(&mut *self.released.lock().unwrap_or_else(|e| e.into_inner()));
        for id in ids {
            t.release(id);
        }
    }

    /// Appends the key of the series whose text key (`name 0xff value 0xff …`, see
    /// [`super::labels_key`]) is `text` to `out`, taking a reference to each string.
    pub(crate) fn encode_key(&self, text: &[u8], out: &mut Vec<u8>) {
        let Some(body) = text.strip_suffix(&[0xff]) else {
            return;
        };
        let mut t = self.write();
        for part in body.split(|&b| b == 0xff) {
            put_uvarint(out, u64::from(t.acquire(part)));
        }
    }

    /// Gives back the references of `key` (a dropped series). Never blocks on the table.
    pub(crate) fn release_key(&self, key: &[u8]) {
        match self.table.try_write() {
            Ok(mut t) => {
                for id in ids(key) {
                    t.release(id);
                }
            }
            Err(_) => self
                .released
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(ids(key)),
        }
    }

    /// Releases what dropped series queued (after the head removed series).
    pub(crate) fn collect(&self) {
        drop(self.write());
    }
}

/// The id starting at `key[*i]`, moving `*i` past it; `None` at the end.
#[inline(always)]
fn next_id(key: &[u8], i: &mut usize) -> Option<u32> {
    let mut v = 0u32;
    let mut shift = 0u32;
    loop {
        let b = *key.get(*i)?;
        *i += 1;
        v |= u32::from(b & 0x7f).wrapping_shl(shift);
        if b < 0x80 {
            return Some(v);
        }
        shift += 7;
    }
}

/// The ids of a key, in order.
#[inline]
pub(crate) fn ids(key: &[u8]) -> impl Iterator<Item = u32> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || next_id(key, &mut i))
}

/// Whether `key` names the same labels as the text key `text`. On the ingest path for
/// every sample of a known series, so short strings are compared without a `memcmp`
/// call (a call per label cost more than the old single `memcmp` of a text key).
#[inline]
pub(crate) fn key_eq_text(t: &Table, key: &[u8], text: &[u8]) -> bool {
    let mut p = 0;
    let mut i = 0;
    while let Some(id) = next_id(key, &mut i) {
        let s = t.get(id).as_bytes();
        let end = p + s.len();
        match (text.get(p..end), text.get(end)) {
            (Some(part), Some(&0xff)) if short_eq(part, s) => p = end + 1,
            _ => return false,
        }
    }
    p == text.len()
}

/// Appends the text key of `key` to `out`.
pub(crate) fn write_text(t: &Table, key: &[u8], out: &mut Vec<u8>) {
    for id in ids(key) {
        out.extend_from_slice(t.get(id).as_bytes());
        out.push(0xff);
    }
}

/// The labels of `key`.
pub(crate) fn labels(t: &Table, key: &[u8]) -> storeapi::Labels {
    let mut out = Vec::new();
    let mut it = ids(key);
    while let (Some(n), Some(v)) = (it.next(), it.next()) {
        out.push(storeapi::Label::new(t.get(n), t.get(v)));
    }
    storeapi::Labels::from_sorted_unchecked(out)
}

/// Orders keys as their label sets are ordered (name, then value, label by label; a
/// prefix first). Equal ids are equal strings, so only the first differing pair of ids
/// reads the table.
#[inline]
pub(crate) fn cmp(t: &Table, a: &[u8], b: &[u8]) -> Ordering {
    // Skip the common byte prefix, then back up to the start of the varint it ends in
    // (a varint's last byte is < 0x80).
    let n = a.len().min(b.len());
    let mut i = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(n);
    while i > 0 && a[i - 1] >= 0x80 {
        i -= 1;
    }
    let (mut x, mut y) = (ids(&a[i..]), ids(&b[i..]));
    loop {
        match (x.next(), y.next()) {
            (Some(p), Some(q)) if p == q => {}
            (Some(p), Some(q)) => return t.get(p).cmp(t.get(q)),
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::{labels_from_key, labels_key};
    use storeapi::{Label, Labels};

    fn text(pairs: &[(&str, &str)]) -> Vec<u8> {
        let l =
            Labels::from_sorted_unchecked(pairs.iter().map(|(n, v)| Label::new(*n, *v)).collect());
        let mut out = Vec::new();
        labels_key(&l, &mut out);
        out
    }

    fn key(s: &Symbols, pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut k = Vec::new();
        s.encode_key(&text(pairs), &mut k);
        k
    }

    #[test]
    fn keys_round_trip_and_compare_with_text() {
        let s = Symbols::default();
        let a = [("__name__", "up"), ("job", "a")];
        let k = key(&s, &a);
        let t = s.read();
        assert!(key_eq_text(&t, &k, &text(&a)));
        assert!(!key_eq_text(
            &t,
            &k,
            &text(&[("__name__", "up"), ("job", "ab")])
        ));
        assert!(!key_eq_text(&t, &k, &text(&[("__name__", "up")])));
        assert!(!key_eq_text(
            &t,
            &k,
            &text(&[("__name__", "up"), ("job", "a"), ("x", "")])
        ));
        let mut out = Vec::new();
        write_text(&t, &k, &mut out);
        assert_eq!(out, text(&a));
        assert_eq!(labels(&t, &k), labels_from_key(&text(&a)).unwrap());
        // Shared strings are held once: `b` is the only new one.
        drop(t);
        assert_eq!(s.read().len(), 4);
        let _k2 = key(&s, &[("__name__", "up"), ("job", "b")]);
        assert_eq!(s.read().len(), 5);
    }

    #[test]
    fn strings_are_freed_with_their_last_reference_and_ids_reused() {
        let s = Symbols::default();
        let k1 = key(&s, &[("a", "1")]);
        let k2 = key(&s, &[("a", "2")]);
        assert_eq!(s.read().len(), 3);
        s.release_key(&k1);
        assert_eq!(s.read().len(), 2, "\"1\" freed, \"a\" still named by k2");
        let k3 = key(&s, &[("a", "3")]);
        assert_eq!(s.read().len(), 3);
        let t = s.read();
        assert_eq!(
            labels(&t, &k2),
            labels_from_key(&text(&[("a", "2")])).unwrap()
        );
        assert_eq!(
            labels(&t, &k3),
            labels_from_key(&text(&[("a", "3")])).unwrap()
        );
        assert_eq!(t.entries.len(), 3, "the freed id was reused");
        drop(t);
        // Released while the table is read: queued, applied at the next write.
        let guard = s.read();
        s.release_key(&k2);
        assert_eq!(guard.len(), 3);
        drop(guard);
        s.collect();
        assert_eq!(s.read().len(), 2);
    }

    #[test]
    fn many_ids_take_multi_byte_varints() {
        let s = Symbols::default();
        let keys: Vec<(Vec<u8>, String)> = (0..20_000)
            .map(|i| {
                let v = format!("v{i}");
                (key(&s, &[("n", &v)]), v)
            })
            .collect();
        let t = s.read();
        for (k, v) in &keys {
            assert!(key_eq_text(&t, k, &text(&[("n", v)])));
        }
    }

    proptest::proptest! {
        #[test]
        fn order_and_prefixes_match_label_sets(
            a in proptest::collection::btree_map("[a-c]{1,3}", "[a-c\\x{e9}]{0,3}", 0..4),
            b in proptest::collection::btree_map("[a-c]{1,3}", "[a-c\\x{e9}]{0,3}", 0..4),
            noise in proptest::collection::vec("[a-z]{1,4}", 0..300),
        ) {
            let s = Symbols::default();
            // Unrelated strings first, so ids are not in string order.
            for n in &noise {
                key(&s, &[(n.as_str(), n.as_str())]);
            }
            let pa: Vec<(&str, &str)> = a.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let pb: Vec<(&str, &str)> = b.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let (ka, kb) = (key(&s, &pa), key(&s, &pb));
            let la = labels_from_key(&text(&pa)).unwrap_or_default();
            let lb = labels_from_key(&text(&pb)).unwrap_or_default();
            let t = s.read();
            proptest::prop_assert_eq!(cmp(&t, &ka, &kb), la.cmp(&lb));
            proptest::prop_assert_eq!(ka == kb, la == lb);
            let label_prefix = la.len() <= lb.len() && la.iter().zip(lb.iter()).all(|(x, y)| x == y);
            proptest::prop_assert_eq!(kb.starts_with(&ka), label_prefix);
        }
    }
}

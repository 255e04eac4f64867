//! Metric metadata (type, help, unit) per metric family, as remote-write clients send it,
//! for the metadata API.
//!
//! Prometheus answers `/api/v1/metadata` from its scrape targets' caches: per family, the
//! set of distinct (type, help, unit) its targets expose. A receiver has no targets, so it
//! keeps what senders report: per family a few distinct entries, newest last. Bounded
//! (families, entries per family, bytes per string) because a client controls all of it.

mod journal;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};

pub use journal::JournalError;
use journal::{Journal, record_len};

/// One metadata entry. `kind` is Prometheus's type name (`counter`, `gauge`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Meta {
    pub kind: String,
    pub help: String,
    pub unit: String,
}

/// An entry borrowed from a request: compared with what is kept, copied only when it
/// changes something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaRef<'a> {
    pub kind: &'a str,
    pub help: &'a str,
    pub unit: &'a str,
}

impl MetaRef<'_> {
    fn is(&self, m: &Meta) -> bool {
        self.kind == m.kind && self.help == m.help && self.unit == m.unit
    }

    pub fn to_meta(&self) -> Meta {
        Meta {
            kind: self.kind.to_string(),
            help: self.help.to_string(),
            unit: self.unit.to_string(),
        }
    }
}

impl<'a> From<&'a Meta> for MetaRef<'a> {
    fn from(m: &'a Meta) -> Self {
        MetaRef {
            kind: &m.kind,
            help: &m.help,
            unit: &m.unit,
        }
    }
}

/// Limits of one tenant's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetadataLimits {
    /// Families kept; entries for new families beyond it are refused.
    pub max_families: usize,
    /// Distinct entries kept per family; the oldest is forgotten for a new one.
    pub max_per_family: usize,
    /// Longest family name, help or unit (bytes).
    pub max_string_bytes: usize,
    /// Bytes all kept entries may take (as the journal stores them): the other limits
    /// alone would let a client fill gigabytes with long help strings.
    pub max_bytes: usize,
}

impl Default for MetadataLimits {
    fn default() -> Self {
        MetadataLimits {
            max_families: 100_000,
            max_per_family: 8,
            max_string_bytes: 16 << 10,
            max_bytes: 64 << 20,
        }
    }
}

/// Why an entry was not kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata without a metric family name")]
    NoFamily,
    #[error("metadata string of {len} bytes is over the limit of {limit}")]
    TooLong { len: usize, limit: usize },
    #[error("metadata for {limit} metric families is kept already (the limit)")]
    TooManyFamilies { limit: usize },
    #[error("metadata of {limit} bytes is kept already (the limit)")]
    TooManyBytes { limit: usize },
}

/// What [`MetadataStore::open`] found on disk.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// Families known after replay.
    pub families: usize,
    /// Journal records replayed.
    pub records: usize,
    /// Records the current limits refused (the limits were lowered since).
    pub refused: usize,
    /// Bytes cut off the journal's end (a write a crash interrupted).
    pub truncated: u64,
}

/// The entries kept, and the bytes they take in the journal's encoding.
#[derive(Debug, Default)]
struct State {
    families: HashMap<String, Vec<Meta>>,
    bytes: usize,
}

/// One tenant's metadata, in memory and (when opened on a path) in a journal that
/// survives restarts: an update that returns `Ok` is on disk (synced when the store
/// syncs), as the samples of the same write are in the WAL.
#[derive(Debug)]
pub struct MetadataStore {
    limits: MetadataLimits,
    state: RwLock<State>,
    /// Serializes updates, so the journal's order is the order they were applied in.
    log: Mutex<Option<Journal>>,
    /// The journal may not hold everything in memory (a write failed, so its end is
    /// unknown): the next update rewrites it from memory before it answers. Read and
    /// changed under `log`.
    dirty: AtomicBool,
}

impl MetadataStore {
    /// A store kept in memory only.
    pub fn new(limits: MetadataLimits) -> Self {
        MetadataStore {
            limits,
            state: RwLock::new(State::default()),
            log: Mutex::new(None),
            dirty: AtomicBool::new(false),
        }
    }

    /// The store kept in the journal at `path`, with what it held before. `sync`: every
    /// update is synced to disk before it returns. A file at `path` that is not a
    /// journal is moved aside (logged) and a new journal started.
    pub fn open(
        path: &Path,
        limits: MetadataLimits,
        sync: bool,
    ) -> Result<(Self, Loaded), JournalError> {
        let (journal, replayed) = match Journal::open(path, sync) {
            Err(e @ JournalError::Foreign { .. }) => {
                tracing::warn!(error = %e, "starting a new metadata journal");
                Journal::open(path, sync)?
            }
            r => r?,
        };
        let mut state = State::default();
        let mut loaded = Loaded {
            records: replayed.entries.len(),
            truncated: replayed.truncated,
            ..Loaded::default()
        };
        for (family, m) in replayed.entries {
            if apply(&mut state, &limits, &family, MetaRef::from(&m)).is_err() {
                loaded.refused += 1;
            }
        }
        loaded.families = state.families.len();
        if loaded.truncated > 0 {
            tracing::warn!(
                path = %path.display(),
                bytes = loaded.truncated,
                "metadata journal ended in a damaged or cut-short record; truncated it there"
            );
        }
        let store = MetadataStore {
            limits,
            state: RwLock::new(state),
            log: Mutex::new(Some(journal)),
            dirty: AtomicBool::new(false),
        };
        // Entries the limits refused are dropped from the file, too.
        if loaded.refused > 0 {
            let mut log = store.log.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(l) = log.as_mut() {
                store.rewrite(l)?;
            }
        }
        Ok((store, loaded))
    }

    /// Records each `(family, metadata)` (a no-op for what is known already) and gives a
    /// verdict per entry. `Err` only when the journal could not be written: the entries
    /// are then in memory but not durable, and the next update retries the write.
    pub fn update_all(
        &self,
        entries: &[(&str, MetaRef<'_>)],
    ) -> Result<Vec<Result<(), MetadataError>>, JournalError> {
        // Under the journal's lock even for repeats: an entry another update applied is
        // in memory before it is on disk, and a repeat of it may be answered only after.
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        // Senders repeat what they sent (RW 2.0 with every series): answered under the
        // read lock, unless an earlier journal write failed.
        if !self.dirty.load(Ordering::Acquire) {
            let st = self.state.read().unwrap_or_else(|p| p.into_inner());
            if entries.iter().all(|(f, m)| is_newest(&st, f, m)) {
                return Ok(vec![Ok(()); entries.len()]);
            }
        }
        let mut verdicts = Vec::new();
        let mut changed: Vec<(String, Meta)> = Vec::new();
        {
            let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
            for &(family, m) in entries {
                match apply(&mut st, &self.limits, family, m) {
                    Ok(true) => {
                        verdicts.push(Ok(()));
                        if log.is_some() {
                            changed.push((family.to_string(), m.to_meta()));
                        }
                    }
                    Ok(false) => verdicts.push(Ok(())),
                    Err(e) => verdicts.push(Err(e)),
                }
            }
        }
        let Some(l) = log.as_mut() else {
            return Ok(verdicts);
        };
        if self.dirty.load(Ordering::Acquire) {
            self.rewrite(l)?;
        } else if !changed.is_empty() {
            if let Err(e) = l.append(changed.iter().map(|(f, m)| (f.as_str(), m))) {
                self.dirty.store(true, Ordering::Release);
                return Err(e);
            }
            // Rewritten once it is mostly entries replaced since: a sender whose help
            // strings change on every push would otherwise grow it without end.
            let live = self.state.read().unwrap_or_else(|p| p.into_inner()).bytes;
            // What was appended is durable; a failed rewrite is retried by the next update.
            if l.len() > (2 * live as u64).max(1 << 20)
                && let Err(e) = self.rewrite(l)
            {
                tracing::warn!(error = %e, "rewriting the metadata journal failed");
            }
        }
        Ok(verdicts)
    }

    /// Records that `family` has metadata `m` ([`MetadataStore::update_all`] of one).
    pub fn update(&self, family: &str, m: Meta) -> Result<Result<(), MetadataError>, JournalError> {
        let mut v = self.update_all(&[(family, MetaRef::from(&m))])?;
        Ok(v.pop().unwrap_or(Ok(())))
    }

    fn rewrite(&self, l: &mut Journal) -> Result<(), JournalError> {
        self.dirty.store(true, Ordering::Release);
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        let mut families: Vec<(&String, &Vec<Meta>)> = st.families.iter().collect();
        families.sort_by(|a, b| a.0.cmp(b.0));
        l.rewrite(
            families
                .into_iter()
                .flat_map(|(f, v)| v.iter().map(move |m| (f.as_str(), m))),
        )?;
        self.dirty.store(false, Ordering::Release);
        Ok(())
    }

    /// Families and their entries: one family (`metric`, when given) or all, at most
    /// `limit` families (negative: all) and `limit_per_metric` entries each (≤ 0: all),
    /// sorted by family name so a limit picks the same families every time.
    pub fn list(
        &self,
        metric: Option<&str>,
        limit: i64,
        limit_per_metric: i64,
    ) -> Vec<(String, Vec<Meta>)> {
        let r = self.state.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(String, Vec<Meta>)> = match metric {
            Some(m) => r
                .families
                .get(m)
                .map(|v| vec![(m.to_string(), v.clone())])
                .unwrap_or_default(),
            None => r
                .families
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        drop(r);
        out.sort_by(|a, b| a.0.cmp(&b.0));
        if limit >= 0 {
            out.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        }
        if limit_per_metric > 0 {
            let n = usize::try_from(limit_per_metric).unwrap_or(usize::MAX);
            for (_, v) in &mut out {
                v.truncate(n);
            }
        }
        out
    }

    pub fn families(&self) -> usize {
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .families
            .len()
    }

    /// Bytes the kept entries take (in the journal's encoding).
    pub fn bytes(&self) -> usize {
        self.state.read().unwrap_or_else(|p| p.into_inner()).bytes
    }
}

/// Whether `m` is `family`'s newest entry (so recording it changes nothing).
fn is_newest(st: &State, family: &str, m: &MetaRef<'_>) -> bool {
    st.families
        .get(family)
        .and_then(|v| v.last())
        .is_some_and(|last| m.is(last))
}

/// Applies one entry within `limits`: `Ok(true)` when it changed the state (newest last:
/// a known entry moves to the end, a new one may evict the family's oldest).
fn apply(
    st: &mut State,
    limits: &MetadataLimits,
    family: &str,
    m: MetaRef<'_>,
) -> Result<bool, MetadataError> {
    if family.is_empty() {
        return Err(MetadataError::NoFamily);
    }
    let limit = limits.max_string_bytes;
    for s in [family, m.kind, m.help, m.unit] {
        if s.len() > limit {
            return Err(MetadataError::TooLong {
                len: s.len(),
                limit,
            });
        }
    }
    let known = st.families.get(family);
    if known.and_then(|v| v.last()).is_some_and(|last| m.is(last)) {
        return Ok(false);
    }
    if known.is_none() && st.families.len() >= limits.max_families {
        return Err(MetadataError::TooManyFamilies {
            limit: limits.max_families,
        });
    }
    let old: &[Meta] = known.map(Vec::as_slice).unwrap_or(&[]);
    let mut next: Vec<Meta> = old.iter().filter(|e| !m.is(e)).cloned().collect();
    next.push(m.to_meta());
    if next.len() > limits.max_per_family {
        let extra = next.len() - limits.max_per_family;
        next.drain(..extra);
    }
    let size = |v: &[Meta]| v.iter().map(|e| record_len(family, e)).sum::<usize>();
    let bytes = st.bytes - size(old) + size(&next);
    if bytes > limits.max_bytes {
        return Err(MetadataError::TooManyBytes {
            limit: limits.max_bytes,
        });
    }
    st.bytes = bytes;
    st.families.insert(family.to_string(), next);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn meta(kind: &str, help: &str) -> Meta {
        Meta {
            kind: kind.into(),
            help: help.into(),
            unit: String::new(),
        }
    }

    /// One update's verdict (the store's journal, if any, must be writable).
    fn up(s: &MetadataStore, family: &str, m: Meta) -> Result<(), MetadataError> {
        s.update(family, m).expect("journal write")
    }

    #[test]
    fn keeps_distinct_entries_bounded() {
        let s = MetadataStore::new(MetadataLimits {
            max_families: 2,
            max_per_family: 2,
            max_string_bytes: 10,
            max_bytes: 1 << 20,
        });
        up(&s, "a", meta("counter", "one")).unwrap();
        up(&s, "a", meta("counter", "one")).unwrap();
        assert_eq!(
            s.list(None, -1, -1),
            vec![("a".into(), vec![meta("counter", "one")])]
        );
        up(&s, "a", meta("counter", "two")).unwrap();
        up(&s, "a", meta("counter", "three")).unwrap();
        assert_eq!(
            s.list(Some("a"), -1, -1)[0].1,
            vec![meta("counter", "two"), meta("counter", "three")]
        );
        up(&s, "b", meta("gauge", "")).unwrap();
        assert_eq!(
            up(&s, "c", meta("gauge", "")),
            Err(MetadataError::TooManyFamilies { limit: 2 })
        );
        assert_eq!(
            up(&s, "b", meta("gauge", "01234567890")),
            Err(MetadataError::TooLong { len: 11, limit: 10 })
        );
        assert_eq!(up(&s, "", meta("gauge", "")), Err(MetadataError::NoFamily));
        // Limits: families by name, entries per family.
        let l = s.list(None, 1, 1);
        assert_eq!(l, vec![("a".into(), vec![meta("counter", "two")])]);
        assert_eq!(s.list(None, 0, -1), vec![]);
        assert_eq!(s.list(Some("zzz"), -1, -1), vec![]);
        assert_eq!(s.families(), 2);
    }

    #[test]
    fn the_byte_limit_counts_replacements_and_evictions() {
        let limits = MetadataLimits {
            max_families: 100,
            max_per_family: 2,
            max_string_bytes: 100,
            max_bytes: 3 * record_len("a", &meta("counter", "0123456789")),
        };
        let s = MetadataStore::new(limits);
        for h in ["0123456789", "1123456789", "2123456789", "3123456789"] {
            // A family at its entry limit evicts one for each new one: no growth.
            up(&s, "a", meta("counter", h)).unwrap();
        }
        assert_eq!(
            s.bytes(),
            2 * record_len("a", &meta("counter", "0123456789"))
        );
        up(&s, "b", meta("counter", "0123456789")).unwrap();
        assert_eq!(
            up(&s, "c", meta("counter", "0123456789")),
            Err(MetadataError::TooManyBytes {
                limit: limits.max_bytes
            })
        );
        // The refused entry left nothing behind.
        assert_eq!(s.families(), 2);
        assert_eq!(s.bytes(), limits.max_bytes);
        assert_eq!(
            up(&s, "b", meta("counter", "longer than the room left")),
            Err(MetadataError::TooManyBytes {
                limit: limits.max_bytes
            })
        );
        assert_eq!(
            s.list(Some("b"), -1, -1)[0].1,
            vec![meta("counter", "0123456789")]
        );
    }

    #[test]
    fn what_was_updated_is_there_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metadata.log");
        let limits = MetadataLimits {
            max_per_family: 3,
            ..MetadataLimits::default()
        };
        let (s, loaded) = MetadataStore::open(&p, limits, true).unwrap();
        assert_eq!(loaded, Loaded::default());
        let mem = MetadataStore::new(limits);
        // The same random updates into a journaled store and a memory-only one.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut changes = 0;
        for _ in 0..2_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let family = format!("family_{}", x % 37);
            let help = format!("help {} {}", (x >> 16) % 5, "x".repeat(1000));
            let m = meta(
                ["counter", "gauge", "histogram"][(x >> 8) as usize % 3],
                &help,
            );
            let last = mem
                .list(Some(&family), -1, -1)
                .pop()
                .and_then(|(_, v)| v.last().cloned());
            if last.as_ref() != Some(&m) {
                changes += 1;
            }
            let batch = [
                (family.as_str(), MetaRef::from(&m)),
                (family.as_str(), MetaRef::from(&m)),
            ];
            assert_eq!(
                s.update_all(&batch).unwrap(),
                mem.update_all(&batch).unwrap()
            );
        }
        let want = mem.list(None, -1, -1);
        assert_eq!(s.list(None, -1, -1), want);
        let journal_len = std::fs::metadata(&p).unwrap().len();
        drop(s);
        let (s, loaded) = MetadataStore::open(&p, limits, true).unwrap();
        assert_eq!(s.list(None, -1, -1), want);
        assert_eq!(s.bytes(), mem.bytes());
        assert_eq!(loaded.families, 37);
        assert_eq!(loaded.refused, 0);
        assert_eq!(loaded.truncated, 0);
        // Repeats are not changes: the journal holds the changes only, and is rewritten
        // when it has grown well past what it describes.
        assert!(
            changes * 1000 > 3 << 19,
            "{changes} changes: too few to test rewrites"
        );
        assert!(
            loaded.records < changes,
            "{} records of {changes}",
            loaded.records
        );
        assert!(journal_len < (1 << 20) + 2048, "{journal_len} bytes");

        // Lower limits on reopen drop what no longer fits, from the file as well.
        drop(s);
        let small = MetadataLimits {
            max_families: 5,
            ..limits
        };
        let (s, loaded) = MetadataStore::open(&p, small, true).unwrap();
        assert_eq!(s.families(), 5);
        assert!(loaded.refused > 0);
        drop(s);
        let (_, loaded) = MetadataStore::open(&p, small, true).unwrap();
        assert_eq!(loaded.refused, 0);
        assert_eq!(loaded.families, 5);
    }

    #[test]
    fn a_journal_that_failed_a_write_is_rewritten_before_the_next_answer() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metadata.log");
        let (s, _) = MetadataStore::open(&p, MetadataLimits::default(), true).unwrap();
        up(&s, "a", meta("counter", "one")).unwrap();
        // As after a failed append: the memory has "b", the file a partial record.
        {
            let mut st = s.state.write().unwrap();
            apply(
                &mut st,
                &s.limits,
                "b",
                MetaRef::from(&meta("gauge", "two")),
            )
            .unwrap();
            s.dirty.store(true, Ordering::Release);
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(&[0, 0, 0, 40, 1, 2])
            .unwrap();
        // A repeat of "b" (a client's retry) changes nothing in memory, yet is answered
        // only once the file holds it.
        up(&s, "b", meta("gauge", "two")).unwrap();
        drop(s);
        let (s, loaded) = MetadataStore::open(&p, MetadataLimits::default(), true).unwrap();
        assert_eq!(loaded.truncated, 0);
        assert_eq!(
            s.list(None, -1, -1),
            vec![
                ("a".into(), vec![meta("counter", "one")]),
                ("b".into(), vec![meta("gauge", "two")]),
            ]
        );
    }

    #[test]
    fn a_repeat_of_an_entry_still_being_written_waits_for_the_write() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metadata.log");
        let (s, _) = MetadataStore::open(&p, MetadataLimits::default(), true).unwrap();
        let s = std::sync::Arc::new(s);
        let m = meta("counter", "one");
        // As during another update's journal write: the entry is in memory, the journal
        // is held.
        let log = s.log.lock().unwrap();
        apply(
            &mut s.state.write().unwrap(),
            &s.limits,
            "a",
            MetaRef::from(&m),
        )
        .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let s2 = s.clone();
        let m2 = m.clone();
        let t = std::thread::spawn(move || {
            let r = s2.update("a", m2);
            tx.send(()).unwrap();
            r
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(200))
                .is_err(),
            "the repeat was answered while the entry's write was in flight"
        );
        drop(log);
        rx.recv().unwrap();
        t.join().unwrap().unwrap().unwrap();
    }
}

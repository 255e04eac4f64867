//! StoreAPI `Series` frames written straight from a [`Querier`]'s selection: the code
//! the receiver (over its tenants' databases) and the sidecar (over a followed
//! Prometheus directory) share. Only bytes are made here; serving them is the caller's.

use bytes::Bytes;
use storeapi::wire::frames::{FrameWriter, WireChunk, put_key_labels, put_label};
use storeapi::{Labels, Matcher};

use crate::{Chunk, DbError, Querier};

/// One selected series: full labels (external added, replica labels removed) and chunks.
pub type Selected = (Labels, Vec<Chunk>);

/// A `Series` answer before framing: materialized and sorted, or one tenant's head
/// selection read series by series while frames are sent.
pub enum Selection {
    Eager(Vec<Selected>),
    Lazy {
        sel: crate::head::LazySelect,
        external: Labels,
        without: Vec<String>,
        /// 0: no limit.
        limit: usize,
    },
}

impl Selection {
    /// Writes every series in order, external labels added and replica labels removed,
    /// as frames handed to `emit`; stops early when `emit` says the client is gone.
    pub fn write(self, mut w: FrameWriter, emit: &mut impl FnMut(Bytes) -> bool) {
        let open = std::cell::Cell::new(true);
        let mut send = |b: Bytes| {
            if open.get() && !emit(b) {
                open.set(false);
            }
        };
        match self {
            Selection::Eager(v) => {
                for (l, c) in &v {
                    let buf = w.labels();
                    for x in l.iter() {
                        put_label(buf, x.name.as_bytes(), x.value.as_bytes());
                    }
                    w.push(
                        c.iter().map(|c| {
                            WireChunk::from_prometheus(
                                c.min_time,
                                c.max_time,
                                c.encoding as u8,
                                &c.data,
                            )
                        }),
                        &mut send,
                    );
                    if !open.get() {
                        return;
                    }
                }
            }
            Selection::Lazy {
                sel,
                external,
                without,
                limit,
            } => {
                // Frames completed while a series is locked are sent after it is
                // unlocked: a slow client must never hold up appends.
                let mut done = Vec::new();
                let mut key = Vec::new();
                let mut n = 0;
                for s in sel.iter_in_place() {
                    if limit > 0 && n >= limit {
                        break;
                    }
                    {
                        let chunks = s.chunks();
                        let mut it = chunks.iter().peekable();
                        if it.peek().is_none() {
                            continue;
                        }
                        key.clear();
                        s.write_key(&mut key);
                        put_key_labels(w.labels(), &key, &external, &without);
                        w.push(
                            it.map(|c| {
                                WireChunk::from_prometheus(
                                    c.min_time,
                                    c.max_time,
                                    c.encoding as u8,
                                    c.data,
                                )
                            }),
                            &mut |b| done.push(b),
                        );
                    }
                    n += 1;
                    for b in done.drain(..) {
                        send(b);
                    }
                    if !open.get() {
                        return;
                    }
                }
            }
        }
        w.finish(&mut send);
    }
}

/// The selection of one source, lazy when it can be: only its head holds data in range,
/// its series' own labels do not begin with one of the external names (prefix-free),
/// no head series has an external label name (adding them cannot reorder series), and
/// every label to remove is an external one (removing a series label could). `None`:
/// use [`eager_into`].
pub fn lazy(
    q: &Querier,
    local: &[Matcher],
    external: &Labels,
    without: &[String],
    limit: usize,
) -> Option<Selection> {
    if local.is_empty() || !without.iter().all(|w| external.get(w).is_some()) {
        return None;
    }
    let sel = q.select_lazy(local)?;
    if !sel.prefix_free() || external.iter().any(|l| q.head_has_label(&l.name)) {
        return None;
    }
    Some(Selection::Lazy {
        sel,
        external: external.clone(),
        without: without.to_vec(),
        limit,
    })
}

/// Appends one source's series to `out`: external labels added (they win a clash),
/// the labels named in `without` removed. The caller sorts and limits.
pub fn eager_into(
    out: &mut Vec<Selected>,
    q: &Querier,
    local: &[Matcher],
    external: &Labels,
    without: &[String],
) -> Result<(), DbError> {
    for s in q.select(local)? {
        let mut l = s.labels;
        l.extend_external(external);
        if !without.is_empty() {
            l.retain(|x| !without.iter().any(|w| *w == x.name));
        }
        out.push((l, s.chunks));
    }
    Ok(())
}

/// Sorts what [`eager_into`] gathered and keeps the first `limit` (0: all).
pub fn sort_and_limit(out: &mut Vec<Selected>, limit: usize) {
    out.sort_by(|a, b| a.0.cmp(&b.0));
    if limit > 0 && out.len() > limit {
        out.truncate(limit);
    }
}

/// One source's `Series` selection: lazy when [`lazy`] allows it, else materialized
/// and sorted.
pub fn select_one(
    q: &Querier,
    local: &[Matcher],
    external: &Labels,
    without: &[String],
    limit: usize,
) -> Result<Selection, DbError> {
    if let Some(sel) = lazy(q, local, external, without, limit) {
        return Ok(sel);
    }
    let mut out = Vec::new();
    eager_into(&mut out, q, local, external, without)?;
    sort_and_limit(&mut out, limit);
    Ok(Selection::Eager(out))
}

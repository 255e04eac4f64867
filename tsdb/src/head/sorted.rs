//! The head's series in label order, kept from one block cut to the next.
//!
//! A block lists its series in label order, so every cut used to sort all of the
//! head's series. At a million series that sort was about 4% of the receiver's CPU
//! (issue #26), and between two cuts few series come and go. The head keeps the order
//! of the last cut and, at the next one, sorts only the series created since and merges
//! them in; series the head drops leave the order as they leave the index.

use std::sync::Arc;

use super::MemSeries;
use super::symbols::{self, Table};
use crate::postings::SeriesRef;

/// Series in label order, each beside its ref (so dropping series reads no series).
pub(crate) type Sorted = Vec<(SeriesRef, Arc<MemSeries>)>;

/// What the head knows of its label order. Kept in the head's index and changed under
/// its lock, so series created or dropped are never missed.
#[derive(Debug, Default)]
pub(crate) struct SortCache {
    state: State,
    /// Series created since the order was taken (only tracked while there is one).
    added: Vec<(SeriesRef, Arc<MemSeries>)>,
}

#[derive(Debug, Default)]
enum State {
    /// No order kept: the next cut sorts every series.
    #[default]
    Unknown,
    Ready(Sorted),
    /// Lent to a block write; `stale` once a series was dropped meanwhile (the order
    /// then comes back holding it, and is discarded).
    Lent {
        stale: bool,
    },
}

/// What a cut starts from, taken under the index lock; sorted outside it.
pub(crate) enum Taken {
    /// The kept order and the series created since (unsorted); given back after.
    Merge(Sorted, Vec<(SeriesRef, Arc<MemSeries>)>),
    /// No kept order: the caller sorts all series. `lend` says whether the result is
    /// to be given back (it starts the kept order) or another cut holds the order.
    Full { lend: bool },
}

impl SortCache {
    /// A series was created.
    pub fn added(&mut self, s: &Arc<MemSeries>) {
        if !matches!(self.state, State::Unknown) {
            self.added.push((s.sref, s.clone()));
        }
    }

    /// Series were dropped from the head.
    pub fn removed(&mut self, gone: &std::collections::HashSet<SeriesRef>) {
        if gone.is_empty() {
            return;
        }
        self.added.retain(|(r, _)| !gone.contains(r));
        match &mut self.state {
            State::Ready(v) => v.retain(|(r, _)| !gone.contains(r)),
            State::Lent { stale } => *stale = true,
            State::Unknown => {}
        }
    }

    /// Takes the kept order to lend it to a cut. Without one, the caller sorts every
    /// series it reads under the same index lock, and tracking starts from them.
    pub fn take(&mut self) -> Taken {
        if matches!(self.state, State::Lent { .. }) {
            return Taken::Full { lend: false };
        }
        // Untracked while `Unknown`, so then this is empty.
        let added = std::mem::take(&mut self.added);
        match std::mem::replace(&mut self.state, State::Lent { stale: false }) {
            State::Ready(v) => Taken::Merge(v, added),
            State::Unknown | State::Lent { .. } => Taken::Full { lend: true },
        }
    }

    /// Gives back the order a cut was lent. Series created since it was taken are in
    /// `added`; one dropped since makes it unusable.
    pub fn give_back(&mut self, v: Sorted) {
        self.state = match self.state {
            State::Lent { stale: false } => State::Ready(v),
            _ => {
                self.added.clear();
                State::Unknown
            }
        };
    }
}

/// Sorts `v` by labels.
pub(crate) fn sort(t: &Table, v: &mut Sorted) {
    v.sort_unstable_by(|a, b| symbols::cmp(t, &a.1.key, &b.1.key));
}

/// Merges `added` into the ordered `base`: `added` is sorted, then each finds its place
/// by binary search, so a cut with few new series compares few keys.
pub(crate) fn merge(t: &Table, base: Sorted, mut added: Sorted) -> Sorted {
    if added.is_empty() {
        return base;
    }
    sort(t, &mut added);
    let mut at = Vec::with_capacity(added.len());
    let mut from = 0;
    for (_, s) in &added {
        from += base[from..].partition_point(|(_, b)| symbols::cmp(t, &b.key, &s.key).is_lt());
        at.push(from);
    }
    let mut out = Vec::with_capacity(base.len() + added.len());
    let mut base = base.into_iter();
    let mut taken = 0;
    for (pos, a) in at.into_iter().zip(added) {
        out.extend(base.by_ref().take(pos - taken));
        taken = pos;
        out.push(a);
    }
    out.extend(base);
    out
}

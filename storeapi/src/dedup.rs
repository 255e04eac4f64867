//! Replica deduplication: Thanos's penalty algorithm, a chain merge for non-deduplicated
//! identical series, and the grouping of replicas after the merge of store streams.
//! Pure functions on [`Sample`]s, here so the querier (dedup of store answers) and the
//! tsdb crate (the compactor's `--deduplication.func=penalty` merge) share one copy.
//!
//! Replicas of one series are folded pairwise. At each step both replicas seek to
//! `last_t + 1 + penalty`; the sample with the smaller timestamp wins (ties go to the first
//! replica); the replica not chosen gets a penalty of twice the distance between the chosen
//! sample and the previous one (5s before any sample is known). The result sticks to one
//! replica and only switches to fill gaps longer than about two scrape intervals.

use crate::Sample;

/// Penalty applied to the replica not chosen for the very first sample (milliseconds).
pub const INITIAL_PENALTY_MS: i64 = 5000;

/// Functions whose input series are counters: switching replicas must not look like a reset.
pub fn is_counter_func(func: Option<&str>) -> bool {
    matches!(func, Some("rate" | "increase" | "irate" | "resets"))
}

/// One replica being walked by the penalty merge: a cursor and, for counters, the value
/// added to every sample so that a lagging replica does not produce a fake reset.
struct Cursor<'a> {
    samples: &'a [Sample],
    /// Where the penalised seeks got to.
    pos: usize,
    /// The first sample after the merged output so far (no penalty).
    next: usize,
    adjust: f64,
}

impl<'a> Cursor<'a> {
    fn new(samples: &'a [Sample]) -> Self {
        Cursor {
            samples,
            pos: 0,
            next: 0,
            adjust: 0.0,
        }
    }

    /// The timestamp of the first sample at or after `t`, penalty ignored (`t` never
    /// decreases between calls).
    fn next_t(&mut self, t: i64) -> Option<i64> {
        while self.next < self.samples.len() && self.samples[self.next].t < t {
            self.next += 1;
        }
        self.samples.get(self.next).map(|s| s.t)
    }

    /// Advances to the first sample at or after `t` (never moves backwards).
    fn seek(&mut self, t: i64) -> Option<Sample> {
        while self.pos < self.samples.len() && self.samples[self.pos].t < t {
            self.pos += 1;
        }
        self.at()
    }

    fn at(&self) -> Option<Sample> {
        self.samples.get(self.pos).map(|s| Sample {
            t: s.t,
            v: s.v + self.adjust,
        })
    }

    /// Called when the merge switches to this replica after `last_v` came from the other.
    fn adjust_to(&mut self, last_v: f64) {
        if let Some(cur) = self.at()
            && last_v > cur.v
        {
            self.adjust += last_v - cur.v;
        }
    }
}

/// Merges two replicas of one series with the penalty algorithm.
pub fn penalty_merge(a: &[Sample], b: &[Sample], counter: bool) -> Vec<Sample> {
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    let mut ca = Cursor::new(a);
    let mut cb = Cursor::new(b);
    let mut last_t = i64::MIN;
    let (mut pen_a, mut pen_b) = (0i64, 0i64);
    let mut use_a = true;
    let mut started = false;
    loop {
        let last_v = out.last().map(|s: &Sample| s.v);
        let prev_use_a = use_a;
        // Both replicas' next samples have the same timestamp: one sample held in two
        // places (a block both on a receiver and in the bucket, or replicas in lockstep).
        // It is emitted once, from the replica in use, and neither is penalised: a
        // penalty here would skip the other's next samples when the one in use ends,
        // leaving a gap where the two ranges meet.
        let from = last_t.saturating_add(1);
        if let (Some(ta), Some(tb)) = (ca.next_t(from), cb.next_t(from))
            && ta == tb
        {
            ca.pos = ca.next;
            cb.pos = cb.next;
            (pen_a, pen_b) = (0, 0);
            let chosen = if use_a { ca.at() } else { cb.at() };
            let Some(chosen) = chosen else { break };
            started = true;
            last_t = chosen.t;
            out.push(chosen);
            continue;
        }
        let sa = ca.seek(last_t.saturating_add(1).saturating_add(pen_a));
        let sb = cb.seek(last_t.saturating_add(1).saturating_add(pen_b));
        let chosen = match (sa, sb) {
            (None, None) => break,
            (Some(sa), None) => {
                use_a = true;
                pen_a = 0;
                sa
            }
            (None, Some(sb)) => {
                use_a = false;
                pen_b = 0;
                sb
            }
            (Some(sa), Some(sb)) => {
                use_a = sa.t <= sb.t;
                let (chosen_t, chosen) = if use_a { (sa.t, sa) } else { (sb.t, sb) };
                let pen = if last_t == i64::MIN {
                    INITIAL_PENALTY_MS
                } else {
                    2 * (chosen_t - last_t)
                };
                if use_a {
                    pen_b = pen;
                    pen_a = 0;
                } else {
                    pen_a = pen;
                    pen_b = 0;
                }
                chosen
            }
        };
        let mut chosen = chosen;
        if counter
            && started
            && use_a != prev_use_a
            && let Some(lv) = last_v
        {
            if use_a {
                ca.adjust_to(lv);
                if let Some(s) = ca.at() {
                    chosen = s;
                }
            } else {
                cb.adjust_to(lv);
                if let Some(s) = cb.at() {
                    chosen = s;
                }
            }
        }
        started = true;
        last_t = chosen.t;
        out.push(chosen);
    }
    out
}

/// Folds any number of replicas pairwise with [`penalty_merge`], the replica with the most
/// samples first.
///
/// The merge sticks to its first input and, when that input has a gap, its penalty makes
/// it skip up to two samples of the other at the switch. Stores answer in no particular
/// order, so starting from the most complete replica keeps a complete replica's samples
/// whole (a receiver that was down for a while no longer thins the answer) and makes the
/// result independent of which store answered first.
pub fn penalty_dedup(mut replicas: Vec<Vec<Sample>>, counter: bool) -> Vec<Sample> {
    replicas.sort_by_key(|r| std::cmp::Reverse(r.len()));
    let mut it = replicas.into_iter();
    let Some(mut acc) = it.next() else {
        return Vec::new();
    };
    for r in it {
        acc = penalty_merge(&acc, &r, counter);
    }
    acc
}

/// Union of several sample runs of the same series; on equal timestamps the first run wins.
pub fn chain_merge(replicas: Vec<Vec<Sample>>) -> Vec<Sample> {
    let mut it = replicas.into_iter();
    let Some(mut acc) = it.next() else {
        return Vec::new();
    };
    for r in it {
        let mut out = Vec::with_capacity(acc.len() + r.len());
        let (mut i, mut j) = (0, 0);
        while i < acc.len() || j < r.len() {
            match (acc.get(i), r.get(j)) {
                (Some(x), Some(y)) if x.t == y.t => {
                    out.push(*x);
                    i += 1;
                    j += 1;
                }
                (Some(x), Some(y)) if x.t < y.t => {
                    out.push(*x);
                    i += 1;
                }
                (Some(_), Some(y)) => {
                    out.push(*y);
                    j += 1;
                }
                (Some(x), None) => {
                    out.push(*x);
                    i += 1;
                }
                (None, Some(y)) => {
                    out.push(*y);
                    j += 1;
                }
                (None, None) => break,
            }
        }
        acc = out;
    }
    acc
}

/// Merges replicas of one series whose samples are of any kind (floats, histograms, or
/// both where a series changes type): with `dedup_on` the penalty algorithm picks the
/// samples (non-counter: the timestamps it picks are exactly those it picks for float
/// samples, the values are not looked at), else a chain merge (each timestamp once,
/// earlier replicas first). `switched` is applied to a sample taken from another replica
/// than the sample before it: for histograms, a counter-reset hint says "no reset since
/// the previous sample of this chunk", which no longer holds after a switch.
///
/// Used by the querier (replica dedup of histogram samples) and by the compactor's
/// `penalty` vertical merge, so both pick the same samples.
pub fn merge_replicas_by<T>(
    replicas: Vec<Vec<T>>,
    time: impl Fn(&T) -> i64,
    dedup_on: bool,
    switched: impl FnMut(&mut T),
) -> Vec<T> {
    let mut replicas: Vec<Vec<T>> = replicas.into_iter().filter(|r| !r.is_empty()).collect();
    if replicas.len() <= 1 {
        return replicas.pop().unwrap_or_default();
    }
    // Each sample is tagged with its index in one flat list, carried through the
    // penalty merge as the value (an f64 holds integers exactly up to 2^53).
    let mut tagged: Vec<Vec<Sample>> = Vec::with_capacity(replicas.len());
    let mut flat: Vec<(usize, Option<T>)> = Vec::new();
    for (r, samples) in replicas.into_iter().enumerate() {
        let mut run = Vec::with_capacity(samples.len());
        for s in samples {
            run.push(Sample {
                t: time(&s),
                v: flat.len() as f64,
            });
            flat.push((r, Some(s)));
        }
        tagged.push(run);
    }
    let picked = if dedup_on {
        penalty_dedup(tagged, false)
    } else {
        chain_merge(tagged)
    };
    take_picked(&mut flat, picked.iter().map(|s| s.v as usize), switched)
}

/// A chain merge of runs of one series of any sample kind: each timestamp once, from the
/// earliest run holding it; `switched` applied where the run changes (see
/// [`merge_replicas_by`]).
pub fn chain_by<T>(
    runs: Vec<Vec<T>>,
    time: impl Fn(&T) -> i64,
    switched: impl FnMut(&mut T),
) -> Vec<T> {
    let mut order: Vec<(i64, usize)> = Vec::new();
    let mut flat: Vec<(usize, Option<T>)> = Vec::new();
    for (r, run) in runs.into_iter().enumerate() {
        for s in run {
            order.push((time(&s), flat.len()));
            flat.push((r, Some(s)));
        }
    }
    // The flat index grows with the run, so this sorts by (time, run, position).
    order.sort_unstable();
    order.dedup_by_key(|(t, _)| *t);
    take_picked(&mut flat, order.into_iter().map(|(_, i)| i), switched)
}

/// Moves the picked samples (indices into `flat`, whose first field is the source)
/// out in order, applying `switched` where the source changes.
fn take_picked<T>(
    flat: &mut [(usize, Option<T>)],
    picked: impl Iterator<Item = usize>,
    mut switched: impl FnMut(&mut T),
) -> Vec<T> {
    let mut out = Vec::new();
    let mut prev: Option<usize> = None;
    for i in picked {
        let Some((src, slot)) = flat.get_mut(i) else {
            continue;
        };
        let Some(mut s) = slot.take() else {
            continue;
        };
        if prev.is_some_and(|p| p != *src) {
            switched(&mut s);
        }
        prev = Some(*src);
        out.push(s);
    }
    out
}

/// A time range covered by one chunk of a series part.
pub trait TimeRanged {
    fn min_time(&self) -> i64;
    fn max_time(&self) -> i64;
}

/// Splits the chunks of one series (sorted by min time) into runs that do not overlap:
/// chunks overlapping an earlier run are replicas of the same series (Thanos's overlap split).
pub fn overlap_split<C: TimeRanged>(chunks: Vec<C>) -> Vec<Vec<C>> {
    let mut runs: Vec<Vec<C>> = Vec::new();
    'next: for c in chunks {
        for run in runs.iter_mut() {
            let fits = run.last().is_none_or(|l| l.max_time() < c.min_time());
            if fits {
                run.push(c);
                continue 'next;
            }
        }
        runs.push(vec![c]);
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(pairs: &[(i64, f64)]) -> Vec<Sample> {
        pairs.iter().map(|&(t, v)| Sample { t, v }).collect()
    }

    fn ts(v: &[Sample]) -> Vec<i64> {
        v.iter().map(|s| s.t).collect()
    }

    #[test]
    fn identical_replicas_collapse() {
        let a = s(&[(1000, 1.0), (2000, 2.0), (3000, 3.0)]);
        let out = penalty_merge(&a, &a, false);
        assert_eq!(out, a);
    }

    #[test]
    fn offset_replicas_stick_to_one() {
        // Replica B is scraped 500ms later than A: the result must keep A's cadence.
        let a: Vec<Sample> = (0..10)
            .map(|i| Sample {
                t: i * 10_000,
                v: i as f64,
            })
            .collect();
        let b: Vec<Sample> = (0..10)
            .map(|i| Sample {
                t: i * 10_000 + 500,
                v: i as f64,
            })
            .collect();
        assert_eq!(penalty_merge(&a, &b, false), a);
        // Whatever the order, the replica with the earliest sample is kept.
        assert_eq!(penalty_merge(&b, &a, false), a);
    }

    #[test]
    fn gap_in_one_replica_is_filled_by_other() {
        // A misses 30s..50s; B scrapes 2s later than A.
        let a: Vec<Sample> = (0..10)
            .filter(|i| !(3..6).contains(i))
            .map(|i| Sample {
                t: i * 10_000,
                v: i as f64,
            })
            .collect();
        let b: Vec<Sample> = (0..10)
            .map(|i| Sample {
                t: i * 10_000 + 2000,
                v: i as f64,
            })
            .collect();
        let out = penalty_merge(&a, &b, false);
        // A until its gap; B's 32s sample is inside A's penalty window (20s+1+20s), so the
        // merge switches at 42s and then keeps B's cadence (A is now penalised).
        assert_eq!(
            ts(&out),
            vec![
                0, 10_000, 20_000, 42_000, 52_000, 62_000, 72_000, 82_000, 92_000
            ]
        );
        for w in out.windows(2) {
            assert!(w[1].t - w[0].t >= 10_000, "{out:?}");
            assert!(w[1].t - w[0].t <= 22_000, "{out:?}");
        }
    }

    #[test]
    fn one_replica_empty() {
        let a = s(&[(1, 1.0), (2, 2.0)]);
        assert_eq!(penalty_merge(&a, &[], false), a);
        assert_eq!(penalty_merge(&[], &a, false), a);
        assert!(penalty_merge(&[], &[], false).is_empty());
    }

    #[test]
    fn initial_penalty_applies() {
        // A is chosen first, so B is penalised by 5s: its samples before 5001ms are skipped.
        let a = s(&[(0, 0.0)]);
        let b = s(&[(1000, 1.0), (4000, 4.0), (6000, 6.0)]);
        let out = penalty_merge(&a, &b, false);
        assert_eq!(ts(&out), vec![0, 6000]);
    }

    #[test]
    fn counter_switch_does_not_fake_a_reset() {
        // A counts up to 50 then stops; B lags behind (lower values) and continues.
        let a = s(&[(0, 10.0), (10_000, 20.0), (20_000, 50.0)]);
        let b = s(&[
            (1000, 5.0),
            (11_000, 15.0),
            (21_000, 30.0),
            (31_000, 40.0),
            (41_000, 45.0),
            (51_000, 50.0),
        ]);
        let out = penalty_merge(&a, &b, true);
        assert_eq!(ts(&out), vec![0, 10_000, 20_000, 41_000, 51_000]);
        // At the switch B's 45 is raised by 5 (50-45) and the adjustment is kept.
        assert_eq!(out[3].v, 50.0);
        assert_eq!(out[4].v, 55.0);
        for w in out.windows(2) {
            assert!(w[1].v >= w[0].v, "fake reset in {out:?}");
        }
        // Without counter adjustment the raw values come through.
        let raw = penalty_merge(&a, &b, false);
        assert_eq!(raw[3].v, 45.0);
    }

    #[test]
    fn three_replicas_fold() {
        let a = s(&[(0, 0.0), (10_000, 1.0)]);
        let b = s(&[(0, 0.0), (10_000, 1.0), (20_000, 2.0), (50_000, 5.0)]);
        let c = s(&[(30_000, 3.0), (200_000, 20.0)]);
        // a and b hold the same samples where both have data (in phase): no penalty, so
        // b's 20s sample right after a's last one is kept even merged in the order a, b.
        let in_given_order = penalty_merge(&penalty_merge(&a, &b, false), &c, false);
        assert_eq!(
            ts(&in_given_order),
            vec![0, 10_000, 20_000, 50_000, 200_000]
        );
        // The fold starts from b (most samples).
        let out = penalty_dedup(vec![a.clone(), b.clone(), c.clone()], false);
        assert_eq!(out, penalty_merge(&penalty_merge(&b, &a, false), &c, false));
        assert_eq!(ts(&out), vec![0, 10_000, 20_000, 50_000, 200_000]);
        // Whatever order the stores answered in.
        assert_eq!(
            penalty_dedup(vec![c.clone(), a.clone(), b.clone()], false),
            out
        );
        let same = penalty_dedup(vec![a.clone(), a.clone(), a.clone()], false);
        assert_eq!(same, a);
    }

    #[test]
    fn complete_replica_is_not_thinned_by_a_gappy_one_answering_first() {
        // 1s scrapes; `gappy` misses 10s..=19s (its receiver was down), `full` has all.
        let full: Vec<Sample> = (0..30)
            .map(|i| Sample {
                t: i * 1000,
                v: i as f64,
            })
            .collect();
        let gappy: Vec<Sample> = full
            .iter()
            .copied()
            .filter(|s| !(10_000..20_000).contains(&s.t))
            .collect();
        // Same timestamps where both have data: even the plain merge (gappy first) no
        // longer loses samples at the switch.
        assert_eq!(penalty_merge(&gappy, &full, false), full);
        for counter in [false, true] {
            assert_eq!(
                penalty_dedup(vec![gappy.clone(), full.clone()], counter),
                full
            );
            assert_eq!(
                penalty_dedup(vec![gappy.clone(), gappy.clone(), full.clone()], counter),
                full
            );
        }
    }

    #[test]
    fn same_samples_from_two_places_meet_without_a_gap() {
        // 15 s scrapes; the bucket holds 0..=40 min, the receiver 30..=60 min: the same
        // samples where they overlap. Whichever answers first and whatever the counter
        // setting, every sample comes once, none is skipped where one range ends.
        let all: Vec<Sample> = (0..=240)
            .map(|i| Sample {
                t: i * 15_000,
                v: i as f64,
            })
            .collect();
        let old: Vec<Sample> = all.iter().copied().filter(|s| s.t <= 2_400_000).collect();
        let recent: Vec<Sample> = all.iter().copied().filter(|s| s.t >= 1_800_000).collect();
        for counter in [false, true] {
            assert_eq!(penalty_merge(&old, &recent, counter), all);
            assert_eq!(penalty_merge(&recent, &old, counter), all);
            assert_eq!(
                penalty_dedup(vec![recent.clone(), old.clone()], counter),
                all
            );
        }
        // Offset replicas (not the same samples) keep Thanos's penalty at the switch.
        let shifted: Vec<Sample> = recent
            .iter()
            .map(|s| Sample {
                t: s.t + 700,
                v: s.v,
            })
            .collect();
        let out = penalty_merge(&old, &shifted, false);
        let after: Vec<i64> = ts(&out).into_iter().filter(|&t| t > 2_400_000).collect();
        assert_eq!(after.first(), Some(&(2_400_000 + 30_000 + 700)));
    }

    #[test]
    fn chain_merge_unions() {
        let a = s(&[(1, 1.0), (3, 3.0)]);
        let b = s(&[(2, 2.0), (3, 9.0), (4, 4.0)]);
        let out = chain_merge(vec![a, b]);
        assert_eq!(out, s(&[(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]));
    }

    #[derive(Debug, PartialEq)]
    struct R(i64, i64);
    impl TimeRanged for R {
        fn min_time(&self) -> i64 {
            self.0
        }
        fn max_time(&self) -> i64 {
            self.1
        }
    }

    #[test]
    fn overlap_split_separates_replicas() {
        let runs = overlap_split(vec![R(0, 10), R(5, 15), R(11, 20), R(16, 30)]);
        assert_eq!(
            runs,
            vec![vec![R(0, 10), R(11, 20)], vec![R(5, 15), R(16, 30)]]
        );
        let runs = overlap_split(vec![R(0, 10), R(11, 20)]);
        assert_eq!(runs.len(), 1);
    }

    #[test]
    fn merge_replicas_by_picks_what_penalty_dedup_picks() {
        // Any sample kind: here (t, replica name) pairs; the picks must be the penalty
        // algorithm's, and `switched` must run exactly where the replica changes.
        let a: Vec<(i64, &str)> = (0..40)
            .filter(|k| !(10..16).contains(k))
            .map(|k| (k * 10_000, "a"))
            .collect();
        let b: Vec<(i64, &str)> = (0..40).map(|k| (k * 10_000 + 2500, "b")).collect();
        let as_samples = |r: &[(i64, &str)]| r.iter().map(|&(t, _)| Sample { t, v: 0.0 }).collect();
        let want = ts(&penalty_dedup(vec![as_samples(&a), as_samples(&b)], false));
        let mut switches = 0;
        let got = merge_replicas_by(
            vec![a.clone(), b.clone()],
            |s| s.0,
            true,
            |s| {
                switches += 1;
                s.1 = "switched";
            },
        );
        assert_eq!(got.iter().map(|s| s.0).collect::<Vec<_>>(), want);
        // b's samples are the ones 2.5 s past a multiple of 10 s.
        let from_b = |t: i64| t % 10_000 == 2500;
        let want_switches = want
            .windows(2)
            .filter(|w| from_b(w[0]) != from_b(w[1]))
            .count();
        assert!(want_switches >= 1, "b fills a's gap: {want:?}");
        assert_eq!(switches, want_switches);
        for (i, s) in got.iter().enumerate() {
            let switched = i > 0 && from_b(got[i - 1].0) != from_b(s.0);
            assert_eq!(s.1 == "switched", switched, "sample {i} of {got:?}");
        }
        // Without dedup: a chain, each timestamp once, the earlier replica first.
        let c = vec![(0, "c"), (2500, "c2")];
        let got = chain_by(vec![b.clone(), c], |s| s.0, |_| {});
        assert_eq!(got.len(), b.len() + 1);
        assert_eq!(got[0], (0, "c"));
        assert_eq!(got[1], (2500, "b"), "the earlier run wins a tie");
        // One replica, or none, passes through.
        assert_eq!(
            merge_replicas_by(vec![a.clone(), vec![]], |s| s.0, true, |_| {}),
            a
        );
        assert!(
            merge_replicas_by(Vec::<Vec<(i64, &str)>>::new(), |s| s.0, true, |_| {}).is_empty()
        );
    }
}

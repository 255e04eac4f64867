//! Planning, pure: which blocks form a group, which blocks of a group to compact next,
//! which blocks retention removes. Follows Thanos's `pkg/compact/planner.go` (itself
//! Prometheus's `tsdb/compact.go` leveled planner) so that Orrery and Thanos produce
//! the same block ranges from the same bucket.

use std::collections::{BTreeMap, BTreeSet};

use tsdb::block::{BlockMeta, Ulid};

/// Thanos's compaction levels: 1h, 2h, 8h, 2d, 14d. The planner uses all but the first
/// as output ranges (2h, 8h, 2d, 14d), each aligned to multiples of itself from epoch 0.
pub const RANGES_MS: [i64; 5] = [
    3_600_000,
    2 * 3_600_000,
    8 * 3_600_000,
    48 * 3_600_000,
    14 * 24 * 3_600_000,
];

/// Prometheus's `labels.Hash()`: xxhash64 over `name 0xff value 0xff ...` (sorted).
pub fn labels_hash(labels: &BTreeMap<String, String>) -> u64 {
    let mut b = Vec::new();
    for (k, v) in labels {
        b.extend_from_slice(k.as_bytes());
        b.push(0xff);
        b.extend_from_slice(v.as_bytes());
        b.push(0xff);
    }
    xxhash_rust::xxh64::xxh64(&b, 0)
}

/// A compaction group: blocks with the same external labels (minus the deduplication
/// replica labels) and resolution. Only blocks of one group are ever merged.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GroupKey {
    pub resolution: i64,
    pub labels: BTreeMap<String, String>,
}

impl GroupKey {
    /// The key of `meta`'s group once `replica_labels` are removed.
    pub fn of(meta: &BlockMeta, replica_labels: &[String]) -> GroupKey {
        let (resolution, mut labels) = match &meta.thanos {
            Some(t) => (t.downsample.resolution, t.labels.clone()),
            None => (0, BTreeMap::new()),
        };
        for r in replica_labels {
            labels.remove(r);
        }
        GroupKey { resolution, labels }
    }

    /// Thanos's group key string `"<resolution>@<labels hash>"`.
    pub fn key(&self) -> String {
        format!("{}@{}", self.resolution, labels_hash(&self.labels))
    }
}

/// Thanos's `selectOverlappingMetas`: the first run of blocks (by min time) whose
/// ranges overlap. These are compacted first (vertical compaction).
pub fn overlapping(metas_by_min_time: &[&BlockMeta]) -> Vec<Ulid> {
    if metas_by_min_time.len() < 2 {
        return Vec::new();
    }
    let mut run: Vec<Ulid> = Vec::new();
    let mut global_maxt = metas_by_min_time[0].max_time;
    for (i, m) in metas_by_min_time.iter().enumerate().skip(1) {
        if m.min_time < global_maxt {
            if run.is_empty() {
                run.push(metas_by_min_time[i - 1].ulid);
            }
            run.push(m.ulid);
        } else if !run.is_empty() {
            break;
        }
        global_maxt = global_maxt.max(m.max_time);
    }
    run
}

/// Prometheus's `splitByRange`: consecutive runs of blocks that fall inside one
/// range-aligned window `[t0, t0 + range]`. Blocks larger than the window are skipped.
fn split_by_range<'a>(ds: &[&'a BlockMeta], range: i64) -> Vec<Vec<&'a BlockMeta>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < ds.len() {
        let m = ds[i];
        let t0 = if m.min_time >= 0 {
            range * (m.min_time / range)
        } else {
            range * ((m.min_time - range + 1) / range)
        };
        if m.max_time > t0 + range {
            i += 1;
            continue;
        }
        let mut group = Vec::new();
        while i < ds.len() {
            if ds[i].max_time > t0 + range {
                break;
            }
            group.push(ds[i]);
            i += 1;
        }
        if !group.is_empty() {
            out.push(group);
        }
    }
    out
}

/// The next set of blocks of one group to compact (empty: nothing to do). `excluded`
/// blocks (no-compact marked) take part in the range split but are never selected, so
/// they create no gaps in what the rest compacts to.
pub fn plan(metas: &[BlockMeta], excluded: &BTreeSet<Ulid>) -> Vec<Ulid> {
    let mut by_min: Vec<&BlockMeta> = metas.iter().collect();
    by_min.sort_by_key(|m| (m.min_time, m.ulid));
    let not_excluded: Vec<&BlockMeta> = by_min
        .iter()
        .copied()
        .filter(|m| !excluded.contains(&m.ulid))
        .collect();
    let ov = overlapping(&not_excluded);
    if !ov.is_empty() {
        return ov;
    }
    // The newest block (max min time) waits: it may still get a neighbour in its range.
    if by_min.len() < 2 {
        return Vec::new();
    }
    by_min.pop();
    let high_time = by_min.last().map(|m| m.min_time).unwrap_or(i64::MIN);
    for &range in &RANGES_MS[1..] {
        'parts: for part in split_by_range(&by_min, range) {
            if part.iter().any(|m| m.compaction.failed) {
                continue 'parts;
            }
            let mint = part[0].min_time;
            let maxt = part[part.len() - 1].max_time;
            let selected: Vec<Ulid> = part
                .iter()
                .filter(|m| !excluded.contains(&m.ulid))
                .map(|m| m.ulid)
                .collect();
            if (maxt - mint == range || maxt <= high_time) && selected.len() > 1 {
                return selected;
            }
        }
    }
    Vec::new()
}

/// Every compaction the planner would run for a group from its current state, in order
/// (each plan's output replaces its inputs before the next is planned): the todo
/// figures (`thanos_compact_todo_*`). Returns `(compactions, blocks)`.
pub fn simulate(metas: &[BlockMeta], excluded: &BTreeSet<Ulid>) -> (usize, usize) {
    let mut cur: Vec<BlockMeta> = metas.to_vec();
    let (mut n, mut blocks) = (0, 0);
    // Each plan removes at least one block, so this terminates within len() steps.
    for _ in 0..metas.len() {
        let p = plan(&cur, excluded);
        if p.is_empty() {
            break;
        }
        n += 1;
        blocks += p.len();
        let set: BTreeSet<Ulid> = p.iter().copied().collect();
        let ins: Vec<&BlockMeta> = cur.iter().filter(|m| set.contains(&m.ulid)).collect();
        let mut out = ins[0].clone();
        out.ulid = Ulid::new();
        out.min_time = ins.iter().map(|m| m.min_time).min().unwrap_or(0);
        out.max_time = ins.iter().map(|m| m.max_time).max().unwrap_or(0);
        out.compaction.level = ins.iter().map(|m| m.compaction.level).max().unwrap_or(1) + 1;
        cur.retain(|m| !set.contains(&m.ulid));
        cur.push(out);
    }
    (n, blocks)
}

/// Whether retention removes a block of `resolution` ending at `max_time` (ms) at
/// `now_ms`: `retention_ms` 0 keeps forever; otherwise the whole block must be older.
pub fn past_retention(max_time: i64, retention_ms: i64, now_ms: i64) -> bool {
    retention_ms > 0 && now_ms - max_time > retention_ms
}

#[cfg(test)]
mod tests {
    use super::*;
    use tsdb::block::{BlockMetaCompaction, BlockStats, ThanosMeta};

    const H: i64 = 3_600_000;

    fn meta(min: i64, max: i64) -> BlockMeta {
        BlockMeta {
            ulid: Ulid::new(),
            min_time: min,
            max_time: max,
            stats: BlockStats::default(),
            compaction: BlockMetaCompaction {
                level: 1,
                ..Default::default()
            },
            version: 1,
            thanos: Some(ThanosMeta::new(BTreeMap::new(), "receive")),
        }
    }

    fn ids(ms: &[&BlockMeta]) -> Vec<Ulid> {
        ms.iter().map(|m| m.ulid).collect()
    }

    #[test]
    fn four_2h_blocks_make_an_8h_block_only_once_the_range_is_full_or_older() {
        // 0-2,2-4,4-6 and the newest 6-8: the newest is held back, so [0,8) is not full
        // and its blocks are not before the newest's min time -> nothing.
        let bs: Vec<_> = (0..4).map(|i| meta(i * 2 * H, (i + 1) * 2 * H)).collect();
        assert!(plan(&bs, &BTreeSet::new()).is_empty());
        // A fifth block in the next range: [0,8) is now complete.
        let mut bs2 = bs.clone();
        bs2.push(meta(8 * H, 10 * H));
        let p = plan(&bs2, &BTreeSet::new());
        assert_eq!(p, ids(&bs.iter().collect::<Vec<_>>()));
    }

    #[test]
    fn partial_range_before_the_newest_block_is_compacted() {
        // 0-2, 2-4 then a gap, then 10-12 and 12-14 (newest): [0,8) holds 0-4 only, but
        // it ends before the second-newest block's start, so it is compacted.
        let bs = vec![
            meta(0, 2 * H),
            meta(2 * H, 4 * H),
            meta(10 * H, 12 * H),
            meta(12 * H, 14 * H),
        ];
        assert_eq!(plan(&bs, &BTreeSet::new()), vec![bs[0].ulid, bs[1].ulid]);
    }

    #[test]
    fn overlaps_come_first_and_no_compact_blocks_are_skipped() {
        let a = meta(0, 2 * H);
        let b = meta(0, 2 * H);
        let c = meta(H, 3 * H);
        let d = meta(4 * H, 6 * H);
        let bs = vec![a.clone(), b.clone(), c.clone(), d.clone()];
        let mut p = plan(&bs, &BTreeSet::new());
        p.sort();
        let mut want = vec![a.ulid, b.ulid, c.ulid];
        want.sort();
        assert_eq!(p, want);
        // Excluding c: a and b still overlap.
        let ex: BTreeSet<_> = [c.ulid].into();
        let p = plan(&bs, &ex);
        assert_eq!(p.len(), 2);
        assert!(!p.contains(&c.ulid));
    }

    #[test]
    fn leveled_ranges_up_to_two_days() {
        // 3 days of 2h blocks starting at a 2d boundary: 8h ranges first, then 2d.
        let bs: Vec<_> = (0..36).map(|i| meta(i * 2 * H, (i + 1) * 2 * H)).collect();
        let (n, blocks) = simulate(&bs, &BTreeSet::new());
        // 8h: [0,48) -> 6, [48,56), [56,64) -> 2 (the last 8h range holds the newest);
        // 2d: the six 8h blocks of [0,48) -> 1.
        assert_eq!(n, 9);
        assert_eq!(blocks, 8 * 4 + 6);
    }

    #[test]
    fn group_key_drops_replica_labels() {
        let mut a = meta(0, H);
        let mut b = meta(0, H);
        for (m, r) in [(&mut a, "0"), (&mut b, "1")] {
            let t = m.thanos.as_mut().unwrap();
            t.labels.insert("receive_replica".into(), r.into());
            t.labels.insert("tenant_id".into(), "t".into());
        }
        let rl = vec!["receive_replica".to_string()];
        assert_eq!(GroupKey::of(&a, &rl), GroupKey::of(&b, &rl));
        assert_ne!(GroupKey::of(&a, &[]), GroupKey::of(&b, &[]));
        assert!(GroupKey::of(&a, &rl).key().starts_with("0@"));
    }

    #[test]
    fn retention() {
        assert!(!past_retention(0, 0, i64::MAX));
        assert!(past_retention(0, 10, 11));
        assert!(!past_retention(0, 10, 10));
    }
}

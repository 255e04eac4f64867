//! Which blocks answer a `Series` request when the bucket holds several resolutions of
//! the same data (raw, 5m, 1h), and which aggregates of a downsampled chunk are sent.
//!
//! Block choice follows Thanos's `bucketBlockSet.getFor`, per external label set: start
//! at the coarsest resolution allowed by `max_resolution_window`, and fill the time
//! not covered by its blocks with finer ones, recursively. Orrery adds one step Thanos
//! lacks: time still uncovered (raw blocks deleted by `--retention.resolution-raw`) is
//! filled with coarser blocks, finest first, so a query keeps seeing data that now
//! exists only downsampled instead of silently returning nothing.

use storeapi::wire::thanos::Aggr;
use tsdb::chunk::aggr::AggrType;

/// One block as the choice sees it: `[min_time, max_time)` and its resolution (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub min_time: i64,
    pub max_time: i64,
    pub resolution: i64,
}

/// Indices of the `spans` (blocks of ONE external label set) that answer the closed
/// range `[mint, maxt]` with at most `max_res` milliseconds of resolution.
pub fn choose(spans: &[Span], mint: i64, maxt: i64, max_res: i64) -> Vec<usize> {
    let mut res: Vec<i64> = spans.iter().map(|s| s.resolution).collect();
    res.sort_unstable_by(|a, b| b.cmp(a));
    res.dedup();
    let by_res: Vec<Vec<usize>> = res
        .iter()
        .map(|r| {
            let mut v: Vec<usize> = (0..spans.len())
                .filter(|&i| spans[i].resolution == *r)
                .collect();
            v.sort_by_key(|&i| (spans[i].min_time, spans[i].max_time));
            v
        })
        .collect();
    let set = Set {
        spans,
        by_res: &by_res,
    };
    let mut out = Vec::new();
    // Thanos: the coarsest allowed resolution first, gaps filled by finer ones.
    if let Some(first) = res.iter().position(|r| *r <= max_res) {
        set.fill(first, mint, maxt, &mut out);
    }
    // Orrery: what is still uncovered, from coarser resolutions (finest first).
    for level in (0..res.len()).rev().filter(|&l| res[l] > max_res) {
        for (a, b) in gaps(spans, &out, mint, maxt) {
            for &i in &by_res[level] {
                let s = spans[i];
                if s.max_time > a && s.min_time <= b && !out.contains(&i) {
                    out.push(i);
                }
            }
        }
    }
    out
}

struct Set<'a> {
    spans: &'a [Span],
    /// Block indices per resolution (coarsest first), each sorted by time.
    by_res: &'a [Vec<usize>],
}

impl Set<'_> {
    fn fill(&self, level: usize, mint: i64, maxt: i64, out: &mut Vec<usize>) {
        if mint > maxt {
            return;
        }
        let finer = level + 1 < self.by_res.len();
        let mut start = mint;
        for &i in &self.by_res[level] {
            let s = self.spans[i];
            if s.max_time <= mint {
                continue;
            }
            if s.min_time > maxt {
                break;
            }
            if finer {
                self.fill(level + 1, start, s.min_time - 1, out);
            }
            out.push(i);
            start = s.max_time;
        }
        if finer {
            self.fill(level + 1, start, maxt, out);
        }
    }
}

/// The closed sub-ranges of `[mint, maxt]` no chosen block covers.
fn gaps(spans: &[Span], chosen: &[usize], mint: i64, maxt: i64) -> Vec<(i64, i64)> {
    let mut cov: Vec<(i64, i64)> = chosen
        .iter()
        .map(|&i| (spans[i].min_time, spans[i].max_time - 1))
        .collect();
    cov.sort_unstable();
    let mut out = Vec::new();
    let mut at = mint;
    for (a, b) in cov {
        if at > maxt {
            break;
        }
        if a > at {
            out.push((at, (a - 1).min(maxt)));
        }
        at = at.max(b.saturating_add(1));
    }
    if at <= maxt {
        out.push((at, maxt));
    }
    out
}

/// The aggregates of a downsampled chunk to send for the request's `aggregates`, in
/// `AggrChunk` field order. A request naming none (or only `RAW`) gets count and sum,
/// which is what Thanos's querier asks for by default (an average).
pub fn requested(aggregates: &[i32]) -> Result<Vec<AggrType>, String> {
    let mut out = Vec::new();
    for &a in aggregates {
        let t = match Aggr::try_from(a) {
            Ok(Aggr::Raw) => continue,
            Ok(Aggr::Count) => AggrType::Count,
            Ok(Aggr::Sum) => AggrType::Sum,
            Ok(Aggr::Min) => AggrType::Min,
            Ok(Aggr::Max) => AggrType::Max,
            Ok(Aggr::Counter) => AggrType::Counter,
            Err(_) => return Err(format!("unknown aggregate {a}")),
        };
        if !out.contains(&t) {
            out.push(t);
        }
    }
    if out.is_empty() {
        out = vec![AggrType::Count, AggrType::Sum];
    }
    out.sort_by_key(|t| *t as u8);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;
    const M5: i64 = 300_000;

    fn span(a: i64, b: i64, r: i64) -> Span {
        Span {
            min_time: a * H,
            max_time: b * H,
            resolution: r,
        }
    }

    fn chosen(spans: &[Span], mint: i64, maxt: i64, max_res: i64) -> Vec<usize> {
        let mut v = choose(spans, mint, maxt, max_res);
        v.sort_unstable();
        v
    }

    #[test]
    fn raw_only_bucket_is_unchanged_by_any_window() {
        let spans = [span(0, 2, 0), span(2, 4, 0), span(4, 6, 0)];
        for r in [0, M5, H] {
            assert_eq!(chosen(&spans, 0, 6 * H - 1, r), vec![0, 1, 2]);
            assert_eq!(chosen(&spans, 3 * H, 3 * H + 5, r), vec![1]);
        }
    }

    #[test]
    fn coarsest_allowed_resolution_wins_and_finer_fills_gaps() {
        // Raw 0-48h, 5m over 0-40h, 1h over 0-24h.
        let mut spans: Vec<Span> = (0..24).map(|i| span(2 * i, 2 * i + 2, 0)).collect();
        spans.push(span(0, 40, M5)); // 24
        spans.push(span(0, 24, H)); // 25
        // Raw requested: raw blocks only.
        assert_eq!(
            chosen(&spans, 0, 48 * H - 1, 0),
            (0..24).collect::<Vec<_>>()
        );
        // 5m allowed: the 5m block, then raw for 40h-48h.
        assert_eq!(chosen(&spans, 0, 48 * H - 1, M5), vec![20, 21, 22, 23, 24]);
        // 1h allowed: 1h for 0-24h, 5m fills 24h-40h (the whole 5m block), raw the rest.
        assert_eq!(
            chosen(&spans, 0, 48 * H - 1, H),
            vec![20, 21, 22, 23, 24, 25]
        );
        // Thanos semantics: a window between resolutions takes the finer one.
        assert_eq!(
            chosen(&spans, 0, 10 * H, M5 - 1),
            (0..6).collect::<Vec<_>>()
        );
    }

    #[test]
    fn time_without_raw_blocks_is_served_from_coarser_ones() {
        // Raw deleted before 40h: 5m covers 0-48h.
        let spans = [span(40, 42, 0), span(42, 44, 0), span(0, 48, M5)];
        assert_eq!(chosen(&spans, 0, 44 * H - 1, 0), vec![0, 1, 2]);
        // Range entirely in raw: raw only.
        assert_eq!(chosen(&spans, 41 * H, 43 * H, 0), vec![0, 1]);
        // Only 5m exists at all.
        let only = [span(0, 48, M5)];
        assert_eq!(chosen(&only, 0, 10 * H, 0), vec![0]);
        assert_eq!(chosen(&only, 0, 10 * H, H), vec![0]);
        // Nothing overlaps: nothing chosen.
        assert!(chosen(&only, 50 * H, 60 * H, 0).is_empty());
    }

    #[test]
    fn gaps_are_closed_ranges() {
        let spans = [span(1, 2, 0), span(3, 4, 0)];
        assert_eq!(
            gaps(&spans, &[0, 1], 0, 5 * H),
            vec![(0, H - 1), (2 * H, 3 * H - 1), (4 * H, 5 * H)]
        );
        assert!(gaps(&spans, &[0], H, 2 * H - 1).is_empty());
    }

    #[test]
    fn requested_aggregates() {
        assert_eq!(
            requested(&[]).unwrap(),
            vec![AggrType::Count, AggrType::Sum]
        );
        assert_eq!(
            requested(&[Aggr::Sum as i32, Aggr::Count as i32, Aggr::Sum as i32]).unwrap(),
            vec![AggrType::Count, AggrType::Sum]
        );
        assert_eq!(
            requested(&[Aggr::Counter as i32]).unwrap(),
            vec![AggrType::Counter]
        );
        assert!(requested(&[42]).is_err());
    }
}

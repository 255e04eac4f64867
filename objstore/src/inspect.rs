//! What `tools bucket ls` and `tools bucket inspect` print about blocks, in Thanos's
//! formats (`cmd/thanos/tools_bucket.go`): times as RFC 3339 seconds, durations as Go
//! prints them (`2h0m0s`), counts with thousands separators, labels `k=v` sorted.

use std::collections::BTreeMap;

use tsdb::block::BlockMeta;

use crate::block::FileEntry;

/// Thanos's `inspect` columns, in order.
pub const COLUMNS: [&str; 13] = [
    "ULID",
    "FROM",
    "UNTIL",
    "RANGE",
    "UNTIL-DOWN",
    "#SERIES",
    "#SAMPLES",
    "#CHUNKS",
    "COMP-LEVEL",
    "COMP-FAILED",
    "LABELS",
    "RESOLUTION",
    "SOURCE",
];

/// Raw blocks are downsampled to 5m once they span 40h, 5m blocks to 1h at 10 days.
const DOWNSAMPLE_RANGE_0_MS: i64 = 40 * 3_600_000;
const DOWNSAMPLE_RANGE_1_MS: i64 = 10 * 24 * 3_600_000;
const RES_5M: i64 = 300_000;
const RES_1H: i64 = 3_600_000;

/// Unix milliseconds as RFC 3339 in UTC, to the second (Thanos prints `time.Unix(ms/1000)`).
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp(ms.div_euclid(1000), 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| ms.to_string())
}

/// A millisecond duration as Go's `time.Duration.String()`: `0s`, `500ms`, `1.5s`,
/// `2h0m0s`, `-38h0m0s`.
pub fn go_duration(ms: i64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    let neg = if ms < 0 { "-" } else { "" };
    let a = ms.unsigned_abs();
    if a < 1000 {
        return format!("{neg}{a}ms");
    }
    let (h, m) = (a / 3_600_000, (a / 60_000) % 60);
    let (s, frac) = ((a / 1000) % 60, a % 1000);
    let secs = if frac == 0 {
        format!("{s}s")
    } else {
        let f = format!("{frac:03}");
        format!("{s}.{}s", f.trim_end_matches('0'))
    };
    if h > 0 {
        format!("{neg}{h}h{m}m{secs}")
    } else if m > 0 {
        format!("{neg}{m}m{secs}")
    } else {
        format!("{neg}{secs}")
    }
}

/// `1234567` → `1,234,567` (Thanos prints counts with `message.NewPrinter(language.English)`).
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn resolution(meta: &BlockMeta) -> i64 {
    meta.thanos.as_ref().map_or(0, |t| t.downsample.resolution)
}

/// Thanos's `UNTIL-DOWN`: how much longer the block must span before the compactor
/// downsamples it (negative: overdue); `None` for 1h blocks (never downsampled again).
pub fn until_downsampling(meta: &BlockMeta) -> Option<i64> {
    let range = meta.max_time - meta.min_time;
    match resolution(meta) {
        RES_1H => None,
        RES_5M => Some(DOWNSAMPLE_RANGE_1_MS - range),
        _ => Some(DOWNSAMPLE_RANGE_0_MS - range),
    }
}

/// External labels as `k=v,k2=v2`, sorted by name.
pub fn labels_text(meta: &BlockMeta) -> String {
    meta.thanos
        .as_ref()
        .map(|t| {
            t.labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// Total bytes of the block's files as its `thanos.files` lists them (`None` when the
/// meta has no such list, e.g. a block from an old Thanos).
pub fn size_bytes(meta: &BlockMeta) -> Option<u64> {
    let v = meta.thanos.as_ref()?.extra.get("files")?;
    let files: Vec<FileEntry> = serde_json::from_value(v.clone()).ok()?;
    Some(files.iter().filter_map(|f| f.size_bytes).sum())
}

/// Bytes in IEC units as Thanos's UI shows them: `512B`, `1.5KiB`, `3.2MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1}{}", UNITS[u])
}

/// `ls -o wide`: Thanos's line, then samples, size and external labels.
pub fn wide_line(meta: &BlockMeta) -> String {
    let source = meta.thanos.as_ref().map_or("", |t| t.source.as_str());
    format!(
        "{} -- {} - {} Diff: {}, Compaction: {}, Downsample: {}, Source: {}, Samples: {}, Size: {}, Labels: {{{}}}",
        meta.ulid,
        rfc3339(meta.min_time),
        rfc3339(meta.max_time),
        go_duration((meta.max_time.div_euclid(1000) - meta.min_time.div_euclid(1000)) * 1000),
        meta.compaction.level,
        resolution(meta),
        source,
        meta.stats.num_samples,
        size_bytes(meta).map_or("-".into(), human_bytes),
        labels_text(meta),
    )
}

/// Whether the block's external labels hold every `selector` pair.
pub fn matches(meta: &BlockMeta, selector: &BTreeMap<String, String>) -> bool {
    let empty = BTreeMap::new();
    let labels = meta.thanos.as_ref().map_or(&empty, |t| &t.labels);
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A sort key per column: numbers and times sort by value, the rest as text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Num(i128),
    Text(String),
}

/// The `inspect` rows (one per block matching `selector`, in [`COLUMNS`] order),
/// sorted by the `sort_by` columns in turn. An unknown column is an error naming it.
pub fn inspect_rows<'a>(
    metas: impl IntoIterator<Item = &'a BlockMeta>,
    selector: &BTreeMap<String, String>,
    sort_by: &[String],
) -> Result<Vec<Vec<String>>, String> {
    let cols: Vec<usize> = sort_by
        .iter()
        .map(|c| {
            COLUMNS
                .iter()
                .position(|k| k.eq_ignore_ascii_case(c))
                .ok_or_else(|| format!("column {c} not found (columns: {})", COLUMNS.join(", ")))
        })
        .collect::<Result<_, _>>()?;
    let mut rows: Vec<(Vec<Key>, Vec<String>)> = Vec::new();
    for m in metas {
        if !matches(m, selector) {
            continue;
        }
        let range = m.max_time - m.min_time;
        let down = until_downsampling(m);
        let res = resolution(m);
        let source = m
            .thanos
            .as_ref()
            .map_or("", |t| t.source.as_str())
            .to_string();
        let text = vec![
            m.ulid.to_string(),
            rfc3339(m.min_time),
            rfc3339(m.max_time),
            go_duration(range),
            down.map_or("-".into(), go_duration),
            thousands(m.stats.num_series),
            thousands(m.stats.num_samples),
            thousands(m.stats.num_chunks),
            thousands(u64::from(m.compaction.level)),
            m.compaction.failed.to_string(),
            labels_text(m),
            go_duration(res),
            source.clone(),
        ];
        let keys = vec![
            Key::Text(m.ulid.to_string()),
            Key::Num(m.min_time.into()),
            Key::Num(m.max_time.into()),
            Key::Num(range.into()),
            Key::Num(down.map_or(i128::MIN, i128::from)),
            Key::Num(m.stats.num_series.into()),
            Key::Num(m.stats.num_samples.into()),
            Key::Num(m.stats.num_chunks.into()),
            Key::Num(m.compaction.level.into()),
            Key::Text(m.compaction.failed.to_string()),
            Key::Text(labels_text(m)),
            Key::Num(res.into()),
            Key::Text(source),
        ];
        rows.push((keys, text));
    }
    rows.sort_by(|a, b| {
        cols.iter()
            .map(|&c| a.0[c].cmp(&b.0[c]))
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    Ok(rows.into_iter().map(|(_, t)| t).collect())
}

/// The rows as an aligned table with a header, `|`-separated.
pub fn table(rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = COLUMNS.iter().map(|c| c.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let parts: Vec<String> = cells
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        format!("| {} |\n", parts.join(" | "))
    };
    let sep: String = format!(
        "|{}|\n",
        w.iter()
            .map(|n| "-".repeat(n + 2))
            .collect::<Vec<_>>()
            .join("|")
    );
    let mut out = line(&mut COLUMNS.iter().copied());
    out.push_str(&sep);
    for r in rows {
        out.push_str(&line(&mut r.iter().map(String::as_str)));
    }
    out
}

/// The rows with a header, fields separated by `sep` (`,` for CSV, quoted when
/// needed; tab for TSV).
pub fn delimited(rows: &[Vec<String>], sep: char) -> String {
    let field = |s: &str| {
        if sep == ',' && (s.contains(',') || s.contains('"') || s.contains('\n')) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let mut out = String::new();
    let header: Vec<String> = COLUMNS.iter().map(|c| field(c)).collect();
    out.push_str(&header.join(&sep.to_string()));
    out.push('\n');
    for r in rows {
        let f: Vec<String> = r.iter().map(|c| field(c)).collect();
        out.push_str(&f.join(&sep.to_string()));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tsdb::block::{BlockMetaCompaction, BlockStats, ThanosMeta, Ulid};

    fn meta(mint: i64, maxt: i64, labels: &[(&str, &str)], res: i64) -> BlockMeta {
        let mut t = ThanosMeta::new(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            "receive",
        );
        t.downsample.resolution = res;
        BlockMeta {
            ulid: Ulid::with_time(mint as u64),
            min_time: mint,
            max_time: maxt,
            stats: BlockStats {
                num_samples: 1_234_567,
                num_series: 12,
                num_chunks: 999,
                ..BlockStats::default()
            },
            compaction: BlockMetaCompaction {
                level: 2,
                ..BlockMetaCompaction::default()
            },
            version: 1,
            thanos: Some(t),
        }
    }

    #[test]
    fn go_formats() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(500), "500ms");
        assert_eq!(go_duration(1_500), "1.5s");
        assert_eq!(go_duration(90_000), "1m30s");
        assert_eq!(go_duration(7_200_000), "2h0m0s");
        assert_eq!(go_duration(-38 * 3_600_000), "-38h0m0s");
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(rfc3339(1_700_000_000_999), "2023-11-14T22:13:20Z");
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(1536), "1.5KiB");
    }

    #[test]
    fn inspect_selects_sorts_and_formats() {
        let h = 3_600_000;
        let a = meta(4 * h, 6 * h, &[("cluster", "a"), ("replica", "0")], 0);
        let b = meta(0, 2 * h, &[("cluster", "a")], RES_5M);
        let c = meta(2 * h, 4 * h, &[("cluster", "b")], RES_1H);
        let all = [&a, &b, &c];
        let rows = inspect_rows(all, &BTreeMap::new(), &["FROM".into(), "UNTIL".into()]).unwrap();
        let ids: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
        assert_eq!(
            ids,
            [b.ulid.to_string(), c.ulid.to_string(), a.ulid.to_string()]
        );
        assert_eq!(rows[2][3], "2h0m0s");
        assert_eq!(rows[2][4], "38h0m0s");
        assert_eq!(rows[0][4], "238h0m0s");
        assert_eq!(rows[1][4], "-");
        assert_eq!(rows[2][6], "1,234,567");
        assert_eq!(rows[2][10], "cluster=a,replica=0");
        assert_eq!(rows[0][11], "5m0s");
        assert_eq!(rows[2][11], "0s");
        let sel = BTreeMap::from([("cluster".to_string(), "a".to_string())]);
        let rows = inspect_rows(all, &sel, &["LABELS".into()]).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0][0], b.ulid.to_string());
        assert!(
            inspect_rows(all, &sel, &["NOPE".into()])
                .unwrap_err()
                .contains("NOPE")
        );
        let t = table(&rows);
        assert!(t.starts_with("| ULID "), "{t}");
        assert_eq!(t.lines().count(), 4);
        let csv = delimited(&rows, ',');
        assert!(csv.contains("\"cluster=a,replica=0\""), "{csv}");
    }
}

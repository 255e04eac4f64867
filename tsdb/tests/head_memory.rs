//! Heap bytes per head series, measured with a counting allocator: the receiver's memory
//! at a million series is this figure times a million, so it is defended here by a
//! budget rather than discovered in a soak run (issue #26).
//!
//! The series are the ingest benchmark's (9 labels, ~180 bytes of label text, shared
//! values as a real fleet has them); samples every 15 s with the benchmark's value mix
//! (counters, slow counters, random gauges, constants). The figures printed are the
//! allocator's usable sizes (what malloc really hands out), live after each stage.
//!
//! `cargo test -p tsdb --test head_memory -- --nocapture` prints the breakdown.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use storeapi::Sample;
use tsdb::{Db, Options, SyncPolicy};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
/// Live allocations: each costs malloc 8 more bytes than its usable size, and the
/// small ones fragment.
static COUNT: AtomicIsize = AtomicIsize::new(0);

fn usable(p: *mut u8) -> isize {
    // SAFETY: `p` was returned by the system allocator and is still live.
    unsafe { libc::malloc_usable_size(p.cast()) as isize }
}

// SAFETY: every call is forwarded to `System`; the counter only observes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            LIVE.fetch_add(usable(p), Ordering::Relaxed);
            COUNT.fetch_add(1, Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            LIVE.fetch_add(usable(p), Ordering::Relaxed);
            COUNT.fetch_add(1, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(usable(p), Ordering::Relaxed);
        COUNT.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: `p` came from `System` with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let before = usable(p);
        // SAFETY: forwarded with the caller's pointer and layout.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            LIVE.fetch_add(usable(q) - before, Ordering::Relaxed);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The ingest benchmark's series `i` (e2e `rwload::series_labels`), sorted by name.
fn series_labels(i: usize) -> Vec<(&'static str, String)> {
    let target = i / 500;
    let m = i % 500;
    let name = match (m / 10) % 4 {
        0 => format!("app_requests_{}_total", m / 10),
        1 => format!("app_errors_{}_total", m / 10),
        2 => format!("app_latency_{}_seconds", m / 10),
        _ => format!("app_build_{}_info", m / 10),
    };
    vec![
        ("__name__", name),
        ("cluster", format!("eu-{}", target % 4)),
        ("env", "production".into()),
        ("handler", format!("/api/v1/endpoint{}", m % 10)),
        (
            "instance",
            format!(
                "10.{}.{}.{}:9100",
                (target >> 16) & 255,
                (target >> 8) & 255,
                target & 255
            ),
        ),
        ("job", format!("service-{}", target % 20)),
        ("namespace", format!("team-{}", target % 12)),
        ("pod", format!("service-{}-7c9f{:05x}", target % 20, target)),
        ("region", "europe-west4".into()),
    ]
}

fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn next_value(i: usize, r: u64, prev: f64) -> f64 {
    let h = mix((i as u64) << 32 ^ r);
    match ((i % 500) / 10) % 4 {
        0 => prev + (h % 1000) as f64,
        1 => prev + if h.is_multiple_of(10) { 1.0 } else { 0.0 },
        2 => ((h >> 11) as f64 / (1u64 << 53) as f64) * 2.5 + 1e-6,
        _ => 1.0,
    }
}

const SERIES: usize = 100_000;
const BATCH: usize = 2_000;
const T0: i64 = 1_780_000_000_000;

/// Appends one sample to every series per round, `interval_ms` apart, in requests of
/// [`BATCH`] series as the receiver commits them.
fn append_rounds(
    db: &Db,
    labels: &[Vec<(&'static str, String)>],
    vals: &mut [f64],
    rounds: std::ops::Range<u64>,
    interval_ms: i64,
) {
    for r in rounds {
        for start in (0..SERIES).step_by(BATCH) {
            let mut app = db.appender();
            for i in start..(start + BATCH).min(SERIES) {
                vals[i] = next_value(i, r, vals[i]);
                let s = [Sample {
                    t: T0 + r as i64 * interval_ms,
                    v: vals[i],
                }];
                app.append_pairs(labels[i].iter().map(|(n, v)| (*n, v.as_str())), &s);
            }
            let out = app.commit().expect("commit");
            assert_eq!(out.rejected(), 0);
        }
    }
}

/// What a series holds after a stage.
#[derive(Debug, Clone, Copy)]
struct Stage {
    /// Live heap bytes (usable sizes) per series.
    bytes: f64,
    /// Live allocations per series.
    allocs: f64,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.0} ({:.1} allocations)", self.bytes, self.allocs)
    }
}

/// Heap bytes per series, live after each stage: `stages` are cumulative sample counts
/// per series, one sample every `interval_ms`.
fn measure(block: std::time::Duration, interval_ms: i64, stages: &[u64]) -> Vec<Stage> {
    let dir = tempfile::tempdir().unwrap();
    let labels: Vec<_> = (0..SERIES).map(series_labels).collect();
    let mut vals = vec![0.0; SERIES];
    let opts = Options {
        block_duration: block,
        wal_sync: SyncPolicy::Never,
        ..Options::default()
    };
    let db = Db::open(dir.path(), opts, None).unwrap();
    let base = LIVE.load(Ordering::Relaxed);
    let base_count = COUNT.load(Ordering::Relaxed);
    let mut out = Vec::new();
    let mut done = 0;
    for &n in stages {
        append_rounds(&db, &labels, &mut vals, done..n, interval_ms);
        done = n;
        out.push(Stage {
            bytes: (LIVE.load(Ordering::Relaxed) - base) as f64 / SERIES as f64,
            allocs: (COUNT.load(Ordering::Relaxed) - base_count) as f64 / SERIES as f64,
        });
    }
    assert_eq!(db.head_series(), SERIES);
    out
}

/// The budgets are the figures measured when they were set plus about 5%: a change
/// that makes every head series heavier fails here, not in a soak run.
#[test]
fn head_bytes_per_series_stay_within_budget() {
    // 2h blocks, 15 s scrapes: one chunk being filled.
    let long = measure(std::time::Duration::from_secs(7200), 15_000, &[1, 30, 120]);
    println!(
        "2h blocks, 15 s interval, {SERIES} series: heap bytes per series after 1 sample \
         {}, 30 samples {}, 120 samples {}",
        long[0], long[1], long[2]
    );
    // 2m blocks, 10 s samples (the soak benchmark's 1M-series run): chunks are cut at
    // every 2-minute boundary, so after 3 minutes each series has a closed chunk.
    let short = measure(std::time::Duration::from_secs(120), 10_000, &[1, 18, 30]);
    println!(
        "2m blocks, 10 s interval, {SERIES} series: heap bytes per series after 1 sample \
         {}, 18 samples (one chunk closed) {}, 30 samples (two closed) {}",
        short[0], short[1], short[2]
    );
    // Measured when set: 430, 466, 811, 438, 495. With a `Vec<Chunk>` and an
    // allocation per closed chunk instead of one packed list: one closed 479. With
    // labels as text keys (~184 bytes each) instead of symbol ids: 582, 617, 962, 630. Before issue #26's changes:
    // 715, 790, 1032, 991 (a `Vec` of four slots for the first closed chunk, a fresh
    // 128-byte buffer for the next chunk whatever the series needs, 8-byte postings
    // entries, two words per series in each of the two hash tables).
    for (what, got, budget) in [
        ("2h blocks, 1 sample", long[0].bytes, 452.0),
        ("2h blocks, 30 samples", long[1].bytes, 490.0),
        ("2h blocks, 120 samples", long[2].bytes, 852.0),
        ("2m blocks, one closed chunk", short[1].bytes, 460.0),
        ("2m blocks, two closed chunks", short[2].bytes, 520.0),
    ] {
        assert!(
            got <= budget,
            "{what}: {got:.0} heap bytes per series, budget {budget:.0}"
        );
    }
}

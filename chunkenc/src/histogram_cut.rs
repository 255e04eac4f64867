//! When the head cuts a histogram chunk for size or time, as Prometheus 3.5.3's
//! `histogramsAppendPreprocessor`: histogram chunks aim at 1024 bytes (not at a sample
//! count as XOR chunks do), predict their end time once a quarter full, never exceed
//! twice the target, and hold at least 10 samples unless the chunk range ends first.
//! Cuts for counter resets and layout changes are the appenders' business
//! ([`crate::Appended::NewChunk`]).

/// Size a histogram chunk aims at (`TargetBytesPerHistogramChunk`).
pub const TARGET_BYTES_PER_HISTOGRAM_CHUNK: usize = 1024;
/// Fewest samples a size-cut histogram chunk holds (`MinSamplesPerHistogramChunk`).
pub const MIN_SAMPLES_PER_HISTOGRAM_CHUNK: u16 = 10;

/// The end of the chunk range `t` falls in (`rangeForTimestamp`).
pub fn range_for_timestamp(t: i64, width: i64) -> i64 {
    if width <= 0 {
        return i64::MAX;
    }
    (t / width).saturating_mul(width).saturating_add(width)
}

/// Predicts a chunk's end so the rest of the range splits into equal chunks, assuming
/// the chunk is `1/ratio_to_full` full (`computeChunkEndTime`).
pub fn compute_chunk_end_time(start: i64, cur: i64, max_t: i64, ratio_to_full: f64) -> i64 {
    let n = (max_t - start) as f64 / ((cur - start + 1) as f64 * ratio_to_full);
    if n <= 1.0 {
        return max_t;
    }
    (start as f64 + (max_t - start) as f64 / n.floor()) as i64
}

/// A series' cutting state for its open histogram chunk (`nextAt` and
/// `histogramChunkHasComputedEndTime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistogramCutter {
    pub next_at: i64,
    pub has_computed_end_time: bool,
}

/// The open chunk as the cutter sees it.
#[derive(Debug, Clone, Copy)]
pub struct OpenChunk {
    pub min_time: i64,
    pub max_time: i64,
    pub num_samples: u16,
    pub num_bytes: usize,
}

impl HistogramCutter {
    /// State for a chunk just started at `min_time`.
    pub fn new(min_time: i64, chunk_range: i64) -> Self {
        HistogramCutter {
            next_at: range_for_timestamp(min_time, chunk_range),
            has_computed_end_time: false,
        }
    }

    /// Whether the sample at `t` must start a new chunk instead of going into `c`. On
    /// `true` the state is reset for the new chunk starting at `t`.
    pub fn should_cut(&mut self, t: i64, c: OpenChunk, chunk_range: i64) -> bool {
        let target = TARGET_BYTES_PER_HISTOGRAM_CHUNK;
        if c.num_samples == 0 {
            self.next_at = range_for_timestamp(t, chunk_range);
        }
        let min_time = if c.num_samples == 0 { t } else { c.min_time };
        let next_range_start = if self.has_computed_end_time {
            range_for_timestamp(min_time, chunk_range)
        } else {
            self.next_at
        };
        if !self.has_computed_end_time && c.num_bytes >= target / 4 {
            let ratio = target as f64 / c.num_bytes as f64;
            self.next_at = compute_chunk_end_time(min_time, c.max_time, self.next_at, ratio);
            self.has_computed_end_time = true;
        }
        let cut = (t >= self.next_at || c.num_bytes >= target * 2)
            && (c.num_samples >= MIN_SAMPLES_PER_HISTOGRAM_CHUNK || t >= next_range_start);
        if cut {
            *self = Self::new(t, chunk_range);
        }
        cut
    }

    /// After an appender started a new chunk at `t` (counter reset, layout change):
    /// Prometheus moves `nextAt` but keeps the computed-end-time flag.
    pub fn appender_cut(&mut self, t: i64, chunk_range: i64) {
        self.next_at = range_for_timestamp(t, chunk_range);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RANGE: i64 = 7_200_000;

    #[test]
    fn cuts_at_twice_the_target_only_after_ten_samples() {
        let mut c = HistogramCutter::new(0, RANGE);
        let big = OpenChunk {
            min_time: 0,
            max_time: 8_000,
            num_samples: 9,
            num_bytes: 3000,
        };
        assert!(!c.should_cut(9_000, big, RANGE), "fewer than 10 samples");
        let mut c = HistogramCutter::new(0, RANGE);
        assert!(c.should_cut(
            10_000,
            OpenChunk {
                num_samples: 10,
                ..big
            },
            RANGE
        ));
        assert_eq!(c, HistogramCutter::new(10_000, RANGE));
    }

    #[test]
    fn predicts_end_time_at_a_quarter_of_the_target() {
        let mut c = HistogramCutter::new(0, RANGE);
        // 256 bytes after 100 s: 4 chunks of 400 s each fit... the range is split evenly.
        let open = OpenChunk {
            min_time: 0,
            max_time: 99_999,
            num_samples: 100,
            num_bytes: 256,
        };
        assert!(!c.should_cut(100_000, open, RANGE));
        assert!(c.has_computed_end_time);
        // n = 7.2e6 / (1e5 * 4) = 18 → next_at = 7.2e6 / 18 = 400 s.
        assert_eq!(c.next_at, 400_000);
        assert!(c.should_cut(
            400_000,
            OpenChunk {
                max_time: 399_000,
                ..open
            },
            RANGE
        ));
    }

    #[test]
    fn chunk_range_end_overrides_min_samples() {
        let mut c = HistogramCutter::new(RANGE - 5_000, RANGE);
        let open = OpenChunk {
            min_time: RANGE - 5_000,
            max_time: RANGE - 1_000,
            num_samples: 3,
            num_bytes: 100,
        };
        assert!(c.should_cut(RANGE, open, RANGE));
    }
}

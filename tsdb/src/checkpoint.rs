//! The records of a WAL checkpoint, made from the head's state: what Prometheus's
//! checkpoint holds for a head without deletions, in its order — series records, float
//! samples records, native histogram records (types 7-10), then exemplar records — so Prometheus and
//! `promtool` read an Orrery checkpoint and Orrery reads its own after a restart.
//!
//! Only samples up to a given time are written: a checkpoint replaces the segments up
//! to a cut, and every sample in those segments is no newer than the head's newest
//! sample at that cut (appends and cuts are serialized), so later samples are in the
//! segments that stay. In steady state that bound is below the truncated head's start,
//! and the checkpoint holds series records alone, as Prometheus's does.

use std::sync::Arc;

use storeapi::histogram::HistogramValue;

use crate::chunk::{Encoding, XorIterator};
use crate::exemplars::Exemplar;
use crate::head::MemSeries;
use crate::wal;
use crate::wal::record::{self, ExemplarsRecord, RefHistogramSample, SamplesRecord};

/// Exemplars per checkpoint record.
const EXEMPLARS_PER_RECORD: usize = 4096;

/// Histogram samples gathered before their records are written.
const HISTOGRAMS_PER_RECORD: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Series,
    Samples,
    Histograms,
    Exemplars,
    Done,
}

/// Writes the checkpoint's records in pieces (see [`wal::Wal::checkpoint`]).
pub(crate) struct CheckpointRecords {
    series: Vec<Arc<MemSeries>>,
    phase: Phase,
    /// The series being written in this phase.
    i: usize,
    /// Float samples of series `i` not written yet (from `pending_at`).
    pending: Vec<(i64, f64)>,
    pending_at: usize,
    ints: Vec<RefHistogramSample>,
    floats: Vec<RefHistogramSample>,
    /// Stored exemplars of head series (ref), oldest first.
    exemplars: Vec<(u64, Exemplar)>,
    /// Samples and histograms newer than this are left out (see the module docs).
    maxt: i64,
    /// The first chunk that did not decode (a bug: its readable samples are written).
    pub error: Option<String>,
}

impl CheckpointRecords {
    /// Records of `series` (all of them) with their samples not newer than `maxt`, and
    /// `exemplars`.
    pub fn new(series: Vec<Arc<MemSeries>>, exemplars: Vec<(u64, Exemplar)>, maxt: i64) -> Self {
        CheckpointRecords {
            exemplars,
            maxt,
            series,
            phase: Phase::Series,
            i: 0,
            pending: Vec::new(),
            pending_at: 0,
            ints: Vec::new(),
            floats: Vec::new(),
            error: None,
        }
    }

    /// Appends whole frames to `buf` until it holds at least `target` bytes or all is
    /// written; returns whether more remains.
    pub fn fill(&mut self, buf: &mut Vec<u8>, target: usize) -> bool {
        while self.phase != Phase::Done && buf.len() < target {
            match self.phase {
                Phase::Series => self.series_record(buf, target),
                Phase::Samples => self.samples_record(buf, target),
                Phase::Histograms => self.histogram_records(buf),
                Phase::Exemplars => self.exemplar_record(buf),
                Phase::Done => {}
            }
        }
        self.phase != Phase::Done
    }

    fn next_phase(&mut self) {
        self.i = 0;
        self.phase = match self.phase {
            Phase::Series => Phase::Samples,
            Phase::Samples => Phase::Histograms,
            Phase::Histograms => Phase::Exemplars,
            Phase::Exemplars | Phase::Done => Phase::Done,
        };
    }

    fn series_record(&mut self, buf: &mut Vec<u8>, target: usize) {
        let at = wal::start_frame(buf);
        buf.push(record::TYPE_SERIES);
        while let Some(s) = self.series.get(self.i) {
            if buf.len() - at >= target {
                break;
            }
            crate::head::prefetch_ahead(|k| self.series.get(k).map(|s| &**s), self.i);
            buf.extend_from_slice(&s.sref.to_be_bytes());
            s.put_labels_record(buf);
            self.i += 1;
        }
        if !wal::abandon_frame_if_empty(buf, at, 1) {
            wal::finish_frame(buf, at);
        }
        if self.i >= self.series.len() {
            self.next_phase();
        }
    }

    fn samples_record(&mut self, buf: &mut Vec<u8>, target: usize) {
        let at = wal::start_frame(buf);
        buf.push(record::TYPE_SAMPLES);
        let mut rec = SamplesRecord::default();
        while let Some(s) = self.series.get(self.i) {
            if buf.len() - at >= target {
                break;
            }
            if self.pending_at == 0 && self.pending.is_empty() {
                let (pending, error, maxt) = (&mut self.pending, &mut self.error, self.maxt);
                s.for_each_chunk(|c| {
                    if c.encoding != Encoding::Xor || c.min_time > maxt {
                        return;
                    }
                    let decoded = XorIterator::new(c.data).and_then(|it| {
                        for x in it {
                            let x = x?;
                            if x.0 > maxt {
                                break;
                            }
                            pending.push(x);
                        }
                        Ok(())
                    });
                    if let Err(e) = decoded {
                        error.get_or_insert(e.to_string());
                    }
                });
            }
            while self.pending_at < self.pending.len() && buf.len() - at < target {
                let (t, v) = self.pending[self.pending_at];
                rec.push(buf, s.sref, t, v);
                self.pending_at += 1;
            }
            if self.pending_at >= self.pending.len() {
                self.pending.clear();
                self.pending_at = 0;
                self.i += 1;
            }
        }
        if !wal::abandon_frame_if_empty(buf, at, 1) {
            wal::finish_frame(buf, at);
        }
        if self.i >= self.series.len() {
            self.next_phase();
        }
    }

    fn exemplar_record(&mut self, buf: &mut Vec<u8>) {
        let end = (self.i + EXEMPLARS_PER_RECORD).min(self.exemplars.len());
        if self.i < end {
            let at = wal::start_frame(buf);
            buf.push(record::TYPE_EXEMPLARS);
            let mut rec = ExemplarsRecord::default();
            for (r, e) in &self.exemplars[self.i..end] {
                rec.push(buf, *r, e.t, e.value, &e.labels);
            }
            wal::finish_frame(buf, at);
            self.i = end;
        }
        if self.i >= self.exemplars.len() {
            self.next_phase();
        }
    }

    /// Gathers the histogram samples of the next series (and more, up to
    /// [`HISTOGRAMS_PER_RECORD`]), then writes them as up to four records.
    fn histogram_records(&mut self, buf: &mut Vec<u8>) {
        while let Some(s) = self.series.get(self.i) {
            if self.ints.len() + self.floats.len() >= HISTOGRAMS_PER_RECORD {
                break;
            }
            for c in s.chunks(i64::MIN, self.maxt) {
                if c.encoding == Encoding::Xor {
                    continue;
                }
                let decoded = c.iter_histograms().and_then(|it| {
                    for x in it {
                        let x = x?;
                        if x.t > self.maxt {
                            break;
                        }
                        let list = match x.h {
                            HistogramValue::Int(_) => &mut self.ints,
                            HistogramValue::Float(_) => &mut self.floats,
                        };
                        list.push(RefHistogramSample {
                            r: s.sref,
                            t: x.t,
                            h: x.h,
                        });
                    }
                    Ok(())
                });
                if let Err(e) = decoded {
                    self.error.get_or_insert(e.to_string());
                }
            }
            self.i += 1;
        }
        for (list, float) in [(&mut self.ints, false), (&mut self.floats, true)] {
            if list.is_empty() {
                continue;
            }
            let (std, custom) = record::encode_histogram_samples(list, float);
            for payload in [std, custom] {
                if payload.len() > 1 {
                    let at = wal::start_frame(buf);
                    buf.extend_from_slice(&payload);
                    wal::finish_frame(buf, at);
                }
            }
            list.clear();
        }
        if self.i >= self.series.len() {
            self.next_phase();
        }
    }
}

//! The remote-write path after the HTTP layer: decode (borrowing labels from the body),
//! validate, apply request limits, append to the tenant's TSDB, and map the outcome to
//! Thanos's status codes. Synchronous (decoding is CPU work, commit does disk I/O): call
//! it where a thread may block (the write runtime, see `write_runtime`, or
//! `spawn_blocking`).

use storeapi::Sample;
use storeapi::histogram::HistogramSample;
use storeapi::labels::short_eq;
use storeapi::wire::remote_write::{
    DecodeError, LabelRef, MetadataRef, SeriesView, WriteRequestReader,
};
use storeapi::wire::remote_write_v2::RequestReader;
use tsdb::exemplars::Exemplar;
use tsdb::metadata::MetaRef;

use crate::negotiate::Protocol;

use crate::limits::Effective;
use crate::metrics::{Reason, ReceiveMetrics};
use crate::multitsdb::{MultiTsdb, MultiTsdbError, Tenant};

/// Structural bounds on what a client may send.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_labels_per_series: usize,
    pub max_label_name_len: usize,
    pub max_label_value_len: usize,
}

impl Bounds {
    /// Names these rules for the TSDB's wire-key cache: a label encoding accepted under
    /// other bounds is checked again (see `tsdb::WireKey`).
    fn digest(&self) -> u64 {
        let mut b = [0u8; 24];
        b[..8].copy_from_slice(&(self.max_labels_per_series as u64).to_le_bytes());
        b[8..16].copy_from_slice(&(self.max_label_name_len as u64).to_le_bytes());
        b[16..].copy_from_slice(&(self.max_label_value_len as u64).to_le_bytes());
        xxhash_rust::xxh3::xxh3_64(&b)
    }
}

/// A refused or partly refused write; `status()` is the HTTP code, `Display` the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    TooManyHeadSeries(String),
    #[error("{0}")]
    NotReady(String),
    #[error("{0}")]
    Internal(String),
    /// A content type or encoding the receiver does not read (remote write: 415).
    #[error("{0}")]
    UnsupportedMediaType(String),
}

impl WriteError {
    pub fn status(&self) -> u16 {
        match self {
            WriteError::BadRequest(_) => 400,
            WriteError::Conflict(_) => 409,
            WriteError::TooLarge(_) => 413,
            WriteError::TooManyHeadSeries(_) => 429,
            WriteError::NotReady(_) => 503,
            WriteError::Internal(_) => 500,
            WriteError::UnsupportedMediaType(_) => 415,
        }
    }
}

/// What a successful (or partly successful) write did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteSummary {
    pub series: u64,
    pub samples: u64,
    /// Samples (floats and histograms) appended to the TSDB.
    pub appended: u64,
    /// Float samples the TSDB holds after this write: appended plus exact duplicates of
    /// a sample it had (a resent batch), as Prometheus counts them for the
    /// `X-Prometheus-Remote-Write-Samples-Written` header of remote write 2.0.
    pub written: u64,
    /// Native histogram samples received.
    pub histograms: u64,
    /// Native histogram samples the TSDB holds after this write (appended or exact
    /// duplicates), for `X-Prometheus-Remote-Write-Histograms-Written`.
    pub histograms_written: u64,
    /// Exemplars received.
    pub exemplars: u64,
    /// Exemplars the tenant's exemplar storage holds after this write: stored plus
    /// exact duplicates of its newest ones (as Prometheus counts them for the
    /// `X-Prometheus-Remote-Write-Exemplars-Written` header).
    pub exemplars_written: u64,
    /// Metadata entries received.
    pub metadata: u64,
}

/// Checks a borrowed label set: count, lengths, names, non-empty values, sorted, unique.
pub fn check_labels(labels: &[LabelRef<'_>], b: &Bounds) -> Result<(), String> {
    check_labels_after(labels, &[], b)
}

/// [`check_labels`] for a series that follows `prev`, a label set that passed it under
/// the same bounds. Where the names so far equal `prev`'s, a name is already known
/// valid, within its limit and in order, so only its value is checked: a request's
/// series mostly share their names, and checking each name again was ~4% of the
/// receiver's CPU at a million series (issue #26).
pub fn check_labels_after(
    labels: &[LabelRef<'_>],
    prev: &[LabelRef<'_>],
    b: &Bounds,
) -> Result<(), String> {
    if labels.is_empty() {
        return Err("series has no labels".into());
    }
    if labels.len() > b.max_labels_per_series {
        return Err(format!(
            "series has {} labels, over the limit of {}",
            labels.len(),
            b.max_labels_per_series
        ));
    }
    let mut same_names = true;
    for (i, l) in labels.iter().enumerate() {
        if same_names
            && let Some(p) = prev.get(i)
            && short_eq(p.name.as_bytes(), l.name.as_bytes())
        {
            check_value(l, b)?;
            continue;
        }
        same_names = false;
        if l.name.len() > b.max_label_name_len {
            return Err(format!(
                "label name of {} bytes is over the limit of {}",
                l.name.len(),
                b.max_label_name_len
            ));
        }
        if l.value.len() > b.max_label_value_len {
            return Err(value_too_long(l, b));
        }
        if !storeapi::labels::is_valid_label_name(l.name) {
            return Err(format!("invalid label name {:?}", l.name));
        }
        if l.value.is_empty() {
            return Err(format!("empty value for label {:?}", l.name));
        }
        if i > 0 {
            let prev = labels[i - 1].name;
            // Names are valid here, so not empty; most neighbours differ in their first
            // byte, and one byte compare replaces two `memcmp` calls (2.5% of the
            // receiver's CPU at a million series, issue #26).
            let order = match (prev.as_bytes().first(), l.name.as_bytes().first()) {
                (Some(a), Some(b)) if a != b => a.cmp(b),
                _ => prev.cmp(l.name),
            };
            match order {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => {
                    return Err(format!("duplicate label name {:?}", l.name));
                }
                std::cmp::Ordering::Greater => {
                    return Err(format!(
                        "labels are not sorted: {:?} after {:?}",
                        l.name, prev
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The checks of [`check_labels`] on a label's value.
#[inline]
fn check_value(l: &LabelRef<'_>, b: &Bounds) -> Result<(), String> {
    if l.value.len() > b.max_label_value_len {
        return Err(value_too_long(l, b));
    }
    if l.value.is_empty() {
        return Err(format!("empty value for label {:?}", l.name));
    }
    Ok(())
}

fn value_too_long(l: &LabelRef<'_>, b: &Bounds) -> String {
    format!(
        "value of label {:?} has {} bytes, over the limit of {}",
        l.name,
        l.value.len(),
        b.max_label_value_len
    )
}

/// Bytes of the TSDB's text key for `labels` (names and values plus two separators
/// each), to size the appender's key buffer.
fn key_text_len(labels: &[LabelRef<'_>]) -> usize {
    labels
        .iter()
        .map(|l| l.name.len() + l.value.len() + 2)
        .sum()
}

/// [`show`] for a series known by its label fields as sent (see
/// `SeriesView::wire_labels`).
fn show_wire(wire: &[u8]) -> String {
    let mut v = SeriesView::default();
    match v.decode(wire) {
        Ok(()) => show(&v.labels),
        Err(_) => "{?}".to_string(),
    }
}

fn show(labels: &[LabelRef<'_>]) -> String {
    let mut s = String::from("{");
    for (i, l) in labels.iter().take(12).enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let v: String = l.value.chars().take(64).collect();
        s.push_str(&format!(
            "{}={:?}",
            l.name.chars().take(64).collect::<String>(),
            v
        ));
    }
    if labels.len() > 12 {
        s.push_str(", …");
    }
    s.push('}');
    s
}

fn decode_err(e: DecodeError) -> WriteError {
    WriteError::BadRequest(format!("invalid protobuf remote-write request: {e}"))
}

fn decode_err_v2(e: DecodeError) -> WriteError {
    WriteError::BadRequest(format!("invalid protobuf remote-write 2.0 request: {e}"))
}

/// The series of a request body of either protocol. A 2.0 body is read directly (no
/// translation to 1.0 on the local path: that would encode and decode every label twice).
enum Reader<'a> {
    V1(WriteRequestReader<'a>),
    /// With the number of series whose metadata says anything.
    V2(RequestReader<'a>, u64),
}

impl<'a> Reader<'a> {
    fn new(raw: &'a [u8], protocol: Protocol) -> Result<Self, WriteError> {
        Ok(match protocol {
            Protocol::V1 => Reader::V1(WriteRequestReader::new(raw)),
            Protocol::V2 => Reader::V2(RequestReader::new(raw).map_err(decode_err_v2)?, 0),
        })
    }

    fn next_series(&mut self, view: &mut SeriesView<'a>) -> Result<bool, WriteError> {
        match self {
            Reader::V1(r) => r.next_series(view).map_err(decode_err),
            Reader::V2(r, metadata) => {
                let more = r.next_series(view).map_err(decode_err_v2)?;
                if view.metadata.is_some_and(|m| !m.is_empty()) {
                    *metadata += 1;
                }
                Ok(more)
            }
        }
    }

    /// Bytes of the body read so far.
    fn consumed(&self) -> usize {
        match self {
            Reader::V1(r) => r.consumed(),
            Reader::V2(r, _) => r.consumed(),
        }
    }

    fn metadata(&self) -> u64 {
        match self {
            Reader::V1(r) => r.metadata().len() as u64,
            Reader::V2(_, n) => *n,
        }
    }
}

/// How many more of something the rest of a request holds, extrapolated from the
/// `count` its first `consumed` of `total` bytes held, with an eighth to spare. Never
/// more than the bytes left: each one takes at least a byte.
fn extrapolate(count: usize, consumed: usize, total: usize) -> usize {
    let rest = total.saturating_sub(consumed);
    let guess = count.saturating_mul(rest) / consumed.max(1);
    guess
        .saturating_add(guess / 8 + 1)
        .min(rest.saturating_add(1))
}

/// Decodes and appends one uncompressed `prometheus.WriteRequest` for `tenant`.
pub fn write(
    mt: &MultiTsdb,
    metrics: &ReceiveMetrics,
    tenant: &str,
    raw: &[u8],
    limits: &Effective,
    bounds: &Bounds,
) -> Result<WriteSummary, WriteError> {
    let mut summary = WriteSummary::default();
    write_into(
        mt,
        metrics,
        tenant,
        raw,
        Protocol::V1,
        limits,
        bounds,
        &mut summary,
    )
    .map(|()| summary)
}

/// [`write`] for a body of either protocol, filling `summary` also when the write fails: a partly refused request
/// still committed its valid samples, and a remote-write 2.0 response must say how many.
pub fn write_into(
    mt: &MultiTsdb,
    metrics: &ReceiveMetrics,
    tenant: &str,
    raw: &[u8],
    protocol: Protocol,
    limits: &Effective,
    bounds: &Bounds,
    summary: &mut WriteSummary,
) -> Result<(), WriteError> {
    // Pass 1: decode and validate, borrowing from `raw`.
    let mut reader = Reader::new(raw, protocol)?;
    // Valid series: their labels (borrowed from `raw`, back to back, kept in the view as
    // it decodes them: `label_spans` index them) and samples.
    // Sized from the request: a label takes at least six bytes of protobuf framing
    // plus its text, a third of that is a fair guess, and growing a vector of many
    // thousand labels by doubling copied it all several times (issue #26).
    let mut view = SeriesView::default();
    view.keep_labels();
    view.labels.reserve(raw.len() / 32);
    // 1.0 series name their labels with the same bytes in every request: a series the
    // tenant's head has seen so is found by those bytes, its labels neither parsed nor
    // checked again (they were accepted under the same bounds). 2.0 labels are refs
    // into each request's own symbol table: parsed as always.
    // (The TSDB says when its cache is not worth asking: full, and finding too few.)
    let (cache_tenant, use_cache) = match protocol {
        Protocol::V1 => {
            view.defer_labels();
            let t = mt.get(tenant);
            let worth = t.as_ref().is_none_or(|t| t.db.wire_keys_worth_asking());
            (t, worth)
        }
        Protocol::V2 => (None, false),
    };
    let wire_tag = bounds.digest();
    // Per valid series: its label fields as sent (empty when there are none to
    // remember it by). Series whose labels wait for the cache lookup after the loop
    // (all lookups of a request together: one by one between decoding, each waited on
    // its cache misses): index among valid series, and position in the request.
    let mut wires: Vec<&[u8]> = Vec::new();
    let mut deferred: Vec<(usize, u64)> = Vec::new();
    let mut label_bytes = 0usize;
    let mut label_spans: Vec<(usize, usize)> = Vec::new();
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let mut samples: Vec<Sample> = Vec::new();
    // Valid native histograms, moved out of the decoded series, and each series' span.
    let mut hists: Vec<HistogramSample> = Vec::new();
    let mut hist_spans: Vec<(usize, usize)> = Vec::new();
    let mut series_total = 0u64;
    let mut invalid_series = 0u64;
    let mut invalid_samples = 0u64;
    // The first series refused for its labels, by position in the request.
    let mut first_invalid: Option<(u64, String)> = None;
    let mut histograms = 0u64;
    let mut invalid_histograms = 0u64;
    let mut first_invalid_histogram: Option<String> = None;
    let mut exemplars = 0u64;
    let mut pending_exemplars: Vec<(std::sync::Arc<storeapi::Labels>, Exemplar)> = Vec::new();
    let mut invalid_exemplars = 0u64;
    // Borrowed from the request; a run of equal entries (a family's series) is kept once.
    let mut pending_metadata: Vec<(&str, MetaRef<'_>)> = Vec::new();
    let mut invalid_metadata = 0u64;
    // The per-series vectors sized from the request too: a series with its labels and
    // a sample or histogram takes about a hundred bytes or more, and doubling each of
    // these from empty was 3% of the receiver's time with 2,000 histograms per request
    // (issue #20). Histograms' own vector is sized when the first one comes.
    let series_guess = raw.len() / 128;
    for v in [&mut spans, &mut hist_spans, &mut label_spans] {
        v.reserve(series_guess);
    }
    wires.reserve(series_guess);
    samples.reserve(series_guess);
    while reader.next_series(&mut view)? {
        series_total += 1;
        if let Some(max) = limits.series
            && series_total > max
        {
            metrics.reject_series(tenant, Reason::request_limit, series_total);
            return Err(WriteError::TooLarge(format!(
                "request has more than {max} series: over the series_limit of tenant {tenant:?}"
            )));
        }
        let wire = view.wire_labels();
        let defer = wire.is_some()
            && use_cache
            && cache_tenant.is_some()
            && view.exemplars.is_empty()
            && (!view.samples.is_empty() || !view.histograms.is_empty());
        if !defer {
            view.parse_labels().map_err(decode_err)?;
        }
        exemplars += view.exemplars.len() as u64;
        if !view.exemplars.is_empty() {
            collect_exemplars(
                &view,
                bounds,
                &mut pending_exemplars,
                &mut invalid_exemplars,
            );
        }
        if protocol == Protocol::V2
            && let Some(m) = view.metadata.filter(|m| !m.is_empty())
        {
            match view
                .series_labels()
                .iter()
                .find(|l| l.name == storeapi::METRIC_NAME)
            {
                Some(name) => {
                    push_metadata(&mut pending_metadata, m.kind.family_of(name.value), &m)
                }
                None => invalid_metadata += 1,
            }
        }
        let hstart = hists.len();
        if hists.capacity() == 0 && !view.histograms.is_empty() {
            hists.reserve(series_guess);
        }
        histograms += view.histograms.len() as u64;
        let series_start = view.labels_start();
        if hists.len() + view.histograms.len() > hists.capacity() {
            let more = extrapolate(hists.len(), reader.consumed(), raw.len());
            hists.reserve(view.histograms.len() + more);
        }
        for h in view.histograms.drain(..) {
            match h.h.validate() {
                Ok(()) => hists.push(h),
                Err(e) => {
                    invalid_histograms += 1;
                    if first_invalid_histogram.is_none() {
                        let series = match wire.filter(|_| defer) {
                            Some(w) => show_wire(w),
                            None => show(view.labels.get(series_start..).unwrap_or_default()),
                        };
                        first_invalid_histogram =
                            Some(format!("{e} at t={} in series {series}", h.t));
                    }
                }
            }
        }
        if view.samples.is_empty() && hists.len() == hstart {
            view.drop_series_labels();
            continue;
        }
        let prev = label_spans
            .last()
            .and_then(|&(a, b)| view.labels.get(a..b))
            .unwrap_or_default();
        if defer {
            // Checked after the loop unless the cache knows the bytes.
        } else if let Err(why) = check_labels_after(view.series_labels(), prev, bounds) {
            invalid_series += 1;
            invalid_samples += view.samples.len() as u64 + (hists.len() - hstart) as u64;
            hists.truncate(hstart);
            if first_invalid.is_none() {
                first_invalid = Some((
                    series_total,
                    format!("{why} in series {}", show(view.series_labels())),
                ));
            }
            view.drop_series_labels();
            continue;
        }
        // The request's vectors, when full, are sized for the rest of it from what
        // its bytes so far held, not doubled (see `series_guess`).
        let consumed = reader.consumed();
        if spans.len() == spans.capacity() {
            let more = extrapolate(spans.len(), consumed, raw.len());
            for v in [&mut spans, &mut hist_spans, &mut label_spans] {
                v.reserve(more);
            }
            wires.reserve(more);
        }
        if samples.len() + view.samples.len() > samples.capacity() {
            samples.reserve(view.samples.len() + extrapolate(samples.len(), consumed, raw.len()));
        }
        let start = samples.len();
        samples.extend_from_slice(&view.samples);
        if let Some(max) = limits.samples
            && (samples.len() + hists.len()) as u64 + invalid_samples > max
        {
            metrics.reject_samples(
                tenant,
                Reason::request_limit,
                (samples.len() + hists.len()) as u64,
            );
            return Err(WriteError::TooLarge(format!(
                "request has more than {max} samples: over the samples_limit of tenant {tenant:?}"
            )));
        }
        spans.push((start, samples.len()));
        hist_spans.push((hstart, hists.len()));
        label_bytes += key_text_len(view.series_labels());
        label_spans.push((view.labels_start(), view.labels.len()));
        // Series with exemplars are not found through the cache (see above).
        let rememberable = view.exemplars.is_empty();
        wires.push(
            wire.filter(|_| rememberable && use_cache)
                .unwrap_or_default(),
        );
        if defer {
            deferred.push((spans.len() - 1, series_total));
        }
    }
    // The deferred series: found through the cache, or parsed and checked now.
    let mut cached: Vec<Option<tsdb::CachedSeries>> = vec![None; spans.len()];
    // Float samples of series refused here (still in `samples`), and those series.
    let mut dropped_samples = 0usize;
    let mut refused_late = vec![false; spans.len()];
    if let Some(t) = &cache_tenant
        && !deferred.is_empty()
    {
        let keys: Vec<tsdb::WireKey<'_>> = deferred
            .iter()
            .map(|&(i, _)| tsdb::WireKey::new(wires[i], wire_tag))
            .collect();
        let mut found = Vec::with_capacity(keys.len());
        t.db.cached_series_many(&keys, &mut found);
        // The last series parsed here: label names usually repeat from one series to
        // the next, and `check_labels_after` skips what it checked for the one before.
        let mut prev: Option<(usize, usize)> = None;
        for (&(i, pos), hit) in deferred.iter().zip(found) {
            if hit.is_some() {
                cached[i] = hit;
                continue;
            }
            let start = view.labels.len();
            storeapi::wire::remote_write::parse_wire_labels(wires[i], &mut view.labels)
                .map_err(decode_err)?;
            let labels = &view.labels[start..];
            let before = prev
                .and_then(|(a, b)| view.labels.get(a..b))
                .unwrap_or_default();
            match check_labels_after(labels, before, bounds) {
                Ok(()) => {
                    label_bytes += key_text_len(labels);
                    label_spans[i] = (start, view.labels.len());
                    prev = Some(label_spans[i]);
                }
                Err(why) => {
                    let (a, b) = spans[i];
                    let (ha, hb) = hist_spans[i];
                    invalid_series += 1;
                    invalid_samples += (b - a + hb - ha) as u64;
                    dropped_samples += b - a;
                    refused_late[i] = true;
                    if first_invalid.as_ref().is_none_or(|(p, _)| pos < *p) {
                        first_invalid = Some((pos, format!("{why} in series {}", show(labels))));
                    }
                    view.labels.truncate(start);
                }
            }
        }
    }
    let label_refs: Vec<LabelRef<'_>> = std::mem::take(&mut view.labels);
    let received = (samples.len() - dropped_samples) as u64 + invalid_samples;
    let metadata = reader.metadata();
    if let Reader::V1(r) = &reader {
        for m in r.metadata() {
            push_metadata(&mut pending_metadata, m.family, m);
        }
    }
    let per_tenant = crate::metrics::TenantLabels {
        tenant: tenant.to_string(),
    };
    if exemplars > 0 {
        metrics
            .exemplars_received
            .get_or_create(&per_tenant)
            .inc_by(exemplars);
    }
    if metadata > 0 {
        metrics
            .metadata_received
            .get_or_create(&per_tenant)
            .inc_by(metadata);
    }
    metrics
        .samples_received
        .get_or_create(&crate::metrics::TenantLabels {
            tenant: tenant.to_string(),
        })
        .inc_by(received);
    metrics
        .series_received
        .get_or_create(&crate::metrics::TenantLabels {
            tenant: tenant.to_string(),
        })
        .inc_by(series_total);
    metrics.reject_series(tenant, Reason::invalid_labels, invalid_series);
    metrics.reject_samples(tenant, Reason::invalid_labels, invalid_samples);
    if histograms > 0 {
        metrics
            .histograms_received
            .get_or_create(&per_tenant)
            .inc_by(histograms);
    }
    if invalid_histograms > 0 {
        metrics
            .histograms_rejected
            .get_or_create(&per_tenant)
            .inc_by(invalid_histograms);
        metrics.reject_samples(tenant, Reason::invalid_histogram, invalid_histograms);
    }

    *summary = WriteSummary {
        series: series_total,
        samples: received,
        appended: 0,
        written: 0,
        histograms,
        histograms_written: 0,
        exemplars,
        exemplars_written: 0,
        metadata,
    };
    metrics.reject_exemplars(tenant, "invalid_labels", invalid_exemplars);
    metrics.reject_metadata(tenant, invalid_metadata);
    let mut problems: Vec<String> = Vec::new();
    let mut conflict = false;
    let mut exemplar_problems = 0u64;
    if let Some((_, f)) = first_invalid {
        conflict = true;
        problems.push(format!(
            "{invalid_series} series ({invalid_samples} samples) with an invalid label set refused; first: {f}"
        ));
    }

    if !spans.is_empty() {
        // The tenant the cached series were found in (a tenant is never replaced while
        // a request holds it; the appender checks anyway).
        let t = match cache_tenant {
            Some(t) => t,
            None => tenant_of(mt, tenant)?,
        };
        if let Some(max) = limits.head_series {
            let head = t.db.head_series() as u64;
            if head >= max {
                metrics.reject_samples(tenant, Reason::head_series_limit, samples.len() as u64);
                return Err(WriteError::TooManyHeadSeries(format!(
                    "tenant {tenant:?} has {head} head series, at or over its head_series_limit of {max}; retry later"
                )));
            }
        }
        // By borrowed label pairs: a series the head knows costs a hash and a lookup,
        // no allocation; only new series get owned labels (inside the TSDB).
        // A series' floats go before its histograms (the head's and the WAL replay's
        // order); `key_series` maps each appender key back to its series.
        let mut app = t.db.appender();
        app.reserve(spans.len(), samples.len(), label_bytes);
        let mut key_series: Vec<usize> = Vec::with_capacity(spans.len());
        let mut hist_iter = hists.into_iter();
        for (i, ((&(a, b), &(s, e)), &(hs, he))) in
            label_spans.iter().zip(&spans).zip(&hist_spans).enumerate()
        {
            let hs_of_series = hist_iter.by_ref().take(he - hs);
            if refused_late[i] {
                hs_of_series.for_each(drop);
                continue;
            }
            let pairs = || label_refs[a..b].iter().map(|l| (l.name, l.value));
            let wire_key = || tsdb::WireKey::new(wires[i], wire_tag);
            let mut c = cached[i].take();
            if e > s {
                let c = if he > hs { c.clone() } else { c.take() };
                match c {
                    Some(c) => app.append_cached(c, &samples[s..e]),
                    None if !wires[i].is_empty() => {
                        app.append_pairs_remembered(wire_key(), pairs(), &samples[s..e])
                    }
                    None => app.append_pairs(pairs(), &samples[s..e]),
                }
                key_series.push(i);
            }
            if he > hs {
                match c {
                    Some(c) => app.append_histograms_cached(c, hs_of_series),
                    None if !wires[i].is_empty() => {
                        app.append_histogram_pairs_remembered(wire_key(), pairs(), hs_of_series)
                    }
                    None => app.append_histogram_pairs(pairs(), hs_of_series),
                }
                key_series.push(i);
            }
        }
        let app_len = app.len() as u64;
        let out = app.commit().map_err(|e| {
            metrics.reject_samples(tenant, Reason::tsdb_error, app_len);
            WriteError::Internal(format!(
                "writing to the TSDB of tenant {tenant:?} failed: {e}"
            ))
        })?;
        summary.appended = out.appended;
        summary.histograms_written = out.histograms_appended + out.histogram_duplicates_ignored;
        summary.written = out.appended + out.duplicates_ignored - summary.histograms_written;
        metrics
            .head_series
            .get_or_create(&crate::metrics::TenantLabels {
                tenant: tenant.to_string(),
            })
            .set(t.db.head_series() as i64);
        metrics.reject_samples(tenant, Reason::out_of_order, out.out_of_order);
        metrics.reject_samples(tenant, Reason::duplicate_timestamp, out.duplicate_timestamp);
        metrics.reject_samples(tenant, Reason::out_of_bounds, out.out_of_bounds);
        metrics.reject_samples(tenant, Reason::too_far_in_future, out.too_far_in_future);
        metrics.reject_samples(tenant, Reason::invalid_histogram, out.invalid_histograms);
        metrics.reject_samples(
            tenant,
            Reason::invalid_labels,
            out.invalid_labels + out.unknown_series,
        );
        if out.rejected() > 0 {
            conflict = true;
            let first = out
                .first_rejection
                .as_ref()
                .map(|r| {
                    let what = match r.reason {
                        tsdb::RejectReason::OutOfOrder => "out of order sample".to_string(),
                        tsdb::RejectReason::DuplicateTimestamp => {
                            "duplicate sample for timestamp (different value)".to_string()
                        }
                        tsdb::RejectReason::OutOfBounds => {
                            "out of bounds sample (older than the head's appendable window)"
                                .to_string()
                        }
                        tsdb::RejectReason::InvalidHistogram => {
                            "histogram whose buckets do not match its spans".to_string()
                        }
                        tsdb::RejectReason::TooFarInFuture => format!(
                            "sample too far in the future (newer than t={}, the receiver's clock plus --tsdb.too-far-in-future.time-window)",
                            out.max_valid_time
                        ),
                    };
                    let l = key_series
                        .get(r.series_index)
                        .and_then(|&i| Some((label_spans.get(i)?, wires.get(i)?)))
                        .map(|(&(a, b), w)| {
                            if a == b && !w.is_empty() {
                                show_wire(w)
                            } else {
                                show(&label_refs[a..b])
                            }
                        })
                        .unwrap_or_default();
                    format!("; first: {what} at t={} in series {l}", r.t)
                })
                .unwrap_or_default();
            problems.push(format!(
                "{} samples refused (out_of_order={}, duplicate_timestamp={}, out_of_bounds={}, too_far_in_future={}, invalid={}){first}; {} other samples written",
                out.rejected(),
                out.out_of_order,
                out.duplicate_timestamp,
                out.out_of_bounds,
                out.too_far_in_future,
                out.invalid_labels + out.unknown_series,
                out.appended
            ));
        }
    }
    // Exemplars and metadata after the samples (Prometheus commits exemplars after the
    // WAL). Refused exemplars never fail the request: they are counted and dropped, as
    // Prometheus's remote-write 1.0 handler does.
    let keep_exemplars = !pending_exemplars.is_empty() && mt.config().max_exemplars > 0;
    if !pending_exemplars.is_empty() && !keep_exemplars {
        metrics.reject_exemplars(tenant, "disabled", pending_exemplars.len() as u64);
    }
    if keep_exemplars || !pending_metadata.is_empty() {
        let t = tenant_of(mt, tenant)?;
        if keep_exemplars {
            let items: Vec<(storeapi::Labels, Exemplar)> = pending_exemplars
                .into_iter()
                .map(|(series, e)| ((*series).clone(), e))
                .collect();
            // Stored exemplars are logged to the WAL before the request is answered.
            let verdicts = t.db.add_exemplars(&items).map_err(|e| {
                WriteError::Internal(format!(
                    "writing exemplars to the TSDB of tenant {tenant:?} failed: {e}"
                ))
            })?;
            let mut stored = 0u64;
            for (v, (series, _)) in verdicts.into_iter().zip(&items) {
                match v {
                    Ok(tsdb::exemplars::Added::Stored) => {
                        stored += 1;
                        summary.exemplars_written += 1;
                    }
                    Ok(tsdb::exemplars::Added::Duplicate) => summary.exemplars_written += 1,
                    Err(e) => {
                        tracing::debug!(tenant, error = %e, "exemplar dropped");
                        metrics.reject_exemplars(tenant, e.reason(), 1);
                        // Prometheus's 2.0 handler answers out-of-order exemplars with a
                        // 400 (the rest of the request is written); 1.0 drops them quietly.
                        if protocol == Protocol::V2
                            && matches!(e, tsdb::exemplars::ExemplarError::OutOfOrder { .. })
                        {
                            if exemplar_problems == 0 {
                                problems.push(format!("{e} for series {series}"));
                            }
                            exemplar_problems += 1;
                        }
                    }
                }
            }
            metrics.store_exemplars(tenant, stored);
        }
        // Kept metadata is in the tenant's journal before the request is answered; a
        // failed journal write is a 500, so the sender retries it.
        let verdicts = t.metadata.update_all(&pending_metadata).map_err(|e| {
            WriteError::Internal(format!(
                "writing metric metadata of tenant {tenant:?} failed: {e}"
            ))
        })?;
        for e in verdicts.into_iter().filter_map(Result::err) {
            tracing::debug!(tenant, error = %e, "metadata dropped");
            metrics.reject_metadata(tenant, 1);
        }
    }
    if let Some(f) = first_invalid_histogram {
        problems.insert(
            0,
            format!(
                "{invalid_histograms} invalid native histogram samples refused; first: {f} (the request's valid samples were written)"
            ),
        );
        return Err(WriteError::BadRequest(problems.join("; ")));
    }
    if conflict {
        return Err(WriteError::Conflict(problems.join("; ")));
    }
    if exemplar_problems > 0 {
        if exemplar_problems > 1 {
            problems.push(format!(
                "{} more out of order exemplars",
                exemplar_problems - 1
            ));
        }
        return Err(WriteError::BadRequest(problems.join("; ")));
    }
    Ok(())
}

fn tenant_of(mt: &MultiTsdb, tenant: &str) -> Result<std::sync::Arc<Tenant>, WriteError> {
    mt.get_or_create(tenant).map_err(|e| match e {
        MultiTsdbError::Tenant(e) => WriteError::BadRequest(e.to_string()),
        MultiTsdbError::TooManyTenants(_) => WriteError::TooManyHeadSeries(e.to_string()),
        e => WriteError::Internal(e.to_string()),
    })
}

/// Owned copies of a series' exemplars, for storing after the samples. A series with an
/// invalid label set has its exemplars dropped (counted in `invalid`), as its samples.
fn collect_exemplars(
    view: &SeriesView<'_>,
    bounds: &Bounds,
    out: &mut Vec<(std::sync::Arc<storeapi::Labels>, Exemplar)>,
    invalid: &mut u64,
) {
    if check_labels(view.series_labels(), bounds).is_err() {
        *invalid += view.exemplars.len() as u64;
        return;
    }
    // check_labels proved the set sorted, unique and without empty values.
    let series = std::sync::Arc::new(storeapi::Labels::from_sorted_unchecked(
        view.series_labels()
            .iter()
            .map(|l| storeapi::Label::new(l.name, l.value))
            .collect(),
    ));
    for e in &view.exemplars {
        let labels = storeapi::Labels::from_unsorted(
            view.exemplar_labels_of(e)
                .iter()
                .map(|l| storeapi::Label::new(l.name, l.value))
                .collect(),
        );
        match labels {
            Ok(labels) => out.push((
                series.clone(),
                Exemplar {
                    labels,
                    value: e.value,
                    t: e.t,
                },
            )),
            // Two labels of one name: no exemplar label set.
            Err(_) => *invalid += 1,
        }
    }
}

fn push_metadata<'a>(out: &mut Vec<(&'a str, MetaRef<'a>)>, family: &'a str, m: &MetadataRef<'a>) {
    let e = (
        family,
        MetaRef {
            kind: m.kind.as_str(),
            help: m.help,
            unit: m.unit,
        },
    );
    if out.last() != Some(&e) {
        out.push(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use storeapi::Labels;
    use storeapi::wire::remote_write::encode_write_request;

    use crate::multitsdb::MultiTsdbConfig;

    /// The rest of a request is sized from its part read so far, with an eighth to
    /// spare, and never beyond a thing per remaining byte (a hostile first series cannot
    /// make it reserve more than the body could hold).
    #[test]
    fn per_series_vectors_are_sized_from_the_bytes_read_so_far() {
        // 100 series in the first 25 kB of 100 kB: about 300 more.
        assert_eq!(extrapolate(100, 25_000, 100_000), 300 + 37 + 1);
        // Nothing read yet, or the body read to its end: one more at most.
        assert_eq!(extrapolate(0, 0, 1000), 1);
        assert_eq!(extrapolate(50, 1000, 1000), 1);
        // A thing per byte so far (the densest possible) never asks beyond the rest.
        assert_eq!(extrapolate(10, 10, 1000), 991);
        assert_eq!(extrapolate(usize::MAX, 1, usize::MAX), usize::MAX);
    }

    fn now_ms() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    }

    /// A sample a year ahead, at int64 max, or just outside the margin is refused with a
    /// 409 naming it, its timestamp and the limit; the rest of the request is written;
    /// current writes keep succeeding (the tenant is not locked out).
    fn open_mt(dir: &std::path::Path) -> MultiTsdb {
        MultiTsdb::open(
            MultiTsdbConfig {
                dir: dir.to_path_buf(),
                external_labels: Labels::default(),
                tenant_label_name: "tenant_id".into(),
                block_duration: Duration::from_secs(7200),
                retention: Duration::from_secs(86400),
                wal_sync: tsdb::SyncPolicy::Never,
                wal_compression: true,
                max_tenants: 10,
                too_far_in_future: Some(Duration::from_secs(600)),
                bucket: None,
                hash_func: objstore::HashFunc::None,
                max_exemplars: 16,
                ooo_time_window: Duration::ZERO,
                ooo_cap_max: tsdb::db::DEFAULT_OOO_CAP_MAX,
                wire_key_cache_bytes: tsdb::DEFAULT_WIRE_KEY_CACHE_BYTES,
            },
            Arc::new(Mutex::new(prometheus_client::registry::Registry::default())),
        )
        .unwrap()
    }

    const BOUNDS: Bounds = Bounds {
        max_labels_per_series: 16,
        max_label_name_len: 64,
        max_label_value_len: 64,
    };

    /// A 1.0 series `{__name__=name, job=job}` with a float sample (value = timestamp)
    /// at each of `floats`, and `hists`.
    fn name_job_series(
        name: &str,
        job: &str,
        floats: &[i64],
        hists: Vec<storeapi::wire::prompb::Histogram>,
    ) -> storeapi::wire::prompb::TimeSeries {
        use storeapi::wire::prompb;
        prompb::TimeSeries {
            labels: [("__name__", name), ("job", job)]
                .iter()
                .map(|&(n, v)| storeapi::Label {
                    name: n.into(),
                    value: v.into(),
                })
                .collect(),
            samples: floats
                .iter()
                .map(|&t| prompb::Sample {
                    value: t as f64,
                    timestamp: t,
                })
                .collect(),
            exemplars: vec![],
            histograms: hists,
        }
    }

    /// Writes a 1.0 request body (as given, byte for byte) for tenant `t` under
    /// `bounds`: the result and the summary.
    fn write_v1(
        mt: &MultiTsdb,
        metrics: &ReceiveMetrics,
        body: &[u8],
        bounds: &Bounds,
    ) -> (Result<(), WriteError>, WriteSummary) {
        let mut summary = WriteSummary::default();
        let r = write_into(
            mt,
            metrics,
            "t",
            body,
            Protocol::V1,
            &Effective::default(),
            bounds,
            &mut summary,
        );
        (r, summary)
    }

    /// Series refused for their labels or skipped for having no samples, between valid
    /// ones, leave nothing behind: every valid series is stored under exactly its own
    /// labels, and a later rejection names the right series (the labels of a request
    /// are kept back to back in the decoder's vector, and dropped ones removed).
    #[test]
    fn refused_and_empty_series_between_valid_ones_leave_the_others_whole() {
        use prost::Message;
        use storeapi::wire::{prometheus, prompb};
        let dir = tempfile::tempdir().unwrap();
        let mt = open_mt(dir.path());
        let metrics = ReceiveMetrics::new();
        let now = now_ms();
        let series = |labels: &[(&str, &str)], ts: &[i64]| prompb::TimeSeries {
            labels: labels
                .iter()
                .map(|&(n, v)| storeapi::Label {
                    name: n.into(),
                    value: v.into(),
                })
                .collect(),
            samples: ts
                .iter()
                .map(|&t| prompb::Sample {
                    value: t as f64,
                    timestamp: t,
                })
                .collect(),
            exemplars: vec![],
            histograms: vec![],
        };
        let first = prometheus::WriteRequest {
            timeseries: vec![
                series(&[("__name__", "a"), ("job", "x")], &[now]),
                series(&[("__name__", "b"), ("1bad", "x")], &[now]),
                series(&[("__name__", "c"), ("job", "x")], &[]),
                series(&[("__name__", "d"), ("job", "x"), ("zone", "z")], &[now]),
                series(&[("__name__", "e"), ("job", "")], &[now]),
                series(&[("__name__", "f")], &[now]),
            ],
            metadata: vec![],
        };
        let mut summary = WriteSummary::default();
        let e = write_into(
            &mt,
            &metrics,
            "t",
            &first.encode_to_vec(),
            Protocol::V1,
            &Effective::default(),
            &BOUNDS,
            &mut summary,
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("2 series (2 samples) with an invalid label set refused")
                && msg.contains(r#"invalid label name "1bad" in series {__name__="b", 1bad="x"}"#),
            "{msg}"
        );
        assert_eq!(summary.written, 3);
        let db = mt.get("t").unwrap().db.clone();
        let q = db.querier(i64::MIN, i64::MAX);
        let all =
            [storeapi::Matcher::new(storeapi::MatchOp::RegexMatch, "__name__", ".+").unwrap()];
        let got: Vec<String> = q
            .select(&all)
            .unwrap()
            .iter()
            .map(|s| s.labels.to_string())
            .collect();
        assert_eq!(
            got,
            [
                r#"{__name__="a", job="x"}"#,
                r#"{__name__="d", job="x", zone="z"}"#,
                r#"{__name__="f"}"#
            ]
        );
        // An out-of-order sample of the third valid series is named by its labels.
        let second = prometheus::WriteRequest {
            timeseries: vec![
                series(&[("__name__", "b"), ("1bad", "x")], &[now + 1]),
                series(&[("__name__", "a"), ("job", "x")], &[now + 1]),
                series(&[("__name__", "c"), ("job", "x")], &[]),
                series(
                    &[("__name__", "d"), ("job", "x"), ("zone", "z")],
                    &[now + 1],
                ),
                series(&[("__name__", "f")], &[now - 1]),
            ],
            metadata: vec![],
        };
        let e = write_into(
            &mt,
            &metrics,
            "t",
            &second.encode_to_vec(),
            Protocol::V1,
            &Effective::default(),
            &BOUNDS,
            &mut summary,
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&format!(
                r#"out of order sample at t={} in series {{__name__="f"}}"#,
                now - 1
            )),
            "{msg}"
        );
    }

    /// A series sent again with the same label bytes is found through the head's
    /// wire-key cache, its samples stored as before; labels sent apart are parsed and
    /// not cached; a series accepted under looser bounds is checked again under
    /// stricter ones.
    #[test]
    fn series_sent_again_are_found_by_their_label_bytes_and_checked_under_new_bounds() {
        use prost::Message;
        use storeapi::wire::{prometheus, prompb};
        let dir = tempfile::tempdir().unwrap();
        let mt = open_mt(dir.path());
        let metrics = ReceiveMetrics::new();
        let now = now_ms();
        let series = |name: &str, job: &str, t: i64| name_job_series(name, job, &[t], vec![]);
        let request = |t: i64| prometheus::WriteRequest {
            timeseries: vec![
                series("a", "x", t),
                series("b", "xyz", t),
                series("c", "x", t),
            ],
            metadata: vec![],
        };
        let write = |body: &[u8], bounds: &Bounds| {
            let (r, summary) = write_v1(&mt, &metrics, body, bounds);
            (r, summary.written)
        };
        for i in 0..3 {
            let (r, written) = write(&request(now + i).encode_to_vec(), &BOUNDS);
            r.unwrap();
            assert_eq!(written, 3);
        }
        let db = mt.get("t").unwrap().db.clone();
        assert_eq!(db.head().wire_key_usage().0, 3);
        assert_eq!(db.head_series(), 3);
        let q = db.querier(i64::MIN, i64::MAX);
        let m = [storeapi::Matcher::new(storeapi::MatchOp::Equal, "__name__", "b").unwrap()];
        let got = q.select_samples(&m).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.to_string(), r#"{__name__="b", job="xyz"}"#);
        assert_eq!(got[0].1.len(), 3);

        // The same labels with a sample between them: parsed, stored, not cached.
        let mut apart = Vec::new();
        let ts = series("a", "x", now + 10);
        let mut label_msgs = ts.labels.iter().map(|l| l.encode_length_delimited_to_vec());
        let mut ts_buf = Vec::new();
        ts_buf.push(0x0a);
        ts_buf.extend(label_msgs.next().unwrap());
        ts_buf.push(0x12);
        ts_buf.extend(ts.samples[0].encode_length_delimited_to_vec());
        ts_buf.push(0x0a);
        ts_buf.extend(label_msgs.next().unwrap());
        apart.push(0x0a);
        prost::encoding::encode_varint(ts_buf.len() as u64, &mut apart);
        apart.extend(ts_buf);
        let (r, written) = write(&apart, &BOUNDS);
        r.unwrap();
        assert_eq!(written, 1);
        assert_eq!(db.head().wire_key_usage().0, 3);
        assert_eq!(db.head_series(), 3);

        // Stricter bounds: the cached verdict does not stand.
        let strict = Bounds {
            max_label_value_len: 2,
            ..BOUNDS
        };
        // A series with an exemplar (labels parsed at once) after it is refused too,
        // but the first refused in the request is named.
        let mut strict_request = request(now + 20);
        let mut with_exemplar = series("d", "xyzw", now + 20);
        with_exemplar.exemplars.push(prompb::Exemplar {
            labels: vec![],
            value: 1.0,
            timestamp: now + 20,
        });
        strict_request.timeseries.push(with_exemplar);
        let (r, written) = write(&strict_request.encode_to_vec(), &strict);
        let msg = r.unwrap_err().to_string();
        assert!(
            msg.contains("2 series (2 samples) with an invalid label set refused")
                && msg.contains(r#"in series {__name__="b", job="xyz"}"#),
            "{msg}"
        );
        assert_eq!(written, 2);
        let q = db.querier(i64::MIN, i64::MAX);
        assert_eq!(q.select_samples(&m).unwrap()[0].1.len(), 3);
    }

    /// Native histogram series go through the wire-key cache too: sent again they are
    /// found by their label bytes; a series refused for its labels after the cache
    /// lookup (stricter bounds) takes its histograms with it and the next series keeps
    /// its own; an invalid histogram of a series not parsed is named by its labels.
    #[test]
    fn histogram_series_sent_again_are_found_by_their_label_bytes() {
        use prost::Message;
        use storeapi::wire::{prometheus, prompb};
        let dir = tempfile::tempdir().unwrap();
        let mt = open_mt(dir.path());
        let metrics = ReceiveMetrics::new();
        let now = now_ms();
        let hist = |t: i64, n: u64| prompb::Histogram {
            count: Some(prompb::histogram::Count::CountInt(n)),
            zero_count: Some(prompb::histogram::ZeroCount::ZeroCountInt(0)),
            positive_spans: vec![prompb::BucketSpan {
                offset: 0,
                length: 1,
            }],
            positive_deltas: vec![n as i64],
            timestamp: t,
            ..Default::default()
        };
        let series = |job: &str, floats: &[i64], hs: Vec<prompb::Histogram>| {
            name_job_series("lat", job, floats, hs)
        };
        let write = |req: &prometheus::WriteRequest, bounds: &Bounds| {
            let (r, summary) = write_v1(&mt, &metrics, &req.encode_to_vec(), bounds);
            (r, summary.histograms_written)
        };
        for i in 0..3 {
            let t = now + i * 10;
            let req = prometheus::WriteRequest {
                timeseries: vec![
                    series("long-job", &[], vec![hist(t, 1 + i as u64)]),
                    series("a", &[t], vec![hist(t + 1, 5)]),
                ],
                metadata: vec![],
            };
            let (r, h) = write(&req, &BOUNDS);
            r.unwrap();
            assert_eq!(h, 2);
        }
        let db = mt.get("t").unwrap().db.clone();
        assert_eq!(db.head().wire_key_usage().0, 2);
        assert_eq!(db.head_series(), 2);

        // Stricter bounds refuse the first series after the lookup; the second keeps
        // exactly its own histogram.
        let strict = Bounds {
            max_label_value_len: 3,
            ..BOUNDS
        };
        let t = now + 100;
        let req = prometheus::WriteRequest {
            timeseries: vec![
                series("long-job", &[], vec![hist(t, 9), hist(t + 1, 9)]),
                series("a", &[], vec![hist(t + 2, 7)]),
            ],
            metadata: vec![],
        };
        let (r, h) = write(&req, &strict);
        let msg = r.unwrap_err().to_string();
        assert!(
            msg.contains("1 series (2 samples) with an invalid label set refused")
                && msg.contains(r#"{__name__="lat", job="long-job"}"#),
            "{msg}"
        );
        assert_eq!(h, 1);
        let q = db.querier(i64::MIN, i64::MAX);
        let m = |job: &str| {
            [
                storeapi::Matcher::new(storeapi::MatchOp::Equal, "__name__", "lat").unwrap(),
                storeapi::Matcher::new(storeapi::MatchOp::Equal, "job", job).unwrap(),
            ]
        };
        let hists = |job: &str| -> Vec<(i64, f64)> {
            let s = q.select(&m(job)).unwrap();
            s[0].histograms(i64::MIN, i64::MAX)
                .unwrap()
                .iter()
                .map(|h| (h.t, h.h.to_float().count))
                .collect()
        };
        assert_eq!(
            hists("a"),
            vec![
                (now + 1, 5.0),
                (now + 11, 5.0),
                (now + 21, 5.0),
                (t + 2, 7.0)
            ]
        );
        assert_eq!(hists("long-job").len(), 3);

        // An invalid histogram of a series found through the cache names the series.
        let mut bad = hist(t + 3, 2);
        bad.positive_deltas = vec![2, 1];
        let req = prometheus::WriteRequest {
            timeseries: vec![series("a", &[], vec![bad])],
            metadata: vec![],
        };
        let msg = write(&req, &BOUNDS).0.unwrap_err().to_string();
        assert!(
            msg.contains(r#"in series {__name__="lat", job="a"}"#),
            "{msg}"
        );
    }

    /// Histograms are decoded and validated, refused with a 400 that counts them and
    /// names the first invalid one; the request's floats are still written and counted;
    /// exemplars (also of exemplar-only series) and metadata are counted.
    #[test]
    fn invalid_histograms_refused_precisely_valid_ones_and_floats_written() {
        use prost::Message;
        use storeapi::wire::{prometheus, prompb};
        let dir = tempfile::tempdir().unwrap();
        let mt = open_mt(dir.path());
        let metrics = ReceiveMetrics::new();
        let label = |n: &str, v: &str| storeapi::Label {
            name: n.into(),
            value: v.into(),
        };
        let now = now_ms();
        let good = prompb::Histogram {
            count: Some(prompb::histogram::Count::CountInt(2)),
            zero_count: Some(prompb::histogram::ZeroCount::ZeroCountInt(0)),
            positive_spans: vec![prompb::BucketSpan {
                offset: 0,
                length: 1,
            }],
            positive_deltas: vec![2],
            timestamp: now,
            ..Default::default()
        };
        let mut bad = good.clone();
        bad.positive_deltas = vec![2, 1]; // one span of length 1, two buckets
        let mut schema = good.clone();
        schema.schema = 1000;
        let req = prometheus::WriteRequest {
            timeseries: vec![
                prompb::TimeSeries {
                    labels: vec![label("__name__", "floats")],
                    samples: vec![prompb::Sample {
                        value: 1.0,
                        timestamp: now,
                    }],
                    exemplars: vec![],
                    histograms: vec![],
                },
                prompb::TimeSeries {
                    labels: vec![label("__name__", "hist")],
                    samples: vec![],
                    exemplars: vec![],
                    histograms: vec![good, bad, schema],
                },
                prompb::TimeSeries {
                    labels: vec![label("__name__", "floats")],
                    samples: vec![],
                    exemplars: vec![prompb::Exemplar {
                        labels: vec![label("trace_id", "x")],
                        value: 1.0,
                        timestamp: now,
                    }],
                    histograms: vec![],
                },
            ],
            metadata: vec![prompb::MetricMetadata {
                r#type: 2,
                metric_family_name: "floats".into(),
                help: "h".into(),
                unit: String::new(),
            }],
        };
        let mut summary = WriteSummary::default();
        let e = write_into(
            &mt,
            &metrics,
            "t",
            &req.encode_to_vec(),
            Protocol::V1,
            &Effective::default(),
            &BOUNDS,
            &mut summary,
        )
        .unwrap_err();
        assert_eq!(e.status(), 400);
        let msg = e.to_string();
        assert!(
            msg.contains("2 invalid native histogram samples refused; first: ")
                && msg
                    .contains("histogram spans specify different number of buckets than provided")
                && msg.contains("in series {__name__=\"hist\"}")
                && msg.contains("the request's valid samples were written"),
            "{msg}"
        );
        assert_eq!(
            (
                summary.written,
                summary.histograms,
                summary.histograms_written,
                summary.exemplars,
                summary.metadata
            ),
            (1, 3, 1, 1, 1)
        );
        // The valid histogram is stored and reads back.
        let db = mt.get("t").unwrap().db.clone();
        assert_eq!(db.head_series(), 2);
        let q = db.querier(i64::MIN, i64::MAX);
        let sel = q
            .select(&[
                storeapi::Matcher::new(storeapi::MatchOp::Equal, "__name__", "hist").unwrap(),
            ])
            .unwrap();
        let h = sel[0].histograms(i64::MIN, i64::MAX).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!((h[0].t, h[0].h.to_float().count), (now, 2.0));
        let t = crate::metrics::TenantLabels { tenant: "t".into() };
        assert_eq!(metrics.exemplars_received.get_or_create(&t).get(), 1);
        assert_eq!(metrics.metadata_received.get_or_create(&t).get(), 1);
        assert_eq!(metrics.histograms_rejected.get_or_create(&t).get(), 2);
        assert_eq!(metrics.histograms_received.get_or_create(&t).get(), 3);

        // A metadata-only request and an exemplar-only series are fine.
        let only = prometheus::WriteRequest {
            timeseries: vec![req.timeseries[2].clone()],
            metadata: req.metadata.clone(),
        };
        let s = write(
            &mt,
            &metrics,
            "t",
            &only.encode_to_vec(),
            &Effective::default(),
            &BOUNDS,
        )
        .unwrap();
        assert_eq!((s.written, s.exemplars, s.metadata), (0, 1, 1));
    }

    /// A 2.0 body is read directly on the local path: floats written, exemplars of an
    /// exemplar-only series and non-empty metadata counted, invalid labels refused, bad
    /// references a 400 naming 2.0.
    #[test]
    fn v2_bodies_are_written_directly() {
        use prost::Message;
        use storeapi::wire::write_v2 as v2;
        let dir = tempfile::tempdir().unwrap();
        let mt = open_mt(dir.path());
        let metrics = ReceiveMetrics::new();
        let now = now_ms();
        let sample = |v| v2::Sample {
            value: v,
            timestamp: now,
            start_timestamp: 0,
        };
        let mut req = v2::Request {
            symbols: ["", "__name__", "up", "job", "a", "help text"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            timeseries: vec![
                v2::TimeSeries {
                    labels_refs: vec![1, 2, 3, 4],
                    samples: vec![sample(1.0)],
                    metadata: Some(v2::Metadata {
                        r#type: 2,
                        help_ref: 5,
                        unit_ref: 0,
                    }),
                    ..Default::default()
                },
                v2::TimeSeries {
                    labels_refs: vec![1, 2, 3, 4],
                    exemplars: vec![v2::Exemplar {
                        labels_refs: vec![],
                        value: 1.0,
                        timestamp: now,
                    }],
                    metadata: Some(v2::Metadata::default()),
                    ..Default::default()
                },
                v2::TimeSeries {
                    labels_refs: vec![3, 4, 1, 2], // not sorted
                    samples: vec![sample(2.0)],
                    ..Default::default()
                },
            ],
        };
        let mut summary = WriteSummary::default();
        let e = write_into(
            &mt,
            &metrics,
            "t",
            &req.encode_to_vec(),
            Protocol::V2,
            &Effective::default(),
            &BOUNDS,
            &mut summary,
        )
        .unwrap_err();
        assert!(e.to_string().contains("labels are not sorted"), "{e}");
        assert_eq!(
            (
                summary.series,
                summary.written,
                summary.exemplars,
                summary.metadata
            ),
            (3, 1, 1, 1)
        );
        req.timeseries[0].labels_refs[3] = 6;
        let e = write_into(
            &mt,
            &metrics,
            "t",
            &req.encode_to_vec(),
            Protocol::V2,
            &Effective::default(),
            &BOUNDS,
            &mut summary,
        )
        .unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(
            e.to_string().starts_with(
                "invalid protobuf remote-write 2.0 request: series labels_refs refers to symbol 6"
            ),
            "{e}"
        );
    }

    /// Exemplars of remote write 1.0 are stored per tenant with Prometheus's rules: a
    /// label set over 128 characters and an out-of-order exemplar are dropped and counted,
    /// the request still succeeds, duplicates count as written; metadata is kept.
    #[test]
    fn v1_exemplars_stored_invalid_ones_dropped_request_succeeds() {
        use prost::Message;
        use storeapi::wire::{prometheus, prompb};
        let dir = tempfile::tempdir().unwrap();
        let mt = open_mt(dir.path());
        let metrics = ReceiveMetrics::new();
        let label = |n: &str, v: &str| storeapi::Label {
            name: n.into(),
            value: v.into(),
        };
        let now = now_ms();
        let ex = |trace: &str, v: f64, t: i64| prompb::Exemplar {
            labels: vec![label("trace_id", trace)],
            value: v,
            timestamp: t,
        };
        let long = "x".repeat(121); // "trace_id" (8) + 121 = 129 characters
        let req = prometheus::WriteRequest {
            timeseries: vec![prompb::TimeSeries {
                labels: vec![label("__name__", "req_total"), label("job", "a")],
                samples: vec![prompb::Sample {
                    value: 1.0,
                    timestamp: now,
                }],
                exemplars: vec![
                    ex("t1", 1.0, now - 10),
                    ex(&long, 1.0, now - 5),
                    ex("t2", 2.0, now),
                    ex("t0", 3.0, now - 20), // older than t2: out of order
                ],
                histograms: vec![],
            }],
            metadata: vec![prompb::MetricMetadata {
                r#type: 1,
                metric_family_name: "req".into(),
                help: "Requests.".into(),
                unit: String::new(),
            }],
        };
        let s = write(
            &mt,
            &metrics,
            "t",
            &req.encode_to_vec(),
            &Effective::default(),
            &BOUNDS,
        )
        .unwrap();
        assert_eq!((s.written, s.exemplars, s.exemplars_written), (1, 4, 2));
        let t = mt.get("t").unwrap();
        let all = vec![vec![
            storeapi::Matcher::new(storeapi::MatchOp::Equal, "job", "a").unwrap(),
        ]];
        let got = t.exemplars().select(i64::MIN, i64::MAX, &all);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].series.get("__name__"), Some("req_total"));
        let traces: Vec<&str> = got[0]
            .exemplars
            .iter()
            .map(|e| e.labels.get("trace_id").unwrap_or(""))
            .collect();
        assert_eq!(traces, vec!["t1", "t2"]);
        let reason = |r: &str| {
            metrics
                .exemplars_rejected
                .get_or_create(&crate::metrics::TenantExemplarReason {
                    tenant: "t".into(),
                    reason: r.into(),
                })
                .get()
        };
        assert_eq!((reason("label_length"), reason("out_of_order")), (1, 1));
        assert_eq!(
            t.metadata.list(None, -1, -1),
            vec![(
                "req".to_string(),
                vec![tsdb::metadata::Meta {
                    kind: "counter".into(),
                    help: "Requests.".into(),
                    unit: String::new()
                }]
            )]
        );
        // Resent: the newest exemplar is a duplicate (written), the older one out of order.
        let again = prometheus::WriteRequest {
            timeseries: vec![prompb::TimeSeries {
                labels: req.timeseries[0].labels.clone(),
                samples: vec![],
                exemplars: vec![ex("t2", 2.0, now), ex("t1", 1.0, now - 10)],
                histograms: vec![],
            }],
            metadata: vec![],
        };
        let s = write(
            &mt,
            &metrics,
            "t",
            &again.encode_to_vec(),
            &Effective::default(),
            &BOUNDS,
        )
        .unwrap();
        assert_eq!(s.exemplars_written, 1);
        assert_eq!(reason("out_of_order"), 2);
        assert_eq!(t.exemplars().stats().stored, 2);
        // After a restart the tenant has its metadata and exemplars, before any sender
        // pushes metadata again.
        let want = t.metadata.list(None, -1, -1);
        drop((t, mt));
        let mt = open_mt(dir.path());
        let t = mt.get("t").expect("tenant reopened");
        assert_eq!(t.metadata.list(None, -1, -1), want);
        assert_eq!(t.exemplars().select(i64::MIN, i64::MAX, &all).len(), 1);
    }

    /// Remote write 2.0: exemplar-only series stored, series metadata kept under the
    /// family name (histogram suffixes removed); exemplars dropped when storage is off.
    #[test]
    fn v2_out_of_order_exemplar_is_a_400_and_the_rest_is_written() {
        use prost::Message;
        use storeapi::wire::write_v2 as v2;
        let dir = tempfile::tempdir().unwrap();
        let mt = open_mt(dir.path());
        let metrics = ReceiveMetrics::new();
        let now = now_ms();
        let ex = |t: i64| v2::Exemplar {
            labels_refs: vec![3, 4],
            value: 1.0,
            timestamp: t,
        };
        let req = v2::Request {
            symbols: ["", "__name__", "req_total", "trace_id", "abc"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            timeseries: vec![v2::TimeSeries {
                labels_refs: vec![1, 2],
                samples: vec![v2::Sample {
                    value: 3.0,
                    timestamp: now,
                    start_timestamp: 0,
                }],
                exemplars: vec![ex(now), ex(now - 1000), ex(now - 2000)],
                ..Default::default()
            }],
        };
        let mut summary = WriteSummary::default();
        let err = write_into(
            &mt,
            &metrics,
            "t",
            &req.encode_to_vec(),
            Protocol::V2,
            &Effective::default(),
            &BOUNDS,
            &mut summary,
        )
        .unwrap_err();
        assert_eq!(err.status(), 400, "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("out of order exemplar")
                && msg.contains("req_total")
                && msg.contains("1 more"),
            "{msg}"
        );
        assert_eq!((summary.written, summary.exemplars_written), (1, 1));
        let t = mt.get("t").unwrap();
        assert_eq!(t.exemplars().stats().stored, 1);
    }

    #[test]
    fn v2_exemplars_and_metadata_stored() {
        use prost::Message;
        use storeapi::wire::write_v2 as v2;
        let dir = tempfile::tempdir().unwrap();
        let mt = open_mt(dir.path());
        let metrics = ReceiveMetrics::new();
        let now = now_ms();
        let req = v2::Request {
            symbols: [
                "",
                "__name__",
                "lat_bucket",
                "le",
                "1",
                "trace_id",
                "abc",
                "Latency.",
                "seconds",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            timeseries: vec![
                v2::TimeSeries {
                    labels_refs: vec![1, 2, 3, 4],
                    samples: vec![v2::Sample {
                        value: 3.0,
                        timestamp: now,
                        start_timestamp: 0,
                    }],
                    metadata: Some(v2::Metadata {
                        r#type: 3,
                        help_ref: 7,
                        unit_ref: 8,
                    }),
                    ..Default::default()
                },
                v2::TimeSeries {
                    labels_refs: vec![1, 2, 3, 4],
                    exemplars: vec![v2::Exemplar {
                        labels_refs: vec![5, 6],
                        value: 0.5,
                        timestamp: now,
                    }],
                    ..Default::default()
                },
            ],
        };
        let mut summary = WriteSummary::default();
        write_into(
            &mt,
            &metrics,
            "t",
            &req.encode_to_vec(),
            Protocol::V2,
            &Effective::default(),
            &BOUNDS,
            &mut summary,
        )
        .unwrap();
        assert_eq!((summary.written, summary.exemplars_written), (1, 1));
        let t = mt.get("t").unwrap();
        let got = t.exemplars().select(
            now,
            now,
            &[vec![storeapi::Matcher::equal("__name__", "lat_bucket")]],
        );
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].exemplars[0].labels.get("trace_id"), Some("abc"));
        assert_eq!(got[0].exemplars[0].value, 0.5);
        let md = t.metadata.list(Some("lat"), -1, -1);
        assert_eq!(md.len(), 1);
        assert_eq!(
            md[0].1,
            vec![tsdb::metadata::Meta {
                kind: "histogram".into(),
                help: "Latency.".into(),
                unit: "seconds".into()
            }]
        );

        // Exemplar storage off (Thanos's default): dropped, counted, not written.
        let dir2 = tempfile::tempdir().unwrap();
        let mut cfg = mt.config().clone();
        cfg.dir = dir2.path().to_path_buf();
        cfg.max_exemplars = 0;
        let off = MultiTsdb::open(
            cfg,
            Arc::new(Mutex::new(prometheus_client::registry::Registry::default())),
        )
        .unwrap();
        let mut summary = WriteSummary::default();
        write_into(
            &off,
            &metrics,
            "t",
            &req.encode_to_vec(),
            Protocol::V2,
            &Effective::default(),
            &BOUNDS,
            &mut summary,
        )
        .unwrap();
        assert_eq!((summary.written, summary.exemplars_written), (1, 0));
        let disabled = metrics
            .exemplars_rejected
            .get_or_create(&crate::metrics::TenantExemplarReason {
                tenant: "t".into(),
                reason: "disabled".into(),
            })
            .get();
        assert_eq!(disabled, 1);
    }

    #[test]
    fn future_samples_are_refused_and_do_not_lock_the_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let mt = open_mt(dir.path());
        let metrics = ReceiveMetrics::new();
        let bounds = BOUNDS;
        let req = |series: &[(&str, i64)]| {
            let owned: Vec<(Labels, Vec<Sample>)> = series
                .iter()
                .map(|&(n, t)| {
                    (
                        Labels::from_pairs([("__name__", n)]).unwrap(),
                        vec![Sample { t, v: 1.0 }],
                    )
                })
                .collect();
            encode_write_request(owned.iter().map(|(l, s)| (l, s.as_slice())))
        };
        let w = |series: &[(&str, i64)]| {
            write(
                &mt,
                &metrics,
                "t",
                &req(series),
                &Effective::default(),
                &bounds,
            )
        };
        const MIN: i64 = 60_000;
        let now = now_ms();
        // `cur` gets strictly increasing timestamps (two writes can fall in the same
        // millisecond, and an equal or older one would be refused as out of order).
        let mut cur = now;
        let mut next_cur = || {
            cur = cur.max(now_ms()) + 1;
            cur
        };
        for t in [now + 365 * 24 * 60 * MIN, i64::MAX, now + 11 * MIN] {
            let e = w(&[("cur", next_cur()), ("future", t)]).unwrap_err();
            assert_eq!(e.status(), 409, "{e}");
            let msg = e.to_string();
            assert!(msg.contains("too_far_in_future=1"), "{msg}");
            assert!(
                msg.contains("sample too far in the future (newer than t=")
                    && msg.contains(&format!("at t={t} in series {{__name__=\"future\"}}")),
                "{msg}"
            );
            assert!(msg.contains("1 other samples written"), "{msg}");
            // Current and 30-minute-old samples still go in.
            w(&[("cur", next_cur())]).unwrap();
            let old = format!("old{t}");
            w(&[(old.as_str(), now - 30 * MIN)]).unwrap();
        }
        w(&[("inside", now_ms() + 9 * MIN)]).unwrap();
        w(&[("cur", next_cur()), ("late", now_ms() - 50 * MIN)]).unwrap();
        let db = &mt.get("t").unwrap().db;
        assert!(db.max_time() < now + 10 * MIN);
        let got = metrics
            .samples_rejected
            .get_or_create(&crate::metrics::TenantReason {
                tenant: "t".into(),
                reason: Reason::too_far_in_future,
            })
            .get();
        assert_eq!(got, 3);
    }

    /// After a valid label set, a series gets the verdict (and the first reason) it gets
    /// alone: sharing names with the one before only skips checks already passed.
    #[test]
    fn label_checks_after_a_valid_series_equal_the_checks_alone() {
        let b = Bounds {
            max_labels_per_series: 4,
            max_label_name_len: 8,
            max_label_value_len: 8,
        };
        let l = |n, v| LabelRef { name: n, value: v };
        let names = ["__name__", "a", "ab", "b", "job", "1a", "toolongname", ""];
        let values = ["x", "", "123456789"];
        // Every label set of up to three labels from these names (values "x"), plus
        // each of those with one value changed.
        let mut sets: Vec<Vec<LabelRef<'_>>> = vec![Vec::new()];
        for n1 in names {
            sets.push(vec![l(n1, "x")]);
            for n2 in names {
                sets.push(vec![l(n1, "x"), l(n2, "x")]);
                for n3 in ["job", "b", "a"] {
                    sets.push(vec![l(n1, "x"), l(n2, "x"), l(n3, "x")]);
                }
            }
        }
        let mut variants = Vec::new();
        for s in &sets {
            for i in 0..s.len() {
                for v in values {
                    let mut w = s.clone();
                    w[i].value = v;
                    variants.push(w);
                }
            }
        }
        sets.extend(variants);
        let valid: Vec<&Vec<LabelRef<'_>>> = sets
            .iter()
            .filter(|s| check_labels(s, &b).is_ok())
            .collect();
        assert!(
            valid.len() > 20,
            "the table has valid sets: {}",
            valid.len()
        );
        let mut fast = 0;
        for prev in &valid {
            for cur in &sets {
                assert_eq!(
                    check_labels_after(cur, prev, &b),
                    check_labels(cur, &b),
                    "{cur:?} after {prev:?}"
                );
                fast += usize::from(cur.first().map(|c| c.name) == prev.first().map(|p| p.name));
            }
        }
        assert!(fast > 1000, "the shared-names path was taken: {fast}");
    }

    #[test]
    fn label_checks() {
        let b = Bounds {
            max_labels_per_series: 3,
            max_label_name_len: 8,
            max_label_value_len: 8,
        };
        let l = |n, v| LabelRef { name: n, value: v };
        assert!(check_labels(&[l("__name__", "up"), l("job", "x")], &b).is_ok());
        assert!(check_labels(&[], &b).is_err());
        assert!(
            check_labels(&[l("job", "x"), l("a", "y")], &b)
                .unwrap_err()
                .contains("not sorted")
        );
        assert!(
            check_labels(&[l("a", "x"), l("a", "y")], &b)
                .unwrap_err()
                .contains("duplicate")
        );
        // Names sharing a first byte take the whole compare.
        assert!(check_labels(&[l("ab", "x"), l("abc", "y"), l("ac", "z")], &b).is_ok());
        for bad in [[l("ab", "x"), l("aa", "y")], [l("abc", "x"), l("ab", "y")]] {
            assert!(check_labels(&bad, &b).unwrap_err().contains("not sorted"));
        }
        assert!(
            check_labels(&[l("ab", "x"), l("ab", "y")], &b)
                .unwrap_err()
                .contains("duplicate")
        );
        assert!(
            check_labels(&[l("a", "")], &b)
                .unwrap_err()
                .contains("empty")
        );
        assert!(
            check_labels(&[l("1a", "x")], &b)
                .unwrap_err()
                .contains("invalid label name")
        );
        assert!(
            check_labels(&[l("a", "123456789")], &b)
                .unwrap_err()
                .contains("limit")
        );
        assert!(
            check_labels(&[l("a", "1"), l("b", "1"), l("c", "1"), l("d", "1")], &b)
                .unwrap_err()
                .contains("4 labels")
        );
    }
}

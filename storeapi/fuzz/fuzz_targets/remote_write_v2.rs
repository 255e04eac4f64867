//! Fuzzes the borrowing remote-write 2.0 decoder (symbol references, label pairs,
//! histograms, exemplars, metadata) and its translation to 1.0: it must never panic;
//! whenever prost also accepts the bytes and every reference resolves, both must agree
//! on labels and samples, and the translated 1.0 body must decode to the same series.
//! Run: `cd storeapi/fuzz && cargo fuzz run remote_write_v2` (nightly, or RUSTC_BOOTSTRAP=1).
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use storeapi::wire::remote_write::{DecodeLimits, SeriesView, WriteRequestReader};
use storeapi::wire::remote_write_v2::{RequestReader, translate_to_v1};
use storeapi::wire::write_v2::Request;

type Flat = Vec<(Vec<(String, String)>, Vec<(i64, u64)>)>;

fn flat(v: &SeriesView<'_>) -> (Vec<(String, String)>, Vec<(i64, u64)>) {
    (
        v.labels
            .iter()
            .map(|l| (l.name.to_string(), l.value.to_string()))
            .collect(),
        v.samples.iter().map(|s| (s.t, s.v.to_bits())).collect(),
    )
}

fn fast(data: &[u8]) -> Option<Flat> {
    let mut r = RequestReader::new(data).ok()?;
    let mut v = SeriesView::default();
    let mut out = Vec::new();
    loop {
        match r.next_series(&mut v) {
            Ok(true) => out.push(flat(&v)),
            Ok(false) => return Some(out),
            Err(_) => return None,
        }
    }
}

fn slow(data: &[u8]) -> Option<Flat> {
    let req = Request::decode(data).ok()?;
    if req.symbols.first().is_some_and(|s| !s.is_empty()) {
        return None;
    }
    let sym = |r: u32| req.symbols.get(r as usize).cloned();
    let mut out = Vec::new();
    for ts in &req.timeseries {
        if ts.labels_refs.len() % 2 != 0 {
            return None;
        }
        let mut labels = Vec::new();
        for p in ts.labels_refs.chunks_exact(2) {
            labels.push((sym(p[0])?, sym(p[1])?));
        }
        for e in &ts.exemplars {
            if e.labels_refs.len() % 2 != 0 || e.labels_refs.iter().any(|r| sym(*r).is_none()) {
                return None;
            }
        }
        if let Some(m) = &ts.metadata {
            sym(m.help_ref)?;
            sym(m.unit_ref)?;
        }
        out.push((
            labels,
            ts.samples
                .iter()
                .map(|s| (s.timestamp, s.value.to_bits()))
                .collect(),
        ));
    }
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let got = fast(data);
    if let (Some(f), Some(s)) = (&got, slow(data)) {
        // prost accepts histogram bytes our limits refuse, never the other way round.
        assert_eq!(f, &s);
    }
    if let (Some(want), Ok((v1, _))) = (got, translate_to_v1(data, DecodeLimits::default())) {
        let mut r = WriteRequestReader::new(&v1);
        let mut v = SeriesView::default();
        let mut back = Vec::new();
        while let Ok(true) = r.next_series(&mut v) {
            back.push(flat(&v));
        }
        assert_eq!(back, want);
    }
});

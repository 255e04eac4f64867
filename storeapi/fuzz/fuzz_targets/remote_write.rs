//! Fuzzes the borrowing remote-write decoder (and snappy + size limit in front of it):
//! it must never panic, and whenever prost also accepts the bytes, both must agree.
//! Run: `cd storeapi/fuzz && cargo fuzz run remote_write` (nightly, or RUSTC_BOOTSTRAP=1).
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use storeapi::wire::prometheus::WriteRequest;
use storeapi::wire::remote_write::{SeriesView, WriteRequestReader, snappy_decompress};

fuzz_target!(|data: &[u8]| {
    // As a snappy body with a 1 MiB limit.
    if let Ok(raw) = snappy_decompress(data, 1 << 20) {
        let mut r = WriteRequestReader::new(&raw);
        let mut v = SeriesView::default();
        while let Ok(true) = r.next_series(&mut v) {}
    }
    // As a raw protobuf body, compared with prost.
    let mut r = WriteRequestReader::new(data);
    let mut v = SeriesView::default();
    let mut fast = Vec::new();
    let ok = loop {
        match r.next_series(&mut v) {
            Ok(true) => fast.push((
                v.labels
                    .iter()
                    .map(|l| (l.name.to_string(), l.value.to_string()))
                    .collect::<Vec<_>>(),
                v.samples
                    .iter()
                    .map(|s| (s.t, s.v.to_bits()))
                    .collect::<Vec<_>>(),
                v.histograms.len(),
            )),
            Ok(false) => break true,
            Err(_) => break false,
        }
    };
    if let (true, Ok(req)) = (ok, WriteRequest::decode(data)) {
        let slow: Vec<_> = req
            .timeseries
            .into_iter()
            .map(|ts| {
                (
                    ts.labels
                        .into_iter()
                        .map(|l| (l.name.to_string(), l.value.to_string()))
                        .collect::<Vec<_>>(),
                    ts.samples
                        .iter()
                        .map(|s| (s.timestamp, s.value.to_bits()))
                        .collect::<Vec<_>>(),
                    ts.histograms.len(),
                )
            })
            .collect();
        assert_eq!(fast, slow);
    }
});

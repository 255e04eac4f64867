//! Fuzzes client PromQL end to end: the text limits, the parser, planning and evaluation
//! (instant and range) over a small fixed in-memory storage. It must never panic or
//! overflow the stack, whatever the text. Low limits make refusals and deep-but-accepted
//! trees both reachable from short inputs.
//! Run: `cd promql/fuzz && cargo +nightly fuzz run parse_eval`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use promql::QueryLimits;
use promql::untrusted::evaluate_untrusted;

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    // Small inputs cover the grammar; a repeated prefix makes deep trees from them.
    let (repeat, query) = match query.split_once('\u{1}') {
        Some((prefix, rest)) if prefix.len() <= 16 => (prefix.repeat(2_000), rest),
        _ => (String::new(), query),
    };
    let query = format!("{repeat}{query}");
    let _ = evaluate_untrusted(
        &query,
        QueryLimits {
            max_length: 1 << 16,
            max_depth: 3_000,
        },
    );
});

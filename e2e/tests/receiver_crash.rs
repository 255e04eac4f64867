//! Crash safety: a client writes numbered batches; the receiver is killed with SIGKILL
//! mid-stream and restarted; every batch that got a 200 is there, none duplicated or altered.

mod receiver_common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use receiver_common::{Receiver, eq, labels, series};
use storeapi::Sample;

const SERIES: usize = 20;

/// Batch `n`: one sample at t = BASE + n*1000 for each of SERIES series, value n*1000+i.
fn batch(n: i64) -> Vec<(storeapi::Labels, Vec<Sample>)> {
    (0..SERIES)
        .map(|i| {
            (
                labels(&[("__name__", "crash_test"), ("series", &format!("s{i:02}"))]),
                vec![Sample {
                    t: BASE + n * 1000,
                    v: (n * 1000 + i as i64) as f64,
                }],
            )
        })
        .collect()
}

const BASE: i64 = 1_700_000_000_000;

#[test]
fn receiver_crash_sigkill_keeps_every_acknowledged_batch() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut recv = Receiver::start(&data, &dir.path().join("receive1.log"), &[]);
    let acked: Arc<Mutex<Vec<i64>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let rw = recv.rw.clone();
    let writer = {
        let acked = acked.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let b = batch(n);
                let body = storeapi::wire::remote_write::encode_write_request_snappy(
                    b.iter().map(|(l, s)| (l, s.as_slice())),
                );
                match e2e::http_request(&rw, "POST", "/api/v1/receive", &[], &body) {
                    Ok((200, _)) => acked.lock().unwrap().push(n),
                    _ => break, // killed: stop at the first failure
                }
                n += 1;
            }
        })
    };
    // Let it write for a while, then SIGKILL mid-stream.
    std::thread::sleep(Duration::from_millis(2500));
    recv.proc.kill();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "too few batches acknowledged: {}",
        acked.len()
    );

    let recv2 = Receiver::start(&data, &dir.path().join("receive2.log"), &[]);
    let got = series(&recv2.grpc, vec![eq("__name__", "crash_test")], 0, i64::MAX)
        .unwrap_or_else(|e| panic!("series after restart: {e}\n{}", recv2.proc.log_text()));
    assert_eq!(got.len(), SERIES, "all series present after restart");
    let last_acked = *acked.last().unwrap();
    for (i, (l, samples)) in got.iter().enumerate() {
        assert_eq!(l.get("series"), Some(format!("s{i:02}").as_str()));
        let by_t: BTreeMap<i64, f64> = samples.iter().copied().collect();
        assert_eq!(by_t.len(), samples.len(), "duplicated timestamps in {l}");
        for &n in &acked {
            let t = BASE + n * 1000;
            assert_eq!(
                by_t.get(&t).copied(),
                Some((n * 1000 + i as i64) as f64),
                "acknowledged batch {n} missing or altered in {l}"
            );
        }
        // Nothing invented: every sample is some batch's exact value; at most one batch
        // past the last acknowledged one (in flight when killed) may be present.
        for (&t, &v) in &by_t {
            let n = (t - BASE) / 1000;
            assert_eq!((t - BASE) % 1000, 0);
            assert_eq!(v, (n * 1000 + i as i64) as f64, "altered sample");
            assert!(n <= last_acked + 1, "invented batch {n}");
        }
    }
    // Written again after restart works.
    let (code, body) = recv2.write(&batch(last_acked + 2));
    assert_eq!(code, 200, "{body}");
}

//! Blocks cut by the receiver (short block duration) are read by the reference
//! `promtool tsdb list` / `promtool tsdb dump`, and the dumped samples equal what was
//! remote-written.

mod receiver_common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use e2e::{promtool_bin, wait_for};
use receiver_common::{Receiver, labels};
use storeapi::Sample;

#[test]
fn receiver_blocks_readable_by_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut recv = Receiver::start(
        &data,
        &dir.path().join("receive.log"),
        &[
            "--tsdb.min-block-duration=1m",
            "--tsdb.max-block-duration=1m",
            "--tsdb.maintenance-interval=200ms",
            "--tsdb.retention=0",
            "--label=replica=\"r1\"",
        ],
    );
    // 3 series × 10 minutes at 15s, written in time order over several requests.
    let base = 1_700_000_040_000i64; // aligned to the minute
    let mut want: BTreeMap<(String, i64), f64> = BTreeMap::new();
    for step in 0..40i64 {
        let t = base + step * 15_000;
        let batch: Vec<_> = (0..3)
            .map(|i| {
                let v = (step * 10 + i) as f64 + 0.25;
                want.insert((format!("s{i}"), t), v);
                (
                    labels(&[("__name__", "blocks_test"), ("id", &format!("s{i}"))]),
                    vec![Sample { t, v }],
                )
            })
            .collect();
        let (code, body) = recv.write(&batch);
        assert_eq!(code, 200, "{body}");
    }
    let tenant_dir = data.join("default-tenant");
    // Wait for the receiver's maintenance to cut blocks.
    let blocks = wait_for(Duration::from_secs(30), || {
        let n = std::fs::read_dir(&tenant_dir)
            .ok()?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("meta.json").is_file())
            .count();
        (n >= 5).then_some(n)
    })
    .unwrap_or_else(|| panic!("no blocks cut; log:\n{}", recv.proc.log_text()));
    // SIGTERM: clean exit 0.
    let st = recv
        .proc
        .terminate(Duration::from_secs(30))
        .expect("exits on SIGTERM");
    assert!(
        st.success(),
        "exit status {st:?}; log:\n{}",
        recv.proc.log_text()
    );

    // promtool reads a data dir's wal/ too, and our WAL is Orrery's own format, not
    // Prometheus's: hand promtool the receiver's blocks alone (as a block store sees them),
    // in a data dir with an empty wal/.
    let view = dir.path().join("promtool-view");
    std::fs::create_dir_all(view.join("wal")).unwrap();
    for e in std::fs::read_dir(&tenant_dir)
        .unwrap()
        .filter_map(|e| e.ok())
    {
        if e.path().join("meta.json").is_file() {
            e2e::copy_dir(&e.path(), &view.join(e.file_name()));
        }
    }

    let out = Command::new(promtool_bin())
        .args(["tsdb", "list"])
        .arg(&view)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "promtool tsdb list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        list.lines().count() > blocks,
        "list shows the blocks:\n{list}"
    );

    let out = Command::new(promtool_bin())
        .args(["tsdb", "dump"])
        .arg(&view)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool tsdb dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = String::from_utf8_lossy(&out.stdout);
    // Lines: {__name__="blocks_test", id="s0"} 0.25 1700000040000
    let mut got: BTreeMap<(String, i64), f64> = BTreeMap::new();
    for line in dump.lines() {
        let Some((lbls, rest)) = line.rsplit_once('}') else {
            continue;
        };
        let id = lbls
            .split("id=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or("")
            .to_string();
        let mut it = rest.split_whitespace();
        let v: f64 = it.next().unwrap().parse().unwrap();
        let t: i64 = it.next().unwrap().parse().unwrap();
        assert!(
            got.insert((id, t), v).is_none(),
            "duplicate sample in dump: {line}"
        );
    }
    // The blocks hold a prefix of the data (the newest part may still be in the head/WAL,
    // flushed or not): every dumped sample is exact, and most were cut into blocks.
    assert!(
        got.len() >= want.len() / 2,
        "only {} of {} samples in blocks",
        got.len(),
        want.len()
    );
    for (k, v) in &got {
        assert_eq!(want.get(k), Some(v), "dumped sample {k:?} differs");
    }
    // meta.json carries the Thanos section with the external labels.
    let meta = std::fs::read_dir(&tenant_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("meta.json"))
        .find(|p| p.is_file())
        .unwrap();
    let meta = std::fs::read_to_string(meta).unwrap();
    assert!(
        meta.contains("\"tenant_id\": \"default-tenant\"")
            || meta.contains("\"tenant_id\":\"default-tenant\""),
        "{meta}"
    );
    assert!(meta.contains("r1"), "{meta}");
}

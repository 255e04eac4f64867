//! The web UI in headless Chromium (Debian's `chromium`): open the graph page, run `up`,
//! see a table row and a drawn graph; a screenshot is saved in target/e2e-out/querier_ui/.

mod querier_common;

use querier_common::*;
use std::process::Command;
use std::time::Duration;

fn chromium() -> String {
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new("which")
            .arg(c)
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return c.to_string();
        }
    }
    panic!(
        "headless Chromium not found: install it with `apt-get install -y chromium` (scripts/test.sh does)"
    );
}

fn chromium_cmd(bin: &str, profile: &std::path::Path) -> Command {
    let mut c = Command::new(bin);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        "--virtual-time-budget=15000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

#[test]
fn ui_runs_up_and_draws_table_and_graph() {
    let bin = chromium();
    let recv = Receiver::start("receiver", &[("receive_replica", "0")]);
    let q = Querier::start(&[recv.grpc.as_str()], &[]);
    let _prom = prometheus(&[("cluster", "batcave")], &[recv.remote_write_url()]);
    let ok = e2e::wait_for(Duration::from_secs(40), || {
        let (_, v) = instant(&q.http, "up", now_secs());
        (v["data"]["result"].as_array().map(|a| a.len()) == Some(1)).then_some(())
    });
    assert!(
        ok.is_some(),
        "no `up` through the querier; querier log:\n{}",
        q.proc.log_text()
    );
    // A few more seconds so the range graph has several points.
    std::thread::sleep(Duration::from_secs(5));

    let out = out_dir("querier_ui");
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{}/graph?expr=up&range=300", q.http);

    let dom = chromium_cmd(&bin, profile.path())
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .expect("run chromium --dump-dom");
    let html = String::from_utf8_lossy(&dom.stdout).to_string();
    let _ = std::fs::write(out.join("graph.html"), &html);
    assert!(
        html.contains("class=\"result-row\""),
        "no table row in the DOM (saved in {}); chromium stderr:\n{}",
        out.display(),
        String::from_utf8_lossy(&dom.stderr)
    );
    assert!(
        html.contains("up{"),
        "the row does not show the series: {html}"
    );
    assert!(html.contains("cluster=\"batcave\""), "{html}");
    assert!(
        html.contains("data-drawn=\"1\"") && html.contains("<canvas"),
        "graph not drawn (no uPlot canvas): {html}"
    );

    let shot = out.join("graph.png");
    let profile2 = tempfile::tempdir().unwrap();
    let st = chromium_cmd(&bin, profile2.path())
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .expect("run chromium --screenshot");
    assert!(
        shot.is_file() && std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0) > 10_000,
        "no screenshot at {}: {}",
        shot.display(),
        String::from_utf8_lossy(&st.stderr)
    );

    // The stores page lists the receiver.
    let profile3 = tempfile::tempdir().unwrap();
    let dom = chromium_cmd(&bin, profile3.path())
        .arg("--dump-dom")
        .arg(format!("http://{}/stores", q.http))
        .output()
        .expect("run chromium on /stores");
    let html = String::from_utf8_lossy(&dom.stdout).to_string();
    assert!(html.contains(&recv.grpc) && html.contains("UP"), "{html}");
}

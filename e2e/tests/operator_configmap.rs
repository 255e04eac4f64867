//! The operator's plain-Prometheus path (a prometheus.yml in a ConfigMap) against the
//! real reference Prometheus 3.5.3: our remote_write entry is upserted into the file
//! with the operator's own edit logic, Prometheus is reloaded with the operator's
//! `/-/reload` call, samples (labelled `cluster="batcave"`) arrive at the remote-write
//! endpoint while the user's own remote_write entry keeps working; after removal and
//! another reload our writes stop and the user's go on. The file is checked byte for
//! byte: the upsert leaves every byte outside our entry as it was (comments, quoting,
//! `1.10` stays `1.10` for Prometheus), and the removal restores the original file
//! exactly. Reloads go through the operator's `reload_until_loaded`, which confirms
//! the change on Prometheus's `/api/v1/status/config` (D9).
//!
//! The remote-write endpoints here are small in-test HTTP servers that record what they
//! receive (snappy-decoded), so the user's own remote_write can be watched beside ours;
//! Prometheus's own `prometheus_remote_storage_samples_total` confirms the flow. The same
//! path end to end through a real `orrery receive` and `orrery query` is
//! `operator_receive_query.rs`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::{Prometheus, http_get, wait_for};
use operator::probe::{HttpProbe, reload_until_loaded};
use operator::remote_write::{RemoteWriteEntry, remove_from_file, upsert_file};

/// What a sink has received.
#[derive(Default)]
struct Seen {
    requests: usize,
    bodies: Vec<Vec<u8>>,
}

/// A minimal remote-write endpoint: accepts POSTs, snappy-decodes the body, answers 204.
struct Sink {
    port: u16,
    seen: Arc<Mutex<Seen>>,
}

impl Sink {
    fn start() -> Sink {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s2 = seen.clone();
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let seen = s2.clone();
                std::thread::spawn(move || serve(conn, seen));
            }
        });
        Sink { port, seen }
    }
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/api/v1/receive", self.port)
    }
    fn requests(&self) -> usize {
        self.seen.lock().unwrap().requests
    }
    fn any_body_contains(&self, needles: &[&[u8]]) -> bool {
        self.seen
            .lock()
            .unwrap()
            .bodies
            .iter()
            .any(|b| needles.iter().all(|n| b.windows(n.len()).any(|w| w == *n)))
    }
}

fn serve(conn: TcpStream, seen: Arc<Mutex<Seen>>) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut w = conn;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let decoded = snap::raw::Decoder::new()
            .decompress_vec(&body)
            .unwrap_or_default();
        {
            let mut s = seen.lock().unwrap();
            s.requests += 1;
            if s.bodies.len() < 200 {
                s.bodies.push(decoded);
            }
        }
        if w.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}

/// `prometheus_remote_storage_samples_total` of the queue named `name`, from /metrics.
fn samples_sent(prom: &Prometheus, name: &str) -> Option<f64> {
    let (_, text) = http_get(&prom.addr(), "/metrics").ok()?;
    let needle = format!("remote_name=\"{name}\"");
    text.lines()
        .filter(|l| {
            l.starts_with("prometheus_remote_storage_samples_total{") && l.contains(&needle)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .next()
}

fn loaded_config(prom: &Prometheus) -> String {
    let (status, body) = http_get(&prom.addr(), "/api/v1/status/config").unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["data"]["yaml"].as_str().unwrap().to_string()
}

/// Reloads with the operator's follow-up logic until the loaded configuration shows
/// (`want_present`) or no longer shows our entry; it must on the first reload here,
/// because the file is written directly (no kubelet sync delay).
fn reload(prom: &Prometheus, name: &str, want_present: bool) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = format!("http://{}/-/reload", prom.addr());
    let (seen, reloads) = rt.block_on(reload_until_loaded(
        &HttpProbe::default(),
        &url,
        &[name.to_string()],
        want_present,
        3,
        Duration::from_secs(1),
    ));
    assert!(
        seen && reloads == 1,
        "reload not confirmed (seen {seen}, {reloads} reloads); log:\n{}",
        prom.proc.log_text()
    );
}

/// Lengths of the common prefix and (non-overlapping) common suffix of two texts.
fn common(a: &str, b: &str) -> (usize, usize) {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let p = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let max = a.len().min(b.len()) - p;
    let s = a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .take(max)
        .take_while(|(x, y)| x == y)
        .count();
    (p, s)
}

#[test]
fn configmap_path_patches_reloads_and_removes_against_real_prometheus() {
    let ours = Sink::start();
    let user = Sink::start();
    let config = format!(
        "# user's own prometheus.yml -- comments, quoting and spelling must survive\n\
         global:\n  scrape_interval: 1s   # fast, for the test\n  external_labels:\n    region: 'gotham'\n    release: 1.10\n\
         scrape_configs:\n  - job_name: self\n    static_configs:\n      - targets: ['127.0.0.1:{{{{PORT}}}}']\n\
         remote_write:\n  - name: user-sink\n    url: {}\n    queue_config:\n      batch_send_deadline: 1s\n",
        user.url()
    );
    let prom = Prometheus::start(&config, &["--web.enable-lifecycle"]);
    let file = prom.dir.path().join("prometheus.yml");

    // The user's sink works before we touch anything; ours gets nothing.
    assert!(
        wait_for(Duration::from_secs(60), || (user.requests() > 0)
            .then_some(()))
        .is_some(),
        "user sink got no writes; log:\n{}",
        prom.proc.log_text()
    );
    assert_eq!(ours.requests(), 0);

    // Upsert our entry with the operator's file logic, then reload.
    let original = std::fs::read_to_string(&file).unwrap();
    let entry = RemoteWriteEntry::new("orrery", "global", "batcave", &ours.url(), Some("wayne"));
    assert!(upsert_file(&file, &entry).unwrap());
    assert!(
        !upsert_file(&file, &entry).unwrap(),
        "second upsert must be a no-op"
    );
    // D10: every byte outside our entry is unchanged.
    let edited = std::fs::read_to_string(&file).unwrap();
    let (p, s) = common(&original, &edited);
    assert_eq!(
        p + s,
        original.len(),
        "bytes outside our entry changed:\n{original}\n---\n{edited}"
    );
    assert!(edited[p..edited.len() - s].contains(&entry.name));
    reload(&prom, &entry.name, true);
    let cfg = loaded_config(&prom);
    assert!(cfg.contains(&format!("name: {}", entry.name)), "{cfg}");
    assert!(cfg.contains("name: user-sink"), "{cfg}");
    // Prometheus still reads the label value as the user spelled it.
    assert!(cfg.contains("release: \"1.10\""), "{cfg}");

    // Samples arrive at our endpoint, carrying cluster="batcave" and the user's labels.
    let arrived = wait_for(Duration::from_secs(60), || {
        ours.any_body_contains(&[b"cluster", b"batcave", b"region", b"gotham", b"up"])
            .then_some(())
    });
    assert!(
        arrived.is_some(),
        "no samples with cluster=batcave at our endpoint ({} requests); log:\n{}",
        ours.requests(),
        prom.proc.log_text()
    );
    let sent = wait_for(Duration::from_secs(30), || {
        samples_sent(&prom, &entry.name).filter(|n| *n > 0.0)
    });
    assert!(
        sent.is_some(),
        "prometheus_remote_storage_samples_total for our queue did not grow"
    );
    let user_before = user.requests();

    // Remove our entry, reload: our writes stop, the user's go on.
    assert!(remove_from_file(&file, &entry.id()).unwrap());
    // D10: the removal gives back the user's file byte for byte.
    assert_eq!(std::fs::read_to_string(&file).unwrap(), original);
    reload(&prom, &entry.name, false);
    let cfg = loaded_config(&prom);
    assert!(!cfg.contains(&entry.name), "{cfg}");
    assert!(cfg.contains("name: user-sink"), "{cfg}");
    // Let in-flight sends drain, then watch for silence.
    std::thread::sleep(Duration::from_secs(3));
    let ours_after = ours.requests();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        ours.requests(),
        ours_after,
        "writes to our endpoint continued after removal"
    );
    assert!(
        samples_sent(&prom, &entry.name).is_none(),
        "our remote-write queue still exists after removal"
    );
    assert!(
        user.requests() > user_before,
        "the user's remote_write stopped"
    );
}

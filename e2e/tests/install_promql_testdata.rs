//! `scripts/install-promql-testdata.sh` against the real Debian mirror, in a cache of its
//! own: a first install, an idempotent rerun that fetches nothing, extracted files damaged
//! after the fact (re-extracted from the verified tarball, no download), and a partial or
//! corrupt tarball in the cache (refused, deleted, fetched again).
//!
//! To spare the mirror the 12 MB Sources index, the workspace cache's private deb-src
//! state is copied in when it exists (the script then uses that index first).

use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::workspace_root;

struct Run {
    ok: bool,
    stderr: String,
}

fn install(cache: &Path) -> Run {
    let out = Command::new("bash")
        .arg(workspace_root().join("scripts/install-promql-testdata.sh"))
        .env("ORRERY_CACHE", cache)
        .output()
        .expect("run bash scripts/install-promql-testdata.sh");
    Run {
        ok: out.status.success(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn tarball(cache: &Path) -> PathBuf {
    let src = cache.join("apt-src/src");
    std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains(".orig.tar."))
        .unwrap_or_else(|| panic!("no orig tarball in {}", src.display()))
}

fn test_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "test"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    v.sort();
    v
}

fn assert_ok(r: &Run, what: &str) {
    assert!(r.ok, "{what}: the install script failed:\n{}", r.stderr);
}

#[test]
fn install_is_verified_idempotent_and_refetches_damaged_downloads() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path();
    let shared_state = workspace_root().join(".cache/apt-src");
    if shared_state.join("sources.list").is_file() {
        std::fs::create_dir_all(cache.join("apt-src")).unwrap();
        std::fs::copy(
            shared_state.join("sources.list"),
            cache.join("apt-src/sources.list"),
        )
        .unwrap();
        e2e::copy_dir(&shared_state.join("lists"), &cache.join("apt-src/lists"));
    }
    let data = cache.join("promql-testdata");

    // First install: the tarball is fetched, checked and the testdata extracted.
    let r = install(cache);
    assert_ok(&r, "first install");
    assert!(
        r.stderr.contains("matches the Sources index"),
        "{}",
        r.stderr
    );
    let first = test_files(&data);
    assert_eq!(first.len(), 17, "Prometheus 3.5.3 has 17 PromQL test files");
    assert!(first.iter().any(|(n, _)| n == "functions.test"));
    let source = std::fs::read_to_string(data.join("SOURCE")).unwrap();
    assert!(source.contains("version 3.5.3"), "{source}");
    for f in ["LICENSE", "NOTICE"] {
        assert!(
            data.join(f).is_file(),
            "{f} is extracted beside the scripts"
        );
    }

    // Idempotent: nothing fetched, nothing rewritten.
    let r = install(cache);
    assert_ok(&r, "second install");
    assert!(r.stderr.contains("already in"), "{}", r.stderr);
    assert!(!r.stderr.contains("downloading"), "{}", r.stderr);

    // An extracted file changed after the fact: re-extracted from the cached tarball.
    let victim = data.join("functions.test");
    std::fs::write(&victim, b"eval instant at 0s 1\n  1\n").unwrap();
    let r = install(cache);
    assert_ok(&r, "install over a damaged extraction");
    assert!(!r.stderr.contains("downloading"), "{}", r.stderr);
    assert_eq!(test_files(&data), first);

    // A partial download (cut tarball) and a corrupt one (same size, one byte flipped):
    // each refused, deleted and fetched again; the result is the same data.
    let good = std::fs::read(tarball(cache)).unwrap();
    let damages: [(&str, Box<dyn Fn(&mut Vec<u8>)>); 2] = [
        (
            "partial",
            Box::new(|b: &mut Vec<u8>| b.truncate(b.len() / 3)),
        ),
        ("corrupt", Box::new(|b: &mut Vec<u8>| b[1000] ^= 0x40)),
    ];
    for (what, damage) in damages {
        let mut bad = good.clone();
        damage(&mut bad);
        std::fs::write(tarball(cache), &bad).unwrap();
        std::fs::remove_file(data.join("SOURCE")).unwrap();
        let r = install(cache);
        assert_ok(&r, what);
        assert!(
            r.stderr.contains("refusing the cached"),
            "{what} tarball was not refused:\n{}",
            r.stderr
        );
        assert!(r.stderr.contains("downloading"), "{}", r.stderr);
        assert_eq!(std::fs::read(tarball(cache)).unwrap(), good, "{what}");
        assert_eq!(test_files(&data), first, "{what}");
    }
}

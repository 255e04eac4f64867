//! Byte-for-byte Prometheus JSON encoding of query results, and the parsing of the HTTP
//! API's time and duration parameters.

use promql::Value;
use std::fmt::Write as _;
use storeapi::{Labels, Sample};

/// Appends `s` as a JSON string the way Prometheus (jsoniter, standard-library compatible,
/// HTML-escaping) writes it.
pub fn write_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c if (c as u32) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A sample value as Prometheus writes it: Go's `strconv.FormatFloat(v, 'f', -1, 64)`, or
/// the `'e'` form when |v| < 1e-6 or |v| >= 1e21; `NaN`, `+Inf`, `-Inf` for the specials.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    let abs = v.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        // Rust writes "1.5e-7"; Go writes "1.5e-07" (sign always, at least two digits).
        let s = format!("{v:e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let (sign, digits) = match exp.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', exp),
        };
        let digits = if digits.len() < 2 {
            format!("0{digits}")
        } else {
            digits.to_string()
        };
        return format!("{mantissa}e{sign}{digits}");
    }
    format!("{v}")
}

/// A millisecond timestamp as Prometheus writes it: seconds, with the millisecond
/// fraction in three digits when not zero (`1435781451.781`, `1435781451.780`, `1435781451`).
pub fn format_timestamp(out: &mut String, t: i64) {
    let mut t = t as i128;
    if t < 0 {
        out.push('-');
        t = -t;
    }
    out.push_str(&(t / 1000).to_string());
    let frac = t % 1000;
    if frac != 0 {
        out.push_str(&format!(".{frac:03}"));
    }
}

/// `[<ts>,"<value>"]`
pub fn write_point(out: &mut String, s: &Sample) {
    out.push('[');
    format_timestamp(out, s.t);
    out.push_str(",\"");
    out.push_str(&format_value(s.v));
    out.push_str("\"]");
}

/// `[t, {"count": …, "sum": …, "buckets": [[rule, "lower", "upper", "count"], …]}]` as
/// Prometheus's `jsonutil.MarshalHistogram`: buckets in ascending order (zero bucket
/// only when populated), empty buckets left out, `buckets` absent when none remain.
/// The rule is 0 for (l,u], 1 for [l,u), 2 for (l,u), 3 for [l,u].
pub fn write_histogram_point(out: &mut String, p: &promql::HPoint) {
    out.push('[');
    format_timestamp(out, p.t);
    out.push(',');
    write_histogram(out, &p.h);
    out.push(']');
}

pub fn write_histogram(out: &mut String, h: &storeapi::histogram::FloatHistogram) {
    out.push_str("{\"count\":\"");
    out.push_str(&format_value(h.count));
    out.push_str("\",\"sum\":\"");
    out.push_str(&format_value(h.sum));
    out.push('"');
    let mut first = true;
    for b in h.all_buckets() {
        if b.count == 0.0 {
            continue;
        }
        out.push_str(if first { ",\"buckets\":[" } else { "," });
        first = false;
        let rule = match (b.lower_inclusive, b.upper_inclusive) {
            (true, true) => 3,
            (true, false) => 1,
            (false, true) => 0,
            (false, false) => 2,
        };
        let _ = write!(
            out,
            "[{rule},\"{}\",\"{}\",\"{}\"]",
            format_value(b.lower),
            format_value(b.upper),
            format_value(b.count)
        );
    }
    if !first {
        out.push(']');
    }
    out.push('}');
}

/// `{"name":"value",...}`
pub fn write_labels(out: &mut String, labels: &Labels) {
    out.push('{');
    for (i, l) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_json_str(out, &l.name);
        out.push(':');
        write_json_str(out, &l.value);
    }
    out.push('}');
}

/// `{"resultType":"...","result":...}` for a query value.
pub fn write_query_data(out: &mut String, value: &Value) {
    match value {
        Value::Scalar(s) => {
            out.push_str("{\"resultType\":\"scalar\",\"result\":");
            write_point(out, s);
            out.push('}');
        }
        Value::String { t, v } => {
            out.push_str("{\"resultType\":\"string\",\"result\":[");
            format_timestamp(out, *t);
            out.push(',');
            write_json_str(out, v);
            out.push_str("]}");
        }
        Value::Vector(samples) => {
            out.push_str("{\"resultType\":\"vector\",\"result\":[");
            for (i, (labels, s)) in samples.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"metric\":");
                write_labels(out, labels);
                out.push_str(",\"value\":");
                write_point(out, s);
                out.push('}');
            }
            out.push_str("]}");
        }
        Value::HistVector(series) => {
            out.push_str("{\"resultType\":\"vector\",\"result\":[");
            for (i, s) in series.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"metric\":");
                write_labels(out, &s.labels);
                if let Some(h) = s.histograms.first() {
                    out.push_str(",\"histogram\":");
                    write_histogram_point(out, h);
                } else if let Some(f) = s.floats.first() {
                    out.push_str(",\"value\":");
                    write_point(out, f);
                }
                out.push('}');
            }
            out.push_str("]}");
        }
        Value::HistMatrix(series) => {
            out.push_str("{\"resultType\":\"matrix\",\"result\":[");
            for (i, s) in series.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"metric\":");
                write_labels(out, &s.labels);
                if !s.floats.is_empty() {
                    out.push_str(",\"values\":[");
                    for (j, p) in s.floats.iter().enumerate() {
                        if j > 0 {
                            out.push(',');
                        }
                        write_point(out, p);
                    }
                    out.push(']');
                }
                if !s.histograms.is_empty() {
                    out.push_str(",\"histograms\":[");
                    for (j, h) in s.histograms.iter().enumerate() {
                        if j > 0 {
                            out.push(',');
                        }
                        write_histogram_point(out, h);
                    }
                    out.push(']');
                }
                out.push('}');
            }
            out.push_str("]}");
        }
        Value::Matrix(series) => {
            out.push_str("{\"resultType\":\"matrix\",\"result\":[");
            for (i, (labels, samples)) in series.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"metric\":");
                write_labels(out, labels);
                out.push_str(",\"values\":[");
                for (j, s) in samples.iter().enumerate() {
                    if j > 0 {
                        out.push(',');
                    }
                    write_point(out, s);
                }
                out.push_str("]}");
            }
            out.push_str("]}");
        }
    }
}

/// Timings of one query, in seconds (Prometheus's `data.stats.timings`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub exec_queue: f64,
    pub query_preparation: f64,
}

/// Appends Prometheus's `"stats"` object to a query's `data` object (which must end in
/// `}`): `timings` (seconds) and `samples`, the keys and nesting Prometheus 3.5 uses
/// without per-step statistics (those need its `promql-per-step-stats` feature flag).
pub fn append_stats(data: &mut String, t: Timings, s: &promql::QueryStats) {
    if !data.ends_with('}') {
        return;
    }
    data.pop();
    let eval_total = t.query_preparation + s.inner_eval_seconds + s.result_sort_seconds;
    let _ = write!(
        data,
        ",\"stats\":{{\"timings\":{{\"evalTotalTime\":{},\"resultSortTime\":{},\"queryPreparationTime\":{},\"innerEvalTime\":{},\"execQueueTime\":{},\"execTotalTime\":{}}},\"samples\":{{\"totalQueryableSamples\":{},\"peakSamples\":{}}}}}}}",
        json_seconds(eval_total),
        json_seconds(s.result_sort_seconds),
        json_seconds(t.query_preparation),
        json_seconds(s.inner_eval_seconds),
        json_seconds(t.exec_queue),
        json_seconds(eval_total),
        s.total_queryable_samples,
        s.peak_samples,
    );
}

/// A duration in seconds as a JSON number (never NaN or infinite).
fn json_seconds(v: f64) -> String {
    if v.is_finite() && v >= 0.0 {
        format!("{v}")
    } else {
        "0".into()
    }
}

fn write_str_array(out: &mut String, key: &str, items: &[String]) {
    if items.is_empty() {
        return;
    }
    out.push_str(",\"");
    out.push_str(key);
    out.push_str("\":[");
    for (i, w) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_json_str(out, w);
    }
    out.push(']');
}

/// A success envelope around already-encoded `data`, with warnings and infos when present.
pub fn success(data: &str, warnings: &[String], infos: &[String]) -> String {
    let mut out = String::with_capacity(data.len() + 64);
    out.push_str("{\"status\":\"success\",\"data\":");
    out.push_str(data);
    write_str_array(&mut out, "warnings", warnings);
    write_str_array(&mut out, "infos", infos);
    out.push('}');
    out
}

/// An error envelope: `{"status":"error","errorType":"...","error":"..."}` (+ warnings).
pub fn error(error_type: &str, message: &str, warnings: &[String]) -> String {
    let mut out = String::from("{\"status\":\"error\",\"errorType\":");
    write_json_str(&mut out, error_type);
    out.push_str(",\"error\":");
    write_json_str(&mut out, message);
    write_str_array(&mut out, "warnings", warnings);
    out.push('}');
    out
}

/// `["a","b"]`
pub fn string_list(items: &[String]) -> String {
    let mut out = String::from("[");
    for (i, w) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_json_str(&mut out, w);
    }
    out.push(']');
    out
}

/// The smallest and largest times the API accepts (Prometheus's `MinTime`/`MaxTime`, ms).
pub const MIN_TIME_MS: i64 = -9_223_309_901_257_974;
pub const MAX_TIME_MS: i64 = 9_223_309_901_257_974;
const MIN_TIME_FORMATTED: &str = "-292273086-05-16T16:47:06Z";
const MAX_TIME_FORMATTED: &str = "292277025-08-18T07:12:54.999999999Z";

/// Parses a time parameter: unix seconds as a float (rounded to milliseconds) or RFC 3339.
/// Returns milliseconds since the epoch.
pub fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(f) = s.parse::<f64>()
        && f.is_finite()
    {
        let secs = f.trunc();
        let frac = ((f - secs) * 1000.0).round();
        let ms = secs * 1000.0 + frac;
        if ms > i64::MAX as f64 || ms < i64::MIN as f64 {
            return Err(format!("cannot parse \"{s}\" to a valid timestamp"));
        }
        return Ok(ms as i64);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    match s {
        MIN_TIME_FORMATTED => Ok(MIN_TIME_MS),
        MAX_TIME_FORMATTED => Ok(MAX_TIME_MS),
        _ => Err(format!("cannot parse \"{s}\" to a valid timestamp")),
    }
}

/// Parses a Prometheus duration (`1h30m`, `5m`, `10s`, `100ms`, `1d`, `1w`, `1y`).
pub fn parse_prom_duration(s: &str) -> Option<i64> {
    if s.is_empty() {
        return None;
    }
    if s == "0" {
        return Some(0);
    }
    let units: [(&str, i64); 7] = [
        ("y", 365 * 24 * 3600 * 1000),
        ("w", 7 * 24 * 3600 * 1000),
        ("d", 24 * 3600 * 1000),
        ("h", 3600 * 1000),
        ("m", 60 * 1000),
        ("s", 1000),
        ("ms", 1),
    ];
    let mut rest = s;
    let mut total: i64 = 0;
    let mut last_unit = 0usize;
    let mut first = true;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let n: i64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (idx, unit_len) = if rest.starts_with("ms") {
            (6, 2)
        } else {
            let c = rest.chars().next()?;
            let idx = units
                .iter()
                .position(|(u, _)| u.len() == 1 && u.starts_with(c))?;
            (idx, 1)
        };
        // Units must appear from largest to smallest, each at most once.
        if !first && idx <= last_unit {
            return None;
        }
        first = false;
        last_unit = idx;
        total = total.checked_add(n.checked_mul(units[idx].1)?)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// Parses a duration parameter (float seconds or Prometheus duration) into milliseconds.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    if let Ok(f) = s.parse::<f64>() {
        let ms = f * 1000.0;
        if !ms.is_finite() || ms > i64::MAX as f64 / 1e6 || ms < i64::MIN as f64 / 1e6 {
            return Err(format!(
                "cannot parse \"{s}\" to a valid duration. It overflows int64"
            ));
        }
        return Ok(ms as i64);
    }
    parse_prom_duration(s).ok_or_else(|| format!("cannot parse \"{s}\" to a valid duration"))
}

/// Formats milliseconds as an RFC 3339 time with millisecond precision where needed.
pub fn rfc3339(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_format_like_go() {
        assert_eq!(format_value(1.0), "1");
        assert_eq!(format_value(0.1), "0.1");
        assert_eq!(format_value(-2.5), "-2.5");
        assert_eq!(format_value(1e6), "1000000");
        assert_eq!(format_value(123456789.125), "123456789.125");
        assert_eq!(format_value(1e20), "100000000000000000000");
        assert_eq!(format_value(1e21), "1e+21");
        assert_eq!(format_value(1.5e300), "1.5e+300");
        assert_eq!(format_value(1e-6), "0.000001");
        assert_eq!(format_value(1e-7), "1e-07");
        assert_eq!(format_value(-2.5e-10), "-2.5e-10");
        assert_eq!(format_value(0.0), "0");
        assert_eq!(format_value(-0.0), "-0");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(1.0 / 3.0), "0.3333333333333333");
    }

    #[test]
    fn timestamps_format_like_prometheus() {
        let f = |t| {
            let mut s = String::new();
            format_timestamp(&mut s, t);
            s
        };
        assert_eq!(f(1435781451781), "1435781451.781");
        assert_eq!(f(1435781451780), "1435781451.780");
        assert_eq!(f(1435781451001), "1435781451.001");
        assert_eq!(f(1435781451000), "1435781451");
        assert_eq!(f(0), "0");
        assert_eq!(f(-1500), "-1.500");
    }

    #[test]
    fn vector_json_shape() {
        let v = Value::Vector(vec![(
            Labels::from_pairs([("__name__", "up"), ("job", "a<b")]).unwrap(),
            Sample {
                t: 1435781451781,
                v: 1.0,
            },
        )]);
        let mut data = String::new();
        write_query_data(&mut data, &v);
        assert_eq!(
            success(&data, &[], &[]),
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"up","job":"a\u003cb"},"value":[1435781451.781,"1"]}]}}"#
        );
        let mut data = String::new();
        write_query_data(&mut data, &Value::Vector(vec![]));
        assert_eq!(
            success(&data, &["w1".into()], &[]),
            r#"{"status":"success","data":{"resultType":"vector","result":[]},"warnings":["w1"]}"#
        );
    }

    #[test]
    fn matrix_scalar_string_json_shape() {
        let m = Value::Matrix(vec![(
            Labels::from_pairs([("a", "b")]).unwrap(),
            vec![
                Sample { t: 1000, v: 1.5 },
                Sample {
                    t: 2000,
                    v: f64::NAN,
                },
            ],
        )]);
        let mut d = String::new();
        write_query_data(&mut d, &m);
        assert_eq!(
            d,
            r#"{"resultType":"matrix","result":[{"metric":{"a":"b"},"values":[[1,"1.5"],[2,"NaN"]]}]}"#
        );
        let mut d = String::new();
        write_query_data(&mut d, &Value::Scalar(Sample { t: 1500, v: 2.0 }));
        assert_eq!(d, r#"{"resultType":"scalar","result":[1.500,"2"]}"#);
        let mut d = String::new();
        write_query_data(
            &mut d,
            &Value::String {
                t: 1000,
                v: "x\"y".into(),
            },
        );
        assert_eq!(d, r#"{"resultType":"string","result":[1,"x\"y"]}"#);
    }

    #[test]
    fn error_json_shape() {
        assert_eq!(
            error("bad_data", "invalid parameter \"query\": x", &[]),
            r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": x"}"#
        );
    }

    #[test]
    fn parses_times() {
        assert_eq!(parse_time("1435781451.781"), Ok(1435781451781));
        assert_eq!(parse_time("1435781451"), Ok(1435781451000));
        assert_eq!(parse_time("2015-07-01T20:10:51.781Z"), Ok(1435781451781));
        assert_eq!(
            parse_time("2015-07-01T22:10:51.781+02:00"),
            Ok(1435781451781)
        );
        assert_eq!(parse_time(MAX_TIME_FORMATTED), Ok(MAX_TIME_MS));
        assert_eq!(
            parse_time("yesterday"),
            Err("cannot parse \"yesterday\" to a valid timestamp".into())
        );
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("15"), Ok(15_000));
        assert_eq!(parse_duration("0.5"), Ok(500));
        assert_eq!(parse_duration("1m30s"), Ok(90_000));
        assert_eq!(parse_duration("100ms"), Ok(100));
        assert_eq!(parse_duration("1h"), Ok(3_600_000));
        assert_eq!(parse_duration("2d"), Ok(172_800_000));
        assert!(parse_duration("1s1m").is_err());
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("").is_err());
    }

    fn hist(
        schema: i32,
        pos: (i32, &[f64]),
        neg: (i32, &[f64]),
    ) -> storeapi::histogram::FloatHistogram {
        use storeapi::histogram::{FloatHistogram, Span};
        let span = |o: i32, b: &[f64]| {
            if b.is_empty() {
                vec![]
            } else {
                vec![Span {
                    offset: o,
                    length: b.len() as u32,
                }]
            }
        };
        FloatHistogram {
            schema,
            positive_spans: span(pos.0, pos.1),
            positive_buckets: pos.1.to_vec(),
            negative_spans: span(neg.0, neg.1),
            negative_buckets: neg.1.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn histogram_vector_json_like_prometheus() {
        // Buckets: negative [-1,-0.5) 1, zero [-0.001,0.001] 1, positive (0.5,1] 2,
        // (1,2] 0 (left out), (2,4] 2.
        let mut h = hist(0, (0, &[2.0, 0.0, 2.0]), (0, &[1.0]));
        h.count = 6.0;
        h.sum = 10.0;
        h.zero_threshold = 0.001;
        h.zero_count = 1.0;
        let v = Value::HistVector(vec![promql::HistSeries {
            labels: Labels::from_pairs([("__name__", "lat")]).unwrap(),
            floats: vec![],
            histograms: vec![promql::HPoint {
                t: 1500,
                h: std::sync::Arc::new(h),
            }],
        }]);
        let mut d = String::new();
        write_query_data(&mut d, &v);
        assert_eq!(
            d,
            r#"{"resultType":"vector","result":[{"metric":{"__name__":"lat"},"histogram":[1.500,{"count":"6","sum":"10","buckets":[[1,"-1","-0.5","1"],[3,"-0.001","0.001","1"],[0,"0.5","1","2"],[0,"2","4","2"]]}]}]}"#
        );
    }

    #[test]
    fn histogram_matrix_json_like_prometheus() {
        // Custom buckets (-Inf,1], (1,5], (5,+Inf] with 2, 0, 1 observations.
        let mut nhcb = hist(
            storeapi::histogram::CUSTOM_BUCKETS_SCHEMA,
            (0, &[2.0, 0.0, 1.0]),
            (0, &[]),
        );
        nhcb.custom_values = vec![1.0, 5.0];
        nhcb.count = 3.0;
        nhcb.sum = 7.5;
        let empty = hist(0, (0, &[]), (0, &[]));
        let m = Value::HistMatrix(vec![
            promql::HistSeries {
                labels: Labels::from_pairs([("a", "b")]).unwrap(),
                floats: vec![Sample { t: 1000, v: 1.0 }],
                histograms: vec![promql::HPoint {
                    t: 2000,
                    h: std::sync::Arc::new(empty),
                }],
            },
            promql::HistSeries {
                labels: Labels::from_pairs([("a", "c")]).unwrap(),
                floats: vec![],
                histograms: vec![promql::HPoint {
                    t: 1000,
                    h: std::sync::Arc::new(nhcb),
                }],
            },
        ]);
        let mut d = String::new();
        write_query_data(&mut d, &m);
        assert_eq!(
            d,
            r#"{"resultType":"matrix","result":[{"metric":{"a":"b"},"values":[[1,"1"]],"histograms":[[2,{"count":"0","sum":"0"}]]},{"metric":{"a":"c"},"histograms":[[1,{"count":"3","sum":"7.5","buckets":[[3,"-Inf","1","2"],[0,"5","+Inf","1"]]}]]}]}"#
        );
    }
}

//! Log output of every subcommand: Thanos's `--log.level` and `--log.format` (`logfmt`,
//! the default, or `json`), one line per event on stderr.
//!
//! Why our own formatter: log pipelines (Loki, Elastic, Vector) parse logfmt and JSON
//! lines; tracing-subscriber's default text format is neither and writes colour escape
//! codes even into files and pipes. Colour is used only when stderr is a terminal, and
//! then only on the level token; JSON lines never carry any.
//!
//! Filter precedence: `--log.level` when given on the command line, else `RUST_LOG` (which
//! also takes per-module directives such as `info,tsdb=debug`), else `info`.

use std::fmt::{self, Write as _};
use std::io::IsTerminal;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// `--log.level` values (Thanos's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    fn directive(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// `--log.format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// `ts=… level=… caller=… msg="…" key=value` (go-kit/Thanos style).
    #[default]
    Logfmt,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber. `level` is the `--log.level` flag if it was given.
pub fn init(level: Option<LogLevel>, format: LogFormat) -> anyhow::Result<()> {
    let filter = match level {
        Some(l) => tracing_subscriber::EnvFilter::new(l.directive()),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    };
    let ansi = format == LogFormat::Logfmt && std::io::stderr().is_terminal();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .event_format(LineFormat { format, ansi })
        .try_init()
        .map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))
}

/// The event formatter behind [`init`].
struct LineFormat {
    format: LogFormat,
    ansi: bool,
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let rec = Record {
            ts: SystemTime::now(),
            level: *meta.level(),
            caller: caller(meta.file(), meta.line(), meta.target()),
            msg: fields.msg,
            fields: fields.pairs,
        };
        let line = match self.format {
            LogFormat::Logfmt => rec.logfmt(self.ansi),
            LogFormat::Json => rec.json(),
        };
        writer.write_str(&line)?;
        writer.write_char('\n')
    }
}

/// `file.rs:line` (the file's last path element, as Go's `caller`), or the target.
fn caller(file: Option<&str>, line: Option<u32>, target: &str) -> String {
    match (file, line) {
        (Some(f), Some(l)) => {
            let base = f.rsplit(['/', '\\']).next().unwrap_or(f);
            format!("{base}:{l}")
        }
        _ => target.to_string(),
    }
}

/// Event fields: the message and the other key/value pairs, in order.
#[derive(Default)]
struct Fields {
    msg: String,
    pairs: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.msg = value.to_string();
        } else {
            self.pairs
                .push((field.name().to_string(), value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let v = format!("{value:?}");
        if field.name() == "message" {
            self.msg = v;
        } else {
            self.pairs.push((field.name().to_string(), v));
        }
    }
}

/// One log line before rendering (pure, so the rendering is tested directly).
struct Record {
    ts: SystemTime,
    level: Level,
    caller: String,
    msg: String,
    fields: Vec<(String, String)>,
}

fn level_name(l: Level) -> &'static str {
    if l == Level::ERROR {
        "error"
    } else if l == Level::WARN {
        "warn"
    } else if l == Level::INFO {
        "info"
    } else if l == Level::DEBUG {
        "debug"
    } else {
        "trace"
    }
}

impl Record {
    fn logfmt(&self, ansi: bool) -> String {
        let mut s = String::with_capacity(128);
        s.push_str("ts=");
        s.push_str(&rfc3339_millis(self.ts));
        s.push_str(" level=");
        let lvl = level_name(self.level);
        if ansi {
            let colour = match lvl {
                "error" => "31",
                "warn" => "33",
                "info" => "32",
                _ => "34",
            };
            let _ = write!(s, "\x1b[{colour}m{lvl}\x1b[0m");
        } else {
            s.push_str(lvl);
        }
        s.push_str(" caller=");
        logfmt_value(&mut s, &self.caller);
        s.push_str(" msg=");
        logfmt_value(&mut s, &self.msg);
        for (k, v) in &self.fields {
            s.push(' ');
            logfmt_key(&mut s, k);
            s.push('=');
            logfmt_value(&mut s, v);
        }
        s
    }

    fn json(&self) -> String {
        let mut m = serde_json::Map::new();
        m.insert("ts".into(), rfc3339_millis(self.ts).into());
        m.insert("level".into(), level_name(self.level).into());
        m.insert("caller".into(), self.caller.clone().into());
        m.insert("msg".into(), self.msg.clone().into());
        for (k, v) in &self.fields {
            // A field named like one of ours keeps its value under another key.
            let key = if m.contains_key(k) {
                format!("field_{k}")
            } else {
                k.clone()
            };
            m.insert(key, v.clone().into());
        }
        serde_json::Value::Object(m).to_string()
    }
}

/// A logfmt key: characters that would break the `key=value` grammar become `_`.
fn logfmt_key(out: &mut String, k: &str) {
    if k.is_empty() {
        out.push('_');
        return;
    }
    out.extend(k.chars().map(|c| {
        if c <= ' ' || c == '=' || c == '"' || c.is_control() {
            '_'
        } else {
            c
        }
    }));
}

/// A logfmt value, quoted (with Go-style escapes) when it is empty or holds a space, `=`,
/// `"`, a backslash or a control character; bare otherwise.
fn logfmt_value(out: &mut String, v: &str) {
    let needs_quotes = v.is_empty()
        || v.chars()
            .any(|c| c <= ' ' || c == '=' || c == '"' || c == '\\' || c.is_control());
    if !needs_quotes {
        out.push_str(v);
        return;
    }
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `2026-12-03T08:10:00.123Z`.
fn rfc3339_millis(t: SystemTime) -> String {
    let ms = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    };
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let (y, mo, d) = civil_from_days(days);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rec(msg: &str, fields: &[(&str, &str)]) -> Record {
        Record {
            ts: UNIX_EPOCH + Duration::from_millis(1_764_749_400_123),
            level: Level::WARN,
            caller: "write.rs:42".into(),
            msg: msg.into(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(UNIX_EPOCH + Duration::from_millis(1_764_749_400_123)),
            "2025-12-03T08:10:00.123Z"
        );
        // Leap day and end of a leap year.
        assert_eq!(
            rfc3339_millis(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339_millis(UNIX_EPOCH + Duration::from_millis(1_735_689_599_999)),
            "2024-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn logfmt_quotes_and_escapes_only_when_needed() {
        let r = rec(
            "wrote block",
            &[
                ("ulid", "01ABC"),
                ("dir", "/data/a b"),
                ("err", "bad \"x\"\nnext\\"),
                ("empty", ""),
                ("eq", "a=b"),
                ("bad key", "v"),
                ("ctl", "\u{1b}[31m"),
            ],
        );
        assert_eq!(
            r.logfmt(false),
            "ts=2025-12-03T08:10:00.123Z level=warn caller=write.rs:42 msg=\"wrote block\" \
             ulid=01ABC dir=\"/data/a b\" err=\"bad \\\"x\\\"\\nnext\\\\\" empty=\"\" \
             eq=\"a=b\" bad_key=v ctl=\"\\u001b[31m\""
        );
        assert!(!r.logfmt(false).contains('\u{1b}'));
        assert!(r.logfmt(true).contains("level=\u{1b}[33mwarn\u{1b}[0m"));
        assert!(rec("one", &[]).logfmt(false).ends_with("msg=one"));
    }

    #[test]
    fn json_lines_parse_and_keep_every_field() {
        let r = rec("a \"quoted\"\nmsg", &[("tenant", "t1"), ("msg", "clash")]);
        let line = r.json();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ts"], "2025-12-03T08:10:00.123Z");
        assert_eq!(v["level"], "warn");
        assert_eq!(v["caller"], "write.rs:42");
        assert_eq!(v["msg"], "a \"quoted\"\nmsg");
        assert_eq!(v["tenant"], "t1");
        assert_eq!(v["field_msg"], "clash");
    }

    #[test]
    fn caller_is_file_and_line() {
        assert_eq!(
            caller(Some("receiver/src/write.rs"), Some(7), "receiver::write"),
            "write.rs:7"
        );
        assert_eq!(caller(None, None, "receiver::write"), "receiver::write");
    }
}

//! Where the top-level `remote_write` list sits in the *text* of a prometheus.yml.
//!
//! The operator edits a file it does not own. Re-rendering the parsed tree would drop
//! comments, expand anchors, reorder quoting and respell scalars (`1.10` → `1.1`,
//! `on` → `true`), so edits are made on the bytes instead: this module finds the line
//! ranges of the list's items (and of the key itself), and [`crate::remote_write`]
//! inserts, replaces or removes only its own item. Shapes this scanner does not fully
//! understand are reported as [`Unsupported`] so the caller refuses to edit rather
//! than guesses; every edit is additionally checked by parsing the result.

use std::ops::Range;

/// Comment the operator puts on a `remote_write:` key it created, so that removing its
/// last entry removes the key too and the file returns to its original bytes.
pub const CREATED_MARKER: &str = "# added by orrery-operator; removed with its last entry";

/// Why a file's shape cannot be edited safely as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub String);

/// One line: `start..end` is its content without the line break, `next` the start of
/// the following line.
#[derive(Debug, Clone, Copy)]
pub struct Line {
    pub start: usize,
    pub end: usize,
    pub next: usize,
}

/// Splits `text` into lines (`\n` or `\r\n` breaks). A final line without a break is a
/// line; a trailing break does not start an empty line.
pub fn lines(text: &str) -> Vec<Line> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    while start < b.len() {
        let (end, next) = match b[start..].iter().position(|&c| c == b'\n') {
            Some(i) => {
                let nl = start + i;
                let end = if nl > start && b[nl - 1] == b'\r' {
                    nl - 1
                } else {
                    nl
                };
                (end, nl + 1)
            }
            None => (b.len(), b.len()),
        };
        out.push(Line { start, end, next });
        start = next;
    }
    out
}

/// The line break the file uses (that of its first line; `\n` for a one-line file).
pub fn line_break(text: &str) -> &'static str {
    match text.find('\n') {
        Some(i) if i > 0 && text.as_bytes()[i - 1] == b'\r' => "\r\n",
        _ => "\n",
    }
}

/// One item of a block list.
#[derive(Debug, Clone)]
pub struct Item {
    /// Index of its `-` line.
    pub first_line: usize,
    /// From the start of its `-` line to the end of its last non-comment line (its
    /// line break and any comments or blank lines after it are not part of it).
    pub bytes: Range<usize>,
}

/// Where the top-level `remote_write` value is.
#[derive(Debug, Clone)]
pub enum Layout {
    /// No top-level `remote_write` key.
    Absent,
    /// `remote_write:` followed by a block list (or by nothing: a null value).
    Block {
        key_line: usize,
        /// The key line carries [`CREATED_MARKER`].
        created_by_us: bool,
        /// Column of the items' `-` (None: no items).
        indent: Option<usize>,
        items: Vec<Item>,
    },
    /// `remote_write: [...]` on the key line; the bytes of the brackets and inside.
    Flow { brackets: Range<usize> },
}

fn indent_of(s: &str) -> Result<usize, Unsupported> {
    let n = s.len() - s.trim_start_matches(' ').len();
    if s[n..].starts_with('\t') {
        return Err(Unsupported("a line is indented with a tab".into()));
    }
    Ok(n)
}

fn is_blank_or_comment(s: &str) -> bool {
    let t = s.trim_start();
    t.is_empty() || t.starts_with('#')
}

/// A `-` that starts a block sequence item (not `-1` or `-foo`).
fn is_dash_item(s: &str) -> bool {
    s == "-" || s.starts_with("- ")
}

/// If `line` is the top-level key `remote_write` (plain or quoted), the byte offset
/// (within the line) just past its `:`.
fn remote_write_key(line: &str) -> Option<usize> {
    for k in ["remote_write", "\"remote_write\"", "'remote_write'"] {
        if let Some(rest) = line.strip_prefix(k) {
            let after = rest.trim_start_matches(' ');
            if let Some(v) = after.strip_prefix(':')
                && (v.is_empty() || v.starts_with(' '))
            {
                return Some(line.len() - v.len());
            }
        }
    }
    None
}

/// Offset just past the `]` that closes the `[` at `s[0]`, honouring quotes and
/// nesting; None when it does not close on this line.
fn flow_end(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'[' | b'{' => depth += 1,
            b']' | b'}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'\'' => {
                i += 1;
                while i < b.len() {
                    if b[i] == b'\'' {
                        if b.get(i + 1) == Some(&b'\'') {
                            i += 1;
                        } else {
                            break;
                        }
                    }
                    i += 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Finds the top-level `remote_write` in a block-mapping document.
pub fn locate(text: &str, lines: &[Line]) -> Result<Layout, Unsupported> {
    let mut keys = Vec::new();
    let mut rw = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let s = &text[l.start..l.end];
        let Some(c) = s.chars().next() else { continue };
        if s.starts_with("---") {
            if !keys.is_empty() || s.trim_end() != "---" {
                return Err(Unsupported(
                    "the file holds several YAML documents or content on the `---` line".into(),
                ));
            }
            continue;
        }
        if s.starts_with("...") || c == '%' {
            return Err(Unsupported(
                "the file uses YAML directives or document markers".into(),
            ));
        }
        if c == '{' || c == '[' {
            return Err(Unsupported(
                "the top level is a flow mapping, not a block mapping".into(),
            ));
        }
        if c == ' ' || c == '\t' || c == '#' || c == '\r' || is_dash_item(s) {
            continue;
        }
        keys.push(i);
        if remote_write_key(s).is_some() {
            rw.push(i);
        }
    }
    let r = match rw.as_slice() {
        [] => return Ok(Layout::Absent),
        [r] => *r,
        _ => return Err(Unsupported("remote_write appears more than once".into())),
    };
    let kl = lines[r];
    let line = &text[kl.start..kl.end];
    let after = remote_write_key(line).unwrap_or(line.len());
    let value = line[after..].trim_start();
    let value_at = kl.start + line.len() - value.len();
    if value.starts_with('[') {
        let end = flow_end(value).ok_or_else(|| {
            Unsupported("remote_write is a flow list spanning several lines".into())
        })?;
        let rest = value[end..].trim_start();
        if !(rest.is_empty() || rest.starts_with('#')) {
            return Err(Unsupported(format!(
                "unexpected text after remote_write's list: `{rest}`"
            )));
        }
        return Ok(Layout::Flow {
            brackets: value_at..value_at + end,
        });
    }
    if !(value.is_empty() || value.starts_with('#')) {
        return Err(Unsupported(format!(
            "remote_write's value `{value}` is neither a block list nor a one-line flow list \
             (anchors, aliases, tags and explicit nulls are not edited)"
        )));
    }
    let created_by_us = value == CREATED_MARKER;
    let block_end = keys.iter().copied().find(|&k| k > r).unwrap_or(lines.len());
    let mut indent = None;
    let mut items: Vec<Item> = Vec::new();
    for (i, l) in lines.iter().enumerate().take(block_end).skip(r + 1) {
        let s = &text[l.start..l.end];
        if is_blank_or_comment(s) {
            continue;
        }
        let n = indent_of(s)?;
        let k = *indent.get_or_insert(n);
        let body = &s[n..];
        if n < k || (n == k && !is_dash_item(body)) {
            return Err(Unsupported(format!(
                "line {} inside remote_write is not part of a block list item",
                i + 1
            )));
        }
        if n == k {
            items.push(Item {
                first_line: i,
                bytes: l.start..l.end,
            });
        } else if let Some(last) = items.last_mut() {
            last.bytes.end = l.end;
        }
    }
    Ok(Layout::Block {
        key_line: r,
        created_by_us,
        indent,
        items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_keep_breaks_out_of_content() {
        let t = "a: 1\r\nb: 2\nc";
        let ls = lines(t);
        let got: Vec<_> = ls.iter().map(|l| &t[l.start..l.end]).collect();
        assert_eq!(got, ["a: 1", "b: 2", "c"]);
        assert_eq!(ls[0].next, 6);
        assert_eq!(line_break(t), "\r\n");
        assert_eq!(line_break("x\ny"), "\n");
        assert!(lines("").is_empty());
    }

    #[test]
    fn finds_items_and_their_extent() {
        let t = "global: {}\nremote_write: # sinks\n  - name: a\n    url: x\n  # between\n  - url: y\n    headers:\n      k: v\n\n# next\nscrape_configs: []\n";
        let ls = lines(t);
        let Layout::Block {
            key_line,
            created_by_us,
            indent,
            items,
        } = locate(t, &ls).unwrap()
        else {
            panic!()
        };
        assert_eq!(key_line, 1);
        assert!(!created_by_us);
        assert_eq!(indent, Some(2));
        let texts: Vec<_> = items.iter().map(|i| &t[i.bytes.clone()]).collect();
        assert_eq!(
            texts,
            [
                "  - name: a\n    url: x",
                "  - url: y\n    headers:\n      k: v"
            ]
        );
    }

    #[test]
    fn flow_and_refusals() {
        let t = "remote_write: [{url: 'a]'}] # c\n";
        let Layout::Flow { brackets } = locate(t, &lines(t)).unwrap() else {
            panic!()
        };
        assert_eq!(&t[brackets], "[{url: 'a]'}]");
        for bad in [
            "remote_write: &rw\n  - url: a\n",
            "remote_write: ~\n",
            "remote_write: [\n  a]\n",
            "remote_write:\n  - url: a\n url: b\n",
            "{remote_write: []}\n",
            "a: 1\n---\nb: 2\n",
            "remote_write: []\nremote_write: []\n",
        ] {
            assert!(locate(bad, &lines(bad)).is_err(), "{bad}");
        }
        assert!(matches!(
            locate("a: 1\n", &lines("a: 1\n")),
            Ok(Layout::Absent)
        ));
    }
}

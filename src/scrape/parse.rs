//! The Prometheus text exposition format (0.0.4) and OpenMetrics text (1.0), parsed without
//! copying: every name and label borrows the scraped body.
//!
//! Why not a crate: `prometheus-parse` 0.2.5 matches names with `\w+`, which rejects the `:` in
//! every vLLM and SGLang name (`vllm:num_requests_running`), and labels with `[^}]+`, which
//! breaks on a `}` inside a quoted value; it also needs `regex` and allocates a `String` per line.
//! `openmetrics-parser` is LGPL-3.0 and built on `pest`. The format is small (one line per sample),
//! so this module parses it by hand and is fuzzed by its tests (random bytes and mutated real
//! expositions never panic).
//!
//! What is checked (a line that fails is an error with its line number; the caller rejects the
//! whole scrape, since a half-written body would otherwise read as a partial one): names
//! `[a-zA-Z_:][a-zA-Z0-9_:]*`, label names `[a-zA-Z_][a-zA-Z0-9_]*`, quoted label values with
//! `\\`, `\"` and `\n` escapes, a value (Go float syntax: `NaN`, `+Inf`, `-Inf`, exponents), an
//! optional timestamp and OpenMetrics exemplar (ignored), and a body that ends in a line feed
//! (the format requires it; a body cut short does not). `# TYPE` lines give each family its kind;
//! an unknown kind is reported for that family alone. `# EOF` ends an OpenMetrics body.

use std::borrow::Cow;

/// A family's declared type.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
    /// OpenMetrics' other types (`gaugehistogram`, `stateset`, `info`): parsed, never mapped.
    Other,
}

impl Kind {
    fn parse(word: &str) -> Option<Kind> {
        Some(match word {
            "counter" => Kind::Counter,
            "gauge" => Kind::Gauge,
            "histogram" => Kind::Histogram,
            "summary" => Kind::Summary,
            "untyped" | "unknown" => Kind::Untyped,
            "gaugehistogram" | "stateset" | "info" => Kind::Other,
            _ => return None,
        })
    }
}

/// One sample line: its name, its label text (inside the braces, already checked) and value.
#[derive(Clone, Debug, PartialEq)]
pub struct RawSample<'a> {
    pub name: &'a str,
    /// The text between `{` and `}` (checked well-formed); read it with [`RawSample::labels`].
    pub label_text: &'a str,
    pub value: f64,
}

impl<'a> RawSample<'a> {
    /// The labels in written order, values unescaped.
    pub fn labels(&self) -> Labels<'a> {
        Labels {
            rest: self.label_text,
        }
    }

    /// The value of the label `name`, if present.
    pub fn label(&self, name: &str) -> Option<Cow<'a, str>> {
        self.labels().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

/// One line of an exposition that means something.
#[derive(Clone, Debug, PartialEq)]
pub enum Line<'a> {
    Type { family: &'a str, kind: Kind },
    Sample(RawSample<'a>),
}

/// Why a line or body could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: &'static str },
    #[error("line {line}: unknown metric type \"{kind}\" for {family}")]
    UnknownType {
        line: usize,
        family: String,
        kind: String,
    },
    #[error("the body does not end in a line feed (cut short or still being written)")]
    Truncated,
}

/// Parses a whole body: every line in order, or the errors. Unknown types are reported beside
/// the lines (the family's samples are then untyped); any other error fails the body.
pub fn parse(body: &str) -> Result<(Vec<Line<'_>>, Vec<ParseError>), ParseError> {
    let mut lines = Vec::with_capacity(body.len() / 48);
    let mut soft = Vec::new();
    if !body.is_empty() && !body.ends_with('\n') {
        return Err(ParseError::Truncated);
    }
    for (index, text) in body.lines().enumerate() {
        let line = index + 1;
        match parse_line(text, line) {
            Ok(Parsed::Line(l)) => lines.push(l),
            Ok(Parsed::Nothing) => {}
            Ok(Parsed::Eof) => break,
            Err(e @ ParseError::UnknownType { .. }) => soft.push(e),
            Err(e) => return Err(e),
        }
    }
    Ok((lines, soft))
}

enum Parsed<'a> {
    Line(Line<'a>),
    Nothing,
    Eof,
}

fn err(line: usize, reason: &'static str) -> ParseError {
    ParseError::Line { line, reason }
}

fn parse_line(text: &str, line: usize) -> Result<Parsed<'_>, ParseError> {
    let text = text.strip_suffix('\r').unwrap_or(text);
    let trimmed = text.trim_start_matches([' ', '\t']);
    if trimmed.is_empty() {
        return Ok(Parsed::Nothing);
    }
    if let Some(comment) = trimmed.strip_prefix('#') {
        return parse_comment(comment, line);
    }
    let (name, rest) = split_name(trimmed).ok_or_else(|| err(line, "bad metric name"))?;
    let (label_text, rest) = match rest.strip_prefix('{') {
        Some(inner) => {
            let end = check_labels(inner).map_err(|r| err(line, r))?;
            (&inner[..end], &inner[end + 1..])
        }
        None => ("", rest),
    };
    if !rest.starts_with([' ', '\t']) {
        return Err(err(line, "no space before the value"));
    }
    let mut fields = rest.split([' ', '\t']).filter(|f| !f.is_empty());
    let value = fields.next().ok_or_else(|| err(line, "no value"))?;
    let value = parse_value(value).ok_or_else(|| err(line, "bad value"))?;
    // Then an optional timestamp, and in OpenMetrics an exemplar after " # ".
    match fields.next() {
        None | Some("#") => {}
        Some(ts) if parse_value(ts).is_some() => match fields.next() {
            None | Some("#") => {}
            Some(_) => return Err(err(line, "text after the timestamp")),
        },
        Some(_) => return Err(err(line, "bad timestamp")),
    }
    Ok(Parsed::Line(Line::Sample(RawSample {
        name,
        label_text,
        value,
    })))
}

fn parse_comment(comment: &str, line: usize) -> Result<Parsed<'_>, ParseError> {
    let comment = comment.trim_start_matches([' ', '\t']);
    if comment == "EOF" {
        return Ok(Parsed::Eof);
    }
    let Some(rest) = comment.strip_prefix("TYPE") else {
        // HELP, UNIT and free comments carry nothing the agent publishes.
        return Ok(Parsed::Nothing);
    };
    let mut words = rest.split([' ', '\t']).filter(|w| !w.is_empty());
    let (Some(family), Some(kind), None) = (words.next(), words.next(), words.next()) else {
        return Err(err(line, "a TYPE line needs a name and a type"));
    };
    if split_name(family) != Some((family, "")) {
        return Err(err(line, "bad metric name in TYPE"));
    }
    match Kind::parse(kind) {
        Some(kind) => Ok(Parsed::Line(Line::Type { family, kind })),
        None => Err(ParseError::UnknownType {
            line,
            family: family.into(),
            kind: kind.chars().take(64).collect(),
        }),
    }
}

/// A metric name at the start of `text`, and what follows it.
fn split_name(text: &str) -> Option<(&str, &str)> {
    let bytes = text.as_bytes();
    let first = *bytes.first()?;
    if !(first.is_ascii_alphabetic() || first == b'_' || first == b':') {
        return None;
    }
    let end = bytes
        .iter()
        .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_' || *b == b':'))
        .unwrap_or(bytes.len());
    Some((&text[..end], &text[end..]))
}

/// Checks the labels after `{`; returns the index of the closing `}`.
fn check_labels(text: &str) -> Result<usize, &'static str> {
    let bytes = text.as_bytes();
    let mut i = 0;
    loop {
        while i < bytes.len() && matches!(bytes[i], b' ' | b'\t') {
            i += 1;
        }
        match bytes.get(i) {
            Some(b'}') => return Ok(i),
            None => return Err("labels not closed"),
            _ => {}
        }
        let start = i;
        if !(bytes[i].is_ascii_alphabetic() || bytes[i] == b'_') {
            return Err("bad label name");
        }
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            i += 1;
        }
        debug_assert!(i > start);
        while i < bytes.len() && matches!(bytes[i], b' ' | b'\t') {
            i += 1;
        }
        if bytes.get(i) != Some(&b'=') {
            return Err("no = after a label name");
        }
        i += 1;
        while i < bytes.len() && matches!(bytes[i], b' ' | b'\t') {
            i += 1;
        }
        if bytes.get(i) != Some(&b'"') {
            return Err("label value not quoted");
        }
        i += 1;
        loop {
            match bytes.get(i) {
                None => return Err("label value not closed"),
                Some(b'"') => break,
                Some(b'\\') => match bytes.get(i + 1) {
                    Some(b'\\' | b'"' | b'n') => i += 2,
                    _ => return Err("bad escape in a label value"),
                },
                Some(b'\n') => return Err("line feed in a label value"),
                Some(_) => i += 1,
            }
        }
        i += 1;
        while i < bytes.len() && matches!(bytes[i], b' ' | b'\t') {
            i += 1;
        }
        match bytes.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => return Ok(i),
            _ => return Err("no , or } after a label"),
        }
    }
}

/// The labels of a checked label text, in order.
pub struct Labels<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Labels<'a> {
    type Item = (&'a str, Cow<'a, str>);

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.rest.trim_start_matches([' ', '\t', ',']);
        let (name, after) = rest.split_once('=')?;
        let after = after.trim_start_matches([' ', '\t']).strip_prefix('"')?;
        let bytes = after.as_bytes();
        let mut i = 0;
        let mut escaped = false;
        while i < bytes.len() && bytes[i] != b'"' {
            if bytes[i] == b'\\' {
                escaped = true;
                i += 1;
            }
            i += 1;
        }
        let raw = after.get(..i)?;
        self.rest = after.get(i + 1..).unwrap_or("");
        let value = if escaped {
            Cow::Owned(unescape(raw))
        } else {
            Cow::Borrowed(raw)
        };
        Some((name.trim_end_matches([' ', '\t']), value))
    }
}

fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A value in Go's float syntax, as Prometheus writes it.
pub fn parse_value(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => {
            // Rust also reads "inf", "infinity" and "nan" in any case; the format does not.
            let digits = text.trim_start_matches(['+', '-']);
            if !digits.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
                return None;
            }
            text.parse().ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(body: &str) -> Vec<RawSample<'_>> {
        parse(body)
            .unwrap()
            .0
            .into_iter()
            .filter_map(|l| match l {
                Line::Sample(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn names_with_colons_labels_with_escapes_and_special_values_parse() {
        let body = "# HELP vllm:num_requests_running Number of requests.\n\
                    # TYPE vllm:num_requests_running gauge\n\
                    vllm:num_requests_running{engine=\"0\",model_name=\"a\\\"b}\\\\c\\nd\"} 3.0\n\
                    x_bucket{le=\"+Inf\"} 1e3 1712345678000\n\
                    y NaN\n\
                    z -Inf\n";
        let (lines, soft) = parse(body).unwrap();
        assert!(soft.is_empty());
        assert_eq!(
            lines[0],
            Line::Type {
                family: "vllm:num_requests_running",
                kind: Kind::Gauge
            }
        );
        let s = samples(body);
        assert_eq!(s[0].name, "vllm:num_requests_running");
        assert_eq!(s[0].value, 3.0);
        let labels: Vec<_> = s[0].labels().collect();
        assert_eq!(labels[0], ("engine", Cow::Borrowed("0")));
        assert_eq!(labels[1].0, "model_name");
        assert_eq!(labels[1].1, "a\"b}\\c\nd");
        assert_eq!(s[1].label("le").as_deref(), Some("+Inf"));
        assert_eq!(s[1].value, 1000.0);
        assert!(s[2].value.is_nan());
        assert_eq!(s[3].value, f64::NEG_INFINITY);
    }

    #[test]
    fn openmetrics_exemplars_and_eof_are_understood() {
        let body = "# TYPE vllm:prompt_tokens counter\n\
                    vllm:prompt_tokens_total{model_name=\"m\"} 17.0 # {trace_id=\"x\"} 1.0\n\
                    vllm:prompt_tokens_created{model_name=\"m\"} 1.7e9\n\
                    # EOF\n\
                    garbage after eof\n";
        let s = samples(body);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "vllm:prompt_tokens_total");
        assert_eq!(s[0].value, 17.0);
    }

    #[test]
    fn malformed_lines_name_their_line_and_reason() {
        let cases = [
            ("a{b=\"c\" 1\n", "no , or } after a label"),
            ("a{b=c} 1\n", "label value not quoted"),
            ("a{b=\"c\\x\"} 1\n", "bad escape in a label value"),
            ("a 1 2 3\n", "text after the timestamp"),
            ("a one\n", "bad value"),
            ("a inf\n", "bad value"),
            ("9a 1\n", "bad metric name"),
            ("a{1=\"x\"} 1\n", "bad label name"),
            ("a\n", "no space before the value"),
            ("# TYPE a\n", "a TYPE line needs a name and a type"),
        ];
        for (body, reason) in cases {
            let e = parse(&format!("ok 1\n{body}")).unwrap_err();
            assert_eq!(e, ParseError::Line { line: 2, reason }, "{body:?}");
        }
        assert_eq!(parse("a 1\nb 2").unwrap_err(), ParseError::Truncated);
    }

    #[test]
    fn an_unknown_type_is_reported_for_its_family_only() {
        let (lines, soft) = parse("# TYPE a weird\na 1\nb 2\n").unwrap();
        assert_eq!(lines.len(), 2);
        assert!(
            matches!(&soft[0], ParseError::UnknownType { family, kind, line: 1 } if family == "a" && kind == "weird")
        );
    }

    /// A small deterministic generator (no extra dependency): xorshift64*.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    #[test]
    fn random_and_mutated_bodies_never_panic() {
        let real = include_str!("../../tests/fixtures/scrape/vllm-v1-step1.txt");
        let alphabet = b"{}\"\\=,# \n\tab_:019.+-eINFa";
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..3000 {
            let mut bytes: Vec<u8> = if round % 2 == 0 {
                real.as_bytes()[..(rng.next() as usize % real.len())].to_vec()
            } else {
                Vec::new()
            };
            for _ in 0..(rng.next() % 64) {
                let at = if bytes.is_empty() {
                    0
                } else {
                    rng.next() as usize % bytes.len()
                };
                let b = alphabet[rng.next() as usize % alphabet.len()];
                if rng.next() % 2 == 0 && at < bytes.len() {
                    bytes[at] = b;
                } else {
                    bytes.insert(at, b);
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            if let Ok((lines, _)) = parse(&text) {
                for line in lines {
                    if let Line::Sample(s) = line {
                        let _ = s.labels().count();
                    }
                }
            }
        }
        let (lines, soft) = parse(real).unwrap();
        assert!(soft.is_empty());
        assert_eq!(
            lines.len(),
            real.lines().filter(|l| !l.starts_with("# HELP")).count()
        );
    }
}

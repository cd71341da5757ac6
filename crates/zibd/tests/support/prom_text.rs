//! A strict parser of the Prometheus text exposition format 0.0.4, for the metrics tests: every
//! line is a `# HELP`, a `# TYPE` or a sample; names and label names match the format's
//! grammar; label values use only the three escapes; each family has one HELP and one TYPE,
//! both before its samples, and its samples are together; no series appears twice; counters
//! end in `_total`. Any violation panics naming the line.

use std::collections::{BTreeMap, BTreeSet};

/// One sample: name, labels (sorted), value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The parsed text: samples in order and each family's type.
#[derive(Debug, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    pub types: BTreeMap<String, String>,
}

impl Exposition {
    /// The value of the one sample of `name` with exactly `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> =
            labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.samples.iter().find(|s| s.name == name && s.labels == want).map(|s| s.value)
    }
}

fn is_name(s: &str, colon: bool) -> bool {
    let mut chars = s.chars();
    let ok_first = |c: char| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':');
    chars.next().is_some_and(ok_first) && chars.all(|c| ok_first(c) || c.is_ascii_digit())
}

fn value(s: &str, line: &str) -> f64 {
    match s {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        _ => s.parse().unwrap_or_else(|_| panic!("bad value {s:?} in {line:?}")),
    }
}

/// Parses `{k="v",...}` from the start of `s`; returns the labels and the rest.
fn labels<'a>(s: &'a str, line: &str) -> (BTreeMap<String, String>, &'a str) {
    let mut out = BTreeMap::new();
    let Some(mut rest) = s.strip_prefix('{') else { return (out, s) };
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return (out, r);
        }
        let eq = rest.find('=').unwrap_or_else(|| panic!("no = in labels of {line:?}"));
        let key = &rest[..eq];
        assert!(
            is_name(key, false) && !key.starts_with("__"),
            "bad label name {key:?} in {line:?}"
        );
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .unwrap_or_else(|| panic!("unquoted label value in {line:?}"));
        let mut val = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => val.push('\\'),
                    Some((_, '"')) => val.push('"'),
                    Some((_, 'n')) => val.push('\n'),
                    other => panic!("bad escape {other:?} in {line:?}"),
                },
                Some((_, '\n')) | None => panic!("unterminated label value in {line:?}"),
                Some((_, c)) => val.push(c),
            }
        };
        assert!(out.insert(key.to_owned(), val).is_none(), "label {key} twice in {line:?}");
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else {
            assert!(rest.starts_with('}'), "expected , or }} in {line:?}");
        }
    }
}

/// Parses `text`, panicking on anything the format does not allow.
pub fn parse(text: &str) -> Exposition {
    assert!(text.is_empty() || text.ends_with('\n'), "the text must end with a line feed");
    let mut e = Exposition::default();
    let mut helped = BTreeSet::new();
    let mut done_families = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut seen = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(is_name(name, true), "bad name in {line:?}");
            assert!(helped.insert(name.to_owned()), "second HELP for {name}");
            assert!(!rest[name.len()..].contains('\n'));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("{line:?}"));
            assert!(is_name(name, true), "bad name in {line:?}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "bad type in {line:?}"
            );
            assert!(
                e.types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "second TYPE for {name}"
            );
            assert!(helped.contains(name), "TYPE before HELP (zib writes HELP first) for {name}");
            assert_eq!(
                kind == "counter",
                name.ends_with("_total"),
                "{name}: _total is for counters only"
            );
            if let Some(prev) = current.replace(name.to_owned()) {
                done_families.insert(prev);
            }
            continue;
        }
        assert!(!line.starts_with('#'), "a comment that is not HELP or TYPE: {line:?}");
        assert!(!line.trim().is_empty(), "empty line");
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("no value in {line:?}"));
        let name = &line[..name_end];
        assert!(is_name(name, true), "bad metric name {name:?}");
        assert_eq!(current.as_deref(), Some(name), "sample outside its family's block: {line:?}");
        assert!(!done_families.contains(name), "family {name} split: {line:?}");
        let (labels, rest) = labels(&line[name_end..], line);
        let rest = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("no space before the value in {line:?}"));
        let mut parts = rest.split(' ');
        let v = value(parts.next().unwrap(), line);
        if let Some(ts) = parts.next() {
            ts.parse::<i64>().unwrap_or_else(|_| panic!("bad timestamp in {line:?}"));
        }
        assert!(parts.next().is_none(), "trailing text in {line:?}");
        let key = format!("{name}{labels:?}");
        assert!(seen.insert(key), "series twice: {line:?}");
        e.samples.push(Sample { name: name.to_owned(), labels, value: v });
    }
    e
}

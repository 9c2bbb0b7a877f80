//! JSON matching for steps: exact or subset comparison, ignored paths, numeric tolerances and
//! contract (JSON Schema) validation.
//!
//! [`diff`] returns every mismatch, one line each, as `at /features/rms: expected 0.35 ± 0.01,
//! got 0.5`, so a failing step shows all differences at once instead of the first.
//!
//! Expected documents may carry two special forms:
//! - a string like `"440 ± 2"`, `"440 +- 2"` or `"440 ± 0.5%"` matches a number within that
//!   tolerance (when [`MatchOptions::inline_tolerances`] is on; a string actual is still compared
//!   as a string);
//! - `{"$contains": [..]}` matches an array that contains, in any order, an element matching each
//!   listed one (subset semantics), instead of requiring equal length.

use anyhow::{Context as _, bail};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// How objects are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Same keys on both sides, recursively.
    #[default]
    Exact,
    /// `actual` may have keys that `expected` lacks, recursively.
    Subset,
}

/// A numeric tolerance: a value matches when
/// `|actual - expected| <= max(abs, percent / 100 * |expected|)`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Tolerance {
    /// Absolute allowance.
    pub abs: f64,
    /// Allowance relative to the expected value, in percent (kept as written so it prints back
    /// exactly).
    pub percent: f64,
}

impl Tolerance {
    /// An absolute tolerance.
    pub fn abs(abs: f64) -> Self {
        Tolerance { abs, percent: 0.0 }
    }

    /// A relative tolerance given in percent.
    pub fn percent(pct: f64) -> Self {
        Tolerance { abs: 0.0, percent: pct }
    }

    /// Whether `actual` is within tolerance of `expected`.
    pub fn accepts(&self, expected: f64, actual: f64) -> bool {
        if !expected.is_finite() || !actual.is_finite() {
            return expected == actual;
        }
        let allowed = self.abs.max(self.percent / 100.0 * expected.abs());
        // A few ULPs of slack so that decimal edges (0.35 ± 0.01 vs 0.34) are not lost to binary
        // rounding; far below any tolerance a step would state.
        let slack = 4.0 * f64::EPSILON * expected.abs().max(actual.abs()).max(1.0);
        (actual - expected).abs() <= allowed + slack
    }
}

impl FromStr for Tolerance {
    type Err = anyhow::Error;

    /// Parses `2`, `± 2`, `+- 2`, `+/- 2` or `0.5%`.
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let t = s.trim();
        let t = ["±", "+/-", "+-"].iter().find_map(|p| t.strip_prefix(p)).unwrap_or(t).trim();
        let tol = match t.strip_suffix('%') {
            Some(pct) => Tolerance::percent(parse_f64(pct).with_context(|| format!("tolerance {s:?}"))?),
            None => Tolerance::abs(parse_f64(t).with_context(|| format!("tolerance {s:?}"))?),
        };
        if tol.abs < 0.0 || tol.percent < 0.0 {
            bail!("tolerance {s:?} is negative");
        }
        Ok(tol)
    }
}

impl fmt::Display for Tolerance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (abs, pct) = (self.abs, self.percent);
        if pct == 0.0 {
            write!(f, "{abs}")
        } else if abs == 0.0 {
            write!(f, "{pct}%")
        } else {
            write!(f, "max({abs}, {pct}%)")
        }
    }
}

fn parse_f64(s: &str) -> anyhow::Result<f64> {
    let s = s.trim();
    let v: f64 = s.parse().with_context(|| format!("{s:?} is not a number"))?;
    if !v.is_finite() {
        bail!("{s:?} is not a finite number");
    }
    Ok(v)
}

/// An expected number with its tolerance, e.g. `440 ± 2`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NumSpec {
    /// The expected value.
    pub value: f64,
    /// Allowed deviation.
    pub tolerance: Tolerance,
}

impl NumSpec {
    /// Whether `actual` matches.
    pub fn accepts(&self, actual: f64) -> bool {
        self.tolerance.accepts(self.value, actual)
    }
}

impl FromStr for NumSpec {
    type Err = anyhow::Error;

    /// Parses `440`, `440 ± 2`, `440 +- 2`, `440 +/- 2` or `440 ± 0.5%`.
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let t = s.trim();
        let split = ["±", "+/-", "+-"].iter().find_map(|sep| t.split_once(sep));
        match split {
            Some((value, tol)) => Ok(NumSpec {
                value: parse_f64(value).with_context(|| format!("number spec {s:?}"))?,
                tolerance: tol.parse()?,
            }),
            None => Ok(NumSpec { value: parse_f64(t)?, tolerance: Tolerance::default() }),
        }
    }
}

impl fmt::Display for NumSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.tolerance == Tolerance::default() {
            write!(f, "{}", self.value)
        } else {
            write!(f, "{} ± {}", self.value, self.tolerance)
        }
    }
}

/// How [`diff`] compares.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MatchOptions {
    /// Exact or subset comparison of objects.
    pub mode: Mode,
    /// JSON Pointers skipped on both sides; a `*` token matches any key or index
    /// (e.g. `/items/*/written_at`).
    pub ignore: Vec<String>,
    /// Tolerance for every number pair that has no more specific one.
    pub tolerance: Option<Tolerance>,
    /// Tolerances for specific JSON Pointers (same `*` rule as `ignore`); these win over
    /// `tolerance`.
    pub tolerances: BTreeMap<String, Tolerance>,
    /// Whether expected strings like `"440 ± 2"` match numbers (see the module docs).
    pub inline_tolerances: bool,
}

impl MatchOptions {
    /// Exact comparison, inline tolerances on.
    pub fn exact() -> Self {
        MatchOptions { inline_tolerances: true, ..MatchOptions::default() }
    }

    /// Subset comparison, inline tolerances on.
    pub fn subset() -> Self {
        MatchOptions { mode: Mode::Subset, ..MatchOptions::exact() }
    }

    /// Adds JSON Pointers to ignore.
    pub fn ignoring<I, S>(mut self, pointers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.ignore.extend(pointers.into_iter().map(Into::into));
        self
    }

    /// Sets the default numeric tolerance.
    pub fn with_tolerance(mut self, tolerance: Tolerance) -> Self {
        self.tolerance = Some(tolerance);
        self
    }

    /// Sets the tolerance for one JSON Pointer.
    pub fn with_tolerance_at(mut self, pointer: impl Into<String>, tolerance: Tolerance) -> Self {
        self.tolerances.insert(pointer.into(), tolerance);
        self
    }

    fn ignored(&self, path: &[String]) -> bool {
        self.ignore.iter().any(|p| pointer_matches(p, path))
    }

    fn tolerance_at(&self, path: &[String]) -> Option<Tolerance> {
        self.tolerances.iter().find(|(p, _)| pointer_matches(p, path)).map(|(_, t)| *t).or(self.tolerance)
    }
}

/// Whether `pattern` (a JSON Pointer, `*` = any token) names exactly `path`.
fn pointer_matches(pattern: &str, path: &[String]) -> bool {
    if pattern.is_empty() {
        return path.is_empty();
    }
    let Some(rest) = pattern.strip_prefix('/') else {
        return false;
    };
    let tokens: Vec<String> = rest.split('/').map(|t| t.replace("~1", "/").replace("~0", "~")).collect();
    tokens.len() == path.len() && tokens.iter().zip(path).all(|(t, p)| t == "*" || t == p)
}

/// Renders a path as a JSON Pointer; the root shows as `/` to stay readable in messages.
fn pointer(path: &[String]) -> String {
    if path.is_empty() {
        return "/".to_owned();
    }
    path.iter().map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1"))).collect()
}

/// Compact JSON, shortened so that a mismatch line stays a line.
fn show(v: &Value) -> String {
    const MAX: usize = 200;
    let s = v.to_string();
    if s.len() <= MAX {
        return s;
    }
    let cut = contract::floor_char_boundary(&s, MAX);
    format!("{}…", &s[..cut])
}

/// Every difference between `expected` and `actual`, one line each (empty = match).
pub fn diff(expected: &Value, actual: &Value, opts: &MatchOptions) -> Vec<String> {
    let mut out = Vec::new();
    walk(&mut Vec::new(), expected, actual, opts, &mut out);
    out
}

/// [`diff`] as an assertion: `Err` lists every mismatch.
pub fn assert_match(expected: &Value, actual: &Value, opts: &MatchOptions) -> anyhow::Result<()> {
    let mismatches = diff(expected, actual, opts);
    if mismatches.is_empty() {
        return Ok(());
    }
    bail!(
        "JSON does not match ({} mismatches):\n  {}\nactual: {}",
        mismatches.len(),
        mismatches.join("\n  "),
        show(actual)
    )
}

fn walk(path: &mut Vec<String>, expected: &Value, actual: &Value, opts: &MatchOptions, out: &mut Vec<String>) {
    if opts.ignored(path) {
        return;
    }
    let at = |msg: String| format!("at {}: {msg}", pointer(path));
    match (expected, actual) {
        (Value::Number(e), Value::Number(a)) => {
            if let Some(tol) = opts.tolerance_at(path) {
                let (e, a) = (e.as_f64().unwrap_or(f64::NAN), a.as_f64().unwrap_or(f64::NAN));
                if !tol.accepts(e, a) {
                    out.push(at(format!("expected {}, got {a}", NumSpec { value: e, tolerance: tol })));
                }
            } else if !numbers_equal(e, a) {
                out.push(at(format!("expected {e}, got {a}")));
            }
        }
        (Value::String(spec), Value::Number(a)) if opts.inline_tolerances => match spec.parse::<NumSpec>() {
            Ok(spec) => {
                if !spec.accepts(a.as_f64().unwrap_or(f64::NAN)) {
                    out.push(at(format!("expected {spec}, got {a}")));
                }
            }
            Err(_) => out.push(at(format!("expected {}, got {a}", show(expected)))),
        },
        (Value::Object(e), Value::Array(a)) if contains_form(e).is_some() => {
            let wanted = contains_form(e).unwrap_or_default();
            let sub = MatchOptions { mode: Mode::Subset, ..opts.clone() };
            for (i, w) in wanted.iter().enumerate() {
                let found = a.iter().enumerate().any(|(j, item)| {
                    let mut p = path.clone();
                    p.push(j.to_string());
                    let mut scratch = Vec::new();
                    walk(&mut p, w, item, &sub, &mut scratch);
                    scratch.is_empty()
                });
                if !found {
                    out.push(at(format!(
                        "expected an element matching $contains[{i}] = {}, got {}",
                        show(w),
                        show(actual)
                    )));
                }
            }
        }
        (Value::Object(e), a) if contains_form(e).is_some() => {
            out.push(at(format!("expected an array containing {}, got {}", show(&e["$contains"]), show(a))));
        }
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                path.push(k.clone());
                match a.get(k) {
                    Some(av) => walk(path, ev, av, opts, out),
                    None if !opts.ignored(path) => {
                        out.push(format!("at {}: expected {}, got (missing)", pointer(path), show(ev)));
                    }
                    None => {}
                }
                path.pop();
            }
            if opts.mode == Mode::Exact {
                for (k, av) in a.iter().filter(|(k, _)| !e.contains_key(*k)) {
                    path.push(k.clone());
                    if !opts.ignored(path) {
                        out.push(format!("at {}: expected (absent), got {}", pointer(path), show(av)));
                    }
                    path.pop();
                }
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                out.push(at(format!("expected an array of {} elements, got {} elements", e.len(), a.len())));
            }
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                path.push(i.to_string());
                walk(path, ev, av, opts, out);
                path.pop();
            }
        }
        (e, a) if e == a => {}
        (e, a) => out.push(at(format!("expected {}, got {}", show(e), show(a)))),
    }
}

/// Integers compare exactly; anything involving a float compares as `f64`, so `1` equals `1.0`.
fn numbers_equal(e: &serde_json::Number, a: &serde_json::Number) -> bool {
    let int = |n: &serde_json::Number| n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from));
    match (int(e), int(a)) {
        (Some(e), Some(a)) => e == a,
        _ => e.as_f64() == a.as_f64(),
    }
}

/// The element list of a `{"$contains": [..]}` form.
fn contains_form(obj: &serde_json::Map<String, Value>) -> Option<Vec<Value>> {
    match (obj.len(), obj.get("$contains")) {
        (1, Some(Value::Array(items))) => Some(items.clone()),
        _ => None,
    }
}

/// Validates `v` against the published JSON Schema of `kind`; `Err` holds every violation as
/// `at <instance path>: <reason>`.
pub fn validate_contract(kind: contract::MessageKind, v: &Value) -> Result<(), Vec<String>> {
    let errors: Vec<String> = kind
        .validator()
        .iter_errors(v)
        .map(|e| {
            let path = e.instance_path().to_string();
            format!("at {}: {e}", if path.is_empty() { "/" } else { &path })
        })
        .collect();
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_specs() {
        assert_eq!("440 ± 2".parse::<NumSpec>().unwrap(), NumSpec { value: 440.0, tolerance: Tolerance::abs(2.0) });
        assert_eq!("440 +- 2".parse::<NumSpec>().unwrap(), NumSpec { value: 440.0, tolerance: Tolerance::abs(2.0) });
        assert_eq!("-3 +/- 0.5%".parse::<NumSpec>().unwrap().tolerance, Tolerance::percent(0.5));
        assert_eq!("0.5%".parse::<Tolerance>().unwrap(), Tolerance::percent(0.5));
        assert!("abc ± 2".parse::<NumSpec>().is_err());
        assert!("440 ± -2".parse::<NumSpec>().is_err());
        assert_eq!("440 ± 2".parse::<NumSpec>().unwrap().to_string(), "440 ± 2");
    }

    #[test]
    fn pointer_escapes_and_wildcards() {
        let path = vec!["a/b".to_owned(), "3".to_owned()];
        assert_eq!(pointer(&path), "/a~1b/3");
        assert!(pointer_matches("/a~1b/*", &path));
        assert!(!pointer_matches("/a~1b", &path));
        assert!(pointer_matches("", &[]));
    }

    #[test]
    fn root_mismatch_and_int_float() {
        assert_eq!(diff(&json!(1), &json!(1.0), &MatchOptions::exact()), Vec::<String>::new());
        assert_eq!(diff(&json!("a"), &json!(2), &MatchOptions::exact()), vec![r#"at /: expected "a", got 2"#]);
    }
}

//! Contract completeness. An independent implementer works from `fixtures/contracts/README.md`
//! alone; whenever a scenario asserts a number for a field that README never defines, they have to
//! guess it. This test scans every `features/**/*.feature` (expanding Scenario Outline Examples),
//! extracts the field of every step that asserts a numeric expectation, and fails, listing
//! `file:line field`, for each field missing from the README's "Defined fields" table.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Where a numeric assertion is (`file:line`, plus the Examples row for outlines) and its field.
type Assertion = (String, String);

fn root() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).to_path_buf()
}

/// `440`, `-6.02 ± 0.1`, `440 +- 2`, `440 +/- 2`, `1000 ± 0.5%`: the tolerance strings steps take.
fn is_number_spec(s: &str) -> bool {
    let num = |t: &str| t.trim().parse::<f64>().is_ok_and(f64::is_finite);
    match ["±", "+/-", "+-"].iter().find_map(|sep| s.split_once(sep)) {
        Some((value, tol)) => num(value) && num(tol.trim().trim_end_matches('%')),
        None => num(s),
    }
}

/// The first `"…"` in `s`: its content and what follows it.
fn quoted(s: &str) -> Option<(&str, &str)> {
    let (_, rest) = s.split_once('"')?;
    rest.split_once('"')
}

/// The (field, expected value) of a step sentence that asserts a named field, if it is one of the
/// patterns in `features/README.md`; the caller keeps only numeric values.
fn field_of(step: &str) -> Option<(String, String)> {
    let after = |pat: &str| step.find(pat).map(|i| &step[i + pat.len()..]);
    if let Some(rest) = after(" reports ") {
        // `Feature {type} for sensor {string} reports {word} of {string}`
        let (field, rest) = rest.split_once(' ')?;
        return Some((field.into(), quoted(rest.strip_prefix("of ")?)?.0.into()));
    }
    if let Some(v) = after(" with confidence at least ") {
        return Some(("confidence".into(), v.trim().into()));
    }
    if let Some(v) = after(" is a problem with status ").or_else(|| after("the response status is ")) {
        return Some(("status".into(), v.trim().into()));
    }
    if let Some(rest) = after("the response body has ").or_else(|| after("the response has header ")) {
        // A JSON Pointer's last token or a header name, and the expected text.
        let (name, rest) = quoted(rest)?;
        return Some((name.rsplit('/').next()?.into(), quoted(rest)?.0.into()));
    }
    if step.contains(" rejected with ") {
        // `… rejected with 429 and a Retry-After header`: an integer ≥ 1 is asserted.
        let header = after(" and a ")?.strip_suffix(" header")?;
        return Some((header.into(), "1".into()));
    }
    None
}

/// Every numeric assertion on a named field in one feature file. Steps with `<placeholders>` are
/// checked once per Examples row, with the row's values substituted.
fn assertions(file: &str, text: &str) -> BTreeSet<Assertion> {
    let mut out = BTreeSet::new();
    let mut check = |at: String, step: &str| {
        if let Some((field, _)) = field_of(step).filter(|(_, value)| is_number_spec(value)) {
            out.insert((at, field));
        }
    };
    let cells = |l: &str| l.trim_matches('|').split('|').map(|c| c.trim().to_string()).collect::<Vec<_>>();
    let (mut outline, mut header, mut in_examples, mut in_doc) = (Vec::new(), None, false, false);
    for (i, line) in text.lines().map(str::trim).enumerate() {
        if line.starts_with("\"\"\"") || in_doc {
            in_doc ^= line.starts_with("\"\"\""); // doc strings hold no steps
        } else if line.starts_with("Examples:") || line.starts_with("Scenarios:") {
            (in_examples, header) = (true, None);
        } else if ["Feature:", "Rule:", "Background:", "Scenario", "Example:"].iter().any(|k| line.starts_with(k)) {
            (outline, in_examples) = (Vec::new(), false);
        } else if in_examples && line.starts_with('|') {
            let Some(names) = &header else {
                header = Some(cells(line));
                continue;
            };
            let row: HashMap<&String, String> = names.iter().zip(cells(line)).collect();
            for (step_line, step) in &outline {
                let expanded = row.iter().fold(String::clone(step), |s, (k, v)| s.replace(&format!("<{k}>"), v));
                check(format!("{file}:{step_line} (Examples row at line {})", i + 1), &expanded);
            }
        } else if ["Given ", "When ", "Then ", "And ", "But ", "* "].iter().any(|k| line.starts_with(k)) {
            if line.contains('<') {
                outline.push((i + 1, line.to_string()));
            } else {
                check(format!("{file}:{}", i + 1), line);
            }
        }
    }
    out
}

/// The backticked names in the first column of the README's "Defined fields" table.
fn defined_fields(readme: &str) -> BTreeSet<String> {
    let section = readme.split("\n## ").find(|s| s.starts_with("Defined fields")).unwrap_or("");
    let first_cells = section.lines().filter_map(|l| l.trim().strip_prefix('|')?.split('|').next());
    first_cells.flat_map(|cell| cell.split('`').skip(1).step_by(2).map(String::from).collect::<Vec<_>>()).collect()
}

fn feature_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            feature_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "feature") {
            out.push(path);
        }
    }
}

fn scan_features() -> BTreeSet<Assertion> {
    let mut files = Vec::new();
    feature_files(&root().join("features"), &mut files);
    let read = |f: &PathBuf| std::fs::read_to_string(f).expect("reading a feature file");
    files
        .iter()
        .flat_map(|f| assertions(&f.strip_prefix(root()).unwrap_or(f).display().to_string(), &read(f)))
        .collect()
}

fn undefined(found: &BTreeSet<Assertion>, defined: &BTreeSet<String>) -> Vec<String> {
    found.iter().filter(|(_, field)| !defined.contains(field)).map(|(at, field)| format!("{at}  {field}")).collect()
}

#[test]
fn every_asserted_field_is_defined_in_the_contract() {
    let defined = defined_fields(&std::fs::read_to_string(root().join("fixtures/contracts/README.md")).unwrap());
    assert!(defined.len() >= 10, "README \"Defined fields\" table missing or unparsable: {defined:?}");
    let missing = undefined(&scan_features(), &defined);
    let hint = "scenarios assert numbers for fields fixtures/contracts/README.md \"Defined fields\" lacks";
    assert!(missing.is_empty(), "{hint}:\n  {}", missing.join("\n  "));
}

#[test]
fn the_extractor_finds_the_scenarios_assertions() {
    let found = scan_features();
    assert!(found.len() >= 5, "only {} numeric assertions found: is the extractor broken? {found:?}", found.len());
}

#[test]
fn a_made_up_field_is_reported() {
    let text = r#"Feature: synthetic
  Scenario: plain
    Then Feature A for sensor "m" reports bogus_field of "1 ± 0.1"
    And Feature A for sensor "m" reports rms of "0.5"
    And the response body has "/feature_type" equal to "B"
  Scenario Outline: outline
    Then Feature B for sensor "m" reports <field> of "<value> ± 1%"
    Examples:
      | field       | value |
      | other_bogus | 2     |
      | rms         | 3     |
"#;
    let found = assertions("x.feature", text);
    assert_eq!(found.len(), 4, "{found:?}");
    let missing = undefined(&found, &BTreeSet::from(["rms".to_string()]));
    assert_eq!(missing, ["x.feature:3  bogus_field", "x.feature:7 (Examples row at line 10)  other_bogus"]);
}

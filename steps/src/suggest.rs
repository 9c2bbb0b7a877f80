//! "Did you mean": for a step no definition matches, the nearest steps of the vocabulary
//! (`features/README.md`, kept complete by `cargo test -p steps --lib`) by edit distance, and for
//! each typed parameter in them (`{signal}`, `{type}`, …) the values it accepts.

use std::path::Path;

/// The documented steps and parameters.
#[derive(Debug, Default, Clone)]
pub struct Vocabulary {
    /// `(keyword, expression, example)`, e.g. `("Then", "the response status is {int}", "Then the response status is 200")`.
    steps: Vec<(String, String, String)>,
    /// `({name}, what it matches)`.
    params: Vec<(String, String)>,
}

impl Vocabulary {
    /// Reads `features/README.md` below `root`; an unreadable file gives an empty vocabulary (no
    /// suggestions, never an error: the hint is a courtesy).
    pub fn load(root: &Path) -> Self {
        std::fs::read_to_string(root.join("features/README.md")).map(|t| Self::parse(&t)).unwrap_or_default()
    }

    pub fn parse(markdown: &str) -> Self {
        let mut v = Vocabulary::default();
        for line in markdown.lines() {
            let cells: Vec<String> = split_row(line);
            match cells.as_slice() {
                [kw, expr, example, ..] if ["Given", "When", "Then"].contains(&kw.as_str()) => {
                    v.steps.push((kw.clone(), unquote(expr), unquote(example)));
                }
                [param, matches, _] if param.starts_with("`{") => {
                    for name in param.split('/').map(|p| unquote(p.trim())) {
                        v.params.push((name, matches.replace('`', "")));
                    }
                }
                _ => {}
            }
        }
        v
    }

    pub fn len(&self) -> usize {
        self.steps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Up to `n` hint lines for `text` (a step without its keyword): the nearest steps as
    /// `Keyword expression`, then `{param} is one of: …` for each typed parameter they use.
    pub fn hints(&self, text: &str, n: usize) -> Vec<String> {
        let wanted = normalise(text);
        let mut scored: Vec<(f64, &(String, String, String))> = self
            .steps
            .iter()
            .map(|s| {
                let example = s.2.split_once(' ').map(|(_, rest)| rest).unwrap_or(&s.2);
                let by_expr = strsim::normalized_damerau_levenshtein(&wanted, &normalise(&s.1));
                let by_example = strsim::normalized_damerau_levenshtein(&wanted, &normalise(example));
                (by_expr.max(by_example), s)
            })
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        let best: Vec<&(String, String, String)> =
            scored.iter().take(n).filter(|(score, _)| *score >= 0.4).map(|(_, s)| *s).collect();
        let mut lines: Vec<String> = best.iter().map(|(kw, expr, _)| format!("{kw} {expr}")).collect();
        let mut explained: Vec<&str> = Vec::new();
        for (_, expr, _) in &best {
            for (name, matches) in &self.params {
                if expr.contains(name.as_str())
                    && !explained.contains(&name.as_str())
                    && !["{string}", "{int}", "{float}", "{word}"].contains(&name.as_str())
                {
                    explained.push(name);
                    lines.push(format!("{name} is one of: {matches}"));
                }
            }
        }
        lines
    }
}

/// Cells of a Markdown table row, trimmed; `\|` stays a literal bar.
fn split_row(line: &str) -> Vec<String> {
    let line = line.trim();
    if !line.starts_with('|') || line.starts_with("|---") {
        return Vec::new();
    }
    let masked = line.replace("\\|", "\u{1}");
    masked.trim_matches('|').split('|').map(|c| c.trim().replace('\u{1}', "|")).collect()
}

fn unquote(cell: &str) -> String {
    cell.trim().trim_matches('`').to_owned()
}

/// Lower case, quoted strings → `{string}`, numbers → `{int}`, so values do not count as typos.
fn normalise(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.trim().chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                for d in chars.by_ref() {
                    if d == '"' {
                        break;
                    }
                }
                out.push_str("{string}");
            }
            '0'..='9' => {
                while chars.peek().is_some_and(|d| d.is_ascii_digit() || *d == '.') {
                    chars.next();
                }
                out.push_str("{int}");
            }
            _ => out.extend(c.to_lowercase()),
        }
    }
    out.replace("{float}", "{int}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
| parameter | matches | example |
|---|---|---|
| `{string}` | text in double quotes | `\"mic\"` |
| `{type}` | feature type `A` or `B` | `A` |
| `{signal}` | `silence`, `F Hz sine at amplitude A` | `440 Hz sine at amplitude 0.5` |

| keyword | step | example |
|---|---|---|
| Then | `the response status is {int}` | `Then the response status is 200` |
| When | `I ask the API for the latest Feature {type} of sensor {string}` | `When I ask the API for the latest Feature A of sensor \"x\"` |
| Given | `sensor {string} streams {int} chunks of {signal}` | `Given sensor \"mic\" streams 5 chunks of 440 Hz sine at amplitude 0.5` |
";

    #[test]
    fn a_typo_gets_the_nearest_step() {
        let v = Vocabulary::parse(DOC);
        assert_eq!(v.len(), 3);
        let hints = v.hints("the respons status is 404", 1);
        assert_eq!(hints, vec!["Then the response status is {int}"]);
    }

    #[test]
    fn a_bad_typed_value_gets_the_valid_values() {
        let v = Vocabulary::parse(DOC);
        let hints = v.hints("I ask the API for the latest Feature C of sensor \"x\"", 1);
        assert_eq!(hints[0], "When I ask the API for the latest Feature {type} of sensor {string}");
        assert_eq!(hints[1], "{type} is one of: feature type A or B");
        let hints = v.hints("sensor \"mic\" streams 5 chunks of 440 Hz sawtooth", 1);
        assert!(hints[1].starts_with("{signal} is one of: silence"), "{hints:?}");
    }

    #[test]
    fn the_real_vocabulary_parses() {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
        let v = Vocabulary::load(&root);
        assert!(v.len() > 50, "{} steps", v.len());
    }
}

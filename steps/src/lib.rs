//! The behaviour suite lives in `tests/cucumber/` (World, typed parameters, one step file per
//! domain, and the runner), so that every step registers in the one test binary. This library
//! holds what the runner needs that is worth unit-testing ([`suggest`]: "did you mean" for
//! steps no definition matches) and checks about the suite itself.

pub mod suggest;

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf()
    }

    /// Every step sentence in code must be documented in features/README.md, so QA engineers
    /// can write scenarios without reading Rust.
    #[test]
    fn every_step_is_in_the_vocabulary() {
        let doc = std::fs::read_to_string(root().join("features/README.md")).expect("features/README.md");
        let dir = root().join("steps/tests/cucumber/steps");
        let mut missing = Vec::new();
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).expect("steps dir") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("step file");
            // Attributes may be wrapped over several lines by rustfmt.
            for (start, _) in text.match_indices("#[") {
                let rest = &text[start + 2..];
                let Some(rest) = ["given(", "when(", "then("].iter().find_map(|p| rest.strip_prefix(p)) else {
                    continue;
                };
                let body = rest[..rest.find(")]").expect("attribute closes")].trim();
                let body = body.strip_prefix("expr = ").unwrap_or(body);
                let expr = body.trim_matches('"').replace("\\\"", "\"");
                count += 1;
                if !doc.contains(&format!("`{}`", expr.replace('|', "\\|"))) {
                    missing.push(format!("{}: {expr}", path.file_name().unwrap().to_string_lossy()));
                }
            }
        }
        assert!(count > 20, "found only {count} steps; is the parser broken?");
        assert!(
            missing.is_empty(),
            "steps missing from features/README.md (run scripts/gen-step-vocabulary.py):\n{}",
            missing.join("\n")
        );
    }

    /// Each step file is one domain with its own section in the vocabulary, and each section
    /// belongs to a step file.
    #[test]
    fn step_files_are_the_documented_domains() {
        let doc = std::fs::read_to_string(root().join("features/README.md")).expect("features/README.md");
        let mut files: Vec<String> = std::fs::read_dir(root().join("steps/tests/cucumber/steps"))
            .expect("steps dir")
            .filter_map(|e| {
                let path = e.ok()?.path();
                let text = std::fs::read_to_string(&path).ok()?;
                // Only files that define steps are domains (not mod.rs or the hooks).
                if !["#[given(", "#[when(", "#[then("].iter().any(|attr| text.contains(attr)) {
                    return None;
                }
                Some(path.file_stem()?.to_string_lossy().into_owned())
            })
            .collect();
        files.sort();
        let mut sections: Vec<String> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("## "))
            .filter(|h| *h != "Parameters")
            .map(String::from)
            .collect();
        sections.sort();
        assert_eq!(sections, files, "vocabulary sections vs step files");
    }
}

#[cfg(test)]
mod design_sync {
    use std::collections::BTreeSet;
    use std::path::PathBuf;

    /// design.md's coverage matrix names feature files; it must name every one that exists and
    /// no file that does not.
    #[test]
    fn design_md_names_exactly_the_feature_files() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf();
        let design = std::fs::read_to_string(root.join("design.md")).expect("design.md");
        let on_disk: BTreeSet<String> = std::fs::read_dir(root.join("features"))
            .expect("features/")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".feature"))
            .map(|n| format!("features/{n}"))
            .collect();
        let named: BTreeSet<String> = design
            .split(|c: char| c.is_whitespace() || "|(),`[]".contains(c))
            .filter(|w| w.starts_with("features/") && w.ends_with(".feature") && !w.contains('*'))
            .map(String::from)
            .collect();
        let unnamed: Vec<_> = on_disk.difference(&named).collect();
        let dangling: Vec<_> = named.difference(&on_disk).collect();
        assert!(unnamed.is_empty(), "feature files missing from design.md: {unnamed:?}");
        assert!(dangling.is_empty(), "design.md names feature files that do not exist: {dangling:?}");
    }
}

#[cfg(test)]
mod tags {
    use std::path::PathBuf;

    /// A scenario that seeds rows writes to the database: it must carry `@writes-db`, or the
    /// external profile would run it against a deployment (and fail on the read-only session).
    #[test]
    fn scenarios_that_seed_rows_are_tagged_writes_db() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf();
        let mut untagged = Vec::new();
        let mut seeding = 0;
        for entry in std::fs::read_dir(root.join("features")).expect("features/") {
            let path = entry.expect("entry").path();
            if path.extension().is_none_or(|e| e != "feature") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("feature file");
            let lines: Vec<&str> = text.lines().collect();
            let feature_tagged =
                lines.iter().take_while(|l| !l.trim_start().starts_with("Feature:")).any(|l| l.contains("@writes-db"));
            let starts: Vec<usize> =
                (0..lines.len()).filter(|&i| lines[i].trim_start().starts_with("Scenario")).collect();
            for (k, &start) in starts.iter().enumerate() {
                let end = starts.get(k + 1).copied().unwrap_or(lines.len());
                // The seeding step: `<keyword> <n> stored Feature <type> rows for sensor …`.
                let seeds = lines[start..end].iter().any(|l| {
                    let w: Vec<&str> = l.split_whitespace().collect();
                    w.len() > 3 && w[1].parse::<u32>().is_ok() && w[2] == "stored" && w[3] == "Feature"
                });
                let tagged = feature_tagged || (start > 0 && lines[start - 1].contains("@writes-db"));
                seeding += seeds as usize;
                if seeds && !tagged {
                    untagged.push(format!("{}:{}: {}", path.display(), start + 1, lines[start].trim()));
                }
            }
        }
        assert!(seeding >= 3, "found only {seeding} seeding scenarios; is the parser broken?");
        assert!(untagged.is_empty(), "scenarios that seed rows without @writes-db:\n{}", untagged.join("\n"));
    }
}

//! The documentation stands on its own in a fresh clone: no README, doc comment, comment or
//! example refers to documents that are not in the repository (a product specification by
//! section, the pages the presets were written from). Links to the APIs' public documentation
//! and RFC sections are fine: anyone can read those.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

/// What a reference to a document outside the repository looks like. Built from pieces so this
/// file does not match itself.
fn outside_references() -> Vec<String> {
    vec![
        ["PRODUCT", ".md"].concat(),
        ["seed", " page"].concat(),
        ["seeds", "/"].concat(),
        ["shared", "/seeds"].concat(),
    ]
}

/// Directories that hold no documentation of ours: build output, version control, fuzzing
/// corpora and crash files, measured results.
const SKIPPED: [&str; 6] = [
    "target",
    ".git",
    "corpus",
    "artifacts",
    "results",
    "node_modules",
];

/// Text files a reader of the repository reads: sources, docs, configuration, scripts.
fn is_text(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    name == "Dockerfile"
        || matches!(
            ext,
            "rs" | "md" | "toml" | "py" | "sh" | "yml" | "yaml" | "txt" | "conf" | "service"
        )
}

fn files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if !SKIPPED.contains(&name) {
                files(&path, found);
            }
        } else if is_text(&path) {
            found.push(path);
        }
    }
}

#[test]
fn no_doc_refers_to_documents_outside_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    files(root, &mut found);
    assert!(found.iter().any(|p| p.ends_with("README.md")), "{found:?}");
    assert!(found.iter().any(|p| p.ends_with("src/lib.rs")), "{found:?}");
    let needles = outside_references();
    let mut problems = Vec::new();
    for path in &found {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        for (n, line) in text.lines().enumerate() {
            let shown = path.strip_prefix(root).unwrap().display();
            for needle in &needles {
                if line.contains(needle.as_str()) {
                    problems.push(format!("{shown}:{}: {needle}: {line}", n + 1));
                }
            }
            // A section sign cites a section; only an RFC's can be looked up from here.
            if line.contains('§') && !line.contains("RFC") {
                problems.push(format!("{shown}:{}: § without an RFC: {line}", n + 1));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "references to documents outside the repository:\n{}",
        problems.join("\n")
    );
}

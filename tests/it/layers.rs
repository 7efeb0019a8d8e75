//! The architecture's one rule, checked from the code: no module of `src/` imports from a
//! higher layer. The layers, bottom up (book/src/design.md, "Layers and folder map"):
//!
//! 0. base: `error`, `sys`, `progress`, `excludes`, `devices`, `facts`, `name`
//! 1. `format`: every byte layout
//! 2. `store`: packs, blobs, chunking, `BlobSource`
//! 3. `repo`, `catalog`: a repository and its catalog (publish, gc, verify, diff, delta; nodes)
//! 4. `capture`, `tarball`, `apply`: revisions in, revisions out
//! 5. `template`, `install`, `netboot`, `serve`: bare nodes and the network
//! 6. `cli`, `main`, `lib`: the command line
//!
//! A module may use its own layer and those below. A trait a lower layer needs is defined there
//! (as `store::BlobSource` is), never borrowed from above.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The layer of each top-level module of `src/`.
const LAYERS: &[(&str, u8)] = &[
    ("error", 0),
    ("sys", 0),
    ("progress", 0),
    ("excludes", 0),
    ("devices", 0),
    ("facts", 0),
    ("name", 0),
    ("format", 1),
    ("store", 2),
    ("repo", 3),
    ("catalog", 3),
    ("capture", 4),
    ("tarball", 4),
    ("apply", 4),
    ("template", 5),
    ("install", 5),
    ("netboot", 5),
    ("serve", 5),
    ("cli", 6),
    ("main", 6),
    ("lib", 6),
];

fn layer_of(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// The top-level module a file of `src/` belongs to (`src/repo/gc.rs` -> `repo`).
fn module_of(rel: &Path) -> String {
    let first = rel.components().next().expect("a path under src/");
    let name = first.as_os_str().to_string_lossy();
    name.strip_suffix(".rs").unwrap_or(&name).to_string()
}

/// The top-level modules `code` names through `crate::`: `crate::x::...`, `use crate::x`, and
/// each member of `use crate::{a, b::c}`. Comments are skipped.
fn crate_imports(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in code.lines() {
        let line = match line.find("//") {
            Some(i) => line.get(..i).unwrap_or(""),
            None => line,
        };
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = rest.get(i + "crate::".len()..).unwrap_or("");
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for member in group.get(..end).unwrap_or("").split(',') {
                    let name: String = member
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        found.push(name);
                    }
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.push(name);
                }
            }
        }
    }
    found
}

/// Every import that runs up a layer in the `(file, code)` pairs: `(file, its module, the
/// higher module)`.
fn upward(files: &[(PathBuf, String)]) -> Vec<(PathBuf, String, String)> {
    let mut bad = Vec::new();
    for (rel, code) in files {
        let me = module_of(rel);
        let mine = layer_of(&me)
            .unwrap_or_else(|| panic!("{}: module `{me}` has no layer in LAYERS", rel.display()));
        for other in crate_imports(code) {
            if let Some(theirs) = layer_of(&other) {
                if theirs > mine {
                    bad.push((rel.clone(), me.clone(), other));
                }
            }
        }
    }
    bad
}

fn source_files(dir: &Path, base: &Path, out: &mut Vec<(PathBuf, String)>) {
    for e in std::fs::read_dir(dir).expect("read src/") {
        let path = e.expect("entry").path();
        if path.is_dir() {
            source_files(&path, base, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            let code = std::fs::read_to_string(&path).expect("read a source file");
            out.push((path.strip_prefix(base).unwrap().to_path_buf(), code));
        }
    }
}

#[test]
fn no_module_imports_from_a_higher_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    source_files(&src, &src, &mut files);
    assert!(
        files.len() > 50,
        "found only {} files under src/",
        files.len()
    );
    let bad = upward(&files);
    let mut by_pair: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (file, me, other) in bad {
        by_pair
            .entry((me, other))
            .or_default()
            .push(file.display().to_string());
    }
    assert!(
        by_pair.is_empty(),
        "imports that run up a layer (lower -> higher: files):\n{}",
        by_pair
            .iter()
            .map(|((a, b), f)| format!("  {a} -> {b}: {}", f.join(", ")))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn every_top_level_module_has_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for e in std::fs::read_dir(&src).unwrap() {
        let name = module_of(Path::new(&e.unwrap().file_name()));
        assert!(
            layer_of(&name).is_some(),
            "src/{name} has no layer: add it to LAYERS here and to book/src/design.md"
        );
    }
}

#[test]
fn the_checker_finds_upward_imports_in_every_form() {
    let files = vec![
        (
            PathBuf::from("store/mod.rs"),
            "use crate::apply::BlobSource;\n".to_string(),
        ),
        (
            PathBuf::from("format/pack.rs"),
            "use crate::{error::Result, repo};\n".to_string(),
        ),
        (
            PathBuf::from("sys.rs"),
            "    let x = crate::install::run();\n".to_string(),
        ),
        (
            PathBuf::from("repo/gc.rs"),
            "// crate::cli is only in a comment\nuse crate::store;\n".to_string(),
        ),
        (
            PathBuf::from("apply/mod.rs"),
            "use crate::{format, store::BlobSource};\n".to_string(),
        ),
    ];
    let found: Vec<(String, String)> = upward(&files).into_iter().map(|(_, a, b)| (a, b)).collect();
    assert_eq!(
        found,
        vec![
            ("store".to_string(), "apply".to_string()),
            ("format".to_string(), "repo".to_string()),
            ("sys".to_string(), "install".to_string()),
        ]
    );
}

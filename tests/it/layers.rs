//! The architecture's one rule, checked from the code: no module of `src/` imports from a
//! higher layer. The layers, bottom up (book/src/design.md, "Layers and folder map"):
//!
//! 0. base: `error`, `sys`, `progress`, `excludes`, `devices`, `facts`, `name`, `config`, `tls`
//! 1. `format`: every byte layout
//! 2. `store`: packs, blobs, chunking, `BlobSource`; `trust`: keys and signatures
//! 3. `repo`, `catalog`: a repository and its catalog (publish, gc, verify, diff, delta; nodes)
//! 4. `capture`, `tarball`, `apply`: revisions in, revisions out
//! 5. `template`, `install`, `netboot`, `serve`, `fleet`, `migrate`, `replicate`: bare nodes,
//!    the network, many nodes at once, what comes from SystemImager, other repositories
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
    ("config", 0),
    ("proxy", 0),
    ("tls", 0),
    ("keyset", 0),
    ("format", 1),
    ("store", 2),
    ("trust", 2),
    ("repo", 3),
    ("catalog", 3),
    ("capture", 4),
    ("tarball", 4),
    ("apply", 4),
    ("template", 5),
    ("install", 5),
    ("migrate", 5),
    ("netboot", 5),
    ("serve", 5),
    ("fleet", 5),
    ("replicate", 5),
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

/// `code` without comments and without the contents of string and char literals, so that
/// neither a `//` inside a string nor a path inside a comment or a message counts.
fn strip(code: &str) -> String {
    let c: Vec<char> = code.chars().collect();
    let mut out = String::with_capacity(code.len());
    let mut i = 0;
    while let Some(&ch) = c.get(i) {
        let next = c.get(i + 1).copied();
        if ch == '/' && next == Some('/') {
            while c.get(i).is_some_and(|&x| x != '\n') {
                i += 1;
            }
        } else if ch == '/' && next == Some('*') {
            i += 2;
            while i < c.len() && !(c.get(i) == Some(&'*') && c.get(i + 1) == Some(&'/')) {
                i += 1;
            }
            i += 2;
        } else if ch == 'r'
            && (next == Some('"') || next == Some('#'))
            && !i
                .checked_sub(1)
                .and_then(|p| c.get(p))
                .is_some_and(|p| p.is_alphanumeric() || *p == '_')
        {
            // A raw string: r"..." or r#"..."#, with as many hashes.
            let mut j = i + 1;
            let mut hashes = 0;
            while c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                out.push(ch);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                match c.get(j) {
                    None => break,
                    Some('"') if (1..=hashes).all(|k| c.get(j + k) == Some(&'#')) => {
                        j += 1 + hashes;
                        break;
                    }
                    _ => j += 1,
                }
            }
            out.push_str("\"\"");
            i = j;
        } else if ch == '"' {
            i += 1;
            while let Some(&x) = c.get(i) {
                i += if x == '\\' { 2 } else { 1 };
                if x == '"' {
                    break;
                }
            }
            out.push_str("\"\"");
        } else if ch == '\'' {
            // A char literal ('x', '\n', '\'') or a lifetime ('a).
            if next == Some('\\') {
                i += 3;
                while c.get(i).is_some_and(|&x| x != '\'') {
                    i += 1;
                }
                i += 1;
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                out.push(ch);
                i += 1;
            }
        } else {
            out.push(ch);
            i += 1;
        }
    }
    out
}

/// The identifier at the start of `s` (after blanks).
fn ident(s: &str) -> String {
    s.trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// The first segment of each member of the `{...}` group `s` starts with (nested groups and
/// line breaks included): `{a::{b, c}, d}` gives `a` and `d`.
fn group_members(s: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut depth = 0;
    let mut start = true;
    for (k, ch) in s.char_indices() {
        match ch {
            '{' => {
                depth += 1;
                continue;
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
                continue;
            }
            ',' if depth == 1 => {
                start = true;
                continue;
            }
            _ => {}
        }
        if depth == 1 && start && !ch.is_whitespace() {
            start = false;
            let name = ident(s.get(k..).unwrap_or(""));
            if !name.is_empty() {
                found.push(name);
            }
        }
    }
    found
}

/// The names right after each `prefix` in `code` that is not the tail of a longer word.
fn after_each(code: &str, prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(i) = code.get(at..).and_then(|r| r.find(prefix)) {
        let start = at + i;
        at = start + prefix.len();
        let before = code.get(..start).and_then(|p| p.chars().last());
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue; // `$crate::`, or a word that ends in the prefix
        }
        found.extend(names_at(code.get(at..).unwrap_or("")));
    }
    found
}

/// The module names a path continues with at the start of `rest`: each member of a
/// `{...}` group, or the one identifier.
fn names_at(rest: &str) -> Vec<String> {
    if rest.starts_with('{') {
        return group_members(rest);
    }
    let name = ident(rest);
    if name.is_empty() {
        Vec::new()
    } else {
        vec![name]
    }
}

/// The top-level modules `code` names: through `crate::` (`crate::x::...`, `use crate::x`,
/// and each member of `use crate::{a, b::{c, d}}` over any number of lines), and through a
/// chain of `super::` long enough to reach the crate's root from a file `depth` modules deep
/// (`src/repo/gc.rs` is 2 deep, `src/repo/mod.rs` 1). Comments and literals are skipped. A
/// `super::` inside an inline `mod tests` is resolved as if it were not there, which can only
/// take a module of the file's own folder for a top-level one: a name with no layer, ignored.
fn crate_imports(code: &str, depth: usize) -> Vec<String> {
    let code = strip(code);
    let mut found = after_each(&code, "crate::");
    // `super::super::x`: the whole chain, counted from its first `super::`.
    let chains: Vec<(usize, usize)> = {
        let mut v = Vec::new();
        let mut at = 0;
        while let Some(i) = code.get(at..).and_then(|r| r.find("super::")) {
            let start = at + i;
            let mut n = 0;
            let mut end = start;
            while code.get(end..).is_some_and(|r| r.starts_with("super::")) {
                n += 1;
                end += "super::".len();
            }
            v.push((end, n));
            at = end;
        }
        v
    };
    for (end, n) in chains {
        if n < depth {
            continue;
        }
        found.extend(names_at(code.get(end..).unwrap_or("")));
    }
    found
}

/// How many modules deep a file of `src/` is: `sys.rs` 1, `repo/mod.rs` 1, `repo/gc.rs` 2.
fn depth_of(rel: &Path) -> usize {
    let n = rel.components().count();
    if rel.file_name().is_some_and(|f| f == "mod.rs") {
        n - 1
    } else {
        n
    }
}

/// Every import that runs up a layer in the `(file, code)` pairs: `(file, its module, the
/// higher module)`.
fn upward(files: &[(PathBuf, String)]) -> Vec<(PathBuf, String, String)> {
    let mut bad = Vec::new();
    for (rel, code) in files {
        let me = module_of(rel);
        let mine = layer_of(&me)
            .unwrap_or_else(|| panic!("{}: module `{me}` has no layer in LAYERS", rel.display()));
        for other in crate_imports(code, depth_of(rel)) {
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
        let e = e.unwrap();
        // A directory without Rust files is no module (src/packaging: the systemd units).
        let rust = |p: &Path| {
            std::fs::read_dir(p).map_or(true, |d| {
                d.flatten()
                    .any(|f| f.path().extension().is_some_and(|x| x == "rs"))
            })
        };
        if e.path().is_dir() && !rust(&e.path()) {
            continue;
        }
        let name = module_of(Path::new(&e.file_name()));
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
        (
            PathBuf::from("repo/gc.rs"),
            "use crate::{\n    error::Result,\n    apply::BlobSource,\n};\n".to_string(),
        ),
        (
            PathBuf::from("store/chunk.rs"),
            "use crate::{format::{Id, pack}, serve::x};\n".to_string(),
        ),
        (
            PathBuf::from("format/wire.rs"),
            "let u = format!(\"http://{}\", crate::install::x());\n".to_string(),
        ),
        (
            PathBuf::from("sys.rs"),
            "let s = \"crate::cli\"; /* crate::cli */\n".to_string(),
        ),
        (
            PathBuf::from("catalog/nodes.rs"),
            "use super::super::apply::X;\n".to_string(),
        ),
        (
            PathBuf::from("catalog/nodes.rs"),
            "use super::Catalog;\n".to_string(),
        ),
        (
            PathBuf::from("store/mod.rs"),
            "fn f<'a>(x: &'a str) -> char { '\"' }\nuse crate::capture;\n".to_string(),
        ),
    ];
    let found: Vec<(String, String)> = upward(&files).into_iter().map(|(_, a, b)| (a, b)).collect();
    assert_eq!(
        found,
        vec![
            ("store".to_string(), "apply".to_string()),
            ("format".to_string(), "repo".to_string()),
            ("sys".to_string(), "install".to_string()),
            ("repo".to_string(), "apply".to_string()),
            ("store".to_string(), "serve".to_string()),
            ("format".to_string(), "install".to_string()),
            ("catalog".to_string(), "apply".to_string()),
            ("store".to_string(), "capture".to_string()),
        ]
    );
}

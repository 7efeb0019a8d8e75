//! The book is tested: every ```console block of book/src/**/*.md runs, and its output is
//! compared with what the book shows; `--help` and the command pages name the same flags.
//!
//! The conventions (book/src/design.md, "The book is tested") in short:
//! - A ```console block is run unless the line just before it is `<!-- not run: REASON -->`.
//!   Other fences (text, sh, toml, ...) are never run.
//! - A line starting with a prompt (`$ `, `# `) is a command; a trailing `\` continues it. The
//!   lines after it, up to the next command, are its output (stdout and stderr together).
//! - A page is one scenario: its blocks run in order in one bash, in a scratch directory that
//!   stands for `/srv`, `/path/to`, `/tmp`, `/var/lib/aurum` and `/etc/aurum` (those paths in
//!   commands are moved below it, and its path is taken out of the output). A page prepares
//!   its fixture in a hidden `<!-- setup: ... -->` comment, run first; `golden DIR` there makes
//!   the small sample golden client, and `$BOOK_SOURCE` is the source tree (for its test data).
//! - Output is compared line by line, blank lines ignored, runs of spaces as one: `...` alone
//!   on a line stands for any number of lines, `[..]` for any text within a line (`c0ffee12[..]` for a long id cut short), and figures
//!   (hex ids of 4 digits or more, sizes, durations, dates and other numbers, but not `@N` revision
//!   numbers) match any figure. A command that shows no output only has to succeed; one that
//!   shows an `aurum: error:` line has to fail.

use super::common::{can_run, is_root};
use regex::Regex;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::LazyLock;

fn book_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("book/src")
}

/// Every page of the book, relative to book/src, sorted.
fn pages() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&book_src(), &mut out);
    out.sort();
    out
}

/// One command of a console block, with the output the book shows for it.
#[derive(Debug)]
struct Example {
    line: usize,
    command: String,
    expected: Vec<String>,
}

/// A page's runnable examples, its hidden setup, and the blocks that are neither run nor
/// marked (each a failure).
#[derive(Default)]
struct Page {
    setup: String,
    examples: Vec<Example>,
    unmarked: Vec<(usize, &'static str)>,
}

const UNMARKED: &str = "a console block that is neither run (each command after a `$ ` or `# ` prompt) nor marked `<!-- not run: REASON -->`";

static PROMPT: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^[$#] (.*)$").unwrap());

fn parse(text: &str) -> Page {
    let mut page = Page::default();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    let mut prev = "";
    while i < lines.len() {
        let line = lines[i];
        if let Some(rest) = line.trim().strip_prefix("<!-- setup:") {
            let mut body = rest.to_string();
            while !body.trim_end().ends_with("-->") {
                i += 1;
                body.push('\n');
                body.push_str(lines[i]);
            }
            page.setup.push_str(body.trim_end().trim_end_matches("-->"));
            page.setup.push('\n');
        }
        if let Some(rest) = line.trim().strip_prefix("<!-- run:") {
            let (no, mut body) = (i + 1, rest.to_string());
            while !body.trim_end().ends_with("-->") {
                i += 1;
                body.push('\n');
                body.push_str(lines[i]);
            }
            page.examples.push(Example {
                line: no,
                command: body.trim_end().trim_end_matches("-->").trim().to_string(),
                expected: Vec::new(),
            });
        }
        if line.trim_start().starts_with("```") && line.trim() != "```" {
            let lang = line.trim().trim_start_matches('`');
            let start = i;
            i += 1;
            let mut body = Vec::new();
            while i < lines.len() && lines[i].trim() != "```" {
                body.push((i + 1, lines[i]));
                i += 1;
            }
            let script = body.first().is_some_and(|(_, l)| l.starts_with("#!"));
            if ["sh", "bash", "shell"].contains(&lang) && !script {
                page.unmarked.push((start + 1, "shell commands in a `sh` block: write them as a console block with `# ` prompts (a `sh` block is for a script, starting with #!)"));
            }
            if lang == "console" {
                if prev.trim().starts_with("<!-- not run:") {
                    // documented as not run
                } else {
                    examples_of(&body, &mut page.examples, &mut page.unmarked, start + 1);
                }
            }
        }
        if !line.trim().is_empty() {
            prev = line;
        }
        i += 1;
    }
    page
}

fn examples_of(
    body: &[(usize, &str)],
    out: &mut Vec<Example>,
    bad: &mut Vec<(usize, &'static str)>,
    fence: usize,
) {
    let mut k = 0;
    if body.first().is_none_or(|(_, l)| !PROMPT.is_match(l)) {
        bad.push((fence, UNMARKED)); // a console block must start with a `$ ` or `# ` command
        return;
    }
    while k < body.len() {
        let (no, l) = body[k];
        let Some(c) = PROMPT.captures(l) else {
            out.last_mut().unwrap().expected.push(l.to_string());
            k += 1;
            continue;
        };
        let mut command = c[1].to_string();
        while command.ends_with('\\') && k + 1 < body.len() {
            k += 1;
            command.push('\n');
            command.push_str(body[k].1);
        }
        out.push(Example {
            line: no,
            command,
            expected: Vec::new(),
        });
        k += 1;
    }
}

/// Paths the examples use that stand for the scratch directory's.
static SCRATCH_PATHS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(^|[\s='\x22:])(/srv|/path/to|/tmp|/var/lib/aurum|/etc/aurum)\b").unwrap()
});

/// The shell functions a page's setup can call.
const HELPERS: &str = r#"
ls() { command ls -C "$@"; }  # as on a terminal
golden() {  # golden DIR: the small sample golden client
    mkdir -p "$1"/etc/ssh "$1"/usr/bin "$1"/usr/lib "$1"/var/log "$1"/home "$1"/tmp "$1"/usr/share/doc/openssl
    echo 'compute' > "$1"/etc/hostname
    printf 'root:x:0:0:root:/root:/bin/bash\n' > "$1"/etc/passwd
    printf '# fstab\nproc /proc proc defaults 0 0\n' > "$1"/etc/fstab
    printf 'Port 22\n' > "$1"/etc/ssh/sshd_config
    printf '#!/bin/sh\necho hello\n' > "$1"/usr/bin/hello && chmod 755 "$1"/usr/bin/hello
    head -c 300000 /dev/urandom > "$1"/usr/lib/libcrypto.so.3
    ln -sf usr/bin "$1"/bin
    touch -d '2026-11-20 10:01:55' "$1"/etc/ssh/sshd_config
}
revisions() {  # revisions IMAGE N: a repository at $AURUM_REPO with N revisions of IMAGE
    [ -e "$AURUM_REPO/FORMAT" ] || aurum init --repo "$AURUM_REPO"
    [ -d $S/golden-$1 ] || golden $S/golden-$1
    for i in $(seq 1 $2); do
        echo "revision $i" > $S/golden-$1/etc/motd
        aurum getimage --golden-client $S/golden-$1 --image $1 -m "change $i"
    done
}
"#;

/// Runs a page: its setup, then each example, in one bash in a scratch directory. Returns the
/// failures, each naming the page's line.
fn run_page(rel: &str, page: &Page) -> Vec<String> {
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path().to_str().unwrap().to_string();
    for d in ["srv", "path/to", "tmp", "var/lib", "etc/aurum"] {
        fs::create_dir_all(scratch.path().join(d)).unwrap();
    }
    let map = |cmd: &str| {
        SCRATCH_PATHS
            .replace_all(cmd, format!("${{1}}{s}${{2}}"))
            .into_owned()
    };
    let mut script = format!(
        "cd {s}/tmp\nexport S={s} TMPDIR={s}/tmp\nexport AURUM_REPO={s}/var/lib/aurum AURUM_CONFIG_DIR={s}/etc/aurum\n\
         {HELPERS}\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n{{ :\n{}\n}} >/dev/null 2>&1 || echo '@@SETUP-FAILED'\n",
        map(&page.setup)
    );
    let mut fails = Vec::new();
    for (n, ex) in page.examples.iter().enumerate() {
        let cmd = map(&ex.command);
        if let Some(why) = unsafe_reason(&cmd, &s) {
            fails.push(format!(
                "{rel}:{}: `{}` is not run here: {why}; mark its block `<!-- not run: REASON -->`",
                ex.line, ex.command
            ));
            continue;
        }
        let settle = if cmd.trim_end().ends_with('&') {
            "\nsleep 1"
        } else {
            ""
        };
        script.push_str(&format!(
            "echo '@@CMD {n}'\n{{ {cmd}{settle}\n}} 2>&1\necho \"@@RC $?\"\n"
        ));
    }
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("PATH", path_with_aurum())
        .env("COLUMNS", "100")
        .env("BOOK_SOURCE", env!("CARGO_MANIFEST_DIR"))
        .env_remove("AURUM_SERVER")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).replace(&s, "");
    if text.starts_with("@@SETUP-FAILED") {
        fails.push(format!("{rel}: the page's setup failed"));
    }
    let sections = split_output(&text);
    for (n, ex) in page.examples.iter().enumerate() {
        if fails
            .iter()
            .any(|f| f.starts_with(&format!("{rel}:{}:", ex.line)))
        {
            continue;
        }
        let Some((actual, rc)) = sections.get(&n) else {
            fails.push(format!(
                "{rel}:{}: `{}` did not run: {}",
                ex.line,
                ex.command,
                String::from_utf8_lossy(&out.stderr)
            ));
            continue;
        };
        let wants_error = ex.expected.iter().any(|l| l.starts_with("aurum: error:"));
        let rc_ok = if wants_error { *rc != 0 } else { *rc == 0 };
        if !rc_ok || (!ex.expected.is_empty() && !matches(&ex.expected, actual)) {
            fails.push(format!(
                "{rel}:{}: `{}` exited {rc}{}; the book shows:\n{}\nthe program printed:\n{}\n",
                ex.line,
                ex.command,
                if wants_error {
                    " (the book shows an error)"
                } else {
                    ""
                },
                ex.expected.join("\n"),
                actual.join("\n")
            ));
        }
    }
    fails
}

/// Programs an example may run: aurum and read-only or scratch-local shell tools.
const ALLOWED: &[&str] = &[
    "aurum",
    "export",
    "ls",
    "cat",
    "head",
    "tail",
    "grep",
    "diff",
    "cp",
    "mkdir",
    "echo",
    "cd",
    "zcat",
    "xz",
    "tar",
    "sort",
    "wc",
    "bash",
    "sh",
    "test",
    "true",
    "man",
    "golden",
    "revisions",
    "rm",
    "mv",
    "p",
    "printf",
    "dd",
    "command",
];

/// aurum commands that change the root they run on (`/` unless --root).
const ON_A_NODE: &[&str] = &[
    "updateclient",
    "rollback",
    "mark-good",
    "health",
    "install",
    "agent",
    "exec",
    "copy",
];

/// An output redirection (`> FILE`, `2>>FILE`), not a `=>` in quoted text.
static REDIRECT: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(^|[\s\d])>>?\s*[^\s&]").unwrap());

/// Why a command must not run in the test (it would touch the machine outside the scratch
/// directory), or None.
fn unsafe_reason(cmd: &str, scratch: &str) -> Option<String> {
    static SPLIT: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"\|\||&&|\||;|\$\(|<\(|`").unwrap());
    for part in SPLIT.split(cmd) {
        let words: Vec<&str> = part
            .split_whitespace()
            .filter(|w| !w.contains('=') || w.starts_with('-'))
            .collect();
        let Some(prog) = words.first() else { continue };
        if !ALLOWED.contains(prog) {
            return Some(format!("it runs {prog}"));
        }
        if *prog == "aurum" {
            let sub = words
                .iter()
                .skip(1)
                .find(|w| !w.starts_with('-') && !w.starts_with('/'));
            if sub.is_some_and(|s| ON_A_NODE.contains(s)) && !part.contains("--root") {
                return Some(format!(
                    "aurum {} changes this machine's root",
                    sub.unwrap()
                ));
            }
        }
    }
    for w in cmd.split_whitespace() {
        let w = w.trim_start_matches(['>', '<', '"', '\'']);
        let outside = (w.starts_with("/usr/")
            || w.starts_with("/etc/")
            || w.starts_with("/var/")
            || w.starts_with("/boot")
            || w.starts_with("/root")
            || w.starts_with("/dev/sd"))
            && !w.starts_with(scratch);
        let reads = [
            "aurum ls ",
            "aurum cat ",
            "aurum diff ",
            "ls ",
            "cat ",
            "grep ",
        ]
        .iter()
        .any(|r| cmd.starts_with(r));
        if w.starts_with('~') || (outside && (REDIRECT.is_match(cmd) || !reads)) {
            return Some(format!("it writes {w}"));
        }
    }
    None
}

fn path_with_aurum() -> String {
    let bin = Path::new(env!("CARGO_BIN_EXE_aurum")).parent().unwrap();
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// The output of each example by its number, with its exit status.
fn split_output(text: &str) -> BTreeMap<usize, (Vec<String>, i32)> {
    let mut out = BTreeMap::new();
    let mut cur: Option<(usize, Vec<String>)> = None;
    for l in text.lines() {
        if let Some(n) = l.strip_prefix("@@CMD ") {
            cur = Some((n.parse().unwrap(), Vec::new()));
        } else if let Some(rc) = l.strip_prefix("@@RC ") {
            if let Some((n, lines)) = cur.take() {
                out.insert(n, (lines, rc.parse().unwrap()));
            }
        } else if let Some((_, lines)) = cur.as_mut() {
            lines.push(l.to_string());
        }
    }
    out
}

static FIGURES: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    [
        (r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d", "TIME"),
        (r"\b\d+(\.\d+)? (B|KiB|MiB|GiB|TiB)\b", "SIZE"),
        (r"\b\d+(\.\d+)? ?(s|ms)\b", "DURATION"),
        (r"(^|[^@\d])\d+(\.\d+)?", "${1}N"),
        (r"\s+", " "),
    ]
    .into_iter()
    .map(|(r, s)| (Regex::new(r).unwrap(), s))
    .collect()
});

/// A line with its figures replaced by placeholders and its spacing made uniform.
fn normalise(line: &str) -> String {
    static ID: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\b[0-9a-f]{4,64}\b").unwrap());
    let mut l = ID
        .replace_all(line.trim(), |c: &regex::Captures| {
            let m = &c[0];
            if m.len() >= 8 || m.chars().any(|ch| ch.is_ascii_alphabetic()) {
                "N".to_string()
            } else {
                m.to_string()
            }
        })
        .into_owned();
    for (re, rep) in FIGURES.iter() {
        l = re.replace_all(&l, *rep).into_owned();
    }
    l
}

fn line_matches(expected: &str, actual: &str) -> bool {
    let (e, a) = (normalise(expected), normalise(actual));
    let parts: Vec<&str> = e.split("[..]").collect();
    if parts.len() == 1 {
        return e == a;
    }
    let mut rest = a.as_str();
    for (k, p) in parts.iter().enumerate() {
        if k == 0 {
            let Some(r) = rest.strip_prefix(p) else {
                return false;
            };
            rest = r;
        } else if k == parts.len() - 1 {
            return rest.ends_with(p);
        } else {
            let Some(at) = rest.find(p) else { return false };
            rest = &rest[at + p.len()..];
        }
    }
    true
}

/// Whether the output matches the lines the book shows (`...` = any lines).
fn matches(expected: &[String], actual: &[String]) -> bool {
    let e: Vec<&str> = expected
        .iter()
        .map(|s| s.as_str())
        .filter(|l| !l.trim().is_empty())
        .collect();
    let a: Vec<&str> = actual
        .iter()
        .map(|s| s.as_str())
        .filter(|l| !l.trim().is_empty())
        .collect();
    fn go(e: &[&str], a: &[&str]) -> bool {
        match e.first() {
            None => a.is_empty(),
            Some(l) if l.trim() == "..." => (0..=a.len()).any(|k| go(&e[1..], &a[k..])),
            Some(l) => !a.is_empty() && line_matches(l, a[0]) && go(&e[1..], &a[1..]),
        }
    }
    go(&e, &a)
}

#[test]
fn matcher() {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert!(line_matches(
        "compute@2 9a0b7c11 (unchanged)",
        "compute@2 0d1e2f3a (unchanged)"
    ));
    assert!(!line_matches("compute@2 9a0b7c11", "compute@3 9a0b7c11"));
    assert!(line_matches(
        "48215 entries, 2.1 GiB in 1.84 s",
        "7 entries,   12 KiB in 0.01 s"
    ));
    assert!(line_matches("a [..] z", "a b c z"));
    assert!(matches(&s(&["a", "...", "z"]), &s(&["a", "b", "c", "z"])));
    assert!(!matches(&s(&["a"]), &s(&["a", "b"])));
}

#[test]
fn every_example_runs() {
    if !can_run(is_root(), "root (the book's examples run as root)") {
        return;
    }
    let mut fails = Vec::new();
    let mut ran = 0;
    let only = std::env::var("BOOK_PAGE").unwrap_or_default();
    for p in pages() {
        let rel = p.strip_prefix(book_src()).unwrap().display().to_string();
        if !rel.contains(&only) {
            continue;
        }
        let page = parse(&fs::read_to_string(&p).unwrap());
        for (l, why) in &page.unmarked {
            fails.push(format!("{rel}:{l}: {why}"));
        }
        if page.examples.is_empty() {
            continue;
        }
        ran += page.examples.len();
        fails.extend(run_page(&rel, &page));
    }
    eprintln!("{ran} book examples run");
    assert!(
        fails.is_empty(),
        "{} book examples fail:\n{}",
        fails.len(),
        fails.join("\n")
    );
}

/// The flags `aurum ARGS --help` lists, and its subcommands.
fn help_of(args: &[&str]) -> (BTreeSet<String>, Vec<String>) {
    let out = Command::new(env!("CARGO_BIN_EXE_aurum"))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let flag = Regex::new(r"^\s+(?:-\w, )?(--[a-z][a-z0-9-]*)").unwrap();
    let mut flags = BTreeSet::new();
    let mut subs = Vec::new();
    let mut in_cmds = false;
    for l in text.lines() {
        if l.starts_with("Commands:") {
            in_cmds = true;
            continue;
        }
        if !l.starts_with(' ') {
            in_cmds = false;
        }
        if in_cmds {
            if let Some(w) = l.split_whitespace().next() {
                if w != "help" && l.starts_with("  ") && !l.starts_with("   ") {
                    subs.push(w.to_string());
                }
            }
        } else if let Some(c) = flag.captures(l) {
            flags.insert(c[1].to_string());
        }
    }
    (flags, subs)
}

/// Each command's book page, from SUMMARY.md's titles under Commands ("tag, cpimage, ...").
fn command_pages() -> Vec<(String, PathBuf)> {
    let summary = fs::read_to_string(book_src().join("SUMMARY.md")).unwrap();
    let re = Regex::new(r"^\s+- \[([^\]]+)\]\((commands/[a-z-]+\.md)\)").unwrap();
    let mut out = Vec::new();
    for l in summary.lines() {
        if let Some(c) = re.captures(l) {
            for name in c[1]
                .split([',', ' '])
                .filter(|w| !w.is_empty() && *w != "and")
            {
                out.push((name.to_string(), book_src().join(&c[2])));
            }
        }
    }
    out
}

#[test]
fn help_and_book_name_the_same_flags() {
    let (global, top) = help_of(&[]);
    let mut cmd_pages = command_pages();
    // Commands whose page is a chapter of its own rather than one under commands/.
    cmd_pages.push(("import-si".into(), book_src().join("systemimager.md")));
    let mut fails = Vec::new();
    let mut all = global.clone();
    for cmd in &top {
        let Some((_, page)) = cmd_pages.iter().find(|(n, _)| n == cmd) else {
            fails.push(format!(
                "aurum {cmd} has no page under book/src/commands (SUMMARY.md)"
            ));
            continue;
        };
        let text = fs::read_to_string(page).unwrap();
        let (flags, subs) = help_of(&[cmd]);
        let mut each = vec![(cmd.clone(), flags)];
        for sub in subs {
            each.push((format!("{cmd} {sub}"), help_of(&[cmd, &sub]).0));
        }
        for (name, flags) in each {
            for f in flags.difference(&global) {
                if f != "--help" && !mentions(&text, f) {
                    fails.push(format!(
                        "`aurum {name} --help` lists {f}; {} does not",
                        rel(page)
                    ));
                }
                all.insert(f.clone());
            }
        }
    }
    let flag = Regex::new(r"(^|[^\w-])(--[a-z][a-z0-9-]*[a-z0-9])").unwrap();
    for p in pages() {
        let text = fs::read_to_string(&p).unwrap();
        for c in flag.captures_iter(&text) {
            if !all.contains(&c[2]) && !FOREIGN_FLAGS.contains(&&c[2]) {
                fails.push(format!(
                    "{} names {}, which no aurum command has",
                    rel(&p),
                    &c[2]
                ));
            }
        }
    }
    fails.sort();
    fails.dedup();
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}

/// Flags of other programs the book quotes (rsync, apt, sgdisk, mdadm, bench/scale, ...).
const FOREIGN_FLAGS: &[&str] = &[
    "--acls",
    "--cache-rate",
    "--node-rate",
    "--counts",
    "--modes",
    "--floor",
    "--chunk",
    "--copy",
    "--max",
    "--live",
    "--rate",
    "--size",
    "--create",
    "--directory",
    "--drive",
    "--exclude-from",
    "--fake",
    "--format",
    "--installroot",
    "--no-build",
    "--no-describe",
    "--no-fflags",
    "--now",
    "--numeric-ids",
    "--numeric-owner",
    "--offset",
    "--only",
    "--only-upgrade",
    "--patch-from",
    "--path",
    "--release",
    "--security",
    "--selinux",
    "--sizelimit",
    "--strip",
    "--test",
    "--variant",
    "--where",
    "--xattrs",
    "--xattrs-include",
    "--zap-all",
];

fn mentions(text: &str, flag: &str) -> bool {
    text.match_indices(flag).any(|(at, _)| {
        !text[at + flag.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_alphanumeric() || c == '-')
    })
}

fn rel(p: &Path) -> String {
    p.strip_prefix(book_src()).unwrap().display().to_string()
}
